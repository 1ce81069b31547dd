# Shared helpers for the build scripts. Source it; do not run it.
#
# Heavy artifacts live under $SOVEREIGN_CACHE, keyed by a hash of their inputs, so a
# warm cache skips the work and a changed input rebuilds only what it feeds.

set -euo pipefail

SOVEREIGN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOVEREIGN_CACHE=${SOVEREIGN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sovereign}
export SOVEREIGN_ROOT SOVEREIGN_CACHE

# Pinned versions of the Go programs the project builds.
GVPROXY_VERSION=v0.8.9
TAILSCALE_VERSION=v1.98.10
HEADSCALE_VERSION=v0.29.2
VHOST_DEVICE_VSOCK_VERSION=0.3.0
GITEA_VERSION=v1.25.0
KERNEL_SERIES=6.12

# Cargo's target directory: $CARGO_TARGET_DIR when set (test.sh keeps it in the cache),
# else the workspace's target/.
cargo_target_dir() { printf '%s\n' "${CARGO_TARGET_DIR:-$SOVEREIGN_ROOT/target}"; }

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# hash_inputs PATH... : a short hash of the named files and directories (content and
# relative names), plus any extra words given after `--`.
hash_inputs() {
  local extra=()
  local paths=()
  while [ $# -gt 0 ]; do
    if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
    paths+=("$1"); shift
  done
  {
    for p in "${paths[@]}"; do
      if [ -d "$p" ]; then
        (cd "$p" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
      else
        sha256sum "$p"
      fi | sed "s#  \\./#  ${p##*/}/#"
    done
    printf '%s\n' "${extra[@]+"${extra[@]}"}"
  } | sha256sum | cut -c1-16
}

# xtask ARGS...: `cargo xtask ARGS` (xtask/: the set's manifest, ELF machines, arch
# names), run from the workspace root, where the alias and the pinned toolchain are
# defined. Paths in ARGS must therefore be absolute.
xtask() {
  command -v cargo >/dev/null \
    || die "cargo not found on PATH: the build scripts run \`cargo xtask\` (under sudo, keep your PATH: sudo env \"PATH=\$PATH\" ...)"
  (cd "$SOVEREIGN_ROOT" && cargo xtask "$@")
}

# Debian architecture and Rust target for an ARCH argument (x86_64 or arm64, or the
# aliases amd64 and aarch64), as protocol::Arch names them; an unknown ARCH fails
# with xtask's message.
deb_arch() { xtask debian-arch "$1"; }
rust_target() { xtask musl-target "$1"; }
go_arch() { deb_arch "$1"; }

# Puts cargo-installed and Go-built tools on PATH.
tools_path() {
  export PATH="$SOVEREIGN_CACHE/bin:$HOME/.cargo/bin:$PATH"
}

# pick_mirrors: sets mirror_args, mmdebstrap's mirror arguments for $SUITE: the
# Debian archive this machine's apt already uses (no host is written into the repo),
# with -updates and -security like mmdebstrap's own default. Empty: let mmdebstrap
# choose.
mirror_args=()
pick_mirrors() {
  local main="" security="" codename="" id=""
  if [ -n "${SOVEREIGN_DEBIAN_MIRROR:-}" ]; then
    main=$SOVEREIGN_DEBIAN_MIRROR
    security=${SOVEREIGN_DEBIAN_SECURITY_MIRROR:-}
  elif [ -r /etc/os-release ] && command -v apt-get >/dev/null; then
    # shellcheck disable=SC1091
    id=$(. /etc/os-release && echo "${ID:-}")
    # shellcheck disable=SC1091
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    if [ "$id" = debian ] && [ -n "$codename" ]; then
      local targets
      # shellcheck disable=SC2016 # apt's own $(FIELD) syntax
      targets=$(apt-get indextargets --no-release-info --format '$(REPO_URI) $(RELEASE)' \
        'Identifier: Packages' 2>/dev/null | sort -u || true)
      # The suite named by codename (else one named without a dash, like
      # "stable"), and any *-security suite.
      main=$(awk -v s="$codename" '$2 == s { print $1; exit }' <<<"$targets")
      [ -n "$main" ] || main=$(awk '$2 !~ /-/ { print $1; exit }' <<<"$targets")
      security=$(awk '$2 ~ /-security$/ { print $1; exit }' <<<"$targets")
    fi
  fi
  if [ -z "$main" ]; then
    log "no Debian mirror found in this machine's apt sources: using mmdebstrap's default"
    return
  fi
  mirror_args=("deb ${main%/} $SUITE main" "deb ${main%/} $SUITE-updates main")
  if [ -n "$security" ]; then
    mirror_args+=("deb ${security%/} $SUITE-security main")
  fi
  log "Debian mirror: ${main%/}${security:+ (security: ${security%/})}"
}
