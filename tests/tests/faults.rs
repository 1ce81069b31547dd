//! The fault suite: a database host is judged by what it survives. One VM on the full
//! root image joins a local headscale; a second tailnet node writes rows to `sql-vm`
//! by name, one per transaction, logging every acknowledged COMMIT. Each fault is a
//! step of a drill (see `drill.rs`), injected under that load: the step waits for
//! writes to come back, then proves from the second node that every acknowledged row is
//! still there, and prints its row of the table: fault, the outage the client saw (the
//! longest time without an acknowledged row from the fault until writes were back),
//! rows acknowledged so far, rows lost (always 0). The last step prints the table.
//!
//! Steps, in order: the load starts and no secret (superuser and app passwords, the
//! auth key) appears in any host process's arguments or environment, in `status
//! --json`, the console or the launcher's and the guest's logs; a guest process (run by
//! the superuser from the tailnet) cannot take the control channel from PID 1; postgres
//! SIGKILLed; tailscaled SIGKILLed; gvproxy stopped (the guest's watchdog cuts the
//! silent link) and then killed with frames unread (the supervisor restarts it, the
//! guest redials); the supervisor SIGKILLed (the VM keeps serving, `status` says what
//! is wrong, `start` refuses); a hostile host end of the control channel (garbage, an
//! oversize length, a frame cut mid-way, a peer that stays silent: PID 1 stays up,
//! keeps serving and notices each within a bound); `stop` without a supervisor; a power
//! cut; a full data disk; the data disk grown online under the load; memory pressure to the OOM killer (heavy variant,
//! `SOVEREIGN_HEAVY_TESTS=1`); `stop` under load; the data disk grown with the VM stopped; the VMM SIGKILLed under `restart =
//! "on-failure"` (booted again without a command, and `stop` then stops it for good).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use protocol::control::FrameReader;
use protocol::status::Phase;
use protocol::GuestMessage;
use sovereign_tests::drill::Fixture;
use sovereign_tests::lab::Lab;
use sovereign_tests::load::{self, WriteLoad};
use sovereign_tests::process::{kill, text, wait_for};
use sovereign_tests::tailnode::{Login, TailNode};
use sovereign_tests::vm::{Vm, VmOptions};
use sovereign_tests::{heavy_variant, vm_test};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
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

impl Row {
    fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} |",
            self.fault,
            self.recovered
                .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            self.acked,
            self.lost,
            self.note
        )
    }
}

/// The drill's fixture. Fields drop in order: the load and the VM before their lab.
struct Suite {
    writes: Option<WriteLoad>,
    vm: Vm,
    pgpass: PathBuf,
    table: Vec<Row>,
    lab: Lab,
}

impl Fixture for Suite {
    fn on_failure(&self) {
        self.vm.print_failure_evidence();
    }
}

impl Suite {
    fn peer(&self) -> &TailNode {
        self.lab.peer.as_ref().expect("the second node joined")
    }

    fn writes(&self) -> &WriteLoad {
        self.writes.as_ref().expect("the write load runs")
    }

    /// The superuser at `sql-vm`, password from the load's password file.
    fn login(&self) -> Login {
        Login::sql_vm("user=postgres dbname=postgres").passfile(&self.pgpass)
    }

    /// Acknowledged rows missing from the table, asked from the second node.
    fn lost(&self, acked: usize) -> i64 {
        let sql = format!(
            "select {acked} - count(*) from {} where n <= {acked}",
            load::TABLE
        );
        let answer = wait_for(Duration::from_secs(90), Duration::from_secs(2), || {
            self.peer().psql(&self.login(), &sql).ok()
        })
        .unwrap_or_else(|| panic!("the second node cannot count the rows: {sql}"));
        answer.parse().expect("a count")
    }

    /// Adds a row to the table and prints it.
    fn record(&mut self, row: Row) {
        println!("{}", row.line());
        assert_eq!(row.lost, 0, "{}: acknowledged rows are missing", row.fault);
        self.table.push(row);
    }

