/* Session states: the batch's sessions, their causal states read from
 * the cache or KV at once, and their advanced states written back with
 * compare-and-set (orch_loop_int.h). */
#include "orch_loop_int.h"

/* Finds the item's session among the batch's, adding it (not loaded yet:
 * sessions_load reads them all at once). */
int orch__session_of(orch_loop *l, const item *it)
{
    char key[SL_SUBJECT_MAX];
    session *s;

    if (sl_kv_key2(key, sizeof(key), it->tenant, it->env->session) != SL_OK)
        return -1;
    for (int i = 0; i < l->nsess; i++) {
        if (strcmp(l->sessions[i].key, key) == 0)
            return i;
    }
    s = &l->sessions[l->nsess];
    memset(s, 0, sizeof(*s));
    snprintf(s->key, sizeof(s->key), "%s", key);
    s->s_store = -1;
    return l->nsess++;
}

/* Gets the causal state of every session of the batch: from the cache
 * when this replica stored or read it lately and no message of the
 * session in the batch was delivered before (only those can have been
 * processed by another replica) nor waited long enough to become a gap
 * (s->fresh); the others from KV, all
 * requests in flight at once (one round trip instead of one per
 * session). */
void orch__sessions_load(orch_loop *l)
{
    int idx[BATCH_MAX], n = 0;
    int64_t now = sl_mono_ms();

    for (int i = 0; i < l->nsess; i++) {
        session *s = &l->sessions[i];
        if (!s->fresh && orch_scache_get(l->scache, s->key, now, &s->base, &s->rev)) {
            s->cur = s->base;
            s->cached = true;
            continue;
        }
        idx[n] = i;
        l->entries[n++].key = s->key;
    }
    if (n > 0)
        sl_counter_inc(l->m.rt_kv_read);
    orch_kvget_many(l->kvget, l->entries, (size_t)n, KV_READ_MS);
    for (int k = 0; k < n; k++) {
        session *s = &l->sessions[idx[k]];
        if (orch_causal_from_entry(&l->entries[k], &s->base, &s->rev) != SL_OK) {
            s->failed = true;
            orch_scache_forget(l->scache, s->key);
        } else {
            orch_scache_put(l->scache, s->key, &s->base, s->rev, now);
        }
        s->cur = s->base;
        orch_kv_entry_clear(&l->entries[k]);
        l->entries[k].key = NULL;
    }
}

/* Marks the undecided user messages of failed sessions failed. */
void orch__fail_failed_sessions(orch_loop *l, int n)
{
    for (int i = 0; i < n; i++) {
        item *it = &l->items[i];
        if (it->kind == K_USER && !it->decided && l->sessions[it->sess].failed) {
            it->decided = true;
            it->failed = true;
        }
    }
}

/* Collects the ids the batch processed for session si, in order, up to
 * the session's first failed item (later ones must wait for it). */
static int session_ids(orch_loop *l, int si, const char **ids)
{
    int nids = 0;

    for (int k = 0; k < l->norder; k++) {
        item *it = &l->items[l->order[k]];
        if (it->kind != K_USER || it->sess != si)
            continue;
        if (it->failed)
            break;
        ids[nids++] = it->env->client_id;
    }
    return nids;
}

/* Queues the first store of every advanced session as an asynchronous
 * compare-and-set on its revision (all in flight at once). */
void orch__stores_queue(orch_loop *l)
{
    for (int si = 0; si < l->nsess; si++) {
        session *s = &l->sessions[si];
        const char *ids[BATCH_MAX];
        char subj[SL_SUBJECT_MAX + 32], id[96], rev[32];
        char *json = NULL;
        int nids;

        s->s_store = -1;
        if (s->failed || (nids = session_ids(l, si, ids)) == 0)
            continue;
        s->cur = s->base;
        for (int k = 0; k < nids; k++)
            if (!orch_causal_seen(&s->cur, ids[k]))
                orch_causal_advance(&s->cur, ids[k]);
        if (orch_causal_format(&s->cur, &json) != SL_OK)
            continue; /* store_sessions tries again */
        (void)sl_kv_subject(subj, sizeof(subj), SL_KV_SESSIONS, s->key);
        /* Unique: a CAS must never be dropped as a duplicate of another. */
        snprintf(id, sizeof(id), "s:%s:%llu", l->nonce, (unsigned long long)++l->store_seq);
        snprintf(rev, sizeof(rev), "%llu", (unsigned long long)s->rev);
        if (orch_pub_add_hdr(l->pub, subj, id, json, strlen(json),
                             "Nats-Expected-Last-Subject-Sequence", rev, &s->s_store) != SL_OK)
            s->s_store = -1;
        free(json);
    }
}

