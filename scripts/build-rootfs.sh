#!/usr/bin/env bash
# Builds the guest root image: Debian trixie with PostgreSQL 17 (by mmdebstrap),
# tailscale + tailscaled for the guest arch, and sovereign-init as /sbin/init, in an
# ext4 image made by `mkfs.ext4 -d` (no mounting). See rootfs/README.md.
#
# Two parts:
#   1. Debian tree, cached as a tarball under $SOVEREIGN_CACHE/rootfs/<arch>-<hash>/,
#      keyed by rootfs/debian/, the arch and this script's build_debian (a warm
#      cache never runs mmdebstrap).
#   2. Image assembly, every run (seconds): cached tree + rootfs/overlay + tailscale
#      binaries + init -> root.img, then checked with debugfs and e2fsck.
# Progress goes to stderr; the image path is the last line on stdout.
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

SUITE=trixie
PG_MAJOR=17
HEADROOM_MIB=256

usage() {
  cat >&2 <<EOF
usage: $(basename "$0") ARCH (--init PATH | --no-init) [--out DIR] [--headroom MIB]

  ARCH            x86_64 or arm64 (aliases: amd64, aarch64)
  --init PATH     static sovereign-init for ARCH, installed as /sbin/init (0755)
  --no-init       build without /sbin/init (only for inspecting the image)
  --out DIR       where to write root.img (default \$SOVEREIGN_CACHE/images/ARCH)
  --headroom MIB  free space on top of the used size (default $HEADROOM_MIB)

Environment:
  SOVEREIGN_CACHE          cache root (now: $SOVEREIGN_CACHE)
  SOVEREIGN_DEBIAN_MIRROR  Debian mirror URI; default: the one this machine's apt
                           sources use, else mmdebstrap's default
  SOVEREIGN_DEBIAN_SECURITY_MIRROR
                           debian-security URI to go with SOVEREIGN_DEBIAN_MIRROR
                           (without it, that build has no trixie-security)

Needs root (mmdebstrap, and mkfs.ext4 -d must read root-only files).
Prints the image path as the last line on stdout.
EOF
}

# ---- arguments -------------------------------------------------------------------

arch="" init="" no_init=0 out_dir="" headroom=$HEADROOM_MIB
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --init) [ $# -ge 2 ] || { usage; die "--init needs a path"; }; init=$2; shift 2 ;;
    --init=*) init=${1#--init=}; shift ;;
    --no-init) no_init=1; shift ;;
    --out) [ $# -ge 2 ] || { usage; die "--out needs a directory"; }; out_dir=$2; shift 2 ;;
    --out=*) out_dir=${1#--out=}; shift ;;
    --headroom) [ $# -ge 2 ] || { usage; die "--headroom needs a size in MiB"; }; headroom=$2; shift 2 ;;
    --headroom=*) headroom=${1#--headroom=}; shift ;;
    -*) usage; die "unknown option '$1'" ;;
    *) [ -z "$arch" ] || { usage; die "unexpected argument '$1'"; }; arch=$1; shift ;;
  esac
done
[ -n "$arch" ] || { usage; die "missing ARCH (x86_64 or arm64)"; }
debarch=$(deb_arch "$arch")
case "$debarch" in amd64) arch=x86_64 ;; arm64) arch=arm64 ;; esac
if [ "$no_init" = 1 ]; then
  [ -z "$init" ] || die "--init and --no-init exclude each other"
else
  [ -n "$init" ] || { usage; die "missing --init PATH (or --no-init to build without an init)"; }
  [ -f "$init" ] || die "--init: '$init' is not a file"
fi
[[ "$headroom" =~ ^[0-9]+$ ]] || die "--headroom: '$headroom' is not a number of MiB"
out_dir=${out_dir:-$SOVEREIGN_CACHE/images/$arch}

[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, and mkfs.ext4 -d reads root-only files)"
for tool in mmdebstrap mkfs.ext4 e2fsck debugfs dpkg-deb tar flock; do
  command -v "$tool" >/dev/null || die "'$tool' not found (Debian packages: mmdebstrap e2fsprogs dpkg tar util-linux coreutils)"
done

# ---- helpers ---------------------------------------------------------------------

# check_elf FILE WHAT: FILE must be an ELF executable for $arch (`cargo xtask
# elf-arch` reads its header and names what it found).
check_elf() {
  xtask elf-arch --expect "$arch" "$(realpath -- "$1")" >/dev/null \
    || die "$2 ($1) must be an ELF binary for $arch (see above)"
}

