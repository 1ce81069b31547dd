//! Making a disk of a running VM larger, through the VMM that has it open: QEMU's
//! `block_resize` over QMP, crosvm's `disk resize`. Both grow the image file and tell
//! the guest's virtio-blk driver the new capacity; the guest then grows its filesystem
//! (guest-init's `disk_grow`).

use crate::paths::HostEnv;
use crate::rundir::RunDir;
use crate::spec::{Backend, Spec};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use thiserror::Error;

/// Why a running VM's disk could not be resized.
#[derive(Debug, Error)]
pub enum ResizeError {
    #[error("the VM has no {0} disk")]
    NoSuchDisk(String),
    #[error("QMP at {socket}: {why}")]
    Qmp {
        /// The QMP socket.
        socket: String,
        /// What went wrong.
        why: String,
    },
    #[error("`{command}` failed: {why}")]
    Crosvm {
        /// The command line.
        command: String,
        /// Its output or error.
        why: String,
    },
}

/// Resizes the disk `id` (`data` or `backup`, as in [`Spec::extra_disks`]) of the
/// running VM of `spec` to `bytes`.
pub fn resize_running(spec: &Spec, id: &str, bytes: u64) -> Result<(), ResizeError> {
    let run = RunDir::new(&spec.run_dir);
    match spec.vmm.backend {
        Backend::Qemu => qmp_block_resize(&run, id, bytes),
        Backend::Crosvm => {
            let index = crosvm_disk_index(spec, id)?;
            let program = super::program(&HostEnv::detect(), &spec.vmm.crosvm);
            let args = crosvm_resize_args(&run, index, bytes);
            let command = format!("{program} {}", args.join(" "));
            let out = std::process::Command::new(&program)
                .args(&args)
                .output()
                .map_err(|e| ResizeError::Crosvm {
                    command: command.clone(),
                    why: e.to_string(),
                })?;
            if out.status.success() {
                Ok(())
            } else {
                Err(ResizeError::Crosvm {
                    command,
                    why: format!(
                        "{}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                })
            }
        }
    }
}

/// crosvm numbers disks in the order of its command line: the root image first, then
/// [`Spec::extra_disks`].
fn crosvm_disk_index(spec: &Spec, id: &str) -> Result<usize, ResizeError> {
    spec.extra_disks()
        .iter()
        .position(|(d, _)| *d == id)
        .map(|i| i + 1)
        .ok_or_else(|| ResizeError::NoSuchDisk(id.to_string()))
}

/// `crosvm disk resize DISK_INDEX NEW_SIZE VM_SOCKET`.
pub fn crosvm_resize_args(run: &RunDir, index: usize, bytes: u64) -> Vec<String> {
    vec![
        "disk".into(),
        "resize".into(),
        index.to_string(),
        bytes.to_string(),
        run.crosvm_socket().display().to_string(),
    ]
}

/// QMP's greeting, `qmp_capabilities`, then `block_resize` of the drive `id`.
fn qmp_block_resize(run: &RunDir, id: &str, bytes: u64) -> Result<(), ResizeError> {
    let socket = run.qmp_socket();
    let fail = |why: String| ResizeError::Qmp {
        socket: socket.display().to_string(),
        why,
    };
    let stream = UnixStream::connect(&socket).map_err(|e| fail(e.to_string()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| fail(e.to_string()))?;
    let mut writer = stream.try_clone().map_err(|e| fail(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let mut read_reply = |what: &str| -> Result<serde_json::Value, ResizeError> {
        loop {
            let mut line = String::new();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                return Err(fail(format!("QEMU closed the connection before {what}")));
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| fail(format!("{e}: {line:?}")))?;
            // Events can come at any time; only a greeting or an answer ends the wait.
            if v.get("event").is_none() {
                return Ok(v);
            }
        }
    };
    read_reply("its greeting")?;
    for (what, command) in [
        (
            "qmp_capabilities",
            serde_json::json!({"execute": "qmp_capabilities"}),
        ),
        (
            "block_resize",
            serde_json::json!({"execute": "block_resize", "arguments": {"device": id, "size": bytes}}),
        ),
    ] {
        writeln!(writer, "{command}").map_err(|e| fail(e.to_string()))?;
        let reply = read_reply(what)?;
        if let Some(err) = reply.get("error") {
            return Err(fail(format!("{what}: {err}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::tests::phone_spec;

    #[test]
    fn crosvm_counts_the_root_image_first() {
        let mut s = phone_spec();
        s.backup.enabled = true;
        assert_eq!(crosvm_disk_index(&s, "data").unwrap(), 1);
        assert_eq!(crosvm_disk_index(&s, "backup").unwrap(), 2);
        s.backup.enabled = false;
        assert!(matches!(
            crosvm_disk_index(&s, "backup"),
            Err(ResizeError::NoSuchDisk(_))
        ));
        let run = RunDir::new(&s.run_dir);
        assert_eq!(
            crosvm_resize_args(&run, 1, 8 << 30).join(" "),
            "disk resize 1 8589934592 /data/sovereign/run/sql/crosvm.sock"
        );
    }

    #[test]
    fn qmp_is_spoken_in_order_and_an_error_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let listener = std::os::unix::net::UnixListener::bind(run.qmp_socket()).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            let mut r = BufReader::new(stream);
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut seen = Vec::new();
            for answer in [
                r#"{"return": {}}"#,
                r#"{"event": "X"}"#,
                r#"{"error": {"class": "GenericError", "desc": "Cannot grow device files"}}"#,
            ] {
                if !answer.contains("event") {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    seen.push(line);
                }
                writeln!(w, "{answer}").unwrap();
            }
            seen
        });
        let e = qmp_block_resize(&run, "data", 8 << 30)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("block_resize") && e.contains("Cannot grow device files"),
            "{e}"
        );
        let seen = server.join().unwrap();
        assert!(seen[0].contains("qmp_capabilities"), "{seen:?}");
        assert!(
            seen[1].contains(r#""device":"data""#) && seen[1].contains("8589934592"),
            "{seen:?}"
        );
    }
}
