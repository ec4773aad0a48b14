/* Resume (shared/PROTOCOL.md "Session life cycle"): from the positions
 * acknowledged with ack, on a second gateway after the first was SIGKILLed
 * mid-reply, repeatedly while a room is being written to, and past what the
 * stream still keeps (gap). Each test counts every event a client sees:
 * exactly once, in order, nothing missing. */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <time.h>

#include "test_gateway_fx.h"

#define T 15000

static cJSON *want(fx *f, hx_ws *ws, const char *pattern)
{
    cJSON *fr = hx_ws_expect(ws, pattern, T);
    HX_ASSERT_MSG(f->s, fr != NULL, "no frame like %s: %s", pattern, hx_error());
    return fr;
}

static void post(fx *f, hx_sl_client *c, const char *id, const char *room, const char *text)
{
    cJSON *a = hx_sl_send_wait(c, id, room, text, T);
    HX_ASSERT_MSG(f->s, a != NULL && fx__is_type(a, "accepted"), "send %s not accepted: %s", id,
                  a ? cJSON_PrintUnformatted(a) : hx_error());
    cJSON_Delete(a);
}

static int64_t see_msg(fx *f, hx_ws *ws, const char *ch, const char *id)
{
    char *pat =
        hx_strf("{\"type\":\"event\",\"ch\":\"%s\",\"kind\":\"message\",\"id\":\"%s\"}", ch, id);
    cJSON *e = want(f, ws, pat);
    int64_t seq = hx_json_int(e, "seq", -1);

    free(pat);
    cJSON_Delete(e);
    return seq;
}

/* ---- ack persisted: resume without positions ---- */

typedef struct pos_wait {
    fx *f;
    char key[256];
    const char *ch;
    int64_t seq;
} pos_wait;

static bool pos_stored(void *ud)
{
    pos_wait *w = ud;
    char *v = fx_kv_get(w->f, SL_KV_SESSIONS, w->key);
    cJSON *o = v ? cJSON_Parse(v) : NULL;
    bool ok = hx_json_int(cJSON_GetObjectItem(o, "pos"), w->ch, -1) == w->seq;

    cJSON_Delete(o);
    free(v);
    return ok;
}

START_TEST(test_resume_without_positions_uses_acked_positions)
{
    fx f;
    fx_opts o = {.gateways = 1, .orchestrators = 1, .workers = 1, .agents_json = FX_AGENTS_MENTION};
    hx_sl_client *a, *b;
    int64_t seq[5];
    char *session, *rt, *resume, *tok;
    pos_wait w;
    hx_ws *ws;
    cJSON *welcome = NULL;
    int next = 2;
    int64_t last = 0;

    fx_start(&f, &o);
    a = fx_client(&f, 0, "acme", "alice");
    b = fx_client(&f, 0, "acme", "bob");
    cJSON_Delete(hx_sl_join(a, "lobby", T));
    cJSON_Delete(hx_sl_join(b, "lobby", T));
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof(id), "m-%d", i);
        post(&f, b, id, "lobby", id);
        seq[i] = see_msg(&f, hx_sl_ws(a), "r:lobby", id);
    }
    /* alice has seen three messages but acknowledges two. */
    HX_OK(f.s, hx_sl_ack(a, "r:lobby", seq[1]));
    w.f = &f;
    snprintf(w.key, sizeof(w.key), "acme.%s.pos", hx_sl_session(a));
    w.ch = "r:lobby";
    w.seq = seq[1];
    HX_ASSERT_MSG(f.s, hx_wait_until(pos_stored, &w, T), "acked position never stored under %s",
                  w.key);
    session = hx_strf("%s", hx_sl_session(a));
    rt = hx_strf("%s", hx_sl_resume_token(a));
    hx_sl_destroy(a); /* a lost connection */

    /* The room goes on without her. */
    for (int i = 3; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "m-%d", i);
        post(&f, b, id, "lobby", id);
        seq[i] = see_msg(&f, hx_sl_ws(b), "r:lobby", id);
    }
    ws = fx_raw(&f, 0);
    resume = hx_strf("{\"session\":\"%s\",\"resume_token\":\"%s\"}", session, rt);
    tok = hx_token(f.s, "acme", "alice", 600);
    HX_OK(f.s, hx_sl_hello(ws, tok, resume, T, &welcome));
    HX_ASSERT(f.s, hx_json_true(welcome, "resumed"));
    HX_ASSERT(f.s, strcmp(hx_json_str(welcome, "session"), session) == 0);
    /* Replayed: m-2 (seen, never acked), m-3, m-4, in order; nothing at or
     * below the acked position. */
    for (int k = 0; k < 1000 && next < 5; k++) {
        cJSON *e = hx_ws_recv_json(ws, T);
        const char *kind;
        HX_ASSERT_MSG(f.s, e != NULL, "replay stopped before m-%d: %s", next, hx_error());
        if (!fx__is_type(e, "event")) {
            HX_ASSERT_MSG(f.s, !fx__is_type(e, "gap"), "unexpected gap");
            cJSON_Delete(e);
            continue;
        }
        HX_ASSERT(f.s, strcmp(hx_json_str(e, "ch"), "r:lobby") == 0);
        HX_ASSERT_MSG(f.s, hx_json_int(e, "seq", 0) > seq[1] && hx_json_int(e, "seq", 0) > last,
                      "replayed seq %lld (acked %lld, previous %lld)",
                      (long long)hx_json_int(e, "seq", 0), (long long)seq[1], (long long)last);
        last = hx_json_int(e, "seq", 0);
        kind = hx_json_str(e, "kind");
        if (strcmp(kind, "message") == 0) {
            char id[16];
            snprintf(id, sizeof(id), "m-%d", next);
            HX_ASSERT_MSG(f.s, strcmp(hx_json_str(e, "id"), id) == 0, "replayed %s, wanted %s",
                          hx_json_str(e, "id"), id);
            HX_ASSERT(f.s, hx_json_int(e, "seq", 0) == seq[next]);
            next++;
        }
        cJSON_Delete(e);
    }
    HX_ASSERT(f.s, next == 5);
    /* And it is live again. */
    post(&f, b, "m-5", "lobby", "live again");
    see_msg(&f, ws, "r:lobby", "m-5");
    cJSON_Delete(welcome);
    hx_ws_destroy(ws);
    free(resume);
    free(tok);
    free(session);
    free(rt);
    hx_sl_destroy(b);
    fx_stop(&f);
}
END_TEST

