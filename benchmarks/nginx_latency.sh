#!/usr/bin/env bash
# nginx_latency.sh: the delivery latency nginx adds in front of an ssepp server (issue 14).
# fanout_server (one I/O thread) broadcasts stamped events to sse_load's subscribers, either
# directly or through nginx (one worker) with deploy/nginx's event-stream settings; the runs
# alternate (direct, nginx, direct, nginx, ...) so that both see the same machine, and the
# medians of the runs' p50 and p99 are compared. Loopback only; every run is bounded in time.
#
# Each run's line: sse_load's figures (latency from the publish stamp in each event's data to its
# parse), the CPU of fanout_server and of nginx (% of one core, over sse_load's whole run,
# the connect phase included) and the load average when the run began.
#
# sse_load's measurement window opens once it has sent every request: through nginx a stream
# reaches fanout_server only after nginx has connected to it, so its first events of the window
# can miss a few streams, and "delivered ev/s" through nginx reads a little lower without any
# event being lost (each stream's events arrive in order; "closed early" counts broken streams).
#
# nginx speaks HTTP/1.1 to sse_load here, not HTTP/2 as to browsers: sse_load is an HTTP/1.1
# client. What is measured is nginx's relaying (read from the node's connection, write to the
# subscriber's), which HTTP/2 framing and TLS would add to, not take from.
#
#   benchmarks/nginx_latency.sh [--build DIR] [--runs N] [--connections N] [--rate R] [--duration S]
# --build DIR        a configured build tree with benchmarks (default: build); sse_load and
#                    fanout_server are built there first
# --runs N           runs of each (default 3)
# --connections N    subscribers (default 1000)
# --rate R           events/s broadcast (default 100, as benchmarks/run.sh's S1)
# --duration S       seconds of measurement per run, after the connect phase (default 12, at most 15)
# Needs nginx (apt-get install nginx). Everything runs under nice: the machine may be shared.
set -euo pipefail

build=build; runs=3; conns=1000; rate=100; duration=12
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift ;;
    --runs) runs="$2"; shift ;;
    --connections) conns="$2"; shift ;;
    --rate) rate="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    *) echo "usage: $0 [--build DIR] [--runs N] [--connections N] [--rate R] [--duration S]" >&2; exit 2 ;;
  esac
  shift
done
if [ "$duration" -gt 15 ]; then echo "--duration at most 15 (a run stays under 20 s)" >&2; exit 2; fi

nginx=$(command -v nginx || true)
[ -n "$nginx" ] || nginx=/usr/sbin/nginx
[ -x "$nginx" ] || { echo "nginx not found: apt-get install nginx (scripts/deps.sh --tests)" >&2; exit 1; }
[ -d "$build" ] || { echo "no build tree at $build: cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release" >&2; exit 1; }
nice cmake --build "$build" --target sse_load fanout_server >&2
bin=$(realpath "$build/benchmarks")

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt $(( conns + 100 )) ]; then echo "open files limit $(ulimit -n) is too low for $conns subscribers" >&2; exit 1; fi

work=$(mktemp -d)
server_pid=""; nginx_pid=""
stop() {  # SIGTERM, then SIGKILL after 5 s: only the processes started here, by id
  local pid=$1
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do  # gone, or a zombie waiting for `wait`
    case "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null || echo gone)" in Z|gone) break ;; esac
    sleep 0.05
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
trap 'stop "$nginx_pid"; stop "$server_pid"; rm -rf "$work"' EXIT

