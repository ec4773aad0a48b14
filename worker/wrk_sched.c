#include "wrk_sched.h"
#include "sl_config.h"
#include "sl_hash.h"
#include "sl_streams.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 4096

/* A tenant's slots over its queues. Listed (in the active list) while it
 * holds or asks for slots, has a queue in the ring, or did within
 * WRK_FAIR_LINGER_MS; freed once it is neither listed nor has queues. */
typedef struct wrk_tenant {
    char name[SL_ID_MAX + 1];
    int weight;
    int load;        /* jobs held and asked for, over its queues */
    int running;     /* jobs started and not released, over its queues */
    int nring;       /* its queues in the ring */
    size_t nqueues;  /* its queues in the table */
    int64_t last_ms; /* last time one of its jobs was delivered or settled */
    bool listed;
    uint64_t gen;                     /* wrk_sched_next's pass that saw it as a candidate */
    struct wrk_tenant *hnext, *anext; /* hash chain, active list */
} wrk_tenant;

struct wrk_sched {
    wrk_queue **v; /* by id; NULL where freed */
    size_t n, cap, max, live;
    wrk_queue *buckets[NBUCKETS];
    wrk_queue *head, *tail; /* the ring */
    size_t ring_len;
    uint64_t next_token;
    int outstanding; /* jobs asked for and not delivered, over open requests */
    int refill;      /* a queue with more waiting jobs than this is not asked */

    wrk_tenant *tbuckets[NBUCKETS];
    wrk_tenant *active; /* the active list */
    wrk_weight *weights;
    size_t nweights;
    uint64_t gen;
    /* wrk_sched_next's scratch: one entry per active tenant. */
    wrk_fair *fair;
    wrk_queue **candq, **candprev;
    size_t scap;
};

/* ---- Fair share ---------------------------------------------------------- */

int wrk_fair_share(int slots, int weight, int64_t weights)
{
    int64_t sh;

    if (slots < 1)
        return 1;
    if (weight < 1)
        weight = 1;
    if (weights < weight)
        weights = weight;
    sh = ((int64_t)slots * weight + weights - 1) / weights;
    return sh < 1 ? 1 : sh > slots ? slots : (int)sh;
}

int wrk_fair_grant(wrk_fair *t, size_t n, int slots, int free)
{
    int64_t weights = 0;
    int below = 0, total = 0;

    if (t == NULL)
        return 0;
    for (size_t i = 0; i < n; i++) {
        t[i].grant = 0;
        weights += t[i].weight < 1 ? 1 : t[i].weight;
    }
    for (size_t i = 0; i < n; i++)
        if (t[i].load < wrk_fair_share(slots, t[i].weight, weights))
            below++;
    while (total < free) {
        size_t best = n;
        int64_t best_l = 0, best_w = 1;

        for (size_t i = 0; i < n; i++) {
            int64_t l = (int64_t)t[i].load + t[i].grant, w = t[i].weight < 1 ? 1 : t[i].weight;
            if (t[i].grant >= t[i].want)
                continue;
            /* At its share while another is below its own: that slot is
             * kept for the other. */
            if (l >= wrk_fair_share(slots, t[i].weight, weights) && below > 0)
                continue;
            if (best == n || l * best_w < best_l * w) {
                best = i;
                best_l = l;
                best_w = w;
            }
        }
        if (best == n)
            break;
        if (best_l < wrk_fair_share(slots, t[best].weight, weights) &&
            best_l + 1 >= wrk_fair_share(slots, t[best].weight, weights))
            below--;
        t[best].grant++;
        total++;
    }
    return total;
}

sl_status wrk_weights_parse(const char *spec, wrk_weight **out, size_t *n, char *err, size_t errlen)
{
    sl_tenant_value *tv = NULL;
    wrk_weight *v = NULL;
    size_t k = 0;
    sl_status st;

    if (out == NULL || n == NULL)
        return SL_ERR_INVAL;
    *out = NULL;
    *n = 0;
    st = sl_tenant_values_parse(spec, "weight", 1, WRK_WEIGHT_MAX, WRK_WEIGHTS_MAX, &tv, &k, err,
                                errlen);
    if (st != SL_OK || k == 0)
        return st;
    v = calloc(k, sizeof(*v));
    if (v == NULL) {
        free(tv);
        return SL_ERR_NOMEM;
    }
    for (size_t i = 0; i < k; i++) {
        memcpy(v[i].tenant, tv[i].tenant, sizeof(v[i].tenant));
        v[i].weight = (int)tv[i].value;
    }
    free(tv);
    *out = v;
    *n = k;
    return SL_OK;
}

