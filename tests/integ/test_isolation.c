/* Tenant isolation (issue 6): a client of tenant "ta" tries every trick it
 * can think of while tenant "tb" is busy in rooms of the same names, and
 * never receives a byte of tenant tb's events.
 *
 * Tenant tb's activity runs in a thread for the whole test: two clients in
 * rooms "lobby" and "general" send room and private messages (texts carry
 * the marker SECRET-B) every 80 ms and read everything, so replies stream
 * too. Every connection the attacker opens has an observer that checks each
 * JSON frame it reads (the welcome included) for the marker, tb's session
 * ids, resume tokens and user names; frames read at the raw level are
 * checked the same way. Each test ends by reading the attacker's
 * connections dry and asserting: no leak, tb's clients saw their own
 * messages (tb really was active), and tb never saw the attacker's marker
 * MARK-A or a cancelled reply.
 *
 * The tricks: room names with wildcards, separators and subject syntax;
 * huge and unicode names and ids; another tenant's session and resume
 * token; tampered, unsigned (alg:none), wrongly signed, expired and
 * malformed tokens, and validly signed tokens whose tenant is not a valid
 * id; a second hello; spoofed fields in frames; acks, cancels and history
 * requests aimed at tb. One stack serves all tests (started in the parent
 * before Check forks). */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hx.h"

#define B_MARK   "SECRET-B"
#define A_MARK   "MARK-A"
#define B_USER0  "bob-of-tb"
#define B_USER1  "bella-of-tb"
#define MAX_OPEN 64

static hx_stack *g_stack;

/* ---------- tenant tb's activity ---------- */

typedef struct b_side {
    hx_sl_client *c[2];
    char session[2][64];
    char resume[2][1024];
    pthread_t th;
    atomic_int stop;
    atomic_int sent;
    atomic_int seen_own;      /* own message events seen back */
    atomic_int finals;        /* final replies seen */
    atomic_int saw_a_mark;    /* frames with the attacker's marker */
    atomic_int saw_cancelled; /* replies ended as cancelled */
} b_side;

static b_side g_b;

static void *b_main(void *arg)
{
    b_side *b = arg;
    int n = 0;
    int64_t next = 0;

    for (int iter = 0; iter < 1000000 && !atomic_load(&b->stop); iter++) {
        int64_t now = hx_now_ms();
        if (now >= next) {
            int k = n % 2;
            char id[32], text[96];
            snprintf(id, sizeof id, "b-%d", n);
            snprintf(text, sizeof text, "%s %d the plans of tenant b", B_MARK, n);
            /* Room messages in both rooms, and one in three private. */
            if (hx_sl_send(b->c[k], id, n % 3 == 2 ? NULL : (k == 0 ? "lobby" : "general"), text,
                           NULL) == SL_OK)
                atomic_fetch_add(&b->sent, 1);
            n++;
            next = now + 80;
        }
        for (int k = 0; k < 2; k++) {
            for (int f = 0; f < 64; f++) {
                cJSON *fr = hx_ws_recv_json(hx_sl_ws(b->c[k]), k == 0 ? 10 : 0);
                char *s;
                if (fr == NULL)
                    break;
                s = cJSON_PrintUnformatted(fr);
                if (s != NULL && strstr(s, A_MARK) != NULL)
                    atomic_fetch_add(&b->saw_a_mark, 1);
                if (hx_json_true(fr, "cancelled"))
                    atomic_fetch_add(&b->saw_cancelled, 1);
                if (strcmp(hx_json_str(fr, "type") ? hx_json_str(fr, "type") : "", "event") == 0) {
                    const char *kind = hx_json_str(fr, "kind");
                    const char *text = hx_json_str(fr, "text");
                    if (kind != NULL && strcmp(kind, "message") == 0 && text != NULL &&
                        strstr(text, B_MARK) != NULL)
                        atomic_fetch_add(&b->seen_own, 1);
                    if (kind != NULL && strcmp(kind, "reply") == 0)
                        atomic_fetch_add(&b->finals, 1);
                }
                cJSON_free(s);
                cJSON_Delete(fr);
            }
        }
    }
    return NULL;
}

static void b_start(void)
{
    const char *users[2] = {B_USER0, B_USER1};
    const char *rooms[2] = {"lobby", "general"};

    memset(&g_b, 0, sizeof g_b);
    for (int k = 0; k < 2; k++) {
        char *tok = hx_token(g_stack, "tb", users[k], 600);
        cJSON *j;
        HX_ASSERT(g_stack, tok != NULL);
        HX_OK(g_stack, hx_sl_connect(&g_b.c[k], hx_stack_gw_port(g_stack, 0), tok, 10000));
        free(tok);
        j = hx_sl_join(g_b.c[k], rooms[k], 10000);
        HX_ASSERT_MSG(g_stack, j != NULL, "tb could not join %s: %s", rooms[k], hx_error());
        cJSON_Delete(j);
        snprintf(g_b.session[k], sizeof g_b.session[k], "%s", hx_sl_session(g_b.c[k]));
        snprintf(g_b.resume[k], sizeof g_b.resume[k], "%s", hx_sl_resume_token(g_b.c[k]));
    }
    HX_ASSERT(g_stack, pthread_create(&g_b.th, NULL, b_main, &g_b) == 0);
}

