/* WebSocket client framing: see sb_ws.h. */
#include "sb_ws.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char WS_GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

uint64_t sb_rand(uint64_t *seed)
{
    uint64_t x = *seed;

    if (x == 0)
        x = UINT64_C(0x9E3779B97F4A7C15);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *seed = x;
    return x * UINT64_C(0x2545F4914F6CDD1D);
}

void sb_ws_make_key(char *key, uint64_t *seed)
{
    uint8_t raw[16];
    uint64_t a = sb_rand(seed);
    uint64_t b = sb_rand(seed);

    memcpy(raw, &a, 8);
    memcpy(raw + 8, &b, 8);
    EVP_EncodeBlock((unsigned char *)key, raw, 16);
}

size_t sb_ws_request(char *out, size_t cap, const char *host, int port, const char *path,
                     const char *key, const char *proto)
{
    int n;

    n = snprintf(out, cap,
                 "GET %s HTTP/1.1\r\n"
                 "Host: %s:%d\r\n"
                 "Upgrade: websocket\r\n"
                 "Connection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\n"
                 "Sec-WebSocket-Version: 13\r\n"
                 "%s%s%s"
                 "\r\n",
                 path, host, port, key, (proto && *proto) ? "Sec-WebSocket-Protocol: " : "",
                 (proto && *proto) ? proto : "", (proto && *proto) ? "\r\n" : "");
    if (n < 0 || (size_t)n >= cap)
        return 0;
    return (size_t)n;
}

void sb_ws_accept_for(const char *key, char *out)
{
    char cat[128];
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    int n;

    n = snprintf(cat, sizeof(cat), "%s%s", key, WS_GUID);
    EVP_Digest(cat, (size_t)n, digest, &dlen, EVP_sha1(), NULL);
    EVP_EncodeBlock((unsigned char *)out, digest, (int)dlen);
}

/* Finds the value of header name in the header block hdr[0..len). */
static const char *find_header(const char *hdr, size_t len, const char *name, size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *p = hdr;
    const char *end = hdr + len;

    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        if ((size_t)(eol - p) > nlen && strncasecmp(p, name, nlen) == 0 && p[nlen] == ':') {
            const char *v = p + nlen + 1;
            const char *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

sl_status sb_ws_parse_response(const char *buf, size_t len, const char *key, size_t *consumed,
                               int *status)
{
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    const char *acc;
    size_t alen = 0;
    char want[32];
    int code = 0;

    if (end == NULL)
        return len > 16384 ? SL_ERR_PROTO : SL_ERR_TIMEOUT;
    if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0)
        return SL_ERR_PROTO;
    if (sscanf(buf + 9, "%3d", &code) != 1)
        return SL_ERR_PROTO;
    if (status)
        *status = code;
    if (code == 503 || code == 429)
        return SL_ERR_FULL;
    if (code != 101)
        return SL_ERR_PROTO;
    acc = find_header(buf, (size_t)(end - buf), "Sec-WebSocket-Accept", &alen);
    if (acc == NULL)
        return SL_ERR_PROTO;
    sb_ws_accept_for(key, want);
    if (alen != strlen(want) || memcmp(acc, want, alen) != 0)
        return SL_ERR_PROTO;
    *consumed = (size_t)(end - buf) + 4;
    return SL_OK;
}

size_t sb_ws_encode_header(uint8_t *hdr, int opcode, size_t len, uint8_t mask[4], uint64_t *seed)
{
    size_t n = 0;
    uint32_t m = (uint32_t)sb_rand(seed);

    hdr[n++] = (uint8_t)(0x80 | (opcode & 0x0F));
    if (len < 126) {
        hdr[n++] = (uint8_t)(0x80 | len);
    } else if (len <= 0xFFFF) {
        hdr[n++] = 0x80 | 126;
        hdr[n++] = (uint8_t)(len >> 8);
        hdr[n++] = (uint8_t)len;
    } else {
        int i;
        hdr[n++] = 0x80 | 127;
        for (i = 7; i >= 0; i--)
            hdr[n++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    memcpy(mask, &m, 4);
    memcpy(hdr + n, mask, 4);
    return n + 4;
}

void sb_ws_mask(uint8_t *buf, size_t len, const uint8_t mask[4], size_t off)
{
    size_t i;

    for (i = 0; i < len; i++)
        buf[i] ^= mask[(i + off) & 3];
}

size_t sb_ws_encode(uint8_t *out, int opcode, const void *payload, size_t len, uint64_t *seed)
{
    uint8_t mask[4];
    size_t h = sb_ws_encode_header(out, opcode, len, mask, seed);

    if (len)
        memcpy(out + h, payload, len);
    sb_ws_mask(out + h, len, mask, 0);
    return h + len;
}

long sb_ws_parse_frame(uint8_t *buf, size_t len, size_t max_len, sb_ws_frame *f)
{
    size_t need = 2;
    uint64_t plen;
    int masked;
    uint8_t mask[4];

    if (len < 2)
        return 0;
    if (buf[0] & 0x70)
        return -1;
    f->fin = (buf[0] & 0x80) != 0;
    f->opcode = buf[0] & 0x0F;
    masked = (buf[1] & 0x80) != 0;
    plen = buf[1] & 0x7F;
    if (plen == 126) {
        need += 2;
        if (len < need)
            return 0;
        plen = ((uint64_t)buf[2] << 8) | buf[3];
    } else if (plen == 127) {
        int i;
        need += 8;
        if (len < need)
            return 0;
        plen = 0;
        for (i = 0; i < 8; i++)
            plen = (plen << 8) | buf[2 + i];
    }
    if (f->opcode >= 0x8 && (plen > 125 || !f->fin))
        return -1;
    if ((f->opcode > 0x2 && f->opcode < 0x8) || f->opcode > 0xA)
        return -1;
    if (plen > max_len)
        return -1;
    if (masked) {
        need += 4;
        if (len < need)
            return 0;
        memcpy(mask, buf + need - 4, 4);
    }
    if (len - need < plen)
        return 0;
    if (masked)
        sb_ws_mask(buf + need, (size_t)plen, mask, 0);
    f->payload = buf + need;
    f->len = (size_t)plen;
    return (long)(need + plen);
}
