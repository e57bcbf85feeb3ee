#!/usr/bin/env bash
# ctest smoke check of the load tools: each server streams to 20 clients for a second; the
# client must connect them all and receive events. No timing expectations.
set -euo pipefail
bin=$1
for server in fanout_server ideal_server; do
  out=$(mktemp)
  "$bin/$server" --port 0 --rate 50 > "$out" &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.05; done
  url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$out")
  json=$(timeout 30 "$bin/sse_load" --url "$url" --connections 20 --duration 1 --source-port-base 0)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$out"
  echo "$server: $json"
  python3 -c 'import json,sys; j=json.loads(sys.argv[1]); assert j["connected"]==20 and j["failed"]==0 and j["events"]>0, j' "$json"
done
