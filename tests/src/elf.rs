//! What a built binary is, read from its ELF headers with `object`: the musl builds must
//! be static (no program interpreter, no shared library needed) and for the machine
//! they are shipped to, or the guest's PID 1 or the phone's launcher cannot start.

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::Endianness;
use std::path::Path;

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
}

/// Reads the facts of a 64-bit ELF file.
pub fn inspect(path: &Path) -> Result<ElfFacts, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let what = |e: object::read::Error| format!("{}: not a 64-bit ELF file: {e}", path.display());
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

    #[test]
    fn a_dynamic_host_program_is_not_static() {
        // The test binary itself is linked against glibc: it has a loader and needs libc.
        let exe = std::env::current_exe().unwrap();
        let f = inspect(&exe).unwrap();
        assert!(!f.is_static(), "{f:?}");
        assert!(f.interpreter.is_some() && f.needed > 0, "{f:?}");
    }

    #[test]
    fn a_file_that_is_not_elf_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, "hello").unwrap();
        let e = inspect(&p).unwrap_err();
        assert!(
            e.contains("notes.txt") && e.contains("not a 64-bit ELF"),
            "{e}"
        );
    }
}
