/* Every client frame of shared/PROTOCOL.md against a whole stack (real
 * nats-server, gateway, orchestrator, worker): send with idempotent ids,
 * join/leave with members and presence, ack and receipts, cancel,
 * history, ping; and tenant isolation of rooms with the same name.
 * Several clients at once; every wait is on a frame, with a timeout, and
 * "nothing arrived" is proved with a ping/pong barrier after the event
 * that would have come with it. */
#include "test_gateway_fx.h"

#define T 15000 /* ms to wait for any one frame */

static void start(fx *f, int echo_delay_ms, const char *agents)
{
    fx_opts o = {.gateways = 1,
                 .orchestrators = 1,
                 .workers = 1,
                 .echo_token_delay_ms = echo_delay_ms,
                 .agents_json = agents};
    fx_start(f, &o);
}

/* Waits for a frame matching a JSON pattern (hx_json_match); caller frees. */
static cJSON *want(fx *f, hx_ws *ws, const char *pattern)
{
    cJSON *fr = hx_ws_expect(ws, pattern, T);
    HX_ASSERT_MSG(f->s, fr != NULL, "no frame like %s: %s", pattern, hx_error());
    return fr;
}

static void want_free(fx *f, hx_ws *ws, const char *pattern)
{
    cJSON_Delete(want(f, ws, pattern));
}

/* Everything the client has received up to a ping barrier (backlog first,
 * in arrival order), as a JSON array the caller frees; the pong is not in
 * it. */
static cJSON *drain(fx *f, hx_ws *ws)
{
    cJSON *all = cJSON_CreateArray();

    HX_OK(f->s, hx_ws_send_text(ws, "{\"type\":\"ping\"}"));
    for (int i = 0; i < 1000000; i++) {
        cJSON *fr = hx_ws_recv_json(ws, T);
        HX_ASSERT_MSG(f->s, fr != NULL, "no pong while draining: %s", hx_error());
        if (fx__is_type(fr, "pong")) {
            cJSON_Delete(fr);
            return all;
        }
        cJSON_AddItemToArray(all, fr);
    }
    return all;
}

/* Counts frames of arr matching a JSON pattern. */
static int count_like(const cJSON *arr, const char *pattern)
{
    cJSON *p = cJSON_Parse(pattern);
    const cJSON *it;
    int n = 0;

    ck_assert_ptr_nonnull(p);
    cJSON_ArrayForEach(it, arr)
    {
        if (hx_json_match(p, it))
            n++;
    }
    cJSON_Delete(p);
    return n;
}

/* Sends a room message and waits for its acceptance. */
static void post(fx *f, hx_sl_client *c, const char *id, const char *room, const char *text)
{
    cJSON *a = hx_sl_send_wait(c, id, room, text, T);
    HX_ASSERT_MSG(f->s, a != NULL && fx__is_type(a, "accepted"), "send %s not accepted: %s", id,
                  a ? cJSON_PrintUnformatted(a) : hx_error());
    cJSON_Delete(a);
}

/* Waits for the message event with id on channel ch; returns its seq. */
static int64_t see_msg(fx *f, hx_sl_client *c, const char *ch, const char *id)
{
    char *pat =
        hx_strf("{\"type\":\"event\",\"ch\":\"%s\",\"kind\":\"message\",\"id\":\"%s\"}", ch, id);
    cJSON *e = want(f, hx_sl_ws(c), pat);
    int64_t seq = hx_json_int(e, "seq", -1);

    free(pat);
    cJSON_Delete(e);
    HX_ASSERT(f->s, seq > 0);
    return seq;
}

static cJSON *join(fx *f, hx_sl_client *c, const char *room)
{
    cJSON *j = hx_sl_join(c, room, T);
    HX_ASSERT_MSG(f->s, j != NULL, "join %s: %s", room, hx_error());
    return j;
}

/* Waits until the gateway's presence record of room lists c (it is
 * written asynchronously, SLUICE_PRESENCE_FLUSH_MS after joined). */
typedef struct kv_wait {
    fx *f;
    const char *tenant, *room, *session;
} kv_wait;

static bool kv_present(void *ud)
{
    kv_wait *w = ud;
    int nrec;
    char *key = fx_presence_record_of(w->f, w->tenant, w->room, w->session, &nrec);
    bool found = key != NULL;

    free(key);
    return found;
}

static void wait_presence_kv(fx *f, const char *tenant, const char *room, hx_sl_client *c)
{
    kv_wait w = {.f = f, .tenant = tenant, .room = room, .session = hx_sl_session(c)};

    HX_ASSERT_MSG(f->s, hx_wait_until(kv_present, &w, T), "no presence record of %s.%s lists %s",
                  tenant, room, w.session);
}

/* True when fr is a presence event of ch carrying (action, user, session):
 * alone, or among the changes the gateway coalesced. */
static bool presence_carries(const cJSON *fr, const char *ch, const char *action, const char *user,
                             const char *session)
{
    const cJSON *changes, *it;

    if (!fx__is_type(fr, "event") || hx_json_str(fr, "kind") == NULL ||
        strcmp(hx_json_str(fr, "kind"), "presence") != 0 || hx_json_str(fr, "ch") == NULL ||
        strcmp(hx_json_str(fr, "ch"), ch) != 0)
        return false;
    changes = cJSON_GetObjectItemCaseSensitive(fr, "changes");
    if (!cJSON_IsArray(changes)) {
        return hx_json_str(fr, "action") && strcmp(hx_json_str(fr, "action"), action) == 0 &&
               hx_json_str(fr, "user") && strcmp(hx_json_str(fr, "user"), user) == 0 &&
               hx_json_str(fr, "session") && strcmp(hx_json_str(fr, "session"), session) == 0;
    }
    cJSON_ArrayForEach(it, changes)
    {
        if (hx_json_str(it, "action") && strcmp(hx_json_str(it, "action"), action) == 0 &&
            hx_json_str(it, "user") && strcmp(hx_json_str(it, "user"), user) == 0 &&
            hx_json_str(it, "session") && strcmp(hx_json_str(it, "session"), session) == 0)
            return true;
    }
    return false;
}

