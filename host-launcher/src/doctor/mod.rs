//! `sovereign doctor`: what only a phone can tell, on one screen a user can attach to a
//! report. Nothing here is secret or identifies the device: no serial, no account, no
//! key; Android's release and the phone's model, the kernel, the hypervisor properties,
//! crosvm's version and the flags its `run --help` lists, the device nodes, the root
//! manager and its boot-script directory, SELinux's mode and the free space where the
//! VM's files live. The spec's preflight follows it; with `--try-vm`, a short trial
//! of each VM mode ([`trial`]).

pub mod trial;

use crate::paths::HostEnv;
use crate::preflight::hypervisor::{getprop, PROTECTED_VM_SUPPORTED, VM_SUPPORTED};
use crate::spec::Spec;
use crate::vmm::crosvm_flags::CrosvmFlags;
use std::path::Path;
use std::process::Command;

/// One fact: what it is about and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// Short name (`crosvm`, `selinux`).
    pub name: &'static str,
    /// What was found, one line.
    pub found: String,
}

pub(crate) fn fact(name: &'static str, found: impl Into<String>) -> Fact {
    Fact {
        name,
        found: found.into(),
    }
}

/// The Android properties the report reads: releases and hardware, never a serial.
const ANDROID_PROPS: [(&str, &str); 4] = [
    ("ro.build.version.release", "Android"),
    ("ro.build.version.sdk", "SDK"),
    ("ro.build.version.security_patch", "patch"),
    ("ro.product.model", "model"),
];

/// Everything the report says, in order.
pub fn facts(spec: &Spec, env: &HostEnv) -> Vec<Fact> {
    let mut out = vec![fact(
        "sovereign",
        format!(
            "{} ({}), state in {}",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH,
            env.base_dir.display()
        ),
    )];
    let props: Vec<String> = ANDROID_PROPS
        .iter()
        .filter_map(|(p, what)| {
            getprop(env, p)
                .filter(|v| !v.is_empty())
                .map(|v| format!("{what} {v}"))
        })
        .collect();
    out.push(fact(
        "android",
        if props.is_empty() {
            "no getprop answered (not Android, or not as root)".into()
        } else {
            props.join(", ")
        },
    ));
    out.push(fact(
        "kernel",
        read_line(Path::new("/proc/sys/kernel/osrelease")).unwrap_or_else(|| "?".into()),
    ));
    let hyp: Vec<String> = [
        VM_SUPPORTED,
        PROTECTED_VM_SUPPORTED,
        "ro.boot.hypervisor.version",
    ]
    .iter()
    .map(|p| {
        format!(
            "{}={}",
            p.trim_start_matches("ro.boot.hypervisor."),
            getprop(env, p).unwrap_or_else(|| "?".into())
        )
    })
    .collect();
    out.push(fact("hypervisor", hyp.join(" ")));
    out.push(fact("crosvm", crosvm(spec, env)));
    let node = |p: &Path| if p.exists() { "present" } else { "absent" };
    out.push(fact(
        "devices",
        format!(
            "{} {}, {} {}",
            env.kvm_device.display(),
            node(&env.kvm_device),
            env.vhost_vsock_device.display(),
            node(&env.vhost_vsock_device)
        ),
    ));
    out.push(fact("root manager", root_manager(env)));
    out.push(fact("selinux", selinux(&env.selinux_fs)));
    out.push(fact("free space", free_space(&env.base_dir)));
    out
}

/// The crosvm the spec names: its version line and what its `run --help` lists.
fn crosvm(spec: &Spec, env: &HostEnv) -> String {
    let Some(program) = env.find_tool(&spec.vmm.crosvm) else {
        return format!("{} not found", spec.vmm.crosvm);
    };
    let version = Command::new(&program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "no version printed".into());
    let flags = match env.crosvm_flags(&program) {
        None => "`run --help` lists no options".to_string(),
        Some(f) if f == CrosvmFlags::CURRENT => {
            "`run --help` lists every flag the launcher uses".to_string()
        }
        Some(f) => format!("`run --help` lacks {}", f.missing().join(", ")),
    };
    format!("{}: {version}; {flags}", program.display())
}

