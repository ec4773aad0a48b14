/* Unit tests for sl_auth: JWT verification (HS256, RS256), minting, room
 * patterns and resume tokens. Tokens under test are also built here by
 * hand (OpenSSL's own base64 and signing), so encoder and verifier do not
 * share bugs. */
#include <check.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_auth.h"
#include "sl_log.h"

#define SECRET  "test-secret-0123456789abcdef0123456789abcdef"
#define SECRET2 "other-secret-0123456789abcdef0123456789abcdef"
#define NOW     1700000000LL
#define HDR_HS  "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define HDR_RS  "{\"alg\":\"RS256\",\"typ\":\"JWT\"}"
#define PAYLOAD "{\"sub\":\"u1\",\"tenant\":\"acme\",\"exp\":1700000600}"

/* Made once in main(), before Check forks the tests. */
static EVP_PKEY *rsa_a, *rsa_b;
static char *rsa_a_pem;       /* the public key of rsa_a as PEM text */
static char rsa_a_path[64];   /* ... and as a file */
static char ec_path[64];      /* a P-256 public key: not RSA */
static char garbage_path[64]; /* not a key at all */

/* ---- helpers ---------------------------------------------------------- */

static char *b64u(const void *data, size_t n)
{
    char *buf = malloc(4 * ((n + 2) / 3) + 1);
    int len;

    ck_assert_ptr_nonnull(buf);
    len = EVP_EncodeBlock((unsigned char *)buf, data, (int)n);
    for (int i = 0; i < len; i++) {
        if (buf[i] == '+')
            buf[i] = '-';
        else if (buf[i] == '/')
            buf[i] = '_';
    }
    while (len > 0 && buf[len - 1] == '=')
        len--;
    buf[len] = '\0';
    return buf;
}

static char *join3(const char *a, const char *b, const char *c)
{
    char *s = NULL;

    ck_assert_int_ge(asprintf(&s, "%s.%s.%s", a, b, c), 0);
    return s;
}

/* header.payload.HMAC-SHA256(secret) with arbitrary JSON text. */
static char *hs_token_key(const char *hdr, const char *pay, const void *key, size_t keylen)
{
    char *h = b64u(hdr, strlen(hdr)), *p = b64u(pay, strlen(pay)), *signing = NULL, *s, *tok;
    unsigned char mac[32];
    unsigned int ml = 0;

    ck_assert_int_ge(asprintf(&signing, "%s.%s", h, p), 0);
    ck_assert_ptr_nonnull(
        HMAC(EVP_sha256(), key, (int)keylen, (unsigned char *)signing, strlen(signing), mac, &ml));
    s = b64u(mac, ml);
    tok = join3(h, p, s);
    free(h);
    free(p);
    free(s);
    free(signing);
    return tok;
}

static char *hs_token(const char *hdr, const char *pay, const char *secret)
{
    return hs_token_key(hdr, pay, secret, strlen(secret));
}

static char *rs_token(const char *hdr, const char *pay, EVP_PKEY *key)
{
    char *h = b64u(hdr, strlen(hdr)), *p = b64u(pay, strlen(pay)), *signing = NULL, *s, *tok;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char *sig;
    size_t sl = 0;

    ck_assert_int_ge(asprintf(&signing, "%s.%s", h, p), 0);
    ck_assert_int_eq(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key), 1);
    ck_assert_int_eq(EVP_DigestSign(ctx, NULL, &sl, (unsigned char *)signing, strlen(signing)), 1);
    sig = malloc(sl);
    ck_assert_int_eq(EVP_DigestSign(ctx, sig, &sl, (unsigned char *)signing, strlen(signing)), 1);
    s = b64u(sig, sl);
    tok = join3(h, p, s);
    EVP_MD_CTX_free(ctx);
    free(sig);
    free(h);
    free(p);
    free(s);
    free(signing);
    return tok;
}

static sl_auth *auth_new(const char *secret, const char *pem_path)
{
    sl_auth *a = NULL;
    char err[256] = "";
    sl_status st = sl_auth_create(&a, secret, pem_path, err, sizeof(err));

    ck_assert_msg(st == SL_OK, "sl_auth_create: %s", err);
    ck_assert_ptr_nonnull(a);
    return a;
}

static sl_status verify(const sl_auth *a, const char *tok, sl_claims *c)
{
    char why[128] = "";
    sl_claims dummy;

    return sl_auth_verify(a, tok, NOW, c != NULL ? c : &dummy, why, sizeof(why));
}

/* Verifies an HS256 token with the given payload, signed with SECRET. */
static sl_status verify_payload(const char *pay)
{
    sl_auth *a = auth_new(SECRET, NULL);
    char *tok = hs_token(HDR_HS, pay, SECRET);
    sl_status st = verify(a, tok, NULL);

    free(tok);
    sl_auth_destroy(a);
    return st;
}

/* ---- JWT -------------------------------------------------------------- */

