/* Live events from cnats to the loop thread (gw__on_live_cb, handed over
 * in batches through gw_batch, droppable), and new channels: subscribing to their
 * live subject and starting the read that gives them a head. Putting live
 * events in order, holes and fills are gw_read.c's (gw__chan_on_live). */
#include "gw_server_int.h"

/* Loop thread: one live event of the batch the cnats threads queued. */
void gw__live_run(void *ctx, void *item)
{
    gw_server *s = ctx;
    natsMsg *msg = item;
    gw_chan *ch = gw_map_get(s->chans, natsMsg_GetSubject(msg));

    if (ch != NULL)
        gw__chan_on_live(s, ch, msg);
    else
        gw__msg_release(s, msg);
}

void gw__live_free(void *item)
{
    natsMsg_Destroy(item);
}

/* The events of every channel share one batch, drained by one bridge task
 * per wake of the loop: no allocation and no task per event. */
void gw__on_live_cb(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    gw_server *s = closure;

    (void)nc;
    (void)sub;
    if (!gw_batch_push(s->live, msg)) {
        sl_counter_inc(s->m.live_dropped);
        natsMsg_Destroy(msg);
    }
}

/* Finds or creates (subscribing to its live subject) a channel; how a new
 * one gets ready is `how`. */
gw_chan *gw__chan_get_ex(gw_server *s, const char *tenant, bool is_room, const char *name,
                         enum chan_head how)
{
    char live[SL_SUBJECT_MAX], out[SL_SUBJECT_MAX], cname[GW_CH_MAX];
    size_t llive, lch, ltenant, lname;
    gw_chan *ch;
    char *p;
    read_job *j;

    if (sl_subject_live(live, sizeof(live), tenant, is_room, name) != SL_OK)
        return NULL;
    ch = gw_map_get(s->chans, live);
    if (ch != NULL)
        return ch;
    /* Its reads derive the stream subject (gw__read_job_new): it must fit. */
    if (sl_subject_out(out, sizeof(out), tenant, is_room, name) != SL_OK)
        return NULL;
    snprintf(cname, sizeof(cname), is_room ? "r:%s" : "s", name);
    llive = strlen(live) + 1;
    lch = strlen(cname) + 1;
    ltenant = strlen(tenant) + 1;
    lname = strlen(name) + 1;
    /* From strs on, not sizeof: the struct's tail padding holds names too. */
    ch = calloc(1, offsetof(gw_chan, strs) + llive + lch + ltenant + lname);
    if (ch == NULL)
        return NULL;
    p = ch->strs;
    ch->live = memcpy(p, live, llive);
    ch->ch = memcpy(p += llive, cname, lch);
    ch->tenant = memcpy(p += lch, tenant, ltenant);
    ch->name = memcpy(p += ltenant, name, lname);
    ch->is_room = is_room;
    ch->state = CHAN_INIT;
    {
        static uint32_t next_gen; /* loop thread only */
        if (++next_gen == 0)
            ++next_gen;
        ch->gen = next_gen;
    }
    if (natsConnection_Subscribe(&ch->sub, sl_bus_nc(s->bus), live, gw__on_live_cb, s) != NATS_OK ||
        gw_map_put(s->chans, live, ch) != SL_OK) {
        natsSubscription_Destroy(ch->sub);
        free(ch);
        return NULL;
    }
    natsSubscription_SetPendingLimits(ch->sub, 100000, 256 * 1024 * 1024);
    if (how == HEAD_FRESH) {
        gw__chan_ready(s, ch, 0);
        return ch;
    }
    /* A join's own head read makes its channel ready: with a second read
     * the two could fall on either side of the join's presence event, and
     * the new member would start with a replay (which never cuts a client
     * that stops reading: a stopped member of a flooded room was then not
     * closed with 4429). */
    if (how == HEAD_BY_JOIN)
        return ch;
    j = gw__read_job_new(s, READ_HEAD, ch);
    if (j != NULL)
        gw_io_submit(s->io, gw__read_io, j);
    return ch;
}

gw_chan *gw__chan_get(gw_server *s, const char *tenant, bool is_room, const char *name)
{
    return gw__chan_get_ex(s, tenant, is_room, name, HEAD_READ);
}