/* Waits until presence events of ch carried each (actions[i], users[i],
 * sessions[i]), i < n, in one event or several. */
static void want_presences(fx *f, hx_ws *ws, const char *ch, int n, const char *const *actions,
                           const char *const *users, const char *const *sessions)
{
    int64_t deadline = hx_now_ms() + T;
    bool seen[8] = {false};
    int left = n;

    ck_assert_int_le(n, 8);
    while (left > 0) {
        cJSON *fr = hx_ws_recv_json(ws, (int)(deadline - hx_now_ms()) + 1);
        HX_ASSERT_MSG(f->s, fr != NULL && hx_now_ms() <= deadline,
                      "no presence %s of %s (%s) on %s: %s", actions[0], users[0], sessions[0], ch,
                      hx_error());
        for (int i = 0; i < n; i++) {
            if (!seen[i] && presence_carries(fr, ch, actions[i], users[i], sessions[i])) {
                seen[i] = true;
                left--;
            }
        }
        cJSON_Delete(fr);
    }
}

static void want_presence(fx *f, hx_ws *ws, const char *ch, const char *action, const char *user,
                          const char *session)
{
    want_presences(f, ws, ch, 1, &action, &user, &session);
}

static bool has_member(const cJSON *joined, const char *user, const char *session)
{
    const cJSON *m;

    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(joined, "members"))
    {
        if (strcmp(hx_json_str(m, "user") ? hx_json_str(m, "user") : "", user) == 0 &&
            (session == NULL ||
             strcmp(hx_json_str(m, "session") ? hx_json_str(m, "session") : "", session) == 0))
            return true;
    }
    return false;
}

/* ---- send: accepted, duplicate ---- */

START_TEST(test_send_accepted_and_duplicate)
{
    fx f;
    hx_sl_client *c;
    cJSON *a1, *a2, *all;
    char *ev1, *subj;

    start(&f, 0, FX_AGENTS_MENTION);
    c = fx_client(&f, 0, "acme", "alice");
    a1 = hx_sl_send_wait(c, "c-1", NULL, "first words", T);
    HX_ASSERT_MSG(f.s, a1 != NULL && fx__is_type(a1, "accepted"), "c-1: %s", hx_error());
    HX_ASSERT(f.s, cJSON_IsFalse(cJSON_GetObjectItem(a1, "duplicate")));
    ev1 = hx_strf("%s", hx_json_str(a1, "event"));
    HX_ASSERT(f.s, strlen(ev1) > 0);
    see_msg(&f, c, "s", "c-1");

    /* The same id again (a retry after a lost accepted): the same event,
     * flagged duplicate, and nothing new stored. */
    a2 = hx_sl_send_wait(c, "c-1", NULL, "first words", T);
    HX_ASSERT_MSG(f.s, a2 != NULL && fx__is_type(a2, "accepted"), "c-1 again: %s", hx_error());
    HX_ASSERT_MSG(f.s, hx_json_true(a2, "duplicate"), "repeat not flagged duplicate");
    HX_ASSERT_MSG(f.s, strcmp(hx_json_str(a2, "event"), ev1) == 0,
                  "duplicate got event %s, the original was %s", hx_json_str(a2, "event"), ev1);
    /* Another message after it: once its event is here, a second c-1 event
     * would have been delivered before it. */
    post(&f, c, "c-2", NULL, "second words");
    see_msg(&f, c, "s", "c-2");
    all = drain(&f, hx_sl_ws(c));
    HX_ASSERT(f.s,
              count_like(all, "{\"type\":\"event\",\"kind\":\"message\",\"id\":\"c-1\"}") == 0);
    HX_ASSERT(f.s, count_like(all, "{\"type\":\"accepted\"}") == 0);
    HX_ASSERT(f.s, hx_sl_get_counts(c).duplicates == 0);
    subj = hx_strf("sluice.in.acme.%s", hx_sl_session(c));
    HX_ASSERT_MSG(f.s, fx_stream_msgs(&f, SL_STREAM_IN, subj) == 2,
                  "SLUICE_IN holds %llu messages of the session, wanted 2",
                  (unsigned long long)fx_stream_msgs(&f, SL_STREAM_IN, subj));
    free(subj);
    cJSON_Delete(all);
    cJSON_Delete(a1);
    cJSON_Delete(a2);
    free(ev1);
    hx_sl_destroy(c);
    fx_stop(&f);
}
END_TEST

/* ---- join, members, presence, leave ---- */

