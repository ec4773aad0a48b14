/* The presence bucket's entries and the coalesced presence event, as data:
 * no NATS, no server state (unit-tested in check_gw_presrec.c).
 *
 * Two forms of entry share the room's keys "<tenant>.<room>.*":
 *   - a gateway's record of the room, "<tenant>.<room>.=<instance>" (a `=`
 *     no session id can hold), value
 *     {"v":1,"count":N,"members":[{"session":"s1","user":"u1"},...]}
 *     listing at most GW_PRESREC_MAX of the gateway's N members;
 *   - one member, "<tenant>.<room>.<session>" {"user":"u1"}, written by
 *     gateways older than the records (read during a rolling upgrade). */
#ifndef GW_PRESREC_H
#define GW_PRESREC_H

#include <cJSON.h>
#include <stdbool.h>
#include <stddef.h>

#include "gw_map.h"
#include "sl_status.h"

/* Members listed in one record: a session id is at most 64 bytes and a user
 * 128 bytes of UTF-8 (at most 768 once escaped), so a full record stays
 * under 450 KB, well under NATS's 1 MB payload; typical ids make it about
 * 30 KB. A gateway with more members in a room lists the first ones and
 * counts all. */
#define GW_PRESREC_MAX 500

/* Changes carried by one coalesced presence event (more: several events). */
#define GW_PRESENCE_CHANGES_MAX 200

/* Entries a members read looks at past its max members (duplicates). */
#define GW_PRESREC_KEYS_SLACK 64

/* The token that starts a record's last key token. */
#define GW_PRESREC_MARK '='

/* Writes "<tenant>.<room>.=<instance>" into buf. SL_ERR_INVAL when an id is
 * not valid (sl_id_valid) or buf is too small. */
sl_status gw_presrec_key(char *buf, size_t n, const char *tenant, const char *room,
                         const char *instance);

typedef struct gw_presrec_member {
    const char *session;
    const char *user;
} gw_presrec_member;

/* The record's value for members m[0..n) of total (n <= total), as a
 * malloc'd JSON string, or NULL (no memory). */
char *gw_presrec_encode(const gw_presrec_member *m, int n, int total);

/* Reads one presence entry (key and value as stored) and appends its
 * members as {"user","session"} to the array members, skipping sessions
 * already in seen (session -> anything non-NULL; each added one is put
 * there, with members as its value) and stopping at max members in the
 * array. *truncated is set when members were left out: the array was
 * full, or a record counts more than it lists. Malformed entries add
 * nothing. Returns false only when out of memory. */
bool gw_presrec_collect(const char *key, const char *value, size_t len, cJSON *members,
                        gw_map *seen, int max, bool *truncated);

#endif /* GW_PRESREC_H */
