#include "orch_pub.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_json.h"
#include "sl_log.h"
#include "sl_time.h"

#define MSGID_MAX 96
#define HELD_MAX  256

typedef struct slot {
    orch_pub_result r;
} slot;

struct orch_pub {
    natsConnection *nc;
    natsSubscription *sub; /* <inbox>.<round>.<slot>: the acknowledgments */
    char inbox[128];
    size_t inbox_len;
    uint64_t round; /* acknowledgments of an earlier round are dropped */
    slot slots[ORCH_PUB_MAX];
    int n;
    int left; /* slots of the round without an outcome */
    /* Messages sent and acknowledgments read since the last wait ended,
     * destroyed together then: cnats frees every message on its garbage
     * collector thread and wakes it for each one destroyed while it
     * sleeps, so one at a time costs a wake-up each. */
    natsMsg *held[HELD_MAX];
    int nheld;
};

sl_status orch_pub_create(orch_pub **out, natsConnection *nc)
{
    orch_pub *p = NULL;
    natsInbox *inbox = NULL;
    char subj[192];
    natsStatus s;

    if (out == NULL || nc == NULL)
        return SL_ERR_INVAL;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return SL_ERR_NOMEM;
    p->nc = nc;
    if (natsInbox_Create(&inbox) != NATS_OK) {
        free(p);
        return SL_ERR_NOMEM;
    }
    snprintf(p->inbox, sizeof(p->inbox), "%s", (const char *)inbox);
    natsInbox_Destroy(inbox);
    p->inbox_len = strlen(p->inbox);
    snprintf(subj, sizeof(subj), "%s.*.*", p->inbox);
    /* A synchronous subscription: the loop drains the acknowledgments
     * itself, so none is handed from cnats' reader to a delivery thread
     * and from there to the loop (docs/wire.md, "Cost of a message"). */
    s = natsConnection_SubscribeSync(&p->sub, nc, subj);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(p->sub, -1, -1);
    if (s != NATS_OK) {
        orch_pub_destroy(p);
        return SL_ERR_BUS;
    }
    *out = p;
    return SL_OK;
}

/* Destroys the held messages at once. */
static void release_held(orch_pub *p)
{
    for (int i = 0; i < p->nheld; i++)
        natsMsg_Destroy(p->held[i]);
    p->nheld = 0;
}

/* Takes ownership of m: destroyed with the next release. */
static void hold(orch_pub *p, natsMsg *m)
{
    if (p->nheld == HELD_MAX)
        release_held(p);
    p->held[p->nheld++] = m;
}

void orch_pub_destroy(orch_pub *p)
{
    if (p == NULL)
        return;
    release_held(p);
    if (p->sub != NULL) {
        natsSubscription_Unsubscribe(p->sub);
        natsSubscription_Destroy(p->sub);
    }
    free(p);
}

void orch_pub_reset(orch_pub *p)
{
    p->round++;
    p->n = 0;
    p->left = 0;
}

sl_status orch_pub_add(orch_pub *p, const char *subject, const char *msg_id, const void *data,
                       size_t len, int *slot_out)
{
    return orch_pub_add_hdr(p, subject, msg_id, data, len, NULL, NULL, slot_out);
}

/* Marks slot idx done with err (and jerr). */
static void slot_done(orch_pub *p, int idx, natsStatus err, jsErrCode jerr)
{
    slot *sl = &p->slots[idx];

    if (sl->r.done)
        return;
    sl->r.done = true;
    sl->r.err = err;
    sl->r.jerr = jerr;
    p->left--;
}

sl_status orch_pub_add_hdr(orch_pub *p, const char *subject, const char *msg_id, const void *data,
                           size_t len, const char *extra_hdr, const char *extra_val, int *slot_out)
{
    natsMsg *m = NULL;
    natsStatus s;
    char reply[192];
    int idx;

    if (strlen(msg_id) >= MSGID_MAX)
        return SL_ERR_INVAL;
    if (p->n >= ORCH_PUB_MAX)
        return SL_ERR_FULL;
    idx = p->n++;
    memset(&p->slots[idx], 0, sizeof(p->slots[idx]));
    p->left++;
    *slot_out = idx;

    snprintf(reply, sizeof(reply), "%s.%llu.%d", p->inbox, (unsigned long long)p->round, idx);
    s = natsMsg_Create(&m, subject, reply, data, (int)len);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, "Nats-Msg-Id", msg_id);
    if (s == NATS_OK && extra_hdr != NULL && extra_val != NULL)
        s = natsMsgHeader_Set(m, extra_hdr, extra_val);
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(p->nc, m);
    if (m != NULL)
        hold(p, m);
    if (s != NATS_OK) {
        slot_done(p, idx, s, 0);
        return SL_ERR_BUS;
    }
    return SL_OK;
}