START_TEST(test_valid)
{
    sl_auth *a = auth_new(SECRET, NULL);
    char *tok = NULL, why[128] = "";
    sl_claims c;

    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "user-1", NOW + 60, NULL, 0, &tok), SL_OK);
    memset(&c, 0x55, sizeof(c));
    ck_assert_int_eq(sl_auth_verify(a, tok, NOW, &c, why, sizeof(why)), SL_OK);
    ck_assert_str_eq(c.sub, "user-1");
    ck_assert_str_eq(c.tenant, "acme");
    ck_assert_int_eq(c.exp, NOW + 60);
    ck_assert_int_eq(c.nrooms, -1);
    free(tok);

    /* A hand-made token, extra claims ignored, UTF-8 sub, exp beyond 2^32. */
    tok = hs_token(HDR_HS,
                   "{\"sub\":\"Jos\xc3\xa9 \xe6\x97\xa5\",\"tenant\":\"t_1-x\","
                   "\"exp\":5000000000,\"iat\":1,\"nbf\":1699999999,\"x\":{\"y\":[1]}}",
                   SECRET);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    ck_assert_str_eq(c.sub, "Jos\xc3\xa9 \xe6\x97\xa5");
    ck_assert_str_eq(c.tenant, "t_1-x");
    ck_assert_int_eq(c.exp, 5000000000LL);
    free(tok);

    /* Verification is deterministic and leaves no state: twice is fine. */
    tok = hs_token(HDR_HS, PAYLOAD, SECRET);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    free(tok);
    sl_auth_destroy(a);
}
END_TEST

START_TEST(test_expired)
{
    sl_auth *a = auth_new(SECRET, NULL);
    char *tok = NULL, why[128] = "";
    sl_claims c;

    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "u1", NOW, NULL, 0, &tok), SL_OK);
    memset(&c, 0, sizeof(c));
    ck_assert_int_eq(sl_auth_verify(a, tok, NOW, &c, why, sizeof(why)), SL_ERR_EXPIRED);
    ck_assert_str_eq(why, "token expired");
    ck_assert_str_eq(c.sub, ""); /* *out untouched on failure */
    ck_assert_int_eq(sl_auth_verify(a, tok, NOW + 1000, &c, why, sizeof(why)), SL_ERR_EXPIRED);
    ck_assert_int_eq(sl_auth_verify(a, tok, NOW - 1, &c, why, sizeof(why)), SL_OK);
    free(tok);

    /* nbf in the future is refused, in the past accepted. */
    ck_assert_int_eq(
        verify_payload("{\"sub\":\"u\",\"tenant\":\"t\",\"exp\":1700000600,\"nbf\":1700000001}"),
        SL_ERR_AUTH);
    ck_assert_int_eq(
        verify_payload("{\"sub\":\"u\",\"tenant\":\"t\",\"exp\":1700000600,\"nbf\":1700000000}"),
        SL_OK);
    ck_assert_int_eq(
        verify_payload("{\"sub\":\"u\",\"tenant\":\"t\",\"exp\":1700000600,\"nbf\":\"x\"}"),
        SL_ERR_INVAL);
    sl_auth_destroy(a);
}
END_TEST

START_TEST(test_wrong_key_and_tampering)
{
    sl_auth *a = auth_new(SECRET, NULL);
    char *tok = NULL, *forged, *p;
    char why[128] = "";
    sl_claims c;

    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET2, "acme", "u1", NOW + 60, NULL, 0, &tok), SL_OK);
    ck_assert_int_eq(sl_auth_verify(a, tok, NOW, &c, why, sizeof(why)), SL_ERR_AUTH);
    ck_assert_str_eq(why, "bad signature");
    free(tok);

    /* Payload swapped under a valid signature. */
    tok = hs_token(HDR_HS, PAYLOAD, SECRET);
    ck_assert_int_eq(verify(a, tok, NULL), SL_OK);
    {
        char *other =
            hs_token(HDR_HS, "{\"sub\":\"admin\",\"tenant\":\"acme\",\"exp\":1700000600}", SECRET2);
        char *h = strtok(other, "."), *pl = strtok(NULL, ".");
        const char *sig = strrchr(tok, '.') + 1;
        forged = join3(h, pl, sig);
        ck_assert_int_eq(verify(a, forged, NULL), SL_ERR_AUTH);
        free(forged);
        free(other);
    }
    /* One signature character changed (not the last, which carries
     * padding bits), and the signature cut short or removed. */
    forged = strdup(tok);
    p = strrchr(forged, '.') + 5;
    *p = *p == 'A' ? 'B' : 'A';
    ck_assert_int_eq(verify(a, forged, NULL), SL_ERR_AUTH);
    strcpy(strrchr(forged, '.') + 10, "");
    ck_assert_int_ne(verify(a, forged, NULL), SL_OK);
    strcpy(strrchr(forged, '.') + 1, "");
    ck_assert_int_eq(verify(a, forged, NULL), SL_ERR_AUTH);
    free(forged);
    free(tok);
    sl_auth_destroy(a);
}
END_TEST

