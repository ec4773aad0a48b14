/* libFuzzer target: id validation and subject names (common/sl_subject.c).
 *
 * Input: byte 0 is the output buffer size n (0..255) for the builders;
 * byte 1 chooses is_room (bit 0) and the channel prefix (bits 1-2:
 * "sluice.out", "sluice.live", or the fourth string); the rest is up to
 * four strings a, b, c, d separated by NUL bytes (missing ones are "").
 *
 * Properties checked on every input:
 *   - sl_id_valid() and sl_client_id_valid() agree with independent
 *     checks of [A-Za-z0-9_-]{1,64} and [A-Za-z0-9_.:-]{1,64}; an accepted
 *     id never holds '.', '*', '>', whitespace or a control byte (a client
 *     id never holds '*', '>', whitespace or a control byte).
 *   - sl_channel_parse() accepts exactly "s" and "r:<id>", and points at
 *     the room inside the string.
 *   - Each subject and key builder succeeds exactly when its ids are valid
 *     and the result fits in n bytes, then writes exactly the expected
 *     string, whose tokens are non-empty and free of '*', '>' and
 *     whitespace; it never writes past n bytes (the buffer is malloc'd to
 *     exactly n, so ASan sees one byte too many).
 *   - Channel subjects round-trip: sl_subject_chan_parse() of a built
 *     subject gives back its tenant, kind and name, and any subject that
 *     sl_subject_chan_parse() accepts is rebuilt byte for byte.
 *   - sl_cancel_key() is "<tenant>.x-" and the first 20 bytes of
 *     SHA-256("<session>:<client id>") in lowercase hex.
 *
 * Built with -DFUZZ_SEEDS, this file is instead a program that writes the
 * seed corpus into the directory given as its argument, running each seed
 * through the checks. */
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_ref.h"
#include "sl_subject.h"

#define NSTR 4

/* No byte of s could change how NATS splits or matches a subject. */
static bool subject_safe(const char *s, bool allow_dot)
{
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '*' || c == '>' || c <= ' ' || c == 0x7f || c >= 0x80 || (!allow_dot && c == '.'))
            return false;
    }
    return true;
}

/* A built subject: ntok non-empty tokens, each subject_safe. */
static void check_tokens(const char *subj, int ntok)
{
    char copy[SL_SUBJECT_MAX + 1];
    char *save = NULL, *tok;
    int n = 0;
    size_t len = strlen(subj);

    CHECK(len > 0 && len <= SL_SUBJECT_MAX);
    CHECK(subj[0] != '.' && subj[len - 1] != '.' && strstr(subj, "..") == NULL);
    memcpy(copy, subj, len + 1);
    for (tok = strtok_r(copy, ".", &save); tok != NULL; tok = strtok_r(NULL, ".", &save)) {
        CHECK(tok[0] != '\0' && subject_safe(tok, false));
        n++;
    }
    CHECK(n == ntok);
}

/* Checks one builder call: st against the expected string exp (NULL when
 * an id is invalid), for a buffer of n bytes. */
static void check_built(sl_status st, const char *buf, size_t n, const char *exp, int ntok)
{
    bool fits = exp != NULL && strlen(exp) < n;

    CHECK((st == SL_OK) == fits);
    if (st == SL_OK) {
        CHECK(strcmp(buf, exp) == 0);
        check_tokens(buf, ntok);
    } else {
        CHECK(st == SL_ERR_INVAL);
        /* With valid ids and a short buffer, an empty string is left. */
        CHECK(exp == NULL || n == 0 || buf[0] == '\0');
    }
}

/* Independent check of "<prefix>.<tenant>.(r|s).<name>": splits on dots. */
static bool ref_chan_parse(const char *s, char *tenant, bool *is_room, char *name)
{
    const char *p;
    const char *parts[3];
    size_t lens[3];
    int np = 0;

    if (strncmp(s, "sluice.out.", 11) == 0)
        p = s + 11;
    else if (strncmp(s, "sluice.live.", 12) == 0)
        p = s + 12;
    else
        return false;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (np == 3)
            return false;
        parts[np] = p;
        lens[np++] = len;
        if (dot == NULL)
            break;
        p = dot + 1;
    }
    if (np != 3 || lens[0] < 1 || lens[0] > SL_ID_MAX || lens[2] < 1 || lens[2] > SL_ID_MAX ||
        lens[1] != 1 || (parts[1][0] != 'r' && parts[1][0] != 's'))
        return false;
    memcpy(tenant, parts[0], lens[0]);
    tenant[lens[0]] = '\0';
    memcpy(name, parts[2], lens[2]);
    name[lens[2]] = '\0';
    *is_room = parts[1][0] == 'r';
    return ref_id(tenant, false) && ref_id(name, false);
}

