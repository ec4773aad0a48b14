/* What the three mains share: exit codes, the stop signal and readiness.
 *
 * Every sluice binary runs the same straight line: load the config (exit
 * SL_EXIT_CONFIG when it is bad), sl_run_signals(), connect the bus, start
 * the admin server with sl_run_ready_fn, create the tier's object and
 * sl_run_publish() it, run until the stop flag is set, tear down in
 * reverse. */
#ifndef SL_RUN_H
#define SL_RUN_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

#include "sl_bus.h"

/* Exit codes of every sluice binary. */
enum {
    SL_EXIT_OK = 0,      /* stopped by SIGTERM/SIGINT after draining, or --help */
    SL_EXIT_RUNTIME = 1, /* could not start or keep running (bus, admin port, loop) */
    SL_EXIT_CONFIG = 2,  /* bad option, environment variable or file: fix and restart */
};

/* Installs the SIGTERM and SIGINT handlers (each increments the stop flag)
 * and ignores SIGPIPE. Call once, from main, before any thread starts. */
void sl_run_signals(void);

/* The stop flag: 0 until SIGTERM or SIGINT, then the number of those
 * signals received. Loops poll it; the pointer stays valid for the life of
 * the process. */
volatile int *sl_run_stop_flag(void);

/* Blocks until the stop flag is set (without a race between the check and
 * the wait). */
void sl_run_wait_stop(void);

/* Sleeps up to ms, returning early once the stop flag is set. */
void sl_run_sleep(long ms);

/* Readiness as the admin thread sees it. The main fills bus, svc_ready and
 * svc_wait before sl_admin_start and publishes the tier's object with
 * sl_run_publish once it exists; the admin thread reads it with
 * sl_run_ready_fn. At teardown stop the admin server (sl_admin_stop joins
 * its thread) before destroying the object: publishing NULL alone does not
 * wait for a /readyz that already read the pointer. */
typedef struct sl_run_ready {
    sl_bus *bus;                                            /* set before the admin starts */
    bool (*svc_ready)(void *svc, char *why, size_t whylen); /* the tier's own check */
    const char *svc_wait; /* the reason while no object is published */
    _Atomic(void *) svc;  /* the tier's object, or NULL */
} sl_run_ready;

/* Publishes svc (NULL: withdraws it). */
void sl_run_publish(sl_run_ready *r, void *svc);

/* An sl_ready_fn over an sl_run_ready (ud): not ready while stopping
 * ("draining"), while the bus is not connected ("nats not connected") or
 * not provisioned ("streams not provisioned"), while no object is published
 * (svc_wait), else what svc_ready says. */
bool sl_run_ready_fn(void *ud, char *why, size_t whylen);

#endif
