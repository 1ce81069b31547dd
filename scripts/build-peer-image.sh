#!/usr/bin/env bash
# Builds the boot benchmark's peer (x86_64): what a user would otherwise run. The
# guest's own Debian packages (rootfs/debian/packages) plus rootfs/peer/packages:
# systemd as init, Debian's cloud kernel with its initramfs, and upstream gvforwarder,
# tailscaled and PostgreSQL started as systemd units (rootfs/peer/overlay). Debian
# makes its usual main cluster; rootfs/peer/customize.sh opens it to the tailnet.
#
# Cached under $SOVEREIGN_CACHE/peer/<hash>/ (hash of the recipes, this script and
# the Go tools' versions): root.img, vmlinuz, initrd.img, postgres.password (0600).
# Prints that directory as the last line on stdout. Needs root (mmdebstrap).
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

SUITE=trixie
# Free space in the image: the cluster lives on it, and the benchmark fills a pgbench
# database of ~150 MiB plus its WAL (the file is sparse).
HEADROOM_MIB=2048

case "${1:-}" in
  -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "unexpected argument '$1' (the peer image is x86_64 only; no arguments)" ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, and mkfs.ext4 -d reads root-only files)"
for tool in mmdebstrap mkfs.ext4 e2fsck tar; do
  command -v "$tool" >/dev/null || die "'$tool' not found (run scripts/ci-deps.sh)"
done

key=$(cd "$SOVEREIGN_ROOT" && hash_inputs rootfs/debian rootfs/peer scripts/build-peer-image.sh \
  -- "$GVPROXY_VERSION" "$TAILSCALE_VERSION")
out=$SOVEREIGN_CACHE/peer/$key
if [ -f "$out/root.img" ]; then
  log "peer image: cached ($out)"
  echo "$out"
  exit 0
fi

"$SOVEREIGN_ROOT/scripts/build-go-tools.sh" x86_64 --bench >&2
go_dir=$SOVEREIGN_CACHE/go/linux-amd64
gvforwarder=$(readlink -f "$SOVEREIGN_CACHE/bin/gvforwarder")
tailscale=$go_dir/tailscale-$TAILSCALE_VERSION/tailscale
tailscaled=$go_dir/tailscaled-$TAILSCALE_VERSION/tailscaled
for f in "$gvforwarder" "$tailscale" "$tailscaled"; do
  [ -x "$f" ] || die "$f missing after build-go-tools.sh x86_64 --bench"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
in=$tmp/in
mkdir -p "$in/no-llvm/DEBIAN" "$tmp/tree"
cp "$SOVEREIGN_ROOT/rootfs/debian/sovereign-no-llvm.control" "$in/no-llvm/DEBIAN/control"
dpkg-deb --root-owner-group -Zgzip --build "$in/no-llvm" "$in/sovereign-no-llvm.deb" >&2
cp "$gvforwarder" "$in/gvforwarder"
cp "$tailscale" "$tailscaled" "$in/"
tar -C "$SOVEREIGN_ROOT/rootfs/peer/overlay" --owner=0 --group=0 --numeric-owner \
  --mode='u+rw,go-w' -cf "$in/overlay.tar" .
password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
(umask 077 && printf "ALTER USER postgres PASSWORD '%s';\n" "$password" >"$in/password.sql")

packages=$(cat "$SOVEREIGN_ROOT/rootfs/debian/packages" "$SOVEREIGN_ROOT/rootfs/peer/packages" \
  | sed -e 's/#.*//' | tr -s ' \t\n' ',' | sed -e 's/^,//' -e 's/,$//')
pick_mirrors
log "mmdebstrap $SUITE amd64 for the systemd peer (cold: a few minutes)"
start=$SECONDS
# Root mode: the hook runs postgres in the tree as its user and reads the inputs
# (the password among them) without making them world-readable.
# shellcheck disable=SC2016 # hooks get the chroot as "$1", expanded by mmdebstrap
mmdebstrap --mode=root --variant=essential --arch=amd64 --format=directory \
  --include="$packages" --include="$in/sovereign-no-llvm.deb" \
  --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount \
  --dpkgopt="$SOVEREIGN_ROOT/rootfs/debian/dpkg.cfg" --dpkgopt=force-unsafe-io \
  --customize-hook="$SOVEREIGN_ROOT/rootfs/peer/customize.sh \"\$1\" $in" \
  "$SUITE" "$tmp/tree" "${mirror_args[@]}" >&2 \
  || die "mmdebstrap failed (see above)"

mkdir -p "$out.partial"
rm -rf "${out:?}.partial"/*
cp "$tmp"/tree/boot/vmlinuz-* "$out.partial/vmlinuz"
cp "$tmp"/tree/boot/initrd.img-* "$out.partial/initrd.img"
(umask 077 && printf '%s\n' "$password" >"$out.partial/postgres.password")
used_mib=$(du -sxm "$tmp/tree" | cut -f1)
size_mib=$(( (used_mib + HEADROOM_MIB + 63) / 64 * 64 ))
mkfs.ext4 -q -F -L sovereign-peer -b 4096 -I 256 -i 16384 -d "$tmp/tree" \
  "$out.partial/root.img" "${size_mib}M" >&2 || die "mkfs.ext4 failed"
e2fsck -fn "$out.partial/root.img" >/dev/null 2>&1 || die "e2fsck found errors in the peer image"
rm -rf "$out"
mv "$out.partial" "$out"
log "peer image: $out (${size_mib} MiB, $((SECONDS - start)) s)"
echo "$out"
