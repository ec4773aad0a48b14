/* Coalesced presence (docs/wire.md, sluice_presence; docs/protocol.md,
 * presence events) on two gateways: a join storm costs a few presence
 * events and record writes, not one of each per member, and still lists
 * every member exactly once; the other gateway's members see everyone in
 * `joined.members`; leaves and disconnects arrive; one-member entries of
 * older gateways are still read (each session once); a gateway that stops
 * deletes its records. The flush interval is long (1 s) so that the storm's
 * joins, sent back to back, fall into few intervals. */
#include "test_gateway_fx.h"

#define T       15000 /* ms to wait for any one frame */
#define STORM_N 40
#define SPLIT_N 250 /* more than one event carries (200) */

static const char *const gw_env[] = {"SLUICE_PRESENCE_FLUSH_MS=1000", "SLUICE_DRAIN_GRACE_MS=500",
                                     NULL};

static void start(fx *f)
{
    fx_opts o = {.gateways = 2, .gw_env = gw_env};
    fx_start(f, &o);
}

static cJSON *join(fx *f, hx_sl_client *c, const char *room)
{
    cJSON *j = hx_sl_join(c, room, T);
    HX_ASSERT_MSG(f->s, j != NULL, "join %s: %s", room, hx_error());
    return j;
}

typedef struct rec_wait {
    fx *f;
    const char *room, *session;
} rec_wait;

static bool rec_lists(void *ud)
{
    rec_wait *w = ud;
    int nrec;
    char *key = fx_presence_record_of(w->f, "acme", w->room, w->session, &nrec);
    bool found = key != NULL;

    free(key);
    return found;
}

static void wait_record(fx *f, const char *room, hx_sl_client *c)
{
    rec_wait w = {.f = f, .room = room, .session = hx_sl_session(c)};
    HX_ASSERT_MSG(f->s, hx_wait_until(rec_lists, &w, T), "no record of %s lists %s", room,
                  w.session);
}

/* Entries of any form under "acme.<room>.*". */
static int room_entries(fx *f, const char *room)
{
    kvStore *kv = NULL;
    kvWatcher *w = NULL;
    kvWatchOptions wo;
    char filter[128];
    int n = 0;

    snprintf(filter, sizeof(filter), "acme.%s.*", room);
    HX_ASSERT(f->s, js_KeyValue(&kv, f->js, SL_KV_PRESENCE) == NATS_OK);
    kvWatchOptions_Init(&wo);
    wo.IgnoreDeletes = true;
    HX_ASSERT(f->s, kvStore_Watch(&w, kv, filter, &wo) == NATS_OK);
    for (;;) {
        kvEntry *e = NULL;
        if (kvWatcher_Next(&e, w, 2000) != NATS_OK || e == NULL)
            break;
        n++;
        kvEntry_Destroy(e);
    }
    kvWatcher_Destroy(w);
    kvStore_Destroy(kv);
    return n;
}

/* The changes a presence event of ch carries (one or several), as an
 * array the caller frees; NULL for any other frame. */
static cJSON *presence_changes(const cJSON *fr, const char *ch)
{
    const cJSON *changes;
    cJSON *out, *one;

    if (!fx__is_type(fr, "event") || hx_json_str(fr, "kind") == NULL ||
        strcmp(hx_json_str(fr, "kind"), "presence") != 0 || hx_json_str(fr, "ch") == NULL ||
        strcmp(hx_json_str(fr, "ch"), ch) != 0)
        return NULL;
    changes = cJSON_GetObjectItemCaseSensitive(fr, "changes");
    if (changes != NULL)
        return cJSON_Duplicate(changes, 1);
    out = cJSON_CreateArray();
    one = cJSON_CreateObject();
    cJSON_AddStringToObject(one, "action", hx_json_str(fr, "action"));
    cJSON_AddStringToObject(one, "user", hx_json_str(fr, "user"));
    cJSON_AddStringToObject(one, "session", hx_json_str(fr, "session"));
    cJSON_AddItemToArray(out, one);
    return out;
}

static bool has_member(const cJSON *joined, const char *user, const char *session, int *times)
{
    const cJSON *m;

    *times = 0;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(joined, "members"))
    {
        if (hx_json_str(m, "session") && strcmp(hx_json_str(m, "session"), session) == 0 &&
            hx_json_str(m, "user") && strcmp(hx_json_str(m, "user"), user) == 0)
            (*times)++;
    }
    return *times > 0;
}

