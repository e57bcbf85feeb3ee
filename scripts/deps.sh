#!/usr/bin/env bash
# Installs what ssepp's build, tests and examples need on Debian (bookworm), only what is missing.
set -euo pipefail
pkgs=(cmake ninja-build g++ ccache pkg-config python3
      libasio-dev libfmt-dev catch2 libssl-dev
      libsqlite3-dev node-llhttp libcurl4-openssl-dev nlohmann-json3-dev
      chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
