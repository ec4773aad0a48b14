/* Exact integers in JSON, both ways, for every tier.
 *
 * cJSON keeps numbers as doubles and prints them with 15 significant
 * digits whenever that reads back "close enough" (a relative tolerance),
 * so cJSON_AddNumberToObject() turns 8204888159999999 into
 * 8204888160000000. Integers that leave a process (token claims, sequence
 * numbers, positions, times) go through these helpers instead. */
#ifndef SL_JSON_H
#define SL_JSON_H

#include <cJSON.h>
#include <stdbool.h>
#include <stdint.h>

/* 2^53: every integer of at most this magnitude is exact in a double. */
#define SL_JSON_INT_MAX INT64_C(9007199254740992)

/* Stores in *out the value of item when it is a JSON number with an
 * integral value in [min, max] (both within +-SL_JSON_INT_MAX); returns
 * false and leaves *out alone otherwise (NULL, not a number, fractional,
 * out of range). */
bool sl_json_get_int(const cJSON *item, int64_t min, int64_t max, int64_t *out);

/* Adds name: v to obj, printed in decimal digit for digit. Returns the new
 * item, or NULL when obj or name is NULL or memory runs out. */
cJSON *sl_json_add_int(cJSON *obj, const char *name, int64_t v);

#endif
