//! Bulk transfers: what the host asks for ([`Transfer`], sent in
//! [`crate::HostMessage::Transfer`]) and how the guest says it went
//! ([`TransferAnswer`]). The bytes themselves travel on a data connection
//! ([`crate::bulk`]); these messages stay on the control channel.

use crate::backup::RestoreTarget;
use serde::{Deserialize, Serialize};

/// One bulk transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transfer {
    /// Guest → host: a tar of the local backup repository (every set and the archived
    /// WAL), for a user without an off-device repository to keep a copy elsewhere.
    ExportBackup {
        /// Only from this set on: its full set, every later set, and the WAL from the
        /// full set's start (what restoring to it or any later point reads).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_set: Option<String>,
    },
    /// Host → guest: an export to restore from. It becomes the local repository (the
    /// current one is kept aside), then the database is restored from it to `target`.
    RestoreFromExport {
        /// The export's size, so the guest can refuse it before reading when the
        /// backup disk has no room.
        bytes: u64,
        /// Where to.
        target: RestoreTarget,
    },
    /// Host → guest, during a boot asked to [`crate::config::BootRequest::ImportOntoNewDisk`]:
    /// an export that becomes the local repository (the current one is kept aside); the
    /// boot then restores from it onto the new data disk.
    ImportExport {
        /// The export's size.
        bytes: u64,
    },
    /// Guest → host: `pg_dump -Fc` of one database: an app's, an orphan's, or a
    /// copy a restore kept.
    DumpApp {
        /// The database (for an app: its name in the spec).
        app: String,
    },
    /// Host → guest: a dump to load into an app's database; the current database is
    /// kept aside under another name until the new one is loaded.
    RestoreApp {
        /// The app, as the spec names it.
        app: String,
        /// The dump's size.
        bytes: u64,
    },
}

/// Which way a transfer's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the guest to the host (exports, dumps).
    ToHost,
    /// From the host to the guest (restores).
    ToGuest,
}

impl Transfer {
    /// Which way its bytes go.
    pub fn direction(&self) -> Direction {
        match self {
            Transfer::ExportBackup { .. } | Transfer::DumpApp { .. } => Direction::ToHost,
            Transfer::RestoreFromExport { .. }
            | Transfer::ImportExport { .. }
            | Transfer::RestoreApp { .. } => Direction::ToGuest,
        }
    }
}

/// The guest's word on a transfer, sent when its bytes are all written or read (and,
/// for a restore, when the restore is done).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferAnswer {
    /// Echoes the request's id.
    pub id: u64,
    /// Whether it worked.
    pub ok: bool,
    /// What was done, or why not.
    pub message: String,
    /// Payload bytes moved.
    pub bytes: u64,
    /// SHA-256 of the payload (hex), when the whole stream went through.
    pub sha256: Option<String>,
}

impl TransferAnswer {
    /// A failed transfer.
    pub fn failed(id: u64, message: impl Into<String>) -> Self {
        TransferAnswer {
            id,
            ok: false,
            message: message.into(),
            bytes: 0,
            sha256: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_say_their_direction_and_round_trip_as_json() {
        let all = [
            Transfer::ExportBackup { from_set: None },
            Transfer::ExportBackup {
                from_set: Some("20261202-160405F".into()),
            },
            Transfer::RestoreFromExport {
                bytes: 10,
                target: RestoreTarget::Latest,
            },
            Transfer::DumpApp {
                app: "forgejo".into(),
            },
            Transfer::RestoreApp {
                app: "forgejo".into(),
                bytes: 5,
            },
        ];
        let dirs: Vec<Direction> = all.iter().map(Transfer::direction).collect();
        assert_eq!(
            dirs,
            [
                Direction::ToHost,
                Direction::ToHost,
                Direction::ToGuest,
                Direction::ToHost,
                Direction::ToGuest
            ]
        );
        for t in all {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Transfer>(&json).unwrap(), t);
        }
        let json = serde_json::to_string(&Transfer::DumpApp { app: "a".into() }).unwrap();
        assert_eq!(json, r#"{"kind":"dump_app","app":"a"}"#);
        let whole = serde_json::to_string(&Transfer::ExportBackup { from_set: None }).unwrap();
        assert_eq!(whole, r#"{"kind":"export_backup"}"#);
    }
}
