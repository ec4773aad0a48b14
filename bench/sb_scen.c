/* Bench scenarios: see sb_scen.h. */
#include "sb_scen.h"
#include "sb_proto.h"

#include <math.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>

#include "sb_util.h"
#include "sb_ws.h"

volatile sig_atomic_t sb_stop = 0;

#define NS        1000000000ull
#define MAX_BURST 2000 /* sends per loop turn when catching up */

typedef struct grp_stats {
    uint64_t sent;
    uint64_t accepted;
    uint64_t busy;
    uint64_t tokens;
    uint64_t replies;
    uint64_t overwritten; /* ring slot reused before its reply came */
    sb_hist *acc;
    sb_hist *ttft;
    sb_hist *reply;
} grp_stats;

typedef struct scen {
    const sb_opts *o;
    sb_engine *e;
    sb_hist *h_conn; /* connect (or resume) latency */
    sb_hist *h_lat;  /* publish-to-receive latency */
    sb_hist *h_pub_acc;
    grp_stats g[2];
    int phase_connect; /* record connect latency on ready */
    int storm;         /* storm phase: closed members are resumed */
    int measuring;
    uint16_t step;
    uint64_t t_win0;
    uint64_t t_win1;
    uint64_t deliveries;
    uint64_t deliveries_win;
    uint64_t t_last_win; /* when the last delivery of a window message arrived */
    uint64_t dups;
    uint64_t gaps;
    uint64_t pub_sent;
    uint64_t pub_sent_win;
    uint64_t pub_accepted;
    uint64_t pub_busy;
    uint32_t rr[2];
    /* storm */
    uint64_t t_drop;
    uint32_t resumed;
    uint32_t resumed_fresh; /* welcome without resumed:true */
    uint64_t storm_refused;
    uint64_t storm_failed;
    uint64_t connect_refused;
    uint32_t retries_waiting;
} scen;

/* ------------------------------------------------------------- helpers */

void sb_hist_json(cJSON *obj, const char *name, const sb_hist *h)
{
    cJSON *o = cJSON_AddObjectToObject(obj, name);

    if (o == NULL)
        return;
    cJSON_AddNumberToObject(o, "count", (double)sb_hist_count(h));
    cJSON_AddNumberToObject(o, "min_us", (double)sb_hist_min(h) / 1e3);
    cJSON_AddNumberToObject(o, "mean_us", sb_hist_mean(h) / 1e3);
    cJSON_AddNumberToObject(o, "p50_us", (double)sb_hist_percentile(h, 50.0) / 1e3);
    cJSON_AddNumberToObject(o, "p90_us", (double)sb_hist_percentile(h, 90.0) / 1e3);
    cJSON_AddNumberToObject(o, "p99_us", (double)sb_hist_percentile(h, 99.0) / 1e3);
    cJSON_AddNumberToObject(o, "p999_us", (double)sb_hist_percentile(h, 99.9) / 1e3);
    cJSON_AddNumberToObject(o, "max_us", (double)sb_hist_max(h) / 1e3);
}

typedef struct srv_sample {
    uint64_t rss_kib;
    double cpu_s;
    int ok;
} srv_sample;

static srv_sample sample_list(const pid_t *pids, int n)
{
    srv_sample s = {0, 0.0, n > 0};
    int i;

    for (i = 0; i < n; i++) {
        uint64_t rss = 0;
        double cpu = 0;
        if (sb_proc_sample(pids[i], &rss, &cpu) != SL_OK) {
            s.ok = 0;
            continue;
        }
        s.rss_kib += rss;
        s.cpu_s += cpu;
    }
    return s;
}

static srv_sample sample_pids(const sb_opts *o)
{
    return sample_list(o->pids, o->npids);
}

static srv_sample sample_aux(const sb_opts *o)
{
    return sample_list(o->aux_pids, o->naux);
}

static void add_sample(cJSON *obj, const char *name, srv_sample s)
{
    cJSON *o = cJSON_AddObjectToObject(obj, name);

    if (o == NULL)
        return;
    cJSON_AddBoolToObject(o, "ok", s.ok);
    cJSON_AddNumberToObject(o, "rss_kib", (double)s.rss_kib);
    cJSON_AddNumberToObject(o, "cpu_s", s.cpu_s);
}

