#include "orch_inflight.h"

#include <cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_log.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "sl_hash.h"

#define NBUCKETS   4096
#define KEY_MAX    ORCH_INFLIGHT_KEY_MAX
#define ENDS_KEPT  32
#define RATE_STALE 30000 /* ms: older end times say nothing about the rate now */

typedef struct job {
    char key[KEY_MAX]; /* "<tenant>.<job>" */
    char tenant[SL_ID_MAX + 1];
    size_t agent;
    int64_t since_ms;
    struct job *next;
    /* Kept for the lost-work check (stub != NULL): on the tracked list,
     * which is in check time order because every check time is "now" plus
     * the same interval. */
    uint8_t *stub;
    size_t stub_len;
    uint64_t seq;
    int64_t check_ms;
    struct job *tprev, *tnext;
} job;

/* A per-(tenant, agent) active count or a per-(tenant, model) end log. */
typedef struct tally {
    char key[KEY_MAX];
    int64_t active;
    int64_t ends[ENDS_KEPT]; /* ring of end times, ms */
    size_t nends, head;
    struct tally *next;
} tally;

struct orch_inflight {
    const orch_agents *agents;
    pthread_mutex_t mu;
    job *jobs[NBUCKETS];
    tally *tallies[NBUCKETS];
    size_t njobs;
    job *thead, *ttail; /* the tracked list, oldest check time first */
    size_t ntracked;
    int64_t last_sweep_ms;
    natsSubscription *sub;      /* the bucket's updates, read by orch_inflight_poll */
    char prefix[SL_ID_MAX + 8]; /* "$KV.<bucket>." */
    size_t prefix_len;
};

static size_t hash(const char *s)
{
    return (size_t)(sl_hash_str(SL_HASH_SEED, s) % NBUCKETS);
}

static tally *tally_get(orch_inflight *f, const char *key)
{
    size_t b = hash(key);
    tally *t;

    for (t = f->tallies[b]; t != NULL; t = t->next) {
        if (strcmp(t->key, key) == 0)
            return t;
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    snprintf(t->key, sizeof(t->key), "%s", key);
    t->next = f->tallies[b];
    f->tallies[b] = t;
    return t;
}

static tally *agent_tally(orch_inflight *f, const char *tenant, size_t agent)
{
    char key[KEY_MAX];

    snprintf(key, sizeof(key), "a/%s/%zu", tenant, agent);
    return tally_get(f, key);
}

static job **job_find(orch_inflight *f, const char *key)
{
    job **pp;

    for (pp = &f->jobs[hash(key)]; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->key, key) == 0)
            return pp;
    }
    return pp;
}

static void job_add(orch_inflight *f, job **slot, const char *key, const char *tenant, size_t agent,
                    int64_t now_ms)
{
    job *j = calloc(1, sizeof(*j));
    tally *t;

    if (j == NULL)
        return;
    snprintf(j->key, sizeof(j->key), "%s", key);
    snprintf(j->tenant, sizeof(j->tenant), "%s", tenant);
    j->agent = agent;
    j->since_ms = now_ms;
    *slot = j;
    f->njobs++;
    if ((t = agent_tally(f, tenant, agent)) != NULL)
        t->active++;
}

static void tracked_unlink(orch_inflight *f, job *j)
{
    if (j->tprev != NULL)
        j->tprev->tnext = j->tnext;
    else
        f->thead = j->tnext;
    if (j->tnext != NULL)
        j->tnext->tprev = j->tprev;
    else
        f->ttail = j->tprev;
    j->tprev = j->tnext = NULL;
}

static void tracked_append(orch_inflight *f, job *j)
{
    j->tprev = f->ttail;
    j->tnext = NULL;
    if (f->ttail != NULL)
        f->ttail->tnext = j;
    else
        f->thead = j;
    f->ttail = j;
}

static void job_remove(orch_inflight *f, job **slot)
{
    job *j = *slot;
    tally *t = agent_tally(f, j->tenant, j->agent);

    if (j->stub != NULL) {
        tracked_unlink(f, j);
        free(j->stub);
        f->ntracked--;
    }
    if (t != NULL && t->active > 0)
        t->active--;
    *slot = j->next;
    free(j);
    f->njobs--;
}

