#!/usr/bin/env bash
# Proves README.md's two commands on a fresh Debian bookworm (issue 16, item 9): debootstrap a
# clean minimal bookworm, `git clone` this repo's committed HEAD into a copy of it (so only what
# is committed counts), and run, exactly as README.md gives them between its markers:
#   - the main-example command, in its own fresh copy, until http://127.0.0.1:PORT/ answers,
#     then stopped; the test-only packages (chromium, npm, clang-16) must not have been installed;
#   - the test command, in full, in another fresh copy.
#
#   scripts/fresh-machine-check.sh [--reuse] [--only example|tests] [DIR]
#
# DIR (default /work/chroot-bookworm, outside the repo) holds base/ (the pristine debootstrap),
# apt-archives/ (downloaded .debs, shared by the runs: every package is still installed for
# real), example/ and tests/ (the machines of the last run, kept to look at) and logs/. Without
# --reuse DIR is made anew; with --reuse an existing base/ and apt-archives/ are kept, which
# saves the debootstrap. Needs root (debootstrap, chroot, mount), debootstrap and curl.
#
# The chroot reaches Debian's packages and the npm registry the way this machine does: the
# same Debian mirror (from /etc/apt/sources.list*), the same apt Acquire settings (proxy, snapshot
# validity), this machine's local CA certificates and its CA/proxy environment variables.
set -euo pipefail

usage() { sed -n '9p' "$0" | sed 's/^# *//' >&2; exit 2; }
reuse=0 only="" dir=/work/chroot-bookworm
while [ $# -gt 0 ]; do
  case $1 in
    --reuse) reuse=1 ;;
    --only) [ $# -ge 2 ] || usage; only=$2; shift ;;
    --only=*) only=${1#--only=} ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) usage ;;
    *) dir=$1 ;;
  esac
  shift
done
case $only in ""|example|tests) ;; *) usage ;; esac

