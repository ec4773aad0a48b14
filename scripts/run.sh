#!/usr/bin/env bash
# `make run`: a local nats-server with JetStream (store under var/) and the
# three tiers with the echo model, in dev mode. Prints the demo URL and a
# ready-made token; Ctrl-C stops everything.
#
# With MODEL_URL set (make run MODEL_URL=http://127.0.0.1:11434 MODEL=llama3.2),
# the worker calls that OpenAI-compatible server (Ollama, llama.cpp's server,
# vLLM) instead of the echo model, with MODEL as the model name it asks for
# and MODEL_API_KEY as the bearer key if the server wants one.
set -euo pipefail
cd "$(dirname "$0")/.."

VAR=${SLUICE_VAR:-var}
NATS_PORT=${NATS_PORT:-4222}
WS_PORT=${WS_PORT:-8080}
mkdir -p "$VAR/nats" "$VAR/log"
[ -s "$VAR/jwt-secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$VAR/jwt-secret"

export SLUICE_JWT_SECRET="$(cat "$VAR/jwt-secret")"
export SLUICE_NATS_URL="nats://127.0.0.1:${NATS_PORT}"
export SLUICE_LOG_LEVEL="${SLUICE_LOG_LEVEL:-info}"

pids=()
stop() {
    trap - INT TERM EXIT
    echo; echo "stopping..."
    for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 1 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    echo "stopped"
}
trap stop INT TERM EXIT

wait_ready() { # name url
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null "$2" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$1 did not become ready; see $VAR/log/$1.log" >&2
    tail -20 "$VAR/log/$1.log" >&2 || true
    exit 1
}

nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -m $((NATS_PORT + 4000)) -sd "$VAR/nats" \
    > "$VAR/log/nats.log" 2>&1 &
pids+=($!)
wait_ready nats "http://127.0.0.1:$((NATS_PORT + 4000))/healthz?js-enabled-only=true"

model_desc="the echo model (it repeats your message, word by word)"
if [ -n "${MODEL_URL:-}" ]; then
    [ -n "${MODEL:-}" ] || { echo "make run: MODEL_URL needs MODEL (the model name the server knows)" >&2; exit 2; }
    case "$MODEL" in *[!A-Za-z0-9._:/-]*) echo "make run: MODEL '$MODEL' has characters a model name does not" >&2; exit 2 ;; esac
    # The demo's agents, each asking the real model for MODEL.
    cat > "$VAR/agents.json" <<AGENTS
{"agents":[
 {"name":"assistant","model":"default","backend_model":"$MODEL","match":"all",
  "system_prompt":"You are a helpful assistant in a group chat. Answer briefly and to the point.",
  "fallback":"Sorry, I can't answer right now. Please try again in a moment."},
 {"name":"summarizer","model":"default","backend_model":"$MODEL","match":"mention","max_concurrent":8,
  "system_prompt":"You summarize the recent conversation of the room in a few bullet points.",
  "fallback":"Sorry, I can't summarize right now."}
]}
AGENTS
    export SLUICE_AGENTS_FILE="$VAR/agents.json"
    export SLUICE_MODEL_BACKEND=openai SLUICE_MODEL_URL="$MODEL_URL"
    export SLUICE_MODEL_TIMEOUT_MS="${SLUICE_MODEL_TIMEOUT_MS:-60000}"
    [ -z "${MODEL_API_KEY:-}" ] || export SLUICE_MODEL_API_KEY="$MODEL_API_KEY"
    model_desc="$MODEL at $MODEL_URL (OpenAI-compatible)"
fi

SLUICE_ADMIN_LISTEN=127.0.0.1:9091 bin/sluice-orchestrator > "$VAR/log/orchestrator.log" 2>&1 &
pids+=($!)
SLUICE_ADMIN_LISTEN=127.0.0.1:9092 SLUICE_ECHO_TOKEN_DELAY_MS="${SLUICE_ECHO_TOKEN_DELAY_MS:-60}" \
    bin/sluice-worker > "$VAR/log/worker.log" 2>&1 &
pids+=($!)
SLUICE_ADMIN_LISTEN=127.0.0.1:9090 SLUICE_LISTEN="0.0.0.0:${WS_PORT}" SLUICE_DEV_MODE=1 \
    SLUICE_WEB_ROOT="$PWD/web" bin/sluice-gateway > "$VAR/log/gateway.log" 2>&1 &
pids+=($!)
wait_ready orchestrator http://127.0.0.1:9091/readyz
wait_ready worker http://127.0.0.1:9092/readyz
wait_ready gateway http://127.0.0.1:9090/readyz

token=$(bin/sluicectl token --tenant demo --sub "$(whoami)" --ttl 86400)
cat <<MSG

Sluice is running.
  Demo page:   http://127.0.0.1:${WS_PORT}/
  WebSocket:   ws://127.0.0.1:${WS_PORT}/v1/ws   (subprotocol sluice.v1)
  Token:       ${token}
  Model:       ${model_desc}
  Metrics:     http://127.0.0.1:9090/metrics (gateway), :9091 (orchestrator), :9092 (worker)
  Logs:        ${VAR}/log/
Press Ctrl-C to stop.
MSG
# Stay up until a tier dies or Ctrl-C.
wait -n "${pids[@]}"
echo "a process exited; see $VAR/log/" >&2
