#include "orch_kvget.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_log.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "sl_time.h"

struct orch_kvget {
    natsConnection *nc;
    natsSubscription *sub; /* <inbox>.<round>.<index> */
    char inbox[128];
    char bucket[SL_ID_MAX + 1];
    uint64_t round; /* answers of an earlier round (timed out) are dropped */
};

sl_status orch_kvget_create(orch_kvget **out, natsConnection *nc, const char *bucket)
{
    orch_kvget *g = NULL;
    natsInbox *inbox = NULL;
    char subj[192];
    natsStatus s;

    if (out == NULL || nc == NULL || bucket == NULL || !sl_id_valid(bucket))
        return SL_ERR_INVAL;
    g = calloc(1, sizeof(*g));
    if (g == NULL)
        return SL_ERR_NOMEM;
    g->nc = nc;
    snprintf(g->bucket, sizeof(g->bucket), "%s", bucket);
    if (natsInbox_Create(&inbox) != NATS_OK) {
        free(g);
        return SL_ERR_NOMEM;
    }
    snprintf(g->inbox, sizeof(g->inbox), "%s", (const char *)inbox);
    natsInbox_Destroy(inbox);
    snprintf(subj, sizeof(subj), "%s.*.*", g->inbox);
    s = natsConnection_SubscribeSync(&g->sub, nc, subj);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(g->sub, -1, -1);
    if (s != NATS_OK) {
        orch_kvget_destroy(g);
        return SL_ERR_BUS;
    }
    *out = g;
    return SL_OK;
}

void orch_kvget_destroy(orch_kvget *g)
{
    if (g == NULL)
        return;
    if (g->sub != NULL) {
        natsSubscription_Unsubscribe(g->sub);
        natsSubscription_Destroy(g->sub);
    }
    free(g);
}

void orch_kv_entry_clear(orch_kv_entry *e)
{
    if (e == NULL)
        return;
    free(e->value);
    e->value = NULL;
    e->len = 0;
    e->rev = 0;
    e->deleted = false;
    e->st = SL_ERR_TIMEOUT;
}

/* Fills e from one answer. */
static void take_answer(orch_kv_entry *e, natsMsg *m)
{
    const char *status = NULL, *seq = NULL, *op = NULL;
    int len = natsMsg_GetDataLength(m);

    if (natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status != NULL) {
        e->st = strcmp(status, "404") == 0 ? SL_ERR_NOTFOUND : SL_ERR_BUS;
        return;
    }
    if (natsMsgHeader_Get(m, "Nats-Sequence", &seq) != NATS_OK || seq == NULL ||
        sl_parse_u64(seq, &e->rev) != SL_OK) {
        e->st = SL_ERR_BUS;
        return;
    }
    e->deleted = natsMsgHeader_Get(m, "KV-Operation", &op) == NATS_OK && op != NULL &&
                 (strcmp(op, "DEL") == 0 || strcmp(op, "PURGE") == 0);
    e->value = malloc((size_t)len + 1);
    if (e->value == NULL) {
        e->st = SL_ERR_NOMEM;
        return;
    }
    memcpy(e->value, natsMsg_GetData(m), (size_t)len);
    e->value[len] = '\0';
    e->len = (size_t)len;
    e->st = SL_OK;
}

void orch_kvget_many(orch_kvget *g, orch_kv_entry *e, size_t n, int64_t timeout_ms)
{
    char subj[SL_SUBJECT_MAX + 64], reply[192];
    size_t left = 0;
    int64_t until = sl_mono_ms() + (timeout_ms > 0 ? timeout_ms : 1);

    if (g == NULL || e == NULL || n == 0)
        return;
    g->round++;
    for (size_t i = 0; i < n; i++) {
        orch_kv_entry_clear(&e[i]);
        (void)sl_kv_direct_get_subject(subj, sizeof(subj), g->bucket, e[i].key);
        snprintf(reply, sizeof(reply), "%s.%llu.%zu", g->inbox, (unsigned long long)g->round, i);
        if (e[i].key == NULL || subj[0] == '\0' ||
            natsConnection_PublishRequest(g->nc, subj, reply, NULL, 0) != NATS_OK)
            e[i].st = SL_ERR_BUS;
        else
            left++;
    }
    /* Bounded by the number of answers expected and by the time. */
    while (left > 0) {
        natsMsg *m = NULL;
        unsigned long long round = 0;
        size_t idx = 0;
        const char *s;
        int64_t wait = until - sl_mono_ms();

        if (wait <= 0 || natsSubscription_NextMsg(&m, g->sub, wait) != NATS_OK)
            break;
        s = natsMsg_GetSubject(m);
        if (strncmp(s, g->inbox, strlen(g->inbox)) == 0 &&
            sscanf(s + strlen(g->inbox), ".%llu.%zu", &round, &idx) == 2 && round == g->round &&
            idx < n && e[idx].st == SL_ERR_TIMEOUT) {
            take_answer(&e[idx], m);
            left--;
        }
        natsMsg_Destroy(m);
    }
    if (left > 0)
        sl_warn("%zu of %zu reads of bucket %s got no answer within %lld ms", left, n, g->bucket,
                (long long)timeout_ms);
}