/* ---- SIGKILL mid-reply, resume on the other gateway ---- */

typedef struct reply_log {
    const char *to;
    char text[4096]; /* the tokens, concatenated */
    int tokens;
    char *final; /* the final reply text */
} reply_log;

/* Reads c's frames until reply log r has at least min_tokens tokens (or,
 * with min_tokens < 0, until its final reply). */
static void read_reply(fx *f, hx_sl_client *c, reply_log *r, int min_tokens)
{
    int64_t deadline = hx_now_ms() + 30000;

    while (hx_now_ms() < deadline) {
        cJSON *e;
        const char *kind, *to;
        if (min_tokens >= 0 ? r->tokens >= min_tokens : r->final != NULL)
            return;
        e = hx_ws_recv_json(hx_sl_ws(c), 1000);
        if (e == NULL) {
            HX_ASSERT_MSG(f->s, hx_ws_last_result(hx_sl_ws(c)) == HX_WS_TIMEOUT,
                          "connection ended while reading the reply to %s: %s", r->to, hx_error());
            continue;
        }
        kind = hx_json_str(e, "kind");
        to = hx_json_str(e, "to");
        if (fx__is_type(e, "event") && kind && to && strcmp(to, r->to) == 0) {
            HX_ASSERT_MSG(f->s, hx_json_int(e, "attempt", 1) == 1, "a retried attempt: %s",
                          cJSON_PrintUnformatted(e));
            if (strcmp(kind, "token") == 0) {
                HX_ASSERT(f->s, r->final == NULL);
                strncat(r->text, hx_json_str(e, "text"), sizeof(r->text) - strlen(r->text) - 1);
                r->tokens++;
            } else if (strcmp(kind, "reply") == 0) {
                HX_ASSERT_MSG(f->s, r->final == NULL, "a second final reply to %s", r->to);
                HX_ASSERT(f->s, hx_json_true(e, "final"));
                r->final = hx_strf("%s", hx_json_str(e, "text"));
            }
        }
        cJSON_Delete(e);
    }
    HX_ASSERT_MSG(f->s, false, "reply to %s incomplete after 30 s: %d tokens '%s'", r->to,
                  r->tokens, r->text);
}

START_TEST(test_resume_on_second_gateway_after_sigkill)
{
    fx f;
    fx_opts o = {.gateways = 2,
                 .orchestrators = 1,
                 .workers = 1,
                 .echo_token_delay_ms = 100,
                 .agents_json = FX_AGENTS_MENTION};
    hx_sl_client *p, *r;
    reply_log lp = {.to = "p-1"}, lr = {.to = "r-1"};
    char text_p[1024] = "@bot", text_r[1024] = "@bot";
    int before_p, before_r;

    for (int i = 0; i < 50; i++) { /* 5 s of tokens each, within the 10 s deadline */
        char w[32];
        snprintf(w, sizeof(w), " private%d", i);
        strcat(text_p, w);
        snprintf(w, sizeof(w), " room%d", i);
        strcat(text_r, w);
    }
    fx_start(&f, &o);
    p = fx_client(&f, 0, "acme", "alice");
    r = fx_client(&f, 0, "acme", "bob");
    cJSON_Delete(hx_sl_join(r, "lobby", T));
    post(&f, p, "p-1", NULL, text_p);
    post(&f, r, "r-1", "lobby", text_r);
    read_reply(&f, p, &lp, 5);
    read_reply(&f, r, &lr, 5);

    before_p = lp.tokens;
    before_r = lr.tokens;
    HX_OK(f.s, hx_stack_kill(f.s, HX_GATEWAY, 0, SIGKILL));
    HX_OK(f.s, hx_sl_reconnect(p, hx_stack_gw_port(f.s, 1), T));
    HX_OK(f.s, hx_sl_reconnect(r, hx_stack_gw_port(f.s, 1), T));
    HX_ASSERT(f.s, hx_json_true(hx_sl_welcome(p), "resumed"));
    HX_ASSERT(f.s, hx_json_true(hx_sl_welcome(r), "resumed"));
    HX_ASSERT_MSG(f.s, lp.final == NULL && lr.final == NULL,
                  "the replies ended before the kill: make the text longer");
    read_reply(&f, p, &lp, -1);
    read_reply(&f, r, &lr, -1);

    HX_ASSERT_MSG(f.s, lp.tokens > before_p && lr.tokens > before_r,
                  "no tokens after the resume: the kill was not mid-reply");
    HX_ASSERT_MSG(f.s, strcmp(lp.text, text_p) == 0, "private tokens assemble to '%s'", lp.text);
    HX_ASSERT_MSG(f.s, strcmp(lp.final, text_p) == 0, "private final '%s'", lp.final);
    HX_ASSERT_MSG(f.s, strcmp(lr.text, text_r) == 0, "room tokens assemble to '%s'", lr.text);
    HX_ASSERT_MSG(f.s, strcmp(lr.final, text_r) == 0, "room final '%s'", lr.final);
    HX_ASSERT_MSG(f.s, hx_sl_get_counts(p).duplicates == 0, "%lu duplicates on the private client",
                  hx_sl_get_counts(p).duplicates);
    HX_ASSERT_MSG(f.s, hx_sl_get_counts(r).duplicates == 0, "%lu duplicates on the room client",
                  hx_sl_get_counts(r).duplicates);
    HX_ASSERT(f.s, hx_sl_get_counts(p).gaps == 0 && hx_sl_get_counts(r).gaps == 0);
    /* The resumed sessions keep working on the new gateway. */
    post(&f, r, "r-2", "lobby", "after the crash");
    see_msg(&f, hx_sl_ws(r), "r:lobby", "r-2");
    HX_ASSERT(f.s, hx_sl_get_counts(r).duplicates == 0);
    free(lp.final);
    free(lr.final);
    hx_sl_destroy(p);
    hx_sl_destroy(r);
    fx_stop(&f);
}
END_TEST

/* ---- repeated resumes while the room is written to ---- */

#define FLOOD 2000

typedef struct publisher {
    jsCtx *js;
    atomic_int done;
    atomic_int errors;
} publisher;

/* Writes FLOOD room messages, about one per millisecond, so that live
 * events keep arriving while the client replays. No assertions here (not
 * the test's thread): failures are counted. */
