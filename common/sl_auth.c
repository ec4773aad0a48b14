#include "sl_auth.h"

#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_config.h"
#include "sl_json.h"
#include "sl_log.h"
#include "sl_subject.h"
#include "sl_text.h"

#define MAC_LEN          32
#define SECRET_MAX       4096
#define RSA_MIN_BITS     2048
#define RESUME_PREFIX    "v1."
#define RESUME_KEY_LABEL "sluice resume token v1"

struct sl_auth {
    unsigned char *secret; /* NULL when HS256 is off */
    size_t secret_len;
    EVP_PKEY *pub; /* NULL when RS256 is off */
};

static const char b64url_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* ---- base64url without padding ---------------------------------------- */

static size_t b64url_len(size_t n)
{
    return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
}

/* Writes b64url_len(n) characters and a NUL to out. */
static void b64url_encode(const unsigned char *in, size_t n, char *out)
{
    size_t i = 0, o = 0;
    uint32_t v;

    for (; i + 3 <= n; i += 3) {
        v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url_chars[v >> 18 & 63];
        out[o++] = b64url_chars[v >> 12 & 63];
        out[o++] = b64url_chars[v >> 6 & 63];
        out[o++] = b64url_chars[v & 63];
    }
    if (n - i == 1) {
        v = (uint32_t)in[i] << 16;
        out[o++] = b64url_chars[v >> 18 & 63];
        out[o++] = b64url_chars[v >> 12 & 63];
    } else if (n - i == 2) {
        v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url_chars[v >> 18 & 63];
        out[o++] = b64url_chars[v >> 12 & 63];
        out[o++] = b64url_chars[v >> 6 & 63];
    }
    out[o] = '\0';
}

