/* Subject names and id validation. Every subject Sluice builds goes through
 * this module, after the ids in it were validated, so no client text can
 * inject a '.', '*' or '>' into a subject. */
#ifndef SL_SUBJECT_H
#define SL_SUBJECT_H

#include <stdbool.h>
#include <stddef.h>

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

/* Subject builders. Each writes a NUL-terminated subject into buf and
 * returns SL_OK, or SL_ERR_INVAL (nothing useful written) when an id is
 * invalid or buf is too small. */
sl_status sl_subject_in(char *buf, size_t n, const char *tenant, const char *session);
sl_status sl_subject_work(char *buf, size_t n, const char *model, const char *tenant);
sl_status sl_subject_cancel(char *buf, size_t n, const char *tenant);

/* OUT and live subjects of a channel: prefix is "sluice.out" or
 * "sluice.live"; when is_room, name is the room, otherwise the session. */
sl_status sl_subject_chan(char *buf, size_t n, const char *prefix, const char *tenant, bool is_room,
                          const char *name);

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

#endif