static void add_engine(cJSON *obj, const sb_engine *e)
{
    cJSON *o = cJSON_AddObjectToObject(obj, "client");

    if (o == NULL)
        return;
    cJSON_AddNumberToObject(o, "connect_ok", (double)e->connect_ok);
    cJSON_AddNumberToObject(o, "connect_err", (double)e->connect_err);
    cJSON_AddNumberToObject(o, "refused", (double)e->refused);
    cJSON_AddNumberToObject(o, "closed_remote", (double)e->closed_remote);
    cJSON_AddNumberToObject(o, "proto_err", (double)e->proto_err);
    cJSON_AddNumberToObject(o, "error_frames", (double)e->errors_app);
    cJSON_AddNumberToObject(o, "reconnect_frames", (double)e->reconnect_frames);
    cJSON_AddNumberToObject(o, "frames_in", (double)e->frames_in);
    cJSON_AddNumberToObject(o, "frames_out", (double)e->frames_out);
    cJSON_AddNumberToObject(o, "bytes_in", (double)e->bytes_in);
    cJSON_AddNumberToObject(o, "pings_in", (double)e->pings_in);
    cJSON_AddNumberToObject(o, "ready_at_end", (double)e->ready);
    {
        struct rusage ru;
        if (getrusage(RUSAGE_SELF, &ru) == 0)
            cJSON_AddNumberToObject(o, "cpu_s",
                                    (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                                        (double)ru.ru_stime.tv_sec +
                                        (double)ru.ru_stime.tv_usec / 1e6);
    }
    if (e->last_errno)
        cJSON_AddStringToObject(o, "last_error", strerror(e->last_errno));
    cJSON_AddNumberToObject(o, "eof_while_ready", (double)e->eof_ready);
    {
        cJSON *cc = cJSON_AddObjectToObject(o, "close_codes");
        int i;
        for (i = 0; cc != NULL && i < SB_MAX_CODES && e->close_code[i] != 0; i++) {
            char k[8];
            snprintf(k, sizeof(k), "%u", e->close_code[i]);
            cJSON_AddNumberToObject(cc, k, (double)e->close_count[i]);
        }
    }
}

static size_t make_text(char *buf, size_t size, const char *prefix, uint64_t now, uint32_t idx,
                        uint64_t n)
{
    int k = snprintf(buf, size + 1, "%ssbt=%llu c=%u n=%llu ", prefix ? prefix : "",
                     (unsigned long long)now, idx, (unsigned long long)n);
    size_t len = (size_t)k;

    if (len > size)
        len = size;
    for (; len < size; len++)
        buf[len] = (char)('a' + (len % 26));
    buf[len] = '\0';
    return len;
}

static uint64_t backoff_ns(sb_engine *e, uint32_t attempt)
{
    /* Full jitter, base 100 ms, cap 5 s: bounded for a bench run. */
    uint64_t cap = 100000000ull << (attempt > 6 ? 6 : attempt);

    if (cap > 5 * NS)
        cap = 5 * NS;
    return sb_rand(&e->seed) % cap;
}

/* --------------------------------------------------------------- hooks */

static void hook_ready(sb_engine *e, sb_conn *c)
{
    scen *s = e->hooks.ctx;
    uint64_t now = c->t_ready;

    if (s->phase_connect)
        sb_hist_record(s->h_conn, now - c->t_start);
    if (s->storm && c->role == SB_ROLE_SUB && c->resuming) {
        c->resuming = 0;
        s->resumed++;
        sb_hist_record(s->h_conn, now - s->t_drop);
    }
}

static sb_sent *ring_slot(sb_conn *c, int64_t n)
{
    sb_sent *r;

    if (c->ring == NULL || n < 0)
        return NULL;
    r = &c->ring[(uint64_t)n % SB_RING];
    return r->n == n ? r : NULL;
}

static void hook_msg(sb_engine *e, sb_conn *c, const sb_msg *m)
{
    scen *s = e->hooks.ctx;
    uint64_t now;
    sb_sent *r;
    grp_stats *g;

    switch (m->type) {
    case SB_M_EVENT:
    case SB_M_DATA:
        if (c->role == SB_ROLE_SUB) {
            if (m->kind != SB_K_MESSAGE || m->stamp == 0)
                return;
            if (m->dup) {
                s->dups++;
                return;
            }
            c->msgs_room++;
            s->deliveries++;
            if (m->stamp >= s->t_win0 && m->stamp < s->t_win1) {
                now = sb_now_ns();
                s->deliveries_win++;
                s->t_last_win = now;
                sb_hist_record(s->h_lat, now > m->stamp ? now - m->stamp : 0);
            }
            return;
        }
        if (c->role != SB_ROLE_CHAT || (m->kind != SB_K_TOKEN && m->kind != SB_K_REPLY))
            return;
        if (m->dup) {
            s->dups++;
            return;
        }
        r = ring_slot(c, m->id_n);
        if (r == NULL || r->got_reply || r->got_accept == 2)
            return;
        g = &s->g[r->group & 1];
        now = sb_now_ns();
        if (m->kind == SB_K_TOKEN) {
            if (!r->got_token) {
                r->got_token = 1;
                g->tokens++;
                sb_hist_record(g->ttft, now - r->t_send);
            }
            return;
        }
        if (!r->got_token) {
            r->got_token = 1;
            g->tokens++;
            sb_hist_record(g->ttft, now - r->t_send);
        }
        r->got_reply = 1;
        g->replies++;
        sb_hist_record(g->reply, now - r->t_send);
        return;
    case SB_M_ACCEPTED:
        if (c->role == SB_ROLE_PUB) {
            r = ring_slot(c, m->id_n);
            s->pub_accepted++;
            if (r && !r->got_accept) {
                r->got_accept = 1;
                sb_hist_record(s->h_pub_acc, sb_now_ns() - r->t_send);
            }
            return;
        }
        r = ring_slot(c, m->id_n);
        if (r == NULL || r->got_accept)
            return;
        r->got_accept = 1;
        g = &s->g[r->group & 1];
        g->accepted++;
        sb_hist_record(g->acc, sb_now_ns() - r->t_send);
        return;
    case SB_M_BUSY:
        if (c->role == SB_ROLE_PUB) {
            s->pub_busy++;
            return;
        }
        r = ring_slot(c, m->id_n);
        if (r == NULL || r->got_accept)
            return;
        r->got_accept = 2;
        s->g[r->group & 1].busy++;
        return;
    case SB_M_GAP:
        s->gaps++;
        return;
    case SB_M_WELCOME:
        if (s->storm && c->role == SB_ROLE_SUB && c->resuming && !m->resumed)
            s->resumed_fresh++;
        return;
    default:
        return;
    }
}

static void hook_closed(sb_engine *e, sb_conn *c, int refused)
{
    scen *s = e->hooks.ctx;

    if (s->phase_connect && refused && c->t_ready == 0) {
        /* Refused while connecting (1013 / 503): retry with backoff, as a
         * real client does; counted, not an error. */
        s->connect_refused++;
        c->resuming = 0;
        c->retry_at = sb_now_ns() + backoff_ns(e, c->attempts);
        c->retry_pending = 1;
        return;
    }
    if (!s->storm || c->role != SB_ROLE_SUB)
        return;
    if (refused)
        s->storm_refused++;
    else
        s->storm_failed++;
    c->resuming = 1;
    c->retry_at = sb_now_ns() + backoff_ns(e, c->attempts);
}

/* ------------------------------------------------------- common phases */

/* Connects conns [first, first+count); returns the seconds it took. Those
 * not ready by the deadline are closed and counted as errors. */
static double connect_phase(scen *s, uint32_t first, uint32_t count)
{
    const sb_opts *o = s->o;
    sb_engine *e = s->e;
    uint64_t t0 = sb_now_ns();
    uint64_t deadline = t0 + (uint64_t)(o->connect_timeout_s * NS);
    uint32_t next = first;
    uint32_t end = first + count;
    uint64_t t_last = t0;
    uint32_t i;

    s->phase_connect = 1;
    while (!sb_stop) {
        uint64_t now = sb_now_ns();
        uint32_t waiting = 0;
        while (next < end && e->pending < o->max_pending) {
            if (o->connect_rate > 0 &&
                (double)(next - first) >= (double)(now - t0) / 1e9 * o->connect_rate + 1.0)
                break;
            sb_engine_connect(e, &e->conns[next]);
            next++;
        }
        /* Refused handshakes come back after their backoff. */
        for (i = first; i < next; i++) {
            sb_conn *c = &e->conns[i];
            if (!c->retry_pending)
                continue;
            if (c->retry_at > now || e->pending >= o->max_pending) {
                waiting++;
                continue;
            }
            c->retry_pending = 0;
            sb_engine_connect(e, c);
        }
        if (next == end && e->pending == 0 && waiting == 0)
            break;
        if (now > deadline)
            break;
        sb_engine_poll(e, 2);
    }
    for (i = first; i < end; i++) {
        sb_conn *c = &e->conns[i];
        if (c->state == SB_ST_READY && c->t_ready > t_last)
            t_last = c->t_ready;
        if (c->state != SB_ST_READY && c->state != SB_ST_CLOSED && c->state != SB_ST_IDLE) {
            sb_engine_close(e, c, 1);
            e->connect_err++;
        } else if (c->retry_pending) {
            c->retry_pending = 0;
            e->connect_err++;
        }
    }
    s->phase_connect = 0;
    return (double)(t_last - t0) / 1e9;
}

/* Keeps the loop turning for dur_ns, sending application heartbeats when
 * configured. */
static void hold(scen *s, uint64_t dur_ns)
{
    const sb_opts *o = s->o;
    sb_engine *e = s->e;
    uint64_t t0 = sb_now_ns();
    uint64_t hb_sent = 0;

    while (!sb_stop) {
        uint64_t now = sb_now_ns();
        if (now - t0 >= dur_ns)
            break;
        if (o->heartbeat_s > 0) {
            uint64_t due =
                (uint64_t)((double)(now - t0) / 1e9 / o->heartbeat_s * (double)e->cfg.nconns);
            while (hb_sent < due) {
                sb_conn *c = &e->conns[hb_sent % e->cfg.nconns];
                if (c->state == SB_ST_READY)
                    e->ad->heartbeat(e, c);
                hb_sent++;
            }
        }
        sb_engine_poll(e, 20);
    }
}

/* Picks the next ready connection with the given role (and group) in
 * [first, first+count), round-robin; NULL when none is ready. */
static sb_conn *next_ready(scen *s, int slot, uint32_t first, uint32_t count)
{
    uint32_t k;

    for (k = 0; k < count; k++) {
        sb_conn *c = &s->e->conns[first + (s->rr[slot]++ % count)];
        if (c->state == SB_ST_READY)
            return c;
    }
    return NULL;
}

static int send_one(scen *s, sb_conn *c, uint64_t now, int group)
{
    char text[SB_FRAME_MAX / 32];
    sb_sent *r;
    int64_t n;
    size_t len;

    if (c->ring == NULL) {
        c->ring = calloc(SB_RING, sizeof(sb_sent));
        if (c->ring == NULL)
            return -1;
        for (n = 0; n < SB_RING; n++)
            c->ring[n].n = -1;
    }
    n = (int64_t)c->next_n++;
    r = &c->ring[(uint64_t)n % SB_RING];
    if (r->n >= 0 && c->role == SB_ROLE_CHAT && r->got_accept == 1 && !r->got_reply)
        s->g[r->group & 1].overwritten++;
    memset(r, 0, sizeof(*r));
    r->n = n;
    r->t_send = now;
    r->group = (uint8_t)group;
    len = make_text(text, s->o->size < sizeof(text) - 1 ? s->o->size : sizeof(text) - 1,
                    c->role == SB_ROLE_CHAT ? s->o->text_prefix : NULL, now, c->idx, (uint64_t)n);
    s->e->ad->publish(s->e, c, n, text, len);
    return 0;
}

/* Paced sends: *sent tracks how many went out since t0 at rate/s, spread
 * over ready connections in [first, first+count). */
static void pace(scen *s, uint64_t now, uint64_t t0, double rate, uint64_t *sent, int slot,
                 uint32_t first, uint32_t count, int group)
{
    uint64_t due = (uint64_t)((double)(now - t0) / 1e9 * rate);
    int burst = 0;

    while (*sent < due && burst < MAX_BURST) {
        sb_conn *c = next_ready(s, slot, first, count);
        if (c == NULL)
            return;
        if (send_one(s, c, now, group) != 0)
            return;
        (*sent)++;
        burst++;
    }
}

static sl_status scen_init(scen *s, const sb_opts *o, uint32_t nconns)
{
    sb_hooks hooks = {s, hook_ready, hook_msg, hook_closed};
    sb_engine_cfg cfg = o->cfg;
    sl_status rc;
    int g;

    memset(s, 0, sizeof(*s));
    s->o = o;
    s->t_win0 = UINT64_MAX;
    s->t_win1 = UINT64_MAX;
    cfg.nconns = nconns;
    if (sb_hist_create(&s->h_conn) != SL_OK || sb_hist_create(&s->h_lat) != SL_OK ||
        sb_hist_create(&s->h_pub_acc) != SL_OK)
        return SL_ERR_NOMEM;
    for (g = 0; g < 2; g++) {
        if (sb_hist_create(&s->g[g].acc) != SL_OK || sb_hist_create(&s->g[g].ttft) != SL_OK ||
            sb_hist_create(&s->g[g].reply) != SL_OK)
            return SL_ERR_NOMEM;
    }
    cfg.adapter = sb_adapter_for(cfg.proto);
    rc = sb_engine_create(&s->e, &cfg, &hooks);
    return rc;
}

static void scen_fini(scen *s)
{
    int g;

    sb_engine_destroy(s->e);
    sb_hist_destroy(s->h_conn);
    sb_hist_destroy(s->h_lat);
    sb_hist_destroy(s->h_pub_acc);
    for (g = 0; g < 2; g++) {
        sb_hist_destroy(s->g[g].acc);
        sb_hist_destroy(s->g[g].ttft);
        sb_hist_destroy(s->g[g].reply);
    }
}

static void write_ready_file(const sb_opts *o, uint32_t ready)
{
    FILE *f;
    char tmp[1024];

    if (o->ready_file == NULL)
        return;
    snprintf(tmp, sizeof(tmp), "%s.tmp", o->ready_file);
    f = fopen(tmp, "w");
    if (f == NULL)
        return;
    fprintf(f, "%u\n", ready);
    fclose(f);
    rename(tmp, o->ready_file);
}

static void reset_group(grp_stats *g)
{
    g->sent = g->accepted = g->busy = g->tokens = g->replies = g->overwritten = 0;
    sb_hist_reset(g->acc);
    sb_hist_reset(g->ttft);
    sb_hist_reset(g->reply);
}

static void group_json(cJSON *obj, const char *name, const grp_stats *g, double window_s,
                       double model_ms)
{
    cJSON *o = cJSON_AddObjectToObject(obj, name);

    if (o == NULL)
        return;
    cJSON_AddNumberToObject(o, "sent", (double)g->sent);
    cJSON_AddNumberToObject(o, "accepted", (double)g->accepted);
    cJSON_AddNumberToObject(o, "busy", (double)g->busy);
    cJSON_AddNumberToObject(o, "first_tokens", (double)g->tokens);
    cJSON_AddNumberToObject(o, "replies", (double)g->replies);
    cJSON_AddNumberToObject(o, "unfinished",
                            g->accepted > g->replies ? (double)(g->accepted - g->replies) : 0.0);
    cJSON_AddNumberToObject(o, "accepted_per_s", (double)g->accepted / window_s);
    cJSON_AddNumberToObject(o, "replies_per_s", (double)g->replies / window_s);
    sb_hist_json(o, "accept_latency", g->acc);
    sb_hist_json(o, "ttft", g->ttft);
    sb_hist_json(o, "reply_latency", g->reply);
    cJSON_AddNumberToObject(o, "overhead_p99_us",
                            (double)sb_hist_percentile(g->reply, 99.0) / 1e3 - model_ms * 1e3);
    cJSON_AddNumberToObject(o, "overhead_p999_us",
                            (double)sb_hist_percentile(g->reply, 99.9) / 1e3 - model_ms * 1e3);
}

/* ---------------------------------------------------------------- idle */

static sl_status run_idle(const sb_opts *o, cJSON *res)
{
    scen s;
    sl_status rc;
    srv_sample base;
    srv_sample held;
    double cs;
    uint32_t i;

    rc = scen_init(&s, o, o->conns);
    if (rc != SL_OK)
        goto cleanup;
    for (i = 0; i < o->conns; i++) {
        s.e->conns[i].role = SB_ROLE_SUB;
        s.e->conns[i].target = (uint8_t)(i % (uint32_t)o->cfg.ntargets);
    }
    base = sample_pids(o);
    cs = connect_phase(&s, 0, o->conns);
    write_ready_file(o, s.e->ready);
    /* Let the servers settle (lazy allocations, presence writes) first. */
    hold(&s, (uint64_t)(o->duration_s * NS / 2));
    held = sample_pids(o);
    hold(&s, (uint64_t)(o->duration_s * NS / 2));

    cJSON_AddNumberToObject(res, "connections", (double)o->conns);
    cJSON_AddNumberToObject(res, "connected", (double)s.e->connect_ok);
    cJSON_AddNumberToObject(res, "connect_s", cs);
    cJSON_AddNumberToObject(res, "connect_rate", cs > 0 ? (double)s.e->connect_ok / cs : 0);
    cJSON_AddNumberToObject(res, "held_at_end", (double)s.e->ready);
    cJSON_AddNumberToObject(res, "handshake_refusals", (double)s.connect_refused);
    cJSON_AddNumberToObject(res, "errors", (double)(s.e->connect_err + s.e->closed_remote));
    sb_hist_json(res, "connect_latency", s.h_conn);
    add_sample(res, "server_base", base);
    add_sample(res, "server_held", held);
    if (base.ok && held.ok && s.e->connect_ok > 0) {
        double per =
            ((double)held.rss_kib - (double)base.rss_kib) * 1024.0 / (double)s.e->connect_ok;
        cJSON_AddNumberToObject(res, "rss_per_conn_bytes", per);
        cJSON_AddNumberToObject(res, "cpu_s", held.cpu_s - base.cpu_s);
    }
    add_engine(res, s.e);
cleanup:
    scen_fini(&s);
    return rc;
}

/* -------------------------------------------------------------- fanout */

static sl_status run_fanout(const sb_opts *o, cJSON *res)
{
    scen s;
    sl_status rc;
    srv_sample a;
    srv_sample b;
    srv_sample xa;
    srv_sample xb;
    uint32_t n = o->conns + o->pubs;
    uint32_t i;
    uint64_t t0;
    uint64_t now;
    uint64_t sent_total = 0;
    uint64_t expected;
    double cs;
    double win_s;

    rc = scen_init(&s, o, n);
    if (rc != SL_OK)
        goto cleanup;
    for (i = 0; i < n; i++) {
        s.e->conns[i].role = i < o->conns ? SB_ROLE_SUB : SB_ROLE_PUB;
        s.e->conns[i].target = (uint8_t)(i % (uint32_t)o->cfg.ntargets);
    }
    cs = connect_phase(&s, 0, n);
    write_ready_file(o, s.e->ready);
    /* Warm-up, then the measured window, then a drain without publishing. */
    t0 = sb_now_ns();
    while (!sb_stop && (now = sb_now_ns()) - t0 < (uint64_t)(o->warmup_s * NS)) {
        pace(&s, now, t0, o->rate, &sent_total, 0, o->conns, o->pubs, 0);
        sb_engine_poll(s.e, 1);
    }
    a = sample_pids(o);
    xa = sample_aux(o);
    s.t_win0 = sb_now_ns();
    s.t_win1 = s.t_win0 + (uint64_t)(o->duration_s * NS);
    while (!sb_stop && (now = sb_now_ns()) < s.t_win1) {
        uint64_t before = sent_total;
        pace(&s, now, t0, o->rate, &sent_total, 0, o->conns, o->pubs, 0);
        s.pub_sent_win += sent_total - before;
        sb_engine_poll(s.e, 1);
    }
    for (i = 0, expected = 0; i < o->conns; i++)
        expected += s.e->conns[i].state == SB_ST_READY;
    expected *= s.pub_sent_win;
    {
        uint64_t dl = sb_now_ns() + (uint64_t)(o->drain_s * NS);
        while (!sb_stop && sb_now_ns() < dl && s.deliveries_win < expected)
            sb_engine_poll(s.e, 5);
    }
    b = sample_pids(o);
    xb = sample_aux(o);
    win_s = (double)(s.t_win1 - s.t_win0) / 1e9;

    cJSON_AddNumberToObject(res, "subscribers", (double)o->conns);
    cJSON_AddNumberToObject(res, "publishers", (double)o->pubs);
    cJSON_AddNumberToObject(res, "connect_s", cs);
    cJSON_AddNumberToObject(res, "rate_offered", o->rate);
    cJSON_AddNumberToObject(res, "window_s", win_s);
    cJSON_AddNumberToObject(res, "published_window", (double)s.pub_sent_win);
    cJSON_AddNumberToObject(res, "published_total", (double)sent_total);
    cJSON_AddNumberToObject(res, "accepted", (double)s.pub_accepted);
    cJSON_AddNumberToObject(res, "busy", (double)s.pub_busy);
    cJSON_AddNumberToObject(res, "deliveries_window", (double)s.deliveries_win);
    cJSON_AddNumberToObject(res, "deliveries_expected", (double)expected);
    cJSON_AddNumberToObject(
        res, "missing", expected > s.deliveries_win ? (double)(expected - s.deliveries_win) : 0);
    cJSON_AddNumberToObject(res, "deliveries_per_s", (double)s.deliveries_win / win_s);
    /* What the server delivered per second of wall time, backlog included:
     * every delivery of a window message over the time from the window's
     * start to the last of them. Above the offered rate's capacity this is
     * the rate at which the server drains its backlog. */
    if (s.t_last_win > s.t_win0) {
        double span = (double)(s.t_last_win - s.t_win0) / 1e9;
        cJSON_AddNumberToObject(res, "delivered_span_s", span);
        cJSON_AddNumberToObject(res, "delivered_per_s", (double)s.deliveries_win / span);
    }
    cJSON_AddNumberToObject(res, "duplicates", (double)s.dups);
    sb_hist_json(res, "latency", s.h_lat);
    sb_hist_json(res, "connect_latency", s.h_conn);
    if (o->cfg.proto == SB_P_SLUICE)
        sb_hist_json(res, "accept_latency", s.h_pub_acc);
    add_sample(res, "server_start", a);
    add_sample(res, "server_end", b);
    if (a.ok && b.ok) {
        cJSON_AddNumberToObject(res, "cpu_s", b.cpu_s - a.cpu_s);
        cJSON_AddNumberToObject(
            res, "cpu_s_per_million",
            s.deliveries_win ? (b.cpu_s - a.cpu_s) * 1e6 / (double)s.deliveries_win : 0);
    }
    if (xa.ok && xb.ok) {
        cJSON_AddNumberToObject(res, "aux_cpu_s", xb.cpu_s - xa.cpu_s);
        cJSON_AddNumberToObject(
            res, "aux_cpu_s_per_million",
            s.deliveries_win ? (xb.cpu_s - xa.cpu_s) * 1e6 / (double)s.deliveries_win : 0);
    }
    add_engine(res, s.e);
cleanup:
    scen_fini(&s);
    return rc;
}

/* ------------------------------------------------------------ pipeline */

/* Sends at rate_b (group 0, conns [0,nb)) and rate_a (group 1, conns
 * [nb, nb+na)) for dur seconds, then drains. */
static void chat_window(scen *s, double dur_s, double rate_b, uint32_t nb, double rate_a,
                        uint32_t na)
{
    uint64_t t0 = sb_now_ns();
    uint64_t t1 = t0 + (uint64_t)(dur_s * NS);
    uint64_t dl;
    uint64_t now;

    while (!sb_stop && (now = sb_now_ns()) < t1) {
        if (rate_b > 0)
            pace(s, now, t0, rate_b, &s->g[0].sent, 0, 0, nb, 0);
        if (rate_a > 0 && na > 0)
            pace(s, now, t0, rate_a, &s->g[1].sent, 1, nb, na, 1);
        sb_engine_poll(s->e, 1);
    }
    /* Drain: wait for the replies of what was accepted (bounded). */
    dl = sb_now_ns() + (uint64_t)(s->o->drain_s * NS);
    while (!sb_stop && sb_now_ns() < dl) {
        if (s->g[0].replies + s->g[0].busy >= s->g[0].sent &&
            s->g[1].replies + s->g[1].busy >= s->g[1].sent)
            break;
        sb_engine_poll(s->e, 5);
    }
}

static sl_status run_pipeline(const sb_opts *o, cJSON *res)
{
    scen s;
    sl_status rc;
    uint32_t i;
    int k;
    int nrates = o->nrates > 0 ? o->nrates : 1;
    double max_ok = 0;
    double cs;
    cJSON *steps;

    rc = scen_init(&s, o, o->conns);
    if (rc != SL_OK)
        goto cleanup;
    for (i = 0; i < o->conns; i++) {
        s.e->conns[i].role = SB_ROLE_CHAT;
        s.e->conns[i].target = (uint8_t)(i % (uint32_t)o->cfg.ntargets);
    }
    cs = connect_phase(&s, 0, o->conns);
    write_ready_file(o, s.e->ready);
    cJSON_AddNumberToObject(res, "sessions", (double)o->conns);
    cJSON_AddNumberToObject(res, "connected", (double)s.e->connect_ok);
    cJSON_AddNumberToObject(res, "connect_s", cs);
    cJSON_AddNumberToObject(res, "model_ms", o->model_ms);
    cJSON_AddNumberToObject(res, "slo_p99_ms", o->slo_ms);
    /* Warm-up at the first step's rate, not recorded. */
    if (o->warmup_s > 0) {
        chat_window(&s, o->warmup_s, o->nrates > 0 ? o->rates[0] : o->rate, o->conns, 0, 0);
        reset_group(&s.g[0]);
    }
    steps = cJSON_AddArrayToObject(res, "steps");
    for (k = 0; k < nrates && !sb_stop; k++) {
        double rate = o->nrates > 0 ? o->rates[k] : o->rate;
        srv_sample a = sample_pids(o);
        srv_sample xa = sample_aux(o);
        srv_sample b;
        srv_sample xb;
        cJSON *st = cJSON_CreateObject();
        int ok;
        reset_group(&s.g[0]);
        chat_window(&s, o->duration_s, rate, o->conns, 0, 0);
        b = sample_pids(o);
        xb = sample_aux(o);
        cJSON_AddNumberToObject(st, "rate_offered", rate);
        group_json(st, "result", &s.g[0], o->duration_s, o->model_ms);
        if (a.ok && b.ok)
            cJSON_AddNumberToObject(st, "server_cpu_s", b.cpu_s - a.cpu_s);
        if (xa.ok && xb.ok)
            cJSON_AddNumberToObject(st, "aux_cpu_s", xb.cpu_s - xa.cpu_s);
        ok = s.g[0].sent > 0 && (double)s.g[0].replies >= 0.98 * (double)s.g[0].sent &&
             (double)s.g[0].busy <= 0.01 * (double)s.g[0].sent &&
             (double)sb_hist_percentile(s.g[0].reply, 99.0) <= o->slo_ms * 1e6;
        cJSON_AddBoolToObject(st, "sustainable", ok);
        cJSON_AddItemToArray(steps, st);
        if (ok && rate > max_ok)
            max_ok = rate;
        if (!ok && o->nrates > 1)
            break; /* higher rates only get worse: stop the ramp */
    }
    cJSON_AddNumberToObject(res, "max_sustainable_rate", max_ok);
    add_engine(res, s.e);
cleanup:
    scen_fini(&s);
    return rc;
}

/* --------------------------------------------------------------- noisy */

static sl_status run_noisy(const sb_opts *o, cJSON *res)
{
    scen s;
    sl_status rc;
    uint32_t n = o->conns + o->conns_a;
    uint32_t i;
    double cs;
    double p99_alone;
    double p99_noisy;
    cJSON *ph;

    rc = scen_init(&s, o, n);
    if (rc != SL_OK)
        goto cleanup;
    for (i = 0; i < n; i++) {
        s.e->conns[i].role = SB_ROLE_CHAT;
        s.e->conns[i].group = i < o->conns ? 0 : 1;
        s.e->conns[i].target = (uint8_t)(i % (uint32_t)o->cfg.ntargets);
    }
    cs = connect_phase(&s, 0, n);
    write_ready_file(o, s.e->ready);
    cJSON_AddNumberToObject(res, "sessions_b", (double)o->conns);
    cJSON_AddNumberToObject(res, "sessions_a", (double)o->conns_a);
    cJSON_AddNumberToObject(res, "connected", (double)s.e->connect_ok);
    cJSON_AddNumberToObject(res, "connect_s", cs);
    cJSON_AddNumberToObject(res, "rate_b", o->rate);
    cJSON_AddNumberToObject(res, "rate_a", o->rate_a);
    if (o->warmup_s > 0)
        chat_window(&s, o->warmup_s, o->rate, o->conns, 0, o->conns_a);
    reset_group(&s.g[0]);
    chat_window(&s, o->duration_s, o->rate, o->conns, 0, o->conns_a);
    ph = cJSON_AddObjectToObject(res, "b_alone");
    group_json(ph, "b", &s.g[0], o->duration_s, o->model_ms);
    p99_alone = (double)sb_hist_percentile(s.g[0].reply, 99.0);
    reset_group(&s.g[0]);
    reset_group(&s.g[1]);
    chat_window(&s, o->duration_s, o->rate, o->conns, o->rate_a, o->conns_a);
    ph = cJSON_AddObjectToObject(res, "b_with_a");
    group_json(ph, "b", &s.g[0], o->duration_s, o->model_ms);
    group_json(ph, "a", &s.g[1], o->duration_s, o->model_ms);
    p99_noisy = (double)sb_hist_percentile(s.g[0].reply, 99.0);
    cJSON_AddNumberToObject(res, "b_p99_ratio", p99_alone > 0 ? p99_noisy / p99_alone : 0);
    add_engine(res, s.e);
cleanup:
    scen_fini(&s);
    return rc;
}

/* --------------------------------------------------------------- storm */

static sl_status run_storm(const sb_opts *o, cJSON *res)
{
    scen s;
    sl_status rc;
    uint32_t n = o->conns + o->pubs;
    uint32_t i;
    uint64_t t0;
    uint64_t now;
    uint64_t sent = 0;
    uint64_t t_all = 0;
    uint64_t dl;
    uint64_t lost = 0;
    uint64_t min_recv = UINT64_MAX;
    uint64_t t_settle;
    uint64_t last_count;
    uint64_t last_change;
    uint32_t lossy = 0;
    double cs;

    rc = scen_init(&s, o, n);
    if (rc != SL_OK)
        goto cleanup;
    for (i = 0; i < n; i++) {
        s.e->conns[i].role = i < o->conns ? SB_ROLE_SUB : SB_ROLE_PUB;
        s.e->conns[i].target = (uint8_t)(i % (uint32_t)o->cfg.ntargets);
    }
    cs = connect_phase(&s, 0, n);
    write_ready_file(o, s.e->ready);
    s.t_win0 = 0; /* every stamped message counts */
    t0 = sb_now_ns();
    while (!sb_stop && (now = sb_now_ns()) - t0 < (uint64_t)(o->warmup_s * NS)) {
        pace(&s, now, t0, o->rate, &sent, 0, o->conns, o->pubs, 0);
        sb_engine_poll(s.e, 1);
    }
    /* Drop every member at once, then resume them all. */
    sb_hist_json(res, "connect_latency", s.h_conn);
    sb_hist_reset(s.h_conn);
    s.storm = 1;
    s.t_drop = sb_now_ns();
    for (i = 0; i < o->conns; i++) {
        sb_conn *c = &s.e->conns[i];
        if (c->state != SB_ST_READY)
            continue;
        sb_engine_close(s.e, c, 1);
        c->resuming = 1;
        c->attempts = 0;
        c->retry_at = s.t_drop;
    }
    dl = s.t_drop + (uint64_t)(o->storm_timeout_s * NS);
    while (!sb_stop && (now = sb_now_ns()) < dl) {
        for (i = 0; i < o->conns && s.e->pending < o->max_pending; i++) {
            sb_conn *c = &s.e->conns[i];
            if (c->resuming && c->state == SB_ST_CLOSED && c->retry_at <= now)
                sb_engine_connect(s.e, c);
        }
        pace(&s, now, t0, o->rate, &sent, 0, o->conns, o->pubs, 0);
        if (s.resumed >= o->conns) {
            if (t_all == 0)
                t_all = now;
            if (now - t_all >= (uint64_t)(o->duration_s * NS))
                break;
        }
        sb_engine_poll(s.e, 1);
    }
    s.storm = 0;
    /* Stop publishing; wait for every answer, then for every delivery, as
     * long as deliveries keep coming (a member counts as having lost what
     * it has not got when nothing arrived for 3 s, or at the drain bound). */
    t_settle = sb_now_ns();
    dl = t_settle + (uint64_t)(o->drain_s * NS);
    last_count = s.deliveries;
    last_change = t_settle;
    while (!sb_stop && (now = sb_now_ns()) < dl) {
        if (s.deliveries != last_count) {
            last_count = s.deliveries;
            last_change = now;
        } else if (now - last_change > 3 * NS && s.pub_accepted + s.pub_busy >= sent) {
            break;
        }
        int done = s.pub_accepted + s.pub_busy >= sent;
        for (i = 0; i < o->conns && done; i++) {
            if (s.e->conns[i].state == SB_ST_READY && s.e->conns[i].msgs_room < s.pub_accepted)
                done = 0;
        }
        if (done)
            break;
        sb_engine_poll(s.e, 5);
    }
    for (i = 0; i < o->conns; i++) {
        sb_conn *c = &s.e->conns[i];
        if (c->msgs_room < min_recv)
            min_recv = c->msgs_room;
        if (c->msgs_room < s.pub_accepted) {
            lost += s.pub_accepted - c->msgs_room;
            lossy++;
        }
    }
    cJSON_AddNumberToObject(res, "members", (double)o->conns);
    cJSON_AddNumberToObject(res, "connect_s", cs);
    cJSON_AddNumberToObject(res, "resumed", (double)s.resumed);
    cJSON_AddNumberToObject(res, "resumed_as_new_session", (double)s.resumed_fresh);
    cJSON_AddNumberToObject(res, "all_resumed_s", t_all ? (double)(t_all - s.t_drop) / 1e9 : -1.0);
    cJSON_AddNumberToObject(res, "refusals", (double)s.storm_refused);
    cJSON_AddNumberToObject(res, "failed_attempts", (double)s.storm_failed);
    sb_hist_json(res, "time_to_resume", s.h_conn);
    cJSON_AddNumberToObject(res, "published", (double)sent);
    cJSON_AddNumberToObject(res, "accepted", (double)s.pub_accepted);
    cJSON_AddNumberToObject(res, "busy", (double)s.pub_busy);
    cJSON_AddNumberToObject(res, "deliveries", (double)s.deliveries);
    cJSON_AddNumberToObject(res, "settle_s", (double)(sb_now_ns() - t_settle) / 1e9);
    cJSON_AddNumberToObject(res, "lost", (double)lost);
    cJSON_AddNumberToObject(res, "members_with_loss", (double)lossy);
    cJSON_AddNumberToObject(res, "min_received", min_recv == UINT64_MAX ? 0 : (double)min_recv);
    cJSON_AddNumberToObject(res, "duplicates", (double)s.dups);
    cJSON_AddNumberToObject(res, "gaps", (double)s.gaps);
    add_engine(res, s.e);
cleanup:
    scen_fini(&s);
    return rc;
}

sl_status sb_scen_run(const sb_opts *o, cJSON **out)
{
    cJSON *res = NULL;
    sl_status rc;

    if (o == NULL || out == NULL || o->scenario == NULL)
        return SL_ERR_INVAL;
    res = cJSON_CreateObject();
    if (res == NULL)
        return SL_ERR_NOMEM;
    cJSON_AddStringToObject(res, "scenario", o->scenario);
    cJSON_AddStringToObject(res, "proto", sb_adapter_for(o->cfg.proto)->name);
    if (o->label)
        cJSON_AddStringToObject(res, "label", o->label);
    cJSON_AddNumberToObject(res, "started_unix", (double)sb_wall_s());
    cJSON_AddNumberToObject(res, "size", (double)o->size);
    cJSON_AddNumberToObject(res, "duration_s", o->duration_s);
    if (strcmp(o->scenario, "idle") == 0)
        rc = run_idle(o, res);
    else if (strcmp(o->scenario, "fanout") == 0)
        rc = run_fanout(o, res);
    else if (strcmp(o->scenario, "pipeline") == 0)
        rc = run_pipeline(o, res);
    else if (strcmp(o->scenario, "noisy") == 0)
        rc = run_noisy(o, res);
    else if (strcmp(o->scenario, "storm") == 0)
        rc = run_storm(o, res);
    else
        rc = SL_ERR_INVAL;
    if (rc != SL_OK) {
        cJSON_Delete(res);
        return rc;
    }
    cJSON_AddBoolToObject(res, "interrupted", sb_stop != 0);
    *out = res;
    return SL_OK;
}
