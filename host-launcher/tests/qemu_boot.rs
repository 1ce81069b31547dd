//! `sovereign start` against real QEMU, vhost-device-vsock and gvproxy with the project's
//! x86_64 kernel and a busybox initramfs standing in for the guest's init. The stand-in
//! only prints console markers; it proves the host's side: a guest that never says
//! Hello fails at `control` with its console lines, a device report with an unbound vsock
//! fails at `devices` at once, and nothing is left running either way. A third test
//! plays the guest's control client on the `<uds>_1025` socket (where
//! vhost-device-vsock would deliver the guest's connection) to walk every stage to "up",
//! `status --json`, `query` and `stop`.
//!
//! Skips (with the reason printed) when the kernel, QEMU, the helpers, busybox or cpio
//! are missing. Kernel: `$SOVEREIGN_TEST_KERNEL`, else the newest
//! `$SOVEREIGN_CACHE/kernel/x86_64-*/bzImage`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed step is a failed test

use protocol::control::FrameReader;
use protocol::messages::{
    DeviceReport, GuestStatus, Hello, QueryResult, TailnetInfo, VirtioDevice,
};
use protocol::{GuestMessage, HostMessage, Stage, StageReport, StageState};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sovereign");

fn cache_dir() -> PathBuf {
    if let Some(c) = std::env::var_os("SOVEREIGN_CACHE") {
        return PathBuf::from(c);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache"))
        .join("sovereign")
}

fn kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("SOVEREIGN_TEST_KERNEL") {
        return Some(PathBuf::from(k));
    }
    let mut found: Vec<(std::time::SystemTime, PathBuf)> =
        std::fs::read_dir(cache_dir().join("kernel"))
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("x86_64-"))
            .map(|e| e.path().join("bzImage"))
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn on_path(tool: &str) -> bool {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .chain([cache_dir().join("bin")])
        .any(|d| d.join(tool).is_file())
}

/// Everything a boot needs, or why the test is skipped.
fn prerequisites() -> Result<PathBuf, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("x86_64 hosts only".into());
    }
    let k = kernel().ok_or("no x86_64 kernel in the cache (scripts/build-kernel.sh x86_64)")?;
    for tool in [
        "qemu-system-x86_64",
        "vhost-device-vsock",
        "gvproxy",
        "busybox",
        "cpio",
        "gzip",
    ] {
        if !on_path(tool) {
            return Err(format!("{tool} not found"));
        }
    }
    Ok(k)
}

macro_rules! require {
    () => {
        match prerequisites() {
            Ok(k) => k,
            Err(why) => {
                eprintln!("SKIPPED: {why}");
                return;
            }
        }
    };
}

