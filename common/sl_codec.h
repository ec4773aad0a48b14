/* The protobuf envelope codec and the ids Sluice makes. */
#ifndef SL_CODEC_H
#define SL_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"
#include "sluice.pb-c.h"

#define SL_EVENT_ID_LEN   26 /* time-sortable: 10 chars of ms time, 16 of randomness */
#define SL_SESSION_ID_LEN 22 /* random [A-Za-z0-9] */

/* Packs e into a malloc'd buffer the caller frees. SL_ERR_NOMEM on failure. */
sl_status sl_envelope_encode(const Sluice__Envelope *e, uint8_t **out, size_t *len);

/* Unpacks data. On success *out is owned by the caller, freed with
 * sl_envelope_free(). SL_ERR_INVAL when the bytes are not an Envelope. */
sl_status sl_envelope_decode(const void *data, size_t len, Sluice__Envelope **out);

/* Frees a decoded envelope; NULL-safe. */
void sl_envelope_free(Sluice__Envelope *e);

/* Writes a new event id (SL_EVENT_ID_LEN chars + NUL, Crockford base32,
 * ordered by creation time across processes to the millisecond). */
void sl_event_id_new(char out[SL_EVENT_ID_LEN + 1]);

/* Writes a new random session id (SL_SESSION_ID_LEN chars + NUL); a valid
 * sl_id. */
void sl_session_id_new(char out[SL_SESSION_ID_LEN + 1]);

/* Fills buf with n cryptographically random bytes (getrandom). */
void sl_random_bytes(void *buf, size_t n);

#endif
