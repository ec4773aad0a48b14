/* The server API on the gateway's listener (gateway/gw_api.c, docs/
 * operations.md "Server API"): every endpoint against a real stack, every
 * error status (and that an error changes nothing), idempotent publish,
 * agents answering or not, disconnects across two gateways (close 4403),
 * presence and history as a client sees them, and sluicectl's matching
 * subcommands. */
#include <curl/curl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "sl_auth.h"
#include "test_gateway_fx.h"

#define T 15000

/* ---- requests ---- */

static char *server_token(fx *f, const char *tenant)
{
    char *tok = NULL;

    HX_OK(f->s, sl_jwt_mint_hs256_role(hx_stack_secret(f->s), tenant, "backend",
                                       (int64_t)time(NULL) + 600, NULL, 0, "server", &tok));
    return tok;
}

/* Sends a request to gateway gw with the given token (NULL: no
 * Authorization header) and returns the status; *json gets the parsed body
 * (caller frees; NULL when the body is not JSON). */
static int api(fx *f, int gw, const char *method, const char *path, const char *token,
               const char *body, cJSON **json)
{
    hx_http_resp r;
    char *hdr = token != NULL ? hx_strf("Authorization: Bearer %s\r\n", token) : NULL;
    int st = hx_http_request_hdr(NULL, hx_stack_gw_port(f->s, gw), method, path, hdr, body, T, &r);

    free(hdr);
    HX_ASSERT_MSG(f->s, st > 0, "%s %s: no answer: %s", method, path, hx_error());
    if (json != NULL)
        *json = r.body != NULL ? cJSON_Parse(r.body) : NULL;
    if (st != 200 && st != 101) {
        char ct[64] = "";
        HX_ASSERT_MSG(f->s,
                      hx_http_header(r.head, "Content-Type", ct, sizeof(ct)) &&
                          strstr(ct, "application/json") != NULL,
                      "%s %s: %d without a JSON content type", method, path, st);
    }
    hx_http_resp_free(&r);
    return st;
}

/* Expects an error status with a JSON body {"error":code,"message":...}. */
static void expect_error(fx *f, int gw, const char *method, const char *path, const char *token,
                         const char *body, int status, const char *code)
{
    cJSON *j = NULL;
    int st = api(f, gw, method, path, token, body, &j);

    HX_ASSERT_MSG(f->s, st == status, "%s %s: wanted %d, got %d", method, path, status, st);
    HX_ASSERT_MSG(f->s,
                  j != NULL && hx_json_str(j, "error") != NULL &&
                      strcmp(hx_json_str(j, "error"), code) == 0 &&
                      hx_json_str(j, "message") != NULL,
                  "%s %s: wanted error %s", method, path, code);
    cJSON_Delete(j);
}

/* POST /v1/api/publish; returns the answer (caller frees). */
static cJSON *publish(fx *f, int gw, const char *token, const char *room, const char *id,
                      const char *text, const char *agents)
{
    char *body =
        hx_strf("{\"room\":\"%s\",\"text\":\"%s\",\"from\":\"release-bot\",\"id\":\"%s\"%s%s}",
                room, text, id, agents != NULL ? ",\"agents\":" : "", agents != NULL ? agents : "");
    cJSON *j = NULL;
    int st = api(f, gw, "POST", "/v1/api/publish", token, body, &j);

    free(body);
    HX_ASSERT_MSG(f->s, st == 200 && j != NULL, "publish %s answered %d", id, st);
    HX_ASSERT(f->s,
              hx_json_str(j, "event") != NULL && cJSON_IsBool(cJSON_GetObjectItem(j, "duplicate")));
    return j;
}

static cJSON *expect_event(fx *f, hx_sl_client *c, const char *id)
{
    char *pat = hx_strf("{\"type\":\"event\",\"kind\":\"message\",\"id\":\"%s\"}", id);
    cJSON *e = hx_ws_expect(hx_sl_ws(c), pat, T);

    free(pat);
    HX_ASSERT_MSG(f->s, e != NULL, "no message event %s: %s", id, hx_error());
    return e;
}

/* ---- tests ---- */