START_TEST(test_join_members_presence_leave)
{
    fx f;
    hx_sl_client *a, *b, *c;
    cJSON *ja, *jb, *left, *all;
    char *sess_c;
    int64_t seq;

    start(&f, 0, FX_AGENTS_MENTION);
    a = fx_client(&f, 0, "acme", "alice");
    b = fx_client(&f, 0, "acme", "bob");
    c = fx_client(&f, 0, "acme", "carol");

    ja = join(&f, a, "lobby");
    HX_ASSERT(f.s, strcmp(hx_json_str(ja, "ch"), "r:lobby") == 0);
    HX_ASSERT(f.s, cJSON_IsNumber(cJSON_GetObjectItem(ja, "seq")));
    HX_ASSERT(f.s, cJSON_IsArray(cJSON_GetObjectItem(ja, "members")));
    wait_presence_kv(&f, "acme", "lobby", a);

    jb = join(&f, b, "lobby");
    HX_ASSERT_MSG(f.s, has_member(jb, "alice", hx_sl_session(a)), "bob's joined lacks alice: %s",
                  cJSON_PrintUnformatted(jb));
    HX_ASSERT(f.s, hx_json_int(jb, "seq", -1) >= hx_json_int(ja, "seq", -1));
    want_presence(&f, hx_sl_ws(a), "r:lobby", "join", "bob", hx_sl_session(b));

    /* A room message reaches both members. */
    post(&f, a, "m-1", "lobby", "hello room");
    seq = see_msg(&f, a, "r:lobby", "m-1");
    HX_ASSERT(f.s, see_msg(&f, b, "r:lobby", "m-1") == seq);

    /* bob leaves: left, a presence leave, and no more room events for him. */
    cJSON_Delete(drain(&f, hx_sl_ws(b)));
    HX_OK(f.s, hx_ws_send_text(hx_sl_ws(b), "{\"type\":\"leave\",\"room\":\"lobby\"}"));
    left = want(&f, hx_sl_ws(b), "{\"type\":\"left\",\"room\":\"lobby\"}");
    cJSON_Delete(left);
    want_presence(&f, hx_sl_ws(a), "r:lobby", "leave", "bob", hx_sl_session(b));
    post(&f, a, "m-2", "lobby", "bob should not see this");
    see_msg(&f, a, "r:lobby", "m-2");
    all = drain(&f, hx_sl_ws(b));
    HX_ASSERT_MSG(f.s,
                  count_like(all, "{\"type\":\"event\",\"ch\":\"r:lobby\"}") == 0 &&
                      count_like(all, "{\"type\":\"event\",\"id\":\"m-2\"}") == 0,
                  "bob got room events after leaving: %s", cJSON_PrintUnformatted(all));
    cJSON_Delete(all);
    {
        cJSON *e;
        HX_OK(f.s, hx_sl_send(b, "b-1", "lobby", "still here?", NULL));
        e = fx_expect_error(&f, hx_sl_ws(b), "not_joined");
        cJSON_Delete(e);
        HX_OK(f.s, hx_ws_send_text(hx_sl_ws(b), "{\"type\":\"leave\",\"room\":\"lobby\"}"));
        e = fx_expect_error(&f, hx_sl_ws(b), "not_joined");
        cJSON_Delete(e);
    }

    /* carol joins and drops her connection: a presence disconnect. */
    cJSON_Delete(join(&f, c, "lobby"));
    sess_c = hx_strf("%s", hx_sl_session(c));
    want_presence(&f, hx_sl_ws(a), "r:lobby", "join", "carol", sess_c);
    hx_sl_destroy(c);
    want_presence(&f, hx_sl_ws(a), "r:lobby", "disconnect", "carol", sess_c);
    free(sess_c);

    /* A token whose rooms claim does not list the room is refused. */
    {
        const char *rooms[] = {"team-*"};
        char *tok = hx_token_rooms(f.s, "acme", "dave", 600, rooms, 1);
        hx_sl_client *d = NULL;
        cJSON *e;
        HX_OK(f.s, hx_sl_connect(&d, hx_stack_gw_port(f.s, 0), tok, T));
        HX_OK(f.s, hx_ws_send_text(hx_sl_ws(d), "{\"type\":\"join\",\"room\":\"lobby\"}"));
        e = fx_expect_error(&f, hx_sl_ws(d), "forbidden");
        cJSON_Delete(e);
        cJSON_Delete(join(&f, d, "team-red"));
        hx_sl_destroy(d);
        free(tok);
    }
    HX_ASSERT(f.s, hx_sl_get_counts(a).duplicates == 0);
    HX_ASSERT(f.s, hx_sl_get_counts(b).duplicates == 0);
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    hx_sl_destroy(a);
    hx_sl_destroy(b);
    fx_stop(&f);
}
END_TEST

/* ---- a join storm ---- */

#define STORM_N 40

/* Session ids member i has learned so far (its own joined list and the
 * presence join events it received), as a bit per storm member. */
static void storm_learn(const cJSON *fr, char *const *sess, bool *known)
{
    const cJSON *m;

    if (fx__is_type(fr, "joined")) {
        cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(fr, "members"))
        {
            const char *ss = hx_json_str(m, "session");
            for (int k = 0; k < STORM_N && ss != NULL; k++)
                if (strcmp(ss, sess[k]) == 0)
                    known[k] = true;
        }
    } else {
        for (int k = 0; k < STORM_N; k++) {
            char user[32];
            snprintf(user, sizeof(user), "u%d", k);
            if (presence_carries(fr, "r:storm", "join", user, sess[k]))
                known[k] = true;
        }
    }
}

static bool storm_all(const bool *known)
{
    for (int k = 0; k < STORM_N; k++)
        if (!known[k])
            return false;
    return true;
}

/* STORM_N members join one room at once on one gateway: the room's head
 * and member list are read from NATS once (the joins that come while that
 * read runs wait for its result), every member is answered and learns
 * every other member (its joined list plus presence events), and the
 * presence writes and events grow no faster than N (they are coalesced per
 * room; test_gateway_presence checks by how much), not N^2.
 * A leave and a disconnect afterwards still reach everyone. Before the
 * join waiters, every join that came before the room was ready read the
 * head and the presence bucket itself (sluice_gw_join_reads_total > 1). */
