//! The fault suite: a database host is judged by what it survives. One VM on the full
//! root image joins a local headscale; a second tailnet node writes rows to `sql-vm`
//! by name, one per transaction, logging every acknowledged COMMIT. Each fault below is
//! injected under that load; the suite waits for writes to come back, then proves from
//! the second node that every acknowledged row is still there, and prints a table:
//! fault, the outage the client saw (the longest time without an acknowledged row from
//! the fault until writes were back), rows acknowledged so far, rows lost (always 0).
//!
//! Faults: postgres SIGKILLed; tailscaled SIGKILLed; gvproxy stopped and then killed
//! with frames unread (the supervisor restarts it, the guest's watchdog redials); the
//! supervisor SIGKILLed (the VM keeps serving, `status` says what is wrong, `start`
//! refuses, and then a hostile host end of the control channel: garbage,
//! an oversize length, a frame cut mid-way, a peer that stays silent; PID 1 stays up,
//! keeps serving and notices each within a bound; `stop` still shuts the guest down
//! cleanly); a power cut; a full data disk; `stop` under load; the VMM SIGKILLed
//! under `restart = "on-failure"` (booted again without a command, and `stop` then
//! stops it for good). As a heavy variant (`SOVEREIGN_HEAVY_TESTS=1`), also memory
//! pressure to the OOM killer.
//!
//! Also here, since the VM runs with every secret in use: no secret (superuser and app
//! passwords, the auth key) appears in any host process's arguments or environment, in
//! `status --json`, the console or the launcher's and the guest's logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use protocol::control::FrameReader;
use protocol::GuestMessage;
use sovereign_tests::lab::Lab;
use sovereign_tests::load::{self, WriteLoad};
use sovereign_tests::process::{kill, run, text, wait_for};
use sovereign_tests::tailnode::TailNode;
use sovereign_tests::vm::{Vm, VmOptions};
use sovereign_tests::{heavy_variant, vm_test};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the guest's console says when its liveness watchdog cuts a dead gvproxy link.
const LIVENESS_CUT: &str = "nothing came back from gvproxy";

/// How long writes may take to come back after a fault before the suite fails.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(180);

/// One line of the table.
struct Row {
    fault: String,
    recovered: Option<Duration>,
    acked: usize,
    lost: i64,
    note: String,
}

fn psql(peer: &TailNode, pgpass: &Path, sql: &str) -> Result<String, String> {
    let o = run(peer
        .command("psql")
        .arg("host=sql-vm port=5432 user=postgres dbname=postgres connect_timeout=10")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSFILE", pgpass));
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(text(&o))
    }
}

/// Acknowledged rows missing from the table, asked from the second node.
fn lost(peer: &TailNode, pgpass: &Path, acked: usize) -> i64 {
    let sql = format!(
        "select {acked} - count(*) from {} where n <= {acked}",
        load::TABLE
    );
    let answer = wait_for(Duration::from_secs(90), Duration::from_secs(2), || {
        psql(peer, pgpass, &sql).ok()
    })
    .unwrap_or_else(|| panic!("the second node cannot count the rows: {sql}"));
    answer.parse().expect("a count")
}

/// Injects a fault under load, waits for writes to come back, checks every
/// acknowledged row; `inject` returns a note for the table.
fn fault(
    name: &str,
    peer: &TailNode,
    pgpass: &Path,
    load: &WriteLoad,
    inject: impl FnOnce() -> String,
) -> Row {
    println!("fault: {name}");
    let t0 = Instant::now();
    let note = inject();
    let t1 = Instant::now();
    let back = load.first_ack_after(t1, RECOVERY_DEADLINE);
    assert!(
        back.is_some(),
        "{name}: no write was acknowledged within {RECOVERY_DEADLINE:?} (last failure: {:?})",
        load.last_failure()
    );
    // The outage as the client saw it: the longest time without an acknowledged row
    // from the fault until writes were back.
    let recovered = back.map(|d| load.longest_gap(t0, t1 + d));
    let acked = load.acked();
    let lost = lost(peer, pgpass, acked);
    assert_eq!(lost, 0, "{name}: acknowledged rows are missing");
    Row {
        fault: name.to_string(),
        recovered,
        acked,
        lost,
        note,
    }
}

