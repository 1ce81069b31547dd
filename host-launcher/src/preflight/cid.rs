//! Who holds the guest's CID: another VM of this launcher (its run directory), or on
//! Android any crosvm process claiming it (another app's VM, a hand-started crosvm).

use super::Check;
use crate::paths::HostEnv;
use crate::rundir::{running_vms, Role, RunDir};
use crate::spec::Spec;
use std::path::Path;

/// Neither this VM nor another VM of this launcher already holds the spec's CID.
pub(super) fn cid_free(spec: &Spec, env: &HostEnv) -> Option<Check> {
    const NAME: &str = "cid";
    let own = RunDir::new(&spec.run_dir);
    if let Some(pid) = own
        .live_pid(Role::Supervisor)
        .or_else(|| own.live_pid(Role::Vmm))
    {
        return Some(Check::fail(
            NAME,
            format!(
                "VM {} is already running (pid {pid}, {})",
                spec.name,
                spec.run_dir.display()
            ),
            format!(
                "see `sovereign status`, or stop it first with `sovereign stop` for {}",
                spec.name
            ),
        ));
    }
    for vm in running_vms(&env.base_dir.join("run")) {
        if vm.run_dir != spec.run_dir && vm.cid == Some(spec.cid) {
            return Some(Check::fail(
                NAME,
                format!(
                    "CID {} is held by running VM {} (pid {})",
                    spec.cid, vm.name, vm.pid
                ),
                "give this VM another cid in its spec, or stop the other VM",
            ));
        }
    }
    Some(Check::pass(NAME, format!("CID {} free", spec.cid)))
}

/// The vsock CID a crosvm command line claims: `--cid N`, `--cid=N`, `--vsock N`,
/// `--vsock cid=N,...` (and the `=` forms). Other programs (QEMU with
/// vhost-device-vsock) never run on the phone; on Linux hosts the run-dir check covers
/// this launcher's own VMs.
pub fn cid_in_args(args: &[String]) -> Option<u32> {
    let program = args.first().map(|a| a.rsplit('/').next().unwrap_or(a))?;
    if !program.contains("crosvm") {
        return None;
    }
    let mut it = args.iter().skip(1).peekable();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        if flag != "--cid" && flag != "--vsock" {
            continue;
        }
        let Some(value) = inline.or_else(|| it.peek().map(|v| v.to_string())) else {
            continue;
        };
        let value = value
            .split(',')
            .find_map(|kv| match kv.split_once('=') {
                Some(("cid", v)) => Some(v.to_string()),
                None => Some(kv.to_string()),
                _ => None,
            })
            .unwrap_or_default();
        if let Ok(c) = value.parse() {
            return Some(c);
        }
    }
    None
}

/// Processes under `proc_root` (normally `/proc`) whose command line claims `cid`,
/// except this process and those whose command line names `own` (this VM's run dir):
/// `(pid, the command line)`.
pub fn processes_claiming_cid(proc_root: &Path, cid: u32, own: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir(proc_root) else {
        return vec![];
    };
    let mut v: Vec<(u32, String)> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(proc_root.join(pid.to_string()).join("cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let line = args.join(" ");
            (cid_in_args(&args) == Some(cid) && !line.contains(own)).then_some((pid, line))
        })
        .collect();
    v.sort();
    v
}

/// A VM this launcher did not start (another app's AVF VM, a hand-started crosvm) that
/// holds the spec's CID: crosvm would fail to bind it.
pub(super) fn foreign_cid(spec: &Spec, _env: &HostEnv) -> Option<Check> {
    foreign_cid_in(spec, Path::new("/proc"))
}