START_TEST(test_join_storm_one_read_everyone_listed)
{
    fx f;
    hx_sl_client *c[STORM_N];
    char *sess[STORM_N];
    double reads, writes, events;

    start(&f, 0, FX_AGENTS_MENTION);
    for (int i = 0; i < STORM_N; i++) {
        char user[32];
        snprintf(user, sizeof(user), "u%d", i);
        c[i] = fx_client(&f, 0, "acme", user);
        sess[i] = hx_strf("%s", hx_sl_session(c[i]));
    }
    /* Every join is sent before any answer is read. */
    for (int i = 0; i < STORM_N; i++)
        HX_OK(f.s, hx_ws_send_text(hx_sl_ws(c[i]), "{\"type\":\"join\",\"room\":\"storm\"}"));
    for (int i = 0; i < STORM_N; i++) {
        bool known[STORM_N] = {false};
        cJSON *fr = want(&f, hx_sl_ws(c[i]), "{\"type\":\"joined\",\"room\":\"storm\"}");
        storm_learn(fr, sess, known);
        cJSON_Delete(fr);
        while (!storm_all(known)) {
            fr = hx_ws_recv_json(hx_sl_ws(c[i]), T);
            HX_ASSERT_MSG(f.s, fr != NULL, "member %d never learned every other member: %s", i,
                          hx_error());
            storm_learn(fr, sess, known);
            cJSON_Delete(fr);
        }
    }
    reads = fx_metric(&f, 0, "sluice_gw_join_reads_total");
    writes = fx_metric(&f, 0, "sluice_gw_presence_writes_total");
    events = fx_metric(&f, 0, "sluice_gw_presence_events_total");
    HX_ASSERT_MSG(f.s, reads == 1, "%g join reads for one room (want 1)", reads);
    /* At most one write and one event per join. */
    HX_ASSERT_MSG(f.s, writes >= 1 && writes <= STORM_N, "%g presence writes for %d joins", writes,
                  STORM_N);
    HX_ASSERT_MSG(f.s, events >= 1 && events <= STORM_N, "%g presence events for %d joins", events,
                  STORM_N);

    /* Member 0 leaves and member 1 drops: everyone else hears both. */
    HX_OK(f.s, hx_ws_send_text(hx_sl_ws(c[0]), "{\"type\":\"leave\",\"room\":\"storm\"}"));
    cJSON_Delete(want(&f, hx_sl_ws(c[0]), "{\"type\":\"left\",\"room\":\"storm\"}"));
    hx_sl_destroy(c[1]);
    c[1] = NULL;
    for (int i = 2; i < STORM_N; i++) {
        const char *actions[] = {"leave", "disconnect"}, *users[] = {"u0", "u1"};
        const char *sessions[] = {sess[0], sess[1]};
        want_presences(&f, hx_sl_ws(c[i]), "r:storm", 2, actions, users, sessions);
    }
    for (int i = 0; i < STORM_N; i++) {
        hx_sl_destroy(c[i]);
        free(sess[i]);
    }
    fx_stop(&f);
}
END_TEST

/* Past the members `joined` lists (100) a join no longer changes the list,
 * so the gateway keeps one `joined` frame for every joiner of the room; an
 * event moves the room's head, and the next joiner's `joined` must carry
 * the new head, not the kept frame's. */
#define BIG_N 102

START_TEST(test_joined_seq_follows_the_head_in_a_large_room)
{
    fx f;
    hx_sl_client *c[BIG_N + 2];
    cJSON *j;
    int64_t before, head, after;

    start(&f, 0, FX_AGENTS_MENTION);
    for (int i = 0; i < BIG_N + 2; i++) {
        char user[32];
        snprintf(user, sizeof(user), "u%d", i);
        c[i] = fx_client(&f, 0, "acme", user);
    }
    for (int i = 0; i < BIG_N; i++)
        cJSON_Delete(join(&f, c[i], "big"));
    j = join(&f, c[BIG_N], "big");
    before = hx_json_int(j, "seq", -1);
    HX_ASSERT_MSG(f.s, hx_json_true(j, "members_truncated"), "joined of member %d: %s", BIG_N + 1,
                  cJSON_PrintUnformatted(j));
    cJSON_Delete(j);
    post(&f, c[0], "m-1", "big", "the head moves");
    head = see_msg(&f, c[0], "r:big", "m-1");
    HX_ASSERT_MSG(f.s, head > before, "event seq %lld, joined seq before it %lld", (long long)head,
                  (long long)before);
    j = join(&f, c[BIG_N + 1], "big");
    after = hx_json_int(j, "seq", -1);
    HX_ASSERT_MSG(f.s, after == head, "joined after the event says seq %lld, the head is %lld",
                  (long long)after, (long long)head);
    cJSON_Delete(j);
    for (int i = 0; i < BIG_N + 2; i++)
        hx_sl_destroy(c[i]);
    fx_stop(&f);
}
END_TEST

/* ---- ack and receipts ---- */

/* Back-to-back joins on one gateway, with no wait for the presence store:
 * the first joiner (the slow path, which reads the store) is listed in its
 * own `joined`, and the second (served from memory) lists the first. Each
 * pair runs in a room of its own, so every pair takes the slow path first. */
START_TEST(test_joined_lists_local_members_at_once)
{
    fx f;

    start(&f, 0, FX_AGENTS_MENTION);
    for (int i = 0; i < 10; i++) {
        char room[32];
        hx_sl_client *a = fx_client(&f, 0, "acme", "alice");
        hx_sl_client *b = fx_client(&f, 0, "acme", "bob");
        cJSON *ja, *jb;

        snprintf(room, sizeof(room), "quick-%d", i);
        ja = join(&f, a, room);
        jb = join(&f, b, room);
        HX_ASSERT_MSG(f.s, has_member(ja, "alice", hx_sl_session(a)),
                      "round %d: alice's joined lacks alice: %s", i, cJSON_PrintUnformatted(ja));
        HX_ASSERT_MSG(f.s, has_member(jb, "alice", hx_sl_session(a)),
                      "round %d: bob's joined lacks alice: %s", i, cJSON_PrintUnformatted(jb));
        HX_ASSERT_MSG(f.s, has_member(jb, "bob", hx_sl_session(b)),
                      "round %d: bob's joined lacks bob: %s", i, cJSON_PrintUnformatted(jb));
        cJSON_Delete(ja);
        cJSON_Delete(jb);
        hx_sl_destroy(a);
        hx_sl_destroy(b);
    }
    fx_stop(&f);
}
END_TEST

