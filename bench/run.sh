#!/usr/bin/env bash
# bench/run.sh: the Sluice benchmark suite.
#
# Starts each system under test on 127.0.0.1 (free ports, temporary stores),
# drives it with bin/sluice-bench, stops it, and moves on; so every system
# gets the same 2 cores and the same client. Then writes
# bench/results/<timestamp>.json, PNG charts (bench/plot.sh) and the
# generated part of BENCHMARKS.md (bench/report.sh).
#
#   bench/run.sh [--suite short|full|60k|dev] [--bin DIR] [--only sluice,nats,nchan,socketio]
#                [--scenarios idle,fanout,pipeline,storm,noisy] [--no-report] [--keep]
#
# short: every scenario at a modest size, under 10 minutes (make bench).
# full:  the sizes of the targets (about 20 minutes).
# 60k:   4 gateways, 4 client processes, 60k connections, each joins one of 100 rooms.
# dev:   tiny sizes, a smoke test of the machinery (a minute).
# --scenarios runs only the scenarios listed (default: all of the suite).
#
# Every load is bounded: each client run has its own duration and counts and
# is also wrapped in timeout(1); every server started here is stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
suite=short
bin="$root/bin"
only="sluice,nats,nchan,socketio"
scenarios="idle,fanout,pipeline,storm,noisy"
report=1
keep=0

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
    --suite) suite=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --no-report) report=0; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$bin" in /*) ;; *) bin="$root/$bin" ;; esac
B="$bin/sluice-bench"
[ -x "$B" ] || { echo "run.sh: $B missing (make bench-bin)" >&2; exit 2; }

# ------------------------------------------------------------ parameters
# Same shape for every system. FAN_CONFIGS lists fan-out runs as
# MEMBERS:PUBLISHES_PER_S:PUBLISHERS[:DRAIN_S], 200-byte texts; the publishes
# are spread over several connections because Sluice allows 20 frames/s per
# connection. The 1000 x 2000/s run offers 2M deliveries/s, more than any
# system here keeps up with: its delivered/s (window messages over the time
# to the last of them) is the rate at which a server drains a backlog.
# The storms offer about the same deliveries/s (members x publishes/s:
# 2000 x 20, 15000 x 2), so that they measure resumption, not the box's
# fan-out capacity (15000 x 20/s is 300k deliveries/s on 2 shared cores).
case "$suite" in
short)
    IDLE_N=5000 IDLE_HOLD=4 IDLE_HB=2
    FAN_CONFIGS="1000:20:4 1000:100:10 1000:2000:125:10" FAN_DUR=5 FAN_WARM=1
    PIPE_N=400 PIPE_RATES=250,500,1000,2000,4000 PIPE_DUR=4
    NOISY_B_N=20 NOISY_B_RATE=20 NOISY_A_N=100 NOISY_A_RATE=500 NOISY_DUR=5 NOISY_DELAY_MS=20
    STORM_N=2000 STORM_P=20 STORM_PUBS=2 STORM_GW=2
    ;;
full)
    IDLE_N=18000 IDLE_HOLD=10 IDLE_HB=5
    FAN_CONFIGS="1000:20:4 1000:100:10 10000:10:4 100:1000:70 1000:2000:125:15" FAN_DUR=10 FAN_WARM=2
    PIPE_N=600 PIPE_RATES=500,1000,2000,2500,4000,5000,6000,8000 PIPE_DUR=8
    NOISY_B_N=20 NOISY_B_RATE=20 NOISY_A_N=100 NOISY_A_RATE=500 NOISY_DUR=10 NOISY_DELAY_MS=20
    STORM_N=15000 STORM_P=2 STORM_PUBS=2 STORM_GW=4
    ;;
