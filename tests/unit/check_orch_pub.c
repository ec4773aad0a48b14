/* Tests of orch_pub against a real nats-server: outcomes read from the
 * acknowledgments (sequence, duplicate, JetStream error code, no stream),
 * and an acknowledgment of an earlier round never answers a slot of the
 * next one. */
#include <check.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hx.h"
#include "hx_nats.h"
#include "orch_pub.h"

#define WAIT_MS 5000

typedef struct fixture {
    hx_nats *n;
    natsConnection *nc;
    orch_pub *p;
} fixture;

static void fx_start(fixture *fx)
{
    jsCtx *js = NULL;
    jsStreamConfig sc;
    jsStreamInfo *si = NULL;
    const char *subjects[] = {"t.>"};
    jsErrCode jerr = 0;

    memset(fx, 0, sizeof(*fx));
    HX_OK(NULL, hx_nats_start(&fx->n, NULL, NULL));
    ck_assert_int_eq(natsConnection_ConnectTo(&fx->nc, hx_nats_url(fx->n)), NATS_OK);
    ck_assert_int_eq(natsConnection_JetStream(&js, fx->nc, NULL), NATS_OK);
    jsStreamConfig_Init(&sc);
    sc.Name = "T";
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_MemoryStorage;
    ck_assert_int_eq(js_AddStream(&si, js, &sc, NULL, &jerr), NATS_OK);
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    ck_assert_int_eq(orch_pub_create(&fx->p, fx->nc), SL_OK);
}

static void fx_stop(fixture *fx)
{
    orch_pub_destroy(fx->p);
    natsConnection_Destroy(fx->nc);
    hx_nats_destroy(fx->n);
}

START_TEST(test_outcomes)
{
    fixture fx;
    int a = -1, b = -1, dup = -1, cas = -1, none = -1;
    orch_pub_result r;

    fx_start(&fx);
    ck_assert_int_eq(orch_pub_create(NULL, fx.nc), SL_ERR_INVAL);
    orch_pub_reset(fx.p);
    ck_assert(!orch_pub_outstanding(fx.p));
    ck_assert_int_eq(orch_pub_add(fx.p, "t.a", "id-a", "1", 1, &a), SL_OK);
    ck_assert_int_eq(orch_pub_add(fx.p, "t.b", "id-b", "2", 1, &b), SL_OK);
    ck_assert_int_eq(orch_pub_add(fx.p, "t.a", "id-a", "1", 1, &dup), SL_OK);
    /* t.b is at sequence 2: expecting 1 loses (10071, wrong last sequence). */
    ck_assert_int_eq(orch_pub_add_hdr(fx.p, "t.b", "id-c", "3", 1,
                                      "Nats-Expected-Last-Subject-Sequence", "1", &cas),
                     SL_OK);
    /* No stream listens: the server answers 503 (no responders). */
    ck_assert_int_eq(orch_pub_add(fx.p, "nostream.x", "id-d", "4", 1, &none), SL_OK);
    ck_assert(orch_pub_outstanding(fx.p));
    ck_assert_int_eq(orch_pub_wait(fx.p, WAIT_MS), SL_OK);
    ck_assert(!orch_pub_outstanding(fx.p));

    r = orch_pub_get(fx.p, a);
    ck_assert(r.done && r.err == NATS_OK && !r.duplicate);
    ck_assert_uint_eq(r.seq, 1);
    r = orch_pub_get(fx.p, b);
    ck_assert(r.done && r.err == NATS_OK && !r.duplicate);
    ck_assert_uint_eq(r.seq, 2);
    r = orch_pub_get(fx.p, dup);
    ck_assert(r.done && r.err == NATS_OK && r.duplicate);
    ck_assert(orch_pub_ok(fx.p, dup));
    r = orch_pub_get(fx.p, cas);
    ck_assert(r.done && r.err != NATS_OK);
    ck_assert_int_eq(r.jerr, 10071);
    ck_assert(!orch_pub_ok(fx.p, cas));
    r = orch_pub_get(fx.p, none);
    ck_assert(r.done);
    ck_assert_int_eq(r.err, NATS_NO_RESPONDERS);
    ck_assert(!orch_pub_ok(fx.p, -1));
    ck_assert(!orch_pub_ok(fx.p, none + 1));
    fx_stop(&fx);
}
END_TEST

/* A round left without waiting (as after a timeout) acknowledges late:
 * that acknowledgment comes first on the wire but must not be taken as the
 * outcome of the next round's slot with the same index. */
START_TEST(test_earlier_round_dropped)
{
    fixture fx;
    int s0 = -1, s1 = -1;
    orch_pub_result r;

    fx_start(&fx);
    orch_pub_reset(fx.p);
    ck_assert_int_eq(orch_pub_add(fx.p, "t.a", "old-0", "1", 1, &s0), SL_OK);
    ck_assert_int_eq(s0, 0);
    orch_pub_reset(fx.p);
    ck_assert_int_eq(orch_pub_add(fx.p, "nostream.x", "new-0", "2", 1, &s1), SL_OK);
    ck_assert_int_eq(s1, 0);
    ck_assert_int_eq(orch_pub_wait(fx.p, WAIT_MS), SL_OK);
    r = orch_pub_get(fx.p, s1);
    ck_assert(r.done);
    ck_assert_int_eq(r.err, NATS_NO_RESPONDERS);
    ck_assert_uint_eq(r.seq, 0);

    /* The next round works as usual; t.a holds the old round's message. */
    orch_pub_reset(fx.p);
    ck_assert_int_eq(orch_pub_add(fx.p, "t.a", "new-1", "3", 1, &s0), SL_OK);
    ck_assert_int_eq(orch_pub_wait(fx.p, WAIT_MS), SL_OK);
    r = orch_pub_get(fx.p, s0);
    ck_assert(r.done && r.err == NATS_OK && !r.duplicate);
    ck_assert_uint_eq(r.seq, 2);
    fx_stop(&fx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("orch_pub");
    TCase *tc = tcase_create("core");

    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_outcomes);
    tcase_add_test(tc, test_earlier_round_dropped);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
