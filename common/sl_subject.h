/* Subject names and id validation. Every Sluice subject (sluice.*), every
 * filter over them and every KV key is built and parsed in this module,
 * after the ids in it were validated, so no client text can inject a '.',
 * '*' or '>' into a subject and no tier spells a subject of its own. The
 * subjects of the NATS server's own APIs ($JS.*, $KV.*) and the consumer
 * names of the streams are built in sl_streams.h, beside the streams and
 * buckets they belong to. The formats are documented in docs/wire.md. */
#ifndef SL_SUBJECT_H
#define SL_SUBJECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"

#define SL_ID_MAX      64  /* tenant, room, agent, session, model ids */
#define SL_SUBJECT_MAX 256 /* room for any subject built here */

/* Returns true when s matches [A-Za-z0-9_-]{1,64}: tenant, room, agent,
 * model and session ids. NULL is invalid. */
bool sl_id_valid(const char *s);

/* Returns true when s matches [A-Za-z0-9_.:-]{1,64}: a client's message id
 * (never used inside a subject). NULL is invalid. */
bool sl_client_id_valid(const char *s);

/* Channel names as clients see them: "s" (the session's private channel)
 * or "r:<room>". sl_channel_parse() sets *is_room and points *room at the
 * room part inside ch (not copied); it fails with SL_ERR_INVAL for anything
 * else, including an invalid room id. */
sl_status sl_channel_parse(const char *ch, bool *is_room, const char **room);

/* Every subject of a stream or control channel: the stream subjects and
 * the orchestrator's and the cancel listeners' filters. */
#define SL_SUBJECT_IN_ALL     "sluice.in.>"
#define SL_SUBJECT_WORK_ALL   "sluice.work.>"
#define SL_SUBJECT_OUT_ALL    "sluice.out.>"
#define SL_SUBJECT_LIVE_ALL   "sluice.live.>"
#define SL_SUBJECT_CANCEL_ALL "sluice.ctl.cancel.*"

/* Subject builders. Each writes a NUL-terminated subject into buf and
 * returns SL_OK, or SL_ERR_INVAL (nothing useful written) when an id is
 * invalid or buf is too small. */
sl_status sl_subject_in(char *buf, size_t n, const char *tenant, const char *session);
sl_status sl_subject_work(char *buf, size_t n, const char *model, const char *tenant);
sl_status sl_subject_cancel(char *buf, size_t n, const char *tenant);

/* OUT and live subjects of a channel: prefix is "sluice.out" or
 * "sluice.live"; when is_room, name is the room, otherwise the session.
 * The tiers call the two named forms below. */
sl_status sl_subject_chan(char *buf, size_t n, const char *prefix, const char *tenant, bool is_room,
                          const char *name);

/* "sluice.out.<tenant>.{r.<room>|s.<session>}": where a channel's events
 * are stored (stream SLUICE_OUT). */
sl_status sl_subject_out(char *buf, size_t n, const char *tenant, bool is_room, const char *name);

/* "sluice.live.<tenant>.{r.<room>|s.<session>}": where SLUICE_OUT
 * republishes them live. */
sl_status sl_subject_live(char *buf, size_t n, const char *tenant, bool is_room, const char *name);

/* "sluice.live.<tenant>.>": every live event of a tenant (sluicectl
 * tail). SL_ERR_INVAL when tenant is invalid or buf is too small. */
sl_status sl_subject_live_tenant(char *buf, size_t n, const char *tenant);

/* Work filters. sl_subject_work_filter() writes the filter of a work
 * queue's consumer: "sluice.work.<model>.<tenant>", or the model-wide
 * "sluice.work.<model>.>" when tenant is NULL or "" (the legacy consumer).
 * sl_subject_work_tenants() writes "sluice.work.<model>.*", the set of
 * every tenant's queue of a model (for listing subjects). SL_ERR_INVAL
 * when an id is invalid or buf is too small. */
sl_status sl_subject_work_filter(char *buf, size_t n, const char *model, const char *tenant);
sl_status sl_subject_work_tenants(char *buf, size_t n, const char *model);

/* The worker doorbell, rung by the orchestrator once jobs are stored:
 * "sluice.ctl.work.<model>.<tenant>" (docs/wire.md); workers listen on
 * sl_subject_bell_filter(), "sluice.ctl.work.<model>.*". SL_ERR_INVAL
 * when an id is invalid or buf is too small. */
sl_status sl_subject_bell(char *buf, size_t n, const char *model, const char *tenant);
sl_status sl_subject_bell_filter(char *buf, size_t n, const char *model);

