/* Shared fixture of the gateway integration tests (test_gateway_*.c):
 * a stack with its own NATS connection, counters read from the streams and
 * /metrics, raw WebSocket helpers with close-code checks, and a probe that
 * proves a gateway still serves a fresh client normally. Header-only
 * (static functions): each test_gateway_*.c is its own binary.
 *
 * Every wait is on a condition with a timeout; nothing here sleeps and
 * hopes. All assertions print the stack's logs on failure. */
#ifndef TEST_GATEWAY_FX_H
#define TEST_GATEWAY_FX_H

#include <cJSON.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "hx.h"
#include "sl_codec.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "sl_time.h"

#if defined(__SANITIZE_ADDRESS__)
#define FX_SANITIZED 1
#else
#define FX_SANITIZED 0
#endif

/* A quiet agent set: the only agent answers "@bot" mentions, so room
 * traffic without a mention gets no replies. */
#define FX_AGENTS_MENTION                                                                          \
    "{\"agents\":[{\"name\":\"bot\",\"model\":\"default\",\"match\":\"mention\","                  \
    "\"fallback\":\"bot is away\"}]}"

#define FX_ENV_MAX 24

typedef struct fx_opts {
    int gateways, orchestrators, workers;
    int echo_token_delay_ms;
    const char *const *gw_env; /* extra "K=V" for gateways, NULL-terminated, may be NULL */
    const char *const *env;    /* extra "K=V" for every process */
    const char *agents_json;   /* NULL: the orchestrator's built-in agents */
    int term_timeout_ms;
} fx_opts;

typedef struct fx {
    hx_stack *s;
    natsConnection *nc;
    jsCtx *js;
    char *dir; /* our own temp dir (agents file, certificates) */
    /* The harness keeps pointing at these arrays (restarts reuse them). */
    const char *gw_env[FX_ENV_MAX];
    const char *orch_env[FX_ENV_MAX];
    char *owned[FX_ENV_MAX];
    int nowned;
    int probes;
} fx;

static inline const char *fx_own(fx *f, char *str)
{
    ck_assert_int_lt(f->nowned, FX_ENV_MAX);
    f->owned[f->nowned++] = str;
    return str;
}

/* Starts a stack as o says and connects the test's own NATS client. */
static inline void fx_start(fx *f, const fx_opts *o)
{
    hx_stack_cfg cfg;
    jsOptions jo;
    int n = 0;

    memset(f, 0, sizeof(*f));
    memset(&cfg, 0, sizeof(cfg));
    HX_OK(NULL, hx_tmpdir_create("gwt", &f->dir));
    for (int i = 0; o->gw_env != NULL && o->gw_env[i] != NULL && n < FX_ENV_MAX - 1; i++)
        f->gw_env[n++] = o->gw_env[i];
    f->gw_env[n] = NULL;
    n = 0;
    if (o->agents_json != NULL) {
        char *path = hx_strf("%s/agents.json", f->dir);
        HX_OK(NULL, hx_file_write(path, o->agents_json));
        f->orch_env[n++] = fx_own(f, hx_strf("SLUICE_AGENTS_FILE=%s", path));
        free(path);
    }
    f->orch_env[n] = NULL;
    cfg.gateways = o->gateways;
    cfg.orchestrators = o->orchestrators;
    cfg.workers = o->workers;
    cfg.echo_token_delay_ms = o->echo_token_delay_ms;
    cfg.env = o->env;
    cfg.tier_env[HX_GATEWAY] = f->gw_env;
    cfg.tier_env[HX_ORCHESTRATOR] = f->orch_env;
    cfg.term_timeout_ms = o->term_timeout_ms > 0 ? o->term_timeout_ms : (FX_SANITIZED ? 15000 : 0);
    cfg.ready_timeout_ms = FX_SANITIZED ? 40000 : 0;
    HX_OK(NULL, hx_stack_start(&f->s, &cfg));
    {
        natsStatus st = natsConnection_ConnectTo(&f->nc, hx_stack_nats_url(f->s));
        HX_ASSERT_MSG(f->s, st == NATS_OK, "test's NATS connection to %s: %s (nats-server %s)",
                      hx_stack_nats_url(f->s), natsStatus_GetText(st),
                      hx_nats_alive(hx_stack_nats(f->s), 0) ? "running" : "not running");
    }
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 4096;
    jo.PublishAsync.StallWait = 30000;
    HX_ASSERT(f->s, natsConnection_JetStream(&f->js, f->nc, &jo) == NATS_OK);
}

