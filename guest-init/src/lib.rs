//! `sovereign-init`: PID 1 of the Sovereign PostgreSQL VM.
//!
//! A linear boot, one module per duty: signals first, then the system mounts and
//! logging, the kernel command line, the device census (with module loading), the
//! control channel to the host, networking to gvproxy over vsock, the data disk,
//! tailscaled and PostgreSQL under supervision, backups with pgBackRest, and an ordered power-off. Everything
//! that can be exercised as an ordinary process (parsing, the census on a fixture
//! sysfs, the forwarder on a host TAP) is, so most of it is tested outside a VM.

pub mod backup;
pub mod boot;
pub mod clock;
pub mod cmdline;
pub mod command;
pub mod console;
pub mod control;
pub mod devices;
pub mod disk_grow;
pub mod disk_watch;
pub mod disks;
pub mod durable;
pub mod fence_guard;
pub mod guest;
pub mod host_requests;
pub mod kmsg;
pub mod lifecycle;
pub mod log_files;
pub mod metrics;
pub mod mounts;
pub mod net;
pub mod own_memory;
pub mod owned_files;
pub mod peer_hosts;
pub mod postgres;
pub mod stages;
pub mod tailscale;
pub mod transfer;
pub mod upkeep;
pub mod vsock_dial;