static void *publish_main(void *arg)
{
    publisher *p = arg;
    struct timespec ms = {.tv_nsec = 1000000};

    for (int i = 0; i < FLOOD; i++) {
        Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
        Sluice__ClientMessage m = SLUICE__CLIENT_MESSAGE__INIT;
        char event_id[SL_EVENT_ID_LEN + 1], id[16], text[64];
        uint8_t *data = NULL;
        size_t len = 0;
        snprintf(id, sizeof(id), "f-%d", i);
        snprintf(text, sizeof(text), "flood message %d", i);
        sl_event_id_new(event_id);
        e.event_id = event_id;
        e.tenant = "acme";
        e.session = "test-publisher";
        e.client_id = id;
        e.message_id = id;
        e.ts_unix_ns = sl_now_ns();
        m.room = "live";
        m.user = "bob";
        m.text = text;
        e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
        e.message = &m;
        if (sl_envelope_encode(&e, &data, &len) != SL_OK ||
            js_PublishAsync(p->js, "sluice.out.acme.r.live", data, (int)len, NULL) != NATS_OK)
            atomic_fetch_add(&p->errors, 1);
        free(data);
        nanosleep(&ms, NULL);
    }
    {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 30000;
        if (js_PublishAsyncComplete(p->js, &po) != NATS_OK)
            atomic_fetch_add(&p->errors, 1);
    }
    atomic_store(&p->done, 1);
    return NULL;
}

/* Reads for up to ms, checking the flood's order into *next. */
static void read_live(fx *f, hx_sl_client *c, int *next, int ms)
{
    int64_t until = hx_now_ms() + ms;

    while (hx_now_ms() < until && *next < FLOOD) {
        cJSON *e = hx_ws_recv_json(hx_sl_ws(c), 10);
        const char *id = e ? hx_json_str(e, "id") : NULL;
        if (id != NULL && strncmp(id, "f-", 2) == 0) {
            HX_ASSERT_MSG(f->s, atoi(id + 2) == *next, "got %s, wanted f-%d", id, *next);
            (*next)++;
        }
        cJSON_Delete(e);
    }
}

START_TEST(test_resume_during_live_traffic_loses_nothing)
{
    fx f;
    fx_opts o = {.gateways = 2};
    hx_sl_client *c, *anchor[2];
    publisher pub;
    pthread_t th;
    int next = 0, anext[2] = {0, 0}, reconnects = 0;
    int64_t deadline;

    fx_start(&f, &o);
    /* One client stays in the room on each gateway, so the room's channel
     * is live on both when the moving client arrives: its live events are
     * buffered per member while it replays. */
    for (int g = 0; g < 2; g++) {
        anchor[g] = fx_client(&f, g, "acme", g == 0 ? "anchor0" : "anchor1");
        cJSON_Delete(hx_sl_join(anchor[g], "live", T));
    }
    c = fx_client(&f, 0, "acme", "alice");
    cJSON_Delete(hx_sl_join(c, "live", T));
    pub.js = f.js;
    atomic_init(&pub.done, 0);
    atomic_init(&pub.errors, 0);
    HX_ASSERT(f.s, pthread_create(&th, NULL, publish_main, &pub) == 0);
    /* Jump between the gateways while the room is being written to,
     * reading only part of the time, so each resume has a backlog to
     * replay while new events keep coming. */
    while (!atomic_load(&pub.done) && reconnects < 200) {
        read_live(&f, c, &next, 20);
        read_live(&f, anchor[0], &anext[0], 40);
        read_live(&f, anchor[1], &anext[1], 40);
        HX_OK(f.s, hx_sl_reconnect(c, hx_stack_gw_port(f.s, reconnects % 2 == 0 ? 1 : 0), T));
        HX_ASSERT(f.s, hx_json_true(hx_sl_welcome(c), "resumed"));
        reconnects++;
    }
    pthread_join(th, NULL);
    HX_ASSERT_MSG(f.s, atomic_load(&pub.errors) == 0, "%d publish errors",
                  atomic_load(&pub.errors));
    deadline = hx_now_ms() + 30000;
    while ((next < FLOOD || anext[0] < FLOOD || anext[1] < FLOOD) && hx_now_ms() < deadline) {
        read_live(&f, c, &next, 200);
        read_live(&f, anchor[0], &anext[0], 200);
        read_live(&f, anchor[1], &anext[1], 200);
    }
    fprintf(stderr, "live resume: %d reconnects during a flood of %d\n", reconnects, FLOOD);
    HX_ASSERT_MSG(f.s, next == FLOOD, "only %d of %d messages arrived", next, FLOOD);
    HX_ASSERT_MSG(f.s, anext[0] == FLOOD && anext[1] == FLOOD, "anchors got %d and %d of %d",
                  anext[0], anext[1], FLOOD);
    HX_ASSERT_MSG(f.s, hx_sl_get_counts(c).duplicates == 0, "%lu duplicates",
                  hx_sl_get_counts(c).duplicates);
    HX_ASSERT(f.s, hx_sl_get_counts(c).gaps == 0);
    HX_ASSERT(f.s, hx_sl_get_counts(anchor[0]).duplicates == 0);
    HX_ASSERT(f.s, hx_sl_get_counts(anchor[1]).duplicates == 0);
    HX_ASSERT_MSG(f.s, reconnects >= 5, "only %d reconnects during the flood", reconnects);
    hx_sl_destroy(c);
    hx_sl_destroy(anchor[0]);
    hx_sl_destroy(anchor[1]);
    fx_stop(&f);
}
END_TEST

/* ---- resume from a position the stream no longer keeps ---- */

