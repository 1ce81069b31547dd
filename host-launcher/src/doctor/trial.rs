//! `doctor --try-vm`: whether this phone's crosvm starts a VM at all, ordinary and
//! protected, with the VM's own kernel and nothing else (no disks, no vsock, so it runs
//! beside a VM that is up). A kernel that runs panics for want of a root disk and
//! reboots, which ends crosvm; a VM the hypervisor refuses ends at once with crosvm's
//! reason. Either way the report says how long it ran and how it ended.

use super::{fact, Fact};
use crate::paths::HostEnv;
use crate::spec::Spec;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a trial VM may run before it is stopped (it started, which is the answer).
const LIMIT: Duration = Duration::from_secs(10);

/// One line per mode the phone's crosvm offers.
pub fn try_modes(spec: &Spec, env: &HostEnv) -> Vec<Fact> {
    try_modes_within(spec, env, LIMIT)
}

/// [`try_modes`], each trial stopped after `limit`.
fn try_modes_within(spec: &Spec, env: &HostEnv, limit: Duration) -> Vec<Fact> {
    let Some(program) = env.find_tool(&spec.vmm.crosvm) else {
        return vec![fact("trial VM", format!("{} not found", spec.vmm.crosvm))];
    };
    let protected = env
        .crosvm_flags(&program)
        .is_some_and(|f| f.protected_vm_without_firmware);
    let mut out = vec![fact("ordinary VM", run_one(&program, spec, false, limit))];
    out.push(fact(
        "protected VM",
        if protected {
            run_one(&program, spec, true, limit)
        } else {
            "not tried: this crosvm lists no --protected-vm-without-firmware".to_string()
        },
    ));
    out
}

fn run_one(program: &std::path::Path, spec: &Spec, protected: bool, limit: Duration) -> String {
    let path = spec.log_file(if protected {
        "trial-protected"
    } else {
        "trial"
    });
    let log = match std::fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => return format!("cannot write {}: {e}", path.display()),
    };
    let mut cmd = Command::new(program);
    cmd.args(["run", "--disable-sandbox", "--mem", "256", "--cpus", "1"])
        .args(["--params", "panic=-1"]);
    if protected {
        cmd.arg("--protected-vm-without-firmware");
    }
    cmd.arg(&spec.kernel).stdin(Stdio::null());
    match log.try_clone() {
        Ok(l) => {
            cmd.stdout(Stdio::null()).stderr(l);
        }
        Err(e) => return format!("cannot pass its output along: {e}"),
    }
    let t0 = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return format!("cannot run {}: {e}", program.display()),
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if t0.elapsed() < limit => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    match status {
        None => format!("started: still running after {secs:.0} s, stopped"),
        Some(s) => format!(
            "ended after {secs:.1} s ({s}){}",
            last_line(log).map(|l| format!(": {l}")).unwrap_or_default()
        ),
    }
}

/// The last non-empty line crosvm wrote to stderr (kept in the log file), at most 160
/// characters.
fn last_line(mut file: std::fs::File) -> Option<String> {
    use std::io::{Read, Seek};
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    Some(line.chars().take(160).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_vm_that_runs_and_one_that_is_refused_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let mut env = crate::spec::tests::env_in(d.path(), true);
        env.search_dirs = vec![d.path().to_path_buf()];
        let crosvm = d.path().join("crosvm");
        std::fs::write(
            &crosvm,
            "#!/bin/sh\ncase \"$*\" in\n  *--help*) echo '  --mem\n  --cpus\n  --protected-vm-without-firmware' ;;\n  \
             *--protected-vm-without-firmware*) echo 'crosvm: failed to create VM: protected VMs are not supported' >&2; exit 1 ;;\n  \
             *) exec sleep 30 ;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&crosvm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut spec = Spec::builtin_sql(&env).unwrap();
        spec.vmm.crosvm = "crosvm".into();
        std::fs::create_dir_all(spec.log_dir()).unwrap();
        let facts = try_modes_within(&spec, &env, Duration::from_millis(500));
        assert!(
            facts[0].found.starts_with("started: still running after"),
            "{facts:?}"
        );
        assert!(
            facts[1].found.contains(
                "(exit status: 1): crosvm: failed to create VM: protected VMs are not supported"
            ),
            "{facts:?}"
        );
    }
}
