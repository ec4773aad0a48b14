/* Shared pieces of the libFuzzer targets in tests/fuzz/: the CHECK macro,
 * independent reference checks (UTF-8, sub, ids, base64url, HMAC-SHA256)
 * written from the documents rather than from the project's code, the
 * cJSON reading helpers, the guard page that makes over-reads fault, the
 * tampering used to show that an accepted token is refused once changed,
 * and (with -DFUZZ_SEEDS) the helpers that write the seed corpus.
 *
 * Each target is one translation unit that includes this header, so every
 * function here is static inline and each target keeps its own copy of the
 * little state there is (the guard page, the seed directory). */
#ifndef FUZZ_REF_H
#define FUZZ_REF_H

#include <cJSON.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sl_auth.h"
#include "sl_subject.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts with the file, line and condition when cond is false: libFuzzer
 * keeps the input that got there. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FZ_INT53 9007199254740992.0 /* 2^53: the largest integer JSON numbers hold exactly */
/* The same bound for int64_t values: compare integers with this one (a
 * cast to double rounds 2^53 + 1 down to 2^53). */
#define FZ_INT53_I INT64_C(9007199254740992)

/* ---- reference checks ------------------------------------------------- */

/* Walks s[0..n) as well-formed UTF-8 after the Unicode standard's table
 * 3-7: the allowed range of the second byte depends on the first; no
 * overlongs, surrogates or code points above U+10FFFF. With no_controls,
 * C0 controls, DEL and the C1 controls (C2 80..C2 9F) are refused too.
 * Returns true when every byte is part of an allowed sequence. */
static inline bool ref_utf8_walk(const unsigned char *s, size_t n, bool no_controls)
{
    size_t i = 0;

    while (i < n) {
        unsigned char b = s[i], lo = 0x80, hi = 0xBF;
        size_t k;

        if (b <= 0x7F) {
            if (no_controls && (b < 0x20 || b == 0x7F))
                return false;
            i++;
            continue;
        }
        if (b >= 0xC2 && b <= 0xDF) {
            k = 1;
            if (no_controls && b == 0xC2)
                lo = 0xA0; /* C2 80..C2 9F are the C1 controls */
        } else if (b == 0xE0) {
            k = 2;
            lo = 0xA0;
        } else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
            k = 2;
        } else if (b == 0xED) {
            k = 2;
            hi = 0x9F;
        } else if (b == 0xF0) {
            k = 3;
            lo = 0x90;
        } else if (b >= 0xF1 && b <= 0xF3) {
            k = 3;
        } else if (b == 0xF4) {
            k = 3;
            hi = 0x8F;
        } else {
            return false;
        }
        if (n - i - 1 < k || s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t j = 2; j <= k; j++) {
            if (s[i + j] < 0x80 || s[i + j] > 0xBF)
                return false;
        }
        i += k + 1;
    }
    return true;
}

/* Returns true when s[0..n) is well-formed UTF-8. */
static inline bool ref_utf8(const unsigned char *s, size_t n)
{
    return ref_utf8_walk(s, n, false);
}

/* Returns true when the string str is well-formed UTF-8. */
static inline bool ref_utf8_str(const char *str)
{
    return ref_utf8_walk((const unsigned char *)str, strlen(str), false);
}

/* The documented rule for a sub claim: 1..SL_SUB_MAX bytes of well-formed
 * UTF-8 with no C0 or C1 control and no DEL. */
static inline bool ref_sub(const char *str)
{
    size_t n = strlen(str);

    return n >= 1 && n <= SL_SUB_MAX && ref_utf8_walk((const unsigned char *)str, n, true);
}

/* Returns true when every byte of s[0..n) is an id character:
 * [A-Za-z0-9_-], and with client also '.' and ':'. */
static inline bool ref_id_chars(const char *s, size_t n, bool client)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || (client && (c == '.' || c == ':'))))
            return false;
    }
    return true;
}

/* An id: [A-Za-z0-9_-]{1,64}; a client id (client set): [A-Za-z0-9_.:-]{1,64}. */
static inline bool ref_id(const char *s, bool client)
{
    size_t n = strlen(s);

    return n >= 1 && n <= SL_ID_MAX && ref_id_chars(s, n, client);
}

/* The base64url alphabet (RFC 4648 section 5). */
static const char fz_b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Appends the unpadded base64url form of in[0..n) to out at *o and
 * NUL-terminates it; out needs room for 4 * ceil(n / 3) + 1 more bytes. */
