#include "sl_streams.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "sl_bus.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_subject.h"
#include "sl_time.h"

#define NS_PER_S 1000000000LL

/* JetStream error codes (nats-server 2.9.10). */
#define JERR_INSUFFICIENT_RESOURCES 10023
#define JERR_STORAGE_RESOURCES      10047

/* Limits where 0 and -1 both mean "none". */
static bool limit_eq(int64_t a, int64_t b)
{
    return (a <= 0 && b <= 0) || a == b;
}

/* Names the configuration variable of a stream's or bucket's byte limit,
 * for error messages. */
static const char *max_bytes_var(const char *name)
{
    if (strcmp(name, SL_STREAM_IN) == 0)
        return "SLUICE_IN_MAX_BYTES";
    if (strcmp(name, SL_STREAM_WORK) == 0)
        return "SLUICE_WORK_MAX_BYTES";
    if (strcmp(name, SL_STREAM_OUT) == 0)
        return "SLUICE_OUT_MAX_BYTES";
    return "SLUICE_KV_MAX_BYTES";
}

/* A refused create or update of a stream: not enough storage on the
 * server for the limits asked is a configuration error (fatal, retrying
 * cannot help); anything else is left to a retry. */
static sl_status refused(const char *what, const char *name, int64_t max_bytes, natsStatus s,
                         jsErrCode jerr, char *err, size_t errlen)
{
    if (jerr == JERR_INSUFFICIENT_RESOURCES || jerr == JERR_STORAGE_RESOURCES) {
        sl_errf(err, errlen,
                "%s %s: the server has not enough JetStream storage for MaxBytes %" PRId64
                " (%s; the sum of SLUICE_*_MAX_BYTES must fit nats-server's max_file_store): "
                "%s (jerr %d)",
                what, name, max_bytes, max_bytes_var(name), nats_GetLastError(NULL), (int)jerr);
        return SL_ERR_INVAL;
    }
    sl_errf(err, errlen, "%s %s: %s (jerr %d)", what, name, natsStatus_GetText(s), (int)jerr);
    return SL_ERR_BUS;
}

/* Brings an existing stream's byte limit and discard policy (and, when
 * max_age is set, its MaxAge: the cancel bucket's TTL) to the wanted ones;
 * other limits stay as they are. have is modified. */
static sl_status update_limits(jsCtx *js, jsStreamConfig *have, int64_t max_bytes,
                               jsDiscardPolicy discard, int64_t max_age, char *err, size_t errlen)
{
    jsStreamInfo *upd = NULL;
    jsErrCode jerr = 0;
    int64_t old_bytes = have->MaxBytes, old_age = have->MaxAge;
    natsStatus s;

    if (have->MaxBytes == max_bytes && have->Discard == discard &&
        (max_age <= 0 || have->MaxAge == max_age))
        return SL_OK;
    have->MaxBytes = max_bytes;
    have->Discard = discard;
    if (max_age > 0) {
        have->MaxAge = max_age;
        if (have->Duplicates > max_age)
            have->Duplicates = max_age; /* the server wants it within MaxAge */
    }
    s = js_UpdateStream(&upd, js, have, NULL, &jerr);
    jsStreamInfo_Destroy(upd);
    if (s != NATS_OK)
        return refused("updating", have->Name, max_bytes, s, jerr, err, errlen);
    sl_info("stream %s updated: MaxBytes %" PRId64 " -> %" PRId64 ", MaxAge %" PRId64
            " s -> %" PRId64 " s, discard %s",
            have->Name, old_bytes, max_bytes, (int64_t)(old_age / NS_PER_S),
            (int64_t)(have->MaxAge / NS_PER_S), discard == js_DiscardNew ? "new" : "old");
    return SL_OK;
}

/* Creates the stream, or checks that the existing one is compatible and
 * brings its byte limit and discard policy to want's. */
