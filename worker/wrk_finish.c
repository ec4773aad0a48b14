/* The finisher (wrk_finish.c): stores the ends of the jobs the slots hand
 * over, in batches; wrk__finisher_main is its thread. */
#include "wrk_loop_int.h"

/* ---- Finishing --------------------------------------------------------- */

/* The end of a finished job, once stored: ack, metrics, usage, times.
 * stored: the end was stored by the finisher's batch (else job_finish
 * settled the job itself). */
static void finished(wrk_loop *l, done_job *dj, bool stored)
{
    job *j = &dj->j;
    bool ok = true;

    if (stored) {
        size_t len = 0;
        const char *so_far = wrk_stream_text(j->stream, &len);
        wrk__slot_settle(l->fin, j->msg, dj->d.term ? SETTLE_TERM : SETTLE_ACK, 0);
        for (int i = 0; i < 4; i++)
            if (dj->d.metric != NULL && strcmp(dj->d.metric, wrk__metric_names[i]) == 0)
                sl_counter_inc(l->m_jobs[i]);
        if (!j->agent_counted && (dj->d.end == WRK_END_OK || dj->d.end == WRK_END_PARTIAL) &&
            !wrk_agent_message_routable(j->work->agent_mentions_only, j->work->agent_mentions,
                                        j->work->n_agent_mentions, so_far))
            sl_counter_inc(l->m_agent_skipped);
    } else {
        ok = wrk__job_finish(l, j, &dj->d);
    }
    if (ok)
        wrk_usage_add(l->usage, j->tenant, j->agent, dj->used.input_tokens, dj->used.output_tokens);
    {
        int64_t first = wrk_stream_first_chunk_ms(j->stream);
        if (first > 0)
            sl_hist_observe_ns(l->m_ttft, (first - j->start_ms) * NS_PER_MS);
        sl_hist_observe_ns(l->m_job, (sl_mono_ms() - j->start_ms) * NS_PER_MS);
    }
}

static void done_job_free(done_job *dj)
{
    wrk_stream_destroy(dj->j.stream);
    sl_envelope_free(dj->j.env);
    natsMsg_Destroy(dj->j.msg);
    free(dj);
}

/* Stores the ends of a batch of jobs with two waits in all: every final
 * reply, asynchronous, one wait; then every agent message and end state,
 * asynchronous, one wait; then the acks. So each job's end state is stored
 * only after its final reply, and its ack sent only after both, as when a
 * job ends on its slot (job_finish). When a wait fails or a publish was
 * refused, every job of the batch goes through job_finish, one by one
 * (the finals and agent messages again under their Nats-Msg-Ids, so
 * JetStream keeps one copy; the end state is the same value again). */
static void finish_batch(wrk_loop *l, done_job *list)
{
    wrk_slot *f = l->fin;
    int errors_before = atomic_load(&f->pub_errors);
    bool ok = true;
    jsPubOptions po;

    jsPubOptions_Init(&po);
    po.MaxWait = PUB_WAIT_MS;
    for (done_job *dj = list; dj != NULL && ok; dj = dj->next) {
        const wrk_decision *d = &dj->d;
        const char *text =
            d->end == WRK_END_DEGRADED ? dj->j.fallback : wrk_stream_text(dj->j.stream, NULL);
        if (wrk_stream_final_async(dj->j.stream, text, d->end == WRK_END_DEGRADED,
                                   d->end == WRK_END_PARTIAL, d->end == WRK_END_CANCELLED) != SL_OK)
            ok = false;
    }
    if (ok && (js_PublishAsyncComplete(f->js, &po) != NATS_OK ||
               atomic_load(&f->pub_errors) != errors_before))
        ok = false;
    for (done_job *dj = list; dj != NULL && ok; dj = dj->next) {
        job *j = &dj->j;
        const wrk_decision *d = &dj->d;
        const char *so_far = wrk_stream_text(j->stream, NULL);
        if (wrk__job_wants_agent_msg(j, d, so_far)) {
            sl_status st = wrk__job_agent_msg_publish(f->js, j, so_far);
            if (st != SL_OK && st != SL_ERR_INVAL)
                ok = false; /* SL_ERR_INVAL: nothing that could be stored */
        }
        if (ok && !wrk__kv_put_async(l, j, d->kv_state))
            ok = false;
    }
    if (ok && (js_PublishAsyncComplete(f->js, &po) != NATS_OK ||
               atomic_load(&f->pub_errors) != errors_before))
        ok = false;
    if (!ok) {
        /* Forget what is still pending (a late acknowledgment is then
         * ignored): job_finish publishes it again and waits itself. */
        natsMsgList pending = {0};
        if (js_PublishAsyncGetPendingList(&pending, f->js) == NATS_OK)
            natsMsgList_Destroy(&pending);
        sl_warn("finishing a batch of jobs: a publish failed or was not acknowledged within %d "
                "ms; storing their ends one by one",
                PUB_WAIT_MS);
    }
    while (list != NULL) {
        done_job *next = list->next;
        l->fin_rest = next;
        finished(l, list, ok);
        done_job_free(list);
        pthread_mutex_lock(&l->mu);
        l->busy--;
        pthread_cond_broadcast(&l->idle_cv);
        pthread_mutex_unlock(&l->mu);
        list = next;
    }
    l->fin_rest = NULL;
}

void *wrk__finisher_main(void *arg)
{
    wrk_loop *l = arg;

    pthread_mutex_lock(&l->fmu);
    for (;;) {
        done_job *list;
        if (l->fhead == NULL) {
            if (l->fin_stop)
                break;
            pthread_cond_wait(&l->fin_cv, &l->fmu);
            continue;
        }
        list = l->fhead;
        l->fhead = l->ftail = NULL;
        l->fcount = 0;
        pthread_cond_broadcast(&l->fin_room);
        pthread_mutex_unlock(&l->fmu);
        finish_batch(l, list);
        pthread_mutex_lock(&l->fmu);
    }
    pthread_mutex_unlock(&l->fmu);
    return NULL;
}

/* Hands a job whose model call is over to the finisher (waiting while its
 * list is full), so the slot takes its next job while the end is stored.
 * The job stays counted as busy until the finisher settles it. Returns
 * false when out of memory (the caller finishes the job itself). */
bool wrk__job_hand_over(wrk_loop *l, job *j, const wrk_decision *d, const wrk_call_usage *used)
{
    wrk_slot *s = j->slot;
    done_job *dj = calloc(1, sizeof(*dj));

    if (dj == NULL)
        return false;
    /* From now on the timer must not touch the message: the finisher
     * settles and frees it. */
    pthread_mutex_lock(&s->mu);
    s->msg = NULL;
    pthread_mutex_unlock(&s->mu);
    dj->j = *j;
    dj->j.slot = l->fin;
    dj->d = *d;
    dj->used = *used;
    wrk_stream_set_js(dj->j.stream, l->fin->js);
    pthread_mutex_lock(&l->mu);
    l->busy++;
    pthread_mutex_unlock(&l->mu);
    pthread_mutex_lock(&l->fmu);
    while (l->fcount >= l->fmax)
        pthread_cond_wait(&l->fin_room, &l->fmu);
    if (l->ftail != NULL)
        l->ftail->next = dj;
    else
        l->fhead = dj;
    l->ftail = dj;
    l->fcount++;
    pthread_cond_signal(&l->fin_cv);
    pthread_mutex_unlock(&l->fmu);
    /* The job's parts are the finisher's now. */
    j->msg = NULL;
    j->env = NULL;
    j->stream = NULL;
    return true;
}
