/* Pulling: the queues (wrk_sched), pull requests and their replies,
 * doorbells, the stream's counts, the ready list, the slot threads and the
 * dispatcher thread. The consumers themselves are made, checked and
 * replaced in wrk_consumer.c. */
#include "wrk_loop_int.h"

/* Pulling. The stream's per-subject counts are read this often, to find
 * queues with jobs nobody rang for (redeliveries, NAK delays, jobs queued
 * while this worker was away). */
#define DISCOVER_MS 200
/* A pull request nobody answered within this time is given up. */
#define REQUEST_TIMEOUT_MS 2000
/* A queue whose consumer could not be set up, or whose request failed, is
 * asked again after this. */
#define QUEUE_RETRY_MS 500
/* A queue not seen for this long is forgotten (its consumer stays; the
 * server deletes it after WRK_CONSUMER_IDLE_S without activity). */
#define QUEUE_FORGET_MS (10 * 60 * 1000)
/* The streams' sizes and limits (sluice_stream_* gauges) are sampled this
 * often. */
#define STREAM_SAMPLE_MS 15000

/* ---- Slot threads ------------------------------------------------------ */

/* How far ahead of its slots a worker pulls. A job pulled is a job
 * leased and kept from other workers, so the jobs held ahead are only as
 * many as this worker's slots start within AHEAD_WINDOW_MS, from the
 * slots' measured time per job (a fast model: up to PULL_AHEAD_MAX; a
 * model slower than the window: none, as without a buffer). Those waiting
 * get InProgress acks like running ones (every AckWait / 3), and a
 * stopping worker hands them back at once. */
#define AHEAD_WINDOW_MS 100
#define PULL_AHEAD_MAX  64
/* Weight of the newest job in the slots' average time per job: 1/8. */
#define JOB_TIME_WEIGHT 8

static int64_t mono_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Sets how far ahead to pull from the average slot time per job (us; 0:
 * none measured yet, then as many as the slots). Caller holds qmu (or no
 * thread runs yet). */
static void ahead_set(wrk_loop *l)
{
    int64_t n = l->nslots;

    if (l->job_us > 0)
        n = (int64_t)l->nslots * AHEAD_WINDOW_MS * 1000 / l->job_us;
    l->ahead = n > PULL_AHEAD_MAX ? PULL_AHEAD_MAX : (int)n;
    /* A queue is asked again once half of what it may hold ahead has
     * started: one request per about ahead / 2 jobs under a backlog,
     * instead of one per freed slot. */
    wrk_sched_set_refill(l->sched, l->ahead / 2);
}

void wrk__pull_ahead_init(wrk_loop *l)
{
    l->job_us = 0;
    ahead_set(l);
}

/* Counts a job's time in its slot (us) into the average. Caller holds
 * qmu. */
static void job_time_add(wrk_loop *l, int64_t us)
{
    if (us < 1)
        us = 1;
    if (l->job_us == 0)
        l->job_us = us;
    else
        l->job_us += (us - l->job_us) / JOB_TIME_WEIGHT;
    if (l->job_us < 1)
        l->job_us = 1;
    ahead_set(l);
}

/* Free job capacity: slots without a job plus the jobs the worker may
 * hold ahead of them, minus jobs waiting for a slot, minus jobs asked for
 * and not delivered yet. Jobs waiting beyond the room ahead (it shrank as
 * jobs got slower, or late deliveries overfilled it) do not count against
 * the free slots: a slot kept idle for a tenant below its share
 * (wrk_sched_pick) must still be able to ask that tenant's queue. Caller
 * holds qmu. */
static int free_capacity(const wrk_loop *l)
{
    int room = l->ahead - l->nready;

    return l->idle + (room > 0 ? room : 0) - wrk_sched_outstanding(l->sched);
}

static int64_t pump(wrk_loop *l, int64_t now);
static void need_setup(wrk_loop *l, const wrk_queue *q);

/* Adds a delivered job to the ready list (growing it when late deliveries
 * overfill it). Caller holds qmu. Returns false when out of memory. */
