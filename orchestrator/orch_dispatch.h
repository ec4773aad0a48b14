/* What the orchestrator publishes, with the subjects and Nats-Msg-Ids of
 * docs/wire.md: the room/session `message` event, in-flight job records,
 * work requests, `busy` events and fallback replies. Builders are pure
 * (testable without NATS); the queue_* functions add the publish to an
 * orch_pub round. Safe from any thread for distinct orch_pub objects. */
#ifndef ORCH_DISPATCH_H
#define ORCH_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "orch_agents.h"
#include "orch_pub.h"
#include "orch_router.h"
#include "sl_status.h"
#include "sl_subject.h"
#include "sluice.pb-c.h"

#define ORCH_JOB_MAX   (SL_ID_MAX + 1)
#define ORCH_MSGID_MAX 96

/* The id a message answered by agents is known by: its event_id, or its
 * message_id when the writer set no event id. NULL when neither is set. */
const char *orch_msg_event_id(const Sluice__Envelope *in);

/* Writes the job id "<event id>-<agent index>" into buf. SL_ERR_INVAL when
 * it would not be a valid id (too long or bad characters). */
sl_status orch_job_id(char *buf, size_t n, const Sluice__Envelope *in, size_t agent_idx);

/* Writes the OUT subject a message and the replies to it go to: the room
 * channel when room is set, the session channel otherwise. */
sl_status orch_reply_subject(char *buf, size_t n, const char *tenant, const char *room,
                             const char *session);

/* Encodes the WorkRequest envelope for agent a answering message in (a
 * message body is required); the caller frees *out. fw (NULL: unknown)
 * tells who could answer the agent's answer (orch_followers_of): with
 * fw->mentions_only the request says so, and the worker posts the agent
 * message only when its text mentions one of fw->names. */
sl_status orch_work_encode(const Sluice__Envelope *in, const char *tenant, const orch_agent *a,
                           const char *job, int64_t deadline_ms, const orch_followers *fw,
                           uint8_t **out, size_t *len);

/* Encodes the part of the work request for agent a answering message in
 * that orch_fallback_encode reads (header, job, agent, fallback, room,
 * to; no text or prompt): what the orchestrator keeps to end a job whose
 * work message vanished from WORK. The caller frees *out. */
sl_status orch_work_stub_encode(const Sluice__Envelope *in, const char *tenant, const orch_agent *a,
                                const char *job, uint8_t **out, size_t *len);

/* Encodes a `busy` event for message in and agent a. */
sl_status orch_busy_encode(const Sluice__Envelope *in, const char *tenant, const char *agent,
                           const char *reason, uint32_t retry_after_ms, uint8_t **out, size_t *len);

/* Encodes the final fallback `reply` (degraded) for a work envelope; the
 * OUT subject it goes to is written to subj. */
sl_status orch_fallback_encode(const Sluice__Envelope *work, uint32_t attempt, uint8_t **out,
                               size_t *len, char *subj, size_t subjlen);

/* Formats the in-flight JSON of a job; the caller frees *out. reason may be
 * NULL. */
sl_status orch_job_json(char **out, const char *state, const char *session, const char *to,
                        const char *agent, const char *reason);

/* Queues the OUT `message` event of a message (the IN envelope as is, data
 * of len bytes) on its channel, id m:<event_id>. */
sl_status orch_queue_post(orch_pub *p, const Sluice__Envelope *in, const char *tenant,
                          const void *data, size_t len, int *slot);

/* Queues an in-flight record for job (publish to $KV.sluice_inflight),
 * with msg id "<tag>:<job>" so a replay cannot overwrite a later state. */
sl_status orch_queue_job_state(orch_pub *p, const char *tenant, const char *job, const char *tag,
                               const char *json, int *slot);

/* Queues the work request (id w:<job>) on sluice.work.<model>.<tenant>;
 * fw as for orch_work_encode. */
sl_status orch_queue_work(orch_pub *p, const Sluice__Envelope *in, const char *tenant,
                          const orch_agent *a, const char *job, int64_t deadline_ms,
                          const orch_followers *fw, int *slot);

/* Queues a busy event (id b:<job>) on the sender's session channel. */
sl_status orch_queue_busy(orch_pub *p, const Sluice__Envelope *in, const char *tenant,
                          const char *agent, const char *job, const char *reason,
                          uint32_t retry_after_ms, int *slot);

#endif
