#!/usr/bin/env bash
# Builds the Sovereign guest kernel from Debian's linux-source tarball:
# tinyconfig + kernel-config/fragments/{common,ARCH}.config, every requested option
# checked after olddefconfig (Kconfig silently drops options whose dependencies are
# unmet) and again in the built image's embedded config.
#
# Output: $SOVEREIGN_CACHE/kernel/<arch>-<hash>/{bzImage|Image,config}, keyed by the
# fragments, the configure-and-build part of this script and the linux-source package
# version. A complete output directory is reused as is. The last line on stdout is the
# output directory (with --config-only: the checked .config); everything else goes to
# stderr. --cached only answers whether the kernel is cached (exit 0 and its directory)
# or not (exit 3), building nothing.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() {
  cat >&2 <<'EOF'
usage: scripts/build-kernel.sh ARCH [--config-only | --cached]

  ARCH           x86_64 (or amd64) | arm64 (or aarch64)
  --config-only  stop after the checked .config and print its path
  --cached       build nothing: exit 0 and print the directory if this kernel is
                 cached, exit 3 if not

Builds the guest kernel (bzImage for x86_64, Image for arm64) from
/usr/src/linux-source-6.12.tar.xz (scripts/ci-deps.sh installs it) and prints
the output directory, $SOVEREIGN_CACHE/kernel/<arch>-<hash>, as the last line.
Fails naming every option of kernel-config/fragments that does not hold.
EOF
}

arch=
config_only=false
cached_only=false
for a in "$@"; do
  case "$a" in
    -h|--help) usage; exit 0 ;;
    --config-only) config_only=true ;;
    --cached) cached_only=true ;;
    -*) usage; die "unknown option '$a'" ;;
    *) [ -z "$arch" ] || { usage; die "more than one ARCH given ('$arch', '$a')"; }
       arch=$a ;;
  esac
done
[ -n "$arch" ] || { usage; die "ARCH is required"; }

case "$arch" in
  x86_64|amd64)  arch=x86_64; machine=x86_64;  boot_dir=arch/x86/boot ;;
  arm64|aarch64) arch=arm64;  machine=aarch64; boot_dir=arch/arm64/boot ;;
  *) usage; die "unknown ARCH '$arch' (expected x86_64/amd64 or arm64/aarch64)" ;;
esac
image=$(xtask image-name "$arch")
image_path=$boot_dir/$image

# --- inputs and the cache key -----------------------------------------------------------
tarball=/usr/src/linux-source-$KERNEL_SERIES.tar.xz
[ -r "$tarball" ] || die "$tarball not found: install linux-source-$KERNEL_SERIES from bookworm-backports (scripts/ci-deps.sh)"
src_version=$(dpkg-query -W -f='${Version}' "linux-source-$KERNEL_SERIES" 2>/dev/null || true)
[ -n "$src_version" ] || src_version="tarball-$(stat -c '%s-%Y' "$tarball")"
src_key=$(printf '%s' "$src_version" | tr -c 'A-Za-z0-9.-' '_')

cd "$SOVEREIGN_ROOT"
# Only what shapes the kernel counts: editing messages or options above does not
# invalidate a 10-30 minute build.
recipe=$(sed -n '/^# --- configure/,$p' scripts/build-kernel.sh)
hash=$(hash_inputs kernel-config/fragments -- "linux-source-$KERNEL_SERIES=$src_version" "$recipe")
out=$SOVEREIGN_CACHE/kernel/$arch-$hash

complete() { [ -s "$out/$image" ] && [ -s "$out/config" ]; }
if complete; then
  log "kernel $arch is up to date: $out"
  if $config_only; then echo "$out/config"; else echo "$out"; fi
  exit 0
fi
$cached_only && exit 3

mkdir -p "$SOVEREIGN_CACHE/kernel" "$SOVEREIGN_CACHE/src"
# One kernel job at a time per cache: they share the source tree and two cores.
exec 9>"$SOVEREIGN_CACHE/kernel/.lock"
if ! flock -n 9; then
  log "waiting for another build-kernel.sh to finish"
  flock 9
fi
if complete; then
  log "kernel $arch was built meanwhile: $out"
  if $config_only; then echo "$out/config"; else echo "$out"; fi
  exit 0
fi