START_TEST(test_alg_none_and_others)
{
    static const char *const refused[] = {
        "{\"alg\":\"none\"}",
        "{\"alg\":\"None\"}",
        "{\"alg\":\"NONE\"}",
        "{\"alg\":\"nOnE\"}",
        "{\"alg\":\"\"}",
        "{\"alg\":\"hs256\"}",
        "{\"alg\":\"HS512\"}",
        "{\"alg\":\"HS384\"}",
        "{\"alg\":\"RS256\"}",
        "{\"alg\":\"ES256\"}",
        "{\"alg\":\"HS256 \"}",
        "{\"alg\":\"PS256\"}",
        "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}",
    };
    sl_auth *a = auth_new(SECRET, NULL);
    char why[128];
    sl_claims c;

    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        char *h = b64u(refused[i], strlen(refused[i])), *p = b64u(PAYLOAD, strlen(PAYLOAD));
        char *empty_sig = join3(h, p, "");
        char *signed_tok = hs_token(refused[i], PAYLOAD, SECRET);

        ck_assert_msg(verify(a, empty_sig, NULL) == SL_ERR_AUTH, "%s with empty sig", refused[i]);
        ck_assert_msg(verify(a, signed_tok, NULL) == SL_ERR_AUTH, "%s with HMAC", refused[i]);
        free(h);
        free(p);
        free(empty_sig);
        free(signed_tok);
    }
    {
        char *h = b64u("{\"alg\":\"none\"}", 14), *p = b64u(PAYLOAD, strlen(PAYLOAD));
        char *tok = join3(h, p, "");
        ck_assert_int_eq(sl_auth_verify(a, tok, NOW, &c, why, sizeof(why)), SL_ERR_AUTH);
        ck_assert_str_eq(why, "alg not accepted");
        free(tok);
        free(h);
        free(p);
    }
    /* alg missing, of the wrong type, or under another key case. */
    {
        static const char *const bad[] = {
            "{}", "{\"alg\":null}", "{\"alg\":256}", "{\"alg\":[\"HS256\"]}", "{\"ALG\":\"HS256\"}",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            char *tok = hs_token(bad[i], PAYLOAD, SECRET);
            ck_assert_msg(verify(a, tok, NULL) == SL_ERR_INVAL, "%s", bad[i]);
            free(tok);
        }
    }
    sl_auth_destroy(a);
}
END_TEST

START_TEST(test_malformed)
{
    sl_auth *a = auth_new(SECRET, NULL);
    char *good = hs_token(HDR_HS, PAYLOAD, SECRET);
    char *h = strdup(good), *p, *s, *tok, *big;
    char why[128] = "";
    sl_claims c;

    /* h, p and s: the three segments of a good token. */
    p = strchr(h, '.');
    *p++ = '\0';
    s = strchr(p, '.');
    *s++ = '\0';

    ck_assert_int_eq(sl_auth_verify(a, NULL, NOW, &c, why, sizeof(why)), SL_ERR_INVAL);
    ck_assert_int_eq(verify(a, "", NULL), SL_ERR_INVAL);
    ck_assert_int_eq(verify(a, "abc", NULL), SL_ERR_INVAL);
    ck_assert_int_eq(verify(a, "..", NULL), SL_ERR_INVAL);
    ck_assert_int_eq(sl_auth_verify(a, "a.b", NOW, &c, why, sizeof(why)), SL_ERR_INVAL);
    ck_assert_str_eq(why, "token is not three segments");

    /* Four segments. */
    ck_assert_int_ge(asprintf(&tok, "%s.x", good), 0);
    ck_assert_int_eq(verify(a, tok, NULL), SL_ERR_INVAL);
    free(tok);

    /* Longer than 8 KiB, even though otherwise fine. */
    big = malloc(SL_TOKEN_MAX + 64);
    memset(big, 'A', SL_TOKEN_MAX + 63);
    big[SL_TOKEN_MAX + 63] = '\0';
    memcpy(big, good, strlen(good));
    ck_assert_int_eq(sl_auth_verify(a, big, NOW, &c, why, sizeof(why)), SL_ERR_INVAL);
    ck_assert_str_eq(why, "token too long");
    free(big);

    /* Bad base64url in each segment: standard-alphabet chars, padding,
     * other chars, an impossible length, non-zero trailing bits. */
    {
        static const char *const bad_seg[] = {"ab+c", "ab/c",  "abc=", "ab c",
                                              "a!bc", "abcde", "AB"};
        for (size_t i = 0; i < sizeof(bad_seg) / sizeof(bad_seg[0]); i++) {
            char *t1 = join3(bad_seg[i], p, s), *t2 = join3(h, bad_seg[i], s),
                 *t3 = join3(h, p, bad_seg[i]);
            ck_assert_msg(verify(a, t1, NULL) == SL_ERR_INVAL, "header %s", bad_seg[i]);
            ck_assert_msg(verify(a, t2, NULL) == SL_ERR_INVAL, "payload %s", bad_seg[i]);
            ck_assert_msg(verify(a, t3, NULL) == SL_ERR_INVAL, "signature %s", bad_seg[i]);
            free(t1);
            free(t2);
            free(t3);
        }
        /* The good signature with padding appended. */
        ck_assert_int_ge(asprintf(&tok, "%s.%s.%s=", h, p, s), 0);
        ck_assert_int_eq(verify(a, tok, NULL), SL_ERR_INVAL);
        free(tok);
    }

    /* Header or payload not a JSON object (payload ones correctly signed). */
    {
        static const char *const not_obj[] = {
            "", "null", "[]", "\"x\"", "42", "{", "{\"alg\":\"HS256\"} x", "{\"alg\":\"HS256\"}{}",
        };
        for (size_t i = 0; i < sizeof(not_obj) / sizeof(not_obj[0]); i++) {
            char *t1 = hs_token(not_obj[i], PAYLOAD, SECRET);
            char *t2 = hs_token(HDR_HS, not_obj[i], SECRET);
            ck_assert_msg(verify(a, t1, NULL) == SL_ERR_INVAL, "header '%s'", not_obj[i]);
            ck_assert_msg(verify(a, t2, NULL) == SL_ERR_INVAL, "payload '%s'", not_obj[i]);
            free(t1);
            free(t2);
        }
    }
    /* A NUL byte inside the decoded payload. */
    {
        static const char pay[] = "{\"sub\":\"u1\",\"tenant\":\"acme\",\"exp\":1700000600}\0x";
        char *hh = b64u(HDR_HS, strlen(HDR_HS)), *pp = b64u(pay, sizeof(pay) - 1), *signing;
        unsigned char mac[32];
        unsigned int ml;
        char *ss;
        ck_assert_int_ge(asprintf(&signing, "%s.%s", hh, pp), 0);
        HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)signing, strlen(signing),
             mac, &ml);
        ss = b64u(mac, ml);
        tok = join3(hh, pp, ss);
        ck_assert_int_eq(verify(a, tok, NULL), SL_ERR_INVAL);
        free(tok);
        free(ss);
        free(signing);
        free(hh);
        free(pp);
    }
    ck_assert_int_eq(verify(a, good, NULL), SL_OK);
    free(h);
    free(good);
    sl_auth_destroy(a);
}
END_TEST

