#!/bin/bash
# Presence cost of a join storm: nats-server -js and one gateway, N
# connections that say hello and join one room (sluice-bench idle, held 5 s,
# then closed); prints the gateway's presence KV writes and presence events
# per member (from /metrics), the frames each client received, the
# gateway's CPU and the join rate.
#
#   bench/presence.sh GATEWAY_BINARY N LABEL
#   EXTRA="SLUICE_HEARTBEAT_MS=1000" bench/presence.sh bin/sluice-gateway 3000 after
#   DUR=15 ...   holds the connections 15 s instead of 5
#
# Compare two builds by alternating them in one sitting (BENCHMARKS.md).
set -u
GW=$1 N=$2 L=$3
root=$(cd "$(dirname "$0")/.." && pwd)
B=$root/bin/sluice-bench
W=$(mktemp -d)
np=$($B --free-port) gp=$($B --free-port) ga=$($B --free-port)
nats-server -js -a 127.0.0.1 -p "$np" -sd "$W/js" >"$W/nats.log" 2>&1 &
NP=$!
trap 'kill $GP $NP 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$np") 2>/dev/null && break; sleep 0.1; done
SECRET=bench-secret-0123456789abcdef
# shellcheck disable=SC2086
env SLUICE_NATS_URL="nats://127.0.0.1:$np" SLUICE_JWT_SECRET=$SECRET SLUICE_LOG_LEVEL=warn \
    SLUICE_LISTEN="127.0.0.1:$gp" SLUICE_ADMIN_LISTEN="127.0.0.1:$ga" \
    SLUICE_HANDSHAKE_RATE=100000 SLUICE_HANDSHAKE_BURST=100000 ${EXTRA:-} "$GW" >"$W/gw.log" 2>&1 &
GP=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$ga/readyz" >/dev/null && break; sleep 0.1; done
ulimit -n 20000
SLUICE_JWT_SECRET=$SECRET timeout 120 "$B" --scenario idle --url "ws://127.0.0.1:$gp/v1/ws" \
    --conns "$N" --rooms 1 --duration "${DUR:-5}" --warmup 1 --max-pending 256 --pid "$GP" --label "$L" \
    --out "$W/out.json" >"$W/bench.log" 2>&1
m=$(curl -s "http://127.0.0.1:$ga/metrics")
metric() { echo "$m" | awk -v k="$1" '$1 == k {print $2}'; }
wr=$(metric sluice_gw_presence_writes_total)
ev=$(metric sluice_gw_presence_events_total)
su=$(metric sluice_gw_presence_suppressed_total)
echo "$L N=$N presence_writes=$wr events=$ev suppressed=$su" \
    "writes/member=$(echo "scale=3; $wr/$N" | bc) events/member=$(echo "scale=3; $ev/$N" | bc)"
jq -r '"   joins/s=\(.connect_rate|floor) connected=\(.connected) rss_per_conn=\(.rss_per_conn_bytes|floor)B gateway_cpu_s=\(.server_held.cpu_s) frames_in/member=\(.client.frames_in/.connections)"' "$W/out.json"