static int b64url_val(char ch)
{
    unsigned char c = (unsigned char)ch;

    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes n characters of unpadded base64url into a malloc'd buffer with a
 * NUL after the data. Refuses characters outside the alphabet, padding, an
 * impossible length and non-zero trailing bits, so every byte string has
 * exactly one accepted encoding. Returns SL_ERR_INVAL or SL_ERR_NOMEM. */
static sl_status b64url_decode(const char *in, size_t n, unsigned char **out, size_t *outlen)
{
    unsigned char *buf = NULL;
    size_t i = 0, o = 0;
    int v[4];

    if (n % 4 == 1)
        return SL_ERR_INVAL;
    buf = malloc(n / 4 * 3 + 3);
    if (buf == NULL)
        return SL_ERR_NOMEM;
    for (; i < n; i += 4) {
        size_t k, m = n - i < 4 ? n - i : 4;
        for (k = 0; k < 4; k++) {
            v[k] = k < m ? b64url_val(in[i + k]) : 0;
            if (v[k] < 0)
                goto bad;
        }
        if (m == 2 && (v[1] & 0x0f) != 0)
            goto bad;
        if (m == 3 && (v[2] & 0x03) != 0)
            goto bad;
        buf[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
        if (m > 2)
            buf[o++] = (unsigned char)((v[1] & 0x0f) << 4 | v[2] >> 2);
        if (m > 3)
            buf[o++] = (unsigned char)((v[2] & 0x03) << 6 | v[3]);
    }
    buf[o] = '\0';
    *out = buf;
    *outlen = o;
    return SL_OK;
bad:
    free(buf);
    return SL_ERR_INVAL;
}

/* Returns a malloc'd "<b64url(a)>.<b64url(b)>", or NULL on OOM. */
static char *b64url_join(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen)
{
    size_t la = b64url_len(alen), lb = b64url_len(blen);
    char *s = malloc(la + 1 + lb + 1);

    if (s == NULL)
        return NULL;
    b64url_encode(a, alen, s);
    s[la] = '.';
    b64url_encode(b, blen, s + la + 1);
    return s;
}

/* ---- small validators --------------------------------------------------- */

static bool is_id_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

/* 1..SL_SUB_MAX bytes of well-formed UTF-8 without C0/C1 controls or DEL. */
static bool sub_valid(const char *s)
{
    size_t n;

    if (s == NULL)
        return false;
    n = strlen(s);
    return n > 0 && n <= SL_SUB_MAX && sl_utf8_printable(s, n);
}

bool sl_user_valid(const char *s)
{
    return sub_valid(s);
}

bool sl_room_pattern_valid(const char *s)
{
    size_t n;

    if (s == NULL)
        return false;
    n = strlen(s);
    if (n >= 1 && s[n - 1] == '*') {
        if (n - 1 > SL_ID_MAX)
            return false;
        for (size_t i = 0; i + 1 < n; i++) {
            if (!is_id_char(s[i]))
                return false;
        }
        return true;
    }
    return sl_id_valid(s);
}

bool sl_claims_room_allowed(const sl_claims *c, const char *room)
{
    if (c == NULL || !sl_id_valid(room))
        return false;
    if (c->nrooms < 0)
        return true;
    for (int i = 0; i < c->nrooms && i < SL_ROOMS_MAX; i++) {
        const char *p = c->rooms[i];
        size_t n = strlen(p);

        if (n > 0 && p[n - 1] == '*') {
            if (strncmp(room, p, n - 1) == 0)
                return true;
        } else if (strcmp(room, p) == 0) {
            return true;
        }
    }
    return false;
}

/* An integral JSON number within +-2^53 (where doubles are exact). */
static bool json_int(const cJSON *item, int64_t *out)
{
    return sl_json_get_int(item, -SL_JSON_INT_MAX, SL_JSON_INT_MAX, out);
}

/* Parses len bytes (NUL-terminated at len) as exactly one JSON object.
 * An escaped NUL is refused like a raw one: cJSON would end the string
 * there, so a claim "tb\u0000x" would read as tenant "tb". */
static cJSON *parse_object(const unsigned char *buf, size_t len)
{
    cJSON *j;

    if (memchr(buf, '\0', len) != NULL || sl_json_has_nul_escape((const char *)buf, len))
        return NULL;
    j = cJSON_ParseWithOpts((const char *)buf, NULL, 1);
    if (j != NULL && !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        j = NULL;
    }
    return j;
}

/* ---- keys and MACs ---------------------------------------------------- */

static bool hmac_sha256(const void *key, size_t keylen, const void *msg, size_t len,
                        unsigned char mac[MAC_LEN])
{
    unsigned int n = 0;

    if (keylen > INT_MAX)
        return false;
    if (HMAC(EVP_sha256(), key, (int)keylen, msg, len, mac, &n) == NULL || n != MAC_LEN)
        return false;
    return true;
}

static bool rs256_ok(EVP_PKEY *pub, const char *msg, size_t len, const unsigned char *sig,
                     size_t siglen)
{
    EVP_MD_CTX *ctx = NULL;
    bool ok = false;

    if (siglen != (size_t)EVP_PKEY_get_size(pub))
        return false;
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return false;
    if (EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub) == 1 &&
        EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)msg, len) == 1)
        ok = true;
    EVP_MD_CTX_free(ctx);
    /* A failed verification leaves entries in this thread's error queue. */
    ERR_clear_error();
    return ok;
}