static bool ready_push(wrk_loop *l, natsMsg *msg, wrk_queue *q, int64_t now)
{
    if (l->nready == l->rcap) {
        int cap = l->rcap * 2;
        ready_job *nr = realloc(l->ready, (size_t)cap * sizeof(*nr));
        wrk_queue **np;
        if (nr == NULL)
            return false;
        l->ready = nr;
        np = realloc(l->pickq, (size_t)cap * sizeof(*np));
        if (np == NULL)
            return false;
        l->pickq = np;
        l->rcap = cap;
    }
    l->ready[l->nready++] = (ready_job){.msg = msg, .q = q, .progress_ms = now};
    return true;
}

/* Removes the i-th job of the ready list and returns it. Caller holds
 * qmu. */
static ready_job ready_take(wrk_loop *l, int i)
{
    ready_job rj = l->ready[i];

    memmove(&l->ready[i], &l->ready[i + 1], (size_t)(l->nready - i - 1) * sizeof(*l->ready));
    l->nready--;
    return rj;
}

/* The ready job a free slot starts now (wrk_sched_pick), or -1 with
 * *wake_ms as there. Caller holds qmu. */
static int ready_pick(wrk_loop *l, int64_t now, int64_t *wake_ms)
{
    *wake_ms = INT64_MAX;
    if (l->nready == 0)
        return -1;
    for (int i = 0; i < l->nready; i++)
        l->pickq[i] = l->ready[i].q;
    return wrk_sched_pick(l->sched, l->pickq, (size_t)l->nready, l->nslots, now, wake_ms);
}

/* Stopping: hands back (NAK) the jobs waiting for a slot, so another
 * worker starts them now rather than after this one's running jobs; a job
 * on its last delivery stays and runs (or is ended at once after the
 * grace), since a NAK would use that delivery up. Caller holds qmu.
 * Returns how many were handed back. */
static int ready_hand_back(wrk_loop *l, int64_t now)
{
    int n = 0;

    for (int i = 0; i < l->nready;) {
        jsMsgMetaData *meta = NULL;
        bool last = false;
        if (natsMsg_GetMetaData(&meta, l->ready[i].msg) == NATS_OK)
            last = l->max_deliver > 0 && (int64_t)meta->NumDelivered >= l->max_deliver;
        jsMsgMetaData_Destroy(meta);
        if (last) {
            i++;
            continue;
        }
        ready_job rj = ready_take(l, i);
        wrk__ack_send(l, rj.msg, SETTLE_NAK, 0);
        natsMsg_Destroy(rj.msg);
        wrk_sched_dropped(l->sched, rj.q, now);
        n++;
    }
    if (n > 0)
        sl_info("stopping: handed back %d job(s) waiting for a slot", n);
    return n;
}

void *wrk__slot_main(void *arg)
{
    wrk_slot *s = arg;
    wrk_loop *l = s->loop;

    pthread_mutex_lock(&l->qmu);
    for (;;) {
        int64_t now = sl_mono_ms(), wake;
        int i;
        if (atomic_load(&l->stopping))
            ready_hand_back(l, now);
        i = ready_pick(l, now, &wake);
        if (i >= 0) {
            ready_job rj = ready_take(l, i);
            int64_t t0;
            l->idle--;
            wrk_sched_started(l->sched, rj.q);
            pump(l, now); /* its queue's buffer may have run down */
            pthread_mutex_unlock(&l->qmu);
            t0 = mono_us();
            /* While stopping, only a job on its last delivery is left to
             * start: within the grace it may finish, and after it
             * slot_attach aborts it at once. */
            if (!wrk__job_run(s, rj.msg))
                natsMsg_Destroy(rj.msg);
            t0 = mono_us() - t0;
            pthread_mutex_lock(&l->qmu);
            job_time_add(l, t0);
            wrk_sched_release(l->sched, rj.q, sl_mono_ms());
            l->idle++;
            pump(l, sl_mono_ms());
            continue;
        }
        if (l->disp_done)
            break;
        /* Nothing waits, or what waits is kept from the slots for a
         * tenant below its share: a delivery, a pull ending or the end of
         * that tenant's linger changes it. */
        if (wake != INT64_MAX) {
            struct timespec ts = mono_abs(wake);
            pthread_cond_timedwait(&l->job_cv, &l->qmu, &ts);
        } else {
            pthread_cond_wait(&l->job_cv, &l->qmu);
        }
    }
    pthread_mutex_unlock(&l->qmu);
    return NULL;
}

/* Keeps the leases of the jobs waiting for a slot (the timer does it for
 * running ones). Caller holds qmu. */
