#!/usr/bin/env bash
# Runs the load scenarios against fanout_server (ssepp) and baseline_server (the strongest
# simple broadcaster without ssepp: the upper bound), interleaved in pairs (ssepp, baseline,
# ssepp, baseline, ...) so that both see the same machine, then nginx + nchan once per scenario
# when installed, all with the same client (sse_load). Prints every run, then per scenario the
# medians and the median of the per-pair ratios. Loopback only; every run is bounded in time.
#   benchmarks/run.sh [--pairs N] [--only S1,S4] [--ssepp-bin PATH] [--ssepp-args ARGS] [--ideal] [--no-nchan] [--quick]
# --pairs N       pairs per scenario (default 3; single runs here vary by +-25 %)
# --ssepp-bin P   the ssepp server to measure (default: build-bench's fanout_server, built
#                 here from this tree): a binary from another build, for before/after figures
#                 with the same baseline, client and script
# --ssepp-args A  more flags for the ssepp server, e.g. "--batch 1" (fanout_server hands the
#                 registry 16 events at a time at --rate max by default; 1: one by one)
# --ideal         also runs ideal_server (a queue per socket) in each pair
# --no-nchan      skips nginx + nchan
# --quick         shortens every scenario (a smoke check)
# Needs: a Release build in build-bench (made here), and for nchan: apt-get install nginx
# libnginx-mod-nchan (skipped if absent).
set -euo pipefail

quick=0; only="S1,S2,S3,S4,S5,S6"; pairs=3; ssepp_bin=""; ssepp_args=""; ideal=0; nchan=1
usage="usage: $0 [--pairs N] [--only S1,S2,...] [--ssepp-bin PATH] [--ssepp-args ARGS] [--ideal] [--no-nchan] [--quick]"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --only) only="$2"; shift ;;
    --pairs|--runs) pairs="$2"; shift ;;
    --ssepp-bin) ssepp_bin="$2"; shift ;;
    --ssepp-args) ssepp_args="$2"; shift ;;
    --ideal) ideal=1 ;;
    --no-nchan) nchan=0 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
case "$pairs" in ''|*[!0-9]*|0) echo "$usage" >&2; exit 2 ;; esac
if [ -n "$ssepp_bin" ]; then
  [ -x "$ssepp_bin" ] || { echo "--ssepp-bin: $ssepp_bin is not an executable" >&2; exit 2; }
  ssepp_bin=$(realpath "$ssepp_bin")
fi
cd "$(dirname "$0")/.."

targets="baseline_server sse_load"
[ "$ideal" = 1 ] && targets="$targets ideal_server"
if [ -z "$ssepp_bin" ]; then
  targets="$targets fanout_server"
  ssepp_bin=build-bench/benchmarks/fanout_server
fi
nice cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DSSEPP_BUILD_TESTS=OFF >/dev/null
# shellcheck disable=SC2086
nice cmake --build build-bench --target $targets >/dev/null
ssepp_bin=$(realpath "$ssepp_bin")
bin=build-bench/benchmarks
ulimit -n 20000
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

secs() { if [ "$quick" = 1 ]; then echo 2; else echo "$1"; fi; }
scale() { if [ "$quick" = 1 ]; then echo $(( $1 / 10 )); else echo "$1"; fi; }

# Sum of VmRSS (KiB) of a process and its children (nginx's workers).
rss_kib() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" 2>/dev/null); do
    total=$(( total + $(awk '/^VmRSS/ {print $2}' /proc/$p/status 2>/dev/null || echo 0) ))
  done
  echo $total
}
# CPU ticks (utime + stime) of a process and its children.
cpu_ticks() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" 2>/dev/null); do
    total=$(( total + $(awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null || echo 0) ))
  done
  echo $total
}
# Open descriptors of a process and its children: the connections accepted so far.
fds() {
  local total=0 p
  for p in $1 $(pgrep -P "$1" 2>/dev/null); do
    total=$(( total + $(ls /proc/$p/fd 2>/dev/null | wc -l) ))
  done
  echo $total
}
now() { date +%s.%N; }
loadavg() { cut -d' ' -f1 /proc/loadavg; }

have_nchan=0
if [ "$nchan" = 1 ]; then
  if command -v nginx >/dev/null && ls /usr/lib/nginx/modules/ngx_nchan_module.so >/dev/null 2>&1; then
    have_nchan=1
  else
    echo "nchan: skipped (nginx or libnginx-mod-nchan not installed: apt-get install nginx libnginx-mod-nchan)" >&2
  fi
fi