fn foreign_cid_in(spec: &Spec, proc_root: &Path) -> Option<Check> {
    const NAME: &str = "cid (other VMs)";
    // With the trailing slash, run/sql does not also match run/sql2.
    let own = format!("{}/", spec.run_dir.display());
    let found = processes_claiming_cid(proc_root, spec.cid, &own);
    Some(match found.first() {
        None => Check::pass(
            NAME,
            format!("no other VMM process claims CID {}", spec.cid),
        ),
        Some((pid, line)) => {
            let mut shown: String = line.chars().take(120).collect();
            if shown.len() < line.len() {
                shown.push('…');
            }
            Check::fail(
                NAME,
                format!("CID {} is claimed by pid {pid}: {shown}", spec.cid),
                format!(
                    "stop that VM, or give this one a free CID (cid = {} in a spec file)",
                    spec.cid.saturating_add(1)
                ),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::tests::{android_crosvm, setup};
    use crate::preflight::Status;
    use crate::spec::Backend;

    fn words(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn cids_are_read_from_every_vmm_spelling() {
        let cases = [
            ("/apex/com.android.virt/bin/crosvm run --cid 10 k", Some(10)),
            ("crosvm run --cid=11 k", Some(11)),
            (
                "crosvm run --vsock cid=12,device=/dev/vhost-vsock k",
                Some(12),
            ),
            ("crosvm run --vsock=cid=13 k", Some(13)),
            ("crosvm run --vsock 14 k", Some(14)),
            ("crosvm run --mem 1024 k", None),
            (
                "vhost-device-vsock --vm guest-cid=10,socket=/s,uds-path=/u",
                None,
            ),
            ("sleep --cid 10", None),
        ];
        for (line, want) in cases {
            assert_eq!(cid_in_args(&words(line)), want, "{line}");
        }
    }

    #[test]
    fn another_vmm_holding_the_cid_is_refused_but_our_own_is_not() {
        let (d, spec, _env) = android_crosvm();
        let proc_root = d.path().join("proc");
        let write = |pid: u32, line: &str| {
            let dir = proc_root.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cmdline"), line.replace(' ', "\0") + "\0").unwrap();
        };
        write(
            4000,
            &format!(
                "/apex/com.android.virt/bin/crosvm run --vsock cid=10 -s {}/crosvm.sock k",
                spec.run_dir.display()
            ),
        );
        write(4001, "crosvm run --cid 11 -s /other/run/vm2/crosvm.sock k");
        std::fs::create_dir_all(proc_root.join("self")).unwrap();
        let c = foreign_cid_in(&spec, &proc_root).unwrap();
        assert_eq!(
            c.status,
            Status::Pass,
            "our own crosvm is not foreign: {c:?}"
        );
        write(
            4002,
            "/apex/com.android.virt/bin/crosvm run --cid 10 --protected-vm x",
        );
        let c = foreign_cid_in(&spec, &proc_root).unwrap();
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(
            c.detail.starts_with(
                "CID 10 is claimed by pid 4002: /apex/com.android.virt/bin/crosvm run --cid 10"
            ),
            "{c:?}"
        );
        assert!(c.hint.as_deref().unwrap().contains("cid = 11"), "{c:?}");
        // The check on the real /proc runs (nothing here holds CID 10 under crosvm).
        assert_eq!(foreign_cid(&spec, &_env).unwrap().name, "cid (other VMs)");
    }

    #[test]
    fn a_running_vm_holding_the_cid_is_refused() {
        let (d, mut spec, env) = setup(Backend::Qemu);
        let other = d.path().join("run/other");
        std::fs::create_dir_all(&other).unwrap();
        let run_other = RunDir::new(&other);
        std::fs::write(run_other.spec_json(), r#"{"cid": 10}"#).unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true"])
            .arg(&other)
            .spawn()
            .unwrap();
        std::fs::write(run_other.pid_file(Role::Supervisor), child.id().to_string()).unwrap();
        crate::rundir::tests::wait_for_exec(child.id());
        let c = cid_free(&spec, &env).unwrap();
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("held by running VM other"), "{c:?}");
        spec.cid = 11;
        assert_eq!(cid_free(&spec, &env).unwrap().status, Status::Pass);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