START_TEST(test_claims)
{
    static const char *const bad[] = {
        /* tenant */
        "{\"sub\":\"u\",\"exp\":1700000600}",
        "{\"sub\":\"u\",\"tenant\":\"\",\"exp\":1700000600}",
        "{\"sub\":\"u\",\"tenant\":\"a.b\",\"exp\":1700000600}",
        "{\"sub\":\"u\",\"tenant\":\"a*\",\"exp\":1700000600}",
        "{\"sub\":\"u\",\"tenant\":\"*\",\"exp\":1700000600}",
        "{\"sub\":\"u\",\"tenant\":\"a>\",\"exp\":1700000600}",
        "{\"sub\":\"u\",\"tenant\":\">\",\"exp\":1700000600}",
        "{\"sub\":\"u\",\"tenant\":\"a b\",\"exp\":1700000600}",
        "{\"sub\":\"u\",\"tenant\":42,\"exp\":1700000600}",
        "{\"sub\":\"u\",\"tenant\":null,\"exp\":1700000600}",
        "{\"sub\":\"u\",\"Tenant\":\"acme\",\"exp\":1700000600}",
        "{\"sub\":\"u\",\"tenant\":"
        "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\","
        "\"exp\":1700000600}",
        /* sub */
        "{\"tenant\":\"acme\",\"exp\":1700000600}",
        "{\"sub\":\"\",\"tenant\":\"acme\",\"exp\":1700000600}",
        "{\"sub\":7,\"tenant\":\"acme\",\"exp\":1700000600}",
        "{\"sub\":\"a\\u0001b\",\"tenant\":\"acme\",\"exp\":1700000600}",
        "{\"sub\":\"a\\nb\",\"tenant\":\"acme\",\"exp\":1700000600}",
        "{\"sub\":\"a\\u007fb\",\"tenant\":\"acme\",\"exp\":1700000600}",
        "{\"sub\":\"a\xc0\xafz\",\"tenant\":\"acme\",\"exp\":1700000600}", /* overlong UTF-8 */
        "{\"sub\":\"a\xff\",\"tenant\":\"acme\",\"exp\":1700000600}",
        /* exp */
        "{\"sub\":\"u\",\"tenant\":\"acme\"}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":\"1700000600\"}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600.5}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1e300}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":null}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":true}",
        /* rooms */
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":\"lobby\"}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":null}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":{}}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":[1]}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":[\"ok\",null]}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":[\"a.b\"]}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":[\"a>\"]}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":[\"*x\"]}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":[\"a**\"]}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":[\"\"]}",
    };
    char pay[2048], sub[200], rooms[1024];
    size_t n = 0;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(verify_payload(bad[i]) == SL_ERR_INVAL, "accepted: %s", bad[i]);

    /* sub: 128 bytes is fine, 129 is not. */
    memset(sub, 'x', 129);
    sub[128] = '\0';
    snprintf(pay, sizeof(pay), "{\"sub\":\"%s\",\"tenant\":\"acme\",\"exp\":1700000600}", sub);
    ck_assert_int_eq(verify_payload(pay), SL_OK);
    sub[128] = 'x';
    sub[129] = '\0';
    snprintf(pay, sizeof(pay), "{\"sub\":\"%s\",\"tenant\":\"acme\",\"exp\":1700000600}", sub);
    ck_assert_int_eq(verify_payload(pay), SL_ERR_INVAL);

    /* rooms: 32 entries are fine, 33 are not. */
    n = (size_t)snprintf(rooms, sizeof(rooms), "[");
    for (int i = 0; i < SL_ROOMS_MAX; i++)
        n += (size_t)snprintf(rooms + n, sizeof(rooms) - n, "%s\"r%d\"", i ? "," : "", i);
    snprintf(rooms + n, sizeof(rooms) - n, "]");
    snprintf(pay, sizeof(pay),
             "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":%s}", rooms);
    ck_assert_int_eq(verify_payload(pay), SL_OK);
    snprintf(rooms + n, sizeof(rooms) - n, ",\"r32\"]");
    snprintf(pay, sizeof(pay),
             "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"rooms\":%s}", rooms);
    ck_assert_int_eq(verify_payload(pay), SL_ERR_INVAL);
}
END_TEST

START_TEST(test_rooms)
{
    static const char *const rooms[] = {"lobby", "team-*"};
    static const char *const star[] = {"*"};
    sl_auth *a = auth_new(SECRET, NULL);
    char *tok = NULL;
    sl_claims c;

    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "u1", NOW + 60, rooms, 2, &tok), SL_OK);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    free(tok);
    ck_assert_int_eq(c.nrooms, 2);
    ck_assert_str_eq(c.rooms[0], "lobby");
    ck_assert_str_eq(c.rooms[1], "team-*");
    ck_assert(sl_claims_room_allowed(&c, "lobby"));
    ck_assert(!sl_claims_room_allowed(&c, "lobby2"));
    ck_assert(!sl_claims_room_allowed(&c, "lobb"));
    ck_assert(!sl_claims_room_allowed(&c, "Lobby"));
    ck_assert(sl_claims_room_allowed(&c, "team-a"));
    ck_assert(sl_claims_room_allowed(&c, "team-"));
    ck_assert(sl_claims_room_allowed(&c, "team-alpha_2"));
    ck_assert(!sl_claims_room_allowed(&c, "team"));
    ck_assert(!sl_claims_room_allowed(&c, "xteam-a"));
    ck_assert(!sl_claims_room_allowed(&c, "team-a.b"));
    ck_assert(!sl_claims_room_allowed(&c, "team-*"));
    ck_assert(!sl_claims_room_allowed(&c, ""));
    ck_assert(!sl_claims_room_allowed(&c, NULL));
    ck_assert(!sl_claims_room_allowed(NULL, "lobby"));

    /* No rooms claim: every valid room; "*": every valid room; []: none. */
    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "u1", NOW + 60, NULL, 0, &tok), SL_OK);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    free(tok);
    ck_assert_int_eq(c.nrooms, -1);
    ck_assert(sl_claims_room_allowed(&c, "anything"));
    ck_assert(!sl_claims_room_allowed(&c, "a.b"));
    ck_assert(!sl_claims_room_allowed(&c, ">"));

    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "u1", NOW + 60, star, 1, &tok), SL_OK);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    free(tok);
    ck_assert(sl_claims_room_allowed(&c, "anything"));
    ck_assert(!sl_claims_room_allowed(&c, "a*"));

    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "u1", NOW + 60, star, 0, &tok), SL_OK);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    free(tok);
    ck_assert_int_eq(c.nrooms, 0);
    ck_assert(!sl_claims_room_allowed(&c, "lobby"));

    ck_assert(sl_room_pattern_valid("a"));
    ck_assert(sl_room_pattern_valid("*"));
    ck_assert(sl_room_pattern_valid("a-b_*"));
    ck_assert(!sl_room_pattern_valid("a*b"));
    ck_assert(!sl_room_pattern_valid("a.*"));
    ck_assert(!sl_room_pattern_valid(""));
    ck_assert(!sl_room_pattern_valid(NULL));
    sl_auth_destroy(a);
}
END_TEST

