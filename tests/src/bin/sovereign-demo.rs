//! The demo behind `scripts/demo.sh`: boots the VM under QEMU with a local headscale as
//! its tailnet, joins a second tailnet node in a network namespace, proves psql works
//! from there by name, prints the exact command for you to run, and tears everything
//! down on Ctrl-C (or SIGTERM).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed step is a failed test

use sovereign_tests::artifacts::{missing_prerequisite, Artifacts};
use sovereign_tests::lab::Lab;
use sovereign_tests::process::{run, text, wait_for};
use sovereign_tests::vm::Vm;
use std::time::Duration;

fn fail(msg: &str) -> ! {
    eprintln!("demo: {msg}");
    std::process::exit(1);
}

/// Blocks SIGINT and SIGTERM and waits for one of them.
fn wait_for_interrupt() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_ok() {
        let _ = set.wait();
    }
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| fail("usage: sovereign-demo ARTIFACT_DIR (scripts/demo.sh passes it)"));
    if let Some(why) = missing_prerequisite() {
        fail(&why);
    }
    let a = Artifacts::in_dir(std::path::Path::new(&dir), "bzImage").unwrap_or_else(|e| fail(&e));

    println!("==> starting a local tailnet: headscale in network namespace sov-demo");
    let mut lab = Lab::start(&a.tools, "demo").unwrap_or_else(|e| fail(&e));
    println!("    headscale listens on {}", lab.headscale.url);
    println!(
        "==> booting the VM (QEMU, TCG) with `sovereign start`; first boot initialises PostgreSQL"
    );
    let mut opts = lab.vm_options();
    opts.apps = vec!["vaultwarden".into(), "forgejo".into()];
    let vm = Vm::new(&a, &opts);
    let started = vm.start();
    print!("{}", text(&started));
    if !started.status.success() {
        fail("the VM did not come up (see above)");
    }
    println!("==> joining a second tailnet node (\"peer\") inside the namespace");
    let peer = lab.join_peer().unwrap_or_else(|e| fail(&e));
    let seen = wait_for(Duration::from_secs(90), Duration::from_secs(2), || {
        peer.ip_of("sql-vm")
    });
    let ip = seen.unwrap_or_else(|| fail("the peer never saw sql-vm on the tailnet"));
    println!("    peer sees sql-vm at {ip}");
    let password_file = vm.home.path().join("secrets/sql-postgres.password");
    let password = vm.superuser_password();
    let witness = wait_for(Duration::from_secs(90), Duration::from_secs(3), || {
        let o = run(peer
            .command("psql")
            .args([
                "host=sql-vm user=postgres dbname=postgres connect_timeout=10",
                "-X",
                "-A",
                "-t",
                "-c",
                "select 'psql over tailscale: ' || version()",
            ])
            .env("PGPASSWORD", &password));
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    let witness = witness.unwrap_or_else(|| fail("psql from the peer to sql-vm did not succeed"));
    println!("    {witness}");
    println!();
    println!(
        "PostgreSQL is up in the VM and reachable only over the tailnet. From the second node:"
    );
    println!();
    // The commands need root: say `sudo` when the demo itself was started through it.
    let sudo = if std::env::var_os("SUDO_USER").is_some() {
        "sudo "
    } else {
        ""
    };
    println!(
        "  {sudo}ip netns exec sov-demo env PGPASSWORD=\"$({sudo}cat {})\" psql \"host=sql-vm user=postgres dbname=postgres\"",
        password_file.display()
    );
    println!();
    println!(
        "Status: {sudo}env SOVEREIGN_HOME={} {} status --spec {}",
        vm.home.path().display(),
        a.sovereign.display(),
        vm.spec.display()
    );
    println!(
        "App databases (vaultwarden, forgejo): {sudo}env SOVEREIGN_HOME={} {} db url forgejo --spec {}",
        vm.home.path().display(),
        a.sovereign.display(),
        vm.spec.display()
    );
    println!("Press Ctrl-C to stop the VM, headscale and the peer, and remove the namespace.");
    wait_for_interrupt();
    println!("\n==> stopping");
    let stopped = vm.stop();
    print!("{}", text(&stopped));
    drop(vm);
    drop(lab);
    println!("==> everything is stopped");
}
