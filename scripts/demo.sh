#!/usr/bin/env bash
# The main job, on a fresh Debian machine: installs what is missing, builds the kernel,
# images and binaries, starts a local headscale as the tailnet, boots the PostgreSQL VM
# under QEMU through `sovereign start`, joins a second tailnet node in a network
# namespace, and prints the psql command that works from that node. Ctrl-C tears it
# all down. Run as root (network namespaces, TUN devices).
source "$(dirname "$0")/lib.sh"
cd "$SOVEREIGN_ROOT"
[ "$(id -u)" -eq 0 ] || die "run as root (sudo scripts/demo.sh): the demo creates a network namespace and TUN devices"
scripts/ci-deps.sh --main-job
tools_path
artifacts=$(scripts/build-images.sh --arch x86_64 | tail -n1)
cargo build --release --locked -p sovereign-tests --bin sovereign-demo >&2
exec "$(cargo_target_dir)"/release/sovereign-demo "$artifacts"