    /// Injects a fault under load, waits for writes to come back, checks every
    /// acknowledged row and records the row; `inject` returns a note for the table.
    fn fault(&mut self, name: &str, inject: impl FnOnce(&Suite) -> String) {
        println!("fault: {name}");
        let t0 = Instant::now();
        let note = inject(self);
        let t1 = Instant::now();
        let load = self.writes();
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
        let lost = self.lost(acked);
        self.record(Row {
            fault: name.to_string(),
            recovered,
            acked,
            lost,
            note,
        });
    }

    /// Starts the second node's write load and waits for its first row.
    fn start_writes(&mut self) {
        let writes = WriteLoad::start(self.peer().ns_name(), &self.pgpass);
        let first =
            writes.first_ack_after(Instant::now() - Duration::from_secs(1), RECOVERY_DEADLINE);
        assert!(
            first.is_some(),
            "the second node never wrote a row: {:?}",
            writes.last_failure()
        );
        self.writes = Some(writes);
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

sovereign_tests::drill! {
    static DRILL: Drill<Suite> = setup;
    s01_writes_flow_and_no_secret_is_anywhere => writes_flow_and_no_secret_is_anywhere,
    s02_a_guest_process_cannot_take_the_control_channel => control_channel_is_pid_1s,
    s03_postgres_sigkilled => postgres_sigkilled,
    s04_tailscaled_sigkilled => tailscaled_sigkilled,
    s05_gvproxy_stopped_then_killed_with_frames_unread => gvproxy_stopped_then_killed,
    s06_supervisor_sigkilled => supervisor_sigkilled,
    s07_a_hostile_host_end_on_the_control_channel => hostile_host_end_on_the_control_channel,
    s08_stop_without_a_supervisor_then_start => stop_without_a_supervisor_then_start,
    s09_power_cut => power_cut,
    s10_data_disk_full => data_disk_full,
    s11_the_data_disk_grows_online => data_disk_grows_online,
    s12_memory_exhausted => memory_exhausted,
    s13_stop_under_load => stop_under_load,
    s14_the_data_disk_grows_while_stopped => data_disk_grows_while_stopped,
    s15_vmm_sigkilled_under_restart_on_failure => vmm_sigkilled_under_restart_on_failure,
}

fn setup() -> Option<Suite> {
    let a = vm_test("faults")?;
    let lab = Lab::start(&a.tools, "faults").expect("lab");
    let vm = Vm::new(
        &a,
        &VmOptions {
            apps: vec!["vaultwarden".into()],
            data_disk_gib: 1,
            ..lab.vm_options()
        },
    );
    let pgpass = lab.dir.path().join("pgpass");
    Some(Suite {
        writes: None,
        vm,
        pgpass,
        table: Vec::new(),
        lab,
    })
}

fn writes_flow_and_no_secret_is_anywhere(s: &mut Suite) {
    s.vm.start_ok();
    s.vm.query(load::CREATE_TABLE)
        .expect("create the load's table");
    s.pgpass = load::pgpass(s.lab.dir.path(), &s.vm.superuser_password());
    s.lab.join_peer().expect("second node joins");
    s.start_writes();
    let auth_key = std::fs::read_to_string(&s.lab.vm_key_file)
        .unwrap()
        .trim()
        .to_string();
    let app_password = std::fs::read_to_string(
        s.vm.home
            .path()
            .join("secrets/sql-app-vaultwarden.password"),
    )
    .unwrap()
    .trim()
    .to_string();
    assert_no_secret_anywhere(
        &s.vm,
        &[
            ("superuser password", s.vm.superuser_password()),
            ("vaultwarden password", app_password),
            ("tailnet auth key", auth_key),
        ],
    );
}

/// A program that dials the control port from inside the guest, as the postgres
/// account (`COPY ... FROM PROGRAM` by the superuser from the tailnet) and says Hello
/// with `frame`; prints whether the host closed it and, in hex, all it sent back.
fn dial_control_as_postgres(frame: &[u8]) -> String {
    let hex = protocol::bulk::hex(frame);
    // perl-base (Essential) has sockets built in; AF_VSOCK is 40, sockaddr_vm is
    // family, reserved, port, cid and four zero bytes.
    format!(
        "perl -e 'socket(my $s, 40, 1, 0) or die \"socket: $!\"; \
         connect($s, pack(\"SSLLx4\", 40, 0, {port}, 2)) or die \"connect: $!\"; \
         syswrite($s, pack(\"H*\", \"{hex}\")); my ($got, $closed) = (\"\", 0); \
         my $end = time + 8; while (time < $end) {{ my $r = \"\"; vec($r, fileno($s), 1) = 1; \
         next unless select($r, undef, undef, 1); my $n = sysread($s, my $b, 65536); \
         if (!$n) {{ $closed = 1; last }} $got .= $b }} \
         print(($closed ? \"closed\" : \"open\"), \" \", unpack(\"H*\", $got), \"\\n\")'",
        port = protocol::ports::CONTROL_PORT
    )
}

/// Only PID 1 speaks for the guest: from the tailnet, as the superuser, a program the
/// server runs dials the control port with a valid Hello, without the boot's session
/// token and with a made-up one. Neither gets anything but a closed connection (no
/// configuration, no secret), PID 1 keeps the channel, and status shows the refusals.
fn control_channel_is_pid_1s(s: &mut Suite) {
    let password = s.vm.superuser_password();
    let mut attempts = Vec::new();
    for session in [None, Some("00112233445566778899aabbccddeeff".to_string())] {
        let hello = GuestMessage::Hello(protocol::messages::Hello {
            version: protocol::PROTOCOL_VERSION,
            cid: 10,
            kernel_release: "6.12.0-impostor".into(),
            boot_time_ms: 1,
            session,
        });
        let frame = protocol::control::encode_frame(&hello).unwrap();
        let program = dial_control_as_postgres(&frame);
        let sql = format!(
            "create temp table dialled (line text);\n\
             copy dialled from program $cmd${program}$cmd$;\n\
             select line from dialled;\n"
        );
        let out = s
            .peer()
            .psql(&Login::superuser(&password), &sql)
            .unwrap_or_else(|e| panic!("the dialler ran: {e}"));
        println!("a guest process said Hello on the control port: {out}");
        let (state, sent) = out.split_once(' ').unwrap_or((out.as_str(), ""));
        assert_eq!(state, "closed", "the host closed the connection: {out}");
        let secret = protocol::bulk::hex(password.as_bytes());
        assert!(
            sent.is_empty() || !sent.contains(&secret),
            "the superuser password went to the impostor"
        );
        assert!(
            sent.is_empty(),
            "nothing at all goes to a connection without the token: {sent}"
        );
        attempts.push(out);
    }
    let status = s.vm.status();
    assert!(status.control_connected, "PID 1 keeps the channel");
    assert_eq!(
        status.control_refused.count, 2,
        "{:?}",
        status.control_refused
    );
    assert!(
        status
            .control_refused
            .last
            .as_deref()
            .is_some_and(|l| l.contains("wrong session token")),
        "{:?}",
        status.control_refused
    );
    let text = text(&s.vm.cli("status", &[]));
    assert!(text.contains("✗ 2 control connection(s) refused"), "{text}");
    // The guest still answers over its own connection.
    assert_eq!(s.vm.query("select 1").unwrap().trim(), "1");
}

fn postgres_sigkilled(s: &mut Suite) {
    s.fault("postgres SIGKILLed", |s| {
        let o = s.vm.cli("signal", &["postgres", "--signal", "kill"]);
        assert!(o.status.success(), "{}", text(&o));
        text(&o).trim().to_string()
    });
}

fn tailscaled_sigkilled(s: &mut Suite) {
    s.fault("tailscaled SIGKILLed", |s| {
        let o = s.vm.cli("signal", &["tailscaled", "--signal", "kill"]);
        assert!(o.status.success(), "{}", text(&o));
        "reached again by name".into()
    });
}

/// Stopped first, so frames pile up unread and nothing comes back: the guest's liveness
/// watchdog must cut the silent link (vhost-device-vsock ignores a reset from the host
/// end, so without it the guest would keep sending into it). Then killed with those
/// frames unread: the supervisor restarts gvproxy and the guest dials it again.
fn gvproxy_stopped_then_killed(s: &mut Suite) {
    s.fault("gvproxy stopped, then killed with frames unread", |s| {
        let old = pid(&s.vm, "gvproxy");
        let mark = s.vm.console_mark();
        kill(old, nix::sys::signal::Signal::SIGSTOP);
        let t = Instant::now();
        // Quiet limit (4 s), one check (1 s) and the gateway's unanswered question (2 s).
        let cut = s
            .vm
            .wait_console_since(&mark, LIVENESS_CUT, Duration::from_secs(30));
        let cut_after = t.elapsed();
        kill(old, nix::sys::signal::Signal::SIGKILL);
        assert!(
            cut,
            "the guest's watchdog did not cut the link to a stopped gvproxy within 30 s:\n{}",
            s.vm.console()
        );
        let new = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
            s.vm.pid_of("gvproxy").filter(|p| *p != old)
        });
        assert!(new.is_some(), "the supervisor restarted gvproxy");
        format!(
            "the guest's watchdog cut the silent link after {:.1}s; the supervisor restarted gvproxy",
            cut_after.as_secs_f64()
        )
    });
}

