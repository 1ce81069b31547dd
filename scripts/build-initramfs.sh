#!/usr/bin/env bash
# Builds the boot-only root image: a gzip'ed cpio initramfs holding nothing but
# sovereign-init (as /init and /sbin/init) and the directories it mounts on. It boots
# any kernel that can unpack an initramfs, including distro kernels whose drivers are
# all modules (the vsock-missing test relies on that), and it proves the boot chain
# (init, devices, control) without the Debian root image.
#
# usage: build-initramfs.sh --init PATH [--out FILE] [--modules-from DIR]
#   --modules-from DIR  also copy DIR (a /lib/modules/<release> tree) into the image
source "$(dirname "$0")/lib.sh"

init="" out="" modules=""
while [ $# -gt 0 ]; do
  case "$1" in
    --init) init=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --modules-from) modules=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -n "$init" ] || die "--init PATH is required"
[ -x "$init" ] || die "--init $init is not an executable file"
out=${out:-$SOVEREIGN_CACHE/images/boot-initramfs.cpio.gz}
mkdir -p "$(dirname "$out")"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,run,tmp,data,sbin,etc}
install -m 0755 "$init" "$stage/init"
ln -s ../init "$stage/sbin/init"
# The kernel opens /dev/console for init before devtmpfs is mounted.
mknod -m 600 "$stage/dev/console" c 5 1
echo "sovereign" >"$stage/etc/hostname"
if [ -n "$modules" ]; then
  rel=$(basename "$modules")
  mkdir -p "$stage/lib/modules"
  cp -a "$modules" "$stage/lib/modules/$rel"
fi
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -9 >"$out.tmp"
mv "$out.tmp" "$out"
log "initramfs: $out ($(du -h "$out" | cut -f1))"
echo "$out"