sl_status sl_auth_create(sl_auth **out, const char *hs256_secret, const char *rs256_pubkey_pem_path,
                         char *err, size_t errlen)
{
    sl_status st = SL_ERR_INVAL;
    sl_auth *a = NULL;
    FILE *f = NULL;
    EVP_PKEY *pk = NULL;
    size_t slen = 0;

    if (out == NULL) {
        sl_errf(err, errlen, "auth: no output pointer");
        goto cleanup;
    }
    if (hs256_secret == NULL && rs256_pubkey_pem_path == NULL) {
        sl_errf(err, errlen, "auth: neither an HS256 secret nor an RS256 public key is set");
        goto cleanup;
    }
    if (hs256_secret != NULL) {
        slen = strlen(hs256_secret);
        if (slen == 0 || slen > SECRET_MAX) {
            sl_errf(err, errlen, "auth: the HS256 secret must be 1..%d bytes", SECRET_MAX);
            goto cleanup;
        }
    }
    a = calloc(1, sizeof(*a));
    if (a == NULL) {
        st = SL_ERR_NOMEM;
        sl_errf(err, errlen, "auth: out of memory");
        goto cleanup;
    }
    if (hs256_secret != NULL) {
        a->secret = malloc(slen);
        if (a->secret == NULL) {
            st = SL_ERR_NOMEM;
            sl_errf(err, errlen, "auth: out of memory");
            goto cleanup;
        }
        memcpy(a->secret, hs256_secret, slen);
        a->secret_len = slen;
        if (slen < MAC_LEN)
            sl_warn("auth: the HS256 secret is shorter than %d bytes; use a longer random one",
                    MAC_LEN);
    }
    if (rs256_pubkey_pem_path != NULL) {
        f = fopen(rs256_pubkey_pem_path, "re");
        if (f == NULL) {
            sl_errf(err, errlen, "auth: cannot open RS256 public key %s: %s", rs256_pubkey_pem_path,
                    strerror(errno));
            goto cleanup;
        }
        pk = PEM_read_PUBKEY(f, NULL, NULL, NULL);
        if (pk == NULL) {
            sl_errf(err, errlen, "auth: %s holds no PEM public key", rs256_pubkey_pem_path);
            goto cleanup;
        }
        if (!EVP_PKEY_is_a(pk, "RSA")) {
            sl_errf(err, errlen, "auth: %s is not an RSA public key", rs256_pubkey_pem_path);
            goto cleanup;
        }
        if (EVP_PKEY_get_bits(pk) < RSA_MIN_BITS) {
            sl_errf(err, errlen, "auth: the RSA key in %s has %d bits; at least %d are needed",
                    rs256_pubkey_pem_path, EVP_PKEY_get_bits(pk), RSA_MIN_BITS);
            goto cleanup;
        }
        a->pub = pk;
        pk = NULL;
    }
    *out = a;
    a = NULL;
    st = SL_OK;
cleanup:
    if (f != NULL)
        fclose(f);
    EVP_PKEY_free(pk);
    sl_auth_destroy(a);
    ERR_clear_error();
    return st;
}

void sl_auth_destroy(sl_auth *a)
{
    if (a == NULL)
        return;
    if (a->secret != NULL) {
        OPENSSL_cleanse(a->secret, a->secret_len);
        free(a->secret);
    }
    EVP_PKEY_free(a->pub);
    free(a);
}

/* Fills c from an authentic payload; returns NULL or the reason it is bad. */
static const char *parse_claims(const cJSON *p, sl_claims *c)
{
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(p, "sub");
    const cJSON *tenant = cJSON_GetObjectItemCaseSensitive(p, "tenant");
    const cJSON *exp = cJSON_GetObjectItemCaseSensitive(p, "exp");
    const cJSON *rooms = cJSON_GetObjectItemCaseSensitive(p, "rooms");
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(p, "role");
    const cJSON *r;
    int n = 0;

    if (!cJSON_IsString(sub) || !sub_valid(sub->valuestring))
        return "sub missing or invalid";
    if (!cJSON_IsString(tenant) || !sl_id_valid(tenant->valuestring))
        return "tenant missing or invalid";
    if (!json_int(exp, &c->exp))
        return "exp missing or not an integer";
    memcpy(c->sub, sub->valuestring, strlen(sub->valuestring) + 1);
    memcpy(c->tenant, tenant->valuestring, strlen(tenant->valuestring) + 1);
    if (role != NULL && !cJSON_IsString(role))
        return "role is not a string";
    c->server = role != NULL && strcmp(role->valuestring, "server") == 0;
    c->nrooms = -1;
    if (rooms == NULL)
        return NULL;
    if (!cJSON_IsArray(rooms))
        return "rooms is not an array";
    cJSON_ArrayForEach(r, rooms)
    {
        if (n >= SL_ROOMS_MAX)
            return "too many rooms";
        if (!cJSON_IsString(r) || !sl_room_pattern_valid(r->valuestring))
            return "invalid entry in rooms";
        memcpy(c->rooms[n], r->valuestring, strlen(r->valuestring) + 1);
        n++;
    }
    c->nrooms = n;
    return NULL;
}