/// The supervisor dies: the VM goes on serving, nothing watches it.
fn supervisor_sigkilled(s: &mut Suite) {
    s.fault("supervisor SIGKILLed", |s| {
        let vm = &s.vm;
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
    });
}

/// A hostile host end while the supervisor is gone: PID 1 keeps serving.
fn hostile_host_end_on_the_control_channel(s: &mut Suite) {
    let acked_before = s.writes().acked();
    let console_before = s.vm.console().len();
    let noticed = hostile_host_end(&s.vm);
    for (h, after) in &noticed {
        assert!(
            *after <= Duration::from_secs(20),
            "{h:?}: noticed after {after:?}, over the 20 s bound (15 s silence limit)"
        );
    }
    assert!(
        s.writes().acked() > acked_before,
        "postgres kept serving while the control channel was attacked"
    );
    assert!(
        s.vm.console().len() > console_before,
        "PID 1 kept writing its console"
    );
    let acked = s.writes().acked();
    let row = Row {
        fault: "hostile host end".into(),
        recovered: Some(Duration::ZERO),
        acked,
        lost: s.lost(acked),
        note: noticed
            .iter()
            .map(|(h, d)| format!("{h:?} {:.1}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
    };
    s.record(row);
}

fn stop_without_a_supervisor_then_start(s: &mut Suite) {
    s.fault("stop without supervisor, start", |s| {
        let t = Instant::now();
        let stopped = s.vm.stop();
        assert!(stopped.status.success(), "{}", text(&stopped));
        assert!(
            text(&stopped).contains("guest shutdown: clean"),
            "{}",
            text(&stopped)
        );
        assert!(s.vm.leftover_processes().is_empty(), "stop left processes");
        let took = t.elapsed();
        s.vm.start_ok();
        format!("clean stop in {:.1}s", took.as_secs_f64())
    });
}

fn power_cut(s: &mut Suite) {
    s.fault("power cut", |s| {
        let mark = s.vm.console_mark();
        s.vm.power_cut();
        s.vm.start_ok();
        let boot = s.vm.console_since(&mark);
        assert!(
            !boot.contains("running initdb") && boot.contains("e2fsck"),
            "the next boot checks the disk and keeps the cluster:\n{boot}"
        );
        "QEMU SIGKILLed, started again (the cluster kept, no initdb)".into()
    });
}

/// The preallocated file that takes most of the data disk in [`data_disk_full`].
const PREFILL: &str = "/data/postgres/fault-prefill";

fn data_disk_full(s: &mut Suite) {
    s.fault("data disk full", |s| {
        let vm = &s.vm;
        // Most of the disk goes at once to a preallocated file beside the cluster (rows
        // written under TCG fill a gigabyte in minutes); the table takes the rest, so the
        // disk fills up with postgres writing. Stored plain: no compression, or the rows
        // would hardly take any space.
        vm.query(&format!(
            "copy (select 1) to program 'fallocate -l $(( $(df --output=avail -B1 /data/postgres | tail -n 1) - 134217728 )) {PREFILL}'"
        ))
        .expect("preallocate most of the data disk");
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
        let own_error =
            |t: &str| t.contains("No space left on device") || t.contains("could not extend");
        let log = text(&vm.cli("logs postgres", &[]));
        assert!(
            own_error(&refused) || own_error(&log),
            "postgres refuses with its own error: {refused}\nits log:\n{log}"
        );
        let released = wait_for(Duration::from_secs(30), Duration::from_secs(1), || {
            vm.guest_status()
                .data_disk
                .filter(|d| d.reserve_released)
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
            vm.query("drop table if exists filler; checkpoint")
                .map_err(|e| last_error = e)
                .ok()
        });
        vm.query(&format!("copy (select 1) to program 'rm -f {PREFILL}'"))
            .expect("remove the preallocated file");
        assert!(
            freed.is_some(),
            "dropping the filler works with the reserve released; last error: {last_error}\n{}",
            text(&vm.cli("status", &[]))
        );
        "postgres refused writes; reserve released; drop freed the space".into()
    });
}

/// The data disk's filesystem size as the guest reports it.
fn data_fs_bytes(vm: &Vm) -> u64 {
    vm.guest_status().data_disk.map_or(0, |d| d.total_bytes)
}

/// `disk grow --data 2` on the running VM (1 GiB, just freed after it was full): QEMU
/// resizes the disk, the guest grows ext4 while postgres writes, and the write load
/// loses nothing.
fn data_disk_grows_online(s: &mut Suite) {
    s.fault("data disk grown online (1 to 2 GiB)", |s| {
        let vm = &s.vm;
        let before = data_fs_bytes(vm);
        assert!(before < 1 << 30, "a 1 GiB disk: {before}");
        let o = vm.cli("disk grow", &["--data", "2"]);
        assert!(o.status.success(), "disk grow: {}", text(&o));
        assert!(
            text(&o).contains("the guest's data filesystem is now"),
            "{}",
            text(&o)
        );
        let after = data_fs_bytes(vm);
        assert!(after > (1 << 30) + (1 << 29), "{before} -> {after} bytes");
        let spec = std::fs::read_to_string(&vm.spec).unwrap();
        assert!(spec.contains("size_gib = 2"), "the spec follows:\n{spec}");
        let smaller = vm.cli("disk grow", &["--data", "1"]);
        assert!(
            !smaller.status.success() && text(&smaller).contains("never shrinks"),
            "{}",
            text(&smaller)
        );
        format!(
            "filesystem {} to {} MiB while writing",
            before >> 20,
            after >> 20
        )
    });
}

fn memory_exhausted(s: &mut Suite) {
    if !heavy_variant("faults: memory pressure up to the OOM killer") {
        return;
    }
    s.fault("memory exhausted (OOM killer)", |s| {
        let o = s.vm.query(
            "select count(*) from (select array_agg(g) from generate_series(1, 400000000) g) x",
        );
        assert!(o.is_err(), "the query cannot finish in 1 GiB");
        "the backend was killed; postgres recovered".into()
    });
}

fn stop_under_load(s: &mut Suite) {
    let t = Instant::now();
    let stopped = s.vm.stop();
    let stop_took = t.elapsed();
    let acked = s.writes.take().expect("the write load runs").stop();
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
        s.vm.console()
            .contains("sovereign-init: clean shutdown complete"),
        "the guest finished its shutdown"
    );
    s.vm.start_ok();
    assert!(
        s.vm.console().contains("e2fsck: clean"),
        "the data disk was left clean"
    );
    let row = Row {
        fault: "stop under load".into(),
        recovered: Some(stop_took),
        acked,
        lost: s.lost(acked),
        note: format!(
            "stopped in {:.1}s; e2fsck clean at the next boot",
            stop_took.as_secs_f64()
        ),
    };
    s.record(row);
    let stopped = s.vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
}

/// With the VM stopped, `disk grow --data 3` makes the image longer; the next boot
/// (the next step's) grows the filesystem before postgres starts.
fn data_disk_grows_while_stopped(s: &mut Suite) {
    let o = s.vm.cli("disk grow", &["--data", "3"]);
    assert!(o.status.success(), "disk grow: {}", text(&o));
    assert!(
        text(&o).contains("grows its filesystem when the VM next starts"),
        "{}",
        text(&o)
    );
    let image = s.vm.home.path().join("postgres.img");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 3 << 30);
}