START_TEST(test_resume_past_retention_sends_gap)
{
    static const char *const env[] = {"SLUICE_OUT_HISTORY=10", NULL};
    fx f;
    fx_opts o = {.gateways = 1, .env = env};
    hx_sl_client *c;
    cJSON *g;
    int64_t seen, to;
    int next = -1;

    fx_start(&f, &o);
    c = fx_client(&f, 0, "acme", "alice");
    cJSON_Delete(hx_sl_join(c, "old", T));
    fx_publish_room_msg(&f, "acme", "old", "bob", "o-0", "zero");
    fx_publish_flush(&f);
    seen = see_msg(&f, hx_sl_ws(c), "r:old", "o-0");
    /* Offline while 30 more arrive; the stream keeps only 10 per channel. */
    shutdown(hx_ws_fd(hx_sl_ws(c)), SHUT_RDWR); /* hx_sl_reconnect frees it below */
    for (int i = 1; i <= 30; i++) {
        char id[16];
        snprintf(id, sizeof(id), "o-%d", i);
        fx_publish_room_msg(&f, "acme", "old", "bob", id, "later");
    }
    fx_publish_flush(&f);
    HX_ASSERT(f.s, fx_stream_msgs(&f, SL_STREAM_OUT, "sluice.out.acme.r.old") <= 10);
    HX_OK(f.s, hx_sl_reconnect(c, hx_stack_gw_port(f.s, 0), T));
    g = want(&f, hx_sl_ws(c), "{\"type\":\"gap\",\"ch\":\"r:old\"}");
    HX_ASSERT_MSG(f.s, hx_json_int(g, "from", -1) == seen, "gap from %lld, the client had %lld",
                  (long long)hx_json_int(g, "from", -1), (long long)seen);
    to = hx_json_int(g, "to", -1);
    HX_ASSERT(f.s, to > seen + 1);
    cJSON_Delete(g);
    /* The gap comes before the rest, which is complete from `to` on. */
    for (int k = 0; k < 100 && next != 30; k++) {
        cJSON *e = hx_ws_recv_json(hx_sl_ws(c), T);
        const char *id;
        HX_ASSERT_MSG(f.s, e != NULL, "replay after the gap stopped: %s", hx_error());
        id = hx_json_str(e, "id");
        if (fx__is_type(e, "event") && strcmp(hx_json_str(e, "kind"), "message") == 0) {
            HX_ASSERT(f.s, hx_json_int(e, "seq", 0) >= to);
            HX_ASSERT_MSG(f.s, next < 0 || atoi(id + 2) == next + 1, "%s after o-%d", id, next);
            next = atoi(id + 2);
        }
        cJSON_Delete(e);
    }
    HX_ASSERT(f.s, next == 30);
    HX_ASSERT(f.s, hx_sl_get_counts(c).duplicates == 0 && hx_sl_get_counts(c).gaps == 1);
    HX_ASSERT(f.s, fx_metric(&f, 0, "sluice_gw_resumes_total{result=\"gap\"}") >= 1);
    hx_sl_destroy(c);
    fx_stop(&f);
}
END_TEST

/* ---- every joined room's position is persisted ---- */

#define MANY_ROOMS 80 /* more than the 64 positions stored before */

typedef struct npos_wait {
    fx *f;
    char key[256];
    int n;
} npos_wait;

static bool npos_stored(void *ud)
{
    npos_wait *w = ud;
    char *v = fx_kv_get(w->f, SL_KV_SESSIONS, w->key);
    cJSON *o = v ? cJSON_Parse(v) : NULL;
    bool ok = cJSON_GetArraySize(cJSON_GetObjectItem(o, "pos")) == w->n;

    cJSON_Delete(o);
    free(v);
    return ok;
}

START_TEST(test_resume_from_kv_restores_every_room)
{
    static const char *const gw_env[] = {"SLUICE_RATE=1000", "SLUICE_BURST=1000", NULL};
    fx_opts o = {.gateways = 2, .gw_env = gw_env};
    fx f;
    hx_sl_client *a;
    char *session, *rt, *resume, *tok;
    npos_wait w;
    hx_ws *ws;
    cJSON *welcome = NULL;
    int seen[MANY_ROOMS] = {0}, nseen = 0;

    fx_start(&f, &o);
    a = fx_client(&f, 0, "acme", "alice");
    for (int i = 0; i < MANY_ROOMS; i++) {
        char room[32];
        cJSON *j;
        snprintf(room, sizeof(room), "room-%d", i);
        j = hx_sl_join(a, room, T);
        HX_ASSERT_MSG(f.s, j != NULL, "join %s: %s", room, hx_error());
        cJSON_Delete(j);
    }
    /* Every room is stored (KV values of up to SLUICE_MAX_ROOMS + 1
     * positions: below 100 KB at the highest bound, far below NATS's 1 MB
     * payload). */
    w.f = &f;
    snprintf(w.key, sizeof(w.key), "acme.%s.pos", hx_sl_session(a));
    w.n = MANY_ROOMS;
    HX_ASSERT_MSG(f.s, hx_wait_until(npos_stored, &w, T), "%s never held %d positions: %s", w.key,
                  w.n, fx_kv_get(&f, SL_KV_SESSIONS, w.key));
    session = hx_strf("%s", hx_sl_session(a));
    rt = hx_strf("%s", hx_sl_resume_token(a));
    hx_sl_destroy(a);
    /* Every room gets a message while she is away. */
    for (int i = 0; i < MANY_ROOMS; i++) {
        char room[32];
        snprintf(room, sizeof(room), "room-%d", i);
        fx_publish_room_msg(&f, "acme", room, "writer", room, "while away");
    }
    fx_publish_flush(&f);
    /* Resumed on the other gateway from the stored positions only. */
    ws = fx_raw(&f, 1);
    resume = hx_strf("{\"session\":\"%s\",\"resume_token\":\"%s\"}", session, rt);
    tok = hx_token(f.s, "acme", "alice", 600);
    HX_OK(f.s, hx_sl_hello(ws, tok, resume, T, &welcome));
    HX_ASSERT(f.s, hx_json_true(welcome, "resumed"));
    while (nseen < MANY_ROOMS) {
        cJSON *e = hx_ws_recv_json(ws, T);
        const char *ch;
        int k;
        HX_ASSERT_MSG(f.s, e != NULL, "resume replayed %d of %d rooms: %s", nseen, MANY_ROOMS,
                      hx_error());
        ch = hx_json_str(e, "ch");
        if (fx__is_type(e, "event") && ch != NULL && sscanf(ch, "r:room-%d", &k) == 1 && k >= 0 &&
            k < MANY_ROOMS && strcmp(hx_json_str(e, "kind"), "message") == 0) {
            HX_ASSERT_MSG(f.s, seen[k] == 0, "room-%d replayed twice", k);
            seen[k] = 1;
            nseen++;
        }
        cJSON_Delete(e);
    }
    cJSON_Delete(welcome);
    hx_ws_destroy(ws);
    free(resume);
    free(tok);
    free(session);
    free(rt);
    fx_stop(&f);
}
END_TEST

