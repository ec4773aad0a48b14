/* Cancels: the ones heard on core NATS (sluice.ctl.cancel.*), kept in a
 * bounded ring, and when a job must read its cancel marker instead. */
#include "wrk_loop_int.h"

/* Decodes the time in a time-sortable event id (sl_event_id_new: 10
 * base-32 digits of Unix ms first). */
bool wrk_event_id_ms(const char *id, int64_t *ms)
{
    static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    int64_t v = 0;

    if (id == NULL || ms == NULL || strlen(id) < SL_EVENT_ID_LEN)
        return false;
    for (int i = 0; i < 10; i++) {
        const char *p = strchr(b32, id[i]);
        if (p == NULL || id[i] == '\0')
            return false;
        v = v * 32 + (p - b32);
    }
    *ms = v;
    return true;
}

bool wrk_cancel_marker_needed(const char *job_id, int64_t now_ms, int64_t live_since_ms,
                              int64_t evicted_ms)
{
    int64_t t0;

    if (!wrk_event_id_ms(job_id, &t0))
        return true;
    return t0 - WRK_CANCEL_SKEW_MS <= live_since_ms || t0 - WRK_CANCEL_SKEW_MS <= evicted_ms ||
           now_ms - t0 + WRK_CANCEL_SKEW_MS >= RECENT_CANCEL_MS;
}

/* True when a cancel for the job's message was recorded: a cancel this
 * worker heard on core NATS, or a KV marker from the orchestrator. The
 * marker is read only when this worker may have missed the cancel (see
 * wrk_cancel_marker_needed): one round trip less for almost every job. */
bool wrk__cancel_requested(wrk_loop *l, wrk_slot *s, const job *j)
{
    char key[SL_SUBJECT_MAX];
    kvEntry *e = NULL;
    bool hit = false, needed = true;
    int64_t now = sl_mono_ms();
    int64_t wall = sl_now_ns() / NS_PER_MS;
    uint64_t reconnects = 0;
    bool connected =
        natsConnection_Status(l->nc) == NATS_CONN_STATUS_CONNECTED &&
        natsConnection_GetStats(l->nc, s->stats) == NATS_OK &&
        natsStatistics_GetCounts(s->stats, NULL, NULL, NULL, NULL, &reconnects) == NATS_OK;

    pthread_mutex_lock(&l->mu);
    for (size_t i = 0; l->nrecent > 0 && i < RECENT_CANCELS && !hit; i++) {
        const recent_cancel *r = &l->recent[i];
        hit = r->at_ms != 0 && now - r->at_ms < RECENT_CANCEL_MS &&
              strcmp(r->tenant, j->tenant) == 0 && strcmp(r->session, j->session) == 0 &&
              strcmp(r->to, j->to) == 0;
    }
    if (connected && reconnects != l->reconnects) {
        /* Cancels sent while we were away were not heard. */
        l->reconnects = reconnects;
        l->live_since_ms = wall;
    }
    if (connected)
        needed = wrk_cancel_marker_needed(j->job_id, wall, l->live_since_ms, l->evicted_wall_ms);
    pthread_mutex_unlock(&l->mu);
    if (hit || !needed)
        return hit;
    if (sl_cancel_key(key, sizeof(key), j->tenant, j->session, j->to) != SL_OK)
        return false;
    if (kvStore_Get(&e, l->kv_cancel, key) == NATS_OK)
        hit = true;
    kvEntry_Destroy(e);
    return hit;
}

/* ---- Cancel subscription ----------------------------------------------- */

void wrk__on_cancel(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    wrk_loop *l = closure;
    Sluice__Envelope *e = NULL;
    char tenant[SL_ID_MAX + 1];
    const char *to = NULL;
    int64_t now = sl_mono_ms();

    (void)nc;
    (void)sub;
    if (sl_subject_cancel_parse(natsMsg_GetSubject(msg), tenant) != SL_OK)
        goto cleanup;
    if (sl_envelope_decode(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &e) != SL_OK)
        goto cleanup;
    if (e->body_case == SLUICE__ENVELOPE__BODY_CANCEL && e->cancel != NULL &&
        e->cancel->message_id[0] != '\0')
        to = e->cancel->message_id;
    else
        to = e->message_id;
    if (to == NULL || !sl_client_id_valid(to) || !sl_id_valid(e->session))
        goto cleanup;
    if (e->tenant[0] != '\0' && strcmp(e->tenant, tenant) != 0)
        goto cleanup; /* the subject decides the tenant; a mismatch is bogus */
    sl_counter_inc(l->m_cancels);

    pthread_mutex_lock(&l->mu);
    recent_cancel *r = &l->recent[l->recent_next];
    l->recent_next = (l->recent_next + 1) % RECENT_CANCELS;
    if (r->at_ms != 0 && r->wall_ms > l->evicted_wall_ms)
        l->evicted_wall_ms = r->wall_ms; /* older cancels are forgotten from now on */
    if (r->at_ms == 0)
        l->nrecent++;
    copy_id(r->tenant, tenant);
    copy_id(r->session, e->session);
    copy_id(r->to, to);
    r->at_ms = now;
    r->wall_ms = sl_now_ns() / NS_PER_MS;
    pthread_mutex_unlock(&l->mu);

    for (int i = 0; i < l->nslots; i++) {
        wrk_slot *s = &l->slots[i];
        pthread_mutex_lock(&s->mu);
        if (s->busy && strcmp(s->tenant, tenant) == 0 && strcmp(s->session, e->session) == 0 &&
            strcmp(s->to, to) == 0) {
            int expected = WRK_CANCEL_NONE;
            atomic_compare_exchange_strong(&s->cancel, &expected, WRK_CANCEL_USER);
            sl_logf(SL_LOG_INFO, &(sl_log_ctx){.tenant = tenant, .session = e->session},
                    "cancel for message %s: aborting the running job", to);
        }
        pthread_mutex_unlock(&s->mu);
    }
cleanup:
    sl_envelope_free(e);
    natsMsg_Destroy(msg);
}
