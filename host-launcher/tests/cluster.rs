//! `sovereign cluster` through its three transports. The nodes' hosts are this
//! machine: `local` runs the launcher directly, and stand-ins for `adb` and `ssh`
//! record every call (one line, arguments separated by tabs) and then run the remote
//! line with `sh -c` as adbd and sshd would, `adb`'s behind a `su` that insists on
//! exactly `-c CMD`, so a quoting mistake fails. The launcher they run is the real
//! one; no VM runs, so every node reports itself not running.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed step is a failed test

use sovereign::cluster::Cluster;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sovereign");

const FAKE_ADB: &str = r#"#!/bin/sh
D=$(cd "$(dirname "$0")" && pwd)
{ sep=''; for a in "$@"; do printf '%s%s' "$sep" "$a"; sep='	'; done; printf '\n'; } >>"$D/calls"
[ "$1" = -s ] && [ "$3" = shell ] && [ $# -eq 4 ] || { echo "fake adb: expected -s SERIAL shell LINE, got: $*" >&2; exit 2; }
PATH="$D/su-bin:$PATH" exec sh -c "$4"
"#;

const FAKE_SU: &str = r#"#!/bin/sh
[ $# -eq 2 ] && [ "$1" = -c ] || { echo "fake su: expected exactly -c CMD, got $# argument(s): $*" >&2; exit 2; }
exec sh -c "$2"
"#;

const FAKE_SSH: &str = r#"#!/bin/sh
D=$(cd "$(dirname "$0")" && pwd)
{ sep=''; for a in "$@"; do printf '%s%s' "$sep" "$a"; sep='	'; done; printf '\n'; } >>"$D/calls"
[ "$1" = -o ] && [ "$2" = BatchMode=yes ] && [ "$4" = -- ] && [ $# -eq 5 ] || { echo "fake ssh: expected -o BatchMode=yes HOST -- LINE, got: $*" >&2; exit 2; }
exec sh -c "$5"
"#;

fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn spec(dir: &Path, host: &str, role: &str, peers: &[&str]) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("{p:?}")).collect();
    let path = dir.join(format!("{host}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = {host:?}\nhostname = {host:?}\nkernel = \"k\"\nroot_image = \"r\"\n[replication]\nrole = {role:?}\npeers = [{}]\ncredentials_file = \"creds/{host}.credentials\"\n",
            peers.join(", ")
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn every_transport_reads_specs_runs_the_launcher_and_hands_over_files() {
    let d = tempfile::tempdir().unwrap();
    let fake = d.path().join("fake");
    std::fs::create_dir_all(fake.join("su-bin")).unwrap();
    script(&fake.join("adb"), FAKE_ADB);
    script(&fake.join("su-bin/su"), FAKE_SU);
    script(&fake.join("ssh"), FAKE_SSH);
    let home = d.path().join("home with space");
    std::fs::create_dir_all(&home).unwrap();
    let a = spec(d.path(), "sql-vm", "primary", &["sql-r1", "sql-r2"]);
    let b = spec(d.path(), "sql-r1", "replica", &["sql-vm", "sql-r2"]);
    let c = spec(d.path(), "sql-r2", "replica", &["sql-vm", "sql-r1"]);
    let cluster = d.path().join("cluster.toml");
    let home_s = home.display().to_string();
    std::fs::write(
        &cluster,
        format!(
            "[[node]]\nspec = \"sql-vm.toml\"\nhome = {home_s:?}\n\
             [[node]]\nspec = {b:?}\nvia = \"adb:R58M\"\nsovereign = {BIN:?}\nhome = {home_s:?}\n\
             [[node]]\nspec = {c:?}\nvia = \"ssh:root@sql-r2-host\"\nsovereign = {BIN:?}\nhome = {home_s:?}\n"
        ),
    )
    .unwrap();

    let o = Command::new(BIN)
        .args(["cluster", "status", "--spec"])
        .arg(&cluster)
        .env("SOVEREIGN_ADB", fake.join("adb"))
        .env("SOVEREIGN_SSH", fake.join("ssh"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for line in [
        "sql-vm (this host): not running",
        "sql-r1 (adb -s R58M): not running",
        "sql-r2 (ssh root@sql-r2-host): not running",
        "✗ no node takes writes",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
    let calls = std::fs::read_to_string(fake.join("calls")).unwrap();
    let quoted_home = shlex::try_quote(&home_s).unwrap();
    assert!(
        calls.contains(&format!(
            "-s\tR58M\tshell\tsu -c {}\n",
            shlex::try_quote(&format!("cat {b}")).unwrap()
        )),
        "adb read the spec: {calls}"
    );
    assert!(
        calls.contains(&format!(
            "-s\tR58M\tshell\tsu -c {}\n",
            shlex::try_quote(&format!(
                "SOVEREIGN_HOME={quoted_home} {BIN} status --spec {b} --json"
            ))
            .unwrap()
        )),
        "adb ran status through su: {calls}"
    );
    assert!(
        calls.contains(&format!(
            "-o\tBatchMode=yes\troot@sql-r2-host\t--\tSOVEREIGN_HOME={quoted_home} {BIN} status --spec {c} --json\n"
        )),
        "ssh ran status: {calls}"
    );

    // The credentials a replica is handed land whole, mode 0600, through each way.
    std::env::set_var("SOVEREIGN_ADB", fake.join("adb"));
    std::env::set_var("SOVEREIGN_SSH", fake.join("ssh"));
    let loaded = Cluster::load(&cluster).unwrap();
    assert_eq!(loaded.primary().spec, a);
    for (n, text) in loaded.nodes.iter().zip(["one\n", "two: it's\n", "three\n"]) {
        let path = n.credentials_file.clone().unwrap();
        std::fs::create_dir_all(Path::new(&path).parent().unwrap()).unwrap();
        n.write_private(&path, text.as_bytes()).unwrap();
        assert_eq!(
            n.read_file(&path).unwrap().as_deref(),
            Some(text),
            "{}",
            n.hostname
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{path}");
    }
    let calls = std::fs::read_to_string(fake.join("calls")).unwrap();
    assert!(
        calls.contains("umask 077 && cat > \"$1.new\" && mv -f \"$1.new\" \"$1\""),
        "{calls}"
    );
}
