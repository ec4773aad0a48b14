#include "sl_subject.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

static bool id_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

bool sl_id_valid(const char *s)
{
    size_t i;

    if (s == NULL)
        return false;
    for (i = 0; s[i] != '\0'; i++) {
        if (i >= SL_ID_MAX || !id_char(s[i]))
            return false;
    }
    return i > 0;
}

bool sl_client_id_valid(const char *s)
{
    size_t i;

    if (s == NULL)
        return false;
    for (i = 0; s[i] != '\0'; i++) {
        if (i >= SL_ID_MAX || !(id_char(s[i]) || s[i] == '.' || s[i] == ':'))
            return false;
    }
    return i > 0;
}

sl_status sl_channel_parse(const char *ch, bool *is_room, const char **room)
{
    if (ch == NULL)
        return SL_ERR_INVAL;
    if (strcmp(ch, "s") == 0) {
        *is_room = false;
        *room = NULL;
        return SL_OK;
    }
    if (ch[0] == 'r' && ch[1] == ':' && sl_id_valid(ch + 2)) {
        *is_room = true;
        *room = ch + 2;
        return SL_OK;
    }
    return SL_ERR_INVAL;
}

/* snprintf wrapper: SL_ERR_INVAL when the result would be truncated. */
static sl_status fmt_checked(char *buf, size_t n, int r)
{
    if (r < 0 || (size_t)r >= n) {
        if (n > 0)
            buf[0] = '\0';
        return SL_ERR_INVAL;
    }
    return SL_OK;
}

sl_status sl_subject_in(char *buf, size_t n, const char *tenant, const char *session)
{
    if (!sl_id_valid(tenant) || !sl_id_valid(session))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "sluice.in.%s.%s", tenant, session));
}

sl_status sl_subject_work(char *buf, size_t n, const char *model, const char *tenant)
{
    if (!sl_id_valid(model) || !sl_id_valid(tenant))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "sluice.work.%s.%s", model, tenant));
}

sl_status sl_subject_cancel(char *buf, size_t n, const char *tenant)
{
    if (!sl_id_valid(tenant))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "sluice.ctl.cancel.%s", tenant));
}

sl_status sl_subject_chan(char *buf, size_t n, const char *prefix, const char *tenant, bool is_room,
                          const char *name)
{
    if (prefix == NULL || (strcmp(prefix, "sluice.out") != 0 && strcmp(prefix, "sluice.live") != 0))
        return SL_ERR_INVAL;
    if (!sl_id_valid(tenant) || !sl_id_valid(name))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n,
                       snprintf(buf, n, "%s.%s.%s.%s", prefix, tenant, is_room ? "r" : "s", name));
}

sl_status sl_subject_out(char *buf, size_t n, const char *tenant, bool is_room, const char *name)
{
    return sl_subject_chan(buf, n, "sluice.out", tenant, is_room, name);
}

sl_status sl_subject_live(char *buf, size_t n, const char *tenant, bool is_room, const char *name)
{
    return sl_subject_chan(buf, n, "sluice.live", tenant, is_room, name);
}

sl_status sl_subject_live_tenant(char *buf, size_t n, const char *tenant)
{
    if (!sl_id_valid(tenant))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "sluice.live.%s.>", tenant));
}

sl_status sl_subject_work_filter(char *buf, size_t n, const char *model, const char *tenant)
{
    if (tenant != NULL && tenant[0] != '\0')
        return sl_subject_work(buf, n, model, tenant);
    if (!sl_id_valid(model))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "sluice.work.%s.>", model));
}

sl_status sl_subject_work_tenants(char *buf, size_t n, const char *model)
{
    if (!sl_id_valid(model))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "sluice.work.%s.*", model));
}

sl_status sl_subject_bell(char *buf, size_t n, const char *model, const char *tenant)
{
    if (!sl_id_valid(model) || !sl_id_valid(tenant))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "sluice.ctl.work.%s.%s", model, tenant));
}

sl_status sl_subject_bell_filter(char *buf, size_t n, const char *model)
{
    if (!sl_id_valid(model))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "sluice.ctl.work.%s.*", model));
}

/* Copies the dot-free token at *p into out (at most SL_ID_MAX chars) and
 * advances *p past it and its trailing dot, if any. */
static bool take_token(const char **p, char *out)
{
    const char *dot = strchr(*p, '.');
    size_t len = dot ? (size_t)(dot - *p) : strlen(*p);

    if (len == 0 || len > SL_ID_MAX)
        return false;
    memcpy(out, *p, len);
    out[len] = '\0';
    *p += len + (dot ? 1 : 0);
    return sl_id_valid(out);
}

sl_status sl_subject_chan_parse(const char *subject, char *tenant, bool *is_room, char *name)
{
    const char *p;
    char kind[SL_ID_MAX + 1];

    if (subject == NULL)
        return SL_ERR_INVAL;
    if (strncmp(subject, "sluice.out.", 11) == 0)
        p = subject + 11;
    else if (strncmp(subject, "sluice.live.", 12) == 0)
        p = subject + 12;
    else
        return SL_ERR_INVAL;
    if (!take_token(&p, tenant) || !take_token(&p, kind))
        return SL_ERR_INVAL;
    if (strcmp(kind, "r") != 0 && strcmp(kind, "s") != 0)
        return SL_ERR_INVAL;
    if (strchr(p, '.') != NULL || !take_token(&p, name))
        return SL_ERR_INVAL;
    *is_room = kind[0] == 'r';
    return SL_OK;
}