/* The receipts a connection holds are the 64 newest, oldest first, across
 * the ring's wrap (docs/protocol.md, Receipts): bob gets 70 messages from
 * alice and carol without acking (m-1..m-6 lose theirs), acks up to m-68,
 * then to m-70. Each sender gets each of its receipts once, in order.
 * Two senders keep each under its rate burst. */
static void want_receipts(fx *f, hx_sl_client *c, int from, int to)
{
    char *pat = hx_strf("{\"type\":\"event\",\"ch\":\"s\",\"kind\":\"receipt\",\"to\":"
                        "\"m-%d\",\"user\":\"bob\"}",
                        to);
    cJSON *all, *it;
    int next = from;

    cJSON_Delete(want(f, hx_sl_ws(c), pat)); /* the last one: the rest are in the backlog */
    free(pat);
    all = drain(f, hx_sl_ws(c));
    cJSON_ArrayForEach(it, all)
    {
        const char *id = hx_json_str(it, "to");
        if (!fx__is_type(it, "event") || strcmp(hx_json_str(it, "kind"), "receipt") != 0)
            continue;
        HX_ASSERT_MSG(f->s, id != NULL && next < to && atoi(id + 2) == next,
                      "receipt for %s where m-%d was due (%d..%d)", id ? id : "?", next, from, to);
        next++;
    }
    HX_ASSERT_MSG(f->s, next == to, "receipts m-%d..m-%d: got up to m-%d", from, to, next - 1);
    cJSON_Delete(all);
}

START_TEST(test_receipts_keep_the_newest_64_in_order)
{
    fx f;
    hx_sl_client *a, *b, *c;
    int64_t seq68 = 0, seq70 = 0;

    start(&f, 0, FX_AGENTS_MENTION);
    a = fx_client(&f, 0, "acme", "alice");
    b = fx_client(&f, 0, "acme", "bob");
    c = fx_client(&f, 0, "acme", "carol");
    cJSON_Delete(join(&f, a, "lobby"));
    cJSON_Delete(join(&f, b, "lobby"));
    cJSON_Delete(join(&f, c, "lobby"));
    for (int i = 1; i <= 70; i++) {
        char id[16];
        snprintf(id, sizeof(id), "m-%d", i);
        post(&f, i <= 35 ? a : c, id, "lobby", "count me");
    }
    for (int i = 1; i <= 70; i++) {
        char id[16];
        int64_t seq;
        snprintf(id, sizeof(id), "m-%d", i);
        seq = see_msg(&f, b, "r:lobby", id);
        if (i == 68)
            seq68 = seq;
        if (i == 70)
            seq70 = seq;
    }
    HX_OK(f.s, hx_sl_ack(b, "r:lobby", seq68));
    want_receipts(&f, a, 7, 35);
    HX_OK(f.s, hx_sl_ack(b, "r:lobby", seq70));
    want_receipts(&f, c, 36, 70);
    hx_sl_destroy(a);
    hx_sl_destroy(b);
    hx_sl_destroy(c);
    fx_stop(&f);
}
END_TEST

START_TEST(test_ack_sends_receipts_to_the_sender)
{
    fx f;
    hx_sl_client *a, *b, *c;
    cJSON *r, *all;
    int64_t seq;

    start(&f, 0, FX_AGENTS_MENTION);
    a = fx_client(&f, 0, "acme", "alice");
    b = fx_client(&f, 0, "acme", "bob");
    c = fx_client(&f, 0, "acme", "carol");
    cJSON_Delete(join(&f, a, "lobby"));
    cJSON_Delete(join(&f, b, "lobby"));
    cJSON_Delete(join(&f, c, "lobby"));

    post(&f, a, "m-1", "lobby", "please confirm");
    seq = see_msg(&f, a, "r:lobby", "m-1");
    HX_ASSERT(f.s, see_msg(&f, b, "r:lobby", "m-1") == seq);
    HX_ASSERT(f.s, see_msg(&f, c, "r:lobby", "m-1") == seq);

    /* alice acks her own message: no receipt for that. bob acks: one. */
    HX_OK(f.s, hx_sl_ack(a, "r:lobby", seq));
    HX_OK(f.s, hx_sl_ack(b, "r:lobby", seq));
    r = want(
        &f, hx_sl_ws(a),
        "{\"type\":\"event\",\"ch\":\"s\",\"kind\":\"receipt\",\"to\":\"m-1\",\"user\":\"bob\"}");
    HX_ASSERT(f.s, strcmp(hx_json_str(r, "state"), "delivered") == 0);
    cJSON_Delete(r);
    /* An ack beyond it again does not repeat bob's receipt; carol's comes. */
    HX_OK(f.s, hx_sl_ack(b, "r:lobby", seq));
    HX_OK(f.s, hx_sl_ack(c, "r:lobby", seq));
    want_free(&f, hx_sl_ws(a),
              "{\"type\":\"event\",\"ch\":\"s\",\"kind\":\"receipt\",\"to\":\"m-1\","
              "\"user\":\"carol\",\"state\":\"delivered\"}");
    /* A later message proves the order: its receipt comes after any stray
     * one for m-1. */
    post(&f, a, "m-2", "lobby", "and this?");
    seq = see_msg(&f, b, "r:lobby", "m-2");
    HX_OK(f.s, hx_sl_ack(b, "r:lobby", seq));
    want_free(
        &f, hx_sl_ws(a),
        "{\"type\":\"event\",\"ch\":\"s\",\"kind\":\"receipt\",\"to\":\"m-2\",\"user\":\"bob\"}");
    all = drain(&f, hx_sl_ws(a));
    HX_ASSERT_MSG(f.s, count_like(all, "{\"kind\":\"receipt\",\"to\":\"m-1\"}") == 0,
                  "extra receipts: %s", cJSON_PrintUnformatted(all));
    cJSON_Delete(all);
    /* Receipts go to the sender only. */
    all = drain(&f, hx_sl_ws(b));
    HX_ASSERT(f.s, count_like(all, "{\"kind\":\"receipt\"}") == 0);
    cJSON_Delete(all);
    /* An ack on a channel the client is not in is refused. */
    {
        cJSON *e;
        HX_OK(f.s, hx_sl_ack(b, "r:elsewhere", 1));
        e = fx_expect_error(&f, hx_sl_ws(b), "not_joined");
        cJSON_Delete(e);
    }
    hx_sl_destroy(a);
    hx_sl_destroy(b);
    hx_sl_destroy(c);
    fx_stop(&f);
}
END_TEST

