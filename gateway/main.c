/* sluice-gateway: loads the config (gw_config), installs signals, runs the
 * WebSocket server until SIGTERM/SIGINT have drained it, tears down in
 * reverse (common/sl_run.h). The logic lives in gw_server and the modules
 * it uses. */
#include <stdio.h>

#include "gw_config.h"
#include "gw_server.h"
#include "sl_admin.h"
#include "sl_bus.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_run.h"

/* /readyz once the server exists: serving and not draining. */
static bool server_ready(void *svc, char *why, size_t whylen)
{
    return gw_server_ready(svc, why, whylen);
}

int main(int argc, char **argv)
{
    static gw_config cfg; /* its options point into it */
    sl_run_ready ready = {.svc_ready = server_ready, .svc_wait = "server not created yet"};
    sl_bus *bus = NULL;
    sl_bus_opts bus_opts = {.send_asap = true};
    sl_admin *admin = NULL;
    gw_server *srv = NULL;
    bool help = false;
    char err[512];
    int rc = SL_EXIT_RUNTIME;
    sl_status st;

    st = gw_config_load(&cfg, argc, argv, &help, err, sizeof(err));
    if (help) {
        gw_config_usage(&cfg, stdout);
        rc = SL_EXIT_OK;
        goto cleanup;
    }
    if (st != SL_OK) {
        fprintf(stderr, "sluice-gateway: %s\n", err);
        rc = SL_EXIT_CONFIG;
        goto cleanup;
    }
    sl_log_init("gateway", cfg.log_level);
    sl_run_signals();

    /* The loop publishes one message at a time (a send, a receipt, a KV
     * write): written at once, not after the flusher's 1 ms wait. */
    if (sl_bus_create_ex(&bus, &cfg.common, "sluice-gateway", &bus_opts, err, sizeof(err)) !=
        SL_OK) {
        sl_error("%s", err);
        goto cleanup;
    }
    ready.bus = bus;
    if (sl_admin_start(&admin, cfg.common.admin_listen, sl_run_ready_fn, &ready, err,
                       sizeof(err)) != SL_OK) {
        sl_error("SLUICE_ADMIN_LISTEN: %s", err);
        goto cleanup;
    }
    if (sl_bus_wait_provisioned(bus, &cfg.common, sl_run_stop_flag(), err, sizeof(err)) != SL_OK) {
        if (*sl_run_stop_flag() != 0)
            rc = SL_EXIT_OK;
        else
            sl_error("%s", err);
        goto cleanup;
    }
    if (gw_server_create(&srv, &cfg, bus, err, sizeof(err)) != SL_OK) {
        sl_error("%s", err);
        goto cleanup;
    }
    sl_run_publish(&ready, srv);
    /* Returns once a stop signal has drained the clients (a second one
     * cuts the drain short). */
    gw_server_run(srv, sl_run_stop_flag());
    sl_info("gateway stopped");
    rc = SL_EXIT_OK;
cleanup:
    /* Withdrawn, then the admin thread joined, so that no /readyz still
     * holds the server when it is freed. */
    sl_run_publish(&ready, NULL);
    sl_admin_stop(admin);
    gw_server_destroy(srv);
    sl_bus_destroy(bus, rc == SL_EXIT_OK ? 2000 : 0);
    gw_config_free(&cfg);
    sl_metrics_reset_all();
    nats_Close();
    return rc;
}
