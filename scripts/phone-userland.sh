#!/usr/bin/env bash
# Android's userland for the phone rehearsal (tests/tests/phone.rs), aarch64 like a
# phone's: Debian's toybox (the applets Android ships) and mksh (Android's shell) for
# arm64, with the aarch64 C library taken from the cached arm64 Debian tree
# (scripts/build-rootfs.sh arm64). Cached under $SOVEREIGN_CACHE/phone-userland/,
# keyed by the package versions and the tree; prints the directory as the last line:
#   bin/toybox bin/mksh lib/ld-linux-aarch64.so.1 lib/aarch64-linux-gnu/*.so*
# The .debs come from the Debian archive this machine's apt already uses (the arm64
# build of the version apt has for amd64).
source "$(dirname "$0")/lib.sh"

tree_tar=$(ls -t "$SOVEREIGN_CACHE"/rootfs/arm64-*/debian.tar 2>/dev/null | head -n1)
[ -n "$tree_tar" ] || die "no arm64 Debian tree in $SOVEREIGN_CACHE/rootfs (scripts/build-rootfs.sh arm64 --no-init)"
uris=$(cd /tmp && apt-get download --print-uris toybox mksh 2>/dev/null) \
  || die "apt does not know toybox and mksh (scripts/ci-deps.sh installs them)"
key=$(printf '%s\n%s\n' "$uris" "$tree_tar" | sha256sum | cut -c1-16)
dir=$SOVEREIGN_CACHE/phone-userland/$key
if [ -x "$dir/bin/toybox" ] && [ -x "$dir/bin/mksh" ]; then
  echo "$dir"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/out/bin" "$tmp/out/lib/aarch64-linux-gnu"
while read -r uri file _; do
  uri=${uri//\'/}
  uri=${uri%_amd64.deb}_arm64.deb
  log "fetching ${file%_amd64.deb}_arm64.deb"
  curl -fsSL --retry 3 -o "$tmp/pkg.deb" "$uri" || die "cannot fetch $uri"
  dpkg-deb -x "$tmp/pkg.deb" "$tmp/x"
done <<<"$uris"
install -m 0755 "$tmp/x/bin/toybox" "$tmp/out/bin/toybox"
install -m 0755 "$tmp/x/bin/mksh" "$tmp/out/bin/mksh"
for f in libc.so.6 libm.so.6 libcrypt.so.1 ld-linux-aarch64.so.1; do
  tar -C "$tmp/x" --wildcards -xf "$tree_tar" "./usr/lib/aarch64-linux-gnu/$f*" 2>/dev/null \
    || die "$f is not in $tree_tar"
  cp -L "$tmp/x/usr/lib/aarch64-linux-gnu/$f" "$tmp/out/lib/aarch64-linux-gnu/$f"
done
ln -s aarch64-linux-gnu/ld-linux-aarch64.so.1 "$tmp/out/lib/ld-linux-aarch64.so.1"
xtask elf-arch --expect arm64 "$tmp/out/bin/toybox" >/dev/null || die "the toybox fetched is not for arm64"
mkdir -p "$(dirname "$dir")"
rm -rf "$dir.partial" && mv "$tmp/out" "$dir.partial" && mv "$dir.partial" "$dir"
log "phone userland: $dir"
echo "$dir"
