/* The job loop's life: create (subscriptions, consumers, threads), stop
 * (graceful, with a grace), destroy, and its metrics. The work itself is
 * in wrk_pull.c, wrk_job.c and wrk_cancel.c (wrk_loop_int.h). */
#include "wrk_loop_int.h"

/* ---- Setup ------------------------------------------------------------- */

static void on_pub_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    wrk_slot *s = closure;

    (void)js;
    atomic_fetch_add(&s->pub_errors, 1);
    /* The final reply carries the whole text, so a lost token chunk only
     * costs the client some streaming; count and log it. */
    sl_counter_inc(sl_counter_get("sluice_wrk_publish_errors_total", NULL,
                                  "token, reply or agent-message publishes that failed"));
    sl_debug("publish not acknowledged: %s (jerr %d)", natsStatus_GetText(pae->Err),
             (int)pae->ErrCode);
}

static void init_metrics(wrk_loop *l)
{
    for (int i = 0; i < 5; i++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "outcome=\"%s\"", wrk__metric_names[i]);
        l->m_jobs[i] = sl_counter_get("sluice_wrk_jobs_total", labels,
                                      "jobs ended, by outcome (failed: the reply could not be "
                                      "stored or the job was unreadable)");
    }
    l->m_tokens = sl_counter_get("sluice_wrk_tokens_total", NULL, "tokens received from models");
    l->m_retries = sl_counter_get("sluice_wrk_retries_total", NULL,
                                  "transient model failures handed back with a NAK delay");
    l->m_requeued =
        sl_counter_get("sluice_wrk_requeued_total", NULL, "running jobs handed back at shutdown");
    l->m_cancels = sl_counter_get("sluice_wrk_cancels_total", NULL,
                                  "cancel requests received on sluice.ctl.cancel");
    l->m_store_retries =
        sl_counter_get("sluice_wrk_store_retries_total", NULL,
                       "rounds in which a job's final reply, agent message or end state was "
                       "stored again before the ack");
    l->m_agent_skipped =
        sl_counter_get("sluice_wrk_agent_messages_skipped_total", NULL,
                       "answers posted back to no agent: the work request said none could "
                       "route them");
    l->m_consumer_recoveries =
        sl_counter_get("sluice_wrk_consumer_recoveries_total", NULL,
                       "work consumers deleted and created afresh after failing for 20 s "
                       "(a consumer left without quorum by a node loss)");
    l->m_pulls = sl_counter_get("sluice_wrk_pull_requests_total", NULL,
                                "pull requests sent to the work queues (tenant turns)");
    l->m_ttft = sl_hist_get("sluice_wrk_ttft_seconds", NULL,
                            "time from job start to the first token event published");
    l->m_job = sl_hist_get("sluice_wrk_job_seconds", NULL, "time from job start to its end");
    l->m_wait = sl_hist_get("sluice_wrk_wait_seconds", NULL,
                            "time from a work request's store on WORK to a slot taking it, first "
                            "deliveries (nats-server's clock to ours)");
    l->m_inflight = sl_gauge_get("sluice_wrk_inflight", NULL, "jobs running in this worker");
    l->m_queues = sl_gauge_get("sluice_wrk_active_queues", NULL,
                               "work queues (model, tenant) waiting for their turn");
}