/* Drops jobs older than the bucket's TTL: their KV entries expired without
 * a final state, so they no longer hold a slot. Caller holds mu. */
static void sweep(orch_inflight *f, int64_t now_ms)
{
    if (now_ms - f->last_sweep_ms < 10000)
        return;
    f->last_sweep_ms = now_ms;
    for (size_t b = 0; b < NBUCKETS; b++) {
        job **pp = &f->jobs[b];
        while (*pp != NULL) {
            if (now_ms - (*pp)->since_ms > (int64_t)SL_INFLIGHT_TTL_S * 1000)
                job_remove(f, pp);
            else
                pp = &(*pp)->next;
        }
    }
}

static void note_end(orch_inflight *f, const char *tenant, size_t agent, int64_t at_ms)
{
    char key[KEY_MAX];
    tally *t;

    if (agent >= f->agents->n)
        return;
    snprintf(key, sizeof(key), "m/%s/%s", tenant, f->agents->v[agent].model);
    if ((t = tally_get(f, key)) == NULL)
        return;
    t->ends[t->head] = at_ms;
    t->head = (t->head + 1) % ENDS_KEPT;
    if (t->nends < ENDS_KEPT)
        t->nends++;
}

void orch_inflight_apply(orch_inflight *f, const char *key, const char *json, size_t len,
                         int64_t at_ms)
{
    char tenant[SL_ID_MAX + 1];
    const char *dot = strchr(key, '.');
    cJSON *root = NULL;
    const cJSON *state, *agent;
    size_t idx = 0;
    bool active;
    job **slot;

    if (dot == NULL || dot == key || (size_t)(dot - key) > SL_ID_MAX ||
        strncmp(dot + 1, "x-", 2) == 0)
        return;
    memcpy(tenant, key, (size_t)(dot - key));
    tenant[dot - key] = '\0';
    if (json != NULL)
        root = cJSON_ParseWithLength(json, len);
    state = cJSON_GetObjectItemCaseSensitive(root, "state");
    agent = cJSON_GetObjectItemCaseSensitive(root, "agent");
    if (json != NULL && (!cJSON_IsString(state) || !cJSON_IsString(agent) ||
                         orch_agents_find(f->agents, agent->valuestring, &idx) == NULL)) {
        cJSON_Delete(root);
        return;
    }
    active = json != NULL && (strcmp(state->valuestring, "queued") == 0 ||
                              strcmp(state->valuestring, "running") == 0);
    pthread_mutex_lock(&f->mu);
    slot = job_find(f, key);
    if (active && *slot == NULL) {
        job_add(f, slot, key, tenant, idx, at_ms);
    } else if (!active) {
        if (*slot != NULL) {
            idx = (*slot)->agent;
            job_remove(f, slot);
        }
        if (json != NULL && strcmp(state->valuestring, "done") == 0)
            note_end(f, tenant, idx, at_ms);
    }
    pthread_mutex_unlock(&f->mu);
    cJSON_Delete(root);
}

void orch_inflight_note(orch_inflight *f, const char *tenant, const char *jobid, size_t agent,
                        int64_t now_ms)
{
    char key[KEY_MAX];
    job **slot;

    if (sl_kv_key2(key, sizeof(key), tenant, jobid) != SL_OK)
        return;
    pthread_mutex_lock(&f->mu);
    sweep(f, now_ms);
    slot = job_find(f, key);
    if (*slot == NULL)
        job_add(f, slot, key, tenant, agent, now_ms);
    pthread_mutex_unlock(&f->mu);
}

