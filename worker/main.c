/* sluice-worker: loads the config (wrk_config), installs signals, runs
 * the job loop, tears down. The logic lives in wrk_loop, wrk_stream and
 * the backends. */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "sl_admin.h"
#include "sl_bus.h"
#include "sl_log.h"
#include "wrk_backend.h"
#include "wrk_config.h"
#include "wrk_loop.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

typedef struct ready_ctx {
    sl_bus *bus;
    _Atomic(wrk_loop *) loop;
} ready_ctx;

static bool is_ready(void *ud, char *why, size_t whylen)
{
    ready_ctx *r = ud;

    if (g_stop) {
        snprintf(why, whylen, "draining");
        return false;
    }
    if (!sl_bus_ready(r->bus)) {
        snprintf(why, whylen, "nats not connected or streams not provisioned");
        return false;
    }
    if (!wrk_loop_ready(atomic_load(&r->loop))) {
        snprintf(why, whylen, "work consumers not set up");
        return false;
    }
    return true;
}

/* Sleeps up to ms, returning early on a stop signal. */
static void wait_or_stop(int64_t ms)
{
    for (int64_t waited = 0; waited < ms && !g_stop; waited += 50) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv)
{
    static wrk_config cfg; /* large, and its options point into it */
    sl_bus *bus = NULL;
    wrk_backend *backend = NULL;
    wrk_loop *loop = NULL;
    sl_admin *admin = NULL;
    ready_ctx rctx = {0};
    struct sigaction sa;
    sigset_t term_set, old_set;
    char err[512];
    bool help = false, curl_ready = false;
    int rc = 1;
    sl_status st;

    st = wrk_config_load(&cfg, argc, argv, &help, err, sizeof(err));
    if (help) {
        wrk_config_usage(&cfg, stdout);
        rc = 0;
        goto cleanup;
    }
    if (st != SL_OK) {
        fprintf(stderr, "sluice-worker: %s\n", err);
        rc = 2;
        goto cleanup;
    }
    sl_log_init("worker", cfg.log_level);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    if (wrk_backend_global_init() != SL_OK) {
        sl_error("cannot initialise libcurl");
        goto cleanup;
    }
    curl_ready = true;
    {
        wrk_backend_cfg bc = wrk_config_backend(&cfg);
        if (wrk_backend_create(&backend, &bc, err, sizeof(err)) != SL_OK) {
            sl_error("model backend: %s", err);
            fprintf(stderr, "sluice-worker: model backend: %s\n", err);
            rc = 2;
            goto cleanup;
        }
    }

    if (sl_bus_create(&bus, &cfg.common, "sluice-worker", err, sizeof(err)) != SL_OK) {
        sl_error("%s", err);
        goto cleanup;
    }
    rctx.bus = bus;
    atomic_init(&rctx.loop, NULL);
    if (sl_admin_start(&admin, cfg.common.admin_listen, is_ready, &rctx, err, sizeof(err)) !=
        SL_OK) {
        sl_error("admin %s: %s", cfg.common.admin_listen, err);
        goto cleanup;
    }
    st = sl_bus_wait_provisioned(bus, &cfg.common, &g_stop, err, sizeof(err));
    if (st == SL_ERR_INVAL) {
        sl_error("%s", err);
        goto cleanup;
    }
    while (st == SL_OK && !g_stop) {
        wrk_loop_cfg lc = wrk_config_loop(&cfg);
        st = wrk_loop_create(&loop, bus, backend, &lc, err, sizeof(err));
        if (st == SL_OK)
            break;
        if (st != SL_ERR_BUS) {
            sl_error("%s", err);
            goto cleanup;
        }
        sl_warn("%s; retrying", err);
        st = SL_OK;
        wait_or_stop(1000);
    }
    if (loop != NULL) {
        atomic_store(&rctx.loop, loop);
        sl_info("started: backend %s, %d model(s), concurrency %lld, timeout %lld ms, admin %s",
                cfg.backend_kind, cfg.nmodels, (long long)cfg.concurrency,
                (long long)cfg.timeout_ms, cfg.common.admin_listen);
        /* Wait for SIGTERM/SIGINT without a race between the check and the
         * wait: the signals are blocked except inside sigsuspend. */
        sigemptyset(&term_set);
        sigaddset(&term_set, SIGTERM);
        sigaddset(&term_set, SIGINT);
        sigprocmask(SIG_BLOCK, &term_set, &old_set);
        while (!g_stop)
            sigsuspend(&old_set);
        sigprocmask(SIG_SETMASK, &old_set, NULL);
        sl_info("stopping: finishing running jobs for up to %lld ms",
                (long long)cfg.drain_grace_ms);
        wrk_loop_stop(loop, cfg.drain_grace_ms);
        sl_info("stopped: every job finished or handed back");
    }
    rc = 0;
cleanup:
    atomic_store(&rctx.loop, NULL);
    sl_admin_stop(admin);
    wrk_loop_destroy(loop);
    sl_bus_destroy(bus, 2000);
    wrk_backend_destroy(backend);
    if (curl_ready)
        wrk_backend_global_cleanup();
    wrk_config_free(&cfg);
    return rc;
}
