/* libFuzzer target: JWT verification (common/sl_auth.c).
 *
 * Three verifiers are made at start: HS256 with a fixed secret, RS256 with
 * the public half of a fixed test key (written to a temporary PEM file and
 * loaded by sl_auth_create()), and both. The clock is fixed (NOW).
 *
 * Input: byte 0 selects the mode (bits 0-1) and a flag (bit 7).
 *   0, 3  raw: the rest is a token, verified by all three verifiers.
 *         A token is accepted only when an independent check (own base64url
 *         decoding, HMAC-SHA256 or RSA verification through OpenSSL)
 *         agrees that its signature is genuine; an HS256 token only by the
 *         verifiers with the secret, an RS256 one only by those with the
 *         key; the claims are those of its payload and pass validation.
 *   1     signed: byte 1 is the header length h, then h bytes of header
 *         JSON, then the payload JSON. The harness signs them with the
 *         secret (HS256), so the claims parser past the signature check is
 *         reached; the result must equal that of an independent model of
 *         the documented checks and their order (INVAL, AUTH, INVAL, AUTH,
 *         EXPIRED; a role that is not a string is INVAL, only the role
 *         "server" sets claims.server). Accepted claims must mint back
 *         (sl_jwt_mint_hs256_role) to a
 *         token that verifies to the same claims, must be expired exactly
 *         at exp, and must not pass as a resume token.
 *   2     rooms: the rest is up to 32 room patterns and a room, separated
 *         by '\n'. sl_room_pattern_valid() and sl_claims_room_allowed() must
 *         agree with independent implementations (flag set: no rooms claim).
 * In every mode, an accepted token changed in any one character, or cut
 * short by one, is refused; a refused one leaves *out untouched and a
 * printable reason in why.
 *
 * Built with -DFUZZ_SEEDS, this file is instead a program that writes the
 * seed corpus (valid HS256 and RS256 tokens, alg none, expired, not yet
 * valid, alg confusion, crit, malformed, claims near misses) into the
 * directory given as its argument, running each seed through the checks. */
#include <cJSON.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_ref.h"
#include "sl_auth.h"
#include "sl_subject.h"

#define SECRET    "fuzz-secret-0123456789abcdef-0123456789abcdef"
#define NOW       INT64_C(1700000000)
#define EXP_LATER INT64_C(4102444800) /* 2100-01-01 */