START_TEST(test_errors_change_nothing)
{
    fx f;
    fx_opts o = {.gateways = 1, .orchestrators = 1, .workers = 1};
    const char *ok_body =
        "{\"room\":\"news\",\"text\":\"t\",\"from\":\"bot\",\"id\":\"e-1\",\"agents\":false}";
    char *srv, *client, *expired, *other, *big;
    uint64_t in_before;

    fx_start(&f, &o);
    srv = server_token(&f, "acme");
    client = hx_token(f.s, "acme", "alice", 600);
    expired = NULL;
    HX_OK(f.s, sl_jwt_mint_hs256_role(hx_stack_secret(f.s), "acme", "backend",
                                      (int64_t)time(NULL) - 5, NULL, 0, "server", &expired));
    other = NULL;
    HX_OK(f.s, sl_jwt_mint_hs256_role("another-secret-0123456789abcdef01", "acme", "backend",
                                      (int64_t)time(NULL) + 600, NULL, 0, "server", &other));
    in_before = fx_stream_msgs(&f, SL_STREAM_IN, NULL);

    /* Authentication: 401 without or with a bad token, 403 for a client's. */
    expect_error(&f, 0, "POST", "/v1/api/publish", NULL, ok_body, 401, "unauthorized");
    expect_error(&f, 0, "POST", "/v1/api/publish", "not-a-jwt", ok_body, 401, "unauthorized");
    expect_error(&f, 0, "POST", "/v1/api/publish", other, ok_body, 401, "unauthorized");
    expect_error(&f, 0, "POST", "/v1/api/publish", expired, ok_body, 401, "unauthorized");
    expect_error(&f, 0, "POST", "/v1/api/publish", client, ok_body, 403, "forbidden");
    expect_error(&f, 0, "POST", "/v1/api/disconnect", client, "{\"user\":\"alice\"}", 403,
                 "forbidden");
    expect_error(&f, 0, "GET", "/v1/api/presence?room=news", client, NULL, 403, "forbidden");
    expect_error(&f, 0, "GET", "/v1/api/history?ch=r:news", NULL, NULL, 401, "unauthorized");

    /* Paths and methods. */
    expect_error(&f, 0, "GET", "/v1/api/nope", srv, NULL, 404, "not_found");
    expect_error(&f, 0, "POST", "/v1/api/publish/x", srv, ok_body, 404, "not_found");
    expect_error(&f, 0, "GET", "/v1/api/publish", srv, NULL, 405, "method_not_allowed");
    expect_error(&f, 0, "DELETE", "/v1/api/disconnect", srv, NULL, 405, "method_not_allowed");
    expect_error(&f, 0, "POST", "/v1/api/presence", srv, "{}", 405, "method_not_allowed");

    /* Bodies and fields. */
    big = malloc(70 * 1024 + 64);
    ck_assert_ptr_nonnull(big);
    {
        int n = snprintf(big, 64, "{\"room\":\"news\",\"from\":\"bot\",\"id\":\"e-2\",\"text\":\"");
        memset(big + n, 'x', 70 * 1024);
        strcpy(big + n + 70 * 1024, "\"}");
    }
    expect_error(&f, 0, "POST", "/v1/api/publish", srv, big, 413, "too_large");
    free(big);
    expect_error(&f, 0, "POST", "/v1/api/publish", srv, "{\"room\":", 400, "bad_request");
    expect_error(&f, 0, "POST", "/v1/api/publish", srv, "[1,2]", 400, "bad_request");
    expect_error(&f, 0, "POST", "/v1/api/publish", srv, "", 400, "bad_request");
    expect_error(&f, 0, "POST", "/v1/api/publish", srv,
                 "{\"room\":\"news\",\"text\":\"t\",\"from\":\"bot\"}", 400, "bad_request");
    expect_error(&f, 0, "POST", "/v1/api/publish", srv,
                 "{\"room\":\"news\",\"text\":\"t\",\"id\":\"e-3\"}", 400, "bad_request");
    expect_error(&f, 0, "POST", "/v1/api/publish", srv,
                 "{\"room\":\"news\",\"text\":5,\"from\":\"bot\",\"id\":\"e-3\"}", 400,
                 "bad_request");
    expect_error(&f, 0, "POST", "/v1/api/publish", srv,
                 "{\"room\":\"news\",\"text\":\"t\",\"from\":\"bot\",\"id\":\"e-3\",\"agents\":1}",
                 400, "bad_request");
    {
        static const char *const rooms[] = {"a.b", "a*", "a>", "", "a b"};
        for (size_t i = 0; i < sizeof(rooms) / sizeof(rooms[0]); i++) {
            char *b = hx_strf("{\"room\":\"%s\",\"text\":\"t\",\"from\":\"bot\",\"id\":\"e-4\"}",
                              rooms[i]);
            expect_error(&f, 0, "POST", "/v1/api/publish", srv, b, 400, "bad_request");
            free(b);
        }
    }
    expect_error(&f, 0, "POST", "/v1/api/disconnect", srv, "{\"user\":\"\"}", 400, "bad_request");
    expect_error(&f, 0, "POST", "/v1/api/disconnect", srv, "{}", 400, "bad_request");
    expect_error(&f, 0, "GET", "/v1/api/presence", srv, NULL, 400, "bad_request");
    expect_error(&f, 0, "GET", "/v1/api/presence?room=a.b", srv, NULL, 400, "bad_request");
    expect_error(&f, 0, "GET", "/v1/api/presence?room=%3E", srv, NULL, 400, "bad_request");
    expect_error(&f, 0, "GET", "/v1/api/history?ch=s", srv, NULL, 400, "bad_request");
    expect_error(&f, 0, "GET", "/v1/api/history?ch=r:a*", srv, NULL, 400, "bad_request");
    expect_error(&f, 0, "GET", "/v1/api/history?ch=r:news&limit=0", srv, NULL, 400, "bad_request");
    expect_error(&f, 0, "GET", "/v1/api/history?ch=r:news&limit=201", srv, NULL, 400,
                 "bad_request");
    expect_error(&f, 0, "GET", "/v1/api/history?ch=r:news&before=x", srv, NULL, 400, "bad_request");

    /* Counted by endpoint and status. */
    HX_ASSERT(f.s,
              fx_metric(&f, 0, "sluice_gw_api_requests_total{op=\"publish\",status=\"401\"}") == 4);
    HX_ASSERT(f.s,
              fx_metric(&f, 0, "sluice_gw_api_requests_total{op=\"none\",status=\"404\"}") == 2);

    /* Nothing of the above was stored; the gateway still serves. */
    HX_ASSERT_MSG(f.s, fx_stream_msgs(&f, SL_STREAM_IN, NULL) == in_before,
                  "a refused request stored something on SLUICE_IN");
    {
        cJSON *j = publish(&f, 0, srv, "news", "e-ok", "fine", "false");
        cJSON_Delete(j);
    }
    HX_ASSERT(f.s, fx_stream_msgs(&f, SL_STREAM_IN, NULL) == in_before + 1);
    fx_check_serves(&f, 0);
    free(srv);
    free(client);
    free(expired);
    free(other);
    fx_stop(&f);
}
END_TEST

