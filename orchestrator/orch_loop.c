#include "orch_loop_int.h"

static void metrics_init(orch_loop *l)
{
    l->m.ev_user =
        sl_counter_get("sluice_orch_events_total", "kind=\"user\"", "messages processed from IN");
    l->m.ev_agent =
        sl_counter_get("sluice_orch_events_total", "kind=\"agent\"", "messages processed from IN");
    l->m.dups = sl_counter_get("sluice_orch_duplicates_total", NULL,
                               "redelivered messages acked without effects");
    l->m.waits = sl_counter_get("sluice_orch_causal_waits_total", NULL,
                                "messages parked to wait for their causal predecessor");
    l->m.gaps = sl_counter_get("sluice_orch_causal_gaps_total", NULL,
                               "messages processed without their predecessor (deadline or park "
                               "bound reached)");
    l->m.park_full = sl_counter_get("sluice_orch_causal_park_full_total", NULL,
                                    "messages processed without their predecessor because the "
                                    "session's or tenant's park was full");
    l->m.parked = sl_gauge_get("sluice_orch_causal_parked", NULL,
                               "messages parked now, waiting for their predecessor");
    l->m.dispatched =
        sl_counter_get("sluice_orch_jobs_dispatched_total", NULL, "work requests queued on WORK");
    l->m.busy_full = sl_counter_get("sluice_orch_busy_total", "reason=\"tenant_queue_full\"",
                                    "jobs refused with a busy event");
    l->m.busy_conc = sl_counter_get("sluice_orch_busy_total", "reason=\"overloaded\"",
                                    "jobs refused with a busy event");
    l->m.lost_untracked = sl_counter_get(
        "sluice_orch_lost_untracked_total", NULL,
        "queued jobs not kept for the lost-work check (65536 kept already, or no memory)");
    l->m.bad = sl_counter_get("sluice_orch_bad_messages_total", NULL,
                              "IN messages that are not valid envelopes (terminated)");
    l->m.failed = sl_counter_get("sluice_orch_retries_total", NULL,
                                 "messages NAKed because an effect could not be stored");
    l->m.hop_stops = sl_counter_get("sluice_orch_hop_limit_total", NULL,
                                    "agent messages not routed because of the hop limit");
    l->m.proc =
        sl_hist_get("sluice_orch_processing_seconds", NULL, "time from fetch to ack of a message");
    l->m.wait = sl_hist_get("sluice_orch_wait_seconds", NULL,
                            "time from a message's store on SLUICE_IN to its first fetch "
                            "(nats-server's clock to ours)");
#define RT_HELP "synchronous waits for nats-server on the orchestrator's main loop"
    l->m.rt_fetch = sl_counter_get("sluice_orch_round_trips_total", "kind=\"fetch\"", RT_HELP);
    l->m.rt_kv_read = sl_counter_get("sluice_orch_round_trips_total", "kind=\"kv_read\"", RT_HELP);
    l->m.rt_pub_acks =
        sl_counter_get("sluice_orch_round_trips_total", "kind=\"pub_acks\"", RT_HELP);
    l->m.rt_kv_sync = sl_counter_get("sluice_orch_round_trips_total", "kind=\"kv_sync\"", RT_HELP);
#undef RT_HELP
}

sl_status orch_loop_create(orch_loop **out, sl_bus *bus, const orch_agents *agents,
                           const orch_loop_cfg *cfg)
{
    orch_loop *l = NULL;

    if (bus == NULL || agents == NULL || cfg == NULL || cfg->batch < 1 || cfg->batch > BATCH_MAX ||
        cfg->park_per_session < 0 || cfg->park_per_tenant < 0)
        return SL_ERR_INVAL;
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return SL_ERR_NOMEM;
    l->sessions = calloc(BATCH_MAX, sizeof(*l->sessions));
    l->entries = calloc(BATCH_MAX, sizeof(*l->entries));
    if (l->sessions == NULL || l->entries == NULL ||
        orch_scache_create(&l->scache, SCACHE_MAX, SCACHE_TTL_MS) != SL_OK ||
        orch_park_create(&l->park, cfg->park_per_session, cfg->park_per_tenant, PARK_TOTAL_MAX) !=
            SL_OK) {
        orch_scache_destroy(l->scache);
        free(l->sessions);
        free(l->entries);
        free(l);
        return SL_ERR_NOMEM;
    }
    if (orch_quota_create(&l->quota, cfg->tokens_per_window, cfg->quota_rules, cfg->nquota_rules,
                          cfg->quota_window_s > 0 ? cfg->quota_window_s : 60) != SL_OK) {
        orch_park_destroy(l->park, NULL);
        orch_scache_destroy(l->scache);
        free(l->sessions);
        free(l->entries);
        free(l);
        return SL_ERR_INVAL;
    }
    sl_session_id_new(l->nonce);
    l->bus = bus;
    l->agents = agents;
    l->cfg = *cfg;
    /* One interval for the jobs the loop keeps and the checks of them. */
    if (l->cfg.lost_check_ms <= 0)
        l->cfg.lost_check_ms = ORCH_LOST_CHECK_MS_DEFAULT;
    l->cfg.quota_rules = NULL; /* copied into l->quota */
    metrics_init(l);
    *out = l;
    return SL_OK;
}

