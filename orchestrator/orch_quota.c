/* Per-tenant token quotas: the rules, the window arithmetic and the view
 * of the sluice_quota bucket kept by a watch (orch_quota.h). */
#include "orch_quota.h"

#include <cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_config.h"
#include "sl_hash.h"
#include "sl_json.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"

#define NBUCKETS         1024
#define QUOTA_BUDGET_MAX 1000000000000000LL
#define WATCH_RETRY_MS   1000 /* between attempts to open the watch */

/* ---- Rules --------------------------------------------------------------- */

sl_status orch_quota_parse(const char *spec, orch_quota_rule **out, size_t *n, char *err,
                           size_t errlen)
{
    sl_tenant_value *tv = NULL;
    orch_quota_rule *v = NULL;
    size_t k = 0;
    sl_status st;

    if (out == NULL || n == NULL)
        return SL_ERR_INVAL;
    *out = NULL;
    *n = 0;
    st = sl_tenant_values_parse(spec, "tokens", 0, QUOTA_BUDGET_MAX, ORCH_QUOTA_RULES_MAX, &tv, &k,
                                err, errlen);
    if (st != SL_OK || k == 0)
        return st;
    v = calloc(k, sizeof(*v));
    if (v == NULL) {
        free(tv);
        return SL_ERR_NOMEM;
    }
    for (size_t i = 0; i < k; i++) {
        memcpy(v[i].tenant, tv[i].tenant, sizeof(v[i].tenant));
        v[i].tokens = tv[i].value;
    }
    free(tv);
    *out = v;
    *n = k;
    return SL_OK;
}

/* ---- The window arithmetic ------------------------------------------------ */

static int slot_cmp(const void *a, const void *b)
{
    const orch_quota_slot *x = a, *y = b;
    return (x->sec > y->sec) - (x->sec < y->sec);
}

bool orch_quota_window_ok(const orch_quota_slot *slots, size_t n, int64_t now_ms, int64_t window_s,
                          int64_t budget, uint64_t *used, int64_t *retry_ms)
{
    orch_quota_slot in[ORCH_QUOTA_RING];
    size_t k = 0;
    uint64_t total = 0;
    int64_t now_s = now_ms / 1000;

    if (budget <= 0)
        return true;
    for (size_t i = 0; i < n && k < ORCH_QUOTA_RING; i++) {
        if (slots[i].sec > now_s - window_s && slots[i].tokens > 0) {
            in[k++] = slots[i];
            total += slots[i].tokens;
        }
    }
    if (used != NULL)
        *used = total;
    if (total < (uint64_t)budget)
        return true;
    /* Second s leaves the window at (s + window_s) * 1000: drop the oldest
     * until what is left is under budget. */
    qsort(in, k, sizeof(in[0]), slot_cmp);
    int64_t at_ms = 0;
    for (size_t i = 0; i < k; i++) {
        total -= in[i].tokens;
        at_ms = (in[i].sec + window_s) * 1000;
        if (total < (uint64_t)budget)
            break;
    }
    if (retry_ms != NULL)
        *retry_ms = at_ms - now_ms > 0 ? at_ms - now_ms : 1;
    return false;
}

/* ---- The view --------------------------------------------------------------- */

typedef struct tenant_view {
    char tenant[SL_ID_MAX + 1];
    orch_quota_slot ring[ORCH_QUOTA_RING]; /* indexed by sec % ORCH_QUOTA_RING */
    struct tenant_view *next;
} tenant_view;

struct orch_quota {
    int64_t per_window;
    orch_quota_rule *rules;
    size_t nrules;
    int64_t window_s;
    pthread_mutex_t mu; /* guards tenants */
    tenant_view *tenants[NBUCKETS];
    _Atomic int synced;
    sl_bus *bus;         /* borrowed */
    kvStore *kv;         /* the watch thread's */
    pthread_mutex_t wmu; /* guards w against destroy's stop */
    kvWatcher *w;        /* set and dropped by the watch thread */
    pthread_t thread;
    bool started;
    _Atomic int stop;
    sl_counter *m_over, *m_unknown;
};

