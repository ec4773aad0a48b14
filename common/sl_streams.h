/* Idempotent provisioning of Sluice's streams and KV buckets (DESIGN.md):
 * creates what is missing; for what exists, a different retention,
 * subject set or storage is a fatal mismatch. The storage bounds
 * (SLUICE_*_MAX_BYTES: MaxBytes and the discard policy) and the cancel
 * bucket's TTL (SLUICE_CANCEL_TTL_S) are brought to this process's
 * configuration, so an upgrade bounds existing streams; other limits that
 * differ are logged and left as they are (the first configuration wins;
 * change them with sluicectl). */
#ifndef SL_STREAMS_H
#define SL_STREAMS_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>

#include "sl_config.h"
#include "sl_status.h"

#define SL_STREAM_IN      "SLUICE_IN"
#define SL_STREAM_WORK    "SLUICE_WORK"
#define SL_STREAM_OUT     "SLUICE_OUT"
#define SL_KV_SESSIONS    "sluice_sessions"
#define SL_KV_INFLIGHT    "sluice_inflight"
#define SL_KV_PRESENCE    "sluice_presence"
#define SL_KV_CANCEL      "sluice_cancel" /* cancel markers, TTL SLUICE_CANCEL_TTL_S */
#define SL_PRESENCE_TTL_S 75              /* 3 x the default 25 s heartbeat */
#define SL_INFLIGHT_TTL_S 3600
/* Token usage (docs/operations.md): per tenant and second for the quota's
 * sliding window (TTL: twice the longest window), and per tenant, 5-minute
 * slot and agent for a day of reports (TTL 26 h: the last 24 h stay whole). */
#define SL_KV_QUOTA    "sluice_quota"
#define SL_KV_USAGE    "sluice_usage"
#define SL_QUOTA_TTL_S 120
#define SL_USAGE_TTL_S (26 * 3600)

/* Subjects of the NATS server's JetStream and KV APIs, and the consumer
 * names of SLUICE_WORK: the wire names that belong to the streams and
 * buckets above are built here (Sluice's own subjects in sl_subject.h).
 * Each builder writes a NUL-terminated string into buf and returns SL_OK,
 * or SL_ERR_INVAL (buf holds "" when n > 0) when a name is invalid or buf
 * is too small. */

/* Advisories of work messages that exhausted their deliveries, and the
 * direct message read of the work stream. */
#define SL_JS_ADVISORY_WORK_MAX_DELIVERIES                                                         \
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." SL_STREAM_WORK ".*"
#define SL_JS_MSG_GET_WORK "$JS.API.STREAM.MSG.GET." SL_STREAM_WORK

/* True when reply is the reply subject of a JetStream delivery
 * ("$JS.ACK.<stream>.<consumer>...", where acks go). NULL is false. */
bool sl_js_is_ack_reply(const char *reply);

/* True when key is a valid KV key: [-/_=.A-Za-z0-9]+, not starting or
 * ending with a dot (the keys of sl_subject.h always are). */
bool sl_kv_key_valid(const char *key);

/* "$KV.<bucket>.<key>": a KV write is a publish there. */
sl_status sl_kv_subject(char *buf, size_t n, const char *bucket, const char *key);

/* "$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>": a direct read of a
 * key's last value (the bucket allows direct reads). */
sl_status sl_kv_direct_get_subject(char *buf, size_t n, const char *bucket, const char *key);

/* "$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>": a pull request. */
sl_status sl_js_msg_next_subject(char *buf, size_t n, const char *stream, const char *consumer);

/* The consumer of a work queue on SLUICE_WORK: "wrk_<model>~<tenant>",
 * or the model-wide legacy consumer "wrk_<model>" when tenant is NULL or
 * "". Its filter is sl_subject_work_filter() of the same ids. */
sl_status sl_work_durable(char *buf, size_t n, const char *model, const char *tenant);

/* Parses a consumer name made by sl_work_durable(): copies the model and
 * the tenant ("" for the legacy consumer), each at most SL_ID_MAX + 1
 * bytes with the NUL. SL_ERR_INVAL when consumer is NULL or not such a
 * name. */
sl_status sl_work_durable_parse(const char *consumer, char *model, char *tenant);

/* Ensures every stream and bucket. SL_OK; SL_ERR_BUS when NATS failed
 * (retry later); SL_ERR_INVAL on a configuration mismatch or when the
 * server has not enough storage for the limits asked (err says which, and
 * names the variable). */
sl_status sl_streams_ensure(jsCtx *js, const sl_common_cfg *cfg, char *err, size_t errlen);

/* Reads the info of every stream and bucket and sets the gauges
 * sluice_stream_bytes, sluice_stream_max_bytes,
 * sluice_stream_max_age_seconds and sluice_stream_first_age_seconds, with
 * a label stream="<stream name>" (buckets as KV_<bucket>). A stream that
 * cannot be read keeps its last values. Blocks for one request per stream
 * (each bounded to 1 s; the first failure ends the round): call it from a
 * thread that may wait. */
void sl_streams_sample(jsCtx *js);

#endif
