#!/usr/bin/env bash
# Benchmarks sovereign-init's tap0 <-> gvproxy forwarder against its peer, upstream
# gvforwarder (gvisor-tap-vsock cmd/vm, same pinned version as gvproxy), in the same
# run and on the same machine: each forwarder gets its own network namespace and its
# own gvproxy (on a unix socket), and moves the same file from and to an HTTP server on
# the host's loopback (reached as 192.168.127.254 through gvproxy's NAT).
# Prints throughput (download, upload) and peak memory (VmHWM) of each forwarder and
# the ratios sovereign/upstream. Root. Optional: SOVEREIGN_BENCH_MB (default 256),
# SOVEREIGN_BENCH_ROUNDS (default 3); argument: the sovereign-init binary to measure.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" -eq 0 ] || die "run as root: the benchmark creates network namespaces and TAP devices"
tools_path
init=${1:-$SOVEREIGN_CACHE/out/x86_64/sovereign-init}
[ -x "$init" ] || die "$init not found: run scripts/build-images.sh --arch x86_64 or pass the binary"
"$SOVEREIGN_ROOT/scripts/build-go-tools.sh" x86_64 --bench
mb=${SOVEREIGN_BENCH_MB:-256}
rounds=${SOVEREIGN_BENCH_ROUNDS:-3}

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for n in sov-bench-sovereign sov-bench-upstream; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/www"
head -c "${mb}M" /dev/urandom >"$work/www/blob"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# A file server that also accepts (and discards) uploads.
cat >"$work/server.py" <<'PY'
import http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    def do_PUT(self):
        left = int(self.headers.get("Content-Length", 0))
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), lambda *a: H(*a, directory=sys.argv[2])).serve_forever()
PY
python3 "$work/server.py" "$port" "$work/www" &
pids+=($!)

fwd=""
start_pair() { # NAME: gvproxy + forwarder in namespace sov-bench-NAME; sets $fwd to the forwarder's pid
  local name=$1 ns=sov-bench-$1 sock=$work/$1.sock
  ip netns del "$ns" 2>/dev/null || true
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  gvproxy -listen "unix://$sock" -mtu 1500 -ssh-port -1 >"$work/$name-gvproxy.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
  if [ "$name" = sovereign ]; then
    ip netns exec "$ns" "$init" forward --unix "$sock" >"$work/$name.log" 2>&1 &
  else
    ip -n "$ns" tuntap add tap0 mode tap
    ip -n "$ns" link set tap0 address 5a:94:ef:e4:0c:ee mtu 1500 up
    ip -n "$ns" addr add 192.168.127.2/24 dev tap0
    ip -n "$ns" route add default via 192.168.127.1
    ip netns exec "$ns" gvforwarder -url "unix://$sock" -iface tap0 -mtu 1500 -preexisting -stop-if-exist "" >"$work/$name.log" 2>&1 &
  fi
  fwd=$!
  pids+=("$fwd")
  for _ in $(seq 100); do
    ip netns exec "$ns" curl -s -o /dev/null --max-time 2 "http://192.168.127.254:$port/" && break
    sleep 0.2
  done
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A down up hwm
for name in sovereign upstream; do
  start_pair "$name"
  ns=sov-bench-$name
  d=() u=()
  for _ in $(seq "$rounds"); do
    d+=("$(ip netns exec "$ns" curl -s -o /dev/null -w '%{speed_download}' "http://192.168.127.254:$port/blob")")
    u+=("$(ip netns exec "$ns" curl -s -o /dev/null -T "$work/www/blob" -w '%{speed_upload}' "http://192.168.127.254:$port/sink")")
  done
  down[$name]=$(printf '%s\n' "${d[@]}" | median)
  up[$name]=$(printf '%s\n' "${u[@]}" | median)
  hwm[$name]=$(awk '/VmHWM/ {print $2}' "/proc/$fwd/status")
done

printf '\nforwarder benchmark: %s MiB each way, median of %s rounds, one gvproxy per forwarder\n' "$mb" "$rounds"
printf '%-26s %14s %14s %14s\n' "" "download MB/s" "upload MB/s" "peak RSS KiB"
for name in sovereign upstream; do
  label=$([ "$name" = sovereign ] && echo "sovereign-init forward" || echo "gvforwarder (upstream)")
  awk -v l="$label" -v d="${down[$name]}" -v u="${up[$name]}" -v m="${hwm[$name]}" \
    'BEGIN {printf "%-26s %14.1f %14.1f %14d\n", l, d/1e6, u/1e6, m}'
done
awk -v ds="${down[sovereign]}" -v du="${down[upstream]}" -v us="${up[sovereign]}" -v uu="${up[upstream]}" \
  -v ms="${hwm[sovereign]}" -v mu="${hwm[upstream]}" \
  'BEGIN {printf "ratio sovereign/upstream: download %.2f, upload %.2f, peak RSS %.2f\n", ds/du, us/uu, ms/mu}'
