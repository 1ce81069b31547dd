#!/usr/bin/env bash
# Runs every test of the project, as CI does (.ci/run calls exactly this):
#   1. installs what is missing (scripts/ci-deps.sh, idempotent)
#   2. cargo fmt --check, clippy -D warnings, unit and CLI tests
#   3. kernel option check for arm64 (olddefconfig + checker) and the aarch64 launcher
#      (static, right machine, --help and a spec validation under qemu-aarch64)
#   4. builds the x86_64 artifact set and boots it: boot chain, vsock-missing
#      diagnosis, networking through gvproxy, PostgreSQL durability, and the
#      end-to-end psql-over-Tailscale witness (root; never skipped here)
#   5. fuzzes the wire codecs for a bounded time
#   6. boots the arm64 guest under qemu-system-aarch64 to the control stage (builds
#      the arm64 kernel and root image on a cold cache; SOVEREIGN_ARM64_BOOT=0 skips it)
# Heavy artifacts are cached under ${XDG_CACHE_HOME:-$HOME/.cache}/sovereign.
source "$(dirname "$0")/lib.sh"
cd "$SOVEREIGN_ROOT"
start=$(date +%s)
step() { log "[$(( $(date +%s) - start ))s] $*"; }

step "dependencies"
scripts/ci-deps.sh
tools_path

step "format, lints, unit tests"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --exclude sovereign-tests

step "arm64: kernel options and the aarch64 launcher"
scripts/build-kernel.sh arm64 --config-only >/dev/null
scripts/check-aarch64.sh

step "x86_64 artifacts"
artifacts=$(scripts/build-images.sh --arch x86_64 | tail -n1)
cloud=$(scripts/fetch-cloud-kernel.sh | tail -n1)

step "VM tests (QEMU TCG, real gvproxy, headscale, tailscale, PostgreSQL)"
SOVEREIGN_ARTIFACTS=$artifacts SOVEREIGN_CLOUD_KERNEL=$cloud/vmlinuz SOVEREIGN_REQUIRE_VM_TESTS=1 \
  cargo test -p sovereign-tests --locked \
    --test boot --test forwarder --test network --test postgres --test e2e -- --test-threads=1

step "fuzzing the codecs (${SOVEREIGN_FUZZ_SECONDS:-60}s per target)"
for target in hyperkit_frames control_frames; do
  (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="${SOVEREIGN_FUZZ_SECONDS:-60}" >/dev/null 2>"$SOVEREIGN_CACHE/fuzz-$target.log") \
    || { tail -n 40 "$SOVEREIGN_CACHE/fuzz-$target.log"; die "fuzz target $target failed"; }
  grep -E '^Done [0-9]+ runs' "$SOVEREIGN_CACHE/fuzz-$target.log" | sed "s/^/$target: /" >&2 || true
done

if [ "${SOVEREIGN_ARM64_BOOT:-1}" = 1 ]; then
  step "arm64 boot test (qemu-system-aarch64, TCG)"
  arm64=$(scripts/build-images.sh --arch arm64 | tail -n1)
  SOVEREIGN_ARTIFACTS=$artifacts SOVEREIGN_ARM64_ARTIFACTS=$arm64 SOVEREIGN_REQUIRE_VM_TESTS=1 \
    cargo test -p sovereign-tests --locked --test arm64 -- --test-threads=1
else
  log "arm64 boot test skipped: SOVEREIGN_ARM64_BOOT=0"
fi
step "all tests passed"
