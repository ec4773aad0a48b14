#include "fault_load.h"

#include <cJSON.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hx.h"

#define FX_MAX_THREADS     16
#define FX_ACK_TIMEOUT_MS  8000 /* an unanswered send is repeated (same id) after this */
#define FX_JOIN_TIMEOUT_MS 5000 /* an unanswered join is repeated after this */
#define FX_CONNECT_MS      3000 /* TCP connect + upgrade */
#define FX_HELLO_MS        5000 /* hello -> welcome */
#define FX_DRAIN_BATCH     256  /* frames read from one client before the next gets a turn */
#define FX_EVAL_MS         50   /* how often a thread re-evaluates what is still pending */
#define FX_THREAD_MAX_MS   (30LL * 60 * 1000) /* hard bound of a client thread's life */
#define FX_NOTES_MAX       40
#define FX_NOTES_PER_KIND  4

enum { F_MSG = 1, F_TOK = 2, F_FINAL = 4, F_BUSYEV = 8 };
enum { PH_INIT = 0, PH_CONNECT = 1, PH_SEND = 2 };
enum { CH_S = 0, CH_R = 1 };

typedef enum note_kind {
    N_LEAK,
    N_DUP,
    N_GAP,
    N_ERROR,
    N_HELLO,
    N_LOST,
    N_UNENDED,
    N_TEXT,
    N_GAVEUP,
    N_RESUME,
    N_KINDS
} note_kind;

typedef struct fx_msg {
    int sender;
    int tenant;
    int room; /* -1: private */
    char *text;
    atomic_int tried;
    atomic_int accepted;
    atomic_int final_attempt; /* highest attempt of a final reply seen by anyone */
    atomic_int degraded;
    atomic_int bad_text;
    atomic_int token_attempt; /* highest attempt of a token seen by anyone */
    atomic_int refused;       /* the sender saw an agent busy event: no reply will come */
    atomic_llong seq;         /* the seq of the message event, as first seen */
    char event[40];           /* from the accepted frame; written by the sender's thread */
} fx_msg;

typedef struct fx_client {
    int idx, tenant, room;
    char user[24];
    char room_ch[80]; /* "r:<room>", "" without a room */
    char *token;
    char src[20];
    int rcvbuf;
    /* connection */
    hx_ws *ws;
    bool up;
    int gw;      /* the gateway of the current connection */
    int gw_next; /* the gateway of the next attempt */
    char *session;
    char *resume_token;
    int64_t pos[2];
    bool joined, join_sent;
    int64_t join_sent_at;
    int64_t retry_at;
    int attempt;
    int64_t resumed_ms; /* when the last resume completed (load clock) */
    int64_t reconnect_due;
    atomic_int paused;
    /* sending: own messages first .. first + n - 1 */
    int first, n, next;
    bool started, inflight;
    int64_t inflight_at, send_at, first_try_at;
    /* receiving */
    uint8_t *flags; /* per message of the load */
    /* counters */
    unsigned long busy, dups, gaps, leaks, errors, resumes, refusals, cuts, drops, events, gave_up,
        hello_fail;
} fx_client;

typedef struct fx_thread {
    struct fx_load *l;
    int id;
    pthread_t th;
    bool started;
    int *cl;
    int n;
    uint64_t rng;
    atomic_long gen;
    atomic_int pending, sending, down, unjoined;
    atomic_int act_pending, act_sending, act_down, act_unjoined; /* paused clients left out */
} fx_thread;

struct fx_load {
    fx_load_cfg cfg;
    fx_client *c;
    int nc;
    fx_msg *m;
    int nm;
    int **room_msgs; /* per tenant * rooms + room: message indexes */
    int *room_nmsgs;
    int **room_members; /* per tenant * rooms + room: client indexes */
    int *room_nmembers;
    fx_thread t[FX_MAX_THREADS];
    int nt;
    atomic_int phase;
    atomic_int stop;
    atomic_int accepted;
    atomic_int connected;
    pthread_mutex_t mu;
    char notes[FX_DETAIL_MAX];
    size_t notes_len;
    int nnotes;
    int nkind[N_KINDS];
    unsigned long nkind_total[N_KINDS];
};

static const char *const fx_tenants[] = {"ta", "tb", "tc", "td"};

/* ---------- small helpers ---------- */

static uint64_t fx_rand(fx_thread *t)
{
    /* xorshift64*: cheap, per thread, good enough for jitter. */
    uint64_t x = t->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    t->rng = x;
    return x * 2685821657736338717ULL;
}

static int64_t fx_jitter(fx_thread *t, int64_t max)
{
    return max > 0 ? (int64_t)(fx_rand(t) % (uint64_t)(max + 1)) : 0;
}

