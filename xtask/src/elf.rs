//! What a built binary is, read from its ELF headers with `object`: the machine it is
//! for (the build scripts refuse a binary for the wrong one before it lands in an
//! image), and whether it is static (the musl builds must be, or the guest's PID 1 and
//! the phone's launcher cannot start).

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::Endianness;
use protocol::Arch;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a file's ELF facts could not be had, or do not fit.
#[derive(Debug, Error)]
pub enum ElfError {
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message already, so not a `source` too).
        cause: std::io::Error,
    },
    #[error("{path}: not a 64-bit ELF file: {why}")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// `object`'s complaint.
        why: String,
    },
    #[error("{path} is not an ELF binary for {want}: found {found}")]
    WrongArch {
        /// The file.
        path: PathBuf,
        /// The architecture it should be for.
        want: Arch,
        /// What it is instead.
        found: Identity,
    },
}

/// What a file is, as far as "which machine does it run on" goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A 64-bit ELF file for one of the guest architectures.
    Arch(Arch),
    /// A 64-bit ELF file for some other machine.
    OtherMachine(elf::Machine),
    /// Not a 64-bit ELF file at all (the reason, from `object`).
    NotElf(String),
}

impl Identity {
    /// The one word `cargo xtask elf-arch` prints: `x86_64`, `arm64` or `other`.
    pub fn word(&self) -> &'static str {
        match self {
            Identity::Arch(a) => a.as_str(),
            Identity::OtherMachine(_) | Identity::NotElf(_) => "other",
        }
    }

    /// Refuses anything but an ELF binary for `want`; `path` is named in the error.
    pub fn require(self, path: &Path, want: Arch) -> Result<(), ElfError> {
        match self {
            Identity::Arch(a) if a == want => Ok(()),
            found => Err(ElfError::WrongArch {
                path: path.to_path_buf(),
                want,
                found,
            }),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Arch(a) => write!(f, "an ELF binary for {a}"),
            Identity::OtherMachine(m) => write!(f, "an ELF binary for e_machine {}", m.0),
            Identity::NotElf(why) => write!(f, "no 64-bit ELF header ({why})"),
        }
    }
}

/// The guest architecture an ELF `e_machine` stands for, if any.
pub fn machine_arch(machine: elf::Machine) -> Option<Arch> {
    match machine {
        elf::EM_X86_64 => Some(Arch::X86_64),
        elf::EM_AARCH64 => Some(Arch::Arm64),
        _ => None,
    }
}

/// The size of a 64-bit ELF file header: all [`identify`] reads.
const HEADER_LEN: u64 = 64;

/// Reads `path`'s ELF header and says which machine it is for. Only an unreadable file
/// is an error: a file that is not ELF is [`Identity::NotElf`].
pub fn identify(path: &Path) -> Result<Identity, ElfError> {
    let mut head = Vec::with_capacity(64);
    std::fs::File::open(path)
        .and_then(|f| f.take(HEADER_LEN).read_to_end(&mut head))
        .map_err(|cause| ElfError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
    let header = match elf::FileHeader64::<Endianness>::parse(&*head) {
        Ok(h) => h,
        Err(e) => return Ok(Identity::NotElf(e.to_string())),
    };
    let machine = match header.endian() {
        Ok(endian) => header.e_machine(endian),
        Err(e) => return Ok(Identity::NotElf(e.to_string())),
    };
    Ok(machine_arch(machine).map_or(Identity::OtherMachine(machine), Identity::Arch))
}

/// Refuses `path` unless it is an ELF binary for `want`.
pub fn expect_arch(path: &Path, want: Arch) -> Result<(), ElfError> {
    identify(path)?.require(path, want)
}

/// The facts of one ELF file that decide whether it runs on a bare guest or a phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfFacts {
    /// `e_machine` (`EM_X86_64`, `EM_AARCH64`, ...).
    pub machine: elf::Machine,
    /// The `PT_INTERP` path, if the binary asks for a dynamic loader.
    pub interpreter: Option<String>,
    /// How many `DT_NEEDED` entries (shared libraries) it names.
    pub needed: usize,
}

