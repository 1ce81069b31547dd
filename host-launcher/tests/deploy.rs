//! `sovereign deploy` against a fake `adb` on PATH: no phone exists on the build
//! machines, so this is the one place a stand-in is used. The fake is a shell script
//! that records every call (one line, arguments separated by tabs) and emulates one
//! phone whose file system is a temporary directory: `push` copies into it, and
//! `shell LINE` runs LINE with `sh -c` (as adbd does) after mapping `/data/` into it,
//! with stand-ins for `su` (which insists on exactly `-c CMD`, so a quoting mistake
//! fails), `id`, `uname` and `chown`. Real `sha256sum`, `mv`, `chmod`, `mkdir` do the rest.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed step is a failed test

use protocol::manifest::{FileMode, Manifest, ManifestEntry, FILE_NAME};
use protocol::Arch;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sovereign");

const FAKE_ADB: &str = r#"#!/bin/sh
# Fake adb: records its arguments, emulates one phone rooted at $FAKE/root.
FAKE=$(dirname "$0")/..
FAKE=$(cd "$FAKE" && pwd)
{ sep=''; for a in "$@"; do printf '%s%s' "$sep" "$a"; sep='	'; done; printf '\n'; } >>"$FAKE/calls"
serial=''
if [ "$1" = -s ]; then serial=$2; shift 2; fi
case "$1" in
  devices)
    echo "List of devices attached"
    cat "$FAKE/devices"
    echo
    exit 0 ;;
  push)
    dst="$FAKE/root$3"
    mkdir -p "$(dirname "$dst")" && cp "$2" "$dst" || exit 1
    if [ -f "$FAKE/corrupt" ] && [ "$(basename "$2")" = "$(cat "$FAKE/corrupt")" ]; then
      printf 'x' >>"$dst"
    fi
    echo "$2: 1 file pushed, 0 skipped."
    exit 0 ;;
  shell)
    shift
    [ $# -eq 1 ] || { echo "fake adb: expected one shell line, got $#" >&2; exit 2; }
    line=$(printf '%s' "$1" | sed "s#/data/#$FAKE/root/data/#g")
    PATH="$FAKE/bin:$PATH" sh -c "$line" >"$FAKE/out" 2>"$FAKE/err"
    rc=$?
    sed "s#$FAKE/root/data/#/data/#g" "$FAKE/out"
    sed "s#$FAKE/root/data/#/data/#g" "$FAKE/err" >&2
    exit $rc ;;
esac
echo "fake adb: unknown command $1" >&2
exit 1
"#;

const FAKE_SU: &str = r#"#!/bin/sh
[ $# -eq 2 ] && [ "$1" = -c ] || { echo "fake su: expected exactly -c CMD, got $# argument(s): $*" >&2; exit 2; }
FAKE=$(cd "$(dirname "$0")/.." && pwd)
if [ -f "$FAKE/su-denied" ]; then echo "Permission denied"; exit 1; fi
FAKE_AS_ROOT=1 exec sh -c "$2"
"#;

const FAKE_ID: &str = r#"#!/bin/sh
if [ -n "$FAKE_AS_ROOT" ]; then echo "uid=0(root) gid=0(root) groups=0(root) context=u:r:su:s0"
else echo "uid=2000(shell) gid=2000(shell) groups=2000(shell) context=u:r:shell:s0"; fi
"#;

const FAKE_UNAME: &str = r#"#!/bin/sh
[ "$1" = -m ] && cat "$(dirname "$0")/../machine"
"#;

const FAKE_CHOWN: &str = r#"#!/bin/sh
[ -n "$FAKE_AS_ROOT" ] || { echo "chown: Operation not permitted" >&2; exit 1; }
"#;

/// A fake phone, an artifact set and a place to run deploy.
struct Bench {
    dir: tempfile::TempDir,
}

fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The files of the test set: (name, content, mode, deploy).
const FILES: &[(&str, &[u8], u32, bool)] = &[
    ("Image", b"arm64 kernel", 0o644, true),
    ("root.img", b"root file system", 0o644, true),
    ("sovereign-init", b"init", 0o644, false),
    ("sovereign", b"#!/bin/sh\necho launcher\n", 0o755, true),
    ("gvproxy", b"gvproxy", 0o755, true),
    ("sql.toml", b"name = \"sql\"\n", 0o644, true),
];

impl Bench {
    fn new() -> Bench {
        let b = Bench {
            dir: tempfile::tempdir().unwrap(),
        };
        let fake = b.fake();
        std::fs::create_dir_all(fake.join("bin")).unwrap();
        std::fs::create_dir_all(fake.join("root/data/local/tmp")).unwrap();
        write_exe(&fake.join("bin/adb"), FAKE_ADB);
        write_exe(&fake.join("bin/su"), FAKE_SU);
        write_exe(&fake.join("bin/id"), FAKE_ID);
        write_exe(&fake.join("bin/uname"), FAKE_UNAME);
        write_exe(&fake.join("bin/chown"), FAKE_CHOWN);
        std::fs::write(fake.join("devices"), "emu1\tdevice\n").unwrap();
        std::fs::write(fake.join("machine"), "aarch64\n").unwrap();
        std::fs::create_dir_all(b.artifacts()).unwrap();
        for (name, content, _, _) in FILES {
            std::fs::write(b.artifacts().join(name), content).unwrap();
        }
        b.write_manifest(Arch::Arm64, &[]);
        b
    }

    fn fake(&self) -> PathBuf {
        self.dir.path().join("fake")
    }

    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// The phone's path `p` (absolute on the phone) in the emulated file system.
    fn on_phone(&self, p: &str) -> PathBuf {
        self.fake().join("root").join(p.trim_start_matches('/'))
    }

    /// Writes manifest.json for FILES plus `extra` (name, mode) files already written,
    /// through the same types `cargo xtask manifest` writes it with.
    fn write_manifest(&self, arch: Arch, extra: &[(&str, u32)]) {
        let all = FILES
            .iter()
            .map(|(n, _, m, d)| (*n, *m, *d))
            .chain(extra.iter().map(|(n, m)| (*n, *m, true)));
        let files = all
            .map(|(name, mode, deploy)| {
                let path = self.artifacts().join(name);
                ManifestEntry {
                    name: name.to_string(),
                    size: std::fs::metadata(&path).unwrap().len(),
                    sha256: sovereign::deploy::sha256_file(&path).unwrap(),
                    mode: FileMode(mode),
                    deploy,
                }
            })
            .collect();
        let manifest = Manifest {
            arch,
            files,
            versions: Default::default(),
        };
        std::fs::write(self.artifacts().join(FILE_NAME), manifest.to_json()).unwrap();
    }

    /// Runs `sovereign deploy ARGS` with the fake adb first on PATH.
    fn deploy(&self, args: &[&str]) -> Output {
        self.deploy_with_path(
            &format!("{}:/usr/bin:/bin", self.fake().join("bin").display()),
            args,
        )
    }

    fn deploy_with_path(&self, path: &str, args: &[&str]) -> Output {
        let _ = std::fs::remove_file(self.fake().join("calls"));
        Command::new(BIN)
            .arg("deploy")
            .arg("--artifacts")
            .arg(self.artifacts())
            .args(args)
            .env("PATH", path)
            .env("SOVEREIGN_CACHE", self.dir.path().join("cache"))
            .env_remove("ANDROID_SERIAL")
            .env_remove("ANDROID_ROOT")
            .output()
            .unwrap()
    }

    /// The recorded adb calls of the last deploy, each as its argument list.
    fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(self.fake().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    fn pushes(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.get(2).map(String::as_str) == Some("push"))
            .map(|c| c[4].clone())
            .collect()
    }
}

use sovereign_tests::process::text;

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const STAGED: &str = "/data/local/tmp/sovereign-staging";
const DEPLOYED: [&str; 5] = ["Image", "root.img", "sovereign", "gvproxy", "sql.toml"];

#[test]
fn first_deploy_pushes_the_set_then_a_second_pushes_nothing() {
    let b = Bench::new();
    let o = b.deploy(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");

    let calls = b.calls();
    let sums = |dir: &str| {
        format!(
            "su -c 'sha256sum {}'",
            DEPLOYED
                .iter()
                .map(|n| format!("{dir}/{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    assert_eq!(calls[0], args(&["devices"]));
    assert_eq!(calls[1], args(&["-s", "emu1", "shell", "uname -m"]));
    assert_eq!(calls[2], args(&["-s", "emu1", "shell", "su -c id"]));
    assert_eq!(
        calls[3],
        args(&["-s", "emu1", "shell", &sums("/data/sovereign")])
    );
    assert_eq!(
        calls[4],
        args(&["-s", "emu1", "shell", &format!("mkdir -p {STAGED}")])
    );
    for (i, name) in DEPLOYED.iter().enumerate() {
        let local = b.artifacts().join(name).display().to_string();
        assert_eq!(
            calls[5 + i],
            args(&["-s", "emu1", "push", &local, &format!("{STAGED}/{name}")])
        );
    }
    assert_eq!(calls[10], args(&["-s", "emu1", "shell", &sums(STAGED)]));
    assert!(
        calls[11][3].starts_with("su -c 'mkdir -p /data/sovereign && mv -f "),
        "{:?}",
        calls[11]
    );
    assert_eq!(
        calls[12],
        args(&["-s", "emu1", "shell", &sums("/data/sovereign")])
    );
    assert_eq!(calls.len(), 13, "{calls:#?}");
    assert!(
        !calls.iter().flatten().any(|a| a.contains("sovereign-init")),
        "deploy: false files stay behind"
    );

    for (name, content, mode, deploy) in FILES {
        let p = b.on_phone(&format!("/data/sovereign/{name}"));
        if *deploy {
            assert_eq!(std::fs::read(&p).unwrap(), *content, "{name}");
            assert_eq!(mode_of(&p), *mode, "{name}");
        } else {
            assert!(!p.exists(), "{name} must not be deployed");
        }
    }
    assert!(
        !b.on_phone(STAGED).exists(),
        "the staging directory is removed"
    );
    assert!(
        out.contains("next: adb shell \"su -c '/data/sovereign/sovereign start --sql'\""),
        "{out}"
    );

    let o = b.deploy(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        b.pushes().is_empty(),
        "second deploy pushed {:?}",
        b.pushes()
    );
    assert!(out.contains("up to date (5 file(s) unchanged"), "{out}");
}

#[test]
fn an_update_is_pushed_beside_the_running_set_with_its_manifest() {
    let b = Bench::new();
    assert_eq!(b.deploy(&[]).status.code(), Some(0));
    let running = std::fs::read(b.on_phone("/data/sovereign/root.img")).unwrap();
    std::fs::write(b.artifacts().join("root.img"), b"a newer root image").unwrap();
    b.write_manifest(Arch::Arm64, &[]);
    let o = b.deploy(&["--update"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(
        std::fs::read(b.on_phone("/data/sovereign/root.img")).unwrap(),
        running,
        "the running set is not touched"
    );
    assert_eq!(
        std::fs::read(b.on_phone("/data/sovereign/incoming/root.img")).unwrap(),
        b"a newer root image"
    );
    let manifest = std::fs::read(b.on_phone("/data/sovereign/incoming/manifest.json")).unwrap();
    assert_eq!(
        manifest,
        std::fs::read(b.artifacts().join(FILE_NAME)).unwrap()
    );
    assert!(
        out.contains("next: adb shell \"su -c '/data/sovereign/sovereign update --sql --images /data/sovereign/incoming'\""),
        "{out}"
    );
}

#[test]
fn only_changed_files_are_pushed_and_modes_are_repaired() {
    let b = Bench::new();
    assert_eq!(b.deploy(&[]).status.code(), Some(0));
    std::fs::write(b.artifacts().join("sql.toml"), "name = \"sql\"\ncid = 11\n").unwrap();
    b.write_manifest(Arch::Arm64, &[]);
    let gvproxy = b.on_phone("/data/sovereign/gvproxy");
    std::fs::set_permissions(&gvproxy, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = b.deploy(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(b.pushes(), [format!("{STAGED}/sql.toml")]);
    assert_eq!(
        std::fs::read_to_string(b.on_phone("/data/sovereign/sql.toml")).unwrap(),
        "name = \"sql\"\ncid = 11\n"
    );
    assert_eq!(
        mode_of(&gvproxy),
        0o755,
        "modes are set on unchanged files too"
    );
    assert!(text(&o).contains("pushed sql.toml"), "{}", text(&o));
}

#[test]
fn a_corrupted_push_is_caught_and_nothing_is_replaced() {
    let b = Bench::new();
    assert_eq!(b.deploy(&[]).status.code(), Some(0));
    std::fs::write(b.artifacts().join("root.img"), b"a newer root").unwrap();
    b.write_manifest(Arch::Arm64, &[]);
    std::fs::write(b.fake().join("corrupt"), "root.img").unwrap();
    let o = b.deploy(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("{STAGED}/root.img on device emu1 has SHA-256 ")),
        "{out}"
    );
    assert!(out.contains("after the push, expected SHA-256"), "{out}");
    assert!(out.contains("run deploy again"), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one error line: {err}");
    assert_eq!(
        std::fs::read(b.on_phone("/data/sovereign/root.img")).unwrap(),
        b"root file system",
        "the good file on the phone stays"
    );
    assert!(!b.on_phone(STAGED).exists(), "staging is cleaned up");
    // Without the fault the next deploy succeeds and pushes just that file.
    std::fs::remove_file(b.fake().join("corrupt")).unwrap();
    let o = b.deploy(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(b.pushes(), [format!("{STAGED}/root.img")]);
}

#[test]
fn missing_adb_is_named_with_what_to_do() {
    let b = Bench::new();
    let o = b.deploy_with_path("/nonexistent", &[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("adb not found"), "{out}");
    assert!(out.contains("platform-tools"), "{out}");
    let o = b.deploy(&["--adb", "/nonexistent/adb"]);
    assert!(
        text(&o).contains("--adb /nonexistent/adb is not an executable file"),
        "{}",
        text(&o)
    );
    // --adb PATH works without adb on PATH.
    let fake_bin = b.fake().join("bin");
    let path = format!("{}:/usr/bin:/bin", fake_bin.display());
    let alt = b.fake().join("alt");
    std::fs::create_dir(&alt).unwrap();
    std::fs::rename(fake_bin.join("adb"), alt.join("adb")).unwrap();
    let moved = alt.join("adb").display().to_string();
    let o = b.deploy_with_path(&path, &["--adb", &moved]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn no_device_and_unauthorized_device_are_explained() {
    let b = Bench::new();
    std::fs::write(b.fake().join("devices"), "").unwrap();
    let o = b.deploy(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("no device attached"), "{out}");
    assert_eq!(b.calls(), [args(&["devices"])]);
    std::fs::write(b.fake().join("devices"), "emu1\tunauthorized\n").unwrap();
    let out = text(&b.deploy(&[]));
    assert!(
        out.contains("device emu1 is \"unauthorized\"") && out.contains("Allow USB debugging"),
        "{out}"
    );
}

#[test]
fn two_devices_need_a_serial_and_the_serial_goes_on_every_call() {
    let b = Bench::new();
    std::fs::write(b.fake().join("devices"), "emu1\tdevice\nR58M\tdevice\n").unwrap();
    let o = b.deploy(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("2 devices attached (emu1 (device), R58M (device)): choose one with --serial"),
        "{out}"
    );
    assert_eq!(b.calls(), [args(&["devices"])]);

    let o = b.deploy(&["--serial", "R58M"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let calls = b.calls();
    assert!(calls.len() > 5);
    assert!(
        calls[1..].iter().all(|c| c[..2] == args(&["-s", "R58M"])),
        "{calls:#?}"
    );
    assert!(
        text(&o)
            .contains("next: adb -s R58M shell \"su -c '/data/sovereign/sovereign start --sql'\""),
        "{}",
        text(&o)
    );
    let o = b.deploy(&["--serial", "nope"]);
    assert!(
        text(&o).contains("device nope is not attached (attached: emu1 (device), R58M (device))"),
        "{}",
        text(&o)
    );
}

#[test]
fn su_denied_stops_before_anything_is_pushed() {
    let b = Bench::new();
    std::fs::write(b.fake().join("su-denied"), "").unwrap();
    let o = b.deploy(&[]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "su on device emu1 did not give root (`su -c id` printed \"Permission denied\")"
        ),
        "{out}"
    );
    assert!(out.contains("KernelSU"), "{out}");
    assert_eq!(b.calls().len(), 3, "{:#?}", b.calls());
    assert!(b.pushes().is_empty());
}

#[test]
fn manifest_problems_name_the_field_before_adb_is_called() {
    let b = Bench::new();
    b.write_manifest(Arch::X86_64, &[]);
    let out = text(&b.deploy(&[]));
    assert!(
        out.contains(
            "arch = \"x86_64\": a phone needs the arm64 set (scripts/build-images.sh --arch arm64)"
        ),
        "{out}"
    );
    assert!(b.calls().is_empty());

    // A field the reader cannot use is named, with the manifest's path.
    let m = b.artifacts().join(FILE_NAME);
    b.write_manifest(Arch::Arm64, &[]);
    let text_m = std::fs::read_to_string(&m).unwrap().replacen(
        "\"mode\": \"0644\"",
        "\"mode\": \"rw-r--r--\"",
        1,
    );
    std::fs::write(&m, text_m).unwrap();
    let out = text(&b.deploy(&[]));
    assert!(
        out.contains(&format!("{} is not a usable manifest", m.display())),
        "{out}"
    );
    assert!(
        out.contains("files[0].mode") && out.contains("\"rw-r--r--\" is not octal"),
        "{out}"
    );
    assert!(b.calls().is_empty());

    std::fs::remove_file(&m).unwrap();
    let out = text(&b.deploy(&[]));
    assert!(out.contains("cannot read"), "{out}");
    assert!(out.contains("manifest.json"), "{out}");
    assert!(
        out.contains("scripts/build-images.sh --arch arm64"),
        "{out}"
    );

    // A file that no longer matches its entry is caught before anything is pushed.
    b.write_manifest(Arch::Arm64, &[]);
    std::fs::write(b.artifacts().join("Image"), b"arm64 kernel, rebuilt").unwrap();
    let out = text(&b.deploy(&[]));
    assert!(
        out.contains("Image does not match the manifest: size 21 bytes, manifest says 12"),
        "{out}"
    );
    assert!(b.calls().is_empty());
    // Same size, other bytes: caught before it is pushed.
    std::fs::write(b.artifacts().join("Image"), b"arm64 kernEL").unwrap();
    let out = text(&b.deploy(&[]));
    assert!(
        out.contains("Image does not match the manifest: SHA-256 "),
        "{out}"
    );
    assert!(b.pushes().is_empty(), "{:?}", b.pushes());
}

#[test]
fn a_phone_that_is_not_aarch64_is_refused() {
    let b = Bench::new();
    std::fs::write(b.fake().join("machine"), "armv7l\n").unwrap();
    let out = text(&b.deploy(&[]));
    assert!(
        out.contains("device emu1 reports machine \"armv7l\" (`uname -m`), not aarch64"),
        "{out}"
    );
    assert!(b.pushes().is_empty());
}

#[test]
fn secrets_and_destinations_with_spaces_are_quoted_and_protected() {
    let b = Bench::new();
    std::fs::create_dir_all(b.artifacts().join("secrets")).unwrap();
    std::fs::write(
        b.artifacts().join("secrets/ts-authkey"),
        "tskey-auth-test\n",
    )
    .unwrap();
    b.write_manifest(Arch::Arm64, &[("secrets/ts-authkey", 0o600)]);
    let dest = "/data/sov it's";
    let o = b.deploy(&["--dest", dest]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let secrets = b.on_phone(&format!("{dest}/secrets"));
    assert_eq!(mode_of(&secrets), 0o700);
    assert_eq!(mode_of(&secrets.join("ts-authkey")), 0o600);
    assert_eq!(mode_of(&b.on_phone(&format!("{dest}/sovereign"))), 0o755);
    assert!(
        b.pushes().contains(&format!("{STAGED}/secrets/ts-authkey")),
        "{:?}",
        b.pushes()
    );
    assert!(out.contains("note: `--sql`"), "{out}");
    let o = b.deploy(&["--dest", dest]);
    assert!(b.pushes().is_empty(), "{}", text(&o));
    let out = text(&b.deploy(&["--dest", "data/sovereign"]));
    assert!(
        out.contains("--dest \"data/sovereign\": expected an absolute path"),
        "{out}"
    );
}