static sl_status ensure_stream(jsCtx *js, jsStreamConfig *want, char *err, size_t errlen)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s;
    sl_status st = SL_OK;

    s = js_GetStreamInfo(&si, js, want->Name, NULL, &jerr);
    if (s == NATS_NOT_FOUND) {
        s = js_AddStream(&si, js, want, NULL, &jerr);
        if (s == NATS_OK) {
            sl_info("created stream %s", want->Name);
            goto cleanup;
        }
        if (jerr == JERR_INSUFFICIENT_RESOURCES || jerr == JERR_STORAGE_RESOURCES) {
            st = refused("creating stream", want->Name, want->MaxBytes, s, jerr, err, errlen);
            goto cleanup;
        }
        /* Another process may have created it in between: check it. */
        s = js_GetStreamInfo(&si, js, want->Name, NULL, &jerr);
    }
    if (s != NATS_OK) {
        sl_errf(err, errlen, "stream %s: %s (jerr %d)", want->Name, natsStatus_GetText(s),
                (int)jerr);
        st = SL_ERR_BUS;
        goto cleanup;
    }
    {
        jsStreamConfig *have = si->Config;
        bool subjects_ok = have->SubjectsLen == want->SubjectsLen;
        for (int i = 0; subjects_ok && i < want->SubjectsLen; i++)
            subjects_ok = strcmp(have->Subjects[i], want->Subjects[i]) == 0;
        if (!subjects_ok || have->Retention != want->Retention || have->Storage != want->Storage ||
            (want->RePublish != NULL && have->RePublish == NULL)) {
            sl_errf(err, errlen,
                    "stream %s exists with an incompatible configuration (subjects, retention, "
                    "storage or republish differ); fix or delete it with sluicectl",
                    want->Name);
            st = SL_ERR_INVAL;
            goto cleanup;
        }
        if (!limit_eq(have->MaxAge, want->MaxAge) ||
            !limit_eq(have->MaxMsgsPerSubject, want->MaxMsgsPerSubject) ||
            !limit_eq(have->Replicas, want->Replicas))
            sl_warn("stream %s has other limits than this process's configuration; keeping them",
                    want->Name);
        st = update_limits(js, have, want->MaxBytes, want->Discard, 0, err, errlen);
    }
cleanup:
    jsStreamInfo_Destroy(si);
    return st;
}

/* Creates the bucket, or brings an existing one's byte limit (and, when
 * sync_ttl, its TTL) to the configuration. */