/* A throwaway 2048-bit RSA key for the RS256 seeds; it protects nothing. */
static const char test_rsa_key[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQC+VaEdGIpC3ira\n"
    "upXVsy/UHTNXluqv4nN87PM2uzy2QUJGjLLszc7HXyIndQFcBQyH/HS4YI7IvbaH\n"
    "XLFGCkjSOQx6cBI0Rxe5RXKzS+sbn1mlBkfVYRaNLkWWGoIkjV1A9Yuh4WZkdmcM\n"
    "JBKQWFnKtXkKJ2JRA3/TA1bLbKWUDKQbJXSF8w0doJVG/LiBYzusUagEw3vkxxzr\n"
    "/Hlgljz8ilCCl8HI76qMgvLNas+KhSYKZeS+jsKIpcanTcyRNWRLVnega6sFqCBo\n"
    "TjaXigzEdI+8DIU0limwQRv4PGmbAYUKCHbNHq8aPrrLxS/Ao9CzHBwdbb8e9rBw\n"
    "Sny0x3QNAgMBAAECggEAXmYp2jxplnCJ4KHZ3ntYpWM2K6L2EvXFQZhjqCmFGv+S\n"
    "11rBAyGwBMHyNo+ZdQIsDOXxHeEF8BnnhYs7gPlo1JrmzXL4FGWOJp2DHdnxaWnH\n"
    "FEnhJrtYa/0fFitfkLFsJuOhtVANcJYo1aSucFjhb+BBf/+4i2Wo6Acn7QydsqcW\n"
    "nRYjdDkFOK53UVJNM3q+IqV+JLLduhtbwgiDHL+mz97mOF4xcYSmFi4RxdyTekvu\n"
    "A4qWRRi2PcE6rGVJ5+dZLNRNt66dl+IhaGTY8NM9xq/OaeXhPEz23LrfzMpij1JP\n"
    "b1W2deqbeiOgkodv1O/lHyJGgJgUCp9IXImxYHkFIQKBgQDwTlv3gMBNTs3GOJUs\n"
    "K4JCmGQSGhMNO3a14ArPo7803I1kEZ7SyYFnKxqgBCECIGtNcTQ6H8AfGu/gXXv0\n"
    "LSDZgiwZFFetMZyewvaeG2FZqcF9MNd0C5CyJVzV1jof/i6rB9kP9lEGj10oaqzh\n"
    "y/rq38IDMzudYlsV80NtVW6howKBgQDKw810Hh0wc7+XbBWGHXzHMkTocIJq5568\n"
    "4jMGQSJcXrLXdyzmjpldELmahWEKqrA+K7657wYfMAe+O/VU+qiaADDm7WQIXMYP\n"
    "1Y6HHPwJyaCycZemOBgnwvRuZbmU9M6TrdclODRpr79mejwjI5pDhozmbFFY2N9A\n"
    "CtdxVQ7OjwKBgF34hoY21vxkQJuvLMZlDT81kIxzndei1T0yK4gfJHprdO8Y5N7Q\n"
    "5cWOWY8RjkbinpNeHWpNWDfRtNQsOni13Q6xlMUJ629S40hCPWZ+locVlxB5tQcw\n"
    "Lpk7ex4z8+7m2yEOpJdVX0INdgSEEq8JsUl/zsKpmjplZ/Ehe9CZg/W5AoGAF6sX\n"
    "dnB1c8xvFtvU/1y9zfq+NGu9rYDv9Jhq4FYGDsY3FhOhOCB5InXrVHAxTa9y9y7g\n"
    "CpAuJMHUhY42Kv8/YwqWqr4XKSq7K+n/wyHNAc95ZJsB2rM9jpahNanGKe8Rlgd6\n"
    "z6tp4tRTAUFPd8KWJT+1fsgyDq7yEGWzlFUbb10CgYB3/UPiuMS/RAK56dKlsu+b\n"
    "bUASik7MEltWzdU192pINognNefGUjCxmzC6AbT/Q9pV7fgQ9FBbrJIkd2J+g9mB\n"
    "+bG8OvGS2d2lRXm3MFl+SX/UMn7sOQm0AilRLEQDl6EwU1ApvOd1OCU6CYaoAloJ\n"
    "wFY/EAtnVc3WC58XZOe2/g==\n"
    "-----END PRIVATE KEY-----\n";

static sl_auth *v_both, *v_hs, *v_rs;
static EVP_PKEY *test_key;

/* ---- independent helpers ------------------------------------------------ */

/* A rooms entry: an id, or 0..64 id characters followed by '*'. */
static bool ref_pattern(const char *s)
{
    size_t n = strlen(s);

    if (n >= 1 && s[n - 1] == '*')
        return n - 1 <= SL_ID_MAX && ref_id_chars(s, n - 1, false);
    return ref_id(s, false);
}

static bool ref_room_allowed(const sl_claims *c, const char *room)
{
    if (!ref_id(room, false))
        return false;
    if (c->nrooms < 0)
        return true;
    for (int i = 0; i < c->nrooms; i++) {
        size_t n = strlen(c->rooms[i]);
        if (n > 0 && c->rooms[i][n - 1] == '*' ? strncmp(room, c->rooms[i], n - 1) == 0
                                               : strcmp(room, c->rooms[i]) == 0)
            return true;
    }
    return false;
}

/* A JSON integer within +-2^53, as the claims need. */
static bool ref_int(const cJSON *v, int64_t *out)
{
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || fabs(v->valuedouble) > FZ_INT53 ||
        v->valuedouble != floor(v->valuedouble))
        return false;
    *out = (int64_t)v->valuedouble;
    return true;
}

/* True when an escape sequence in buf is \u0000. Escapes are read left to
 * right, two characters each, so the text \\u0000 (an escaped backslash,
 * then the letters u0000) holds none. */
