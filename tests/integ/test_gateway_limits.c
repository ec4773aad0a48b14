/* Limits of sluice-gateway (DESIGN.md "Backpressure, timeouts, fallbacks"):
 * the inbound token bucket per connection, the bounded outbound queue
 * (4429 for a client that stops reading, while its neighbours get
 * everything), the gateway's memory while a stopped client's room is
 * flooded, and the handshake bucket against reconnect storms. Room traffic
 * is written straight to SLUICE_OUT by the test (as the orchestrator
 * would), so the gateway is the only Sluice process under load. */
#include <linux/io_uring.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "test_gateway_fx.h"

#define T 15000

static void start_gw(fx *f, const char *const *gw_env, const char *const *env)
{
    fx_opts o = {.gateways = 1, .gw_env = gw_env, .env = env};
    fx_start(f, &o);
}

/* ---- inbound rate ---- */

static bool match_answer(const cJSON *fr, void *ud)
{
    const char *id = hx_json_str(fr, "id");
    return id != NULL && strcmp(id, (const char *)ud) == 0 &&
           (fx__is_type(fr, "accepted") || fx__is_type(fr, "busy") || fx__is_type(fr, "error"));
}

START_TEST(test_rate_limit_busy_without_touching_nats)
{
    static const char *const env[] = {"SLUICE_RATE=1", "SLUICE_BURST=3", NULL};
    fx f;
    hx_sl_client *c, *other;
    int accepted = 0, busy = 0;
    char first_busy[16] = "";
    int64_t retry = 0, t0, elapsed;
    char *subj;
    const cJSON *lim;

    start_gw(&f, env, NULL);
    c = fx_client(&f, 0, "acme", "alice");
    other = fx_client(&f, 0, "acme", "bob");
    lim = cJSON_GetObjectItem(hx_sl_welcome(c), "limits");
    HX_ASSERT(f.s, hx_json_int(lim, "rate", -1) == 1 && hx_json_int(lim, "burst", -1) == 3);
    t0 = hx_now_ms();
    for (int i = 0; i < 12; i++) {
        char id[16];
        snprintf(id, sizeof(id), "c-%d", i);
        HX_OK(f.s, hx_sl_send(c, id, NULL, "quick", NULL));
    }
    for (int i = 0; i < 12; i++) {
        char id[16];
        cJSON *a;
        snprintf(id, sizeof(id), "c-%d", i);
        a = hx_ws_expect_fn(hx_sl_ws(c), match_answer, id, T);
        HX_ASSERT_MSG(f.s, a != NULL, "no answer to %s: %s", id, hx_error());
        if (fx__is_type(a, "accepted")) {
            accepted++;
        } else {
            char *txt = cJSON_PrintUnformatted(a);
            HX_ASSERT_MSG(f.s,
                          fx__is_type(a, "busy") &&
                              strcmp(hx_json_str(a, "reason"), "rate_limited") == 0,
                          "wanted busy rate_limited, got %s", txt);
            HX_ASSERT_MSG(f.s,
                          hx_json_int(a, "retry_after_ms", -1) > 0 &&
                              hx_json_int(a, "retry_after_ms", -1) <= 1000,
                          "retry_after_ms out of range: %s", txt);
            cJSON_free(txt);
            if (busy++ == 0) {
                snprintf(first_busy, sizeof(first_busy), "%s", id);
                retry = hx_json_int(a, "retry_after_ms", -1);
            }
        }
        cJSON_Delete(a);
    }
    /* The burst, plus what refilled at 1/s while the frames were handled. */
    elapsed = hx_now_ms() - t0;
    HX_ASSERT_MSG(f.s,
                  accepted >= 3 && accepted <= 3 + 1 + elapsed / 1000 && busy >= 1 &&
                      busy == 12 - accepted,
                  "%d accepted, %d busy in %lld ms", accepted, busy, (long long)elapsed);
    subj = hx_strf("sluice.in.acme.%s", hx_sl_session(c));
    HX_ASSERT_MSG(f.s, fx_stream_msgs(&f, SL_STREAM_IN, subj) == (uint64_t)accepted,
                  "SLUICE_IN has %llu of the session's messages, %d were accepted",
                  (unsigned long long)fx_stream_msgs(&f, SL_STREAM_IN, subj), accepted);
    HX_ASSERT(f.s, fx_metric(&f, 0, "sluice_gw_busy_total{reason=\"rate_limited\"}") == busy);
    /* Pings are not limited; nor is another connection. */
    fx_ping(&f, hx_sl_ws(c));
    for (int i = 0; i < 3; i++) {
        char id[16];
        cJSON *a;
        snprintf(id, sizeof(id), "o-%d", i);
        a = hx_sl_send_wait(other, id, NULL, "mine", T);
        HX_ASSERT_MSG(f.s, a != NULL && fx__is_type(a, "accepted"), "bob was limited by alice");
        cJSON_Delete(a);
    }
    /* A client that honours retry_after_ms gets through with the same id
     * (this wait is the protocol's, not a guess). */
    hx_sleep_ms((int)retry + 20);
    {
        cJSON *a = hx_sl_send_wait(c, first_busy, NULL, "quick", T);
        HX_ASSERT_MSG(f.s, a != NULL && fx__is_type(a, "accepted") && !hx_json_true(a, "duplicate"),
                      "retry of %s after %lld ms: %s", first_busy, (long long)retry,
                      a ? cJSON_PrintUnformatted(a) : hx_error());
        cJSON_Delete(a);
    }
    HX_ASSERT(f.s, fx_stream_msgs(&f, SL_STREAM_IN, subj) == (uint64_t)accepted + 1);
    free(subj);
    hx_sl_destroy(c);
    hx_sl_destroy(other);
    fx_stop(&f);
}
END_TEST

