//! The whole network path as the second node sees it, measured the same way against
//! our VM and the systemd peer: bulk COPY both ways and pgbench select-only, over the
//! tailnet by name. tailscaled and PostgreSQL are the same versions on both sides, so
//! the difference is the forwarder (ours against upstream gvforwarder, each over real
//! vsock to gvproxy), the kernel and the init.

use sovereign_tests::process::{run, text};
use sovereign_tests::tailnode::TailNode;
use std::time::Instant;

/// Bytes each COPY moves.
const COPY_MB: u64 = 32;
/// Clients of the pgbench comparison (the reference point).
const CLIENTS: &str = "4";

/// One host's figures.
#[derive(Debug, Clone, Copy)]
pub struct PathFigures {
    /// COPY from the server to the second node, MB/s.
    pub download_mb_s: f64,
    /// COPY from the second node into a temporary table, MB/s.
    pub upload_mb_s: f64,
    /// pgbench select-only, 4 clients, TPS.
    pub select_tps: f64,
}

fn psql(peer: &TailNode, dsn: &str, password: &str, commands: &[&str]) -> Result<f64, String> {
    let mut cmd = peer.command("psql");
    cmd.arg(dsn).arg("-v").arg("ON_ERROR_STOP=1").arg("-q");
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    let t = Instant::now();
    let o = run(cmd.env("PGPASSWORD", password));
    if !o.status.success() {
        return Err(format!("psql {commands:?}: {}", text(&o)));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Measures `host` from `peer`. `pgbench` is the second node's pgbench; the tables
/// are made here (scale 10) when `init` is set.
pub fn measure(
    peer: &TailNode,
    host: &str,
    password: &str,
    pgbench: &str,
    init: bool,
    seconds: u32,
) -> Result<PathFigures, String> {
    let dsn = format!("host={host} port=5432 user=postgres dbname=postgres");
    let rows = COPY_MB * 1000;
    let row = "repeat('x', 999)";
    eprintln!("    COPY {COPY_MB} MB each way to {host}");
    let down = psql(
        peer,
        &dsn,
        password,
        &[&format!(
            "\\copy (select {row} from generate_series(1, {rows})) to '/dev/null'"
        )],
    )?;
    let file = std::env::temp_dir().join(format!("sov-bench-copy-{}.txt", std::process::id()));
    let line = format!("{}\n", "x".repeat(999));
    std::fs::write(&file, line.repeat(usize::try_from(rows).unwrap_or(0)))
        .map_err(|e| e.to_string())?;
    let up = psql(
        peer,
        &dsn,
        password,
        &[
            "create temporary table bench_upload (x text)",
            &format!("\\copy bench_upload from '{}'", file.display()),
        ],
    );
    let _ = std::fs::remove_file(&file);
    let up = up?;
    if init {
        let o = run(peer
            .command(pgbench)
            .args(["-i", "-s", "10", "-I", "dtGvp", &dsn])
            .env("PGPASSWORD", password));
        if !o.status.success() {
            return Err(format!("pgbench -i on {host}: {}", text(&o)));
        }
    }
    let o = run(peer
        .command(pgbench)
        .args([
            "-n",
            "-S",
            "-c",
            CLIENTS,
            "-j",
            CLIENTS,
            "-T",
            &seconds.to_string(),
            &dsn,
        ])
        .env("PGPASSWORD", password));
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    let tps = crate::pgbench_figures(&report)
        .map(|(tps, _)| tps)
        .ok_or_else(|| format!("pgbench -S on {host}: {}", text(&o)))?;
    let mb = COPY_MB as f64;
    Ok(PathFigures {
        download_mb_s: mb / down,
        upload_mb_s: mb / up,
        select_tps: tps,
    })
}