/* Stops tb's thread and checks that tb was active and untouched. */
static void b_stop_and_check(void)
{
    atomic_store(&g_b.stop, 1);
    pthread_join(g_b.th, NULL);
    for (int k = 0; k < 2; k++)
        hx_sl_destroy(g_b.c[k]);
    HX_ASSERT_MSG(g_stack, atomic_load(&g_b.sent) >= 10 && atomic_load(&g_b.seen_own) >= 5,
                  "tenant tb was not active: sent %d, saw %d of its own messages",
                  atomic_load(&g_b.sent), atomic_load(&g_b.seen_own));
    HX_ASSERT_MSG(g_stack, atomic_load(&g_b.saw_a_mark) == 0,
                  "tenant tb received %d frames with the attacker's marker",
                  atomic_load(&g_b.saw_a_mark));
    HX_ASSERT_MSG(g_stack, atomic_load(&g_b.saw_cancelled) == 0,
                  "the attacker cancelled %d of tenant tb's replies",
                  atomic_load(&g_b.saw_cancelled));
}

/* ---------- the attacker's side ---------- */

static atomic_int g_leaks;
static char g_first_leak[512];
static hx_ws *g_open[MAX_OPEN];
static int g_nopen;

/* True when text carries anything of tenant tb. */
static bool leaks_b(const char *text)
{
    if (text == NULL)
        return false;
    if (strstr(text, B_MARK) != NULL || strstr(text, B_USER0) != NULL ||
        strstr(text, B_USER1) != NULL)
        return true;
    for (int k = 0; k < 2; k++) {
        if ((g_b.session[k][0] != '\0' && strstr(text, g_b.session[k]) != NULL) ||
            (g_b.resume[k][0] != '\0' && strstr(text, g_b.resume[k]) != NULL))
            return true;
    }
    return false;
}

static void note_leak(const char *text)
{
    if (atomic_fetch_add(&g_leaks, 1) == 0)
        snprintf(g_first_leak, sizeof g_first_leak, "%.500s", text);
}

static void leak_observer(hx_ws *ws, const cJSON *frame, void *ud)
{
    char *s = cJSON_PrintUnformatted(frame);
    (void)ws;
    (void)ud;
    if (leaks_b(s))
        note_leak(s);
    cJSON_free(s);
}

/* Opens a raw connection of the attacker (kept until the test's end, so
 * whatever it receives is checked). NULL when the upgrade fails. */
static hx_ws *a_open(void)
{
    hx_ws *ws = NULL;
    int code =
        hx_ws_connect(&ws, NULL, hx_stack_gw_port(g_stack, 0), HX_SL_PATH, HX_SL_SUBPROTOCOL, 5000);
    HX_ASSERT_MSG(g_stack, code == 101, "upgrade failed (%d): %s", code, hx_error());
    hx_ws_set_observer(ws, leak_observer, NULL);
    if (g_nopen < MAX_OPEN)
        g_open[g_nopen++] = ws;
    return ws;
}

/* Says hello on a new connection; returns 0 when welcomed (the welcome in
 * *welcome_out when not NULL), else the close code of the refusal (-1 when
 * the gateway did not close). */
static int a_hello(const char *token, const char *resume_json, cJSON **welcome_out)
{
    hx_ws *ws = a_open();
    cJSON *w = NULL;
    sl_status st = hx_sl_hello(ws, token, resume_json, 5000, &w);
    if (st == SL_OK) {
        if (welcome_out != NULL)
            *welcome_out = w;
        else
            cJSON_Delete(w);
        return 0;
    }
    HX_ASSERT_MSG(g_stack, st == SL_ERR_AUTH, "hello: %s (%s)", sl_status_str(st), hx_error());
    return hx_ws_close_code(ws);
}

/* Sends hello with a raw frame text (for malformed hellos); returns the
 * close code, or 0 when a welcome came. */
static int a_hello_raw(const char *frame)
{
    hx_ws *ws = a_open();
    cJSON *f;
    HX_OK(g_stack, hx_ws_send_text(ws, frame));
    f = hx_ws_expect(ws, "{}", 5000);
    while (f != NULL) {
        const char *t = hx_json_str(f, "type");
        bool welcome = t != NULL && strcmp(t, "welcome") == 0;
        cJSON_Delete(f);
        if (welcome)
            return 0;
        f = hx_ws_recv_json(ws, 2000);
    }
    return hx_ws_close_code(ws);
}