static void fx_note(struct fx_load *l, note_kind k, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Keeps a few examples of each kind of problem for the report. */
static void fx_note(struct fx_load *l, note_kind k, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    pthread_mutex_lock(&l->mu);
    l->nkind_total[k]++;
    if (l->nkind[k] < FX_NOTES_PER_KIND && l->nnotes < FX_NOTES_MAX) {
        va_start(ap, fmt);
        vsnprintf(line, sizeof line, fmt, ap);
        va_end(ap);
        int w = snprintf(l->notes + l->notes_len, sizeof l->notes - l->notes_len, "  %s\n", line);
        if (w > 0 && (size_t)w < sizeof l->notes - l->notes_len) {
            l->notes_len += (size_t)w;
            l->nkind[k]++;
            l->nnotes++;
        }
    }
    pthread_mutex_unlock(&l->mu);
}

/* "m-<n>" -> n, or -1 when id is not one of this load's messages. */
static int fx_msg_index(const struct fx_load *l, const char *id)
{
    char *end = NULL;
    long v;

    if (id == NULL || strncmp(id, "m-", 2) != 0 || id[2] < '0' || id[2] > '9')
        return -1;
    v = strtol(id + 2, &end, 10);
    if (end == NULL || *end != '\0' || v < 0 || v >= l->nm)
        return -1;
    return (int)v;
}

static void fx_atomic_max(atomic_int *a, int v)
{
    int cur = atomic_load(a);
    while (v > cur && !atomic_compare_exchange_weak(a, &cur, v))
        ;
}

static const char *fx_room_name(int room, char *buf, size_t len)
{
    snprintf(buf, len, "room%d", room);
    return buf;
}

/* ---------- create ---------- */

static sl_status fx_plan(struct fx_load *l)
{
    const fx_load_cfg *cf = &l->cfg;
    int nslots = cf->tenants * cf->rooms;

    l->nc = cf->clients;
    l->c = calloc((size_t)l->nc, sizeof *l->c);
    l->nm = cf->senders * cf->msgs_per_sender;
    l->m = calloc((size_t)(l->nm > 0 ? l->nm : 1), sizeof *l->m);
    l->room_msgs = calloc((size_t)nslots, sizeof *l->room_msgs);
    l->room_nmsgs = calloc((size_t)nslots, sizeof *l->room_nmsgs);
    l->room_members = calloc((size_t)nslots, sizeof *l->room_members);
    l->room_nmembers = calloc((size_t)nslots, sizeof *l->room_nmembers);
    if (l->c == NULL || l->m == NULL || l->room_msgs == NULL || l->room_nmsgs == NULL ||
        l->room_members == NULL || l->room_nmembers == NULL)
        return SL_ERR_NOMEM;
    for (int i = 0; i < nslots; i++) {
        l->room_msgs[i] = calloc((size_t)(l->nm > 0 ? l->nm : 1), sizeof(int));
        l->room_members[i] = calloc((size_t)l->nc, sizeof(int));
        if (l->room_msgs[i] == NULL || l->room_members[i] == NULL)
            return SL_ERR_NOMEM;
    }
    int slow_left = cf->slow_clients;
    for (int i = 0; i < l->nc; i++) {
        fx_client *c = &l->c[i];
        char rn[32];
        c->idx = i;
        c->tenant = i % cf->tenants;
        c->room = (i / cf->tenants) % cf->rooms;
        snprintf(c->user, sizeof c->user, "u%d", i);
        snprintf(c->room_ch, sizeof c->room_ch, "r:%s", fx_room_name(c->room, rn, sizeof rn));
        c->gw = c->gw_next = i % cf->ngw;
        if (cf->src_addrs > 1)
            snprintf(c->src, sizeof c->src, "127.0.0.%d", 2 + i % cf->src_addrs);
        if (slow_left > 0 && c->tenant == 0 && c->room == 0) {
            c->rcvbuf = cf->slow_rcvbuf > 0 ? cf->slow_rcvbuf : 2048;
            slow_left--;
        }
        c->token = hx_token_secret(cf->secret, fx_tenants[c->tenant], c->user, 3600, NULL, -1);
        c->flags = calloc((size_t)(l->nm > 0 ? l->nm : 1), 1);
        if (c->token == NULL || c->flags == NULL)
            return SL_ERR_NOMEM;
        int slot = c->tenant * cf->rooms + c->room;
        l->room_members[slot][l->room_nmembers[slot]++] = i;
        if (i < cf->senders) {
            c->first = i * cf->msgs_per_sender;
            c->n = cf->msgs_per_sender;
        }
    }
    static const char *const words[] = {"alpha", "bravo",  "charlie", "delta",  "echo",
                                        "fox",   "golf",   "hotel",   "india",  "juliet",
                                        "kilo",  "lima",   "mike",    "nov",    "oscar",
                                        "papa",  "quebec", "romeo",   "sierra", "tango"};
    for (int i = 0; i < l->nm; i++) {
        fx_msg *m = &l->m[i];
        int sender = i / cf->msgs_per_sender, k = i % cf->msgs_per_sender;
        size_t wl = cf->word_len > 8 ? (size_t)cf->word_len : 8;
        size_t cap = 32 + (size_t)cf->words * (wl + 1), len;
        m->sender = sender;
        m->tenant = l->c[sender].tenant;
        m->room = cf->private_every > 0 && k % cf->private_every == cf->private_every - 1
                      ? -1
                      : l->c[sender].room;
        m->text = malloc(cap);
        if (m->text == NULL)
            return SL_ERR_NOMEM;
        len = (size_t)snprintf(m->text, cap, "m%d", i);
        for (int w = 1; w < cf->words && len + wl + 2 < cap; w++) {
            const char *word = words[(size_t)(i + w) % (sizeof words / sizeof words[0])];
            len += (size_t)snprintf(m->text + len, cap - len, " %s", word);
            /* Padding makes big frames with few tokens (slow-consumer). */
            for (size_t p = strlen(word); cf->word_len > 0 && p < (size_t)cf->word_len; p++)
                m->text[len++] = (char)('a' + p % 26);
            m->text[len] = '\0';
        }
        if (m->room >= 0) {
            int slot = m->tenant * cf->rooms + m->room;
            l->room_msgs[slot][l->room_nmsgs[slot]++] = i;
        }
    }
    return SL_OK;
}

sl_status fx_load_create(fx_load **out, const fx_load_cfg *cfg)
{
    struct fx_load *l = NULL;
    sl_status st;

    if (out == NULL || cfg == NULL || cfg->tenants < 1 || cfg->tenants > 4 || cfg->rooms < 1 ||
        cfg->clients < 1 || cfg->senders < 0 || cfg->senders > cfg->clients ||
        cfg->msgs_per_sender < 0 || cfg->words < 1 || cfg->threads < 1 ||
        cfg->threads > FX_MAX_THREADS || cfg->ngw < 1 || cfg->ngw > FX_MAX_GATEWAYS ||
        cfg->secret == NULL || cfg->src_addrs > 250) {
        hx_set_error("fx_load_create: bad configuration");
        return SL_ERR_INVAL;
    }
    l = calloc(1, sizeof *l);
    if (l == NULL)
        return SL_ERR_NOMEM;
    l->cfg = *cfg;
    if (l->cfg.backoff_base_ms <= 0)
        l->cfg.backoff_base_ms = 50;
    if (l->cfg.backoff_cap_ms <= 0)
        l->cfg.backoff_cap_ms = 2000;
    if (l->cfg.give_up_ms <= 0)
        l->cfg.give_up_ms = 45000;
    pthread_mutex_init(&l->mu, NULL);
    st = fx_plan(l);
    if (st != SL_OK) {
        hx_set_error("fx_load_create: out of memory");
        fx_load_destroy(l);
        return st;
    }
    l->nt = cfg->threads < cfg->clients ? cfg->threads : cfg->clients;
    for (int t = 0; t < l->nt; t++) {
        fx_thread *th = &l->t[t];
        th->l = l;
        th->id = t;
        th->rng = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)(t + 1) * 0xBF58476D1CE4E5B9ULL) ^
                  (uint64_t)hx_now_ms();
        th->cl = calloc((size_t)l->nc, sizeof(int));
        if (th->cl == NULL) {
            fx_load_destroy(l);
            return SL_ERR_NOMEM;
        }
    }
    for (int i = 0; i < l->nc; i++) {
        fx_thread *th = &l->t[i % l->nt];
        th->cl[th->n++] = i;
    }
    *out = l;
    return SL_OK;
}

