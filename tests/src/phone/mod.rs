//! A phone's userland on this machine, for rehearsing the phone guide without a phone:
//! a directory laid out like Android's (`/system/bin` with Debian's arm64 toybox for the
//! applets Android ships and arm64 mksh, Android's shell, as `sh`, from
//! `scripts/phone-userland.sh`; `/data/sovereign`, `/data/adb/service.d`,
//! `/system/build.prop`), entered with `chroot` in a mount namespace of its own, so that
//! nothing GNU and nothing x86 is in it. Everything there, the aarch64 `sovereign`
//! included, runs under qemu-aarch64 (binfmt), so `uname -m` says aarch64 as a phone's.
//! Stand-ins, each a mksh script, answer for what only a phone has: `getprop` (the pKVM
//! properties), `cmd` (records notification calls), `su` (`su -c CMD` as root) and
//! crosvm, which answers `--version` and `run --help` from the record of a real crosvm's
//! options
//! (`tests/fixtures/crosvm/run-options.txt`), refuses any option that record lacks the
//! way crosvm does, and records what it was asked. An `adb` on the host's side runs
//! `shell` lines in the phone and `push` copies into it, as adbd does. What Android's
//! `/system` holds is in [`android`], the crosvm stand-in in [`crosvm`].

mod android;
mod crosvm;

use android::{ANDROID_APPLETS, PROPERTIES};
pub use crosvm::android_crosvm_options;
use crosvm::CROSVM;

use crate::process::{run, text};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The phone, rooted at a temporary directory.
#[derive(Debug)]
pub struct FakePhone {
    /// The phone's `/`.
    pub root: tempfile::TempDir,
    /// The host's side: `bin/adb` and the phone's way in.
    pub host: tempfile::TempDir,
}

fn write_exe(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// What is missing on this machine for the rehearsal, if anything.
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (chroot and a mount namespace)".into());
    }
    for (tool, package) in [
        ("/usr/bin/toybox", "toybox"),
        ("/usr/bin/unshare", "util-linux"),
    ] {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} is missing (Debian package {package}; scripts/ci-deps.sh installs it)"
            ));
        }
    }
    if !std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").is_ok_and(|t| {
        t.contains("enabled")
            && t.lines()
                .any(|l| l.starts_with("flags:") && l.contains('F'))
    }) {
        return Some("qemu-aarch64 is not registered with binfmt_misc with the F flag (qemu-user-static; scripts/build-rootfs.sh registers it)".into());
    }
    None
}