mmdebstrap_opts=()

# Foreign-arch builds run the packages' maintainer scripts under qemu-user: register
# qemu-aarch64 with binfmt_misc unless it already is (idempotent).
ensure_binfmt() {
  [ "$debarch" = arm64 ] || return 0
  [ "$(uname -m)" != aarch64 ] || return 0
  local dir=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  if [ ! -e "$dir/register" ]; then
    mount -t binfmt_misc binfmt_misc "$dir" || die "cannot mount binfmt_misc on $dir"
  fi
  if [ -e "$dir/qemu-aarch64" ]; then
    grep -qx enabled "$dir/qemu-aarch64" || echo 1 >"$dir/qemu-aarch64"
  else
    [ -r "$conf" ] || die "$conf not found: install qemu-user-static (bookworm-backports)"
    log "registering qemu-aarch64 with binfmt_misc"
    grep -v '^#' "$conf" | grep . >"$dir/register" || die "binfmt registration from $conf failed"
  fi
  grep -q '^flags:.*F' "$dir/qemu-aarch64" \
    || die "qemu-aarch64 is registered without the F flag: mmdebstrap cannot use it in a namespace"
  # mmdebstrap proves emulation with arch-test when it can; without it, the check
  # above stands in (and the first maintainer script would fail loudly anyway).
  if ! command -v arch-test >/dev/null; then
    mmdebstrap_opts+=(--skip=check/qemu)
  fi
}

[ "$no_init" = 1 ] || check_elf "$init" "--init"

tmp=$(mktemp -d)
staging=""
partial_img=""
cleanup() {
  rm -rf "$tmp"
  [ -z "$staging" ] || rm -rf "$staging"
  [ -z "$partial_img" ] || rm -f "$partial_img"
}
trap cleanup EXIT

# ---- 1. Debian tree (cached) -----------------------------------------------------

recipe=$SOVEREIGN_ROOT/rootfs/debian
[ -f "$recipe/packages" ] || die "$recipe/packages is missing"
build_debian() {
  local packages start=$SECONDS
  packages=$(sed -e 's/#.*//' "$recipe/packages" | tr -s ' \t\n' ',' | sed -e 's/^,//' -e 's/,$//')
  [ -n "$packages" ] || die "$recipe/packages lists no packages"
  pick_mirrors
  ensure_binfmt

  # Inputs the unshared mmdebstrap must read: world-readable, in a plain path.
  local in=$tmp/mmdebstrap-in
  mkdir -p "$in/no-llvm/DEBIAN"
  cp "$recipe/sovereign-no-llvm.control" "$in/no-llvm/DEBIAN/control"
  dpkg-deb --root-owner-group -Zgzip --build "$in/no-llvm" "$in/sovereign-no-llvm.deb" >&2
  cp "$recipe/createcluster.d/sovereign.conf" "$in/sovereign.conf"
  chmod -R a+rX "$tmp"

  log "mmdebstrap $SUITE $debarch (cold cache: ~2 min amd64, longer for arm64)"
  mkdir -p "$cache"
  rm -f "$debian_tar.partial"
  # shellcheck disable=SC2016 # hooks get the chroot as "$1", expanded by mmdebstrap
  mmdebstrap --mode=unshare --variant=essential --arch="$debarch" --format=tar \
    --include="$packages" \
    --include="$in/sovereign-no-llvm.deb" \
    --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount \
    --dpkgopt="$recipe/dpkg.cfg" --dpkgopt=force-unsafe-io \
    --setup-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d"' \
    --setup-hook="copy-in $in/sovereign.conf /etc/postgresql-common/createcluster.d/" \
    --customize-hook='rm -f "$1"/etc/ssl/private/ssl-cert-snakeoil.key "$1"/etc/ssl/certs/ssl-cert-snakeoil.pem' \
    --customize-hook='find "$1"/etc/ssl/certs -lname ssl-cert-snakeoil.pem -delete' \
    --customize-hook='find "$1"/var/log -type f -delete' \
    --customize-hook='rm -f "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old' \
    "${mmdebstrap_opts[@]+"${mmdebstrap_opts[@]}"}" \
    "$SUITE" "$debian_tar.partial" "${mirror_args[@]}" >&2 \
    || { rm -f "$debian_tar.partial"; rmdir "$cache" 2>/dev/null || true; die "mmdebstrap failed (see above)"; }

  # Package manifest (name, version, installed KiB) next to the tarball.
  mkdir -p "$tmp/status/var/lib/dpkg"
  tar -C "$tmp/status" -xf "$debian_tar.partial" ./var/lib/dpkg/status
  # shellcheck disable=SC2016 # dpkg-query's own ${Field} syntax
  dpkg-query --admindir="$tmp/status/var/lib/dpkg" -W \
    -f='${Package}\t${Version}\t${Installed-Size}\n' >"$cache/packages.tsv"
  mv "$debian_tar.partial" "$debian_tar"
  log "Debian tree cached: $debian_tar ($(du -m "$debian_tar" | cut -f1) MiB, $((SECONDS - start)) s)"
}