impl ElfFacts {
    /// Static: no loader and no shared library (a static-pie may still have PT_DYNAMIC).
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed == 0
    }

    /// The guest architecture it is for, if it is for one.
    pub fn arch(&self) -> Option<Arch> {
        machine_arch(self.machine)
    }
}

/// Reads the facts of a 64-bit ELF file (the whole file: the program headers and the
/// dynamic section may lie anywhere in it).
pub fn inspect(path: &Path) -> Result<ElfFacts, ElfError> {
    let data = std::fs::read(path).map_err(|cause| ElfError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    let what = |e: object::read::Error| ElfError::NotElf {
        path: path.to_path_buf(),
        why: e.to_string(),
    };
    let header = elf::FileHeader64::<Endianness>::parse(&*data).map_err(what)?;
    let endian = header.endian().map_err(what)?;
    let mut facts = ElfFacts {
        machine: header.e_machine(endian),
        interpreter: None,
        needed: 0,
    };
    for ph in header.program_headers(endian, &*data).map_err(what)? {
        if let Some(interp) = ph.interpreter(endian, &*data).map_err(what)? {
            facts.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
        if let Some(entries) = ph.dynamic(endian, &*data).map_err(what)? {
            facts.needed += entries
                .iter()
                .filter(|d| d.d_tag(endian) == elf::DT_NEEDED)
                .count();
        }
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF header for `machine`, little-endian, 64-bit, padded to 64 bytes.
    fn header(machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // ELFCLASS64
        h[5] = 1; // ELFDATA2LSB
        h[6] = 1; // EV_CURRENT
        h[16] = 2; // ET_EXEC
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h[20] = 1; // e_version
        h
    }

    #[test]
    fn this_test_program_is_for_this_machine_and_dynamic() {
        // The test binary itself is linked against glibc: it has a loader and needs libc.
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            identify(&exe).unwrap(),
            Identity::Arch(Arch::host().unwrap())
        );
        expect_arch(&exe, Arch::host().unwrap()).unwrap();
        let f = inspect(&exe).unwrap();
        assert_eq!(f.arch(), Arch::host());
        assert!(!f.is_static(), "{f:?}");
        assert!(f.interpreter.is_some() && f.needed > 0, "{f:?}");
    }

    #[test]
    fn headers_name_their_machine() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        for (machine, want) in [
            (62, Identity::Arch(Arch::X86_64)),
            (183, Identity::Arch(Arch::Arm64)),
            (40, Identity::OtherMachine(elf::EM_ARM)),
        ] {
            std::fs::write(&p, header(machine)).unwrap();
            assert_eq!(identify(&p).unwrap(), want, "e_machine {machine}");
        }
        assert_eq!(identify(&p).unwrap().word(), "other");
        let e = expect_arch(&p, Arch::Arm64).unwrap_err().to_string();
        assert!(
            e.contains("bin is not an ELF binary for arm64: found an ELF binary for e_machine 40"),
            "{e}"
        );
        std::fs::write(&p, header(62)).unwrap();
        let e = expect_arch(&p, Arch::Arm64).unwrap_err().to_string();
        assert!(e.ends_with("found an ELF binary for x86_64"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_elf_is_other_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, "hello").unwrap();
        let id = identify(&p).unwrap();
        assert_eq!(id.word(), "other");
        let e = expect_arch(&p, Arch::X86_64).unwrap_err().to_string();
        assert!(
            e.contains("notes.txt is not an ELF binary for x86_64: found no 64-bit ELF header"),
            "{e}"
        );
        let e = inspect(&p).unwrap_err().to_string();
        assert!(
            e.contains("notes.txt") && e.contains("not a 64-bit ELF"),
            "{e}"
        );
        let missing = dir.path().join("missing");
        let e = identify(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("missing"),
            "{e}"
        );
    }
}
