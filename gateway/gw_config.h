/* The gateway's configuration: the options table (environment variables
 * and --flags, sl_config.h) and one validation pass whose messages name
 * the variable. */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_config.h"
#include "sl_status.h"

typedef struct gw_config {
    sl_common_cfg common;
    char *listen;
    char *jwt_secret;
    char *jwt_public_key;
    char *resume_secret;
    char *tls_cert;
    char *tls_key;
    char *web_root;
    bool dev_mode;
    int64_t heartbeat_ms;
    int64_t max_frame;
    int64_t rate;
    int64_t burst;
    int64_t outq_max_frames;
    int64_t outq_max_bytes;
    int64_t drain_grace_ms;
    int64_t handshake_rate;
    int64_t handshake_burst;
    int64_t publish_timeout_ms;
    int64_t hello_timeout_ms;
    int64_t io_threads;
    int64_t chan_cache;
    int64_t presence_fanout_max;
    int64_t max_rooms;
    int64_t socket_sndbuf;
} gw_config;

#define GW_OPTS_N (SL_COMMON_OPTS_N + 24)

/* Fills opts with the gateway's options writing into cfg. */
void gw_config_opts(sl_cfg_opt *opts, gw_config *cfg);

/* Checks the options together; SL_ERR_INVAL with a message naming the
 * variable. */
sl_status gw_config_validate(const gw_config *cfg, char *err, size_t errlen);

#endif