static bool ref_nul_escape(const unsigned char *buf, size_t n)
{
    size_t i = 0;

    while (i < n) {
        if (buf[i] != '\\') {
            i++;
            continue;
        }
        if (n - i >= 6 && memcmp(buf + i, "\\u0000", 6) == 0)
            return true;
        i += 2;
    }
    return false;
}

/* Parses n bytes as exactly one JSON object (no NUL inside, nothing after).
 * An escaped NUL ("\u0000") is refused like a raw one: cJSON would cut the
 * string there, so "tb\u0000x" would read as "tb". */
static cJSON *ref_object(const unsigned char *buf, size_t n)
{
    char *s;
    cJSON *j = NULL;

    if (memchr(buf, '\0', n) != NULL || ref_nul_escape(buf, n))
        return NULL;
    s = malloc(n + 1);
    CHECK(s != NULL);
    memcpy(s, buf, n);
    s[n] = '\0';
    j = cJSON_ParseWithOpts(s, NULL, 1);
    free(s);
    if (j != NULL && !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        j = NULL;
    }
    return j;
}

/* ---- signing (the harness's own, for mode 1 and the seeds) ---------------- */

/* Returns a malloc'd "<b64 hdr>.<b64 pay>." with room for a signature. */
static char *signing_input(const unsigned char *hdr, size_t hl, const unsigned char *pay, size_t pl,
                           size_t *len)
{
    char *t = malloc((hl + pl) / 3 * 4 + 8 + 400);
    size_t o = 0;

    CHECK(t != NULL);
    fz_b64_put(hdr, hl, t, &o);
    t[o++] = '.';
    fz_b64_put(pay, pl, t, &o);
    *len = o;
    t[o++] = '.';
    t[o] = '\0';
    return t;
}

static char *sign_hs256(const unsigned char *hdr, size_t hl, const unsigned char *pay, size_t pl)
{
    unsigned char mac[32];
    size_t len, o;
    char *t = signing_input(hdr, hl, pay, pl, &len);

    fz_hmac_sha256(SECRET, strlen(SECRET), t, len, mac);
    o = len + 1;
    fz_b64_put(mac, sizeof(mac), t, &o);
    return t;
}

/* ---- checks ----------------------------------------------------------- */

static sl_status verify(const sl_auth *a, const char *tok, int64_t now, sl_claims *cl)
{
    char why[128];
    sl_claims before;
    sl_status st;

    memset(cl, 0xA5, sizeof(*cl));
    memset(why, 0xA5, sizeof(why));
    before = *cl;
    st = sl_auth_verify(a, tok, now, cl, why, sizeof(why));
    CHECK(st == SL_OK || st == SL_ERR_INVAL || st == SL_ERR_AUTH || st == SL_ERR_EXPIRED);
    if (st != SL_OK) {
        CHECK(memcmp(cl, &before, sizeof(before)) == 0);
        CHECK(memchr(why, '\0', sizeof(why)) != NULL && why[0] != '\0');
        for (const char *p = why; *p != '\0'; p++)
            CHECK(*p >= 0x20 && *p < 0x7F);
    }
    return st;
}

/* Accepted claims obey the documented rules and were valid at NOW. */
static void check_claims(const sl_claims *c, int64_t now)
{
    CHECK(memchr(c->sub, '\0', sizeof(c->sub)) != NULL && ref_sub(c->sub));
    CHECK(memchr(c->tenant, '\0', sizeof(c->tenant)) != NULL && ref_id(c->tenant, false));
    CHECK(c->exp > now);
    CHECK(c->nrooms >= -1 && c->nrooms <= SL_ROOMS_MAX);
    for (int i = 0; i < c->nrooms; i++)
        CHECK(memchr(c->rooms[i], '\0', sizeof(c->rooms[i])) != NULL && ref_pattern(c->rooms[i]));
}

