//! Facts about built artifacts that the build scripts need and used to compute in shell:
//! the set's `manifest.json` ([`manifest`]), the machine an ELF binary is for
//! ([`elf`], also used by the static-build test) and the per-architecture names of
//! [`protocol::Arch`]; and one fact about the sources: the import cycles between a
//! crate's files ([`modules`]), and the options of `crosvm run` in crosvm's source
//! ([`crosvm_options`]). The `xtask` binary (`cargo xtask ...`) is the scripts'
//! door to it.

pub mod crosvm_options;
pub mod elf;
pub mod manifest;
pub mod modules;