/* A welcomed attacker connection with tenant ta's own valid token. */
static hx_ws *a_session(const char *sub, cJSON **welcome_out)
{
    char *tok = hx_token(g_stack, "ta", sub, 600);
    cJSON *w = NULL;
    hx_ws *ws;
    HX_ASSERT(g_stack, tok != NULL);
    ws = a_open();
    HX_OK(g_stack, hx_sl_hello(ws, tok, NULL, 5000, &w));
    free(tok);
    if (welcome_out != NULL)
        *welcome_out = w;
    else
        cJSON_Delete(w);
    return ws;
}

static bool match_answer(const cJSON *f, void *ud)
{
    const char *t = hx_json_str(f, "type");
    (void)ud;
    return t != NULL &&
           (strcmp(t, "error") == 0 || strcmp(t, "joined") == 0 || strcmp(t, "accepted") == 0 ||
            strcmp(t, "history") == 0 || strcmp(t, "busy") == 0 || strcmp(t, "left") == 0);
}

/* Sends a frame and returns the type of the answer ("error", "joined",
 * ...), or "none" when nothing answered within 3 s; the code of an error in
 * code_out (may be NULL). */
static const char *a_ask(hx_ws *ws, const char *frame, char *code_out, size_t code_len)
{
    static char type[32];
    cJSON *f;
    HX_OK(g_stack, hx_ws_send_text(ws, frame));
    f = hx_ws_expect_fn(ws, match_answer, NULL, 3000);
    if (f == NULL)
        return "none";
    snprintf(type, sizeof type, "%s", hx_json_str(f, "type"));
    if (code_out != NULL)
        snprintf(code_out, code_len, "%s", hx_json_str(f, "code") ? hx_json_str(f, "code") : "");
    cJSON_Delete(f);
    return type;
}

/* Reads every attacker connection dry for a moment (each frame passes the
 * observer), closes them, then asserts that nothing leaked. */
static void a_finish(void)
{
    int64_t until = hx_now_ms() + 1500;
    while (hx_now_ms() < until) {
        for (int i = 0; i < g_nopen; i++) {
            for (int k = 0; k < 256; k++) {
                char *raw = NULL;
                cJSON *f = hx_ws_recv_json(g_open[i], 0);
                if (f != NULL) {
                    cJSON_Delete(f);
                    continue;
                }
                if (hx_ws_last_result(g_open[i]) != HX_WS_ERROR)
                    break;
                /* Not JSON: check the raw text too. */
                if (hx_ws_recv(g_open[i], 0, &raw) == HX_WS_TEXT && leaks_b(raw))
                    note_leak(raw);
                free(raw);
                break;
            }
        }
        hx_sleep_ms(20);
    }
    for (int i = 0; i < g_nopen; i++)
        hx_ws_destroy(g_open[i]);
    g_nopen = 0;
    HX_ASSERT_MSG(g_stack, atomic_load(&g_leaks) == 0,
                  "tenant ta received %d frames with tenant tb's data; first: %s",
                  atomic_load(&g_leaks), g_first_leak);
}

static void setup_test(void)
{
    atomic_store(&g_leaks, 0);
    g_first_leak[0] = '\0';
    g_nopen = 0;
    b_start();
}

static void teardown_test(void)
{
    a_finish();
    b_stop_and_check();
}

/* ---------- tokens made by hand ---------- */

static char *b64url(const unsigned char *in, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    int n;
    if (out == NULL)
        abort();
    n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (int i = 0; i < n; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    return out;
}

/* header.payload.signature with HMAC-SHA256 under secret (NULL: the
 * signature part is sig_text as given). Caller frees. */
static char *jwt(const char *header, const char *payload, const char *secret, const char *sig_text)
{
    char *h = b64url((const unsigned char *)header, strlen(header));
    char *p = b64url((const unsigned char *)payload, strlen(payload));
    char *signing = hx_strf("%s.%s", h, p), *sig, *tok;
    if (secret != NULL) {
        unsigned char mac[32];
        unsigned int maclen = 0;
        HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)signing,
             strlen(signing), mac, &maclen);
        sig = b64url(mac, maclen);
    } else {
        sig = hx_strf("%s", sig_text ? sig_text : "");
    }
    tok = hx_strf("%s.%s", signing, sig);
    free(h);
    free(p);
    free(signing);
    free(sig);
    return tok;
}

static long long exp_in(int s)
{
    return (long long)time(NULL) + s;
}

#define HS256 "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"

/* ---------- the tests ---------- */