static void check_ids(const char *s)
{
    bool is_room, ref;
    const char *room = NULL;
    sl_status st;

    CHECK(sl_id_valid(s) == ref_id(s, false));
    if (sl_id_valid(s))
        CHECK(subject_safe(s, false));
    CHECK(sl_client_id_valid(s) == ref_id(s, true));
    if (sl_client_id_valid(s))
        CHECK(subject_safe(s, true));

    st = sl_channel_parse(s, &is_room, &room);
    ref = strcmp(s, "s") == 0 || (strncmp(s, "r:", 2) == 0 && ref_id(s + 2, false));
    CHECK((st == SL_OK) == ref);
    if (st == SL_OK) {
        CHECK(is_room == (s[0] == 'r'));
        CHECK(is_room ? room == s + 2 : room == NULL);
    } else {
        CHECK(st == SL_ERR_INVAL);
    }
}

/* sl_subject_chan_parse() on arbitrary text, with exact-size outputs. */
static void check_chan_parse(const char *s)
{
    char *tenant = malloc(SL_ID_MAX + 1), *name = malloc(SL_ID_MAX + 1);
    char rt[SL_ID_MAX + 1], rn[SL_ID_MAX + 1], back[SL_SUBJECT_MAX];
    bool is_room = false, ris = false, ref;
    sl_status st;

    CHECK(tenant != NULL && name != NULL);
    st = sl_subject_chan_parse(s, tenant, &is_room, name);
    ref = ref_chan_parse(s, rt, &ris, rn);
    CHECK((st == SL_OK) == ref);
    if (st == SL_OK) {
        CHECK(strcmp(tenant, rt) == 0 && strcmp(name, rn) == 0 && is_room == ris);
        CHECK(sl_subject_chan(back, sizeof(back), s[7] == 'o' ? "sluice.out" : "sluice.live",
                              tenant, is_room, name) == SL_OK);
        CHECK(strcmp(back, s) == 0);
    }
    free(tenant);
    free(name);
}

