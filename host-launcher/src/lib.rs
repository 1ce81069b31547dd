//! `sovereign`: starts, watches and stops the Sovereign PostgreSQL VM on crosvm (Android,
//! pKVM) or QEMU (Linux, CI). It says "up" only when the guest has proven each boot
//! stage; when a stage fails it names it, shows the evidence and stops the VM.
//!
//! One module per duty: [`spec`] and [`validate`] (the VM spec), [`preflight`] (is the
//! host fit), [`vmm`] (command lines), [`supervisor`] with [`control`], [`console`] and
//! [`readiness`] (the detached supervisor), [`ipc`] (its socket), [`autostart`] (the
//! boot script), [`commands`] (the CLI verbs).

pub mod alerts;
pub mod autostart;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod conninfo;
pub mod console;
pub mod control;
pub mod deploy;
pub mod disk_grow;
pub mod disk_image;
pub mod doctor;
pub mod guest_clock;
pub mod ipc;
pub mod kernel;
pub mod paths;
pub mod preflight;
pub mod private_file;
pub mod process;
pub mod readiness;
pub mod replica_credentials;
pub mod run_files;
pub mod rundir;
pub mod sealed;
pub mod secrets;
pub mod spec;
pub mod startlock;
pub mod supervisor;
pub mod terminal;
pub mod tls;
pub mod transfer;
pub mod trust;
pub mod update;
pub mod vmm;
