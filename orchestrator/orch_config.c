#include "orch_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The options table: every variable, its flag, default, help and bounds. */
static void build_opts(orch_config *c)
{
    sl_cfg_opt *o = c->opts;
    int k = SL_COMMON_OPTS_N;

    sl_common_opts(o, &c->common, "0.0.0.0:9091");
    o[k++] = (sl_cfg_opt){"SLUICE_AGENTS_FILE",
                          "agents-file",
                          SL_CFG_STR,
                          NULL,
                          "agents JSON file (unset: built-in assistant + summarizer)",
                          &c->agents_file,
                          0,
                          0,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_HOP_LIMIT",
                          "hop-limit",
                          SL_CFG_INT,
                          "3",
                          "agent hops along a causal chain before agents stop answering agents",
                          &c->hop_limit,
                          0,
                          100,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){
        "SLUICE_CAUSAL_WAIT_MS",
        "causal-wait-ms",
        SL_CFG_INT,
        "5000",
        "how long an out-of-order message waits for its predecessor before it is processed "
        "anyway (a logged gap)",
        &c->causal_wait_ms,
        0,
        3600000,
        false,
        false};
    o[k++] = (sl_cfg_opt){"SLUICE_MODEL_TIMEOUT_MS",
                          "model-timeout-ms",
                          SL_CFG_INT,
                          "10000",
                          "per-attempt model deadline written into work requests",
                          &c->model_timeout_ms,
                          1,
                          3600000,
                          false,
                          false};
    o[k++] =
        (sl_cfg_opt){"SLUICE_CAUSAL_PARK_PER_SESSION",
                     "causal-park-per-session",
                     SL_CFG_INT,
                     "32",
                     "messages of one session that may wait for their predecessor at once (per "
                     "orchestrator); more are processed at once as causal gaps",
                     &c->park_per_session,
                     0,
                     100000,
                     false,
                     false};
    o[k++] = (sl_cfg_opt){"SLUICE_CAUSAL_PARK_PER_TENANT",
                          "causal-park-per-tenant",
                          SL_CFG_INT,
                          "1000",
                          "messages of one tenant that may wait for their predecessor at once (per "
                          "orchestrator); more are processed at once as causal gaps",
                          &c->park_per_tenant,
                          0,
                          1000000,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_SWEEP_MS",
                          "sweep-ms",
                          SL_CFG_INT,
                          "5000",
                          "how often SLUICE_WORK is swept for jobs that exhausted their deliveries "
                          "without their advisory being handled (ended with the fallback)",
                          &c->sweep_ms,
                          100,
                          3600000,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_LOST_CHECK_MS",
                          "lost-check-ms",
                          SL_CFG_INT,
                          "60000",
                          "how long after queueing a job (and then how often) the orchestrator "
                          "checks that its work message is still in SLUICE_WORK while the job has "
                          "not ended; a job whose message vanished is ended with the fallback",
                          &c->lost_check_ms,
                          100,
                          3600000,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_TENANT_TOKENS_PER_MIN",
                          "tenant-tokens-per-min",
                          SL_CFG_INT,
                          "0",
                          "every tenant's budget of input plus output model tokens per sliding "
                          "minute (0: no quota); a message over it gets busy with reason quota",
                          &c->tokens_per_min,
                          0,
                          1000000000000000LL,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_TENANT_QUOTAS",
                          "tenant-quotas",
                          SL_CFG_STR,
                          NULL,
                          "per-tenant token budgets per minute over SLUICE_TENANT_TOKENS_PER_MIN, "
                          "e.g. tenantA=100,tenantB=50000 (0: no quota for that tenant)",
                          &c->quotas_spec,
                          0,
                          0,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_TENANT_QUOTA_WINDOW_S",
                          "tenant-quota-window-s",
                          SL_CFG_INT,
                          "60",
                          "the quota's sliding window in seconds (for tests: the budgets then "
                          "apply per this window)",
                          &c->quota_window_s,
                          1,
                          ORCH_QUOTA_WINDOW_MAX_S,
                          false,
                          false};
}

sl_status orch_config_load(orch_config *c, int argc, char **argv, bool *help, char *err,
                           size_t errlen)
{
    sl_status st;

    memset(c, 0, sizeof(*c));
    c->log_level = SL_LOG_INFO;
    build_opts(c);
    st = sl_config_load(c->opts, ORCH_CONFIG_OPTS_N, argc, argv, help, err, errlen);
    if (*help)
        return SL_OK;
    if (st == SL_OK && sl_log_level_parse(c->common.log_level, &c->log_level) != SL_OK) {
        sl_errf(err, errlen, "SLUICE_LOG_LEVEL: must be debug, info, warn or error");
        st = SL_ERR_INVAL;
    }
    if (st == SL_OK) {
        char why[256] = "";
        st = orch_quota_parse(c->quotas_spec, &c->quota_rules, &c->nquota_rules, why, sizeof(why));
        if (st != SL_OK)
            sl_errf(err, errlen, "SLUICE_TENANT_QUOTAS: %s", why[0] ? why : sl_status_str(st));
    }
    if (st == SL_OK)
        st = orch_agents_load(&c->agents, c->agents_file, err, errlen);
    return st;
}

void orch_config_usage(const orch_config *c, FILE *out)
{
    sl_config_usage(out, "sluice-orchestrator",
                    "Consumes SLUICE_IN in causal order per session, posts messages to "
                    "rooms, routes them to agents as work on SLUICE_WORK, and ends every "
                    "reply.",
                    c->opts, ORCH_CONFIG_OPTS_N);
}

orch_loop_cfg orch_config_loop(const orch_config *c)
{
    return (orch_loop_cfg){.hop_limit = c->hop_limit,
                           .causal_wait_ms = c->causal_wait_ms,
                           .model_timeout_ms = c->model_timeout_ms,
                           .tenant_queue_max = c->common.tenant_queue_max,
                           .batch = 64,
                           .fetch_timeout_ms = 500,
                           .park_per_session = c->park_per_session,
                           .park_per_tenant = c->park_per_tenant,
                           .sweep_ms = c->sweep_ms,
                           .lost_check_ms = c->lost_check_ms,
                           .tokens_per_window = c->tokens_per_min,
                           .quota_rules = c->quota_rules,
                           .nquota_rules = c->nquota_rules,
                           .quota_window_s = c->quota_window_s};
}

void orch_config_free(orch_config *c)
{
    if (c == NULL)
        return;
    orch_agents_destroy(c->agents);
    c->agents = NULL;
    free(c->quota_rules);
    c->quota_rules = NULL;
    c->nquota_rules = 0;
    sl_config_free(c->opts, ORCH_CONFIG_OPTS_N);
}