static void ready_keep_leases(wrk_loop *l, int64_t now)
{
    int64_t every = l->ack_wait_ms / 3 > 0 ? l->ack_wait_ms / 3 : 1;

    for (int i = 0; i < l->nready; i++) {
        if (now - l->ready[i].progress_ms >= every) {
            wrk__ack_send(l, l->ready[i].msg, SETTLE_PROGRESS, 0);
            l->ready[i].progress_ms = now;
        }
    }
}

/* ---- Pulling ----------------------------------------------------------- */

/* The model index of name, or -1. */
static int model_index(const wrk_loop *l, const char *name, size_t len)
{
    for (size_t m = 0; m < l->nmodels; m++)
        if (strlen(l->models[m]) == len && strncmp(l->models[m], name, len) == 0)
            return (int)m;
    return -1;
}

/* The queue that serves (model, tenant): the model's legacy queue while
 * the model-wide consumer is in use, else the tenant's own (created when
 * create is set). Caller holds qmu. */
static wrk_queue *queue_for(wrk_loop *l, size_t m, const char *tenant, bool create)
{
    wrk_queue *q;

    if (l->legacy[m])
        return l->legacy_q[m];
    q = wrk_sched_queue(l->sched, m, l->models[m], tenant, create);
    if (q == NULL && create && sl_id_valid(tenant)) {
        static int64_t last;
        if (log_due(&last))
            sl_warn("work queue table full (%d queues): tenant %s of model %s waits",
                    WRK_QUEUES_MAX, tenant, l->models[m]);
    }
    return q;
}

/* The queue a delivery belongs to, from its consumer name. Caller holds
 * qmu. */
static wrk_queue *queue_of_consumer(wrk_loop *l, const char *consumer)
{
    char model[SL_ID_MAX + 1], tenant[SL_ID_MAX + 1];
    int m;

    if (sl_work_durable_parse(consumer, model, tenant) != SL_OK ||
        (m = model_index(l, model, strlen(model))) < 0)
        return NULL;
    if (tenant[0] == '\0')
        return l->legacy[m] ? l->legacy_q[m] : NULL;
    return wrk_sched_queue(l->sched, (size_t)m, l->models[m], tenant, true);
}

/* Replies to our pull requests. Jobs keep their own subject and carry a
 * $JS.ACK reply subject naming the consumer, so they are matched to their
 * queue (whose one open request they fill) by consumer name. Status
 * messages arrive on <inbox>.<queue id>.<token> and end a request early:
 * 404 no messages, 408 request timeout (fewer jobs than asked for) or
 * requests pending, 409 a consumer problem. A request to a consumer that
 * does not exist gets no answer at all: wrk_sched_expire ends it. Runs on a
 * cnats thread. */
static void on_pull_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    wrk_loop *l = closure;
    const char *reply = natsMsg_GetReply(msg);
    int64_t now = sl_mono_ms();
    wrk_queue *q = NULL;

    (void)nc;
    (void)sub;
    if (sl_js_is_ack_reply(reply)) {
        jsMsgMetaData *meta = NULL;
        bool ok = false;
        pthread_mutex_lock(&l->qmu);
        if (natsMsg_GetMetaData(&meta, msg) == NATS_OK)
            q = queue_of_consumer(l, meta->Consumer);
        jsMsgMetaData_Destroy(meta);
        /* Stopping (no slot will take it) or unaccountable: back to the
         * stream at once, for another worker. */
        if (l->accepting && q != NULL && ready_push(l, msg, q, now)) {
            if (wrk_sched_delivered(l->sched, q, q->req_token, now))
                pump(l, now);
            pthread_cond_signal(&l->job_cv);
            ok = true;
        }
        pthread_mutex_unlock(&l->qmu);
        if (!ok) {
            wrk__ack_send(l, msg, SETTLE_NAK, 0);
            natsMsg_Destroy(msg);
        }
        return;
    }

    {
        const char *subj = natsMsg_GetSubject(msg);
        size_t plen = strlen(l->inbox);
        unsigned long long qid = 0, token = 0;
        const char *status = NULL;
        int64_t v = 0;
        int code = 0;

        if (natsMsgHeader_Get(msg, "Status", &status) == NATS_OK && status != NULL &&
            sl_parse_int(status, &v) == SL_OK && v > 0 && v < 1000)
            code = (int)v;
        if (strncmp(subj, l->inbox, plen) != 0 || subj[plen] != '.' ||
            sscanf(subj + plen + 1, "%llu.%llu", &qid, &token) != 2 || qid >= UINT32_MAX ||
            code == 100) /* 100: a heartbeat or flow control, not an end */
            goto done;
        pthread_mutex_lock(&l->qmu);
        q = wrk_sched_by_id(l->sched, (uint32_t)qid);
        if (q != NULL && wrk_sched_ended(l->sched, q, token, now)) {
            if (code == 409 || code == 503) {
                /* The consumer cannot serve pulls (deleted meanwhile, or
                 * changed), or nobody serves them (503: no leader, or no
                 * consumer): set it up again, which also times how long it
                 * stays unusable (wrk__recover_consumer). */
                const char *desc = NULL;
                natsMsgHeader_Get(msg, "Description", &desc);
                sl_debug("pull from %s: %d %s", q->durable, code, desc != NULL ? desc : "");
                q->ready = false;
                q->retry_at_ms = now + QUEUE_RETRY_MS;
                wrk_sched_ring(l->sched, q, now, 1);
                need_setup(l, q);
            }
            pump(l, now);
            /* A tenant whose queue was found empty may no longer hold slots
             * back for its share. */
            pthread_cond_broadcast(&l->job_cv);
        }
        pthread_mutex_unlock(&l->qmu);
    }