START_TEST(test_same_room_names_are_separate)
{
    hx_ws *a = a_session("alice", NULL);
    char code[64];
    cJSON *f;

    /* The legitimate path first: ta's own "lobby" and "general". */
    HX_ASSERT(g_stack,
              strcmp(a_ask(a, "{\"type\":\"join\",\"room\":\"lobby\"}", code, 64), "joined") == 0);
    HX_ASSERT(g_stack, strcmp(a_ask(a, "{\"type\":\"join\",\"room\":\"general\"}", code, 64),
                              "joined") == 0);
    HX_ASSERT(g_stack, strcmp(a_ask(a,
                                    "{\"type\":\"send\",\"id\":\"a-1\",\"room\":\"lobby\","
                                    "\"text\":\"" A_MARK " hello lobby\"}",
                                    code, 64),
                              "accepted") == 0);
    f = hx_ws_expect(a, "{\"type\":\"event\",\"kind\":\"message\",\"id\":\"a-1\"}", 10000);
    HX_ASSERT_MSG(g_stack, f != NULL, "ta does not see its own room message: %s", hx_error());
    cJSON_Delete(f);
    /* The reply too: the channel works, so tb's events would show here. */
    f = hx_ws_expect(a, "{\"type\":\"event\",\"kind\":\"reply\",\"to\":\"a-1\"}", 10000);
    HX_ASSERT_MSG(g_stack, f != NULL, "no reply on ta's lobby: %s", hx_error());
    cJSON_Delete(f);
    /* History of ta's lobby: only ta's events. */
    HX_ASSERT(g_stack,
              strcmp(a_ask(a, "{\"type\":\"history\",\"ch\":\"r:lobby\",\"limit\":200}", code, 64),
                     "history") == 0);
    HX_ASSERT(g_stack,
              strcmp(a_ask(a, "{\"type\":\"history\",\"ch\":\"s\",\"limit\":200}", code, 64),
                     "history") == 0);
    /* Stay a while in the rooms while tb is busy in its own. */
    hx_sleep_ms(1500);
}
END_TEST

