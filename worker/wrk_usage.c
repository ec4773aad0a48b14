/* Token usage: the estimate, and the accounting of finished calls in the
 * sluice_quota and sluice_usage buckets (wrk_usage.h). */
#include "wrk_usage.h"

#include <cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sl_json.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"
#include "sl_subject.h"

/* ---- The estimate ------------------------------------------------------- */

uint64_t wrk_usage_text_tokens(const char *text, size_t len)
{
    uint64_t cps = 0;

    if (text == NULL)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)text[i] & 0xC0) != 0x80)
            cps++;
    return (cps + 3) / 4;
}

uint64_t wrk_usage_input_tokens(const wrk_msg *msgs, size_t n)
{
    uint64_t t = 0;

    for (size_t i = 0; msgs != NULL && i < n; i++) {
        const char *c = msgs[i].content;
        t += 4 + wrk_usage_text_tokens(c, c != NULL ? strlen(c) : 0);
    }
    return t;
}

wrk_call_usage wrk_usage_of_call(const wrk_result *res, const wrk_msg *msgs, size_t nmsgs,
                                 const char *output, size_t len)
{
    if (res != NULL && res->input_tokens >= 0 && res->output_tokens >= 0)
        return (wrk_call_usage){.input_tokens = (uint64_t)res->input_tokens,
                                .output_tokens = (uint64_t)res->output_tokens,
                                .estimated = false};
    return (wrk_call_usage){.input_tokens = wrk_usage_input_tokens(msgs, nmsgs),
                            .output_tokens = wrk_usage_text_tokens(output, len),
                            .estimated = true};
}

/* ---- Accounting --------------------------------------------------------- */

typedef struct pending {
    char tenant[SL_ID_MAX + 1];
    char agent[SL_ID_MAX + 1];
    uint64_t in, out, replies; /* for sluice_usage */
    uint64_t qin, qout;        /* for sluice_quota (stored separately, so retried separately) */
} pending;

struct wrk_usage {
    kvStore *quota, *usage; /* borrowed */
    pthread_mutex_t mu;     /* guards v, n, stop */
    pthread_cond_t cv;
    pending *v; /* WRK_USAGE_MAX of them */
    size_t n;
    bool stop;
    pthread_t th;
    bool started;
    pthread_mutex_t flush_mu; /* one flush at a time (the thread's and a caller's) */
    sl_counter *m_dropped, *m_errors;
};

static int64_t unix_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

/* Adds to the JSON counters of one key with compare-and-set: reads the
 * key, adds, writes it back on the revision read (or creates it), and
 * tries again when another writer came first. */