bool orch_loop_ready(const orch_loop *l)
{
    return l != NULL && atomic_load(&l->ready) != 0 && sl_bus_ready(l->bus);
}

static void teardown(orch_loop *l)
{
    atomic_store(&l->ready, 0);
    orch_ctl_destroy(l->ctl);
    l->ctl = NULL;
    orch_inflight_destroy(l->inflight);
    l->inflight = NULL;
    if (l->sub != NULL) {
        /* Bound to the durable: destroying never deletes the consumer. */
        natsSubscription_Destroy(l->sub);
        l->sub = NULL;
    }
    orch_pub_destroy(l->pub);
    l->pub = NULL;
    orch_kvget_destroy(l->kvget);
    l->kvget = NULL;
    kvStore_Destroy(l->kv_sessions);
    l->kv_sessions = NULL;
    kvStore_Destroy(l->kv_inflight);
    l->kv_inflight = NULL;
    kvStore_Destroy(l->kv_cancel);
    l->kv_cancel = NULL;
}

void orch_loop_destroy(orch_loop *l)
{
    if (l == NULL)
        return;
    /* Parked messages go back to the server for another replica (before
     * the connection goes: the caller destroys the bus after us). */
    orch_park_destroy(l->park, l->sub != NULL ? sl_bus_nc(l->bus) : NULL);
    sl_gauge_set(l->m.parked, 0);
    teardown(l);
    orch_quota_destroy(l->quota); /* its watch is on the bus's connection */
    for (int i = 0; i < BATCH_MAX; i++)
        orch_kv_entry_clear(&l->entries[i]);
    free(l->entries);
    free(l->sessions);
    orch_scache_destroy(l->scache);
    free(l);
}

/* The IN AckWait: shorter than the causal wait, so that the messages a
 * crashed replica held come back before their successors give up waiting
 * for them (otherwise a crash would turn into causal gaps). */
static int64_t in_ack_wait_ms(int64_t causal_wait_ms)
{
    int64_t w = causal_wait_ms / 2;

    if (w > IN_ACK_WAIT_MAX_MS)
        w = IN_ACK_WAIT_MAX_MS;
    if (w < IN_ACK_WAIT_MIN_MS)
        w = IN_ACK_WAIT_MIN_MS;
    return w;
}

/* Ensures the shared durable exists with the wire.md settings. */
static sl_status ensure_consumer(jsCtx *js, int64_t causal_wait_ms)
{
    jsConsumerInfo *ci = NULL;
    jsConsumerConfig cc;
    jsErrCode jerr = 0;
    natsStatus s;

    s = js_GetConsumerInfo(&ci, js, SL_STREAM_IN, ORCH_DURABLE, NULL, &jerr);
    if (s == NATS_NOT_FOUND) {
        jsConsumerConfig_Init(&cc);
        cc.Durable = ORCH_DURABLE;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = in_ack_wait_ms(causal_wait_ms) * NS_PER_MS;
        cc.MaxDeliver = -1;
        cc.MaxAckPending = IN_MAX_ACK_PEND;
        cc.FilterSubject = SL_SUBJECT_IN_ALL;
        cc.DeliverPolicy = js_DeliverAll;
        s = js_AddConsumer(&ci, js, SL_STREAM_IN, &cc, NULL, &jerr);
        if (s != NATS_OK) /* another replica may have created it in between */
            s = js_GetConsumerInfo(&ci, js, SL_STREAM_IN, ORCH_DURABLE, NULL, &jerr);
    }
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        sl_warn("consumer %s on %s: %s (jerr %d)", ORCH_DURABLE, SL_STREAM_IN,
                natsStatus_GetText(s), (int)jerr);
        return SL_ERR_BUS;
    }
    return SL_OK;
}

