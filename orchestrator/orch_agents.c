#include "orch_agents.h"

#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sl_json.h"
#include "sl_text.h"
#include "sl_subject.h"

#define AGENTS_FILE_MAX (1024 * 1024)

static const char default_agents[] =
    "{\"agents\":["
    "{\"name\":\"assistant\",\"model\":\"default\",\"match\":\"all\","
    "\"system_prompt\":\"You are a helpful assistant in a chat room. Answer briefly.\","
    "\"fallback\":\"" ORCH_DEFAULT_FALLBACK "\",\"max_concurrent\":0},"
    "{\"name\":\"summarizer\",\"model\":\"default\",\"match\":\"mention\","
    "\"system_prompt\":\"You summarize the conversation when asked.\","
    "\"fallback\":\"" ORCH_DEFAULT_FALLBACK "\",\"max_concurrent\":0}"
    "]}";

static void agent_free(orch_agent *g)
{
    free(g->name);
    free(g->model);
    free(g->backend_model);
    free(g->system_prompt);
    free(g->fallback);
    if (g->pattern != NULL) {
        regfree(&g->re);
        free(g->pattern);
    }
    memset(g, 0, sizeof(*g));
}

void orch_agents_destroy(orch_agents *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < a->n; i++)
        agent_free(&a->v[i]);
    free(a->v);
    free(a);
}

/* Copies an optional string member: absent gives def (strdup'd); present
 * and not a string is an error. */
static sl_status opt_string(const cJSON *obj, const char *key, const char *def, char **out,
                            const char *who, char *err, size_t errlen)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    const char *v = def;

    if (it != NULL) {
        if (!cJSON_IsString(it)) {
            sl_errf(err, errlen, "agent %s: \"%s\" must be a string", who, key);
            return SL_ERR_INVAL;
        }
        v = it->valuestring;
    }
    *out = strdup(v != NULL ? v : "");
    return *out != NULL ? SL_OK : SL_ERR_NOMEM;
}

static sl_status parse_match(const cJSON *m, orch_agent *g, char *err, size_t errlen)
{
    if (cJSON_IsString(m)) {
        if (strcmp(m->valuestring, "all") == 0) {
            g->match = ORCH_MATCH_ALL;
            return SL_OK;
        }
        if (strcmp(m->valuestring, "mention") == 0) {
            g->match = ORCH_MATCH_MENTION;
            return SL_OK;
        }
    } else if (cJSON_IsObject(m) && cJSON_GetArraySize(m) == 1) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "regex");
        if (cJSON_IsString(r) && r->valuestring[0] != '\0') {
            int rc = regcomp(&g->re, r->valuestring, REG_EXTENDED | REG_NOSUB);
            if (rc != 0) {
                char why[128];
                regerror(rc, &g->re, why, sizeof(why));
                sl_errf(err, errlen, "agent %s: bad regex \"%s\": %s", g->name, r->valuestring,
                        why);
                return SL_ERR_INVAL;
            }
            g->pattern = strdup(r->valuestring);
            if (g->pattern == NULL) {
                regfree(&g->re);
                return SL_ERR_NOMEM;
            }
            g->match = ORCH_MATCH_REGEX;
            return SL_OK;
        }
    }
    sl_errf(err, errlen, "agent %s: \"match\" must be \"all\", \"mention\" or {\"regex\":\"...\"}",
            g->name);
    return SL_ERR_INVAL;
}