START_TEST(test_room_names_with_wildcards_and_separators)
{
    static const char *const rooms[] = {
        "*", ">", "lobby.*", "lobby.>", "tb.r.lobby", "lobby.", ".lobby", "lo bby", "lobby\\t", "",
        "r:lobby", "../lobby", "lobby/..", "%2A", "lobby*", "*lobby", "lob>by",
        "sluice.live.tb.r.lobby", "sluice.out.tb.r.lobby", "tb.lobby", "lobby\\u0000", "lobby\\n",
        "\\u2217", "lobby\\u002e*",
        /* unicode look-alikes and invisible characters */
        "lobb\\u0443", "\\uff4c\\uff4f\\uff42\\uff42\\uff59", "lobby\\u200d", "lobby\\u0301",
        "l\\u00f6bby",
        /* 65 characters */
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"};
    hx_ws *a = a_session("mallory", NULL);
    char frame[512], code[64];

    for (size_t i = 0; i < sizeof rooms / sizeof rooms[0]; i++) {
        const char *t;
        snprintf(frame, sizeof frame, "{\"type\":\"join\",\"room\":\"%s\"}", rooms[i]);
        t = a_ask(a, frame, code, sizeof code);
        HX_ASSERT_MSG(g_stack, strcmp(t, "error") == 0, "join of room \"%s\" gave %s", rooms[i], t);
        snprintf(frame, sizeof frame,
                 "{\"type\":\"send\",\"id\":\"w-%zu\",\"room\":\"%s\",\"text\":\"" A_MARK "\"}", i,
                 rooms[i]);
        t = a_ask(a, frame, code, sizeof code);
        HX_ASSERT_MSG(g_stack, strcmp(t, "error") == 0, "send to room \"%s\" gave %s", rooms[i], t);
        snprintf(frame, sizeof frame, "{\"type\":\"history\",\"ch\":\"r:%s\",\"limit\":50}",
                 rooms[i]);
        t = a_ask(a, frame, code, sizeof code);
        HX_ASSERT_MSG(g_stack, strcmp(t, "error") == 0, "history of r:%s gave %s", rooms[i], t);
        snprintf(frame, sizeof frame, "{\"type\":\"ack\",\"ch\":\"r:%s\",\"seq\":1}", rooms[i]);
        t = a_ask(a, frame, code, sizeof code);
        HX_ASSERT_MSG(g_stack, strcmp(t, "error") == 0, "ack of r:%s gave %s", rooms[i], t);
    }
    /* A huge room name (60 KB) is refused as well, without harm. */
    {
        size_t n = 60000;
        char *big = malloc(n + 64);
        HX_ASSERT(g_stack, big != NULL);
        int w = snprintf(big, 64, "{\"type\":\"join\",\"room\":\"");
        memset(big + w, 'r', n);
        snprintf(big + w + n, 16, "\"}");
        HX_ASSERT(g_stack, strcmp(a_ask(a, big, code, sizeof code), "error") == 0);
        free(big);
    }
    /* Channels of other shapes in history and ack. */
    {
        static const char *const chans[] = {"s.*",
                                            "s:"
                                            "x",
                                            "r:",
                                            "r:*",
                                            "r:>",
                                            "tb",
                                            "*",
                                            ">",
                                            "s ",
                                            "S",
                                            "r:lobby.>"};
        for (size_t i = 0; i < sizeof chans / sizeof chans[0]; i++) {
            snprintf(frame, sizeof frame, "{\"type\":\"history\",\"ch\":\"%s\",\"limit\":50}",
                     chans[i]);
            HX_ASSERT_MSG(g_stack, strcmp(a_ask(a, frame, code, sizeof code), "error") == 0,
                          "history of %s was not refused", chans[i]);
        }
    }
    /* The connection still works afterwards. */
    HX_ASSERT(g_stack,
              strcmp(a_ask(a, "{\"type\":\"join\",\"room\":\"lobby\"}", code, 64), "joined") == 0);
}
END_TEST

START_TEST(test_rooms_claim_is_enforced)
{
    const char *rooms[] = {"lob*"};
    char *tok = hx_token_rooms(g_stack, "ta", "carol", 600, rooms, 1);
    hx_ws *a = a_open();
    char code[64];
    HX_OK(g_stack, hx_sl_hello(a, tok, NULL, 5000, NULL));
    free(tok);
    HX_ASSERT(g_stack,
              strcmp(a_ask(a, "{\"type\":\"join\",\"room\":\"lobby\"}", code, 64), "joined") == 0);
    HX_ASSERT(g_stack,
              strcmp(a_ask(a, "{\"type\":\"join\",\"room\":\"general\"}", code, 64), "error") == 0);
    HX_ASSERT_MSG(g_stack, strcmp(code, "forbidden") == 0, "code %s", code);
    HX_ASSERT(g_stack,
              strcmp(a_ask(a, "{\"type\":\"history\",\"ch\":\"r:general\",\"limit\":9}", code, 64),
                     "error") == 0);
}
END_TEST

START_TEST(test_another_tenants_resume_token)
{
    char *tok = hx_token(g_stack, "ta", "mallory", 600);
    cJSON *w = NULL;
    hx_ws *own = a_session("mallory", &w);
    char own_session[64], own_rt[1024], resume[4096];
    (void)own;

    snprintf(own_session, sizeof own_session, "%s", hx_json_str(w, "session"));
    snprintf(own_rt, sizeof own_rt, "%s", hx_json_str(w, "resume_token"));
    cJSON_Delete(w);
    struct {
        const char *session, *rt;
    } tries[] = {
        {g_b.session[0], g_b.resume[0]}, /* tb's session with tb's own token */
        {g_b.session[1], g_b.resume[1]},
        {g_b.session[0], own_rt},     /* tb's session with ta's token */
        {own_session, g_b.resume[0]}, /* ta's session with tb's token */
        {g_b.session[0], ""},
        {g_b.session[0], "x"},
    };
    for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        int code;
        snprintf(resume, sizeof resume,
                 "{\"session\":\"%s\",\"resume_token\":\"%s\",\"positions\":{\"s\":0,"
                 "\"r:lobby\":0,\"r:general\":0}}",
                 tries[i].session, tries[i].rt);
        code = a_hello(tok, resume, NULL);
        HX_ASSERT_MSG(g_stack, code == 4401 || code == 4400,
                      "resume try %zu (session %s) was not refused: close code %d", i,
                      tries[i].session, code);
    }
    /* A resume token with its parts swapped or cut is refused too. */
    {
        char cut[1024];
        size_t n = strlen(g_b.resume[0]);
        snprintf(cut, sizeof cut, "%.*s", (int)(n > 10 ? n - 10 : 0), g_b.resume[0]);
        snprintf(resume, sizeof resume, "{\"session\":\"%s\",\"resume_token\":\"%s\"}",
                 g_b.session[0], cut);
        HX_ASSERT(g_stack, a_hello(tok, resume, NULL) == 4401);
    }
    /* ta's own resume with positions naming odd channels: welcomed, and
     * nothing of tb arrives (checked at the end). */
    snprintf(resume, sizeof resume,
             "{\"session\":\"%s\",\"resume_token\":\"%s\",\"positions\":{\"s\":0,"
             "\"r:lobby\":0,\"r:general\":0}}",
             own_session, own_rt);
    HX_ASSERT(g_stack, a_hello(tok, resume, NULL) == 0);
    {
        int code;
        snprintf(resume, sizeof resume,
                 "{\"session\":\"%s\",\"resume_token\":\"%s\",\"positions\":{\"r:*\":0,"
                 "\"r:lobby.>\":0,\"r:../tb\":0,\"s\":0}}",
                 own_session, own_rt);
        code = a_hello(tok, resume, NULL);
        HX_ASSERT_MSG(g_stack, code == 0 || code == 4400 || code == 4401,
                      "odd positions: close code %d", code);
    }
    hx_sleep_ms(1000);
    free(tok);
}
END_TEST