dev)
    IDLE_N=300 IDLE_HOLD=1 IDLE_HB=0.5
    FAN_CONFIGS="100:40:4" FAN_DUR=2 FAN_WARM=0.5
    PIPE_N=40 PIPE_RATES=50,100 PIPE_DUR=2
    NOISY_B_N=5 NOISY_B_RATE=10 NOISY_A_N=10 NOISY_A_RATE=100 NOISY_DUR=2 NOISY_DELAY_MS=20
    STORM_N=100 STORM_P=10 STORM_PUBS=1 STORM_GW=2
    ;;
60k)
    # Every connection says hello and joins one of MULTI_ROOMS rooms, then
    # holds for MULTI_HOLD seconds with heartbeats.
    MULTI_GW=4 MULTI_CLIENTS=4 MULTI_PER_CLIENT=15000 MULTI_HOLD=60 MULTI_ROOMS=100
    only=sluice
    ;;
*) echo "run.sh: unknown suite $suite" >&2; exit 2 ;;
esac
FAN_SIZE=200
ROOM=bench

ts=$(date -u +%Y%m%dT%H%M%SZ)
resdir="$root/bench/results"
mkdir -p "$resdir"
work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
mkdir -p "$work/runs"
: >"$work/runs.jsonl"
: >"$work/commands.txt"
started=()
LAST_PID=

log() { printf '[bench %4ds] %s\n' "$SECONDS" "$*" >&2; }

# Starts a server in the background; its pid goes to LAST_PID and to the
# list stopped on exit.
start_bg() {
    local name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    LAST_PID=$!
    started+=("$LAST_PID")
}

# Stops one process we started: SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_all() {
    local i
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        stop_pid "${started[$i]}"
    done
    started=()
}

