/* sluice-worker: loads the config (wrk_config), installs signals, runs
 * the job loop until SIGTERM/SIGINT, tears down in reverse
 * (common/sl_run.h). The logic lives in wrk_loop, wrk_stream and the
 * backends. */
#include <stdio.h>

#include "sl_admin.h"
#include "sl_bus.h"
#include "sl_log.h"
#include "sl_run.h"
#include "wrk_backend.h"
#include "wrk_config.h"
#include "wrk_loop.h"

/* /readyz once the loop exists: its work consumers are set up. */
static bool loop_ready(void *svc, char *why, size_t whylen)
{
    if (wrk_loop_ready(svc))
        return true;
    snprintf(why, whylen, "work consumers not set up");
    return false;
}

int main(int argc, char **argv)
{
    static wrk_config cfg; /* large, and its options point into it */
    sl_run_ready ready = {.svc_ready = loop_ready, .svc_wait = "work consumers not set up"};
    sl_bus *bus = NULL;
    wrk_backend *backend = NULL;
    wrk_loop *loop = NULL;
    sl_admin *admin = NULL;
    wrk_backend_cfg bc;
    wrk_loop_cfg lc;
    bool help = false, curl_ready = false;
    char err[512];
    int rc = SL_EXIT_RUNTIME;
    sl_status st;

    st = wrk_config_load(&cfg, argc, argv, &help, err, sizeof(err));
    if (help) {
        wrk_config_usage(&cfg, stdout);
        rc = SL_EXIT_OK;
        goto cleanup;
    }
    if (st != SL_OK) {
        fprintf(stderr, "sluice-worker: %s\n", err);
        rc = SL_EXIT_CONFIG;
        goto cleanup;
    }
    sl_log_init("worker", cfg.log_level);
    sl_run_signals();

    if (wrk_backend_global_init() != SL_OK) {
        sl_error("cannot initialise libcurl");
        goto cleanup;
    }
    curl_ready = true;
    bc = wrk_config_backend(&cfg);
    if (wrk_backend_create(&backend, &bc, err, sizeof(err)) != SL_OK) {
        sl_error("model backend: %s", err);
        fprintf(stderr, "sluice-worker: model backend: %s\n", err);
        rc = SL_EXIT_CONFIG;
        goto cleanup;
    }
    if (sl_bus_create(&bus, &cfg.common, "sluice-worker", err, sizeof(err)) != SL_OK) {
        sl_error("%s", err);
        goto cleanup;
    }
    ready.bus = bus;
    if (sl_admin_start(&admin, cfg.common.admin_listen, sl_run_ready_fn, &ready, err,
                       sizeof(err)) != SL_OK) {
        sl_error("admin %s: %s", cfg.common.admin_listen, err);
        goto cleanup;
    }
    st = sl_bus_wait_provisioned(bus, &cfg.common, sl_run_stop_flag(), err, sizeof(err));
    if (st == SL_ERR_INVAL) {
        sl_error("%s", err);
        goto cleanup;
    }
    lc = wrk_config_loop(&cfg);
    /* The work consumers need the streams; a bus error is retried. */
    while (st == SL_OK && loop == NULL && *sl_run_stop_flag() == 0) {
        st = wrk_loop_create(&loop, bus, backend, &lc, err, sizeof(err));
        if (st == SL_ERR_BUS) {
            sl_warn("%s; retrying", err);
            st = SL_OK;
            sl_run_sleep(1000);
        } else if (st != SL_OK) {
            sl_error("%s", err);
            goto cleanup;
        }
    }
    if (loop != NULL) {
        sl_run_publish(&ready, loop);
        sl_info("started: backend %s, %d model(s), concurrency %lld, timeout %lld ms, admin %s",
                cfg.backend_kind, cfg.nmodels, (long long)cfg.concurrency,
                (long long)cfg.timeout_ms, cfg.common.admin_listen);
        sl_run_wait_stop();
        sl_info("stopping: finishing running jobs for up to %lld ms",
                (long long)cfg.drain_grace_ms);
        wrk_loop_stop(loop, cfg.drain_grace_ms);
        sl_info("stopped: every job finished or handed back");
    }
    rc = SL_EXIT_OK;
cleanup:
    /* Withdrawn, then the admin thread joined, so that no /readyz still
     * holds the loop when it is freed. */
    sl_run_publish(&ready, NULL);
    sl_admin_stop(admin);
    wrk_loop_destroy(loop);
    sl_bus_destroy(bus, 2000);
    wrk_backend_destroy(backend);
    if (curl_ready)
        wrk_backend_global_cleanup();
    wrk_config_free(&cfg);
    return rc;
}
