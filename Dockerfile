# Sluice container image: one build, one runtime base, one target per tier.
#
#   docker build --target gateway      -t sluice/gateway:dev .
#   docker build --target orchestrator -t sluice/orchestrator:dev .
#   docker build --target worker       -t sluice/worker:dev .
#
# Every target holds all four binaries (sluicectl included, for `kubectl
# exec ... sluicectl status`) and the web client (web/: the demo page and
# client/sluice.js, served by the gateway at /); the target only picks the
# entry point, the exposed ports and the health check. docker-compose.yml builds the three
# targets; deploy/k8s uses the same image names. `make deploy-check`
# (deploy/check.sh) verifies that these names, ports and targets agree.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------
# build: the same Debian packages scripts/deps.sh installs for a build.
FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc make pkg-config protobuf-c-compiler \
        libnats-dev libwebsockets-dev libwebsockets-evlib-ev libev-dev libcjson-dev libprotobuf-c-dev \
        libcurl4-openssl-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN make -j"$(nproc)" all \
 && install -d /out/bin /out/web \
 && install -m 0755 bin/sluice-gateway bin/sluice-orchestrator bin/sluice-worker bin/sluicectl \
        /out/bin/ \
 && if [ -d web ]; then \
        tar -C web --exclude=node_modules --exclude=test --exclude='package*.json' \
            --exclude='*.mk' --exclude='*.md' -cf - . | tar -C /out/web -xf -; \
    fi

# ---------------------------------------------------------------------------
# runtime: only the shared libraries the binaries link against (the runtime
# halves of the -dev packages above, plus libwebsockets-evlib-ev, the plugin
# lws loads at run time to run on the gateway's libev loop), CA certificates
# for the openai backend, and curl for the health check.
FROM ${DEBIAN_IMAGE} AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libnats3.4 libwebsockets17 libwebsockets-evlib-ev libev4 libcjson1 libprotobuf-c1 \
        libcurl4 libssl3 \
        ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin sluice \
 && install -d -o 10001 -g 10001 /etc/sluice
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build /out/web/ /usr/share/sluice/web/
COPY deploy/agents.json /etc/sluice/agents.json
ENV SLUICE_LOG_LEVEL=info
USER 10001:10001
WORKDIR /nonexistent
STOPSIGNAL SIGTERM

# ---------------------------------------------------------------------------
# Each tier's HEALTHCHECK takes the port from SLUICE_ADMIN_LISTEN at run
# time, so an address changed through the environment is still checked.
FROM runtime AS orchestrator
ENV SLUICE_ADMIN_LISTEN=0.0.0.0:9091 \
    SLUICE_AGENTS_FILE=/etc/sluice/agents.json
EXPOSE 9091
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${SLUICE_ADMIN_LISTEN##*:}/healthz" || exit 1
ENTRYPOINT ["/usr/local/bin/sluice-orchestrator"]

# ---------------------------------------------------------------------------
FROM runtime AS worker
ENV SLUICE_ADMIN_LISTEN=0.0.0.0:9092
EXPOSE 9092
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${SLUICE_ADMIN_LISTEN##*:}/healthz" || exit 1
ENTRYPOINT ["/usr/local/bin/sluice-worker"]

# ---------------------------------------------------------------------------
# The gateway is the last stage, so a plain `docker build .` gives it.
FROM runtime AS gateway
ENV SLUICE_LISTEN=0.0.0.0:8080 \
    SLUICE_ADMIN_LISTEN=0.0.0.0:9090 \
    SLUICE_WEB_ROOT=/usr/share/sluice/web
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS -o /dev/null "http://127.0.0.1:${SLUICE_ADMIN_LISTEN##*:}/healthz" || exit 1
ENTRYPOINT ["/usr/local/bin/sluice-gateway"]
