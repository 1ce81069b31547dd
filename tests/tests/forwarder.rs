//! The TAP, rtnetlink and frame-pump code of sovereign-init outside a VM, as root, in a
//! network namespace this test creates: `sovereign-init forward` against a real gvproxy
//! on a unix socket. tap0 must come up with the configured MAC, MTU, address and
//! default route; names resolve through gvproxy's DNS; a page from the host's loopback
//! arrives through gvproxy's NAT; and when gvproxy is replaced, the same forwarder
//! process carries traffic again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::netns::NetNs;
use sovereign_tests::process::{run, text, wait_for, Daemon};
use sovereign_tests::vm_test;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn gvproxy(tool: &Path, socket: &Path, log: &Path) -> Daemon {
    let _ = std::fs::remove_file(socket);
    let mut cmd = Command::new(tool);
    cmd.arg("-listen")
        .arg(format!("unix://{}", socket.display()))
        .args(["-mtu", "1500", "-ssh-port", "-1"]);
    let d = Daemon::spawn("gvproxy", &mut cmd, log);
    wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
        socket.exists().then_some(())
    })
    .expect("gvproxy socket");
    d
}

fn serve_page(listener: TcpListener, body: &'static str) {
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn forwarder_configures_tap0_and_recovers_in_a_network_namespace() {
    let Some(a) = vm_test("forwarder") else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("sov-fwd-")
        .tempdir_in("/tmp")
        .unwrap();
    let socket = dir.path().join("gvproxy.sock");
    let mut gv = gvproxy(&a.tool("gvproxy"), &socket, &dir.path().join("gvproxy.log"));
    let ns = NetNs::isolated("sov-fwd").expect("namespace");
    std::fs::create_dir_all(ns.etc_dir()).unwrap();
    std::fs::write(
        ns.etc_dir().join("resolv.conf"),
        "nameserver 192.168.127.1\n",
    )
    .unwrap();
    let init = a.dir.join("sovereign-init");
    let mut fwd_cmd = ns.command(&init.display().to_string());
    fwd_cmd.args(["forward", "--unix"]).arg(&socket);
    let mut forwarder = Daemon::spawn("forwarder", &mut fwd_cmd, &dir.path().join("forwarder.log"));

    // tap0 as configured through rtnetlink.
    let link = wait_for(Duration::from_secs(20), Duration::from_millis(200), || {
        let o = run(Command::new("ip").args(["-n", "sov-fwd", "-j", "addr", "show", "tap0"]));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let l = v.get(0)?.clone();
        l["addr_info"]
            .as_array()?
            .iter()
            .any(|a| a["local"] == "192.168.127.2")
            .then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "tap0 never got its address: {}",
            std::fs::read_to_string(dir.path().join("forwarder.log")).unwrap_or_default()
        )
    });
    assert_eq!(link["address"], "5a:94:ef:e4:0c:ee");
    assert_eq!(link["mtu"], 1500);
    assert!(
        link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{link:#}"
    );
    let addr = link["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["local"] == "192.168.127.2")
        .unwrap()
        .clone();
    assert_eq!(addr["prefixlen"], 24);
    let routes = text(&run(
        Command::new("ip").args(["-n", "sov-fwd", "route", "show", "default"])
    ));
    assert!(
        routes.contains("default via 192.168.127.1 dev tap0"),
        "{routes}"
    );
    let lo = text(&run(
        Command::new("ip").args(["-n", "sov-fwd", "link", "show", "lo"])
    ));
    assert!(lo.contains("UP"), "{lo}");

    // DNS through gvproxy, with the forwarder binary's own (musl) resolver.
    let resolve = || {
        let o = run(ns
            .command(&init.display().to_string())
            .args(["resolve", "host.containers.internal"]));
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    assert_eq!(
        wait_for(Duration::from_secs(20), Duration::from_millis(500), resolve).as_deref(),
        Some("192.168.127.254")
    );

    // A page from the host's loopback, through gvproxy's NAT.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    serve_page(listener, "page-through-the-forwarder");
    let fetch = || {
        let o = run(ns.command("curl").args([
            "-s",
            "--max-time",
            "5",
            &format!("http://192.168.127.254:{port}/"),
        ]));
        let body = String::from_utf8_lossy(&o.stdout).to_string();
        (o.status.success() && body == "page-through-the-forwarder").then_some(())
    };
    assert!(
        wait_for(Duration::from_secs(20), Duration::from_millis(500), fetch).is_some(),
        "fetch through gvproxy"
    );

    // Replace gvproxy: the same forwarder process reconnects and carries traffic again.
    let pid = forwarder.pid();
    gv.kill();
    let _gv2 = gvproxy(
        &a.tool("gvproxy"),
        &socket,
        &dir.path().join("gvproxy2.log"),
    );
    assert!(
        wait_for(Duration::from_secs(30), Duration::from_millis(500), fetch).is_some(),
        "traffic after gvproxy came back"
    );
    assert!(forwarder.alive(), "the forwarder kept running");
    assert_eq!(forwarder.pid(), pid);
    let log = std::fs::read_to_string(dir.path().join("forwarder.log")).unwrap_or_default();
    assert!(
        log.contains("link to gvproxy lost"),
        "the outage was noticed: {log}"
    );
}
