/* One batch: classify the fetched messages, take back parked ones that may
 * go on, decide each in causal order per session, publish the effects in
 * rounds, store the session states, then ack (orch_loop_int.h). */
#include "orch_loop_int.h"

/* Decides the undecided user messages against their sessions' states as
 * the batch advances them, pass after pass, so a batch holding c-2 before
 * c-1 processes both in order. Messages that must wait stay undecided. */
static void decide_passes(orch_loop *l, int n)
{
    bool progress = true;

    for (int pass = 0; pass < n && progress; pass++) {
        progress = false;
        for (int i = 0; i < n; i++) {
            item *it = &l->items[i];
            session *s;
            orch_causal_decision d;
            if (it->kind != K_USER || it->decided)
                continue;
            s = &l->sessions[it->sess];
            d = orch_causal_decide(&s->cur, it->env->client_id, it->env->prev_event_id, it->age_ms,
                                   l->cfg.causal_wait_ms);
            if (d == ORCH_CAUSAL_WAIT)
                continue;
            it->decided = true;
            it->d = d;
            progress = true;
            if (d == ORCH_CAUSAL_DUPLICATE)
                continue;
            orch_causal_advance(&s->cur, it->env->client_id);
            l->order[l->norder++] = i;
        }
    }
}

/* Decides every message of the batch: agent messages are processed as
 * they come; user messages in causal order per session, the ones whose
 * predecessor is missing parked (or, past the park's bounds, processed
 * as gaps). */
static void decide_all(orch_loop *l, int n)
{
    for (int i = 0; i < n; i++) {
        item *it = &l->items[i];
        if (it->kind == K_AGENT) {
            it->decided = true;
            it->d = ORCH_CAUSAL_PROCESS;
            l->order[l->norder++] = i;
        } else if (it->kind == K_USER) {
            it->sess = orch__session_of(l, it);
            if (it->sess < 0)
                it->kind = K_BAD;
            else if (it->redelivered || it->from_park || it->age_ms >= l->cfg.causal_wait_ms / 2)
                /* Only the KV state may let it be a duplicate or a gap. */
                l->sessions[it->sess].fresh = true;
        }
    }
    orch__sessions_load(l);
    orch__fail_failed_sessions(l, n);
    decide_passes(l, n);
    if (orch__reload_waiting(l, n))
        decide_passes(l, n);
    while (orch__park_waiting(l, n))
        decide_passes(l, n);
}

/* Waits for the round's outstanding publish acknowledgments (counted as
 * a round trip when there are any). */
static void pub_wait(orch_loop *l)
{
    if (orch_pub_outstanding(l->pub))
        sl_counter_inc(l->m.rt_pub_acks);
    orch_pub_wait(l->pub, PUB_WAIT_MS);
}

/* Processes l->msgs[0..n) (owned by the loop): parked ones move to the
 * park, the others are acked or NAKed and destroyed. */
void orch__process_batch(orch_loop *l, int n)
{
    int64_t t0 = sl_now_ns();

    l->nsess = 0;
    l->norder = 0;
    memset(l->items, 0, sizeof(l->items[0]) * (size_t)n);
    for (int i = 0; i < n; i++) {
        l->items[i].m = l->msgs[i];
        orch__classify(l, &l->items[i], t0);
    }
    l->nfetched = n;
    orch_park_expire(l->park, sl_mono_ms());
    n = orch__add_parked(l, n, t0);
    if (n == 0)
        return;
    /* Jobs that ended since the last batch free their agents' slots. */
    orch_inflight_poll(l->inflight);
    decide_all(l, n);

    orch_pub_reset(l->pub);
    for (int k = 0; k < l->norder; k++)
        orch__queue_effects(l, &l->items[l->order[k]]);
    pub_wait(l);

    /* A refused job's busy event goes out in a second round: we only learn
     * of the refusal from the first round's acks. */
    l->nbells = 0;
    for (int k = 0; k < l->norder; k++)
        orch__queue_followups(l, &l->items[l->order[k]]);
    orch__bells_flush(l);
    pub_wait(l);
    for (int k = 0; k < l->norder; k++)
        orch__check_followups(l, &l->items[l->order[k]]);

    orch__propagate_failures(l, n);
    orch__stores_queue(l);
    pub_wait(l);
    orch__store_sessions(l);
    orch__propagate_failures(l, n);

    for (int i = 0; i < n; i++) {
        orch__finish(l, &l->items[i], t0);
        sl_envelope_free(l->items[i].env);
        free(l->items[i].jobs);
        l->items[i].env = NULL;
        l->items[i].jobs = NULL;
        natsMsg_Destroy(l->msgs[i]); /* NULL when parked */
        l->msgs[i] = NULL;
    }
    sl_gauge_set(l->m.parked, (int64_t)orch_park_count(l->park));
}
