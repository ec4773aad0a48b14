/* Exact integers in JSON. */
#include "sl_json.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>

bool sl_json_get_int(const cJSON *item, int64_t min, int64_t max, int64_t *out)
{
    double d;

    if (!cJSON_IsNumber(item))
        return false;
    d = item->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < (double)min || d > (double)max ||
        fabs(d) > (double)SL_JSON_INT_MAX)
        return false;
    *out = (int64_t)d;
    return true;
}

cJSON *sl_json_add_int(cJSON *obj, const char *name, int64_t v)
{
    char digits[24];

    if (obj == NULL || name == NULL)
        return NULL;
    snprintf(digits, sizeof(digits), "%" PRId64, v);
    return cJSON_AddRawToObject(obj, name, digits);
}
