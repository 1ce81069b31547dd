#!/bin/sh
# mmdebstrap customize hook for the benchmark's peer image (scripts/build-peer-image.sh):
#   customize.sh ROOT INPUTS
# ROOT is the tree; INPUTS holds overlay.tar, the Go binaries and password.sql.
set -eu
root=$1 in=$2

tar -C "$root" --no-overwrite-dir -xpf "$in/overlay.tar"
for bin in gvforwarder tailscale tailscaled; do
  install -m 0755 "$in/$bin" "$root/usr/local/bin/$bin"
done
install -d -m 0700 "$root/etc/sovereign-peer"
chroot "$root" systemctl enable gvforwarder.service tailscaled.service tailscale-up.service \
  sovereign-peer-report.service sovereign-peer-stream.service
# Nothing may wait for a keyboard on the console.
chroot "$root" systemctl mask systemd-firstboot.service

# Debian made its main cluster at install, as it does for any user. Open it to the
# tailnet with SCRAM, like the guest, and give the superuser the benchmark's password
# (single-user mode: no server runs during the build).
conf=$root/etc/postgresql/17/main
printf "listen_addresses = '*'\njit = off\n" >"$conf/conf.d/sovereign-peer.conf"
printf 'host all all 100.64.0.0/10 scram-sha-256\nhost all all fd7a:115c:a1e0::/48 scram-sha-256\n' \
  >>"$conf/pg_hba.conf"
chroot "$root" runuser -u postgres -- /usr/lib/postgresql/17/bin/postgres --single \
  -D /var/lib/postgresql/17/main -c config_file=/etc/postgresql/17/main/postgresql.conf \
  postgres <"$in/password.sql" >/dev/null