/* ---- history ---- */

static void check_history(fx *f, hx_ws *ws, const char *req, const char *const *ids, int nids,
                          int64_t below)
{
    cJSON *h, *ev;
    int k = 0;
    int64_t last = 0;

    HX_OK(f->s, hx_ws_send_text(ws, req));
    h = want(f, ws, "{\"type\":\"history\"}");
    cJSON_ArrayForEach(ev, cJSON_GetObjectItemCaseSensitive(h, "events"))
    {
        int64_t seq = hx_json_int(ev, "seq", -1);
        const char *kind = hx_json_str(ev, "kind");
        HX_ASSERT_MSG(f->s, seq > last, "history out of order: %s", cJSON_PrintUnformatted(h));
        HX_ASSERT_MSG(f->s, below == 0 || seq < below, "history event at %lld not before %lld",
                      (long long)seq, (long long)below);
        last = seq;
        if (kind != NULL && strcmp(kind, "message") == 0) {
            HX_ASSERT_MSG(f->s, k < nids && strcmp(hx_json_str(ev, "id"), ids[k]) == 0,
                          "%s: message %d is %s: %s", req, k, hx_json_str(ev, "id"),
                          cJSON_PrintUnformatted(h));
            k++;
        }
    }
    HX_ASSERT_MSG(f->s, k == nids, "%s: %d messages, wanted %d: %s", req, k, nids,
                  cJSON_PrintUnformatted(h));
    cJSON_Delete(h);
}

START_TEST(test_history)
{
    fx f;
    hx_sl_client *a, *b;
    const char *ids[] = {"h-1", "h-2", "h-3", "h-4", "h-5", "h-6"};
    int64_t seq[6];
    char *req;

    start(&f, 0, FX_AGENTS_MENTION);
    a = fx_client(&f, 0, "acme", "alice");
    b = fx_client(&f, 0, "acme", "bob");
    cJSON_Delete(join(&f, a, "hist"));
    for (int i = 0; i < 6; i++) {
        post(&f, a, ids[i], "hist", ids[i]);
        seq[i] = see_msg(&f, a, "r:hist", ids[i]);
    }
    /* The last three before h-6: events only (no presence in between:
     * alice joined before h-1), limit honoured. */
    req = hx_strf("{\"type\":\"history\",\"ch\":\"r:hist\",\"before\":%lld,\"limit\":3}",
                  (long long)seq[5]);
    check_history(&f, hx_sl_ws(a), req, ids + 2, 3, seq[5]);
    free(req);
    /* From the head, limit 2: the newest two. */
    check_history(&f, hx_sl_ws(a), "{\"type\":\"history\",\"ch\":\"r:hist\",\"limit\":2}", ids + 4,
                  2, 0);
    /* Everything before h-2: h-1 only (and alice's join). */
    req = hx_strf("{\"type\":\"history\",\"ch\":\"r:hist\",\"before\":%lld}", (long long)seq[1]);
    check_history(&f, hx_sl_ws(a), req, ids, 1, seq[1]);
    free(req);
    /* The default limit covers all six, in order; history does not need a
     * join (bob never joined), and does not count as delivery. */
    check_history(&f, hx_sl_ws(b), "{\"type\":\"history\",\"ch\":\"r:hist\"}", ids, 6, 0);
    /* The session channel: alice's private messages. */
    post(&f, a, "p-1", NULL, "private one");
    see_msg(&f, a, "s", "p-1");
    {
        const char *pids[] = {"p-1"};
        check_history(&f, hx_sl_ws(a), "{\"type\":\"history\",\"ch\":\"s\"}", pids, 1, 0);
        check_history(&f, hx_sl_ws(b), "{\"type\":\"history\",\"ch\":\"s\"}", pids, 0, 0);
    }
    /* Bad limits. */
    {
        cJSON *e;
        HX_OK(f.s,
              hx_ws_send_text(hx_sl_ws(a), "{\"type\":\"history\",\"ch\":\"r:hist\",\"limit\":0}"));
        e = fx_expect_error(&f, hx_sl_ws(a), "bad_frame");
        cJSON_Delete(e);
        HX_OK(f.s, hx_ws_send_text(hx_sl_ws(a),
                                   "{\"type\":\"history\",\"ch\":\"r:hist\",\"limit\":100000}"));
        e = fx_expect_error(&f, hx_sl_ws(a), "bad_frame");
        cJSON_Delete(e);
    }
    HX_ASSERT(f.s, hx_sl_get_counts(b).events == 0); /* history frames are not events */
    hx_sl_destroy(a);
    hx_sl_destroy(b);
    fx_stop(&f);
}
END_TEST

/* ---- ping ---- */

START_TEST(test_ping_pong)
{
    fx f;
    hx_sl_client *c;

    start(&f, 0, FX_AGENTS_MENTION);
    c = fx_client(&f, 0, "acme", "alice");
    for (int i = 0; i < 60; i++) /* more than the burst: pings are never rate limited */
        fx_ping(&f, hx_sl_ws(c));
    HX_ASSERT(f.s, fx_backlog_count(hx_sl_ws(c), "busy", NULL) == 0);
    hx_sl_destroy(c);
    fx_stop(&f);
}
END_TEST

