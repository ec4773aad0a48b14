/* The gateway's channel cache: a member that resumes on the same gateway
 * is served from memory (no stream reads), sees every event exactly once
 * and in order; with the cache off, the same resume reads the stream and
 * gives the same events. Real nats-server, real gateway. */
#include <sys/socket.h>

#include "test_gateway_fx.h"

#define T 15000

static cJSON *want(fx *f, hx_ws *ws, const char *pattern)
{
    cJSON *fr = hx_ws_expect(ws, pattern, T);
    HX_ASSERT_MSG(f->s, fr != NULL, "no frame like %s: %s", pattern, hx_error());
    return fr;
}

/* Drops alice's connection mid-conversation, publishes more, resumes on the
 * same gateway and checks the replay. Returns the cached-replay counter's
 * increase. */
static double drop_publish_resume(const char *const *gw_env)
{
    fx f;
    fx_opts o = {.gateways = 1, .gw_env = gw_env};
    hx_sl_client *c;
    double cached_before;
    int next = 0;

    fx_start(&f, &o);
    c = fx_client(&f, 0, "acme", "alice");
    {
        cJSON *j = hx_sl_join(c, "cache", T);
        HX_ASSERT(f.s, j != NULL);
        cJSON_Delete(j);
    }
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "k-%d", i);
        fx_publish_room_msg(&f, "acme", "cache", "bob", id, "before");
    }
    fx_publish_flush(&f);
    for (int i = 0; i < 5; i++) {
        char *pat = hx_strf("{\"type\":\"event\",\"ch\":\"r:cache\",\"kind\":\"message\","
                            "\"id\":\"k-%d\"}",
                            i);
        cJSON_Delete(want(&f, hx_sl_ws(c), pat));
        free(pat);
    }
    cached_before = fx_metric(&f, 0, "sluice_gw_replays_cached_total");
    /* Gone without a close frame, like a lost network. */
    shutdown(hx_ws_fd(hx_sl_ws(c)), SHUT_RDWR);
    for (int i = 5; i < 25; i++) {
        char id[16];
        snprintf(id, sizeof(id), "k-%d", i);
        fx_publish_room_msg(&f, "acme", "cache", "bob", id, "while away");
    }
    fx_publish_flush(&f);
    HX_OK(f.s, hx_sl_reconnect(c, hx_stack_gw_port(f.s, 0), T));
    next = 5;
    for (int k = 0; k < 200 && next < 25; k++) {
        cJSON *e = hx_ws_recv_json(hx_sl_ws(c), T);
        HX_ASSERT_MSG(f.s, e != NULL, "replay stopped at k-%d: %s", next, hx_error());
        if (fx__is_type(e, "event") && strcmp(hx_json_str(e, "kind"), "message") == 0) {
            char want_id[16];
            snprintf(want_id, sizeof(want_id), "k-%d", next);
            HX_ASSERT_MSG(f.s, strcmp(hx_json_str(e, "id"), want_id) == 0, "got %s, want %s",
                          hx_json_str(e, "id"), want_id);
            next++;
        }
        cJSON_Delete(e);
    }
    HX_ASSERT_MSG(f.s, next == 25, "replayed up to k-%d", next - 1);
    HX_ASSERT(f.s, hx_sl_get_counts(c).duplicates == 0 && hx_sl_get_counts(c).gaps == 0);
    {
        double d = fx_metric(&f, 0, "sluice_gw_replays_cached_total") - cached_before;
        hx_sl_destroy(c);
        fx_stop(&f);
        return d;
    }
}

START_TEST(test_resume_on_same_gateway_uses_the_cache)
{
    static const char *const env[] = {"SLUICE_DRAIN_GRACE_MS=200", NULL};
    ck_assert_msg(drop_publish_resume(env) >= 1, "the resume did not use the cache");
}
END_TEST

START_TEST(test_resume_without_cache_reads_the_stream)
{
    static const char *const env[] = {"SLUICE_DRAIN_GRACE_MS=200", "SLUICE_CHAN_CACHE=0", NULL};
    ck_assert_msg(drop_publish_resume(env) == 0, "cache used although it is off");
}
END_TEST

/* A resume from below what the cache holds (8 events; 20 came while away):
 * only the part the cache no longer has is read from the stream, the rest
 * comes from the cache, in order, without a duplicate or a gap. */
START_TEST(test_resume_below_the_cache_reads_only_the_missing_part)
{
    static const char *const env[] = {"SLUICE_DRAIN_GRACE_MS=200", "SLUICE_CHAN_CACHE=8", NULL};
    double d = drop_publish_resume(env);
    /* One cached replay is the session channel's; the room's tail is the
     * second. */
    ck_assert_msg(d >= 2, "the part the cache holds was read from the stream too (%g cached)", d);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gateway cache");
    TCase *tc = tcase_create("cache");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_resume_on_same_gateway_uses_the_cache);
    tcase_add_test(tc, test_resume_without_cache_reads_the_stream);
    tcase_add_test(tc, test_resume_below_the_cache_reads_only_the_missing_part);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
