/* One job from start to ack (parse, cancel check, model call, tokens,
 * final reply, agent message, end state, ack/NAK/Term), the timer thread
 * (token chunks, InProgress, `running`), and the end decision. */
#include "wrk_loop_int.h"

/* Used when the agent configured no fallback text. */
#define DEFAULT_FALLBACK "Sorry, I cannot answer right now. Please try again."

/* The timer thread wakes at least this often. */
#define TICK_MAX_MS 200

/* A job that runs longer than this gets its `running` in-flight state
 * (written by the timer thread); shorter jobs go from queued to done. */
#define RUNNING_AFTER_MS 250

/* Bound on the time spent reading the channel history for context. */
#define CONTEXT_BUDGET_MS 1000

/* A job that could not run or store its end is handed back with this NAK
 * delay. */
#define FINAL_RETRY_MS 1000

/* The end of a job (final reply, agent message, end state) is stored again
 * and again, with a back-off from STORE_BACKOFF_MIN_MS to
 * STORE_BACKOFF_MAX_MS, for up to STORE_RETRY_MS while the timer keeps the
 * job's lease; only then is the job handed back. The bound keeps a
 * redelivery's final reply within JetStream's 2-minute duplicate window
 * (60 s here, plus the NAK delay, plus one model call), so no client ever
 * sees a second final. */
#define STORE_RETRY_MS       60000
#define STORE_BACKOFF_MIN_MS 100
#define STORE_BACKOFF_MAX_MS 2000

const char *const wrk__metric_names[5] = {"ok", "partial", "degraded", "cancelled", "failed"};

/* ---- Pure decision ----------------------------------------------------- */

static int64_t retry_delay(uint64_t attempt, int64_t retry_after_ms)
{
    int64_t d;

    if (retry_after_ms >= 0) {
        d = retry_after_ms;
    } else {
        d = WRK_RETRY_BASE_MS;
        for (uint64_t i = 1; i < attempt && d < WRK_RETRY_MAX_MS; i++)
            d *= 2;
    }
    return d > WRK_RETRY_MAX_MS ? WRK_RETRY_MAX_MS : d;
}

wrk_decision wrk_job_decide(wrk_outcome outcome, wrk_cancel_reason cancel, bool truncated,
                            size_t text_len, uint64_t attempt, int64_t max_deliver,
                            int64_t retry_after_ms)
{
    wrk_decision d = {
        .end = WRK_END_OK, .term = false, .delay_ms = 0, .kv_state = "done", .metric = "ok"};
    bool last = max_deliver > 0 && attempt >= (uint64_t)max_deliver;
    wrk_decision partial_or_degraded = {
        .end = text_len > 0 ? WRK_END_PARTIAL : WRK_END_DEGRADED,
        .kv_state = "done",
        .metric = text_len > 0 ? "partial" : "degraded",
    };
    wrk_decision degraded_term = {
        .end = WRK_END_DEGRADED, .term = true, .kv_state = "failed", .metric = "degraded"};

    switch (outcome) {
    case WRK_DONE:
        return d;
    case WRK_DEADLINE:
        return partial_or_degraded;
    case WRK_CANCELLED:
        if (truncated)
            return (wrk_decision){.end = WRK_END_PARTIAL, .kv_state = "done", .metric = "partial"};
        if (cancel == WRK_CANCEL_USER)
            return (wrk_decision){
                .end = WRK_END_CANCELLED, .kv_state = "cancelled", .metric = "cancelled"};
        if (cancel == WRK_CANCEL_SHUTDOWN) {
            if (last)
                return partial_or_degraded;
            return (wrk_decision){.end = WRK_END_REQUEUE, .kv_state = "queued"};
        }
        return degraded_term; /* cancelled for no known reason: a backend bug */
    case WRK_TRANSIENT:
        if (last)
            return degraded_term;
        return (wrk_decision){.end = WRK_END_RETRY,
                              .delay_ms = retry_delay(attempt, retry_after_ms),
                              .kv_state = "queued"};
    case WRK_FATAL:
    default:
        return degraded_term;
    }
}

static void kick_ticker(wrk_loop *l)
{
    pthread_mutex_lock(&l->mu);
    l->kick++;
    pthread_cond_signal(&l->tick_cv);
    pthread_mutex_unlock(&l->mu);
}