sl_status orch_quota_create(orch_quota **out, int64_t per_window, const orch_quota_rule *rules,
                            size_t nrules, int64_t window_s)
{
    orch_quota *q;

    if (out == NULL || per_window < 0 || window_s < 1 || window_s > ORCH_QUOTA_WINDOW_MAX_S ||
        (nrules > 0 && rules == NULL))
        return SL_ERR_INVAL;
    q = calloc(1, sizeof(*q));
    if (q == NULL)
        return SL_ERR_NOMEM;
    if (nrules > 0) {
        q->rules = malloc(nrules * sizeof(*rules));
        if (q->rules == NULL) {
            free(q);
            return SL_ERR_NOMEM;
        }
        memcpy(q->rules, rules, nrules * sizeof(*rules));
    }
    q->nrules = nrules;
    q->per_window = per_window;
    q->window_s = window_s;
    pthread_mutex_init(&q->mu, NULL);
    pthread_mutex_init(&q->wmu, NULL);
    q->m_over = sl_counter_get("sluice_orch_busy_total", "reason=\"quota\"",
                               "jobs refused with a busy event");
    q->m_unknown = sl_counter_get("sluice_orch_quota_unknown_total", NULL,
                                  "quota checks passed because the usage view was not synced "
                                  "(start, or NATS unreachable)");
    *out = q;
    return SL_OK;
}

bool orch_quota_enabled(const orch_quota *q)
{
    if (q == NULL)
        return false;
    if (q->per_window > 0)
        return true;
    for (size_t i = 0; i < q->nrules; i++)
        if (q->rules[i].tokens > 0)
            return true;
    return false;
}

int64_t orch_quota_budget(const orch_quota *q, const char *tenant)
{
    if (q == NULL || tenant == NULL)
        return 0;
    for (size_t i = 0; i < q->nrules; i++)
        if (strcmp(q->rules[i].tenant, tenant) == 0)
            return q->rules[i].tokens;
    return q->per_window;
}

static size_t bucket_of(const char *tenant)
{
    return (size_t)(sl_hash_str(SL_HASH_SEED, tenant) % NBUCKETS);
}

/* The tenant's view, made when missing and create is set. Caller holds mu. */
static tenant_view *view_get(orch_quota *q, const char *tenant, bool create)
{
    size_t b = bucket_of(tenant);
    tenant_view *t;

    for (t = q->tenants[b]; t != NULL; t = t->next)
        if (strcmp(t->tenant, tenant) == 0)
            return t;
    if (!create)
        return NULL;
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    memcpy(t->tenant, tenant, strlen(tenant) + 1);
    t->next = q->tenants[b];
    q->tenants[b] = t;
    return t;
}

void orch_quota_apply(orch_quota *q, const char *key, const char *val, size_t len)
{
    char tenant[SL_ID_MAX + 1];
    int64_t sec = 0;
    cJSON *o = NULL;
    uint64_t tokens = 0;

    if (q == NULL || val == NULL || sl_kv_key_quota_parse(key, tenant, &sec) != SL_OK)
        return;
    /* Only tenants with a budget are kept. */
    if (orch_quota_budget(q, tenant) <= 0)
        return;
    o = cJSON_ParseWithLength(val, len);
    int64_t in = 0, out = 0;
    (void)sl_json_get_int(cJSON_GetObjectItemCaseSensitive(o, "in"), 0, SL_JSON_INT_MAX, &in);
    (void)sl_json_get_int(cJSON_GetObjectItemCaseSensitive(o, "out"), 0, SL_JSON_INT_MAX, &out);
    tokens = (uint64_t)in + (uint64_t)out;
    cJSON_Delete(o);

    pthread_mutex_lock(&q->mu);
    tenant_view *t = view_get(q, tenant, true);
    if (t != NULL) {
        orch_quota_slot *s = &t->ring[sec % ORCH_QUOTA_RING];
        /* A key's value is its running total: the newest second wins a
         * ring position, and a second's later value replaces its earlier. */
        if (s->sec <= sec) {
            if (s->sec < sec)
                s->tokens = 0;
            s->sec = sec;
            if (tokens > s->tokens)
                s->tokens = tokens;
        }
    }
    pthread_mutex_unlock(&q->mu);
}

void orch_quota_set_synced(orch_quota *q, bool synced)
{
    if (q != NULL)
        atomic_store(&q->synced, synced ? 1 : 0);
}

