#!/usr/bin/env bash
# bench/cost.sh: what one chat message costs, per tier (docs/wire.md, "Cost
# of a message").
#
#   bench/cost.sh [--bin DIR] [--conns N] [--rates R1,R2,..] [--duration S]
#                 [--perf FILE] [--keep]    (PERF_ARGS: perf record options, default -g;
#                                            PERF_TIER: orch (default), gw, wrk or nats)
#
# Starts nats-server -js (with monitoring), one orchestrator, one worker and
# one gateway from DIR (default bin/), drives the pipeline scenario of
# bin/sluice-bench (always the worktree's client), and reports per message
# answered: what each tier's connection sent to and got from nats-server
# (/connz in_msgs/out_msgs, by connection name), the messages each stream
# stored (/jsz last_seq), the orchestrator's round trips when its metrics
# count them, and the CPU of every process (utime+stime from /proc). Then
# the bench's own JSON (p50/p99, sustained rate). --perf FILE records the
# orchestrator (or the tier PERF_TIER names) with perf during the load.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/bin"
conns=50
rates=200
duration=5
perf_out=
keep=0
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin=$2; shift 2 ;;
    --conns) conns=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --perf) perf_out=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cost.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
B="$root/bin/sluice-bench"
[ -x "$B" ] || { echo "cost.sh: $B missing (make bench-bin)" >&2; exit 2; }

work=$(mktemp -d /tmp/sluice-cost.XXXXXX)
pids=()
cleanup() {
    local rc=$? i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
    done
    if [ "$keep" = 1 ] || [ $rc -ne 0 ]; then echo "logs in $work" >&2; else rm -rf "$work"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { "$B" --free-port; }
wait_ok() { # URL SECS
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)" = 200 ] && return 0
        sleep 0.1
    done
    echo "cost.sh: $1 not ready" >&2
    return 1
}

np=$(port)
mp=$(port)
nats-server -js -a 127.0.0.1 -p "$np" -m "$mp" -sd "$work/js" >"$work/nats.log" 2>&1 &
NATS=$!
pids+=("$NATS")
wait_ok "http://127.0.0.1:$mp/varz" 20
SECRET=$(openssl rand -hex 32)
export SLUICE_JWT_SECRET="$SECRET"
common=(SLUICE_NATS_URL="nats://127.0.0.1:$np" SLUICE_ECHO_TOKEN_DELAY_MS=0
    SLUICE_AGENTS_FILE="$root/bench/peers/agents.json" SLUICE_LOG_LEVEL=warn
    SLUICE_HANDSHAKE_RATE=100000 SLUICE_HANDSHAKE_BURST=100000)
oa=$(port)
env "${common[@]}" SLUICE_ADMIN_LISTEN="127.0.0.1:$oa" "$bin/sluice-orchestrator" >"$work/orch.log" 2>&1 &
ORCH=$!
pids+=("$ORCH")
wait_ok "http://127.0.0.1:$oa/readyz" 30
wa=$(port)
env "${common[@]}" SLUICE_ADMIN_LISTEN="127.0.0.1:$wa" "$bin/sluice-worker" >"$work/wrk.log" 2>&1 &
WRK=$!
pids+=("$WRK")
wait_ok "http://127.0.0.1:$wa/readyz" 30
WRK_READY=$SECONDS
gp=$(port)
ga=$(port)
env "${common[@]}" SLUICE_LISTEN="127.0.0.1:$gp" SLUICE_ADMIN_LISTEN="127.0.0.1:$ga" \
    "$bin/sluice-gateway" >"$work/gw.log" 2>&1 &
GW=$!
pids+=("$GW")
wait_ok "http://127.0.0.1:$ga/readyz" 30