static void check_cancel_key(size_t n, const char *t, const char *sess, const char *cid)
{
    char *buf = malloc(n > 0 ? n : 1);
    char exp[SL_ID_MAX + 48], joined[2 * SL_ID_MAX + 2];
    unsigned char md[SHA256_DIGEST_LENGTH];
    bool valid = ref_id(t, false) && ref_id(sess, false) && ref_id(cid, true);
    sl_status st;

    CHECK(buf != NULL);
    st = sl_cancel_key(buf, n, t, sess, cid);
    if (valid) {
        int len = snprintf(exp, sizeof(exp), "%s.x-", t);
        snprintf(joined, sizeof(joined), "%s:%s", sess, cid);
        SHA256((const unsigned char *)joined, strlen(joined), md);
        for (int i = 0; i < 20; i++)
            len += snprintf(exp + len, sizeof(exp) - (size_t)len, "%02x", md[i]);
    }
    check_built(st, buf, n, valid ? exp : NULL, 2);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *str[NSTR];
    char *copy;
    char *buf, exp[4 * SL_ID_MAX + 64];
    const char *prefix;
    size_t n;
    bool is_room, valid;

    if (size < 2)
        return 0;
    n = data[0];
    is_room = data[1] & 1;
    prefix = (data[1] >> 1 & 3) == 0   ? "sluice.out"
             : (data[1] >> 1 & 3) == 1 ? "sluice.live"
                                       : NULL;
    copy = fz_split_nul(data + 2, size - 2, str, NSTR);
    if (prefix == NULL)
        prefix = str[3];

    for (int i = 0; i < NSTR; i++) {
        check_ids(str[i]);
        check_chan_parse(str[i]);
    }

    /* The builders, each into a buffer of exactly n bytes. */
    buf = malloc(n > 0 ? n : 1);
    CHECK(buf != NULL);
    valid = ref_id(str[0], false) && ref_id(str[1], false);
    snprintf(exp, sizeof(exp), "sluice.in.%s.%s", str[0], str[1]);
    check_built(sl_subject_in(buf, n, str[0], str[1]), buf, n, valid ? exp : NULL, 4);

    snprintf(exp, sizeof(exp), "sluice.work.%s.%s", str[0], str[1]);
    check_built(sl_subject_work(buf, n, str[0], str[1]), buf, n, valid ? exp : NULL, 4);

    snprintf(exp, sizeof(exp), "%s.%s", str[0], str[1]);
    check_built(sl_kv_key2(buf, n, str[0], str[1]), buf, n, valid ? exp : NULL, 2);

    snprintf(exp, sizeof(exp), "%s.%s.%s", str[0], str[1], str[2]);
    check_built(sl_kv_key3(buf, n, str[0], str[1], str[2]), buf, n,
                valid && ref_id(str[2], false) ? exp : NULL, 3);

    snprintf(exp, sizeof(exp), "sluice.ctl.cancel.%s", str[0]);
    check_built(sl_subject_cancel(buf, n, str[0]), buf, n, ref_id(str[0], false) ? exp : NULL, 4);

    snprintf(exp, sizeof(exp), "%s.%s.%s.%s", prefix, str[0], is_room ? "r" : "s", str[1]);
    valid = valid && (strcmp(prefix, "sluice.out") == 0 || strcmp(prefix, "sluice.live") == 0);
    check_built(sl_subject_chan(buf, n, prefix, str[0], is_room, str[1]), buf, n,
                valid ? exp : NULL, 5);
    if (valid && strlen(exp) < n) {
        char tenant[SL_ID_MAX + 1], name[SL_ID_MAX + 1];
        bool r = !is_room;
        CHECK(sl_subject_chan_parse(buf, tenant, &r, name) == SL_OK);
        CHECK(strcmp(tenant, str[0]) == 0 && strcmp(name, str[1]) == 0 && r == is_room);
    }
    free(buf);

    check_cancel_key(n, str[0], str[1], str[2]);
    free(copy);
    return 0;
}

#ifdef FUZZ_SEEDS
/* Writes one seed: buffer size n, mode byte, then the strings joined by
 * NUL bytes. */
static void seed(const char *name, unsigned n, unsigned mode, const char *const *s, int ns)
{
    unsigned char data[1024];

    data[0] = (unsigned char)n;
    data[1] = (unsigned char)mode;
    fz_seed(name, data, fz_seed_join(data, sizeof(data), 2, s, ns));
}

int main(int argc, char **argv)
{
    static const char *const valid[] = {"acme", "S0000000000000000000000", "c-17:x.y", "lobby"};
    static const char *const live[] = {"sluice.live.acme.r.lobby", "sluice.out.acme.s.S1",
                                       "r:lobby", "s"};
    static const char *const inject[] = {"acme.b", "lob*", "sluice.out.acme.r.>", "r:a b"};
    static const char *const space[] = {"ac me", "a\tb", "team\n", "\xc3\xa9t\xc3\xa9"};
    static const char *const longid[] = {
        "0123456789012345678901234567890123456789012345678901234567890123",
        "01234567890123456789012345678901234567890123456789012345678901234", "a", "b"};
    static const char *const bad_chan[] = {"sluice.out.acme.x.lobby", "sluice.out.acme.r.",
                                           "sluice.out..r.lobby", "sluice.out.acme.r.lobby.x"};
    static const char *const prefix[] = {"acme", "lobby", "c-1", "sluice.in"};

    if (!fz_seed_args(argc, argv, "subject"))
        return 2;
    seed("valid_out_room", 255, 0 | 1, valid, 4);
    seed("valid_live_session", 255, 2, valid, 4);
    seed("valid_short_buffer", 12, 1, valid, 4);
    seed("valid_exact_buffer", 27, 1, valid, 4);
    seed("zero_buffer", 0, 1, valid, 4);
    seed("subjects_and_channels", 255, 1, live, 4);
    seed("injection", 255, 1, inject, 4);
    seed("whitespace_unicode", 255, 0, space, 4);
    seed("id_64_and_65", 255, 1, longid, 4);
    seed("bad_channel_subjects", 255, 3, bad_chan, 4);
    seed("foreign_prefix", 255, 4, prefix, 4);
    seed("empty", 255, 0, valid, 0);
    return fz_seed_done();
}
#endif
