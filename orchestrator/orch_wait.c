/* Causal parking, the loop's side: messages whose predecessor is missing
 * wait in the park (orch_park), are taken back into a batch when they may
 * go on, and their sessions are re-read for other replicas' progress
 * (orch_loop_int.h). */
#include "orch_loop_int.h"

/* Parks the messages that must wait (the park owns them from then on),
 * the ones that came from the park first, then the new ones, so that the
 * older keep their place. The first message past the park's bounds is
 * processed now as a gap, which may let newer ones of its session go on:
 * returns true then (the caller decides again; the rest stay undecided). */
bool orch__park_waiting(orch_loop *l, int n)
{
    int64_t now = sl_mono_ms(), lease;

    for (int k = 0; k < n; k++) {
        int i = (k + l->nfetched) % n;
        item *it = &l->items[i];
        session *s;
        sl_status st;
        if (it->kind != K_USER || it->decided)
            continue;
        s = &l->sessions[it->sess];
        it->decided = true;
        it->d = ORCH_CAUSAL_WAIT;
        lease = l->cfg.causal_wait_ms - it->age_ms;
        if (lease > PARK_LEASE_MS)
            lease = PARK_LEASE_MS;
        if (lease < 1)
            lease = 1;
        st = orch_park_add(l->park, it->tenant, s->key, it->env->client_id, it->env->prev_event_id,
                           it->m, now + lease + PARK_LEASE_GRACE);
        if (st == SL_OK) {
            /* Back to the server until the lease ends (then redelivered
             * to any replica, as a gap if the wait is over); the copy
             * lets this replica process it sooner. */
            orch__raw_reply(l, it->m, "-NAK", lease);
            it->parked = true;
            l->msgs[i] = NULL;
        } else if (st == SL_ERR_FULL) {
            it->d = ORCH_CAUSAL_GAP;
            it->park_full = true;
            orch_causal_advance(&s->cur, it->env->client_id);
            l->order[l->norder++] = i;
            return true;
        } else {
            it->failed = true; /* NAKed: it comes back */
        }
    }
    return false;
}

/* A message that would wait on a cached state may only lack what another
 * replica processed meanwhile: reads the states of those sessions from KV
 * (one round trip for all; none on one replica, where messages wait only
 * when they really came out of order) and bases them on the fresh state,
 * plus this batch's decisions so far (first deliveries, which no other
 * replica can have processed). Returns true when it read any. */
bool orch__reload_waiting(orch_loop *l, int n)
{
    int idx[BATCH_MAX], m = 0;
    int64_t now = sl_mono_ms();

    for (int i = 0; i < n; i++) {
        const item *it = &l->items[i];
        session *s;
        if (it->kind != K_USER || it->decided)
            continue;
        s = &l->sessions[it->sess];
        if (!s->cached || s->fresh || s->failed)
            continue;
        s->fresh = true; /* once */
        idx[m] = it->sess;
        l->entries[m++].key = s->key;
    }
    if (m == 0)
        return false;
    sl_counter_inc(l->m.rt_kv_read);
    orch_kvget_many(l->kvget, l->entries, (size_t)m, KV_READ_MS);
    for (int k = 0; k < m; k++) {
        session *s = &l->sessions[idx[k]];
        s->cached = false;
        if (orch_causal_from_entry(&l->entries[k], &s->base, &s->rev) != SL_OK) {
            s->failed = true;
            orch_scache_forget(l->scache, s->key);
        } else {
            orch_scache_put(l->scache, s->key, &s->base, s->rev, now);
            s->cur = s->base;
            for (int j = 0; j < l->norder; j++) {
                const item *it = &l->items[l->order[j]];
                if (it->kind == K_USER && it->sess == idx[k] &&
                    !orch_causal_seen(&s->cur, it->env->client_id))
                    orch_causal_advance(&s->cur, it->env->client_id);
            }
        }
        orch_kv_entry_clear(&l->entries[k]);
        l->entries[k].key = NULL;
    }
    orch__fail_failed_sessions(l, n);
    return true;
}

/* Adds to the batch (after its n fetched messages) the parked messages
 * that may go on: those of the sessions whose awaited predecessor the
 * batch holds (with the rest of their session, for the chains behind it),
 * those whose wait ended and those of sessions found advanced. Returns
 * the new size. */
int orch__add_parked(orch_loop *l, int n, int64_t t0)
{
    int total = n;
    char key[SL_SUBJECT_MAX];

    for (int i = 0; i < n && total < BATCH_MAX; i++) {
        const item *it = &l->items[i];
        if (it->kind != K_USER ||
            sl_kv_key2(key, sizeof(key), it->tenant, it->env->session) != SL_OK)
            continue;
        /* A redelivery of a parked message supersedes its copy. */
        orch_park_drop_id(l->park, key, it->env->client_id);
        total += (int)orch_park_take_session(l->park, key, it->env->client_id, &l->msgs[total],
                                             (size_t)(BATCH_MAX - total));
    }
    if (total < BATCH_MAX)
        total += (int)orch_park_take_ready(l->park, &l->msgs[total], (size_t)(BATCH_MAX - total));
    for (int i = n; i < total; i++) {
        memset(&l->items[i], 0, sizeof(l->items[i]));
        l->items[i].m = l->msgs[i];
        l->items[i].from_park = true;
        orch__classify(l, &l->items[i], t0);
    }
    return total;
}

/* Keeps the parked messages from redelivery and learns of their sessions'
 * progress on other replicas: re-reads the parked sessions' states (at
 * most BATCH_MAX per call, round robin) and marks those that may go on. */
void orch__park_tend(orch_loop *l)
{
    const char *keys[BATCH_MAX];
    size_t n;
    int64_t now = sl_mono_ms();

    if (orch_park_count(l->park) == 0)
        return;
    if (orch_park_expire(l->park, now) > 0)
        sl_gauge_set(l->m.parked, (int64_t)orch_park_count(l->park));
    if (now - l->last_poll_ms < PARK_POLL_MS)
        return;
    l->last_poll_ms = now;
    n = orch_park_sessions(l->park, keys, BATCH_MAX);
    for (size_t i = 0; i < n; i++)
        l->entries[i].key = keys[i];
    if (n > 0)
        sl_counter_inc(l->m.rt_kv_read);
    orch_kvget_many(l->kvget, l->entries, n, KV_READ_MS);
    for (size_t i = 0; i < n; i++) {
        orch_causal_state st;
        uint64_t rev = 0;
        if (orch_causal_from_entry(&l->entries[i], &st, &rev) == SL_OK) {
            orch_park_recheck(l->park, keys[i], &st);
            orch_scache_put(l->scache, keys[i], &st, rev, now);
        }
        orch_kv_entry_clear(&l->entries[i]);
        l->entries[i].key = NULL;
    }
}