/* Parsers of the subjects above. On success each copies the ids (each at
 * most SL_ID_MAX + 1 bytes with the NUL) and returns SL_OK; SL_ERR_INVAL
 * (outputs unspecified) when subject is NULL, has another prefix or
 * number of tokens, or an id in it is invalid.
 *   sl_subject_in_parse:     "sluice.in.<tenant>.<session>"
 *   sl_subject_work_parse:   "sluice.work.<model>.<tenant>"
 *   sl_subject_cancel_parse: "sluice.ctl.cancel.<tenant>"
 *   sl_subject_bell_parse:   "sluice.ctl.work.<model>.<tenant>" */
sl_status sl_subject_in_parse(const char *subject, char *tenant, char *session);
sl_status sl_subject_work_parse(const char *subject, char *model, char *tenant);
sl_status sl_subject_cancel_parse(const char *subject, char *tenant);
sl_status sl_subject_bell_parse(const char *subject, char *model, char *tenant);

/* Parses "<prefix>.<tenant>.s.<session>" or "<prefix>.<tenant>.r.<room>"
 * (prefix "sluice.out" or "sluice.live"). On success copies the tenant and
 * name (each at most SL_ID_MAX + 1 bytes with the NUL) and sets *is_room. */
sl_status sl_subject_chan_parse(const char *subject, char *tenant, bool *is_room, char *name);

/* KV keys "<a>.<b>" and "<a>.<b>.<c>"; every part must be a valid id. */
sl_status sl_kv_key2(char *buf, size_t n, const char *a, const char *b);
sl_status sl_kv_key3(char *buf, size_t n, const char *a, const char *b, const char *c);

/* The in-flight KV key of a cancel marker for a client message:
 * "<tenant>.x-<40 hex of SHA-256(session:client_id)>" (docs/wire.md).
 * SL_ERR_INVAL when tenant or session is invalid or buf too small. */
sl_status sl_cancel_key(char *buf, size_t n, const char *tenant, const char *session,
                        const char *client_id);

/* The server API's disconnect of a user, "sluice.ctl.disconnect.<tenant>"
 * (core NATS; the body is the user); every gateway listens on
 * SL_SUBJECT_DISCONNECT_ALL. sl_subject_disconnect() returns SL_ERR_INVAL
 * for an invalid tenant or a small buf; sl_subject_disconnect_parse()
 * copies the tenant (SL_ID_MAX + 1 bytes) or returns SL_ERR_INVAL like the
 * parsers above. */
#define SL_SUBJECT_DISCONNECT_ALL "sluice.ctl.disconnect.*"
sl_status sl_subject_disconnect(char *buf, size_t n, const char *tenant);
sl_status sl_subject_disconnect_parse(const char *subject, char *tenant);

/* The sluice_quota key of a tenant's tokens in one second:
 * "<tenant>.<unix second>". SL_ERR_INVAL for an invalid tenant, a negative
 * second or a buf too small. */
sl_status sl_kv_key_quota(char *buf, size_t n, const char *tenant, int64_t unix_s);

/* The sluice_usage key of an agent's tokens for a tenant in one slot of
 * SL_USAGE_SLOT_S seconds: "<tenant>.<slot>.<agent>", slot = unix second /
 * SL_USAGE_SLOT_S. SL_ERR_INVAL as above. */
#define SL_USAGE_SLOT_S 300
sl_status sl_kv_key_usage(char *buf, size_t n, const char *tenant, int64_t slot, const char *agent);

/* Parse the keys above: "<tenant>.<unix second>" and
 * "<tenant>.<slot>.<agent>" (numbers of 1 to 18 decimal digits). The ids
 * go to tenant and agent (at least SL_ID_MAX + 1 bytes each). SL_ERR_INVAL
 * for anything else. */
sl_status sl_kv_key_quota_parse(const char *key, char *tenant, int64_t *unix_s);
sl_status sl_kv_key_usage_parse(const char *key, char *tenant, int64_t *slot, char *agent);

/* The KV filter "<tenant>.>": every key of one tenant in a bucket whose
 * keys start with the tenant. SL_ERR_INVAL for an invalid tenant. */
sl_status sl_kv_key_tenant_filter(char *buf, size_t n, const char *tenant);

/* The sluice_presence filter "<tenant>.<room>.*": every member (one key per
 * session) of one room. SL_ERR_INVAL for an invalid tenant or room. */
sl_status sl_kv_key_room_members_filter(char *buf, size_t n, const char *tenant, const char *room);

#endif