load() { # LABEL RATES DURATION
    timeout -k 5 300 "$B" --scenario pipeline --url "ws://127.0.0.1:$gp/v1/ws" --conns "$conns" \
        --rates "$2" --duration "$3" --warmup 1 --drain 3 --size 64 --text-prefix "ask " \
        --slo-ms 500 --pid "$GW" --aux-pid "$NATS" --aux-pid "$ORCH" --aux-pid "$WRK" \
        --label "$1" --out "$work/$1.json" 2>"$work/$1.err"
}

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # clock ticks
snap() {                                            # FILE
    {
        printf '{"connz":'
        curl -s "http://127.0.0.1:$mp/connz?limit=1024"
        printf ',"jsz":'
        curl -s "http://127.0.0.1:$mp/jsz?streams=true&consumers=true"
        printf ',"orch":'
        { { curl -s "http://127.0.0.1:$oa/metrics"; curl -s "http://127.0.0.1:$wa/metrics"; } |
            grep -E '^sluice_orch_(round_trips|events|batches)|^sluice_wrk_pull_requests_total' || true; } |
            jq -Rs '[split("\n")[] | select(length > 0) | split(" ") | {key: .[0], value: (.[1] | tonumber)}] | from_entries'
        printf ',"cpu":{"nats":%s,"orch":%s,"wrk":%s,"gw":%s}}\n' "$(cpu "$NATS")" "$(cpu "$ORCH")" \
            "$(cpu "$WRK")" "$(cpu "$GW")"
    } >"$1"
}

# A first short run creates the consumers and warms every path.
load warm 50 1 >/dev/null || true
# A worker checks the cancel bucket for every job whose message is not
# clearly younger (WRK_CANCEL_SKEW_MS, 10 s) than its cancel subscription:
# one KV read per job in its first 10 s. Measure the steady state after it.
while [ $((SECONDS - WRK_READY)) -lt 12 ]; do sleep 0.5; done
snap "$work/before.json"
if [ -n "$perf_out" ]; then
    case "${PERF_TIER:-orch}" in
    gw) ppid=$GW ;; wrk) ppid=$WRK ;; nats) ppid=$NATS ;; *) ppid=$ORCH ;;
    esac
    # shellcheck disable=SC2086 # PERF_ARGS is a list of words
    perf record ${PERF_ARGS:--g} -o "$perf_out" -p "$ppid" 2>"$work/perf.err" &
    PERF=$!
fi
# Mid-run: which consumer has a backlog (the tier that is behind).
( sleep $((2 + duration / 2)); curl -s "http://127.0.0.1:$mp/jsz?consumers=true" | jq -c \
    '[.account_details[]?.stream_detail[]?.consumer_detail[]? | {(.name): {pending: .num_pending, ack_pending: .num_ack_pending}}] | add' \
    >"$work/mid.json" 2>/dev/null ) &
load run "$rates" "$duration" || echo "cost.sh: load run failed: $(tail -c 300 "$work/run.err")" >&2
sleep 1
if [ -n "$perf_out" ]; then
    kill -INT "$PERF" 2>/dev/null || true
    wait "$PERF" 2>/dev/null || true
fi
snap "$work/after.json"

tck=$(getconf CLK_TCK)
jq -n --slurpfile a "$work/before.json" --slurpfile b "$work/after.json" \
    --slurpfile r "$work/run.json" --slurpfile m "$work/mid.json" --argjson tck "$tck" '
  ($a[0]) as $A | ($b[0]) as $B |
  def conns(s): [s.connz.connections[] | {name: (.name // "?"), in: .in_msgs, out: .out_msgs}]
    | group_by(.name) | map({key: .[0].name, value: {in: (map(.in) | add), out: (map(.out) | add)}})
    | from_entries;
  def streams(s): [s.jsz.account_details[]?.stream_detail[]? | {key: .name, value: .state.last_seq}]
    | from_entries;
  def acks(s): [s.jsz.account_details[]?.stream_detail[]? | .consumer_detail[]? |
    {key: (.stream_name + "/" + .name), value: .ack_floor.consumer_seq}] | from_entries;
  def orch(s): s.orch;
  (orch($B)["sluice_orch_events_total{kind=\"user\"}"] - orch($A)["sluice_orch_events_total{kind=\"user\"}"]) as $ev |
  {user_messages: $ev,
   per_message: {
     connections: (conns($B) | with_entries(.value = {
        in: (((.value.in - (conns($A)[.key].in // 0)) / $ev * 100 | round) / 100),
        out: (((.value.out - (conns($A)[.key].out // 0)) / $ev * 100 | round) / 100)})),
     stream_writes: (streams($B) | with_entries(.value = (((.value - (streams($A)[.key] // 0)) / $ev * 100 | round) / 100))),
     orch_metrics: (orch($B) | with_entries(.value = (((.value - (orch($A)[.key] // 0)) / $ev * 1000 | round) / 1000))),
     cpu_ms: ($B.cpu | with_entries(.value = (((.value - $A.cpu[.key]) * 1000 / $tck / $ev * 1000 | round) / 1000)))
   },
   backlog_mid_run: $m[0],
   bench: $r[0]}'