/* ---------- one client ---------- */

static void fx_backoff(struct fx_load *l, fx_thread *t, fx_client *c, int64_t now,
                       int64_t at_least_ms)
{
    int64_t cap = (int64_t)l->cfg.backoff_base_ms << (c->attempt < 12 ? c->attempt : 12);
    if (cap > l->cfg.backoff_cap_ms)
        cap = l->cfg.backoff_cap_ms;
    int64_t d = fx_jitter(t, cap);
    if (d < at_least_ms)
        d = at_least_ms;
    c->retry_at = now + d;
    c->attempt++;
}

static void fx_drop(struct fx_load *l, fx_thread *t, fx_client *c, int64_t now)
{
    int code = hx_ws_close_code(c->ws);

    if (code == 4429)
        c->cuts++;
    c->drops++;
    hx_ws_destroy(c->ws);
    c->ws = NULL;
    c->up = false;
    atomic_fetch_sub(&l->connected, 1);
    c->inflight = false; /* repeated with the same id after the resume */
    c->join_sent = false;
    c->reconnect_due = 0;
    c->gw_next = c->gw + 1; /* resume on the next gateway */
    c->attempt = 0;
    fx_backoff(l, t, c, now, 0);
}

static char *fx_resume_json(const fx_client *c)
{
    cJSON *r = cJSON_CreateObject(), *p;
    char *s;

    cJSON_AddStringToObject(r, "session", c->session);
    cJSON_AddStringToObject(r, "resume_token", c->resume_token ? c->resume_token : "");
    p = cJSON_AddObjectToObject(r, "positions");
    cJSON_AddNumberToObject(p, "s", (double)c->pos[CH_S]);
    if (c->room >= 0 && c->joined)
        cJSON_AddNumberToObject(p, c->room_ch, (double)c->pos[CH_R]);
    s = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    return s;
}