sl_status sl_auth_verify(const sl_auth *a, const char *token, int64_t now, sl_claims *out,
                         char *why, size_t whylen)
{
    sl_status st = SL_ERR_INVAL;
    const char *reason = "malformed token";
    const char *dot1, *dot2;
    unsigned char *hdr = NULL, *pay = NULL, *sig = NULL;
    size_t len, hdr_len = 0, pay_len = 0, sig_len = 0;
    cJSON *hj = NULL, *pj = NULL;
    const cJSON *alg, *nbf_item;
    unsigned char mac[MAC_LEN];
    int64_t nbf;
    sl_claims c;

    if (a == NULL || token == NULL || out == NULL) {
        reason = "no token";
        goto cleanup;
    }
    len = strnlen(token, SL_TOKEN_MAX + 1);
    if (len > SL_TOKEN_MAX) {
        reason = "token too long";
        goto cleanup;
    }
    dot1 = memchr(token, '.', len);
    dot2 = dot1 == NULL ? NULL : memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
    if (dot2 == NULL || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL) {
        reason = "token is not three segments";
        goto cleanup;
    }
    if ((st = b64url_decode(token, (size_t)(dot1 - token), &hdr, &hdr_len)) != SL_OK ||
        (st = b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &pay, &pay_len)) != SL_OK ||
        (st = b64url_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), &sig, &sig_len)) != SL_OK) {
        reason = st == SL_ERR_NOMEM ? "out of memory" : "bad base64url";
        goto cleanup;
    }
    st = SL_ERR_INVAL;
    hj = parse_object(hdr, hdr_len);
    if (hj == NULL) {
        reason = "header is not a JSON object";
        goto cleanup;
    }
    alg = cJSON_GetObjectItemCaseSensitive(hj, "alg");
    if (!cJSON_IsString(alg) || alg->valuestring == NULL) {
        reason = "alg missing or not a string";
        goto cleanup;
    }

    st = SL_ERR_AUTH;
    if (cJSON_GetObjectItemCaseSensitive(hj, "crit") != NULL) {
        reason = "crit header not supported";
        goto cleanup;
    }
    if (strcmp(alg->valuestring, "HS256") == 0 && a->secret != NULL) {
        if (!hmac_sha256(a->secret, a->secret_len, token, (size_t)(dot2 - token), mac)) {
            reason = "hmac failed";
            goto cleanup;
        }
        if (sig_len != MAC_LEN || CRYPTO_memcmp(mac, sig, MAC_LEN) != 0) {
            reason = "bad signature";
            goto cleanup;
        }
    } else if (strcmp(alg->valuestring, "RS256") == 0 && a->pub != NULL) {
        if (!rs256_ok(a->pub, token, (size_t)(dot2 - token), sig, sig_len)) {
            reason = "bad signature";
            goto cleanup;
        }
    } else {
        reason = "alg not accepted";
        goto cleanup;
    }

    st = SL_ERR_INVAL;
    pj = parse_object(pay, pay_len);
    if (pj == NULL) {
        reason = "payload is not a JSON object";
        goto cleanup;
    }
    memset(&c, 0, sizeof(c));
    if ((reason = parse_claims(pj, &c)) != NULL)
        goto cleanup;
    nbf_item = cJSON_GetObjectItemCaseSensitive(pj, "nbf");
    if (nbf_item != NULL) {
        if (!json_int(nbf_item, &nbf)) {
            reason = "nbf is not an integer";
            goto cleanup;
        }
        if (now < nbf) {
            st = SL_ERR_AUTH;
            reason = "token not yet valid";
            goto cleanup;
        }
    }
    if (now >= c.exp) {
        st = SL_ERR_EXPIRED;
        reason = "token expired";
        goto cleanup;
    }
    *out = c;
    st = SL_OK;
cleanup:
    if (st != SL_OK)
        sl_errf(why, whylen, "%s", reason);
    cJSON_Delete(hj);
    cJSON_Delete(pj);
    free(hdr);
    free(pay);
    free(sig);
    return st;
}

/* Appends ".<b64url(HMAC(key, signed))>" to signed (a malloc'd string);
 * returns the new malloc'd token or NULL. signed is freed in every case. */
