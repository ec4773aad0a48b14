/* sluice-gateway: parses configuration, installs signal handlers, runs the
 * WebSocket server until SIGTERM/SIGINT have drained it, and tears down. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "gw_server.h"
#include "sl_admin.h"
#include "sl_bus.h"
#include "sl_log.h"
#include "sl_metrics.h"

static volatile sig_atomic_t stop_flag;
static volatile int stop_mirror;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag++;
    stop_mirror = (int)stop_flag;
}

typedef struct ready_ctx {
    sl_bus *bus;
    gw_server *volatile srv;
} ready_ctx;

static bool ready(void *ud, char *why, size_t whylen)
{
    ready_ctx *r = ud;
    gw_server *srv = r->srv;

    if (srv == NULL) {
        snprintf(why, whylen, sl_bus_connected(r->bus) ? "provisioning" : "nats not connected");
        return false;
    }
    return gw_server_ready(srv, why, whylen);
}

int main(int argc, char **argv)
{
    gw_config cfg;
    sl_cfg_opt opts[GW_OPTS_N];
    sl_bus *bus = NULL;
    sl_admin *admin = NULL;
    gw_server *srv = NULL;
    ready_ctx rc = {0};
    struct sigaction sa;
    sl_log_level lvl;
    bool help;
    char err[512];
    int rv = 1;

    memset(&cfg, 0, sizeof(cfg));
    gw_config_opts(opts, &cfg);
    if (sl_config_load(opts, GW_OPTS_N, argc, argv, &help, err, sizeof(err)) != SL_OK) {
        fprintf(stderr, "sluice-gateway: %s\n", err);
        goto cleanup;
    }
    if (help) {
        sl_config_usage(stdout, "sluice-gateway",
                        "Sluice WebSocket gateway: clients, auth, delivery, resume.", opts,
                        GW_OPTS_N);
        rv = 0;
        goto cleanup;
    }
    if (sl_log_level_parse(cfg.common.log_level, &lvl) != SL_OK) {
        fprintf(stderr, "sluice-gateway: SLUICE_LOG_LEVEL: '%s' is not debug|info|warn|error\n",
                cfg.common.log_level);
        goto cleanup;
    }
    if (gw_config_validate(&cfg, err, sizeof(err)) != SL_OK) {
        fprintf(stderr, "sluice-gateway: %s\n", err);
        goto cleanup;
    }
    sl_log_init("gateway", lvl);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (sl_bus_create(&bus, &cfg.common, "sluice-gateway", err, sizeof(err)) != SL_OK) {
        sl_error("%s", err);
        goto cleanup;
    }
    rc.bus = bus;
    if (sl_admin_start(&admin, cfg.common.admin_listen, ready, &rc, err, sizeof(err)) != SL_OK) {
        sl_error("SLUICE_ADMIN_LISTEN: %s", err);
        goto cleanup;
    }
    if (sl_bus_wait_provisioned(bus, &cfg.common, &stop_mirror, err, sizeof(err)) != SL_OK) {
        if (stop_flag) {
            rv = 0;
        } else {
            sl_error("%s", err);
        }
        goto cleanup;
    }
    if (gw_server_create(&srv, &cfg, bus, err, sizeof(err)) != SL_OK) {
        sl_error("%s", err);
        goto cleanup;
    }
    rc.srv = srv;
    gw_server_run(srv, &stop_mirror);
    sl_info("gateway stopped");
    rv = 0;
cleanup:
    sl_admin_stop(admin);
    rc.srv = NULL;
    gw_server_destroy(srv);
    sl_bus_destroy(bus, rv == 0 ? 2000 : 0);
    sl_config_free(opts, GW_OPTS_N);
    sl_metrics_reset_all();
    nats_Close();
    return rv;
}
