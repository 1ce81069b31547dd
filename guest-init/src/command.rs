//! Running a helper program to completion (mkfs, e2fsck, initdb, psql, tailscale) with
//! its output captured, through the reaper (never std's `wait`).

use crate::reaper::{self, Exit};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use thiserror::Error;

/// A helper program that could not be run or did not succeed.
#[derive(Debug, Error)]
pub enum CommandError {
    /// It could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// Program name.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran and failed.
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

/// Reads both pipes to their end at once (a child filling one while we block on the
/// other would hang), on this thread: poll(2), no helper thread the kernel could refuse.
fn drain(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>) -> (String, String) {
    let mut pipes: [Option<File>; 2] = [
        stdout.map(|p| File::from(OwnedFd::from(p))),
        stderr.map(|p| File::from(OwnedFd::from(p))),
    ];
    let mut bufs: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut chunk = [0u8; 8192];
    loop {
        let open: Vec<usize> = (0..2).filter(|i| pipes[*i].is_some()).collect();
        if open.is_empty() {
            break;
        }
        let mut fds: Vec<PollFd> = open
            .iter()
            .filter_map(|i| pipes[*i].as_ref())
            .map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (i, is_ready) in open.into_iter().zip(ready) {
            if !is_ready {
                continue;
            }
            let Some(pipe) = pipes[i].as_mut() else {
                continue;
            };
            match pipe.read(&mut chunk) {
                Ok(0) => pipes[i] = None,
                Ok(n) => bufs[i].extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => pipes[i] = None,
            }
        }
    }
    let [out, err] = bufs;
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Runs `cmd`, capturing stdout and stderr; any exit status is returned.
pub fn output(cmd: &mut Command) -> Result<Output, CommandError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = reaper::spawn(cmd).map_err(|source| CommandError::Spawn { program, source })?;
    let (stdout, stderr) = drain(child.child.stdout.take(), child.child.stderr.take());
    let exit = child.wait();
    Ok(Output {
        exit,
        stdout,
        stderr,
    })
}

/// Runs `cmd` and requires exit code 0 (or one of `ok_codes`).
pub fn run(cmd: &mut Command, ok_codes: &[i32]) -> Result<Output, CommandError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = output(cmd)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_pipes_are_read_whole() {
        // More than a pipe buffer (64 KiB) on each stream, interleaved.
        let script = "for i in $(seq 1 20000); do echo out$i; echo err$i >&2; done";
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        let spawned = reaper::spawn(
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .unwrap();
        let mut child = spawned;
        let (out, err) = drain(child.child.stdout.take(), child.child.stderr.take());
        assert_eq!(out.lines().count(), 20000);
        assert_eq!(err.lines().count(), 20000);
        assert!(out.ends_with("out20000\n") && err.ends_with("err20000\n"));
        // The reaper is not running in this test: kill and forget the child's exit.
        child.signal(nix::sys::signal::Signal::SIGKILL);
    }

    #[test]
    fn tails_keep_the_end() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("0123456789xyz", 3), "...xyz");
    }
}
