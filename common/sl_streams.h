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