START_TEST(test_publish_idempotent_and_agents)
{
    fx f;
    fx_opts o = {.gateways = 2, .orchestrators = 1, .workers = 1};
    hx_sl_client *c;
    cJSON *a, *b, *e, *from;
    char *srv, event[64];
    uint64_t in_before;

    fx_start(&f, &o);
    srv = server_token(&f, "acme");
    c = fx_client(&f, 1, "acme", "alice");
    cJSON_Delete(hx_sl_join(c, "news", T));

    /* Stored and delivered like a member's message, marked as the server's. */
    a = publish(&f, 0, srv, "news", "srv-1", "deploy finished", "false");
    HX_ASSERT(f.s, !hx_json_true(a, "duplicate"));
    snprintf(event, sizeof(event), "%s", hx_json_str(a, "event"));
    e = expect_event(&f, c, "srv-1");
    from = cJSON_GetObjectItem(e, "from");
    HX_ASSERT(f.s, strcmp(hx_json_str(e, "event"), event) == 0);
    HX_ASSERT(f.s, strcmp(hx_json_str(e, "text"), "deploy finished") == 0);
    HX_ASSERT(f.s, strcmp(hx_json_str(e, "ch"), "r:news") == 0);
    HX_ASSERT(f.s, from != NULL && hx_json_str(from, "user") != NULL &&
                       strcmp(hx_json_str(from, "user"), "release-bot") == 0 &&
                       hx_json_true(from, "server"));
    cJSON_Delete(e);

    /* The same id again, on the other gateway: the original event, nothing stored. */
    in_before = fx_stream_msgs(&f, SL_STREAM_IN, NULL);
    b = publish(&f, 1, srv, "news", "srv-1", "deploy finished", "false");
    HX_ASSERT(f.s, hx_json_true(b, "duplicate"));
    HX_ASSERT_MSG(f.s, strcmp(hx_json_str(b, "event"), event) == 0, "duplicate event %s, not %s",
                  hx_json_str(b, "event"), event);
    HX_ASSERT(f.s, fx_stream_msgs(&f, SL_STREAM_IN, NULL) == in_before);
    cJSON_Delete(a);
    cJSON_Delete(b);

    /* agents:false is not answered; the default is, like a person's message.
     * The quiet one goes first: its reply, if any, would come before. */
    cJSON_Delete(publish(&f, 0, srv, "news", "srv-quiet", "no answer please", "false"));
    cJSON_Delete(publish(&f, 0, srv, "news", "srv-loud", "answer me", NULL));
    cJSON_Delete(expect_event(&f, c, "srv-quiet"));
    e = hx_sl_wait_reply(c, "srv-loud", T);
    HX_ASSERT_MSG(f.s, e != NULL, "no agent reply to the default publish: %s", hx_error());
    cJSON_Delete(e);
    fx_ping(&f, hx_sl_ws(c));
    HX_ASSERT_MSG(f.s,
                  hx_ws_expect(hx_sl_ws(c), "{\"type\":\"event\",\"to\":\"srv-quiet\"}", 1) == NULL,
                  "an agent answered a publish with agents:false");
    e = hx_ws_expect(hx_sl_ws(c), "{\"type\":\"event\",\"to\":\"srv-1\"}", 1);
    HX_ASSERT_MSG(f.s, e == NULL, "an agent answered srv-1 (agents:false)");
    hx_sl_destroy(c);
    free(srv);
    fx_stop(&f);
}
END_TEST

