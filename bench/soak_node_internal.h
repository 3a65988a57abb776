/*
 * soak_node_internal.h - the state of one kvrt-soak node, shared by its
 * main loop (soak_node.c: requests, steps, pulls, tiers) and its
 * prefill/decode hand-offs (soak_handoff.c).
 */
#ifndef KVRT_BENCH_SOAK_NODE_INTERNAL_H
#define KVRT_BENCH_SOAK_NODE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kvrt/cluster.h"
#include "kvrt/kvrt.h"
#include "kvrt/tier.h"
#include "sim_cost_model.h"
#include "soak_node.h"
#include "soak_proto.h"

#define MAX_LIVE 1024u
#define MAX_PULLS 16u
#define MAX_PULL_BLOCKS 64u
#define MAX_SENDS 64u
/* The largest message from the supervisor: a request, or a prefill job
 * with its ticket. */
#define MSG_MAX (sizeof(soak_msg_request_t) + (SOAK_MAX_PROMPT + SOAK_MAX_ANSWER) * 4u + \
                 KVRT_HANDOFF_TICKET_MAX)

typedef struct peer {
    int known, connected, dropping;
    /* Its regions were refused as another instance's: it restarted, and
     * nothing is pulled from it until its announcement names the new ones. */
    int stale;
    uint32_t generation, users;
    soak_msg_peer_t id;
    kvrt_xfer_peer_t *peer;
    kvrt_xfer_remote_t *pool_remote, *dir_remote;
    double retry_at;
} peer_t;

typedef enum request_role {
    ROLE_CLIENT = 0,    /* a client's request: its end goes to the supervisor */
    ROLE_PREFILL = 1    /* a peer's prompt, prefilled here and handed over */
} request_role_t;

typedef struct request {
    int used;
    request_role_t role;
    uint64_t id;
    uint32_t home, prompt_len, answer_len, emitted;
    int32_t *tokens;            /* prompt then answer */
    kvrt_block_hash_t *hashes;  /* content hashes of the full blocks of prompt + answer */
    uint32_t full_blocks;       /* the prompt's */
    uint32_t total_blocks;      /* prompt + answer's */
    double arrival_s, first_s;
    kvrt_seq_id_t seq;
    /* Decode side of a hand-off: the prefill node and the hand-off. */
    uint32_t prefill;
    kvrt_handoff_id_t handoff;
    /* Prefill side: the decode node's ticket, and when its hand-off's
     * deadline passes (INFINITY: none). */
    uint8_t *ticket;
    uint32_t ticket_len;
    double expires_s;
    /* An onload through kvrt_tier_admit: blocks [onload_first,
     * onload_first + onload_count) come back, the first onload_host of
     * them from host memory, the rest from SSD. */
    int onloading;
    uint32_t onload_first, onload_count, onload_host;
    /* Where its blocks came from, for the message when one is wrong: the
     * end (block index) of what was pulled, handed over and onloaded, and
     * the computed tokens of its first prefill (cache hits and arrivals);
     * UINT32_MAX before it. */
    uint32_t pulled_end, handed_end, onloaded_end, first_computed;
} request_t;

typedef enum pull_stage { PULL_FREE = 0, PULL_DIR, PULL_BLOCKS } pull_stage_t;

typedef struct pull {
    pull_stage_t stage;
    uint32_t live;              /* request slot */
    uint32_t peer;
    uint32_t first, want;       /* table index of the first block to fill; prefix blocks */
    uint32_t count;             /* blocks the arrival holds */
    uint32_t found;             /* of those, named by the holder's directory */
    kvrt_arrival_id_t arrival;
    int32_t remote_blocks[MAX_PULL_BLOCKS], local_blocks[MAX_PULL_BLOCKS];
    kvrt_xfer_request_t *xreq;
} pull_t;

typedef struct node {
    const soak_node_config_t *cfg;
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;
    kvrt_sched_t *sched;
    kvrt_xfer_agent_t *agent;
    kvrt_kv_events_t *events;
    kvrt_tier_t *tier;
    kvrt_cluster_etcd_t *member;
    kvrt_cluster_handoff_recv_t *recv;      /* decode side */
    kvrt_cluster_handoff_sender_t *sender;  /* prefill side */
    kvrt_cluster_handoff_send_t *sends[MAX_SENDS];
    double send_expires_s[MAX_SENDS];
    uint32_t num_sends;
    uint8_t *ticket_msg;                    /* a TICKET message being built */
    soak_msg_events_t *events_msg;
    uint64_t epoch;
    kvrt_xfer_region_t *pool_region, *dir_region, *landing_region;
    soak_dir_entry_t *dir;      /* SOAK_DIR_SLOTS, published */
    soak_dir_entry_t *landing;  /* MAX_PULLS * MAX_PULL_BLOCKS */
    uint64_t page_bytes;
    kvrt_block_hash_t root;
    sim_cost_model_t cost;
    peer_t peers[SOAK_MAX_NODES];
    request_t live[MAX_LIVE];
    pull_t pulls[MAX_PULLS];
    uint32_t waiting_admission[MAX_LIVE], num_waiting_admission;
    const kvrt_batch_plan_t *plan;  /* in flight until busy_until */
    double busy_until;
    int32_t *commit_tokens;
    int corrupt_armed, finishing;
    uint64_t rng;
    soak_node_counters_t c;
    uint8_t *msg;
} node_t;