static sl_status start_thread(pthread_t *th, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    int rc;

    /* Threads started here never take signals: main handles them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(th, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc == 0 ? SL_OK : SL_ERR_INTERNAL;
}

sl_status wrk_loop_create(wrk_loop **out, sl_bus *bus, wrk_backend *backend,
                          const wrk_loop_cfg *cfg, char *err, size_t errlen)
{
    wrk_loop *l = NULL;
    pthread_condattr_t ca;
    natsStatus ns;
    sl_status st = SL_OK;

    if (out == NULL || bus == NULL || backend == NULL || cfg == NULL || cfg->models == NULL ||
        cfg->nmodels == 0 || cfg->concurrency < 1 || cfg->concurrency > WRK_CONCURRENCY_MAX ||
        cfg->timeout_ms <= 0 || cfg->ack_grace_ms < 0 || cfg->coalesce_ms < 0 ||
        cfg->coalesce_first_ms < 0 || cfg->coalesce_bytes < 1 || cfg->context_messages < 0 ||
        (cfg->weights == NULL && cfg->nweights > 0)) {
        sl_errf(err, errlen, "wrk_loop_create: bad configuration");
        return SL_ERR_INVAL;
    }
    for (size_t m = 0; m < cfg->nmodels; m++) {
        if (!sl_id_valid(cfg->models[m])) {
            sl_errf(err, errlen, "SLUICE_WORKER_MODELS: \"%.64s\" is not a valid model id",
                    cfg->models[m] != NULL ? cfg->models[m] : "");
            return SL_ERR_INVAL;
        }
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return SL_ERR_NOMEM;
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->qmu, NULL);
    pthread_mutex_init(&l->fmu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->tick_cv, &ca);
    pthread_cond_init(&l->idle_cv, &ca);
    pthread_cond_init(&l->job_cv, &ca);
    pthread_cond_init(&l->disp_cv, &ca);
    pthread_cond_init(&l->fin_cv, &ca);
    pthread_cond_init(&l->fin_room, &ca);
    pthread_condattr_destroy(&ca);
    l->bus = bus;
    l->nc = sl_bus_nc(bus);
    l->backend = backend;
    l->cfg = *cfg;
    l->stopped = false;
    l->accepting = true;
    l->ack_wait_ms = cfg->timeout_ms + cfg->ack_grace_ms;
    l->max_deliver = WRK_MAX_DELIVER;
    init_metrics(l);

    l->models = calloc(cfg->nmodels, sizeof(*l->models));
    l->legacy = calloc(cfg->nmodels, sizeof(*l->legacy));
    l->legacy_q = calloc(cfg->nmodels, sizeof(*l->legacy_q));
    l->bell_subs = calloc(cfg->nmodels, sizeof(*l->bell_subs));
    l->worker_id = strdup(cfg->worker_id != NULL ? cfg->worker_id : "worker");
    if (l->models == NULL || l->legacy == NULL || l->legacy_q == NULL || l->bell_subs == NULL ||
        l->worker_id == NULL) {
        st = SL_ERR_NOMEM;
        goto cleanup;
    }
    l->nmodels = cfg->nmodels;
    for (size_t m = 0; m < cfg->nmodels; m++) {
        l->models[m] = strdup(cfg->models[m]);
        if (l->models[m] == NULL) {
            st = SL_ERR_NOMEM;
            goto cleanup;
        }
    }
    l->cfg.models = (const char *const *)l->models;
    l->cfg.worker_id = l->worker_id;

    ns = natsConnection_JetStream(&l->js, l->nc, NULL);
    if (ns != NATS_OK) {
        sl_errf(err, errlen, "jetstream context: %s", natsStatus_GetText(ns));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    st = sl_bus_kv(bus, SL_KV_INFLIGHT, &l->kv);
    if (st == SL_OK)
        st = sl_bus_kv(bus, SL_KV_CANCEL, &l->kv_cancel);
    if (st != SL_OK) {
        sl_errf(err, errlen, "buckets %s, %s: %s", SL_KV_INFLIGHT, SL_KV_CANCEL, sl_status_str(st));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    st = sl_bus_kv(bus, SL_KV_QUOTA, &l->kv_quota);
    if (st == SL_OK)
        st = sl_bus_kv(bus, SL_KV_USAGE, &l->kv_usage);
    if (st != SL_OK) {
        sl_errf(err, errlen, "buckets %s, %s: %s", SL_KV_QUOTA, SL_KV_USAGE, sl_status_str(st));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    st = wrk_usage_create(&l->usage, l->kv_quota, l->kv_usage);
    if (st != SL_OK) {
        sl_errf(err, errlen, "token usage accounting: %s", sl_status_str(st));
        goto cleanup;
    }

    l->nslots = cfg->concurrency;
    l->slots = calloc((size_t)l->nslots + 1, sizeof(*l->slots)); /* + the finisher's */
    /* Jobs waiting for the finisher: the next batch, while one is stored.
     * Large enough that a batch's two round trips are shared by many jobs
     * when nats-server is slow to answer (a full list stops the slots, and
     * so the pulls); bounded so that a stuck finisher stops them soon. */
    l->fmax = 8 * l->nslots < 64 ? 64 : 8 * l->nslots > 256 ? 256 : 8 * l->nslots;
    l->rcap = 2 * l->nslots; /* the slots and the jobs pulled ahead of them */
    l->ready = calloc((size_t)l->rcap, sizeof(*l->ready));
    l->pickq = calloc((size_t)l->rcap, sizeof(*l->pickq));
    if (l->slots == NULL || l->ready == NULL || l->pickq == NULL ||
        wrk_sched_create(&l->sched, WRK_QUEUES_MAX) != SL_OK) {
        st = SL_ERR_NOMEM;
        goto cleanup;
    }
    st = wrk_sched_set_weights(l->sched, cfg->weights, cfg->nweights);
    if (st != SL_OK) {
        sl_errf(err, errlen, "SLUICE_TENANT_WEIGHTS: %s", sl_status_str(st));
        goto cleanup;
    }
    l->cfg.weights = NULL; /* the table has its copy */
    l->cfg.nweights = 0;
    l->idle = l->nslots;
    wrk__pull_ahead_init(l);
    l->fin = &l->slots[l->nslots];
    for (int i = 0; i <= l->nslots; i++) {
        wrk_slot *s = &l->slots[i];
        jsOptions jo;
        s->loop = l;
        s->idx = i;
        pthread_mutex_init(&s->mu, NULL);
        atomic_init(&s->cancel, WRK_CANCEL_NONE);
        atomic_init(&s->pub_errors, 0);
        if (natsStatistics_Create(&s->stats) != NATS_OK) {
            st = SL_ERR_NOMEM;
            goto cleanup;
        }
        /* A context per slot: its asynchronous publishes are this slot's
         * alone, so one js_PublishAsyncComplete waits for one job's. */
        jsOptions_Init(&jo);
        /* The finisher's batches: a final reply, an agent message and an
         * end state per job. */
        jo.PublishAsync.MaxPending = i < l->nslots ? 1024 : 4 * 256;
        jo.PublishAsync.ErrHandler = on_pub_error;
        jo.PublishAsync.ErrHandlerClosure = s;
        ns = natsConnection_JetStream(&s->js, l->nc, &jo);
        if (ns != NATS_OK) {
            sl_errf(err, errlen, "jetstream context: %s", natsStatus_GetText(ns));
            st = SL_ERR_BUS;
            goto cleanup;
        }
    }

    st = wrk__setup_pulling(l, err, errlen);
    if (st != SL_OK)
        goto cleanup;

    ns = natsConnection_Subscribe(&l->cancel_sub, l->nc, SL_SUBJECT_CANCEL_ALL, wrk__on_cancel, l);
    if (ns == NATS_OK) /* a dropped cancel would go unnoticed: no client-side limit */
        ns = natsSubscription_SetPendingLimits(l->cancel_sub, -1, -1);
    if (ns != NATS_OK) {
        sl_errf(err, errlen, "subscribe %s: %s", SL_SUBJECT_CANCEL_ALL, natsStatus_GetText(ns));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    /* Make sure the server has our interests (cancels, doorbells, pull
     * replies) before jobs run; cancels are heard from then on. Until that
     * is sure, every job reads its cancel marker. */
    {
        natsStatistics *stats = NULL;
        uint64_t reconnects = 0;
        bool flushed = natsConnection_FlushTimeout(l->nc, 2000) == NATS_OK;
        if (natsStatistics_Create(&stats) == NATS_OK &&
            natsConnection_GetStats(l->nc, stats) == NATS_OK)
            natsStatistics_GetCounts(stats, NULL, NULL, NULL, NULL, &reconnects);
        natsStatistics_Destroy(stats);
        l->reconnects = reconnects;
        l->live_since_ms = sl_now_ns() / NS_PER_MS + (flushed ? 0 : RECENT_CANCEL_MS);
    }

    st = start_thread(&l->ticker, wrk__ticker_main, l);
    if (st != SL_OK) {
        sl_errf(err, errlen, "cannot start the timer thread");
        goto cleanup;
    }
    l->ticker_started = true;
    st = start_thread(&l->fin_th, wrk__finisher_main, l);
    if (st != SL_OK) {
        sl_errf(err, errlen, "cannot start the finisher thread");
        goto cleanup;
    }
    l->fin_started = true;
    for (int i = 0; i < l->nslots; i++) {
        st = start_thread(&l->slots[i].th, wrk__slot_main, &l->slots[i]);
        if (st != SL_OK) {
            sl_errf(err, errlen, "cannot start job thread %d", i);
            goto cleanup;
        }
        l->slots[i].started = true;
    }
    st = start_thread(&l->disp, wrk__dispatch_main, l);
    if (st != SL_OK) {
        sl_errf(err, errlen, "cannot start the dispatcher thread");
        goto cleanup;
    }
    l->disp_started = true;
    atomic_store(&l->running, 1);
    sl_info("worker %s: %d job slots on %zu model(s), AckWait %" PRId64 " ms, MaxDeliver %" PRId64
            ", a consumer per (model, tenant)",
            l->worker_id, l->nslots, l->nmodels, l->ack_wait_ms, l->max_deliver);
    *out = l;
    l = NULL;
cleanup:
    wrk_loop_destroy(l);
    return st;
}

bool wrk_loop_ready(const wrk_loop *l)
{
    return l != NULL && atomic_load(&l->running) && !atomic_load(&l->stopping);
}

static void sub_close(natsSubscription *sub, int64_t wait_ms)
{
    if (sub == NULL)
        return;
    /* Drain: a running callback finishes before the loop is freed. */
    if (natsSubscription_Drain(sub) == NATS_OK)
        natsSubscription_WaitForDrainCompletion(sub, wait_ms);
    else
        natsSubscription_Unsubscribe(sub);
}

/* True when the loop holds no job: none running, none waiting for a slot,
 * and the dispatcher has stopped asking for more. */
static bool loop_empty(wrk_loop *l)
{
    bool empty;

    pthread_mutex_lock(&l->qmu);
    empty = l->nready == 0 && (l->disp_done || !l->disp_started);
    pthread_mutex_unlock(&l->qmu);
    return empty;
}

void wrk_loop_stop(wrk_loop *l, int64_t grace_ms)
{
    int64_t until;
    int left;

    if (l == NULL || l->stopped)
        return;
    l->stopped = true;
    atomic_store(&l->stopping, 1);
    until = sl_mono_ms() + (grace_ms > 0 ? grace_ms : 0);
    pthread_mutex_lock(&l->qmu);
    pthread_cond_broadcast(&l->disp_cv);
    pthread_mutex_unlock(&l->qmu);

    /* Running jobs may finish within the grace, and so may a job on its
     * last delivery that was fetched but not started; the dispatcher
     * hands the other fetched jobs back (it ends within about a second:
     * its open requests are answered at once). */
    pthread_mutex_lock(&l->mu);
    if (l->busy > 0)
        sl_info("stopping: waiting up to %" PRId64 " ms for %d running job(s)", grace_ms, l->busy);
    pthread_mutex_unlock(&l->mu);
    for (;;) {
        int64_t now = sl_mono_ms();
        bool empty = loop_empty(l);
        pthread_mutex_lock(&l->mu);
        left = l->busy;
        if ((left == 0 && empty) || now >= until) {
            pthread_mutex_unlock(&l->mu);
            break;
        }
        struct timespec ts = mono_abs(now + 20 < until ? now + 20 : until);
        pthread_cond_timedwait(&l->idle_cv, &l->mu, &ts);
        pthread_mutex_unlock(&l->mu);
    }
    /* Before handing anything back, let the dispatcher end (at most about
     * a second), so a NAKed job goes to another worker, not to a request
     * of ours. */
    if (left > 0 || !loop_empty(l)) {
        int64_t disp_until = sl_mono_ms() + 1500;
        while (!loop_empty(l) && sl_mono_ms() < disp_until) {
            pthread_mutex_lock(&l->qmu);
            if (l->disp_done) {
                pthread_mutex_unlock(&l->qmu);
                break;
            }
            pthread_mutex_unlock(&l->qmu);
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 20 * 1000000L};
            nanosleep(&ts, NULL);
        }
        sl_warn("stopping: grace over, handing back %d running job(s)", left);
    }

    /* Abort what still runs; each job NAKs itself (or ends on its last
     * delivery). A job that starts from now on was fetched before the stop
     * and is aborted at once too (slot_attach reads abort_all under the
     * slot lock, so no job slips between the two). */
    atomic_store(&l->abort_all, 1);
    for (int i = 0; l->slots != NULL && i < l->nslots; i++) {
        int expected = WRK_CANCEL_NONE;
        wrk_slot *s = &l->slots[i];
        pthread_mutex_lock(&s->mu);
        if (s->busy)
            atomic_compare_exchange_strong(&s->cancel, &expected, WRK_CANCEL_SHUTDOWN);
        pthread_mutex_unlock(&s->mu);
    }
    if (l->disp_started) {
        pthread_join(l->disp, NULL);
        l->disp_started = false;
    } else {
        pthread_mutex_lock(&l->qmu);
        l->accepting = false;
        l->disp_done = true;
        pthread_cond_broadcast(&l->job_cv);
        pthread_mutex_unlock(&l->qmu);
    }
    for (int i = 0; l->slots != NULL && i < l->nslots; i++) {
        if (l->slots[i].started) {
            pthread_join(l->slots[i].th, NULL);
            l->slots[i].started = false;
        }
    }
    /* No job is handed over from now on: the finisher ends once it has
     * settled what it holds. */
    if (l->fin_started) {
        pthread_mutex_lock(&l->fmu);
        l->fin_stop = true;
        pthread_cond_signal(&l->fin_cv);
        pthread_mutex_unlock(&l->fmu);
        pthread_join(l->fin_th, NULL);
        l->fin_started = false;
    }
    for (size_t m = 0; l->bell_subs != NULL && m < l->nmodels; m++)
        sub_close(l->bell_subs[m], 2000);
    /* Late deliveries are NAKed by the callback (accepting is false). */
    sub_close(l->inbox_sub, 2000);
    if (l->ready != NULL)
        wrk__nak_ready(l);
    if (l->ticker_started) {
        pthread_mutex_lock(&l->mu);
        atomic_store(&l->ticker_stop, 1);
        pthread_cond_signal(&l->tick_cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->ticker, NULL);
        l->ticker_started = false;
    }
    /* Wait for a running cancel callback: it reads the slots. */
    sub_close(l->cancel_sub, 2000);
    for (int i = 0; l->slots != NULL && i <= l->nslots; i++) {
        if (l->slots[i].js != NULL) {
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MaxWait = 2000;
            js_PublishAsyncComplete(l->slots[i].js, &po);
        }
    }
    atomic_store(&l->running, 0);
}

