//! What the verbs that move bulk data share (`backup export`, `restore --from-export`,
//! `db dump`, `db restore`): the bytes go over their own data connection
//! ([`crate::transfer`]); a file being written is named `*.partial` until the stream's
//! SHA-256 checked out, so a cut export never looks like a whole one.

use super::running_spec;
use crate::private_file;
use crate::rundir::RunDir;
use crate::sealed;
use crate::spec::Spec;
use crate::terminal::size;
use crate::transfer::{self, TransferError};
use protocol::config::Secret;
use protocol::transfer::{Transfer, TransferAnswer};
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a received file is called until it is whole.
fn partial_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Prints a transfer's outcome; the exit code.
fn report(result: Result<TransferAnswer, TransferError>, started: Instant) -> i32 {
    match result {
        Ok(a) if a.ok => {
            eprintln!(
                "{} ({} in {:.1} s, sha256 {})",
                a.message,
                size(a.bytes),
                started.elapsed().as_secs_f64(),
                a.sha256.as_deref().unwrap_or("?")
            );
            0
        }
        Ok(a) => {
            eprintln!("failed: {}", a.message);
            1
        }
        Err(e) => {
            eprintln!("failed: {e}");
            1
        }
    }
}

/// Runs a guest → host transfer into `output` (a file, written as `*.partial` and
/// renamed once whole) or into stdout (refused on a terminal); sealed with `seal`
/// ([`crate::sealed`]) when given.
pub(super) fn receive(
    spec: &Spec,
    what: Transfer,
    output: Option<&Path>,
    seal: Option<&Secret>,
) -> anyhow::Result<i32> {
    let run = RunDir::new(&running_spec(spec).run_dir);
    let started = Instant::now();
    let Some(path) = output else {
        let stdout = io::stdout();
        if stdout.is_terminal() {
            anyhow::bail!("refusing to write binary data to a terminal: redirect stdout to a file or pass --output FILE");
        }
        let (code, _) = receive_into(&run, what, stdout.lock(), seal, started)?;
        if code != 0 {
            eprintln!("what was written to stdout is incomplete: do not use it");
        }
        return Ok(code);
    };
    // The whole database goes into this file: 0600, never through a planted link.
    private_file::check_replaceable(path)?;
    let partial = partial_name(path);
    let file = private_file::create_new(&partial)?;
    let (code, file) = receive_into(&run, what, file, seal, started)?;
    let Some(file) = file.filter(|_| code == 0) else {
        let _ = std::fs::remove_file(&partial);
        return Ok(code);
    };
    file.sync_all()?;
    std::fs::rename(&partial, path).map_err(|e| {
        anyhow::anyhow!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            path.display()
        )
    })?;
    println!("{}", path.display());
    Ok(code)
}

/// Moves the transfer's bytes into `out`, through the seal when there is one; the exit
/// code, and `out` back when the stream was whole.
fn receive_into<W: Write>(
    run: &RunDir,
    what: Transfer,
    out: W,
    seal: Option<&Secret>,
    started: Instant,
) -> anyhow::Result<(i32, Option<W>)> {
    let (result, out) = match seal {
        Some(passphrase) => {
            let mut sealed = sealed::seal(out, passphrase)?;
            let result = transfer::run(run, what, &mut io::empty(), &mut sealed);
            let whole = matches!(&result, Ok(a) if a.ok);
            // The last chunk is written only for a whole stream: a cut one never opens.
            let out = if whole { Some(sealed.finish()?) } else { None };
            (result, out)
        }
        None => {
            let mut out = out;
            let result = transfer::run(run, what, &mut io::empty(), &mut out);
            (result, Some(out))
        }
    };
    let whole = matches!(&result, Ok(a) if a.ok);
    Ok((report(result, started), out.filter(|_| whole)))
}

/// Runs a host → guest transfer of the file at `path`; a sealed file is opened with
/// `open` into a private file of the run directory first, so a wrong passphrase or a
/// damaged file is refused before the guest receives a byte.
pub(super) fn send(
    spec: &Spec,
    path: &Path,
    open: Option<&Secret>,
    what: impl FnOnce(u64) -> Transfer,
) -> anyhow::Result<i32> {
    let run = RunDir::new(&running_spec(spec).run_dir);
    let opened = match open {
        Some(passphrase) if sealed::is_sealed(path)? => {
            let plain = run.root().join("incoming.plain");
            let mut out = private_file::create_new(&plain)?;
            eprintln!(
                "opening the sealed {} with the backup passphrase ...",
                path.display()
            );
            let opened = sealed::open_into(path, passphrase, &mut out);
            if let Err(e) = opened {
                drop(out);
                let _ = std::fs::remove_file(&plain);
                return Err(e.into());
            }
            Some(PlainCopy(plain))
        }
        Some(_) => {
            eprintln!(
                "note: {} is not sealed (made before exports were): sending it as it is",
                path.display()
            );
            None
        }
        None => None,
    };
    let source = opened.as_ref().map_or(path, |p| p.0.as_path());
    let mut file =
        File::open(source).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", source.display()))?;
    let bytes = file.metadata()?.len();
    let started = Instant::now();
    let result = transfer::run(&run, what(bytes), &mut file, &mut io::sink());
    let code = report(result, started);
    io::stderr().flush()?;
    Ok(code)
}

/// An opened copy of a sealed export, removed when the transfer is done with it.
struct PlainCopy(PathBuf);

impl Drop for PlainCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