static void fx_try_connect(struct fx_load *l, fx_thread *t, fx_client *c, int64_t now)
{
    int gw = c->gw_next % l->cfg.ngw;
    hx_ws_opts o;
    hx_ws_handshake hs;
    hx_ws *ws = NULL;
    cJSON *w = NULL;
    char *resume = NULL;
    int code;
    sl_status st;

    memset(&o, 0, sizeof o);
    o.port = l->cfg.gw_port[gw];
    o.path = HX_SL_PATH;
    o.subprotocol = HX_SL_SUBPROTOCOL;
    o.source_addr = c->src[0] ? c->src : NULL;
    o.rcvbuf = c->rcvbuf;
    o.timeout_ms = FX_CONNECT_MS;
    code = hx_ws_connect_opts(&ws, &o, &hs);
    if (code != 101) {
        if (code == 503)
            c->refusals++;
        c->gw_next = gw + 1;
        fx_backoff(l, t, c, now, code == 503 && hs.retry_after > 0 ? hs.retry_after * 1000 : 0);
        return;
    }
    resume = c->session != NULL ? fx_resume_json(c) : NULL;
    st = hx_sl_hello(ws, c->token, resume, FX_HELLO_MS, &w);
    cJSON_free(resume);
    if (st != SL_OK) {
        int cc = hx_ws_close_code(ws);
        if (cc == 1013) {
            c->refusals++;
        } else {
            c->hello_fail++;
            fx_note(l, N_HELLO, "client %d: hello on gateway %d failed (%s): %s", c->idx, gw,
                    sl_status_str(st), hx_error());
            c->gw_next = gw + 1;
        }
        hx_ws_destroy(ws);
        fx_backoff(l, t, c, hx_now_ms(), 0);
        return;
    }
    {
        const char *sess = hx_json_str(w, "session");
        const char *rt = hx_json_str(w, "resume_token");
        if (c->session != NULL) {
            if (hx_json_true(w, "resumed") && sess != NULL && strcmp(sess, c->session) == 0) {
                c->resumes++;
                c->resumed_ms = hx_now_ms();
            } else {
                fx_note(l, N_RESUME, "client %d: resume of session %s on gateway %d gave %s",
                        c->idx, c->session, gw, sess ? sess : "(none)");
                c->hello_fail++;
            }
        }
        if (sess != NULL && (c->session == NULL || strcmp(sess, c->session) != 0)) {
            free(c->session);
            c->session = strdup(sess);
        }
        if (rt != NULL) {
            free(c->resume_token);
            c->resume_token = strdup(rt);
        }
    }
    cJSON_Delete(w);
    c->ws = ws;
    c->up = true;
    c->gw = gw;
    c->attempt = 0;
    atomic_fetch_add(&l->connected, 1);
    if (c->inflight)
        c->inflight = false;
    c->send_at = c->send_at > now ? c->send_at : now;
}

static bool fx_belongs(const struct fx_load *l, const fx_client *c, const fx_msg *m, int ci,
                       bool busy)
{
    (void)l;
    if (m->tenant != c->tenant)
        return false;
    if (busy) /* agent busy events go to the sender's session channel */
        return ci == CH_S && m->sender == c->idx;
    if (m->room >= 0)
        return ci == CH_R && m->room == c->room;
    return ci == CH_S && m->sender == c->idx;
}

static void fx_on_event(struct fx_load *l, fx_client *c, const cJSON *f)
{
    const char *ch = hx_json_str(f, "ch");
    const char *kind = hx_json_str(f, "kind");
    int64_t seq = hx_json_int(f, "seq", -1);
    int ci, mi;
    const char *key;

    c->events++;
    if (ch != NULL && strcmp(ch, "s") == 0) {
        ci = CH_S;
    } else if (ch != NULL && c->room_ch[0] != '\0' && strcmp(ch, c->room_ch) == 0) {
        ci = CH_R;
    } else {
        char *s = cJSON_PrintUnformatted(f);
        c->leaks++;
        fx_note(l, N_LEAK,
                "client %d (tenant %s, %s, session %s) got an event on channel %s: %.200s", c->idx,
                fx_tenants[c->tenant], c->room_ch, c->session, ch ? ch : "(none)", s ? s : "?");
        cJSON_free(s);
        return;
    }
    if (seq <= c->pos[ci]) {
        c->dups++;
        fx_note(l, N_DUP,
                "client %d (session %s, gateway %d): %s event seq %lld at or below the last seq "
                "%lld of %s (id/to %s)",
                c->idx, c->session, c->gw, kind ? kind : "?", (long long)seq, (long long)c->pos[ci],
                ch, hx_json_str(f, "id") ? hx_json_str(f, "id") : hx_json_str(f, "to"));
        return;
    }
    c->pos[ci] = seq;
    if (kind == NULL)
        return;
    if (strcmp(kind, "message") == 0)
        key = hx_json_str(f, "id");
    else if (strcmp(kind, "token") == 0 || strcmp(kind, "reply") == 0 || strcmp(kind, "busy") == 0)
        key = hx_json_str(f, "to");
    else
        return; /* presence, receipt */
    mi = fx_msg_index(l, key);
    if (mi < 0 || !fx_belongs(l, c, &l->m[mi], ci, strcmp(kind, "busy") == 0)) {
        char *s = cJSON_PrintUnformatted(f);
        c->leaks++;
        fx_note(l, N_LEAK, "client %d (tenant %s, %s, session %s) got a foreign %s: %.200s", c->idx,
                fx_tenants[c->tenant], c->room_ch, c->session, kind, s ? s : "?");
        cJSON_free(s);
        return;
    }
    fx_msg *m = &l->m[mi];
    if (strcmp(kind, "message") == 0) {
        if (c->flags[mi] & F_MSG) {
            c->dups++;
            fx_note(l, N_DUP, "client %d (session %s): message %s again at %s seq %lld", c->idx,
                    c->session, key, ch, (long long)seq);
            return;
        }
        c->flags[mi] |= F_MSG;
        long long zero = 0;
        atomic_compare_exchange_strong(&m->seq, &zero, (long long)seq);
        const char *text = hx_json_str(f, "text");
        if (text == NULL || strcmp(text, m->text) != 0) {
            atomic_store(&m->bad_text, 1);
            fx_note(l, N_TEXT, "client %d: message %s has text '%.80s'", c->idx, key,
                    text ? text : "(none)");
        }
    } else if (strcmp(kind, "token") == 0) {
        c->flags[mi] |= F_TOK;
        fx_atomic_max(&m->token_attempt, (int)hx_json_int(f, "attempt", 1));
    } else if (strcmp(kind, "busy") == 0) {
        c->flags[mi] |= F_BUSYEV;
        atomic_store(&m->refused, 1);
    } else {
        int attempt = (int)hx_json_int(f, "attempt", 1);
        const char *text = hx_json_str(f, "text");
        if (c->flags[mi] & F_FINAL) {
            c->dups++;
            fx_note(l, N_DUP, "client %d (session %s): final reply to %s again at %s seq %lld",
                    c->idx, c->session, key, ch, (long long)seq);
            return;
        }
        c->flags[mi] |= F_FINAL;
        fx_atomic_max(&m->final_attempt, attempt);
        if (hx_json_true(f, "degraded") || hx_json_true(f, "partial") ||
            hx_json_true(f, "cancelled")) {
            atomic_store(&m->degraded, 1);
        } else if (text == NULL || strcmp(text, m->text) != 0) {
            atomic_store(&m->bad_text, 1);
            fx_note(l, N_TEXT, "client %d: final reply to %s (attempt %d) is '%.80s', not '%.80s'",
                    c->idx, key, attempt, text ? text : "(none)", m->text);
        }
    }
}