/// KernelSU, Magisk or APatch, by the directories each keeps under /data/adb, and
/// whether the boot-script directory `enable` writes to exists.
fn root_manager(env: &HostEnv) -> String {
    let adb = env
        .boot_script_dir
        .parent()
        .unwrap_or(Path::new("/data/adb"));
    let found: Vec<&str> = [("ksu", "KernelSU"), ("magisk", "Magisk"), ("ap", "APatch")]
        .iter()
        .filter(|(dir, _)| adb.join(dir).is_dir())
        .map(|(_, name)| *name)
        .collect();
    let managers = if found.is_empty() {
        "none recognised".to_string()
    } else {
        found.join(", ")
    };
    let scripts = if env.boot_script_dir.is_dir() {
        "present"
    } else {
        "absent"
    };
    format!("{managers}; {} {scripts}", env.boot_script_dir.display())
}

/// `enforcing`, `permissive` or `absent`, from selinuxfs.
fn selinux(fs: &Path) -> String {
    match read_line(&fs.join("enforce")).as_deref() {
        Some("1") => "enforcing".into(),
        Some("0") => "permissive".into(),
        Some(other) => format!("enforce = {other}"),
        None => format!("absent ({} not readable)", fs.join("enforce").display()),
    }
}

/// Free and total space of the filesystem holding `dir` (or its nearest existing parent).
fn free_space(dir: &Path) -> String {
    let existing = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    match rustix::fs::statvfs(existing) {
        Ok(s) => format!(
            "{} free of {} on the filesystem of {}",
            crate::terminal::size(s.f_bavail * s.f_frsize),
            crate::terminal::size(s.f_blocks * s.f_frsize),
            existing.display()
        ),
        Err(e) => format!("{}: {e}", existing.display()),
    }
}

fn read_line(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The report: a header, one line per fact.
pub fn render(facts: &[Fact]) -> String {
    let mut out = String::from(
        "sovereign doctor: what this device can do for Sovereign (no secrets, no serials; attach it to a report)\n",
    );
    for f in facts {
        out.push_str(&format!("  {:<13} {}\n", f.name, f.found));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join("bin").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn the_report_says_what_the_phone_answers_and_never_its_serial() {
        let d = tempfile::tempdir().unwrap();
        let mut env = crate::spec::tests::env_in(d.path(), true);
        env.search_dirs = vec![d.path().join("bin")];
        script(
            d.path(),
            "getprop",
            "case \"$1\" in ro.build.version.release) echo 15 ;; ro.product.model) echo 'Pixel 8' ;; \
             ro.boot.hypervisor.vm.supported) echo 1 ;; ro.serialno) echo SERIAL123 ;; *) echo ;; esac",
        );
        script(
            d.path(),
            "crosvm",
            "case \"$1\" in --version) echo 'crosvm 0.1.0 1234abcd' ;; *) echo 'Options:\n  --mem\n  --cpus\n  --vsock\n  --block' ;; esac",
        );
        std::fs::create_dir_all(d.path().join("adb/ksu")).unwrap();
        std::fs::create_dir_all(d.path().join("adb/service.d")).unwrap();
        std::fs::create_dir_all(d.path().join("selinux")).unwrap();
        std::fs::write(d.path().join("selinux/enforce"), "1").unwrap();
        let mut spec = Spec::builtin_sql(&env).unwrap();
        spec.vmm.crosvm = "crosvm".into();
        let text = render(&facts(&spec, &env));
        for want in [
            "android       Android 15, model Pixel 8",
            "hypervisor    vm.supported=1 protected_vm.supported= version=",
            "crosvm 0.1.0 1234abcd; `run --help` lacks --no-balloon",
            "root manager  KernelSU;",
            "service.d present",
            "selinux       enforcing",
            "dev-vhost-vsock absent",
        ] {
            assert!(text.contains(want), "{want:?} in:\n{text}");
        }
        assert!(!text.contains("SERIAL123"), "{text}");
        assert!(text.lines().count() <= 12, "one screen:\n{text}");
    }
}