START_TEST(test_tampered_and_unsigned_tokens)
{
    const char *secret = hx_stack_secret(g_stack);
    char payload[512], *tok;
    char *good = hx_token(g_stack, "ta", "mallory", 600);
    int code;

    /* Claims changed after signing: the payload says tb, the signature is ta's. */
    {
        char *dot1 = strchr(good, '.'), *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
        char *tb_payload;
        HX_ASSERT(g_stack, dot2 != NULL);
        snprintf(payload, sizeof payload, "{\"sub\":\"mallory\",\"tenant\":\"tb\",\"exp\":%lld}",
                 exp_in(600));
        tb_payload = b64url((const unsigned char *)payload, strlen(payload));
        tok = hx_strf("%.*s.%s%s", (int)(dot1 - good), good, tb_payload, dot2);
        HX_ASSERT_MSG(g_stack, a_hello(tok, NULL, NULL) == 4401, "tampered tenant accepted");
        free(tok);
        free(tb_payload);
    }
    /* alg:none, with and without a signature part. */
    snprintf(payload, sizeof payload, "{\"sub\":\"mallory\",\"tenant\":\"tb\",\"exp\":%lld}",
             exp_in(600));
    {
        static const char *const headers[] = {"{\"alg\":\"none\",\"typ\":\"JWT\"}",
                                              "{\"alg\":\"None\"}",
                                              "{\"alg\":\"NONE\"}",
                                              "{\"alg\":\"\"}",
                                              "{\"typ\":\"JWT\"}",
                                              "{\"alg\":null}"};
        for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
            tok = jwt(headers[i], payload, NULL, "");
            code = a_hello(tok, NULL, NULL);
            HX_ASSERT_MSG(g_stack, code == 4401, "unsigned token (%s) gave close code %d",
                          headers[i], code);
            free(tok);
            tok = jwt(headers[i], payload, secret, NULL);
            code = a_hello(tok, NULL, NULL);
            HX_ASSERT_MSG(g_stack, code == 4401, "token with header %s gave close code %d",
                          headers[i], code);
            free(tok);
        }
    }
    /* Other algorithms with an HMAC signature (key confusion). */
    {
        static const char *const headers[] = {"{\"alg\":\"RS256\"}", "{\"alg\":\"HS512\"}",
                                              "{\"alg\":\"HS384\"}", "{\"alg\":\"ES256\"}"};
        for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
            tok = jwt(headers[i], payload, secret, NULL);
            HX_ASSERT_MSG(g_stack, a_hello(tok, NULL, NULL) == 4401, "header %s accepted",
                          headers[i]);
            free(tok);
        }
    }
    /* A wrong secret, a flipped signature character, signature of another token. */
    tok = jwt(HS256, payload, "not-the-secret", NULL);
    HX_ASSERT(g_stack, a_hello(tok, NULL, NULL) == 4401);
    free(tok);
    tok = hx_strf("%s", good);
    tok[strlen(tok) - 2] = tok[strlen(tok) - 2] == 'A' ? 'B' : 'A';
    HX_ASSERT(g_stack, a_hello(tok, NULL, NULL) == 4401);
    free(tok);
    /* Expired tokens of both tenants, a token not valid yet. */
    tok = hx_token(g_stack, "tb", "mallory", -30);
    HX_ASSERT(g_stack, a_hello(tok, NULL, NULL) == 4401);
    free(tok);
    tok = hx_token(g_stack, "ta", "mallory", -1);
    HX_ASSERT(g_stack, a_hello(tok, NULL, NULL) == 4401);
    free(tok);
    snprintf(payload, sizeof payload,
             "{\"sub\":\"mallory\",\"tenant\":\"ta\",\"exp\":%lld,\"nbf\":%lld}", exp_in(600),
             exp_in(300));
    tok = jwt(HS256, payload, secret, NULL);
    HX_ASSERT(g_stack, a_hello(tok, NULL, NULL) == 4401);
    free(tok);
    /* Structurally broken tokens. */
    {
        static const char *const broken[] = {
            "", ".", "..", "a.b.c", "a.b", "a.b.c.d", "===.==.=", "eyJhbGciOiJIUzI1NiJ9..", " "};
        for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
            code = a_hello(broken[i], NULL, NULL);
            HX_ASSERT_MSG(g_stack, code == 4401 || code == 4400,
                          "broken token \"%s\" gave close code %d", broken[i], code);
        }
    }
    free(good);
}
END_TEST

