/* The gateway's configuration: the options table (environment variables
 * and --flags, sl_config.h) and one validation pass whose messages name
 * the variable. Used by main.c alone; testable without it.
 *
 * Not thread-safe: one thread loads and frees a config; the server reads
 * it (never writes) while it runs. A loaded config must stay where it is
 * (its options table points into it). */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sl_config.h"
#include "sl_log.h"
#include "sl_status.h"

#define GW_CONFIG_OPTS_N (SL_COMMON_OPTS_N + 27)

typedef struct gw_config {
    sl_common_cfg common;
    sl_log_level log_level;
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
    int64_t presence_flush_ms;
    int64_t reorder_ms;
    int64_t max_rooms;
    int64_t socket_sndbuf;
    bool io_uring;
    sl_cfg_opt opts[GW_CONFIG_OPTS_N];
} gw_config;

/* Loads the configuration from the environment and argv into *c (which
 * the caller then frees with gw_config_free, whatever the result),
 * parses SLUICE_LOG_LEVEL and validates the options together. Returns
 * SL_OK; SL_ERR_INVAL with a message naming the variable in err;
 * SL_ERR_NOMEM. *help is set when --help was given (then nothing is
 * validated: print gw_config_usage and exit). */
sl_status gw_config_load(gw_config *c, int argc, char **argv, bool *help, char *err, size_t errlen);

/* Prints the usage text (every option, its variable and default) to out. */
void gw_config_usage(const gw_config *c, FILE *out);

/* Frees what gw_config_load allocated. NULL-safe. */
void gw_config_free(gw_config *c);

#endif
