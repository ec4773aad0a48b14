#include "hx_sluice.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hx_util.h"
#include "sl_auth.h"

#define HX_SL_MAX_CH 256

typedef struct hx__pos {
    char *ch;
    int64_t seq;
} hx__pos;

struct hx_sl_client {
    hx_ws *ws;
    char *token;
    char *session;
    char *resume_token;
    cJSON *welcome;
    hx__pos pos[HX_SL_MAX_CH];
    int npos;
    hx_sl_counts counts;
};

char *hx_token_secret(const char *secret, const char *tenant, const char *sub, int ttl_s,
                      const char *const *rooms, int nrooms)
{
    char *tok = NULL;
    int64_t exp = (int64_t)time(NULL) + ttl_s;
    sl_status st = sl_jwt_mint_hs256(secret, tenant, sub, exp, rooms, nrooms, &tok);
    if (st != SL_OK) {
        hx_set_error("sl_jwt_mint_hs256(tenant %s, sub %s): %s", tenant, sub, sl_status_str(st));
        return NULL;
    }
    return tok;
}

char *hx_token_rooms(const hx_stack *s, const char *tenant, const char *sub, int ttl_s,
                     const char *const *rooms, int nrooms)
{
    return hx_token_secret(hx_stack_secret(s), tenant, sub, ttl_s, rooms, nrooms);
}

char *hx_token(const hx_stack *s, const char *tenant, const char *sub, int ttl_s)
{
    return hx_token_rooms(s, tenant, sub, ttl_s, NULL, 0);
}

static bool hx__match_welcome_or_error(const cJSON *f, void *ud)
{
    (void)ud;
    const char *t = hx_json_str(f, "type");
    return t != NULL && (strcmp(t, "welcome") == 0 || strcmp(t, "error") == 0);
}

sl_status hx_sl_hello(hx_ws *ws, const char *token, const char *resume_json, int timeout_ms,
                      cJSON **welcome_out)
{
    cJSON *hello = cJSON_CreateObject();
    cJSON_AddStringToObject(hello, "type", "hello");
    cJSON_AddStringToObject(hello, "token", token);
    if (resume_json != NULL) {
        cJSON *r = cJSON_Parse(resume_json);
        if (r == NULL) {
            cJSON_Delete(hello);
            hx_set_error("hx_sl_hello: resume is not JSON: %s", resume_json);
            return SL_ERR_INVAL;
        }
        cJSON_AddItemToObject(hello, "resume", r);
    }
    sl_status st = hx_ws_send_json(ws, hello);
    cJSON_Delete(hello);
    if (st != SL_OK)
        return SL_ERR_IO;
    cJSON *f = hx_ws_expect_fn(ws, hx__match_welcome_or_error, NULL, timeout_ms);
    if (f == NULL) {
        char why[1024];
        snprintf(why, sizeof why, "%s", hx_error());
        hx_set_error("no welcome: %s", why);
        return hx_ws_last_result(ws) == HX_WS_TIMEOUT ? SL_ERR_TIMEOUT : SL_ERR_AUTH;
    }
    if (strcmp(hx_json_str(f, "type"), "error") == 0) {
        char *s = cJSON_PrintUnformatted(f);
        /* The close frame usually follows the error; wait briefly for its code. */
        char *junk = NULL;
        hx_ws_result r = hx_ws_recv(ws, 500, &junk);
        free(junk);
        hx_set_error("hello refused: %s (then %s, close code %d)", s ? s : "?",
                     r == HX_WS_CLOSED ? "closed" : "no close", hx_ws_close_code(ws));
        cJSON_free(s);
        cJSON_Delete(f);
        return SL_ERR_AUTH;
    }
    if (welcome_out != NULL)
        *welcome_out = f;
    else
        cJSON_Delete(f);
    return SL_OK;
}

