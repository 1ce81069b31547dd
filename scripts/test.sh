#!/usr/bin/env bash
# Runs every test of the project, as CI does (.ci/run calls exactly this):
#   1. installs what is missing (scripts/ci-deps.sh, idempotent)
#   2. cargo fmt --check, clippy -D warnings, unit and CLI tests, no import cycle of
#      more than two files in PID 1, the Prometheus rules under promtool's own tests
#   3. kernel option check for arm64 (olddefconfig + checker) and the aarch64 launcher
#      (static, right machine, --help and a spec validation under qemu-aarch64)
#   4. builds the x86_64 artifact set, proves from their ELF headers that both musl
#      builds of both binaries are static, and boots it: boot chain, vsock-missing
#      diagnosis, networking through gvproxy, PostgreSQL durability, and the
#      end-to-end psql-over-Tailscale witness, app databases with Gitea as a real
#      client, backups and restores, and the fault suite (root; never skipped here)
#   5. fuzzes the wire codecs and the kernel command-line parser for a bounded time
#      (beside step 4's VM tests, at the lowest CPU priority)
#   6. the phone's guest under qemu-system-aarch64: the boot initramfs to the control
#      stage, and the whole arm64 set (root image with PostgreSQL and tailscaled) to
#      ready in a tailnet lab, answering psql from the second node. With a cold cache
#      its kernel (~10 min) and Debian tree (~15 min) are built at the lowest CPU
#      priority while step 4's drills run; SOVEREIGN_ARM64_BOOT=0 leaves it out
#   7. the phone guide (docs/phone.md), its own commands in its order, on a fake phone
#      with Android's userland (arm64 toybox and mksh; scripts/phone-userland.sh), the
#      arm64 set deployed through an adb that enters it, and crosvm's options checked
#      against the record of a real crosvm (tests/fixtures/crosvm/run-options.txt)
# --heavy (or SOVEREIGN_HEAVY_TESTS=1) adds the drills that spend minutes waiting on real
# timeouts (a full backup killed mid-way, the SFTP server away and back, retention with
# the guest's clock days ahead, a full backup disk, a lost backup disk refilled), power
# cuts at three points of a first boot's initdb and of a replica's first copy (one by
# default), the cost of a synchronous replica's commits, and fuzzes 300 s per target
# instead of 15; CI runs the default set.
# Heavy artifacts are cached under ${XDG_CACHE_HOME:-$HOME/.cache}/sovereign, cargo's
# builds among them (cargo-target/, unless CARGO_TARGET_DIR is set; started over past
# SOVEREIGN_TARGET_CAP_MIB, default 12288).
source "$(dirname "$0")/lib.sh"
for arg in "$@"; do
  case "$arg" in
    --heavy) export SOVEREIGN_HEAVY_TESTS=1 ;;
    -h|--help) sed -n '2,/^source/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (scripts/test.sh [--heavy])" ;;
  esac
done
if [ "${SOVEREIGN_HEAVY_TESTS:-0}" = 1 ]; then fuzz_default=300; else fuzz_default=15; fi
fuzz_seconds=${SOVEREIGN_FUZZ_SECONDS:-$fuzz_default}
cd "$SOVEREIGN_ROOT"
start=$(date +%s)
step() { log "[$(( $(date +%s) - start ))s] $*"; }

step "dependencies"
scripts/ci-deps.sh
tools_path
# Cargo's builds (host, both musl targets, the tests) live in the cache too: a fresh
# clone then recompiles only the workspace's own crates, not every dependency. Cargo
# decides what is stale; past a size cap the directory starts over.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$SOVEREIGN_CACHE/cargo-target}
target_cap_mib=${SOVEREIGN_TARGET_CAP_MIB:-12288}
if [ -d "$CARGO_TARGET_DIR" ] \
  && [ "$(du -sm "$CARGO_TARGET_DIR" | cut -f1)" -gt "$target_cap_mib" ]; then
  log "cargo's target directory in the cache is past ${target_cap_mib} MiB: starting it over"
  rm -rf "$CARGO_TARGET_DIR"
fi

step "format, lints, unit tests"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --exclude sovereign-tests
# PID 1's modules stay untangled: no group of more than two files imports itself.
xtask module-cycles "$SOVEREIGN_ROOT/guest-init/src"
# The Prometheus scrape config, alerting rules (with promtool's unit tests) and dashboard.
scripts/check-prometheus.sh

step "arm64: kernel options and the aarch64 launcher"
scripts/build-kernel.sh arm64 --config-only >/dev/null
scripts/check-aarch64.sh

step "x86_64 artifacts"
artifacts=$(scripts/build-images.sh --arch x86_64 | tail -n1)
cloud=$(scripts/fetch-cloud-kernel.sh | tail -n1)
# Gitea, the real app of the apps test (built once, ~3 min, then cached).
scripts/build-go-tools.sh x86_64 --gitea

