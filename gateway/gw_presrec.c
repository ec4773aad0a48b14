#include "gw_presrec.h"

#include <stdio.h>
#include <string.h>

#include "sl_auth.h"
#include "sl_json.h"
#include "sl_subject.h"

sl_status gw_presrec_key(char *buf, size_t n, const char *tenant, const char *room,
                         const char *instance)
{
    int w;

    if (!sl_id_valid(tenant) || !sl_id_valid(room) || !sl_id_valid(instance))
        return SL_ERR_INVAL;
    w = snprintf(buf, n, "%s.%s.%c%s", tenant, room, GW_PRESREC_MARK, instance);
    return w < 0 || (size_t)w >= n ? SL_ERR_INVAL : SL_OK;
}

char *gw_presrec_encode(const gw_presrec_member *m, int n, int total)
{
    cJSON *o = cJSON_CreateObject(), *arr;
    char *out = NULL;

    if (o == NULL || !sl_json_add_int(o, "v", 1) || !sl_json_add_int(o, "count", total) ||
        (arr = cJSON_AddArrayToObject(o, "members")) == NULL)
        goto done;
    for (int i = 0; i < n; i++) {
        cJSON *it = cJSON_CreateObject();
        if (it == NULL || !cJSON_AddItemToArray(arr, it) ||
            cJSON_AddStringToObject(it, "session", m[i].session) == NULL ||
            cJSON_AddStringToObject(it, "user", m[i].user) == NULL)
            goto done;
    }
    out = cJSON_PrintUnformatted(o);
done:
    cJSON_Delete(o);
    return out;
}

/* Appends one member unless seen or the array is full. */
static bool add_member(const char *session, const char *user, cJSON *members, gw_map *seen, int max,
                       bool *truncated)
{
    cJSON *it;

    if (!sl_id_valid(session) || !sl_user_valid(user) || gw_map_get(seen, session) != NULL)
        return true;
    if (cJSON_GetArraySize(members) >= max) {
        *truncated = true;
        return true;
    }
    if ((it = cJSON_CreateObject()) == NULL || cJSON_AddStringToObject(it, "user", user) == NULL ||
        cJSON_AddStringToObject(it, "session", session) == NULL) {
        cJSON_Delete(it);
        return false;
    }
    if (gw_map_put(seen, session, members) != SL_OK) {
        cJSON_Delete(it);
        return false;
    }
    cJSON_AddItemToArray(members, it);
    return true;
}

bool gw_presrec_collect(const char *key, const char *value, size_t len, cJSON *members,
                        gw_map *seen, int max, bool *truncated)
{
    const char *last = key != NULL ? strrchr(key, '.') : NULL;
    cJSON *v;
    bool ok = true;

    if (last == NULL || value == NULL)
        return true;
    last++;
    v = cJSON_ParseWithLength(value, len);
    if (!cJSON_IsObject(v)) {
        cJSON_Delete(v);
        return true;
    }
    if (last[0] == GW_PRESREC_MARK) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(v, "members"), *it;
        int64_t count = 0;
        int listed = 0;
        cJSON_ArrayForEach(it, arr)
        {
            const cJSON *ss = cJSON_GetObjectItemCaseSensitive(it, "session");
            const cJSON *u = cJSON_GetObjectItemCaseSensitive(it, "user");
            listed++;
            if (cJSON_IsString(ss) && cJSON_IsString(u) &&
                !(ok = add_member(ss->valuestring, u->valuestring, members, seen, max, truncated)))
                break;
        }
        if (sl_json_get_int(cJSON_GetObjectItemCaseSensitive(v, "count"), 0, SL_JSON_INT_MAX,
                            &count) &&
            count > listed)
            *truncated = true;
    } else {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(v, "user");
        if (cJSON_IsString(u))
            ok = add_member(last, u->valuestring, members, seen, max, truncated);
    }
    cJSON_Delete(v);
    return ok;
}
