/* sluice-orchestrator: parses config, installs signals, runs the loop,
 * tears down. The logic lives in the orch_* modules. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orch_agents.h"
#include "orch_loop.h"
#include "sl_admin.h"
#include "sl_bus.h"
#include "sl_config.h"
#include "sl_log.h"

#define ORCH_OPTS_N (SL_COMMON_OPTS_N + 7)

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

typedef struct ready_ctx {
    sl_bus *bus;
    orch_loop *loop;
} ready_ctx;

static bool is_ready(void *ud, char *why, size_t whylen)
{
    ready_ctx *r = ud;

    if (g_stop) {
        snprintf(why, whylen, "draining");
        return false;
    }
    if (r->bus == NULL || !sl_bus_ready(r->bus)) {
        snprintf(why, whylen, "nats not connected or streams not provisioned");
        return false;
    }
    if (!orch_loop_ready(r->loop)) {
        snprintf(why, whylen, "consumer not set up");
        return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    sl_common_cfg common = {0};
    char *agents_file = NULL;
    int64_t hop_limit = 0, causal_wait_ms = 0, model_timeout_ms = 0;
    int64_t park_per_session = 0, park_per_tenant = 0, sweep_ms = 0;
    sl_cfg_opt opts[ORCH_OPTS_N];
    orch_agents *agents = NULL;
    sl_bus *bus = NULL;
    orch_loop *loop = NULL;
    sl_admin *admin = NULL;
    ready_ctx rctx = {0};
    struct sigaction sa;
    sl_log_level lvl = SL_LOG_INFO;
    orch_loop_cfg lcfg;
    char err[512];
    bool help = false;
    int rc = 1;
    sl_status st;

    sl_common_opts(opts, &common, "0.0.0.0:9091");
    opts[SL_COMMON_OPTS_N + 0] =
        (sl_cfg_opt){"SLUICE_AGENTS_FILE",
                     "agents-file",
                     SL_CFG_STR,
                     NULL,
                     "agents JSON file (unset: built-in assistant + summarizer)",
                     &agents_file,
                     0,
                     0,
                     false,
                     false};
    opts[SL_COMMON_OPTS_N + 1] =
        (sl_cfg_opt){"SLUICE_HOP_LIMIT",
                     "hop-limit",
                     SL_CFG_INT,
                     "3",
                     "agent hops along a causal chain before agents stop answering agents",
                     &hop_limit,
                     0,
                     100,
                     false,
                     false};
    opts[SL_COMMON_OPTS_N + 2] = (sl_cfg_opt){
        "SLUICE_CAUSAL_WAIT_MS",
        "causal-wait-ms",
        SL_CFG_INT,
        "5000",
        "how long an out-of-order message waits for its predecessor before it is processed "
        "anyway (a logged gap)",
        &causal_wait_ms,
        0,
        3600000,
        false,
        false};
    opts[SL_COMMON_OPTS_N + 3] =
        (sl_cfg_opt){"SLUICE_MODEL_TIMEOUT_MS",
                     "model-timeout-ms",
                     SL_CFG_INT,
                     "10000",
                     "per-attempt model deadline written into work requests",
                     &model_timeout_ms,
                     1,
                     3600000,
                     false,
                     false};

    opts[SL_COMMON_OPTS_N + 4] =
        (sl_cfg_opt){"SLUICE_CAUSAL_PARK_PER_SESSION",
                     "causal-park-per-session",
                     SL_CFG_INT,
                     "32",
                     "messages of one session that may wait for their predecessor at once (per "
                     "orchestrator); more are processed at once as causal gaps",
                     &park_per_session,
                     0,
                     100000,
                     false,
                     false};
    opts[SL_COMMON_OPTS_N + 5] =
        (sl_cfg_opt){"SLUICE_CAUSAL_PARK_PER_TENANT",
                     "causal-park-per-tenant",
                     SL_CFG_INT,
                     "1000",
                     "messages of one tenant that may wait for their predecessor at once (per "
                     "orchestrator); more are processed at once as causal gaps",
                     &park_per_tenant,
                     0,
                     1000000,
                     false,
                     false};
    opts[SL_COMMON_OPTS_N + 6] =
        (sl_cfg_opt){"SLUICE_SWEEP_MS",
                     "sweep-ms",
                     SL_CFG_INT,
                     "5000",
                     "how often SLUICE_WORK is swept for jobs that exhausted their deliveries "
                     "without their advisory being handled (ended with the fallback)",
                     &sweep_ms,
                     100,
                     3600000,
                     false,
                     false};

    st = sl_config_load(opts, ORCH_OPTS_N, argc, argv, &help, err, sizeof(err));
    if (help) {
        sl_config_usage(stdout, "sluice-orchestrator",
                        "Consumes SLUICE_IN in causal order per session, posts messages to "
                        "rooms, routes them to agents as work on SLUICE_WORK, and ends every "
                        "reply.",
                        opts, ORCH_OPTS_N);
        rc = 0;
        goto cleanup;
    }
    if (st != SL_OK || sl_log_level_parse(common.log_level, &lvl) != SL_OK) {
        fprintf(stderr, "sluice-orchestrator: %s\n",
                st != SL_OK ? err : "SLUICE_LOG_LEVEL: must be debug, info, warn or error");
        rc = 2;
        goto cleanup;
    }
    sl_log_init("orchestrator", lvl);
    st = orch_agents_load(&agents, agents_file, err, sizeof(err));
    if (st != SL_OK) {
        sl_error("%s", err);
        fprintf(stderr, "sluice-orchestrator: %s\n", err);
        rc = 2;
        goto cleanup;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    if (sl_bus_create(&bus, &common, "sluice-orchestrator", err, sizeof(err)) != SL_OK) {
        sl_error("%s", err);
        goto cleanup;
    }
    lcfg = (orch_loop_cfg){.hop_limit = hop_limit,
                           .causal_wait_ms = causal_wait_ms,
                           .model_timeout_ms = model_timeout_ms,
                           .tenant_queue_max = common.tenant_queue_max,
                           .batch = 64,
                           .fetch_timeout_ms = 500,
                           .park_per_session = park_per_session,
                           .park_per_tenant = park_per_tenant,
                           .sweep_ms = sweep_ms};
    if (orch_loop_create(&loop, bus, agents, &lcfg) != SL_OK) {
        sl_error("cannot create the loop");
        goto cleanup;
    }
    rctx.bus = bus;
    rctx.loop = loop;
    if (sl_admin_start(&admin, common.admin_listen, is_ready, &rctx, err, sizeof(err)) != SL_OK) {
        sl_error("admin %s: %s", common.admin_listen, err);
        goto cleanup;
    }
    sl_info("started: %zu agents, hop limit %lld, causal wait %lld ms, admin %s", agents->n,
            (long long)hop_limit, (long long)causal_wait_ms, common.admin_listen);

    st = sl_bus_wait_provisioned(bus, &common, &g_stop, err, sizeof(err));
    if (st == SL_ERR_INVAL) {
        sl_error("%s", err);
        goto cleanup;
    }
    if (st == SL_OK)
        orch_loop_run(loop, &g_stop);
    sl_info("stopping: batch finished, draining");
    rc = 0;
cleanup:
    sl_admin_stop(admin);
    orch_loop_destroy(loop);
    sl_bus_destroy(bus, 2000);
    orch_agents_destroy(agents);
    sl_config_free(opts, ORCH_OPTS_N);
    return rc;
}