/* Reads ws until the presence events of ch carried (action[i], sess[i]) for
 * every i < n; returns how many presence events that took (and the most
 * changes one of them carried in *most, when not NULL). Each of those
 * sessions must come with that action, once. */
static int want_changes_most(fx *f, hx_ws *ws, const char *ch, const char *const *action,
                             char *const *sess, int n, int *most)
{
    int seen[SPLIT_N] = {0}, left = n, events = 0;
    int64_t deadline = hx_now_ms() + T;

    ck_assert_int_le(n, SPLIT_N);
    if (most != NULL)
        *most = 0;
    while (left > 0) {
        cJSON *fr = hx_ws_recv_json(ws, (int)(deadline - hx_now_ms()) + 1), *chg, *it;
        HX_ASSERT_MSG(f->s, fr != NULL && hx_now_ms() <= deadline,
                      "%d %s changes never arrived on %s: %s", left, action[0], ch, hx_error());
        chg = presence_changes(fr, ch);
        cJSON_Delete(fr);
        if (chg == NULL)
            continue;
        events++;
        if (most != NULL && cJSON_GetArraySize(chg) > *most)
            *most = cJSON_GetArraySize(chg);
        cJSON_ArrayForEach(it, chg)
        {
            const char *ss = hx_json_str(it, "session");
            int k = 0;
            while (ss != NULL && k < n && strcmp(sess[k], ss) != 0)
                k++;
            if (ss == NULL || k == n)
                continue; /* someone else's */
            HX_ASSERT_MSG(f->s,
                          hx_json_str(it, "action") != NULL &&
                              strcmp(hx_json_str(it, "action"), action[k]) == 0,
                          "unexpected change %s", cJSON_PrintUnformatted(it));
            HX_ASSERT_MSG(f->s, seen[k] == 0, "session %s listed twice", ss);
            seen[k] = 1;
            left--;
        }
        cJSON_Delete(chg);
    }
    return events;
}

static int want_changes(fx *f, hx_ws *ws, const char *ch, const char *const *action,
                        char *const *sess, int n)
{
    return want_changes_most(f, ws, ch, action, sess, n, NULL);
}

/* STORM_N members join one room at once on gateway 0, watched by a member
 * on gateway 1: far fewer presence events and record writes than joins,
 * the events list every member exactly once, a later joiner on gateway 1
 * is told about everyone, and a leave and a disconnect arrive. Before the
 * records, the storm cost STORM_N writes and STORM_N events. */