/* ---- cancel ---- */

START_TEST(test_cancel_ends_reply_cancelled)
{
    fx f;
    hx_sl_client *c;
    cJSON *tok, *rep;
    char text[1024] = "@bot";

    for (int i = 0; i < 40; i++) { /* 8 s of tokens: within the 10 s model deadline */
        char w[16];
        snprintf(w, sizeof(w), " w%d", i);
        strcat(text, w);
    }
    start(&f, 200, FX_AGENTS_MENTION);
    c = fx_client(&f, 0, "acme", "alice");
    post(&f, c, "long-1", NULL, text);
    tok = want(&f, hx_sl_ws(c),
               "{\"type\":\"event\",\"ch\":\"s\",\"kind\":\"token\",\"to\":\"long-1\"}");
    cJSON_Delete(tok);
    HX_OK(f.s, hx_ws_send_text(hx_sl_ws(c), "{\"type\":\"cancel\",\"id\":\"long-1\"}"));
    rep = hx_sl_wait_reply(c, "long-1", 30000);
    HX_ASSERT_MSG(f.s, rep != NULL, "no final reply after cancel: %s", hx_error());
    HX_ASSERT_MSG(f.s, hx_json_true(rep, "final") && hx_json_true(rep, "cancelled"),
                  "reply not cancelled: %s", cJSON_PrintUnformatted(rep));
    HX_ASSERT_MSG(f.s, strlen(hx_json_str(rep, "text")) < strlen(text),
                  "the whole text was generated anyway: %s", cJSON_PrintUnformatted(rep));
    cJSON_Delete(rep);
    /* Exactly one final reply. */
    {
        cJSON *all = drain(&f, hx_sl_ws(c));
        HX_ASSERT(f.s, count_like(all, "{\"kind\":\"reply\",\"to\":\"long-1\"}") == 0);
        cJSON_Delete(all);
    }
    /* The session goes on: a short request is answered in full. */
    post(&f, c, "short-1", NULL, "@bot hi");
    rep = hx_sl_wait_reply(c, "short-1", 30000);
    HX_ASSERT_MSG(f.s, rep != NULL && !hx_json_true(rep, "cancelled"), "short reply: %s",
                  rep ? cJSON_PrintUnformatted(rep) : hx_error());
    cJSON_Delete(rep);
    HX_ASSERT(f.s, hx_sl_get_counts(c).duplicates == 0);
    hx_sl_destroy(c);
    fx_stop(&f);
}
END_TEST

/* ---- tenants ---- */

static void no_foreign(fx *f, const cJSON *frames, const char *foreign_marker)
{
    const cJSON *it;

    cJSON_ArrayForEach(it, frames)
    {
        const char *text = hx_json_str(it, "text");
        HX_ASSERT_MSG(f->s, text == NULL || strstr(text, foreign_marker) == NULL,
                      "a client saw another tenant's event: %s", cJSON_PrintUnformatted(it));
    }
}

START_TEST(test_tenants_with_the_same_room_are_isolated)
{
    fx f;
    hx_sl_client *a1, *a2, *g1, *g2;
    cJSON *ja2, *jg2, *all;
    char id[32];

    start(&f, 0, FX_AGENTS_MENTION);
    /* The same user names in both tenants, too. */
    a1 = fx_client(&f, 0, "acme", "alice");
    a2 = fx_client(&f, 0, "acme", "bob");
    g1 = fx_client(&f, 0, "globex", "alice");
    g2 = fx_client(&f, 0, "globex", "bob");
    cJSON_Delete(join(&f, a1, "lobby"));
    cJSON_Delete(join(&f, g1, "lobby"));
    wait_presence_kv(&f, "acme", "lobby", a1);
    wait_presence_kv(&f, "globex", "lobby", g1);
    ja2 = join(&f, a2, "lobby");
    jg2 = join(&f, g2, "lobby");
    HX_ASSERT(f.s, has_member(ja2, "alice", hx_sl_session(a1)));
    HX_ASSERT_MSG(f.s, !has_member(ja2, "alice", hx_sl_session(g1)), "acme sees globex members");
    HX_ASSERT(f.s, has_member(jg2, "alice", hx_sl_session(g1)));
    HX_ASSERT_MSG(f.s, !has_member(jg2, "alice", hx_sl_session(a1)), "globex sees acme members");

    /* globex talks first; when its own members have it, acme would have it
     * too if it leaked (same gateway, same fan-out pass). */
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof(id), "g-%d", i);
        post(&f, g1, id, "lobby", "globex-secret");
        see_msg(&f, g1, "r:lobby", id);
        see_msg(&f, g2, "r:lobby", id);
    }
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof(id), "a-%d", i);
        post(&f, a1, id, "lobby", "acme-secret");
        see_msg(&f, a1, "r:lobby", id);
        see_msg(&f, a2, "r:lobby", id);
    }
    /* Same ids in both tenants, too: each tenant's own. */
    post(&f, g1, "same-id", "lobby", "globex-secret again");
    post(&f, a1, "same-id", "lobby", "acme-secret again");
    see_msg(&f, g2, "r:lobby", "same-id");
    see_msg(&f, a2, "r:lobby", "same-id");
    all = drain(&f, hx_sl_ws(a1));
    no_foreign(&f, all, "globex");
    cJSON_Delete(all);
    all = drain(&f, hx_sl_ws(a2));
    no_foreign(&f, all, "globex");
    cJSON_Delete(all);
    all = drain(&f, hx_sl_ws(g1));
    no_foreign(&f, all, "acme");
    cJSON_Delete(all);
    all = drain(&f, hx_sl_ws(g2));
    no_foreign(&f, all, "acme");
    cJSON_Delete(all);
    /* History is per tenant as well. */
    HX_OK(f.s, hx_ws_send_text(hx_sl_ws(a2), "{\"type\":\"history\",\"ch\":\"r:lobby\"}"));
    {
        cJSON *h = want(&f, hx_sl_ws(a2), "{\"type\":\"history\"}");
        no_foreign(&f, cJSON_GetObjectItem(h, "events"), "globex");
        HX_ASSERT(f.s, count_like(cJSON_GetObjectItem(h, "events"), "{\"kind\":\"message\"}") == 6);
        cJSON_Delete(h);
    }
    HX_ASSERT(f.s, hx_sl_get_counts(a2).duplicates == 0 && hx_sl_get_counts(g2).duplicates == 0);
    cJSON_Delete(ja2);
    cJSON_Delete(jg2);
    hx_sl_destroy(a1);
    hx_sl_destroy(a2);
    hx_sl_destroy(g1);
    hx_sl_destroy(g2);
    fx_stop(&f);
}
END_TEST

