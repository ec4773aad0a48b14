/* History reads: on a gw_io thread, the newest events of a channel below a
 * sequence in one bounded read (gw__history_read_io, also the server API's
 * history), and back on the loop thread the `history` frame that answers a
 * client's request (gw__history_done). */
#include "gw_server_int.h"

/* Appends (seq, m) to a growing array; false without memory. */
static bool got_append(got **arr, size_t *n, size_t *cap, natsMsg *m, uint64_t seq)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 32;
        got *g = realloc(*arr, nc * sizeof(got));
        if (g == NULL)
            return false;
        *arr = g;
        *cap = nc;
    }
    (*arr)[*n].seq = seq;
    (*arr)[*n].msg = m;
    (*n)++;
    return true;
}

/* One history request: the newest `limit` events of the channel below
 * `before`, in one bounded read. Direct gets only read forward, so windows
 * below `before` are read newest window first, each once (from its start to
 * where the previous window began, never again), growing fourfold, until
 * `limit` events are found, the stream's start is reached or the budget of
 * 2 x limit + 16 gets is spent. A window the budget cuts is dropped (its
 * newest part was not read); what was not reached is the next page's
 * (j->covered). */
natsStatus gw__history_read_io(read_job *j)
{
    uint64_t before = j->before, w = (uint64_t)j->limit * 2;
    uint64_t budget = (uint64_t)j->limit * 2 + 16, used = 0;
    natsStatus st = NATS_OK;

    if (before == 0) {
        st = gw__last_seq_io(j->s, j->out, &before);
        before += 1;
        used++;
    }
    j->covered = before;
    while (st == NATS_OK && j->covered > 1 && (int64_t)j->n < j->limit && used < budget) {
        uint64_t start = j->covered > w ? j->covered - w : 1;
        got *win = NULL;
        size_t wn = 0, wcap = 0;
        bool complete = false;
        for (uint64_t seq = start; used < budget;) {
            natsMsg *m = NULL;
            uint64_t gs;
            used++;
            st = gw__next_by_subject(j->s, j->out, seq, &m);
            if (st == NATS_NOT_FOUND) {
                st = NATS_OK;
                complete = true;
                break;
            }
            if (st != NATS_OK)
                break;
            gs = gw__header_u64(m, "Nats-Sequence");
            if (gs == 0 || gs >= j->covered) {
                natsMsg_Destroy(m);
                complete = true;
                break;
            }
            if (!got_append(&win, &wn, &wcap, m, gs)) {
                natsMsg_Destroy(m);
                st = NATS_NO_MEMORY;
                break;
            }
            seq = gs + 1;
        }
        if (complete && st == NATS_OK && wn > 0) {
            got *all = realloc(win, (wn + j->n) * sizeof(got));
            if (all == NULL) {
                complete = false;
                st = NATS_NO_MEMORY;
            } else {
                win = all;
                if (j->n > 0)
                    memcpy(win + wn, j->msgs, j->n * sizeof(got));
                free(j->msgs);
                j->msgs = win;
                j->n += wn;
                win = NULL;
                wn = 0;
            }
        }
        for (size_t i = 0; i < wn; i++)
            natsMsg_Destroy(win[i].msg);
        free(win);
        if (!complete)
            break;
        j->covered = start;
        w *= 4;
    }
    /* Not every event below covered was read: is there any? (one get) */
    if (st == NATS_OK && j->covered > 1 && (int64_t)j->n <= j->limit) {
        natsMsg *m = NULL;
        st = gw__next_by_subject(j->s, j->out, 1, &m);
        if (st == NATS_NOT_FOUND ||
            (st == NATS_OK && gw__header_u64(m, "Nats-Sequence") >= j->covered))
            j->covered = 1;
        if (st == NATS_NOT_FOUND)
            st = NATS_OK;
        natsMsg_Destroy(m);
    }
    return st;
}

/* Answers a history request: the newest events found, at most `limit`,
 * and at most half of the outbound bound in bytes (the other half is for
 * live traffic), so a page never cuts its reader with 4429. Older events
 * are announced with more:true and next_before. */
void gw__history_done(gw_server *s, read_job *j, gw_conn *c)
{
    size_t lo = j->n > (size_t)j->limit ? j->n - (size_t)j->limit : 0, k = 0, cut = j->n;
    size_t max = (size_t)s->cfg->outq_max_bytes, budget = max / 2;
    size_t used = 128 + strlen(j->ch) + strlen(j->id);
    const char *id = j->id[0] != '\0' ? j->id : NULL;
    char **events = NULL;
    bool more, full = false;

    gw__history_release(s, j->tenant, c);
    if (c == NULL || c->close_code != 0)
        return;
    if (j->head == UINT64_MAX) {
        gw__conn_error(s, c, "internal", "history read failed; retry", id);
        return;
    }
    if (c->q.bytes + budget > max)
        budget = max > c->q.bytes ? max - c->q.bytes : 0;
    events = calloc(j->n - lo + 1, sizeof(char *));
    if (events == NULL) {
        gw__conn_error(s, c, "internal", "out of memory; retry", id);
        return;
    }
    for (size_t i = j->n; i > lo; i--) {
        Sluice__Envelope *e = NULL;
        char *ev;
        size_t len;
        if (sl_envelope_decode(natsMsg_GetData(j->msgs[i - 1].msg),
                               (size_t)natsMsg_GetDataLength(j->msgs[i - 1].msg), &e) != SL_OK) {
            cut = i - 1; /* not an event: skipped, like live delivery does */
            continue;
        }
        ev = gw_frame_event(e, j->ch, j->msgs[i - 1].seq);
        sl_envelope_free(e);
        len = ev != NULL ? strlen(ev) + 1 : 0;
        /* One event larger than the page still goes alone when the queue
         * can take it; otherwise the client is asked to read first. */
        if (ev == NULL || (used + len > budget && (k > 0 || c->q.bytes + used + len > max))) {
            free(ev);
            full = true;
            break;
        }
        events[k++] = ev;
        used += len;
        cut = i - 1;
    }
    if (k == 0 && full) {
        gw__conn_busy(s, c, id, "history_busy", HISTORY_RETRY_MS);
        free(events);
        return;
    }
    for (size_t a = 0, b = k; a + 1 < b; a++, b--) { /* newest first -> stream order */
        char *t = events[a];
        events[a] = events[b - 1];
        events[b - 1] = t;
    }
    /* Events below msgs[cut] (found, or not read yet below covered) are
     * the next page's. */
    more = cut > 0 || j->covered > 1;
    gw__conn_send_text(s, c,
                       gw_frame_history(j->ch, events, k, more,
                                        (int64_t)(cut < j->n ? j->msgs[cut].seq : j->covered), id));
    for (size_t i = 0; i < k; i++)
        free(events[i]);
    free(events);
}