sl_status sl_kv_key2(char *buf, size_t n, const char *a, const char *b)
{
    if (!sl_id_valid(a) || !sl_id_valid(b))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "%s.%s", a, b));
}

sl_status sl_kv_key3(char *buf, size_t n, const char *a, const char *b, const char *c)
{
    if (!sl_id_valid(a) || !sl_id_valid(b) || !sl_id_valid(c))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "%s.%s.%s", a, b, c));
}

sl_status sl_cancel_key(char *buf, size_t n, const char *tenant, const char *session,
                        const char *client_id)
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    char hex[41];
    char joined[2 * SL_ID_MAX + 2];

    if (!sl_id_valid(tenant) || !sl_id_valid(session) || !sl_client_id_valid(client_id))
        return SL_ERR_INVAL;
    snprintf(joined, sizeof(joined), "%s:%s", session, client_id);
    SHA256((const unsigned char *)joined, strlen(joined), md);
    for (int i = 0; i < 20; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return fmt_checked(buf, n, snprintf(buf, n, "%s.x-%s", tenant, hex));
}

/* Parses "<prefix><a>" (b NULL) or "<prefix><a>.<b>": prefix ends with a
 * dot, each id is valid and nothing follows. */
static sl_status parse_ids(const char *subject, const char *prefix, char *a, char *b)
{
    const char *p;
    size_t plen = strlen(prefix);

    if (subject == NULL || strncmp(subject, prefix, plen) != 0)
        return SL_ERR_INVAL;
    p = subject + plen;
    if (!take_token(&p, a))
        return SL_ERR_INVAL;
    if (b == NULL)
        return p[-1] != '.' && *p == '\0' ? SL_OK : SL_ERR_INVAL;
    if (p[-1] != '.' || strchr(p, '.') != NULL || !take_token(&p, b))
        return SL_ERR_INVAL;
    return SL_OK;
}

sl_status sl_subject_in_parse(const char *subject, char *tenant, char *session)
{
    return parse_ids(subject, "sluice.in.", tenant, session);
}

sl_status sl_subject_work_parse(const char *subject, char *model, char *tenant)
{
    return parse_ids(subject, "sluice.work.", model, tenant);
}

sl_status sl_subject_cancel_parse(const char *subject, char *tenant)
{
    return parse_ids(subject, "sluice.ctl.cancel.", tenant, NULL);
}

sl_status sl_subject_bell_parse(const char *subject, char *model, char *tenant)
{
    return parse_ids(subject, "sluice.ctl.work.", model, tenant);
}

sl_status sl_subject_disconnect(char *buf, size_t n, const char *tenant)
{
    if (!sl_id_valid(tenant))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "sluice.ctl.disconnect.%s", tenant));
}

sl_status sl_subject_disconnect_parse(const char *subject, char *tenant)
{
    return parse_ids(subject, "sluice.ctl.disconnect.", tenant, NULL);
}

sl_status sl_kv_key_quota(char *buf, size_t n, const char *tenant, int64_t unix_s)
{
    if (!sl_id_valid(tenant) || unix_s < 0)
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "%s.%lld", tenant, (long long)unix_s));
}

sl_status sl_kv_key_usage(char *buf, size_t n, const char *tenant, int64_t slot, const char *agent)
{
    if (!sl_id_valid(tenant) || !sl_id_valid(agent) || slot < 0)
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "%s.%lld.%s", tenant, (long long)slot, agent));
}

/* Reads the decimal number (1 to 18 digits, no sign) at *p up to a '.' or
 * the end, and moves *p past the '.'. */
static bool take_number(const char **p, int64_t *out)
{
    int64_t v = 0;
    size_t k = 0;

    for (; (*p)[k] >= '0' && (*p)[k] <= '9'; k++) {
        if (k == 18)
            return false;
        v = v * 10 + ((*p)[k] - '0');
    }
    if (k == 0 || ((*p)[k] != '.' && (*p)[k] != '\0'))
        return false;
    *p += k + ((*p)[k] == '.' ? 1 : 0);
    *out = v;
    return true;
}

sl_status sl_kv_key_quota_parse(const char *key, char *tenant, int64_t *unix_s)
{
    const char *p = key;

    if (key == NULL || !take_token(&p, tenant) || p[-1] != '.' || !take_number(&p, unix_s) ||
        p[-1] == '.' || *p != '\0')
        return SL_ERR_INVAL;
    return SL_OK;
}

sl_status sl_kv_key_usage_parse(const char *key, char *tenant, int64_t *slot, char *agent)
{
    const char *p = key;

    if (key == NULL || !take_token(&p, tenant) || p[-1] != '.' || !take_number(&p, slot) ||
        p[-1] != '.' || strchr(p, '.') != NULL || !take_token(&p, agent))
        return SL_ERR_INVAL;
    return SL_OK;
}

sl_status sl_kv_key_tenant_filter(char *buf, size_t n, const char *tenant)
{
    if (!sl_id_valid(tenant))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "%s.>", tenant));
}

sl_status sl_kv_key_room_members_filter(char *buf, size_t n, const char *tenant, const char *room)
{
    if (!sl_id_valid(tenant) || !sl_id_valid(room))
        return SL_ERR_INVAL;
    return fmt_checked(buf, n, snprintf(buf, n, "%s.%s.*", tenant, room));
}
