/*
 * peer_cache.h - the connections a node keeps to the peers it sends to (a
 * prefill node's decode nodes, a channel's destinations): one per address,
 * dialed on first use, kept while up, dialed again once down, the oldest
 * idle one closed when all places are taken. Internal.
 */
#ifndef KVRT_CLUSTER_PEER_CACHE_H
#define KVRT_CLUSTER_PEER_CACHE_H

#include "cluster_internal.h"

#define PEER_CACHE_MAX 64u
#define PEER_ADDRESS_MAX 255u

typedef struct peer_place {
    char address[PEER_ADDRESS_MAX + 1];
    kvrt_xfer_peer_t *peer;
    uint32_t users; /* gets not yet put: the peer is not closed under them */
} peer_place_t;

typedef struct peer_cache {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *agent;
    uint32_t connect_timeout_ms;
    peer_place_t places[PEER_CACHE_MAX];
    uint32_t next_evict;
} peer_cache_t;

/* The connection to `address` (blocking at most connect_timeout_ms to
 * dial), held until peer_cache_put: it is neither closed nor evicted
 * meanwhile. Errors: KVRT_ERR_PEER_FAILED (down with requests still in
 * flight or held by a get not yet put), KVRT_ERR_BUSY (every place carries
 * requests or is held), those of kvrt_xfer_connect. */
kvrt_status_t peer_cache_get(peer_cache_t *pc, const char *address, kvrt_xfer_peer_t **peer_out);
/* Lets go of a peer peer_cache_get returned. */
void peer_cache_put(peer_cache_t *pc, kvrt_xfer_peer_t *peer);
/* Disconnects every peer. */
void peer_cache_close(peer_cache_t *pc);

#endif /* KVRT_CLUSTER_PEER_CACHE_H */