static void fx_on_frame(struct fx_load *l, fx_thread *t, fx_client *c, const cJSON *f, int64_t now)
{
    const char *type = hx_json_str(f, "type");
    const char *id = hx_json_str(f, "id");
    int cur = c->next < c->n ? c->first + c->next : -1;
    int mi = fx_msg_index(l, id);

    if (type == NULL)
        return;
    if (strcmp(type, "event") == 0) {
        fx_on_event(l, c, f);
    } else if (strcmp(type, "accepted") == 0) {
        if (mi >= 0 && l->m[mi].sender == c->idx) {
            if (atomic_exchange(&l->m[mi].accepted, 1) == 0) {
                const char *ev = hx_json_str(f, "event");
                snprintf(l->m[mi].event, sizeof l->m[mi].event, "%s", ev ? ev : "");
                atomic_fetch_add(&l->accepted, 1);
            }
        }
        if (mi >= 0 && mi == cur && c->inflight) {
            c->inflight = false;
            c->next++;
            c->first_try_at = 0;
            c->send_at = now + l->cfg.send_interval_ms / 2 + fx_jitter(t, l->cfg.send_interval_ms);
        }
    } else if (strcmp(type, "busy") == 0) {
        c->busy++;
        if (mi >= 0 && mi == cur && c->inflight) {
            int64_t ra = hx_json_int(f, "retry_after_ms", 500);
            c->inflight = false;
            c->send_at = now + (ra < 20 ? 20 : ra > 5000 ? 5000 : ra);
        }
    } else if (strcmp(type, "error") == 0) {
        char *s = cJSON_PrintUnformatted(f);
        const char *code = hx_json_str(f, "code");
        c->errors++;
        fx_note(l, N_ERROR, "client %d (session %s, gateway %d): %.200s", c->idx, c->session, c->gw,
                s ? s : "?");
        cJSON_free(s);
        if (code != NULL && strcmp(code, "not_joined") == 0)
            c->joined = false;
        if (mi >= 0 && mi == cur && c->inflight) {
            c->inflight = false;
            c->send_at = now + 200;
        }
    } else if (strcmp(type, "joined") == 0) {
        int64_t seq = hx_json_int(f, "seq", 0);
        const char *ch = hx_json_str(f, "ch");
        if (ch != NULL && strcmp(ch, c->room_ch) == 0) {
            if (seq > c->pos[CH_R])
                c->pos[CH_R] = seq;
            c->joined = true;
            c->join_sent = false;
        }
    } else if (strcmp(type, "gap") == 0) {
        char *s = cJSON_PrintUnformatted(f);
        c->gaps++;
        fx_note(l, N_GAP, "client %d (session %s): %.200s", c->idx, c->session, s ? s : "?");
        cJSON_free(s);
    } else if (strcmp(type, "reconnect") == 0) {
        c->reconnect_due = now + hx_json_int(f, "after_ms", 0);
    }
}

/* Reads what is there; drops the connection when it ended. */
static void fx_drain(struct fx_load *l, fx_thread *t, fx_client *c)
{
    for (int k = 0; k < FX_DRAIN_BATCH && c->up; k++) {
        cJSON *f = hx_ws_recv_json(c->ws, 0);
        if (f == NULL) {
            hx_ws_result r = hx_ws_last_result(c->ws);
            if (r == HX_WS_TIMEOUT)
                return;
            fx_drop(l, t, c, hx_now_ms());
            return;
        }
        fx_on_frame(l, t, c, f, hx_now_ms());
        cJSON_Delete(f);
    }
}

static void fx_send_one(struct fx_load *l, fx_thread *t, fx_client *c, int64_t now)
{
    int mi = c->first + c->next;
    const fx_msg *m = &l->m[mi];
    char id[24], prev[24], rn[32];
    cJSON *f;
    sl_status st;

    if (c->first_try_at == 0)
        c->first_try_at = now;
    if (now - c->first_try_at > l->cfg.give_up_ms) {
        c->gave_up++;
        fx_note(l, N_GAVEUP, "client %d gave up m-%d after %d ms", c->idx, mi, l->cfg.give_up_ms);
        c->next++;
        c->first_try_at = 0;
        return;
    }
    snprintf(id, sizeof id, "m-%d", mi);
    snprintf(prev, sizeof prev, "m-%d", mi - 1);
    f = cJSON_CreateObject();
    cJSON_AddStringToObject(f, "type", "send");
    cJSON_AddStringToObject(f, "id", id);
    if (m->room >= 0)
        cJSON_AddStringToObject(f, "room", fx_room_name(m->room, rn, sizeof rn));
    cJSON_AddStringToObject(f, "text", m->text);
    if (c->next > 0)
        cJSON_AddStringToObject(f, "prev", prev);
    st = hx_ws_send_json(c->ws, f);
    cJSON_Delete(f);
    if (st != SL_OK) {
        fx_drop(l, t, c, now);
        return;
    }
    atomic_store(&l->m[mi].tried, 1);
    c->inflight = true;
    c->inflight_at = now;
}

