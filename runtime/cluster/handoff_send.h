/*
 * handoff_send.h - the prefill side's sender and sends, shared by the
 * hand-off's send path (handoff_send.c) and the pull source
 * (pull_serve.c), which serves a pull as a send of blocks it holds in its
 * prefix cache or brings back from its tier stack. Internal.
 */
#ifndef KVRT_CLUSTER_HANDOFF_SEND_H
#define KVRT_CLUSTER_HANDOFF_SEND_H

#include "cluster_internal.h"
#include "handoff_wire.h"
#include "peer_cache.h"

/* Blocks all of a sender's pulls may hold onloading from its tier stack at
 * once: pullers cannot make a node give more of its pool to staging. */
#define SENDER_MAX_STAGED 16384u

struct kvrt_cluster_handoff_sender {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *agent;
    const kvrt_xfer_region_t *region;
    int integrity;
    uint32_t timeout_ms; /* 0: the agent's */
    uint32_t sends;      /* begun and not ended */
    peer_cache_t peers;  /* one connection per decode node */
    /* Pulls whose blocks the tier stack is still bringing back, ended or
     * not (an ended one keeps its blocks until then). */
    kvrt_cluster_handoff_send_t *onloading;
    uint32_t staged_blocks;
};

/* A pull source's blocks: [0, pinned) cached hits it holds a reference
 * on, then [pinned, pinned + staged) blocks it allocated for an onload
 * from its tier stack (cached once landed). */
typedef struct pull_source {
    kvrt_pool_t *pool;
    int32_t *blocks;
    uint32_t pinned;
    uint32_t staged;
    kvrt_tier_t *tier;
    uint64_t tier_ticket;
    bool onloading; /* the tier has not reported tier_ticket yet */
    bool ended;     /* send_end ran meanwhile: freed at the report */
    kvrt_cluster_handoff_send_t *next_onloading;
} pull_source_t;

struct kvrt_cluster_handoff_send {
    kvrt_cluster_handoff_sender_t *sender;
    kvrt_xfer_peer_t *peer;
    kvrt_xfer_remote_t *remote;
    handoff_ticket_t ticket;
    int32_t *remote_blocks;
    uint32_t posted; /* ticket blocks posted so far */
    uint32_t limit;  /* blocks this send will post (a pull source may hold
                        fewer than the ticket names) */
    uint64_t deadline_ns; /* local clock: send_begin + the ticket's budget */
    pull_source_t src;
    kvrt_xfer_request_t **requests;
    uint32_t num_requests;
    kvrt_status_t failure; /* first failed batch, else OK */
};

/* pull_serve.c: at send_end, gives the source's blocks back; false when
 * they wait for the tier's report (the send is freed then). */
bool pull_source_release(kvrt_cluster_handoff_send_t *send);
/* pull_serve.c: at sender destroy, gives back the blocks of ended pulls
 * still onloading (the tier stack is gone or has reported them). */
void pull_sources_abandon(kvrt_cluster_handoff_sender_t *sender);

#endif /* KVRT_CLUSTER_HANDOFF_SEND_H */
