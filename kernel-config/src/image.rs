//! Which architecture a kernel boot image is for: the launcher refuses to hand an
//! arm64 Image to qemu-system-x86_64 (and a 32-bit bzImage to anything).

use crate::{Arch, ConfigError};

/// The architecture of a kernel image. The same type as [`Arch`] (an image is for one
/// guest architecture); the name reads better where an image is being inspected.
pub type KernelImageArch = Arch;

/// Offset of the x86 setup header's "HdrS" signature (boot protocol >= 2.00).
const X86_HDRS: usize = 0x202;
/// Offset of the boot protocol version (u16 LE) in the x86 setup header.
const X86_VERSION: usize = 0x206;
/// Offset of `xloadflags` (u16 LE, boot protocol >= 2.12).
const X86_XLOADFLAGS: usize = 0x236;
/// `xloadflags` bit: the kernel has a 64-bit entry point.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the arm64 Image header's magic.
const ARM64_MAGIC: usize = 0x38;

/// Tells an x86 bzImage ("HdrS" at 0x202, with a 64-bit entry point) from an arm64
/// Image ("ARM\x64" at 0x38). An ELF vmlinux, an `Image.gz` and a 32-bit bzImage are
/// errors that say so.
pub fn detect_image_arch(bytes: &[u8]) -> Result<Arch, ConfigError> {
    if bytes.get(X86_HDRS..X86_HDRS + 4) == Some(b"HdrS") {
        let version = u16_le(bytes, X86_VERSION).unwrap_or(0);
        if version >= 0x020c {
            let xloadflags = u16_le(bytes, X86_XLOADFLAGS).unwrap_or(0);
            if xloadflags & XLF_KERNEL_64 == 0 {
                return Err(ConfigError::X86_32Image {
                    version,
                    xloadflags,
                });
            }
        }
        return Ok(Arch::X86_64);
    }
    if bytes.get(ARM64_MAGIC..ARM64_MAGIC + 4) == Some(b"ARM\x64") {
        return Ok(Arch::Arm64);
    }
    if bytes.starts_with(b"\x7fELF") {
        return Err(ConfigError::ElfImage);
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(ConfigError::CompressedImage);
    }
    Err(ConfigError::UnknownImage { len: bytes.len() })
}

fn u16_le(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_le_bytes([*b.first()?, *b.get(1)?]))
}

/// The smallest image [`detect_image_arch`] accepts as `arch` (an x86 setup header with
/// boot protocol 2.15 and a 64-bit entry point, or the arm64 Image magic). Tests of code
/// that reads kernel images (spec validation, the launcher's CLI) use it as a stand-in
/// kernel; it carries no embedded configuration.
pub fn sample_image(arch: Arch) -> Vec<u8> {
    match arch {
        Arch::X86_64 => bz_image(0x020f, 1),
        Arch::Arm64 => {
            let mut img = vec![0u8; 0x100];
            img[ARM64_MAGIC..ARM64_MAGIC + 4].copy_from_slice(b"ARM\x64");
            img
        }
    }
}

fn bz_image(version: u16, xloadflags: u16) -> Vec<u8> {
    let mut img = vec![0u8; 0x400];
    img[0x1fe] = 0x55;
    img[0x1ff] = 0xaa;
    img[X86_HDRS..X86_HDRS + 4].copy_from_slice(b"HdrS");
    img[X86_VERSION..X86_VERSION + 2].copy_from_slice(&version.to_le_bytes());
    img[X86_XLOADFLAGS..X86_XLOADFLAGS + 2].copy_from_slice(&xloadflags.to_le_bytes());
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_detected_as_their_arch() {
        for arch in Arch::ALL {
            assert_eq!(detect_image_arch(&sample_image(arch)).unwrap(), arch);
        }
    }

    #[test]
    fn detects_a_64_bit_bzimage() {
        assert_eq!(
            detect_image_arch(&bz_image(0x020f, 0x7f)).unwrap(),
            Arch::X86_64
        );
        // Before boot protocol 2.12 there is no way to tell: accept.
        assert_eq!(
            detect_image_arch(&bz_image(0x020a, 0)).unwrap(),
            Arch::X86_64
        );
    }

    #[test]
    fn refuses_a_32_bit_bzimage() {
        let err = detect_image_arch(&bz_image(0x020f, 0x1c)).unwrap_err();
        assert!(matches!(err, ConfigError::X86_32Image { .. }), "{err:?}");
        assert!(err.to_string().contains("CONFIG_64BIT=y"), "{err}");
    }

    #[test]
    fn detects_an_arm64_image() {
        let mut img = vec![0u8; 0x40];
        img[ARM64_MAGIC..ARM64_MAGIC + 4].copy_from_slice(b"ARM\x64");
        assert_eq!(detect_image_arch(&img).unwrap(), KernelImageArch::Arm64);
    }

    #[test]
    fn names_what_it_is_not() {
        let elf = detect_image_arch(b"\x7fELF\x02\x01\x01").unwrap_err();
        assert!(matches!(elf, ConfigError::ElfImage));
        assert!(elf.to_string().contains("out of scope"), "{elf}");
        assert!(matches!(
            detect_image_arch(&[0x1f, 0x8b, 0x08, 0]).unwrap_err(),
            ConfigError::CompressedImage
        ));
        let junk = detect_image_arch(&[0u8; 100]).unwrap_err();
        assert!(
            matches!(junk, ConfigError::UnknownImage { len: 100 }),
            "{junk:?}"
        );
        detect_image_arch(&[]).unwrap_err();
    }
}
