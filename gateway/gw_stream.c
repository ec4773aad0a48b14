/* Blocking reads of a channel's subject in the OUT stream, on gw_io threads:
 * a direct get by sequence, the last sequence, forward reads in batches and
 * whether the last event delivered is still stored; and the read_job that
 * carries such a read and its result to the loop. Used by gw_read.c (heads,
 * fills, replays, joins) and the history reads. */
#include "gw_presrec.h"
#include "gw_server_int.h"

void gw__read_job_free(void *arg)
{
    read_job *j = arg;
    for (size_t i = 0; i < j->n; i++)
        natsMsg_Destroy(j->msgs[i].msg);
    free(j->msgs);
    cJSON_Delete(j->members);
    free(j);
}

/* Direct get: the next message on subject at or after seq. */
natsStatus gw__next_by_subject(gw_server *s, const char *subject, uint64_t seq, natsMsg **out)
{
    jsDirectGetMsgOptions o;

    jsDirectGetMsgOptions_Init(&o);
    o.Sequence = seq;
    o.NextBySubject = subject;
    return js_DirectGetMsg(out, sl_bus_js(s->bus), SL_STREAM_OUT, NULL, &o);
}

natsStatus gw__last_seq_io(gw_server *s, const char *subject, uint64_t *seq)
{
    jsDirectGetMsgOptions o;
    natsMsg *m = NULL;
    natsStatus st;

    jsDirectGetMsgOptions_Init(&o);
    o.LastBySubject = subject;
    st = js_DirectGetMsg(&m, sl_bus_js(s->bus), SL_STREAM_OUT, NULL, &o);
    if (st == NATS_NOT_FOUND) {
        *seq = 0;
        return NATS_OK;
    }
    if (st == NATS_OK)
        *seq = gw__header_u64(m, "Nats-Sequence");
    natsMsg_Destroy(m);
    return st;
}

static bool push_got(read_job *j, natsMsg *m, uint64_t seq, size_t *cap)
{
    if (j->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        got *g = realloc(j->msgs, nc * sizeof(got));
        if (g == NULL)
            return false;
        j->msgs = g;
        *cap = nc;
    }
    j->msgs[j->n].seq = seq;
    j->msgs[j->n].msg = m;
    j->n++;
    return true;
}

/* Reads forward from j->from: up to REPLAY_BATCH messages, or to j->upto. */
natsStatus gw__read_forward_io(read_job *j, size_t max)
{
    size_t cap = 0;
    uint64_t seq = j->from;
    natsStatus st = NATS_OK;

    while (j->n < max) {
        natsMsg *m = NULL;
        uint64_t got_seq;
        st = gw__next_by_subject(j->s, j->out, seq, &m);
        if (st == NATS_NOT_FOUND) {
            st = NATS_OK;
            j->more = false;
            return st;
        }
        if (st != NATS_OK)
            return st;
        got_seq = gw__header_u64(m, "Nats-Sequence");
        if (got_seq == 0 || (j->upto != 0 && got_seq >= j->upto)) {
            natsMsg_Destroy(m);
            j->more = false;
            return NATS_OK;
        }
        if (!push_got(j, m, got_seq, &cap)) {
            natsMsg_Destroy(m);
            return NATS_NO_MEMORY;
        }
        seq = got_seq + 1;
    }
    j->more = true;
    return st;
}

/* Sets j->gap when the event at seq (the last one delivered) is no longer
 * in the stream on j's subject: events after it may be gone too. While it
 * is stored nothing after it was removed (removal is oldest-first). */
natsStatus gw__still_stored_io(read_job *j, uint64_t seq)
{
    jsDirectGetMsgOptions o;
    natsMsg *m = NULL;
    const char *subj = NULL;
    natsStatus st;

    jsDirectGetMsgOptions_Init(&o);
    o.Sequence = seq;
    st = js_DirectGetMsg(&m, sl_bus_js(j->s->bus), SL_STREAM_OUT, NULL, &o);
    if (st == NATS_NOT_FOUND) {
        j->gap = true;
        st = NATS_OK;
    } else if (st == NATS_OK) {
        if (natsMsgHeader_Get(m, "Nats-Subject", &subj) != NATS_OK || subj == NULL ||
            strcmp(subj, j->out) != 0)
            j->gap = true;
    }
    natsMsg_Destroy(m);
    return st;
}

read_job *gw__read_job_new(gw_server *s, int kind, gw_chan *ch)
{
    read_job *j = calloc(1, sizeof(*j));

    if (j == NULL)
        return NULL;
    j->s = s;
    j->kind = kind;
    /* Valid: the channel was made with the same subject (gw__chan_get_ex). */
    sl_subject_out(j->out, sizeof(j->out), ch->tenant, ch->is_room, ch->name);
    snprintf(j->live, sizeof(j->live), "%s", ch->live);
    snprintf(j->ch, sizeof(j->ch), "%s", ch->ch);
    snprintf(j->tenant, sizeof(j->tenant), "%s", ch->tenant);
    j->chan_gen = ch->gen;
    if (ch->is_room)
        snprintf(j->room, sizeof(j->room), "%s", ch->name);
    return j;
}

/* Appends {"user","session"} for up to max members of the room from
 * sluice_presence to the array members (*truncated when there were more):
 * the records of every gateway and the one-member entries of older
 * gateways (a rolling upgrade), each session once. Blocking: io threads
 * only. Returns true when the read completed (all initial values seen, or
 * cut at max). */
bool gw__room_members_io(gw_server *s, const char *tenant, const char *room, int max,
                         cJSON *members, bool *truncated)
{
    kvWatcher *w = NULL;
    kvWatchOptions wo;
    char filter[SL_SUBJECT_MAX];
    gw_map *seen = NULL;
    bool ok = false;

    *truncated = false;
    if (members == NULL || s->kv_presence == NULL ||
        sl_kv_key_room_members_filter(filter, sizeof(filter), tenant, room) != SL_OK ||
        gw_map_create(&seen) != SL_OK)
        return false;
    kvWatchOptions_Init(&wo);
    wo.IgnoreDeletes = true;
    if (kvStore_Watch(&w, s->kv_presence, filter, &wo) != NATS_OK) {
        gw_map_destroy(seen);
        return false;
    }
    /* Entries read are bounded too: an old-form entry lists one member,
     * and a session may be listed twice while it moves. */
    for (int i = 0;; i++) {
        kvEntry *e = NULL;
        if (kvWatcher_Next(&e, w, 2000) != NATS_OK)
            break;
        if (e == NULL) { /* the initial values are done */
            ok = true;
            break;
        }
        if (i >= max + GW_PRESREC_KEYS_SLACK)
            *truncated = true;
        else if (!gw_presrec_collect(kvEntry_Key(e), kvEntry_Value(e), (size_t)kvEntry_ValueLen(e),
                                     members, seen, max, truncated)) {
            kvEntry_Destroy(e);
            break;
        }
        kvEntry_Destroy(e);
        if (*truncated) { /* cut at max */
            ok = true;
            break;
        }
    }
    kvWatcher_Destroy(w);
    gw_map_destroy(seen);
    return ok;
}