# start_server NAME THREADS RATE -> sets pid, url, publish
nstarts=0
start_server() {
  local name=$1 threads=$2 rate=$3
  case "$name" in
    ssepp|baseline|ideal)
      local exe=$ssepp_bin
      [ "$name" = baseline ] && exe=$bin/baseline_server
      [ "$name" = ideal ] && exe=$bin/ideal_server
      # A file per run: the last run's line must not be taken for this one's.
      local out; out="$work/$name.$(( ++nstarts )).out"
      local extra=""; [ "$name" = ssepp ] && extra=$ssepp_args
      # shellcheck disable=SC2086
      "$exe" --port 0 --threads "$threads" --rate "$rate" --payload 64 $extra > "$out" 2>&1 &
      pid=$!
      for _ in $(seq 100); do grep -qs listening "$out" && break; sleep 0.05; done
      url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$out")
      [ -n "$url" ] || { echo "$name did not start:" >&2; cat "$out" >&2; exit 1; }
      publish=""
      ;;
    nchan)
      local port
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
      mkdir -p "$work/nginx/logs"
      cat > "$work/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes $threads;
worker_rlimit_nofile 20000;
error_log $work/nginx/logs/error.log error;
pid $work/nginx/nginx.pid;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  server {
    listen 127.0.0.1:$port;
    location = /events { nchan_subscriber eventsource; nchan_channel_id bench; nchan_subscriber_first_message newest; }
    location = /publish { nchan_publisher; nchan_channel_id bench; nchan_message_buffer_length 64; }
  }
}
EOF
      nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
      pid=$!
      for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
      url="http://127.0.0.1:$port/events"
      publish="--publish-url http://127.0.0.1:$port/publish --publish-rate $rate"
      if [ "$rate" = 0 ]; then publish=""; fi
      ;;
  esac
}

stop_server() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }

# run_scenario NAME SERVER THREADS RATE CONNECTIONS DURATION [STALL] -> one result line
results="$work/results.tsv"
run_scenario() {
  local sc=$1 name=$2 threads=$3 rate=$4 conns=$5 dur=$6 stall=${7:-0}
  local load0; load0=$(loadavg)
  start_server "$name" "$threads" "$rate"
  local base_rss; base_rss=$(rss_kib "$pid")
  local base_fds; base_fds=$(fds "$pid")
  local cpu_start; cpu_start=$(cpu_ticks "$pid"); local t_start; t_start=$(now)
  local peak=0
  # Past ~14k connections from one address connect() crawls unless each has its own source
  # port; alternate two ranges so that no port is still in TIME_WAIT from the last run.
  local ports="--source-port-base 0"
  if [ "$conns" -gt 10000 ]; then ports="--source-port-base $(( 20000 + (RANDOM % 2) * 22000 ))"; fi
  # Two client threads when the server has more than one, as before; S6 keeps S4's client so
  # that its figures compare with S4's.
  local cthreads=1; if [ "$threads" -gt 1 ] && [ "$sc" != S6 ]; then cthreads=2; fi
  # The connect phase may take long when a server floods the first streams (sse_load reads a
  # socket until it would block): bounded by --connect-timeout, the whole run by `timeout`.
  # shellcheck disable=SC2086
  timeout --signal=KILL $(( dur + 150 )) $bin/sse_load --url "$url" --connections "$conns" --connect-rate 3000 \
      --connect-timeout 120 --duration "$dur" $ports --threads "$cthreads" --stall "$stall" $publish > "$work/load.json" &
  local load=$!
  # Server CPU is measured over the measurement window only: from when every connection has
  # been accepted (the client starts its window once each has sent its request); over the
  # whole run if some never connected.
  local cpu0="" t0=""
  while kill -0 "$load" 2>/dev/null; do
    local r; r=$(rss_kib "$pid"); if [ "$r" -gt "$peak" ]; then peak=$r; fi
    if [ -z "$cpu0" ] && [ $(( $(fds "$pid") - base_fds )) -ge "$conns" ]; then cpu0=$(cpu_ticks "$pid"); t0=$(now); fi
    sleep 0.25
  done
  wait "$load" || true
  local cpu1; cpu1=$(cpu_ticks "$pid"); local t1; t1=$(now)
  if [ -z "$cpu0" ]; then cpu0=$cpu_start; t0=$t_start; fi
  stop_server
  if ! python3 - "$sc" "$name" "$base_rss" "$peak" "$cpu0" "$cpu1" "$t0" "$t1" "$load0" "$work/load.json" >> "$results" <<'PY'
import json, os, sys
sc, name, base, peak, c0, c1, t0, t1, load0, path = sys.argv[1:]
j = json.load(open(path))
hz = os.sysconf('SC_CLK_TCK')
cpu = (int(c1) - int(c0)) / hz / max(float(t1) - float(t0), 1e-9)
per_conn = (int(peak) - int(base)) * 1024 / max(j["connected"], 1)
print("\t".join(str(x) for x in [sc, name, j["connected"], j["failed"], round(j["connect_s"], 2),
      round(j["events_per_s"]), j["latency_us"]["p50"], j["latency_us"]["p99"], j["latency_us"]["max"],
      int(peak) // 1024, round(per_conn), round(cpu * 100), load0]))
PY
  then
    echo "$sc $name: no result from sse_load (timed out?)" >&2
  fi
  echo "$(tail -n 1 "$results" | tr '\t' ' ')" >&2  # progress
}

# scenario NAME SERVER: the scenario's parameters
scenario() {
  case "$1" in
    S1) run_scenario S1 "$2" 1 100 "$(scale 1000)" "$(secs 20)" ;;
    S2) run_scenario S2 "$2" 2 20 "$(scale 10000)" "$(secs 20)" ;;
    S3) run_scenario S3 "$2" 1 0 "$(scale 15000)" "$(secs 5)" ;;
    S4) run_scenario S4 "$2" 1 max "$(scale 1000)" "$(secs 15)" ;;
    S5) run_scenario S5 "$2" 1 100 "$(( $(scale 1000) + 10 ))" "$(secs 20)" 10 ;;
    S6) run_scenario S6 "$2" 2 max "$(scale 1000)" "$(secs 15)" ;;
  esac
}

