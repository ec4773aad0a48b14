/* The worker's consumers on SLUICE_WORK: made (one per model and tenant),
 * checked against the settings this code gives them, replaced when one is
 * left without quorum, and the model-wide consumer of older workers looked
 * at until it can be retired. Called by the dispatcher thread and at setup
 * (wrk_pull.c); each call is one or more JetStream API round trips, never
 * under qmu. */
#include "wrk_loop_int.h"

/* Server-side lifetime of an unused per-tenant consumer. */
#define WRK_CONSUMER_IDLE_S 3600

/* Whether an existing consumer is one this code made for filter: an
 * explicit-ack pull consumer on exactly that filter. When not, says why in
 * err, naming the durable. */
static bool consumer_fits(const jsConsumerInfo *ci, const char *filter, const char *durable,
                          char *err, size_t errlen)
{
    if (ci->Config->FilterSubject != NULL && strcmp(ci->Config->FilterSubject, filter) == 0 &&
        ci->Config->AckPolicy == js_AckExplicit && ci->Config->DeliverSubject == NULL)
        return true;
    sl_errf(err, errlen,
            "consumer %s exists with another filter, ack policy or delivery mode; fix or delete "
            "it with sluicectl",
            durable);
    return false;
}

/* Ensures a durable pull consumer (creating it, or updating AckWait,
 * MaxDeliver and BackOff when they differ). Returns SL_OK; SL_ERR_INVAL
 * when it exists with another filter, ack policy or delivery mode;
 * SL_ERR_BUS. A reason goes to err. */