/* ---- a hole the stream no longer has ---- */

static uint64_t out_last_seq(fx *f)
{
    jsStreamInfo *si = NULL;
    uint64_t n;

    HX_ASSERT(f->s, js_GetStreamInfo(&si, f->js, SL_STREAM_OUT, NULL, NULL) == NATS_OK);
    n = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    return n;
}

/* Publishes on core NATS what RePublish would deliver for a room event at
 * seq whose predecessor on the room's subject is last: the gateway sees a
 * live event after a hole, as when it missed live copies of events the
 * stream has removed since. */
static void publish_live_copy_ex(fx *f, const char *room, uint64_t seq, uint64_t last,
                                 const char *id, bool flush)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__ClientMessage m = SLUICE__CLIENT_MESSAGE__INIT;
    char event_id[SL_EVENT_ID_LEN + 1], live[SL_SUBJECT_MAX], out[SL_SUBJECT_MAX], num[32];
    uint8_t *data = NULL;
    size_t len = 0;
    natsMsg *msg = NULL;

    sl_event_id_new(event_id);
    e.event_id = event_id;
    e.tenant = (char *)"acme";
    e.session = (char *)"test-publisher";
    e.client_id = e.message_id = (char *)id;
    e.ts_unix_ns = sl_now_ns();
    m.room = (char *)room;
    m.user = (char *)"writer";
    m.text = (char *)"after the hole";
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &m;
    HX_OK(f->s, sl_subject_chan(live, sizeof(live), "sluice.live", "acme", true, room));
    HX_OK(f->s, sl_subject_chan(out, sizeof(out), "sluice.out", "acme", true, room));
    HX_OK(f->s, sl_envelope_encode(&e, &data, &len));
    HX_ASSERT(f->s, natsMsg_Create(&msg, live, NULL, (const char *)data, (int)len) == NATS_OK);
    snprintf(num, sizeof(num), "%llu", (unsigned long long)seq);
    HX_ASSERT(f->s, natsMsgHeader_Set(msg, "Nats-Sequence", num) == NATS_OK);
    snprintf(num, sizeof(num), "%llu", (unsigned long long)last);
    HX_ASSERT(f->s, natsMsgHeader_Set(msg, "Nats-Last-Sequence", num) == NATS_OK);
    HX_ASSERT(f->s, natsMsgHeader_Set(msg, "Nats-Subject", out) == NATS_OK);
    HX_ASSERT(f->s, natsConnection_PublishMsg(f->nc, msg) == NATS_OK);
    if (flush)
        HX_ASSERT(f->s, natsConnection_Flush(f->nc) == NATS_OK);
    natsMsg_Destroy(msg);
    free(data);
}

static void publish_live_copy(fx *f, const char *room, uint64_t seq, uint64_t last, const char *id)
{
    publish_live_copy_ex(f, room, seq, last, id, true);
}

/* JetStream's republished events can reach a gateway out of order (seen
 * in resume storms with several gateways publishing into one room): the
 * later one waits for the earlier one, with no stream read and no gap. */
START_TEST(test_live_events_out_of_order_are_put_in_order)
{
    /* The two copies below are never stored, so the order can only come
     * from the reorder window: 2 s, not the default 20 ms, which a loaded
     * machine can let pass between the two (the copies then look like a
     * hole the stream cannot fill). */
    static const char *const env[] = {"SLUICE_REORDER_MS=2000", NULL};
    fx f;
    fx_opts o = {.gateways = 1, .env = env};
    hx_sl_client *a;
    int64_t head, fills;
    bool got2 = false;

    fx_start(&f, &o);
    a = fx_client(&f, 0, "acme", "alice");
    cJSON_Delete(hx_sl_join(a, "swaps", T));
    /* Alice's own join is published (coalesced, SLUICE_PRESENCE_FLUSH_MS
     * later) into the room: once it is there, s-1 is the room's last event
     * and nothing real takes the sequences given to s-2 and s-3 below. A
     * join event stored after s-1 took s-2's place and let s-3 through. */
    cJSON_Delete(
        want(&f, hx_sl_ws(a), "{\"type\":\"event\",\"ch\":\"r:swaps\",\"kind\":\"presence\"}"));
    fx_publish_room_msg(&f, "acme", "swaps", "writer", "s-1", "first");
    fx_publish_flush(&f);
    head = see_msg(&f, hx_sl_ws(a), "r:swaps", "s-1");
    fills = fx_metric(&f, 0, "sluice_gw_gap_fills_total");
    /* s-3 comes first and names s-2 as its predecessor; s-2 follows in the
     * same write, within the reorder window. */
    publish_live_copy_ex(&f, "swaps", (uint64_t)head + 2, (uint64_t)head + 1, "s-3", false);
    publish_live_copy_ex(&f, "swaps", (uint64_t)head + 1, (uint64_t)head, "s-2", true);
    for (;;) {
        cJSON *e = hx_ws_recv_json(hx_sl_ws(a), T);
        const char *id;
        HX_ASSERT_MSG(f.s, e != NULL, "s-3 never came: %s", hx_error());
        HX_ASSERT_MSG(f.s, !fx__is_type(e, "gap"), "a gap frame: %s", cJSON_PrintUnformatted(e));
        id = fx__is_type(e, "event") ? hx_json_str(e, "id") : NULL;
        if (id != NULL && strcmp(id, "s-2") == 0) {
            HX_ASSERT(f.s, hx_json_int(e, "seq", 0) == head + 1);
            got2 = true;
        }
        if (id != NULL && strcmp(id, "s-3") == 0) {
            HX_ASSERT_MSG(f.s, got2, "s-3 came before s-2");
            HX_ASSERT(f.s, hx_json_int(e, "seq", 0) == head + 2);
            cJSON_Delete(e);
            break;
        }
        cJSON_Delete(e);
    }
    HX_ASSERT_MSG(f.s, fx_metric(&f, 0, "sluice_gw_gap_fills_total") == fills,
                  "the hole was read from the stream (%lld fills, %lld before)",
                  (long long)fx_metric(&f, 0, "sluice_gw_gap_fills_total"), (long long)fills);
    HX_ASSERT(f.s, hx_sl_get_counts(a).duplicates == 0);
    hx_sl_destroy(a);
    fx_stop(&f);
}
END_TEST