void wrk_loop_destroy(wrk_loop *l)
{
    if (l == NULL)
        return;
    /* A loop that failed half-way through create is stopped the same way. */
    atomic_store(&l->stopping, 1);
    wrk_loop_stop(l, 0);
    for (size_t m = 0; l->bell_subs != NULL && m < l->nmodels; m++)
        natsSubscription_Destroy(l->bell_subs[m]);
    natsSubscription_Destroy(l->inbox_sub);
    natsSubscription_Destroy(l->cancel_sub);
    for (int i = 0; l->slots != NULL && i <= l->nslots; i++) {
        wrk_slot *s = &l->slots[i];
        jsCtx_Destroy(s->js);
        natsStatistics_Destroy(s->stats);
        pthread_mutex_destroy(&s->mu);
    }
    free(l->slots);
    free(l->ready);
    free(l->pickq);
    wrk_sched_destroy(l->sched);
    wrk_usage_destroy(l->usage); /* after the slots stopped: its last flush */
    kvStore_Destroy(l->kv_quota);
    kvStore_Destroy(l->kv_usage);
    kvStore_Destroy(l->kv);
    kvStore_Destroy(l->kv_cancel);
    jsCtx_Destroy(l->js);
    for (size_t m = 0; l->models != NULL && m < l->nmodels; m++)
        free(l->models[m]);
    free(l->models);
    free(l->legacy);
    free(l->legacy_q);
    free(l->bell_subs);
    free(l->worker_id);
    pthread_cond_destroy(&l->tick_cv);
    pthread_cond_destroy(&l->idle_cv);
    pthread_cond_destroy(&l->job_cv);
    pthread_cond_destroy(&l->disp_cv);
    pthread_cond_destroy(&l->fin_cv);
    pthread_cond_destroy(&l->fin_room);
    pthread_mutex_destroy(&l->fmu);
    pthread_mutex_destroy(&l->qmu);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