static bool claims_equal(const sl_claims *a, const sl_claims *b)
{
    if (strcmp(a->sub, b->sub) != 0 || strcmp(a->tenant, b->tenant) != 0 || a->exp != b->exp ||
        a->nrooms != b->nrooms || a->server != b->server)
        return false;
    for (int i = 0; i < a->nrooms; i++) {
        if (strcmp(a->rooms[i], b->rooms[i]) != 0)
            return false;
    }
    return true;
}

/* The claims are those of the payload p. */
static void check_claims_match(const sl_claims *c, const cJSON *p)
{
    const cJSON *rooms = cJSON_GetObjectItemCaseSensitive(p, "rooms");
    const char *role = jstr(p, "role");
    int64_t exp = 0;

    CHECK(strcmp(c->sub, jstr(p, "sub")) == 0 && strcmp(c->tenant, jstr(p, "tenant")) == 0);
    /* Only the role "server" means anything; a token without it is a client's. */
    CHECK(c->server == (role != NULL && strcmp(role, "server") == 0));
    CHECK(ref_int(cJSON_GetObjectItemCaseSensitive(p, "exp"), &exp) && exp == c->exp);
    if (rooms == NULL) {
        CHECK(c->nrooms == -1);
    } else {
        CHECK(c->nrooms == cJSON_GetArraySize(rooms));
        for (int i = 0; i < c->nrooms; i++)
            CHECK(strcmp(c->rooms[i], cJSON_GetArrayItem(rooms, i)->valuestring) == 0);
    }
}

/* An accepted token changed anywhere in one character (including only the
 * padding bits of its last one), or cut short, or offered as a resume
 * token, is refused. */
static void check_tamper(const char *tok, const uint8_t *data, size_t size)
{
    uint32_t h = fz_fnv(data, size);
    char *t = strdup(tok);
    char sub[SL_SUB_MAX + 1];
    sl_claims cl;

    CHECK(t != NULL);
    for (int i = 0; i < FZ_TAMPER_N; i++) {
        fz_tamper(t, tok, h, i);
        CHECK(verify(v_both, t, NOW, &cl) != SL_OK);
    }
    free(t);
    CHECK(sl_resume_token_verify(SECRET, tok, "acme", "S0000000000000000000000", NOW, sub) !=
          SL_OK);
}

/* Independent verification of an accepted token: returns its alg. */
static const char *oracle_alg(const char *tok)
{
    const char *d1 = strchr(tok, '.'), *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    size_t len = strlen(tok), hl, sl;
    unsigned char *hdr, *sig, mac[32];
    const char *alg = NULL;
    cJSON *h;
    long hn, sn;
    bool ok = false;

    CHECK(d1 != NULL && d2 != NULL && strchr(d2 + 1, '.') == NULL);
    hl = (size_t)(d1 - tok);
    sl = len - (size_t)(d2 + 1 - tok);
    hdr = malloc(hl + 1);
    sig = malloc(sl + 1);
    CHECK(hdr != NULL && sig != NULL);
    hn = fz_b64_get(tok, hl, hdr);
    sn = fz_b64_get(d2 + 1, sl, sig);
    CHECK(hn >= 0 && sn >= 0);
    h = ref_object(hdr, (size_t)hn);
    CHECK(h != NULL);
    CHECK(cJSON_GetObjectItemCaseSensitive(h, "crit") == NULL);
    if (jstr(h, "alg") != NULL && strcmp(jstr(h, "alg"), "HS256") == 0) {
        alg = "HS256";
        fz_hmac_sha256(SECRET, strlen(SECRET), tok, (size_t)(d2 - tok), mac);
        ok = sn == 32 && memcmp(mac, sig, 32) == 0;
    } else if (jstr(h, "alg") != NULL && strcmp(jstr(h, "alg"), "RS256") == 0) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        alg = "RS256";
        CHECK(ctx != NULL);
        ok = EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, test_key) == 1 &&
             EVP_DigestVerify(ctx, sig, (size_t)sn, (const unsigned char *)tok,
                              (size_t)(d2 - tok)) == 1;
        EVP_MD_CTX_free(ctx);
    }
    CHECK(ok);
    cJSON_Delete(h);
    free(hdr);
    free(sig);
    return alg;
}