/// The VMM dies on its own under `restart = "on-failure"` (the default on Android): the
/// supervisor boots the VM again without a command, and `stop` then stops it for good.
fn vmm_sigkilled_under_restart_on_failure(s: &mut Suite) {
    let spec = std::fs::read_to_string(&s.vm.spec).unwrap();
    std::fs::write(&s.vm.spec, format!("restart = \"on-failure\"\n{spec}")).unwrap();
    s.vm.start_ok();
    let grown = data_fs_bytes(&s.vm);
    assert!(
        grown > 5 << 29,
        "the boot grew the filesystem to the 3 GiB disk: {grown}"
    );
    assert!(
        s.vm.console().contains("filesystem grown from"),
        "the boot says it grew the filesystem"
    );
    s.vm.query(&format!("truncate {}", load::TABLE))
        .expect("a fresh count for this row");
    s.start_writes();
    s.fault("VMM SIGKILLed, restart = on-failure", |s| {
        kill(pid(&s.vm, "qemu-system"), nix::sys::signal::Signal::SIGKILL);
        "booted again by the supervisor, no command".into()
    });
    let vm = &s.vm;
    // Writes come back once postgres accepts connections, a little before the guest
    // reports its stages ready and the supervisor calls the VM up again.
    let up = wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
        let status = vm.status();
        (status.phase == Phase::Up).then_some(status)
    });
    let status = up.unwrap_or_else(|| panic!("not up again: {:?}", vm.status()));
    let restarts = &status.restarts;
    assert_eq!(restarts.len(), 1, "one restart recorded: {restarts:?}");
    assert!(
        restarts[0].exited.contains("vmm") && restarts[0].exited.contains("signal: 9"),
        "the VMM's exit status is recorded: {:?}",
        restarts[0]
    );
    assert!(
        text(&vm.cli("status", &[])).contains("booted again 1 time(s) after its VMM died"),
        "status says so"
    );
    let acked = s.writes.take().expect("the write load runs").stop();
    assert_eq!(s.lost(acked), 0, "every acknowledged row");
    let supervisor = s.vm.run_dir().join("supervisor.pid");
    let supervisor: u32 = std::fs::read_to_string(&supervisor)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stopped = s.vm.stop();
    assert!(stopped.status.success(), "stop: {}", text(&stopped));
    // Only the supervisor could boot the VM again: once it is gone, nothing will.
    let gone = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        (!Path::new(&format!("/proc/{supervisor}")).exists()).then_some(())
    });
    assert!(gone.is_some(), "the supervisor exits after stop");
    assert_eq!(
        s.vm.pid_of("qemu-system"),
        None,
        "nothing booted the VM again after stop"
    );
    assert!(
        s.vm.leftover_processes().is_empty(),
        "nothing left after stop"
    );

    println!("\n| fault | writes were out for | rows acknowledged | rows lost | note |");
    println!("|---|---|---|---|---|");
    for r in &s.table {
        println!("{}", r.line());
    }
}