# --- the source tree, extracted once per package version ---------------------------------
src=$SOVEREIGN_CACHE/src/linux-source-$KERNEL_SERIES-$src_key
if [ ! -e "$src/.sovereign-extracted" ]; then
  log "extracting $tarball ($src_version) into $src (about a minute)"
  tmp=$SOVEREIGN_CACHE/src/.extract.$$
  rm -rf "$tmp" "$src"
  mkdir -p "$tmp"
  tar -xJf "$tarball" -C "$tmp"
  mv "$tmp/linux-source-$KERNEL_SERIES" "$src"
  rmdir "$tmp"
  touch "$src/.sovereign-extracted"
fi

# The build directory is per arch and source version, not per hash: a changed fragment
# rebuilds incrementally.
build=$SOVEREIGN_CACHE/kernel/build-$arch-$src_key
mkdir -p "$build"
buildlog=$build/build.log
: >"$buildlog"

# --- tools --------------------------------------------------------------------------------
tools_path
make_args=(--no-print-directory -C "$src" O="$build" ARCH="$arch"
           KBUILD_BUILD_USER=sovereign KBUILD_BUILD_HOST=sovereign)
if [ "$(uname -m)" != "$machine" ]; then
  command -v "$machine-linux-gnu-gcc" >/dev/null \
    || die "$machine-linux-gnu-gcc not found: install gcc-$machine-linux-gnu (scripts/ci-deps.sh) to cross-build the $arch kernel"
  make_args+=(CROSS_COMPILE="$machine-linux-gnu-")
fi
for tool in make gcc flex bison bc perl cpio; do
  command -v "$tool" >/dev/null || die "$tool not found: run scripts/ci-deps.sh"
done

log "building the config checker (cargo build -p sovereign-kernel-config --release)"
cargo build --quiet --release -p sovereign-kernel-config --bin sovereign-kconfig >&2 \
  || die "cannot build sovereign-kconfig"
kconfig=$(cargo_target_dir)/release/sovereign-kconfig
[ -x "$kconfig" ] || die "cargo built sovereign-kconfig but $kconfig does not exist"

# --- configure ----------------------------------------------------------------------------
# run STEP CMD...: runs CMD with its output in the build log; on failure shows the
# log's tail and stops.
run() {
  local step=$1; shift
  printf '\n### %s: %s\n' "$step" "$*" >>"$buildlog"
  if ! "$@" >>"$buildlog" 2>&1; then
    printf '%s\n' "--- last 40 lines of $buildlog" >&2
    tail -n 40 "$buildlog" >&2
    die "$step failed (full log: $buildlog)"
  fi
}

log "configuring $arch: tinyconfig + fragments (log: $buildlog)"
rm -f "$build/.config"
run "make tinyconfig" make "${make_args[@]}" tinyconfig
"$kconfig" fragments --arch "$arch" >"$build/sovereign.config"
run "merge fragments" bash -c 'cd "$1" && "$2/scripts/kconfig/merge_config.sh" -m -O "$1" "$1/.config" "$1/sovereign.config"' \
  merge "$build" "$src"
run "make olddefconfig" make "${make_args[@]}" olddefconfig

# check WHAT ARGS...: runs the checker; on mismatches prints them and stops.
check() {
  local what=$1; shift
  local report status=0
  report=$("$kconfig" check --arch "$arch" "$@" 2>&1) || status=$?
  printf '\n### check %s\n%s\n' "$what" "$report" >>"$buildlog"
  case $status in
    0) log "$what: $report" ;;
    1) printf '%s\n' "$report" >&2
       die "$what: the options above were requested by kernel-config/fragments but did not survive (unmet dependencies are dropped silently by Kconfig); add what they depend on to the fragment" ;;
    *) printf '%s\n' "$report" >&2
       die "$what: the checker could not run" ;;
  esac
}
check "checked .config" --config "$build/.config"

if $config_only; then
  echo "$build/.config"
  exit 0
fi

# --- build --------------------------------------------------------------------------------
jobs=$(nproc)
log "building $image for $arch with make -j$jobs (10-30 min on 2 cores; progress in $buildlog)"
start=$SECONDS
run "make $image" make "${make_args[@]}" -j"$jobs" "$image"
elapsed=$((SECONDS - start))
log "built $image in $((elapsed / 60))m$((elapsed % 60))s"

check "embedded config of $image" --kernel "$build/$image_path"

tmp_out=$out.tmp.$$
rm -rf "$tmp_out"
mkdir -p "$tmp_out"
cp "$build/$image_path" "$tmp_out/$image"
cp "$build/.config" "$tmp_out/config"
rm -rf "$out"
mv "$tmp_out" "$out"
log "kernel $arch ($(make -s "${make_args[@]}" kernelrelease 2>/dev/null || echo '?')): $out"
echo "$out"
