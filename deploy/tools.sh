#!/usr/bin/env bash
# Installs what deploy/check.sh needs and does nothing when it is there.
#   docker-compose, python3-yaml   Debian packages (through scripts/deps.sh)
#   kubectl                        must be on the machine already: Debian 12
#                                  only has kubernetes-client 1.20.2, whose
#                                  kustomize (v2.0.3) cannot build these
#                                  overlays (directories in `resources`,
#                                  `patches`); the project's machines ship
#                                  kubectl 1.32 with kustomize v5.
#   PromQL grammar                 @prometheus-io/lezer-promql (npm, pinned by
#                                  deploy/promql/package-lock.json), installed
#                                  into var/deploy-tools/promql
#   haproxy                        Debian's package, unpacked into
#                                  var/deploy-tools (not installed: that
#                                  would register and start a service)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=$root/var/deploy-tools

"$root/scripts/deps.sh" docker-compose python3-yaml nats-server

if ! command -v kubectl >/dev/null 2>&1; then
    echo "deploy-tools: kubectl not found. Install kubectl >= 1.21 (kustomize v4+);" \
         "Debian 12's kubernetes-client (1.20.2, kustomize v2.0.3) is too old for deploy/k8s." >&2
    exit 1
fi
kver=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')
if [ -z "$kver" ] || [ "$kver" -lt 4 ]; then
    echo "deploy-tools: $(command -v kubectl) embeds kustomize '${kver:-?}'; deploy/k8s needs v4+" \
         "(kubectl >= 1.21)." >&2
    exit 1
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    "$root/scripts/deps.sh" nodejs npm
fi
promql=$tools/promql
if ! cmp -s "$root/deploy/promql/package-lock.json" "$promql/package-lock.json" ||
    [ ! -d "$promql/node_modules/@prometheus-io/lezer-promql" ]; then
    echo "deploy-tools: installing the PromQL grammar into $promql" >&2
    rm -rf "$promql"
    mkdir -p "$promql"
    cp "$root/deploy/promql/package.json" "$root/deploy/promql/package-lock.json" "$promql/"
    (cd "$promql" && npm ci --no-audit --no-fund --silent >&2)
fi

if ! command -v haproxy >/dev/null 2>&1 && [ ! -x "$tools/bin/haproxy" ]; then
    echo "deploy-tools: unpacking Debian's haproxy into $tools" >&2
    rm -rf "$tools/debs" "$tools/root"
    mkdir -p "$tools/debs" "$tools/root" "$tools/bin"
    pkgs=(haproxy liblua5.3-0 libopentracing-c-wrapper0 libopentracing1)
    if ! (cd "$tools/debs" && apt-get download "${pkgs[@]}" >/dev/null 2>&1); then
        apt-get update -qq >/dev/null
        (cd "$tools/debs" && apt-get download "${pkgs[@]}" >/dev/null)
    fi
    for deb in "$tools"/debs/*.deb; do
        dpkg-deb -x "$deb" "$tools/root"
    done
    cat >"$tools/bin/haproxy" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$tools/root/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
    exec "$tools/root/usr/sbin/haproxy" "\$@"
WRAP
    chmod +x "$tools/bin/haproxy"
    "$tools/bin/haproxy" -v | sed -n 1p >&2
fi
