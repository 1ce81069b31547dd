//! Wire formats spoken between the Sovereign guest (`sovereign-init`) and the host
//! launcher (`sovereign`). Both binaries depend on this crate so the two ends cannot
//! drift apart; it does no I/O, so every codec here can be unit-tested and fuzzed.
//!
//! - [`control`]: the control channel framing (u32 big-endian length + one JSON message).
//! - [`messages`]: the messages carried on it, in both directions.
//! - [`devices`]: the guest's device census.
//! - [`config`]: the configuration the host hands the guest (including secrets).
//! - [`names`]: what hostnames, app names and passwords may be.
//! - [`stage`]: the boot stages whose names are part of the interface.
//! - [`evidence`]: what each stage report proves, one type per stage.
//! - [`marker`]: the `SOVEREIGN <stage> <json>` console lines.
//! - [`manifest`]: `manifest.json` of a built artifact set.
//! - [`backup`], [`offsite`]: backups, restores and the off-device copy.
//! - [`arch`]: the guest architectures.
//! - [`hyperkit`]: gvproxy's Ethernet frame framing (u16 little-endian length).
//! - [`ports`]: well-known vsock CIDs and ports.
//! - [`bulk`]: the chunked, SHA-256-checked streams of exports and dumps.
//! - [`transfer`]: what a bulk transfer carries, asked for and answered.
//! - [`scram`], [`provision`]: SCRAM verifiers and the SQL that provisions roles.
//! - [`pg_settings`]: the server's settings derived from memory, and the spec's overrides.
//! - [`replication`]: a node's role, its peer, and the replication status query.
//! - [`status`]: what `sovereign status` reports, as one typed value.
//! - [`alerts`]: the conditions the supervisor raises and clears, by name.
//! - [`metrics`]: what the guest's Prometheus page reads from PostgreSQL.

pub mod alerts;
pub mod arch;
pub mod backup;
pub mod bulk;
pub mod config;
pub mod control;
pub mod devices;
pub mod evidence;
pub mod hyperkit;
pub mod manifest;
pub mod marker;
pub mod messages;
pub mod metrics;
pub mod names;
pub mod offsite;
pub mod pg_settings;
pub mod ports;
pub mod probe;
pub mod provision;
pub mod release;
pub mod replication;
pub mod scram;
pub mod stage;
pub mod status;
pub mod transfer;

pub use arch::Arch;
pub use config::GuestConfig;
pub use control::{decode_frame, encode_frame, CodecError, FrameReader, MAX_CONTROL_FRAME};
pub use evidence::StageDetail;
pub use messages::{GuestMessage, HostMessage, PROTOCOL_VERSION};
pub use stage::{Stage, StageReport, StageState};
