/* The worker's configuration: the options table (environment variables
 * and --flags, sl_config.h) and one validation pass whose messages name
 * the variable. Used by main.c alone; testable without it.
 *
 * Not thread-safe: one thread loads, reads and frees a config. A loaded
 * config must stay where it is (its options table points into it). */
#ifndef WRK_CONFIG_H
#define WRK_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "sl_config.h"
#include "sl_log.h"
#include "sl_status.h"
#include "wrk_backend.h"
#include "wrk_loop.h"
#include "wrk_sched.h"

#define WRK_CONFIG_OPTS_N     (SL_COMMON_OPTS_N + 16)
#define WRK_CONFIG_MODELS_MAX 32

typedef struct wrk_config {
    sl_common_cfg common;
    sl_log_level log_level;
    char *models_list; /* as given; models[] point into it */
    char *models[WRK_CONFIG_MODELS_MAX];
    int nmodels;
    char *backend_kind; /* "echo" or "openai" */
    char *model_url, *api_key;
    char *worker_id_opt; /* as given, may be NULL */
    char worker_id[128]; /* as given, or hostname-pid */
    char *weights_spec;  /* SLUICE_TENANT_WEIGHTS as given */
    wrk_weight *weights; /* parsed from it; owned */
    size_t nweights;
    int64_t concurrency, timeout_ms, connect_timeout_ms, echo_delay_ms;
    int64_t coalesce_ms, coalesce_first_ms, coalesce_bytes, context_messages, drain_grace_ms,
        ack_grace_ms;
    sl_cfg_opt opts[WRK_CONFIG_OPTS_N];
} wrk_config;

/* Loads the configuration from the environment and argv into *c (which
 * the caller then frees with wrk_config_free, whatever the result) and
 * validates it. Returns SL_OK; SL_ERR_INVAL with a message naming the
 * variable in err; SL_ERR_NOMEM. *help is set when --help was given (then
 * nothing is validated: print wrk_config_usage and exit). */
sl_status wrk_config_load(wrk_config *c, int argc, char **argv, bool *help, char *err,
                          size_t errlen);

/* Prints the usage text (every option, its variable and default) to out. */
void wrk_config_usage(const wrk_config *c, FILE *out);

/* The job loop's and the backend's settings; they point into c, which
 * must outlive their use. */
wrk_loop_cfg wrk_config_loop(const wrk_config *c);
wrk_backend_cfg wrk_config_backend(const wrk_config *c);

/* Frees what wrk_config_load allocated. NULL-safe. */
void wrk_config_free(wrk_config *c);

#endif