# The arm64 guest's kernel (~10 min on 2 cores) and Debian tree (~15 min) are built
# while the x86_64 VM tests run, at the lowest CPU priority, in the time the guests
# leave; a warm cache makes this a no-op.
arm64_boot=${SOVEREIGN_ARM64_BOOT:-1}
arm64_log=$SOVEREIGN_CACHE/arm64-prefetch.log
if [ "$arm64_boot" = 1 ]; then
  ( nice -n 19 scripts/build-kernel.sh arm64 \
      && nice -n 19 scripts/build-rootfs.sh arm64 --no-init --out "$SOVEREIGN_CACHE/arm64-prefetch" ) \
    >"$arm64_log" 2>&1 &
  arm64_prefetch=$!
fi

# The fuzzers (sanitizer builds with nightly, cached in the cache's fuzz-target/) run
# beside the VM tests, at the lowest CPU priority like the arm64 builds: each fuzzes
# for its wall-clock time, so it does fewer runs while the guests are busy, and the
# VM tests lose next to nothing. Their own target directory keeps them off the lock of
# cargo's main one.
fuzz_log=$SOVEREIGN_CACHE/fuzz.log
fuzz_all() {
  renice -n 19 -p "$BASHPID" >/dev/null
  for target in hyperkit_frames control_frames kernel_cmdline; do
    (cd fuzz && cargo +nightly fuzz run "$target" --target-dir "$SOVEREIGN_CACHE/fuzz-target" \
       -- -max_total_time="$fuzz_seconds" >/dev/null 2>"$SOVEREIGN_CACHE/fuzz-$target.log") \
      || { tail -n 40 "$SOVEREIGN_CACHE/fuzz-$target.log"; echo "fuzz target $target failed"; return 1; }
    grep -E '^Done [0-9]+ runs' "$SOVEREIGN_CACHE/fuzz-$target.log" | sed "s/^/$target: /" || true
  done
}
fuzz_all >"$fuzz_log" 2>&1 &
fuzzing=$!

[ "${SOVEREIGN_HEAVY_TESTS:-0}" = 1 ] \
  || log "heavy variants skipped (the backup drill's killed full backup, SFTP server away, retention, full and lost backup disk; the OOM fault; the three-node cluster drill, about 10 min or more under TCG on 2 cores): scripts/test.sh --heavy runs them"
step "static musl builds, then VM tests (QEMU TCG, real gvproxy, headscale, tailscale, PostgreSQL)"
export SOVEREIGN_ARTIFACTS=$artifacts SOVEREIGN_REQUIRE_VM_TESTS=1
cargo test -p sovereign-tests --locked --tests --no-run
SOVEREIGN_CLOUD_KERNEL=$cloud/vmlinuz \
  cargo test -p sovereign-tests --locked --test static_builds \
    --test boot --test forwarder --test network --test e2e -- --include-ignored --test-threads=1

# The drills: each file shares one fixture across its steps, which run in order (one
# thread). The fault suite prints its table (fault, outage, rows acknowledged, rows
# lost); the replica drill its lag, the time from promote
# to a write and the writable nodes counted each second through a forced promotion and
# a split; the cluster drill each replica's lag and the time from a power cut to a write
# after promote. One after the other: under TCG the guests keep both cores busy, and two
# drills side by side took as long as both in a row (measured), with timeouts tighter.
step "the drills: apps, backups, faults, replica, cluster"
cargo test -p sovereign-tests --locked --test apps --test backups --test faults --test replica --test cluster \
  -- --include-ignored --nocapture --test-threads=1

step "fuzzing the codecs (${fuzz_seconds}s per target, in the background since the VM tests began)"
wait "$fuzzing" || { tail -n 40 "$fuzz_log" >&2; die "fuzzing failed (log: $fuzz_log)"; }
grep -E ': Done [0-9]+ runs' "$fuzz_log" >&2 || true

if [ "$arm64_boot" = 1 ]; then
  step "arm64 guest (qemu-system-aarch64, TCG): to control, and the whole phone guest to ready over the tailnet"
  wait "$arm64_prefetch" || { tail -n 40 "$arm64_log" >&2; die "building the arm64 kernel and Debian tree failed (log: $arm64_log)"; }
  arm64=$(scripts/build-images.sh --arch arm64 | tail -n1)
  SOVEREIGN_ARM64_ARTIFACTS=$arm64 \
    cargo test -p sovereign-tests --locked --test arm64 -- --include-ignored --test-threads=1
  step "the phone guide rehearsed on Android's userland (arm64 toybox and mksh, the aarch64 sovereign; no boot: this kernel has no vhost-vsock)"
  userland=$(scripts/phone-userland.sh | tail -n1)
  SOVEREIGN_ARM64_ARTIFACTS=$arm64 SOVEREIGN_PHONE_USERLAND=$userland \
    cargo test -p sovereign-tests --locked --test phone -- --include-ignored --nocapture --test-threads=1
else
  log "arm64 boot test skipped (SOVEREIGN_ARM64_BOOT=$arm64_boot)"
fi
step "all tests passed"