orch_quota_verdict orch_quota_check(orch_quota *q, const char *tenant, int64_t now_ms,
                                    int64_t *retry_ms)
{
    int64_t budget = orch_quota_budget(q, tenant);
    bool ok = true;
    int64_t retry = 0;

    if (budget <= 0)
        return ORCH_QUOTA_OK;
    if (!atomic_load(&q->synced)) {
        sl_counter_inc(q->m_unknown);
        return ORCH_QUOTA_UNKNOWN;
    }
    pthread_mutex_lock(&q->mu);
    tenant_view *t = view_get(q, tenant, false);
    if (t != NULL)
        ok = orch_quota_window_ok(t->ring, ORCH_QUOTA_RING, now_ms, q->window_s, budget, NULL,
                                  &retry);
    pthread_mutex_unlock(&q->mu);
    if (ok)
        return ORCH_QUOTA_OK;
    sl_counter_inc(q->m_over);
    if (retry_ms != NULL)
        *retry_ms = retry;
    return ORCH_QUOTA_OVER;
}

/* Opens the bucket and its watch; false when NATS does not let it (yet). */
static bool watch_open(orch_quota *q)
{
    kvWatchOptions o;
    kvWatcher *w = NULL;

    if (q->kv == NULL && sl_bus_kv(q->bus, SL_KV_QUOTA, &q->kv) != SL_OK)
        return false;
    kvWatchOptions_Init(&o);
    if (kvStore_WatchAll(&w, q->kv, &o) != NATS_OK)
        return false;
    pthread_mutex_lock(&q->wmu);
    if (atomic_load(&q->stop)) {
        pthread_mutex_unlock(&q->wmu);
        kvWatcher_Destroy(w);
        return false;
    }
    q->w = w;
    pthread_mutex_unlock(&q->wmu);
    return true;
}

/* Drops a watch that failed: the view is no longer known to be current. */
static void watch_close(orch_quota *q)
{
    kvWatcher *w;

    orch_quota_set_synced(q, false);
    pthread_mutex_lock(&q->wmu);
    w = q->w;
    q->w = NULL;
    pthread_mutex_unlock(&q->wmu);
    kvWatcher_Destroy(w);
}

/* The watch thread: (re)opens the watch until it works, then applies what
 * it delivers. While there is no working watch, checks pass (unknown). */
static void *watch_main(void *arg)
{
    orch_quota *q = arg;
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    while (!atomic_load(&q->stop)) {
        if (q->w == NULL && !watch_open(q)) {
            for (int i = 0; i < WATCH_RETRY_MS / 100 && !atomic_load(&q->stop); i++)
                usleep(100 * 1000);
            continue;
        }
        kvEntry *e = NULL;
        natsStatus s = kvWatcher_Next(&e, q->w, 500);
        if (s == NATS_OK && e == NULL) {
            /* The initial values are in: the view is current. */
            orch_quota_set_synced(q, true);
        } else if (s == NATS_OK) {
            if (kvEntry_Operation(e) == kvOp_Put)
                orch_quota_apply(q, kvEntry_Key(e), kvEntry_ValueString(e),
                                 (size_t)kvEntry_ValueLen(e));
            kvEntry_Destroy(e);
        } else if (s != NATS_TIMEOUT) {
            if (atomic_load(&q->stop) || s == NATS_CONNECTION_CLOSED)
                break;
            sl_warn("quota: the watch of %s failed (%s); opening it again", SL_KV_QUOTA,
                    natsStatus_GetText(s));
            watch_close(q);
        }
    }
    return NULL;
}

sl_status orch_quota_start(orch_quota *q, sl_bus *bus)
{
    if (!orch_quota_enabled(q) || q->started)
        return SL_OK;
    q->bus = bus;
    if (pthread_create(&q->thread, NULL, watch_main, q) != 0)
        return SL_ERR_NOMEM;
    q->started = true;
    return SL_OK;
}

void orch_quota_destroy(orch_quota *q)
{
    if (q == NULL)
        return;
    if (q->started) {
        atomic_store(&q->stop, 1);
        pthread_mutex_lock(&q->wmu);
        if (q->w != NULL)
            kvWatcher_Stop(q->w);
        pthread_mutex_unlock(&q->wmu);
        pthread_join(q->thread, NULL);
    }
    kvWatcher_Destroy(q->w);
    kvStore_Destroy(q->kv);
    for (size_t b = 0; b < NBUCKETS; b++) {
        while (q->tenants[b] != NULL) {
            tenant_view *t = q->tenants[b];
            q->tenants[b] = t->next;
            free(t);
        }
    }
    pthread_mutex_destroy(&q->mu);
    pthread_mutex_destroy(&q->wmu);
    free(q->rules);
    free(q);
}
