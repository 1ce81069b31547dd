//! Errors of the checker: each message says what failed, with which value, and what to
//! do about it when there is something to do.

use thiserror::Error;

/// Why a kernel configuration could not be read, or an argument was not understood.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot inflate the gzip'ed kernel config ({len} bytes): {source}")]
    Gzip {
        /// Size of the compressed input.
        len: usize,
        /// What flate2 reported.
        #[source]
        source: std::io::Error,
    },

    #[error("the gzip'ed kernel config inflates to more than {limit} bytes: not a kernel config")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },

    #[error(
        "the kernel image has an IKCFG_ST marker at offset {offset}{inner} but the config after it does not inflate: {source}"
    )]
    BadIkconfig {
        /// Offset of the marker (in the inflated payload when `inner` says so).
        offset: usize,
        /// Empty for the raw image, or " of a gzip payload at offset N".
        inner: String,
        /// The inflate error.
        #[source]
        source: Box<ConfigError>,
    },

    #[error(
        "no IKCONFIG (IKCFG_ST marker) found in the kernel image ({len} bytes; {members} gzip payload(s) inflated and searched): build with CONFIG_IKCONFIG=y, and for an x86 bzImage also CONFIG_KERNEL_GZIP=y"
    )]
    NoIkconfig {
        /// Size of the image.
        len: usize,
        /// How many gzip members were inflated and searched.
        members: usize,
    },

    #[error(
        "the kernel is an ELF file (vmlinux), which is out of scope: pass the boot image (arch/x86/boot/bzImage or arch/arm64/boot/Image)"
    )]
    ElfImage,

    #[error(
        "the kernel is gzip-compressed (Image.gz?): pass the uncompressed boot image (bzImage or Image)"
    )]
    CompressedImage,

    #[error(
        "the bzImage is a 32-bit x86 kernel (boot protocol {version:#06x}, xloadflags {xloadflags:#06x} without XLF_KERNEL_64): build with ARCH=x86_64 or CONFIG_64BIT=y"
    )]
    X86_32Image {
        /// Boot protocol version from the setup header.
        version: u16,
        /// The xloadflags field of the setup header.
        xloadflags: u16,
    },

    #[error(
        "not a kernel boot image ({len} bytes): no x86 setup header (\"HdrS\" at 0x202) and no arm64 Image magic (\"ARM\\x64\" at 0x38)"
    )]
    UnknownImage {
        /// Size of the input.
        len: usize,
    },
}
