#!/usr/bin/env bash
# Benchmarks sovereign-init's tap0 <-> gvproxy forwarder against its peer, upstream
# gvforwarder (gvisor-tap-vsock cmd/vm, same pinned version as gvproxy), in the same
# run and on the same machine: each forwarder gets its own network namespace and its
# own gvproxy (on a unix socket), and talks to servers on the host's loopback (reached
# as 192.168.127.254 through gvproxy's NAT). Rounds alternate between the two.
# Prints, for each forwarder: throughput both ways (median and spread of the rounds,
# a file moved from and to an HTTP server), the forwarder's CPU seconds per GB moved,
# peak memory (VmHWM), the TCP round trip (connect time through gvproxy, median of
# 40), and frames per second with small packets (64-byte UDP datagrams from iperf3,
# as received); then the ratios sovereign/upstream. Root. Optional:
# SOVEREIGN_BENCH_MB (default 256), SOVEREIGN_BENCH_ROUNDS (default 3); argument: the
# sovereign-init binary to measure.
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
spread() { sort -n | awk 'NR == 1 {lo=$1} {hi=$1} END {printf "%.1f-%.1f", lo/1e6, hi/1e6}'; }
# cpu_ticks PID: user + system time of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

iperf_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iperf3 -s -B 127.0.0.1 -p "$iperf_port" >/dev/null 2>&1 &
pids+=($!)

declare -A fwd_pid down_all up_all ticks hwm rtt fps
for name in sovereign upstream; do
  start_pair "$name"
  fwd_pid[$name]=$fwd
  ticks[$name]=0
done
for round in $(seq "$rounds"); do
  for name in sovereign upstream; do
    ns=sov-bench-$name
    before=$(cpu_ticks "${fwd_pid[$name]}")
    down_all[$name]+="$(ip netns exec "$ns" curl -s -o /dev/null -w '%{speed_download}' "http://192.168.127.254:$port/blob") "
    up_all[$name]+="$(ip netns exec "$ns" curl -s -o /dev/null -T "$work/www/blob" -w '%{speed_upload}' "http://192.168.127.254:$port/sink") "
    ticks[$name]=$(( ticks[$name] + $(cpu_ticks "${fwd_pid[$name]}") - before ))
  done
  log "round $round of $rounds done"
done
for name in sovereign upstream; do
  ns=sov-bench-$name
  hwm[$name]=$(awk '/VmHWM/ {print $2}' "/proc/${fwd_pid[$name]}/status")
  rtt[$name]=$(for _ in $(seq 40); do
    ip netns exec "$ns" curl -s -o /dev/null -w '%{time_connect}\n' "http://192.168.127.254:$port/"
  done | median)
  fps[$name]=$(ip netns exec "$ns" iperf3 -c 192.168.127.254 -p "$iperf_port" -u -b 0 -l 64 -t 5 -J \
    | jq '.end.sum.packets * (1 - .end.sum.lost_percent / 100) / .end.sum.seconds')
done

hz=$(getconf CLK_TCK)
gb=$(awk -v mb="$mb" -v r="$rounds" 'BEGIN {print mb * 1048576 * 2 * r / 1e9}')
printf '\nforwarder benchmark: %s MiB each way per round, %s alternating rounds (median, min-max), one gvproxy per forwarder\n' "$mb" "$rounds"
printf '%-24s %12s %12s %12s %12s %9s %10s %10s %11s\n' "" "down MB/s" "range" "up MB/s" "range" \
  "CPU s/GB" "peak KiB" "TCP RTT ms" "64 B pkt/s"
declare -A d u cpu
for name in sovereign upstream; do
  d[$name]=$(tr ' ' '\n' <<<"${down_all[$name]}" | grep . | median)
  u[$name]=$(tr ' ' '\n' <<<"${up_all[$name]}" | grep . | median)
  cpu[$name]=$(awk -v t="${ticks[$name]}" -v hz="$hz" -v gb="$gb" 'BEGIN {print t / hz / gb}')
  label=$([ "$name" = sovereign ] && echo "sovereign-init forward" || echo "gvforwarder (upstream)")
  awk -v l="$label" -v d="${d[$name]}" -v dr="$(tr ' ' '\n' <<<"${down_all[$name]}" | grep . | spread)" \
    -v u="${u[$name]}" -v ur="$(tr ' ' '\n' <<<"${up_all[$name]}" | grep . | spread)" \
    -v c="${cpu[$name]}" -v m="${hwm[$name]}" -v r="${rtt[$name]}" -v f="${fps[$name]}" \
    'BEGIN {printf "%-24s %12.1f %12s %12.1f %12s %9.2f %10d %10.2f %11.0f\n", l, d/1e6, dr, u/1e6, ur, c, m, r*1000, f}'
done
awk -v ds="${d[sovereign]}" -v du="${d[upstream]}" -v us="${u[sovereign]}" -v uu="${u[upstream]}" \
  -v cs="${cpu[sovereign]}" -v cu="${cpu[upstream]}" -v ms="${hwm[sovereign]}" -v mu="${hwm[upstream]}" \
  -v rs="${rtt[sovereign]}" -v ru="${rtt[upstream]}" -v fs="${fps[sovereign]}" -v fu="${fps[upstream]}" \
  'BEGIN {printf "ratio sovereign/upstream: download %.2f, upload %.2f, CPU per GB %.2f, peak RSS %.2f, TCP RTT %.2f, small packets/s %.2f\n", ds/du, us/uu, cs/cu, ms/mu, rs/ru, fs/fu}'