# CPU time (clock ticks) of a process and its children (nginx's worker).
cpu_ticks() {
  local total=0 p
  [ -n "$1" ] || { echo 0; return; }
  for p in $1 $(pgrep -P "$1" 2>/dev/null); do
    total=$(( total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo $total
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_server() {
  local out="$work/server.$1.out"
  nice "$bin/fanout_server" --port 0 --threads 1 --rate "$rate" --payload 64 > "$out" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do grep -qs listening "$out" && break; sleep 0.05; done
  server_port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$out")
  [ -n "$server_port" ] || { echo "fanout_server did not start:" >&2; cat "$out" >&2; exit 1; }
}

# nginx in the foreground, prefix under $work, one worker (fanout_server has one I/O thread), the
# event-stream location of deploy/nginx/snippets/ssepp-server.conf at fanout_server's path.
start_nginx() {
  local dir="$work/nginx"
  mkdir -p "$dir/logs"
  nginx_port=$(free_port)
  cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $(( 4 * conns + 200 ));
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections $(( 4 * conns + 100 )); }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream fanout { server 127.0.0.1:$server_port; keepalive 8; }
  server {
    listen 127.0.0.1:$nginx_port;
    location = /events {
      proxy_pass http://fanout;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_cache off;
      proxy_read_timeout 60s;
    }
  }
}
EOF
  nice "$nginx" -p "$dir/" -c "$dir/nginx.conf" -g 'daemon off;' 2>> "$dir/logs/error.log" &
  nginx_pid=$!
  for _ in $(seq 100); do accepts "$nginx_port" && break; kill -0 "$nginx_pid" 2>/dev/null || break; sleep 0.05; done
  accepts "$nginx_port" || { echo "nginx did not start:" >&2; cat "$dir/logs/error.log" >&2; exit 1; }
}

results="$work/results.tsv"
# run MODE I: one run, one result line
run() {
  local mode=$1 i=$2 load0 url
  load0=$(cut -d' ' -f1 /proc/loadavg)
  start_server "$mode.$i"
  url="http://127.0.0.1:$server_port/events"
  if [ "$mode" = nginx ]; then start_nginx; url="http://127.0.0.1:$nginx_port/events"; fi
  local s0 n0 t0 s1 n1 t1
  s0=$(cpu_ticks "$server_pid"); n0=$(cpu_ticks "$nginx_pid"); t0=$(date +%s.%N)
  timeout --signal=KILL $(( duration + 10 )) nice "$bin/sse_load" --url "$url" --connections "$conns" --connect-rate 3000 \
      --connect-timeout 8 --duration "$duration" > "$work/load.json" || true
  s1=$(cpu_ticks "$server_pid"); n1=$(cpu_ticks "$nginx_pid"); t1=$(date +%s.%N)
  stop "$nginx_pid"; nginx_pid=""
  stop "$server_pid"; server_pid=""
  if [ "$mode" = nginx ] && grep -qE '\[(warn|error|crit|alert|emerg)\]' "$work/nginx/logs/error.log"; then
    echo "nginx run $i: its error log says:" >&2
    grep -E '\[(warn|error|crit|alert|emerg)\]' "$work/nginx/logs/error.log" | sed 's/^[0-9\/]* [0-9:]* //' | sort | uniq -c | sort -rn | head -5 >&2
  fi
  rm -f "$work/nginx/logs/error.log"
  if ! python3 - "$mode" "$load0" "$work/load.json" "$s0" "$s1" "$n0" "$n1" "$t0" "$t1" >> "$results" <<'PY'
import json, os, sys
mode, load0, path = sys.argv[1:4]
s0, s1, n0, n1 = (int(x) for x in sys.argv[4:8])
secs = (float(sys.argv[9]) - float(sys.argv[8])) * os.sysconf('SC_CLK_TCK') / 100
j = json.load(open(path))
print("\t".join(str(x) for x in [mode, j["connected"], j["failed"], j["closed_early"], round(j["events_per_s"]),
      round(j["latency_us"]["p50"]), round(j["latency_us"]["p99"]), round(j["latency_us"]["max"]),
      round((s1 - s0) / secs), round((n1 - n0) / secs) if mode == "nginx" else "-", load0]))
PY
  then
    echo "$mode run $i: no result from sse_load" >&2; exit 1
  fi
  tail -n 1 "$results" | tr '\t' ' ' >&2  # progress
}

echo "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $("$nginx" -v 2>&1);" \
     "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$conns subscribers, $rate events/s of 64 B, $duration s per run, $runs runs each, alternating"
for i in $(seq "$runs"); do
  # Alternate which goes first, so that neither always follows the other.
  if [ $(( i % 2 )) = 1 ]; then run direct "$i"; run nginx "$i"; else run nginx "$i"; run direct "$i"; fi
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$results" "$conns" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
conns = int(sys.argv[2])
print()
print("| run | path | connected | failed | closed early | delivered ev/s | p50 µs | p99 µs | max µs | server CPU % | nginx CPU % | load |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
n = {"direct": 0, "nginx": 0}
for r in rows:
    n[r[0]] += 1
    print(f"| {n[r[0]]} | {r[0]} | " + " | ".join(r[1:]) + " |")
def med(xs):
    xs = sorted(xs); k = len(xs)
    return xs[k // 2] if k % 2 else (xs[k // 2 - 1] + xs[k // 2]) / 2
m = {}
for mode in ("direct", "nginx"):
    rs = [r for r in rows if r[0] == mode]
    m[mode] = {c: med([float(r[i]) for r in rs]) for c, i in (("ev", 4), ("p50", 5), ("p99", 6))}
    if any(int(r[1]) != conns or int(r[2]) or int(r[3]) for r in rs):
        print(f"\nwarning: a {mode} run did not keep all {conns} subscribers connected")
print()
print("| path | runs | delivered ev/s | p50 µs | p99 µs |")
print("|---|---:|---:|---:|---:|")
for mode in ("direct", "nginx"):
    print(f"| {mode} (median) | {sum(1 for r in rows if r[0] == mode)} | {m[mode]['ev']:.0f} | {m[mode]['p50']:.0f} | {m[mode]['p99']:.0f} |")
d, x = m["direct"], m["nginx"]
print(f"| added by nginx | | | {x['p50'] - d['p50']:+.0f} ({x['p50'] / d['p50']:.2f}x) | {x['p99'] - d['p99']:+.0f} ({x['p99'] / d['p99']:.2f}x) |")
PY
