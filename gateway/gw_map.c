#include "gw_map.h"
#include "sl_hash.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    struct entry *next;
    uint64_t hash;
    void *val;
    char key[];
} entry;

struct gw_map {
    entry **slots;
    size_t nslots;
    size_t len;
};

static uint64_t hash_str(const char *s)
{
    return sl_hash_str(SL_HASH_SEED, s);
}

sl_status gw_map_create(gw_map **out)
{
    gw_map *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return SL_ERR_NOMEM;
    m->nslots = 64;
    m->slots = calloc(m->nslots, sizeof(entry *));
    if (m->slots == NULL) {
        free(m);
        return SL_ERR_NOMEM;
    }
    *out = m;
    return SL_OK;
}

void gw_map_destroy(gw_map *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nslots; i++) {
        entry *e = m->slots[i];
        while (e != NULL) {
            entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(m->slots);
    free(m);
}

void *gw_map_get(const gw_map *m, const char *key)
{
    uint64_t h = hash_str(key);

    for (entry *e = m->slots[h & (m->nslots - 1)]; e != NULL; e = e->next) {
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e->val;
    }
    return NULL;
}

static void grow(gw_map *m)
{
    size_t n = m->nslots * 2;
    entry **slots = calloc(n, sizeof(entry *));

    if (slots == NULL)
        return; /* keep working with longer chains */
    for (size_t i = 0; i < m->nslots; i++) {
        entry *e = m->slots[i];
        while (e != NULL) {
            entry *next = e->next;
            e->next = slots[e->hash & (n - 1)];
            slots[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(m->slots);
    m->slots = slots;
    m->nslots = n;
}

sl_status gw_map_put(gw_map *m, const char *key, void *val)
{
    uint64_t h = hash_str(key);
    size_t klen = strlen(key);
    entry *e;

    for (e = m->slots[h & (m->nslots - 1)]; e != NULL; e = e->next) {
        if (e->hash == h && strcmp(e->key, key) == 0) {
            e->val = val;
            return SL_OK;
        }
    }
    e = malloc(sizeof(*e) + klen + 1);
    if (e == NULL)
        return SL_ERR_NOMEM;
    e->hash = h;
    e->val = val;
    memcpy(e->key, key, klen + 1);
    e->next = m->slots[h & (m->nslots - 1)];
    m->slots[h & (m->nslots - 1)] = e;
    if (++m->len > m->nslots)
        grow(m);
    return SL_OK;
}

void gw_map_del(gw_map *m, const char *key)
{
    uint64_t h = hash_str(key);
    entry **pp = &m->slots[h & (m->nslots - 1)];

    for (; *pp != NULL; pp = &(*pp)->next) {
        entry *e = *pp;
        if (e->hash == h && strcmp(e->key, key) == 0) {
            *pp = e->next;
            free(e);
            m->len--;
            return;
        }
    }
}

size_t gw_map_len(const gw_map *m)
{
    return m->len;
}

void gw_map_each(const gw_map *m, void (*fn)(const char *key, void *val, void *ud), void *ud)
{
    for (size_t i = 0; i < m->nslots; i++) {
        for (entry *e = m->slots[i]; e != NULL; e = e->next)
            fn(e->key, e->val, ud);
    }
}