static void fx_step(struct fx_load *l, fx_thread *t, fx_client *c, int64_t now)
{
    int phase = atomic_load(&l->phase);

    if (c->reconnect_due != 0 && now >= c->reconnect_due) {
        fx_drop(l, t, c, now);
        return;
    }
    if (c->room >= 0 && !c->joined &&
        (!c->join_sent || now - c->join_sent_at > FX_JOIN_TIMEOUT_MS)) {
        char rn[32];
        if (hx_ws_sendf(c->ws, "{\"type\":\"join\",\"room\":\"%s\"}",
                        fx_room_name(c->room, rn, sizeof rn)) != SL_OK) {
            fx_drop(l, t, c, now);
            return;
        }
        c->join_sent = true;
        c->join_sent_at = now;
    }
    if (phase < PH_SEND || c->next >= c->n)
        return;
    if (!c->started) {
        c->started = true;
        c->send_at = now + fx_jitter(t, l->cfg.send_interval_ms);
    }
    if (c->inflight && now - c->inflight_at > FX_ACK_TIMEOUT_MS)
        c->inflight = false; /* no answer: repeat with the same id */
    if (c->inflight || now < c->send_at)
        return;
    if (l->m[c->first + c->next].room >= 0 && !c->joined)
        return;
    fx_send_one(l, t, c, now);
}

static bool fx_pending_one(const struct fx_load *l, const fx_client *c, int mi)
{
    uint8_t f = c->flags[mi];
    if (!atomic_load(&l->m[mi].accepted) && !(f & (F_MSG | F_TOK)))
        return false;
    /* A reply the agent refused (busy, to the sender) never comes. */
    return !((f & F_MSG) && ((f & F_FINAL) || atomic_load(&l->m[mi].refused)));
}

static int fx_client_pending(const struct fx_load *l, const fx_client *c)
{
    int p = 0;
    if (c->room >= 0) {
        int slot = c->tenant * l->cfg.rooms + c->room;
        for (int k = 0; k < l->room_nmsgs[slot]; k++)
            p += fx_pending_one(l, c, l->room_msgs[slot][k]);
    }
    for (int k = 0; k < c->n; k++) {
        if (l->m[c->first + k].room < 0)
            p += fx_pending_one(l, c, c->first + k);
    }
    return p;
}

static void fx_eval(struct fx_load *l, fx_thread *t)
{
    int v[4] = {0, 0, 0, 0}, a[4] = {0, 0, 0, 0};

    for (int k = 0; k < t->n; k++) {
        const fx_client *c = &l->c[t->cl[k]];
        int w[4] = {fx_client_pending(l, c), c->next < c->n, !c->up, c->room >= 0 && !c->joined};
        bool active = !atomic_load(&c->paused);
        for (int i = 0; i < 4; i++) {
            v[i] += w[i];
            a[i] += active ? w[i] : 0;
        }
    }
    atomic_store(&t->pending, v[0]);
    atomic_store(&t->sending, v[1]);
    atomic_store(&t->down, v[2]);
    atomic_store(&t->unjoined, v[3]);
    atomic_store(&t->act_pending, a[0]);
    atomic_store(&t->act_sending, a[1]);
    atomic_store(&t->act_down, a[2]);
    atomic_store(&t->act_unjoined, a[3]);
    atomic_fetch_add(&t->gen, 1);
}

static void *fx_thread_main(void *arg)
{
    fx_thread *t = arg;
    struct fx_load *l = t->l;
    struct pollfd *pfd = calloc((size_t)t->n, sizeof *pfd);
    int *who = calloc((size_t)t->n, sizeof *who);
    int64_t t0 = hx_now_ms(), next_eval = 0;

    if (pfd == NULL || who == NULL)
        goto cleanup;
    for (int k = 0; k < t->n; k++)
        l->c[t->cl[k]].retry_at = t0 + fx_jitter(t, 20);
    while (!atomic_load(&l->stop) && hx_now_ms() - t0 < FX_THREAD_MAX_MS) {
        int64_t now = hx_now_ms();
        int np = 0;
        for (int k = 0; k < t->n; k++) {
            fx_client *c = &l->c[t->cl[k]];
            if (atomic_load(&c->paused))
                continue;
            if (!c->up) {
                if (now < c->retry_at)
                    continue;
                fx_try_connect(l, t, c, now);
                now = hx_now_ms();
                if (!c->up)
                    continue;
            }
            if (hx_ws_has_buffered(c->ws))
                fx_drain(l, t, c);
            if (c->up)
                fx_step(l, t, c, now);
            if (!c->up)
                continue;
            pfd[np].fd = hx_ws_fd(c->ws);
            pfd[np].events = POLLIN;
            pfd[np].revents = 0;
            who[np++] = t->cl[k];
        }
        if (poll(pfd, (nfds_t)np, 5) > 0) {
            for (int k = 0; k < np; k++) {
                fx_client *c = &l->c[who[k]];
                if (pfd[k].revents != 0 && c->up)
                    fx_drain(l, t, c);
            }
        }
        now = hx_now_ms();
        if (now >= next_eval) {
            fx_eval(l, t);
            next_eval = now + FX_EVAL_MS;
        }
    }
    fx_eval(l, t);
cleanup:
    free(pfd);
    free(who);
    return NULL;
}