static void hx__observe(hx_ws *ws, const cJSON *f, void *ud)
{
    (void)ws;
    hx_sl_client *c = ud;
    const char *type = hx_json_str(f, "type");
    if (type == NULL)
        return;
    if (strcmp(type, "gap") == 0) {
        c->counts.gaps++;
        return;
    }
    if (strcmp(type, "resume_token") == 0) {
        /* Keep only the latest token, as clients must. */
        const char *rt = hx_json_str(f, "resume_token");
        if (rt != NULL) {
            free(c->resume_token);
            c->resume_token = hx_strf("%s", rt);
        }
        return;
    }
    if (strcmp(type, "joined") == 0) {
        /* The room's position starts at joined.seq, as clients keep it (a
         * resume before the room's first event then still names it). */
        const char *ch = hx_json_str(f, "ch");
        int64_t seq = hx_json_int(f, "seq", -1);
        bool known = false;
        for (int i = 0; ch != NULL && i < c->npos; i++)
            known = known || strcmp(c->pos[i].ch, ch) == 0;
        if (ch != NULL && seq >= 0 && !known && c->npos < HX_SL_MAX_CH) {
            c->pos[c->npos].ch = hx_strf("%s", ch);
            c->pos[c->npos].seq = seq;
            c->npos++;
        }
        return;
    }
    if (strcmp(type, "event") != 0)
        return;
    c->counts.events++;
    const char *ch = hx_json_str(f, "ch");
    int64_t seq = hx_json_int(f, "seq", -1);
    if (ch == NULL || seq < 0)
        return;
    for (int i = 0; i < c->npos; i++) {
        if (strcmp(c->pos[i].ch, ch) == 0) {
            if (seq <= c->pos[i].seq)
                c->counts.duplicates++;
            else
                c->pos[i].seq = seq;
            return;
        }
    }
    if (c->npos < HX_SL_MAX_CH) {
        c->pos[c->npos].ch = hx_strf("%s", ch);
        c->pos[c->npos].seq = seq;
        c->npos++;
    }
}

/* Opens a connection and says hello; on success installs it in c. */
static sl_status hx__open(hx_sl_client *c, int port, const char *resume_json, int timeout_ms)
{
    int64_t deadline = hx_now_ms() + timeout_ms;
    hx_ws *ws = NULL;
    hx_ws_handshake hs;
    hx_ws_opts o = {.port = port,
                    .path = HX_SL_PATH,
                    .subprotocol = HX_SL_SUBPROTOCOL,
                    .timeout_ms = timeout_ms};
    int code = hx_ws_connect_opts(&ws, &o, &hs);
    if (code != 101)
        return code == 503 ? SL_ERR_FULL : SL_ERR_IO;
    hx_ws_set_observer(ws, hx__observe, c);
    cJSON *welcome = NULL;
    int left = (int)(deadline - hx_now_ms());
    sl_status st = hx_sl_hello(ws, c->token, resume_json, left > 0 ? left : 1, &welcome);
    if (st != SL_OK) {
        hx_ws_destroy(ws);
        return st;
    }
    const char *sess = hx_json_str(welcome, "session");
    const char *rt = hx_json_str(welcome, "resume_token");
    if (sess == NULL) {
        hx_set_error("welcome without a session: frame has no \"session\" string");
        cJSON_Delete(welcome);
        hx_ws_destroy(ws);
        return SL_ERR_PROTO;
    }
    hx_ws_destroy(c->ws);
    c->ws = ws;
    free(c->session);
    free(c->resume_token);
    c->session = hx_strf("%s", sess);
    c->resume_token = hx_strf("%s", rt ? rt : "");
    cJSON_Delete(c->welcome);
    c->welcome = welcome;
    return SL_OK;
}

sl_status hx_sl_connect(hx_sl_client **out, int port, const char *token, int timeout_ms)
{
    hx_sl_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return SL_ERR_NOMEM;
    c->token = hx_strf("%s", token);
    sl_status st = hx__open(c, port, NULL, timeout_ms);
    if (st != SL_OK) {
        hx_sl_destroy(c);
        return st;
    }
    *out = c;
    return SL_OK;
}

sl_status hx_sl_reconnect(hx_sl_client *c, int port, int timeout_ms)
{
    if (c == NULL || c->session == NULL)
        return SL_ERR_INVAL;
    /* Like a lost network: no close frame. */
    hx_ws_destroy(c->ws);
    c->ws = NULL;
    char *pos = hx_sl_positions_json(c);
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "session", c->session);
    cJSON_AddStringToObject(r, "resume_token", c->resume_token);
    cJSON_AddItemToObject(r, "positions", cJSON_Parse(pos));
    char *resume = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    free(pos);
    sl_status st = hx__open(c, port, resume, timeout_ms);
    cJSON_free(resume);
    return st;
}

hx_ws *hx_sl_ws(hx_sl_client *c)
{
    return c ? c->ws : NULL;
}

const char *hx_sl_session(const hx_sl_client *c)
{
    return c && c->session ? c->session : "";
}

const char *hx_sl_resume_token(const hx_sl_client *c)
{
    return c && c->resume_token ? c->resume_token : "";
}

const cJSON *hx_sl_welcome(const hx_sl_client *c)
{
    return c ? c->welcome : NULL;
}

