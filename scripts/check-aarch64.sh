#!/usr/bin/env bash
# Checks the phone's launcher binary without a phone: builds `sovereign` (and
# `sovereign-init`) for aarch64-unknown-linux-musl, verifies both are static aarch64
# ELF files, and runs the launcher under qemu-aarch64: --help, a spec validation that
# must fail naming the bad fields, and a crosvm dry-run of a valid arm64 spec as the
# phone would resolve it (ANDROID_ROOT set).
source "$(dirname "$0")/lib.sh"
cd "$SOVEREIGN_ROOT"
target=aarch64-unknown-linux-musl
cargo build --release --locked --target "$target" -p sovereign -p sovereign-init >&2
for bin in sovereign sovereign-init; do
  f=$(cargo_target_dir)/$target/release/$bin
  desc=$(file -b "$f")
  case "$desc" in
    *"ARM aarch64"*static*|*"ARM aarch64"*"statically linked"*) log "$bin: $desc" ;;
    *) die "$bin is not a static aarch64 executable: $desc" ;;
  esac
done
qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64) || die "qemu-aarch64 is needed (scripts/ci-deps.sh)"
sov=$(cargo_target_dir)/$target/release/sovereign
"$qemu" "$sov" --help >/dev/null || die "sovereign --help failed under $qemu"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A bad spec: every problem is named, exit code 2.
printf 'cid = 2\nmemory_mib = 1\nhostname = "Not A Label"\nkernel = "missing-Image"\n' >"$work/bad.toml"
set +e
bad=$(SOVEREIGN_HOME=$work "$qemu" "$sov" start --spec "$work/bad.toml" --dry-run 2>&1)
rc=$?
set -e
[ $rc -eq 2 ] || die "an invalid spec must exit 2 (got $rc): $bad"
for field in cid memory_mib hostname kernel; do
  grep -q "$field" <<<"$bad" || die "spec validation did not name '$field': $bad"
done
# A valid arm64 spec: an arm64 Image header (magic 'ARM\x64' at 0x38) and a root image.
head -c 64 /dev/zero >"$work/Image"
printf 'ARM\x64' | dd of="$work/Image" bs=1 seek=56 conv=notrunc status=none
truncate -s 64M "$work/root.img"
printf 'kernel = "Image"\nroot_image = "root.img"\n[vmm]\nbackend = "crosvm"\ngvproxy = "/bin/true"\n' >"$work/phone.toml"
dry=$(SOVEREIGN_HOME=$work "$qemu" "$sov" start --spec "$work/phone.toml" --dry-run 2>&1) \
  || die "dry-run of a valid arm64 spec failed: $dry"
grep -q -- "--vsock" <<<"$dry" || die "the crosvm command line lacks --vsock: $dry"
log "aarch64 launcher: static, --help runs, spec validation names bad fields, crosvm dry-run renders"