static sl_status setup(orch_loop *l)
{
    jsSubOptions so;
    jsErrCode jerr = 0;
    natsStatus s;
    sl_status st;

    if (!sl_bus_ready(l->bus))
        return SL_ERR_BUS;
    if (l->kv_sessions == NULL &&
        (st = sl_bus_kv(l->bus, SL_KV_SESSIONS, &l->kv_sessions)) != SL_OK)
        return st;
    if (l->kv_inflight == NULL &&
        (st = sl_bus_kv(l->bus, SL_KV_INFLIGHT, &l->kv_inflight)) != SL_OK)
        return st;
    if (l->kv_cancel == NULL && (st = sl_bus_kv(l->bus, SL_KV_CANCEL, &l->kv_cancel)) != SL_OK)
        return st;
    if (l->pub == NULL && (st = orch_pub_create(&l->pub, sl_bus_nc(l->bus))) != SL_OK)
        return st;
    if (l->kvget == NULL &&
        (st = orch_kvget_create(&l->kvget, sl_bus_nc(l->bus), SL_KV_SESSIONS)) != SL_OK)
        return st;
    if (l->sub == NULL) {
        if ((st = ensure_consumer(sl_bus_js(l->bus), l->cfg.causal_wait_ms)) != SL_OK)
            return st;
        jsSubOptions_Init(&so);
        so.Stream = SL_STREAM_IN;
        so.Consumer = ORCH_DURABLE;
        s = js_PullSubscribe(&l->sub, sl_bus_js(l->bus), SL_SUBJECT_IN_ALL, ORCH_DURABLE, NULL, &so,
                             &jerr);
        if (s != NATS_OK) {
            sl_warn("pull subscribe %s: %s (jerr %d)", ORCH_DURABLE, natsStatus_GetText(s),
                    (int)jerr);
            l->sub = NULL;
            return SL_ERR_BUS;
        }
    }
    if (l->inflight == NULL) {
        if ((st = orch_inflight_create(&l->inflight, l->agents)) != SL_OK)
            return st;
        if ((st = orch_inflight_start(l->inflight, sl_bus_js(l->bus), SL_KV_INFLIGHT)) != SL_OK) {
            orch_inflight_destroy(l->inflight);
            l->inflight = NULL;
            return st;
        }
    }
    if ((st = orch_quota_start(l->quota, l->bus)) != SL_OK)
        return st;
    if (l->ctl == NULL && (st = orch_ctl_create(&l->ctl, sl_bus_nc(l->bus), sl_bus_js(l->bus),
                                                l->kv_inflight, l->kv_cancel, l->cfg.sweep_ms,
                                                l->inflight, l->cfg.lost_check_ms)) != SL_OK)
        return st;
    atomic_store(&l->ready, 1);
    return SL_OK;
}

sl_status orch_loop_run(orch_loop *l, volatile int *stop)
{
    int errors = 0;
    int64_t last_warn = 0;

    while (!*stop) {
        natsMsgList list = {0};
        jsErrCode jerr = 0;
        natsStatus s;

        if (l->sub == NULL || l->ctl == NULL || l->inflight == NULL) {
            if (setup(l) != SL_OK) {
                for (int i = 0; i < 10 && !*stop; i++)
                    usleep(50 * 1000);
                continue;
            }
            sl_info("consuming %s as durable %s", SL_STREAM_IN, ORCH_DURABLE);
        }
        orch__park_tend(l);
        /* While messages are parked, come back often enough to let them go
         * on soon after their predecessor. */
        s = natsSubscription_Fetch(&list, l->sub, l->cfg.batch,
                                   orch_park_count(l->park) > 0 &&
                                           l->cfg.fetch_timeout_ms > PARK_POLL_MS
                                       ? PARK_POLL_MS
                                       : l->cfg.fetch_timeout_ms,
                                   &jerr);
        if (s == NATS_OK && list.Count > 0) {
            int n;
            sl_counter_inc(l->m.rt_fetch);
            n = list.Count < l->cfg.batch ? list.Count : l->cfg.batch;
            errors = 0;
            for (int i = 0; i < n; i++) {
                l->msgs[i] = list.Msgs[i];
                list.Msgs[i] = NULL;
            }
            natsMsgList_Destroy(&list);
            orch__process_batch(l, n);
            continue;
        }
        natsMsgList_Destroy(&list);
        orch_inflight_poll(l->inflight); /* keeps the watch's queue short while idle */
        if (orch_park_count(l->park) > 0 && (s == NATS_OK || s == NATS_TIMEOUT)) {
            /* Nothing new: still let parked messages whose wait ended or
             * whose session advanced elsewhere go on. */
            orch__process_batch(l, 0);
            errors = 0;
            continue;
        }
        if (s == NATS_OK || s == NATS_TIMEOUT) {
            errors = 0;
            continue;
        }
        if (++errors >= REBUILD_AFTER) {
            sl_warn("fetch keeps failing (%s); rebuilding the subscription", natsStatus_GetText(s));
            natsSubscription_Destroy(l->sub);
            l->sub = NULL;
            errors = 0;
        } else if (sl_mono_ms() - last_warn > 5000) {
            sl_warn("fetch: %s (jerr %d); retrying", natsStatus_GetText(s), (int)jerr);
            last_warn = sl_mono_ms();
        }
        for (int i = 0; i < 4 && !*stop; i++)
            usleep(50 * 1000);
    }
    atomic_store(&l->ready, 0);
    return SL_OK;
}