/* The payload of an accepted token, parsed independently. */
static cJSON *oracle_payload(const char *tok)
{
    const char *d1 = strchr(tok, '.'), *d2 = strchr(d1 + 1, '.');
    size_t pl = (size_t)(d2 - d1 - 1);
    unsigned char *pay = malloc(pl + 1);
    long pn;
    cJSON *p;

    CHECK(pay != NULL);
    pn = fz_b64_get(d1 + 1, pl, pay);
    CHECK(pn >= 0);
    p = ref_object(pay, (size_t)pn);
    CHECK(p != NULL);
    free(pay);
    return p;
}

static void mode_raw(const uint8_t *data, size_t size)
{
    char *tok = malloc(size + 1);
    sl_claims both, hs, rs;
    sl_status st, sh, sr;

    CHECK(tok != NULL);
    memcpy(tok, data, size);
    tok[size] = '\0';
    st = verify(v_both, tok, NOW, &both);
    sh = verify(v_hs, tok, NOW, &hs);
    sr = verify(v_rs, tok, NOW, &rs);
    if (st == SL_OK) {
        const char *alg = oracle_alg(tok);
        cJSON *p = oracle_payload(tok);
        check_claims(&both, NOW);
        check_claims_match(&both, p);
        cJSON_Delete(p);
        if (strcmp(alg, "HS256") == 0)
            CHECK(sh == SL_OK && claims_equal(&hs, &both) && sr == SL_ERR_AUTH);
        else
            CHECK(sr == SL_OK && claims_equal(&rs, &both) && sh == SL_ERR_AUTH);
        check_tamper(tok, data, size);
    } else {
        CHECK(sh != SL_OK && sr != SL_OK);
    }
    free(tok);
}

/* The documented result of verifying a token signed with the secret
 * whose header is hdr and payload pay (as the harness signs it). */
static sl_status model(const uint8_t *hdr, size_t hl, const uint8_t *pay, size_t pl, int64_t now)
{
    cJSON *h = ref_object(hdr, hl), *p = NULL, *v;
    sl_status st = SL_ERR_INVAL;
    const char *alg;
    int64_t exp = 0, nbf = 0;

    if (h == NULL || (alg = jstr(h, "alg")) == NULL)
        goto done;
    st = SL_ERR_AUTH;
    if (cJSON_GetObjectItemCaseSensitive(h, "crit") != NULL || strcmp(alg, "HS256") != 0)
        goto done;
    st = SL_ERR_INVAL;
    p = ref_object(pay, pl);
    if (p == NULL || jstr(p, "sub") == NULL || !ref_sub(jstr(p, "sub")) ||
        jstr(p, "tenant") == NULL || !ref_id(jstr(p, "tenant"), false) ||
        !ref_int(cJSON_GetObjectItemCaseSensitive(p, "exp"), &exp))
        goto done;
    if ((v = cJSON_GetObjectItemCaseSensitive(p, "role")) != NULL && !cJSON_IsString(v))
        goto done;
    if ((v = cJSON_GetObjectItemCaseSensitive(p, "rooms")) != NULL) {
        const cJSON *r;
        if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > SL_ROOMS_MAX)
            goto done;
        cJSON_ArrayForEach(r, v)
        {
            if (!cJSON_IsString(r) || !ref_pattern(r->valuestring))
                goto done;
        }
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(p, "nbf")) != NULL) {
        if (!ref_int(v, &nbf))
            goto done;
        if (now < nbf) {
            st = SL_ERR_AUTH;
            goto done;
        }
    }
    st = now >= exp ? SL_ERR_EXPIRED : SL_OK;
done:
    cJSON_Delete(h);
    cJSON_Delete(p);
    return st;
}

