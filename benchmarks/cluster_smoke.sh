#!/usr/bin/env bash
# ctest smoke check of cluster_server: a redis-server on a free port, two nodes, events
# published on the first; clients of the second node alone must receive them (over the bus),
# and the first node must count every acknowledged send. No timing expectations.
#   cluster_smoke.sh <dir of cluster_server and sse_load> [redis-server]
set -euo pipefail
bin=$1 redis=${2:-redis-server}
work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$redis" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" > "$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
start() {  # start NAME RATE -> url (not in a subshell: pids must keep the node)
  "$bin/cluster_server" --port 0 --threads 1 --rate "$2" --events 5000 --redis "redis://127.0.0.1:$port" > "$work/$1.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do grep -q listening "$work/$1.out" && break; sleep 0.05; done
  url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/$1.out")
}
start a 50
start b 0
json=$(timeout 30 "$bin/sse_load" --url "$url" --connections 20 --duration 1)
echo "node b's clients: $json"
python3 -c 'import json,sys; j=json.loads(sys.argv[1]); assert j["connected"]==20 and j["failed"]==0 and j["events"]>0, j' "$json"
kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
cat "$work/a.out"
grep -Eq 'published [1-9][0-9]* acked [1-9][0-9]* failed 0' "$work/a.out"