/* ---- rooms per connection are bounded ---- */

typedef struct pos_has {
    fx *f;
    char key[256];
    const char *ch;
    int64_t seq;
} pos_has;

/* True once the stored positions have ch at seq. */
static bool pos_is(void *ud)
{
    pos_has *w = ud;
    char *v = fx_kv_get(w->f, SL_KV_SESSIONS, w->key);
    cJSON *o = v ? cJSON_Parse(v) : NULL;
    bool ok = hx_json_int(cJSON_GetObjectItem(o, "pos"), w->ch, -1) == w->seq;

    cJSON_Delete(o);
    free(v);
    return ok;
}

START_TEST(test_join_past_max_rooms_refused)
{
    static const char *const gw_env[] = {"SLUICE_MAX_ROOMS=3", NULL};
    fx_opts o = {.gateways = 1, .gw_env = gw_env};
    fx f;
    hx_sl_client *c;
    cJSON *e, *j, *stored;
    char *v;
    pos_has w;

    fx_start(&f, &o);
    c = fx_client(&f, 0, "acme", "alice");
    for (int i = 0; i < 3; i++) {
        char room[32];
        snprintf(room, sizeof(room), "r-%d", i);
        cJSON_Delete(join(&f, c, room));
        wait_presence_kv(&f, "acme", room, c);
    }
    HX_OK(f.s, hx_ws_send_text(hx_sl_ws(c), "{\"type\":\"join\",\"room\":\"r-3\",\"id\":\"j-3\"}"));
    e = fx_expect_error(&f, hx_sl_ws(c), "too_many_rooms");
    HX_ASSERT_MSG(f.s, hx_json_str(e, "id") != NULL && strcmp(hx_json_str(e, "id"), "j-3") == 0,
                  "the error does not echo the join's id");
    cJSON_Delete(e);
    /* Nothing changed: not a member (a send is refused), no presence, and
     * the positions stored after the refusal hold the three rooms only. */
    HX_OK(f.s, hx_sl_send(c, "s-1", "r-3", "hi", NULL));
    e = fx_expect_error(&f, hx_sl_ws(c), "not_joined");
    cJSON_Delete(e);
    HX_OK(f.s, hx_sl_ack(c, "s", 7)); /* a change that makes the gateway store positions */
    w.f = &f;
    snprintf(w.key, sizeof(w.key), "acme.%s.pos", hx_sl_session(c));
    w.ch = "s";
    w.seq = 7;
    HX_ASSERT_MSG(f.s, hx_wait_until(pos_is, &w, T), "positions never stored under %s", w.key);
    v = fx_kv_get(&f, SL_KV_SESSIONS, w.key);
    stored = v ? cJSON_Parse(v) : NULL;
    HX_ASSERT_MSG(f.s,
                  cJSON_GetArraySize(cJSON_GetObjectItem(stored, "pos")) == 4 &&
                      cJSON_GetObjectItem(cJSON_GetObjectItem(stored, "pos"), "r:r-3") == NULL,
                  "stored positions after a refused join: %s", v);
    cJSON_Delete(stored);
    free(v);
    {
        int nrec;
        char *rec = fx_presence_record_of(&f, "acme", "r-3", hx_sl_session(c), &nrec);
        HX_ASSERT_MSG(f.s, rec == NULL && nrec == 0, "a refused join left presence %s (%d records)",
                      rec, nrec);
    }
    /* Below the bound again, the same join works. */
    HX_OK(f.s, hx_ws_send_text(hx_sl_ws(c), "{\"type\":\"leave\",\"room\":\"r-0\"}"));
    want_free(&f, hx_sl_ws(c), "{\"type\":\"left\",\"room\":\"r-0\"}");
    j = join(&f, c, "r-3");
    HX_ASSERT(f.s, strcmp(hx_json_str(j, "ch"), "r:r-3") == 0);
    cJSON_Delete(j);
    hx_sl_destroy(c);
    fx_stop(&f);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gateway rooms");
    TCase *tc = tcase_create("frames");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_send_accepted_and_duplicate);
    tcase_add_test(tc, test_join_members_presence_leave);
    tcase_add_test(tc, test_joined_lists_local_members_at_once);
    tcase_add_test(tc, test_join_storm_one_read_everyone_listed);
    tcase_add_test(tc, test_joined_seq_follows_the_head_in_a_large_room);
    tcase_add_test(tc, test_ack_sends_receipts_to_the_sender);
    tcase_add_test(tc, test_receipts_keep_the_newest_64_in_order);
    tcase_add_test(tc, test_history);
    tcase_add_test(tc, test_ping_pong);
    tcase_add_test(tc, test_cancel_ends_reply_cancelled);
    tcase_add_test(tc, test_tenants_with_the_same_room_are_isolated);
    tcase_add_test(tc, test_join_past_max_rooms_refused);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