cleanup() {
    local rc=$?
    stop_all
    if [ "$keep" = 1 ] || [ $rc -ne 0 ]; then
        log "logs kept in $work"
    else
        rm -rf "$work"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
    local port=$1 secs=${2:-20} i
    for ((i = 0; i < secs * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

wait_ready() {
    local port=$1 secs=${2:-30} i code
    for ((i = 0; i < secs * 10; i++)); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/readyz" || true)
        [ "$code" = 200 ] && return 0
        sleep 0.1
    done
    return 1
}

free_port() { "$B" --free-port; }

# Pids of a process and its direct children (nginx master + workers).
# shellcheck disable=SC2046 # one pid a word
with_children() { echo "$1" $(pgrep -P "$1" || true); }

pid_args() {
    local flag=$1 p
    shift
    for p in "$@"; do printf -- '%s %s ' "$flag" "$p"; done
}

# run_case LABEL SYSTEM LIMIT_S ARGS...: one client run, its JSON appended to
# runs.jsonl with the system name; a failed run is recorded as such.
run_case() {
    local label=$1 system=$2 limit=$3
    shift 3
    local out="$work/runs/$label.json"
    log "$label"
    printf '%s\n' "sluice-bench $*" | sed -E -e "s#$root/##g" -e 's#127\.0\.0\.1:[0-9]+#127.0.0.1:PORT#g' \
        -e 's#--(aux-)?pid [0-9]+#--\1pid PID#g' >>"$work/commands.txt"
    if timeout -k 5 "$limit" "$B" "$@" --label "$label" --out "$out" 2>"$work/runs/$label.err"; then
        jq -c --arg system "$system" '. + {system: $system}' "$out" >>"$work/runs.jsonl"
    else
        local rc=$?
        log "$label failed (exit $rc): $(tail -c 300 "$work/runs/$label.err" | tr '\n' ' ')"
        jq -nc --arg label "$label" --arg system "$system" --argjson rc "$rc" \
            '{label: $label, system: $system, error: ("exit " + ($rc | tostring))}' >>"$work/runs.jsonl"
    fi
}

want() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
scen() { case ",$scenarios," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# --------------------------------------------------------------- peers
peer_cases() {
    # peer_cases SYSTEM PROTO SUB_URL PUB_URL PIDS...
    local system=$1 proto=$2 sub=$3 pub=$4
    shift 4
    local pids=("$@")
    # shellcheck disable=SC2046 # pid_args yields words on purpose
    scen idle && run_case "idle-$system" "$system" 120 --scenario idle --proto "$proto" --url "$sub" \
        --conns "$IDLE_N" --duration "$IDLE_HOLD" --heartbeat "$IDLE_HB" --room idle \
        $(pid_args --pid "${pids[@]}")
    scen fanout || return 0
    local cfg n p k d
    for cfg in $FAN_CONFIGS; do
        IFS=: read -r n p k d <<<"$cfg"
        # shellcheck disable=SC2046
        run_case "fanout-$system-${n}x$p" "$system" 120 --scenario fanout --proto "$proto" \
            --url "$sub" --pub-url "$pub" --conns "$n" --pubs "$k" --rate "$p" --size "$FAN_SIZE" \
            --duration "$FAN_DUR" --warmup "$FAN_WARM" --drain "${d:-3}" --room "$ROOM" \
            $(pid_args --pid "${pids[@]}")
    done
}

run_nats_peer() {
    local port wsport pid
    port=$(free_port)
    wsport=$(free_port)
    sed -e "s/@PORT@/$port/" -e "s/@WSPORT@/$wsport/" "$root/bench/peers/nats.conf.in" >"$work/nats-peer.conf"
    start_bg nats-peer nats-server -c "$work/nats-peer.conf"
    pid=$LAST_PID
    wait_port "$wsport" 20 || { log "nats-server did not start"; return 1; }
    peer_cases nats nats "ws://127.0.0.1:$wsport/" "ws://127.0.0.1:$wsport/" "$pid"
    stop_all
}

run_nchan_peer() {
    local port pid
    port=$(free_port)
    mkdir -p "$work/nginx"
    sed -e "s#@PREFIX@#$work/nginx#g" -e "s/@PORT@/$port/" "$root/bench/peers/nchan.conf.in" >"$work/nginx/nginx.conf"
    start_bg nchan-peer nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;'
    pid=$LAST_PID
    wait_port "$port" 20 || { log "nginx did not start"; return 1; }
    # shellcheck disable=SC2046
    peer_cases nchan nchan "ws://127.0.0.1:$port/sub/$ROOM" "ws://127.0.0.1:$port/pub/$ROOM" $(with_children "$pid")
    stop_all
}

run_socketio_peer() {
    local port pid url
    port=$(free_port)
    start_bg socketio-peer node "$root/bench/peers/socketio/server.js" "$port"
    pid=$LAST_PID
    wait_port "$port" 20 || { log "socket.io peer did not start"; return 1; }
    url="ws://127.0.0.1:$port/socket.io/?EIO=4&transport=websocket"
    peer_cases socketio socketio "$url" "$url" "$pid"
    stop_all
}

# -------------------------------------------------------------- sluice
SECRET=$(openssl rand -hex 32)
NATS_PID='' ORCH_PID='' WRK_PID=''
GW_PIDS=() GW_PORTS=()

# start_sluice NGATEWAYS [VAR=VALUE ...]: nats-server -js with a temporary
# store, one orchestrator, one worker, N gateways; waits for every /readyz.
start_sluice() {
    local ngw=$1 np a i gp ga
    shift
    local extra=("$@")
    np=$(free_port)
    rm -rf "$work/js"
    mkdir -p "$work/js"
    start_bg nats-js nats-server -js -a 127.0.0.1 -p "$np" -sd "$work/js"
    NATS_PID=$LAST_PID
    wait_port "$np" 20 || { log "nats-server -js did not start"; return 1; }
    local common=(SLUICE_NATS_URL="nats://127.0.0.1:$np" SLUICE_JWT_SECRET="$SECRET"
        SLUICE_ECHO_TOKEN_DELAY_MS=0 SLUICE_AGENTS_FILE="$root/bench/peers/agents.json"
        SLUICE_LOG_LEVEL=warn)
    a=$(free_port)
    start_bg orchestrator env "${common[@]}" SLUICE_ADMIN_LISTEN="127.0.0.1:$a" "${extra[@]}" \
        "$bin/sluice-orchestrator"
    ORCH_PID=$LAST_PID
    wait_ready "$a" 30 || { log "orchestrator not ready"; return 1; }
    a=$(free_port)
    start_bg worker env "${common[@]}" SLUICE_ADMIN_LISTEN="127.0.0.1:$a" "${extra[@]}" \
        "$bin/sluice-worker"
    WRK_PID=$LAST_PID
    wait_ready "$a" 30 || { log "worker not ready"; return 1; }
    GW_PIDS=()
    GW_PORTS=()
    for ((i = 0; i < ngw; i++)); do
        gp=$(free_port)
        ga=$(free_port)
        start_bg "gateway$i" env "${common[@]}" SLUICE_LISTEN="127.0.0.1:$gp" \
            SLUICE_ADMIN_LISTEN="127.0.0.1:$ga" "${extra[@]}" "$bin/sluice-gateway"
        GW_PIDS+=("$LAST_PID")
        GW_PORTS+=("$gp")
        wait_ready "$ga" 30 || { log "gateway $i not ready"; return 1; }
    done
}

gw_urls() {
    local p
    for p in "${GW_PORTS[@]}"; do printf -- '--url ws://127.0.0.1:%s/v1/ws ' "$p"; done
}

aux_args() { pid_args --aux-pid "$NATS_PID" "$ORCH_PID" "$WRK_PID"; }

have_sluice() {
    local b
    for b in sluice-gateway sluice-orchestrator sluice-worker; do
        [ -x "$bin/$b" ] || { log "sluice: $bin/$b missing, skipped"; return 1; }
    done
}

run_sluice() {
    have_sluice || {
        jq -nc '{label: "sluice", system: "sluice", error: "binaries missing"}' >>"$work/runs.jsonl"
        return 0
    }
    export SLUICE_JWT_SECRET="$SECRET"
    # Capacity runs: the handshake limiter is opened up so idle and fanout
    # measure what the gateway can do, not the limiter's setting; so is the
    # slow-consumer bound (1 MiB queued per client by default), so that the
    # overload run measures how fast a backlog drains instead of cutting the
    # members the client cannot read fast enough (the frames are shared by
    # every member: the bytes counted per member are not memory per member).
    if scen idle || scen fanout || scen pipeline; then
        start_sluice 1 SLUICE_HANDSHAKE_RATE=100000 SLUICE_HANDSHAKE_BURST=100000 \
            SLUICE_OUTQ_MAX_BYTES=268435456 SLUICE_OUTQ_MAX_FRAMES=10000000 || return 1
    fi
    # shellcheck disable=SC2046
    scen idle && run_case idle-sluice sluice 120 --scenario idle $(gw_urls) --no-join --conns "$IDLE_N" \
        --duration "$IDLE_HOLD" --heartbeat "$IDLE_HB" --pid "${GW_PIDS[0]}" $(aux_args)
    local cfg n p k d
    scen fanout && for cfg in $FAN_CONFIGS; do
        IFS=: read -r n p k d <<<"$cfg"
        # shellcheck disable=SC2046
        run_case "fanout-sluice-${n}x$p" sluice 180 --scenario fanout $(gw_urls) --conns "$n" \
            --pubs "$k" --rate "$p" --size "$FAN_SIZE" --duration "$FAN_DUR" \
            --warmup "$FAN_WARM" --drain "${d:-3}" --room "$ROOM" --pid "${GW_PIDS[0]}" $(aux_args)
    done
    # shellcheck disable=SC2046
    scen pipeline && run_case pipeline-sluice sluice 240 --scenario pipeline $(gw_urls) --conns "$PIPE_N" \
        --rates "$PIPE_RATES" --duration "$PIPE_DUR" --warmup 1 --drain 3 --size 64 \
        --text-prefix "ask " --slo-ms 500 --pid "${GW_PIDS[0]}" $(aux_args)
    stop_all
    scen storm && run_sluice_storm
    scen noisy && run_sluice_noisy
    return 0
}

run_sluice_storm() {
    # Storm with the product's own handshake limiter (defaults).
    # The members are spread over STORM_GW gateways (round robin), as behind
    # a load balancer; a member may resume on any of them.
    start_sluice "$STORM_GW" || return 1
    # shellcheck disable=SC2046
    run_case storm-sluice sluice 240 --scenario storm $(gw_urls) --conns "$STORM_N" \
        --pubs "$STORM_PUBS" --rate "$STORM_P" --duration 2 --warmup 2 --drain 10 \
        --storm-timeout 90 --max-pending 512 --room storm $(pid_args --pid "${GW_PIDS[@]}") \
        $(aux_args)
    stop_all
}

run_sluice_noisy() {
    # Noisy neighbour: a slow model (echo delay per token) so that the
    # workers' capacity is small and tenant A offers many times what they do.
    start_sluice 1 SLUICE_ECHO_TOKEN_DELAY_MS="$NOISY_DELAY_MS" || return 1
    # shellcheck disable=SC2046
    run_case noisy-sluice sluice 180 --scenario noisy $(gw_urls) --conns "$NOISY_B_N" \
        --conns-a "$NOISY_A_N" --rate "$NOISY_B_RATE" --rate-a "$NOISY_A_RATE" --size 64 \
        --text-prefix "ask " --duration "$NOISY_DUR" --warmup 1 --drain 5 \
        --tenant quiet --tenant-a noisy --model-ms 0 --pid "${GW_PIDS[0]}" $(aux_args)
    stop_all
}

# 60k idle: MULTI_GW gateways, MULTI_CLIENTS client processes, each spread
# over every gateway and its own 127.N.x.y source addresses.
run_60k() {
    have_sluice || return 1
    export SLUICE_JWT_SECRET="$SECRET"
    start_sluice "$MULTI_GW" SLUICE_HANDSHAKE_RATE=100000 SLUICE_HANDSHAKE_BURST=100000 || return 1
    local base_rss=0 held_rss=0 p i cpids=() ready k
    for p in "${GW_PIDS[@]}"; do base_rss=$((base_rss + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done
    for ((i = 0; i < MULTI_CLIENTS; i++)); do
        printf '%s\n' "sluice-bench --scenario idle $(gw_urls | sed 's/[0-9]\{4,5\}/PORT/g')--room r60k --rooms $MULTI_ROOMS --conns $MULTI_PER_CLIENT --src-octet $((11 + i)) --duration $MULTI_HOLD --heartbeat 10 --connect-timeout 240 --max-pending 128" >>"$work/commands.txt"
        # shellcheck disable=SC2046
        timeout -k 5 $((MULTI_HOLD + 300)) "$B" --scenario idle $(gw_urls) \
            --room r60k --rooms "$MULTI_ROOMS" \
            --conns "$MULTI_PER_CLIENT" --src-octet $((11 + i)) --duration "$MULTI_HOLD" \
            --heartbeat 10 --connect-timeout 240 --max-pending 128 --label "idle60k-client$i" \
            --ready-file "$work/ready$i" --out "$work/runs/idle60k-client$i.json" \
            2>"$work/runs/idle60k-client$i.err" &
        cpids+=($!)
    done
    log "60k: waiting for ${MULTI_CLIENTS} clients to connect"
    for ((k = 0; k < 2600; k++)); do
        ready=0
        for ((i = 0; i < MULTI_CLIENTS; i++)); do [ -f "$work/ready$i" ] && ready=$((ready + 1)); done
        [ "$ready" -eq "$MULTI_CLIENTS" ] && break
        sleep 0.1
    done
    sleep 2
    local per_gw=()
    for p in "${GW_PIDS[@]}"; do
        local r
        r=$(awk '/VmRSS/{print $2}' "/proc/$p/status")
        held_rss=$((held_rss + r))
        per_gw+=("$r")
    done
    for p in "${cpids[@]}"; do wait "$p" || true; done
    jq -sc --argjson base "$base_rss" --argjson held "$held_rss" \
        --argjson gws "$MULTI_GW" --argjson per "$(printf '%s\n' "${per_gw[@]}" | jq -sc .)" '
        {scenario: "idle60k", system: "sluice", label: "idle60k-sluice", gateways: $gws,
         client_processes: length,
         connections: (map(.connections) | add), connected: (map(.connected) | add),
         errors: (map(.errors) | add), handshake_refusals: (map(.handshake_refusals) | add),
         held_at_end: (map(.held_at_end) | add),
         connect_s: (map(.connect_s) | max),
         connect_rate: ((map(.connected) | add) / (map(.connect_s) | max)),
         server_base: {rss_kib: $base}, server_held: {rss_kib: $held}, gateway_rss_kib: $per,
         rss_per_conn_bytes: ((($held - $base) * 1024) / (map(.connected) | add)),
         clients: .}' "$work"/runs/idle60k-client*.json >>"$work/runs.jsonl"
    stop_all
}

# ----------------------------------------------------------------- main
log "suite $suite, results $resdir/$ts.json, work dir $work"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
"$root/bench/peers/install.sh"

if [ "$suite" = 60k ]; then
    run_60k || { log "60k run failed"; stop_all; }
else
    # A system that fails to start is logged and recorded; the rest go on.
    if want nats; then run_nats_peer || { log "nats peer failed"; stop_all; }; fi
    if want nchan; then run_nchan_peer || { log "nchan peer failed"; stop_all; }; fi
    if want socketio; then run_socketio_peer || { log "socket.io peer failed"; stop_all; }; fi
    if want sluice; then run_sluice || { log "sluice failed"; stop_all; }; fi
fi

machine=$(jq -nc \
    --arg cpu "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
    --arg cores "$(nproc)" \
    --arg mem "$(free -g | awk '/^Mem:/{print $2}')" \
    --arg kernel "$(uname -r)" \
    --arg os "Debian $(cat /etc/debian_version 2>/dev/null || echo '?')" \
    --arg nofile "$(ulimit -n)" \
    --arg load "$load_start / $(cut -d' ' -f1-3 /proc/loadavg)" \
    --arg nats "$(nats-server --version 2>&1 | head -1)" \
    --arg nginx "$(nginx -v 2>&1 | head -1)" \
    --arg nchan "$(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || echo '?')" \
    --arg node "$(node --version 2>/dev/null || echo '?')" \
    --arg sio "$(jq -r .version "$root/bench/peers/socketio/node_modules/socket.io/package.json" 2>/dev/null || echo '?')" \
    --arg commit "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')" \
    '{cpu: $cpu, cores: ($cores | tonumber), mem_gib: ($mem | tonumber), kernel: $kernel, os: $os,
      open_files: $nofile, commit: $commit, load_avg_start_end: $load,
      versions: {"nats-server": $nats, nginx: $nginx, nchan: $nchan, node: $node, "socket.io": $sio}}')

out="$resdir/$ts.json"
jq -n --arg ts "$ts" --arg suite "$suite" --argjson machine "$machine" \
    --argjson secs "$SECONDS" \
    --slurpfile runs "$work/runs.jsonl" \
    --rawfile cmds "$work/commands.txt" \
    '{timestamp: $ts, suite: $suite, elapsed_s: $secs, machine: $machine,
      commands: ($cmds | split("\n") | map(select(length > 0))), runs: $runs}' >"$out"
log "wrote $out"

if [ "$report" = 1 ]; then
    "$root/bench/plot.sh" "$out" || log "plot failed"
    "$root/bench/report.sh" "$out" "$root/BENCHMARKS.md"
    log "updated BENCHMARKS.md"
fi
log "done in ${SECONDS}s"