/* The role claim: absent or another string makes a client token, "server"
 * a server token (the gateway's server API); anything but a string is
 * refused. Minting with a role round-trips. */
START_TEST(test_role)
{
    static const char *const bad[] = {
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"role\":true}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"role\":null}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"role\":[\"server\"]}",
        "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"role\":1}",
    };
    sl_auth *a = auth_new(SECRET, NULL);
    sl_claims c;
    char *tok;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(verify_payload(bad[i]) == SL_ERR_INVAL, "accepted: %s", bad[i]);

    tok = hs_token(HDR_HS,
                   "{\"sub\":\"bot\",\"tenant\":\"acme\",\"exp\":1700000600,\"role\":\"server\"}",
                   SECRET);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    ck_assert(c.server);
    free(tok);
    tok = hs_token(HDR_HS,
                   "{\"sub\":\"u\",\"tenant\":\"acme\",\"exp\":1700000600,\"role\":\"SERVER\"}",
                   SECRET);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    ck_assert(!c.server);
    free(tok);
    tok = hs_token(HDR_HS, PAYLOAD, SECRET);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    ck_assert(!c.server);
    free(tok);

    tok = NULL;
    ck_assert_int_eq(
        sl_jwt_mint_hs256_role(SECRET, "acme", "bot", NOW + 60, NULL, 0, "server", &tok), SL_OK);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    ck_assert(c.server);
    ck_assert_str_eq(c.sub, "bot");
    free(tok);
    tok = NULL;
    ck_assert_int_eq(sl_jwt_mint_hs256_role(SECRET, "acme", "bot", NOW + 60, NULL, 0, "a.b", &tok),
                     SL_ERR_INVAL);
    ck_assert_ptr_null(tok);
    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "u", NOW + 60, NULL, 0, &tok), SL_OK);
    ck_assert_int_eq(verify(a, tok, &c), SL_OK);
    ck_assert(!c.server);
    free(tok);
    sl_auth_destroy(a);
}
END_TEST

