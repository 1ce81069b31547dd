#!/usr/bin/env bash
# Installs everything the build and the tests need on a Debian 12 machine, idempotently:
# Debian packages (QEMU 10 and linux-source 6.12 from bookworm-backports), Go when the
# machine has none, the Rust musl targets, a nightly toolchain for cargo-fuzz, and
# vhost-device-vsock. fonts-dejavu-core gives the benchmark chart its labels; iperf3
# sends the forwarder benchmark's small packets.
# Re-running it is cheap: each step checks first.
#   --main-job: only what scripts/demo.sh needs (no aarch64 target, no nightly
#               toolchain, no cargo-fuzz: those serve the tests)
source "$(dirname "$0")/lib.sh"
main_job=0
case "${1:-}" in
  --main-job) main_job=1 ;;
  "") ;;
  *) die "unknown option $1 (--main-job, or nothing for everything the tests need)" ;;
esac

[ "$(id -u)" -eq 0 ] || die "ci-deps.sh installs system packages: run it as root"

# --- apt: add bookworm-backports on the mirror the machine already uses ----------------
backports_list=/etc/apt/sources.list.d/sovereign-backports.list
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  mirror=$(
    { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
      grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '{for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}'
    } | grep -v -e security -e '^$' | grep -E '/debian/?$' | head -n1 || true)
  [ -n "$mirror" ] || die "cannot find the Debian mirror in the apt sources to add bookworm-backports"
  log "adding bookworm-backports from $mirror"
  echo "deb $mirror bookworm-backports main" >"$backports_list"
fi

backports_pkgs=(qemu-system-x86 qemu-system-arm qemu-user-static qemu-utils linux-source-6.12)
pkgs=(bc flex bison libelf-dev libssl-dev dwarves gcc gcc-aarch64-linux-gnu libc6-dev-arm64-cross make cpio xz-utils
      zstd rsync mmdebstrap e2fsprogs iproute2 postgresql-client jq curl ca-certificates
      binfmt-support dpkg-dev busybox-static kmod file arch-test nftables
      openssh-server openssh-client openssl fonts-dejavu-core iperf3 prometheus toybox)
missing=()
for p in "${pkgs[@]}" "${backports_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The tests run their own sshd (the off-device backup server) in a namespace; the
  # package must not start one on the host. policy-rc.d keeps it stopped.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
  fi
  apt-get install -y -qq --no-install-recommends -t bookworm-backports \
    "${backports_pkgs[@]}" >/dev/null
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  [ "$own_policy" -eq 0 ] || rm -f "$policy"
fi

# --- Go: any Go >= 1.21 will do; the builds ask for go 1.26 and Go fetches that
# toolchain through the module proxy (GOTOOLCHAIN=auto in build-go-tools.sh) ------------
if ! command -v go >/dev/null; then
  log "installing Go from bookworm-backports (it fetches the pinned toolchain itself)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports golang-go >/dev/null
fi

# --- Rust ------------------------------------------------------------------------------
command -v rustup >/dev/null || die "rustup is required (https://rustup.rs)"
targets=(x86_64-unknown-linux-musl)
[ "$main_job" -eq 1 ] || targets+=(aarch64-unknown-linux-musl)
for t in "${targets[@]}"; do
  rustup target list --installed | grep -qx "$t" || { log "rustup target add $t"; rustup target add "$t"; }
done
if [ "$main_job" -eq 0 ]; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
fi

tools_path
mkdir -p "$SOVEREIGN_CACHE/bin"
if ! "$SOVEREIGN_CACHE/bin/vhost-device-vsock" --version 2>/dev/null | grep -q "$VHOST_DEVICE_VSOCK_VERSION"; then
  log "building vhost-device-vsock $VHOST_DEVICE_VSOCK_VERSION (about 2 minutes)"
  cargo install --locked --quiet vhost-device-vsock --version "$VHOST_DEVICE_VSOCK_VERSION" \
    --root "$SOVEREIGN_CACHE/cargo-tools"
  ln -sf "$SOVEREIGN_CACHE/cargo-tools/bin/vhost-device-vsock" "$SOVEREIGN_CACHE/bin/vhost-device-vsock"
fi
if [ "$main_job" -eq 0 ] && ! command -v cargo-fuzz >/dev/null && [ ! -x "$SOVEREIGN_CACHE/bin/cargo-fuzz" ]; then
  log "building cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz --root "$SOVEREIGN_CACHE/cargo-tools"
  ln -sf "$SOVEREIGN_CACHE/cargo-tools/bin/cargo-fuzz" "$SOVEREIGN_CACHE/bin/cargo-fuzz"
fi

# --- Go programs: gvproxy, tailscale(d), headscale --------------------------------------
"$SOVEREIGN_ROOT/scripts/build-go-tools.sh" x86_64
log "dependencies are in place"