echo "ssepp: $ssepp_bin; baseline: $(realpath $bin/baseline_server); $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for sc in S1 S2 S3 S4 S5 S6; do
  case ",$only," in *,$sc,*) ;; *) continue ;; esac
  for _ in $(seq "$pairs"); do
    scenario "$sc" ssepp
    scenario "$sc" baseline
    if [ "$ideal" = 1 ]; then scenario "$sc" ideal; fi
  done
  if [ "$have_nchan" = 1 ] && [ "$sc" != S6 ]; then scenario "$sc" nchan; fi
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$results" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
cols = ["scenario", "server", "connected", "failed", "connect s", "delivered ev/s", "p50 µs", "p99 µs", "max µs",
        "peak RSS MiB", "RSS/conn B", "CPU %", "load"]
print("| " + " | ".join(cols) + " |")
print("|---|---|" + "---:|" * (len(cols) - 2))
for r in rows:
    print("| " + " | ".join(r) + " |")

def med(xs):
    xs = sorted(xs); n = len(xs)
    if n == 0: return float("nan")
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
EV, P50, P99, RSSC, CPU = 5, 6, 7, 10, 11
by = collections.defaultdict(list)
for r in rows:
    by[(r[0], r[1])].append(r)
scenarios = sorted({r[0] for r in rows})
servers = [s for s in ("ssepp", "baseline", "ideal", "nchan") if any(k[1] == s for k in by)]
print()
print("Medians:")
print()
print("| scenario | server | runs | delivered ev/s | p50 µs | p99 µs | RSS/conn B | CPU % | load |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for sc in scenarios:
    for sv in servers:
        rs = by.get((sc, sv))
        if not rs: continue
        m = lambda k: med([float(r[k]) for r in rs])
        print(f"| {sc} | {sv} | {len(rs)} | {m(EV):.0f} | {m(P50):.0f} | {m(P99):.0f} | {m(RSSC):.0f} | {m(CPU):.0f} | {min(float(r[12]) for r in rs):.2f}-{max(float(r[12]) for r in rs):.2f} |")
print()
print("ssepp / baseline, median of the per-pair ratios (pair i: the i-th ssepp run and the i-th baseline run):")
print()
print("| scenario | pairs | delivered ev/s | p50 | p99 | RSS/conn | CPU | ev/s per pair |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for sc in scenarios:
    s, b = by.get((sc, "ssepp"), []), by.get((sc, "baseline"), [])
    n = min(len(s), len(b))
    if n == 0: continue
    def ratio(k):
        return [float(s[i][k]) / float(b[i][k]) if float(b[i][k]) else float("nan") for i in range(n)]
    x = lambda v: "-" if v != v else f"{v:.2f}"
    f = lambda k: x(med(ratio(k))) + ("" if med(ratio(k)) != med(ratio(k)) else "x")
    print(f"| {sc} | {n} | {f(EV)} | {f(P50)} | {f(P99)} | {f(RSSC)} | {f(CPU)} | {', '.join(x(v) for v in ratio(EV))} |")
s4b = by.get(("S4", "baseline")); s6s = by.get(("S6", "ssepp"))
if s4b and s6s:
    print()
    print(f"S6 (ssepp, 2 I/O threads) vs S4 (baseline, 1 thread), medians: "
          f"{med([float(r[EV]) for r in s6s]) / med([float(r[EV]) for r in s4b]):.2f}x delivered ev/s")
if "nchan" in servers:
    print()
    print("ssepp / nchan (ssepp's median over nchan's run):")
    for sc in scenarios:
        s, n = by.get((sc, "ssepp")), by.get((sc, "nchan"))
        if not s or not n: continue
        m = lambda rs, k: med([float(r[k]) for r in rs])
        q = lambda k: f"{m(s, k) / m(n, k):.2f}x" if m(n, k) else "-"
        print(f"- {sc}: ev/s {q(EV)}, p99 {q(P99)}, RSS/conn {q(RSSC)}")
PY