START_TEST(test_fill_that_finds_nothing_sends_gap)
{
    fx f;
    fx_opts o = {.gateways = 1};
    hx_sl_client *a, *b;
    hx_sl_client *both[2];
    int64_t seen;
    uint64_t base;

    fx_start(&f, &o);
    a = fx_client(&f, 0, "acme", "alice");
    b = fx_client(&f, 0, "acme", "bob");
    both[0] = a;
    both[1] = b;
    cJSON_Delete(hx_sl_join(a, "holes", T));
    cJSON_Delete(hx_sl_join(b, "holes", T));
    fx_publish_room_msg(&f, "acme", "holes", "writer", "h-1", "before");
    fx_publish_flush(&f);
    seen = see_msg(&f, hx_sl_ws(a), "r:holes", "h-1");
    HX_ASSERT(f.s, see_msg(&f, hx_sl_ws(b), "r:holes", "h-1") == seen);
    /* Stream positions that belong to another subject: the room's events
     * at base + 1 and base + 2 "were removed" before the gateway heard of
     * them, and the live event at base + 3 says its predecessor is base + 2. */
    for (int i = 0; i < 3; i++)
        fx_publish_room_msg(&f, "acme", "elsewhere", "writer", "e", "filler");
    fx_publish_flush(&f);
    base = out_last_seq(&f) - 3;
    publish_live_copy(&f, "holes", base + 3, base + 2, "h-2");
    /* The next real event of the room still comes, after the gap. */
    fx_publish_room_msg(&f, "acme", "holes", "writer", "h-3", "after");
    fx_publish_flush(&f);
    for (int k = 0; k < 2; k++) {
        hx_ws *ws = hx_sl_ws(both[k]);
        int64_t last = seen; /* the last event of the room before the gap (h-1 or a presence) */
        cJSON *g = NULL;
        while (g == NULL) {
            cJSON *e = hx_ws_recv_json(ws, T);
            HX_ASSERT_MSG(f.s, e != NULL, "no gap frame: %s", hx_error());
            if (fx__is_type(e, "gap")) {
                g = e;
                break;
            }
            if (fx__is_type(e, "event") && strcmp(hx_json_str(e, "ch"), "r:holes") == 0) {
                HX_ASSERT_MSG(f.s, hx_json_int(e, "seq", 0) < (int64_t)(base + 3),
                              "an event after the hole came before the gap");
                if (hx_json_int(e, "seq", 0) > last)
                    last = hx_json_int(e, "seq", 0);
            }
            cJSON_Delete(e);
        }
        HX_ASSERT_MSG(
            f.s,
            strcmp(hx_json_str(g, "ch"), "r:holes") == 0 && hx_json_int(g, "from", -1) == last &&
                hx_json_int(g, "to", -1) == (int64_t)(base + 3),
            "gap from %lld to %lld, wanted %lld to %llu", (long long)hx_json_int(g, "from", -1),
            (long long)hx_json_int(g, "to", -1), (long long)last, (unsigned long long)(base + 3));
        cJSON_Delete(g);
        HX_ASSERT(f.s, see_msg(&f, ws, "r:holes", "h-2") == (int64_t)(base + 3));
        see_msg(&f, ws, "r:holes", "h-3");
        HX_ASSERT(f.s, hx_sl_get_counts(both[k]).duplicates == 0);
    }
    HX_ASSERT(f.s, fx_metric(&f, 0, "sluice_gw_fill_gaps_total") == 1);
    hx_sl_destroy(a);
    hx_sl_destroy(b);
    fx_stop(&f);
}
END_TEST

/* ---- the default prev belongs to the session ---- */

/* The prev_event_id stored in SLUICE_IN with the session's latest message,
 * which must be message id (caller frees). */
static char *stored_prev(fx *f, const char *session, const char *id)
{
    char subj[SL_SUBJECT_MAX];
    natsMsg *m = NULL;
    Sluice__Envelope *e = NULL;
    char *prev;

    snprintf(subj, sizeof(subj), "sluice.in.acme.%s", session);
    HX_ASSERT(f->s, js_GetLastMsg(&m, f->js, SL_STREAM_IN, subj, NULL, NULL) == NATS_OK);
    HX_OK(f->s, sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e));
    HX_ASSERT_MSG(f->s, strcmp(e->client_id, id) == 0, "the latest stored message is %s, not %s",
                  e->client_id, id);
    prev = strdup(e->prev_event_id);
    sl_envelope_free(e);
    natsMsg_Destroy(m);
    return prev;
}

static void expect_prev(fx *f, const char *session, const char *id, const char *want_prev)
{
    char *prev = stored_prev(f, session, id);

    HX_ASSERT_MSG(f->s, strcmp(prev, want_prev) == 0,
                  "%s was stored with prev \"%s\", wanted \"%s\"", id, prev, want_prev);
    free(prev);
}

/* Points SLUICE_IN at subjects (a JetStream refusal for every client
 * message while it is not "sluice.in.>"). */
static void in_subjects(fx *f, const char *subject)
{
    jsStreamInfo *si = NULL;
    const char *subj[1] = {subject};
    const char **was;
    int wasn;
    natsStatus st;

    HX_ASSERT(f->s, js_GetStreamInfo(&si, f->js, SL_STREAM_IN, NULL, NULL) == NATS_OK);
    was = si->Config->Subjects;
    wasn = si->Config->SubjectsLen;
    si->Config->Subjects = subj;
    si->Config->SubjectsLen = 1;
    st = js_UpdateStream(NULL, f->js, si->Config, NULL, NULL);
    si->Config->Subjects = was;
    si->Config->SubjectsLen = wasn;
    jsStreamInfo_Destroy(si);
    HX_ASSERT_MSG(f->s, st == NATS_OK, "update of SLUICE_IN: %s", natsStatus_GetText(st));
}

typedef struct prev_wait {
    fx *f;
    char key[256];
    const char *prev;
} prev_wait;

static bool prev_stored(void *ud)
{
    prev_wait *w = ud;
    char *v = fx_kv_get(w->f, SL_KV_SESSIONS, w->key);
    cJSON *o = v ? cJSON_Parse(v) : NULL;
    const char *p = hx_json_str(o, "prev");
    bool ok = p != NULL && strcmp(p, w->prev) == 0;

    cJSON_Delete(o);
    free(v);
    return ok;
}

