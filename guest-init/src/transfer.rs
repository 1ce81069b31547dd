//! PID 1's end of a bulk transfer ([`HostMessage::Transfer`]): checks what it can
//! before any byte moves (so a refusal is a plain answer), dials the host's data port,
//! names the transfer by its token, then runs the export, dump or restore on that
//! connection. Runs on its own thread; the answer goes back on the control channel.
//!
//! [`HostMessage::Transfer`]: protocol::HostMessage::Transfer

use crate::backup::export;
use crate::guest::Guest;
use crate::postgres::app_dump;
use protocol::bulk::TransferHeader;
use protocol::ports::{DATA_PORT, HOST_CID};
use protocol::transfer::{Transfer, TransferAnswer};
use std::io::Write;
use std::time::Duration;
use vsock::VsockStream;

/// A data connection on which nothing moves for this long is given up (the host or
/// its client went away); a restore's own work happens after the last byte is read.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Most bytes handed to the vsock in one write. Under QEMU with vhost-device-vsock
/// 0.3.0, a stream written 256 KiB at a time (64 KiB packets) stalled after its first
/// 197 bytes until the write timed out; written 4 KiB or 32 KiB at a time, the same
/// stream flows (7 MiB in 5 s under TCG). 32 KiB keeps every packet at half the
/// device's 64 KiB buffer.
const WRITE_MAX: usize = 32 * 1024;

/// A vsock stream whose writes are at most [`WRITE_MAX`] bytes.
struct SmallWrites(VsockStream);

impl std::io::Write for SmallWrites {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(WRITE_MAX);
        self.0.write(&buf[..n])
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl std::io::Read for SmallWrites {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

/// Opens the data connection for `token`.
fn dial(token: &str) -> std::io::Result<SmallWrites> {
    let mut stream = crate::vsock_dial::dial(HOST_CID, DATA_PORT)?;
    stream.set_read_timeout(Some(STALL_LIMIT))?;
    stream.set_write_timeout(Some(STALL_LIMIT))?;
    let header = protocol::encode_frame(&TransferHeader {
        token: token.to_string(),
    })
    .map_err(std::io::Error::other)?;
    stream.write_all(&header)?;
    Ok(SmallWrites(stream))
}

/// Carries out `transfer` and says how it went.
pub fn serve(guest: &Guest, id: u64, token: &str, transfer: &Transfer) -> TransferAnswer {
    match run(guest, token, transfer) {
        Ok((message, bytes, sha256)) => TransferAnswer {
            id,
            ok: true,
            message,
            bytes,
            sha256: Some(sha256),
        },
        Err(why) => {
            log::warn!("transfer failed: {why}");
            TransferAnswer::failed(id, why.to_string())
        }
    }
}

/// Why a transfer did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the guest is not configured yet")]
    NotConfigured,
    #[error("backups are off in this VM's spec (backup.enabled = false), or not set up yet")]
    NoBackups,
    #[error("cannot open the data connection to the host: {0}")]
    Dial(#[from] std::io::Error),
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error(transparent)]
    AppDump(#[from] app_dump::AppDumpError),
}

/// How long an import waits for the backup disk to be ready.
const BACKUPS_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// The backups once the boot has set them up.
fn wait_for_backups(
    guest: &Guest,
) -> Result<&std::sync::Arc<crate::backup::Backups>, TransferError> {
    let until = std::time::Instant::now() + BACKUPS_WAIT;
    loop {
        if let Some(b) = guest.backups.get() {
            return Ok(b);
        }
        if std::time::Instant::now() > until || crate::lifecycle::stop::requested() {
            return Err(TransferError::NoBackups);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// The transfer itself: (what was done, payload bytes, SHA-256) or why not.
fn run(
    guest: &Guest,
    token: &str,
    transfer: &Transfer,
) -> Result<(String, u64, String), TransferError> {
    let config = guest.config.get().ok_or(TransferError::NotConfigured)?;
    let backups = || guest.backups.get().ok_or(TransferError::NoBackups);
    match transfer {
        Transfer::ExportBackup { from_set } => {
            let backups = backups()?;
            // An unknown set is refused before the data connection opens, so the host
            // gets the reason rather than a cut stream.
            let selection = from_set
                .as_deref()
                .map(|label| export::select_from(backups, label))
                .transpose()?;
            let (bytes, sha) = export::export(backups, selection.as_ref(), dial(token)?)?;
            let what = match from_set {
                Some(label) => format!("exported the backup repository from set {label} on"),
                None => "exported the backup repository".into(),
            };
            Ok((what, bytes, sha))
        }
        Transfer::RestoreFromExport { bytes, target } => {
            let backups = backups()?;
            let stream = dial(token)?;
            Ok(export::restore_from_export(
                guest, backups, stream, *bytes, target,
            )?)
        }
        Transfer::ImportExport { bytes } => {
            // Sent as soon as the control channel is up: the backup disk is mounted in
            // the tailscale stage.
            let backups = wait_for_backups(guest)?;
            let stream = dial(token)?;
            Ok(export::import_only(backups, stream, *bytes)?)
        }
        Transfer::DumpApp { app } => {
            app_dump::check_dumpable(app)?;
            let stream = dial(token)?;
            let (bytes, sha) = app_dump::dump(&config.postgres, app, stream)?;
            Ok((format!("dumped the database of app {app}"), bytes, sha))
        }
        Transfer::RestoreApp { app, bytes } => {
            app_dump::check_app(&config.postgres, app)?;
            let stream = dial(token)?;
            Ok(app_dump::restore(
                &config.postgres,
                app,
                stream,
                *bytes,
                crate::clock::now_unix(),
            )?)
        }
    }
}
