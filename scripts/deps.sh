#!/usr/bin/env bash
# Installs the Debian packages Sluice needs to build, run and test, and does
# nothing when they are all present. Safe to run repeatedly.
set -euo pipefail

pkgs=(nats-server libnats-dev libwebsockets-dev libwebsockets-evlib-ev libev-dev libcjson-dev libprotobuf-c-dev
      protobuf-c-compiler check libsubunit-dev libcurl4-openssl-dev libssl-dev
      pkg-config make gcc clang curl libclang-rt-14-dev llvm-14 iproute2)
pkgs+=("$@")

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
