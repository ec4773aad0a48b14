#!/usr/bin/env bash
# Offline checks of Sluice's deployment files. `make deploy-check` runs it
# after deploy/tools.sh has installed the validators (deploy/deploy.mk). No
# container engine or cluster is needed. Steps:
#   1. docker-compose config: docker-compose.yml is valid and renders;
#   2. kubectl kustomize: each overlay under deploy/k8s/overlays renders,
#      without warnings;
#   3. nats-server -t: each NATS config under deploy/nats parses, and only
#      with the password variables set;
#   4. haproxy -c: the compose proxy config is valid;
#   5. deploy/check.py: probes, resources, PDBs, HPAs, images, ports,
#      SLUICE_* variables (against `bin/sluice-<tier> --help` when built),
#      grace periods, NATS users, agents vs worker models, runtime
#      libraries, PromQL syntax and metric names of alerts and dashboard;
#   6. permcheck (when given): a real nats-server with deploy/nats's
#      accounts, each tier's user doing its JetStream work through cnats,
#      and other tiers' subjects refused.
# Prints one line per problem and exits 1 if there is any.
#
# Usage: deploy/check.sh [--bin DIR] [--permcheck EXE]
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$root/build/deploy
bindir=$root/bin
permcheck=""
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bindir=$2; shift 2 ;;
    --permcheck) permcheck=$2; shift 2 ;;
    *) echo "usage: $0 [--bin DIR] [--permcheck EXE]" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
export PATH="$root/var/deploy-tools/bin:$PATH"
failures=0
bad() { echo "  FAIL: $*"; failures=$((failures + 1)); }
step() { echo "deploy-check: $*"; }

# Every tool must be there: a check that silently does nothing is worse
# than a failure.
py=/usr/bin/python3
for tool in docker-compose kubectl nats-server haproxy node "$py"; do
    command -v "$tool" >/dev/null 2>&1 || bad "$tool not found (run \`make deploy-tools\`)"
done
"$py" -c 'import yaml' 2>/dev/null || bad "python3-yaml missing (run \`make deploy-tools\`)"
[ "$failures" -eq 0 ] || { echo "deploy-check: $failures problem(s)"; exit 1; }

# Runs from a clean environment, so that values in the caller's shell
# (SLUICE_TAG, NATS_PW_*, ...) cannot change what is checked.
clean_env=(env -i "PATH=$PATH" "HOME=${HOME:-/root}" "LANG=C.UTF-8")

step "docker-compose config"
if ! (cd "$root" && "${clean_env[@]}" docker-compose -f docker-compose.yml config -q); then
    bad "docker-compose.yml does not validate"
elif ! (cd "$root" && "${clean_env[@]}" docker-compose -f docker-compose.yml config \
        >"$out/compose.yaml"); then
    bad "docker-compose.yml does not render"
fi

step "kubectl kustomize ($(kubectl version --client 2>/dev/null | grep -i kustomize | tr -d '\n'))"
k8s_args=()
for dir in "$root"/deploy/k8s/overlays/*/; do
    overlay=$(basename "$dir")
    if "${clean_env[@]}" kubectl kustomize "$dir" >"$out/k8s-$overlay.yaml" 2>"$out/k8s-$overlay.err"; then
        k8s_args+=(--k8s "$overlay" "$out/k8s-$overlay.yaml")
        echo "  $overlay: $(grep -c '^kind:' "$out/k8s-$overlay.yaml") objects"
        # Deprecation warnings are problems too: they break on the next kubectl.
        if [ -s "$out/k8s-$overlay.err" ]; then
            bad "kustomize $overlay warns: $(head -3 "$out/k8s-$overlay.err")"
        fi
    else
        bad "kustomize $overlay failed: $(head -5 "$out/k8s-$overlay.err")"
    fi
done
[ ${#k8s_args[@]} -gt 0 ] || bad "no overlay rendered"

# Dummy values for the variables the NATS configs read from the environment.
nats_env=(NATS_PW_GATEWAY=pw-gateway NATS_PW_ORCHESTRATOR=pw-orchestrator
          NATS_PW_WORKER=pw-worker NATS_PW_SLUICECTL=pw-sluicectl NATS_PW_SYS=pw-sys
          POD_NAME=nats-0)
step "nats-server -t ($(nats-server --version))"
for conf in "$root"/deploy/nats/nats-*.conf; do
    if msg=$("${clean_env[@]}" "${nats_env[@]}" nats-server -t -c "$conf" 2>&1); then
        echo "  $(basename "$conf"): valid"
    else
        bad "$(basename "$conf"): $msg"
    fi
done
# The configs must fail without their variables (no password baked in).
if "${clean_env[@]}" nats-server -t -c "$root/deploy/nats/nats-single.conf" >/dev/null 2>&1; then
    bad "nats-single.conf is valid without NATS_PW_* set: a password is hard-coded"
fi

step "haproxy -c"
if msg=$(haproxy -c -f "$root/deploy/compose/haproxy.cfg" 2>&1); then
    echo "  haproxy.cfg: valid"
else
    bad "haproxy.cfg: $msg"
fi

if command -v promtool >/dev/null 2>&1; then
    step "promtool check rules"
    promtool check rules "$root/deploy/prometheus/alerts.yml" >/dev/null || bad "promtool rejects alerts.yml"
fi

step "consistency (deploy/check.py)"
if [ -s "$out/compose.yaml" ] && [ ${#k8s_args[@]} -gt 0 ]; then
    "$py" "$root/deploy/check.py" --compose "$out/compose.yaml" "${k8s_args[@]}" --bin "$bindir" ||
        failures=$((failures + 1))
else
    bad "skipped: nothing rendered to check"
fi

step "NATS permissions (permcheck)"
if [ -z "$permcheck" ]; then
    echo "  note: SKIPPED: no permcheck binary given (make deploy-check builds it)"
else
    tmp=$(mktemp -d)
    port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cp "$root/deploy/nats/accounts.conf" "$tmp/accounts.conf"
    cat >"$tmp/nats.conf" <<EOF
listen: 127.0.0.1:$port
jetstream { store_dir: "$tmp/js" }
include "accounts.conf"
EOF
    "${clean_env[@]}" "${nats_env[@]}" nats-server -c "$tmp/nats.conf" -l "$tmp/nats.log" &
    nats_pid=$!
    # permcheck retries the connection itself for a few seconds.
    if ! "${clean_env[@]}" "${nats_env[@]}" timeout 60 "$permcheck" "nats://127.0.0.1:$port"; then
        bad "permcheck failed; the server log (expected refusals included) says:"
        grep 'Violation' "$tmp/nats.log" | sed 's/^/    /' | head -20
    fi
    kill "$nats_pid" 2>/dev/null
    wait "$nats_pid" 2>/dev/null
    rm -rf "$tmp"
fi

if [ "$failures" -ne 0 ]; then
    echo "deploy-check: FAILED ($failures problem group(s))"
    exit 1
fi
echo "deploy-check: OK"
