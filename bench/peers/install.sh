#!/usr/bin/env bash
# Installs what the bench's peers and charts need, and does nothing when it
# is all there: nginx with nchan and gnuplot from Debian, socket.io from npm
# (into bench/peers/socketio/node_modules). nats-server comes with the
# project's own deps (scripts/deps.sh). Safe to run repeatedly.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# Each need is a test and the Debian package that meets it; node and npm may
# come from elsewhere, so they are tested as commands.
missing=()
need() { # need TEST... -- PACKAGE
    local pkg=${*: -1}
    set -- "${@:1:$(($# - 2))}"
    "$@" >/dev/null 2>&1 || missing+=("$pkg")
}
need command -v nginx -- nginx-light
need test -f /usr/lib/nginx/modules/ngx_nchan_module.so -- libnginx-mod-nchan
need command -v gnuplot -- gnuplot-nox
need command -v node -- nodejs
need command -v npm -- npm
need command -v nats-server -- nats-server
need command -v curl -- curl
need command -v jq -- jq
need command -v openssl -- openssl
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
fi

if [ ! -d "$here/socketio/node_modules/socket.io" ]; then
    echo "bench: installing socket.io (npm)" >&2
    (cd "$here/socketio" && npm install --no-audit --no-fund --omit=dev --loglevel=error >&2)
fi
