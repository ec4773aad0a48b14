#include "wrk_sched.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 4096

struct wrk_sched {
    wrk_queue **v; /* by id; NULL where freed */
    size_t n, cap, max, live;
    wrk_queue *buckets[NBUCKETS];
    wrk_queue *head, *tail; /* the ring */
    size_t ring_len;
    uint64_t next_token;
    int outstanding; /* jobs asked for and not delivered, over open requests */
};

static size_t hash_key(size_t model, const char *tenant)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)model;

    for (; *tenant != '\0'; tenant++)
        h = (h ^ (unsigned char)*tenant) * 1099511628211ULL;
    return (size_t)(h % NBUCKETS);
}

sl_status wrk_sched_create(wrk_sched **out, size_t max_queues)
{
    wrk_sched *s;

    if (out == NULL || max_queues < 1 || max_queues > UINT32_MAX)
        return SL_ERR_INVAL;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return SL_ERR_NOMEM;
    s->max = max_queues;
    s->next_token = 1;
    *out = s;
    return SL_OK;
}

void wrk_sched_destroy(wrk_sched *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    free(s);
}

wrk_queue *wrk_sched_queue(wrk_sched *s, size_t model, const char *model_name, const char *tenant,
                           bool create)
{
    size_t b;
    wrk_queue *q;
    size_t id;

    if (s == NULL || tenant == NULL || (tenant[0] != '\0' && !sl_id_valid(tenant)))
        return NULL;
    b = hash_key(model, tenant);
    for (q = s->buckets[b]; q != NULL; q = q->hnext)
        if (q->model == model && strcmp(q->tenant, tenant) == 0)
            return q;
    if (!create || model_name == NULL || !sl_id_valid(model_name) || s->live >= s->max)
        return NULL;
    /* A free id first, so ids stay below max. */
    for (id = 0; id < s->n && s->v[id] != NULL; id++)
        ;
    if (id == s->n && s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        wrk_queue **nv = realloc(s->v, cap * sizeof(*nv));
        if (nv == NULL)
            return NULL;
        s->v = nv;
        s->cap = cap;
    }
    q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->id = (uint32_t)id;
    q->model = model;
    snprintf(q->tenant, sizeof(q->tenant), "%s", tenant);
    if (tenant[0] != '\0') {
        snprintf(q->durable, sizeof(q->durable), "wrk_%s~%s", model_name, tenant);
        snprintf(q->filter, sizeof(q->filter), "sluice.work.%s.%s", model_name, tenant);
    } else {
        snprintf(q->durable, sizeof(q->durable), "wrk_%s", model_name);
        snprintf(q->filter, sizeof(q->filter), "sluice.work.%s.>", model_name);
    }
    q->hnext = s->buckets[b];
    s->buckets[b] = q;
    if (id == s->n)
        s->n++;
    s->v[id] = q;
    s->live++;
    return q;
}

wrk_queue *wrk_sched_by_id(wrk_sched *s, uint32_t id)
{
    return s != NULL && id < s->n ? s->v[id] : NULL;
}

static void ring_push(wrk_sched *s, wrk_queue *q)
{
    q->rnext = NULL;
    if (s->tail != NULL)
        s->tail->rnext = q;
    else
        s->head = q;
    s->tail = q;
    q->in_ring = true;
    s->ring_len++;
}

/* Removes q (in the ring, after prev, NULL for the head). */
static void ring_unlink(wrk_sched *s, wrk_queue *prev, wrk_queue *q)
{
    if (prev != NULL)
        prev->rnext = q->rnext;
    else
        s->head = q->rnext;
    if (s->tail == q)
        s->tail = prev;
    q->rnext = NULL;
    q->in_ring = false;
    s->ring_len--;
}

/* Puts q in line unless it is there already, claimed, or asked. */
static void ring_again(wrk_sched *s, wrk_queue *q)
{
    if (!q->in_ring && !q->claimed && q->req_token == 0)
        ring_push(s, q);
}

void wrk_sched_ring(wrk_sched *s, wrk_queue *q, int64_t now_ms, int jobs)
{
    if (s == NULL || q == NULL)
        return;
    q->bell++;
    q->seen_ms = now_ms;
    if (jobs > 0)
        q->hint = q->hint > INT_MAX - jobs ? INT_MAX : q->hint + jobs;
    ring_again(s, q);
}

void wrk_sched_ring_count(wrk_sched *s, wrk_queue *q, int64_t now_ms, int jobs)
{
    if (s == NULL || q == NULL)
        return;
    if (jobs > q->hint)
        q->hint = jobs;
    wrk_sched_ring(s, q, now_ms, 0);
}

size_t wrk_sched_active(const wrk_sched *s)
{
    return s != NULL ? s->ring_len : 0;
}

wrk_queue *wrk_sched_next(wrk_sched *s, int free, int64_t now_ms, int *batch, int64_t *wake_ms)
{
    wrk_queue *prev = NULL, *q;
    int64_t wake = INT64_MAX;
    size_t len;

    if (wake_ms != NULL)
        *wake_ms = INT64_MAX;
    if (s == NULL || free < 1)
        return NULL;
    len = s->ring_len;
    for (q = s->head; q != NULL; prev = q, q = q->rnext) {
        if (!q->ready)
            continue; /* keeps its place while wrk_sched_unready's caller sets it up */
        if (q->retry_at_ms > now_ms) {
            if (q->retry_at_ms < wake)
                wake = q->retry_at_ms;
            continue;
        }
        ring_unlink(s, prev, q);
        q->claimed = true;
        if (batch != NULL) {
            int share = free / (int)(len > 0 ? len : 1);
            if (share < 1)
                share = 1;
            /* No more than it is believed to hold: a request that is not
             * filled costs the server a status message to end it. */
            *batch = q->hint < 1 ? 1 : q->hint < share ? q->hint : share;
        }
        return q;
    }
    if (wake_ms != NULL)
        *wake_ms = wake;
    return NULL;
}