typedef struct closed_wait {
    hx_ws *ws;
    int code;
} closed_wait;

START_TEST(test_disconnect_everywhere)
{
    fx f;
    fx_opts o = {.gateways = 2, .orchestrators = 1, .workers = 1};
    hx_ws *alice[3], *bob, *alice_other;
    char *srv, *srv_other;
    cJSON *j = NULL;

    fx_start(&f, &o);
    srv = server_token(&f, "acme");
    srv_other = server_token(&f, "umbrella");
    alice[0] = fx_raw_hello(&f, 0, "acme", "alice");
    alice[1] = fx_raw_hello(&f, 0, "acme", "alice");
    alice[2] = fx_raw_hello(&f, 1, "acme", "alice");
    bob = fx_raw_hello(&f, 0, "acme", "bob");
    alice_other = fx_raw_hello(&f, 1, "umbrella", "alice");

    HX_ASSERT(f.s,
              api(&f, 1, "POST", "/v1/api/disconnect", srv, "{\"user\":\"alice\"}", &j) == 200);
    HX_ASSERT(f.s, cJSON_IsObject(j));
    cJSON_Delete(j);
    for (int i = 0; i < 3; i++) {
        int code = fx_wait_close(alice[i], T);
        HX_ASSERT_MSG(f.s, code == 4403, "alice's connection %d closed with %d, not 4403", i, code);
    }
    /* Bob, and alice of another tenant, are untouched. */
    fx_ping(&f, bob);
    fx_ping(&f, alice_other);
    /* A user with no connection anywhere: fine, nothing happens. */
    HX_ASSERT(f.s,
              api(&f, 0, "POST", "/v1/api/disconnect", srv, "{\"user\":\"nobody\"}", NULL) == 200);
    /* umbrella's server token disconnects umbrella's alice only. */
    HX_ASSERT(f.s, api(&f, 0, "POST", "/v1/api/disconnect", srv_other, "{\"user\":\"alice\"}",
                       NULL) == 200);
    HX_ASSERT(f.s, fx_wait_close(alice_other, T) == 4403);
    fx_ping(&f, bob);
    for (int i = 0; i < 3; i++)
        hx_ws_destroy(alice[i]);
    hx_ws_destroy(bob);
    hx_ws_destroy(alice_other);
    free(srv);
    free(srv_other);
    fx_stop(&f);
}
END_TEST

typedef struct presence_wait {
    fx *f;
    const char *token;
    const char *session; /* wanted in the list; NULL: the list must be empty */
    cJSON *last;
} presence_wait;

