#include "sl_bus.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"
#include "sl_time.h"

struct sl_bus {
    natsConnection *nc;
    jsCtx *js;
    _Atomic int connected;
    _Atomic int provisioned;
    _Atomic int closed; /* set by the last callback cnats makes */
};

sl_status sl_status_from_nats(natsStatus s)
{
    switch (s) {
    case NATS_OK:
        return SL_OK;
    case NATS_TIMEOUT:
        return SL_ERR_TIMEOUT;
    case NATS_NOT_FOUND:
        return SL_ERR_NOTFOUND;
    case NATS_NO_MEMORY:
        return SL_ERR_NOMEM;
    case NATS_INVALID_ARG:
        return SL_ERR_INVAL;
    case NATS_CONNECTION_CLOSED:
    case NATS_DRAINING:
        return SL_ERR_CLOSED;
    default:
        return SL_ERR_BUS;
    }
}

sl_status sl_status_from_nats_failure(natsStatus s)
{
    sl_status st = sl_status_from_nats(s);

    return st == SL_OK || st == SL_ERR_TIMEOUT ? st : SL_ERR_BUS;
}

static void set_connected(sl_bus *b, int up)
{
    atomic_store(&b->connected, up);
    sl_gauge_set(sl_gauge_get("sluice_nats_connected", NULL, "1 while connected to NATS"), up);
}

static void on_connected(natsConnection *nc, void *closure)
{
    (void)nc;
    set_connected(closure, 1);
    sl_info("nats connected");
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    set_connected(closure, 0);
    sl_warn("nats disconnected; reconnecting");
}

static void on_closed(natsConnection *nc, void *closure)
{
    sl_bus *b = closure;
    (void)nc;
    set_connected(b, 0);
    atomic_store(&b->closed, 1);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    /* Slow-consumer and similar async errors: log, the caller's metrics and
     * gap detection handle the consequences. */
    sl_warn("nats async error: %s", natsStatus_GetText(err));
}

/* natsOptions_SetURL takes a single URL (a comma-separated list never
 * connects); a list, e.g. the nodes of a cluster, goes to
 * natsOptions_SetServers, which copies the strings. */
static natsStatus set_servers(natsOptions *opts, const char *url)
{
    const char *list[16];
    char *copy, *save = NULL, *tok;
    int n = 0;
    natsStatus s;

    if (strchr(url, ',') == NULL)
        return natsOptions_SetURL(opts, url);
    copy = strdup(url);
    if (copy == NULL)
        return NATS_NO_MEMORY;
    for (tok = strtok_r(copy, ",", &save); tok != NULL && n < 16;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        if (*tok != '\0')
            list[n++] = tok;
    }
    s = n > 0 ? natsOptions_SetServers(opts, list, n) : NATS_INVALID_ARG;
    free(copy);
    return s;
}

sl_status sl_bus_create(sl_bus **out, const sl_common_cfg *cfg, const char *name, char *err,
                        size_t errlen)
{
    return sl_bus_create_ex(out, cfg, name, NULL, err, errlen);
}

