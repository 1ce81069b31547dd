#!/usr/bin/env bash
# Benchmarks backups against what a user would otherwise run, in the same run: a full
# pgBackRest backup and a restore of a ~1 GiB pgbench database (scale 64) inside the
# VM, against pg_dump -Fc and pg_restore from a second tailnet node; and the WAL
# archive lag under a steady pgbench -R load. Prints a table with ratios. Root (network
# namespace, TUN); takes ~30-60 min under QEMU TCG. Optional: SOVEREIGN_BENCH_SCALE
# (default 64), SOVEREIGN_BENCH_LOAD_SECS (default 300), SOVEREIGN_BENCH_PG_BIN (a directory
# with pg_dump and pg_restore as new as the guest's server; without one the peer columns say
# why they were not measured).
source "$(dirname "$0")/lib.sh"
cd "$SOVEREIGN_ROOT"
[ "$(id -u)" -eq 0 ] || die "run as root: the benchmark creates a network namespace and TUN devices"
scripts/ci-deps.sh
tools_path
artifacts=$(scripts/build-images.sh --arch x86_64 | tail -n1)
cargo build --release --locked -p sovereign-tests --bin bench-backups >&2
exec "$(cargo_target_dir)"/release/bench-backups "$artifacts"
