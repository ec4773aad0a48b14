#include "sl_streams.h"

#include <string.h>

#include "sl_bus.h"
#include "sl_log.h"

#define NS_PER_S 1000000000LL

/* Limits where 0 and -1 both mean "none". */
static bool limit_eq(int64_t a, int64_t b)
{
    return (a <= 0 && b <= 0) || a == b;
}

/* Creates the stream, or checks that the existing one is compatible. */
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
        /* Another process may have created it in between: check it. */
        s = js_GetStreamInfo(&si, js, want->Name, NULL, &jerr);
    }
    if (s != NATS_OK) {
        snprintf(err, errlen, "stream %s: %s (jerr %d)", want->Name, natsStatus_GetText(s),
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
            snprintf(err, errlen,
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
    }
cleanup:
    jsStreamInfo_Destroy(si);
    return st;
}

static sl_status ensure_kv(jsCtx *js, const char *bucket, int64_t ttl_s, int replicas, char *err,
                           size_t errlen)
{
    kvStore *kv = NULL;
    kvConfig kc;
    natsStatus s;

    s = js_KeyValue(&kv, js, bucket);
    if (s == NATS_NOT_FOUND) {
        kvConfig_Init(&kc);
        kc.Bucket = bucket;
        kc.History = 1;
        kc.TTL = ttl_s * NS_PER_S;
        kc.StorageType = js_FileStorage;
        kc.Replicas = replicas;
        s = js_CreateKeyValue(&kv, js, &kc);
        if (s != NATS_OK)
            s = js_KeyValue(&kv, js, bucket);
        else
            sl_info("created bucket %s", bucket);
    }
    kvStore_Destroy(kv);
    if (s != NATS_OK) {
        snprintf(err, errlen, "bucket %s: %s", bucket, natsStatus_GetText(s));
        return SL_ERR_BUS;
    }
    return SL_OK;
}

sl_status sl_streams_ensure(jsCtx *js, const sl_common_cfg *cfg, char *err, size_t errlen)
{
    const char *in_subj[] = {"sluice.in.>"};
    const char *work_subj[] = {"sluice.work.>"};
    const char *out_subj[] = {"sluice.out.>"};
    jsRePublish rp = {.Source = "sluice.out.>", .Destination = "sluice.live.>"};
    jsStreamConfig in, work, out;
    sl_status st;

    jsStreamConfig_Init(&in);
    in.Name = SL_STREAM_IN;
    in.Subjects = in_subj;
    in.SubjectsLen = 1;
    in.Retention = js_LimitsPolicy;
    in.Storage = js_FileStorage;
    in.MaxAge = 24 * 3600 * NS_PER_S;
    in.Duplicates = 120 * NS_PER_S;
    in.Replicas = cfg->stream_replicas;

    jsStreamConfig_Init(&work);
    work.Name = SL_STREAM_WORK;
    work.Subjects = work_subj;
    work.SubjectsLen = 1;
    work.Retention = js_WorkQueuePolicy;
    work.Storage = js_FileStorage;
    work.MaxMsgsPerSubject = cfg->tenant_queue_max;
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
    out.Duplicates = 120 * NS_PER_S;
    out.AllowDirect = true;
    out.RePublish = &rp;
    out.Replicas = cfg->stream_replicas;

    if ((st = ensure_stream(js, &in, err, errlen)) != SL_OK ||
        (st = ensure_stream(js, &work, err, errlen)) != SL_OK ||
        (st = ensure_stream(js, &out, err, errlen)) != SL_OK)
        return st;
    if ((st = ensure_kv(js, SL_KV_SESSIONS, cfg->resume_window_s, (int)cfg->stream_replicas, err,
                        errlen)) != SL_OK ||
        (st = ensure_kv(js, SL_KV_INFLIGHT, SL_INFLIGHT_TTL_S, (int)cfg->stream_replicas, err,
                        errlen)) != SL_OK ||
        (st = ensure_kv(js, SL_KV_PRESENCE, SL_PRESENCE_TTL_S, (int)cfg->stream_replicas, err,
                        errlen)) != SL_OK)
        return st;
    return SL_OK;
}