START_TEST(test_join_storm_coalesced)
{
    fx f;
    hx_sl_client *c[STORM_N], *obs0, *obs1, *late;
    char *sess[STORM_N];
    const char *joins[STORM_N];
    double w0, e0, writes, events;
    int got, times;
    cJSON *jl;

    start(&f);
    obs0 = fx_client(&f, 0, "acme", "obs0");
    obs1 = fx_client(&f, 1, "acme", "obs1");
    cJSON_Delete(join(&f, obs0, "storm"));
    wait_record(&f, "storm", obs0);
    cJSON_Delete(join(&f, obs1, "storm"));
    wait_record(&f, "storm", obs1);
    {
        char *own = hx_strf("%s", hx_sl_session(obs1));
        const char *act = "join";
        want_changes(&f, hx_sl_ws(obs1), "r:storm", &act, &own, 1);
        free(own);
    }
    for (int i = 0; i < STORM_N; i++) {
        char user[32];
        snprintf(user, sizeof(user), "u%d", i);
        c[i] = fx_client(&f, 0, "acme", user);
        sess[i] = hx_strf("%s", hx_sl_session(c[i]));
        joins[i] = "join";
    }
    w0 = fx_metric(&f, 0, "sluice_gw_presence_writes_total");
    e0 = fx_metric(&f, 0, "sluice_gw_presence_events_total");
    for (int i = 0; i < STORM_N; i++)
        HX_OK(f.s, hx_ws_send_text(hx_sl_ws(c[i]), "{\"type\":\"join\",\"room\":\"storm\"}"));
    for (int i = 0; i < STORM_N; i++) {
        cJSON *fr = hx_ws_expect(hx_sl_ws(c[i]), "{\"type\":\"joined\",\"room\":\"storm\"}", T);
        HX_ASSERT_MSG(f.s, fr != NULL, "member %d not joined: %s", i, hx_error());
        cJSON_Delete(fr);
    }
    /* The member on the other gateway hears of every join, once. */
    got = want_changes(&f, hx_sl_ws(obs1), "r:storm", joins, sess, STORM_N);
    writes = fx_metric(&f, 0, "sluice_gw_presence_writes_total") - w0;
    events = fx_metric(&f, 0, "sluice_gw_presence_events_total") - e0;
    HX_ASSERT_MSG(f.s, got <= STORM_N / 4, "%d presence events for %d joins", got, STORM_N);
    HX_ASSERT_MSG(f.s, events >= got && events <= STORM_N / 4,
                  "%g presence events published for %d joins", events, STORM_N);
    HX_ASSERT_MSG(f.s, writes >= 1 && writes <= STORM_N / 4, "%g presence writes for %d joins",
                  writes, STORM_N);

    /* A later joiner on gateway 1 is told about every member. */
    wait_record(&f, "storm", c[STORM_N - 1]);
    late = fx_client(&f, 1, "acme", "late");
    jl = join(&f, late, "storm");
    for (int i = 0; i < STORM_N; i++) {
        char user[32];
        snprintf(user, sizeof(user), "u%d", i);
        HX_ASSERT_MSG(f.s, has_member(jl, user, sess[i], &times) && times == 1,
                      "late joined lists %s %d times: %s", user, times, cJSON_PrintUnformatted(jl));
    }
    HX_ASSERT(f.s, has_member(jl, "obs0", hx_sl_session(obs0), &times) && times == 1);
    cJSON_Delete(jl);

    /* Member 0 leaves and member 1 drops: the other gateway hears both. */
    HX_OK(f.s, hx_ws_send_text(hx_sl_ws(c[0]), "{\"type\":\"leave\",\"room\":\"storm\"}"));
    hx_sl_destroy(c[1]);
    c[1] = NULL;
    {
        const char *gone[] = {"leave", "disconnect"};
        want_changes(&f, hx_sl_ws(obs1), "r:storm", gone, sess, 2);
    }
    for (int i = 0; i < STORM_N; i++) {
        hx_sl_destroy(c[i]);
        free(sess[i]);
    }
    hx_sl_destroy(obs0);
    hx_sl_destroy(obs1);
    hx_sl_destroy(late);
    fx_stop(&f);
}
END_TEST

/* An entry "<t>.<room>.<session>" {"user"} of a gateway older than the
 * records is still listed in `joined.members`, and a session listed both
 * there and in a record appears once. */
START_TEST(test_old_form_entries_read)
{
    fx f;
    kvStore *kv = NULL;
    hx_sl_client *a, *b;
    char key[160];
    cJSON *jb;
    int times;

    start(&f);
    a = fx_client(&f, 0, "acme", "alice");
    cJSON_Delete(join(&f, a, "legacy"));
    wait_record(&f, "legacy", a);
    HX_ASSERT(f.s, js_KeyValue(&kv, f.js, SL_KV_PRESENCE) == NATS_OK);
    HX_ASSERT(f.s, kvStore_PutString(NULL, kv, "acme.legacy.Old-session_1",
                                     "{\"user\":\"oldtimer\"}") == NATS_OK);
    snprintf(key, sizeof(key), "acme.legacy.%s", hx_sl_session(a));
    HX_ASSERT(f.s, kvStore_PutString(NULL, kv, key, "{\"user\":\"alice\"}") == NATS_OK);
    kvStore_Destroy(kv);

    b = fx_client(&f, 1, "acme", "bob");
    jb = join(&f, b, "legacy");
    HX_ASSERT_MSG(f.s, has_member(jb, "oldtimer", "Old-session_1", &times) && times == 1,
                  "the old-form member is not listed once: %s", cJSON_PrintUnformatted(jb));
    HX_ASSERT_MSG(f.s, has_member(jb, "alice", hx_sl_session(a), &times) && times == 1,
                  "alice is not listed once: %s", cJSON_PrintUnformatted(jb));
    HX_ASSERT_MSG(f.s, has_member(jb, "bob", hx_sl_session(b), &times) && times == 1,
                  "bob is not listed once: %s", cJSON_PrintUnformatted(jb));
    cJSON_Delete(jb);
    hx_sl_destroy(a);
    hx_sl_destroy(b);
    fx_stop(&f);
}
END_TEST