static inline void fz_b64_put(const unsigned char *in, size_t n, char *out, size_t *o)
{
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        size_t k = n - i < 3 ? n - i : 3;
        if (k > 1)
            v |= (uint32_t)in[i + 1] << 8;
        if (k > 2)
            v |= in[i + 2];
        for (size_t j = 0; j <= k; j++)
            out[(*o)++] = fz_b64chars[v >> (18 - 6 * j) & 63];
    }
    out[*o] = '\0';
}

/* Decodes n base64url characters (no padding) into out, which needs
 * n * 3 / 4 bytes; returns the byte count or -1 for a character outside
 * the alphabet. Leftover bits of the last character are ignored. */
static inline long fz_b64_get(const char *in, size_t n, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    long o = 0;

    for (size_t i = 0; i < n; i++) {
        const char *p = memchr(fz_b64chars, in[i], 64);
        if (p == NULL || in[i] == '\0')
            return -1;
        acc = acc << 6 | (uint32_t)(p - fz_b64chars);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return o;
}

/* HMAC-SHA256 of msg[0..n) under key[0..keylen) into mac, through OpenSSL;
 * aborts (CHECK) if OpenSSL fails. */
static inline void fz_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t n,
                                  unsigned char mac[32])
{
    unsigned int ml = 0;

    CHECK(keylen <= INT32_MAX);
    CHECK(HMAC(EVP_sha256(), key, (int)keylen, msg, n, mac, &ml) != NULL && ml == 32);
}

/* ---- tampering with accepted tokens ------------------------------------ */

/* FNV-1a of d[0..n): picks where and how a token is tampered with, so the
 * choice follows the input. */
static inline uint32_t fz_fnv(const uint8_t *d, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ d[i]) * 16777619u;
    return h;
}

#define FZ_TAMPER_N 3 /* the number of tamperings fz_tamper() makes */

/* Writes into t (room for strlen(tok) + 1 bytes) tampering number variant
 * (0..FZ_TAMPER_N - 1) of the non-empty token tok: 0, one character,
 * chosen by h, changed to another base64url character or '.'; 1, the last
 * character cut; 2, only the lowest bit of the last character's value
 * changed (padding bits in most lengths, so a lax decoder would not see
 * it). Each differs from tok; aborts if tok does not end in base64url. */
static inline void fz_tamper(char *t, const char *tok, uint32_t h, int variant)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    size_t len = strlen(tok), pos;
    const char *last;
    char ch;

    CHECK(len > 0);
    memcpy(t, tok, len + 1);
    switch (variant) {
    case 0:
        pos = h % len;
        ch = alphabet[(h >> 16) % (sizeof(alphabet) - 1)];
        if (ch == t[pos])
            ch = ch == 'A' ? 'B' : 'A';
        t[pos] = ch;
        break;
    case 1:
        t[len - 1] = '\0';
        break;
    default:
        last = memchr(fz_b64chars, t[len - 1], 64);
        CHECK(last != NULL);
        t[len - 1] = fz_b64chars[(last - fz_b64chars) ^ 1];
        break;
    }
}

/* ---- reading cJSON trees ---------------------------------------------- */

