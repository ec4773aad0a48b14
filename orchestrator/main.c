/* sluice-orchestrator: loads the config (orch_config), installs signals,
 * runs the main loop, tears down. The logic lives in the orch_* modules;
 * the straight line is the one every sluice binary runs (sl_run.h). */
#include <stdio.h>

#include "orch_config.h"
#include "orch_loop.h"
#include "sl_admin.h"
#include "sl_bus.h"
#include "sl_log.h"
#include "sl_run.h"

/* The loop's part of /readyz (svc: the published loop). */
static bool loop_ready(void *svc, char *why, size_t whylen)
{
    if (!orch_loop_ready(svc)) {
        snprintf(why, whylen, "consumer not set up");
        return false;
    }
    return true;
}

int main(int argc, char **argv)
{
    static orch_config cfg; /* its options point into it */
    sl_run_ready ready = {.svc_ready = loop_ready, .svc_wait = "consumer not set up"};
    volatile int *stop = sl_run_stop_flag();
    sl_bus *bus = NULL;
    sl_admin *admin = NULL;
    orch_loop *loop = NULL;
    orch_loop_cfg lc;
    char err[512];
    bool help = false;
    int rc = SL_EXIT_RUNTIME;
    sl_status st;

    st = orch_config_load(&cfg, argc, argv, &help, err, sizeof(err));
    if (help) {
        orch_config_usage(&cfg, stdout);
        rc = SL_EXIT_OK;
        goto cleanup;
    }
    if (st != SL_OK) {
        fprintf(stderr, "sluice-orchestrator: %s\n", err);
        rc = SL_EXIT_CONFIG;
        goto cleanup;
    }
    sl_log_init("orchestrator", cfg.log_level);
    sl_run_signals();

    if (sl_bus_create(&bus, &cfg.common, "sluice-orchestrator", err, sizeof(err)) != SL_OK) {
        sl_error("%s", err);
        goto cleanup;
    }
    ready.bus = bus;
    if (sl_admin_start(&admin, cfg.common.admin_listen, sl_run_ready_fn, &ready, err,
                       sizeof(err)) != SL_OK) {
        sl_error("admin %s: %s", cfg.common.admin_listen, err);
        goto cleanup;
    }
    lc = orch_config_loop(&cfg);
    if (orch_loop_create(&loop, bus, cfg.agents, &lc) != SL_OK) {
        sl_error("cannot create the loop");
        goto cleanup;
    }
    sl_run_publish(&ready, loop);
    sl_info("started: %zu agents, hop limit %lld, causal wait %lld ms, admin %s", cfg.agents->n,
            (long long)cfg.hop_limit, (long long)cfg.causal_wait_ms, cfg.common.admin_listen);

    st = sl_bus_wait_provisioned(bus, &cfg.common, stop, err, sizeof(err));
    if (st == SL_ERR_INVAL) {
        sl_error("%s", err);
        goto cleanup;
    }
    if (st == SL_OK)
        orch_loop_run(loop, stop);
    sl_info("stopping: batch finished, draining");
    rc = SL_EXIT_OK;
cleanup:
    /* The admin thread may be inside loop_ready with the pointer it read:
     * it stops before the loop goes. */
    sl_run_publish(&ready, NULL);
    sl_admin_stop(admin);
    orch_loop_destroy(loop);
    sl_bus_destroy(bus, 2000);
    orch_config_free(&cfg);
    return rc;
}