sl_status wrk__ensure_consumer(wrk_loop *l, const char *durable, const char *filter, bool create,
                               char *err, size_t errlen)
{
    int64_t aw = l->ack_wait_ms * NS_PER_MS;
    int64_t backoff[WRK_MAX_DELIVER - 1];
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus ns;
    sl_status st = SL_OK;

    /* Equal back-off steps: a crashed worker's job comes back after AckWait
     * each time. Growing steps would also be added to every NAK delay by the
     * server (a NAK's delay is counted from BackOff[0]), so transient
     * retries get their growing back-off from the NAK delays instead. */
    for (int i = 0; i < WRK_MAX_DELIVER - 1; i++)
        backoff[i] = aw;
    jsConsumerConfig_Init(&cc);
    cc.Durable = durable;
    cc.FilterSubject = filter;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = aw;
    cc.MaxDeliver = WRK_MAX_DELIVER;
    cc.BackOff = backoff;
    cc.BackOffLen = WRK_MAX_DELIVER - 1;
    cc.DeliverPolicy = js_DeliverAll;
    /* Tenants come and go: an unused tenant consumer is removed by the
     * server, and made again by the first worker that sees work for it. */
    if (strchr(durable, '~') != NULL)
        cc.InactiveThreshold = (int64_t)WRK_CONSUMER_IDLE_S * 1000 * NS_PER_MS;

    ns = js_GetConsumerInfo(&ci, l->js, SL_STREAM_WORK, durable, NULL, &jerr);
    /* Only per-tenant consumers are ever created: a model-wide one
     * (wrk_<model>, from before the migration) made again by a stale queue
     * would overlap every tenant's filter and block their consumers. */
    if (ns == NATS_NOT_FOUND && create && strchr(durable, '~') != NULL) {
        ns = js_AddConsumer(&ci, l->js, SL_STREAM_WORK, &cc, NULL, &jerr);
        if (ns == NATS_OK)
            sl_debug("created consumer %s on %s", durable, SL_STREAM_WORK);
        else /* another worker may have created it in between */
            ns = js_GetConsumerInfo(&ci, l->js, SL_STREAM_WORK, durable, NULL, &jerr);
    }
    if (ns != NATS_OK) {
        sl_errf(err, errlen, "consumer %s: %s (jerr %d)", durable, natsStatus_GetText(ns),
                (int)jerr);
        st = SL_ERR_BUS;
        goto cleanup;
    }
    if (!consumer_fits(ci, filter, durable, err, errlen)) {
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    if (ci->Config->AckWait != aw || ci->Config->MaxDeliver != WRK_MAX_DELIVER ||
        ci->Config->BackOffLen != cc.BackOffLen) {
        jsConsumerInfo *up = NULL;
        ns = js_UpdateConsumer(&up, l->js, SL_STREAM_WORK, &cc, NULL, &jerr);
        if (ns == NATS_OK) {
            sl_warn("consumer %s had AckWait %" PRId64 " ms / MaxDeliver %" PRId64
                    "; updated to %" PRId64 " ms / %d",
                    durable, ci->Config->AckWait / NS_PER_MS, ci->Config->MaxDeliver,
                    l->ack_wait_ms, WRK_MAX_DELIVER);
            jsConsumerInfo_Destroy(ci);
            ci = up;
        } else {
            sl_warn("consumer %s has other settings and could not be updated (%s); using it",
                    durable, natsStatus_GetText(ns));
        }
    }
    /* Every consumer is made by this code, so they agree. */
    l->max_deliver = ci->Config->MaxDeliver;
cleanup:
    jsConsumerInfo_Destroy(ci);
    return st;
}

/* Deletes the per-tenant consumer durable, which could not be read for
 * stalled_ms (the last error in why), and creates it afresh. A consumer
 * whose group lost quorum for good (nats-server 2.9 leaves one so when a
 * node killed and restarted never rejoins it, answering 10008 forever)
 * serves nothing until it is replaced; the jobs it had not acked stay in
 * the work-queue stream and the new consumer delivers them again (as first
 * deliveries: a job that was running or had ended runs again, and its
 * Nats-Msg-Ids make the second final reply, tokens and agent message
 * duplicates that JetStream drops). Logs one line and counts it. Returns
 * SL_OK when the new consumer exists, else SL_ERR_BUS / SL_ERR_INVAL with
 * a reason in err. */
sl_status wrk__recover_consumer(wrk_loop *l, const char *durable, const char *filter,
                                int64_t stalled_ms, const char *why, char *err, size_t errlen)
{
    char del[128] = "";
    jsErrCode jerr = 0;
    natsStatus ns;
    sl_status st;

    /* The answer may never come (nats-server 2.9 answers from the
     * consumer's group, which may be the part that is gone) although the
     * metadata leader removes it: whether it is gone shows below. */
    ns = js_DeleteConsumer(l->js, SL_STREAM_WORK, durable, NULL, &jerr);
    if (ns != NATS_OK && ns != NATS_NOT_FOUND && jerr != 10014 /* consumer not found */)
        snprintf(del, sizeof(del), "; the delete answered %s (jerr %d)", natsStatus_GetText(ns),
                 (int)jerr);
    st = wrk__ensure_consumer(l, durable, filter, true, err, errlen);
    if (st != SL_OK) {
        char again[256];
        snprintf(again, sizeof(again), "%s", err);
        sl_errf(err, errlen, "%s; deleting it to create it afresh failed%s: %s", why, del, again);
        return st;
    }
    sl_counter_inc(l->m_consumer_recoveries);
    sl_warn("work queue %s: its consumer failed for %" PRId64 " ms (%s); deleted it and created it "
            "afresh%s (its unacknowledged jobs are delivered again)",
            durable, stalled_ms, why, del);
    return SL_OK;
}

/* Looks at a model's model-wide consumer `wrk_<model>` (filter
 * sluice.work.<model>.>, made by workers before per-tenant consumers).
 * A work-queue stream refuses per-tenant consumers beside it, so while it
 * exists every job of the model is pulled from it (first in, first out, as
 * before). Once it holds nothing (no job pending, none unacknowledged, no
 * pull waiting: no worker of the older kind uses it) it is deleted and the
 * model moves to per-tenant consumers. Sets *legacy. Returns SL_OK, or
 * SL_ERR_BUS / SL_ERR_INVAL (a consumer of that name with another filter)
 * with a reason in err. own_idle tells that this worker holds nothing from
 * it. */
sl_status wrk__legacy_check(wrk_loop *l, size_t m, bool own_idle, bool *legacy, char *err,
                            size_t errlen)
{
    char durable[WRK_DURABLE_MAX], filter[SL_SUBJECT_MAX];
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus ns;
    sl_status st = SL_OK;

    if (sl_work_durable(durable, sizeof(durable), l->models[m], NULL) != SL_OK ||
        sl_subject_work_filter(filter, sizeof(filter), l->models[m], NULL) != SL_OK) {
        sl_errf(err, errlen, "model %s: no valid consumer name", l->models[m]);
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    ns = js_GetConsumerInfo(&ci, l->js, SL_STREAM_WORK, durable, NULL, &jerr);
    if (ns == NATS_NOT_FOUND) {
        *legacy = false;
        goto cleanup;
    }
    if (ns != NATS_OK) {
        sl_errf(err, errlen, "consumer %s: %s (jerr %d)", durable, natsStatus_GetText(ns),
                (int)jerr);
        st = SL_ERR_BUS;
        goto cleanup;
    }
    if (!consumer_fits(ci, filter, durable, err, errlen)) {
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    *legacy = true;
    if (own_idle && ci->NumPending == 0 && ci->NumAckPending == 0 && ci->NumWaiting == 0) {
        ns = js_DeleteConsumer(l->js, SL_STREAM_WORK, durable, NULL, &jerr);
        if (ns == NATS_OK || ns == NATS_NOT_FOUND) {
            sl_info("consumer %s is empty and unused: deleted; model %s now has a consumer per "
                    "tenant",
                    durable, l->models[m]);
            *legacy = false;
        } else {
            sl_warn("consumer %s is empty but could not be deleted (%s, jerr %d); still using it",
                    durable, natsStatus_GetText(ns), (int)jerr);
        }
    } else if (own_idle) {
        static int64_t last;
        if (log_due(&last))
            sl_info("consumer %s still holds jobs (%" PRIu64 " pending, %" PRId64
                    " unacknowledged, %" PRId64 " pulls waiting): serving model %s from it",
                    durable, ci->NumPending, ci->NumAckPending, ci->NumWaiting, l->models[m]);
    }
cleanup:
    jsConsumerInfo_Destroy(ci);
    return st;
}
