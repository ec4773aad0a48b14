#include "sl_codec.h"

#include <stdlib.h>
#include <sys/random.h>

#include "sl_time.h"

sl_status sl_envelope_encode(const Sluice__Envelope *e, uint8_t **out, size_t *len)
{
    size_t n = sluice__envelope__get_packed_size(e);
    uint8_t *buf = malloc(n > 0 ? n : 1);

    if (buf == NULL)
        return SL_ERR_NOMEM;
    sluice__envelope__pack(e, buf);
    *out = buf;
    *len = n;
    return SL_OK;
}

sl_status sl_envelope_decode(const void *data, size_t len, Sluice__Envelope **out)
{
    Sluice__Envelope *e = sluice__envelope__unpack(NULL, len, data);

    if (e == NULL)
        return SL_ERR_INVAL;
    *out = e;
    return SL_OK;
}

void sl_envelope_free(Sluice__Envelope *e)
{
    if (e != NULL)
        sluice__envelope__free_unpacked(e, NULL);
}

void sl_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;

    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r <= 0)
            continue; /* EINTR; getrandom never fails otherwise once seeded */
        p += r;
        n -= (size_t)r;
    }
}

void sl_event_id_new(char out[SL_EVENT_ID_LEN + 1])
{
    static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    uint64_t ms = (uint64_t)(sl_now_ns() / 1000000LL);
    unsigned char rnd[16];

    for (int i = 9; i >= 0; i--) {
        out[i] = b32[ms & 31];
        ms >>= 5;
    }
    sl_random_bytes(rnd, sizeof(rnd));
    for (int i = 0; i < 16; i++)
        out[10 + i] = b32[rnd[i] & 31];
    out[SL_EVENT_ID_LEN] = '\0';
}

void sl_session_id_new(char out[SL_SESSION_ID_LEN + 1])
{
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char rnd[SL_SESSION_ID_LEN];

    sl_random_bytes(rnd, sizeof(rnd));
    for (int i = 0; i < SL_SESSION_ID_LEN; i++)
        out[i] = alnum[rnd[i] % 62];
    out[SL_SESSION_ID_LEN] = '\0';
}
