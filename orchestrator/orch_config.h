/* The orchestrator's configuration: the options table (environment
 * variables and --flags, sl_config.h), one validation pass whose messages
 * name the variable, and the agents file. Used by main.c alone; testable
 * without it.
 *
 * Not thread-safe: one thread loads, reads and frees a config. A loaded
 * config must stay where it is (its options table points into it). */
#ifndef ORCH_CONFIG_H
#define ORCH_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "orch_agents.h"
#include "orch_loop.h"
#include "orch_quota.h"
#include "sl_config.h"
#include "sl_log.h"
#include "sl_status.h"

#define ORCH_CONFIG_OPTS_N (SL_COMMON_OPTS_N + 11)

typedef struct orch_config {
    sl_common_cfg common;
    sl_log_level log_level;
    char *agents_file;   /* SLUICE_AGENTS_FILE as given, may be NULL */
    orch_agents *agents; /* loaded from it (or the built-in set); owned */
    int64_t hop_limit, causal_wait_ms, model_timeout_ms;
    int64_t park_per_session, park_per_tenant, sweep_ms, lost_check_ms;
    int64_t tokens_per_min;       /* SLUICE_TENANT_TOKENS_PER_MIN */
    char *quotas_spec;            /* SLUICE_TENANT_QUOTAS as given, may be NULL */
    orch_quota_rule *quota_rules; /* parsed from it; owned */
    size_t nquota_rules;
    int64_t quota_window_s; /* SLUICE_TENANT_QUOTA_WINDOW_S */
    sl_cfg_opt opts[ORCH_CONFIG_OPTS_N];
} orch_config;

/* Loads the configuration from the environment and argv into *c (which
 * the caller then frees with orch_config_free, whatever the result),
 * validates it, parses the log level and loads the agents file. Returns
 * SL_OK; SL_ERR_INVAL with a message naming the variable (or the agents
 * file) in err; SL_ERR_IO when the agents file cannot be read;
 * SL_ERR_NOMEM. *help is set when --help was given (then nothing is
 * validated: print orch_config_usage and exit). */
sl_status orch_config_load(orch_config *c, int argc, char **argv, bool *help, char *err,
                           size_t errlen);

/* Prints the usage text (every option, its variable and default) to out. */
void orch_config_usage(const orch_config *c, FILE *out);

/* The main loop's settings. */
orch_loop_cfg orch_config_loop(const orch_config *c);

/* Frees what orch_config_load allocated (the agents too). NULL-safe. */
void orch_config_free(orch_config *c);

#endif
