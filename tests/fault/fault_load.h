/* Sluice fault scenarios: the client load (fx_load).
 *
 * A load is a fixed set of clients (WebSocket connections on hx_ws, spoken
 * to in the client protocol) run by a few threads, each thread polling its
 * own clients. Every client belongs to one tenant and at most one room;
 * rooms of the same name exist in every tenant. A client connects to a
 * gateway, joins its room, and (when it is a sender) sends its messages one
 * at a time (the next after "accepted"), alternating room and private
 * messages, each with the id of the previous one as "prev". Busy answers
 * are retried after retry_after_ms with the same id; a lost connection is
 * resumed (on the next gateway in turn) with the session, the resume token
 * and the client's own positions per channel, with exponential back-off and
 * full jitter, and the unanswered send is repeated with the same id.
 *
 * Each client records, per message of the load, whether it saw the message
 * event, reply tokens, a final reply or an agent busy event, and counts
 * duplicates (a (ch, seq) at or below its channel's last seq, or the same
 * message or final under a new seq), events that do not belong to it
 * (another tenant, room or session), gaps, errors, drops, 4429 cuts and
 * handshake refusals. Message ids are "m-<n>", unique across the load, so
 * ids never collide between clients or tenants.
 *
 * The scenario thread (the one that creates the load) drives the phases
 * and may kill processes meanwhile; the client threads never touch the
 * stack. Counting happens after fx_load_stop, when the threads are gone. */
#ifndef FX_LOAD_H
#define FX_LOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "fault.h"
#include "sl_status.h"

#define FX_MAX_GATEWAYS 8

typedef struct fx_load_cfg {
    int tenants;          /* 1..4 */
    int rooms;            /* rooms per tenant (>= 1) */
    int clients;          /* clients in all (each in room (i / tenants) % rooms) */
    int senders;          /* the first `senders` clients send (<= clients) */
    int msgs_per_sender;  /* messages each sender sends */
    int private_every;    /* every n-th message is private (0: none) */
    int words;            /* words per message text (the echo answers as many tokens) */
    int word_len;         /* > 0: every word after the first is padded to this length */
    int send_interval_ms; /* pause between a sender's accepted message and its next */
    int threads;          /* client threads (1..16) */
    int ngw;              /* gateways to use (1..FX_MAX_GATEWAYS) */
    int gw_port[FX_MAX_GATEWAYS];
    const char *secret;  /* JWT secret of the stack */
    int slow_clients;    /* the first n clients of room 0 of tenant 0 get a tiny SO_RCVBUF */
    int slow_rcvbuf;     /* bytes (0: 2048) */
    int src_addrs;       /* > 1: clients bind to 127.0.0.(2 + i % src_addrs) */
    int backoff_base_ms; /* reconnect back-off base (0: 50) */
    int backoff_cap_ms;  /* and cap (0: 2000) */
    int give_up_ms;      /* a message not accepted after this long is given up (0: 45000) */
} fx_load_cfg;

typedef struct fx_load fx_load;

/* Mints the tokens and plans the messages. SL_ERR_INVAL for a bad cfg,
 * SL_ERR_NOMEM. On success *out owns the load; no thread runs yet. */
sl_status fx_load_create(fx_load **out, const fx_load_cfg *cfg);

/* Starts the client threads, which connect every client and join its room.
 * Waits up to timeout_ms until all are connected and joined; SL_ERR_TIMEOUT
 * (hx_error() says how many are missing) otherwise. The threads keep
 * running either way (fx_load_stop ends them). */
sl_status fx_load_connect(fx_load *l, int timeout_ms);

/* Lets the senders start sending. */
void fx_load_start_sending(fx_load *l);

/* Distinct messages accepted so far, and the number planned. */
int fx_load_accepted(const fx_load *l);
int fx_load_planned(const fx_load *l);

/* Waits until at least `count` messages are accepted; false on timeout. */
bool fx_load_wait_accepted(fx_load *l, int count, int timeout_ms);

/* Waits until every sender is done (all its messages accepted or given
 * up), every client is connected, and every expected message, final reply
 * and token stream has arrived, as seen by two consecutive evaluations of
 * every client thread. False on timeout. */
bool fx_load_wait_settled(fx_load *l, int timeout_ms);

/* fx_load_wait_settled for the clients that are not paused: what the
 * others sent has reached everyone but the paused clients. */
bool fx_load_wait_settled_active(fx_load *l, int timeout_ms);

/* Stops (or resumes) reading and sending on client i; a paused client's
 * socket fills up, as with a client that stopped reading. Resuming also
 * ends its tiny SO_RCVBUF (slow_clients) for its next connections. */
void fx_load_pause(fx_load *l, int i, bool paused);

/* Closes with 4429 that client i saw (exact after fx_load_stop). */
unsigned long fx_load_cuts_of(const fx_load *l, int i);

/* Client connections that are up right now (approximate while running). */
int fx_load_connected(const fx_load *l);

/* Ends the client threads (connections stay open until destroy). */
void fx_load_stop(fx_load *l);

/* Counts (after fx_load_stop) into the count fields of *r, and examples of
 * problems into r->detail. */
void fx_load_count(fx_load *l, fx_result *r);

/* Stops the threads if needed, closes every connection, frees l.
 * NULL-safe. */
void fx_load_destroy(fx_load *l);

#endif
