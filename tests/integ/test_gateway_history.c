/* History reads (shared/PROTOCOL.md `history`): pages are bounded by bytes
 * as well as by count and say where to continue (more, next_before), so a
 * channel of large events is paged through without the requester being cut
 * (4429); reads are capped per connection and per tenant (busy
 * history_busy), and a flood of them does not hold up another tenant's
 * join or resume on the same gateway. Room traffic is written straight to
 * SLUICE_OUT by the test (as the orchestrator would). */
#include "test_gateway_fx.h"

#define T 15000

static cJSON *want(fx *f, hx_ws *ws, const char *pattern)
{
    cJSON *fr = hx_ws_expect(ws, pattern, T);
    HX_ASSERT_MSG(f->s, fr != NULL, "no frame like %s: %s", pattern, hx_error());
    return fr;
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

/* ---- pages bounded by bytes ---- */

#define BIG_N     50
#define BIG_BYTES (21 * 1024)

START_TEST(test_history_pages_large_events_by_bytes)
{
    fx f;
    fx_opts o = {.gateways = 1};
    hx_ws *ws;
    char *text = filler(BIG_BYTES), *req;
    int seen[BIG_N] = {0}, nseen = 0, pages = 0;
    int64_t before = 0, prev_oldest = INT64_MAX;
    bool more = true;

    fx_start(&f, &o);
    for (int i = 0; i < BIG_N; i++) {
        char id[16];
        snprintf(id, sizeof(id), "b-%d", i);
        fx_publish_room_msg(&f, "acme", "big", "writer", id, text);
    }
    fx_publish_flush(&f);
    ws = fx_raw_hello(&f, 0, "acme", "reader");
    /* 50 x 21 KiB is more than the 1 MiB outbound bound: one page of all
     * of them would cut the reader with 4429. */
    while (more) {
        cJSON *h, *ev;
        int64_t oldest = INT64_MAX, newest = 0;
        HX_ASSERT_MSG(f.s, pages < BIG_N, "no end after %d pages", pages);
        req = before > 0 ? hx_strf("{\"type\":\"history\",\"ch\":\"r:big\",\"limit\":200,"
                                   "\"before\":%lld,\"id\":\"h-%d\"}",
                                   (long long)before, pages)
                         : hx_strf("{\"type\":\"history\",\"ch\":\"r:big\",\"limit\":200,"
                                   "\"id\":\"h-%d\"}",
                                   pages);
        HX_OK(f.s, hx_ws_send_text(ws, req));
        free(req);
        h = hx_ws_expect_type(ws, "history", T);
        HX_ASSERT_MSG(f.s, h != NULL, "page %d: %s (close %d)", pages, hx_error(),
                      hx_ws_close_code(ws));
        {
            char *txt = cJSON_PrintUnformatted(h);
            HX_ASSERT_MSG(f.s, strlen(txt) <= 512 * 1024 + 1024,
                          "page %d is %zu bytes, over half the outbound bound", pages, strlen(txt));
            cJSON_free(txt);
        }
        cJSON_ArrayForEach(ev, cJSON_GetObjectItemCaseSensitive(h, "events"))
        {
            int64_t seq = hx_json_int(ev, "seq", -1);
            const char *id = hx_json_str(ev, "id");
            HX_ASSERT_MSG(f.s, seq > newest, "page %d out of order", pages);
            newest = seq;
            if (seq < oldest)
                oldest = seq;
            if (id != NULL && strncmp(id, "b-", 2) == 0) {
                int k = atoi(id + 2);
                HX_ASSERT_MSG(f.s, k >= 0 && k < BIG_N && !seen[k], "b-%d twice or unknown", k);
                seen[k] = 1;
                nseen++;
            }
        }
        HX_ASSERT_MSG(f.s, newest < prev_oldest, "page %d overlaps the one before", pages);
        more = hx_json_true(h, "more");
        {
            char want_id[16];
            snprintf(want_id, sizeof(want_id), "h-%d", pages);
            HX_ASSERT_MSG(f.s, hx_json_str(h, "id") && strcmp(hx_json_str(h, "id"), want_id) == 0,
                          "page %d does not echo the request's id", pages);
        }
        if (more) {
            HX_ASSERT_MSG(f.s, hx_json_int(h, "next_before", -1) == oldest,
                          "page %d: next_before %lld, oldest event %lld", pages,
                          (long long)hx_json_int(h, "next_before", -1), (long long)oldest);
            before = oldest;
            prev_oldest = oldest;
        }
        pages++;
        cJSON_Delete(h);
    }
    HX_ASSERT_MSG(f.s, nseen == BIG_N, "paged through %d of %d events", nseen, BIG_N);
    HX_ASSERT_MSG(f.s, pages >= 3, "%d pages for %d KiB: not cut by bytes", pages,
                  BIG_N * BIG_BYTES / 1024);
    fx_ping(&f, ws); /* still connected */
    HX_ASSERT(f.s, fx_metric(&f, 0, "sluice_gw_slow_consumer_closes_total") == 0);
    hx_ws_destroy(ws);
    free(text);
    fx_stop(&f);
}
END_TEST

/* ---- a flood of history reads from one tenant ---- */

#define FLOOD_EVENTS 3000
#define FLOODERS     10

typedef struct gauge_wait {
    fx *f;
    const char *series;
    double want;
} gauge_wait;

static bool gauge_is(void *ud)
{
    gauge_wait *w = ud;
    return fx_metric(w->f, 0, w->series) == w->want;
}

typedef struct flooder {
    hx_ws *ws;
    int pages, busy;
} flooder;

/* Takes the answers fl has received so far (waiting up to timeout_ms for
 * each next one); returns the history pages among them. */
static int take_answers(fx *f, flooder *fl, int timeout_ms)
{
    int pages = 0;

    while (fl->pages + fl->busy < 2) {
        cJSON *e = hx_ws_recv_json(fl->ws, timeout_ms);
        if (e == NULL) {
            HX_ASSERT_MSG(f->s, hx_ws_last_result(fl->ws) == HX_WS_TIMEOUT, "flooder: %s",
                          hx_error());
            break;
        }
        if (fx__is_type(e, "history")) {
            HX_ASSERT(f->s, cJSON_GetArraySize(cJSON_GetObjectItem(e, "events")) == 200);
            HX_ASSERT(f->s, hx_json_true(e, "more"));
            fl->pages++;
            pages++;
        } else if (fx__is_type(e, "busy")) {
            HX_ASSERT_MSG(f->s,
                          strcmp(hx_json_str(e, "reason"), "history_busy") == 0 &&
                              hx_json_int(e, "retry_after_ms", -1) > 0,
                          "flooder: %s", cJSON_PrintUnformatted(e));
            fl->busy++;
        }
        cJSON_Delete(e);
    }
    return pages;
}

START_TEST(test_history_flood_keeps_other_tenants_fast)
{
    static const char *const gw_env[] = {"SLUICE_RATE=1000", "SLUICE_BURST=1000", NULL};
    fx f;
    fx_opts o = {.gateways = 1, .gw_env = gw_env};
    flooder flood[FLOODERS];
    hx_sl_client *quiet;
    gauge_wait w;
    int answers = 0, busy = 0, early = 0;
    double inflight;

    fx_start(&f, &o);
    for (int i = 0; i < FLOOD_EVENTS; i++) {
        char id[16];
        snprintf(id, sizeof(id), "n-%d", i);
        fx_publish_room_msg(&f, "noisy", "hist", "writer", id, "some history");
    }
    fx_publish_flush(&f);
    quiet = fx_client(&f, 0, "quiet", "alice");
    cJSON_Delete(hx_sl_join(quiet, "mine", T));
    fx_publish_room_msg(&f, "quiet", "mine", "bob", "q-0", "before");
    fx_publish_flush(&f);
    cJSON_Delete(
        want(&f, hx_sl_ws(quiet),
             "{\"type\":\"event\",\"ch\":\"r:mine\",\"kind\":\"message\",\"id\":\"q-0\"}"));
    memset(flood, 0, sizeof(flood));
    for (int i = 0; i < FLOODERS; i++)
        flood[i].ws = fx_raw_hello(&f, 0, "noisy", "flooder");
    /* Two requests per connection: 20 for the tenant, whose cap is 8. */
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < FLOODERS; i++)
            HX_OK(f.s, hx_ws_send_text(flood[i].ws, "{\"type\":\"history\",\"ch\":\"r:hist\","
                                                    "\"limit\":200,\"before\":2000}"));
    }
    w.f = &f;
    w.series = "sluice_gw_history_reads_inflight";
    w.want = 8;
    HX_ASSERT_MSG(f.s, hx_wait_until(gauge_is, &w, T), "the tenant's reads in flight: %g, wanted 8",
                  fx_metric(&f, 0, "sluice_gw_history_reads_inflight"));
    /* Another tenant joins and resumes meanwhile: both are answered while
     * the flood's reads are still queued or running (ordering, read from
     * the gateway's gauge and the answers already received). */
    {
        cJSON *j = hx_sl_join(quiet, "other", T);
        HX_ASSERT_MSG(f.s, j != NULL, "quiet join: %s", hx_error());
        cJSON_Delete(j);
        inflight = fx_metric(&f, 0, "sluice_gw_history_reads_inflight");
        for (int i = 0; i < FLOODERS; i++)
            early += take_answers(&f, &flood[i], 0);
        /* At most the read running when the join came may be done. */
        HX_ASSERT_MSG(f.s, inflight > 0 && early <= 1,
                      "the join came after the flood: %g reads in flight, %d pages before it",
                      inflight, early);
    }
    fx_publish_room_msg(&f, "quiet", "mine", "bob", "q-1", "while away");
    fx_publish_flush(&f);
    HX_OK(f.s, hx_sl_reconnect(quiet, hx_stack_gw_port(f.s, 0), T));
    cJSON_Delete(
        want(&f, hx_sl_ws(quiet),
             "{\"type\":\"event\",\"ch\":\"r:mine\",\"kind\":\"message\",\"id\":\"q-1\"}"));
    inflight = fx_metric(&f, 0, "sluice_gw_history_reads_inflight");
    for (int i = 0; i < FLOODERS; i++)
        early += take_answers(&f, &flood[i], 0);
    HX_ASSERT_MSG(f.s, inflight > 0 && early < 8,
                  "the resume came after the flood: %g reads in flight, %d pages before it",
                  inflight, early);
    /* Every request gets its answer: a page or busy history_busy. */
    for (int i = 0; i < FLOODERS; i++) {
        take_answers(&f, &flood[i], T);
        HX_ASSERT_MSG(f.s, flood[i].pages + flood[i].busy == 2, "flooder %d: %d pages, %d busy", i,
                      flood[i].pages, flood[i].busy);
        answers += flood[i].pages;
        busy += flood[i].busy;
    }
    HX_ASSERT_MSG(f.s, answers + busy == 2 * FLOODERS && answers == 8 && busy >= 1,
                  "%d pages, %d busy", answers, busy);
    HX_ASSERT(f.s, fx_metric(&f, 0, "sluice_gw_busy_total{reason=\"history_busy\"}") == busy);
    w.want = 0;
    HX_ASSERT(f.s, hx_wait_until(gauge_is, &w, T));
    for (int i = 0; i < FLOODERS; i++)
        hx_ws_destroy(flood[i].ws);
    hx_sl_destroy(quiet);
    fx_stop(&f);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gateway history");
    TCase *tc = tcase_create("history");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_history_pages_large_events_by_bytes);
    tcase_add_test(tc, test_history_flood_keeps_other_tenants_fast);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
