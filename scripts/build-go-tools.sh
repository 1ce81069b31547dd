#!/usr/bin/env bash
# Builds the pinned Go programs for one target architecture:
#   x86_64: gvproxy, tailscale, tailscaled, headscale for linux/amd64 (host and guest);
#           with --bench also upstream's gvforwarder (cmd/vm), the forwarder benchmark's peer;
#           with --gitea also Gitea (Forgejo's upstream), the real app of the apps test
#   arm64:  gvproxy for android/arm64 (the phone), tailscale and tailscaled for
#           linux/arm64 (the guest)
# Results are cached under $SOVEREIGN_CACHE/go/<goos>-<goarch>/<tool>-<version>/ and the
# host's tools are linked into $SOVEREIGN_CACHE/bin. Prints nothing when all are cached.
source "$(dirname "$0")/lib.sh"
arch=${1:?usage: build-go-tools.sh x86_64|arm64 [--bench] [--gitea]}
shift
bench= gitea=
for extra in "$@"; do
  case "$extra" in
    --bench) bench=--bench ;;
    --gitea) gitea=--gitea ;;
    *) die "unknown option $extra (--bench or --gitea)" ;;
  esac
done
goarch=$(go_arch "$arch")
command -v go >/dev/null || die "Go is required to build gvproxy, tailscale and headscale (scripts/ci-deps.sh installs it)"
# The build modules say `go 1.26`: an older local Go switches to that toolchain.
export GOTOOLCHAIN=auto

# install_go_tool GOOS PACKAGE VERSION NAME
# Builds in a throwaway module that requires the pinned version, which also works for
# modules whose version list the proxy does not serve (where `go install pkg@v` fails).
install_go_tool() {
  local goos=$1 pkg=$2 version=$3 name=$4
  local dir="$SOVEREIGN_CACHE/go/$goos-$goarch/$name-$version"
  if [ ! -x "$dir/$name" ]; then
    log "building $pkg@$version for $goos/$goarch"
    local work
    work=$(mktemp -d)
    (
      cd "$work"
      printf 'module sovereign.local/build\n\ngo 1.26\n' >go.mod
      go get "$pkg@$version" >&2
      mkdir -p "$dir"
      GOOS=$goos GOARCH=$goarch CGO_ENABLED=0 \
        go build -trimpath -ldflags='-s -w' -o "$dir/$name.tmp" "$pkg" >&2
      mv "$dir/$name.tmp" "$dir/$name"
    ) || { rm -rf "$work"; die "building $pkg@$version failed"; }
    rm -rf "$work"
  fi
  echo "$dir/$name"
}

# install_gitea: Gitea's go.mod has replace directives, which a requiring module does
# not inherit, so it is built inside its own module source (copied out of the module
# cache, which is read-only). 2.5 min on 2 cores; about 140 MB.
install_gitea() {
  local dir="$SOVEREIGN_CACHE/go/linux-$goarch/gitea-$GITEA_VERSION"
  if [ ! -x "$dir/gitea" ]; then
    log "building code.gitea.io/gitea@$GITEA_VERSION (~3 min)"
    local work src
    work=$(mktemp -d)
    (
      src=$(go mod download -json "code.gitea.io/gitea@$GITEA_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
      [ -d "$src" ] || die "go mod download did not give Gitea's source directory"
      cp -r "$src/." "$work/"
      chmod -R u+w "$work"
      cd "$work"
      go mod download >&2
      mkdir -p "$dir"
      GOOS=linux GOARCH=$goarch CGO_ENABLED=0 \
        go build -trimpath -ldflags='-s -w' -o "$dir/gitea.tmp" . >&2
      mv "$dir/gitea.tmp" "$dir/gitea"
    ) || { rm -rf "$work"; die "building Gitea $GITEA_VERSION failed"; }
    rm -rf "$work"
  fi
  echo "$dir/gitea"
}

mkdir -p "$SOVEREIGN_CACHE/bin"
case "$goarch" in
  amd64)
    for spec in \
      "github.com/containers/gvisor-tap-vsock/cmd/gvproxy $GVPROXY_VERSION gvproxy" \
      "tailscale.com/cmd/tailscaled $TAILSCALE_VERSION tailscaled" \
      "tailscale.com/cmd/tailscale $TAILSCALE_VERSION tailscale" \
      "github.com/juanfont/headscale/cmd/headscale $HEADSCALE_VERSION headscale"; do
      set -- $spec
      bin=$(install_go_tool linux "$1" "$2" "$3")
      ln -sf "$bin" "$SOVEREIGN_CACHE/bin/$3"
    done
    if [ "$bench" = --bench ]; then
      bin=$(install_go_tool linux github.com/containers/gvisor-tap-vsock/cmd/vm "$GVPROXY_VERSION" gvforwarder)
      ln -sf "$bin" "$SOVEREIGN_CACHE/bin/gvforwarder"
    fi
    if [ "$gitea" = --gitea ]; then
      ln -sf "$(install_gitea)" "$SOVEREIGN_CACHE/bin/gitea"
    fi
    ;;
  arm64)
    install_go_tool android github.com/containers/gvisor-tap-vsock/cmd/gvproxy "$GVPROXY_VERSION" gvproxy >/dev/null
    install_go_tool linux tailscale.com/cmd/tailscaled "$TAILSCALE_VERSION" tailscaled >/dev/null
    install_go_tool linux tailscale.com/cmd/tailscale "$TAILSCALE_VERSION" tailscale >/dev/null
    ;;
esac