fn pid(vm: &Vm, program: &str) -> u32 {
    vm.pid_of(program)
        .unwrap_or_else(|| panic!("{program} is not running"))
}

/// Every host process's arguments and environment, and the launcher's outputs, are
/// free of `secrets`.
fn assert_no_secret_anywhere(vm: &Vm, secrets: &[(&str, String)]) {
    let mut places: Vec<(String, Vec<u8>)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() || name == std::process::id().to_string() {
            continue;
        }
        for what in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(e.path().join(what)) {
                places.push((format!("/proc/{name}/{what}"), bytes));
            }
        }
    }
    places.push(("status --json".into(), vm.cli("status", &["--json"]).stdout));
    places.push(("console".into(), vm.console().into_bytes()));
    for log in ["postgres", "tailscaled", "kernel"] {
        places.push((
            format!("sovereign logs {log}"),
            vm.cli("logs", &[log]).stdout,
        ));
    }
    for f in std::fs::read_dir(vm.home.path()).unwrap().flatten() {
        let p = f.path();
        if p.extension().is_some_and(|x| x == "log") {
            places.push((
                p.display().to_string(),
                std::fs::read(&p).unwrap_or_default(),
            ));
        }
    }
    for (what, secret) in secrets {
        assert!(secret.len() >= 8, "{what} is a real secret");
        for (place, bytes) in &places {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the {what} appears in {place}"
            );
        }
    }
    println!(
        "no secret in {} places (every host process's argv and environment, status, console, logs)",
        places.len()
    );
}

/// What a hostile host end does once the guest has connected and greeted.
#[derive(Debug, Clone, Copy)]
enum Hostility {
    Garbage,
    OversizeLength,
    FrameCutMidway,
    SilentPeer,
}

/// Reads until the guest's Hello arrived (the start of its greeting).
fn read_hello(s: &mut UnixStream) {
    let mut reader = FrameReader::new();
    let mut buf = [0u8; 8192];
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => panic!("the guest closed before its Hello"),
            Ok(n) => {
                reader.push(&buf[..n]);
                while let Ok(Some(m)) = reader.next_message::<GuestMessage>() {
                    if matches!(m, GuestMessage::Hello(_)) {
                        return;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the guest's greeting: {e}"),
        }
    }
    panic!("no Hello from the guest within 15 s");
}

/// Plays a hostile host end on the control socket (the supervisor is dead): for each
/// kind of hostility, waits for the guest to connect, misbehaves, and measures how long
/// the guest takes to drop the connection. Returns (hostility, time to notice).
fn hostile_host_end(vm: &Vm) -> Vec<(Hostility, Duration)> {
    let sock = vm.run_dir().join("vsock.sock_1025");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).expect("listen where the supervisor did");
    listener.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    for h in [
        Hostility::Garbage,
        Hostility::OversizeLength,
        Hostility::FrameCutMidway,
        Hostility::SilentPeer,
    ] {
        let mut s = wait_for(Duration::from_secs(60), Duration::from_millis(100), || {
            listener.accept().ok().map(|(s, _)| s)
        })
        .unwrap_or_else(|| panic!("{h:?}: the guest did not dial the control port"));
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        read_hello(&mut s);
        let t = Instant::now();
        let bytes: &[u8] = match h {
            Hostility::Garbage => b"\x00\x00\x00\x05{]x!!",
            Hostility::OversizeLength => &[0xff, 0xff, 0xff, 0xff],
            Hostility::FrameCutMidway => b"\x00\x00\x00\x64{\"type\":\"sh",
            Hostility::SilentPeer => b"",
        };
        s.write_all(bytes).unwrap();
        // Drain (heartbeats) until the guest closes its end.
        let mut buf = [0u8; 4096];
        let noticed = loop {
            match s.read(&mut buf) {
                Ok(0) => break t.elapsed(),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break t.elapsed(),
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{h:?}: the guest kept the connection for a minute"
            );
        };
        println!("hostile host end, {h:?}: the guest dropped the connection after {noticed:?}");
        out.push((h, noticed));
    }
    drop(listener);
    let _ = std::fs::remove_file(&sock);
    out
}