sl_status orch_inflight_track(orch_inflight *f, const char *tenant, const char *jobid, uint64_t seq,
                              const void *stub, size_t len, int64_t check_ms)
{
    char key[KEY_MAX];
    uint8_t *copy;
    sl_status st = SL_OK;
    job **slot;

    if (len == 0 || sl_kv_key2(key, sizeof(key), tenant, jobid) != SL_OK)
        return SL_ERR_INVAL;
    pthread_mutex_lock(&f->mu);
    slot = job_find(f, key);
    if (*slot == NULL) {
        st = SL_ERR_NOTFOUND;
    } else if ((*slot)->stub != NULL) {
        st = SL_OK;
    } else if (f->ntracked >= ORCH_INFLIGHT_TRACK_MAX) {
        st = SL_ERR_FULL;
    } else if ((copy = malloc(len)) == NULL) {
        st = SL_ERR_NOMEM;
    } else {
        job *j = *slot;
        memcpy(copy, stub, len);
        j->stub = copy;
        j->stub_len = len;
        j->seq = seq;
        j->check_ms = check_ms;
        tracked_append(f, j);
        f->ntracked++;
    }
    pthread_mutex_unlock(&f->mu);
    return st;
}

size_t orch_inflight_due(orch_inflight *f, int64_t now_ms, int64_t next_ms, orch_inflight_lost *out,
                         size_t max)
{
    size_t n = 0;

    pthread_mutex_lock(&f->mu);
    while (n < max && f->thead != NULL && f->thead->check_ms <= now_ms) {
        job *j = f->thead;
        uint8_t *copy = malloc(j->stub_len);
        if (copy == NULL)
            break;
        memcpy(copy, j->stub, j->stub_len);
        snprintf(out[n].key, sizeof(out[n].key), "%s", j->key);
        out[n].seq = j->seq;
        out[n].stub = copy;
        out[n].len = j->stub_len;
        n++;
        /* To the tail: next_ms is at or after every check time kept. */
        j->check_ms = next_ms;
        tracked_unlink(f, j);
        tracked_append(f, j);
    }
    pthread_mutex_unlock(&f->mu);
    return n;
}

void orch_inflight_forget(orch_inflight *f, const char *key)
{
    job **slot;

    pthread_mutex_lock(&f->mu);
    slot = job_find(f, key);
    if (*slot != NULL)
        job_remove(f, slot);
    pthread_mutex_unlock(&f->mu);
}

size_t orch_inflight_tracked(orch_inflight *f)
{
    size_t n;

    pthread_mutex_lock(&f->mu);
    n = f->ntracked;
    pthread_mutex_unlock(&f->mu);
    return n;
}

int64_t orch_inflight_active(orch_inflight *f, const char *tenant, size_t agent)
{
    int64_t n = 0;
    tally *t;

    pthread_mutex_lock(&f->mu);
    if ((t = agent_tally(f, tenant, agent)) != NULL)
        n = t->active;
    pthread_mutex_unlock(&f->mu);
    return n;
}

int64_t orch_inflight_retry_after_ms(orch_inflight *f, const char *tenant, const char *model,
                                     int64_t queue_max, int64_t now_ms)
{
    char key[KEY_MAX];
    int64_t retry = 1000;
    tally *t;

    snprintf(key, sizeof(key), "m/%s/%s", tenant, model);
    pthread_mutex_lock(&f->mu);
    t = tally_get(f, key);
    if (t != NULL && t->nends >= 2) {
        size_t newest = (t->head + ENDS_KEPT - 1) % ENDS_KEPT;
        size_t oldest = (t->head + ENDS_KEPT - t->nends) % ENDS_KEPT;
        int64_t span = t->ends[newest] - t->ends[oldest];
        if (now_ms - t->ends[newest] < RATE_STALE) {
            double rate = (double)(t->nends - 1) * 1000.0 / (double)(span > 1 ? span : 1);
            double want = queue_max / 10 > 1 ? (double)(queue_max / 10) : 1.0;
            retry = (int64_t)(want * 1000.0 / rate);
        }
    }
    pthread_mutex_unlock(&f->mu);
    if (retry < 100)
        retry = 100;
    if (retry > 30000)
        retry = 30000;
    return retry;
}

/* Updates read per poll at most, so one poll never holds the loop long
 * (the rest waits for the next). */
#define POLL_MAX 4096
/* Messages applied and not destroyed yet: destroyed together, because
 * cnats frees every message on its garbage collector thread and wakes it
 * for each one destroyed while it sleeps. */
#define DONE_MAX 64