/* The string member key of o, or NULL when it is absent or not a string. */
static inline const char *jstr(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Both strings exist and are equal. */
static inline bool streq(const char *a, const char *b)
{
    return a != NULL && b != NULL && strcmp(a, b) == 0;
}

/* The number member key of o; aborts (CHECK) when it is not a number. */
static inline double jnum(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    CHECK(cJSON_IsNumber(v));
    return v->valuedouble;
}

/* A number printed by cJSON 1.7.15 reads back exactly below 10^15; above,
 * cJSON prints 15 significant digits ("%1.15g" passes its own relative
 * epsilon test), so 2^53 comes back as 9007199254740990. */
static inline bool num_eq(double got, double want)
{
    if (fabs(want) < 1e15)
        return got == want;
    return fabs(got - want) <= fabs(want) * 1e-14;
}

/* ---- splitting inputs ------------------------------------------------- */

/* Copies data[0..n) into a NUL-terminated malloc'd buffer (the caller
 * frees it) and points str[0..nstr) at its first nstr NUL-separated
 * strings; those missing are "". Aborts if out of memory. */
static inline char *fz_split_nul(const uint8_t *data, size_t n, const char **str, int nstr)
{
    char *copy = malloc(n + 1);

    CHECK(copy != NULL);
    for (int k = 0; k < nstr; k++)
        str[k] = "";
    memcpy(copy, data, n);
    copy[n] = '\0';
    for (size_t i = 0, k = 0, start = 0; i <= n && k < (size_t)nstr; i++) {
        if (copy[i] == '\0') {
            str[k++] = copy + start;
            start = i + 1;
        }
    }
    return copy;
}

/* ---- guard page ------------------------------------------------------- */

/* Inputs up to 1 MiB are guarded; the gateway stops at 64 KiB. */
#define FZ_GUARDED_MAX (1u << 20)

/* The first byte after the FZ_GUARDED_MAX-byte input area (PROT_NONE);
 * maps it first when map is set. Aborts when it is not mapped. */
static inline unsigned char *fz__guard_page(bool map)
{
    static unsigned char *guard_page;

    if (map && guard_page == NULL) {
        long pg = sysconf(_SC_PAGESIZE);
        unsigned char *p;

        CHECK(pg > 0);
        p = mmap(NULL, FZ_GUARDED_MAX + (size_t)pg, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(p != MAP_FAILED);
        CHECK(mprotect(p + FZ_GUARDED_MAX, (size_t)pg, PROT_NONE) == 0);
        guard_page = p + FZ_GUARDED_MAX;
    }
    CHECK(guard_page != NULL);
    return guard_page;
}

/* Maps FZ_GUARDED_MAX readable bytes followed by one inaccessible page
 * (once; the mapping lives as long as the process). */
static inline void fz_guard_init(void)
{
    (void)fz__guard_page(true);
}

/* Copies data[0..size) (size <= FZ_GUARDED_MAX) so that it ends right
 * before the inaccessible page, so an over-read faults even inside an
 * uninstrumented library; returns the copy, valid until the next call. */
static inline void *fz_guard_copy(const void *data, size_t size)
{
    CHECK(size <= FZ_GUARDED_MAX);
    return memcpy(fz__guard_page(false) - size, data, size);
}

/* ---- writing the seed corpus (-DFUZZ_SEEDS) ---------------------------- */

#ifdef FUZZ_SEEDS
struct fz_seeds {
    const char *dir; /* argv[1]: where the seeds go */
    int count;       /* seeds written so far */
};

static inline struct fz_seeds *fz__seeds(void)
{
    static struct fz_seeds s;
    return &s;
}

/* Takes the seed directory from the command line of the seed program of
 * target; returns false after printing the usage when it is missing. */
static inline bool fz_seed_args(int argc, char **argv, const char *target)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR (writes the %s seed corpus into DIR)\n", argv[0], target);
        return false;
    }
    fz__seeds()->dir = argv[1];
    return true;
}

/* Writes data[0..len) as the seed file name and runs it through the
 * checks (LLVMFuzzerTestOneInput); exits when the file cannot be written. */
static inline void fz_seed(const char *name, const void *data, size_t len)
{
    struct fz_seeds *s = fz__seeds();
    char path[4096];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", s->dir, name);
    f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
    LLVMFuzzerTestOneInput(data, len);
    s->count++;
}

/* Writes a seed made of the mode byte, then body[0..len). */
static inline void fz_seed_mode(const char *name, unsigned mode, const void *body, size_t len)
{
    unsigned char *data = malloc(len + 1);

    CHECK(data != NULL);
    data[0] = (unsigned char)mode;
    memcpy(data + 1, body, len);
    fz_seed(name, data, len + 1);
    free(data);
}

/* Appends the ns strings s to buf at len, separated (not ended) by NUL
 * bytes; returns the new length. Aborts when they do not fit in cap. */
static inline size_t fz_seed_join(unsigned char *buf, size_t cap, size_t len, const char *const *s,
                                  int ns)
{
    for (int i = 0; i < ns; i++) {
        size_t l = strlen(s[i]);
        CHECK(len + l + 1 <= cap);
        memcpy(buf + len, s[i], l);
        len += l;
        if (i + 1 < ns)
            buf[len++] = '\0';
    }
    return len;
}

/* Reports how many seeds were written; returns main's exit status. */
static inline int fz_seed_done(void)
{
    printf("%d seeds written to %s\n", fz__seeds()->count, fz__seeds()->dir);
    return 0;
}
#endif /* FUZZ_SEEDS */

#endif /* FUZZ_REF_H */
