//! `enable` / `disable`: a boot script in the root manager's boot-script directory
//! (KernelSU and Magisk both run `/data/adb/service.d/*.sh` as root after boot) that
//! waits until Android says it has finished booting and then starts the VM, so the
//! database comes back by itself after the phone reboots.
//!
//! The script is ours only if it carries [`MARKER`]: `enable` never overwrites, and
//! `disable` never removes, a file someone else put under the same name.

use crate::paths::HostEnv;
use crate::spec::Spec;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The line that marks a boot script as written by `sovereign enable`.
pub const MARKER: &str = "# sovereign-autostart";

/// How the installed script starts the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The `sovereign` binary to run.
    pub sovereign: PathBuf,
    /// `--spec FILE`, or `None` for the built-in VM (`--sql`).
    pub spec_file: Option<PathBuf>,
}

/// Why a boot script could not be installed or removed.
#[derive(Debug, Error)]
pub enum AutostartError {
    #[error("no root manager boot-script directory: {parent} does not exist (KernelSU and Magisk create it; without one, nothing runs scripts at boot)")]
    NoRootManager {
        /// The directory that should hold the boot-script directory.
        parent: PathBuf,
    },
    #[error("{path} exists and was not written by `sovereign enable` (no {MARKER:?} line); move it away first")]
    NotOurs {
        /// The foreign file.
        path: PathBuf,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    #[error("{0}; the boot script would run it as root at every boot: move it where only root can write (under the state directory)")]
    Untrusted(#[from] crate::trust::Untrusted),
    #[error("cannot remove {path}: {source}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Where `enable` keeps its own copy of a `sovereign` binary that others could replace.
pub fn installed_binary(env: &HostEnv) -> PathBuf {
    env.base_dir.join("bin/sovereign")
}

/// What the boot script may run as root at every boot: the spec file only when nobody
/// but root (or this user) can change it or a directory above it, and the binary as it
/// is when the same holds, else a copy in [`installed_binary`], itself checked.
/// Returns the launch and whether the binary was copied.
pub fn trusted_launch(
    env: &HostEnv,
    exe: &Path,
    spec_file: Option<&Path>,
) -> Result<(Launch, bool), AutostartError> {
    if let Some(f) = spec_file {
        crate::trust::check(f, env.euid)?;
    }
    if crate::trust::check(exe, env.euid).is_ok() {
        let launch = Launch {
            sovereign: exe.to_path_buf(),
            spec_file: spec_file.map(Path::to_path_buf),
        };
        return Ok((launch, false));
    }
    let copy = installed_binary(env);
    let write = |copy: &Path| -> std::io::Result<()> {
        let dir = copy.parent().unwrap_or(Path::new("/"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let tmp = copy.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        std::io::copy(&mut std::fs::File::open(exe)?, &mut out)?;
        out.sync_all()?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
        std::fs::rename(&tmp, copy)
    };
    write(&copy).map_err(|source| AutostartError::Write {
        path: copy.clone(),
        source,
    })?;
    crate::trust::check(&copy, env.euid)?;
    let launch = Launch {
        sovereign: copy,
        spec_file: spec_file.map(Path::to_path_buf),
    };
    Ok((launch, true))
}

/// The boot script of VM `name` in `env`'s boot-script directory.
pub fn script_path(env: &HostEnv, name: &str) -> PathBuf {
    env.boot_script_dir.join(format!("sovereign-{name}.sh"))
}

fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    shlex::try_quote(&s).map_or_else(|_| format!("'{}'", s.replace('\'', "")), |q| q.into_owned())
}

/// The script's text: wait for `sys.boot_completed`, then `start` the VM with its output
/// appended to a log beside the console log.
pub fn script(spec: &Spec, launch: &Launch) -> String {
    let select = match &launch.spec_file {
        Some(f) => format!("--spec {}", quote(f)),
        None => "--sql".to_string(),
    };
    format!(
        "#!/system/bin/sh\n\
         {MARKER}: starts VM {name} after the phone has booted.\n\
         # Installed by `sovereign enable`; `sovereign disable` removes it.\n\
         # The root manager runs it in the background; waiting here holds up nothing else.\n\
         until [ \"$(getprop sys.boot_completed)\" = 1 ]; do sleep 5; done\n\
         exec {sovereign} start {select} >>{log} 2>&1\n",
        name = spec.name,
        sovereign = quote(&launch.sovereign),
        log = quote(&spec.log_file("autostart")),
    )
}

/// Whether `path` holds a script `enable` wrote.
fn is_ours(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| l.starts_with(MARKER)))
}

/// Installs (or replaces our own) boot script; returns its path.
pub fn enable(env: &HostEnv, spec: &Spec, launch: &Launch) -> Result<PathBuf, AutostartError> {
    let dir = &env.boot_script_dir;
    let parent = dir.parent().unwrap_or(dir).to_path_buf();
    if !parent.is_dir() {
        return Err(AutostartError::NoRootManager { parent });
    }
    std::fs::create_dir_all(dir).map_err(|source| AutostartError::Write {
        path: dir.clone(),
        source,
    })?;
    let path = script_path(env, &spec.name);
    if path.exists() && !is_ours(&path) {
        return Err(AutostartError::NotOurs { path });
    }
    let tmp = path.with_extension("sh.new");
    let write = |tmp: &Path| -> std::io::Result<()> {
        let _ = std::fs::remove_file(tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(tmp)?;
        f.write_all(script(spec, launch).as_bytes())?;
        f.sync_all()?;
        // The mode given at creation is filtered by the umask; set it outright.
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o700))?;
        std::fs::rename(tmp, &path)
    };
    write(&tmp).map_err(|source| AutostartError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Removes our boot script; `Ok(None)` when there was none.
pub fn disable(env: &HostEnv, name: &str) -> Result<Option<PathBuf>, AutostartError> {
    let path = script_path(env, name);
    if !path.exists() {
        return Ok(None);
    }
    if !is_ours(&path) {
        return Err(AutostartError::NotOurs { path });
    }
    std::fs::remove_file(&path).map_err(|source| AutostartError::Remove {
        path: path.clone(),
        source,
    })?;
    Ok(Some(path))
}

/// Our boot script for VM `name`, when one is installed.
pub fn installed(env: &HostEnv, name: &str) -> Option<PathBuf> {
    let path = script_path(env, name);
    is_ours(&path).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::env_in;

    /// A fake phone root: `<tmp>/adb` exists as the root manager made it.
    fn phone() -> (tempfile::TempDir, HostEnv, Spec) {
        let d = tempfile::tempdir().unwrap();
        let env = env_in(d.path(), true);
        std::fs::create_dir_all(d.path().join("adb")).unwrap();
        let spec = Spec::builtin_sql(&env).unwrap();
        (d, env, spec)
    }

    fn builtin() -> Launch {
        Launch {
            sovereign: "/data/sovereign/sovereign".into(),
            spec_file: None,
        }
    }

    #[test]
    fn the_script_waits_for_boot_completed_then_starts_the_vm() {
        let (d, env, spec) = phone();
        let path = enable(&env, &spec, &builtin()).unwrap();
        assert_eq!(path, d.path().join("adb/service.d/sovereign-sql.sh"));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#!/system/bin/sh");
        assert!(lines[1].starts_with(MARKER), "{text}");
        let wait = lines
            .iter()
            .position(|l| l.contains("getprop sys.boot_completed"))
            .unwrap();
        let start = lines
            .iter()
            .position(|l| l.starts_with("exec /data/sovereign/sovereign start --sql >>"))
            .unwrap();
        assert!(wait < start, "waits before it starts: {text}");
        assert!(
            lines[start].ends_with(&format!(
                ">>{} 2>&1",
                d.path().join("sql-autostart.log").display()
            )),
            "{text}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(installed(&env, "sql"), Some(path.clone()));
        // Enabling again replaces our own script.
        enable(&env, &spec, &builtin()).unwrap();
        assert_eq!(disable(&env, "sql").unwrap(), Some(path.clone()));
        assert!(!path.exists());
        assert_eq!(disable(&env, "sql").unwrap(), None);
        assert_eq!(installed(&env, "sql"), None);
    }

    /// Runs the script with `sh` against fakes: a `getprop` that says "booted" on its
    /// second call, and a `sovereign` that records its arguments.
    #[test]
    fn the_script_really_waits_and_then_runs_start() {
        use std::os::unix::fs::PermissionsExt;
        let (d, env, spec) = phone();
        let bin = d.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let fake = |name: &str, body: String| {
            let p = bin.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let calls = d.path().join("getprop-calls");
        fake(
            "getprop",
            format!(
                "echo x >> '{c}'; [ \"$1\" = sys.boot_completed ] && [ $(wc -l < '{c}') -ge 2 ] && echo 1 || echo",
                c = calls.display()
            ),
        );
        let ran = d.path().join("ran");
        let sovereign = fake("sovereign", format!("echo \"$@\" > '{}'", ran.display()));
        let path = enable(
            &env,
            &spec,
            &Launch {
                sovereign,
                spec_file: None,
            },
        )
        .unwrap();
        let t = std::time::Instant::now();
        let out = std::process::Command::new("sh")
            .arg(&path)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read_to_string(&ran).unwrap(), "start --sql\n");
        assert_eq!(
            std::fs::read_to_string(&calls).unwrap().lines().count(),
            2,
            "asked until booted"
        );
        assert!(
            t.elapsed() >= std::time::Duration::from_secs(4),
            "it slept in between"
        );
    }

    #[test]
    fn what_others_could_replace_is_refused_or_copied_where_they_cannot() {
        let (d, env, _) = phone();
        let env = HostEnv {
            euid: nix::unistd::geteuid().as_raw(),
            ..env
        };
        let open = d.path().join("local-tmp");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let exe = open.join("sovereign");
        std::fs::write(&exe, "#!/bin/sh\necho the real one\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();

        // A spec anyone may edit would let anyone choose what root boots.
        let spec_file = open.join("phone.toml");
        std::fs::write(&spec_file, "").unwrap();
        let e = trusted_launch(&env, &exe, Some(&spec_file))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("local-tmp") && e.contains("writable by group or others"),
            "{e}"
        );

        // The binary from a directory anyone can write to is copied into the state
        // directory, and the script runs the copy.
        let (launch, copied) = trusted_launch(&env, &exe, None).unwrap();
        assert!(copied);
        assert_eq!(launch.sovereign, installed_binary(&env));
        assert_eq!(
            std::fs::read(&launch.sovereign).unwrap(),
            std::fs::read(&exe).unwrap()
        );
        let mode = std::fs::metadata(&launch.sovereign)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // A trusted binary is used where it is.
        let (again, copied) = trusted_launch(&env, &launch.sovereign, None).unwrap();
        assert!(!copied);
        assert_eq!(again.sovereign, installed_binary(&env));
    }

    #[test]
    fn paths_with_spaces_and_quotes_stay_one_word() {
        let (_d, _env, spec) = phone();
        let launch = Launch {
            sovereign: "/data/my tools/sovereign".into(),
            spec_file: Some("/data/it's here/sql.toml".into()),
        };
        let text = script(&spec, &launch);
        let exec = text.lines().find(|l| l.starts_with("exec ")).unwrap();
        let words = shlex::split(exec).unwrap();
        assert_eq!(
            &words[..5],
            [
                "exec",
                "/data/my tools/sovereign",
                "start",
                "--spec",
                "/data/it's here/sql.toml"
            ]
        );
    }

    #[test]
    fn someone_elses_file_is_never_touched_and_no_root_manager_is_named() {
        let (d, env, spec) = phone();
        std::fs::create_dir_all(&env.boot_script_dir).unwrap();
        let foreign = script_path(&env, "sql");
        std::fs::write(&foreign, "#!/system/bin/sh\necho mine\n").unwrap();
        let e = enable(&env, &spec, &builtin()).unwrap_err();
        assert!(matches!(e, AutostartError::NotOurs { .. }), "{e}");
        let e = disable(&env, "sql").unwrap_err();
        assert!(
            e.to_string()
                .contains("was not written by `sovereign enable`"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(&foreign).unwrap(),
            "#!/system/bin/sh\necho mine\n"
        );
        assert_eq!(installed(&env, "sql"), None);

        std::fs::remove_dir_all(d.path().join("adb")).unwrap();
        let e = enable(&env, &spec, &builtin()).unwrap_err();
        assert!(
            e.to_string().contains("KernelSU and Magisk create it"),
            "{e}"
        );
    }
}
