#include "orch_park.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_subject.h"
#include "sl_hash.h"

#define NBUCKETS 1024
#define KEY_MAX  (2 * SL_ID_MAX + 8)

typedef struct parked {
    natsMsg *m;
    char id[ORCH_CAUSAL_ID_MAX + 1];
    char prev[ORCH_CAUSAL_ID_MAX + 1];
    int64_t lease_ms; /* when the copy is dropped (the server redelivers it then) */
    struct parked *next;
} parked;

typedef struct tenant_count {
    char tenant[SL_ID_MAX + 1];
    int64_t n;
} tenant_count;

typedef struct psession {
    char key[KEY_MAX];
    tenant_count *tc;
    parked *head, *tail; /* oldest first */
    int64_t n;
    bool woken;
    size_t idx; /* position in p->v */
    struct psession *next;
} psession;

struct orch_park {
    int64_t per_session, per_tenant, total;
    psession *buckets[NBUCKETS];
    psession **v; /* sessions with parked messages, for round robin */
    size_t nv, capv, rr;
    tenant_count **tenants; /* tenants with parked messages */
    size_t ntenants, captenants;
    size_t count;
};

static size_t hash(const char *s)
{
    return (size_t)(sl_hash_str(SL_HASH_SEED, s) % NBUCKETS);
}

sl_status orch_park_create(orch_park **out, int64_t per_session, int64_t per_tenant, int64_t total)
{
    orch_park *p;

    if (out == NULL || per_session < 0 || per_tenant < 0 || total < 0)
        return SL_ERR_INVAL;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return SL_ERR_NOMEM;
    p->per_session = per_session;
    p->per_tenant = per_tenant;
    p->total = total;
    *out = p;
    return SL_OK;
}

static psession *session_find(const orch_park *p, const char *key)
{
    psession *s;

    for (s = p->buckets[hash(key)]; s != NULL; s = s->next) {
        if (strcmp(s->key, key) == 0)
            return s;
    }
    return NULL;
}

static tenant_count *tenant_find(const orch_park *p, const char *tenant)
{
    for (size_t i = 0; i < p->ntenants; i++) {
        if (strcmp(p->tenants[i]->tenant, tenant) == 0)
            return p->tenants[i];
    }
    return NULL;
}

/* Forgets a tenant without parked messages. */
static void tenant_drop(orch_park *p, tenant_count *tc)
{
    for (size_t i = 0; i < p->ntenants; i++) {
        if (p->tenants[i] == tc) {
            p->tenants[i] = p->tenants[--p->ntenants];
            break;
        }
    }
    free(tc);
}

/* Unlinks an empty session and frees it. */
static void session_drop(orch_park *p, psession *s)
{
    psession **pp = &p->buckets[hash(s->key)];

    while (*pp != s)
        pp = &(*pp)->next;
    *pp = s->next;
    p->v[s->idx] = p->v[--p->nv];
    p->v[s->idx]->idx = s->idx;
    free(s);
}

bool orch_park_fits(const orch_park *p, const char *tenant, const char *key)
{
    const psession *s = session_find(p, key);
    const tenant_count *tc = tenant_find(p, tenant);

    return (s == NULL ? 0 : s->n) < p->per_session && (tc == NULL ? 0 : tc->n) < p->per_tenant &&
           (int64_t)p->count < p->total;
}

sl_status orch_park_add(orch_park *p, const char *tenant, const char *key, const char *id,
                        const char *prev, natsMsg *m, int64_t lease_end_ms)
{
    psession *s;
    tenant_count *tc;
    parked *e;

    if (m == NULL || strlen(key) >= KEY_MAX || strlen(tenant) > SL_ID_MAX)
        return SL_ERR_INVAL;
    if (!orch_park_fits(p, tenant, key))
        return SL_ERR_FULL;
    if ((e = calloc(1, sizeof(*e))) == NULL)
        return SL_ERR_NOMEM;
    if ((tc = tenant_find(p, tenant)) == NULL) {
        if (p->ntenants == p->captenants) {
            size_t cap = p->captenants ? p->captenants * 2 : 16;
            tenant_count **nt = realloc(p->tenants, cap * sizeof(*nt));
            if (nt == NULL) {
                free(e);
                return SL_ERR_NOMEM;
            }
            p->tenants = nt;
            p->captenants = cap;
        }
        if ((tc = calloc(1, sizeof(*tc))) == NULL) {
            free(e);
            return SL_ERR_NOMEM;
        }
        snprintf(tc->tenant, sizeof(tc->tenant), "%s", tenant);
        p->tenants[p->ntenants++] = tc;
    }
    if ((s = session_find(p, key)) == NULL) {
        if (p->nv == p->capv) {
            size_t cap = p->capv ? p->capv * 2 : 64;
            psession **nv = realloc(p->v, cap * sizeof(*nv));
            if (nv == NULL) {
                free(e);
                if (tc->n == 0)
                    tenant_drop(p, tc);
                return SL_ERR_NOMEM;
            }
            p->v = nv;
            p->capv = cap;
        }
        if ((s = calloc(1, sizeof(*s))) == NULL) {
            free(e);
            if (tc->n == 0)
                tenant_drop(p, tc);
            return SL_ERR_NOMEM;
        }
        snprintf(s->key, sizeof(s->key), "%s", key);
        s->next = p->buckets[hash(key)];
        p->buckets[hash(key)] = s;
        s->idx = p->nv;
        p->v[p->nv++] = s;
    }
    s->tc = tc;
    e->m = m;
    snprintf(e->id, sizeof(e->id), "%s", id != NULL ? id : "");
    snprintf(e->prev, sizeof(e->prev), "%s", prev != NULL ? prev : "");
    e->lease_ms = lease_end_ms;
    if (s->tail != NULL)
        s->tail->next = e;
    else
        s->head = e;
    s->tail = e;
    s->n++;
    tc->n++;
    p->count++;
    return SL_OK;
}

