/* Idempotent provisioning of Sluice's streams and KV buckets (DESIGN.md):
 * creates what is missing; for what exists, a different retention,
 * subject set or storage is a fatal mismatch, while different limits are
 * logged and left as they are (the first configuration wins; change them
 * with sluicectl). */
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
#define SL_PRESENCE_TTL_S 75 /* 3 x the default 25 s heartbeat */
#define SL_INFLIGHT_TTL_S 3600

/* Ensures every stream and bucket. SL_OK; SL_ERR_BUS when NATS failed
 * (retry later); SL_ERR_INVAL on a configuration mismatch (err says
 * which). */
sl_status sl_streams_ensure(jsCtx *js, const sl_common_cfg *cfg, char *err, size_t errlen);

#endif
