//! `sovereign build --sql [--arch arm64|x86_64]`: builds the artifact set for the VM
//! (kernel, root image, both binaries) with the source tree's `scripts/build-images.sh`
//! and prints where it is, so `build --sql` → `deploy --sql` → `start --sql` works as
//! docs/phone.md writes it. The script stays the one place that knows how to build; this verb
//! finds it, runs it with the output streaming, and names the next step.

use anyhow::Context as _;
use clap::Args;
use protocol::arch::Arch;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The build script, relative to the source tree's root.
const SCRIPT: &str = "scripts/build-images.sh";

/// `build`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// The built-in `sql` VM (the only one `build` makes; spelled as the other verbs spell it).
    #[arg(long)]
    pub sql: bool,
    /// The guest architecture: arm64 for the phone (the default), x86_64 for QEMU here.
    #[arg(long, value_name = "ARCH", default_value = "arm64", value_parser = parse_arch)]
    pub arch: Arch,
    /// Where the artifact set goes [default: $SOVEREIGN_CACHE/out/ARCH, or ~/.cache/sovereign/out/ARCH].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The Sovereign source tree [default: the one holding the current directory, or
    /// the one this binary was built in].
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
}

fn parse_arch(s: &str) -> Result<Arch, protocol::arch::UnknownArch> {
    s.parse()
}

/// The source tree to build from: `explicit` when given (it must hold the script), else
/// the nearest ancestor of `cwd` that does, else the ancestors of `exe` (a launcher run
/// from `target/release/` of a checkout).
pub fn find_source(
    explicit: Option<&Path>,
    cwd: &Path,
    exe: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        anyhow::ensure!(
            dir.join(SCRIPT).is_file(),
            "--source {}: there is no {SCRIPT} in it (pass the root of a Sovereign checkout)",
            dir.display()
        );
        return Ok(dir.to_path_buf());
    }
    cwd.ancestors()
        .chain(exe.into_iter().flat_map(Path::ancestors))
        .find(|d| d.join(SCRIPT).is_file())
        .map(Path::to_path_buf)
        .with_context(|| {
            format!(
                "cannot find {SCRIPT} above {} or beside this binary: run `sovereign build` \
                 inside a Sovereign checkout, or pass --source DIR",
                cwd.display()
            )
        })
}

/// The script's command line for `args` in `source`.
pub fn script_command(args: &BuildArgs, source: &Path) -> Command {
    let mut c = Command::new(source.join(SCRIPT));
    c.current_dir(source).arg("--arch").arg(args.arch.as_str());
    if let Some(out) = &args.out {
        c.arg("--out").arg(out);
    }
    c
}

/// Runs `build`; returns the exit code.
pub fn run(args: &BuildArgs) -> anyhow::Result<i32> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let exe = std::env::current_exe().ok();
    let source = find_source(args.source.as_deref(), &cwd, exe.as_deref())?;
    eprintln!(
        "building the {} artifact set with {} (a cold build compiles a kernel and a Debian root image: minutes)",
        args.arch,
        source.join(SCRIPT).display()
    );
    let mut cmd = script_command(args, &source);
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", source.join(SCRIPT).display()))?;
    if !out.status.success() {
        eprintln!("build failed: {SCRIPT} exited with {}", out.status);
        return Ok(1);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("the build script printed no output directory")?
        .trim()
        .to_string();
    println!("artifacts for {} in {dir}", args.arch);
    match args.arch {
        Arch::Arm64 => println!("next: sovereign deploy --sql --artifacts {dir}"),
        Arch::X86_64 => println!(
            "next: sovereign start --spec FILE with kernel and root_image from {dir} (or scripts/demo.sh)"
        ),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("scripts")).unwrap();
        std::fs::create_dir_all(d.path().join("host-launcher/src")).unwrap();
        std::fs::write(d.path().join(SCRIPT), "#!/bin/sh\n").unwrap();
        d
    }

    #[test]
    fn the_source_is_found_above_the_current_directory_or_beside_the_binary() {
        let repo = checkout();
        let deep = repo.path().join("host-launcher/src");
        assert_eq!(find_source(None, &deep, None).unwrap(), repo.path());
        let elsewhere = tempfile::tempdir().unwrap();
        let exe = repo.path().join("target/release/sovereign");
        assert_eq!(
            find_source(None, elsewhere.path(), Some(&exe)).unwrap(),
            repo.path()
        );
        let e = find_source(None, elsewhere.path(), None).unwrap_err();
        assert!(e.to_string().contains("--source DIR"), "{e}");
        let e = find_source(Some(elsewhere.path()), &deep, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("there is no scripts/build-images.sh"),
            "{e}"
        );
    }

    #[test]
    fn the_script_gets_the_arch_and_the_output_directory() {
        let repo = checkout();
        let args = BuildArgs {
            sql: true,
            arch: Arch::Arm64,
            out: Some("/tmp/set".into()),
            source: None,
        };
        let c = script_command(&args, repo.path());
        let argv: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(argv, ["--arch", "arm64", "--out", "/tmp/set"]);
        assert_eq!(c.get_current_dir(), Some(repo.path()));
    }
}
