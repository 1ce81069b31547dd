#!/usr/bin/env bash
# Runs the benchmark suite, each part measuring us and a peer in the same run on this
# machine, and writes the reports under target/bench/:
#   forwarder.txt  the quick forwarder variant (bench-forwarder.sh: ours against
#                  upstream gvforwarder, both on this host against their own gvproxy)
#   vm.md          bench-vm: boot to ready per stage (first and later boot, PID 1's own
#                  share), boot to psql by name against the same packages booted with
#                  systemd and upstream gvforwarder (build-peer-image.sh), PID 1's
#                  memory after ready and under forwarding load against systemd's and
#                  gvforwarder's, sizes, pgbench over the tailnet against the same
#                  run inside the guest, and the forwarder inside the VMs over real
#                  vsock (ours against gvforwarder in the systemd image, alternating
#                  rounds, CPU per GB, and the raw vsock stream rate as the ceiling)
#   summary.md     both, with the machine they ran on
# Root (network namespaces, TAP and TUN devices); leaves nothing running. Optional:
# SOVEREIGN_BENCH_PGBENCH_SECS (default 20), SOVEREIGN_BENCH_STREAM_MIB (bytes per
# transfer inside the VMs, default 64) and SOVEREIGN_BENCH_STREAM_ROUNDS (default 3),
# SOVEREIGN_BENCH_PG_BIN (a directory with pgbench; by default the guest's own, from
# the cached Debian tree), and bench-forwarder.sh's variables.
source "$(dirname "$0")/lib.sh"
cd "$SOVEREIGN_ROOT"
[ "$(id -u)" -eq 0 ] || die "run as root: the benchmarks create network namespaces and TAP/TUN devices"
scripts/ci-deps.sh
tools_path
out=target/bench
mkdir -p "$out"
artifacts=$(scripts/build-images.sh --arch x86_64 | tail -n1)
SOVEREIGN_BENCH_PEER=$(scripts/build-peer-image.sh | tail -n1)
export SOVEREIGN_BENCH_PEER

# The second node's pgbench (and pg_dump, pg_restore): Debian 12 ships pgbench only in
# the server package, and its client tools are older than the guest's PostgreSQL 17.
# The guest's own tools, from the cached Debian tree the root image was built from, run
# on this host through that tree's dynamic loader.
if [ -z "${SOVEREIGN_BENCH_PG_BIN:-}" ]; then
  tree_tar=$(ls -t "$SOVEREIGN_CACHE"/rootfs/x86_64-*/debian.tar | head -n1)
  tree=$SOVEREIGN_CACHE/bench-pg/$(basename "$(dirname "$tree_tar")")
  if [ ! -x "$tree/bin/pgbench" ]; then
    log "PostgreSQL client tools for the second node, from $tree_tar"
    rm -rf "$tree" && mkdir -p "$tree/root" "$tree/bin"
    tar -C "$tree/root" -xf "$tree_tar" ./usr/lib ./usr/lib64
    for tool in pgbench pg_dump pg_restore psql; do
      printf '#!/bin/sh\nexec %s --library-path %s %s "$@"\n' \
        "$tree/root/usr/lib64/ld-linux-x86-64.so.2" "$tree/root/usr/lib/x86_64-linux-gnu" \
        "$tree/root/usr/lib/postgresql/17/bin/$tool" >"$tree/bin/$tool"
      chmod 755 "$tree/bin/$tool"
    done
  fi
  export SOVEREIGN_BENCH_PG_BIN=$tree/bin
fi
"$SOVEREIGN_BENCH_PG_BIN/pgbench" --version >/dev/null \
  || die "$SOVEREIGN_BENCH_PG_BIN/pgbench does not run"

log "forwarder, quick variant (both forwarders on this host)"
scripts/bench-forwarder.sh "$artifacts/sovereign-init" | tee "$out/forwarder.txt"

log "the VM: boot per stage, footprint, pgbench over the tailnet against inside the guest"
cargo build --release --locked -p sovereign-tests --bin bench-vm >&2
"$(cargo_target_dir)"/release/bench-vm "$artifacts" >/dev/null

{
  printf '# Benchmarks\n\n'
  printf 'Machine: %s, %s CPU(s) (%s), %s MiB memory; guest under QEMU TCG.\n\n' \
    "$(uname -sr)" "$(nproc)" "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" \
    "$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)"
  printf '## Forwarder (quick variant)\n\n```\n'
  tail -n 5 "$out/forwarder.txt"
  printf '```\n\n'
  cat "$out/vm.md"
} >"$out/summary.md"
log "reports in $out/ (summary.md)"
