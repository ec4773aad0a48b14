/* A string-keyed hash map (chained, grows by doubling). Keys are copied;
 * values are borrowed. Loop thread only. */
#ifndef GW_MAP_H
#define GW_MAP_H

#include <stddef.h>

#include "sl_status.h"

typedef struct gw_map gw_map;

sl_status gw_map_create(gw_map **out);

/* Frees the map (not the values); NULL-safe. */
void gw_map_destroy(gw_map *m);

/* Returns the value for key, or NULL. */
void *gw_map_get(const gw_map *m, const char *key);

/* Sets key to val (replacing). SL_ERR_NOMEM on failure, map unchanged. */
sl_status gw_map_put(gw_map *m, const char *key, void *val);

/* Removes key if present. */
void gw_map_del(gw_map *m, const char *key);

size_t gw_map_len(const gw_map *m);

/* Calls fn for every entry; fn must not change the map. */
void gw_map_each(const gw_map *m, void (*fn)(const char *key, void *val, void *ud), void *ud);

#endif