/* ---- The table ------------------------------------------------------------ */

static size_t hash_key(size_t model, const char *tenant)
{
    return (size_t)(sl_hash_str(SL_HASH_SEED ^ (uint64_t)model, tenant) % NBUCKETS);
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
    s->refill = INT32_MAX;
    *out = s;
    return SL_OK;
}

void wrk_sched_destroy(wrk_sched *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    for (size_t b = 0; b < NBUCKETS; b++) {
        while (s->tbuckets[b] != NULL) {
            wrk_tenant *t = s->tbuckets[b];
            s->tbuckets[b] = t->hnext;
            free(t);
        }
    }
    free(s->weights);
    free(s->fair);
    free(s->candq);
    free(s->candprev);
    free(s->v);
    free(s);
}

static int weight_of(const wrk_sched *s, const char *tenant)
{
    for (size_t i = 0; i < s->nweights; i++)
        if (strcmp(s->weights[i].tenant, tenant) == 0)
            return s->weights[i].weight;
    return 1;
}

sl_status wrk_sched_set_weights(wrk_sched *s, const wrk_weight *w, size_t n)
{
    wrk_weight *copy = NULL;

    if (s == NULL || (w == NULL && n > 0))
        return SL_ERR_INVAL;
    for (size_t i = 0; i < n; i++)
        if (w[i].weight < 1 || w[i].weight > WRK_WEIGHT_MAX)
            return SL_ERR_INVAL;
    if (n > 0) {
        copy = malloc(n * sizeof(*copy));
        if (copy == NULL)
            return SL_ERR_NOMEM;
        memcpy(copy, w, n * sizeof(*copy));
    }
    free(s->weights);
    s->weights = copy;
    s->nweights = n;
    for (size_t b = 0; b < NBUCKETS; b++)
        for (wrk_tenant *t = s->tbuckets[b]; t != NULL; t = t->hnext)
            t->weight = weight_of(s, t->name);
    return SL_OK;
}

/* The tenant entry of name, made when missing. NULL when out of memory. */
static wrk_tenant *tenant_get(wrk_sched *s, const char *name)
{
    size_t b = hash_key(SIZE_MAX, name);
    wrk_tenant *t;

    for (t = s->tbuckets[b]; t != NULL; t = t->hnext)
        if (strcmp(t->name, name) == 0)
            return t;
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->weight = weight_of(s, name);
    t->hnext = s->tbuckets[b];
    s->tbuckets[b] = t;
    return t;
}

static void tenant_free(wrk_sched *s, wrk_tenant *t)
{
    wrk_tenant **pp = &s->tbuckets[hash_key(SIZE_MAX, t->name)];

    while (*pp != NULL && *pp != t)
        pp = &(*pp)->hnext;
    if (*pp == t)
        *pp = t->hnext;
    free(t);
}

/* Puts t in the active list (it holds, asks or waits). */
static void tenant_list(wrk_sched *s, wrk_tenant *t)
{
    if (!t->listed) {
        t->listed = true;
        t->anext = s->active;
        s->active = t;
    }
}