/* ---- Acknowledgments ---------------------------------------------------- */

natsStatus wrk__ack_send(wrk_loop *l, natsMsg *msg, int how, int64_t delay_ms)
{
    const char *reply = natsMsg_GetReply(msg);
    char body[64];

    if (!sl_js_is_ack_reply(reply))
        return NATS_ILLEGAL_STATE;
    if (how == SETTLE_ACK)
        snprintf(body, sizeof(body), "+ACK");
    else if (how == SETTLE_TERM)
        snprintf(body, sizeof(body), "+TERM");
    else if (how == SETTLE_PROGRESS)
        snprintf(body, sizeof(body), "+WPI");
    else if (delay_ms > 0)
        snprintf(body, sizeof(body), "-NAK {\"delay\":%" PRId64 "}", delay_ms * NS_PER_MS);
    else
        snprintf(body, sizeof(body), "-NAK");
    return natsConnection_PublishString(l->nc, reply, body);
}

static natsStatus in_progress_send(wrk_loop *l, natsMsg *msg)
{
    const char *reply = natsMsg_GetReply(msg);

    if (reply == NULL)
        return NATS_ILLEGAL_STATE;
    return natsConnection_PublishString(l->nc, reply, "+WPI");
}

/* ---- In-flight KV ------------------------------------------------------ */

static sl_log_ctx job_ctx(const job *j)
{
    return (sl_log_ctx){.tenant = j->tenant,
                        .session = j->session,
                        .event = j->job_id,
                        .trace = j->env != NULL ? j->env->trace_id : NULL};
}

/* The in-flight state as JSON (docs/wire.md); NULL when out of memory. */
static char *state_json(const wrk_loop *l, const char *state, const char *session, const char *to,
                        const char *agent, uint64_t attempt)
{
    cJSON *o = cJSON_CreateObject();
    char *txt = NULL;

    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "state", state);
    cJSON_AddStringToObject(o, "session", session);
    cJSON_AddStringToObject(o, "to", to);
    cJSON_AddStringToObject(o, "agent", agent);
    cJSON_AddStringToObject(o, "worker", l->worker_id);
    sl_json_add_int(o, "attempt", attempt);
    txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return txt;
}

/* Writes the job's in-flight state with an asynchronous publish on the
 * slot's context (a KV put is a publish to $KV.<bucket>.<key>); the
 * caller's next js_PublishAsyncComplete covers it. Published on the same
 * connection after every earlier state of the job, so the bucket keeps the
 * order. Returns false when it was not even sent. */
bool wrk__kv_put_async(wrk_loop *l, job *j, const char *state)
{
    wrk_slot *s = j->slot;
    char *txt = state_json(l, state, j->session, j->to, j->agent, j->attempt);
    natsStatus ns;

    if (txt == NULL)
        return false;
    ns = js_PublishAsync(s->js, j->kv_subject, txt, (int)strlen(txt), NULL);
    if (ns != NATS_OK) {
        sl_log_ctx c = job_ctx(j);
        sl_logf(SL_LOG_WARN, &c, "in-flight state %s for %s not written: %s", state, j->kv_key,
                natsStatus_GetText(ns));
    }
    free(txt);
    return ns == NATS_OK;
}

/* While the finisher stores one job's end again and again, the jobs
 * waiting behind it (the rest of its batch, and its list) keep their
 * leases: nothing else sends their InProgress. Finisher thread only. */
static void fin_keep_leases(wrk_loop *l)
{
    for (struct done_job *dj = l->fin_rest; dj != NULL; dj = dj->next)
        in_progress_send(l, dj->j.msg);
    pthread_mutex_lock(&l->fmu);
    for (struct done_job *dj = l->fhead; dj != NULL; dj = dj->next)
        in_progress_send(l, dj->j.msg);
    pthread_mutex_unlock(&l->fmu);
}

/* Returns true when the in-flight KV says the job already ended. */
static bool kv_job_finished(wrk_loop *l, const job *j, char *state, size_t statelen)
{
    kvEntry *e = NULL;
    cJSON *o = NULL;
    bool finished = false;

    if (kvStore_Get(&e, l->kv, j->kv_key) != NATS_OK)
        return false;
    o = cJSON_ParseWithLength(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
    if (o != NULL) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "state");
        if (cJSON_IsString(s) &&
            (strcmp(s->valuestring, "done") == 0 || strcmp(s->valuestring, "cancelled") == 0 ||
             strcmp(s->valuestring, "failed") == 0)) {
            finished = true;
            snprintf(state, statelen, "%s", s->valuestring);
        }
    }
    cJSON_Delete(o);
    kvEntry_Destroy(e);
    return finished;
}

