#!/usr/bin/env bash
# The cluster benchmark (issue 11): nodes of ssepp::redis::node (cluster_server) on one
# redis-server, against one node without Redis (fanout_server) and against nginx + nchan with
# its Redis backend (same redis-server), with the same client (sse_load), in one run.
#   benchmarks/cluster.sh [--runs N] [--only sat,bus,keys,shared,redis] [--seconds S] [--quick] [--bin DIR]
#                         [--keys-nodes N] [--redis-rate R]
# --bin DIR: use the binaries in DIR (e.g. built from a snapshot of a commit) instead of building.
# --keys-nodes N: nodes of the keys scenario (default 4).
# --redis-rate R: events/s of the redis scenario (default 5000), or max: the publisher pipelines
#   (up to 256 sends in flight), so Redis's cost per event is its cost under load.
# Scenarios (each run bounded: S seconds of measurement, default 10, after the connect phase):
#   sat   1,000 subscribers split over the servers, events of 64 B published on the first one as
#         fast as it takes them: single (fanout_server), cluster (2 nodes), nchan (2 nginx)
#   bus   20 subscribers, a fixed 10,000 events/s (open loop): single vs cluster (2 nodes);
#         what the bus adds to the latency when nothing saturates
#   keys  1,000 users with one subscriber each over 4 nodes (--keys-nodes), each event sent to one user:
#         broadcast vs targeted delivery (when cluster_options has `delivery`)
#   shared one key held on every node (8 subscribers over 4 nodes), 5,000 events/s: broadcast
#         vs targeted where targeting saves nothing
#   redis no subscribers, 5,000 events/s (--redis-rate), 1, 2, 4 and 8 nodes: Redis's cost per event as the
#         bus fans out to more nodes (for the capacity estimate)
# For the Redis-backed servers: INFO commandstats, stats and cpu before and after the
# publisher's life -> Redis calls, microseconds, bytes and CPU per published event.
# CPU wait ms/s: how long the servers, Redis and the client were runnable but had no CPU, per
# second of measurement (schedstat): what other jobs on a shared machine cost the run.
# Prints a markdown table of each run and one of the medians. Loopback only. Needs a Release
# build in build-bench (made here), redis-server, and for nchan nginx + libnginx-mod-nchan
# (bash scripts/deps.sh --bench).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3; only="sat,bus,keys,shared,redis"; secs=10; quick=0; bin=; keys_nodes=4; redis_rate=5000
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift ;;
    --only) only="$2"; shift ;;
    --seconds) secs="$2"; shift ;;
    --quick) quick=1; secs=2; runs=1 ;;
    --bin) bin="$2"; shift ;;
    --keys-nodes) keys_nodes="$2"; shift ;;
    --redis-rate) redis_rate="$2"; shift ;;
    *) echo "usage: $0 [--runs N] [--only sat,bus,keys,shared,redis] [--seconds S] [--quick] [--bin DIR] [--keys-nodes N] [--redis-rate R]" >&2; exit 2 ;;
  esac
  shift
done
[ "$secs" -le 20 ] || { echo "cluster.sh: --seconds is at most 20" >&2; exit 2; }
subs=1000; [ "$quick" = 1 ] && subs=100

# What is measured: build-bench is built from the working tree, which on a shared checkout may
# hold someone's uncommitted library changes (--bin of a `git archive` build avoids that).
if [ -z "$bin" ]; then
  built_from="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if ! git diff --quiet HEAD -- include benchmarks 2>/dev/null; then
    built_from="$built_from + uncommitted changes in $(git diff --name-only HEAD -- include benchmarks | tr '\n' ' ')"
    echo "cluster.sh: building from a working tree with uncommitted changes: $built_from" >&2
  fi
  cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DSSEPP_BUILD_TESTS=OFF >/dev/null
  cmake --build build-bench --target fanout_server cluster_server sse_load >/dev/null
  bin=build-bench/benchmarks
else
  built_from="binaries in $bin"