/* ---------- the scenario's side ---------- */

static void fx_totals(const struct fx_load *l, int *pending, int *sending, int *down, int *unjoined)
{
    *pending = *sending = *down = *unjoined = 0;
    for (int t = 0; t < l->nt; t++) {
        *pending += atomic_load(&l->t[t].pending);
        *sending += atomic_load(&l->t[t].sending);
        *down += atomic_load(&l->t[t].down);
        *unjoined += atomic_load(&l->t[t].unjoined);
    }
}

/* fx_totals over the clients that are not paused. */
static void fx_totals_active(const struct fx_load *l, int *pending, int *sending, int *down,
                             int *unjoined)
{
    *pending = *sending = *down = *unjoined = 0;
    for (int t = 0; t < l->nt; t++) {
        *pending += atomic_load(&l->t[t].act_pending);
        *sending += atomic_load(&l->t[t].act_sending);
        *down += atomic_load(&l->t[t].act_down);
        *unjoined += atomic_load(&l->t[t].act_unjoined);
    }
}

/* Waits until every thread has started a new evaluation twice (so one
 * evaluation ran wholly after the call). */
static bool fx_wait_fresh(struct fx_load *l, int64_t deadline)
{
    long g0[FX_MAX_THREADS];
    for (int t = 0; t < l->nt; t++)
        g0[t] = atomic_load(&l->t[t].gen);
    while (hx_now_ms() < deadline) {
        bool all = true;
        for (int t = 0; t < l->nt && all; t++)
            all = atomic_load(&l->t[t].gen) >= g0[t] + 2;
        if (all)
            return true;
        hx_sleep_ms(5);
    }
    return false;
}

sl_status fx_load_connect(fx_load *l, int timeout_ms)
{
    int64_t deadline = hx_now_ms() + timeout_ms;
    int pending, sending, down = -1, unjoined = -1;

    atomic_store(&l->phase, PH_CONNECT);
    for (int t = 0; t < l->nt; t++) {
        if (pthread_create(&l->t[t].th, NULL, fx_thread_main, &l->t[t]) != 0) {
            hx_set_error("pthread_create failed");
            return SL_ERR_INTERNAL;
        }
        l->t[t].started = true;
    }
    while (hx_now_ms() < deadline) {
        if (!fx_wait_fresh(l, deadline))
            break;
        fx_totals(l, &pending, &sending, &down, &unjoined);
        if (down == 0 && unjoined == 0)
            return SL_OK;
        hx_sleep_ms(20);
    }
    hx_set_error("after %d ms, %d of %d clients are not connected and %d have not joined",
                 timeout_ms, down, l->nc, unjoined);
    return SL_ERR_TIMEOUT;
}

void fx_load_start_sending(fx_load *l)
{
    atomic_store(&l->phase, PH_SEND);
}

int fx_load_accepted(const fx_load *l)
{
    return atomic_load(&l->accepted);
}

int fx_load_planned(const fx_load *l)
{
    return l->nm;
}

unsigned long fx_load_cuts_of(const fx_load *l, int i)
{
    return l != NULL && i >= 0 && i < l->nc ? l->c[i].cuts : 0;
}

int fx_load_connected(const fx_load *l)
{
    return atomic_load(&l->connected);
}

bool fx_load_wait_accepted(fx_load *l, int count, int timeout_ms)
{
    int64_t deadline = hx_now_ms() + timeout_ms;
    while (atomic_load(&l->accepted) < count) {
        if (hx_now_ms() >= deadline)
            return false;
        hx_sleep_ms(5);
    }
    return true;
}

static bool fx_wait_settled(fx_load *l, int timeout_ms, bool active_only)
{
    int64_t deadline = hx_now_ms() + timeout_ms;
    int clean = 0;

    for (int i = 0; i < 1000000 && hx_now_ms() < deadline; i++) {
        int pending, sending, down, unjoined;
        if (!fx_wait_fresh(l, deadline))
            return false;
        if (active_only)
            fx_totals_active(l, &pending, &sending, &down, &unjoined);
        else
            fx_totals(l, &pending, &sending, &down, &unjoined);
        clean = (pending == 0 && sending == 0 && down == 0 && unjoined == 0) ? clean + 1 : 0;
        if (clean >= 2)
            return true;
        hx_sleep_ms(20);
    }
    return false;
}

bool fx_load_wait_settled(fx_load *l, int timeout_ms)
{
    return fx_wait_settled(l, timeout_ms, false);
}

bool fx_load_wait_settled_active(fx_load *l, int timeout_ms)
{
    return fx_wait_settled(l, timeout_ms, true);
}

void fx_load_pause(fx_load *l, int i, bool paused)
{
    if (l == NULL || i < 0 || i >= l->nc)
        return;
    if (!paused) {
        /* It reads normally again: its next connections get the usual
         * buffers (the thread does not touch rcvbuf while it is paused). */
        l->c[i].rcvbuf = 0;
    }
    atomic_store(&l->c[i].paused, paused ? 1 : 0);
}

void fx_load_stop(fx_load *l)
{
    if (l == NULL)
        return;
    atomic_store(&l->stop, 1);
    for (int t = 0; t < l->nt; t++) {
        if (l->t[t].started) {
            pthread_join(l->t[t].th, NULL);
            l->t[t].started = false;
        }
    }
}