static sl_status parse_agent(const cJSON *obj, size_t index, orch_agent *g, char *err,
                             size_t errlen)
{
    static const char *const known[] = {"name",          "model",          "backend_model",
                                        "system_prompt", "system",         "match",
                                        "fallback",      "max_concurrent", "description"};
    const cJSON *it;
    char who[32];
    sl_status st;

    snprintf(who, sizeof(who), "#%zu", index);
    if (!cJSON_IsObject(obj)) {
        sl_errf(err, errlen, "agent %s: must be an object", who);
        return SL_ERR_INVAL;
    }
    cJSON_ArrayForEach(it, obj)
    {
        bool ok = false;
        for (size_t k = 0; k < sizeof(known) / sizeof(known[0]) && !ok; k++)
            ok = it->string != NULL && strcmp(it->string, known[k]) == 0;
        if (!ok) {
            sl_errf(err, errlen, "agent %s: unknown key \"%s\"", who,
                    it->string != NULL ? it->string : "?");
            return SL_ERR_INVAL;
        }
    }
    it = cJSON_GetObjectItemCaseSensitive(obj, "name");
    if (!cJSON_IsString(it) || !sl_id_valid(it->valuestring)) {
        sl_errf(err, errlen, "agent %s: \"name\" must match [A-Za-z0-9_-]{1,64}", who);
        return SL_ERR_INVAL;
    }
    if ((g->name = strdup(it->valuestring)) == NULL)
        return SL_ERR_NOMEM;
    it = cJSON_GetObjectItemCaseSensitive(obj, "model");
    if (!cJSON_IsString(it) || !sl_id_valid(it->valuestring)) {
        sl_errf(err, errlen, "agent %s: \"model\" must match [A-Za-z0-9_-]{1,64}", g->name);
        return SL_ERR_INVAL;
    }
    if ((g->model = strdup(it->valuestring)) == NULL)
        return SL_ERR_NOMEM;
    if ((st = opt_string(obj, "backend_model", "", &g->backend_model, g->name, err, errlen)) !=
        SL_OK)
        return st;
    it = cJSON_GetObjectItemCaseSensitive(obj, "system_prompt");
    if ((st = opt_string(obj, it != NULL ? "system_prompt" : "system", "", &g->system_prompt,
                         g->name, err, errlen)) != SL_OK)
        return st;
    if ((st = opt_string(obj, "fallback", ORCH_DEFAULT_FALLBACK, &g->fallback, g->name, err,
                         errlen)) != SL_OK)
        return st;
    if (g->fallback[0] == '\0') {
        sl_errf(err, errlen, "agent %s: \"fallback\" must not be empty", g->name);
        return SL_ERR_INVAL;
    }
    it = cJSON_GetObjectItemCaseSensitive(obj, "description");
    if (it != NULL && !cJSON_IsString(it)) {
        sl_errf(err, errlen, "agent %s: \"description\" must be a string", g->name);
        return SL_ERR_INVAL;
    }
    it = cJSON_GetObjectItemCaseSensitive(obj, "max_concurrent");
    if (it != NULL) {
        if (!sl_json_get_int(it, 0, 1000000, &g->max_concurrent)) {
            sl_errf(err, errlen, "agent %s: \"max_concurrent\" must be an integer in 0..1000000",
                    g->name);
            return SL_ERR_INVAL;
        }
    }
    it = cJSON_GetObjectItemCaseSensitive(obj, "match");
    if (it == NULL) {
        sl_errf(err, errlen, "agent %s: \"match\" is required", g->name);
        return SL_ERR_INVAL;
    }
    return parse_match(it, g, err, errlen);
}