sl_status hx_sl_send(hx_sl_client *c, const char *id, const char *room, const char *text,
                     const char *prev)
{
    if (c == NULL || c->ws == NULL)
        return SL_ERR_CLOSED;
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "type", "send");
    cJSON_AddStringToObject(f, "id", id);
    if (room != NULL)
        cJSON_AddStringToObject(f, "room", room);
    cJSON_AddStringToObject(f, "text", text);
    if (prev != NULL)
        cJSON_AddStringToObject(f, "prev", prev);
    sl_status st = hx_ws_send_json(c->ws, f);
    cJSON_Delete(f);
    return st;
}

static bool hx__match_ack_for(const cJSON *f, void *ud)
{
    const char *t = hx_json_str(f, "type");
    const char *id = hx_json_str(f, "id");
    return t != NULL && id != NULL && strcmp(id, (const char *)ud) == 0 &&
           (strcmp(t, "accepted") == 0 || strcmp(t, "busy") == 0 || strcmp(t, "error") == 0);
}

cJSON *hx_sl_send_wait(hx_sl_client *c, const char *id, const char *room, const char *text,
                       int timeout_ms)
{
    if (hx_sl_send(c, id, room, text, NULL) != SL_OK)
        return NULL;
    return hx_ws_expect_fn(c->ws, hx__match_ack_for, (void *)id, timeout_ms);
}

typedef struct hx__join_ud {
    const char *room;
} hx__join_ud;

static bool hx__match_joined(const cJSON *f, void *ud)
{
    const hx__join_ud *j = ud;
    const char *t = hx_json_str(f, "type");
    if (t == NULL)
        return false;
    if (strcmp(t, "error") == 0)
        return true;
    const char *room = hx_json_str(f, "room");
    return strcmp(t, "joined") == 0 && room != NULL && strcmp(room, j->room) == 0;
}

cJSON *hx_sl_join(hx_sl_client *c, const char *room, int timeout_ms)
{
    if (c == NULL || c->ws == NULL)
        return NULL;
    cJSON *f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "type", "join");
    cJSON_AddStringToObject(f, "room", room);
    sl_status st = hx_ws_send_json(c->ws, f);
    cJSON_Delete(f);
    if (st != SL_OK)
        return NULL;
    hx__join_ud ud = {room};
    cJSON *r = hx_ws_expect_fn(c->ws, hx__match_joined, &ud, timeout_ms);
    if (r != NULL && strcmp(hx_json_str(r, "type"), "error") == 0) {
        char *s = cJSON_PrintUnformatted(r);
        hx_set_error("join %s refused: %s", room, s ? s : "?");
        cJSON_free(s);
        cJSON_Delete(r);
        return NULL;
    }
    return r;
}

sl_status hx_sl_ack(hx_sl_client *c, const char *ch, int64_t seq)
{
    if (c == NULL || c->ws == NULL)
        return SL_ERR_CLOSED;
    return hx_ws_sendf(c->ws, "{\"type\":\"ack\",\"ch\":\"%s\",\"seq\":%lld}", ch, (long long)seq);
}

static bool hx__match_reply(const cJSON *f, void *ud)
{
    const char *t = hx_json_str(f, "type");
    const char *k = hx_json_str(f, "kind");
    const char *to = hx_json_str(f, "to");
    return t && k && to && strcmp(t, "event") == 0 && strcmp(k, "reply") == 0 &&
           strcmp(to, (const char *)ud) == 0;
}

cJSON *hx_sl_wait_reply(hx_sl_client *c, const char *to, int timeout_ms)
{
    if (c == NULL || c->ws == NULL)
        return NULL;
    return hx_ws_expect_fn(c->ws, hx__match_reply, (void *)to, timeout_ms);
}

hx_sl_counts hx_sl_get_counts(const hx_sl_client *c)
{
    return c->counts;
}

int64_t hx_sl_position(const hx_sl_client *c, const char *ch)
{
    for (int i = 0; c && i < c->npos; i++) {
        if (strcmp(c->pos[i].ch, ch) == 0)
            return c->pos[i].seq;
    }
    return 0;
}

char *hx_sl_positions_json(const hx_sl_client *c)
{
    cJSON *o = cJSON_CreateObject();
    for (int i = 0; c && i < c->npos; i++)
        cJSON_AddNumberToObject(o, c->pos[i].ch, (double)c->pos[i].seq);
    char *tmp = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    char *out = hx_strf("%s", tmp ? tmp : "{}");
    cJSON_free(tmp);
    return out;
}

void hx_sl_destroy(hx_sl_client *c)
{
    if (c == NULL)
        return;
    hx_ws_destroy(c->ws);
    free(c->token);
    free(c->session);
    free(c->resume_token);
    cJSON_Delete(c->welcome);
    for (int i = 0; i < c->npos; i++)
        free(c->pos[i].ch);
    free(c);
}
