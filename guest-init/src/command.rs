//! Running a helper program to completion (mkfs, e2fsck, initdb, psql, tailscale) with
//! its output captured, through the reaper (never std's `wait`).

use crate::reaper::{self, Exit};
use std::io::Read;
use std::process::{Command, Stdio};
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

/// Runs `cmd`, capturing stdout and stderr; any exit status is returned.
pub fn output(cmd: &mut Command) -> Result<Output, CommandError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = reaper::spawn(cmd).map_err(|source| CommandError::Spawn { program, source })?;
    let err_pipe = child.child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = err_pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    });
    let mut stdout = String::new();
    if let Some(mut p) = child.child.stdout.take() {
        let _ = p.read_to_string(&mut stdout);
    }
    let stderr = err_reader.join().unwrap_or_default();
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
    fn tails_keep_the_end() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("0123456789xyz", 3), "...xyz");
    }
}