impl FakePhone {
    /// Lays out the phone with `sovereign` (the aarch64 launcher) nowhere yet: `deploy`
    /// puts it in place. `record` is the text of the crosvm options record.
    pub fn new(userland: &Path, record: &str) -> FakePhone {
        let root = tempfile::Builder::new()
            .prefix("sov-phone-")
            .tempdir_in("/tmp")
            .expect("phone root");
        let host = tempfile::Builder::new()
            .prefix("sov-adb-")
            .tempdir_in("/tmp")
            .expect("host side");
        let r = root.path();
        let bin = r.join("system/bin");
        std::fs::create_dir_all(&bin).expect("system/bin");
        std::fs::copy(userland.join("bin/toybox"), bin.join("toybox")).expect("toybox");
        std::fs::copy(userland.join("bin/mksh"), bin.join("sh")).expect("mksh");
        let o = run(Command::new("cp")
            .arg("-a")
            .arg(userland.join("lib"))
            .arg(r));
        assert!(o.status.success(), "the C library: {}", text(&o));
        let have =
            String::from_utf8_lossy(&run(&mut Command::new("/usr/bin/toybox")).stdout).into_owned();
        let have: Vec<&str> = have.split_whitespace().collect();
        for applet in ANDROID_APPLETS.iter().filter(|a| have.contains(a)) {
            std::os::unix::fs::symlink("toybox", bin.join(applet)).expect("applet link");
        }
        let props: String = PROPERTIES
            .iter()
            .map(|(k, v)| format!("  {k}) echo '{v}' ;;\n"))
            .collect();
        write_exe(
            &bin.join("getprop"),
            &format!("#!/system/bin/sh\ncase \"$1\" in\n{props}  *) echo ;;\nesac\n"),
        );
        write_exe(
            &bin.join("cmd"),
            "#!/system/bin/sh\necho \"$*\" >>/data/local/tmp/cmd-calls\n",
        );
        write_exe(
            &bin.join("su"),
            "#!/system/bin/sh\n[ \"$1\" = -c ] && [ $# -eq 2 ] || { echo \"su stand-in: expected exactly -c CMD, got: $*\" >&2; exit 2; }\nexec /system/bin/sh -c \"$2\"\n",
        );
        std::fs::write(r.join("system/build.prop"), "ro.build.version.release=16\n")
            .expect("build.prop");
        // Android has no /etc/passwd: bionic names its ids itself. The glibc this
        // toybox uses reads them from files, so they hold Android's names and numbers.
        let etc = r.join("system/etc");
        std::fs::create_dir_all(&etc).expect("system/etc");
        std::fs::write(
            etc.join("passwd"),
            "root:x:0:0::/:/system/bin/sh\nshell:x:2000:2000::/:/system/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(etc.join("group"), "root:x:0:\nshell:x:2000:\n").expect("group");
        std::os::unix::fs::symlink("system/etc", r.join("etc")).expect("/etc link");
        let apex = r.join("apex/com.android.virt/bin");
        write_exe(&apex.join("crosvm"), CROSVM);
        std::fs::write(
            apex.join("run-options"),
            android_crosvm_options(record).join("\n") + "\n",
        )
        .expect("run-options");
        for d in [
            "data/sovereign",
            "data/adb/ksu",
            "data/adb/service.d",
            "data/local/tmp",
            "dev",
            "proc",
            "sys",
            "tmp",
        ] {
            std::fs::create_dir_all(r.join(d)).expect("phone dir");
        }
        // The phone's way in: a mount namespace of its own, chroot, Android's shell.
        write_exe(
            &host.path().join("enter"),
            &format!(
                "#!/bin/sh\n# Runs \"$1\" in the phone's shell, as adbd runs a shell line.\n\
                 exec unshare --mount --propagation private /bin/sh -c '\n\
                 r={root}\n\
                 mount --rbind /dev \"$r/dev\" && mount -t proc proc \"$r/proc\" && mount --rbind /sys \"$r/sys\" &&\n\
                 mount -t tmpfs tmpfs \"$r/tmp\" || exit 125\n\
                 exec env -i PATH=/system/bin:/apex/com.android.virt/bin ANDROID_ROOT=/system ANDROID_DATA=/data HOME=/ \\\n\
                   /usr/sbin/chroot \"$r\" /system/bin/sh -c \"$1\"' enter \"$1\"\n",
                root = r.display()
            ),
        );
        write_exe(
            &host.path().join("bin/adb"),
            &format!(
                "#!/bin/sh\n# adb for one phone, {root}\n\
                 [ \"$1\" = -s ] && shift 2\n\
                 case \"$1\" in\n\
                   devices) printf 'List of devices attached\\nrehearsal\\tdevice\\n\\n' ;;\n\
                   push) mkdir -p \"$(dirname \"{root}$3\")\" && cp \"$2\" \"{root}$3\" && echo \"$2: 1 file pushed, 0 skipped.\" ;;\n\
                   shell) shift; exec {enter} \"$*\" ;;\n\
                   *) echo \"adb stand-in: $1 is not emulated\" >&2; exit 1 ;;\n\
                 esac\n",
                root = r.display(),
                enter = host.path().join("enter").display()
            ),
        );
        FakePhone { root, host }
    }

    /// The host's `PATH` with this phone's `adb` first.
    pub fn host_path(&self) -> String {
        format!(
            "{}:{}",
            self.host.path().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// Runs one line of a shell on the host with the phone's `adb` first on PATH (a
    /// command of the guide as a user types it), in `dir`.
    pub fn host_line(&self, line: &str, dir: &Path, stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new("/bin/sh")
            .args(["-c", line])
            .current_dir(dir)
            .env("PATH", self.host_path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("host shell");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin.as_bytes());
        }
        child.wait_with_output().expect("host shell output")
    }

    /// Runs `line` in the phone's shell (as root, as after `su -c`).
    pub fn shell(&self, line: &str) -> Output {
        run(Command::new(self.host.path().join("enter")).arg(line))
    }

    /// The phone's file at `path` (absolute on the phone).
    pub fn file(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    /// What the stand-in crosvm was asked, one call a line.
    pub fn crosvm_calls(&self) -> String {
        std::fs::read_to_string(self.file("/data/local/tmp/crosvm-calls")).unwrap_or_default()
    }

    /// The output of a phone command, for messages.
    pub fn said(o: &Output) -> String {
        text(o)
    }
}
