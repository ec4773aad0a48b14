#include "orch_pub.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_log.h"
#include "sl_hash.h"

#define MSGID_MAX 96
#define HASH_SIZE 4096 /* a power of two, at least twice ORCH_PUB_MAX */

_Static_assert(HASH_SIZE >= 2 * ORCH_PUB_MAX, "the slot index must stay half empty");

typedef struct slot {
    char msg_id[MSGID_MAX];
    orch_pub_result r;
} slot;

struct orch_pub {
    jsCtx *js;
    pthread_mutex_t mu;
    slot slots[ORCH_PUB_MAX];
    int n;
    /* Nats-Msg-Id -> 1 + the newest slot with it (0: empty), open
     * addressing; an acknowledgment finds its slot without a scan. */
    int16_t index[HASH_SIZE];
};

static size_t id_hash(const char *s)
{
    return (size_t)(sl_hash_str(SL_HASH_SEED, s) & (HASH_SIZE - 1));
}

/* Points id's index entry at slot idx. Caller holds mu. */
static void index_put(orch_pub *p, const char *id, int idx)
{
    size_t h = id_hash(id);

    while (p->index[h] != 0 && strcmp(p->slots[p->index[h] - 1].msg_id, id) != 0)
        h = (h + 1) & (HASH_SIZE - 1);
    p->index[h] = (int16_t)(idx + 1);
}

/* Finds the slot of a message by its Nats-Msg-Id; newest first, so a
 * re-queued id resolves to the latest attempt. Caller holds mu. */
static slot *find_slot(orch_pub *p, const char *id)
{
    for (size_t h = id_hash(id); p->index[h] != 0; h = (h + 1) & (HASH_SIZE - 1)) {
        slot *s = &p->slots[p->index[h] - 1];
        if (strcmp(s->msg_id, id) != 0)
            continue;
        if (!s->r.done)
            return s;
        break; /* the newest is done: an older attempt's, if any */
    }
    for (int i = p->n - 1; i >= 0; i--) {
        if (!p->slots[i].r.done && strcmp(p->slots[i].msg_id, id) == 0)
            return &p->slots[i];
    }
    return NULL;
}

static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    orch_pub *p = closure;
    const char *id = NULL;
    slot *s;

    (void)js;
    /* With an ack handler, the message is ours to destroy (nats.h). */
    if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) != NATS_OK || id == NULL) {
        natsMsg_Destroy(msg);
        return;
    }
    pthread_mutex_lock(&p->mu);
    s = find_slot(p, id);
    if (s != NULL) {
        s->r.done = true;
        if (pae != NULL) {
            s->r.err = pae->Err != NATS_OK ? pae->Err : NATS_ERR;
            s->r.jerr = pae->ErrCode;
        } else {
            s->r.err = NATS_OK;
            s->r.seq = pa != NULL ? pa->Sequence : 0;
            s->r.duplicate = pa != NULL && pa->Duplicate;
        }
    }
    pthread_mutex_unlock(&p->mu);
    natsMsg_Destroy(msg);
}

sl_status orch_pub_create(orch_pub **out, natsConnection *nc)
{
    orch_pub *p = NULL;
    jsOptions o;

    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return SL_ERR_NOMEM;
    pthread_mutex_init(&p->mu, NULL);
    jsOptions_Init(&o);
    o.PublishAsync.MaxPending = ORCH_PUB_MAX;
    o.PublishAsync.AckHandler = on_ack;
    o.PublishAsync.AckHandlerClosure = p;
    o.PublishAsync.StallWait = 1000;
    if (natsConnection_JetStream(&p->js, nc, &o) != NATS_OK) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        return SL_ERR_BUS;
    }
    *out = p;
    return SL_OK;
}

