#include "orch_causal.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_bus.h"
#include "sl_log.h"

static bool empty(const char *s)
{
    return s == NULL || s[0] == '\0';
}

bool orch_causal_seen(const orch_causal_state *st, const char *id)
{
    if (empty(id))
        return false;
    if (strcmp(st->last, id) == 0)
        return true;
    for (size_t i = 0; i < st->n; i++) {
        if (strcmp(st->recent[i], id) == 0)
            return true;
    }
    return false;
}

orch_causal_decision orch_causal_decide(const orch_causal_state *st, const char *client_id,
                                        const char *prev, int64_t age_ms, int64_t wait_ms)
{
    if (orch_causal_seen(st, client_id))
        return ORCH_CAUSAL_DUPLICATE;
    /* No predecessor starts a chain; a processed predecessor (the last one,
     * or an older one after a gap or a fork) lets the message through. */
    if (empty(prev) || orch_causal_seen(st, prev))
        return ORCH_CAUSAL_PROCESS;
    return age_ms >= wait_ms ? ORCH_CAUSAL_GAP : ORCH_CAUSAL_WAIT;
}

void orch_causal_advance(orch_causal_state *st, const char *client_id)
{
    if (empty(client_id) || strlen(client_id) > ORCH_CAUSAL_ID_MAX)
        return;
    snprintf(st->last, sizeof(st->last), "%s", client_id);
    for (size_t i = 0; i < st->n; i++) {
        if (strcmp(st->recent[i], client_id) == 0)
            return;
    }
    if (st->n == ORCH_CAUSAL_RECENT) {
        memmove(st->recent[0], st->recent[1], (ORCH_CAUSAL_RECENT - 1) * sizeof(st->recent[0]));
        st->n--;
    }
    snprintf(st->recent[st->n++], sizeof(st->recent[0]), "%s", client_id);
}

sl_status orch_causal_parse(orch_causal_state *st, const char *json, size_t len)
{
    cJSON *root = cJSON_ParseWithLength(json, len);
    const cJSON *last, *recent, *it;
    sl_status st_ = SL_OK;

    memset(st, 0, sizeof(*st));
    if (!cJSON_IsObject(root)) {
        st_ = SL_ERR_INVAL;
        goto cleanup;
    }
    last = cJSON_GetObjectItemCaseSensitive(root, "last");
    recent = cJSON_GetObjectItemCaseSensitive(root, "recent");
    if ((last != NULL && !cJSON_IsString(last)) || (recent != NULL && !cJSON_IsArray(recent))) {
        st_ = SL_ERR_INVAL;
        goto cleanup;
    }
    cJSON_ArrayForEach(it, recent)
    {
        if (cJSON_IsString(it))
            orch_causal_advance(st, it->valuestring);
    }
    if (last != NULL && strlen(last->valuestring) <= ORCH_CAUSAL_ID_MAX)
        snprintf(st->last, sizeof(st->last), "%s", last->valuestring);
cleanup:
    if (st_ != SL_OK)
        memset(st, 0, sizeof(*st));
    cJSON_Delete(root);
    return st_;
}

static sl_status format_cjson(const orch_causal_state *st, char **out);

/* True when s can go into a JSON string as it is (printable ASCII
 * without quote or backslash), as client ids are. */
static bool json_plain(const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c > 0x7e || c == '"' || c == '\\')
            return false;
    }
    return true;
}

/* The common case without cJSON: it is on the loop's path once per
 * session and batch, and cJSON builds and frees a node per id. Returns
 * false when an id needs escaping (the caller uses cJSON then). */
static bool format_plain(const orch_causal_state *st, char **out, bool *nomem)
{
    size_t cap = (st->n + 1) * (ORCH_CAUSAL_ID_MAX + 3) + 32, len;
    char *s;

    if (!json_plain(st->last))
        return false;
    for (size_t i = 0; i < st->n; i++)
        if (!json_plain(st->recent[i]))
            return false;
    if ((s = malloc(cap)) == NULL) {
        *nomem = true;
        return false;
    }
    len = (size_t)snprintf(s, cap, "{\"last\":\"%s\",\"recent\":[", st->last);
    for (size_t i = 0; i < st->n; i++) {
        size_t k = strlen(st->recent[i]);
        if (i > 0)
            s[len++] = ',';
        s[len++] = '"';
        memcpy(s + len, st->recent[i], k);
        len += k;
        s[len++] = '"';
    }
    memcpy(s + len, "]}", 3);
    *out = s;
    return true;
}