static char *append_mac(char *signed_part, const void *key, size_t keylen)
{
    unsigned char mac[MAC_LEN];
    size_t n;
    char *tok;

    if (signed_part == NULL)
        return NULL;
    n = strlen(signed_part);
    tok = malloc(n + 1 + b64url_len(MAC_LEN) + 1);
    if (tok == NULL || !hmac_sha256(key, keylen, signed_part, n, mac)) {
        free(tok);
        free(signed_part);
        return NULL;
    }
    memcpy(tok, signed_part, n);
    tok[n] = '.';
    b64url_encode(mac, MAC_LEN, tok + n + 1);
    free(signed_part);
    return tok;
}

sl_status sl_jwt_mint_hs256(const char *secret, const char *tenant, const char *sub, int64_t exp,
                            const char *const *rooms, int nrooms, char **out)
{
    return sl_jwt_mint_hs256_role(secret, tenant, sub, exp, rooms, nrooms, NULL, out);
}

sl_status sl_jwt_mint_hs256_role(const char *secret, const char *tenant, const char *sub,
                                 int64_t exp, const char *const *rooms, int nrooms,
                                 const char *role, char **out)
{
    static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    sl_status st = SL_ERR_INVAL;
    cJSON *p = NULL, *arr = NULL;
    char *payload = NULL, *tok = NULL;

    if (secret == NULL || secret[0] == '\0' || strlen(secret) > SECRET_MAX ||
        !sl_id_valid(tenant) || !sub_valid(sub) || out == NULL || exp > SL_JSON_INT_MAX ||
        exp < -SL_JSON_INT_MAX || (role != NULL && !sl_id_valid(role)))
        goto cleanup;
    if (rooms != NULL) {
        if (nrooms < 0 || nrooms > SL_ROOMS_MAX)
            goto cleanup;
        for (int i = 0; i < nrooms; i++) {
            if (!sl_room_pattern_valid(rooms[i]))
                goto cleanup;
        }
    }
    st = SL_ERR_NOMEM;
    p = cJSON_CreateObject();
    if (p == NULL || cJSON_AddStringToObject(p, "sub", sub) == NULL ||
        cJSON_AddStringToObject(p, "tenant", tenant) == NULL ||
        sl_json_add_int(p, "exp", exp) == NULL ||
        (role != NULL && cJSON_AddStringToObject(p, "role", role) == NULL))
        goto cleanup;
    if (rooms != NULL) {
        arr = cJSON_AddArrayToObject(p, "rooms");
        if (arr == NULL)
            goto cleanup;
        for (int i = 0; i < nrooms; i++) {
            cJSON *s = cJSON_CreateString(rooms[i]);
            if (s == NULL || !cJSON_AddItemToArray(arr, s)) {
                cJSON_Delete(s);
                goto cleanup;
            }
        }
    }
    payload = cJSON_PrintUnformatted(p);
    if (payload == NULL)
        goto cleanup;
    tok = append_mac(b64url_join((const unsigned char *)header, sizeof(header) - 1,
                                 (const unsigned char *)payload, strlen(payload)),
                     secret, strlen(secret));
    if (tok == NULL)
        goto cleanup;
    *out = tok;
    st = SL_OK;
cleanup:
    cJSON_Delete(p);
    free(payload);
    return st;
}

/* The resume-token key is HMAC(secret, label): a token MAC'd with it can
 * never verify as a JWT signed with the secret itself, and vice versa. */
static bool resume_key(const char *secret, unsigned char key[MAC_LEN])
{
    size_t n;

    if (secret == NULL)
        return false;
    n = strlen(secret);
    if (n == 0 || n > SECRET_MAX)
        return false;
    return hmac_sha256(secret, n, RESUME_KEY_LABEL, strlen(RESUME_KEY_LABEL), key);
}

