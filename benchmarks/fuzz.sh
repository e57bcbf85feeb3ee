#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang-16 (ASan + UBSan, any UB fatal, leaks
# checked) in their own build dir and runs each, one after another, for a given time on a copy
# of its shipped corpus (tests/fuzz/corpus/<target>; nothing is written into the repo).
# Prints per target the executions reached; exits non-zero on any crash, failed check, leak,
# timeout, out-of-memory or sanitizer report, leaving the input under <build-dir>/fuzz-work/.
#
#   benchmarks/fuzz.sh [--seconds N] [--runs N] [--max-len N] [--only TARGET]... [--build-dir DIR]
#     --seconds N   time per target (default 300); CI runs --seconds 30
#     --runs N      also stop a target after N executions (e.g. 10000000)
#     --max-len N   longest input libFuzzer makes (default: 4096, or the longest seed)
#     --only T      run only target T (repeatable, in that order); default every target
#     --build-dir   default <repo>/build-fuzz
# Needs Debian's clang-16 and libfuzzer-16-dev (CC/CXX override the compilers).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=300
runs=""
max_len=""
only=()
build="$root/build-fuzz"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --max-len) max_len="$2"; shift 2 ;;
    --only) only+=("$2"); shift 2 ;;
    --build-dir) build="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
build="$(realpath -m "$build")"
case "$seconds" in ''|*[!0-9]*) echo "fuzz.sh: --seconds needs a whole number" >&2; exit 2 ;; esac
case "$runs$max_len" in *[!0-9]*) echo "fuzz.sh: --runs and --max-len need whole numbers" >&2; exit 2 ;; esac

export CC="${CC:-clang-16}" CXX="${CXX:-clang++-16}"
if ! command -v "$CXX" >/dev/null 2>&1; then
  echo "fuzz.sh: $CXX not found: apt-get install -y clang-16 libfuzzer-16-dev" >&2
  exit 2
fi
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
# Only the library and the fuzz targets: the targets build the examples' pieces they need.
nice cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSSEPP_BUILD_FUZZERS=ON -DSSEPP_BUILD_TESTS=OFF -DSSEPP_BUILD_EXAMPLES=OFF \
  -DSSEPP_BUILD_BENCHMARKS=OFF -DSSEPP_INSTALL=OFF >/dev/null
nice cmake --build "$build" --target fuzzers

mapfile -t targets < "$build/tests/fuzz/fuzzers.txt"
if [ ${#only[@]} -gt 0 ]; then
  for t in "${only[@]}"; do
    printf '%s\n' "${targets[@]}" | grep -qx "$t" || { echo "fuzz.sh: no target $t (have: ${targets[*]})" >&2; exit 2; }
  done
  targets=("${only[@]}")
fi

# Leaks are checked at exit of each run and of each input (libFuzzer's -detect_leaks=1 with
# ASan); whatever the caller's environment says, these win (the last setting counts).
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}print_stacktrace=1:halt_on_error=1"

echo "fuzz.sh: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "fuzz.sh: ${seconds} s per target${runs:+, at most $runs executions}${max_len:+, inputs up to $max_len bytes}"
failed=()
summary=()
for t in "${targets[@]}"; do
  work="$build/fuzz-work/$t"
  rm -rf "$work"
  mkdir -p "$work/artifacts"
  cp -R "$root/tests/fuzz/corpus/$t" "$work/corpus"
  args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=25 -rss_limit_mb=2048
        -artifact_prefix="$work/artifacts/")
  [ -n "$runs" ] && args+=(-runs="$runs")
  [ -n "$max_len" ] && args+=(-max_len="$max_len")
  echo "== $t"
  start=$(date +%s)
  set +e
  nice "$build/tests/fuzz/$t" "${args[@]}" "$work/corpus" >"$work/log" 2>&1
  rc=$?
  set -e
  elapsed=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$work/log" | tail -1)
  status=ok
  # libFuzzer exits non-zero on a crash, leak, timeout or OOM; the grep also catches any
  # sanitizer report that let it exit 0, and a run that reached no input at all.
  if [ $rc -ne 0 ] || [ -z "$execs" ] || [ "${execs:-0}" -eq 0 ] \
     || grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|FUZZ_CHECK failed|SUMMARY: [A-Za-z]+Sanitizer' "$work/log" \
     || [ -n "$(ls -A "$work/artifacts")" ]; then
    status="FAILED (exit $rc)"
    failed+=("$t")
    grep -E 'ERROR|runtime error|FUZZ_CHECK|SUMMARY|Test unit written' "$work/log" | head -20 || true
    echo "   log: $work/log; inputs: $work/artifacts/"
  fi
  line=$(printf '%-20s %12s executions in %5s s (%s exec/s), peak RSS %s MB: %s' \
         "$t" "${execs:-0}" "$elapsed" "${rate:-0}" "${rss:-?}" "$status")
  echo "   $line"
  summary+=("$line")
done

echo "== summary"
printf '   %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, no crash, leak, timeout or sanitizer report"