say() { printf '\n=== %s: %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { echo "fresh-machine-check: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mount need it)"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
command -v curl >/dev/null || die "curl is missing: apt-get install curl"

repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$(realpath -m "$dir")
case $dir/ in "$repo"/*|/) die "DIR ($dir) must be outside the repo" ;; esac
marker=$dir/.fresh-machine-check   # only a directory this script made is ever deleted
base=$dir/base cache=$dir/apt-archives logs=$dir/logs
commit=$(git -C "$repo" rev-parse HEAD)

# --- mounts, and their removal whatever happens --------------------------------------------
mounts=() server_pid=""
mounted_under() { findmnt -rn -o TARGET | grep -E "^$1(/|$)" || true; }
cleanup() {
  local rc=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL -- "-$server_pid" 2>/dev/null || true
  fi
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" || echo "could not unmount ${mounts[i]}" >&2
  done
  mounts=()
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mount_in() {  # mount_in ROOT: what chromium, apt and the tests need of /proc, /sys and /dev
  local root=$1
  mount -t proc proc "$root/proc"; mounts+=("$root/proc")
  bind /sys "$root/sys"
  bind /dev "$root/dev"
  bind /dev/pts "$root/dev/pts"
  mkdir -p "$root/dev/shm"
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"; mounts+=("$root/dev/shm")
  bind "$cache" "$root/var/cache/apt/archives"
}
bind() {  # private, so that a mount under it (the chroot's /dev/shm) never reaches this machine's
  mount --bind "$1" "$2"; mounts+=("$2")
  mount --make-private "$2"
}
unmount_all() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}"; done
  mounts=()
}
remove_tree() {  # never through a mount point (bind mounts of /dev and /sys live in there)
  [ -z "$(mounted_under "$1")" ] || die "$1 still has mounts: $(mounted_under "$1" | tr '\n' ' ')"
  rm -rf --one-file-system "$1"
}

# --- the pristine base -----------------------------------------------------------------------
if [ -e "$dir" ] && [ ! -e "$marker" ]; then
  die "$dir exists and was not made by this script: give another DIR"
fi
if [ $reuse -eq 0 ] && [ -e "$dir" ]; then
  say "removing the previous $dir (no --reuse)"
  for entry in "$dir"/*; do remove_tree "$entry"; done   # the marker stays till the end
fi
mkdir -p "$dir" "$cache/partial" "$logs"
touch "$marker"

# This machine's Debian mirror: the first URI serving bookworm (deb822 or one-line format).
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
         | awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}
                /^deb / {i = 2; if ($2 ~ /^\[/) {while ($i !~ /\]$/) i++; i++}
                         if ($(i + 1) == "bookworm") {print $i; exit}}' || true)
mirror=${mirror:-http://deb.debian.org/debian}

t0=$(date +%s)
if [ -f "$base/.complete" ]; then
  say "reusing the debootstrap in $base"
else
  remove_tree "$base"
  say "debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase --cache-dir="$cache" bookworm "$base" "$mirror" > "$logs/debootstrap.log" 2>&1 \
    || { tail -20 "$logs/debootstrap.log"; die "debootstrap failed (log: $logs/debootstrap.log)"; }
  # apt as on this machine: its Debian sources (bookworm, -updates, -security) and Acquire
  # settings; nothing else (other repositories here, such as NodeSource's, are not Debian's).
  rm -f "$base/etc/apt/sources.list"
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    if [ -f "$f" ] && grep -qE '(^Suites:.*|^deb .*)bookworm' "$f" && grep -q debian "$f" \
       && ! grep -qE 'nodesource|google|docker' "$f"; then
      cp "$f" "$base$f"
    fi
  done
  ls "$base"/etc/apt/sources.list* >/dev/null 2>&1 || die "found no Debian sources for bookworm on this machine"
  for f in /etc/apt/apt.conf.d/*; do
    grep -q 'Acquire::' "$f" 2>/dev/null && cp "$f" "$base/etc/apt/apt.conf.d/"
  done
  # Keep downloaded .debs in the shared cache (minbase's docker-clean style config would not
  # exist here, but say so anyway), and start no services in the chroot.
  echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' > "$base/etc/apt/apt.conf.d/10keep-debs"
  printf '#!/bin/sh\nexit 101\n' > "$base/usr/sbin/policy-rc.d"; chmod +x "$base/usr/sbin/policy-rc.d"
  # This machine's local CA certificates (its egress to the registries goes through them); the
  # ca-certificates package, once installed, puts them in /etc/ssl/certs/ca-certificates.crt.
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    mkdir -p "$base/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$base/usr/local/share/ca-certificates/"
  fi
  touch "$base/.complete"
fi
t_base=$(( $(date +%s) - t0 ))

# The environment inside: a clean one, plus this machine's CA-bundle and proxy variables.
chroot_env=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
            LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive)
for v in NODE_EXTRA_CA_CERTS SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE REQUESTS_CA_BUNDLE GIT_SSL_CAINFO \
         http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  [ -z "${!v:-}" ] || chroot_env+=("$v=${!v}")
done

# new_machine NAME: a fresh copy of base with the clone of HEAD in /root/ssepp; sets $root.
new_machine() {
  root=$dir/$1
  remove_tree "$root"
  say "$1: a fresh copy of the base, git clone of $commit"
  cp -a "$base" "$root"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp /etc/hosts "$root/etc/hosts"
  # Both machines get the commit that was HEAD when this script started, however main moves on.
  git clone -q --no-hardlinks --no-checkout "$repo" "$root/root/ssepp"
  git -C "$root/root/ssepp" checkout -q --detach "$commit"
  mount_in "$root"
}
# in_machine CMD: CMD in the clone, as .ci/run runs README's command (bash -euo pipefail -c).
in_machine() {
  chroot "$root" /usr/bin/env -i "${chroot_env[@]}" /bin/bash -c \
    'cd /root/ssepp && exec bash -euo pipefail -c "$1"' bash "$1"
}
readme_command() {  # as .ci/run extracts it
  sed -n "/<!-- $1:begin -->/,/<!-- $1:end -->/p" "$root/root/ssepp/README.md" \
    | grep -v '^<!--' | grep -v '^```'
}
installed() { chroot "$root" dpkg-query -W -f='${Package} ${Version} ${Status}\n' "$@" 2>/dev/null | grep 'install ok installed' | cut -d' ' -f1,2 || true; }

result_example="not run" result_tests="not run" t_example=0 t_tests=0

# --- the main example ------------------------------------------------------------------------
if [ "$only" != tests ]; then
  new_machine example
  cmd=$(readme_command main-example-command)
  [ -n "$cmd" ] || die "README.md has no main-example command between the markers"
  port=$(sed -nE 's/.*--port[ =]([0-9]+).*/\1/p' <<< "$cmd")
  port=${port:-8080}
  if curl -s -o /dev/null -m 2 "http://127.0.0.1:$port/"; then
    die "something already answers on 127.0.0.1:$port; stop it first"
  fi
  say "example: + $cmd"
  t0=$(date +%s)
  # Its own session, so that the whole tree (bash, the server) is stopped at once.
  setsid chroot "$root" /usr/bin/env -i "${chroot_env[@]}" /bin/bash -c \
    'cd /root/ssepp && exec bash -euo pipefail -c "$1"' bash "$cmd" > "$logs/example.log" 2>&1 < /dev/null &
  server_pid=$!
  # Bounded wait: deps, configure, build and start take minutes; 45 at most.
  deadline=$(( $(date +%s) + 2700 )) answered=0
  while [ "$(date +%s)" -lt $deadline ] && kill -0 "$server_pid" 2>/dev/null; do
    if status=$(curl -s -o "$logs/example-page.html" -w '%{http_code}' -m 5 "http://127.0.0.1:$port/"); then
      answered=1; break
    fi
    sleep 2
  done
  t_example=$(( $(date +%s) - t0 ))
  if [ $answered -eq 1 ]; then
    title=$(sed -n 's:.*<title>\(.*\)</title>.*:\1:p' "$logs/example-page.html" | head -1)
    say "example: http://127.0.0.1:$port/ answered $status ('$title') after ${t_example}s; stopping it"
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    # nodejs is not in this list: Debian's node-llhttp (llhttp's C sources, which the examples
    # build) depends on it through node-debug and node-semver.
    test_only=$(installed chromium npm clang-16 libfuzzer-16-dev)
    if [ "$status" != 200 ]; then
      result_example="FAILED: / answered $status"
    elif [ -n "$test_only" ]; then
      result_example="FAILED: test-only packages were installed: $(tr "\n" " " <<< "$test_only")"
    else
      result_example="passed: / answered 200 ('$title') after ${t_example}s; no chromium, npm, clang-16 installed"
    fi
  else
    kill -KILL -- "-$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    tail -30 "$logs/example.log"
    result_example="FAILED: http://127.0.0.1:$port/ never answered (log: $logs/example.log)"
  fi
  say "example: $result_example"
  unmount_all
fi

# --- the test command --------------------------------------------------------------------------
if [ "$only" != example ]; then
  new_machine tests
  cmd=$(readme_command ci-test-command)
  [ -n "$cmd" ] || die "README.md has no test command between the markers"
  say "tests: + $cmd"
  t0=$(date +%s)
  set +e
  in_machine "$cmd" < /dev/null 2>&1 | tee "$logs/tests.log"
  rc=${PIPESTATUS[0]}
  set -e
  t_tests=$(( $(date +%s) - t0 ))
  summary=$(grep -E 'tests passed|tests failed' "$logs/tests.log" | tail -1 || true)
  summary="$summary; ctest $(sed -n 's/^Total Test time (real) = *//p' "$logs/tests.log" | tail -1)"
  if [ "$rc" -eq 0 ]; then result_tests="passed in ${t_tests}s: $summary"
  else result_tests="FAILED (exit $rc) after ${t_tests}s: ${summary:-see $logs/tests.log}"; fi
  unmount_all
fi

say "summary (commit $commit)"
echo "base:      ${t_base}s, Debian $(cat "$base/etc/debian_version") (minbase)"
for m in example tests; do
  root=$dir/$m
  if [ -d "$root/usr" ]; then echo "$m machine has: $(installed nodejs npm chromium | tr "\n" " ")"; fi
done
echo "example:   $result_example"
echo "tests:     $result_tests"
[[ $result_example != FAILED* && $result_tests != FAILED* ]]