done:
    natsMsg_Destroy(msg);
}

/* The orchestrator stored jobs for sluice.work.<model>.<tenant> and rang
 * sluice.ctl.work.<model>.<tenant>: the queue is asked at its turn. Runs
 * on a cnats thread. */
static void on_bell(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    wrk_loop *l = closure;
    char model[SL_ID_MAX + 1], tenant[SL_ID_MAX + 1];
    int m;

    (void)nc;
    (void)sub;
    if (sl_subject_bell_parse(natsMsg_GetSubject(msg), model, tenant) == SL_OK &&
        (m = model_index(l, model, strlen(model))) >= 0) {
        /* The body is the number of jobs stored (empty or malformed: at
         * least one). */
        char body[16];
        int len = natsMsg_GetDataLength(msg), jobs = 1;
        int64_t v;
        if (len > 0 && len < (int)sizeof(body)) {
            memcpy(body, natsMsg_GetData(msg), (size_t)len);
            body[len] = '\0';
            if (sl_parse_int(body, &v) == SL_OK && v >= 1 && v <= 1000000)
                jobs = (int)v;
        }
        pthread_mutex_lock(&l->qmu);
        wrk_queue *q = queue_for(l, (size_t)m, tenant, true);
        if (q != NULL) {
            int64_t now = sl_mono_ms();
            wrk_sched_ring(l->sched, q, now, jobs);
            need_setup(l, q);
            pump(l, now);
        }
        pthread_mutex_unlock(&l->qmu);
    }
    natsMsg_Destroy(msg);
}

/* Switches model m in or out of legacy mode. Caller holds qmu. */
static void set_legacy(wrk_loop *l, size_t m, bool legacy)
{
    if (legacy == l->legacy[m])
        return;
    if (legacy) {
        wrk_queue *q = wrk_sched_queue(l->sched, m, l->models[m], "", true);
        if (q == NULL)
            return; /* out of memory: retried at the next discovery */
        q->ready = true;
        q->pinned = true; /* legacy_q points to it */
        l->legacy_q[m] = q;
        l->legacy[m] = true;
        wrk_sched_ring(l->sched, q, sl_mono_ms(), 1);
        return;
    }
    l->legacy[m] = false;
    /* A legacy queue still holding jobs is freed later by wrk_sched_prune. */
    if (l->legacy_q[m] != NULL) {
        l->legacy_q[m]->pinned = false;
        wrk_sched_remove(l->sched, l->legacy_q[m]);
    }
    l->legacy_q[m] = NULL;
}

/* Reads the stream's per-subject counts for one model and rings every
 * queue with more jobs than this worker holds from it. */