START_TEST(test_mint_invalid)
{
    static const char *const bad_room[] = {"ok", "a.b"};
    static const char *const many[SL_ROOMS_MAX + 1] = {
        "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a",
        "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "a"};
    char *tok = NULL;

    ck_assert_int_eq(sl_jwt_mint_hs256("", "acme", "u", NOW, NULL, 0, &tok), SL_ERR_INVAL);
    ck_assert_int_eq(sl_jwt_mint_hs256(NULL, "acme", "u", NOW, NULL, 0, &tok), SL_ERR_INVAL);
    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "a.b", "u", NOW, NULL, 0, &tok), SL_ERR_INVAL);
    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "", NOW, NULL, 0, &tok), SL_ERR_INVAL);
    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "a\nb", NOW, NULL, 0, &tok), SL_ERR_INVAL);
    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "u", NOW, bad_room, 2, &tok), SL_ERR_INVAL);
    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "u", NOW, many, SL_ROOMS_MAX + 1, &tok),
                     SL_ERR_INVAL);
    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "u", NOW, many, -1, &tok), SL_ERR_INVAL);
    ck_assert_ptr_null(tok);
    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "u", NOW, many, SL_ROOMS_MAX, &tok), SL_OK);
    free(tok);
}
END_TEST

/* ---- RS256 and algorithm confusion ------------------------------------ */

START_TEST(test_rs256)
{
    sl_auth *rs = auth_new(NULL, rsa_a_path);
    sl_auth *hs = auth_new(SECRET, NULL);
    sl_auth *both = auth_new(SECRET, rsa_a_path);
    char *good = rs_token(HDR_RS, PAYLOAD, rsa_a);
    char *other = rs_token(HDR_RS, PAYLOAD, rsa_b);
    char *hs_tok = hs_token(HDR_HS, PAYLOAD, SECRET);
    char *tampered = strdup(good);
    char why[128] = "";
    sl_claims c;

    ck_assert_int_eq(verify(rs, good, &c), SL_OK);
    ck_assert_str_eq(c.sub, "u1");
    ck_assert_str_eq(c.tenant, "acme");
    ck_assert_int_eq(verify(both, good, NULL), SL_OK);
    ck_assert_int_eq(verify(both, hs_tok, NULL), SL_OK);

    /* Signed by another key; tampered; RS256 where only HS256 is set up. */
    ck_assert_int_eq(sl_auth_verify(rs, other, NOW, &c, why, sizeof(why)), SL_ERR_AUTH);
    ck_assert_str_eq(why, "bad signature");
    tampered[strlen(HDR_RS) + 10] ^= 1; /* inside the payload segment */
    ck_assert_int_ne(verify(rs, tampered, NULL), SL_OK);
    ck_assert_int_eq(verify(hs, good, NULL), SL_ERR_AUTH);

    /* HS256 where only RS256 is set up. */
    ck_assert_int_eq(sl_auth_verify(rs, hs_tok, NOW, &c, why, sizeof(why)), SL_ERR_AUTH);
    ck_assert_str_eq(why, "alg not accepted");

    /* The classic confusion: HS256 "signed" with the public key as secret. */
    {
        char *conf = hs_token_key(HDR_HS, PAYLOAD, rsa_a_pem, strlen(rsa_a_pem));
        ck_assert_int_eq(verify(rs, conf, NULL), SL_ERR_AUTH);
        ck_assert_int_eq(verify(both, conf, NULL), SL_ERR_AUTH);
        free(conf);
    }
    /* RS256 header on an HMAC, and a signature of the wrong size. */
    {
        char *conf = hs_token_key(HDR_RS, PAYLOAD, rsa_a_pem, strlen(rsa_a_pem));
        ck_assert_int_eq(verify(rs, conf, NULL), SL_ERR_AUTH);
        free(conf);
    }
    /* Expiry and claims apply to RS256 as well. */
    {
        char *exp =
            rs_token(HDR_RS, "{\"sub\":\"u1\",\"tenant\":\"acme\",\"exp\":1700000000}", rsa_a);
        char *bad =
            rs_token(HDR_RS, "{\"sub\":\"u1\",\"tenant\":\"a.b\",\"exp\":1700000600}", rsa_a);
        ck_assert_int_eq(verify(rs, exp, NULL), SL_ERR_EXPIRED);
        ck_assert_int_eq(verify(rs, bad, NULL), SL_ERR_INVAL);
        free(exp);
        free(bad);
    }
    free(good);
    free(other);
    free(hs_tok);
    free(tampered);
    sl_auth_destroy(rs);
    sl_auth_destroy(hs);
    sl_auth_destroy(both);
}
END_TEST