static sl_status ensure_kv(jsCtx *js, const char *bucket, int64_t ttl_s, int replicas,
                           int64_t max_bytes, bool sync_ttl, char *err, size_t errlen)
{
    kvStore *kv = NULL;
    jsStreamInfo *si = NULL;
    char stream[64];
    kvConfig kc;
    jsErrCode jerr = 0;
    natsStatus s;
    sl_status st = SL_OK;

    snprintf(stream, sizeof(stream), "KV_%s", bucket);
    s = js_KeyValue(&kv, js, bucket);
    if (s == NATS_NOT_FOUND) {
        kvConfig_Init(&kc);
        kc.Bucket = bucket;
        kc.History = 1;
        kc.TTL = ttl_s * NS_PER_S;
        kc.StorageType = js_FileStorage;
        kc.Replicas = replicas;
        kc.MaxBytes = max_bytes;
        s = js_CreateKeyValue(&kv, js, &kc);
        if (s == NATS_OK) {
            sl_info("created bucket %s", bucket);
            goto cleanup;
        }
        if (strstr(nats_GetLastError(NULL), "insufficient") != NULL) {
            sl_errf(err, errlen,
                    "bucket %s: the server has not enough JetStream storage for MaxBytes %" PRId64
                    " (SLUICE_KV_MAX_BYTES; the sum of SLUICE_*_MAX_BYTES must fit "
                    "nats-server's max_file_store): %s",
                    bucket, max_bytes, nats_GetLastError(NULL));
            st = SL_ERR_INVAL;
            goto cleanup;
        }
        s = js_KeyValue(&kv, js, bucket);
    }
    if (s == NATS_OK)
        s = js_GetStreamInfo(&si, js, stream, NULL, &jerr);
    if (s != NATS_OK) {
        sl_errf(err, errlen, "bucket %s: %s", bucket, natsStatus_GetText(s));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    /* Keep the discard policy the client library chose for buckets. */
    st = update_limits(js, si->Config, max_bytes, si->Config->Discard,
                       sync_ttl ? ttl_s * NS_PER_S : 0, err, errlen);
cleanup:
    jsStreamInfo_Destroy(si);
    kvStore_Destroy(kv);
    return st;
}

sl_status sl_streams_ensure(jsCtx *js, const sl_common_cfg *cfg, char *err, size_t errlen)
{
    const char *in_subj[] = {SL_SUBJECT_IN_ALL};
    const char *work_subj[] = {SL_SUBJECT_WORK_ALL};
    const char *out_subj[] = {SL_SUBJECT_OUT_ALL};
    jsRePublish rp = {.Source = SL_SUBJECT_OUT_ALL, .Destination = SL_SUBJECT_LIVE_ALL};
    jsStreamConfig in, work, out;
    int replicas = (int)cfg->stream_replicas;
    int64_t kv_bytes = cfg->kv_max_bytes;
    sl_status st;

    /* IN and OUT drop their oldest messages when full (IN: client messages
     * the orchestrators normally processed long before; OUT: the oldest
     * history), so the service goes on; WORK refuses new jobs (busy), as
     * it does for a full tenant queue. docs/operations.md has the why. */
    jsStreamConfig_Init(&in);
    in.Name = SL_STREAM_IN;
    in.Subjects = in_subj;
    in.SubjectsLen = 1;
    in.Retention = js_LimitsPolicy;
    in.Storage = js_FileStorage;
    in.MaxAge = 24 * 3600 * NS_PER_S;
    in.MaxBytes = cfg->in_max_bytes;
    in.Discard = js_DiscardOld;
    in.Duplicates = 120 * NS_PER_S;
    in.Replicas = cfg->stream_replicas;

    jsStreamConfig_Init(&work);
    work.Name = SL_STREAM_WORK;
    work.Subjects = work_subj;
    work.SubjectsLen = 1;
    work.Retention = js_WorkQueuePolicy;
    work.Storage = js_FileStorage;
    work.MaxMsgsPerSubject = cfg->tenant_queue_max;
    work.MaxBytes = cfg->work_max_bytes;
    work.Discard = js_DiscardNew;
    work.DiscardNewPerSubject = true;
    work.Duplicates = 120 * NS_PER_S;
    work.MaxAge = 24 * 3600 * NS_PER_S;
    work.Replicas = cfg->stream_replicas;

    jsStreamConfig_Init(&out);
    out.Name = SL_STREAM_OUT;
    out.Subjects = out_subj;
    out.SubjectsLen = 1;
    out.Retention = js_LimitsPolicy;
    out.Storage = js_FileStorage;
    out.MaxAge = cfg->out_max_age_s * NS_PER_S;
    out.MaxMsgsPerSubject = cfg->out_history;
    out.MaxBytes = cfg->out_max_bytes;
    out.Discard = js_DiscardOld;
    out.Duplicates = 120 * NS_PER_S;
    out.AllowDirect = true;
    out.RePublish = &rp;
    out.Replicas = cfg->stream_replicas;

    if ((st = ensure_stream(js, &in, err, errlen)) != SL_OK ||
        (st = ensure_stream(js, &work, err, errlen)) != SL_OK ||
        (st = ensure_stream(js, &out, err, errlen)) != SL_OK)
        return st;
    if ((st = ensure_kv(js, SL_KV_SESSIONS, cfg->resume_window_s, replicas, kv_bytes, false, err,
                        errlen)) != SL_OK ||
        (st = ensure_kv(js, SL_KV_INFLIGHT, SL_INFLIGHT_TTL_S, replicas, kv_bytes, false, err,
                        errlen)) != SL_OK ||
        (st = ensure_kv(js, SL_KV_PRESENCE, SL_PRESENCE_TTL_S, replicas, kv_bytes, false, err,
                        errlen)) != SL_OK ||
        (st = ensure_kv(js, SL_KV_CANCEL, cfg->cancel_ttl_s, replicas, kv_bytes, true, err,
                        errlen)) != SL_OK ||
        (st = ensure_kv(js, SL_KV_QUOTA, SL_QUOTA_TTL_S, replicas, kv_bytes, false, err, errlen)) !=
            SL_OK ||
        (st = ensure_kv(js, SL_KV_USAGE, SL_USAGE_TTL_S, replicas, kv_bytes, false, err, errlen)) !=
            SL_OK)
        return st;
    return SL_OK;
}

/* ---- Sampling ------------------------------------------------------------ */

void sl_streams_sample(jsCtx *js)
{
    static const char *const names[] = {
        SL_STREAM_IN,         SL_STREAM_WORK,       SL_STREAM_OUT,
        "KV_" SL_KV_SESSIONS, "KV_" SL_KV_INFLIGHT, "KV_" SL_KV_PRESENCE,
        "KV_" SL_KV_CANCEL,   "KV_" SL_KV_QUOTA,    "KV_" SL_KV_USAGE};
    int64_t now_ns = sl_now_ns();
    jsOptions o;

    /* A short wait, and none after the first failure: the caller's thread
     * has other work. */
    jsOptions_Init(&o);
    o.Wait = 1000;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        jsStreamInfo *si = NULL;
        char labels[96];
        natsStatus s = js_GetStreamInfo(&si, js, names[i], &o, NULL);

        if (s == NATS_NOT_FOUND)
            continue;
        if (s != NATS_OK)
            break;
        snprintf(labels, sizeof(labels), "stream=\"%s\"", names[i]);
        sl_gauge_set(sl_gauge_get("sluice_stream_bytes", labels,
                                  "bytes stored in a Sluice stream or bucket (sampled)"),
                     (int64_t)si->State.Bytes);
        sl_gauge_set(sl_gauge_get("sluice_stream_max_bytes", labels,
                                  "the stream's or bucket's MaxBytes (-1: none)"),
                     si->Config->MaxBytes);
        sl_gauge_set(sl_gauge_get("sluice_stream_max_age_seconds", labels,
                                  "the stream's or bucket's MaxAge or TTL (0: none)"),
                     si->Config->MaxAge / NS_PER_S);
        sl_gauge_set(sl_gauge_get("sluice_stream_first_age_seconds", labels,
                                  "age of the oldest message kept (0: empty): what the stream "
                                  "still holds, in time"),
                     si->State.Msgs > 0 && si->State.FirstTime > 0
                         ? (now_ns - si->State.FirstTime) / NS_PER_S
                         : 0);
        jsStreamInfo_Destroy(si);
    }
}