/// A gzip'ed newc initramfs with static busybox and the stand-in /init.
fn standin_initrd(dir: &Path) -> PathBuf {
    let root = dir.join("initrd-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let busybox = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("busybox"))
        .find(|p| p.is_file())
        .unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let init = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
scenario=$($B sed -n 's/.*test\.scenario=\([a-z]*\).*/\1/p' /proc/cmdline)
echo 'SOVEREIGN init {"stage":"init","state":"ready","detail":"busybox stand-in"}'
if [ "$scenario" = nohello ]; then
  echo 'SOVEREIGN devices {"devices":[{"transport":"pci","address":"0000:00:03.0","virtio_name":"virtio0","pci_id":"1af4:1053","device_id":19,"kind":"socket","driver":"vmw_vsock_virtio_transport","expected_driver":"vmw_vsock_virtio_transport"},{"transport":"pci","address":"0000:00:04.0","virtio_name":"virtio1","pci_id":"1af4:1042","device_id":2,"kind":"block","driver":"virtio_blk","expected_driver":"virtio_blk"},{"transport":"pci","address":"0000:00:05.0","virtio_name":"virtio2","pci_id":"1af4:1042","device_id":2,"kind":"block","driver":"virtio_blk","expected_driver":"virtio_blk"}],"registered_drivers":["virtio_blk","vmw_vsock_virtio_transport"],"modules_loaded":[],"missing_kernel_options":[],"kernel_config":"/proc/config.gz","waited_ms":3,"problems":[]}'
fi
if [ "$scenario" = novsock ]; then
  echo 'SOVEREIGN devices {"devices":[{"transport":"pci","address":"0000:00:03.0","virtio_name":"virtio0","pci_id":"1af4:1053","device_id":19,"kind":"socket","driver":null,"expected_driver":"vmw_vsock_virtio_transport"},{"transport":"pci","address":"0000:00:04.0","virtio_name":"virtio1","pci_id":"1af4:1042","device_id":2,"kind":"block","driver":"virtio_blk","expected_driver":"virtio_blk"},{"transport":"pci","address":"0000:00:05.0","virtio_name":"virtio2","pci_id":"1af4:1042","device_id":2,"kind":"block","driver":"virtio_blk","expected_driver":"virtio_blk"}],"registered_drivers":["virtio_blk"],"modules_loaded":[],"missing_kernel_options":["CONFIG_VIRTIO_VSOCKETS"],"kernel_config":"/proc/config.gz","waited_ms":10000,"problems":["socket device 0000:00:03.0: CONFIG_VIRTIO_VSOCKETS is not set"]}'
fi
echo "stand-in init: scenario $scenario, idle"
while :; do $B sleep 3600; done
"#;
    let init_path = root.join("init");
    std::fs::write(&init_path, init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init_path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("standin.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc 2>/dev/null | gzip > '{}'",
            root.display(),
            out.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    out
}

/// A state dir with a spec booting the stand-in; short run dir for the socket limit.
struct Vm {
    _dir: tempfile::TempDir,
    home: PathBuf,
    spec: PathBuf,
    run_dir: PathBuf,
}

fn vm(kernel: &Path, name: &str, scenario: &str, extra: &str) -> Vm {
    let dir = tempfile::Builder::new()
        .prefix("sv")
        .tempdir_in("/tmp")
        .unwrap();
    let home = dir.path().to_path_buf();
    let initrd = standin_initrd(&home);
    std::fs::write(home.join("root.img"), vec![0u8; 1 << 20]).unwrap();
    let spec = home.join(format!("{name}.toml"));
    std::fs::write(
        &spec,
        format!(
            r#"name = "{name}"
kernel = "{kernel}"
initrd = "{initrd}"
cid = 10
memory_mib = 256
cpus = 1
[data_disk]
size_gib = 1
[guest]
cmdline_extra = ["test.scenario={scenario}"]
{extra}
"#,
            kernel = kernel.display(),
            initrd = initrd.display()
        ),
    )
    .unwrap();
    Vm {
        run_dir: home.join("run").join(name),
        home,
        spec,
        _dir: dir,
    }
}

fn sovereign(vm: &Vm, args: &[&str]) -> Output {
    let path = format!(
        "{}:{}",
        std::env::var("PATH").unwrap_or_default(),
        cache_dir().join("bin").display()
    );
    let out = Command::new(BIN)
        .args(args)
        .arg("--spec")
        .arg(&vm.spec)
        .env("SOVEREIGN_HOME", &vm.home)
        .env("PATH", path)
        .output()
        .unwrap();
    eprintln!(
        "$ sovereign {} → {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Processes whose command line names the run dir.
fn leftovers(vm: &Vm) -> String {
    let out = Command::new("pgrep")
        .arg("-af")
        .arg(vm.run_dir.to_str().unwrap())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_guest_that_never_says_hello_fails_at_control_and_leaves_nothing() {
    let k = require!();
    let vm = vm(&k, "nohello", "nohello", "[timeouts]\ncontrol = 8");
    let t = Instant::now();
    let out = sovereign(&vm, &["start"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("init      ✓"), "{text}");
    assert!(
        text.contains("devices   ✓ vsock→vmw_vsock_virtio_transport, 2×virtio_blk"),
        "{text}"
    );
    assert!(text.contains("failed at `control`"), "{text}");
    assert!(
        text.contains(
            "did not say Hello on vsock port 1025 within 8s although its vsock device is bound"
        ),
        "{text}"
    );
    assert!(
        text.contains("| stand-in init: scenario nohello, idle"),
        "{text}"
    );
    assert!(text.contains("nothing left running"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(90));
    assert_eq!(leftovers(&vm), "");
}

#[test]
fn an_unbound_vsock_fails_devices_at_once_naming_vsock() {
    let k = require!();
    let vm = vm(&k, "novsock", "novsock", "");
    let t = Instant::now();
    let out = sovereign(&vm, &["start"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("failed at `devices`"), "{text}");
    assert!(text.contains("vsock device 0000:00:03.0 (virtio id 19) has driver none, expected vmw_vsock_virtio_transport"), "{text}");
    assert!(
        text.contains("missing kernel options (guest): CONFIG_VIRTIO_VSOCKETS"),
        "{text}"
    );
    assert!(text.contains("✗ unbound"), "{text}");
    assert!(
        t.elapsed() < Duration::from_secs(40),
        "failed at once, not by deadline"
    );
    assert_eq!(leftovers(&vm), "");
}

fn write_msg(s: &mut UnixStream, m: &GuestMessage) {
    s.write_all(&protocol::encode_frame(m).unwrap()).unwrap();
}

fn read_msg(s: &mut UnixStream, r: &mut FrameReader) -> Option<HostMessage> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(m) = r.next_message().unwrap() {
            return Some(m);
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => r.push(&buf[..n]),
        }
    }
}

fn device(kind: &str, id: u32, addr: &str, driver: &str) -> VirtioDevice {
    VirtioDevice {
        transport: "pci".into(),
        address: addr.into(),
        virtio_name: None,
        pci_id: None,
        device_id: id,
        kind: kind.into(),
        driver: Some(driver.into()),
        expected_driver: Some(driver.into()),
    }
}

/// Plays the guest's control client: Hello, DeviceReport, then after Config the stage
/// reports; answers status, query and shutdown requests.
fn scripted_guest(socket: PathBuf) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        let mut s = loop {
            if let Ok(s) = UnixStream::connect(&socket) {
                break s;
            }
            assert!(
                Instant::now() < until,
                "no control socket at {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut seen = Vec::new();
        let mut r = FrameReader::new();
        write_msg(
            &mut s,
            &GuestMessage::Hello(Hello {
                version: protocol::PROTOCOL_VERSION,
                cid: 10,
                kernel_release: "stand-in".into(),
                boot_time_ms: 1,
            }),
        );
        write_msg(
            &mut s,
            &GuestMessage::DeviceReport(DeviceReport {
                devices: vec![
                    device("socket", 19, "0000:00:03.0", "vmw_vsock_virtio_transport"),
                    device("block", 2, "0000:00:04.0", "virtio_blk"),
                    device("block", 2, "0000:00:05.0", "virtio_blk"),
                ],
                ..Default::default()
            }),
        );
        while let Some(msg) = read_msg(&mut s, &mut r) {
            match msg {
                HostMessage::Config(c) => {
                    seen.push(format!(
                        "config hostname={} pw_len={}",
                        c.hostname,
                        c.postgres.superuser_password.expose().len()
                    ));
                    for (stage, detail) in [
                        (
                            Stage::Network,
                            serde_json::json!({"gateway": "192.168.127.1"}),
                        ),
                        (
                            Stage::Tailscale,
                            serde_json::json!({"name": "sql-vm.test.", "ips": ["100.64.0.9"]}),
                        ),
                        (
                            Stage::Postgres,
                            serde_json::json!({"listen": ["100.64.0.9:5432"]}),
                        ),
                        (Stage::Ready, serde_json::Value::Null),
                    ] {
                        write_msg(
                            &mut s,
                            &GuestMessage::Stage(StageReport {
                                stage,
                                state: StageState::Ready,
                                detail,
                            }),
                        );
                    }
                }
                HostMessage::StatusRequest => {
                    seen.push("status".into());
                    write_msg(
                        &mut s,
                        &GuestMessage::Status(GuestStatus {
                            uptime_ms: 4242,
                            tailnet: Some(TailnetInfo {
                                name: "sql-vm.test.".into(),
                                ips: vec!["100.64.0.9".into()],
                            }),
                            ..Default::default()
                        }),
                    );
                }
                HostMessage::Query { id, sql } => {
                    seen.push(format!("query {sql}"));
                    write_msg(
                        &mut s,
                        &GuestMessage::QueryResult(QueryResult {
                            id,
                            ok: true,
                            output: "1\n".into(),
                        }),
                    );
                }
                HostMessage::Ping => write_msg(&mut s, &GuestMessage::Pong),
                HostMessage::Probe { id, .. } => write_msg(
                    &mut s,
                    &GuestMessage::ProbeResult(QueryResult {
                        id,
                        ok: false,
                        output: "not in the stand-in".into(),
                    }),
                ),
                HostMessage::Shutdown { deadline_secs } => {
                    seen.push(format!("shutdown {deadline_secs}"));
                    write_msg(
                        &mut s,
                        &GuestMessage::ShuttingDown {
                            reason: "requested by host".into(),
                        },
                    );
                }
            }
        }
        seen
    })
}

#[test]
fn a_scripted_control_peer_walks_every_stage_then_stop_leaves_nothing() {
    let k = require!();
    let vm = vm(&k, "scripted", "quiet", "");
    let peer = scripted_guest(vm.run_dir.join("vsock.sock_1025"));
    let out = sovereign(&vm, &["start"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for stage in [
        "init",
        "devices",
        "control",
        "network",
        "tailscale",
        "postgres",
        "ready",
    ] {
        assert!(text.contains(&format!("] {stage:<9} ✓")), "{stage}: {text}");
    }
    assert!(text.contains("up: VM scripted"), "{text}");
    assert!(
        text.contains("tailnet:   sql-vm.test. 100.64.0.9"),
        "{text}"
    );

    let out = sovereign(&vm, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["phase"], "up");
    assert_eq!(v["guest"]["uptime_ms"], 4242);
    assert_eq!(v["guest"]["tailnet"]["ips"][0], "100.64.0.9");
    assert!(
        v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["alive"] == true),
        "{v}"
    );
    assert_eq!(v["stages"].as_array().unwrap().len(), 7);

    let out = sovereign(&vm, &["query", "select 1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");

    let out = sovereign(&vm, &["stop", "--timeout", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("the guest acknowledged the shutdown"),
        "{text}"
    );
    assert!(text.contains("nothing left running"), "{text}");
    assert_eq!(leftovers(&vm), "");
    let seen = peer.join().unwrap();
    assert_eq!(
        seen.first().map(String::as_str),
        Some("config hostname=sql-vm pw_len=32"),
        "{seen:?}"
    );
    assert!(seen.contains(&"query select 1".to_string()), "{seen:?}");
    assert!(seen.contains(&"shutdown 2".to_string()), "{seen:?}");
}