/* Stops every process with SIGTERM, asserts that each exited 0 with no
 * sanitizer report, and tears everything down. */
static inline void fx_stop(fx *f)
{
    bool clean = false;

    jsCtx_Destroy(f->js);
    natsConnection_Destroy(f->nc);
    f->js = NULL;
    f->nc = NULL;
    hx_stack_stop_all_gracefully(f->s, &clean);
    HX_ASSERT_MSG(f->s, clean, "a process did not exit cleanly (exit code or sanitizer report): %s",
                  hx_error());
    hx_stack_destroy(f->s);
    f->s = NULL;
    hx_rm_rf(f->dir);
    free(f->dir);
    for (int i = 0; i < f->nowned; i++)
        free(f->owned[i]);
    f->nowned = 0;
}

/* ---- counters ---- */

/* Messages in a stream, optionally only on subjects matching filter. */
static inline uint64_t fx_stream_msgs(fx *f, const char *stream, const char *filter)
{
    jsStreamInfo *si = NULL;
    jsOptions o;
    uint64_t n = 0;
    natsStatus st;

    jsOptions_Init(&o);
    o.Stream.Info.SubjectsFilter = filter;
    st = js_GetStreamInfo(&si, f->js, stream, filter != NULL ? &o : NULL, NULL);
    HX_ASSERT_MSG(f->s, st == NATS_OK, "stream info %s: %s", stream, natsStatus_GetText(st));
    if (filter == NULL) {
        n = si->State.Msgs;
    } else if (si->State.Subjects != NULL) {
        for (int i = 0; i < si->State.Subjects->Count; i++)
            n += si->State.Subjects->List[i].Msgs;
    }
    jsStreamInfo_Destroy(si);
    return n;
}

