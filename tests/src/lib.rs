//! Harness for the QEMU integration and end-to-end tests, and the demo.
//!
//! Everything here drives real components: the `sovereign` launcher binary, QEMU with
//! the project's kernel and images, gvproxy, headscale, tailscaled and psql. The tests
//! need root (network namespaces, TUN) and the artifact set from
//! `scripts/build-images.sh`; without them they print why and skip, unless
//! `SOVEREIGN_REQUIRE_VM_TESTS=1` (set by `scripts/test.sh`, so CI never skips them).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

pub mod artifacts;
pub mod drill;
pub mod egress;
pub mod headscale;
pub mod image_set;
pub mod lab;
pub mod load;
pub mod netns;
pub mod phone;
pub mod primaries;
pub mod process;
pub mod prometheus;
pub mod sftp;
pub mod tailnode;
pub mod vm;
pub mod webhook;

pub use artifacts::{heavy_variant, vm_test, Artifacts};