# Cache key: the recipe, the arch and the code above that turns them into the tree
# (the text of build_debian rather than the whole script, so that editing the
# assembly below does not cost a new mmdebstrap run). The overlay is applied at
# assembly and is not part of the key. Relative paths keep the key independent of
# where the checkout lives.
key=$(cd "$SOVEREIGN_ROOT" && hash_inputs rootfs/debian -- "$debarch" "$SUITE" "$(declare -f build_debian)")
cache=$SOVEREIGN_CACHE/rootfs/$arch-$key
debian_tar=$cache/debian.tar
mkdir -p "$SOVEREIGN_CACHE/rootfs"

exec 9>"$SOVEREIGN_CACHE/rootfs/.$arch.lock"
flock 9
if [ -f "$debian_tar" ]; then
  log "Debian tree: cached ($cache)"
else
  build_debian
fi
flock -u 9

# ---- 2. image assembly -----------------------------------------------------------

start=$SECONDS
ts_dir=$SOVEREIGN_CACHE/go/linux-$(go_arch "$arch")
tailscale=$ts_dir/tailscale-$TAILSCALE_VERSION/tailscale
tailscaled=$ts_dir/tailscaled-$TAILSCALE_VERSION/tailscaled
if [ ! -x "$tailscale" ] || [ ! -x "$tailscaled" ]; then
  log "tailscale $TAILSCALE_VERSION for $arch not built yet: running build-go-tools.sh $arch"
  "$SOVEREIGN_ROOT/scripts/build-go-tools.sh" "$arch" >&2
  if [ ! -x "$tailscale" ] || [ ! -x "$tailscaled" ]; then
    die "build-go-tools.sh $arch did not produce $tailscale and $tailscaled"
  fi
fi
check_elf "$tailscale" tailscale
check_elf "$tailscaled" tailscaled

# Stage in RAM when /dev/shm has room (several times faster than disk for ~10k
# small files), else next to the cache.
stage_parent=$SOVEREIGN_CACHE/rootfs
need_kib=$(( $(du -k "$debian_tar" | cut -f1) + 512 * 1024 ))
if [ -d /dev/shm ] && [ -w /dev/shm ] \
    && [ "$(df -Pk /dev/shm | awk 'NR == 2 { print $4 }')" -gt "$need_kib" ]; then
  stage_parent=/dev/shm
fi
staging=$(mktemp -d "$stage_parent/sovereign-rootfs-$arch.XXXXXX")
tar -C "$staging" --numeric-owner --xattrs --xattrs-include='*' -xpf "$debian_tar"
chmod 0755 "$staging"

# Overlay: files owned by root, group/other not writable; existing directories keep
# their owner and mode.
tar -C "$SOVEREIGN_ROOT/rootfs/overlay" --owner=0 --group=0 --numeric-owner \
  --mode='u+rw,go-w' -cf - . | tar -C "$staging" --no-overwrite-dir -xpf -

# Mount points and scratch directories the init uses.
install -d -m 0755 -o 0 -g 0 "$staging/data"
for d in proc sys dev run; do install -d -m 0755 -o 0 -g 0 "$staging/$d"; done
install -d -m 1777 -o 0 -g 0 "$staging/tmp"

install -d -m 0755 "$staging/usr/local/bin"
install -m 0755 -o 0 -g 0 "$tailscale" "$staging/usr/local/bin/tailscale"
install -m 0755 -o 0 -g 0 "$tailscaled" "$staging/usr/local/bin/tailscaled"

# /sbin is a relative symlink to usr/sbin on merged-/usr Debian: write through the
# staging tree, never through an absolute link onto this machine.
if [ -L "$staging/sbin" ]; then
  [ "$(readlink "$staging/sbin")" = usr/sbin ] || die "unexpected /sbin link in the Debian tree: $(readlink "$staging/sbin")"
  sbin=$staging/usr/sbin