#[test]
#[ignore = "VM test: needs root, QEMU and the artifact set; scripts/test.sh runs it"]
fn every_fault_recovers_and_no_acknowledged_row_is_lost() {
    let Some(a) = vm_test("faults") else { return };
    let mut lab = Lab::start(&a.tools, "faults").expect("lab");
    let opts = VmOptions {
        apps: vec!["vaultwarden".into()],
        data_disk_gib: 1,
        ..lab.vm_options()
    };
    let vm = Vm::new(&a, &opts);
    vm.start_ok();
    vm.query(load::CREATE_TABLE)
        .expect("create the load's table");
    let pgpass = load::pgpass(lab.dir.path(), &vm.superuser_password());
    let auth_key = std::fs::read_to_string(&lab.vm_key_file)
        .unwrap()
        .trim()
        .to_string();
    let peer = lab.join_peer().expect("second node joins");
    let writes = WriteLoad::start(peer.ns_name(), &pgpass);
    let first = writes.first_ack_after(Instant::now() - Duration::from_secs(1), RECOVERY_DEADLINE);
    assert!(
        first.is_some(),
        "the second node never wrote a row: {:?}",
        writes.last_failure()
    );

    assert_no_secret_anywhere(
        &vm,
        &[
            ("superuser password", vm.superuser_password()),
            (
                "vaultwarden password",
                std::fs::read_to_string(
                    vm.home.path().join("secrets/sql-app-vaultwarden.password"),
                )
                .unwrap()
                .trim()
                .to_string(),
            ),
            ("tailnet auth key", auth_key),
        ],
    );

    let mut table = Vec::new();
    table.push(fault("postgres SIGKILLed", peer, &pgpass, &writes, || {
        let o = vm.cli("signal", &["postgres", "--signal", "kill"]);
        assert!(o.status.success(), "{}", text(&o));
        text(&o).trim().to_string()
    }));
    table.push(fault(
        "tailscaled SIGKILLed",
        peer,
        &pgpass,
        &writes,
        || {
            let o = vm.cli("signal", &["tailscaled", "--signal", "kill"]);
            assert!(o.status.success(), "{}", text(&o));
            "reached again by name".into()
        },
    ));
    // Stopped first, so frames pile up unread and the kill resets the guest's
    // connection: vhost-device-vsock ignores that reset, and only the guest's liveness
    // watchdog notices the link is dead.
    table.push(fault(
        "gvproxy stopped, then killed with frames unread",
        peer,
        &pgpass,
        &writes,
        || {
            let old = pid(&vm, "gvproxy");
            let watchdog_before = vm.console().matches(LIVENESS_CUT).count();
            kill(old, nix::sys::signal::Signal::SIGSTOP);
            std::thread::sleep(Duration::from_secs(2));
            kill(old, nix::sys::signal::Signal::SIGKILL);
            let new = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
                vm.pid_of("gvproxy").filter(|p| *p != old)
            });
            assert!(new.is_some(), "the supervisor restarted gvproxy");
            let cut = wait_for(Duration::from_secs(30), Duration::from_millis(500), || {
                (vm.console().matches(LIVENESS_CUT).count() > watchdog_before).then_some(())
            });
            match cut {
                Some(()) => "restarted by the supervisor; the guest's watchdog cut the dead link",
                None => "restarted by the supervisor; the guest saw the link close",
            }
            .into()
        },
    ));

    // The supervisor dies: the VM goes on serving, nothing watches it.
    table.push(fault(
        "supervisor SIGKILLed",
        peer,
        &pgpass,
        &writes,
        || {
            let sup = std::fs::read_to_string(vm.run_dir().join("supervisor.pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            kill(sup, nix::sys::signal::Signal::SIGKILL);
            let gone = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
                (!Path::new(&format!("/proc/{sup}")).exists()).then_some(())
            });
            assert!(gone.is_some(), "the supervisor died");
            let status = vm.cli("status", &[]);
            assert!(
                text(&status).contains("the supervisor is gone but the VM runs"),
                "status says what is wrong:\n{}",
                text(&status)
            );
            let again = vm.start();
            assert_eq!(again.status.code(), Some(2), "{}", text(&again));
            assert!(
                text(&again).contains("still running without its supervisor"),
                "start refuses clearly:\n{}",
                text(&again)
            );
            "VM kept serving; status said so; start refused".into()
        },
    ));

    // A hostile host end while the supervisor is gone: PID 1 keeps serving.
    let acked_before = writes.acked();
    let console_before = vm.console().len();
    let noticed = hostile_host_end(&vm);
    for (h, after) in &noticed {
        assert!(
            *after <= Duration::from_secs(20),
            "{h:?}: noticed after {after:?}, over the 20 s bound (15 s silence limit)"
        );
    }
    assert!(
        writes.acked() > acked_before,
        "postgres kept serving while the control channel was attacked"
    );
    assert!(
        vm.console().len() > console_before,
        "PID 1 kept writing its console"
    );
    table.push(Row {
        fault: "hostile host end".into(),
        recovered: Some(Duration::ZERO),
        acked: writes.acked(),
        lost: lost(peer, &pgpass, writes.acked()),
        note: noticed
            .iter()
            .map(|(h, d)| format!("{h:?} {:.1}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
    });

    // stop without a supervisor, then a normal start.
    table.push(fault(
        "stop without supervisor, start",
        peer,
        &pgpass,
        &writes,
        || {
            let t = Instant::now();
            let stopped = vm.stop();
            assert!(stopped.status.success(), "{}", text(&stopped));
            assert!(
                text(&stopped).contains("guest shutdown: clean"),
                "{}",
                text(&stopped)
            );
            assert!(vm.leftover_processes().is_empty(), "stop left processes");
            let took = t.elapsed();
            vm.start_ok();
            format!("clean stop in {:.1}s", took.as_secs_f64())
        },
    ));

    table.push(fault("power cut", peer, &pgpass, &writes, || {
        kill(pid(&vm, "qemu-system"), nix::sys::signal::Signal::SIGKILL);
        let cleaned = wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
            vm.leftover_processes().is_empty().then_some(())
        });
        if cleaned.is_none() {
            let _ = vm.stop();
        }
        vm.start_ok();
        "QEMU SIGKILLed, started again".into()
    }));

    table.push(fault("data disk full", peer, &pgpass, &writes, || {
        // Stored plain: no compression, or the filler would hardly take any space.
        vm.query("create table filler (pad text); alter table filler alter pad set storage plain")
            .expect("filler table");
        let mut refused = None;
        for _ in 0..40 {
            match vm.query(
                "insert into filler select repeat(md5(g::text), 64) from generate_series(1, 50000) g",
            ) {
                Ok(_) => {}
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let refused = refused.expect("the disk filled up");
        // Out of space for a table, postgres refuses the statement; out of space for WAL,
        // it stops every backend and goes through crash recovery. Either way its own
        // log names the cause.
        let own_error = |t: &str| t.contains("No space left on device") || t.contains("could not extend");
        let log = text(&vm.cli("logs postgres", &[]));
        assert!(
            own_error(&refused) || own_error(&log),
            "postgres refuses with its own error: {refused}\nits log:\n{log}"
        );
        let released = wait_for(Duration::from_secs(30), Duration::from_secs(1), || {
            let s = vm.status();
            (s["guest"]["data_disk"]["reserve_released"] == true).then_some(s)
        });
        assert!(released.is_some(), "PID 1 reports the full disk");
        let stages = vm.cli("status", &[]);
        assert!(
            text(&stages).contains("FULL"),
            "status says the disk is full:\n{}",
            text(&stages)
        );
        // If a backend hit the full disk while writing WAL, postgres went through crash
        // recovery (up to max_wal_size of WAL, replayed under emulation): give it time.
        let mut last_error = String::new();
        let freed = wait_for(Duration::from_secs(180), Duration::from_secs(2), || {
            vm.query("drop table filler; checkpoint")
                .map_err(|e| last_error = e)
                .ok()
        });
        assert!(
            freed.is_some(),
            "dropping the filler works with the reserve released; last error: {last_error}\n{}",
            text(&vm.cli("status", &[]))
        );
        "postgres refused writes; reserve released; drop freed the space".into()
    }));

    if heavy_variant("faults: memory pressure up to the OOM killer") {
        table.push(fault("memory exhausted (OOM killer)", peer, &pgpass, &writes, || {
            let o = vm.query("select count(*) from (select array_agg(g) from generate_series(1, 400000000) g) x");
            assert!(o.is_err(), "the query cannot finish in 1 GiB");
            "the backend was killed; postgres recovered".into()
        }));
    }

    let t = Instant::now();
    let stopped = vm.stop();
    let stop_took = t.elapsed();
    let acked = writes.stop();
    assert!(
        stopped.status.success(),
        "stop under load: {}",
        text(&stopped)
    );
    assert!(
        text(&stopped).contains("guest shutdown: clean"),
        "{}",
        text(&stopped)
    );
    assert!(
        vm.console()
            .contains("sovereign-init: clean shutdown complete"),
        "the guest finished its shutdown"
    );
    vm.start_ok();
    assert!(
        vm.console().contains("e2fsck: clean"),
        "the data disk was left clean"
    );
    table.push(Row {
        fault: "stop under load".into(),
        recovered: Some(stop_took),
        acked,
        lost: lost(peer, &pgpass, acked),
        note: format!(
            "stopped in {:.1}s; e2fsck clean at the next boot",
            stop_took.as_secs_f64()
        ),
    });
    let _ = vm.stop();

    // The VMM dies on its own under `restart = "on-failure"` (the default on Android):
    // the supervisor boots the VM again without a command, and `stop` then stops it
    // for good.
    let spec = std::fs::read_to_string(&vm.spec).unwrap();
    std::fs::write(&vm.spec, format!("restart = \"on-failure\"\n{spec}")).unwrap();
    vm.start_ok();
    vm.query(&format!("truncate {}", load::TABLE))
        .expect("a fresh count for this row");
    let writes = WriteLoad::start(peer.ns_name(), &pgpass);
    assert!(
        writes
            .first_ack_after(Instant::now() - Duration::from_secs(1), RECOVERY_DEADLINE)
            .is_some(),
        "writes after the restart-policy start: {:?}",
        writes.last_failure()
    );
    table.push(fault(
        "VMM SIGKILLed, restart = on-failure",
        peer,
        &pgpass,
        &writes,
        || {
            kill(pid(&vm, "qemu-system"), nix::sys::signal::Signal::SIGKILL);
            "booted again by the supervisor, no command".into()
        },
    ));
    // Writes come back once postgres accepts connections, a little before the guest
    // reports its stages ready and the supervisor calls the VM up again.
    let up = wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
        let status = vm.status();
        (status["phase"] == "up").then_some(status)
    });
    let status = up.unwrap_or_else(|| panic!("not up again: {}", vm.status()));
    let restarts = status["restarts"].as_array().cloned().unwrap_or_default();
    assert_eq!(restarts.len(), 1, "one restart recorded: {status}");
    assert!(
        restarts[0]["exited"]
            .as_str()
            .is_some_and(|e| e.contains("vmm") && e.contains("signal: 9")),
        "the VMM's exit status is recorded: {}",
        restarts[0]
    );
    assert!(
        text(&vm.cli("status", &[])).contains("booted again 1 time(s) after its VMM died"),
        "status says so"
    );
    let acked = writes.stop();
    assert_eq!(lost(peer, &pgpass, acked), 0, "every acknowledged row");
    let stopped = vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        vm.pid_of("qemu-system"),
        None,
        "nothing boots the VM again after stop"
    );
    assert!(
        vm.leftover_processes().is_empty(),
        "nothing left after stop"
    );

    println!("\n| fault | writes were out for | rows acknowledged | rows lost | note |");
    println!("|---|---|---|---|---|");
    for r in &table {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.fault,
            r.recovered
                .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            r.acked,
            r.lost,
            r.note
        );
    }
    assert!(table.iter().all(|r| r.lost == 0));
}