static bool presence_is(void *ud)
{
    presence_wait *w = ud;
    cJSON *j = NULL, *m;
    int n = 0;
    bool found = false;

    if (api(w->f, 0, "GET", "/v1/api/presence?room=news", w->token, NULL, &j) != 200 || j == NULL) {
        cJSON_Delete(j);
        return false;
    }
    m = cJSON_GetObjectItem(j, "members");
    cJSON *it;
    cJSON_ArrayForEach(it, m)
    {
        n++;
        if (w->session != NULL && hx_json_str(it, "session") != NULL &&
            strcmp(hx_json_str(it, "session"), w->session) == 0 && hx_json_str(it, "user") &&
            strcmp(hx_json_str(it, "user"), "alice") == 0)
            found = true;
    }
    cJSON_Delete(w->last);
    w->last = j;
    return cJSON_IsArray(m) && (w->session != NULL ? found && n == 1 : n == 0);
}

START_TEST(test_presence_and_history)
{
    fx f;
    fx_opts o = {.gateways = 2, .orchestrators = 1, .workers = 1};
    hx_sl_client *c;
    char *srv, session[64];
    presence_wait pw;
    cJSON *h, *j = NULL, *joined;

    fx_start(&f, &o);
    srv = server_token(&f, "acme");
    c = fx_client(&f, 1, "acme", "alice");
    snprintf(session, sizeof(session), "%s", hx_sl_session(c));

    /* An empty room has no members; then the joined client is listed as a
     * joining client would see it. */
    memset(&pw, 0, sizeof(pw));
    pw.f = &f;
    pw.token = srv;
    HX_ASSERT(f.s, presence_is(&pw));
    joined = hx_sl_join(c, "news", T);
    HX_ASSERT(f.s, joined != NULL);
    cJSON_Delete(joined);
    pw.session = session;
    HX_ASSERT_MSG(f.s, hx_wait_until(presence_is, &pw, T), "presence never listed the member");
    HX_OK(f.s, hx_ws_send_text(hx_sl_ws(c), "{\"type\":\"leave\",\"room\":\"news\"}"));
    cJSON_Delete(hx_ws_expect_type(hx_sl_ws(c), "left", T));
    pw.session = NULL;
    HX_ASSERT_MSG(f.s, hx_wait_until(presence_is, &pw, T),
                  "presence still lists a member who left");
    cJSON_Delete(pw.last);
    cJSON_Delete(hx_sl_join(c, "news", T));

    /* History: the same answer as the client's, page by page. */
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "h-%d", i);
        cJSON_Delete(publish(&f, 0, srv, "news", id, "history line", "false"));
        cJSON_Delete(expect_event(&f, c, id));
    }
    {
        const char *const paths[] = {"/v1/api/history?ch=r:news",
                                     "/v1/api/history?ch=r:news&limit=2"};
        const char *const frames[] = {"{\"type\":\"history\",\"ch\":\"r:news\"}",
                                      "{\"type\":\"history\",\"ch\":\"r:news\",\"limit\":2}"};
        for (int p = 0; p < 2; p++) {
            HX_ASSERT(f.s, api(&f, 0, "GET", paths[p], srv, NULL, &j) == 200 && j != NULL);
            HX_OK(f.s, hx_ws_send_text(hx_sl_ws(c), frames[p]));
            h = hx_ws_expect_type(hx_sl_ws(c), "history", T);
            HX_ASSERT(f.s, h != NULL);
            HX_ASSERT_MSG(f.s,
                          cJSON_Compare(cJSON_GetObjectItem(j, "events"),
                                        cJSON_GetObjectItem(h, "events"), 1) &&
                              cJSON_Compare(cJSON_GetObjectItem(j, "more"),
                                            cJSON_GetObjectItem(h, "more"), 1),
                          "API history differs from the client's (page %d)", p);
            if (p == 1) {
                char *next;
                cJSON *j2 = NULL, *h2;
                HX_ASSERT(f.s, hx_json_true(j, "more") &&
                                   cJSON_GetArraySize(cJSON_GetObjectItem(j, "events")) == 2);
                HX_ASSERT(f.s,
                          hx_json_int(j, "next_before", -1) == hx_json_int(h, "next_before", -2));
                next = hx_strf("/v1/api/history?ch=r:news&limit=2&before=%lld",
                               (long long)hx_json_int(j, "next_before", 0));
                HX_ASSERT(f.s, api(&f, 1, "GET", next, srv, NULL, &j2) == 200 && j2 != NULL);
                HX_OK(f.s, hx_ws_sendf(hx_sl_ws(c),
                                       "{\"type\":\"history\",\"ch\":\"r:news\",\"limit\":2,"
                                       "\"before\":%lld}",
                                       (long long)hx_json_int(j, "next_before", 0)));
                h2 = hx_ws_expect_type(hx_sl_ws(c), "history", T);
                HX_ASSERT(f.s, h2 != NULL && cJSON_Compare(cJSON_GetObjectItem(j2, "events"),
                                                           cJSON_GetObjectItem(h2, "events"), 1));
                HX_ASSERT(f.s, cJSON_GetArraySize(cJSON_GetObjectItem(j2, "events")) == 2);
                free(next);
                cJSON_Delete(j2);
                cJSON_Delete(h2);
            } else {
                /* Presence events and the five messages, oldest first. */
                cJSON *ev = cJSON_GetObjectItem(j, "events"), *last;
                int n = cJSON_GetArraySize(ev);
                HX_ASSERT(f.s, n >= 5);
                last = cJSON_GetArrayItem(ev, n - 1);
                HX_ASSERT(f.s, strcmp(hx_json_str(last, "id"), "h-4") == 0 &&
                                   hx_json_true(cJSON_GetObjectItem(last, "from"), "server"));
            }
            cJSON_Delete(j);
            cJSON_Delete(h);
        }
    }
    hx_sl_destroy(c);
    free(srv);
    fx_stop(&f);
}
END_TEST