static void destroy_all(natsMsg **done, int *n)
{
    for (int i = 0; i < *n; i++)
        natsMsg_Destroy(done[i]);
    *n = 0;
}

/* Applies one update of the bucket: the key from the subject, a delete
 * or purge (KV-Operation) as NULL, the time from its metadata. */
static void apply_msg(orch_inflight *f, natsMsg *m)
{
    const char *subj = natsMsg_GetSubject(m), *op = NULL;
    jsMsgMetaData *meta = NULL;
    int64_t at_ms = 0;
    bool del;

    if (subj == NULL || strncmp(subj, f->prefix, f->prefix_len) != 0 || subj[f->prefix_len] == '\0')
        return;
    del = natsMsgHeader_Get(m, "KV-Operation", &op) == NATS_OK && op != NULL &&
          (strcmp(op, "DEL") == 0 || strcmp(op, "PURGE") == 0);
    if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
        at_ms = meta->Timestamp / 1000000;
        jsMsgMetaData_Destroy(meta);
    }
    orch_inflight_apply(f, subj + f->prefix_len, del ? NULL : natsMsg_GetData(m),
                        del ? 0 : (size_t)natsMsg_GetDataLength(m), at_ms);
}

void orch_inflight_poll(orch_inflight *f)
{
    natsMsg *done[DONE_MAX];
    int ndone = 0;

    if (f == NULL || f->sub == NULL)
        return;
    for (int i = 0; i < POLL_MAX; i++) {
        natsMsg *m = NULL;
        /* A zero timeout never waits: NATS_TIMEOUT when nothing is queued. */
        if (natsSubscription_NextMsg(&m, f->sub, 0) != NATS_OK)
            break;
        apply_msg(f, m);
        if (ndone == DONE_MAX)
            destroy_all(done, &ndone);
        done[ndone++] = m;
    }
    destroy_all(done, &ndone);
}

sl_status orch_inflight_start(orch_inflight *f, jsCtx *js, const char *bucket)
{
    jsSubOptions so;
    char subj[SL_SUBJECT_MAX];
    jsErrCode jerr = 0;

    if (f == NULL || js == NULL || bucket == NULL || !sl_id_valid(bucket))
        return SL_ERR_INVAL;
    snprintf(f->prefix, sizeof(f->prefix), "$KV.%s.", bucket);
    f->prefix_len = strlen(f->prefix);
    snprintf(subj, sizeof(subj), "%s>", f->prefix);
    /* What kvStore_WatchAll subscribes to (an ordered consumer from each
     * key's latest entry), read by the loop itself instead of a watcher
     * thread woken for every update. */
    jsSubOptions_Init(&so);
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverLastPerSubject;
    if (js_SubscribeSync(&f->sub, js, subj, NULL, &so, &jerr) != NATS_OK) {
        f->sub = NULL;
        return SL_ERR_BUS;
    }
    if (natsSubscription_SetPendingLimits(f->sub, -1, -1) != NATS_OK) {
        natsSubscription_Destroy(f->sub);
        f->sub = NULL;
        return SL_ERR_BUS;
    }
    return SL_OK;
}

sl_status orch_inflight_create(orch_inflight **out, const orch_agents *agents)
{
    orch_inflight *f = calloc(1, sizeof(*f));

    if (f == NULL)
        return SL_ERR_NOMEM;
    f->agents = agents;
    pthread_mutex_init(&f->mu, NULL);
    *out = f;
    return SL_OK;
}

void orch_inflight_destroy(orch_inflight *f)
{
    if (f == NULL)
        return;
    if (f->sub != NULL) {
        natsSubscription_Unsubscribe(f->sub);
        natsSubscription_Destroy(f->sub);
    }
    for (size_t b = 0; b < NBUCKETS; b++) {
        while (f->jobs[b] != NULL) {
            job *j = f->jobs[b];
            f->jobs[b] = j->next;
            free(j->stub);
            free(j);
        }
        while (f->tallies[b] != NULL) {
            tally *t = f->tallies[b];
            f->tallies[b] = t->next;
            free(t);
        }
    }
    pthread_mutex_destroy(&f->mu);
    free(f);
}
