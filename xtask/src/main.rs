//! `cargo xtask`: the build scripts' questions about artifacts, answered from the same
//! Rust types the launcher and the tests use. Each subcommand prints its answer on
//! stdout; failures go to stderr with a non-zero exit.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use protocol::Arch;
use std::path::PathBuf;
use std::process::ExitCode;
use xtask::{elf, manifest, modules};

/// Build helpers for scripts/ (run as `cargo xtask COMMAND` from the workspace).
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes DIR/manifest.json: size, SHA-256, mode and deploy flag of each FILE.
    Manifest {
        /// The architecture the set is built for.
        #[arg(long, value_name = "ARCH")]
        arch: Arch,
        /// What the set is made of, by version (repeatable): `postgres=17.6-0+deb13u1`.
        #[arg(long = "version", value_name = "KEY=VALUE", value_parser = parse_version)]
        versions: Vec<(String, String)>,
        /// The artifact directory.
        dir: PathBuf,
        /// The files of the set, relative to DIR, in build order.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
    },
    /// Prints x86_64, arm64 or other: the machine FILE's ELF header names.
    ElfArch {
        /// The file to inspect.
        file: PathBuf,
        /// Fail (exit 1, naming the file and what it is) unless FILE is for ARCH.
        #[arg(long, value_name = "ARCH")]
        expect: Option<Arch>,
    },
    /// Prints the options of `crosvm run` declared in crosvm's src/crosvm/cmdline.rs
    /// (one per line: --long [-s], switch|option, its #[cfg]), the record
    /// tests/fixtures/crosvm/run-options.txt is made from.
    CrosvmOptions {
        /// crosvm's src/crosvm/cmdline.rs.
        cmdline_rs: PathBuf,
    },
    /// Prints the kernel image file name for ARCH (bzImage, Image).
    ImageName {
        /// x86_64 or arm64 (aliases: amd64, aarch64).
        arch: Arch,
    },
    /// Prints the static Rust target for ARCH.
    MuslTarget {
        /// x86_64 or arm64 (aliases: amd64, aarch64).
        arch: Arch,
    },
    /// Prints Debian's name for ARCH (amd64, arm64).
    DebianArch {
        /// x86_64 or arm64 (aliases: amd64, aarch64).
        arch: Arch,
    },
    /// Prints the groups of a crate's files that import each other in a circle; fails
    /// when one holds more than MAX files.
    ModuleCycles {
        /// The crate's source directory (e.g. guest-init/src).
        src: PathBuf,
        /// The most files one group may hold (2: a module and the file it leans on).
        #[arg(long, default_value_t = 2)]
        max: usize,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `KEY=VALUE` for `manifest --version`.
fn parse_version(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "{s:?}: expected KEY=VALUE, e.g. postgres=17.6-0+deb13u1"
        )),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Manifest {
            arch,
            versions,
            dir,
            files,
        } => {
            let m = manifest::build(arch, &dir, &files, versions.into_iter().collect())?;
            let path = manifest::write(&dir, &m)?;
            eprintln!(
                "wrote {} ({} files, {} deployed)",
                path.display(),
                m.files.len(),
                m.deployed().count()
            );
        }
        Command::ElfArch { file, expect } => {
            let found = elf::identify(&file)?;
            println!("{}", found.word());
            if let Some(want) = expect {
                found.require(&file, want)?;
            }
        }
        Command::ImageName { arch } => println!("{}", arch.image_name()),
        Command::CrosvmOptions { cmdline_rs } => {
            let text = std::fs::read_to_string(&cmdline_rs)
                .with_context(|| format!("cannot read {}", cmdline_rs.display()))?;
            let options = xtask::crosvm_options::run_options(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cmdline_rs.display()))?;
            for o in options {
                println!("{o}");
            }
        }
        Command::MuslTarget { arch } => println!("{}", arch.musl_target()),
        Command::DebianArch { arch } => println!("{}", arch.debian_name()),
        Command::ModuleCycles { src, max } => {
            let graph = modules::read_crate(&src)?;
            let cycles = graph.cycles();
            for group in &cycles {
                println!("{} files: {}", group.len(), group.join(" <-> "));
            }
            if let Some(big) = cycles.iter().find(|g| g.len() > max) {
                anyhow::bail!(
                    "{} files of {} import each other in a circle (at most {max} may): {}",
                    big.len(),
                    src.display(),
                    big.join(", ")
                );
            }
            eprintln!(
                "{} modules in {}; no import cycle of more than {max} files",
                graph.files.len(),
                src.display()
            );
        }
    }
    Ok(())
}
