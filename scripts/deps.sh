#!/usr/bin/env bash
# Installs, with apt-get, the Debian (bookworm) packages that ssepp needs and that are missing.
#
#   bash scripts/deps.sh           what configuring the whole tree and building the examples need
#                                  (README's try-it command)
#   bash scripts/deps.sh --tests   that, plus what running the tests needs (README's test command)
#   bash scripts/deps.sh --bench   that, plus what the load benchmarks compare against and run
#                                  (benchmarks/run.sh, benchmarks/cluster.sh): nginx + nchan,
#                                  redis-server; combines with --tests
#   bash scripts/deps.sh [--tests] [--bench] --list   prints the packages that would be installed,
#                                  and exits
#
# The default set holds python3 and catch2 too: the tests are configured with the tree (they are
# on by default when ssepp is the top-level project), and CMake's configure step looks for both.
set -euo pipefail

tests=0 bench=0 list=0
for arg in "$@"; do
  case $arg in
    --tests) tests=1 ;;
    --bench) bench=1 ;;
    --list) list=1 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "deps.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

# A package, or package:command where any `command` on PATH will do instead of the package.
build=(cmake ninja-build g++ ccache pkg-config python3
       libasio-dev libfmt-dev catch2 libssl-dev
       libsqlite3-dev node-llhttp libcurl4-openssl-dev nlohmann-json3-dev
       # ssepp::redis, the cluster component (built when hiredis is found)
       libhiredis-dev)
test_only=(
  # Browser tests (tests/browser): Playwright from the npm registry drives Debian's chromium.
  # Debian's nodejs (18) and npm (9) will do, as will a Node.js >= 18 from elsewhere: NodeSource's
  # nodejs bundles npm and conflicts with Debian's npm package, so a `node`/`npm` on PATH is kept.
  chromium nodejs:node npm:npm ca-certificates
  # The cluster tests (tests/redis, label cluster) start real redis-server processes.
  redis-server
  # Fuzz targets (libFuzzer needs clang).
  clang-16 libfuzzer-16-dev
  # tests/sse_cat/driver.py and benchmarks/load_smoke.sh run python3 (also in the default set).
  python3
  # The Boost.Asio flavour (SSEPP_ASIO=boost: CI's sanitizer stage, the packaging tests
  # ssepp.consumer_boost_*) and the Beast example.
  libboost1.81-dev
  # The deployment tests (label deploy): nginx as the HTTP/2 front, and a real Prometheus
  # text-format parser for /metrics.
  nginx python3-prometheus-client
  # tests/deploy makes its self-signed certificate with the openssl command.
  openssl
)
bench_only=(
  # The peer the load tests compare against: nginx with the nchan module (Debian's nginx 1.22).
  nginx libnginx-mod-nchan
  # benchmarks/cluster.sh: the cluster's Redis, also nchan's Redis backend.
  redis-server
)
pkgs=("${build[@]}")
[ $tests -eq 0 ] || pkgs+=("${test_only[@]}")
[ $bench -eq 0 ] || pkgs+=("${bench_only[@]}")

missing=()
for entry in "${pkgs[@]}"; do
  p=${entry%%:*} cmd=${entry#*:}
  if [ "$cmd" != "$entry" ] && command -v "$cmd" >/dev/null 2>&1; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
  [[ " ${missing[*]} " == *" $p "* ]] || missing+=("$p")
done

if [ $list -eq 1 ]; then
  [ ${#missing[@]} -eq 0 ] || printf '%s\n' "${missing[@]}"
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
