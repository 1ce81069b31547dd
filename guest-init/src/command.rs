//! Running a helper program to completion (mkfs, e2fsck, initdb, psql, tailscale) with
//! its output captured, through the reaper (never std's `wait`).

use crate::lifecycle::reaper::{self, Exit};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use thiserror::Error;

/// A helper program that could not be run or did not succeed.
#[derive(Debug, Error)]
pub enum CommandError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// Program name.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    #[error("passing on the output of {program}: {source}")]
    Passing {
        /// Program name.
        program: String,
        /// Why the output could not be written on.
        source: std::io::Error,
    },
    #[error("{program} failed ({exit}): {stderr}")]
    Failed {
        /// Program name.
        program: String,
        /// How it ended.
        exit: Exit,
        /// The tail of its error output.
        stderr: String,
    },
}

/// What a finished program printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// How it ended.
    pub exit: Exit,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// True when output beyond the cap was read and dropped.
    pub truncated: bool,
}

fn tail(s: &str, max: usize) -> String {
    let t = s.trim();
    if t.len() <= max {
        return t.to_string();
    }
    let mut cut = t.len() - max;
    while !t.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{}", &t[cut..])
}

/// Most bytes of each output stream kept by [`output`]; the rest is read and dropped,
/// so a child that prints without end cannot fill PID 1's memory.
pub const DEFAULT_OUTPUT_CAP: usize = 1 << 20;

/// Feeds `input` to the child's stdin and reads its stdout and stderr to their end, all
/// at once (a child filling one pipe while we block on another would hang), on this
/// thread: poll(2), no helper thread the kernel could refuse. Keeps at most `cap` bytes
/// of each output; returns them and whether anything was dropped.
fn exchange(
    stdin: Option<ChildStdin>,
    input: &[u8],
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    cap: usize,
) -> ([Vec<u8>; 2], bool) {
    let mut writer = stdin.map(|p| File::from(OwnedFd::from(p)));
    let mut pending = input;
    if pending.is_empty() {
        writer = None;
    }
    let mut readers: [Option<File>; 2] = [
        stdout.map(|p| File::from(OwnedFd::from(p))),
        stderr.map(|p| File::from(OwnedFd::from(p))),
    ];
    let mut bufs: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut dropped = false;
    let mut chunk = [0u8; 8192];
    loop {
        // Slot 0: stdin (while input is left), slots 1 and 2: the outputs.
        let mut slots: Vec<usize> = Vec::with_capacity(3);
        let mut polled: Vec<PollFd> = Vec::with_capacity(3);
        if let Some(w) = writer.as_ref() {
            slots.push(0);
            polled.push(PollFd::new(w.as_fd(), PollFlags::POLLOUT));
        }
        for (i, r) in readers.iter().enumerate() {
            if let Some(r) = r.as_ref() {
                slots.push(i + 1);
                polled.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
            }
        }
        if slots.is_empty() {
            break;
        }
        match poll(&mut polled, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        let ready: Vec<(usize, bool)> = slots
            .iter()
            .zip(&polled)
            .map(|(slot, f)| (*slot, f.revents().is_some_and(|r| !r.is_empty())))
            .collect();
        drop(polled);
        for (slot, is_ready) in ready {
            if !is_ready {
                continue;
            }
            if slot == 0 {
                let Some(w) = writer.as_mut() else { continue };
                let n = pending.len().min(PIPE_CHUNK);
                match w.write(&pending[..n]) {
                    Ok(written) => pending = &pending[written..],
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // The child closed its stdin: it will not read the rest.
                    Err(_) => pending = &[],
                }
                if pending.is_empty() {
                    writer = None;
                }
                continue;
            }
            let i = slot - 1;
            let Some(r) = readers[i].as_mut() else {
                continue;
            };
            match r.read(&mut chunk) {
                Ok(0) => readers[i] = None,
                Ok(n) => {
                    let room = cap.saturating_sub(bufs[i].len());
                    bufs[i].extend_from_slice(&chunk[..n.min(room)]);
                    dropped |= n > room;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => readers[i] = None,
            }
        }
    }
    (bufs, dropped)
}

/// Bytes written to a child's stdin per write: at most one pipe buffer, so a write
/// after POLLOUT does not block for long.
const PIPE_CHUNK: usize = 4096;

/// Runs `cmd`, capturing stdout and stderr (up to [`DEFAULT_OUTPUT_CAP`] each); any
/// exit status is returned.
pub fn output(cmd: &mut Command) -> Result<Output, CommandError> {
    output_with_input(cmd, &[], DEFAULT_OUTPUT_CAP)
}

/// Runs `cmd` with `input` on its stdin (how secrets and SQL reach a helper: never in
/// its argv, never in a file), keeping up to `cap` bytes of each output.
pub fn output_with_input(
    cmd: &mut Command,
    input: &[u8],
    cap: usize,
) -> Result<Output, CommandError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if input.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = reaper::spawn(cmd).map_err(|source| CommandError::Spawn { program, source })?;
    let ([out, err], truncated) = exchange(
        child.child.stdin.take(),
        input,
        child.child.stdout.take(),
        child.child.stderr.take(),
        cap,
    );
    let exit = child.wait();
    Ok(Output {
        exit,
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        truncated,
    })
}

/// Runs `cmd` and requires exit code 0 (or one of `ok_codes`).
pub fn run(cmd: &mut Command, ok_codes: &[i32]) -> Result<Output, CommandError> {
    run_with_input(cmd, &[], ok_codes)
}

/// [`run`] with `input` on the child's stdin.
pub fn run_with_input(
    cmd: &mut Command,
    input: &[u8],
    ok_codes: &[i32],
) -> Result<Output, CommandError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = output_with_input(cmd, input, DEFAULT_OUTPUT_CAP)?;
    match out.exit {
        Exit::Code(0) => Ok(out),
        Exit::Code(c) if ok_codes.contains(&c) => Ok(out),
        exit => Err(CommandError::Failed {
            program,
            exit,
            stderr: tail(&format!("{}\n{}", out.stderr, out.stdout), 600),
        }),
    }
}

