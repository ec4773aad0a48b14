/* Sluice fault scenarios (issue 6): real clients against real binaries and
 * a real nats-server while a fault happens, then counts.
 *
 * A scenario starts a stack (tests/harness), connects clients that join
 * rooms (fx_load, fault_load.c), lets them send messages at a steady pace,
 * injects its fault mid-load, waits until every accepted message has been
 * delivered and answered (or a deadline passes) and counts:
 *
 *   sent        distinct messages the clients tried to send
 *   accepted    of those, answered "accepted" at least once
 *   busy        "busy" answers to sends (each is retried with the same id)
 *   delivered   accepted messages whose message event reached every
 *               expected recipient (the sender's session for a private
 *               message, every member of the room for a room message;
 *               members never leave in these scenarios)
 *   lost        accepted messages that missed at least one recipient
 *   duplicated  events a client saw twice: a (ch, seq) at or below the
 *               channel's last seq, or a message or final reply seen again
 *               under a new seq
 *   unended     messages for which some recipient saw the message (or
 *               reply tokens) but no final reply (nor an agent busy event)
 *
 * A scenario passes when lost = duplicated = unended = 0, no event crossed
 * a tenant or room (leaked), no final echo reply has the wrong text, every
 * process that was not killed on purpose is still alive and exits cleanly
 * (no sanitizer report), and the fault demonstrably took effect (e.g. the
 * killed gateway's clients resumed elsewhere). The reason of a failure is in
 * fx_result.why; examples of each problem (ids, sessions, seqs) are in
 * fx_result.detail.
 *
 * Everything here runs in the calling thread except the client threads of
 * fx_load, which the scenario starts and joins. Not reentrant across
 * threads: run one scenario at a time. */
#ifndef FX_FAULT_H
#define FX_FAULT_H

#include <stdbool.h>
#include <stdio.h>

#include "sl_status.h"

/* How big a run is. */
typedef enum fx_size {
    FX_CI = 0, /* tens of clients, hundreds of messages, well under a minute each */
    FX_SOAK,   /* longer and larger */
} fx_size;

#define FX_DETAIL_MAX 4096

/* The outcome of one scenario run. */
typedef struct fx_result {
    char scenario[32];
    unsigned long sent, accepted, busy, delivered, lost, duplicated, unended;
    /* Evidence and side counts. */
    unsigned long clients;      /* client connections the load keeps */
    unsigned long resumes;      /* successful resumes (welcome with resumed:true) */
    unsigned long drops;        /* connections that ended under a client */
    unsigned long cuts;         /* closes with 4429 seen by clients */
    unsigned long refusals;     /* handshakes refused (1013 or HTTP 503) */
    unsigned long retried;      /* replies whose final came from attempt >= 2 */
    unsigned long degraded;     /* final replies marked degraded or partial */
    unsigned long refused;      /* messages whose agent refused the job (busy event) */
    unsigned long gaps;         /* gap frames */
    unsigned long leaked;       /* events of another tenant, room or session */
    unsigned long bad_text;     /* final echo replies whose text differs from the message */
    unsigned long errors;       /* error frames */
    unsigned long gave_up;      /* messages never accepted before the send deadline */
    unsigned long events;       /* event frames received */
    double seconds;             /* wall time of the scenario */
    bool fault_ok;              /* the fault took effect */
    bool procs_ok;              /* no unexpected exit, crash or sanitizer report */
    bool settled;               /* everything expected arrived before the deadline */
    sl_status setup;            /* SL_OK, or why the scenario could not run */
    char why[512];              /* failure reasons, "" when it passed */
    char note[1024];            /* what the fault did */
    char detail[FX_DETAIL_MAX]; /* examples of each problem */
} fx_result;

/* The number of scenarios and their names ("gateway-kill", ...), in order. */
int fx_scenario_count(void);
const char *fx_scenario_name(int i);

/* The index of a scenario by name or by 1-based number ("3"), or -1. */
int fx_scenario_find(const char *name);

/* Runs scenario i at the given size and fills *out. Returns SL_OK when the
 * scenario ran and passed; SL_ERR_INTERNAL when it ran and failed (see
 * out->why); the harness status when it could not run (out->setup, and
 * out->why has hx_error()). */
sl_status fx_run(int i, fx_size size, fx_result *out);

/* True when *r passes (see above); fills r->why when it does not. */
bool fx_result_ok(fx_result *r);

/* Prints the table head (markdown) and one row per result. */
void fx_print_head(FILE *f);
void fx_print_row(FILE *f, const fx_result *r);

/* Prints the evidence line and, for a failure, why and the detail. */
void fx_print_notes(FILE *f, const fx_result *r);

#endif