START_TEST(test_signed_tokens_with_invalid_tenants)
{
    /* Even a correctly signed token cannot name a tenant that is not a
     * valid id: that would put subject syntax into subjects. */
    static const char *const tenants[] = {
        "\"*\"",
        "\">\"",
        "\"tb.>\"",
        "\"ta.*\"",
        "\"tb.r\"",
        "\"t b\"",
        "\"\"",
        "\"t\\u0430\"",
        "\"tb\\u0000\"",
        "[\"tb\"]",
        "5",
        "null",
        "{\"id\":\"tb\"}",
        "true",
        "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\""};
    const char *secret = hx_stack_secret(g_stack);
    char payload[1024];

    for (size_t i = 0; i < sizeof tenants / sizeof tenants[0]; i++) {
        char *tok;
        int code;
        snprintf(payload, sizeof payload, "{\"sub\":\"mallory\",\"tenant\":%s,\"exp\":%lld}",
                 tenants[i], exp_in(600));
        tok = jwt(HS256, payload, secret, NULL);
        code = a_hello(tok, NULL, NULL);
        HX_ASSERT_MSG(g_stack, code == 4401, "signed token with tenant %s gave close code %d",
                      tenants[i], code);
        free(tok);
    }
    /* No tenant, and a huge sub. */
    snprintf(payload, sizeof payload, "{\"sub\":\"mallory\",\"exp\":%lld}", exp_in(600));
    {
        char *tok = jwt(HS256, payload, secret, NULL);
        HX_ASSERT(g_stack, a_hello(tok, NULL, NULL) == 4401);
        free(tok);
    }
    {
        size_t n = 40000;
        char *big = malloc(n + 128);
        char *tok;
        int w;
        HX_ASSERT(g_stack, big != NULL);
        w = snprintf(big, 64, "{\"sub\":\"");
        memset(big + w, 'm', n);
        snprintf(big + w + n, 64, "\",\"tenant\":\"ta\",\"exp\":%lld}", exp_in(600));
        tok = jwt(HS256, big, secret, NULL);
        HX_ASSERT(g_stack, a_hello(tok, NULL, NULL) != 0);
        free(tok);
        free(big);
    }
    /* Duplicate tenant keys: whatever the gateway picks, nothing of tb may
     * arrive (checked at the end); the session must not be tb's. */
    snprintf(payload, sizeof payload,
             "{\"sub\":\"mallory\",\"tenant\":\"ta\",\"tenant\":\"tb\",\"exp\":%lld}", exp_in(600));
    {
        char *tok = jwt(HS256, payload, secret, NULL);
        cJSON *w = NULL;
        if (a_hello(tok, NULL, &w) == 0) {
            hx_ws *a = g_open[g_nopen - 1];
            char code[64];
            cJSON_Delete(w);
            /* If this were tenant tb it would now see tb's lobby. */
            HX_ASSERT(g_stack,
                      strcmp(a_ask(a, "{\"type\":\"join\",\"room\":\"lobby\"}", code, sizeof code),
                             "joined") == 0);
            hx_sleep_ms(1000);
        }
        free(tok);
    }
}
END_TEST

START_TEST(test_malformed_hellos)
{
    static const char *const frames[] = {
        "{\"type\":\"hello\"}",
        "{\"type\":\"hello\",\"token\":5}",
        "{\"type\":\"hello\",\"token\":null}",
        "{\"type\":\"hello\",\"token\":[\"x\"]}",
        "{\"type\":\"hello\",\"token\":{\"tenant\":\"tb\"}}",
        "{\"type\":\"hello\",\"tenant\":\"tb\",\"sub\":\"bob\"}",
        "{\"type\":\"join\",\"room\":\"lobby\"}",
        "{\"type\":\"hello\",\"token\":\"x\",\"resume\":{\"session\":\"*\",\"resume_token\":\"*\"}"
        "}",
        "[]",
        "null",
    };
    for (size_t i = 0; i < sizeof frames / sizeof frames[0]; i++) {
        int code = a_hello_raw(frames[i]);
        HX_ASSERT_MSG(g_stack, code == 4400 || code == 4401, "hello %s gave close code %d",
                      frames[i], code);
    }
}
END_TEST