fi
[ -x "$bin"/cluster_server ] || { echo "cluster.sh: no cluster_server (ssepp::redis needs libhiredis-dev)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "cluster.sh: needs redis-server (bash scripts/deps.sh --bench)" >&2; exit 1; }
have_nchan=0
if command -v nginx >/dev/null && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  have_nchan=1
else
  echo "nchan: skipped (apt-get install nginx libnginx-mod-nchan, or bash scripts/deps.sh --bench)" >&2
fi
# Targeted delivery exists once cluster_options has `delivery` (issue 11, being added).
have_targeted=0
"$bin"/cluster_server --help 2>&1 | grep -q 'broadcast|targeted' && have_targeted=1

ulimit -n 20000
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# CPU ticks (utime + stime) of processes and their children (nginx's workers).
cpu_ticks() {
  local total=0 p c
  for p in "$@"; do
    for c in $p $(pgrep -P "$p" 2>/dev/null); do
      total=$(( total + $(awk '{print $14 + $15}' /proc/"$c"/stat 2>/dev/null || echo 0) ))
    done
  done
  echo $total
}
# Nanoseconds the threads of processes (and their children) spent runnable but waiting for a
# CPU (/proc/PID/task/TID/schedstat, 2nd field): on a shared machine, what the load cost us.
wait_ns() {
  local total=0 p c t
  for p in "$@"; do
    for c in $p $(pgrep -P "$p" 2>/dev/null); do
      for t in /proc/"$c"/task/*/schedstat; do
        total=$(( total + $(awk '{print $2}' "$t" 2>/dev/null || echo 0) ))
      done
    done
  done
  echo $total
}
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
    --logfile "$work/redis.log" &
redis_pid=$!; pids+=("$redis_pid")
wait_port "$redis_port"
rcli() { redis-cli -p "$redis_port" "$@"; }
redis_url="redis://127.0.0.1:$redis_port"

# start_nodes KIND COUNT RATE KEYS DELIVERY -> node_pids, urls (comma-separated), first node's out
start_nodes() {
  local kind=$1 count=$2 rate=$3 keys=$4 delivery=$5 i
  node_pids=(); urls=""
  rm -f "$work"/node*.out
  for i in $(seq 0 $(( count - 1 ))); do
    local r=0; [ "$i" = 0 ] && r=$rate
    local out="$work/node$i.out"; : > "$out"
    case "$kind" in
      single)
        "$bin"/fanout_server --port 0 --threads 1 --rate "$r" --payload 64 --events 2000000 > "$out" 2>&1 & ;;
      cluster)
        local extra=""; [ -n "$delivery" ] && extra="--delivery $delivery"
        # shellcheck disable=SC2086
        "$bin"/cluster_server --port 0 --threads 1 --rate "$r" --payload 64 --events 2000000 --keys "$keys" --nodes "$count" \
            --redis "$redis_url" $extra > "$out" 2>&1 & ;;
    esac
    node_pids+=($!); pids+=($!)
    for _ in $(seq 200); do grep -q listening "$out" && break; sleep 0.05; done
    local u; u=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$out")
    [ -n "$u" ] || { echo "cluster.sh: $kind node $i did not start:" >&2; cat "$out" >&2; exit 1; }
    [ "$keys" -gt 0 ] && u="$u/u{key}"
    urls="${urls:+$urls,}$u"
  done
  publish=""
}

# start_nchan COUNT RATE -> node_pids (the nginx masters), urls, publish
start_nchan() {
  local count=$1 rate=$2 i
  node_pids=(); urls=""
  rm -f "$work"/node*.out
  local first_port=""
  for i in $(seq 0 $(( count - 1 ))); do
    local port dir="$work/nginx$i"; port=$(free_port); mkdir -p "$dir/logs"
    [ -n "$first_port" ] || first_port=$port
    cat > "$dir/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
worker_rlimit_nofile 20000;
error_log $dir/logs/error.log error;
pid $dir/nginx.pid;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  nchan_redis_url "$redis_url";
  nchan_use_redis on;
  server {
    listen 127.0.0.1:$port;
    location = /events { nchan_subscriber eventsource; nchan_channel_id bench; nchan_subscriber_first_message newest; }
    location = /publish { nchan_publisher; nchan_channel_id bench; nchan_message_buffer_length 64; }
  }
}
EOF
    # Its stderr: nchan warns that nchan_redis_url is the older spelling (it still works).
    nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' 2> "$dir/logs/stderr.log" &
    node_pids+=($!); pids+=($!)
    wait_port "$port"
    urls="${urls:+$urls,}http://127.0.0.1:$port/events"
  done
  # Four POSTing connections: nchan answers a POST after its Redis round trips, so one at a
  # time would measure the round trip; ssepp's publisher keeps up to 256 sends in flight.
  publish="--publish-url http://127.0.0.1:$first_port/publish --publish-rate $rate --publishers 4"
}

stop_nodes() {
  local p
  for p in "${node_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${node_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}

redis_info() { { rcli INFO commandstats; rcli INFO stats; rcli INFO cpu; } > "$1"; }

results="$work/results.tsv"
# run_scenario SCENARIO SERVER NODES RATE SUBSCRIBERS KEYS [DELIVERY]
run_scenario() {
  local sc=$1 name=$2 nodes=$3 rate=$4 conns=$5 keys=$6 delivery=${7:-}
  rcli FLUSHALL >/dev/null; rcli CONFIG RESETSTAT >/dev/null
  local load0; load0=$(cut -d' ' -f1 /proc/loadavg)
  redis_info "$work/before.txt"
  local rcpu0; rcpu0=$(cpu_ticks "$redis_pid")
  local t0; t0=$(date +%s.%N)
  case "$name" in
    single) start_nodes single 1 "$rate" 0 "" ;;
    cluster*) start_nodes cluster "$nodes" "$rate" "$keys" "$delivery" ;;
    nchan) start_nchan "$nodes" "$rate" ;;
  esac
  local cpu0; cpu0=$(cpu_ticks "${node_pids[@]}")
  local wait0; wait0=$(wait_ns "${node_pids[@]}" "$redis_pid")
  # shellcheck disable=SC2086
  timeout $(( secs + 40 )) "$bin"/sse_load --url "$urls" --connections "$conns" --connect-rate 3000 \
      --duration "$secs" --keys "$keys" $publish > "$work/load.json" &
  local client=$!
  local cwait=0
  # The client's wait, sampled until it ends (its /proc entry goes with it).
  while kill -0 "$client" 2>/dev/null; do cwait=$(wait_ns "$client"); sleep 0.2; done
  wait "$client" || echo '{}' > "$work/load.json"
  local wait1; wait1=$(wait_ns "${node_pids[@]}" "$redis_pid")
  local cpu1; cpu1=$(cpu_ticks "${node_pids[@]}")
  stop_nodes
  # Subscribers the servers dropped: say why (cluster_server counts close reasons).
  if python3 -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])).get("closed_early", 0) == 0)' "$work/load.json"; then
    echo "$sc $name: subscribers closed early:" >&2
    grep -h 'closed' "$work"/node*.out >&2 || true
  fi
  local t1; t1=$(date +%s.%N)
  local rcpu1; rcpu1=$(cpu_ticks "$redis_pid")
  redis_info "$work/after.txt"
  local load1; load1=$(cut -d' ' -f1 /proc/loadavg)
  python3 - "$sc" "$name" "$nodes" "$conns" "$cpu0" "$cpu1" "$rcpu0" "$rcpu1" "$t0" "$t1" "$load0" "$load1" \
      "$(( wait1 - wait0 + cwait ))" \
      "$work/load.json" "$work/node0.out" "$work/before.txt" "$work/after.txt" >> "$results" <<'PY'
import json, os, re, sys
sc, name, nodes, conns, c0, c1, r0, r1, t0, t1, l0, l1, waited, load, out0, before, after = sys.argv[1:]
j = json.load(open(load))
hz = os.sysconf('SC_CLK_TCK')
window = j.get("duration_s", 0) + j.get("connect_s", 0)
cpu = (int(c1) - int(c0)) / hz / max(window, 1e-9)
life = float(t1) - float(t0)
rcpu = (int(r1) - int(r0)) / hz / max(life, 1e-9)

def info(path):
    cmds, kv = {}, {}
    for line in open(path):
        line = line.strip()
        m = re.match(r"cmdstat_([^:]+):calls=(\d+),usec=(\d+)", line)
        if m:
            cmds[m.group(1)] = (int(m.group(2)), int(m.group(3)))
        elif ":" in line:
            k, v = line.split(":", 1)
            kv[k] = v
    return cmds, kv
cb, kb = info(before); ca, ka = info(after)
def d(cmd, i): return ca.get(cmd, (0, 0))[i] - cb.get(cmd, (0, 0))[i]
def dk(k): return float(ka.get(k, 0)) - float(kb.get(k, 0))
# Events published: cluster_server's count of acknowledged sends; nchan's answered POSTs.
events = j.get("published", 0)
m = re.search(r"acked (\d+)", open(out0).read()) if os.path.exists(out0) else None
if name.startswith("cluster") and m:
    events = int(m.group(1))
row = [sc, name, nodes, j.get("connected", 0), j.get("closed_early", 0), round(j.get("events_per_s", 0)),
       j.get("latency_us", {}).get("p50", 0), j.get("latency_us", {}).get("p99", 0), round(cpu * 100)]
if name == "single" or events == 0:
    row += ["", "", "", "", "", "", "", "", ""]
else:
    # Not per event: the script's own INFO/CONFIG/FLUSHALL, the nodes' SUBSCRIBE, cluster_server's
    # backlog exchange (PSETEX, MGET, KEYS; see cluster_server.cpp).
    # SCRIPT LOAD: once per link (the library then sends EVALSHA).
    skip = {"info", "config|resetstat", "flushall", "subscribe", "psubscribe", "psetex", "mget", "keys",
            "script|load", "script"}
    calls = sum(d(c, 0) for c in ca if c not in skip)
    evals = d("eval", 0) + d("evalsha", 0)
    eval_us = d("eval", 1) + d("evalsha", 1)
    # Commands other than the scripts and what they call (catch-up reads, presence upkeep...):
    # on stderr, so a calls/event or bytes/event above the usual says where it came from.
    script = {"eval", "evalsha", "time", "hget", "hset", "hincrby", "xadd", "pexpire", "publish", "hgetall"}
    other = sorted(((d(c, 0), c) for c in ca if c not in skip | script and d(c, 0) > 0), reverse=True)
    if other:
        print(f"{sc} {name}: other commands: " + ", ".join(f"{c} {n}" for n, c in other), file=sys.stderr)
    # Round trips: EVALSHA, plus the plain EVALs a link sends before its SCRIPT LOAD is answered
    # or after a NOSCRIPT (counted apart: they should be a handful, not one an event).
    row += [round(events / life), round(rcpu * 100),
            f"{evals / events:.2f}", d("eval", 0), f"{calls / events:.2f}",
            f"{eval_us / max(evals, 1):.1f}",
            f"{(dk('used_cpu_user') + dk('used_cpu_sys')) * 1e6 / events:.1f}",
            round(dk("total_net_output_bytes") / events), round(dk("total_net_input_bytes") / events)]
row += [f"{l0}/{l1}", round(int(waited) / 1e6 / max(window, 1e-9))]
# The publisher's send -> acknowledgement (the script call's round trip), from cluster_server.
m = re.search(r"ack us: p50 ([0-9.]+) p99 ([0-9.]+)", open(out0).read()) if name.startswith("cluster") and os.path.exists(out0) else None
row += [m.group(1), m.group(2)] if m else ["", ""]
print("\t".join(str(x) for x in row))
PY
}

for _ in $(seq "$runs"); do
  case ",$only," in *,sat,*)
    run_scenario sat single 1 max "$subs" 0
    run_scenario sat cluster 2 max "$subs" 0
    [ "$have_nchan" = 1 ] && run_scenario sat nchan 2 max "$subs" 0
  ;; esac
  case ",$only," in *,bus,*)
    run_scenario bus single 1 10000 20 0
    run_scenario bus cluster 2 10000 20 0
  ;; esac
  case ",$only," in *,keys,*)
    if [ "$have_targeted" = 1 ]; then
      run_scenario keys cluster-broadcast "$keys_nodes" max "$subs" "$subs" broadcast
      run_scenario keys cluster-targeted "$keys_nodes" max "$subs" "$subs" targeted
    else
      echo "keys: skipped (cluster_options has no delivery yet)" >&2
    fi
  ;; esac
  case ",$only," in *,shared,*)
    if [ "$have_targeted" = 1 ]; then
      run_scenario shared cluster-broadcast 4 5000 8 0 broadcast
      run_scenario shared cluster-targeted 4 5000 8 0 targeted
    fi
  ;; esac
  case ",$only," in *,redis,*)
    for n in 1 2 4 8; do run_scenario redis "cluster-$n" "$n" "$redis_rate" 0 0; done
  ;; esac
done

python3 - "$results" "$secs" "$built_from" <<'PY'
import sys, collections, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print(f"Built from: {sys.argv[3]}.")
head = ["scenario", "server", "nodes", "connected", "closed early", "delivered ev/s", "p50 µs", "p99 µs",
        "servers CPU %", "published ev/s", "redis CPU %", "EVALSHA+EVAL/event", "of which EVAL (calls)",
        "Redis calls/event", "µs/script call", "redis CPU µs/event", "bytes out/event", "bytes in/event", "load avg before/after",
        "CPU wait ms/s", "send→ack p50 µs", "send→ack p99 µs"]
print(f"Each run: {sys.argv[2]} s of measurement after the connect phase.\n")
print("| " + " | ".join(head) + " |")
print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|")
for r in rows:
    print("| " + " | ".join(r) + " |")
by = collections.defaultdict(list)
for r in rows:
    by[(r[0], r[1])].append(r)
def med(rs, k):
    xs = [float(r[k]) for r in rs if r[k] != ""]
    return statistics.median(xs) if xs else None
print()
print("Medians over runs:\n")
cols = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 20, 21]
print("| scenario | server | runs | " + " | ".join(head[c] for c in cols) + " |")
print("|---|---|---:|" + "---:|" * len(cols))
meds = {}
for (sc, name), rs in by.items():
    vals = [med(rs, c) for c in cols]
    meds[(sc, name)] = vals
    print(f"| {sc} | {name} | {len(rs)} | " + " | ".join("" if v is None else (f"{v:.2f}" if c in (11, 13) else f"{v:.1f}" if c in (14, 15) else f"{v:.0f}") for v, c in zip(vals, cols)) + " |")
print()
def get(sc, name, i):
    v = meds.get((sc, name))
    return v[i] if v else None
s, c, n = get("sat", "single", 0), get("sat", "cluster", 0), get("sat", "nchan", 0)
if s and c:
    print(f"- sat: cluster {c:.0f} ev/s = {c / s:.2f}x single (target >= 0.5x)" + (f", {c / n:.2f}x nchan+Redis (target >= 3x)" if n else ""))
bs, bc = get("bus", "single", 2), get("bus", "cluster", 2)
if bs is not None and bc is not None:
    print(f"- bus: p99 {bc:.0f} µs cluster vs {bs:.0f} µs single at 10k ev/s: the bus adds {bc - bs:.0f} µs (target <= 2000)")
for sc in ("keys", "shared"):
    for name in ("cluster-broadcast", "cluster-targeted"):
        v = meds.get((sc, name))
        if v:
            print(f"- {sc}: {name}: {v[0]:.0f} ev/s delivered, {v[4]:.0f} published/s, servers CPU {v[3]:.0f} %, "
                  f"Redis {v[10]:.1f} µs CPU and {v[11]:.0f} bytes out per event")
PY