/* Fills slot idx from its acknowledgment m: a JetStream PubAck
 * ({"stream":..,"seq":..[,"duplicate":true]}), an API error
 * ({"error":{"err_code":..}}) or a status (503: no stream listens). */
static void take_ack(orch_pub *p, int idx, natsMsg *m)
{
    const char *status = NULL;
    cJSON *root = NULL;
    const cJSON *err, *seq;
    int64_t v = 0;

    if (p->slots[idx].r.done) /* timed out in an earlier wait of the round */
        return;
    if (natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status != NULL) {
        slot_done(p, idx, strcmp(status, "503") == 0 ? NATS_NO_RESPONDERS : NATS_ERR, 0);
        return;
    }
    root = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
    if (root == NULL || !cJSON_IsObject(root)) {
        slot_done(p, idx, NATS_ERR, 0);
        goto cleanup;
    }
    err = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (err != NULL && !cJSON_IsNull(err)) {
        if (!sl_json_get_int(cJSON_GetObjectItemCaseSensitive(err, "err_code"), 0, INT32_MAX, &v))
            v = 0;
        slot_done(p, idx, NATS_ERR, (jsErrCode)v);
        goto cleanup;
    }
    seq = cJSON_GetObjectItemCaseSensitive(root, "seq");
    if (!sl_json_get_int(seq, 1, SL_JSON_INT_MAX, &v)) {
        slot_done(p, idx, NATS_ERR, 0);
        goto cleanup;
    }
    p->slots[idx].r.seq = (uint64_t)v;
    p->slots[idx].r.duplicate =
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "duplicate")) ? true : false;
    slot_done(p, idx, NATS_OK, 0);
cleanup:
    cJSON_Delete(root);
}

/* Marks every slot of the round without an outcome done with err. */
static void fail_open(orch_pub *p, natsStatus err)
{
    for (int i = 0; i < p->n && p->left > 0; i++)
        slot_done(p, i, err, 0);
}

/* The slot of this round that reply subject s answers, or -1 (another
 * round's, or not ours). */
static int slot_of(const orch_pub *p, const char *s)
{
    unsigned long long round = 0;
    int idx = -1, used = 0;

    if (s == NULL || strncmp(s, p->inbox, p->inbox_len) != 0 ||
        sscanf(s + p->inbox_len, ".%llu.%d%n", &round, &idx, &used) != 2 ||
        s[p->inbox_len + (size_t)used] != '\0' || round != p->round || idx < 0 || idx >= p->n)
        return -1;
    return idx;
}

sl_status orch_pub_wait(orch_pub *p, int64_t timeout_ms)
{
    int64_t until = sl_mono_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    sl_status st = SL_OK;
    int noresp = 0;

    /* Bounded by the outcomes expected and by the time. */
    while (p->left > 0) {
        natsMsg *m = NULL;
        int64_t wait = until - sl_mono_ms();
        natsStatus ns;
        int idx;

        if (noresp >= p->left) {
            /* cnats consumed a 503 (no stream took a publish) without
             * saying whose: once every slot still open can be one of
             * these, they all are. Counting one of another round (only
             * after that round timed out) fails a slot early: it is
             * redone, never lost. */
            fail_open(p, NATS_NO_RESPONDERS);
            break;
        }
        if (wait <= 0)
            break;
        ns = natsSubscription_NextMsg(&m, p->sub, wait);
        if (ns == NATS_NO_RESPONDERS) {
            noresp++;
            continue;
        }
        if (ns != NATS_OK)
            break;
        idx = slot_of(p, natsMsg_GetSubject(m));
        if (idx >= 0)
            take_ack(p, idx, m);
        hold(p, m);
    }
    /* What is still unacknowledged has an unknown outcome: the caller
     * treats it as failed and redoes the step later (the Nats-Msg-Id drops
     * it if it was stored after all); its late acknowledgment is dropped
     * (done slots and other rounds are not touched). */
    if (p->left > 0) {
        fail_open(p, NATS_TIMEOUT);
        st = SL_ERR_TIMEOUT;
    }
    release_held(p);
    return st;
}

bool orch_pub_outstanding(orch_pub *p)
{
    return p->left > 0;
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