START_TEST(test_spoofed_fields_acks_cancels)
{
    hx_ws *a = a_session("mallory", NULL);
    char frame[1024], code[64];
    cJSON *f;

    /* A second hello, with tenant tb's valid token, changes nothing. */
    {
        char *btok = hx_token(g_stack, "tb", "mallory", 600);
        snprintf(frame, sizeof frame, "{\"type\":\"hello\",\"token\":\"%s\"}", btok);
        HX_ASSERT(g_stack, strcmp(a_ask(a, frame, code, sizeof code), "error") == 0);
        free(btok);
    }
    HX_ASSERT(g_stack,
              strcmp(a_ask(a, "{\"type\":\"join\",\"room\":\"lobby\"}", code, 64), "joined") == 0);
    /* Spoofed tenant, session, user and from fields are ignored: the
     * message lands in ta's lobby as mallory's. */
    snprintf(frame, sizeof frame,
             "{\"type\":\"send\",\"id\":\"s-1\",\"room\":\"lobby\",\"text\":\"" A_MARK
             " spoof\",\"tenant\":\"tb\",\"session\":\"%s\",\"user\":\"" B_USER0
             "\",\"from\":{\"user\":\"" B_USER0 "\"}}",
             g_b.session[0]);
    /* The frame itself names tb's session and user; the observer only sees
     * what comes back. */
    HX_ASSERT(g_stack, strcmp(a_ask(a, frame, code, sizeof code), "accepted") == 0);
    f = hx_ws_expect(a, "{\"type\":\"event\",\"kind\":\"message\",\"id\":\"s-1\"}", 10000);
    HX_ASSERT_MSG(g_stack, f != NULL, "own spoofed message not seen: %s", hx_error());
    {
        const char *from = hx_json_str(cJSON_GetObjectItem(f, "from"), "user");
        HX_ASSERT_MSG(g_stack, from != NULL && strcmp(from, "mallory") == 0, "from %s",
                      from ? from : "(none)");
    }
    cJSON_Delete(f);
    /* Acks for channels not joined, cancels of tb's message ids (tb's
     * replies must not end cancelled), history of tb's names. */
    HX_ASSERT(g_stack,
              strcmp(a_ask(a, "{\"type\":\"ack\",\"ch\":\"r:general\",\"seq\":999999}", code, 64),
                     "error") == 0);
    for (int i = 0; i < 40; i++) {
        snprintf(frame, sizeof frame, "{\"type\":\"cancel\",\"id\":\"b-%d\"}", i);
        HX_OK(g_stack, hx_ws_send_text(a, frame));
        hx_sleep_ms(20);
    }
    HX_ASSERT(g_stack, strcmp(a_ask(a, "{\"type\":\"history\",\"ch\":\"r:general\",\"limit\":200}",
                                    code, 64),
                              "history") == 0);
    /* Huge and unicode ids. */
    {
        static const char *const ids[] = {
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "b-1\\u0000",
            "b-\\u0661",
            "\\uff42-1",
            "b 1",
            "b-1*",
            "b.>",
            ""};
        for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
            snprintf(frame, sizeof frame,
                     "{\"type\":\"send\",\"id\":\"%s\",\"room\":\"lobby\",\"text\":\"" A_MARK "\"}",
                     ids[i]);
            HX_ASSERT_MSG(g_stack, strcmp(a_ask(a, frame, code, sizeof code), "error") == 0,
                          "send id \"%s\" was not refused", ids[i]);
            snprintf(frame, sizeof frame, "{\"type\":\"cancel\",\"id\":\"%s\"}", ids[i]);
            HX_OK(g_stack, hx_ws_send_text(a, frame));
        }
    }
    /* Let tb's replies finish while the cancels would have acted. */
    hx_sleep_ms(1500);
}
END_TEST

static void start_stack(void)
{
    /* mallory's attacks are many refused frames on one connection, and
     * refused frames take rate-limit tokens: a bucket that does not run
     * dry here (test_gateway_limits checks the limit). */
    static const char *const gw_env[] = {"SLUICE_RATE=1000", "SLUICE_BURST=1000", NULL};
    hx_stack_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.tier_env[HX_GATEWAY] = gw_env;
    cfg.gateways = 1;
    cfg.orchestrators = 1;
    cfg.workers = 1;
    cfg.echo_token_delay_ms = 5;
    HX_OK(NULL, hx_stack_start(&g_stack, &cfg));
}

/* Returns true when every process exited cleanly (no sanitizer report). */
static bool stop_stack(void)
{
    bool clean = false;
    if (g_stack == NULL)
        return false;
    if (hx_stack_stop_all_gracefully(g_stack, &clean) != SL_OK || !clean)
        fprintf(stderr, "test_isolation: a process did not exit cleanly: %s\n", hx_error());
    hx_stack_destroy(g_stack);
    g_stack = NULL;
    return clean;
}

int main(void)
{
    Suite *su = suite_create("isolation");
    TCase *tc = tcase_create("tenant A against tenant B");
    SRunner *sr;
    int failed;

    start_stack();
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup_test, teardown_test);
    tcase_add_test(tc, test_same_room_names_are_separate);
    tcase_add_test(tc, test_room_names_with_wildcards_and_separators);
    tcase_add_test(tc, test_rooms_claim_is_enforced);
    tcase_add_test(tc, test_another_tenants_resume_token);
    tcase_add_test(tc, test_tampered_and_unsigned_tokens);
    tcase_add_test(tc, test_signed_tokens_with_invalid_tenants);
    tcase_add_test(tc, test_malformed_hellos);
    tcase_add_test(tc, test_spoofed_fields_acks_cancels);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (!stop_stack())
        failed++;
    return failed == 0 ? 0 : 1;
}