static void discover_model(wrk_loop *l, size_t m, int64_t now)
{
    static int64_t last_warn;
    char filter[SL_SUBJECT_MAX];
    jsStreamInfo *si = NULL;
    jsOptions o;
    jsErrCode jerr = 0;
    natsStatus ns;

    if (sl_subject_work_tenants(filter, sizeof(filter), l->models[m]) != SL_OK)
        return;
    jsOptions_Init(&o);
    o.Stream.Info.SubjectsFilter = filter;
    ns = js_GetStreamInfo(&si, l->js, SL_STREAM_WORK, &o, &jerr);
    if (ns != NATS_OK) {
        if (log_due(&last_warn))
            sl_warn("reading %s subjects failed: %s (jerr %d); retrying", SL_STREAM_WORK,
                    natsStatus_GetText(ns), (int)jerr);
        return;
    }
    pthread_mutex_lock(&l->qmu);
    for (int i = 0; si->State.Subjects != NULL && i < si->State.Subjects->Count; i++) {
        const jsStreamStateSubject *ss = &si->State.Subjects->List[i];
        const char *tenant = strrchr(ss->Subject, '.');
        wrk_queue *q;
        if (tenant == NULL || ss->Msgs == 0)
            continue;
        q = queue_for(l, m, tenant + 1, true);
        if (q != NULL && ss->Msgs > (uint64_t)q->held && q->req_token == 0)
            wrk_sched_ring_count(l->sched, q, now,
                                 ss->Msgs - (uint64_t)q->held > INT32_MAX
                                     ? INT32_MAX
                                     : (int)(ss->Msgs - (uint64_t)q->held));
    }
    pthread_mutex_unlock(&l->qmu);
    jsStreamInfo_Destroy(si);
}

static void discover(wrk_loop *l, int64_t now)
{
    static int64_t last_warn;

    for (size_t m = 0; m < l->nmodels; m++) {
        bool legacy, own_idle;
        char err[256];

        pthread_mutex_lock(&l->qmu);
        legacy = l->legacy[m];
        own_idle = !legacy || (l->legacy_q[m]->held == 0 && l->legacy_q[m]->req_token == 0 &&
                               !l->legacy_q[m]->claimed);
        pthread_mutex_unlock(&l->qmu);
        if (legacy) {
            bool still = true;
            if (wrk__legacy_check(l, m, own_idle, &still, err, sizeof(err)) != SL_OK) {
                if (log_due(&last_warn))
                    sl_warn("%s", err);
            } else if (!still) {
                pthread_mutex_lock(&l->qmu);
                set_legacy(l, m, false);
                pthread_mutex_unlock(&l->qmu);
            }
        }
        discover_model(l, m, now);
    }
}

/* Sends the pull request of q's open request token: up to batch jobs, at
 * once (no_wait: an empty queue answers 404 without waiting). */
static natsStatus send_pull(wrk_loop *l, const char *durable, uint32_t qid, uint64_t token,
                            int batch)
{
    char subj[SL_SUBJECT_MAX], reply[192], body[64];

    if (sl_js_msg_next_subject(subj, sizeof(subj), SL_STREAM_WORK, durable) != SL_OK)
        return NATS_INVALID_ARG;
    snprintf(reply, sizeof(reply), "%s.%" PRIu32 ".%" PRIu64, l->inbox, qid, token);
    snprintf(body, sizeof(body), "{\"batch\":%d,\"no_wait\":true}", batch);
    sl_counter_inc(l->m_pulls);
    return natsConnection_PublishRequestString(l->nc, subj, reply, body);
}

/* Sends pull requests while there is free capacity and a queue whose turn
 * it is. Called with qmu held by the dispatcher and by every callback that
 * frees capacity or rings a queue, so a job needs no dispatcher wake-up.
 * The publish is made under qmu: it only queues bytes on the connection
 * and calls none of our callbacks. Queues whose consumer is not set up
 * yet keep their place in line for the dispatcher (wrk_sched_unready).
 * Returns the earliest retry time of a queue kept waiting, or INT64_MAX. */
static int64_t pump(wrk_loop *l, int64_t now)
{
    static int64_t last_warn;
    size_t tries = wrk_sched_active(l->sched) + 1;
    int64_t wake = INT64_MAX;

    for (size_t i = 0; i < tries && !atomic_load(&l->stopping); i++) {
        int free = free_capacity(l), batch = 0;
        uint64_t token;
        natsStatus ns;
        wrk_queue *q;

        if (free <= 0)
            break;
        q = wrk_sched_next(l->sched, free, now, &batch, &wake);
        if (q == NULL)
            break;
        token = wrk_sched_open(l->sched, q, batch, now);
        ns = send_pull(l, q->durable, q->id, token, batch);
        if (ns != NATS_OK && wrk_sched_ended(l->sched, q, token, now)) {
            q->retry_at_ms = now + QUEUE_RETRY_MS;
            wrk_sched_ring(l->sched, q, now, batch);
            if (log_due(&last_warn))
                sl_warn("pull request to %s failed: %s; retrying", q->durable,
                        natsStatus_GetText(ns));
        }
    }
    return wake;
}