/* Frames the parser refuses take tokens too: past the burst a flood of
 * malformed frames gets busy rate_limited, not one error frame each. */
START_TEST(test_refused_frames_take_tokens)
{
    static const char *const env[] = {"SLUICE_RATE=1", "SLUICE_BURST=3", NULL};
    fx f;
    hx_sl_client *c;
    int errors = 0, busy = 0;
    int64_t t0, elapsed;

    start_gw(&f, env, NULL);
    c = fx_client(&f, 0, "acme", "alice");
    t0 = hx_now_ms();
    for (int i = 0; i < 12; i++)
        HX_OK(f.s, hx_ws_send_text(hx_sl_ws(c), "{\"type\":\"send\",\"text\":7}"));
    while (errors + busy < 12) {
        cJSON *a = hx_ws_recv_json(hx_sl_ws(c), T);
        HX_ASSERT_MSG(f.s, a != NULL, "%d errors and %d busy, then nothing: %s", errors, busy,
                      hx_error());
        if (fx__is_type(a, "error"))
            errors++;
        else if (fx__is_type(a, "busy") && strcmp(hx_json_str(a, "reason"), "rate_limited") == 0)
            busy++;
        cJSON_Delete(a);
    }
    elapsed = hx_now_ms() - t0;
    HX_ASSERT_MSG(f.s, errors >= 3 && errors <= 3 + 1 + elapsed / 1000 && busy >= 1,
                  "%d errors, %d busy in %lld ms", errors, busy, (long long)elapsed);
    HX_ASSERT(f.s, fx_metric(&f, 0, "sluice_gw_busy_total{reason=\"rate_limited\"}") == busy);
    fx_ping(&f, hx_sl_ws(c)); /* still open */
    hx_sl_destroy(c);
    fx_stop(&f);
}
END_TEST

/* ---- slow consumer ---- */

/* Reads c until it has seen message f-<*want-1> of the flood (counting,
 * in order, into *next). */
static void read_flood(fx *f, hx_sl_client *c, int *next, int upto, const char *who)
{
    int64_t deadline = hx_now_ms() + 60000;

    while (*next < upto && hx_now_ms() < deadline) {
        cJSON *e = hx_ws_recv_json(hx_sl_ws(c), 1000);
        const char *id = e ? hx_json_str(e, "id") : NULL;
        if (e == NULL)
            HX_ASSERT_MSG(f->s, hx_ws_last_result(hx_sl_ws(c)) == HX_WS_TIMEOUT,
                          "%s's connection ended at f-%d: %s (close %d)", who, *next, hx_error(),
                          hx_ws_close_code(hx_sl_ws(c)));
        if (id != NULL && strncmp(id, "f-", 2) == 0) {
            HX_ASSERT_MSG(f->s, atoi(id + 2) == *next, "%s got %s, wanted f-%d", who, id, *next);
            (*next)++;
        }
        cJSON_Delete(e);
    }
    HX_ASSERT_MSG(f->s, *next >= upto, "%s has %d of %d messages after 60 s", who, *next, upto);
}

static char *filler(size_t n)
{
    char *s = malloc(n + 1);
    ck_assert_ptr_nonnull(s);
    for (size_t i = 0; i < n; i++)
        s[i] = (char)('a' + i % 26);
    s[n] = '\0';
    return s;
}

typedef struct metric_wait {
    fx *f;
    const char *series;
    double at_least;
} metric_wait;

static bool metric_reached(void *ud)
{
    metric_wait *w = ud;
    return fx_metric(w->f, 0, w->series) >= w->at_least;
}