void orch_pub_destroy(orch_pub *p)
{
    natsMsgList pending = {0};
    jsPubOptions po;

    if (p == NULL)
        return;
    jsPubOptions_Init(&po);
    po.MaxWait = 1000;
    if (js_PublishAsyncComplete(p->js, &po) != NATS_OK &&
        js_PublishAsyncGetPendingList(&pending, p->js) == NATS_OK)
        natsMsgList_Destroy(&pending);
    jsCtx_Destroy(p->js);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

void orch_pub_reset(orch_pub *p)
{
    pthread_mutex_lock(&p->mu);
    p->n = 0;
    memset(p->index, 0, sizeof(p->index));
    pthread_mutex_unlock(&p->mu);
}

sl_status orch_pub_add(orch_pub *p, const char *subject, const char *msg_id, const void *data,
                       size_t len, int *slot_out)
{
    return orch_pub_add_hdr(p, subject, msg_id, data, len, NULL, NULL, slot_out);
}

sl_status orch_pub_add_hdr(orch_pub *p, const char *subject, const char *msg_id, const void *data,
                           size_t len, const char *extra_hdr, const char *extra_val, int *slot_out)
{
    natsMsg *m = NULL;
    natsStatus s;
    slot *sl;
    int idx;

    if (strlen(msg_id) >= MSGID_MAX)
        return SL_ERR_INVAL;
    pthread_mutex_lock(&p->mu);
    if (p->n >= ORCH_PUB_MAX) {
        pthread_mutex_unlock(&p->mu);
        return SL_ERR_FULL;
    }
    idx = p->n++;
    sl = &p->slots[idx];
    memset(sl, 0, sizeof(*sl));
    snprintf(sl->msg_id, sizeof(sl->msg_id), "%s", msg_id);
    index_put(p, sl->msg_id, idx);
    pthread_mutex_unlock(&p->mu);
    *slot_out = idx;

    s = natsMsg_Create(&m, subject, NULL, data, (int)len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Nats-Msg-Id", msg_id);
    if (s == NATS_OK && extra_hdr != NULL && extra_val != NULL)
        s = natsMsgHeader_Set(m, extra_hdr, extra_val);
    if (s == NATS_OK)
        s = js_PublishMsgAsync(p->js, &m, NULL);
    natsMsg_Destroy(m);
    if (s != NATS_OK) {
        pthread_mutex_lock(&p->mu);
        sl->r.done = true;
        sl->r.err = s;
        pthread_mutex_unlock(&p->mu);
        return SL_ERR_BUS;
    }
    return SL_OK;
}

sl_status orch_pub_wait(orch_pub *p, int64_t timeout_ms)
{
    jsPubOptions po;
    natsMsgList pending = {0};
    sl_status st = SL_OK;

    jsPubOptions_Init(&po);
    po.MaxWait = timeout_ms > 0 ? timeout_ms : 1;
    if (js_PublishAsyncComplete(p->js, &po) != NATS_OK) {
        /* Take back what is still unacknowledged: its outcome is unknown, so
         * the caller treats it as failed and redoes the step later (the
         * Nats-Msg-Id drops it if it was stored after all). */
        if (js_PublishAsyncGetPendingList(&pending, p->js) == NATS_OK)
            natsMsgList_Destroy(&pending);
        st = SL_ERR_TIMEOUT;
    }
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->n; i++) {
        if (!p->slots[i].r.done) {
            p->slots[i].r.done = true;
            p->slots[i].r.err = NATS_TIMEOUT;
            st = SL_ERR_TIMEOUT;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return st;
}

bool orch_pub_outstanding(orch_pub *p)
{
    bool any = false;

    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->n && !any; i++)
        any = !p->slots[i].r.done;
    pthread_mutex_unlock(&p->mu);
    return any;
}

orch_pub_result orch_pub_get(const orch_pub *p, int slot_idx)
{
    orch_pub_result r = {.done = true, .err = NATS_INVALID_ARG};

    if (slot_idx >= 0 && slot_idx < p->n)
        r = p->slots[slot_idx].r;
    return r;
}

bool orch_pub_ok(const orch_pub *p, int slot_idx)
{
    orch_pub_result r = orch_pub_get(p, slot_idx);

    return r.done && r.err == NATS_OK;
}