START_TEST(test_default_prev_is_the_sessions_last_accepted)
{
    fx f;
    fx_opts o = {.gateways = 2};
    hx_sl_client *a;
    hx_ws *ws;
    cJSON *welcome = NULL, *r;
    char *session, *resume, *tok;
    prev_wait w;

    fx_start(&f, &o);
    a = fx_client(&f, 0, "acme", "alice");
    session = hx_strf("%s", hx_sl_session(a));
    post(&f, a, "c-1", NULL, "one");
    post(&f, a, "c-2", NULL, "two");
    expect_prev(&f, session, "c-2", "c-1");

    /* A send JetStream refuses does not become the default prev. */
    in_subjects(&f, "sluice.nothing.>");
    r = hx_sl_send_wait(a, "c-3", NULL, "refused", T);
    HX_ASSERT_MSG(f.s, r != NULL && fx__is_type(r, "busy"), "c-3: %s",
                  r ? cJSON_PrintUnformatted(r) : hx_error());
    cJSON_Delete(r);
    in_subjects(&f, "sluice.in.>");
    post(&f, a, "c-4", NULL, "four");
    expect_prev(&f, session, "c-4", "c-2");

    /* Resumed on the same gateway while the old connection is still open:
     * a send right after the welcome chains to c-4. */
    ws = fx_raw(&f, 0);
    resume =
        hx_strf("{\"session\":\"%s\",\"resume_token\":\"%s\"}", session, hx_sl_resume_token(a));
    tok = hx_token(f.s, "acme", "alice", 600);
    HX_OK(f.s, hx_sl_hello(ws, tok, resume, T, &welcome));
    HX_ASSERT(f.s, hx_json_true(welcome, "resumed"));
    HX_OK(f.s, hx_ws_send_text(ws, "{\"type\":\"send\",\"id\":\"c-5\",\"text\":\"five\"}"));
    cJSON_Delete(want(&f, ws, "{\"type\":\"accepted\",\"id\":\"c-5\"}"));
    expect_prev(&f, session, "c-5", "c-4");
    hx_ws_destroy(ws);
    cJSON_Delete(welcome);
    welcome = NULL;
    hx_sl_destroy(a);

    /* On the other gateway, from the stored session state; the first
     * frame after the welcome already has it. */
    w.f = &f;
    snprintf(w.key, sizeof(w.key), "acme.%s.pos", session);
    w.prev = "c-5";
    HX_ASSERT_MSG(f.s, hx_wait_until(prev_stored, &w, T), "prev c-5 never stored under %s", w.key);
    ws = fx_raw(&f, 1);
    HX_OK(f.s, hx_sl_hello(ws, tok, resume, T, &welcome));
    HX_ASSERT(f.s, hx_json_true(welcome, "resumed"));
    HX_OK(f.s, hx_ws_send_text(ws, "{\"type\":\"send\",\"id\":\"c-6\",\"text\":\"six\"}"));
    cJSON_Delete(want(&f, ws, "{\"type\":\"accepted\",\"id\":\"c-6\"}"));
    expect_prev(&f, session, "c-6", "c-5");
    hx_ws_destroy(ws);
    cJSON_Delete(welcome);
    free(resume);
    free(tok);
    free(session);
    fx_stop(&f);
}
END_TEST

/* ---- a long connection keeps a valid resume token ---- */

static bool clock_past(void *ud)
{
    return (int64_t)time(NULL) > *(const int64_t *)ud;
}

/* A resume token expires SLUICE_RESUME_WINDOW_S after it was made: a
 * connection open longer than that must get fresh ones, or it cannot resume
 * when it drops (after a redeploy, most connections are that old). */
START_TEST(test_long_connection_resumes_after_its_first_token_expired)
{
    static const char *const env[] = {"SLUICE_RESUME_WINDOW_S=10", NULL};
    fx f;
    fx_opts o = {.gateways = 1, .env = env};
    hx_sl_client *c;
    hx_ws *ws;
    cJSON *rt_frame;
    char *first, *session, *resume;
    int64_t expired_at = (int64_t)time(NULL) + 10;

    fx_start(&f, &o);
    c = fx_client(&f, 0, "acme", "alice");
    first = hx_strf("%s", hx_sl_resume_token(c));
    session = hx_strf("%s", hx_sl_session(c));
    cJSON_Delete(hx_sl_join(c, "long", T));
    /* Half the window in, a fresh token. */
    rt_frame = want(&f, hx_sl_ws(c), "{\"type\":\"resume_token\"}");
    HX_ASSERT_MSG(f.s, strcmp(hx_sl_resume_token(c), first) != 0,
                  "the resume_token frame did not carry a new token: %s",
                  cJSON_PrintUnformatted(rt_frame));
    cJSON_Delete(rt_frame);
    /* Past the first token's expiry, still connected. */
    HX_ASSERT(f.s, hx_wait_until(clock_past, &expired_at, 20000));
    cJSON_Delete(hx_sl_send_wait(c, "c-1", NULL, "still here", T));

    shutdown(hx_ws_fd(hx_sl_ws(c)), SHUT_RDWR); /* hx_sl_reconnect frees it below */
    fx_publish_room_msg(&f, "acme", "long", "bob", "l-1", "while away");
    fx_publish_flush(&f);
    HX_OK(f.s, hx_sl_reconnect(c, hx_stack_gw_port(f.s, 0), T));
    HX_ASSERT(f.s, hx_json_true(hx_sl_welcome(c), "resumed"));
    see_msg(&f, hx_sl_ws(c), "r:long", "l-1");

    /* The first token alone would have been refused. */
    ws = fx_raw(&f, 0);
    resume = hx_strf("{\"session\":\"%s\",\"resume_token\":\"%s\"}", session, first);
    HX_ASSERT(f.s, hx_sl_hello(ws, fx_token(&f, "acme", "alice"), resume, T, NULL) == SL_ERR_AUTH);
    HX_ASSERT_MSG(f.s, strstr(hx_error(), "bad resume token") != NULL, "%s", hx_error());
    hx_ws_destroy(ws);
    free(resume);
    free(session);
    free(first);
    hx_sl_destroy(c);
    fx_stop(&f);
}
END_TEST

/* ---- a send's answer follows JetStream's acknowledgement ---- */

/* The next message the gateway published on SLUICE_IN's subjects, taken by
 * the test standing in for the stream: its client id must be id; its prev
 * (caller frees) in *prev. */