typedef struct ready_wait {
    int port;
    int want;
} ready_wait;

static bool readyz_is(void *ud)
{
    ready_wait *w = ud;
    return hx_http_get(NULL, w->port, "/readyz", 1000, NULL) == w->want;
}

/* A draining gateway refuses publishes (another gateway takes them) and
 * still answers reads. */
START_TEST(test_draining_refuses_publish)
{
    static const char *const gw_env[] = {"SLUICE_DRAIN_GRACE_MS=5000", NULL};
    fx f;
    fx_opts o = {.gateways = 1, .orchestrators = 1, .workers = 1, .gw_env = gw_env};
    hx_ws *ws;
    ready_wait rw;
    char *srv;
    uint64_t in_before;

    fx_start(&f, &o);
    srv = server_token(&f, "acme");
    ws = fx_raw_hello(&f, 0, "acme", "alice"); /* keeps the drain going */
    in_before = fx_stream_msgs(&f, SL_STREAM_IN, NULL);
    HX_OK(f.s, hx_stack_kill(f.s, HX_GATEWAY, 0, SIGTERM));
    rw.port = hx_stack_admin_port(f.s, HX_GATEWAY, 0);
    rw.want = 503;
    HX_ASSERT_MSG(f.s, hx_wait_until(readyz_is, &rw, 5000), "/readyz never said 503");
    /* /readyz fails from the signal on; the drain itself starts on the
     * gateway's next tick, and its first act is telling clients to move. */
    {
        cJSON *r = hx_ws_expect_type(ws, "reconnect", T);
        HX_ASSERT_MSG(f.s, r != NULL, "no reconnect frame: %s", hx_error());
        cJSON_Delete(r);
    }
    expect_error(&f, 0, "POST", "/v1/api/publish", srv,
                 "{\"room\":\"news\",\"text\":\"t\",\"from\":\"bot\",\"id\":\"d-1\"}", 503,
                 "draining");
    HX_ASSERT(f.s, api(&f, 0, "GET", "/v1/api/presence?room=news", srv, NULL, NULL) == 200);
    HX_ASSERT(f.s, fx_stream_msgs(&f, SL_STREAM_IN, NULL) == in_before);
    hx_ws_destroy(ws);
    free(srv);
    fx_stop(&f);
}
END_TEST

/* ---- keep-alive ---- */

typedef struct body_buf {
    char data[65536];
    size_t n;
} body_buf;

static size_t keep_body(char *d, size_t size, size_t nmemb, void *ud)
{
    body_buf *b = ud;
    size_t len = size * nmemb, room = sizeof(b->data) - 1 - b->n;

    memcpy(b->data + b->n, d, len < room ? len : room);
    b->n += len < room ? len : room;
    b->data[b->n] = '\0';
    return len;
}