static void mode_signed(const uint8_t *data, size_t size)
{
    size_t hl = size > 0 ? data[0] : 0;
    const uint8_t *hdr, *pay;
    size_t pl;
    char *tok, *again = NULL;
    const char *rooms[SL_ROOMS_MAX];
    sl_claims cl, cl2;
    sl_status st, want;
    cJSON *p;

    if (size == 0)
        return;
    if (hl > size - 1)
        hl = size - 1;
    hdr = data + 1;
    pay = hdr + hl;
    pl = size - 1 - hl;
    tok = sign_hs256(hdr, hl, pay, pl);
    st = verify(v_both, tok, NOW, &cl);
    want = strlen(tok) > SL_TOKEN_MAX ? SL_ERR_INVAL : model(hdr, hl, pay, pl, NOW);
    CHECK(st == want);
    if (st == SL_OK) {
        check_claims(&cl, NOW);
        p = oracle_payload(tok);
        check_claims_match(&cl, p);
        CHECK(verify(v_both, tok, cl.exp, &cl2) == model(hdr, hl, pay, pl, cl.exp));
        CHECK(verify(v_both, tok, cl.exp - 1, &cl2) == model(hdr, hl, pay, pl, cl.exp - 1));
        cJSON_Delete(p);
        for (int i = 0; i < cl.nrooms; i++)
            rooms[i] = cl.rooms[i];
        CHECK(sl_jwt_mint_hs256_role(SECRET, cl.tenant, cl.sub, cl.exp,
                                     cl.nrooms < 0 ? NULL : rooms, cl.nrooms < 0 ? 0 : cl.nrooms,
                                     cl.server ? "server" : NULL, &again) == SL_OK);
        CHECK(verify(v_both, again, NOW, &cl2) == SL_OK && claims_equal(&cl, &cl2));
        CHECK(strcmp(oracle_alg(again), "HS256") == 0);
        check_tamper(tok, data, size);
        check_tamper(again, data, size);
        free(again);
    }
    free(tok);
}

static void mode_rooms(const uint8_t *data, size_t size, bool no_claim)
{
    char *s = malloc(size + 1), *line, *next;
    sl_claims c;
    const char *room = "";
    bool allowed;

    CHECK(s != NULL);
    memcpy(s, data, size);
    s[size] = '\0';
    memset(&c, 0, sizeof(c));
    for (line = s; line != NULL; line = next) {
        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        if (next == NULL) {
            room = line;
            break;
        }
        CHECK(sl_room_pattern_valid(line) == ref_pattern(line));
        if (ref_pattern(line) && c.nrooms < SL_ROOMS_MAX)
            memcpy(c.rooms[c.nrooms++], line, strlen(line) + 1);
    }
    CHECK(sl_room_pattern_valid(room) == ref_pattern(room));
    if (no_claim)
        c.nrooms = -1;
    allowed = sl_claims_room_allowed(&c, room);
    CHECK(allowed == ref_room_allowed(&c, room));
    CHECK(!allowed || sl_id_valid(room));
    CHECK(!sl_claims_room_allowed(NULL, room));
    CHECK(!sl_claims_room_allowed(&c, NULL));
    free(s);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char path[] = "/tmp/sluice-fuzz-jwt-XXXXXX", err[256];
    BIO *bio;
    FILE *f;
    int fd;

    (void)argc;
    (void)argv;
    bio = BIO_new_mem_buf(test_rsa_key, -1);
    CHECK(bio != NULL);
    test_key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    CHECK(test_key != NULL);
    fd = mkstemp(path);
    CHECK(fd >= 0);
    f = fdopen(fd, "w");
    CHECK(f != NULL && PEM_write_PUBKEY(f, test_key) == 1 && fclose(f) == 0);
    CHECK(sl_auth_create(&v_both, SECRET, path, err, sizeof(err)) == SL_OK);
    CHECK(sl_auth_create(&v_hs, SECRET, NULL, err, sizeof(err)) == SL_OK);
    CHECK(sl_auth_create(&v_rs, NULL, path, err, sizeof(err)) == SL_OK);
    unlink(path);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] & 3) {
    case 1:
        mode_signed(data + 1, size - 1);
        break;
    case 2:
        mode_rooms(data + 1, size - 1, (data[0] & 0x80) != 0);
        break;
    default:
        mode_raw(data + 1, size - 1);
        break;
    }
    return 0;
}