/* snprintf result check: SL_ERR_INVAL (and "" in buf) when truncated. */
static sl_status fmt_checked(char *buf, size_t n, int r)
{
    if (r < 0 || (size_t)r >= n) {
        if (n > 0)
            buf[0] = '\0';
        return SL_ERR_INVAL;
    }
    return SL_OK;
}

/* Stream, bucket and consumer names: one token, no wildcard. */
static bool name_valid(const char *s)
{
    return s != NULL && s[0] != '\0' && strpbrk(s, ". *>\t\r\n") == NULL;
}

static sl_status refuse(char *buf, size_t n)
{
    if (n > 0)
        buf[0] = '\0';
    return SL_ERR_INVAL;
}

bool sl_js_is_ack_reply(const char *reply)
{
    return reply != NULL && strncmp(reply, "$JS.ACK.", 8) == 0;
}

bool sl_kv_key_valid(const char *key)
{
    size_t len;

    if (key == NULL || (len = strlen(key)) == 0 || key[0] == '.' || key[len - 1] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = key[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '/' || c == '_' || c == '=' || c == '.'))
            return false;
    }
    return true;
}

sl_status sl_kv_subject(char *buf, size_t n, const char *bucket, const char *key)
{
    if (!name_valid(bucket) || !sl_kv_key_valid(key))
        return refuse(buf, n);
    return fmt_checked(buf, n, snprintf(buf, n, "$KV.%s.%s", bucket, key));
}

sl_status sl_kv_direct_get_subject(char *buf, size_t n, const char *bucket, const char *key)
{
    if (!name_valid(bucket) || !sl_kv_key_valid(key))
        return refuse(buf, n);
    return fmt_checked(buf, n,
                       snprintf(buf, n, "$JS.API.DIRECT.GET.KV_%s.$KV.%s.%s", bucket, bucket, key));
}

sl_status sl_js_msg_next_subject(char *buf, size_t n, const char *stream, const char *consumer)
{
    if (!name_valid(stream) || !name_valid(consumer))
        return refuse(buf, n);
    return fmt_checked(buf, n,
                       snprintf(buf, n, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", stream, consumer));
}

sl_status sl_work_durable(char *buf, size_t n, const char *model, const char *tenant)
{
    bool legacy = tenant == NULL || tenant[0] == '\0';

    if (!sl_id_valid(model) || (!legacy && !sl_id_valid(tenant)))
        return refuse(buf, n);
    if (legacy)
        return fmt_checked(buf, n, snprintf(buf, n, "wrk_%s", model));
    return fmt_checked(buf, n, snprintf(buf, n, "wrk_%s~%s", model, tenant));
}

/* Copies the id of len bytes at p into out; false when it is not one. */
static bool copy_id(char *out, const char *p, size_t len)
{
    if (len == 0 || len > SL_ID_MAX)
        return false;
    memcpy(out, p, len);
    out[len] = '\0';
    return sl_id_valid(out);
}

sl_status sl_work_durable_parse(const char *consumer, char *model, char *tenant)
{
    const char *tilde;

    if (consumer == NULL || strncmp(consumer, "wrk_", 4) != 0)
        return SL_ERR_INVAL;
    consumer += 4;
    tilde = strchr(consumer, '~');
    if (tilde == NULL) {
        tenant[0] = '\0';
        return copy_id(model, consumer, strlen(consumer)) ? SL_OK : SL_ERR_INVAL;
    }
    if (!copy_id(model, consumer, (size_t)(tilde - consumer)) ||
        !copy_id(tenant, tilde + 1, strlen(tilde + 1)))
        return SL_ERR_INVAL;
    return SL_OK;
}