#define SLOW_FLOOD 3000

/* A raw client for the slow side: a 4 KiB receive buffer from the start. */
static hx_ws *slow_connect(fx *f, const char *resume_json, cJSON **welcome)
{
    hx_ws *ws = NULL;
    hx_ws_opts o = {.port = hx_stack_gw_port(f->s, 0),
                    .path = HX_SL_PATH,
                    .subprotocol = HX_SL_SUBPROTOCOL,
                    .rcvbuf = 4096,
                    .timeout_ms = T};
    int code = hx_ws_connect_opts(&ws, &o, NULL);

    HX_ASSERT_MSG(f->s, code == 101, "slow client upgrade: %d %s", code, hx_error());
    HX_OK(f->s, hx_sl_hello(ws, fx_token(f, "acme", "slow"), resume_json, T, welcome));
    hx_ws_set_backlog_max(ws, 100000);
    return ws;
}

/* Reads ws until the close or until message f-<upto-1>, checking order;
 * *last_seq tracks the channel position. Returns the close code, or 0 when
 * upto was reached. */
static int slow_read(fx *f, hx_ws *ws, int *next, int upto, int64_t *last_seq)
{
    for (int k = 0; k < 10 * SLOW_FLOOD && *next < upto; k++) {
        cJSON *e = hx_ws_recv_json(ws, T);
        const char *id = e ? hx_json_str(e, "id") : NULL;
        if (e == NULL) {
            HX_ASSERT_MSG(f->s, hx_ws_last_result(ws) == HX_WS_CLOSED, "slow client at f-%d: %s",
                          *next, hx_error());
            return hx_ws_close_code(ws);
        }
        if (fx__is_type(e, "event")) {
            HX_ASSERT_MSG(f->s, hx_json_int(e, "seq", 0) > *last_seq,
                          "slow client: seq %lld after %lld", (long long)hx_json_int(e, "seq", 0),
                          (long long)*last_seq);
            *last_seq = hx_json_int(e, "seq", 0);
        }
        if (id != NULL && strncmp(id, "f-", 2) == 0) {
            HX_ASSERT_MSG(f->s, atoi(id + 2) == *next, "slow client got %s, wanted f-%d", id,
                          *next);
            (*next)++;
        }
        cJSON_Delete(e);
    }
    return 0;
}