#ifdef FUZZ_SEEDS
static char *hs(const char *hdr, const char *pay)
{
    return sign_hs256((const unsigned char *)hdr, strlen(hdr), (const unsigned char *)pay,
                      strlen(pay));
}

static char *rs(const char *hdr, const char *pay)
{
    unsigned char sig[512];
    size_t sl = sizeof(sig), len, o;
    char *t = signing_input((const unsigned char *)hdr, strlen(hdr), (const unsigned char *)pay,
                            strlen(pay), &len);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    CHECK(ctx != NULL);
    CHECK(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, test_key) == 1);
    CHECK(EVP_DigestSign(ctx, sig, &sl, (unsigned char *)t, len) == 1);
    EVP_MD_CTX_free(ctx);
    o = len + 1;
    fz_b64_put(sig, sl, t, &o);
    return t;
}

/* A raw-mode seed that verifies to want; the token is freed. */
static void seed_tok(const char *name, sl_status want, char *tok)
{
    sl_claims cl;

    CHECK(tok != NULL);
    CHECK(verify(v_both, tok, NOW, &cl) == want);
    fz_seed_mode(name, 0, tok, strlen(tok));
    free(tok);
}

/* A signed-mode seed (header length, header, payload) that verifies to
 * want once signed. */
static void seed_signed(const char *name, sl_status want, const char *hdr, const char *pay)
{
    size_t hl = strlen(hdr), pl = strlen(pay);
    unsigned char *body = malloc(1 + hl + pl);
    char *tok = hs(hdr, pay);
    sl_claims cl;

    CHECK(verify(v_both, tok, NOW, &cl) == want);
    free(tok);
    CHECK(body != NULL && hl <= 255);
    body[0] = (unsigned char)hl;
    memcpy(body + 1, hdr, hl);
    memcpy(body + 1 + hl, pay, pl);
    fz_seed_mode(name, 1, body, 1 + hl + pl);
    free(body);
}

