#!/usr/bin/env bash
# Builds codec_bench in a Release tree (build-bench/, beside the sources) and runs it.
# Extra arguments go to codec_bench, e.g. `benchmarks/run_codec.sh --chunk 65536`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cmake -S "$root" -B "$root/build-bench" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DSSEPP_BUILD_TESTS=OFF -DSSEPP_BUILD_EXAMPLES=OFF -DSSEPP_BUILD_BENCHMARKS=ON >/dev/null
cmake --build "$root/build-bench" --target codec_bench
exec "$root/build-bench/benchmarks/codec_bench" "$@"
