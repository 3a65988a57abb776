/*
 * soak_proto.h - what kvrt-soak's supervisor and its node processes say to
 * each other, and the KV payload both sides can recompute.
 *
 * Each node talks to the supervisor over one SOCK_SEQPACKET socketpair
 * (message boundaries kept, no framing). Node-to-node traffic is kvrt's own
 * transfer engine over TCP inside the nodes' network namespaces.
 *
 * A block's bytes are a pure function of its content hash (soak_payload_*):
 * page (layer, half) starts with the hash itself and goes on with a
 * SplitMix64 stream seeded by it. A receiver can therefore tell a stale
 * block (another hash in the header) from a corrupted one (the right
 * header, wrong bytes after it) without asking anyone.
 */
#ifndef KVRT_BENCH_SOAK_PROTO_H
#define KVRT_BENCH_SOAK_PROTO_H

#include <stdint.h>
#include <string.h>

#include "kvrt/kvrt.h"

#define SOAK_MAX_NODES 16
#define SOAK_ADDRESS_MAX 96
#define SOAK_MAX_PROMPT 32768u
#define SOAK_MAX_ANSWER 1024u
/* The per-node directory published for peers: slot = hash % DIR_SLOTS. */
#define SOAK_DIR_SLOTS 8192u

/* The model every node serves: small pages so a soak moves many blocks. */
#define SOAK_LAYERS 2u
#define SOAK_KV_HEADS 2u
#define SOAK_HEAD_DIM 64u
#define SOAK_BLOCK_TOKENS 16u

typedef enum soak_msg_type {
    /* supervisor -> node */
    SOAK_MSG_REQUEST = 1,
    SOAK_MSG_PEER = 2,
    SOAK_MSG_CORRUPT = 3,   /* arms or disarms the receive-path corrupter */
    SOAK_MSG_FINISH = 4,    /* no more requests: drain, check, report, exit */
    SOAK_MSG_SNAPSHOT = 5,  /* send a snapshot of what the cache holds */
    SOAK_MSG_PREFILL = 6,   /* prefill a prompt and hand its KV over (a ticket) */
    /* node -> supervisor */
    SOAK_MSG_HELLO = 16,
    SOAK_MSG_END = 17,
    SOAK_MSG_STATS = 18,
    SOAK_MSG_REPORT = 19,
    SOAK_MSG_EVENTS = 20,   /* KV events, or a piece of a snapshot */
    SOAK_MSG_TICKET = 21,   /* a hand-off's ticket, for the prefill node `node` */
} soak_msg_type_t;

/* No prefill node: the receiving node prefills the request itself. */
#define SOAK_NO_NODE UINT32_MAX

#define SOAK_EVENTS_PER_MSG 1024u

/* KV events of the node's cache (kvrt/cluster.h), in id order; or, with
 * snapshot set, records [offset, offset + count) of a snapshot of `total`
 * records taken at last_event_id. */
typedef struct soak_msg_events {
    uint32_t type;
    uint32_t count;
    uint64_t epoch;
    uint32_t snapshot;
    uint32_t total, offset;
    uint32_t pad;
    uint64_t last_event_id;
    kvrt_kv_event_t events[SOAK_EVENTS_PER_MSG];
} soak_msg_events_t;

/* A request; prompt_len then answer_len int32 tokens follow. */
typedef struct soak_msg_request {
    uint32_t type;
    uint32_t home;          /* node whose directory may hold the prefix */
    uint64_t id;
    uint32_t prompt_len;
    uint32_t answer_len;    /* the tokens the simulated model emits */
    uint32_t prefill;       /* node that prefills it and hands the KV over;
                               SOAK_NO_NODE: none */
    uint32_t pad;
} soak_msg_request_t;

/* A prefill/decode hand-off: the decode node sends TICKET (node = the
 * prefill node), the supervisor relays it as PREFILL (node = the decode
 * node). prompt_len int32 tokens, then ticket_len ticket bytes follow. */
typedef struct soak_msg_prefill {
    uint32_t type;
    uint32_t node;
    uint64_t id;            /* the request's id (for logs only) */
    uint32_t prompt_len;
    uint32_t ticket_len;
    uint32_t ttl_ms;        /* the hand-off's time left when the ticket left
                               the decode node; 0: no limit */
    uint32_t pad;
} soak_msg_prefill_t;

/* A peer's identity; sent at start and whenever a node (re)starts. */
typedef struct soak_msg_peer {
    uint32_t type;
    uint32_t index;
    uint32_t generation;    /* restarts of that node so far */
    uint32_t pool_desc_len, dir_desc_len;
    uint64_t epoch;
    char address[SOAK_ADDRESS_MAX];
    uint8_t pool_desc[KVRT_XFER_DESCRIPTOR_MAX];
    uint8_t dir_desc[KVRT_XFER_DESCRIPTOR_MAX];
} soak_msg_peer_t;

typedef struct soak_msg_corrupt {
    uint32_t type;
    uint32_t armed;
} soak_msg_corrupt_t;

/* HELLO carries a soak_msg_peer_t with type SOAK_MSG_HELLO; its epoch is
 * the node's KV event epoch. */

