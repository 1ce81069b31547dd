#!/usr/bin/env bash
# Builds the complete artifact set for one target into one directory:
#   kernel (bzImage | Image, option check passing), root.img (Debian trixie +
#   PostgreSQL 17 + tailscale, sovereign-init as /sbin/init), boot-initramfs.cpio.gz
#   (sovereign-init only, for boot tests), sovereign-init and sovereign (static musl),
#   gvproxy (linux/amd64 for QEMU hosts, android/arm64 for the phone), sql.toml (the
#   default spec as the launcher resolves it on that target) and manifest.json (size
#   and SHA-256 of each file).
# The data disk is not part of the set: `sovereign start` creates it sparse where the
# VM runs (adb push would expand a sparse file to its full 4 GiB).
#
# usage: scripts/build-images.sh --arch x86_64|arm64 [--out DIR] [--boot-only]
#   --boot-only  only what a boot test to the control stage needs: kernel,
#                sovereign-init, sovereign and the boot initramfs (no Debian root image,
#                no gvproxy, no spec)
# Prints the output directory as the last line (default $SOVEREIGN_CACHE/out/<arch>,
# or <arch>-boot with --boot-only).
source "$(dirname "$0")/lib.sh"

arch="" out="" boot_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --boot-only) boot_only=1; shift ;;
    --arch) [ $# -ge 2 ] || die "--arch needs x86_64 or arm64"; arch=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ -n "$arch" ] || die "--arch x86_64|arm64 is required"
deb=$(deb_arch "$arch")
target=$(rust_target "$arch")
kernel_name=$(xtask image-name "$arch")
case "$deb" in
  amd64) arch=x86_64 gvproxy_os=linux ;;
  arm64) arch=arm64 gvproxy_os=android ;;
esac
if [ "$boot_only" = 1 ]; then
  out=${out:-$SOVEREIGN_CACHE/out/$arch-boot}
else
  out=${out:-$SOVEREIGN_CACHE/out/$arch}
fi
mkdir -p "$out"
# Absolute: everything below runs from the workspace root.
out=$(cd "$out" && pwd)
cd "$SOVEREIGN_ROOT"

log "building sovereign-init and sovereign for $target"
cargo build --release --locked --target "$target" -p sovereign-init -p sovereign >&2
bin=$(cargo_target_dir)/$target/release
install -m 0755 "$bin/sovereign-init" "$out/sovereign-init"
install -m 0755 "$bin/sovereign" "$out/sovereign"

kernel_dir=$(scripts/build-kernel.sh "$arch" | tail -n1)
install -m 0644 "$kernel_dir/$kernel_name" "$out/$kernel_name"
install -m 0644 "$kernel_dir/config" "$out/kernel.config"

scripts/build-initramfs.sh --init "$out/sovereign-init" --out "$out/boot-initramfs.cpio.gz" >/dev/null
files=("$kernel_name" sovereign-init sovereign boot-initramfs.cpio.gz kernel.config)

if [ "$boot_only" = 0 ]; then
  scripts/build-go-tools.sh "$arch" >&2
  gvproxy=$(ls "$SOVEREIGN_CACHE"/go/"$gvproxy_os-$deb"/gvproxy-"$GVPROXY_VERSION"/gvproxy)
  install -m 0755 "$gvproxy" "$out/gvproxy"

  root=$(scripts/build-rootfs.sh "$arch" --init "$out/sovereign-init" --out "$out" | tail -n1)
  [ "$root" = "$out/root.img" ] || die "build-rootfs.sh wrote $root, expected $out/root.img"

  # The default spec, resolved by the launcher itself as it would be on the target.
  if [ "$arch" = x86_64 ]; then
    SOVEREIGN_HOME=/var/lib/sovereign "$out/sovereign" spec --sql >"$out/sql.toml"
  else
    command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static is needed to render the phone's spec (scripts/ci-deps.sh)"
    ANDROID_ROOT=/system qemu-aarch64-static "$out/sovereign" spec --sql >"$out/sql.toml"
  fi
  files+=(root.img gvproxy sql.toml)
fi

# manifest.json: what each file is, its size and SHA-256, and how deploy treats it
# (the mode and deploy policy per file name is xtask/src/manifest.rs).
# Its versions (protocol::release): the root image's release file and the kernel's.
versions=(--version "kernel=$(sed -n 's/^# Linux\/[^ ]* \([^ ]*\) Kernel Configuration$/\1/p' "$out/kernel.config")")
if [ "$boot_only" = 0 ]; then
  while IFS='=' read -r key value; do
    case "$key" in ''|'#'*) continue ;; esac
    versions+=(--version "$key=$value")
  done < <(debugfs -R 'cat /etc/sovereign-release' "$out/root.img" 2>/dev/null)
fi
xtask manifest --arch "$arch" "${versions[@]}" "$out" "${files[@]}" || die "cannot write $out/manifest.json (see above)"
log "artifacts for $arch in $out"
echo "$out"
