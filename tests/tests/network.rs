//! Guest networking through real gvproxy, both ways: the guest resolves a name with
//! gvproxy's DNS, fetches a page from an HTTP server this test runs on the host's
//! loopback (reached as 192.168.127.254 through gvproxy's NAT), and a host client
//! reaches a guest port through gvproxy's expose API. Then gvproxy is killed while
//! traffic flows and the guest must recover on its own, without a reboot.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::process::{run, text, wait_for};
use sovereign_tests::vm::{gvproxy_expose, Vm, VmOptions};
use sovereign_tests::vm_test;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A one-page HTTP server on the host's loopback; returns its port.
fn http_server(body: &'static str, stop: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let mut req = [0u8; 1024];
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = s.read(&mut req);
                    let _ = write!(
                        s,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    port
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn fetch(vm: &Vm, port: u16) -> Result<String, String> {
    vm.probe(&[
        "tcp",
        &format!("192.168.127.254:{port}"),
        "--send",
        "GET / HTTP/1.0\r\n\r\n",
        "--timeout",
        "10",
    ])
}

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn guest_network_both_ways_and_recovery_after_gvproxy_restarts() {
    let Some(a) = vm_test("network") else { return };
    let vm = Vm::new(
        &a,
        &VmOptions {
            initramfs: true,
            wait_for: "network",
            ..VmOptions::default()
        },
    );
    vm.start_ok();

    // DNS through gvproxy's resolver.
    let dns = vm
        .probe(&["dns", "host.containers.internal"])
        .expect("dns probe");
    assert_eq!(
        dns.trim(),
        "192.168.127.254",
        "gvproxy's DNS answers for the host alias"
    );

    // Guest -> host: a page from this test's HTTP server via gvproxy's NAT.
    let stop = Arc::new(AtomicBool::new(false));
    let port = http_server("sovereign-page-7f3a", Arc::clone(&stop));
    let page = fetch(&vm, port).expect("fetch through gvproxy");
    assert!(
        page.starts_with("HTTP/1.0 200 OK") && page.contains("sovereign-page-7f3a"),
        "{page}"
    );

    // Host -> guest: gvproxy's expose API to a port the guest listens on.
    let local = format!("127.0.0.1:{}", free_port());
    gvproxy_expose(
        &vm.run_dir().join("gvproxy-api.sock"),
        &local,
        "192.168.127.2:7070",
    )
    .expect("expose");
    let mut serve = vm.command(
        "probe",
        &[
            "serve",
            "7070",
            "--reply",
            "hello-from-the-guest",
            "--timeout",
            "60",
        ],
    );
    let server = std::thread::spawn(move || run(&mut serve));
    let reply = wait_for(Duration::from_secs(60), Duration::from_millis(300), || {
        let mut s = TcpStream::connect(&local).ok()?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut got = String::new();
        s.read_to_string(&mut got).ok()?;
        (!got.is_empty()).then_some(got)
    })
    .expect("a host client reaches the guest port through gvproxy");
    assert_eq!(reply, "hello-from-the-guest");
    let served = server.join().expect("probe thread");
    assert!(served.status.success(), "{}", text(&served));

    // Kill gvproxy while traffic flows; the supervisor starts it again and the guest's
    // forwarder must reconnect on the same tap0, without a reboot.
    let uptime_before = vm.guest_status().uptime_ms;
    let mut traffic = vm.command(
        "probe",
        &[
            "tcp",
            &format!("192.168.127.254:{port}"),
            "--send",
            "GET / HTTP/1.0\r\n\r\n",
            "--timeout",
            "3",
        ],
    );
    let traffic = std::thread::spawn(move || {
        // Whether each probe got through does not matter (gvproxy dies under them);
        // that they ran to the end does.
        for _ in 0..5 {
            let _ = run(&mut traffic);
        }
    });
    let gvproxy = vm.pid_of("gvproxy").expect("gvproxy runs");
    sovereign_tests::process::kill(gvproxy, nix::sys::signal::Signal::SIGKILL);
    if let Err(panic) = traffic.join() {
        std::panic::resume_unwind(panic);
    }
    let recovered = wait_for(Duration::from_secs(90), Duration::from_secs(2), || {
        fetch(&vm, port).ok()
    });
    let page = recovered.unwrap_or_else(|| panic!("the guest did not recover:\n{}", vm.console()));
    assert!(page.contains("sovereign-page-7f3a"));
    assert_ne!(vm.pid_of("gvproxy"), Some(gvproxy), "gvproxy was restarted");
    let guest = vm.guest_status();
    let net = guest.network.as_ref().expect("the forwarder's counters");
    assert!(net.reconnects >= 1, "the forwarder reconnected: {net:?}");
    assert!(net.connected, "{net:?}");
    assert!(guest.uptime_ms > uptime_before, "no reboot happened");
    stop.store(true, Ordering::Relaxed);

    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    assert!(vm.leftover_processes().is_empty());
}