wrk_queue *wrk_sched_unready(wrk_sched *s, int64_t now_ms, int64_t *wake_ms)
{
    int64_t wake = INT64_MAX;

    if (wake_ms != NULL)
        *wake_ms = INT64_MAX;
    if (s == NULL)
        return NULL;
    for (wrk_queue *q = s->head; q != NULL; q = q->rnext) {
        if (q->ready || q->setting_up)
            continue;
        if (q->retry_at_ms > now_ms) {
            if (q->retry_at_ms < wake)
                wake = q->retry_at_ms;
            continue;
        }
        q->setting_up = true;
        return q;
    }
    if (wake_ms != NULL)
        *wake_ms = wake;
    return NULL;
}

void wrk_sched_setup_done(wrk_sched *s, wrk_queue *q, bool ok, int64_t retry_at_ms)
{
    (void)s;
    if (q == NULL)
        return;
    q->setting_up = false;
    if (ok)
        q->ready = true;
    else
        q->retry_at_ms = retry_at_ms;
}

void wrk_sched_unclaim(wrk_sched *s, wrk_queue *q)
{
    if (s == NULL || q == NULL || !q->claimed)
        return;
    q->claimed = false;
    if (!q->in_ring && q->req_token == 0)
        ring_push(s, q);
}

uint64_t wrk_sched_open(wrk_sched *s, wrk_queue *q, int batch, int64_t now_ms)
{
    q->claimed = false;
    q->req_token = s->next_token++;
    if (s->next_token == 0)
        s->next_token = 1;
    q->req_batch = batch > 0 ? batch : 1;
    q->req_got = 0;
    q->hint = q->hint > q->req_batch ? q->hint - q->req_batch : 0;
    s->outstanding += q->req_batch;
    q->req_bell = q->bell;
    q->req_at_ms = now_ms;
    return q->req_token;
}

/* Ends q's open request; q goes back in line when again is set or it was
 * rung meanwhile. */
static void close_request(wrk_sched *s, wrk_queue *q, bool again, int64_t now_ms)
{
    bool rung = q->bell != q->req_bell;

    s->outstanding -= q->req_batch - q->req_got;
    q->req_token = 0;
    q->req_batch = q->req_got = 0;
    if (again || rung) {
        q->seen_ms = now_ms;
        ring_again(s, q);
    }
}

bool wrk_sched_delivered(wrk_sched *s, wrk_queue *q, uint64_t token, int64_t now_ms)
{
    if (s == NULL || q == NULL)
        return false;
    q->held++;
    q->seen_ms = now_ms;
    if (token == 0 || token != q->req_token)
        return false;
    s->outstanding--;
    if (++q->req_got < q->req_batch)
        return false;
    /* Filled: asked again only when more are believed to be there (or it
     * was rung meanwhile); the stream's counts find any others. */
    close_request(s, q, q->hint > 0, now_ms);
    return true;
}

bool wrk_sched_ended(wrk_sched *s, wrk_queue *q, uint64_t token, int64_t now_ms)
{
    if (s == NULL || q == NULL || token == 0 || token != q->req_token)
        return false;
    q->hint = 0; /* the server found no more */
    close_request(s, q, false, now_ms);
    return true;
}

size_t wrk_sched_expire(wrk_sched *s, int64_t now_ms, int64_t timeout_ms)
{
    size_t k = 0;

    if (s == NULL)
        return 0;
    for (size_t i = 0; i < s->n; i++) {
        wrk_queue *q = s->v[i];
        if (q != NULL && q->req_token != 0 && now_ms - q->req_at_ms >= timeout_ms) {
            close_request(s, q, true, now_ms);
            q->ready = false;
            k++;
        }
    }
    return k;
}

int wrk_sched_outstanding(const wrk_sched *s)
{
    return s != NULL ? s->outstanding : 0;
}

void wrk_sched_release(wrk_sched *s, wrk_queue *q)
{
    (void)s;
    if (q != NULL && q->held > 0)
        q->held--;
}

static bool idle(const wrk_queue *q)
{
    return !q->in_ring && !q->claimed && !q->setting_up && q->req_token == 0 && q->held == 0;
}

static void free_queue(wrk_sched *s, wrk_queue *q)
{
    size_t b = hash_key(q->model, q->tenant);
    wrk_queue **pp = &s->buckets[b];

    while (*pp != NULL && *pp != q)
        pp = &(*pp)->hnext;
    if (*pp == q)
        *pp = q->hnext;
    s->v[q->id] = NULL;
    s->live--;
    free(q);
}

size_t wrk_sched_prune(wrk_sched *s, int64_t now_ms, int64_t idle_ms)
{
    size_t k = 0;

    if (s == NULL)
        return 0;
    for (size_t i = 0; i < s->n; i++) {
        wrk_queue *q = s->v[i];
        if (q != NULL && !q->pinned && idle(q) && now_ms - q->seen_ms >= idle_ms) {
            free_queue(s, q);
            k++;
        }
    }
    while (s->n > 0 && s->v[s->n - 1] == NULL)
        s->n--;
    return k;
}

bool wrk_sched_remove(wrk_sched *s, wrk_queue *q)
{
    if (s == NULL || q == NULL || !idle(q))
        return false;
    free_queue(s, q);
    while (s->n > 0 && s->v[s->n - 1] == NULL)
        s->n--;
    return true;
}