sl_status sl_bus_create_ex(sl_bus **out, const sl_common_cfg *cfg, const char *name,
                           const sl_bus_opts *o, char *err, size_t errlen)
{
    sl_bus *b = NULL;
    natsOptions *opts = NULL;
    natsStatus s;
    sl_status st = SL_OK;

    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return SL_ERR_NOMEM;
    s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = set_servers(opts, cfg->nats_url);
    if (s == NATS_OK)
        s = natsOptions_SetName(opts, name);
    if (s == NATS_OK && cfg->nats_user != NULL)
        s = natsOptions_SetUserInfo(opts, cfg->nats_user, cfg->nats_password);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(opts, 250);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectJitter(opts, 100, 1000);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectBufSize(opts, 64 * 1024 * 1024);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPendingMsgs(opts, 1000000);
    /* A gateway holds one subscription per room: deliver them from a small
     * shared pool instead of a thread each. */
    if (s == NATS_OK)
        s = natsOptions_UseGlobalMessageDelivery(opts, true);
    if (s == NATS_OK && o != NULL && o->send_asap)
        s = natsOptions_SetSendAsap(opts, true);
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(opts, true, on_connected, b);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(opts, on_disconnected, b);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(opts, on_connected, b);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(opts, on_closed, b);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(opts, on_async_error, b);
    if (s != NATS_OK) {
        sl_errf(err, errlen, "SLUICE_NATS_URL: %s", natsStatus_GetText(s));
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    s = natsConnection_Connect(&b->nc, opts);
    if (s == NATS_OK) {
        set_connected(b, 1);
    } else if (s == NATS_NOT_YET_CONNECTED) {
        set_connected(b, 0);
        sl_warn("nats at %s not reachable yet; retrying in the background", cfg->nats_url);
    } else {
        sl_errf(err, errlen, "nats connect to %s: %s", cfg->nats_url, natsStatus_GetText(s));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    s = natsConnection_JetStream(&b->js, b->nc, NULL);
    if (s != NATS_OK) {
        sl_errf(err, errlen, "jetstream context: %s", natsStatus_GetText(s));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    *out = b;
    b = NULL;
cleanup:
    natsOptions_Destroy(opts);
    if (b != NULL) {
        jsCtx_Destroy(b->js);
        natsConnection_Destroy(b->nc);
        free(b);
    }
    return st;
}

void sl_bus_destroy(sl_bus *b, int64_t drain_ms)
{
    if (b == NULL)
        return;
    if (drain_ms > 0 && atomic_load(&b->connected)) {
        if (natsConnection_DrainTimeout(b->nc, drain_ms) == NATS_OK) {
            for (int64_t waited = 0; waited < drain_ms + 500; waited += 10) {
                if (natsConnection_IsClosed(b->nc))
                    break;
                usleep(10 * 1000);
            }
        }
    }
    natsConnection_Close(b->nc);
    /* cnats calls back on its own threads after Close returns: wait for the
     * closed callback (the last one) before freeing what it touches. */
    for (int i = 0; i < 500 && b->nc != NULL && !atomic_load(&b->closed); i++)
        usleep(10 * 1000);
    jsCtx_Destroy(b->js);
    natsConnection_Destroy(b->nc);
    free(b);
}

bool sl_bus_connected(const sl_bus *b)
{
    return atomic_load(&b->connected) != 0;
}

bool sl_bus_ready(const sl_bus *b)
{
    return atomic_load(&b->connected) != 0 && atomic_load(&b->provisioned) != 0;
}

natsConnection *sl_bus_nc(sl_bus *b)
{
    return b->nc;
}

jsCtx *sl_bus_js(sl_bus *b)
{
    return b->js;
}

sl_status sl_bus_wait_provisioned(sl_bus *b, const sl_common_cfg *cfg, volatile int *stop,
                                  char *err, size_t errlen)
{
    int64_t last_log = 0;

    while (!*stop) {
        if (atomic_load(&b->connected)) {
            sl_status st = sl_streams_ensure(b->js, cfg, err, errlen);
            if (st == SL_OK) {
                atomic_store(&b->provisioned, 1);
                return SL_OK;
            }
            if (st == SL_ERR_INVAL)
                return st;
            if (sl_mono_ms() - last_log > 5000) {
                sl_warn("provisioning streams failed (%s); retrying", err);
                last_log = sl_mono_ms();
            }
        }
        for (int i = 0; i < 20 && !*stop; i++)
            usleep(50 * 1000);
    }
    return SL_ERR_CLOSED;
}

sl_status sl_bus_kv(sl_bus *b, const char *bucket, kvStore **out)
{
    return sl_status_from_nats(js_KeyValue(out, b->js, bucket));
}