/// An unnamed file for a child's stderr (O_TMPFILE in `dir`), so that a child whose
/// stdout is streamed can never block on a full stderr pipe; `None` when the
/// filesystem cannot make one (the child's stderr is then discarded).
fn unnamed_file(dir: &std::path::Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .ok()
}

/// What a finished child wrote into its unnamed stderr file.
fn read_back(file: Option<File>) -> String {
    use std::io::{Seek, SeekFrom};
    let mut text = String::new();
    if let Some(mut f) = file {
        if f.seek(SeekFrom::Start(0)).is_ok() {
            let _ = f.take(64 * 1024).read_to_string(&mut text);
        }
    }
    tail(&text, 600)
}

/// Runs `cmd` with `stdin` (a file, or nothing) and its stdout passed on into `out` as
/// it comes (a dump of gigabytes never sits in memory), and requires exit code 0. If
/// `out` fails (the host went away), the child is killed. Returns the bytes passed on.
pub fn stream(
    cmd: &mut Command,
    stdin: Option<File>,
    out: &mut dyn Write,
) -> Result<u64, CommandError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let err_file =
        unnamed_file(std::path::Path::new("/run")).or_else(|| unnamed_file(&std::env::temp_dir()));
    let err_out = match err_file.as_ref().map(File::try_clone) {
        Some(Ok(f)) => Stdio::from(f),
        _ => Stdio::null(),
    };
    cmd.stdin(stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(Stdio::piped())
        .stderr(err_out);
    let mut child = reaper::spawn(cmd).map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    let passed = match child.child.stdout.take() {
        Some(mut pipe) => std::io::copy(&mut pipe, out),
        None => Ok(0),
    };
    if passed.is_err() {
        child.signal(nix::sys::signal::Signal::SIGKILL);
    }
    let exit = child.wait();
    let passed = passed.map_err(|source| CommandError::Passing {
        program: program.clone(),
        source,
    })?;
    if exit.success() {
        Ok(passed)
    } else {
        Err(CommandError::Failed {
            program,
            exit,
            stderr: read_back(err_file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piped(c: &mut Command) -> reaper::ChildHandle {
        reaper::spawn(
            c.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .unwrap()
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn input_goes_in_and_both_outputs_come_out_whole() {
        // More than a pipe buffer (64 KiB) in and on each output, interleaved: any
        // blocking order would hang here.
        let input: String = (1..=20000).map(|i| format!("in{i}\n")).collect();
        let script = "while read l; do echo out-$l; echo err-$l >&2; done";
        let mut child = piped(Command::new("sh").args(["-c", script]));
        let ([out, err], truncated) = exchange(
            child.child.stdin.take(),
            input.as_bytes(),
            child.child.stdout.take(),
            child.child.stderr.take(),
            DEFAULT_OUTPUT_CAP,
        );
        let (out, err) = (text(&out), text(&err));
        assert!(!truncated);
        assert_eq!(out.lines().count(), 20000);
        assert_eq!(err.lines().count(), 20000);
        assert!(out.ends_with("out-in20000\n") && err.ends_with("err-in20000\n"));
        // The reaper is not running in this test: kill and forget the child's exit.
        child.signal(nix::sys::signal::Signal::SIGKILL);
    }

    #[test]
    fn endless_output_is_capped_not_buffered() {
        let mut child = piped(Command::new("sh").args(["-c", "head -c 5000000 /dev/zero"]));
        let ([out, err], truncated) = exchange(
            child.child.stdin.take(),
            b"",
            child.child.stdout.take(),
            child.child.stderr.take(),
            64 * 1024,
        );
        assert!(truncated);
        assert_eq!(out.len(), 64 * 1024);
        assert!(err.is_empty());
        child.signal(nix::sys::signal::Signal::SIGKILL);
    }

    #[test]
    fn a_streamed_child_passes_its_output_on_and_its_stderr_back() {
        reaper::tests::in_child_process(
            concat!(module_path!(), "::stream_body"),
            "SOVEREIGN_STREAM_TEST",
        );
    }

    /// Needs a reaper, so it runs in its own process (see the test above).
    #[test]
    #[ignore = "runs only inside a_streamed_child_passes_its_output_on's child process"]
    fn stream_body() {
        if std::env::var_os("SOVEREIGN_STREAM_TEST").is_none() {
            return;
        }
        std::thread::spawn(|| loop {
            reaper::reap_all();
            std::thread::sleep(std::time::Duration::from_millis(5));
        });
        let mut input = tempfile::tempfile().unwrap();
        input.write_all(b"head:").unwrap();
        use std::io::Seek;
        input.rewind().unwrap();
        let mut out = Vec::new();
        let script = "cat; head -c 300000 /dev/zero; echo done >&2";
        let n = stream(
            Command::new("sh").args(["-c", script]),
            Some(input),
            &mut out,
        )
        .unwrap();
        assert_eq!(n, 300_005);
        assert!(out.starts_with(b"head:"));
        let e = stream(
            Command::new("sh").args(["-c", "echo partial; echo 'no such table' >&2; exit 4"]),
            None,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no such table"), "{e}");
    }

    #[test]
    fn tails_keep_the_end() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("0123456789xyz", 3), "...xyz");
    }
}