typedef struct soak_msg_end {
    uint32_t type;
    uint32_t reason;        /* kvrt_seq_end_reason_t */
    uint64_t id;
    int32_t status;         /* kvrt_status_t of a FAILED end */
    uint32_t prompt_len;
    uint32_t cached_tokens;
    uint32_t output_tokens;
    double ttft_ms;         /* arrival at the node to first token; < 0: none */
} soak_msg_end_t;

/* Counters since the node started (cumulative). */
typedef struct soak_node_counters {
    uint64_t pulls, pull_failures, blocks_pulled, blocks_stale;
    uint64_t corrupt_injected;   /* blocks the receive-path corrupter damaged */
    uint64_t corrupt_rejected;   /* blocks that failed verification on arrival */
    uint64_t corrupt_used;       /* blocks that failed verification at use: must stay 0 */
    uint64_t blocks_checked;     /* blocks verified at use */
    uint64_t steps;
    uint64_t block_copies;       /* the plans' copy-on-write copies, run */
    uint64_t ssd_offloads, ssd_drops, ssd_errors;   /* the SSD tier's */
    /* Onloads through kvrt_tier_admit: admissions that started one, blocks
     * that landed from host memory and from SSD (each verified against its
     * content), admissions the scheduler gave up at their deadline, and
     * onloaded blocks that did not verify (must stay 0). */
    uint64_t onloads, onload_host_blocks, onload_ssd_blocks, onload_timeouts, onload_bad;
    /* Hand-offs, decode side: accepted, landed, recomputed, failed (request
     * aborted), blocks landed and verified, landed blocks that did not
     * verify (must stay 0 unless the corrupter damaged them). */
    uint64_t handoffs, handoffs_landed, handoffs_recomputed, handoffs_failed;
    uint64_t handoff_blocks, handoff_bad;
    /* Prefill side: prompts prefilled for a peer, sends that completed,
     * sends that failed or were given up. */
    uint64_t prefills, prefill_sends_ok, prefill_sends_failed;
    uint64_t prefills_expired;   /* dropped or canceled at their hand-off's deadline */
} soak_node_counters_t;

typedef struct soak_msg_stats {
    uint32_t type;
    uint32_t pad;
    soak_node_counters_t counters;
    uint64_t running, waiting, free_blocks;   /* load, for the router */
} soak_msg_stats_t;

/* The end-of-run check of a surviving node. */
typedef struct soak_msg_report {
    uint32_t type;
    int32_t pool_verify;         /* kvrt_status_t */
    int32_t cache_verify;
    uint32_t used_blocks;        /* held by something other than the cache */
    uint32_t cached_blocks;
    uint32_t pad;
    uint64_t registrations;      /* xfer regions left after deregistering */
    uint64_t outstanding;        /* transfer requests not completed */
    uint64_t unfinished;         /* requests still in the scheduler */
    uint64_t handoffs_left;      /* live or quarantined hand-offs, unended sends */
    soak_node_counters_t counters;
} soak_msg_report_t;

/* ---- payloads ------------------------------------------------------------- */

static inline uint64_t soak_splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t soak_page_seed(const kvrt_block_hash_t *h, uint32_t page)
{
    return h->lo ^ (h->hi * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)page << 56);
}

/* Writes the page `page` (layer * 2 + half) of the block with content h. */
static inline void soak_payload_fill(const kvrt_block_hash_t *h, uint32_t page, uint8_t *out,
                                     uint64_t bytes)
{
    memcpy(out, h, sizeof(*h));
    uint64_t s = soak_page_seed(h, page);
    for (uint64_t off = sizeof(*h); off + 8 <= bytes; off += 8) {
        uint64_t v = soak_splitmix(&s);
        memcpy(out + off, &v, 8);
    }
}

typedef enum soak_verdict {
    SOAK_BLOCK_OK = 0,
    SOAK_BLOCK_STALE = 1,   /* another block's header: not this content */
    SOAK_BLOCK_CORRUPT = 2  /* this content's header, wrong bytes */
} soak_verdict_t;

static inline soak_verdict_t soak_payload_check(const kvrt_block_hash_t *h, uint32_t page,
                                                const uint8_t *in, uint64_t bytes)
{
    kvrt_block_hash_t got;
    memcpy(&got, in, sizeof(got));
    if (got.lo != h->lo || got.hi != h->hi)
        return SOAK_BLOCK_STALE;
    uint64_t s = soak_page_seed(h, page);
    for (uint64_t off = sizeof(*h); off + 8 <= bytes; off += 8) {
        uint64_t v = soak_splitmix(&s), w;
        memcpy(&w, in + off, 8);
        if (v != w)
            return SOAK_BLOCK_CORRUPT;
    }
    return SOAK_BLOCK_OK;
}

/* A directory entry: which pool block holds a content hash. check guards
 * against a torn read of an entry being rewritten. */
typedef struct soak_dir_entry {
    uint64_t lo, hi;
    int64_t block;
    uint64_t check;
} soak_dir_entry_t;

static inline uint64_t soak_dir_check(uint64_t lo, uint64_t hi, int64_t block)
{
    return lo ^ (hi * 31u) ^ ((uint64_t)block * 0x9e3779b97f4a7c15ull) ^ 0x50a4u;
}

#endif /* KVRT_BENCH_SOAK_PROTO_H */