/* ---- soak_node.c ---- */

/* Seconds on CLOCK_MONOTONIC; the step clock is this times 1e9. */
double soak_node_now_s(void);
/* Prints a fatal error; returns 1. */
int soak_node_die(node_t *n, const char *what, kvrt_status_t st);
/* A message to the supervisor; a node whose supervisor is gone exits. */
void soak_node_send(node_t *n, const void *msg, size_t len);
soak_verdict_t soak_node_block_check(node_t *n, int32_t block, const kvrt_block_hash_t *h);
/* Writes the content of hash h into block (as computing it would). */
void soak_node_block_fill(node_t *n, int32_t block, const kvrt_block_hash_t *h);
/* A block that goes back to the pool unverified loses its header. */
void soak_node_block_scrub(node_t *n, int32_t block);
/* Flips one byte past a block's header when the corrupter is armed;
 * returns 1 when it did. */
int soak_node_corrupt_maybe(node_t *n, int32_t block);
/* A free request slot, or NULL. */
request_t *soak_node_request_slot(node_t *n);
/* Copies prompt_len + answer_len tokens (prompt, then the answer the model
 * will emit) and hashes their full blocks. Returns 0 or -1 (no memory). */
int soak_node_request_init(node_t *n, request_t *r, const int32_t *tokens, uint32_t prompt_len,
                      uint32_t answer_len);
/* Frees a request without telling the supervisor (prefill jobs). */
void soak_node_request_free(request_t *r);
/* Queues request r (used, initialised) for kvrt_seq_add before the next step. */
void soak_node_admit_later(node_t *n, request_t *r);

/* ---- soak_node_cluster.c ---- */

/* Registers on etcd under the node's lease (retried for 15 s: etcd may be
 * down for a moment). Returns 0 or 1 after a message. */
int soak_node_join_etcd(node_t *n, const kvrt_kv_layout_t *layout, const char *address);
/* Ships the cache's new KV events to the supervisor. */
void soak_node_ship_events(node_t *n);
/* Ships a snapshot of what the cache holds, in pieces. */
void soak_node_ship_snapshot(node_t *n);

/* ---- soak_node_tier.c ---- */

/* Moves offloads and onloads along; keeps the SSD tier's counters. */
void soak_tier_poll(node_t *n);
/* Offers a queued request to kvrt_tier_admit; 1 when an onload started. */
int soak_tier_onload_start(node_t *n, request_t *r);
/* Before a step: onloads that landed, their blocks verified. */
void soak_tier_onloads_landed(node_t *n);
/* After a step: onloads the scheduler gave up at their deadline. */
void soak_tier_onloads_given_up(node_t *n);

/* ---- soak_handoff.c ---- */

/* Creates the receiver (decode side) and the sender (prefill side). */
int soak_handoff_open(node_t *n);
/* A client request with a prefill node: accepts its hand-off and ships the
 * ticket; returns 0, or -1 when the request is prefilled here instead. */
int soak_handoff_accept(node_t *n, request_t *r, double now);
/* Decode side, every step before kvrt_sched_step: ended hand-offs, their
 * blocks verified. */
void soak_handoff_poll(node_t *n, double now);
/* Prefill side: a PREFILL message (a peer's prompt and ticket). */
void soak_handoff_prefill(node_t *n, const uint8_t *buf, size_t len);
/* Prefill side: the prefill of job r ended (ev): serve its ticket. */
void soak_handoff_serve(node_t *n, request_t *r, const kvrt_seq_info_t *ev);
/* Prefill side: sends that completed are ended. */
void soak_handoff_progress(node_t *n);
/* Hand-offs still live or quarantined, and unended sends. */
uint64_t soak_handoff_pending(node_t *n);
/* At the end: ends every send, destroys the sender. */
void soak_handoff_close_sends(node_t *n);

#endif /* KVRT_BENCH_SOAK_NODE_INTERNAL_H */