sl_status orch_causal_format(const orch_causal_state *st, char **out)
{
    bool nomem = false;

    if (format_plain(st, out, &nomem))
        return SL_OK;
    if (nomem)
        return SL_ERR_NOMEM;
    return format_cjson(st, out);
}

static sl_status format_cjson(const orch_causal_state *st, char **out)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = NULL;
    char *s = NULL;

    if (root == NULL || cJSON_AddStringToObject(root, "last", st->last) == NULL ||
        (arr = cJSON_AddArrayToObject(root, "recent")) == NULL)
        goto cleanup;
    for (size_t i = 0; i < st->n; i++) {
        cJSON *v = cJSON_CreateString(st->recent[i]);
        if (v == NULL || !cJSON_AddItemToArray(arr, v)) {
            cJSON_Delete(v);
            goto cleanup;
        }
    }
    s = cJSON_PrintUnformatted(root);
cleanup:
    cJSON_Delete(root);
    if (s == NULL)
        return SL_ERR_NOMEM;
    *out = s;
    return SL_OK;
}

sl_status orch_causal_load(kvStore *kv, const char *key, orch_causal_state *st, uint64_t *rev)
{
    kvEntry *e = NULL;
    natsStatus s;

    memset(st, 0, sizeof(*st));
    s = kvStore_Get(&e, kv, key);
    if (s == NATS_NOT_FOUND) {
        *rev = 0;
        return SL_OK;
    }
    if (s != NATS_OK)
        return sl_status_from_nats_failure(s);
    if (kvEntry_Operation(e) != kvOp_Put) {
        /* A deleted key keeps a revision: write over it with that revision. */
        *rev = kvEntry_Revision(e);
        kvEntry_Destroy(e);
        return SL_OK;
    }
    if (orch_causal_parse(st, kvEntry_Value(e), (size_t)kvEntry_ValueLen(e)) != SL_OK)
        sl_warn("causal state %s is malformed; starting it afresh", key);
    *rev = kvEntry_Revision(e);
    kvEntry_Destroy(e);
    return SL_OK;
}

sl_status orch_causal_from_entry(const orch_kv_entry *e, orch_causal_state *st, uint64_t *rev)
{
    memset(st, 0, sizeof(*st));
    *rev = 0;
    if (e->st == SL_ERR_NOTFOUND)
        return SL_OK;
    if (e->st != SL_OK)
        return e->st == SL_ERR_TIMEOUT ? SL_ERR_TIMEOUT : SL_ERR_BUS;
    *rev = e->rev;
    if (e->deleted)
        return SL_OK; /* write over the marker with its revision */
    if (orch_causal_parse(st, e->value, e->len) != SL_OK)
        sl_warn("causal state %s is malformed; starting it afresh", e->key);
    return SL_OK;
}

sl_status orch_causal_store(kvStore *kv, const char *key, const orch_causal_state *st, uint64_t rev)
{
    char *json = NULL;
    uint64_t nrev = 0;
    natsStatus s;
    jsErrCode jerr = 0;
    sl_status r;

    if ((r = orch_causal_format(st, &json)) != SL_OK)
        return r;
    if (rev == 0)
        s = kvStore_CreateString(&nrev, kv, key, json);
    else
        s = kvStore_UpdateString(&nrev, kv, key, json, rev);
    free(json);
    (void)jerr;
    if (s == NATS_OK)
        return SL_OK;
    /* A lost race: "wrong last sequence" (10071) from Update, "key exists"
     * from Create. */
    if (s == NATS_ERR && strstr(nats_GetLastError(NULL), "wrong last sequence") != NULL)
        return SL_ERR_CONFLICT;
    if (s == NATS_ERR && strstr(nats_GetLastError(NULL), "key exists") != NULL)
        return SL_ERR_CONFLICT;
    return sl_status_from_nats_failure(s);
}