sl_status orch_agents_parse(orch_agents **out, const char *json, char *err, size_t errlen)
{
    cJSON *root = NULL;
    const cJSON *arr;
    orch_agents *a = NULL;
    sl_status st = SL_OK;
    int n;

    err[0] = '\0';
    root = cJSON_Parse(json);
    if (root == NULL) {
        sl_errf(err, errlen, "not valid JSON (near offset %td)",
                cJSON_GetErrorPtr() != NULL ? cJSON_GetErrorPtr() - json : (ptrdiff_t)0);
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    arr = root;
    if (cJSON_IsObject(root)) {
        arr = cJSON_GetObjectItemCaseSensitive(root, "agents");
        if (cJSON_GetArraySize(root) != 1 || arr == NULL) {
            sl_errf(err, errlen, "expected {\"agents\":[...]} or an array of agents");
            st = SL_ERR_INVAL;
            goto cleanup;
        }
    }
    if (!cJSON_IsArray(arr)) {
        sl_errf(err, errlen, "\"agents\" must be an array");
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    n = cJSON_GetArraySize(arr);
    if (n < 1 || n > ORCH_AGENTS_MAX) {
        sl_errf(err, errlen, "expected 1..%d agents, got %d", ORCH_AGENTS_MAX, n);
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    a = calloc(1, sizeof(*a));
    if (a == NULL || (a->v = calloc((size_t)n, sizeof(*a->v))) == NULL) {
        st = SL_ERR_NOMEM;
        goto cleanup;
    }
    for (int i = 0; i < n; i++) {
        st = parse_agent(cJSON_GetArrayItem(arr, i), (size_t)i, &a->v[i], err, errlen);
        a->n = (size_t)i + 1;
        if (st != SL_OK)
            goto cleanup;
        for (int j = 0; j < i; j++) {
            if (strcmp(a->v[j].name, a->v[i].name) == 0) {
                sl_errf(err, errlen, "agent %s: duplicate name", a->v[i].name);
                st = SL_ERR_INVAL;
                goto cleanup;
            }
        }
    }
    *out = a;
    a = NULL;
cleanup:
    if (st == SL_ERR_NOMEM && err[0] == '\0')
        sl_errf(err, errlen, "out of memory");
    orch_agents_destroy(a);
    cJSON_Delete(root);
    return st;
}

sl_status orch_agents_load(orch_agents **out, const char *path, char *err, size_t errlen)
{
    FILE *f = NULL;
    char *buf = NULL;
    char why[256];
    size_t len;
    sl_status st = SL_OK;

    if (path == NULL || path[0] == '\0') {
        st = orch_agents_parse(out, default_agents, why, sizeof(why));
        if (st != SL_OK)
            sl_errf(err, errlen, "built-in agents: %s", why);
        return st;
    }
    f = fopen(path, "rb");
    if (f == NULL) {
        sl_errf(err, errlen, "SLUICE_AGENTS_FILE %s: %s", path, strerror(errno));
        return SL_ERR_IO;
    }
    buf = malloc(AGENTS_FILE_MAX + 1);
    if (buf == NULL) {
        st = SL_ERR_NOMEM;
        sl_errf(err, errlen, "SLUICE_AGENTS_FILE %s: out of memory", path);
        goto cleanup;
    }
    len = fread(buf, 1, AGENTS_FILE_MAX + 1, f);
    if (ferror(f) || len > AGENTS_FILE_MAX) {
        sl_errf(err, errlen, "SLUICE_AGENTS_FILE %s: %s", path,
                ferror(f) ? "read error" : "larger than 1 MiB");
        st = SL_ERR_IO;
        goto cleanup;
    }
    buf[len] = '\0';
    st = orch_agents_parse(out, buf, why, sizeof(why));
    if (st != SL_OK)
        sl_errf(err, errlen, "SLUICE_AGENTS_FILE %s: %s", path, why);
cleanup:
    free(buf);
    fclose(f);
    return st;
}

const orch_agent *orch_agents_find(const orch_agents *a, const char *name, size_t *idx)
{
    if (a == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < a->n; i++) {
        if (strcmp(a->v[i].name, name) == 0) {
            if (idx != NULL)
                *idx = i;
            return &a->v[i];
        }
    }
    return NULL;
}

bool orch_text_mentions(const char *text, const char *name)
{
    return sl_text_mentions(text, name);
}

bool orch_agent_matches(const orch_agent *a, const char *text)
{
    if (text == NULL)
        text = "";
    switch (a->match) {
    case ORCH_MATCH_ALL:
        return true;
    case ORCH_MATCH_MENTION:
        return orch_text_mentions(text, a->name);
    case ORCH_MATCH_REGEX:
        return regexec(&a->re, text, 0, NULL, 0) == 0;
    }
    return false;
}