static void tenant_load(wrk_sched *s, wrk_tenant *t, int delta)
{
    t->load += delta;
    if (t->load < 0)
        t->load = 0;
    if (t->load > 0)
        tenant_list(s, t);
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
    q->owner = tenant_get(s, tenant);
    if (q->owner == NULL) {
        free(q);
        return NULL;
    }
    q->owner->nqueues++;
    q->id = (uint32_t)id;
    q->model = model;
    snprintf(q->tenant, sizeof(q->tenant), "%s", tenant);
    /* Both ids were validated above and both buffers fit them: these
     * cannot fail. A "" tenant is the model-wide legacy queue. */
    (void)sl_work_durable(q->durable, sizeof(q->durable), model_name, tenant);
    (void)sl_subject_work_filter(q->filter, sizeof(q->filter), model_name, tenant);
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
    q->owner->nring++;
    tenant_list(s, q->owner);
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
    q->owner->nring--;
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

/* Makes room for n entries in the scratch arrays. */
static bool scratch_grow(wrk_sched *s, size_t n)
{
    size_t cap = s->scap ? s->scap : 16;
    wrk_fair *f;
    wrk_queue **a, **b;

    if (n <= s->scap)
        return true;
    while (cap < n)
        cap *= 2;
    f = realloc(s->fair, cap * sizeof(*f));
    if (f == NULL)
        return false;
    s->fair = f;
    a = realloc(s->candq, cap * sizeof(*a));
    if (a == NULL)
        return false;
    s->candq = a;
    b = realloc(s->candprev, cap * sizeof(*b));
    if (b == NULL)
        return false;
    s->candprev = b;
    s->scap = cap;
    return true;
}

wrk_queue *wrk_sched_next(wrk_sched *s, int free, int64_t now_ms, int *batch, int64_t *wake_ms)
{
    int64_t wake = INT64_MAX, linger_wake = INT64_MAX;
    size_t n = 0, ncand = 0, k;
    int64_t load = 0;
    wrk_tenant **pp, *t;
    wrk_queue *prev, *q;

    if (wake_ms != NULL)
        *wake_ms = INT64_MAX;
    if (s == NULL || free < 1)
        return NULL;
    /* The active tenants; those idle past their linger leave. */
    for (pp = &s->active; (t = *pp) != NULL;) {
        if (t->load == 0 && t->nring == 0) {
            if (now_ms - t->last_ms >= WRK_FAIR_LINGER_MS) {
                *pp = t->anext;
                t->anext = NULL;
                t->listed = false;
                if (t->nqueues == 0)
                    tenant_free(s, t);
                continue;
            }
            if (t->last_ms + WRK_FAIR_LINGER_MS < linger_wake)
                linger_wake = t->last_ms + WRK_FAIR_LINGER_MS;
        }
        load += t->load;
        n++;
        pp = &t->anext;
    }
    if (!scratch_grow(s, n))
        return NULL;
    /* The tenants that may be asked now, in ring order, each with its
     * first due queue (every tenant with a queue in the ring is listed). */
    s->gen++;
    for (prev = NULL, q = s->head; q != NULL && ncand < n; prev = q, q = q->rnext) {
        if (!q->ready)
            continue; /* keeps its place while wrk_sched_unready's caller sets it up */
        if (q->retry_at_ms > now_ms) {
            if (q->retry_at_ms < wake)
                wake = q->retry_at_ms;
            continue;
        }
        /* Its buffer is not run down yet: asked once it is (a job
         * started calls the caller back here). */
        if (q->waiting > s->refill)
            continue;
        t = q->owner;
        if (t->gen == s->gen)
            continue;
        t->gen = s->gen;
        /* No more than it is believed to hold: a request that is not
         * filled costs the server a status message to end it. */
        s->fair[ncand] =
            (wrk_fair){.load = t->load, .weight = t->weight, .want = q->hint < 1 ? 1 : q->hint};
        s->candq[ncand] = q;
        s->candprev[ncand] = prev;
        ncand++;
    }
    k = ncand;
    for (t = s->active; t != NULL && k < n; t = t->anext)
        if (t->gen != s->gen)
            s->fair[k++] = (wrk_fair){.load = t->load, .weight = t->weight, .want = 0};
    if (load > INT_MAX - free)
        load = INT_MAX - free;
    wrk_fair_grant(s->fair, k, (int)load + free, free);
    for (size_t i = 0; i < ncand; i++) {
        if (s->fair[i].grant > 0) {
            q = s->candq[i];
            ring_unlink(s, s->candprev[i], q);
            q->claimed = true;
            if (batch != NULL)
                *batch = s->fair[i].grant;
            return q;
        }
    }
    /* Tenants were kept from slots held for others: that ends with the
     * others' linger at the latest. */
    if (ncand > 0 && linger_wake < wake)
        wake = linger_wake;
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
    tenant_load(s, q->owner, q->req_batch);
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
    tenant_load(s, q->owner, -(q->req_batch - q->req_got));
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
    q->waiting++;
    q->seen_ms = now_ms;
    q->owner->last_ms = now_ms;
    if (token == 0 || token != q->req_token) {
        tenant_load(s, q->owner, 1); /* a late delivery: a slot not asked for */
        return false;
    }
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

void wrk_sched_release(wrk_sched *s, wrk_queue *q, int64_t now_ms)
{
    if (s == NULL || q == NULL || q->held == 0)
        return;
    q->held--;
    if (q->held < q->waiting)
        q->waiting = q->held; /* released without wrk_sched_started */
    if (q->owner->running > 0)
        q->owner->running--;
    tenant_load(s, q->owner, -1);
    q->owner->last_ms = now_ms;
}

void wrk_sched_set_refill(wrk_sched *s, int at)
{
    if (s != NULL)
        s->refill = at < 0 ? 0 : at;
}

void wrk_sched_started(wrk_sched *s, wrk_queue *q)
{
    if (s == NULL || q == NULL || q->waiting == 0)
        return;
    q->waiting--;
    q->owner->running++;
}

void wrk_sched_dropped(wrk_sched *s, wrk_queue *q, int64_t now_ms)
{
    if (s == NULL || q == NULL || q->held == 0)
        return;
    q->held--;
    if (q->waiting > 0)
        q->waiting--;
    tenant_load(s, q->owner, -1);
    q->owner->last_ms = now_ms;
}

int wrk_sched_tenant_running(const wrk_queue *q)
{
    return q != NULL ? q->owner->running : 0;
}

/* Whether t counts as active at now_ms (wrk_sched_next drops the others
 * from the list at its next pass). */
static bool tenant_active(const wrk_tenant *t, int64_t now_ms)
{
    return t->load > 0 || t->nring > 0 || now_ms - t->last_ms < WRK_FAIR_LINGER_MS;
}

int wrk_sched_pick(const wrk_sched *s, wrk_queue *const *qs, size_t n, int slots, int64_t now_ms,
                   int64_t *wake_ms)
{
    int64_t weights = 0, wake = INT64_MAX, best_r = 0, best_w = 1;
    int below = 0, best = -1;

    if (wake_ms != NULL)
        *wake_ms = INT64_MAX;
    if (s == NULL || qs == NULL || n == 0)
        return -1;
    /* A tenant with a job delivered holds it (load > 0): it is listed. */
    for (const wrk_tenant *t = s->active; t != NULL; t = t->anext)
        if (tenant_active(t, now_ms))
            weights += t->weight < 1 ? 1 : t->weight;
    for (const wrk_tenant *t = s->active; t != NULL; t = t->anext) {
        if (!tenant_active(t, now_ms) || t->running >= wrk_fair_share(slots, t->weight, weights))
            continue;
        below++;
        if (t->load == 0 && t->nring == 0 && t->last_ms + WRK_FAIR_LINGER_MS < wake)
            wake = t->last_ms + WRK_FAIR_LINGER_MS; /* kept for it until its linger ends */
    }
    for (size_t i = 0; i < n; i++) {
        const wrk_tenant *t = qs[i]->owner;
        int64_t r = t->running, w = t->weight < 1 ? 1 : t->weight;
        bool mine_below = r < wrk_fair_share(slots, t->weight, weights);
        /* At its share while another is below its own: kept for the other. */
        if (!mine_below && below > 0)
            continue;
        if (best < 0 || r * best_w < best_r * w) {
            best = (int)i;
            best_r = r;
            best_w = w;
        }
    }
    if (best < 0 && wake_ms != NULL)
        *wake_ms = wake;
    return best;
}

int wrk_sched_tenant_load(const wrk_queue *q)
{
    return q != NULL ? q->owner->load : 0;
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
    if (--q->owner->nqueues == 0 && !q->owner->listed)
        tenant_free(s, q->owner);
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
