/* The server API's routing and request parsing (see gw_api.h): pure
 * functions, safe from any thread, with no NATS or lws state. */
#include "gw_api_int.h"
#include "sl_text.h"

/* ---------- routing and parsing (pure) ---------- */

int gw_api_route(const char *path, const char *method, gw_api_op *op)
{
    static const struct {
        const char *path;
        const char *method;
        gw_api_op op;
    } routes[] = {
        {API_PREFIX "/publish", "POST", GW_API_PUBLISH},
        {API_PREFIX "/disconnect", "POST", GW_API_DISCONNECT},
        {API_PREFIX "/presence", "GET", GW_API_PRESENCE},
        {API_PREFIX "/history", "GET", GW_API_HISTORY},
    };

    *op = GW_API_NONE;
    if (path == NULL || method == NULL)
        return 404;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(path, routes[i].path) != 0)
            continue;
        if (strcmp(method, routes[i].method) != 0)
            return 405;
        *op = routes[i].op;
        return 200;
    }
    return 404;
}

static int bad(char *msg, size_t msglen, const char *text)
{
    snprintf(msg, msglen, "%s", text);
    return 400;
}

int gw_api_parse_body(gw_api_op op, const char *body, size_t len, gw_api_req *req, char *msg,
                      size_t msglen)
{
    cJSON *root = NULL;
    const cJSON *v;
    const char *end = NULL;
    int code = 400;

    memset(req, 0, sizeof(*req));
    req->op = op;
    req->agents = true;
    if (body == NULL || len == 0)
        return bad(msg, msglen, "the body must be a JSON object");
    if (len > GW_API_BODY_MAX)
        return bad(msg, msglen, "the body is too large");
    if (!sl_utf8_valid(body, len) || memchr(body, '\0', len) != NULL ||
        sl_json_has_nul_escape(body, len))
        return bad(msg, msglen, "the body must be UTF-8 JSON without NUL characters");
    root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    while (root != NULL && end != NULL && end < body + len &&
           (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (root == NULL || end != body + len || !cJSON_IsObject(root)) {
        bad(msg, msglen, "the body must be one JSON object");
        goto cleanup;
    }
    if (op == GW_API_PUBLISH) {
        v = cJSON_GetObjectItemCaseSensitive(root, "room");
        if (!cJSON_IsString(v) || !sl_id_valid(v->valuestring)) {
            bad(msg, msglen, "room must be 1-64 chars of [A-Za-z0-9_-]");
            goto cleanup;
        }
        snprintf(req->room, sizeof(req->room), "%s", v->valuestring);
        v = cJSON_GetObjectItemCaseSensitive(root, "id");
        if (!cJSON_IsString(v) || !sl_client_id_valid(v->valuestring)) {
            bad(msg, msglen, "id must be 1-64 chars of [A-Za-z0-9_.:-]");
            goto cleanup;
        }
        snprintf(req->id, sizeof(req->id), "%s", v->valuestring);
        v = cJSON_GetObjectItemCaseSensitive(root, "from");
        if (!cJSON_IsString(v) || !sl_user_valid(v->valuestring)) {
            bad(msg, msglen, "from must be 1-128 bytes of UTF-8 without control characters");
            goto cleanup;
        }
        snprintf(req->user, sizeof(req->user), "%s", v->valuestring);
        v = cJSON_GetObjectItemCaseSensitive(root, "text");
        if (!cJSON_IsString(v)) {
            bad(msg, msglen, "text must be a string");
            goto cleanup;
        }
        v = cJSON_GetObjectItemCaseSensitive(root, "agents");
        if (v != NULL && !cJSON_IsBool(v)) {
            bad(msg, msglen, "agents must be true or false");
            goto cleanup;
        }
        req->agents = v == NULL || cJSON_IsTrue(v);
        req->text = strdup(cJSON_GetObjectItemCaseSensitive(root, "text")->valuestring);
        if (req->text == NULL) {
            snprintf(msg, msglen, "out of memory");
            code = 500;
            goto cleanup;
        }
    } else if (op == GW_API_DISCONNECT) {
        v = cJSON_GetObjectItemCaseSensitive(root, "user");
        if (!cJSON_IsString(v) || !sl_user_valid(v->valuestring)) {
            bad(msg, msglen, "user must be 1-128 bytes of UTF-8 without control characters");
            goto cleanup;
        }
        snprintf(req->user, sizeof(req->user), "%s", v->valuestring);
    } else {
        bad(msg, msglen, "this endpoint takes no body");
        goto cleanup;
    }
    code = 200;
cleanup:
    cJSON_Delete(root);
    if (code != 200)
        gw_api_req_clear(req);
    return code;
}

/* A decimal integer in [lo, hi], nothing else. */
static bool parse_int_arg(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    int64_t v;

    if (s == NULL || s[0] == '\0' || s[0] == '+' || s[0] == ' ' || sl_parse_int(s, &v) != SL_OK ||
        v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

int gw_api_parse_query(gw_api_op op, const char *room, const char *ch, const char *limit,
                       const char *before, gw_api_req *req, char *msg, size_t msglen)
{
    memset(req, 0, sizeof(*req));
    req->op = op;
    if (op == GW_API_PRESENCE) {
        if (!sl_id_valid(room))
            return bad(msg, msglen, "room must be 1-64 chars of [A-Za-z0-9_-]");
        snprintf(req->room, sizeof(req->room), "%s", room);
        return 200;
    }
    if (op == GW_API_HISTORY) {
        bool is_room = false;
        const char *r = NULL;
        if (ch == NULL || sl_channel_parse(ch, &is_room, &r) != SL_OK || !is_room)
            return bad(msg, msglen, "ch must be r:<room>, the room 1-64 chars of [A-Za-z0-9_-]");
        snprintf(req->ch, sizeof(req->ch), "%s", ch);
        snprintf(req->room, sizeof(req->room), "%s", r);
        req->limit = 50;
        if (limit != NULL && !parse_int_arg(limit, 1, 200, &req->limit))
            return bad(msg, msglen, "limit must be 1..200");
        if (before != NULL && !parse_int_arg(before, 1, SL_JSON_INT_MAX, &req->before))
            return bad(msg, msglen, "before must be a positive integer");
        return 200;
    }
    return bad(msg, msglen, "this endpoint takes a JSON body");
}

void gw_api_req_clear(gw_api_req *req)
{
    if (req == NULL)
        return;
    free(req->text);
    memset(req, 0, sizeof(*req));
}

char *gw_api_error_body(const char *code, const char *message)
{
    cJSON *o = cJSON_CreateObject();
    char *out = NULL;

    if (o != NULL && cJSON_AddStringToObject(o, "error", code) != NULL &&
        cJSON_AddStringToObject(o, "message", message) != NULL)
        out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return out;
}
