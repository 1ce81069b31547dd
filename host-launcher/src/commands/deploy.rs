//! `sovereign deploy`: runs on the developer's machine, copies the arm64 artifact set to
//! a rooted phone with adb (see [`crate::deploy`]) and prints the command that starts
//! the VM there.

use crate::deploy::{self, remote::quote, Options, DEFAULT_DEST};
use crate::paths::{cache_dir, HostEnv};
use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;

/// The arguments of `deploy`.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// The built-in `sql` VM (the only one `deploy` copies; spelled as the other verbs spell it).
    #[arg(long)]
    pub sql: bool,
    /// The phone's serial as `adb devices` lists it; needed when more than one is attached.
    #[arg(long, value_name = "S", env = "ANDROID_SERIAL")]
    pub serial: Option<String>,
    /// The artifact set from `scripts/build-images.sh --arch arm64` [default: $SOVEREIGN_CACHE/out/arm64, or ~/.cache/sovereign/out/arm64].
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// Where the files go on the phone (`sovereign start --sql` expects /data/sovereign).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DEST)]
    pub dest: String,
    /// The adb program [default: adb from PATH].
    #[arg(long, value_name = "PATH")]
    pub adb: Option<PathBuf>,
    /// A new set for a phone that runs the VM already: push it, with its manifest, to
    /// <dest>/incoming (the running set is not touched) and print the `sovereign
    /// update` that boots it and goes back by itself if it fails.
    #[arg(long)]
    pub update: bool,
}

/// Where `deploy --update` puts a new set, under the destination.
pub const INCOMING: &str = "incoming";

/// Runs `deploy`; returns the exit code.
pub fn run(args: &DeployArgs, env: &HostEnv) -> anyhow::Result<i32> {
    let artifacts = match &args.artifacts {
        Some(d) => d.clone(),
        None => cache_dir()
            .map(|c| c.join("out").join(deploy::PHONE_ARCH.as_str()))
            .context("cannot tell where the artifact set is ($SOVEREIGN_CACHE and $HOME are unset): pass --artifacts DIR")?,
    };
    let adb = match &args.adb {
        Some(p) if crate::paths::is_executable(p) => p.clone(),
        Some(p) => {
            return Err(deploy::DeployError::AdbNotFound {
                searched: format!("--adb {} is not an executable file", p.display()),
            }
            .into())
        }
        None => env
            .find_tool("adb")
            .ok_or_else(|| deploy::DeployError::AdbNotFound {
                searched: "searched PATH, beside sovereign and the tool cache".into(),
            })?,
    };
    let base = args.dest.trim_end_matches('/').to_string();
    let opts = Options {
        artifacts,
        dest: if args.update {
            format!("{base}/{INCOMING}")
        } else {
            base.clone()
        },
        serial: args.serial.clone(),
        adb,
        with_manifest: args.update,
    };
    let summary = deploy::deploy(&opts, &mut |line| println!("  {line}"))?;
    let dest = opts.dest.trim_end_matches('/');
    if summary.pushed.is_empty() {
        println!(
            "✓ {dest} on {} is up to date ({} file(s) unchanged, nothing pushed)",
            summary.serial,
            summary.unchanged.len()
        );
    } else {
        println!(
            "✓ deployed to {dest} on {}: pushed {} ({}), {} unchanged; every file verified by SHA-256",
            summary.serial,
            summary.pushed.join(", "),
            deploy::human_bytes(summary.bytes_pushed),
            summary.unchanged.len()
        );
    }
    let serial = match &args.serial {
        Some(s) => format!(" -s {}", quote(s)?),
        None => String::new(),
    };
    let serial_flag = serial.clone();
    if args.update {
        let update = format!(
            "{} update {} --images {}",
            quote(&format!("{base}/sovereign"))?,
            if base == DEFAULT_DEST {
                "--sql".to_string()
            } else {
                format!("--spec {}", quote(&format!("{base}/sql.toml"))?)
            },
            quote(dest)?
        );
        println!(
            "next: adb{serial_flag} shell {}",
            local_word(&deploy::remote::su(&update)?)?
        );
        return Ok(0);
    }
    let launcher = quote(&format!("{dest}/sovereign"))?;
    let start = if dest == DEFAULT_DEST {
        format!("{launcher} start --sql")
    } else {
        println!("  note: `--sql` and the set's sql.toml name files under {DEFAULT_DEST}; edit the paths in {dest}/sql.toml to point into {dest} first");
        format!(
            "{launcher} start --spec {}",
            quote(&format!("{dest}/sql.toml"))?
        )
    };
    println!(
        "next: adb{serial} shell {}",
        local_word(&deploy::remote::su(&start)?)?
    );
    Ok(0)
}

/// One word for the user's own shell, in double quotes when that reads better (the
/// remote command already holds single quotes).
fn local_word(s: &str) -> Result<String, deploy::remote::QuoteError> {
    if s.contains(['"', '$', '`', '\\', '!']) {
        quote(s)
    } else {
        Ok(format!("\"{s}\""))
    }
}