void fx_load_count(fx_load *l, fx_result *r)
{
    const fx_load_cfg *cf = &l->cfg;

    r->sent = r->accepted = r->busy = r->delivered = r->lost = r->duplicated = r->unended = 0;
    r->clients = (unsigned long)l->nc;
    for (int i = 0; i < l->nc; i++) {
        const fx_client *c = &l->c[i];
        r->busy += c->busy;
        r->duplicated += c->dups;
        r->gaps += c->gaps;
        r->leaked += c->leaks;
        r->errors += c->errors + c->hello_fail;
        r->resumes += c->resumes;
        r->drops += c->drops;
        r->cuts += c->cuts;
        r->refusals += c->refusals;
        r->events += c->events;
        r->gave_up += c->gave_up;
    }
    for (int mi = 0; mi < l->nm; mi++) {
        const fx_msg *m = &l->m[mi];
        const int *rcpt;
        int nr, self = m->sender;
        bool got_all = true, unended = false;
        char rn[32];

        if (!atomic_load(&m->tried))
            continue;
        r->sent++;
        if (m->room >= 0) {
            int slot = m->tenant * cf->rooms + m->room;
            rcpt = l->room_members[slot];
            nr = l->room_nmembers[slot];
        } else {
            rcpt = &self;
            nr = 1;
        }
        for (int k = 0; k < nr; k++) {
            const fx_client *c = &l->c[rcpt[k]];
            uint8_t f = c->flags[mi];
            if (!(f & F_MSG)) {
                got_all = false;
                if (atomic_load(&m->accepted))
                    fx_note(l, N_LOST,
                            "lost: m-%d (event %s, seq %lld, tenant %s, %s, from client %d) never "
                            "reached client %d (session %s, gateway %d, %s, %lu resumes, last "
                            "%lld ms before the end; s at %lld, room at %lld)",
                            mi, m->event, (long long)atomic_load(&m->seq), fx_tenants[m->tenant],
                            m->room >= 0 ? fx_room_name(m->room, rn, sizeof rn) : "private",
                            m->sender, c->idx, c->session ? c->session : "-", c->gw,
                            c->up ? "connected" : "down", c->resumes,
                            c->resumed_ms > 0 ? (long long)(hx_now_ms() - c->resumed_ms) : -1LL,
                            (long long)c->pos[CH_S], (long long)c->pos[CH_R]);
            }
            if ((f & (F_MSG | F_TOK)) && !(f & F_FINAL) && !atomic_load(&m->refused)) {
                unended = true;
                fx_note(l, N_UNENDED,
                        "unended: reply to m-%d (event %s, seq %lld, %s) never ended at client "
                        "%d (session %s, gateway %d; tokens %s, highest token attempt %d)",
                        mi, m->event, (long long)atomic_load(&m->seq),
                        m->room >= 0 ? fx_room_name(m->room, rn, sizeof rn) : "private", c->idx,
                        c->session ? c->session : "-", c->gw, (f & F_TOK) ? "seen" : "not seen",
                        atomic_load(&m->token_attempt));
            }
        }
        if (atomic_load(&m->accepted)) {
            r->accepted++;
            if (got_all)
                r->delivered++;
            else
                r->lost++;
        }
        r->unended += unended;
        r->retried += atomic_load(&m->final_attempt) >= 2;
        r->degraded += atomic_load(&m->degraded) != 0;
        r->bad_text += atomic_load(&m->bad_text) != 0;
        r->refused += atomic_load(&m->refused) != 0;
    }
    pthread_mutex_lock(&l->mu);
    {
        size_t n = strlen(r->detail);
        static const char *const kinds[N_KINDS] = {"leaked",  "duplicate", "gap",     "error",
                                                   "hello",   "lost",      "unended", "text",
                                                   "gave up", "resume"};
        for (int k = 0; k < N_KINDS; k++) {
            if (l->nkind_total[k] > (unsigned long)l->nkind[k] && n < sizeof r->detail) {
                int w = snprintf(r->detail + n, sizeof r->detail - n, "  (%lu %s notes in all)\n",
                                 l->nkind_total[k], kinds[k]);
                if (w > 0)
                    n += (size_t)w < sizeof r->detail - n ? (size_t)w : sizeof r->detail - n - 1;
            }
        }
        if (n < sizeof r->detail)
            snprintf(r->detail + n, sizeof r->detail - n, "%s", l->notes);
    }
    pthread_mutex_unlock(&l->mu);
}

void fx_load_destroy(fx_load *l)
{
    if (l == NULL)
        return;
    fx_load_stop(l);
    for (int i = 0; l->c != NULL && i < l->nc; i++) {
        fx_client *c = &l->c[i];
        hx_ws_destroy(c->ws);
        free(c->token);
        free(c->session);
        free(c->resume_token);
        free(c->flags);
    }
    free(l->c);
    for (int i = 0; l->m != NULL && i < l->nm; i++)
        free(l->m[i].text);
    free(l->m);
    for (int i = 0; i < l->cfg.tenants * l->cfg.rooms; i++) {
        if (l->room_msgs != NULL)
            free(l->room_msgs[i]);
        if (l->room_members != NULL)
            free(l->room_members[i]);
    }
    free(l->room_msgs);
    free(l->room_nmsgs);
    free(l->room_members);
    free(l->room_nmembers);
    for (int t = 0; t < FX_MAX_THREADS; t++)
        free(l->t[t].cl);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