static sl_status cas_add(kvStore *kv, const char *key, uint64_t in, uint64_t out, uint64_t replies)
{
    for (int tries = 0; tries < WRK_USAGE_CAS_TRIES; tries++) {
        kvEntry *e = NULL;
        uint64_t rev = 0, have_in = 0, have_out = 0, have_rep = 0;
        natsStatus s = kvStore_Get(&e, kv, key);
        if (s == NATS_OK) {
            cJSON *o = cJSON_ParseWithLength(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
            int64_t a = 0, b = 0, r = 0;
            /* A value that does not read counts from 0 again. */
            (void)sl_json_get_int(cJSON_GetObjectItemCaseSensitive(o, "in"), 0, SL_JSON_INT_MAX,
                                  &a);
            (void)sl_json_get_int(cJSON_GetObjectItemCaseSensitive(o, "out"), 0, SL_JSON_INT_MAX,
                                  &b);
            (void)sl_json_get_int(cJSON_GetObjectItemCaseSensitive(o, "replies"), 0,
                                  SL_JSON_INT_MAX, &r);
            have_in = (uint64_t)a;
            have_out = (uint64_t)b;
            have_rep = (uint64_t)r;
            rev = kvEntry_Revision(e);
            cJSON_Delete(o);
            kvEntry_Destroy(e);
        } else if (s != NATS_NOT_FOUND) {
            return SL_ERR_BUS;
        }
        cJSON *o = cJSON_CreateObject();
        char *txt = NULL;
        if (o != NULL) {
            sl_json_add_int(o, "in", (int64_t)(have_in + in));
            sl_json_add_int(o, "out", (int64_t)(have_out + out));
            if (replies > 0 || have_rep > 0)
                sl_json_add_int(o, "replies", (int64_t)(have_rep + replies));
            txt = cJSON_PrintUnformatted(o);
        }
        cJSON_Delete(o);
        if (txt == NULL)
            return SL_ERR_NOMEM;
        uint64_t nrev = 0;
        if (rev == 0)
            s = kvStore_Create(&nrev, kv, key, txt, (int)strlen(txt));
        else
            s = kvStore_Update(&nrev, kv, key, txt, (int)strlen(txt), rev);
        cJSON_free(txt);
        if (s == NATS_OK)
            return SL_OK;
        /* A lost race is an API error (wrong last sequence, key exists):
         * read again. Anything else is the connection: leave it for the
         * next flush. */
        if (s != NATS_ERR)
            return SL_ERR_BUS;
    }
    return SL_ERR_BUS;
}

/* Adds p to what waits for the next flush. Returns false (and counts)
 * when it is a new pair and WRK_USAGE_MAX wait already. Caller holds mu. */
static bool requeue(wrk_usage *u, const pending *p)
{
    for (size_t i = 0; i < u->n; i++) {
        if (strcmp(u->v[i].tenant, p->tenant) == 0 && strcmp(u->v[i].agent, p->agent) == 0) {
            u->v[i].in += p->in;
            u->v[i].out += p->out;
            u->v[i].replies += p->replies;
            u->v[i].qin += p->qin;
            u->v[i].qout += p->qout;
            return true;
        }
    }
    if (u->n == WRK_USAGE_MAX) {
        sl_counter_inc(u->m_dropped);
        return false;
    }
    u->v[u->n++] = *p;
    return true;
}

sl_status wrk_usage_flush(wrk_usage *u)
{
    pending *batch = NULL;
    size_t n = 0;
    sl_status ret = SL_OK;

    if (u == NULL)
        return SL_OK;
    pthread_mutex_lock(&u->flush_mu);
    pthread_mutex_lock(&u->mu);
    n = u->n;
    if (n > 0) {
        batch = malloc(n * sizeof(*batch));
        if (batch != NULL) {
            memcpy(batch, u->v, n * sizeof(*batch));
            u->n = 0;
        }
    }
    pthread_mutex_unlock(&u->mu);
    if (n == 0 || batch == NULL) {
        pthread_mutex_unlock(&u->flush_mu);
        return n == 0 ? SL_OK : SL_ERR_NOMEM;
    }

    int64_t now = unix_s();
    pending *retry = calloc(n, sizeof(*retry));
    for (size_t i = 0; i < n; i++) {
        pending *p = &batch[i];
        char key[SL_SUBJECT_MAX];
        if (retry != NULL) {
            memcpy(retry[i].tenant, p->tenant, sizeof(p->tenant));
            memcpy(retry[i].agent, p->agent, sizeof(p->agent));
        }
        if (u->usage == NULL || (p->in == 0 && p->out == 0 && p->replies == 0))
            continue;
        if (sl_kv_key_usage(key, sizeof(key), p->tenant, now / SL_USAGE_SLOT_S, p->agent) !=
                SL_OK ||
            cas_add(u->usage, key, p->in, p->out, p->replies) != SL_OK) {
            if (retry != NULL) {
                retry[i].in = p->in;
                retry[i].out = p->out;
                retry[i].replies = p->replies;
            }
        }
    }
    /* The quota counts a tenant's tokens over every agent: one key each. */
    for (size_t i = 0; u->quota != NULL && i < n; i++) {
        uint64_t total_in = batch[i].qin, total_out = batch[i].qout;
        char key[SL_SUBJECT_MAX];
        bool seen = false;
        for (size_t k = 0; k < i && !seen; k++)
            seen = strcmp(batch[k].tenant, batch[i].tenant) == 0;
        if (seen)
            continue;
        for (size_t k = i + 1; k < n; k++) {
            if (strcmp(batch[k].tenant, batch[i].tenant) == 0) {
                total_in += batch[k].qin;
                total_out += batch[k].qout;
            }
        }
        if (total_in == 0 && total_out == 0)
            continue;
        if (sl_kv_key_quota(key, sizeof(key), batch[i].tenant, now) != SL_OK ||
            cas_add(u->quota, key, total_in, total_out, 0) != SL_OK) {
            if (retry != NULL) {
                retry[i].qin = total_in;
                retry[i].qout = total_out;
            }
        }
    }
    pthread_mutex_lock(&u->mu);
    for (size_t i = 0; retry != NULL && i < n; i++) {
        const pending *r = &retry[i];
        if (r->in == 0 && r->out == 0 && r->replies == 0 && r->qin == 0 && r->qout == 0)
            continue;
        sl_counter_inc(u->m_errors);
        ret = SL_ERR_BUS;
        (void)requeue(u, r);
    }
    pthread_mutex_unlock(&u->mu);
    if (ret != SL_OK)
        sl_warn("token usage not stored in %s / %s; trying again in %d ms", SL_KV_USAGE,
                SL_KV_QUOTA, WRK_USAGE_FLUSH_MS);
    if (retry == NULL)
        ret = SL_ERR_NOMEM;
    free(retry);
    free(batch);
    pthread_mutex_unlock(&u->flush_mu);
    return ret;
}

static void *flusher_main(void *arg)
{
    wrk_usage *u = arg;
    sigset_t all;

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&u->mu);
    while (!u->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += WRK_USAGE_FLUSH_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&u->cv, &u->mu, &ts);
        if (u->stop || u->n == 0)
            continue;
        pthread_mutex_unlock(&u->mu);
        (void)wrk_usage_flush(u);
        pthread_mutex_lock(&u->mu);
    }
    pthread_mutex_unlock(&u->mu);
    return NULL;
}

