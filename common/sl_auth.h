/* Client authentication: JWT verification (HS256, and RS256 when a public
 * key is configured) and minting (HS256), plus resume tokens. Everything is
 * done with OpenSSL and cJSON.
 *
 * A verifier (sl_auth) is immutable after sl_auth_create(): any number of
 * threads may call sl_auth_verify() on it at the same time. The free
 * functions below keep no state and are thread-safe too. */
#ifndef SL_AUTH_H
#define SL_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"

#define SL_ROOMS_MAX        32   /* at most this many entries in the rooms claim */
#define SL_SUB_MAX          128  /* sub: 1..128 bytes */
#define SL_TOKEN_MAX        8192 /* longer JWTs are refused before any parsing */
#define SL_RESUME_TOKEN_MAX 1024 /* longer resume tokens are refused */

/* The claims of a verified token. Every string is NUL-terminated. The
 * optional "role" claim must be a string; only "server" means anything
 * (a token without it, or with another role, is a client token). */
typedef struct sl_claims {
    char sub[SL_SUB_MAX + 1];     /* the user: 1..128 bytes of UTF-8, no control characters */
    char tenant[65];              /* passes sl_id_valid() */
    int64_t exp;                  /* unix seconds */
    int nrooms;                   /* -1: no rooms claim (any room allowed); else 0..SL_ROOMS_MAX */
    char rooms[SL_ROOMS_MAX][66]; /* room ids, or prefixes ending in '*' ("team-*", "*") */
    bool server;                  /* role claim "server": the application's own backend */
} sl_claims;

typedef struct sl_auth sl_auth;

/* Creates a verifier. hs256_secret (the bytes of the string, at least one)
 * enables HS256; rs256_pubkey_pem_path names a PEM file with an RSA public
 * key of at least 2048 bits ("BEGIN PUBLIC KEY") and enables RS256. Either
 * may be NULL, not both. The secret is copied; the caller keeps its string.
 * Returns SL_OK and sets *out (destroy with sl_auth_destroy), or
 * SL_ERR_INVAL (no key, empty secret, unreadable or unsuitable key file) /
 * SL_ERR_NOMEM with a message in err; *out is untouched on failure. A secret
 * shorter than 32 bytes is accepted with a warning in the log. */
sl_status sl_auth_create(sl_auth **out, const char *hs256_secret, const char *rs256_pubkey_pem_path,
                         char *err, size_t errlen);

/* Wipes the secret and frees the verifier. NULL-safe. */
void sl_auth_destroy(sl_auth *a);

/* Verifies a compact JWT against the configured keys at time now (unix
 * seconds, no leeway: the token is expired when now >= exp) and fills *out.
 * The header's alg must be exactly "HS256" with a secret configured or
 * "RS256" with a public key configured; "none" in any spelling, other
 * algorithms, and a "crit" header are refused. Checks happen in this order,
 * so only an authentic token has its claims looked at:
 *   - SL_ERR_INVAL: token NULL or longer than SL_TOKEN_MAX, not three
 *     segments, a segment that is not unpadded base64url, a header that is
 *     not a JSON object, alg missing or not a string;
 *   - SL_ERR_AUTH: alg refused or bad signature;
 *   - SL_ERR_INVAL: a payload that is not a JSON object, sub missing or not
 *     1..128 bytes of UTF-8 without control characters, tenant missing or
 *     failing sl_id_valid(), exp missing or not an integer, nbf present and
 *     not a number, rooms present and not an array of at most SL_ROOMS_MAX
 *     valid room patterns (an id, or an id prefix of 0..64 chars then '*'),
 *     role present and not a string;
 *   - SL_ERR_AUTH: nbf in the future; SL_ERR_EXPIRED: exp <= now.
 * SL_ERR_NOMEM when an allocation fails. On any failure *out is untouched
 * and a short reason (safe to log, never contains token text) is written to
 * why when why is not NULL. */
sl_status sl_auth_verify(const sl_auth *a, const char *token, int64_t now, sl_claims *out,
                         char *why, size_t whylen);

/* Returns true when room (which must pass sl_id_valid) may be joined under
 * these claims: no rooms claim, or an exact entry, or an entry "p*" with p a
 * prefix of room. False for a NULL or invalid room. */
bool sl_claims_room_allowed(const sl_claims *c, const char *room);

/* Returns true when s is a valid user (a sub claim): 1..SL_SUB_MAX bytes of
 * UTF-8 without control characters. */
bool sl_user_valid(const char *s);

/* Returns true when s is a valid entry of the rooms claim: a room id, or
 * 0..64 id characters followed by '*'. */
bool sl_room_pattern_valid(const char *s);

/* Mints an HS256 JWT with claims sub, tenant, exp and, when rooms is not
 * NULL, rooms (nrooms entries, 0..SL_ROOMS_MAX, each a valid pattern).
 * For sluicectl, tests, benchmarks and dev mode. Returns SL_OK and sets
 * *out to a malloc'd NUL-terminated token the caller frees; SL_ERR_INVAL
 * when an argument would make a token sl_auth_verify() refuses (empty
 * secret, invalid tenant, sub or room, exp beyond +-2^53); SL_ERR_NOMEM. */
sl_status sl_jwt_mint_hs256(const char *secret, const char *tenant, const char *sub, int64_t exp,
                            const char *const *rooms, int nrooms, char **out);

/* Like sl_jwt_mint_hs256, plus a role claim when role is not NULL (it must
 * then pass sl_id_valid). role "server" makes a server token: accepted by
 * the gateway's server API (docs/operations.md), sl_claims.server set. */
sl_status sl_jwt_mint_hs256_role(const char *secret, const char *tenant, const char *sub,
                                 int64_t exp, const char *const *rooms, int nrooms,
                                 const char *role, char **out);

/* Makes a resume token: an opaque string (URL-safe characters and '.')
 * carrying tenant, session (both valid ids), sub and exp, authenticated
 * with HMAC-SHA256 under a key derived from secret, so any gateway with the
 * same secret can verify it and it can never pass for a JWT made with the
 * same secret. Returns SL_OK and a malloc'd token in *out (the caller
 * frees), SL_ERR_INVAL for an empty secret or an invalid argument, or
 * SL_ERR_NOMEM. */
sl_status sl_resume_token_make(const char *secret, const char *tenant, const char *session,
                               const char *sub, int64_t exp, char **out);

/* Verifies a resume token. Succeeds only when it is authentic, now < its
 * exp, and its tenant and session equal the given ones; then copies its sub
 * into sub_out (SL_SUB_MAX + 1 bytes). Returns SL_ERR_INVAL when token is
 * malformed or too long, SL_ERR_AUTH when the MAC, tenant or session does
 * not match, SL_ERR_EXPIRED when expired; sub_out is untouched then. */
sl_status sl_resume_token_verify(const char *secret, const char *token, const char *tenant,
                                 const char *session, int64_t now, char *sub_out);

#endif