START_TEST(test_create_errors)
{
    sl_auth *a = NULL;
    char err[256];

    err[0] = '\0';
    ck_assert_int_eq(sl_auth_create(&a, NULL, NULL, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_str_ne(err, "");
    ck_assert_int_eq(sl_auth_create(&a, "", NULL, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_int_eq(sl_auth_create(&a, NULL, "/nonexistent/key.pem", err, sizeof(err)),
                     SL_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/key.pem"));
    ck_assert_int_eq(sl_auth_create(&a, NULL, garbage_path, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_int_eq(sl_auth_create(&a, NULL, ec_path, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(err, "not an RSA"));
    ck_assert_int_eq(sl_auth_create(&a, SECRET, ec_path, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_ptr_null(a);
    sl_auth_destroy(NULL);
}
END_TEST

/* ---- resume tokens ---------------------------------------------------- */

START_TEST(test_resume)
{
    char *tok = NULL, *t2 = NULL, sub[SL_SUB_MAX + 1];
    sl_auth *a = auth_new(SECRET, NULL);

    ck_assert_int_eq(
        sl_resume_token_make(SECRET, "acme", "sess-1", "user|1 \xc3\xa9", NOW + 60, &tok), SL_OK);
    ck_assert(strlen(tok) <= SL_RESUME_TOKEN_MAX);
    for (const char *p = tok; *p; p++)
        ck_assert_msg(
            strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.", *p) != NULL,
            "char %c", *p);
    memset(sub, 0, sizeof(sub));
    ck_assert_int_eq(sl_resume_token_verify(SECRET, tok, "acme", "sess-1", NOW, sub), SL_OK);
    ck_assert_str_eq(sub, "user|1 \xc3\xa9");

    strcpy(sub, "untouched");
    ck_assert_int_eq(sl_resume_token_verify(SECRET, tok, "other", "sess-1", NOW, sub), SL_ERR_AUTH);
    ck_assert_int_eq(sl_resume_token_verify(SECRET, tok, "acme", "sess-2", NOW, sub), SL_ERR_AUTH);
    ck_assert_int_eq(sl_resume_token_verify(SECRET, tok, "acme", "sess-1", NOW + 60, sub),
                     SL_ERR_EXPIRED);
    ck_assert_int_eq(sl_resume_token_verify(SECRET2, tok, "acme", "sess-1", NOW, sub), SL_ERR_AUTH);
    ck_assert_str_eq(sub, "untouched");

    /* Any single changed character breaks it. */
    for (size_t i = 0; i < strlen(tok); i++) {
        char *t = strdup(tok);
        t[i] = t[i] == 'A' ? 'B' : (t[i] == '.' ? 'x' : 'A');
        ck_assert_msg(sl_resume_token_verify(SECRET, t, "acme", "sess-1", NOW, sub) != SL_OK,
                      "changed at %zu", i);
        free(t);
    }
    /* Truncated, extended, empty, too long. */
    t2 = strndup(tok, strlen(tok) - 1);
    ck_assert_int_ne(sl_resume_token_verify(SECRET, t2, "acme", "sess-1", NOW, sub), SL_OK);
    free(t2);
    ck_assert_int_ge(asprintf(&t2, "%sA", tok), 0);
    ck_assert_int_ne(sl_resume_token_verify(SECRET, t2, "acme", "sess-1", NOW, sub), SL_OK);
    free(t2);
    ck_assert_int_eq(sl_resume_token_verify(SECRET, "", "acme", "sess-1", NOW, sub), SL_ERR_INVAL);
    ck_assert_int_eq(sl_resume_token_verify(SECRET, NULL, "acme", "sess-1", NOW, sub),
                     SL_ERR_INVAL);
    t2 = malloc(SL_RESUME_TOKEN_MAX + 2);
    memset(t2, 'A', SL_RESUME_TOKEN_MAX + 1);
    t2[SL_RESUME_TOKEN_MAX + 1] = '\0';
    memcpy(t2, tok, strlen(tok));
    ck_assert_int_eq(sl_resume_token_verify(SECRET, t2, "acme", "sess-1", NOW, sub), SL_ERR_INVAL);
    free(t2);

    /* Resume tokens and JWTs made with one secret never pass for each other. */
    ck_assert_int_ne(verify(a, tok, NULL), SL_OK);
    ck_assert_int_eq(sl_jwt_mint_hs256(SECRET, "acme", "u1", NOW + 60, NULL, 0, &t2), SL_OK);
    ck_assert_int_ne(sl_resume_token_verify(SECRET, t2, "acme", "sess-1", NOW, sub), SL_OK);
    free(t2);

    /* The MAC key is derived from the secret, not the secret itself: the
     * same payload MAC'd with the raw secret is refused. */
    {
        char *signing = strndup(tok, (size_t)(strrchr(tok, '.') - tok)), *s;
        unsigned char mac[32];
        unsigned int ml = 0;

        HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)signing, strlen(signing),
             mac, &ml);
        s = b64u(mac, ml);
        ck_assert_int_ge(asprintf(&t2, "%s.%s", signing, s), 0);
        ck_assert_str_ne(t2, tok);
        ck_assert_int_eq(sl_resume_token_verify(SECRET, t2, "acme", "sess-1", NOW, sub),
                         SL_ERR_AUTH);
        free(t2);
        free(s);
        free(signing);
    }

    /* Bad arguments to make. */
    t2 = NULL;
    ck_assert_int_eq(sl_resume_token_make("", "acme", "s", "u", NOW, &t2), SL_ERR_INVAL);
    ck_assert_int_eq(sl_resume_token_make(SECRET, "a.b", "s", "u", NOW, &t2), SL_ERR_INVAL);
    ck_assert_int_eq(sl_resume_token_make(SECRET, "acme", "s*", "u", NOW, &t2), SL_ERR_INVAL);
    ck_assert_int_eq(sl_resume_token_make(SECRET, "acme", "s", "a\nb", NOW, &t2), SL_ERR_INVAL);
    ck_assert_ptr_null(t2);
    free(tok);
    sl_auth_destroy(a);
}
END_TEST

/* ---- main --------------------------------------------------------------- */

static void write_pubkey(EVP_PKEY *k, char *path)
{
    int fd;
    FILE *f;

    strcpy(path, "/tmp/check_auth_XXXXXX");
    fd = mkstemp(path);
    if (fd < 0 || (f = fdopen(fd, "w")) == NULL || PEM_write_PUBKEY(f, k) != 1) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

static void setup_keys(void)
{
    BIO *mem = BIO_new(BIO_s_mem());
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    char *data = NULL;
    long n;
    FILE *f;
    int fd;

    rsa_a = EVP_RSA_gen(2048);
    rsa_b = EVP_RSA_gen(2048);
    if (rsa_a == NULL || rsa_b == NULL || ec == NULL || mem == NULL ||
        PEM_write_bio_PUBKEY(mem, rsa_a) != 1) {
        fprintf(stderr, "key generation failed\n");
        exit(1);
    }
    n = BIO_get_mem_data(mem, &data);
    rsa_a_pem = strndup(data, (size_t)n);
    BIO_free(mem);
    write_pubkey(rsa_a, rsa_a_path);
    write_pubkey(ec, ec_path);
    EVP_PKEY_free(ec);
    strcpy(garbage_path, "/tmp/check_auth_XXXXXX");
    fd = mkstemp(garbage_path);
    if (fd < 0 || (f = fdopen(fd, "w")) == NULL) {
        fprintf(stderr, "cannot write %s\n", garbage_path);
        exit(1);
    }
    fputs("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n", f);
    fclose(f);
}

static Suite *auth_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("auth");

    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_valid);
    tcase_add_test(tc, test_expired);
    tcase_add_test(tc, test_wrong_key_and_tampering);
    tcase_add_test(tc, test_alg_none_and_others);
    tcase_add_test(tc, test_malformed);
    tcase_add_test(tc, test_claims);
    tcase_add_test(tc, test_role);
    tcase_add_test(tc, test_rooms);
    tcase_add_test(tc, test_mint_invalid);
    tcase_add_test(tc, test_rs256);
    tcase_add_test(tc, test_create_errors);
    tcase_add_test(tc, test_resume);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr;
    int failed;

    sl_log_init("check_auth", SL_LOG_ERROR);
    setup_keys();
    sr = srunner_create(auth_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    unlink(rsa_a_path);
    unlink(ec_path);
    unlink(garbage_path);
    EVP_PKEY_free(rsa_a);
    EVP_PKEY_free(rsa_b);
    free(rsa_a_pem);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