/* The value of "<series> <value>" on gateway i's /metrics; -1 when absent. */
static inline double fx_metric(fx *f, int gw, const char *series)
{
    char *body = NULL;
    double v = -1;
    size_t n = strlen(series);

    if (hx_http_get(NULL, hx_stack_admin_port(f->s, HX_GATEWAY, gw), "/metrics", 3000, &body) !=
        200) {
        free(body);
        return -1;
    }
    for (const char *p = body; p != NULL && *p != '\0';) {
        const char *eol = strchr(p, '\n');
        if (strncmp(p, series, n) == 0 && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
        p = eol != NULL ? eol + 1 : NULL;
    }
    free(body);
    return v;
}

/* True when key exists in the KV bucket. */
static inline bool fx_kv_has(fx *f, const char *bucket, const char *key)
{
    kvStore *kv = NULL;
    kvEntry *e = NULL;
    bool found = false;

    if (js_KeyValue(&kv, f->js, bucket) != NATS_OK)
        return false;
    found = kvStore_Get(&e, kv, key) == NATS_OK && e != NULL;
    kvEntry_Destroy(e);
    kvStore_Destroy(kv);
    return found;
}

/* The value of key in the KV bucket as a malloc'd string (caller frees), or
 * NULL when absent. */
static inline char *fx_kv_get(fx *f, const char *bucket, const char *key)
{
    kvStore *kv = NULL;
    kvEntry *e = NULL;
    char *v = NULL;

    if (js_KeyValue(&kv, f->js, bucket) != NATS_OK)
        return NULL;
    if (kvStore_Get(&e, kv, key) == NATS_OK && e != NULL)
        v = strndup(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
    kvEntry_Destroy(e);
    kvStore_Destroy(kv);
    return v;
}

/* VmRSS of a process in KiB, -1 when unreadable. */
static inline long fx_rss_kib(pid_t pid)
{
    char path[64], line[256];
    FILE *fp;
    long kib = -1;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    fp = fopen(path, "r");
    if (fp == NULL)
        return -1;
    while (fgets(line, sizeof(line), fp) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(fp);
    return kib;
}

/* ---- clients ---- */

/* A token for tenant/sub from the stack's secret (freed with the fixture). */
static inline const char *fx_token(fx *f, const char *tenant, const char *sub)
{
    char *t = hx_token(f->s, tenant, sub, 600);
    HX_ASSERT(f->s, t != NULL);
    return fx_own(f, t);
}

/* Connects and says hello on gateway gw; fails the test when refused. */
static inline hx_sl_client *fx_client(fx *f, int gw, const char *tenant, const char *sub)
{
    hx_sl_client *c = NULL;
    char *tok = hx_token(f->s, tenant, sub, 600);

    HX_ASSERT(f->s, tok != NULL);
    HX_OK(f->s, hx_sl_connect(&c, hx_stack_gw_port(f->s, gw), tok, 15000));
    free(tok);
    hx_ws_set_backlog_max(hx_sl_ws(c), 200000);
    return c;
}

/* A raw WebSocket to gateway gw (no hello yet). */
static inline hx_ws *fx_raw(fx *f, int gw)
{
    hx_ws *ws = NULL;
    int code =
        hx_ws_connect(&ws, NULL, hx_stack_gw_port(f->s, gw), HX_SL_PATH, HX_SL_SUBPROTOCOL, 10000);
    HX_ASSERT_MSG(f->s, code == 101, "upgrade answered %d: %s", code, hx_error());
    return ws;
}

/* A raw WebSocket that has said hello with a token for tenant/sub. */
static inline hx_ws *fx_raw_hello(fx *f, int gw, const char *tenant, const char *sub)
{
    hx_ws *ws = fx_raw(f, gw);
    HX_OK(f->s, hx_sl_hello(ws, fx_token(f, tenant, sub), NULL, 15000, NULL));
    return ws;
}

static inline bool fx__is_type(const cJSON *fr, const char *type)
{
    const char *t = hx_json_str(fr, "type");
    return t != NULL && strcmp(t, type) == 0;
}

/* Waits for an error frame and checks its code; returns it (caller frees). */
static inline cJSON *fx_expect_error(fx *f, hx_ws *ws, const char *code)
{
    cJSON *e = hx_ws_expect_type(ws, "error", 10000);
    char *txt;

    HX_ASSERT_MSG(f->s, e != NULL, "no error frame (wanted %s): %s", code, hx_error());
    txt = cJSON_PrintUnformatted(e);
    HX_ASSERT_MSG(f->s, hx_json_str(e, "code") && strcmp(hx_json_str(e, "code"), code) == 0,
                  "wanted error %s, got %s", code, txt);
    cJSON_free(txt);
    return e;
}

/* Reads (raw level, discarding data) until the peer closes; returns the
 * close code, -1 when it did not close within timeout_ms. */
static inline int fx_wait_close(hx_ws *ws, int timeout_ms)
{
    int64_t deadline = hx_now_ms() + timeout_ms;

    for (int i = 0; i < 1000000 && hx_now_ms() < deadline; i++) {
        char *junk = NULL;
        int left = (int)(deadline - hx_now_ms());
        hx_ws_result r = hx_ws_recv(ws, left > 0 ? left : 1, &junk);
        free(junk);
        if (r == HX_WS_CLOSED)
            return hx_ws_close_code(ws);
        if (r == HX_WS_ERROR)
            return hx_ws_close_code(ws) >= 0 ? hx_ws_close_code(ws) : -2;
    }
    return -1;
}

/* Expects an error frame with code, then a close with close_code. */
static inline void fx_expect_error_close(fx *f, hx_ws *ws, const char *code, int close_code)
{
    cJSON *e = fx_expect_error(f, ws, code);
    int got;

    cJSON_Delete(e);
    got = fx_wait_close(ws, 10000);
    HX_ASSERT_MSG(f->s, got == close_code, "wanted close %d after error %s, got %d (%s)",
                  close_code, code, got, hx_ws_close_reason(ws));
}

/* Sends {"type":"ping"} and waits for the pong: a barrier, since the
 * gateway answers frames in order. Frames before the pong stay in the
 * backlog. */
static inline void fx_ping(fx *f, hx_ws *ws)
{
    cJSON *p;

    HX_OK(f->s, hx_ws_send_text(ws, "{\"type\":\"ping\"}"));
    p = hx_ws_expect_type(ws, "pong", 10000);
    HX_ASSERT_MSG(f->s, p != NULL, "no pong: %s", hx_error());
    cJSON_Delete(p);
}

/* Counts backlog frames of a type (and, when kind is not NULL, of a kind). */
static inline int fx_backlog_count(hx_ws *ws, const char *type, const char *kind)
{
    int n = 0;

    for (size_t i = 0; i < hx_ws_backlog_count(ws); i++) {
        const cJSON *fr = hx_ws_backlog_get(ws, i);
        if (fx__is_type(fr, type) && (kind == NULL || (hx_json_str(fr, "kind") &&
                                                       strcmp(hx_json_str(fr, "kind"), kind) == 0)))
            n++;
    }
    return n;
}

/* Proves gateway gw still serves a fresh client normally: hello, welcome,
 * a send accepted after the JetStream ack, and ping/pong. */
static inline void fx_check_serves(fx *f, int gw)
{
    char user[32], id[32];
    hx_sl_client *c;
    cJSON *a;

    snprintf(user, sizeof(user), "probe%d", f->probes);
    snprintf(id, sizeof(id), "probe-%d", f->probes);
    f->probes++;
    c = fx_client(f, gw, "probe", user);
    a = hx_sl_send_wait(c, id, NULL, "are you still there?", 15000);
    HX_ASSERT_MSG(f->s, a != NULL && fx__is_type(a, "accepted"), "probe send not accepted: %s",
                  hx_error());
    cJSON_Delete(a);
    fx_ping(f, hx_sl_ws(c));
    hx_sl_destroy(c);
}

/* ---- direct stream access ---- */

/* Publishes a user message envelope straight to a room's OUT subject (as
 * the orchestrator would): live copies reach the gateways by RePublish.
 * Asynchronous; call fx_publish_flush to wait for the acks. */
static inline void fx_publish_room_msg(fx *f, const char *tenant, const char *room,
                                       const char *user, const char *id, const char *text)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__ClientMessage m = SLUICE__CLIENT_MESSAGE__INIT;
    char event_id[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX];
    uint8_t *data = NULL;
    size_t len = 0;
    natsStatus st;

    sl_event_id_new(event_id);
    e.event_id = event_id;
    e.tenant = (char *)tenant;
    e.session = (char *)"test-publisher";
    e.client_id = (char *)id;
    e.message_id = (char *)id;
    e.ts_unix_ns = sl_now_ns();
    m.room = (char *)room;
    m.user = (char *)user;
    m.text = (char *)text;
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &m;
    HX_OK(f->s, sl_subject_chan(subj, sizeof(subj), "sluice.out", tenant, true, room));
    HX_OK(f->s, sl_envelope_encode(&e, &data, &len));
    st = js_PublishAsync(f->js, subj, data, (int)len, NULL);
    free(data);
    HX_ASSERT_MSG(f->s, st == NATS_OK, "publish to %s: %s", subj, natsStatus_GetText(st));
}

static inline void fx_publish_flush(fx *f)
{
    jsPubOptions po;
    natsStatus st;

    jsPubOptions_Init(&po);
    po.MaxWait = 30000;
    st = js_PublishAsyncComplete(f->js, &po);
    HX_ASSERT_MSG(f->s, st == NATS_OK, "async publishes not acknowledged: %s",
                  natsStatus_GetText(st));
}

/* The gateway records ("<t>.<room>.=<instance>", {"count","members"}) of
 * the room in the presence bucket: *nrec of them are read; returns the key
 * (malloc'd) of the one listing session (NULL when none does). */
static inline char *fx_presence_record_of(fx *f, const char *tenant, const char *room,
                                          const char *session, int *nrec)
{
    kvStore *kv = NULL;
    kvWatcher *w = NULL;
    kvWatchOptions wo;
    char filter[200];
    char *found = NULL;

    *nrec = 0;
    snprintf(filter, sizeof(filter), "%s.%s.*", tenant, room);
    if (js_KeyValue(&kv, f->js, SL_KV_PRESENCE) != NATS_OK)
        return NULL;
    kvWatchOptions_Init(&wo);
    wo.IgnoreDeletes = true;
    if (kvStore_Watch(&w, kv, filter, &wo) == NATS_OK) {
        for (;;) {
            kvEntry *e = NULL;
            const char *last;
            if (kvWatcher_Next(&e, w, 2000) != NATS_OK || e == NULL)
                break;
            last = strrchr(kvEntry_Key(e), '.');
            if (last != NULL && last[1] == '=') {
                cJSON *v = cJSON_ParseWithLength(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
                const cJSON *m;
                (*nrec)++;
                cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(v, "members"))
                {
                    const char *ss = hx_json_str(m, "session");
                    if (found == NULL && ss != NULL && strcmp(ss, session) == 0)
                        found = strdup(kvEntry_Key(e));
                }
                cJSON_Delete(v);
            }
            kvEntry_Destroy(e);
        }
        kvWatcher_Destroy(w);
    }
    kvStore_Destroy(kv);
    return found;
}

#endif
