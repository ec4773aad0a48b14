/* The bench's protocol adapters: Sluice, nats-server's websocket listener,
 * nginx+nchan and socket.io, each speaking its protocol over the engine's
 * WebSocket connections (sb_engine.h). The adapters call the engine; the
 * engine sees them only through the sb_adapter table its caller hands in. */
#ifndef SB_PROTO_H
#define SB_PROTO_H

#include "sb_engine.h"

/* Returns the adapter for a protocol (never NULL; static storage). */
const sb_adapter *sb_adapter_for(sb_proto_kind p);

#endif