/* Wakes the dispatcher when q needs its consumer set up. Caller holds
 * qmu. */
static void need_setup(wrk_loop *l, const wrk_queue *q)
{
    if (!q->ready && !q->setting_up)
        pthread_cond_signal(&l->disp_cv);
}

void *wrk__dispatch_main(void *arg)
{
    wrk_loop *l = arg;
    int64_t next_discover = 0, next_prune = sl_mono_ms() + QUEUE_FORGET_MS / 10;
    int64_t stop_until = 0;
    int64_t last_warn = 0;
    int64_t next_sample = 0;

    pthread_mutex_lock(&l->qmu);
    for (;;) {
        int64_t now = sl_mono_ms();
        int64_t wake = INT64_MAX;
        wrk_queue *q;

        if (atomic_load(&l->stopping)) {
            /* No new requests; the open ones are answered at once (no_wait),
             * and what they bring is handed back (or run, on its last
             * delivery). */
            ready_hand_back(l, now);
            if (stop_until == 0)
                stop_until = now + 1000;
            if (wrk_sched_outstanding(l->sched) == 0 || now >= stop_until)
                break;
            struct timespec ts = mono_abs(now + 20);
            pthread_cond_timedwait(&l->disp_cv, &l->qmu, &ts);
            continue;
        }
        if (now >= next_discover) {
            size_t n;
            pthread_mutex_unlock(&l->qmu);
            if (now >= next_sample) {
                sl_streams_sample(l->js);
                next_sample = now + STREAM_SAMPLE_MS;
            }
            discover(l, now);
            pthread_mutex_lock(&l->qmu);
            ready_keep_leases(l, now);
            n = wrk_sched_expire(l->sched, now, REQUEST_TIMEOUT_MS);
            if (n > 0)
                sl_debug("%zu pull request(s) unanswered for %d ms; asking again", n,
                         REQUEST_TIMEOUT_MS);
            if (now >= next_prune) {
                wrk_sched_prune(l->sched, now, QUEUE_FORGET_MS);
                next_prune = now + QUEUE_FORGET_MS / 10;
            }
            sl_gauge_set(l->m_queues, (int64_t)wrk_sched_active(l->sched));
            next_discover = sl_mono_ms() + DISCOVER_MS;
            continue;
        }
        /* New queues get their consumer at once, whatever the free
         * capacity; they keep their place in line meanwhile. */
        q = wrk_sched_unready(l->sched, now, &wake);
        if (q != NULL) {
            char durable[WRK_DURABLE_MAX], filter[SL_SUBJECT_MAX], err[256];
            int64_t since = q->failing_since_ms;
            sl_status st;
            snprintf(durable, sizeof(durable), "%s", q->durable);
            snprintf(filter, sizeof(filter), "%s", q->filter);
            pthread_mutex_unlock(&l->qmu);
            st = wrk__ensure_consumer(l, durable, filter, true, err, sizeof(err));
            /* Failing for long: replace it (per-tenant consumers only; the
             * model-wide one is never created again). */
            if (st == SL_ERR_BUS && since > 0 && now - since >= WRK_CONSUMER_STALL_MS &&
                strchr(durable, '~') != NULL) {
                char why[256];
                snprintf(why, sizeof(why), "%s", err);
                st = wrk__recover_consumer(l, durable, filter, now - since, why, err, sizeof(err));
                since = 0; /* the next recovery, if needed, a stall later */
            }
            pthread_mutex_lock(&l->qmu);
            if (st == SL_OK)
                q->failing_since_ms = 0;
            else if (since == 0)
                q->failing_since_ms = now;
            wrk_sched_setup_done(l->sched, q, st == SL_OK, sl_mono_ms() + QUEUE_RETRY_MS);
            if (st != SL_OK && log_due(&last_warn))
                sl_warn("work queue %s: %s; retrying", durable, err);
            pump(l, sl_mono_ms());
            continue;
        }
        {
            int64_t retry = pump(l, now);
            struct timespec ts;
            if (retry < wake)
                wake = retry;
            ts = mono_abs(wake < next_discover ? wake : next_discover);
            pthread_cond_timedwait(&l->disp_cv, &l->qmu, &ts);
        }
    }
    /* From now on a late delivery is handed back by on_pull_reply. */
    ready_hand_back(l, sl_mono_ms());
    l->accepting = false;
    l->disp_done = true;
    pthread_cond_broadcast(&l->job_cv);
    pthread_mutex_unlock(&l->qmu);
    pthread_mutex_lock(&l->mu);
    pthread_cond_broadcast(&l->idle_cv);
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Subscribes to the pull replies and the doorbells, and finds each model's
 * mode (legacy model-wide consumer or per-tenant consumers). */
sl_status wrk__setup_pulling(wrk_loop *l, char *err, size_t errlen)
{
    natsInbox *inbox = NULL;
    char subj[SL_SUBJECT_MAX];
    natsStatus ns;
    sl_status st;

    if (natsInbox_Create(&inbox) != NATS_OK)
        return SL_ERR_NOMEM;
    snprintf(l->inbox, sizeof(l->inbox), "%s", (const char *)inbox);
    natsInbox_Destroy(inbox);
    snprintf(subj, sizeof(subj), "%s.*.*", l->inbox);
    ns = natsConnection_Subscribe(&l->inbox_sub, l->nc, subj, on_pull_reply, l);
    if (ns == NATS_OK)
        ns = natsSubscription_SetPendingLimits(l->inbox_sub, -1, -1);
    if (ns != NATS_OK) {
        sl_errf(err, errlen, "subscribe %s: %s", subj, natsStatus_GetText(ns));
        return SL_ERR_BUS;
    }
    for (size_t m = 0; m < l->nmodels; m++) {
        bool legacy = false;
        st = wrk__legacy_check(l, m, true, &legacy, err, errlen);
        if (st != SL_OK)
            return st;
        pthread_mutex_lock(&l->qmu);
        set_legacy(l, m, legacy);
        pthread_mutex_unlock(&l->qmu);
        if (legacy && !l->legacy[m])
            return SL_ERR_NOMEM;
        if (legacy) {
            /* Settings as for every consumer we make; the filter is checked. */
            char durable[WRK_DURABLE_MAX], filter[SL_SUBJECT_MAX];
            if (sl_work_durable(durable, sizeof(durable), l->models[m], NULL) != SL_OK ||
                sl_subject_work_filter(filter, sizeof(filter), l->models[m], NULL) != SL_OK)
                return SL_ERR_INVAL;
            st = wrk__ensure_consumer(l, durable, filter, false, err, errlen);
            if (st == SL_ERR_INVAL)
                return st;
        }
        /* The doorbell, rung by the orchestrator once jobs are stored. */
        if (sl_subject_bell_filter(subj, sizeof(subj), l->models[m]) != SL_OK) {
            sl_errf(err, errlen, "model %s: no valid doorbell subject", l->models[m]);
            return SL_ERR_INVAL;
        }
        ns = natsConnection_Subscribe(&l->bell_subs[m], l->nc, subj, on_bell, l);
        if (ns == NATS_OK)
            ns = natsSubscription_SetPendingLimits(l->bell_subs[m], -1, -1);
        if (ns != NATS_OK) {
            sl_errf(err, errlen, "subscribe %s: %s", subj, natsStatus_GetText(ns));
            return SL_ERR_BUS;
        }
    }
    return SL_OK;
}

/* Runs or hands back what is still waiting: called after every slot
 * thread has ended, so only a NAK is left. */
void wrk__nak_ready(wrk_loop *l)
{
    int n = 0;

    pthread_mutex_lock(&l->qmu);
    while (l->nready > 0) {
        ready_job rj = ready_take(l, 0);
        wrk__ack_send(l, rj.msg, SETTLE_NAK, 0);
        natsMsg_Destroy(rj.msg);
        wrk_sched_dropped(l->sched, rj.q, sl_mono_ms());
        n++;
    }
    pthread_mutex_unlock(&l->qmu);
    if (n > 0)
        sl_info("stopping: handed back %d job(s) that arrived after the last slot ended", n);
}