else
  sbin=$staging/sbin
fi
if [ "$no_init" = 0 ]; then
  install -m 0755 -o 0 -g 0 "$init" "$sbin/init"
fi

# The release file (protocol::release): what this image is made of, for the guest's
# status and the set's manifest.json, from which `sovereign update` refuses a set
# whose PostgreSQL major differs from the running one's.
pg_version=$(awk -F'\t' -v p="postgresql-$PG_MAJOR" '$1 == p { print $2 }' "$cache/packages.tsv")
[ -n "$pg_version" ] || die "postgresql-$PG_MAJOR is not in $cache/packages.tsv"
{
  echo "# written by scripts/build-rootfs.sh"
  echo "build=$(date -u +%Y%m%dT%H%M%SZ)"
  echo "postgres=$pg_version"
  echo "tailscale=$TAILSCALE_VERSION"
  if [ "$no_init" = 0 ]; then echo "init=$(sha256sum "$init" | cut -c1-12)"; fi
} >"$staging/etc/sovereign-release"
chmod 0644 "$staging/etc/sovereign-release"

# Sanity checks on the tree before it becomes an image.
pg_bin=$staging/usr/lib/postgresql/$PG_MAJOR/bin
for f in postgres initdb pg_ctl pg_basebackup pg_rewind pg_controldata; do
  [ -x "$pg_bin/$f" ] || die "PostgreSQL $PG_MAJOR: $pg_bin/$f missing from the Debian tree"
done
grep -q '^postgres:' "$staging/etc/passwd" || die "no postgres user in the Debian tree"
[ -z "$(ls -A "$staging/etc/postgresql" 2>/dev/null)" ] || die "the Debian tree holds a PostgreSQL cluster in /etc/postgresql"
if [ -L "$staging/etc/resolv.conf" ] || [ ! -f "$staging/etc/resolv.conf" ]; then
  die "/etc/resolv.conf in the tree is not a regular file"
fi

used_mib=$(du -sxm "$staging" | cut -f1)
size_mib=$(( (used_mib + headroom + 63) / 64 * 64 ))
mkdir -p "$out_dir"
img=$(cd "$out_dir" && pwd)/root.img
partial_img=$img.partial
rm -f "$partial_img"
log "mkfs.ext4 -d: ${used_mib} MiB used, image ${size_mib} MiB"
mkfs.ext4 -q -F -L sovereign-root -b 4096 -I 256 -i 16384 -d "$staging" "$img.partial" "${size_mib}M" >&2 \
  || die "mkfs.ext4 failed"
rm -rf "$staging"
staging=""

# ---- verification (no boot) ------------------------------------------------------

e2fsck -fn "$img.partial" >"$tmp/e2fsck.log" 2>&1 || { cat "$tmp/e2fsck.log" >&2; die "e2fsck found errors in the image"; }
in_image() { debugfs -R "stat $1" "$img.partial" 2>/dev/null | grep -q '^Inode:'; }
checks=(/usr/lib/postgresql/$PG_MAJOR/bin/postgres /usr/lib/postgresql/$PG_MAJOR/bin/initdb
  /usr/local/bin/tailscale /usr/local/bin/tailscaled /usr/sbin/nft /usr/bin/pgbackrest
  /data /tmp /run /etc/resolv.conf /etc/sovereign-release)
[ "$no_init" = 1 ] || checks+=(/sbin/init)
for p in "${checks[@]}"; do
  in_image "$p" || die "$p is missing from the image"
done
clusters=$(debugfs -R 'ls -p /etc/postgresql' "$img.partial" 2>/dev/null \
  | awk -F/ 'NF > 5 && $6 != "." && $6 != ".." { print $6 }')
[ -z "$clusters" ] || die "the image holds a PostgreSQL cluster in /etc/postgresql"
verify_elf=(/usr/lib/postgresql/$PG_MAJOR/bin/postgres /usr/local/bin/tailscaled)
[ "$no_init" = 1 ] || verify_elf+=(/sbin/init)
for p in "${verify_elf[@]}"; do
  debugfs -R "dump $p $tmp/elf" "$img.partial" 2>/dev/null
  check_elf "$tmp/elf" "$p in the image"
done
mv "$img.partial" "$img"
partial_img=""
log "image ready: $img (${size_mib} MiB, assembled in $((SECONDS - start)) s)"
echo "$img"
