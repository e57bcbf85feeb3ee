#!/usr/bin/env bash
# Runs the load scenarios S1-S5 against fanout_server (ssepp), ideal_server (no ssepp) and
# nginx + nchan, back to back, with the same client (sse_load), and prints one markdown table
# with server RSS, CPU and ratios. Loopback only; every run is bounded in time.
#   benchmarks/run.sh [--quick] [--only S1,S4] [--runs N]
# --quick shortens every scenario (for a smoke check). Needs: a Release build in build-bench
# (made here), and for nchan: apt-get install nginx libnginx-mod-nchan (skipped if absent).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0; only="S1,S2,S3,S4,S5"; runs=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --only) only="$2"; shift ;;
    --runs) runs="$2"; shift ;;
    *) echo "usage: $0 [--quick] [--only S1,S2,...] [--runs N]" >&2; exit 2 ;;
  esac
  shift
done

cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DSSEPP_BUILD_TESTS=OFF >/dev/null
cmake --build build-bench --target fanout_server ideal_server sse_load >/dev/null
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

have_nchan=0
if command -v nginx >/dev/null && ls /usr/lib/nginx/modules/ngx_nchan_module.so >/dev/null 2>&1; then
  have_nchan=1
else
  echo "nchan: skipped (nginx or libnginx-mod-nchan not installed: apt-get install nginx libnginx-mod-nchan)" >&2
fi

# start_server NAME THREADS RATE -> sets pid and url
start_server() {
  local name=$1 threads=$2 rate=$3
  case "$name" in
    ssepp|ideal)
      local exe=$bin/fanout_server; [ "$name" = ideal ] && exe=$bin/ideal_server
      "$exe" --port 0 --threads "$threads" --rate "$rate" --payload 64 > "$work/$name.out" 2>&1 &
      pid=$!
      for _ in $(seq 100); do grep -q listening "$work/$name.out" && break; sleep 0.05; done
      url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/$name.out")
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
  start_server "$name" "$threads" "$rate"
  local base_rss; base_rss=$(rss_kib "$pid")
  local cpu0; cpu0=$(cpu_ticks "$pid")
  local peak=0
  # Past ~14k connections from one address connect() crawls unless each has its own source
  # port; alternate two ranges so that no port is still in TIME_WAIT from the last run.
  local ports="--source-port-base 0"
  if [ "$conns" -gt 10000 ]; then ports="--source-port-base $(( 20000 + (RANDOM % 2) * 22000 ))"; fi
  # shellcheck disable=SC2086
  $bin/sse_load --url "$url" --connections "$conns" --connect-rate 3000 --duration "$dur" $ports \
      --threads "$( [ "$threads" -gt 1 ] && echo 2 || echo 1 )" --stall "$stall" $publish > "$work/load.json" &
  local load=$!
  while kill -0 "$load" 2>/dev/null; do
    local r; r=$(rss_kib "$pid"); if [ "$r" -gt "$peak" ]; then peak=$r; fi
    sleep 0.25
  done
  wait "$load" || true
  local cpu1; cpu1=$(cpu_ticks "$pid")
  stop_server
  python3 - "$sc" "$name" "$base_rss" "$peak" "$cpu0" "$cpu1" "$conns" "$stall" "$work/load.json" >> "$results" <<'PY'
import json, os, sys
sc, name, base, peak, c0, c1, conns, stall, path = sys.argv[1:]
j = json.load(open(path))
hz = os.sysconf('SC_CLK_TCK')
cpu = (int(c1) - int(c0)) / hz / max(j["duration_s"] + j["connect_s"], 1e-9)
per_conn = (int(peak) - int(base)) * 1024 / max(j["connected"], 1)
print("\t".join(str(x) for x in [sc, name, j["connected"], j["failed"], round(j["connect_s"], 2),
      round(j["events_per_s"]), j["latency_us"]["p50"], j["latency_us"]["p99"], j["latency_us"]["max"],
      int(peak) // 1024, round(per_conn), round(cpu * 100)]))
PY
}

servers="ssepp ideal"; if [ "$have_nchan" = 1 ]; then servers="$servers nchan"; fi
for run in $(seq "$runs"); do
  for name in $servers; do
    case ",$only," in *,S1,*) run_scenario S1 "$name" 1 100 "$(scale 1000)" "$(secs 20)" ;; esac
    case ",$only," in *,S2,*) run_scenario S2 "$name" 2 20 "$(scale 10000)" "$(secs 20)" ;; esac
    case ",$only," in *,S3,*) run_scenario S3 "$name" 1 0 "$(scale 15000)" "$(secs 5)" ;; esac
    case ",$only," in *,S4,*) run_scenario S4 "$name" 1 max "$(scale 1000)" "$(secs 15)" ;; esac
    case ",$only," in *,S5,*) run_scenario S5 "$name" 1 100 "$(( $(scale 1000) + 10 ))" "$(secs 20)" 10 ;; esac
  done
done

python3 - "$results" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| scenario | server | connected | failed | connect s | delivered ev/s | p50 µs | p99 µs | max µs | peak RSS MiB | RSS/conn B | CPU % |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print("| " + " | ".join(r) + " |")
by = collections.defaultdict(list)
for r in rows:
    by[(r[0], r[1])].append(r)
print()
print("Ratios (ssepp / ideal, ssepp / nchan; medians over runs):")
def med(xs):
    xs = sorted(xs); n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
for sc in sorted({r[0] for r in rows}):
    s = by.get((sc, "ssepp")); i = by.get((sc, "ideal")); n = by.get((sc, "nchan"))
    if not s: continue
    def col(rs, k): return med([float(r[k]) for r in rs])
    parts = []
    for other, label in ((i, "ideal"), (n, "nchan")):
        if not other: continue
        parts.append(f"ev/s {col(s,5)/max(col(other,5),1e-9):.2f}x {label}, p99 {col(s,7)/max(col(other,7),1e-9):.2f}x {label}, RSS/conn {col(s,10)/max(col(other,10),1e-9):.2f}x {label}")
    print(f"- {sc}: " + "; ".join(parts))
PY
