#include "gw_config.h"

#include <stdio.h>
#include <string.h>

#include "gw_protocol.h"

/* The options table: every variable, its flag, default, help and bounds. */
static void build_opts(gw_config *c)
{
    sl_cfg_opt *o = c->opts;
    const sl_cfg_opt gw[GW_CONFIG_OPTS_N - SL_COMMON_OPTS_N] = {
        {"SLUICE_LISTEN", "listen", SL_CFG_ADDR, "0.0.0.0:8080", "WebSocket and HTTP address",
         &c->listen, 0, 0, true, false},
        {"SLUICE_JWT_SECRET", "jwt-secret", SL_CFG_STR, NULL, "HS256 secret for client JWTs",
         &c->jwt_secret, 0, 0, false, true},
        {"SLUICE_JWT_PUBLIC_KEY", "jwt-public-key", SL_CFG_STR, NULL,
         "PEM file of an RS256 public key for client JWTs", &c->jwt_public_key, 0, 0, false, false},
        {"SLUICE_RESUME_SECRET", "resume-secret", SL_CFG_STR, NULL,
         "HMAC secret for resume tokens, the same on every gateway (default: the JWT secret)",
         &c->resume_secret, 0, 0, false, true},
        {"SLUICE_TLS_CERT", "tls-cert", SL_CFG_STR, NULL, "PEM certificate: serve wss://",
         &c->tls_cert, 0, 0, false, false},
        {"SLUICE_TLS_KEY", "tls-key", SL_CFG_STR, NULL, "PEM private key for SLUICE_TLS_CERT",
         &c->tls_key, 0, 0, false, false},
        {"SLUICE_WEB_ROOT", "web-root", SL_CFG_STR, "web", "folder of static files served at /",
         &c->web_root, 0, 0, false, false},
        {"SLUICE_DEV_MODE", "dev-mode", SL_CFG_BOOL, "0",
         "serve development tokens at /dev/token (never in production)", &c->dev_mode, 0, 0, false,
         false},
        {"SLUICE_HEARTBEAT_MS", "heartbeat-ms", SL_CFG_INT, "25000",
         "ping interval; silent connections close after 2.5x", &c->heartbeat_ms, 100, 3600000,
         false, false},
        {"SLUICE_MAX_FRAME", "max-frame", SL_CFG_INT, "65536", "largest client frame in bytes",
         &c->max_frame, 256, 16 * 1024 * 1024, false, false},
        {"SLUICE_RATE", "rate", SL_CFG_INT, "20", "client frames per second per connection",
         &c->rate, 1, 1000000, false, false},
        {"SLUICE_BURST", "burst", SL_CFG_INT, "40", "client frame burst per connection", &c->burst,
         1, 1000000, false, false},
        {"SLUICE_OUTQ_MAX_FRAMES", "outq-max-frames", SL_CFG_INT, "4096",
         "frames queued to one client before it is cut (4429)", &c->outq_max_frames, 16, 10000000,
         false, false},
        {"SLUICE_OUTQ_MAX_BYTES", "outq-max-bytes", SL_CFG_INT, "1048576",
         "bytes queued to one client before it is cut (4429)", &c->outq_max_bytes, 4096, 1LL << 32,
         false, false},
        {"SLUICE_DRAIN_GRACE_MS", "drain-grace-ms", SL_CFG_INT, "10000",
         "on SIGTERM: time clients get to reconnect elsewhere", &c->drain_grace_ms, 0, 600000,
         false, false},
        {"SLUICE_HANDSHAKE_RATE", "handshake-rate", SL_CFG_INT, "2000",
         "new connections per second per gateway (over it: close 1013)", &c->handshake_rate, 1,
         10000000, false, false},
        {"SLUICE_HANDSHAKE_BURST", "handshake-burst", SL_CFG_INT, "2000",
         "burst of new connections", &c->handshake_burst, 1, 10000000, false, false},
        {"SLUICE_PUBLISH_TIMEOUT_MS", "publish-timeout-ms", SL_CFG_INT, "5000",
         "wait for the JetStream ack before answering busy overloaded", &c->publish_timeout_ms, 100,
         600000, false, false},
        {"SLUICE_HELLO_TIMEOUT_MS", "hello-timeout-ms", SL_CFG_INT, "5000",
         "time a new connection has to say hello (then 4401)", &c->hello_timeout_ms, 100, 600000,
         false, false},
        {"SLUICE_PRESENCE_FANOUT_MAX", "presence-fanout-max", SL_CFG_INT, "200",
         "rooms with more local members get no join/leave presence events", &c->presence_fanout_max,
         0, 100000000, false, false},
        {"SLUICE_PRESENCE_FLUSH_MS", "presence-flush-ms", SL_CFG_INT, "150",
         "joins and leaves of a room within this interval share one presence record write and "
         "one presence event",
         &c->presence_flush_ms, 10, 5000, false, false},
        {"SLUICE_REORDER_MS", "reorder-ms", SL_CFG_INT, "20",
         "a live event that comes after a hole waits this long for the missing ones (JetStream's "
         "republished copies can arrive out of order) before they are read from the stream",
         &c->reorder_ms, 0, 10000, false, false},
        {"SLUICE_CHAN_CACHE", "chan-cache", SL_CFG_INT, "512",
         "recent events kept in memory per channel for resumes (0: none)", &c->chan_cache, 0,
         100000, false, false},
        {"SLUICE_GW_IO_THREADS", "gw-io-threads", SL_CFG_INT, "2",
         "threads for stream reads and KV writes", &c->io_threads, 1, 64, false, false},
        {"SLUICE_MAX_ROOMS", "max-rooms", SL_CFG_INT, "100",
         "rooms one connection may be in (a join past it: error too_many_rooms)", &c->max_rooms, 1,
         GW_ROOMS_LIMIT, false, false},
        {"SLUICE_SOCKET_SNDBUF", "socket-sndbuf", SL_CFG_INT, "262144",
         "kernel send buffer per client socket, bytes (0: the kernel's autotuning, up to "
         "net.ipv4.tcp_wmem's max, about 4 MiB per client that stops reading)",
         &c->socket_sndbuf, 0, 67108864, false, false},
        {"SLUICE_GW_IO_URING", "gw-io-uring", SL_CFG_BOOL, "1",
         "hand each slice of fan-out writes to the kernel in one io_uring submission (0, or a "
         "kernel or seccomp profile without io_uring: one send() per connection)",
         &c->io_uring, 0, 0, false, false},
    };
    sl_common_opts(o, &c->common, "0.0.0.0:9090");
    memcpy(o + SL_COMMON_OPTS_N, gw, sizeof(gw));
}