/* One request on the shared handle; returns the status and sets *reused. */
static long keep_req(fx *f, CURL *c, struct curl_slist *h, const char *url, const char *body,
                     body_buf *b, bool *reused)
{
    long status = 0, conns = -1;
    CURLcode cc;

    b->n = 0;
    b->data[0] = '\0';
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 15L);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    } else {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    }
    cc = curl_easy_perform(c);
    HX_ASSERT_MSG(f->s, cc == CURLE_OK, "%s: %s", url, curl_easy_strerror(cc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &conns);
    *reused = conns == 0;
    return status;
}

/* Requests share one connection: API answers (errors included, a body
 * over the bound too) keep it usable, also between static files. */
START_TEST(test_keepalive)
{
    fx f;
    fx_opts o = {.gateways = 1, .orchestrators = 1, .workers = 1};
    char *srv, *auth, base[64], *url;
    struct curl_slist *h = NULL, *none = NULL;
    body_buf *b = calloc(1, sizeof(*b));
    char *big;
    bool reused = false;
    CURL *c;

    fx_start(&f, &o);
    ck_assert_ptr_nonnull(b);
    srv = server_token(&f, "acme");
    auth = hx_strf("Authorization: Bearer %s", srv);
    h = curl_slist_append(h, auth);
    h = curl_slist_append(h, "Content-Type: application/json");
    none = curl_slist_append(none, "X-None: 1");
    snprintf(base, sizeof(base), "http://127.0.0.1:%d", hx_stack_gw_port(f.s, 0));
    c = curl_easy_init();
    ck_assert_ptr_nonnull(c);

    url = hx_strf("%s/v1/api/presence?room=news", base);
    HX_ASSERT(f.s, keep_req(&f, c, h, url, NULL, b, &reused) == 200);
    HX_ASSERT(f.s, keep_req(&f, c, h, url, NULL, b, &reused) == 200 && reused);
    free(url);
    url = hx_strf("%s/v1/api/publish", base);
    HX_ASSERT(f.s, keep_req(&f, c, h, url,
                            "{\"room\":\"news\",\"text\":\"t\",\"from\":\"bot\",\"id\":\"k-1\","
                            "\"agents\":false}",
                            b, &reused) == 200 &&
                       reused);
    HX_ASSERT_MSG(f.s, strstr(b->data, "\"duplicate\":false") != NULL, "publish answered %s",
                  b->data);
    HX_ASSERT(f.s, keep_req(&f, c, h, url, "{\"room\":\"a.b\"}", b, &reused) == 400 && reused);
    big = calloc(1, 100 * 1024);
    ck_assert_ptr_nonnull(big);
    memset(big, ' ', 100 * 1024 - 1);
    HX_ASSERT(f.s, keep_req(&f, c, h, url, big, b, &reused) == 413 && reused);
    free(big);
    HX_ASSERT(f.s, keep_req(&f, c, none, url, "{}", b, &reused) == 401 && reused);
    free(url);
    /* A static file, then the API again, then a static file. */
    url = hx_strf("%s/", base);
    HX_ASSERT(f.s, keep_req(&f, c, none, url, NULL, b, &reused) == 200);
    free(url);
    /* The orchestrator posts k-1 to the room a moment after it was stored. */
    url = hx_strf("%s/v1/api/history?ch=r:news", base);
    for (int64_t until = hx_now_ms() + T;;) {
        HX_ASSERT(f.s, keep_req(&f, c, h, url, NULL, b, &reused) == 200);
        if (strstr(b->data, "\"k-1\"") != NULL || hx_now_ms() > until)
            break;
        usleep(50 * 1000);
    }
    HX_ASSERT_MSG(f.s, strstr(b->data, "\"k-1\"") != NULL, "history answered %s", b->data);
    free(url);
    url = hx_strf("%s/", base);
    HX_ASSERT(f.s, keep_req(&f, c, none, url, NULL, b, &reused) == 200);
    free(url);
    /* A chunked body has no length up front: 411, nothing stored. */
    {
        struct curl_slist *chunked = curl_slist_append(NULL, auth);
        chunked = curl_slist_append(chunked, "Transfer-Encoding: chunked");
        url = hx_strf("%s/v1/api/publish", base);
        HX_ASSERT(f.s,
                  keep_req(&f, c, chunked, url,
                           "{\"room\":\"news\",\"text\":\"t\",\"from\":\"bot\",\"id\":\"k-2\"}", b,
                           &reused) == 411);
        HX_ASSERT_MSG(f.s, strstr(b->data, "length_required") != NULL, "411 answered %s", b->data);
        curl_slist_free_all(chunked);
        free(url);
    }
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    curl_slist_free_all(none);
    free(auth);
    free(srv);
    free(b);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

/* ---- sluicectl ---- */

/* Runs sluicectl with args (and SLUICE_JWT_SECRET from the stack); returns
 * its exit status and stdout (malloc'd) in *out. */
static int ctl(fx *f, char **out, const char *args)
{
    char *cmd = hx_strf("SLUICE_JWT_SECRET='%s' %s/sluicectl %s 2>&1", hx_stack_secret(f->s),
                        hx_stack_bin_dir(f->s), args);
    FILE *p = popen(cmd, "r");
    size_t cap = 65536, n = 0;
    char *buf = calloc(1, cap);
    int st;

    HX_ASSERT(f->s, p != NULL && buf != NULL);
    while (n + 1 < cap) {
        size_t r = fread(buf + n, 1, cap - 1 - n, p);
        if (r == 0)
            break;
        n += r;
    }
    st = pclose(p);
    free(cmd);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(test_sluicectl)
{
    fx f;
    fx_opts o = {.gateways = 1, .orchestrators = 1, .workers = 1};
    hx_sl_client *c;
    char *out = NULL, *args, url[64];
    cJSON *j;

    fx_start(&f, &o);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", hx_stack_gw_port(f.s, 0));
    c = fx_client(&f, 0, "acme", "alice");
    cJSON_Delete(hx_sl_join(c, "news", T));

    args = hx_strf("publish --url %s --tenant acme --room news --from ops --id ctl-1 "
                   "--no-agents 'hello from ctl'",
                   url);
    HX_ASSERT_MSG(f.s, ctl(&f, &out, args) == 0, "sluicectl publish failed: %s", out);
    j = cJSON_Parse(out);
    HX_ASSERT_MSG(f.s, j != NULL && hx_json_str(j, "event") != NULL, "publish printed %s", out);
    cJSON_Delete(j);
    free(out);
    free(args);
    j = expect_event(&f, c, "ctl-1");
    HX_ASSERT(f.s, strcmp(hx_json_str(j, "text"), "hello from ctl") == 0);
    cJSON_Delete(j);

    /* The member shows once its gateway's presence record is written
     * (within SLUICE_PRESENCE_FLUSH_MS of the join). */
    args = hx_strf("presence --url %s --tenant acme --room news", url);
    for (int64_t until = hx_now_ms() + T;;) {
        HX_ASSERT(f.s, ctl(&f, &out, args) == 0);
        if (strstr(out, hx_sl_session(c)) != NULL || hx_now_ms() > until)
            break;
        free(out);
        usleep(50 * 1000);
    }
    HX_ASSERT_MSG(f.s, strstr(out, hx_sl_session(c)) != NULL, "presence printed %s", out);
    free(out);
    free(args);

    args = hx_strf("history --url %s --tenant acme --ch r:news --limit 10", url);
    HX_ASSERT(f.s, ctl(&f, &out, args) == 0);
    HX_ASSERT_MSG(f.s, strstr(out, "hello from ctl") != NULL, "history printed %s", out);
    free(out);
    free(args);

    /* An error status is an error exit, with the API's message. */
    args = hx_strf("presence --url %s --tenant acme --room a.b", url);
    HX_ASSERT(f.s, ctl(&f, &out, args) != 0);
    HX_ASSERT_MSG(f.s, strstr(out, "400") != NULL, "a 400 printed %s", out);
    free(out);
    free(args);

    args = hx_strf("disconnect --url %s --tenant acme --user alice", url);
    HX_ASSERT(f.s, ctl(&f, &out, args) == 0);
    free(out);
    free(args);
    HX_ASSERT(f.s, fx_wait_close(hx_sl_ws(c), T) == 4403);
    hx_sl_destroy(c);
    fx_stop(&f);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gateway_api");
    TCase *tc = tcase_create("server api");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_errors_change_nothing);
    tcase_add_test(tc, test_publish_idempotent_and_agents);
    tcase_add_test(tc, test_disconnect_everywhere);
    tcase_add_test(tc, test_presence_and_history);
    tcase_add_test(tc, test_sluicectl);
    tcase_add_test(tc, test_keepalive);
    tcase_add_test(tc, test_draining_refuses_publish);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
