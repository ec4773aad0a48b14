#include "orch_scache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_subject.h"
#include "sl_hash.h"

#define NBUCKETS 4096

typedef struct entry {
    char key[SL_SUBJECT_MAX];
    orch_causal_state st;
    uint64_t rev;
    int64_t at_ms;
    struct entry *next;          /* hash chain */
    struct entry *older, *newer; /* write order */
} entry;

struct orch_scache {
    entry *buckets[NBUCKETS];
    entry *oldest, *newest;
    size_t n, max;
    int64_t ttl_ms;
};

static size_t hash(const char *s)
{
    return (size_t)(sl_hash_str(SL_HASH_SEED, s) % NBUCKETS);
}

sl_status orch_scache_create(orch_scache **out, size_t max, int64_t ttl_ms)
{
    orch_scache *c;

    if (out == NULL || max < 1 || ttl_ms < 1)
        return SL_ERR_INVAL;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return SL_ERR_NOMEM;
    c->max = max;
    c->ttl_ms = ttl_ms;
    *out = c;
    return SL_OK;
}

void orch_scache_destroy(orch_scache *c)
{
    entry *e, *next;

    if (c == NULL)
        return;
    for (e = c->oldest; e != NULL; e = next) {
        next = e->newer;
        free(e);
    }
    free(c);
}

static entry **find(orch_scache *c, const char *key)
{
    entry **pp;

    for (pp = &c->buckets[hash(key)]; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->key, key) == 0)
            return pp;
    }
    return pp;
}

static void unlink_order(orch_scache *c, entry *e)
{
    if (e->older != NULL)
        e->older->newer = e->newer;
    else
        c->oldest = e->newer;
    if (e->newer != NULL)
        e->newer->older = e->older;
    else
        c->newest = e->older;
    e->older = e->newer = NULL;
}

static void link_newest(orch_scache *c, entry *e)
{
    e->older = c->newest;
    e->newer = NULL;
    if (c->newest != NULL)
        c->newest->newer = e;
    else
        c->oldest = e;
    c->newest = e;
}

/* Unlinks and frees the entry at *pp. */
static void remove_at(orch_scache *c, entry **pp)
{
    entry *e = *pp;

    *pp = e->next;
    unlink_order(c, e);
    free(e);
    c->n--;
}

bool orch_scache_get(orch_scache *c, const char *key, int64_t now_ms, orch_causal_state *st,
                     uint64_t *rev)
{
    entry *e = *find(c, key);

    if (e == NULL || now_ms - e->at_ms >= c->ttl_ms || now_ms < e->at_ms)
        return false;
    *st = e->st;
    *rev = e->rev;
    return true;
}

void orch_scache_put(orch_scache *c, const char *key, const orch_causal_state *st, uint64_t rev,
                     int64_t now_ms)
{
    entry **pp;
    entry *e;

    if (strlen(key) >= SL_SUBJECT_MAX)
        return;
    pp = find(c, key);
    e = *pp;
    if (e != NULL) {
        if (e->rev > rev)
            return;
        unlink_order(c, e);
    } else {
        while (c->n >= c->max) {
            entry **op = find(c, c->oldest->key);
            remove_at(c, op);
        }
        e = calloc(1, sizeof(*e));
        if (e == NULL)
            return;
        snprintf(e->key, sizeof(e->key), "%s", key);
        pp = find(c, key); /* the chain may have changed */
        *pp = e;
        c->n++;
    }
    e->st = *st;
    e->rev = rev;
    e->at_ms = now_ms;
    link_newest(c, e);
}

void orch_scache_forget(orch_scache *c, const char *key)
{
    entry **pp = find(c, key);

    if (*pp != NULL)
        remove_at(c, pp);
}

size_t orch_scache_count(const orch_scache *c)
{
    return c->n;
}