sl_status wrk_usage_create(wrk_usage **out, kvStore *quota, kvStore *usage)
{
    wrk_usage *u = calloc(1, sizeof(*u));

    if (u == NULL)
        return SL_ERR_NOMEM;
    u->v = calloc(WRK_USAGE_MAX, sizeof(*u->v));
    if (u->v == NULL) {
        free(u);
        return SL_ERR_NOMEM;
    }
    u->quota = quota;
    u->usage = usage;
    u->m_dropped = sl_counter_get("sluice_wrk_usage_dropped_total", NULL,
                                  "token usage not stored in KV: too many tenants and agents "
                                  "waiting for a flush");
    u->m_errors = sl_counter_get("sluice_wrk_usage_store_errors_total", NULL,
                                 "flushes of token usage to KV that failed (tried again)");
    pthread_mutex_init(&u->mu, NULL);
    pthread_mutex_init(&u->flush_mu, NULL);
    pthread_cond_init(&u->cv, NULL);
    if (pthread_create(&u->th, NULL, flusher_main, u) != 0) {
        wrk_usage_destroy(u);
        return SL_ERR_INTERNAL;
    }
    u->started = true;
    *out = u;
    return SL_OK;
}

void wrk_usage_add(wrk_usage *u, const char *tenant, const char *agent, uint64_t input_tokens,
                   uint64_t output_tokens)
{
    char labels[3 * SL_ID_MAX];

    if (u == NULL || !sl_id_valid(tenant) || !sl_id_valid(agent))
        return;
    snprintf(labels, sizeof(labels), "tenant=\"%s\",agent=\"%s\",direction=\"input\"", tenant,
             agent);
    sl_counter_add(sl_counter_get("sluice_tokens_total", labels,
                                  "tokens of model calls, from the model's report or estimated"),
                   input_tokens);
    snprintf(labels, sizeof(labels), "tenant=\"%s\",agent=\"%s\",direction=\"output\"", tenant,
             agent);
    sl_counter_add(sl_counter_get("sluice_tokens_total", labels,
                                  "tokens of model calls, from the model's report or estimated"),
                   output_tokens);

    pending p = {.in = input_tokens,
                 .out = output_tokens,
                 .replies = 1,
                 .qin = input_tokens,
                 .qout = output_tokens};
    memcpy(p.tenant, tenant, strlen(tenant) + 1);
    memcpy(p.agent, agent, strlen(agent) + 1);
    pthread_mutex_lock(&u->mu);
    bool dropped = !requeue(u, &p);
    pthread_mutex_unlock(&u->mu);
    if (dropped)
        sl_warn("token usage of tenant %s, agent %s not stored: %d pairs wait already", tenant,
                agent, WRK_USAGE_MAX);
}

void wrk_usage_destroy(wrk_usage *u)
{
    if (u == NULL)
        return;
    if (u->started) {
        pthread_mutex_lock(&u->mu);
        u->stop = true;
        pthread_cond_signal(&u->cv);
        pthread_mutex_unlock(&u->mu);
        pthread_join(u->th, NULL);
        (void)wrk_usage_flush(u);
    }
    pthread_cond_destroy(&u->cv);
    pthread_mutex_destroy(&u->flush_mu);
    pthread_mutex_destroy(&u->mu);
    free(u->v);
    free(u);
}
