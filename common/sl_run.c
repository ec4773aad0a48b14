/* What the three mains share: exit codes, the stop signal and readiness. */
#include "sl_run.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* The flag is handed to loops as a volatile int *: that is what
 * sig_atomic_t is here. */
_Static_assert(_Generic((sig_atomic_t)0, int : 1, default : 0), "sig_atomic_t is not int");

static volatile sig_atomic_t stop_count;

static void on_stop_signal(int sig)
{
    (void)sig;
    if (stop_count < 1000)
        stop_count++;
}

void sl_run_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

volatile int *sl_run_stop_flag(void)
{
    return &stop_count;
}

void sl_run_wait_stop(void)
{
    sigset_t term, old;

    /* Blocked except inside sigsuspend: a signal between the check and the
     * wait is not lost. */
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    sigprocmask(SIG_BLOCK, &term, &old);
    while (stop_count == 0)
        sigsuspend(&old);
    sigprocmask(SIG_SETMASK, &old, NULL);
}

void sl_run_sleep(long ms)
{
    for (long waited = 0; waited < ms && stop_count == 0; waited += 50) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

void sl_run_publish(sl_run_ready *r, void *svc)
{
    atomic_store(&r->svc, svc);
}

bool sl_run_ready_fn(void *ud, char *why, size_t whylen)
{
    sl_run_ready *r = ud;
    void *svc;

    if (stop_count != 0) {
        snprintf(why, whylen, "draining");
        return false;
    }
    if (r->bus == NULL || !sl_bus_connected(r->bus)) {
        snprintf(why, whylen, "nats not connected");
        return false;
    }
    if (!sl_bus_ready(r->bus)) {
        snprintf(why, whylen, "streams not provisioned");
        return false;
    }
    svc = atomic_load(&r->svc);
    if (svc == NULL) {
        snprintf(why, whylen, "%s", r->svc_wait != NULL ? r->svc_wait : "starting");
        return false;
    }
    return r->svc_ready == NULL || r->svc_ready(svc, why, whylen);
}
