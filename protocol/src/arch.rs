//! Guest architectures. The name appears in the VM spec, the image manifest and the
//! kernel build, so it is defined once, here; the kernel fragments and the image names
//! hang off it in `kernel-config`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// A guest architecture: selects the arch fragment, the kernel image format and the
/// `ARCH=` of the kernel build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    /// x86_64 (QEMU q35); the kernel is a bzImage.
    #[serde(rename = "x86_64", alias = "amd64", alias = "x86-64")]
    X86_64,
    /// arm64 (crosvm on pKVM, qemu -M virt); the kernel is an uncompressed Image.
    #[serde(rename = "arm64", alias = "aarch64")]
    Arm64,
}

/// A name that is not one of the supported architectures.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown architecture {0:?} (expected x86_64 or arm64)")]
pub struct UnknownArch(pub String);

impl Arch {
    /// Every supported architecture, for callers that iterate (tests, help texts).
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// The architecture this program was compiled for, if it is one the guest supports:
    /// the default guest architecture for the launcher, and the running kernel's for PID 1.
    pub fn host() -> Option<Arch> {
        if cfg!(target_arch = "x86_64") {
            Some(Arch::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Arch::Arm64)
        } else {
            None
        }
    }

    /// The canonical name, also the arch fragment's name and the kernel's `ARCH=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The file name of the bootable kernel image the build produces for this arch.
    pub fn image_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "bzImage",
            Arch::Arm64 => "Image",
        }
    }

    /// Debian's name for the architecture (`amd64`, `arm64`).
    pub fn debian_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The static Rust target both binaries are built for.
    pub fn musl_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = UnknownArch;

    /// Accepts the kernel's and Debian's spellings ("x86_64"/"amd64", "arm64") and
    /// Rust's ("aarch64"), case-insensitively.
    fn from_str(s: &str) -> Result<Arch, UnknownArch> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x86-64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => Err(UnknownArch(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_serialise_canonically() {
        for a in Arch::ALL {
            assert_eq!(a.as_str().parse::<Arch>(), Ok(a));
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(json, format!("\"{a}\""));
            assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), a);
        }
        assert_eq!("AArch64".parse::<Arch>(), Ok(Arch::Arm64));
        assert_eq!(
            serde_json::from_str::<Arch>("\"amd64\"").unwrap(),
            Arch::X86_64
        );
        let e = "riscv64".parse::<Arch>().unwrap_err();
        assert!(e.to_string().contains("\"riscv64\""), "{e}");
    }
}