START_TEST(test_slow_consumer_cut_4429_others_unaffected)
{
    static const char *const env[] = {"SLUICE_OUTQ_MAX_FRAMES=64", "SLUICE_OUTQ_MAX_BYTES=65536",
                                      NULL};
    fx f;
    hx_sl_client *fast1, *fast2;
    hx_ws *slow;
    cJSON *welcome = NULL, *j;
    int n1 = 0, n2 = 0, ns = 0, code;
    int64_t slow_seq = 0;
    char *text = filler(600), *resume;
    metric_wait mw;

    start_gw(&f, env, NULL);
    slow = slow_connect(&f, NULL, &welcome);
    fast1 = fx_client(&f, 0, "acme", "fast1");
    fast2 = fx_client(&f, 0, "acme", "fast2");
    HX_OK(f.s, hx_ws_send_text(slow, "{\"type\":\"join\",\"room\":\"flood\"}"));
    j = hx_ws_expect_type(slow, "joined", T);
    HX_ASSERT(f.s, j != NULL);
    slow_seq = hx_json_int(j, "seq", -1);
    cJSON_Delete(j);
    cJSON_Delete(hx_sl_join(fast1, "flood", T));
    cJSON_Delete(hx_sl_join(fast2, "flood", T));
    /* Written in steps the readers keep up with; slow never reads. */
    for (int i = 0; i < SLOW_FLOOD; i++) {
        char id[16];
        snprintf(id, sizeof(id), "f-%d", i);
        fx_publish_room_msg(&f, "acme", "flood", "writer", id, text);
        if (i % 50 == 49) {
            read_flood(&f, fast1, &n1, i + 1, "fast1");
            read_flood(&f, fast2, &n2, i + 1, "fast2");
        }
    }
    fx_publish_flush(&f);
    read_flood(&f, fast1, &n1, SLOW_FLOOD, "fast1");
    read_flood(&f, fast2, &n2, SLOW_FLOOD, "fast2");
    HX_ASSERT(f.s, hx_sl_get_counts(fast1).duplicates == 0);
    HX_ASSERT(f.s, hx_sl_get_counts(fast2).duplicates == 0);

    mw.f = &f;
    mw.series = "sluice_gw_slow_consumer_closes_total";
    mw.at_least = 1;
    HX_ASSERT_MSG(f.s, hx_wait_until(metric_reached, &mw, T), "no slow-consumer close counted");
    HX_ASSERT(f.s, fx_metric(&f, 0, "sluice_gw_slow_consumer_closes_total") == 1);
    /* Now the slow client reads what reached it, then the close. */
    code = slow_read(&f, slow, &ns, SLOW_FLOOD, &slow_seq);
    fprintf(stderr, "slow client: %d of %d messages before the close %d\n", ns, SLOW_FLOOD, code);
    HX_ASSERT_MSG(f.s, code == 4429, "the slow client was closed with %d (%s), wanted 4429", code,
                  hx_ws_close_reason(slow));
    HX_ASSERT_MSG(f.s, ns < SLOW_FLOOD, "the slow client got all %d: it was never held back", ns);
    hx_ws_destroy(slow);
    /* It resumes from its position and gets the rest, once each. */
    resume = hx_strf(
        "{\"session\":\"%s\",\"resume_token\":\"%s\",\"positions\":{\"r:flood\":%lld}}",
        hx_json_str(welcome, "session"), hx_json_str(welcome, "resume_token"), (long long)slow_seq);
    cJSON_Delete(welcome);
    welcome = NULL;
    slow = slow_connect(&f, resume, &welcome);
    HX_ASSERT(f.s, hx_json_true(welcome, "resumed"));
    hx_ws_set_backlog_max(slow, 100000);
    /* Reading now (the buffer is small but the reader keeps up). */
    code = slow_read(&f, slow, &ns, SLOW_FLOOD, &slow_seq);
    HX_ASSERT_MSG(f.s, code == 0 && ns == SLOW_FLOOD, "after resume: %d of %d, close %d", ns,
                  SLOW_FLOOD, code);
    free(resume);
    free(text);
    cJSON_Delete(welcome);
    hx_ws_destroy(slow);
    hx_sl_destroy(fast1);
    hx_sl_destroy(fast2);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

/* ---- batched writes ---- */

#define BURST_SWEEP 8  /* frame lengths bound-SWEEP .. bound+SWEEP-1 around each bound */
#define BURST_SMALL 12 /* short events after each large one */
/* Large events first, more than the kernel buffers (tcp_wmem's 4 MiB at
 * most) for a client that does not read: the rest stays in the queue. */
#define BURST_FILL 80
#define BURST_MSGS (BURST_FILL + 2 * BURST_SWEEP * (BURST_SMALL + 1))

/* The next data message on ws, parsed, which must be a text frame; sets
 * *len to its (unfragmented: every gateway frame has FIN) length. */
static cJSON *recv_frame(fx *f, hx_ws *ws, size_t *len)
{
    char *data = NULL;
    hx_ws_result r = hx_ws_recv_msg(ws, T, &data, len);
    cJSON *e;

    HX_ASSERT_MSG(f->s, r == HX_WS_TEXT, "result %d (%s), close %d", r, hx_error(),
                  hx_ws_close_code(ws));
    e = cJSON_Parse(data);
    HX_ASSERT_MSG(f->s, e != NULL, "not JSON: %.200s", data);
    free(data);
    return e;
}

/* Reads frames on ws until one of the given type and id; returns its
 * length. Others (presence events) are skipped. */
static size_t probe_len(fx *f, hx_ws *ws, const char *type, const char *id)
{
    for (;;) {
        size_t len;
        cJSON *e = recv_frame(f, ws, &len);
        const char *got = hx_json_str(e, "id");
        bool hit = fx__is_type(e, type) && got != NULL && strcmp(got, id) == 0;
        cJSON_Delete(e);
        if (hit)
            return len;
    }
}

/* A client that lags (4 KiB receive buffer, not reading) while a burst of
 * frames of every header size is queued for it, then reads: every frame
 * arrives whole, in order, with its exact content, and the gateway wrote the
 * backlog several frames per write (sluice_gw_writes_total grows less than
 * sluice_gw_frames_out_total). Lengths are steered, from probes, across the
 * 2/4/10-byte header boundaries: events of 65531..65540 bytes (some larger
 * than a 64 KiB batch) with short events after each, then the client's own
 * error answers of 121..130 bytes, each followed by a 15-byte pong. The
 * harness's reader parses frames strictly (RSV, mask, length).
 *
 * Run twice: with the gateway's default (slices of writes submitted through
 * io_uring where the kernel has it: the test asks the kernel itself, and
 * then requires the gateway to use it) and with SLUICE_GW_IO_URING=0 (one
 * send() per connection). Partial writes happen on both paths: the lagging
 * reader's socket fills at once. */
static bool kernel_has_io_uring(void)
{
    struct {
        struct io_uring_probe p;
        struct io_uring_probe_op ops[256];
    } pr;
    struct io_uring_params p;
    bool ok;
    int fd;

    memset(&p, 0, sizeof(p));
    fd = (int)syscall(__NR_io_uring_setup, 4, &p);
    if (fd < 0)
        return false;
    /* The gateway needs IORING_OP_SENDMSG too (kernels 5.1-5.5 lack it). */
    memset(&pr, 0, sizeof(pr));
    ok = syscall(__NR_io_uring_register, fd, IORING_REGISTER_PROBE, &pr, 256) == 0 &&
         pr.p.last_op >= IORING_OP_SENDMSG &&
         (pr.p.ops[IORING_OP_SENDMSG].flags & IO_URING_OP_SUPPORTED) != 0;
    close(fd);
    return ok;
}

START_TEST(test_burst_to_lagging_reader_whole_in_order_and_batched)
{
    static const char *const env_uring[] = {"SLUICE_OUTQ_MAX_FRAMES=100000",
                                            "SLUICE_OUTQ_MAX_BYTES=67108864", NULL};
    static const char *const env_send[] = {"SLUICE_OUTQ_MAX_FRAMES=100000",
                                           "SLUICE_OUTQ_MAX_BYTES=67108864", "SLUICE_GW_IO_URING=0",
                                           NULL};
    const char *const *env = _i == 0 ? env_uring : env_send;
    bool want_uring = _i == 0 && kernel_has_io_uring();
    fx f;
    hx_sl_client *fast;
    hx_ws *lag;
    cJSON *welcome = NULL, *j, *e;
    size_t ev_over, err_over, *lens = calloc(BURST_MSGS, sizeof(size_t)), nmsg = 0;
    char ids[2 * BURST_SWEEP][SL_ID_MAX + 1];
    bool seen[4] = {false, false, false, false}; /* 125, 126, 65535, 65536 */
    double w0, f0, w1, f1;
    int nfast = 0;
    size_t nev = 0, nerr = 0, npong = 0;
    char *probe = filler(40);

    start_gw(&f, env, NULL);
    fprintf(stderr, "burst: %s; io_uring %s\n", _i == 0 ? "default" : "SLUICE_GW_IO_URING=0",
            want_uring ? "expected" : "not expected");
    HX_ASSERT_MSG(f.s, fx_metric(&f, 0, "sluice_gw_io_uring") == (want_uring ? 1 : 0),
                  "sluice_gw_io_uring is %g", fx_metric(&f, 0, "sluice_gw_io_uring"));
    lag = slow_connect(&f, NULL, &welcome);
    fast = fx_client(&f, 0, "acme", "fast");
    HX_OK(f.s, hx_ws_send_text(lag, "{\"type\":\"join\",\"room\":\"burst\"}"));
    j = hx_ws_expect_type(lag, "joined", T);
    HX_ASSERT(f.s, j != NULL);
    cJSON_Delete(j);
    cJSON_Delete(hx_sl_join(fast, "burst", T));

    /* Probes: a frame's length minus its variable part is its envelope. */
    fx_publish_room_msg(&f, "acme", "burst", "writer", "p-0000", probe);
    fx_publish_flush(&f);
    ev_over = probe_len(&f, lag, "event", "p-0000") - strlen(probe);
    HX_OK(f.s, hx_ws_send_text(lag, "{\"type\":\"send\",\"id\":\"p\"}"));
    err_over = probe_len(&f, lag, "error", "p") - 1;
    fprintf(stderr, "burst: envelopes: event %zu, error %zu bytes\n", ev_over, err_over);
    HX_ASSERT(f.s, err_over + 2 * BURST_SWEEP < 126 && 126 < err_over + SL_ID_MAX - BURST_SWEEP);

    ck_assert_ptr_nonnull(lens);
    for (size_t k = 0; k < BURST_FILL; k++)
        lens[nmsg++] = 65000;
    for (size_t k = 0; k < 2 * BURST_SWEEP; k++) {
        lens[nmsg++] = 65536 - BURST_SWEEP + k - ev_over;
        for (size_t t = 0; t < BURST_SMALL; t++)
            lens[nmsg++] = (k * BURST_SMALL + t) % 20; /* 0..19 characters */
    }
    for (size_t i = 0; i < nmsg; i++) {
        char id[16], *text = filler(lens[i]);
        snprintf(id, sizeof(id), "f-%04zu", i); /* fixed width: a constant envelope */
        fx_publish_room_msg(&f, "acme", "burst", "writer", id, text);
        free(text);
    }
    fx_publish_flush(&f);
    /* Once the reading member has all of them, every one was queued for the
     * lagging member too (one fan-out): most wait in its queue. */
    read_flood(&f, fast, &nfast, (int)nmsg, "fast");
    w0 = fx_metric(&f, 0, "sluice_gw_writes_total");
    f0 = fx_metric(&f, 0, "sluice_gw_frames_out_total");
    HX_ASSERT_MSG(f.s, w0 >= 0 && f0 >= 0, "metrics missing: writes %g, frames %g", w0, f0);
    /* Short answers queue behind the events. */
    for (size_t k = 0; k < 2 * BURST_SWEEP; k++) {
        size_t n = 126 - BURST_SWEEP + k - err_over;
        char *frame;
        snprintf(ids[k], sizeof(ids[k]), "e%zu-", k);
        memset(ids[k] + strlen(ids[k]), 'x', n - strlen(ids[k]));
        ids[k][n] = '\0';
        frame = hx_strf("{\"type\":\"send\",\"id\":\"%s\"}", ids[k]);
        HX_OK(f.s, hx_ws_send_text(lag, frame));
        HX_OK(f.s, hx_ws_send_text(lag, "{\"type\":\"ping\"}"));
        free(frame);
    }

    while (nev < nmsg || nerr < 2 * BURST_SWEEP || npong < 2 * BURST_SWEEP) {
        size_t flen;
        const char *id, *kind;

        e = recv_frame(&f, lag, &flen);
        id = hx_json_str(e, "id");
        kind = hx_json_str(e, "kind");
        if (fx__is_type(e, "event") && kind != NULL && strcmp(kind, "message") == 0) {
            char want[16], *text = filler(lens[nev]);
            const char *got = hx_json_str(e, "text");
            snprintf(want, sizeof(want), "f-%04zu", nev);
            HX_ASSERT_MSG(f.s, id != NULL && strcmp(id, want) == 0, "event %s, wanted %s",
                          id ? id : "(none)", want);
            HX_ASSERT_MSG(f.s, got != NULL && strcmp(got, text) == 0,
                          "%s: text of %zu characters differs (frame of %zu bytes)", want,
                          lens[nev], flen);
            free(text);
            nev++;
            seen[2] |= flen == 65535;
            seen[3] |= flen == 65536;
        } else if (fx__is_type(e, "error")) {
            HX_ASSERT_MSG(f.s, nerr < 2 * BURST_SWEEP && id != NULL && strcmp(id, ids[nerr]) == 0,
                          "error for %s, wanted %s", id ? id : "(none)",
                          nerr < 2 * BURST_SWEEP ? ids[nerr] : "none");
            HX_ASSERT(f.s, flen == 126 - BURST_SWEEP + nerr);
            nerr++;
            seen[0] |= flen == 125;
            seen[1] |= flen == 126;
        } else if (fx__is_type(e, "pong")) {
            HX_ASSERT(f.s, flen == strlen("{\"type\":\"pong\"}"));
            npong++;
            HX_ASSERT_MSG(f.s, npong <= nerr, "pong %zu before error %zu", npong, nerr);
        }
        cJSON_Delete(e);
    }
    HX_ASSERT_MSG(f.s, seen[0] && seen[1] && seen[2] && seen[3],
                  "frame lengths missed a header boundary: 125 %d 126 %d 65535 %d 65536 %d",
                  seen[0], seen[1], seen[2], seen[3]);
    w1 = fx_metric(&f, 0, "sluice_gw_writes_total");
    f1 = fx_metric(&f, 0, "sluice_gw_frames_out_total");
    fprintf(stderr, "burst: %zu events; after the fast reader: %g frames in %g writes\n", nmsg,
            f1 - f0, w1 - w0);
    HX_ASSERT_MSG(f.s, f1 - f0 >= 2 * BURST_SWEEP * (BURST_SMALL + 1),
                  "only %g of %zu frames were left for the lagging reader", f1 - f0, nmsg);
    HX_ASSERT_MSG(f.s, w1 - w0 < f1 - f0, "%g frames took %g writes: not batched", f1 - f0,
                  w1 - w0);
    HX_ASSERT_MSG(f.s, (fx_metric(&f, 0, "sluice_gw_uring_submits_total") > 0) == want_uring,
                  "io_uring submissions: %g", fx_metric(&f, 0, "sluice_gw_uring_submits_total"));
    free(probe);
    free(lens);
    cJSON_Delete(welcome);
    hx_ws_destroy(lag);
    hx_sl_destroy(fast);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

/* ---- memory under a flood ---- */

#define RSS_FLOOD     20000
#define RSS_MSG_BYTES 1000

/* SLUICE_SOCKET_SNDBUF: every client socket of the gateway has that send
 * buffer (the kernel reports twice the value set; with autotuning it would
 * start at tcp_wmem's default and grow). Read with ss(8) from iproute2. */
START_TEST(test_client_sockets_get_the_configured_send_buffer)
{
    static const char *const env[] = {"SLUICE_SOCKET_SNDBUF=200000", NULL};
    fx f;
    hx_sl_client *a, *b;
    char cmd[160], line[512];
    int seen = 0, wrong = 0;
    FILE *p;

    start_gw(&f, env, NULL);
    a = fx_client(&f, 0, "acme", "a");
    b = fx_client(&f, 0, "acme", "b");
    snprintf(cmd, sizeof(cmd), "ss -tmnH state established '( sport = :%d )' 2>&1",
             hx_stack_gw_port(f.s, 0));
    p = popen(cmd, "r");
    HX_ASSERT(f.s, p != NULL);
    while (fgets(line, sizeof(line), p) != NULL) {
        const char *tb = strstr(line, ",tb");
        if (tb == NULL)
            continue;
        seen++;
        if (strtol(tb + 3, NULL, 10) != 400000) {
            wrong++;
            fprintf(stderr, "socket with %s", line);
        }
    }
    pclose(p);
    HX_ASSERT_MSG(f.s, seen >= 2, "ss showed %d gateway client sockets (%s)", seen, cmd);
    HX_ASSERT_MSG(f.s, wrong == 0, "%d of %d client sockets without the configured buffer", wrong,
                  seen);
    hx_sl_destroy(a);
    hx_sl_destroy(b);
    fx_stop(&f);
}
END_TEST

START_TEST(test_rss_bounded_while_stopped_client_room_flooded)
{
    /* The default bounds (4096 frames, 1 MiB) made explicit. Under ASan a
     * small quarantine, or freed memory would stay resident and RSS would
     * measure the sanitizer. */
    static const char *const gw_env[] = {"SLUICE_OUTQ_MAX_FRAMES=4096",
                                         "SLUICE_OUTQ_MAX_BYTES=1048576", NULL};
    static const char *const env[] = {
        "ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66:quarantine_size_mb=1:"
        "thread_local_quarantine_size_kb=64",
        NULL};
    fx f;
    hx_sl_client *stopped, *reader;
    int nr = 0;
    long before, after, peak = 0;
    double closes;
    int code;
    pid_t pid;
    char *text = filler(RSS_MSG_BYTES);
    const long allowance_kib = 16 * 1024; /* < the 20 MB that would pile up unbounded */

    start_gw(&f, gw_env, env);
    pid = hx_proc_pid(hx_stack_proc(f.s, HX_GATEWAY, 0));
    stopped = fx_client(&f, 0, "acme", "stopped");
    reader = fx_client(&f, 0, "acme", "reader");
    cJSON_Delete(hx_sl_join(stopped, "big", T));
    cJSON_Delete(hx_sl_join(reader, "big", T));
    /* Warm up every path (and allocator size class) first. */
    for (int i = 0; i < 500; i++) {
        char id[16];
        snprintf(id, sizeof(id), "f-%d", i);
        fx_publish_room_msg(&f, "acme", "big", "writer", id, text);
    }
    fx_publish_flush(&f);
    read_flood(&f, reader, &nr, 500, "reader");
    before = fx_rss_kib(pid);
    HX_ASSERT(f.s, before > 0);
    for (int i = 500; i < RSS_FLOOD; i++) {
        char id[16];
        snprintf(id, sizeof(id), "f-%d", i);
        fx_publish_room_msg(&f, "acme", "big", "writer", id, text);
        if (i % 200 == 199) {
            long now;
            read_flood(&f, reader, &nr, i + 1, "reader");
            now = fx_rss_kib(pid);
            if (now > peak)
                peak = now;
        }
    }
    fx_publish_flush(&f);
    read_flood(&f, reader, &nr, RSS_FLOOD, "reader");
    after = fx_rss_kib(pid);
    if (after > peak)
        peak = after;
    fprintf(stderr, "gateway RSS: %ld KiB before, %ld KiB after, %ld KiB peak (%d x %d B flood)\n",
            before, after, peak, RSS_FLOOD, RSS_MSG_BYTES);
    HX_ASSERT_MSG(f.s, peak < before + allowance_kib,
                  "gateway RSS grew from %ld KiB to %ld KiB (peak) while a stopped client's room "
                  "got %d MB",
                  before, peak, RSS_FLOOD * RSS_MSG_BYTES / 1000000);
    /* Which close, if any, the stopped client got, and the counter as
     * read: a failure says what happened instead of the last harness
     * error, which may be left over from the start (the readiness probe's
     * refused connections before the gateway listened). */
    closes = fx_metric(&f, 0, "sluice_gw_slow_consumer_closes_total");
    code = fx_wait_close(hx_sl_ws(stopped), T);
    HX_ASSERT_MSG(f.s, closes == 1 && code == 4429,
                  "sluice_gw_slow_consumer_closes_total is %g, the stopped client's close %d (%s), "
                  "wanted 1 and 4429 (gateway %s; /metrics: %s)",
                  closes, code, hx_ws_close_reason(hx_sl_ws(stopped)),
                  hx_proc_alive(hx_stack_proc(f.s, HX_GATEWAY, 0)) ? "running" : "gone",
                  closes < 0 ? hx_error() : "read");
    HX_ASSERT(f.s, hx_sl_get_counts(reader).duplicates == 0);
    free(text);
    hx_sl_destroy(stopped);
    hx_sl_destroy(reader);
    fx_stop(&f);
}
END_TEST

/* ---- reconnect storms ---- */

#define STORM 40

START_TEST(test_handshake_storm_refused_1013)
{
    static const char *const env[] = {"SLUICE_HANDSHAKE_RATE=2", "SLUICE_HANDSHAKE_BURST=5", NULL};
    fx f;
    hx_ws *ws[STORM];
    const char *tok;
    int welcomed = 0, refused = 0, http503 = 0;
    int64_t t0, elapsed;
    double metric;

    start_gw(&f, env, NULL);
    tok = fx_token(&f, "acme", "storm");
    t0 = hx_now_ms();
    for (int i = 0; i < STORM; i++) {
        hx_ws_handshake hs;
        hx_ws_opts o = {.port = hx_stack_gw_port(f.s, 0),
                        .path = HX_SL_PATH,
                        .subprotocol = HX_SL_SUBPROTOCOL,
                        .timeout_ms = T};
        ws[i] = NULL;
        int code = hx_ws_connect_opts(&ws[i], &o, &hs);
        if (code == 503) {
            http503++;
            continue;
        }
        HX_ASSERT_MSG(f.s, code == 101, "connection %d: %d %s", i, code, hx_error());
    }
    for (int i = 0; i < STORM; i++) {
        sl_status st;
        if (ws[i] == NULL)
            continue;
        st = hx_sl_hello(ws[i], tok, NULL, T, NULL);
        if (st == SL_OK) {
            welcomed++;
        } else {
            int code =
                hx_ws_close_code(ws[i]) >= 0 ? hx_ws_close_code(ws[i]) : fx_wait_close(ws[i], T);
            HX_ASSERT_MSG(f.s, code == 1013, "connection %d refused with close %d (%s)", i, code,
                          hx_error());
            refused++;
        }
    }
    elapsed = hx_now_ms() - t0;
    HX_ASSERT_MSG(f.s, welcomed >= 5, "only %d of the burst of 5 got in", welcomed);
    HX_ASSERT_MSG(f.s, welcomed <= 5 + 2 * (elapsed / 1000 + 1),
                  "%d got in within %lld ms at rate 2/s, burst 5", welcomed, (long long)elapsed);
    HX_ASSERT_MSG(f.s, refused >= 1, "no connection was refused with 1013");
    HX_ASSERT(f.s, welcomed + refused + http503 == STORM);
    metric = fx_metric(&f, 0, "sluice_gw_handshake_refusals_total");
    HX_ASSERT_MSG(f.s, metric == refused + http503, "refusals metric %g, refused %d + %d", metric,
                  refused, http503);
    for (int i = 0; i < STORM; i++)
        hx_ws_destroy(ws[i]);
    /* A client backing off as told gets in. */
    for (int attempt = 0; attempt < 20; attempt++) {
        hx_ws *w = fx_raw(&f, 0);
        sl_status st = hx_sl_hello(w, tok, NULL, T, NULL);
        hx_ws_destroy(w);
        if (st == SL_OK)
            break;
        HX_ASSERT(f.s, attempt < 19);
        hx_sleep_ms(600); /* the refill time of one token at 2/s, plus margin */
    }
    fx_stop(&f);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gateway limits");
    TCase *tc = tcase_create("limits");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 150);
    tcase_add_test(tc, test_rate_limit_busy_without_touching_nats);
    tcase_add_test(tc, test_refused_frames_take_tokens);
    tcase_add_test(tc, test_slow_consumer_cut_4429_others_unaffected);
    tcase_add_loop_test(tc, test_burst_to_lagging_reader_whole_in_order_and_batched, 0, 2);
    tcase_add_test(tc, test_client_sockets_get_the_configured_send_buffer);
    tcase_add_test(tc, test_rss_bounded_while_stopped_client_room_flooded);
    tcase_add_test(tc, test_handshake_storm_refused_1013);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
