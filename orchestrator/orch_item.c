/* One message of a batch: its decoding and classification, its effects
 * (the message event, in-flight records, work requests, then busy events
 * for refused jobs) and its end: ack, NAK or term (orch_loop_int.h). */
#include "orch_loop_int.h"

static void item_log(const item *it, sl_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void item_log(const item *it, sl_log_level lvl, const char *fmt, ...)
{
    const Sluice__Envelope *e = it->env;
    sl_log_ctx ctx = {.tenant = it->tenant[0] ? it->tenant : NULL};
    char msg[512];
    va_list ap;

    if (e != NULL) {
        ctx.session = e->session;
        ctx.event = e->event_id;
        ctx.trace = e->trace_id;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sl_logf(lvl, &ctx, "%s", msg);
}

/* Decodes and classifies one fetched message. */
void orch__classify(orch_loop *l, item *it, int64_t now_ns)
{
    const char *subj = natsMsg_GetSubject(it->m);
    char sess[SL_ID_MAX + 1];
    jsMsgMetaData *meta = NULL;
    const Sluice__Envelope *e;

    it->kind = K_BAD;
    it->order = -1;
    it->s_post = -1;
    if (sl_subject_in_parse(subj, it->tenant, sess) != SL_OK)
        return;
    if (sl_envelope_decode(natsMsg_GetData(it->m), (size_t)natsMsg_GetDataLength(it->m),
                           &it->env) != SL_OK)
        return;
    e = it->env;
    if (e->message == NULL || orch_msg_event_id(e) == NULL ||
        (e->tenant[0] != '\0' && strcmp(e->tenant, it->tenant) != 0))
        return;
    if (natsMsg_GetMetaData(&meta, it->m) == NATS_OK) {
        it->age_ms = (now_ns - meta->Timestamp) / NS_PER_MS;
        it->redelivered = meta->NumDelivered > 1;
        if (!it->redelivered)
            sl_hist_observe_ns(l->m.wait, now_ns - meta->Timestamp);
        jsMsgMetaData_Destroy(meta);
    } else if (e->ts_unix_ns > 0) {
        it->age_ms = (now_ns - e->ts_unix_ns) / NS_PER_MS;
        it->redelivered = true; /* unknown: read the session's state */
    }
    if (strncmp(sess, "a-", 2) == 0) {
        /* An agent's reply posted back: routed, not posted, not ordered. */
        it->author = e->message->agent[0] != '\0' ? e->message->agent : sess + 2;
        if (e->message->room[0] == '\0' && !sl_id_valid(e->session))
            return;
        it->kind = K_AGENT;
        return;
    }
    if (strcmp(e->session, sess) != 0 || !sl_client_id_valid(e->client_id) ||
        (e->prev_event_id[0] != '\0' && !sl_client_id_valid(e->prev_event_id)) ||
        (e->message->room[0] != '\0' && !sl_id_valid(e->message->room)))
        return;
    it->kind = K_USER;
    (void)l;
}

/* Answers the server for m by publishing body to its reply subject, with
 * {"delay":ns} when delay_ms > 0. Used for parked copies: cnats counts a
 * message as answered after its first NAK and ignores later acks, but the
 * server still takes them. */
void orch__raw_reply(orch_loop *l, natsMsg *m, const char *body, int64_t delay_ms)
{
    const char *reply = natsMsg_GetReply(m);
    char buf[64];

    if (reply == NULL || reply[0] == '\0')
        return;
    if (delay_ms > 0)
        snprintf(buf, sizeof(buf), "%s {\"delay\":%lld}", body, (long long)(delay_ms * NS_PER_MS));
    else
        snprintf(buf, sizeof(buf), "%s", body);
    (void)natsConnection_PublishString(sl_bus_nc(l->bus), reply, buf);
}

/* Queues an item's first-round effects: the message event, then per agent
 * the in-flight record and the work request. */
void orch__queue_effects(orch_loop *l, item *it)
{
    const Sluice__Envelope *e = it->env;
    size_t idx[ORCH_AGENTS_MAX];
    size_t n;
    int64_t wall = sl_now_ns() / NS_PER_MS;
    int64_t quota_retry = 0;

    if (it->kind == K_USER &&
        orch_queue_post(l->pub, e, it->tenant, natsMsg_GetData(it->m),
                        (size_t)natsMsg_GetDataLength(it->m), &it->s_post) != SL_OK) {
        it->failed = true;
        return;
    }
    /* A server API publish with "agents":false is posted, never answered. */
    n = it->kind == K_USER && e->message->no_agents
            ? 0
            : orch_route(l->agents, e->message->text, it->kind == K_AGENT ? it->author : NULL,
                         e->hops, (uint32_t)l->cfg.hop_limit, idx, ORCH_AGENTS_MAX);
    if (n == 0 && it->kind == K_AGENT && e->hops >= l->cfg.hop_limit) {
        sl_counter_inc(l->m.hop_stops);
        item_log(it, SL_LOG_INFO, "hop limit reached; agent message from %s not routed",
                 it->author);
    }
    if (n == 0)
        return;
    it->jobs = calloc(n, sizeof(*it->jobs));
    if (it->jobs == NULL) {
        it->failed = true;
        return;
    }
    it->njobs = n;
    /* One check per message: its agents' calls share the tenant's budget. */
    if (orch_quota_check(l->quota, it->tenant, wall, &quota_retry) != ORCH_QUOTA_OVER)
        quota_retry = 0;
    for (size_t j = 0; j < n; j++) {
        job_slot *js = &it->jobs[j];
        const orch_agent *a = &l->agents->v[idx[j]];
        js->agent = idx[j];
        js->s_work = js->s_busy = js->s_fail = -1;
        if (orch_job_id(js->job, sizeof(js->job), e, idx[j]) != SL_OK) {
            item_log(it, SL_LOG_WARN, "cannot make a job id for agent %s; skipped", a->name);
            js->over = false;
            continue;
        }
        if (quota_retry > 0) {
            js->quota_retry = quota_retry;
            continue;
        }
        if (a->max_concurrent > 0 &&
            orch_inflight_active(l->inflight, it->tenant, idx[j]) >= a->max_concurrent) {
            js->over = true;
            continue;
        }
        /* No "queued" in-flight record: the work message is the queued
         * state (docs/wire.md, KV); this replica counts the job from now
         * on, and the worker writes the states that follow. The request
         * says who could answer the agent's answer (hops + 1), so the
         * worker posts no agent message nobody could route. */
        orch_followers fw;
        orch_followers_of(l->agents, a->name, e->hops + 1, (uint32_t)l->cfg.hop_limit, &fw);
        if (orch_queue_work(l->pub, e, it->tenant, a, js->job, l->cfg.model_timeout_ms, &fw,
                            &js->s_work) != SL_OK)
            it->failed = true;
        else
            orch_inflight_note(l->inflight, it->tenant, js->job, idx[j], wall);
    }
}

/* Keeps the queued job (its WORK sequence and what its fallback needs)
 * until its end is seen, for the lost-work check (orch_ctl.h). */
static void track_job(orch_loop *l, const item *it, const job_slot *js, const orch_agent *a,
                      uint64_t seq)
{
    uint8_t *stub = NULL;
    size_t len = 0;
    sl_status st = SL_ERR_INVAL;

    if (seq > 0 &&
        (st = orch_work_stub_encode(it->env, it->tenant, a, js->job, &stub, &len)) == SL_OK)
        st = orch_inflight_track(l->inflight, it->tenant, js->job, seq, stub, len,
                                 sl_mono_ms() + l->cfg.lost_check_ms);
    /* SL_ERR_NOTFOUND: it has ended already, nothing to watch. */
    if (st != SL_OK && st != SL_ERR_NOTFOUND)
        sl_counter_inc(l->m.lost_untracked);
    free(stub);
}

/* Reads the first round's outcomes; queues busy events (and the failed
 * in-flight record) for refused or over-limit jobs. */
void orch__queue_followups(orch_loop *l, item *it)
{
    const Sluice__Envelope *e = it->env;

    if (it->s_post >= 0 && !orch_pub_ok(l->pub, it->s_post))
        it->failed = true;
    for (size_t j = 0; j < it->njobs && !it->failed; j++) {
        job_slot *js = &it->jobs[j];
        const orch_agent *a = &l->agents->v[js->agent];
        const char *reason = NULL;
        uint32_t retry = 0;
        if (js->job[0] == '\0')
            continue;
        if (js->quota_retry > 0) {
            reason = "quota";
            retry = js->quota_retry > UINT32_MAX ? UINT32_MAX : (uint32_t)js->quota_retry;
        } else if (js->over) {
            reason = "overloaded";
            retry = (uint32_t)orch_inflight_retry_after_ms(
                l->inflight, it->tenant, a->model, a->max_concurrent, sl_now_ns() / NS_PER_MS);
            sl_counter_inc(l->m.busy_conc);
        } else {
            orch_pub_result rw = orch_pub_get(l->pub, js->s_work);
            if (rw.err == NATS_OK) {
                track_job(l, it, js, a, rw.seq);
                if (!rw.duplicate) {
                    sl_counter_inc(l->m.dispatched);
                    orch__bell_add(l, a->model, it->tenant);
                }
                continue;
            }
            if (rw.jerr != JERR_SUBJ_FULL) {
                it->failed = true;
                break;
            }
            reason = "tenant_queue_full";
            retry = (uint32_t)orch_inflight_retry_after_ms(l->inflight, it->tenant, a->model,
                                                           l->cfg.tenant_queue_max,
                                                           sl_now_ns() / NS_PER_MS);
            sl_counter_inc(l->m.busy_full);
            {
                char *json = NULL;
                if (orch_job_json(&json, "failed", e->session,
                                  e->message_id[0] ? e->message_id : e->client_id, a->name,
                                  "busy") != SL_OK ||
                    orch_queue_job_state(l->pub, it->tenant, js->job, "f", json, &js->s_fail) !=
                        SL_OK)
                    it->failed = true;
                free(json);
            }
        }
        if (orch_queue_busy(l->pub, e, it->tenant, a->name, js->job, reason, retry, &js->s_busy) !=
            SL_OK)
            it->failed = true;
    }
}

void orch__check_followups(orch_loop *l, item *it)
{
    for (size_t j = 0; j < it->njobs && !it->failed; j++) {
        const job_slot *js = &it->jobs[j];
        if ((js->s_busy >= 0 && !orch_pub_ok(l->pub, js->s_busy)) ||
            (js->s_fail >= 0 && !orch_pub_ok(l->pub, js->s_fail)))
            it->failed = true;
    }
}

void orch__finish(orch_loop *l, item *it, int64_t t0_ns)
{
    static const char *const names[] = {"process", "duplicate", "wait", "gap"};

    if (it->kind != K_BAD)
        item_log(it, SL_LOG_DEBUG, "%s %s prev %s: %s%s (age %lld ms)",
                 it->kind == K_USER ? "user" : "agent", it->env->client_id, it->env->prev_event_id,
                 names[it->d], it->failed ? ", failed" : "", (long long)it->age_ms);
    switch (it->kind) {
    case K_BAD:
        sl_counter_inc(l->m.bad);
        item_log(it, SL_LOG_WARN, "invalid message on %s; terminated", natsMsg_GetSubject(it->m));
        natsMsg_Term(it->m, NULL);
        return;
    case K_USER:
    case K_AGENT:
        break;
    }
    if (it->failed) {
        sl_counter_inc(l->m.failed);
        if (it->from_park)
            orch__raw_reply(l, it->m, "-NAK", NAK_FAIL_MS);
        else
            natsMsg_NakWithDelay(it->m, NAK_FAIL_MS, NULL);
        return;
    }
    if (it->d == ORCH_CAUSAL_WAIT) {
        /* Parked (and NAKed with its lease as the delay). */
        sl_counter_inc(l->m.waits);
        return;
    }
    if (it->from_park)
        orch__raw_reply(l, it->m, "+ACK", 0);
    else
        natsMsg_Ack(it->m, NULL);
    if (it->d == ORCH_CAUSAL_DUPLICATE) {
        sl_counter_inc(l->m.dups);
        return;
    }
    if (it->d == ORCH_CAUSAL_GAP) {
        sl_counter_inc(l->m.gaps);
        if (it->park_full) {
            sl_counter_inc(l->m.park_full);
            item_log(it, SL_LOG_WARN,
                     "causal gap: processed without its predecessor %s (too many messages of "
                     "this session or tenant wait already, or too many in all)",
                     it->env->prev_event_id);
        } else {
            item_log(it, SL_LOG_WARN, "causal gap: processed without its predecessor %s",
                     it->env->prev_event_id);
        }
    }
    sl_counter_inc(it->kind == K_USER ? l->m.ev_user : l->m.ev_agent);
    sl_hist_observe_ns(l->m.proc, sl_now_ns() - t0_ns);
}