/* Checks the options together. */
static sl_status validate(const gw_config *c, char *err, size_t errlen)
{
    if (c->jwt_secret == NULL && c->jwt_public_key == NULL) {
        snprintf(err, errlen, "SLUICE_JWT_SECRET (or SLUICE_JWT_PUBLIC_KEY) is required");
        return SL_ERR_INVAL;
    }
    if (c->jwt_secret != NULL && strlen(c->jwt_secret) < 16) {
        snprintf(err, errlen, "SLUICE_JWT_SECRET must be at least 16 characters");
        return SL_ERR_INVAL;
    }
    if (c->resume_secret == NULL && c->jwt_secret == NULL) {
        snprintf(err, errlen, "SLUICE_RESUME_SECRET is required when only RS256 tokens are used");
        return SL_ERR_INVAL;
    }
    if ((c->tls_cert == NULL) != (c->tls_key == NULL)) {
        snprintf(err, errlen, "SLUICE_TLS_CERT and SLUICE_TLS_KEY go together");
        return SL_ERR_INVAL;
    }
    if (c->burst < 1 || c->rate < 1) {
        snprintf(err, errlen, "SLUICE_RATE and SLUICE_BURST must be positive");
        return SL_ERR_INVAL;
    }
    return SL_OK;
}

sl_status gw_config_load(gw_config *c, int argc, char **argv, bool *help, char *err, size_t errlen)
{
    sl_status st;

    memset(c, 0, sizeof(*c));
    c->log_level = SL_LOG_INFO;
    build_opts(c);
    st = sl_config_load(c->opts, GW_CONFIG_OPTS_N, argc, argv, help, err, errlen);
    if (st != SL_OK || *help)
        return st;
    if (sl_log_level_parse(c->common.log_level, &c->log_level) != SL_OK) {
        snprintf(err, errlen, "SLUICE_LOG_LEVEL: '%s' is not debug|info|warn|error",
                 c->common.log_level);
        return SL_ERR_INVAL;
    }
    return validate(c, err, errlen);
}

void gw_config_usage(const gw_config *c, FILE *out)
{
    sl_config_usage(out, "sluice-gateway",
                    "Sluice WebSocket gateway: clients, auth, delivery, resume.", c->opts,
                    GW_CONFIG_OPTS_N);
}

void gw_config_free(gw_config *c)
{
    if (c == NULL)
        return;
    sl_config_free(c->opts, GW_CONFIG_OPTS_N);
}