/* A gateway that stops (SIGTERM) leaves no presence entry behind: its
 * members' leaves and its records' deletes go out before it exits, where
 * before they waited for the bucket's TTL (75 s). */
START_TEST(test_shutdown_removes_records)
{
    fx f;
    hx_sl_client *a, *b;
    int status = -1;

    start(&f);
    a = fx_client(&f, 1, "acme", "alice");
    b = fx_client(&f, 1, "acme", "bob");
    cJSON_Delete(join(&f, a, "bye"));
    cJSON_Delete(join(&f, b, "bye"));
    wait_record(&f, "bye", a);
    wait_record(&f, "bye", b);
    HX_ASSERT(f.s, room_entries(&f, "bye") >= 1);
    HX_OK(f.s, hx_stack_stop(f.s, HX_GATEWAY, 1, SIGTERM, T, &status));
    HX_ASSERT_MSG(f.s, WIFEXITED(status) && WEXITSTATUS(status) == 0, "gateway 1 exit status %d",
                  status);
    HX_ASSERT_MSG(f.s, room_entries(&f, "bye") == 0,
                  "%d presence entries left by a stopped gateway", room_entries(&f, "bye"));
    hx_sl_destroy(a);
    hx_sl_destroy(b);
    fx_stop(&f);
}
END_TEST

/* More changes in one interval than one event carries: they go out as
 * several events, each within the bound, every member once. A long
 * interval and a high fan-out bound put all SPLIT_N joins in one flush. */
START_TEST(test_many_changes_split_into_events)
{
    static const char *const env[] = {"SLUICE_PRESENCE_FLUSH_MS=3000",
                                      "SLUICE_PRESENCE_FANOUT_MAX=1000", NULL};
    fx f;
    fx_opts o = {.gateways = 1, .gw_env = env};
    hx_sl_client *obs, **c = calloc(SPLIT_N, sizeof(*c));
    char **sess = calloc(SPLIT_N, sizeof(*sess));
    const char **joins = calloc(SPLIT_N, sizeof(*joins));
    int events, most;

    ck_assert(c != NULL && sess != NULL && joins != NULL);
    fx_start(&f, &o);
    obs = fx_client(&f, 0, "acme", "obs");
    cJSON_Delete(join(&f, obs, "big"));
    {
        char *own = hx_strf("%s", hx_sl_session(obs));
        const char *act = "join";
        want_changes(&f, hx_sl_ws(obs), "r:big", &act, &own, 1);
        free(own);
    }
    for (int i = 0; i < SPLIT_N; i++) {
        char user[32];
        snprintf(user, sizeof(user), "m%d", i);
        c[i] = fx_client(&f, 0, "acme", user);
        sess[i] = hx_strf("%s", hx_sl_session(c[i]));
        joins[i] = "join";
    }
    for (int i = 0; i < SPLIT_N; i++)
        HX_OK(f.s, hx_ws_send_text(hx_sl_ws(c[i]), "{\"type\":\"join\",\"room\":\"big\"}"));
    events = want_changes_most(&f, hx_sl_ws(obs), "r:big", joins, sess, SPLIT_N, &most);
    HX_ASSERT_MSG(f.s, most <= 200 && events >= 2,
                  "%d joins came in %d presence events of at most %d changes", SPLIT_N, events,
                  most);
    for (int i = 0; i < SPLIT_N; i++) {
        hx_sl_destroy(c[i]);
        free(sess[i]);
    }
    free(c);
    free(sess);
    free(joins);
    hx_sl_destroy(obs);
    fx_stop(&f);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gateway presence");
    TCase *tc = tcase_create("presence");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_join_storm_coalesced);
    tcase_add_test(tc, test_old_form_entries_read);
    tcase_add_test(tc, test_shutdown_removes_records);
    tcase_add_test(tc, test_many_changes_split_into_events);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