static natsMsg *next_in(fx *f, natsSubscription *sub, const char *id, char **prev)
{
    natsMsg *m = NULL;
    Sluice__Envelope *e = NULL;
    natsStatus st = natsSubscription_NextMsg(&m, sub, T);

    HX_ASSERT_MSG(f->s, st == NATS_OK, "no publish of %s: %s", id, natsStatus_GetText(st));
    HX_OK(f->s, sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e));
    HX_ASSERT_MSG(f->s, strcmp(e->client_id, id) == 0, "published %s, wanted %s", e->client_id, id);
    HX_ASSERT_MSG(f->s, natsMsg_GetReply(m) != NULL, "%s published without a reply subject", id);
    *prev = strdup(e->prev_event_id);
    sl_envelope_free(e);
    return m;
}

/* Answers m as JetStream would, with body. */
static void answer(fx *f, natsMsg *m, const char *body)
{
    HX_ASSERT(f->s, natsConnection_PublishString(f->nc, natsMsg_GetReply(m), body) == NATS_OK);
    HX_ASSERT(f->s, natsConnection_Flush(f->nc) == NATS_OK);
}

#define EXPECT_PREV(f, got, want)                                                                  \
    do {                                                                                           \
        HX_ASSERT_MSG((f)->s, strcmp((got), (want)) == 0, "published with prev \"%s\", not %s",    \
                      (got), (want));                                                              \
        free(got);                                                                                 \
    } while (0)

/* The test answers the gateway's publishes itself (SLUICE_IN no longer takes
 * the session's subjects): an acknowledgement in time is `accepted` and the
 * next default prev; none in SLUICE_PUBLISH_TIMEOUT_MS is `busy`, and one
 * that comes after that never becomes the default prev; an API error is
 * `busy`. Ids with '.' and ':' (which subjects treat specially) on the way. */
START_TEST(test_send_answers_follow_jetstream_acknowledgements)
{
    static const char *const gw_env[] = {"SLUICE_PUBLISH_TIMEOUT_MS=400", NULL};
    fx f;
    fx_opts o = {.gateways = 1, .gw_env = gw_env};
    hx_sl_client *a;
    hx_ws *ws;
    natsSubscription *sub = NULL;
    natsMsg *m2, *m3, *m4, *m5, *m6;
    char *prev;

    fx_start(&f, &o);
    a = fx_client(&f, 0, "acme", "alice");
    ws = hx_sl_ws(a);
    post(&f, a, "m.1", NULL, "one");
    in_subjects(&f, "sluice.nothing.>");
    HX_ASSERT(f.s, natsConnection_SubscribeSync(&sub, f.nc, "sluice.in.acme.>") == NATS_OK);
    HX_ASSERT(f.s, natsConnection_Flush(f.nc) == NATS_OK);

    HX_OK(f.s, hx_sl_send(a, "m.2:b", NULL, "two", NULL));
    m2 = next_in(&f, sub, "m.2:b", &prev);
    EXPECT_PREV(&f, prev, "m.1");
    answer(&f, m2, "{\"stream\":\"SLUICE_IN\",\"seq\":1000}");
    cJSON_Delete(want(&f, ws, "{\"type\":\"accepted\",\"id\":\"m.2:b\",\"duplicate\":false}"));

    /* No acknowledgement: busy once the publish timeout passed. */
    HX_OK(f.s, hx_sl_send(a, "m.3", NULL, "three", NULL));
    m3 = next_in(&f, sub, "m.3", &prev);
    EXPECT_PREV(&f, prev, "m.2:b");
    cJSON_Delete(want(&f, ws, "{\"type\":\"busy\",\"id\":\"m.3\",\"reason\":\"overloaded\"}"));

    /* m.3's late acknowledgement comes between m.4's and m.5's refusal,
     * which is answered after it. */
    HX_OK(f.s, hx_sl_send(a, "m.4", NULL, "four", NULL));
    m4 = next_in(&f, sub, "m.4", &prev);
    EXPECT_PREV(&f, prev, "m.2:b");
    HX_OK(f.s, hx_sl_send(a, "m.5", NULL, "five", NULL));
    m5 = next_in(&f, sub, "m.5", &prev);
    free(prev);
    answer(&f, m4, "{\"stream\":\"SLUICE_IN\",\"seq\":1001}");
    answer(&f, m3, "{\"stream\":\"SLUICE_IN\",\"seq\":1002}");
    answer(&f, m5,
           "{\"type\":\"io.nats.jetstream.api.v1.pub_ack_response\",\"error\":{\"code\":503,"
           "\"err_code\":10077,\"description\":\"maximum messages per subject exceeded\"}}");
    cJSON_Delete(want(&f, ws, "{\"type\":\"accepted\",\"id\":\"m.4\"}"));
    cJSON_Delete(want(&f, ws, "{\"type\":\"busy\",\"id\":\"m.5\",\"reason\":\"overloaded\"}"));

    /* Neither the late one nor the refused one became the default prev. */
    HX_OK(f.s, hx_sl_send(a, "m.6", NULL, "six", NULL));
    m6 = next_in(&f, sub, "m.6", &prev);
    EXPECT_PREV(&f, prev, "m.4");

    natsMsg_Destroy(m2);
    natsMsg_Destroy(m3);
    natsMsg_Destroy(m4);
    natsMsg_Destroy(m5);
    natsMsg_Destroy(m6);
    natsSubscription_Destroy(sub);
    hx_sl_destroy(a);
    fx_stop(&f);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gateway resume");
    TCase *tc = tcase_create("resume");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 150);
    tcase_add_test(tc, test_resume_without_positions_uses_acked_positions);
    tcase_add_test(tc, test_resume_on_second_gateway_after_sigkill);
    tcase_add_test(tc, test_resume_during_live_traffic_loses_nothing);
    tcase_add_test(tc, test_resume_past_retention_sends_gap);
    tcase_add_test(tc, test_resume_from_kv_restores_every_room);
    tcase_add_test(tc, test_fill_that_finds_nothing_sends_gap);
    tcase_add_test(tc, test_live_events_out_of_order_are_put_in_order);
    tcase_add_test(tc, test_default_prev_is_the_sessions_last_accepted);
    tcase_add_test(tc, test_long_connection_resumes_after_its_first_token_expired);
    tcase_add_test(tc, test_send_answers_follow_jetstream_acknowledgements);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
