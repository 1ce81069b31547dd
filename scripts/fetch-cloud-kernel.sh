#!/usr/bin/env bash
# Fetches Debian's cloud kernel (6.12 from bookworm-backports) for the tests that boot a
# kernel whose virtio, vsock and ext4 drivers are modules. Prints the directory holding
# `vmlinuz` and `modules/<release>/` (the module tree, used by the module-loading test;
# the vsock-missing test leaves it out of the image).
source "$(dirname "$0")/lib.sh"

meta=linux-image-cloud-amd64
pkg=$(apt-cache depends -t bookworm-backports "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
[ -n "$pkg" ] || die "cannot resolve $meta in bookworm-backports (run scripts/ci-deps.sh first)"
version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
out="$SOVEREIGN_CACHE/cloud-kernel/$pkg-$version"
if [ ! -f "$out/vmlinuz" ]; then
  log "downloading $pkg $version"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  chmod 755 "$work"
  (cd "$work" && apt-get download -q "$pkg=$version" >&2)
  dpkg-deb -x "$work"/*.deb "$work/x"
  mkdir -p "$out/modules"
  cp "$work"/x/boot/vmlinuz-* "$out/vmlinuz"
  cp -a "$work"/x/lib/modules/* "$out/modules/"
  rel=$(basename "$work"/x/lib/modules/*)
  # modules.dep and modules.alias are generated at install time, not shipped.
  mkdir -p "$work/root/lib/modules"
  ln -s "$out/modules/$rel" "$work/root/lib/modules/$rel"
  PATH=$PATH:/sbin:/usr/sbin depmod -b "$work/root" "$rel"
fi
echo "$out"