sl_status sl_resume_token_make(const char *secret, const char *tenant, const char *session,
                               const char *sub, int64_t exp, char **out)
{
    unsigned char key[MAC_LEN];
    char payload[SL_ID_MAX * 2 + SL_SUB_MAX + 32];
    char *signed_part = NULL, *tok = NULL;
    size_t plen, blen;
    int n;

    if (out == NULL || !sl_id_valid(tenant) || !sl_id_valid(session) || !sub_valid(sub))
        return SL_ERR_INVAL;
    if (!resume_key(secret, key))
        return SL_ERR_INVAL;
    /* sub has no control characters, so '\n' separates unambiguously. */
    n = snprintf(payload, sizeof(payload), "%s\n%s\n%lld\n%s", tenant, session, (long long)exp,
                 sub);
    if (n < 0 || (size_t)n >= sizeof(payload)) {
        OPENSSL_cleanse(key, sizeof(key));
        return SL_ERR_INVAL;
    }
    plen = (size_t)n;
    blen = b64url_len(plen);
    signed_part = malloc(strlen(RESUME_PREFIX) + blen + 1);
    if (signed_part != NULL) {
        memcpy(signed_part, RESUME_PREFIX, strlen(RESUME_PREFIX));
        b64url_encode((const unsigned char *)payload, plen, signed_part + strlen(RESUME_PREFIX));
        tok = append_mac(signed_part, key, sizeof(key));
    }
    OPENSSL_cleanse(key, sizeof(key));
    if (tok == NULL)
        return SL_ERR_NOMEM;
    *out = tok;
    return SL_OK;
}

sl_status sl_resume_token_verify(const char *secret, const char *token, const char *tenant,
                                 const char *session, int64_t now, char *sub_out)
{
    sl_status st = SL_ERR_INVAL;
    unsigned char key[MAC_LEN], mac[MAC_LEN];
    unsigned char *sig = NULL, *pay = NULL;
    size_t len, sig_len = 0, pay_len = 0, pfx = strlen(RESUME_PREFIX);
    const char *dot;
    char *f[4] = {NULL, NULL, NULL, NULL};
    char *cur;
    int64_t exp;
    bool have_key = false;

    if (token == NULL || tenant == NULL || session == NULL || sub_out == NULL)
        goto cleanup;
    if (!(have_key = resume_key(secret, key)))
        goto cleanup;
    len = strnlen(token, SL_RESUME_TOKEN_MAX + 1);
    if (len > SL_RESUME_TOKEN_MAX || len < pfx || memcmp(token, RESUME_PREFIX, pfx) != 0)
        goto cleanup;
    dot = memchr(token + pfx, '.', len - pfx);
    if (dot == NULL || memchr(dot + 1, '.', len - (size_t)(dot + 1 - token)) != NULL)
        goto cleanup;
    if ((st = b64url_decode(dot + 1, len - (size_t)(dot + 1 - token), &sig, &sig_len)) != SL_OK)
        goto cleanup;
    st = SL_ERR_AUTH;
    if (!hmac_sha256(key, sizeof(key), token, (size_t)(dot - token), mac) || sig_len != MAC_LEN ||
        CRYPTO_memcmp(mac, sig, MAC_LEN) != 0)
        goto cleanup;

    /* Authentic from here on; a bad payload means a bug on the making side. */
    if ((st = b64url_decode(token + pfx, (size_t)(dot - token) - pfx, &pay, &pay_len)) != SL_OK)
        goto cleanup;
    st = SL_ERR_INVAL;
    if (memchr(pay, '\0', pay_len) != NULL)
        goto cleanup;
    cur = (char *)pay;
    for (int i = 0; i < 3; i++) {
        char *nl = strchr(cur, '\n');
        if (nl == NULL)
            goto cleanup;
        *nl = '\0';
        f[i] = cur;
        cur = nl + 1;
    }
    f[3] = cur;
    if (!sl_id_valid(f[0]) || !sl_id_valid(f[1]) || !sub_valid(f[3]) ||
        sl_parse_int(f[2], &exp) != SL_OK)
        goto cleanup;
    st = SL_ERR_AUTH;
    if (strcmp(f[0], tenant) != 0 || strcmp(f[1], session) != 0)
        goto cleanup;
    st = SL_ERR_EXPIRED;
    if (now >= exp)
        goto cleanup;
    memcpy(sub_out, f[3], strlen(f[3]) + 1);
    st = SL_OK;
cleanup:
    if (have_key)
        OPENSSL_cleanse(key, sizeof(key));
    free(sig);
    free(pay);
    return st;
}
