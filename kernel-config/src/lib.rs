//! The Sovereign guest kernel's configuration: the fragments the kernel is built from,
//! and the checker that proves a kernel really has every option they ask for.
//!
//! Kconfig silently demotes an option whose dependencies are unmet, so "we asked for
//! it" never means "the kernel has it". This crate answers the second question for
//! three callers, all from the same embedded fragments:
//!
//! - `scripts/build-kernel.sh` checks the merged `.config` and then the built image,
//!   through the `sovereign-kconfig` binary;
//! - the launcher's preflight reads the config embedded in the kernel image
//!   ([`KernelConfig::from_kernel_image`], [`detect_image_arch`]);
//! - `sovereign-init` reads the running kernel's `/proc/config.gz`
//!   ([`KernelConfig::from_gzip`]) and names every required option it lacks.
//!
//! The library uses std, flate2, thiserror and the shared `protocol` vocabulary only,
//! and never panics on its input: it runs inside PID 1.

mod config;
mod error;
mod fragments;
mod image;

pub use config::{KernelConfig, Value};
pub use error::ConfigError;
pub use fragments::{fragments, merged_fragment, requirements, Requirement};
pub use image::{detect_image_arch, sample_image, KernelImageArch};

use std::fmt;

/// The guest architectures, defined with the other shared vocabulary in `protocol`.
pub use protocol::Arch;

/// One option that holds or does not: the unit of a check's result, printed one per
/// line by the build script, the launcher and PID 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The full option name, e.g. `CONFIG_VIRTIO_VSOCKETS`.
    pub option: String,
    /// What the fragment asks for.
    pub wanted: Value,
    /// What the checked configuration has (`Value::No` when the option is absent).
    pub found: Value,
    /// The fragment that asks for it: "common", "x86_64" or "arm64".
    pub fragment: &'static str,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: wanted {}, found {} (fragment {})",
            self.option, self.wanted, self.found, self.fragment
        )
    }
}

/// Compares a configuration with requirements and returns every requirement that does
/// not hold, in the requirements' order (empty means the kernel is fit).
///
/// `y` is satisfied only by `y`; `m` by `m` or `y`; "is not set" by an absent or `n`
/// option; a string or number only by the identical text.
pub fn check(config: &KernelConfig, reqs: &[Requirement]) -> Vec<Mismatch> {
    reqs.iter()
        .filter_map(|req| {
            let found = config.get(&req.option);
            if satisfies(&found, &req.wanted) {
                None
            } else {
                Some(Mismatch {
                    option: req.option.clone(),
                    wanted: req.wanted.clone(),
                    found,
                    fragment: req.fragment,
                })
            }
        })
        .collect()
}

fn satisfies(found: &Value, wanted: &Value) -> bool {
    match (wanted, found) {
        (Value::Yes, Value::Yes) => true,
        (Value::Module, Value::Module | Value::Yes) => true,
        (Value::No, Value::No) => true,
        (Value::Text(w), Value::Text(f)) => w == f,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(option: &str, wanted: Value) -> Requirement {
        Requirement {
            option: option.to_string(),
            wanted,
            fragment: "common",
        }
    }

    #[test]
    fn arch_parses_every_spelling() {
        for s in ["x86_64", "amd64", "X86_64", " x86-64 "] {
            assert_eq!(s.parse::<Arch>().ok(), Some(Arch::X86_64), "{s}");
        }
        for s in ["arm64", "aarch64", "ARM64"] {
            assert_eq!(s.parse::<Arch>().ok(), Some(Arch::Arm64), "{s}");
        }
        let err = "riscv64".parse::<Arch>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("unknown architecture \"riscv64\" (expected x86_64 or arm64)")
        );
        assert_eq!(Arch::X86_64.to_string(), "x86_64");
        assert_eq!(Arch::Arm64.to_string(), "arm64");
    }

    #[test]
    fn host_arch_matches_the_build_target() {
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Arch::host(), Some(Arch::X86_64));
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(Arch::host(), Some(Arch::Arm64));
        }
    }

    #[test]
    fn check_semantics() {
        let config = KernelConfig::parse(
            "CONFIG_Y=y\nCONFIG_M=m\n# CONFIG_N is not set\nCONFIG_EXPLICIT_N=n\n\
             CONFIG_S=\"ttyS0\"\nCONFIG_NUM=64\n",
        );
        let holds = |option: &str, wanted: Value| check(&config, &[req(option, wanted)]).is_empty();

        assert!(holds("CONFIG_Y", Value::Yes));
        assert!(!holds("CONFIG_M", Value::Yes), "m does not satisfy y");
        assert!(!holds("CONFIG_N", Value::Yes));
        assert!(!holds("CONFIG_ABSENT", Value::Yes));

        assert!(holds("CONFIG_M", Value::Module));
        assert!(holds("CONFIG_Y", Value::Module), "y satisfies m");
        assert!(!holds("CONFIG_N", Value::Module));

        assert!(holds("CONFIG_N", Value::No));
        assert!(holds("CONFIG_EXPLICIT_N", Value::No));
        assert!(holds("CONFIG_ABSENT", Value::No));
        assert!(!holds("CONFIG_Y", Value::No));
        assert!(!holds("CONFIG_M", Value::No));

        assert!(holds("CONFIG_S", Value::Text("\"ttyS0\"".into())));
        assert!(!holds("CONFIG_S", Value::Text("\"ttyAMA0\"".into())));
        assert!(holds("CONFIG_NUM", Value::Text("64".into())));
        assert!(!holds("CONFIG_NUM", Value::Text("32".into())));
        assert!(!holds("CONFIG_ABSENT", Value::Text("64".into())));
    }

    #[test]
    fn mismatches_keep_order_and_print_one_line_each() {
        let config = KernelConfig::parse("CONFIG_VSOCKETS=y\nCONFIG_VIRTIO_BLK=m\n");
        let reqs = [
            req("CONFIG_VIRTIO_VSOCKETS", Value::Yes),
            req("CONFIG_VSOCKETS", Value::Yes),
            req("CONFIG_VIRTIO_BLK", Value::Yes),
        ];
        let lines: Vec<String> = check(&config, &reqs)
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert_eq!(
            lines,
            [
                "CONFIG_VIRTIO_VSOCKETS: wanted y, found not set (fragment common)",
                "CONFIG_VIRTIO_BLK: wanted y, found m (fragment common)",
            ]
        );
    }
}