/* Moves s's messages to out while there is room; drops s when empty. */
static size_t session_take(orch_park *p, psession *s, natsMsg **out, size_t max)
{
    size_t k = 0;

    while (s->head != NULL && k < max) {
        parked *e = s->head;
        s->head = e->next;
        out[k++] = e->m;
        free(e);
        s->n--;
        s->tc->n--;
        p->count--;
    }
    if (s->head == NULL) {
        if (s->tc->n == 0)
            tenant_drop(p, s->tc);
        s->tail = NULL;
        session_drop(p, s);
    }
    return k;
}

size_t orch_park_take_session(orch_park *p, const char *key, const char *id, natsMsg **out,
                              size_t max)
{
    psession *s = session_find(p, key);
    bool take = id == NULL;

    if (s == NULL)
        return 0;
    for (const parked *e = s->head; e != NULL && !take; e = e->next)
        take = strcmp(e->prev, id) == 0 || strcmp(e->id, id) == 0;
    return take ? session_take(p, s, out, max) : 0;
}

size_t orch_park_take_ready(orch_park *p, natsMsg **out, size_t max)
{
    size_t k = 0;

    for (size_t i = 0; i < p->nv && k < max;) {
        psession *s = p->v[i];
        if (!s->woken) {
            i++;
            continue;
        }
        /* The whole session, so that its messages are decided together
         * and in order; session_take moves another session into v[i]. */
        s->woken = false;
        if (s->n > (int64_t)(max - k))
            break;
        k += session_take(p, s, out + k, max - k);
    }
    return k;
}

/* Drops the copies of s that match (lease ended at now_ms, or client id
 * id when id is not NULL); frees s when it is left empty. Returns how many
 * were dropped. */
static size_t session_drop_some(orch_park *p, psession *s, int64_t now_ms, const char *id)
{
    parked **pp = &s->head, *last = NULL;
    size_t dropped = 0;

    while (*pp != NULL) {
        parked *e = *pp;
        if (id != NULL ? strcmp(e->id, id) != 0 : e->lease_ms > now_ms) {
            last = e;
            pp = &e->next;
            continue;
        }
        *pp = e->next;
        natsMsg_Destroy(e->m);
        free(e);
        s->n--;
        s->tc->n--;
        p->count--;
        dropped++;
    }
    s->tail = last;
    if (s->head == NULL) {
        if (s->tc->n == 0)
            tenant_drop(p, s->tc);
        session_drop(p, s);
    }
    return dropped;
}

size_t orch_park_expire(orch_park *p, int64_t now_ms)
{
    size_t dropped = 0;

    for (size_t i = 0; i < p->nv;) {
        psession *s = p->v[i];
        int64_t ended = 0;
        bool freed;
        for (const parked *e = s->head; e != NULL; e = e->next)
            ended += e->lease_ms <= now_ms;
        if (ended == 0) {
            i++;
            continue;
        }
        freed = ended == s->n;
        dropped += session_drop_some(p, s, now_ms, NULL);
        /* A session left empty is freed and another one takes its slot:
         * look at slot i again then. */
        if (!freed)
            i++;
    }
    return dropped;
}

size_t orch_park_drop_id(orch_park *p, const char *key, const char *id)
{
    psession *s = session_find(p, key);

    return s == NULL || id == NULL ? 0 : session_drop_some(p, s, 0, id);
}

void orch_park_wake(orch_park *p, const char *key)
{
    psession *s = session_find(p, key);

    if (s != NULL)
        s->woken = true;
}

size_t orch_park_sessions(orch_park *p, const char **keys, size_t max)
{
    size_t k = 0;

    if (p->nv == 0)
        return 0;
    if (p->rr >= p->nv)
        p->rr = 0;
    for (size_t i = 0; i < p->nv && k < max; i++)
        keys[k++] = p->v[(p->rr + i) % p->nv]->key;
    p->rr = (p->rr + k) % p->nv;
    return k;
}

bool orch_park_recheck(orch_park *p, const char *key, const orch_causal_state *st)
{
    psession *s = session_find(p, key);

    if (s == NULL)
        return false;
    for (const parked *e = s->head; e != NULL; e = e->next) {
        if (orch_causal_seen(st, e->prev) || orch_causal_seen(st, e->id)) {
            s->woken = true;
            return true;
        }
    }
    return false;
}

size_t orch_park_count(const orch_park *p)
{
    return p == NULL ? 0 : p->count;
}

void orch_park_destroy(orch_park *p, natsConnection *nc)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->nv; i++) {
        parked *e = p->v[i]->head;
        while (e != NULL) {
            parked *next = e->next;
            const char *reply = natsMsg_GetReply(e->m);
            if (nc != NULL && reply != NULL && reply[0] != '\0')
                (void)natsConnection_PublishString(nc, reply, "-NAK");
            natsMsg_Destroy(e->m);
            free(e);
            e = next;
        }
        free(p->v[i]);
    }
    for (size_t i = 0; i < p->ntenants; i++)
        free(p->tenants[i]);
    free(p->v);
    free(p->tenants);
    free(p);
}