/* ---- Timer thread ------------------------------------------------------ */

/* Writes the `running` state of a job that has run for a while. Called by
 * the timer with the slot lock held; the job thread takes that lock
 * (slot_finishing) before it writes its last state, so `running` can never
 * land after it. */
static void write_running(wrk_loop *l, wrk_slot *s)
{
    char *txt = state_json(l, "running", s->session, s->to, s->agent, s->attempt);

    s->want_running = false;
    if (txt == NULL)
        return;
    if (js_PublishAsync(s->js, s->kv_subject, txt, (int)strlen(txt), NULL) != NATS_OK)
        sl_debug("in-flight state running for %s not written", s->kv_subject);
    free(txt);
}

void *wrk__ticker_main(void *arg)
{
    wrk_loop *l = arg;
    int64_t progress_every = l->ack_wait_ms / 3 > 0 ? l->ack_wait_ms / 3 : 1;

    pthread_mutex_lock(&l->mu);
    while (!atomic_load(&l->ticker_stop)) {
        uint64_t kick = l->kick;
        atomic_store(&l->ticker_wake_at, 0);
        pthread_mutex_unlock(&l->mu);

        int64_t now = sl_mono_ms();
        int64_t next = now + TICK_MAX_MS;
        for (int i = 0; i < l->nslots; i++) {
            wrk_slot *s = &l->slots[i];
            pthread_mutex_lock(&s->mu);
            if (s->stream != NULL) {
                wrk_stream_tick(s->stream, now);
                int64_t due = wrk_stream_due(s->stream);
                if (due < next)
                    next = due;
            }
            if (s->msg != NULL) {
                /* Long jobs (a job's own deadline may exceed the default,
                 * and publishing takes time too) keep their lease. */
                if (now - s->progress_ms >= progress_every) {
                    in_progress_send(l, s->msg);
                    s->progress_ms = now;
                }
                if (s->progress_ms + progress_every < next)
                    next = s->progress_ms + progress_every;
                if (s->want_running) {
                    if (now - s->start_ms >= RUNNING_AFTER_MS)
                        write_running(l, s);
                    else if (s->start_ms + RUNNING_AFTER_MS < next)
                        next = s->start_ms + RUNNING_AFTER_MS;
                }
            }
            pthread_mutex_unlock(&s->mu);
        }

        pthread_mutex_lock(&l->mu);
        if (l->kick == kick && !atomic_load(&l->ticker_stop)) {
            struct timespec ts = mono_abs(next);
            atomic_store(&l->ticker_wake_at, next);
            pthread_cond_timedwait(&l->tick_cv, &l->mu, &ts);
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Wakes the timer when something is due before it would wake anyway. */
static void ticker_need(wrk_loop *l, int64_t due_ms)
{
    if (due_ms < atomic_load(&l->ticker_wake_at) || atomic_load(&l->ticker_wake_at) == 0)
        kick_ticker(l);
}

/* ---- One job ----------------------------------------------------------- */

static int on_token(void *ud, const char *text, size_t len)
{
    job *j = ud;
    wrk_loop *l = j->slot->loop;
    bool armed = false;
    int64_t now = sl_mono_ms();
    sl_status st;

    sl_counter_inc(l->m_tokens);
    st = wrk_stream_token(j->stream, text, len, now, &armed);
    if (armed)
        ticker_need(l, wrk_stream_due(j->stream));
    if (st == SL_ERR_FULL) {
        j->truncated = true;
        return 1; /* stop the model: the reply is as long as it may get */
    }
    if (st != SL_OK)
        j->stream_failed = true;
    return 0;
}

/* Binds the job to its slot, so that cancels and the timer can find it. */
static void slot_attach(wrk_slot *s, job *j)
{
    wrk_loop *l = s->loop;

    pthread_mutex_lock(&s->mu);
    s->busy = true;
    copy_id(s->tenant, j->tenant);
    copy_id(s->session, j->session);
    copy_id(s->to, j->to);
    copy_id(s->agent, j->agent);
    (void)sl_kv_subject(s->kv_subject, sizeof(s->kv_subject), SL_KV_INFLIGHT, j->kv_key);
    s->attempt = j->attempt;
    s->msg = j->msg;
    s->progress_ms = s->start_ms = sl_mono_ms();
    s->want_running = false;
    atomic_store(&s->cancel, atomic_load(&l->abort_all) ? WRK_CANCEL_SHUTDOWN : WRK_CANCEL_NONE);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&l->mu);
    l->busy++;
    pthread_mutex_unlock(&l->mu);
    sl_gauge_inc(l->m_inflight);
}

/* The model call starts: the stream is ticked by the timer from now on,
 * which also writes `running` if the job lasts. */
static void slot_started(wrk_slot *s, wrk_stream *st)
{
    pthread_mutex_lock(&s->mu);
    s->stream = st;
    s->want_running = true;
    pthread_mutex_unlock(&s->mu);
}

/* The model call is over: no more ticks and no `running` from now on, so
 * the job's next state write is its last. */
static void slot_finishing(wrk_slot *s)
{
    pthread_mutex_lock(&s->mu);
    s->stream = NULL;
    s->want_running = false;
    pthread_mutex_unlock(&s->mu);
}

/* Acks, NAKs or terminates the work message; the slot lock orders this
 * with the timer's InProgress on the same message. */
void wrk__slot_settle(wrk_slot *s, natsMsg *msg, int how, int64_t delay_ms)
{
    natsStatus ns;

    pthread_mutex_lock(&s->mu);
    s->msg = NULL;
    ns = wrk__ack_send(s->loop, msg, how, delay_ms);
    pthread_mutex_unlock(&s->mu);
    if (ns != NATS_OK)
        sl_warn("settling a work message failed: %s", natsStatus_GetText(ns));
}

static void slot_detach(wrk_slot *s)
{
    wrk_loop *l = s->loop;

    pthread_mutex_lock(&s->mu);
    s->busy = false;
    s->stream = NULL;
    s->msg = NULL;
    s->want_running = false;
    s->tenant[0] = s->session[0] = s->to[0] = s->agent[0] = '\0';
    atomic_store(&s->cancel, WRK_CANCEL_NONE);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&l->mu);
    l->busy--;
    pthread_cond_broadcast(&l->idle_cv);
    pthread_mutex_unlock(&l->mu);
    sl_gauge_dec(l->m_inflight);
}

/* Waits for the acknowledgments of the slot's asynchronous publishes
 * (tokens, agent message, in-flight state). Returns false (and logs) when
 * one failed or did not come in time. */
static bool slot_publishes_done(wrk_slot *s, const job *j, int errors_before)
{
    jsPubOptions po;
    natsStatus ns;
    sl_log_ctx c = job_ctx(j);

    jsPubOptions_Init(&po);
    po.MaxWait = PUB_WAIT_MS;
    ns = js_PublishAsyncComplete(s->js, &po);
    if (ns != NATS_OK) {
        natsMsgList pending = {0};
        sl_logf(SL_LOG_WARN, &c, "job %s: publishes not acknowledged within %d ms (%s)", j->job_id,
                PUB_WAIT_MS, natsStatus_GetText(ns));
        /* Forget them (a late acknowledgment is then ignored), or every
         * later wait of this slot would wait for them too; whoever needs
         * them stored publishes them again. */
        if (js_PublishAsyncGetPendingList(&pending, s->js) == NATS_OK)
            natsMsgList_Destroy(&pending);
        return false;
    }
    if (atomic_load(&s->pub_errors) != errors_before) {
        sl_logf(SL_LOG_WARN, &c, "job %s: the agent message or the in-flight state was not stored",
                j->job_id);
        return false;
    }
    return true;
}

/* Decodes and validates the work message. Returns false (and logs) for a
 * message no worker could ever process. */
static bool job_parse(job *j)
{
    const Sluice__Envelope *e;
    const Sluice__WorkRequest *w;
    bool is_room;
    const char *chan;

    if (sl_envelope_decode(natsMsg_GetData(j->msg), (size_t)natsMsg_GetDataLength(j->msg),
                           &j->env) != SL_OK) {
        sl_error("work message on %s is not an envelope; terminating it",
                 natsMsg_GetSubject(j->msg));
        return false;
    }
    e = j->env;
    w = e->body_case == SLUICE__ENVELOPE__BODY_WORK ? e->work : NULL;
    if (w == NULL || !sl_id_valid(e->tenant) || !sl_id_valid(w->job_id) || !sl_id_valid(w->agent)) {
        sl_error("work message on %s lacks a valid tenant, job id or agent; terminating it",
                 natsMsg_GetSubject(j->msg));
        return false;
    }
    j->work = w;
    j->tenant = e->tenant;
    j->session = e->session;
    j->job_id = w->job_id;
    j->reply_id = w->reply_id[0] != '\0' ? w->reply_id : w->job_id;
    j->to = w->to[0] != '\0' ? w->to : e->message_id;
    j->agent = w->agent;
    j->fallback = w->fallback[0] != '\0' ? w->fallback : DEFAULT_FALLBACK;
    is_room = w->room[0] != '\0';
    chan = is_room ? w->room : e->session;
    if (sl_subject_out(j->subject, sizeof(j->subject), j->tenant, is_room, chan) != SL_OK ||
        sl_kv_key2(j->kv_key, sizeof(j->kv_key), j->tenant, j->job_id) != SL_OK ||
        sl_kv_subject(j->kv_subject, sizeof(j->kv_subject), SL_KV_INFLIGHT, j->kv_key) != SL_OK) {
        sl_error("work message %s has an invalid room or session; terminating it", w->job_id);
        return false;
    }
    return true;
}

/* Sleeps up to ms, in steps, returning early once the grace of a stop is
 * over. */
static void store_backoff(wrk_loop *l, int64_t ms)
{
    int64_t until = sl_mono_ms() + ms;

    while (!atomic_load(&l->abort_all)) {
        int64_t left = until - sl_mono_ms();
        if (left <= 0)
            break;
        if (left > 100)
            left = 100;
        nanosleep(&(struct timespec){.tv_sec = 0, .tv_nsec = (long)left * 1000000L}, NULL);
    }
}

/* Stores the end of a job: the final reply, published and awaited; then
 * the agent message (for ok and partial ends, when the work request says an
 * agent could route it: wrk_agent_message_routable) and the in-flight end
 * state,
 * asynchronous, one wait for both. What fails is published again (each
 * under its Nats-Msg-Id, so JetStream keeps one copy; the end state is the
 * same value again) with a back-off, for up to STORE_RETRY_MS or until the
 * grace of a stop is over; the work message stays unacknowledged all that
 * time and the timer keeps its lease. Returns true once everything is
 * stored. */
/* Whether the job's answer goes to SLUICE_IN as an agent message: an
 * answer (whole or partial) that an agent could route. */
bool wrk__job_wants_agent_msg(const job *j, const wrk_decision *d, const char *so_far)
{
    return (d->end == WRK_END_OK || d->end == WRK_END_PARTIAL) &&
           wrk_agent_message_routable(j->work->agent_mentions_only, j->work->agent_mentions,
                                      j->work->n_agent_mentions, so_far);
}

/* Publishes the job's agent message (asynchronous) on js. SL_ERR_INVAL
 * (no valid subject for this agent: nothing that could ever be stored, so
 * nothing to wait for) is logged here. */
sl_status wrk__job_agent_msg_publish(jsCtx *js, const job *j, const char *so_far)
{
    wrk_agent_msg am = {
        .tenant = j->tenant,
        .session = j->session,
        .trace_id = j->env->trace_id,
        .hops = j->env->hops + 1,
        .reply_id = j->reply_id,
        .agent = j->agent,
        .room = j->work->room,
        .text = so_far,
    };
    sl_status st = wrk_agent_message_publish_async(js, &am);

    if (st == SL_ERR_INVAL) {
        sl_log_ctx c = job_ctx(j);
        sl_logf(SL_LOG_WARN, &c, "job %s: no agent message (%s)", j->job_id, sl_status_str(st));
    }
    return st;
}

static bool job_store_end(wrk_loop *l, job *j, const wrk_decision *d, const char *text,
                          const char *so_far)
{
    wrk_slot *s = j->slot;
    sl_log_ctx c = job_ctx(j);
    int64_t give_up = sl_mono_ms() + STORE_RETRY_MS;
    int64_t backoff = STORE_BACKOFF_MIN_MS;
    bool final_ok = false;
    bool want_agent = wrk__job_wants_agent_msg(j, d, so_far);

    if (!want_agent && (d->end == WRK_END_OK || d->end == WRK_END_PARTIAL) && !j->agent_counted)
        sl_counter_inc(l->m_agent_skipped);
    j->agent_counted = true;
    for (int round = 0;; round++) {
        if (round > 0) {
            if (sl_mono_ms() + backoff > give_up || atomic_load(&l->abort_all))
                return false;
            sl_counter_inc(l->m_store_retries);
            /* The finisher's jobs have no timer keeping their lease (a
             * slot's job gets one from the timer too: harmless). */
            pthread_mutex_lock(&s->mu);
            in_progress_send(l, j->msg);
            pthread_mutex_unlock(&s->mu);
            if (s == l->fin)
                fin_keep_leases(l);
            store_backoff(l, backoff);
            backoff = backoff * 2 > STORE_BACKOFF_MAX_MS ? STORE_BACKOFF_MAX_MS : backoff * 2;
        }
        if (!final_ok) {
            bool duplicate = false;
            sl_status st = wrk_stream_final(j->stream, text, d->end == WRK_END_DEGRADED,
                                            d->end == WRK_END_PARTIAL, d->end == WRK_END_CANCELLED,
                                            &duplicate);
            if (st != SL_OK) {
                sl_logf(SL_LOG_WARN, &c, "job %s: final reply not stored (%s); trying again",
                        j->job_id, sl_status_str(st));
                continue;
            }
            final_ok = true;
            if (duplicate && round == 0)
                sl_logf(SL_LOG_INFO, &c, "job %s: a final reply was already stored", j->job_id);
        }
        int errors_before = atomic_load(&s->pub_errors);
        bool sent = true;
        if (want_agent) {
            sl_status st = wrk__job_agent_msg_publish(s->js, j, so_far);
            if (st == SL_ERR_INVAL)
                want_agent = false; /* nothing that could be stored */
            else if (st != SL_OK)
                sent = false;
        }
        if (!wrk__kv_put_async(l, j, d->kv_state))
            sent = false;
        if (slot_publishes_done(s, j, errors_before) && sent)
            return true;
        sl_logf(SL_LOG_WARN, &c, "job %s: %s not stored; trying again before the ack", j->job_id,
                want_agent ? "the agent message or the end state" : "the end state");
    }
}

/* Stores the end of the job (job_store_end), and only then acks (or
 * terminates) the work message. When the end could not be stored in time
 * the job is handed back (NAK): the next attempt ends it, and its final
 * reply is a duplicate JetStream drops when this one was stored. Returns
 * true when the end was stored. */
bool wrk__job_finish(wrk_loop *l, job *j, const wrk_decision *d)
{
    wrk_slot *s = j->slot;
    sl_log_ctx c = job_ctx(j);
    size_t len = 0;
    const char *so_far = wrk_stream_text(j->stream, &len);
    const char *text = d->end == WRK_END_DEGRADED ? j->fallback : so_far;

    if (!job_store_end(l, j, d, text, so_far)) {
        sl_logf(SL_LOG_ERROR, &c,
                "job %s: its end could not be stored; handing it back for another attempt",
                j->job_id);
        sl_counter_inc(l->m_jobs[M_FAILED]);
        wrk__slot_settle(s, j->msg, SETTLE_NAK, FINAL_RETRY_MS);
        return false;
    }
    wrk__slot_settle(s, j->msg, d->term ? SETTLE_TERM : SETTLE_ACK, 0);
    for (int i = 0; i < 4; i++)
        if (d->metric != NULL && strcmp(d->metric, wrk__metric_names[i]) == 0)
            sl_counter_inc(l->m_jobs[i]);
    sl_logf(SL_LOG_DEBUG, &c,
            "job %s attempt %" PRIu64 " ended: %s (%zu bytes, %" PRIu32 " chunks)", j->job_id,
            j->attempt, d->metric != NULL ? d->metric : "?", strlen(text),
            wrk_stream_chunks(j->stream));
    return true;
}

/* Builds the model's messages: system prompt, channel history, the message
 * answered. */
static sl_status job_messages(wrk_loop *l, job *j, int64_t deadline, wrk_history **hist,
                              wrk_msg **out, size_t *n)
{
    wrk_msg *msgs = NULL;
    size_t k = 0, nh = 0;

    if (l->cfg.context_messages > 0) {
        int64_t budget = (deadline - sl_mono_ms()) / 4;
        if (budget > CONTEXT_BUDGET_MS)
            budget = CONTEXT_BUDGET_MS;
        if (budget > 0) {
            sl_status st = wrk_history_load(j->slot->js, j->subject, j->to, j->agent,
                                            (size_t)l->cfg.context_messages, budget, hist);
            if (st != SL_OK) {
                sl_log_ctx c = job_ctx(j);
                sl_logf(SL_LOG_WARN, &c, "job %s: no channel context (%s)", j->job_id,
                        sl_status_str(st));
            }
        }
        if (*hist != NULL)
            nh = (*hist)->n;
    }
    msgs = calloc(nh + 2, sizeof(*msgs));
    if (msgs == NULL)
        return SL_ERR_NOMEM;
    if (j->work->system_prompt[0] != '\0')
        msgs[k++] = (wrk_msg){.role = "system", .content = j->work->system_prompt};
    for (size_t i = 0; i < nh; i++)
        msgs[k++] = (*hist)->msgs[i];
    msgs[k++] = (wrk_msg){.role = "user", .content = j->work->text};
    *out = msgs;
    *n = k;
    return SL_OK;
}

bool wrk__job_run(wrk_slot *s, natsMsg *msg)
{
    wrk_loop *l = s->loop;
    job j = {.slot = s, .msg = msg, .start_ms = sl_mono_ms()};
    bool handed = false;
    char handed_id[SL_ID_MAX + 1]; /* the reply id, copied before the hand-over */
    jsMsgMetaData *meta = NULL;
    wrk_history *hist = NULL;
    wrk_msg *msgs = NULL;
    size_t nmsgs = 0;
    wrk_result res;
    wrk_decision d;
    char state[32];
    sl_log_ctx c;
    bool attached = false;
    int64_t deadline;

    if (natsMsg_GetMetaData(&meta, msg) != NATS_OK) {
        sl_error("work message without JetStream metadata; ignoring it");
        goto cleanup;
    }
    j.attempt = meta->NumDelivered;
    if (j.attempt == 1)
        sl_hist_observe_ns(l->m_wait, sl_now_ns() - meta->Timestamp);
    if (!job_parse(&j)) {
        sl_counter_inc(l->m_jobs[M_FAILED]);
        wrk__ack_send(l, msg, SETTLE_TERM, 0);
        goto cleanup;
    }
    c = job_ctx(&j);
    /* Attach before looking for cancels, so a cancel arriving from now on
     * reaches the slot and one that arrived earlier is found below. */
    slot_attach(s, &j);
    attached = true;
    sl_logf(SL_LOG_DEBUG, &c, "slot %d took job %s", (int)(s - l->slots), j.reply_id);

    /* Only a redelivery can find its job ended: a first delivery is the
     * first time any worker sees the job (a work message published again
     * under the same Nats-Msg-Id is dropped by JetStream, and so would be
     * this attempt's reply). */
    if (j.attempt > 1 && kv_job_finished(l, &j, state, sizeof(state))) {
        sl_logf(SL_LOG_INFO, &c, "job %s already ended (%s); acking the redelivery", j.job_id,
                state);
        wrk__slot_settle(s, msg, SETTLE_ACK, 0);
        goto cleanup;
    }

    wrk_stream_params sp = {
        .subject = j.subject,
        .tenant = j.tenant,
        .session = j.session,
        .trace_id = j.env->trace_id,
        .hops = j.env->hops,
        .job_id = j.job_id,
        .reply_id = j.reply_id,
        .to = j.to,
        .agent = j.agent,
        .attempt = (uint32_t)j.attempt,
        .window_ms = l->cfg.coalesce_ms,
        .first_window_ms = l->cfg.coalesce_first_ms,
        .max_bytes = (size_t)l->cfg.coalesce_bytes,
        /* Token events are best effort (the final reply carries the whole
         * text): no acknowledgment traffic for them. */
        .nc = l->nc,
    };
    if (wrk_stream_create(&j.stream, s->js, &sp) != SL_OK) {
        sl_logf(SL_LOG_ERROR, &c, "job %s: out of memory; will be retried", j.job_id);
        wrk__slot_settle(s, msg, SETTLE_NAK, FINAL_RETRY_MS);
        goto cleanup;
    }

    if (atomic_load(&s->cancel) == WRK_CANCEL_USER || wrk__cancel_requested(l, s, &j)) {
        d = (wrk_decision){
            .end = WRK_END_CANCELLED, .kv_state = "cancelled", .metric = "cancelled"};
        sl_logf(SL_LOG_INFO, &c, "job %s was cancelled before it started", j.job_id);
        wrk__job_finish(l, &j, &d);
        goto cleanup;
    }

    deadline = j.start_ms + (j.work->deadline_ms > 0 ? j.work->deadline_ms : l->cfg.timeout_ms);
    if (job_messages(l, &j, deadline, &hist, &msgs, &nmsgs) != SL_OK) {
        wrk__slot_settle(s, msg, SETTLE_NAK, FINAL_RETRY_MS);
        goto cleanup;
    }
    slot_started(s, j.stream);

    wrk_call call = {
        .model = j.work->model,
        .msgs = msgs,
        .nmsgs = nmsgs,
        .deadline_ms = deadline,
        .cancel = &s->cancel,
    };
    wrk_backend_call(l->backend, &call, on_token, &j, &res);
    slot_finishing(s);
    wrk_stream_end(j.stream);

    size_t len = 0;
    wrk_stream_text(j.stream, &len);
    d = wrk_job_decide(res.outcome, (wrk_cancel_reason)atomic_load(&s->cancel), j.truncated, len,
                       j.attempt, l->max_deliver, res.retry_after_ms);
    /* The usage of the call that ends the job goes with its final reply
     * and is counted once that reply is stored (docs/protocol.md). */
    wrk_call_usage used =
        wrk_usage_of_call(&res, msgs, nmsgs, wrk_stream_text(j.stream, NULL), len);
    wrk_stream_set_usage(j.stream, used.input_tokens, used.output_tokens, used.estimated);
    if (res.outcome != WRK_DONE)
        sl_logf(SL_LOG_INFO, &c, "job %s attempt %" PRIu64 ": model call %s (http %d): %s",
                j.job_id, j.attempt, wrk_outcome_str(res.outcome), res.http_status, res.error);

    if (d.end == WRK_END_RETRY || d.end == WRK_END_REQUEUE) {
        int errors_before = atomic_load(&s->pub_errors);
        wrk__kv_put_async(l, &j, d.kv_state);
        (void)slot_publishes_done(s, &j, errors_before);
        sl_counter_inc(d.end == WRK_END_RETRY ? l->m_retries : l->m_requeued);
        sl_logf(SL_LOG_INFO, &c, "job %s attempt %" PRIu64 ": %s in %" PRId64 " ms", j.job_id,
                j.attempt, d.end == WRK_END_RETRY ? "retrying" : "handing back", d.delay_ms);
        wrk__slot_settle(s, msg, SETTLE_NAK, d.delay_ms);
        goto cleanup;
    }
    /* Once handed over, the job's strings (its envelope's) are the
     * finisher's, which may free them at once: the slot's last log line
     * uses a copy of the reply id and no context. */
    copy_id(handed_id, j.reply_id);
    if (wrk__job_hand_over(l, &j, &d, &used)) {
        handed = true;
        goto cleanup;
    }
    if (wrk__job_finish(l, &j, &d))
        wrk_usage_add(l->usage, j.tenant, j.agent, used.input_tokens, used.output_tokens);
    {
        int64_t first = wrk_stream_first_chunk_ms(j.stream);
        if (first > 0)
            sl_hist_observe_ns(l->m_ttft, (first - j.start_ms) * NS_PER_MS);
        sl_hist_observe_ns(l->m_job, (sl_mono_ms() - j.start_ms) * NS_PER_MS);
    }

cleanup:
    if (attached) {
        slot_detach(s);
        sl_logf(SL_LOG_DEBUG, handed ? NULL : &c, "slot %d let go of job %s", (int)(s - l->slots),
                handed ? handed_id : j.reply_id);
    }
    wrk_stream_destroy(j.stream);
    free(msgs);
    wrk_history_destroy(hist);
    sl_envelope_free(j.env);
    jsMsgMetaData_Destroy(meta);
    return handed;
}