int main(int argc, char **argv)
{
    static const char *const rooms[] = {"lobby", "team-*"};
    static const char hs_hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    static const char pay[] = "{\"sub\":\"user-1\",\"tenant\":\"acme\",\"exp\":4102444800,"
                              "\"rooms\":[\"lobby\",\"team-*\"]}";
    char *tok = NULL;

    if (!fz_seed_args(argc, argv, "JWT"))
        return 2;
    LLVMFuzzerInitialize(&argc, &argv);

    /* Raw tokens. */
    CHECK(sl_jwt_mint_hs256(SECRET, "acme", "user-1", EXP_LATER, rooms, 2, &tok) == SL_OK);
    seed_tok("hs256_minted", SL_OK, tok);
    CHECK(sl_jwt_mint_hs256(SECRET, "acme", "Zo\xC3\xAB \xF0\x9F\x99\x82", EXP_LATER, NULL, 0,
                            &tok) == SL_OK);
    seed_tok("hs256_unicode_no_rooms", SL_OK, tok);
    CHECK(sl_jwt_mint_hs256_role(SECRET, "acme", "release-bot", EXP_LATER, NULL, 0, "server",
                                 &tok) == SL_OK);
    seed_tok("hs256_role_server", SL_OK, tok);
    seed_tok("rs256", SL_OK, rs("{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"test\"}", pay));
    seed_tok("hs256_expired", SL_ERR_EXPIRED,
             hs(hs_hdr, "{\"sub\":\"user-1\",\"tenant\":\"acme\",\"exp\":1600000000}"));
    seed_tok("hs256_nbf_future", SL_ERR_AUTH,
             hs(hs_hdr, "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":4102444800,"
                        "\"nbf\":1800000000}"));
    seed_tok("alg_none", SL_ERR_AUTH,
             strdup("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1IiwidGVuYW50IjoiYWNtZSIsImV4cCI6"
                    "NDEwMjQ0NDgwMH0."));
    seed_tok("alg_confusion_rs256_hmac", SL_ERR_AUTH, hs("{\"alg\":\"RS256\"}", pay));
    seed_tok("crit", SL_ERR_AUTH, hs("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", pay));
    seed_tok("two_segments", SL_ERR_INVAL, strdup("eyJhbGciOiJIUzI1NiJ9.e30"));
    seed_tok("padded_base64", SL_ERR_INVAL, strdup("eyJhbGciOiJIUzI1NiJ9.e30=.AAAA"));
    CHECK(sl_jwt_mint_hs256("another-secret-0123456789abcdef0123", "acme", "user-1", EXP_LATER,
                            NULL, 0, &tok) == SL_OK);
    seed_tok("hs256_other_secret", SL_ERR_AUTH, tok);

    /* Signed header + payload pairs: the claims parser. */
    seed_signed("claims_valid", SL_OK, hs_hdr, pay);
    seed_signed("claims_nbf_past", SL_OK, hs_hdr,
                "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":4102444800,"
                "\"nbf\":1600000000,\"rooms\":[\"*\"]}");
    /* 16 digits: cJSON prints this as 8204888160000000 (found by CI). */
    seed_signed("claims_exp_16_digits", SL_OK, hs_hdr,
                "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":8204888159999999}");
    seed_signed("claims_exp_2p53", SL_OK, hs_hdr,
                "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":9007199254740992}");
    seed_signed("claims_exp_float", SL_ERR_INVAL, hs_hdr,
                "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1e300}");
    seed_signed("claims_exp_string", SL_ERR_INVAL, hs_hdr,
                "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":\"4102444800\"}");
    seed_signed("claims_tenant_dot", SL_ERR_INVAL, hs_hdr,
                "{\"sub\":\"u\",\"tenant\":\"ac.me\",\"exp\":4102444800}");
    seed_signed("claims_sub_control", SL_ERR_INVAL, hs_hdr,
                "{\"sub\":\"a\\u0007b\",\"tenant\":\"acme\",\"exp\":4102444800}");
    seed_signed("claims_rooms_bad", SL_ERR_INVAL, hs_hdr,
                "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":4102444800,"
                "\"rooms\":[\"lob>by\",\"*\"]}");
    seed_signed(
        "claims_rooms_33", SL_ERR_INVAL, hs_hdr,
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":4102444800,\"rooms\":[\"a\",\"b\",\"c\","
        "\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\",\"n\",\"o\",\"p\",\"q\","
        "\"r\",\"s\",\"t\",\"u\",\"v\",\"w\",\"x\",\"y\",\"z\",\"A\",\"B\",\"C\",\"D\",\"E\","
        "\"F\",\"G\"]}");
    seed_signed("claims_role_server", SL_OK, hs_hdr,
                "{\"sub\":\"bot\",\"tenant\":\"acme\",\"exp\":4102444800,\"role\":\"server\"}");
    seed_signed("claims_role_other", SL_OK, hs_hdr,
                "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":4102444800,\"role\":\"Server\"}");
    seed_signed("claims_role_not_string", SL_ERR_INVAL, hs_hdr,
                "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":4102444800,\"role\":true}");
    seed_signed("claims_escaped_nul", SL_ERR_INVAL, hs_hdr,
                "{\"sub\":\"u\",\"tenant\":\"tb\\u0000x\",\"exp\":4102444800}");
    seed_signed("header_alg_none", SL_ERR_AUTH, "{\"alg\":\"none\"}", pay);
    seed_signed("header_not_object", SL_ERR_INVAL, "[\"HS256\"]", pay);
    seed_signed("payload_not_object", SL_ERR_INVAL, hs_hdr, "\"acme\"");

    /* Room patterns and a room. */
    fz_seed_mode("rooms_prefix", 2, "lobby\nteam-*\nteam-red", strlen("lobby\nteam-*\nteam-red"));
    fz_seed_mode("rooms_star", 2, "*\nanything", strlen("*\nanything"));
    fz_seed_mode("rooms_denied", 2, "lobby\nteam-*\nlob", strlen("lobby\nteam-*\nlob"));
    fz_seed_mode("rooms_no_claim", 2 | 0x80, "\nr:lobby", strlen("\nr:lobby"));
    return fz_seed_done();
}
#endif