/* Stores each session's advanced state: the first try is the batch's
 * asynchronous compare-and-set (stores_queue, awaited by the caller); on a
 * lost race merges our ids into the winner's state and tries again.
 * Items of a session whose state cannot be stored fail (and are
 * redelivered). */
void orch__store_sessions(orch_loop *l)
{
    for (int si = 0; si < l->nsess; si++) {
        session *s = &l->sessions[si];
        const char *ids[BATCH_MAX];
        int nids;
        bool stored = false, reload = false;

        if (s->failed) {
            orch_scache_forget(l->scache, s->key);
            continue;
        }
        if ((nids = session_ids(l, si, ids)) == 0)
            continue;
        if (s->s_store >= 0) {
            orch_pub_result r = orch_pub_get(l->pub, s->s_store);
            if (r.done && r.err == NATS_OK && !r.duplicate) {
                /* The stored state is current at its sequence. */
                orch_scache_put(l->scache, s->key, &s->cur, r.seq, sl_mono_ms());
                continue;
            }
            orch_scache_forget(l->scache, s->key);
            if (r.done && r.err == NATS_OK)
                continue;
            if (!(r.done && r.jerr == JERR_WRONG_LAST)) {
                s->failed = true; /* not stored, or not known to be */
                continue;
            }
            reload = true;
        } else {
            orch_scache_forget(l->scache, s->key);
        }
        for (int t = reload ? 1 : 0; t < CAS_TRIES && !stored; t++) {
            sl_status st;
            if (t > 0) {
                sl_counter_inc(l->m.rt_kv_sync);
                if (orch_causal_load(l->kv_sessions, s->key, &s->base, &s->rev) != SL_OK)
                    break;
            }
            /* Our processed ids on top of what is stored: after a lost race
             * the winner's ids stay and ours are added. */
            s->cur = s->base;
            for (int k = 0; k < nids; k++) {
                if (!orch_causal_seen(&s->cur, ids[k]))
                    orch_causal_advance(&s->cur, ids[k]);
            }
            sl_counter_inc(l->m.rt_kv_sync);
            st = orch_causal_store(l->kv_sessions, s->key, &s->cur, s->rev);
            if (st == SL_OK)
                stored = true;
            else if (st != SL_ERR_CONFLICT)
                break;
        }
        if (!stored)
            s->failed = true;
    }
}

/* Fails every processed item of a session after its first failed one,
 * and every item of items[0..n) found a duplicate in a session where
 * anything failed: it may be a duplicate only of a copy processed in
 * this batch (a parked copy and its redelivery are the same stream
 * message), and acking it would ack that message although its effects
 * were not stored. A true duplicate NAKed here is found a duplicate again
 * against the stored state when it comes back. */
void orch__propagate_failures(orch_loop *l, int n)
{
    for (int si = 0; si < l->nsess; si++) {
        bool fail = l->sessions[si].failed, any = fail;
        for (int k = 0; k < l->norder; k++) {
            item *it = &l->items[l->order[k]];
            if (it->kind != K_USER || it->sess != si)
                continue;
            if (it->failed)
                fail = any = true;
            if (fail)
                it->failed = true;
        }
        for (int i = 0; any && i < n; i++) {
            item *it = &l->items[i];
            if (it->kind == K_USER && it->sess == si && it->decided &&
                it->d == ORCH_CAUSAL_DUPLICATE)
                it->failed = true;
        }
    }
}
