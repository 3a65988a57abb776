/*
 * kvrt/cluster.h - a set of hosts as one cache: KV events, the prefix
 * directory, membership on etcd and KV-aware routing.
 *
 * KV events. Each node publishes what its cache holds as a stream of
 * stored / removed / cleared records (kvrt_kv_event_t) carrying the node's
 * *epoch* (a random 64-bit value drawn when its publisher is created, so a
 * restarted node never continues an old stream) and an *event id* that
 * grows by one per record. The engine drains the stream with
 * kvrt_kv_events_take() (vLLM's take_events) and ships it to whoever keeps
 * a directory; in one process it hands the records straight to
 * kvrt_cluster_dir_apply().
 *
 * The prefix directory maps a block key (kvrt/cache.h) to the nodes that
 * hold it, per tier (GPU, host DRAM, disk). A query takes a prompt's block
 * keys in order and answers, per node, the longest prefix the node holds.
 * A consumer that sees a gap in a node's ids, or a new epoch, drops
 * everything it knew of the node and asks for a snapshot
 * (kvrt_kv_events_snapshot() on the node, kvrt_cluster_dir_load_snapshot()
 * here): it never answers from entries it cannot vouch for.
 *
 * Membership: with etcd (kvrt_cluster_etcd_*), each node registers under a
 * lease it keeps alive; a node whose lease expires disappears from every
 * view and kvrt_cluster_etcd_sync() drops it, with all its entries, from the
 * directory. Without etcd the embedder adds and removes nodes itself (the
 * embedded mode: several nodes in one process, as in kvrt-sim and tests).
 *
 * Routing (kvrt_cluster_router_*): round-robin, least-loaded, or
 * cache-aware with cost = w_prefill * (uncached prompt tokens + queued
 * prefill tokens) + w_decode * running decodes. docs/cluster.md.
 *
 * Limits: KVRT_CLUSTER_MAX_NODES nodes per directory (a node set is one
 * 64-bit mask per tier), one model per node.
 * Threads: a publisher, a directory and a router are each used by one
 * thread at a time; an etcd member runs a background thread of its own and
 * its functions say which threads may call them.
 */
#ifndef KVRT_CLUSTER_H
#define KVRT_CLUSTER_H

#include <stdint.h>

#include <stddef.h>

#include "kvrt/cache.h"
#include "kvrt/context.h"
#include "kvrt/pool.h"
#include "kvrt/sched.h"
#include "kvrt/tier.h"
#include "kvrt/xfer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVRT_CLUSTER_MAX_NODES 64

/* Where a node holds a block. */
typedef enum kvrt_kv_tier {
    KVRT_KV_TIER_GPU = 0,
    KVRT_KV_TIER_HOST = 1,
    KVRT_KV_TIER_DISK = 2
} kvrt_kv_tier_t;
#define KVRT_KV_TIERS 3
#define KVRT_KV_TIER_MASK_ALL ((1u << KVRT_KV_TIERS) - 1u)

typedef enum kvrt_kv_event_kind {
    KVRT_KV_EVENT_STORED = 1,  /* key now held in tier */
    KVRT_KV_EVENT_REMOVED = 2, /* key no longer held in tier */
    KVRT_KV_EVENT_CLEARED = 3  /* the node holds nothing in any tier; key
                                  and tier are ignored */
} kvrt_kv_event_kind_t;

/*
 * One KV event: 32 bytes, frozen (an array element: it will never grow and
 * carries no field_mask). Across processes it travels as these 32 bytes in
 * little-endian order.
 */
typedef struct kvrt_kv_event {
    uint64_t event_id;      /* 1, 2, ... per epoch; 0 in snapshots */
    uint32_t kind;          /* kvrt_kv_event_kind_t */
    uint32_t tier;          /* kvrt_kv_tier_t */
    kvrt_block_hash_t key;  /* the block key */
} kvrt_kv_event_t;

/* ---- publisher: one node's event stream ---------------------------------- */

typedef struct kvrt_kv_events kvrt_kv_events_t;

enum kvrt_kv_events_params_field {
    KVRT_KV_EVENTS_PARAM_CAPACITY = 1u << 0, /* capacity */
    KVRT_KV_EVENTS_PARAM_EPOCH = 1u << 1     /* epoch */
};

typedef struct kvrt_kv_events_params {
    uint64_t field_mask;
    /* Events kept until taken, 16 .. 2^26; default 65536. When full, the
     * oldest is dropped: its consumers see the gap and resynchronize. */
    uint32_t capacity;
    /* Default: 64 random bits (getrandom). Non-zero. Tests set it. */
    uint64_t epoch;
} kvrt_kv_events_params_t;

/*
 * kvrt_kv_events_create - a node's event publisher; params may be NULL.
 * Destroy with kvrt_kv_events_destroy() or with the context.
 * Errors: KVRT_ERR_INVALID_ARG (NULL ctx/out, unknown bits, capacity out of
 * range, epoch 0), KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_kv_events_create(kvrt_ctx_t *ctx, const kvrt_kv_events_params_t *params,
                                    kvrt_kv_events_t **events_out);

/* kvrt_kv_events_destroy - frees the publisher. NULL is a no-op. */
kvrt_status_t kvrt_kv_events_destroy(kvrt_kv_events_t *events);

/*
 * kvrt_kv_events_record - appends one event (what a cache observer calls).
 * The publisher also keeps the set of keys held per tier, for snapshots: a
 * STORED of a key already held in that tier, or a REMOVED of one not held,
 * changes nothing and is not published (the stream carries changes only).
 * key is copied and may be NULL for CLEARED.
 * Errors: KVRT_ERR_INVALID_ARG (NULL events, NULL key for STORED/REMOVED,
 * unknown kind or tier), KVRT_ERR_NO_MEMORY (the key set cannot grow;
 * nothing changes).
 */
kvrt_status_t kvrt_kv_events_record(kvrt_kv_events_t *events, kvrt_kv_event_kind_t kind,
                                    kvrt_kv_tier_t tier, const kvrt_block_hash_t *key);

/*
 * kvrt_kv_events_attach - feeds the publisher from a cache: every block the
 * cache indexes is recorded as STORED in `tier`, every block that leaves it
 * as REMOVED, a reset or destroy of the cache as CLEARED. Attach right
 * after kvrt_cache_create() (blocks cached before are not announced). One
 * cache per publisher. The publisher holds the cache: kvrt_cache_destroy
 * answers KVRT_ERR_BUSY until the publisher is detached
 * (kvrt_kv_events_detach) or destroyed; kvrt_ctx_destroy does it in that
 * order. Recording happens inside the cache's
 * calls, on their thread; when the key set cannot grow there, the publisher
 * skips an event id so consumers resynchronize (from a snapshot that then
 * lacks that key: a missed hit, never a stale entry).
 * Errors: KVRT_ERR_INVALID_ARG (NULL, unknown tier), KVRT_ERR_BUSY (the
 * publisher is attached to a cache already, or the cache has its maximum of
 * observers).
 */
kvrt_status_t kvrt_kv_events_attach(kvrt_kv_events_t *events, kvrt_cache_t *cache,
                                    kvrt_kv_tier_t tier);

/* kvrt_kv_events_detach - stops following the cache. Errors:
 * KVRT_ERR_INVALID_ARG (NULL), KVRT_ERR_NOT_FOUND (not attached). */
kvrt_status_t kvrt_kv_events_detach(kvrt_kv_events_t *events);

/*
 * kvrt_kv_events_attach_tier - feeds the publisher from a tier stack
 * (kvrt/tier.h): every block its host level indexes is recorded as STORED
 * in KVRT_KV_TIER_HOST, every block its SSD level indexes in
 * KVRT_KV_TIER_DISK, and REMOVED when it leaves that level (evicted,
 * written back, failed). What the tier holds when attached (an SSD tier
 * rebuilt from its file included) is recorded at once. When the tier is
 * destroyed its keys are REMOVED and the publisher is detached from it.
 * A CLEARED of the attached cache then removes only the cache's tier. One
 * tier stack per publisher, one publisher per tier stack. Recording runs
 * inside the tier's calls on the engine thread, as for a cache.
 * Errors: KVRT_ERR_INVALID_ARG (NULL), KVRT_ERR_BUSY (the publisher
 * follows a tier stack already, or the tier stack has an observer).
 */
kvrt_status_t kvrt_kv_events_attach_tier(kvrt_kv_events_t *events, kvrt_tier_t *tier);

/* kvrt_kv_events_detach_tier - stops following the tier stack; its keys are
 * recorded as REMOVED (the node no longer vouches for them). Errors:
 * KVRT_ERR_INVALID_ARG (NULL), KVRT_ERR_NOT_FOUND (not attached). */
kvrt_status_t kvrt_kv_events_detach_tier(kvrt_kv_events_t *events);

/*
 * kvrt_kv_events_take - moves up to `capacity` of the oldest untaken events
 * to events_out[0 .. *count_out), in id order, and writes the epoch to
 * *epoch_out (may be NULL). Ids not contiguous with the previous take mean
 * events were dropped for capacity.
 * Errors: KVRT_ERR_INVALID_ARG (NULL events/count_out, NULL events_out
 * with capacity > 0).
 */
kvrt_status_t kvrt_kv_events_take(kvrt_kv_events_t *events, kvrt_kv_event_t *events_out,
                                  uint32_t capacity, uint32_t *count_out,
                                  uint64_t *epoch_out);

/* kvrt_kv_events_epoch - the epoch and the id of the last event recorded
 * (0 when none). Either output may be NULL. Errors: KVRT_ERR_INVALID_ARG. */
kvrt_status_t kvrt_kv_events_epoch(const kvrt_kv_events_t *events, uint64_t *epoch_out,
                                   uint64_t *last_event_id_out);

/*
 * kvrt_kv_events_snapshot - what the node holds now, as STORED records
 * (event_id 0), one per (key, tier), and the id of the last event they
 * include. Events with larger ids follow on from it. Not a take: untaken
 * events stay. Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_BUFFER_TOO_SMALL
 * (*count_out is set to the records needed; nothing else is written).
 */
kvrt_status_t kvrt_kv_events_snapshot(const kvrt_kv_events_t *events,
                                      kvrt_kv_event_t *records_out, uint32_t capacity,
                                      uint32_t *count_out, uint64_t *last_event_id_out);

/* ---- the prefix directory ------------------------------------------------ */

typedef struct kvrt_cluster_dir kvrt_cluster_dir_t;

enum kvrt_cluster_dir_params_field {
    KVRT_CLUSTER_DIR_PARAM_EXPECTED_BLOCKS = 1u << 0 /* expected_blocks */
};

typedef struct kvrt_cluster_dir_params {
    uint64_t field_mask;
    /* Distinct keys per model expected (the tables start there and
     * double when needed). Default 65536, at most 2^30. */
    uint64_t expected_blocks;
} kvrt_cluster_dir_params_t;

/*
 * kvrt_cluster_dir_create - an empty directory; params may be NULL.
 * Memory: 40 bytes per table slot (the 16-byte key and a 64-bit node mask
 * per tier), tables between a quarter and half full after growth: 80 to
 * 160 bytes per distinct tracked key, whatever the number of nodes holding
 * it (docs/cluster.md).
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_cluster_dir_create(kvrt_ctx_t *ctx, const kvrt_cluster_dir_params_t *params,
                                      kvrt_cluster_dir_t **dir_out);

/* kvrt_cluster_dir_destroy - frees the directory. NULL is a no-op. */
kvrt_status_t kvrt_cluster_dir_destroy(kvrt_cluster_dir_t *dir);

/*
 * kvrt_cluster_dir_add_node - a node joins, serving the model whose
 * fingerprint is `model` (kvrt_model_fingerprint), with the event epoch
 * `epoch` (non-zero); it holds nothing and its next event id is 1.
 * node_id is any value but 0 (e.g. a hash of its address).
 * Errors: KVRT_ERR_INVALID_ARG (NULL, node_id or epoch 0), KVRT_ERR_BUSY
 * (node_id already present: remove it first), KVRT_ERR_OVERFLOW
 * (KVRT_CLUSTER_MAX_NODES present), KVRT_ERR_NO_MEMORY (a new model's
 * table).
 */
kvrt_status_t kvrt_cluster_dir_add_node(kvrt_cluster_dir_t *dir, uint64_t node_id,
                                        const kvrt_block_hash_t *model, uint64_t epoch);

/*
 * kvrt_cluster_dir_remove_node - the node leaves; every entry it held is
 * dropped, as by a CLEARED (kvrt_cluster_dir_apply: O(the keys it was
 * given since its last drop), or one walk of the model's table). The slot
 * keeps the node's key list's memory for the next node it takes.
 * Errors: KVRT_ERR_INVALID_ARG,
 * KVRT_ERR_UNKNOWN_NODE.
 */
kvrt_status_t kvrt_cluster_dir_remove_node(kvrt_cluster_dir_t *dir, uint64_t node_id);

/*
 * kvrt_cluster_dir_apply - applies events[0 .. count) of node_id under
 * `epoch`, in order. Events with ids the node has already passed
 * (duplicates, replays) are skipped and counted. A CLEARED drops the
 * node's entries through the list of keys it was given since its last
 * drop (O(those keys)), or by one walk of the model's table when that list
 * is a twelfth of the table's slots or more, or was given up (churn past
 * its bound, or no memory: docs/cluster.md, *Memory*); and a batch pays it
 * once: the events before its last CLEARED only move the ids on, their
 * effect being wiped by it. The table grows, before anything is applied,
 * for the STORED events of the accepted batch after that CLEARED (a
 * refused or duplicate batch grows nothing). Errors:
 *  KVRT_ERR_INVALID_ARG   NULL, an unknown kind or tier (nothing applied);
 *  KVRT_ERR_UNKNOWN_NODE  node_id is not a member (nothing applied);
 *  KVRT_ERR_STALE_EPOCH   epoch is one the node had before its current
 *                         one (late events of a dead incarnation; the
 *                         last 8 are remembered): nothing applied;
 *  KVRT_ERR_RESYNC        a gap in the ids, or a batch of an epoch never
 *                         seen for this node (it restarted) that does not
 *                         start at id 1: the node's entries are dropped,
 *                         it takes the new epoch and answers no query
 *                         until kvrt_cluster_dir_load_snapshot().
 * An epoch never seen whose batch starts at id 1 (or is empty) is a
 * restart followed from its start: the old entries are dropped, the old
 * epoch becomes stale, and the batch applies (KVRT_OK).
 *  KVRT_ERR_NO_MEMORY     the table could not grow (nothing applied).
 */
kvrt_status_t kvrt_cluster_dir_apply(kvrt_cluster_dir_t *dir, uint64_t node_id,
                                     uint64_t epoch, const kvrt_kv_event_t *events,
                                     uint32_t count);

/*
 * kvrt_cluster_dir_load_snapshot - replaces everything the directory knows
 * of node_id by records[0 .. count) (STORED records, as
 * kvrt_kv_events_snapshot() writes them) taken at last_event_id under
 * epoch; the node's next expected id becomes last_event_id + 1 and it
 * answers queries again. Errors: KVRT_ERR_INVALID_ARG (NULL, a record that
 * is not STORED or has an unknown tier: nothing changes),
 * KVRT_ERR_UNKNOWN_NODE, KVRT_ERR_NO_MEMORY (nothing changes).
 */
kvrt_status_t kvrt_cluster_dir_load_snapshot(kvrt_cluster_dir_t *dir, uint64_t node_id,
                                             uint64_t epoch, uint64_t last_event_id,
                                             const kvrt_kv_event_t *records, uint32_t count);

/*
 * kvrt_cluster_dir_forget - drops node_id's entries for keys[0 .. count),
 * in every tier, e.g. after a pull found that the node did not have them
 * (a peer that announces blocks it lacks loses those entries, not its
 * place). A later STORED of the same key adds it back. Keys the node does
 * not hold are ignored. Errors: KVRT_ERR_INVALID_ARG (NULL, NULL keys with
 * count > 0), KVRT_ERR_UNKNOWN_NODE.
 */
kvrt_status_t kvrt_cluster_dir_forget(kvrt_cluster_dir_t *dir, uint64_t node_id,
                                      const kvrt_block_hash_t *keys, uint32_t count);

/* A node's standing in the directory. Frozen (output array element). */
typedef struct kvrt_cluster_node_info {
    uint64_t node_id;
    uint64_t epoch;
    uint64_t next_event_id;
    uint64_t blocks[KVRT_KV_TIERS]; /* keys held, per tier */
    uint32_t resyncing;             /* 1: waiting for a snapshot */
    uint32_t reserved;
} kvrt_cluster_node_info_t;

/* kvrt_cluster_dir_node_info - one node's standing. Errors:
 * KVRT_ERR_INVALID_ARG, KVRT_ERR_UNKNOWN_NODE. */
kvrt_status_t kvrt_cluster_dir_node_info(const kvrt_cluster_dir_t *dir, uint64_t node_id,
                                         kvrt_cluster_node_info_t *info_out);

/* One node's answer to a query. Frozen (output array element). */
typedef struct kvrt_cluster_match {
    uint64_t node_id;
    /* Leading keys of the query the node holds in any tier of the query's
     * tier mask, and of those, the leading keys it holds on GPU. */
    uint32_t prefix_blocks;
    uint32_t gpu_prefix_blocks;
} kvrt_cluster_match_t;

/*
 * kvrt_cluster_dir_match - for a prompt's block keys (in order), the longest
 * prefix each member node of `model` holds in the tiers of tier_mask
 * (bit t = tier t; 0 means all). Writes one entry per node of the model
 * that is not resyncing (those with 0 blocks included; in no promised
 * order) to matches_out[0 .. *count_out). O(prefix length).
 * Errors: KVRT_ERR_INVALID_ARG (NULL, num_keys > 0 with NULL keys, unknown
 * tier bits), KVRT_ERR_UNKNOWN_MODEL (no node ever served model),
 * KVRT_ERR_BUFFER_TOO_SMALL (*count_out set to the nodes to report).
 */
kvrt_status_t kvrt_cluster_dir_match(const kvrt_cluster_dir_t *dir,
                                     const kvrt_block_hash_t *model,
                                     const kvrt_block_hash_t *keys, uint32_t num_keys,
                                     uint32_t tier_mask, kvrt_cluster_match_t *matches_out,
                                     uint32_t capacity, uint32_t *count_out);

/* Counters since creation. Frozen; read with kvrt_cluster_dir_stats(), or
 * each as the ctl node "cluster.dir.<N>.<field>" (u64, read-only; N = 0, 1,
 * ... in creation order within the context). */
typedef struct kvrt_cluster_dir_stats {
    uint64_t nodes;
    uint64_t models;
    uint64_t entries;          /* distinct keys tracked, all models */
    uint64_t table_slots;      /* all models */
    uint64_t table_bytes;      /* the tables and the nodes' key lists */
    uint64_t events_applied;
    uint64_t events_duplicate; /* skipped: id already passed */
    uint64_t resyncs;          /* gaps and new epochs */
    uint64_t stale_refused;    /* calls refused for a stale epoch */
    uint64_t queries;
} kvrt_cluster_dir_stats_t;

kvrt_status_t kvrt_cluster_dir_stats(const kvrt_cluster_dir_t *dir,
                                     kvrt_cluster_dir_stats_t *stats_out);

/* ---- routing ------------------------------------------------------------- */

/* A node's load as the router sees it. */
enum kvrt_cluster_load_field {
    KVRT_CLUSTER_LOAD_QUEUED_PREFILL = 1u << 0,
    KVRT_CLUSTER_LOAD_RUNNING_DECODES = 1u << 1,
    KVRT_CLUSTER_LOAD_FREE_BLOCKS = 1u << 2
};

typedef struct kvrt_cluster_load {
    uint64_t field_mask;
    uint64_t queued_prefill_tokens; /* prompt tokens waiting or mid-prefill */
    uint64_t running_decodes;       /* sequences decoding */
    uint64_t free_blocks;           /* free + evictable blocks */
} kvrt_cluster_load_t;

/* kvrt_cluster_dir_set_load - records a node's load (fields not in the mask
 * keep their value). Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_UNKNOWN_NODE. */
kvrt_status_t kvrt_cluster_dir_set_load(kvrt_cluster_dir_t *dir, uint64_t node_id,
                                        const kvrt_cluster_load_t *load);

typedef enum kvrt_route_policy {
    KVRT_ROUTE_ROUND_ROBIN = 0,
    KVRT_ROUTE_LEAST_LOADED = 1, /* min w_prefill*queued + w_decode*decodes */
    KVRT_ROUTE_CACHE_AWARE = 2   /* min w_prefill*(uncached + queued)
                                    + w_decode*decodes */
} kvrt_route_policy_t;

enum kvrt_cluster_router_params_field {
    KVRT_ROUTER_PARAM_POLICY = 1u << 0,
    KVRT_ROUTER_PARAM_PREFILL_WEIGHT = 1u << 1,
    KVRT_ROUTER_PARAM_DECODE_WEIGHT = 1u << 2,
    KVRT_ROUTER_PARAM_TOKENS_PER_BLOCK = 1u << 3,
    KVRT_ROUTER_PARAM_TIER_MASK = 1u << 4
};

typedef struct kvrt_cluster_router_params {
    uint64_t field_mask;
    kvrt_route_policy_t policy;  /* default KVRT_ROUTE_CACHE_AWARE */
    /* Cost units: a prompt token to prefill costs prefill_weight (default
     * 1.0), a running decode costs decode_weight (default 20.0: a decode
     * sequence slows every step about as much as 20 prefill tokens per step
     * on the default cost model; docs/cluster.md). Both >= 0 and finite. */
    double prefill_weight;
    double decode_weight;
    uint32_t tokens_per_block;   /* default 16 */
    uint32_t tier_mask;          /* tiers that count as cached; default all */
} kvrt_cluster_router_params_t;

typedef struct kvrt_cluster_router kvrt_cluster_router_t;

/* kvrt_cluster_router_create - a router over dir (which must outlive it);
 * params may be NULL. Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_NO_MEMORY. */
kvrt_status_t kvrt_cluster_router_create(kvrt_cluster_dir_t *dir,
                                         const kvrt_cluster_router_params_t *params,
                                         kvrt_cluster_router_t **router_out);

/* kvrt_cluster_router_destroy - NULL is a no-op. */
kvrt_status_t kvrt_cluster_router_destroy(kvrt_cluster_router_t *router);

/* The router's choice. */
typedef struct kvrt_route_choice {
    uint64_t node_id;
    uint32_t cached_blocks;   /* the chosen node's prefix, in blocks */
    uint32_t best_blocks;     /* the longest prefix any node holds */
    uint64_t best_node_id;    /* a node holding best_blocks (a pull source) */
    double cost;              /* the chosen node's cost */
} kvrt_route_choice_t;

/*
 * kvrt_cluster_router_pick - chooses a node of `model` for a prompt of
 * prompt_tokens tokens whose full blocks have keys[0 .. num_keys). Nodes
 * that are resyncing count as holding nothing. Ties go to the node with
 * more free blocks, then to the lower node id (the same choice on every
 * router, whatever order its directory added the nodes in).
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_UNKNOWN_MODEL, KVRT_ERR_NOT_FOUND
 * (the model has no node now).
 */
kvrt_status_t kvrt_cluster_router_pick(kvrt_cluster_router_t *router,
                                       const kvrt_block_hash_t *model,
                                       const kvrt_block_hash_t *keys, uint32_t num_keys,
                                       uint64_t prompt_tokens, kvrt_route_choice_t *choice_out);

/* ---- membership on etcd --------------------------------------------------- */

typedef struct kvrt_cluster_etcd kvrt_cluster_etcd_t;

enum kvrt_cluster_etcd_params_field {
    KVRT_ETCD_PARAM_ENDPOINT = 1u << 0,
    KVRT_ETCD_PARAM_PREFIX = 1u << 1,
    KVRT_ETCD_PARAM_ADDRESS = 1u << 2,
    KVRT_ETCD_PARAM_LEASE_TTL = 1u << 3,
    KVRT_ETCD_PARAM_POLL_MS = 1u << 4,
    KVRT_ETCD_PARAM_TIMEOUT_MS = 1u << 5,
    KVRT_ETCD_PARAM_MAX_BACKOFF_MS = 1u << 6
};

typedef struct kvrt_cluster_etcd_params {
    uint64_t field_mask;
    /* Required: this node's id (non-zero), model fingerprint and epoch
     * (use kvrt_kv_events_epoch() of the node's publisher). */
    uint64_t node_id;
    kvrt_block_hash_t model;
    uint64_t epoch;
    const char *endpoint;     /* copied; default "http://127.0.0.1:2379" */
    const char *prefix;       /* copied; key prefix, default "/kvrt/cluster" */
    const char *address;      /* copied; how peers reach this node (free
                                 text, up to 255 bytes), default "" */
    uint32_t lease_ttl_s;     /* 2 .. 3600, default 10 */
    uint32_t poll_ms;         /* view refresh and keepalive tick, 20 .. 60000,
                                 and at most a third of the lease; default
                                 500 */
    uint32_t timeout_ms;      /* per HTTP request, 50 .. 60000, default 2000 */
    uint32_t max_backoff_ms;  /* retry ceiling while etcd is unreachable,
                                 >= poll_ms; default 5000, or poll_ms when
                                 longer */
} kvrt_cluster_etcd_params_t;

/*
 * kvrt_cluster_etcd_create - registers this node: grants a lease, puts
 * <prefix>/nodes/<node_id hex> (a JSON record of id, epoch, model and
 * address) under it, reads the current members, then starts a background
 * thread that keeps the lease alive and refreshes the view every poll_ms.
 * When etcd becomes unreachable the thread keeps the last view and retries
 * with exponential backoff up to max_backoff_ms; when the lease has expired
 * meanwhile it grants a new one and registers again.
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_COORDINATOR (etcd unreachable or
 * refusing at start; the text names the endpoint and the cause),
 * KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_cluster_etcd_create(kvrt_ctx_t *ctx, const kvrt_cluster_etcd_params_t *params,
                                       kvrt_cluster_etcd_t **member_out);

/* kvrt_cluster_etcd_destroy - stops the thread, revokes the lease when etcd
 * answers (peers see the node leave at once) and frees. NULL: no-op. */
kvrt_status_t kvrt_cluster_etcd_destroy(kvrt_cluster_etcd_t *member);

/* A member as seen in etcd. Frozen (output array element). */
typedef struct kvrt_cluster_member {
    uint64_t node_id;
    uint64_t epoch;
    kvrt_block_hash_t model;
    char address[256];
} kvrt_cluster_member_t;

/*
 * kvrt_cluster_etcd_members - the last view (this node included), sorted by
 * node id. Safe from any thread. Errors: KVRT_ERR_INVALID_ARG,
 * KVRT_ERR_BUFFER_TOO_SMALL (*count_out set to the members in view).
 */
kvrt_status_t kvrt_cluster_etcd_members(kvrt_cluster_etcd_t *member,
                                        kvrt_cluster_member_t *members_out, uint32_t capacity,
                                        uint32_t *count_out);

/*
 * kvrt_cluster_etcd_sync - brings dir's node set to the last view: adds the
 * members it lacks, removes the nodes no longer in view (their entries go
 * with them), and moves a node whose epoch changed to the new epoch
 * (restart: its old entries are dropped and late events of the old epoch
 * are refused with KVRT_ERR_STALE_EPOCH); a restart counts as one added
 * and one removed. A view that shows an epoch the node had before its
 * current one (the node's own events brought the newer one first: the view
 * is refreshed every poll_ms) changes nothing. A node back with another
 * model is removed and added again under it (nothing of the old model is
 * kept, its old epoch stays stale). Nodes the directory holds that a sync
 * never added are not removed for missing from the view. Writes the nodes
 * added and removed (may be NULL). Call from dir's thread.
 * Errors: KVRT_ERR_INVALID_ARG, those of kvrt_cluster_dir_add_node (the
 * sync stops there; nodes changed before stay changed and the next sync
 * continues).
 */
kvrt_status_t kvrt_cluster_etcd_sync(kvrt_cluster_etcd_t *member, kvrt_cluster_dir_t *dir,
                                     uint32_t *added_out, uint32_t *removed_out);

/* Health of the link to etcd. Frozen. */
typedef struct kvrt_cluster_etcd_stats {
    uint64_t view_updates;       /* successful refreshes */
    uint64_t failures;           /* failed requests */
    uint64_t registrations;      /* leases granted and this node put (1 + re-registrations) */
    uint32_t connected;          /* 1 when the last request succeeded */
    uint32_t members;            /* in the last view */
    uint64_t last_ok_age_ms;     /* since the last successful request */
} kvrt_cluster_etcd_stats_t;

/* kvrt_cluster_etcd_stats - safe from any thread. Errors: INVALID_ARG. */
kvrt_status_t kvrt_cluster_etcd_stats(kvrt_cluster_etcd_t *member,
                                      kvrt_cluster_etcd_stats_t *stats_out);


/* ---- prefill/decode hand-off ---------------------------------------------
 *
 * A prefill node computes a prompt and writes its KV blocks straight into
 * the decode node's pool over the transfer engine (kvrt/xfer.h), batch by
 * batch as they become full; the decode node holds the request in "waiting
 * for KV" (kvrt_seq_await_kv) and lets it run once the last block landed.
 *
 *   decode node                                 prefill node
 *   kvrt_seq_add(sched, prompt) -> id
 *   kvrt_cluster_handoff_accept(recv, id) -> h
 *   kvrt_cluster_handoff_ticket(recv, h) -> bytes  ==(embedder)==>
 *                                   kvrt_cluster_handoff_send_begin(ticket)
 *                                   kvrt_cluster_handoff_send_blocks(...)  x N
 *   kvrt_cluster_handoff_poll(recv, now)  <== KV writes + notifications
 *     -> completion {h, LANDED}         kvrt_cluster_handoff_send_test() == OK
 *                                       kvrt_cluster_handoff_send_end()
 *
 * The ticket (at most KVRT_HANDOFF_TICKET_MAX bytes, opaque) carries the
 * decode agent's address, its pool region's descriptor, the block ids to
 * fill, a random 64-bit token and the time left to the hand-off's deadline
 * when it was written (hosts' clocks differ: the sender counts it from
 * when it reads the ticket); the embedder ships it with the request
 * (as a router does), or the cluster channel carries it
 * (kvrt_cluster_channel_send_ticket). Each batch of blocks travels as one KV transfer
 * (kvrt_xfer_kv_post, checksummed when integrity is on) whose notification
 * names the token and the batch; the decode node counts a block as landed
 * only when its batch's notification arrives (after the checksums matched).
 *
 * Failure: a hand-off has a deadline (accept time + timeout). When it
 * passes, or a batch fails its checksum, the decode node ends the request
 * (policy FAIL: aborted) or sends it back to the queue to be recomputed
 * (policy RECOMPUTE), at once, and reports it. A prefill node that died or
 * stalled could still have writes in flight into the hand-off's blocks, so
 * those blocks stay held (quarantined, counted in the stats) until the
 * sender's closing message arrives (its abort, or every batch) or the
 * quarantine time passes; only then do they return to the pool. Nothing a
 * peer sends can make the decode node hold a block past deadline +
 * quarantine. The sender posts nothing past the ticket's deadline, and a
 * batch in flight then is canceled; the decode node does not rely on that:
 * when a quarantine ends without the closing message, a sender that closed
 * a batch before is revoked and its name refused for refuse_ms
 * (kvrt_xfer_refuse_name) before the blocks go back, so nothing of it
 * lands in them afterwards, even if it resumes and dials again. (That cuts
 * off the sender's other hand-offs to this node too: they fail at their
 * deadlines.) A ticket holder that never closed a batch is unknown to the
 * decode node; only the ticket's budget bounds it, counted from when it
 * read the ticket, so a ticket delivered later than the quarantine after
 * it was written is the embedder's to drop. Messages with a wrong token,
 * from another sender than the first, naming batches outside the ticket,
 * or repeating a batch are counted as refused and change nothing.
 *
 * Threads: a receiver follows its scheduler's thread (one thread at a
 * time); a sender and its sends are used by one thread at a time. Both
 * take an agent that outlives them; the receiver drains the agent's
 * notifications (other notifications are counted and dropped), so an agent
 * serves one receiver and nothing else that reads notifications, unless a
 * cluster channel on the agent feeds the receiver (then the channel reads
 * them and hands the receiver its own: kvrt_cluster_channel_create).
 */

/* Largest ticket kvrt_cluster_handoff_ticket() writes. */
#define KVRT_HANDOFF_TICKET_MAX 65536u
/* Most blocks one hand-off carries. */
#define KVRT_HANDOFF_MAX_BLOCKS 16000u

typedef struct kvrt_cluster_handoff_recv kvrt_cluster_handoff_recv_t;
typedef struct kvrt_cluster_handoff_sender kvrt_cluster_handoff_sender_t;
typedef struct kvrt_cluster_handoff_send kvrt_cluster_handoff_send_t;
/* A hand-off's id on the decode node: generational, 0 is never valid. */
typedef uint64_t kvrt_handoff_id_t;

typedef enum kvrt_handoff_failure_policy {
    KVRT_HANDOFF_RECOMPUTE = 0, /* the request is queued again and recomputed */
    KVRT_HANDOFF_FAIL = 1       /* the request ends ABORTED */
} kvrt_handoff_failure_policy_t;

enum kvrt_cluster_handoff_recv_params_field {
    KVRT_HANDOFF_RECV_PARAM_TIMEOUT = 1u << 0,    /* timeout_ms */
    KVRT_HANDOFF_RECV_PARAM_POLICY = 1u << 1,     /* on_failure */
    KVRT_HANDOFF_RECV_PARAM_QUARANTINE = 1u << 2, /* quarantine_ms */
    KVRT_HANDOFF_RECV_PARAM_MAX_HANDOFFS = 1u << 3,
    KVRT_HANDOFF_RECV_PARAM_REFUSE = 1u << 4      /* refuse_ms */
};

/* ctx, agent, region and sched are always read; the rest by field_mask. */
typedef struct kvrt_cluster_handoff_recv_params {
    uint64_t field_mask;
    kvrt_xfer_agent_t *agent;          /* the decode node's agent */
    const kvrt_xfer_region_t *region;  /* sched's pool, registered with the
                                          POOL bit and KVRT_XFER_REMOTE_WRITE */
    kvrt_sched_t *sched;               /* the decode node's scheduler */
    /* From accept to the last block landed; default 10000, 1 .. 3600000. */
    uint32_t timeout_ms;
    kvrt_handoff_failure_policy_t on_failure; /* default RECOMPUTE */
    /* How long a failed hand-off's blocks stay held waiting for the sender's
     * closing message; default 2 * timeout_ms, 0 .. 3600000. */
    uint32_t quarantine_ms;
    uint32_t max_handoffs;             /* live at once, 1 .. 65536; default 1024 */
    /* How long a sender cut off at the end of a quarantine stays refused
     * by the agent (kvrt_xfer_refuse_name): it covers a stalled sender
     * that resumes and dials again. Default timeout_ms + quarantine_ms
     * (at most 3600000), 1 .. 3600000. */
    uint32_t refuse_ms;
} kvrt_cluster_handoff_recv_params_t;

/*
 * kvrt_cluster_handoff_recv_create - the decode side. Reads the agent's
 * address and the region's descriptor once (for tickets). Nothing in
 * params is retained but the three handles, which must outlive the
 * receiver. Destroy with kvrt_cluster_handoff_recv_destroy().
 * Errors: KVRT_ERR_INVALID_ARG (NULL, unknown bits, values out of range,
 * a region not registered for the scheduler's pool, a scheduler of several
 * cache groups), KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_cluster_handoff_recv_create(kvrt_ctx_t *ctx,
                                               const kvrt_cluster_handoff_recv_params_t *params,
                                               kvrt_cluster_handoff_recv_t **recv_out);

/*
 * kvrt_cluster_handoff_recv_destroy - gives every live or quarantined
 * hand-off's blocks back to the scheduler (kvrt_arrival_complete with 0
 * landed) and frees the receiver. No peer may still write into the pool:
 * destroy the agent (or stop the senders) first. NULL is a no-op.
 */
kvrt_status_t kvrt_cluster_handoff_recv_destroy(kvrt_cluster_handoff_recv_t *recv);

enum kvrt_handoff_accept_params_field {
    KVRT_HANDOFF_ACCEPT_PARAM_TIMEOUT = 1u << 0 /* timeout_ms */
};

/* num_tokens is always read, the rest by field_mask. */
typedef struct kvrt_handoff_accept_params {
    uint64_t field_mask;
    uint32_t num_tokens;  /* leading tokens that arrive (kvrt_seq_await_kv):
                             1 .. the request's token count - 1 */
    uint32_t timeout_ms;  /* default: the receiver's */
} kvrt_handoff_accept_params_t;

/*
 * kvrt_cluster_handoff_accept - admits queued request `seq` in waiting for
 * KV (kvrt_seq_await_kv, with the deadline now_ns + timeout on the step
 * clock) and starts a hand-off for the blocks it must receive. now_ns is
 * the clock the caller passes to kvrt_sched_step and to
 * kvrt_cluster_handoff_poll. When the local cache already holds the whole
 * prefix the hand-off needs no block: its ticket names none and it
 * completes LANDED at the next poll.
 * Errors: those of kvrt_seq_await_kv (nothing changes), KVRT_ERR_INVALID_ARG
 * (unknown bits, timeout out of range), KVRT_ERR_OVERFLOW (more than
 * KVRT_HANDOFF_MAX_BLOCKS blocks), KVRT_ERR_REQUEST_LIMIT (max_handoffs
 * live or quarantined).
 */
kvrt_status_t kvrt_cluster_handoff_accept(kvrt_cluster_handoff_recv_t *recv, kvrt_seq_id_t seq,
                                          const kvrt_handoff_accept_params_t *params,
                                          uint64_t now_ns, kvrt_handoff_id_t *handoff_out);

/*
 * kvrt_cluster_handoff_ticket - the hand-off's ticket, for the prefill node,
 * into buf; *length_out gets its size (also when the buffer is too small).
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_NOT_FOUND (not a live hand-off),
 * KVRT_ERR_BUFFER_TOO_SMALL.
 */
kvrt_status_t kvrt_cluster_handoff_ticket(const kvrt_cluster_handoff_recv_t *recv,
                                          kvrt_handoff_id_t handoff, void *buf, size_t capacity,
                                          size_t *length_out);

typedef enum kvrt_handoff_outcome {
    KVRT_HANDOFF_LANDED = 0,     /* every block landed; the request runs */
    KVRT_HANDOFF_RECOMPUTED = 1, /* failed; the request is recomputed */
    KVRT_HANDOFF_FAILED = 2      /* failed; the request ended ABORTED */
} kvrt_handoff_outcome_t;

/* The end of a hand-off. Frozen (output array element). */
typedef struct kvrt_handoff_completion {
    kvrt_handoff_id_t handoff;
    kvrt_seq_id_t seq;
    uint32_t outcome;       /* kvrt_handoff_outcome_t */
    kvrt_status_t status;   /* KVRT_OK, KVRT_ERR_TIMEOUT, KVRT_ERR_INTEGRITY,
                               KVRT_ERR_CANCELED (the sender gave up) */
    uint32_t first_block;   /* index in the request's table of its first block */
    uint32_t blocks;        /* blocks the hand-off carried */
    /* Of those, counted from the first, the blocks the request keeps as
     * computed: all when LANDED; under RECOMPUTE after the sender gave up
     * (KVRT_ERR_CANCELED), the verified leading ones; else 0. */
    uint32_t landed_blocks;
} kvrt_handoff_completion_t;

/*
 * kvrt_cluster_handoff_poll - takes the agent's notifications (when a
 * channel feeds the receiver, kvrt_cluster_channel_poll has delivered its
 * messages already: poll the channel first), advances the hand-offs they
 * name, ends those that landed (kvrt_arrival_complete),
 * failed or passed their deadline (see the policies), releases quarantined
 * blocks whose time came, and writes up to `capacity` ended hand-offs to
 * completions_out[0 .. *count_out). Ended hand-offs beyond capacity wait
 * for the next poll. Call it every engine step (it never blocks); a
 * hand-off's failure is seen at the first poll past its deadline.
 * Errors: KVRT_ERR_INVALID_ARG (NULL recv/count_out, NULL completions_out
 * with capacity > 0).
 */
kvrt_status_t kvrt_cluster_handoff_poll(kvrt_cluster_handoff_recv_t *recv, uint64_t now_ns,
                                        kvrt_handoff_completion_t *completions_out,
                                        uint32_t capacity, uint32_t *count_out);

/* Counters of a receiver. Frozen. */
typedef struct kvrt_handoff_recv_stats {
    uint64_t accepted;
    uint64_t landed;
    uint64_t recomputed;
    uint64_t failed;
    uint64_t blocks_landed;   /* blocks requests kept, all outcomes */
    uint64_t refused;         /* messages with a bad token, sender or batch */
    uint64_t foreign;         /* notifications that were not hand-off messages */
    uint32_t live;            /* hand-offs waiting for blocks */
    uint32_t quarantined;     /* failed hand-offs whose blocks are still held */
} kvrt_handoff_recv_stats_t;

/* kvrt_cluster_handoff_recv_stats - Errors: KVRT_ERR_INVALID_ARG. */
kvrt_status_t kvrt_cluster_handoff_recv_stats(const kvrt_cluster_handoff_recv_t *recv,
                                              kvrt_handoff_recv_stats_t *stats_out);

enum kvrt_cluster_handoff_sender_params_field {
    KVRT_HANDOFF_SENDER_PARAM_INTEGRITY = 1u << 0, /* integrity */
    KVRT_HANDOFF_SENDER_PARAM_TIMEOUT = 1u << 1,   /* timeout_ms */
    KVRT_HANDOFF_SENDER_PARAM_CONNECT_TIMEOUT = 1u << 2
};

/* agent and region are always read; the rest by field_mask. */
typedef struct kvrt_cluster_handoff_sender_params {
    uint64_t field_mask;
    kvrt_xfer_agent_t *agent;          /* the prefill node's agent */
    const kvrt_xfer_region_t *region;  /* its pool, registered with the POOL bit */
    int integrity;          /* checksum every block (kvrt_xfer_kv_params_t);
                               default 0 */
    uint32_t timeout_ms;    /* per batch, never past the hand-off's deadline;
                               default: the time left to it */
    uint32_t connect_timeout_ms; /* default 5000 */
} kvrt_cluster_handoff_sender_params_t;

/*
 * kvrt_cluster_handoff_sender_create - the prefill side. It keeps one
 * connection per decode node address (up to 64; a failed one is dialed
 * again). agent and region must outlive it.
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_cluster_handoff_sender_create(kvrt_ctx_t *ctx,
                                                 const kvrt_cluster_handoff_sender_params_t *params,
                                                 kvrt_cluster_handoff_sender_t **sender_out);

/* kvrt_cluster_handoff_sender_destroy - disconnects its peers. Every send
 * must have been ended. NULL is a no-op. Errors: KVRT_ERR_BUSY (sends
 * remain; nothing changes). */
kvrt_status_t kvrt_cluster_handoff_sender_destroy(kvrt_cluster_handoff_sender_t *sender);

/*
 * kvrt_cluster_handoff_send_begin - starts sending the hand-off a ticket
 * describes (copied; untrusted: every field is checked). Connects to the
 * decode node if need be (blocking at most connect_timeout_ms) and imports
 * its pool region.
 * The ticket's budget starts counting now: call it when the ticket
 * arrives, not after the prefill (kvrt_cluster_pull_serve, which finds its
 * blocks at begin, counts from its call too).
 * Errors: KVRT_ERR_INVALID_ARG (NULL), KVRT_ERR_PARSE (malformed ticket,
 * another ticket version, a budget over 3600000 ms), those of
 * kvrt_xfer_connect and kvrt_xfer_import, KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_cluster_handoff_send_begin(kvrt_cluster_handoff_sender_t *sender,
                                              const void *ticket, size_t length,
                                              kvrt_cluster_handoff_send_t **send_out);

/*
 * kvrt_cluster_handoff_send_info - the ticket's block count and the index,
 * in the request's block table, of its first block (the decode node's
 * kvrt_seq_await_kv first block: the prefill node sends its own blocks from
 * that index on). Either output may be NULL. Errors: KVRT_ERR_INVALID_ARG.
 */
kvrt_status_t kvrt_cluster_handoff_send_info(const kvrt_cluster_handoff_send_t *send,
                                             uint32_t *num_blocks_out,
                                             uint32_t *first_block_out);

/*
 * kvrt_cluster_handoff_send_blocks - posts the next `count` blocks of the
 * ticket, whose K/V is in local blocks local_blocks[0 .. count) (copied),
 * as one KV write (at most 1024 blocks). The local blocks must stay
 * allocated and unchanged until kvrt_cluster_handoff_send_end() returns.
 * A batch's transfer timeout is the sender's timeout_ms or the time left
 * to the hand-off's deadline, whichever is shorter.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, count 0 or over 1024, more blocks
 * than the ticket has left), KVRT_ERR_TIMEOUT (the hand-off's deadline
 * passed: nothing was posted; end the send, which tells the decode node),
 * KVRT_ERR_BAD_STATE (a batch failed before: end the send), those of
 * kvrt_xfer_kv_post.
 */
kvrt_status_t kvrt_cluster_handoff_send_blocks(kvrt_cluster_handoff_send_t *send,
                                               const int32_t *local_blocks, uint32_t count);

/*
 * kvrt_cluster_handoff_send_test - KVRT_OK once every block of the ticket
 * was posted and every batch completed, KVRT_INPROGRESS before, or the
 * error the first failed batch completed with (KVRT_ERR_TIMEOUT,
 * KVRT_ERR_PEER_FAILED, ...); KVRT_ERR_TIMEOUT also once the hand-off's
 * deadline passed with blocks not yet posted. Never blocks.
 */
kvrt_status_t kvrt_cluster_handoff_send_test(kvrt_cluster_handoff_send_t *send);

/*
 * kvrt_cluster_handoff_send_end - ends the send: batches still in progress
 * are canceled (nothing reads the local blocks afterwards), and unless
 * every block landed the decode node is told the hand-off is abandoned (so
 * it releases the blocks at once instead of after its quarantine). Frees
 * the send; the local blocks may then be freed. NULL is a no-op. Errors:
 * none.
 */
kvrt_status_t kvrt_cluster_handoff_send_end(kvrt_cluster_handoff_send_t *send);


/* ---- pull from peers ------------------------------------------------------
 *
 * A node that misses a prefix a peer holds may fetch it instead of
 * recomputing it. The puller asks kvrt_cluster_pull_plan() which peer holds
 * the longest prefix and whether moving the extra blocks beats prefilling
 * them; if so it admits the request with kvrt_cluster_handoff_accept() (up
 * to the peer's prefix) and ships the ticket, with the prompt's block
 * content hashes, to the peer, which answers with kvrt_cluster_pull_serve():
 * the hand-off runs with the peer as its sender. A peer that lacks blocks
 * it announced sends those it has and gives up; the puller keeps the
 * verified leading blocks (RECOMPUTE policy), recomputes the rest, and
 * kvrt_cluster_pull_forget() drops the peer's false entries.
 */

enum kvrt_cluster_pull_cost_field {
    KVRT_PULL_COST_NET_GBPS = 1u << 0,  /* net_gbps */
    KVRT_PULL_COST_LATENCY = 1u << 1,   /* latency_us */
    KVRT_PULL_COST_PREFILL = 1u << 2,   /* prefill_us_per_token */
    KVRT_PULL_COST_TIER_MASK = 1u << 3, /* tier_mask */
    KVRT_PULL_COST_HOST = 1u << 4,      /* host_gbps, host_latency_us */
    KVRT_PULL_COST_DISK = 1u << 5       /* disk_gbps, disk_latency_us */
};

/*
 * The cost model of a pull (one formula, used by kvrt_cluster_pull_plan and
 * kvrt-sim). block_bytes and tokens_per_block are always read, the rest by
 * field_mask. Moving B blocks of which H come from the peer's host memory
 * and D from its SSD costs, in microseconds,
 *   latency_us + B * bits / (net_gbps * 1e3)
 *   + (H + D > 0: host_latency_us + (H + D) * bits / (host_gbps * 1e3))
 *   + (D > 0:     disk_latency_us + D * bits / (disk_gbps * 1e3))
 * with bits = block_bytes * 8: the peer brings those blocks back into its
 * pool (SSD -> host -> pool) before it sends them. Recomputing them costs
 * B * tokens_per_block * prefill_us_per_token. docs/cluster.md.
 */
typedef struct kvrt_cluster_pull_cost {
    uint64_t field_mask;
    uint64_t block_bytes;        /* one block, every layer (kvrt_pool_info) */
    uint32_t tokens_per_block;
    uint32_t tier_mask;          /* tiers a peer serves pulls from; default
                                    all (kvrt_cluster_pull_serve with the
                                    peer's tier stack) */
    double net_gbps;             /* default 200 */
    double latency_us;           /* default 20 */
    double prefill_us_per_token; /* default 40 (an 8B model on one H100) */
    double host_gbps;            /* host -> pool copies; default 400 */
    double host_latency_us;      /* default 10 */
    double disk_gbps;            /* SSD reads; default 50 */
    double disk_latency_us;      /* default 100 */
} kvrt_cluster_pull_cost_t;

/*
 * kvrt_cluster_pull_cost_us - the cost model above for blocks[t] blocks
 * served from tier t (kvrt_kv_tier_t): *transfer_us_out and
 * *recompute_us_out (either may be NULL). Pure; any thread.
 * Errors: KVRT_ERR_INVALID_ARG (NULL cost/blocks, unknown bits,
 * block_bytes or tokens_per_block 0, a non-positive or non-finite
 * bandwidth, negative or non-finite latencies or prefill cost, bad tier
 * bits).
 */
kvrt_status_t kvrt_cluster_pull_cost_us(const kvrt_cluster_pull_cost_t *cost,
                                        const uint32_t blocks[KVRT_KV_TIERS],
                                        double *transfer_us_out, double *recompute_us_out);

/* The answer of kvrt_cluster_pull_plan. */
typedef struct kvrt_cluster_pull_plan {
    uint64_t node_id;      /* the peer holding the longest prefix; 0: none
                              holds more than this node */
    uint32_t local_blocks; /* this node's prefix, as the directory sees it */
    uint32_t peer_blocks;  /* the peer's prefix */
    double transfer_us;    /* moving blocks [local_blocks, peer_blocks) */
    double recompute_us;   /* prefilling their tokens */
    uint32_t worth;        /* 1: transfer_us < recompute_us */
    /* Of [local_blocks, peer_blocks), the blocks served from the peer's
     * GPU, host and disk tiers (its leading GPU run, then host, then the
     * rest, as the directory sees them). */
    uint32_t tier_blocks[KVRT_KV_TIERS];
} kvrt_cluster_pull_plan_t;

/*
 * kvrt_cluster_pull_plan - for a prompt's block keys (in order), the peer of
 * `model` (other than local_node, which may be 0) holding the longest prefix
 * in cost->tier_mask, and whether pulling the blocks this node lacks is
 * cheaper than recomputing them (kvrt_cluster_pull_cost_us). Resyncing
 * nodes count as holding nothing.
 * Errors: those of kvrt_cluster_pull_cost_us, KVRT_ERR_INVALID_ARG (NULL),
 * KVRT_ERR_UNKNOWN_MODEL.
 */
kvrt_status_t kvrt_cluster_pull_plan(const kvrt_cluster_dir_t *dir,
                                     const kvrt_block_hash_t *model, uint64_t local_node,
                                     const kvrt_block_hash_t *keys, uint32_t num_keys,
                                     const kvrt_cluster_pull_cost_t *cost,
                                     kvrt_cluster_pull_plan_t *plan_out);

/*
 * kvrt_cluster_pull_serve - the peer's side of a pull: begins a send for the
 * ticket (as kvrt_cluster_handoff_send_begin) and finds the blocks it names
 * by their content hashes contents[first .. first + n) (the prompt's full
 * blocks from the first, under `keys`, which may be NULL):
 *  - the leading run `cache` holds: a reference is taken on each (they
 *    cannot be evicted while read) and they are posted at once;
 *  - with `tier` (may be NULL: the prefix cache only), the run that
 *    continues in its host memory or on its SSD: pool blocks are allocated
 *    and the tier brings the blocks back into them (kvrt_tier_onload); they
 *    are posted when the engine passes the tier's report of that onload to
 *    kvrt_cluster_pull_onloaded(). A node stages at most 16384 blocks for
 *    all its pulls at once; beyond that, or when the pool has no room, the
 *    pull ends after the cached run.
 * It stops at the first block it lacks. Then, as for any send:
 * kvrt_cluster_handoff_send_test() until not KVRT_INPROGRESS (KVRT_OK once
 * what it holds landed), and kvrt_cluster_handoff_send_end(), which gives
 * the blocks back (staged ones stay cached) and, when it held fewer blocks
 * than the ticket names, tells the puller it gave up. A send ended while
 * its onload runs keeps the staged blocks until the tier reports it.
 * pool is the cache's (and tier's) pool, the one the sender's region
 * registers. contents is read during the call only.
 * Errors: those of kvrt_cluster_handoff_send_begin and
 * kvrt_cluster_handoff_send_blocks, KVRT_ERR_INVALID_ARG (NULL, a ticket
 * naming blocks beyond num_contents); nothing is left held.
 */
kvrt_status_t kvrt_cluster_pull_serve(kvrt_cluster_handoff_sender_t *sender, kvrt_pool_t *pool,
                                      kvrt_cache_t *cache, kvrt_tier_t *tier,
                                      const kvrt_hash_keys_t *keys,
                                      const kvrt_block_hash_t *contents, uint32_t num_contents,
                                      const void *ticket, size_t length,
                                      kvrt_cluster_handoff_send_t **send_out);

/*
 * kvrt_cluster_pull_onloaded - hands the sender the onloads `tier` reported
 * (kvrt_tier_poll or kvrt_tier_drain: pass every completion; those that are
 * not a pull's are ignored). A pull's staged blocks that landed are posted
 * (a block that did not ends the pull there, as a block the cache lacks
 * does). Call it on the sender's thread. kvrt_cluster_handoff_sender_destroy
 * gives back the blocks of ended pulls not reported yet: destroy the tier
 * stack first, or pass it every report.
 * Errors: KVRT_ERR_INVALID_ARG (NULL sender/tier, NULL done with count > 0).
 */
kvrt_status_t kvrt_cluster_pull_onloaded(kvrt_cluster_handoff_sender_t *sender,
                                         const kvrt_tier_t *tier,
                                         const kvrt_tier_completion_t *done, uint32_t count);

/*
 * kvrt_cluster_pull_forget - after a pull from node_id ended with
 * `completion`: when the peer gave up (KVRT_ERR_CANCELED) short of the
 * blocks it announced, drops its directory entries for the prompt keys it
 * did not deliver, keys[first_block + landed_blocks .. first_block +
 * blocks) (kvrt_cluster_dir_forget). A pull that timed out drops nothing
 * (the peer may be slow or gone; membership handles that). keys are the
 * prompt's block keys from its first block.
 * Errors: KVRT_ERR_INVALID_ARG, those of kvrt_cluster_dir_forget.
 */
kvrt_status_t kvrt_cluster_pull_forget(kvrt_cluster_dir_t *dir, uint64_t node_id,
                                       const kvrt_block_hash_t *keys, uint32_t num_keys,
                                       const kvrt_handoff_completion_t *completion);

/* ---- the cluster channel: tickets and pull requests over the transfer engine
 *
 * What a node ships to a peer besides KV blocks: a hand-off ticket (decode
 * node -> prefill node) and a pull request (puller -> the peer holding
 * the prefix: the ticket and the prompt's block content hashes). A channel
 * carries them as tagged notifications of its agent (kvrt_xfer_notify,
 * 256 bytes each: a message is cut into fragments and put back together
 * on arrival) and hands the hand-off receiver of the same agent its own
 * messages, so one agent serves both. Carrying tickets with the engine's
 * own requests (kvrt_cluster_handoff_ticket + kvrt_cluster_handoff_send_begin)
 * remains possible.
 *
 * Everything received is untrusted and bounded: a message longer than
 * max_message_bytes, a fragment that does not fit its message, more than
 * max_pending_per_peer messages of one peer being put together or waiting
 * to be taken, more than max_buffered_bytes held in all, a message not
 * complete within deadline_ms, a ticket that does not parse, a pull whose
 * ticket names blocks beyond its hashes: each is dropped and counted, and
 * changes nothing else. Threads: one thread at a time per channel (the
 * engine's, with the receiver it feeds).
 */

typedef struct kvrt_cluster_channel kvrt_cluster_channel_t;

typedef enum kvrt_cluster_msg_kind {
    KVRT_CLUSTER_MSG_TICKET = 1, /* a hand-off ticket, for a prefill node */
    KVRT_CLUSTER_MSG_PULL = 2    /* a pull request, for the prefix's holder */
} kvrt_cluster_msg_kind_t;

enum kvrt_cluster_channel_params_field {
    KVRT_CHANNEL_PARAM_RECV = 1u << 0,          /* recv */
    KVRT_CHANNEL_PARAM_MAX_MESSAGE = 1u << 1,   /* max_message_bytes */
    KVRT_CHANNEL_PARAM_MAX_PENDING = 1u << 2,   /* max_pending_per_peer */
    KVRT_CHANNEL_PARAM_MAX_BUFFERED = 1u << 3,  /* max_buffered_bytes */
    KVRT_CHANNEL_PARAM_DEADLINE = 1u << 4,      /* deadline_ms */
    KVRT_CHANNEL_PARAM_CONNECT_TIMEOUT = 1u << 5 /* connect_timeout_ms */
};

/* agent is always read; the rest by field_mask. */
typedef struct kvrt_cluster_channel_params {
    uint64_t field_mask;
    kvrt_xfer_agent_t *agent; /* the node's agent; must outlive the channel */
    /* The agent's hand-off receiver, if it has one: the channel takes the
     * agent's notifications and gives it the hand-off messages among them
     * (its kvrt_cluster_handoff_poll then reads no notification itself).
     * Must outlive the channel. */
    kvrt_cluster_handoff_recv_t *recv;
    uint32_t max_message_bytes;    /* 64 .. 16 MiB; default 1 MiB */
    uint32_t max_pending_per_peer; /* 1 .. 1024; default 64 */
    uint64_t max_buffered_bytes;   /* >= max_message_bytes; default 16 MiB */
    uint32_t deadline_ms;          /* first fragment to taken, 1 .. 600000;
                                      default 5000 */
    uint32_t connect_timeout_ms;   /* dialing a destination; default 5000 */
} kvrt_cluster_channel_params_t;

/*
 * kvrt_cluster_channel_create - a channel over params->agent.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, unknown bits, out of range; a recv
 * over another agent), KVRT_ERR_BUSY (recv is fed by a channel already),
 * KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_cluster_channel_create(kvrt_ctx_t *ctx,
                                          const kvrt_cluster_channel_params_t *params,
                                          kvrt_cluster_channel_t **channel_out);

/* kvrt_cluster_channel_destroy - frees the channel and what it holds; its
 * receiver reads the agent's notifications itself again. NULL: no-op. */
kvrt_status_t kvrt_cluster_channel_destroy(kvrt_cluster_channel_t *channel);

/*
 * kvrt_cluster_channel_send_ticket - sends a hand-off ticket (as
 * kvrt_cluster_handoff_ticket wrote it) to the agent at `address`
 * (kvrt_xfer_agent_address form), dialing it if need be (blocking at most
 * connect_timeout_ms). Returns once every fragment is queued; they arrive
 * in order after what this agent posted to that peer before.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, empty), KVRT_ERR_PARSE (not a
 * ticket), KVRT_ERR_OVERFLOW (longer than max_message_bytes), those of
 * kvrt_xfer_connect and kvrt_xfer_notify (KVRT_ERR_REQUEST_LIMIT: too many
 * notifications in flight; the peer drops the part that came at its
 * deadline).
 */
kvrt_status_t kvrt_cluster_channel_send_ticket(kvrt_cluster_channel_t *channel,
                                               const char *address, const void *ticket,
                                               size_t length);

/*
 * kvrt_cluster_channel_send_pull - sends a pull request: the ticket (as
 * kvrt_cluster_handoff_ticket wrote it) and the prompt's full blocks'
 * content hashes contents[0 .. num_contents) that kvrt_cluster_pull_serve
 * needs. Errors: as kvrt_cluster_channel_send_ticket, and
 * KVRT_ERR_INVALID_ARG (the ticket names blocks beyond num_contents).
 */
kvrt_status_t kvrt_cluster_channel_send_pull(kvrt_cluster_channel_t *channel,
                                             const char *address, const void *ticket,
                                             size_t length, const kvrt_block_hash_t *contents,
                                             uint32_t num_contents);

/* A message taken from a channel. Its pointers stay valid until the next
 * kvrt_cluster_channel_poll or destroy. Frozen (output array element). */
typedef struct kvrt_cluster_msg {
    uint32_t kind;                    /* kvrt_cluster_msg_kind_t */
    uint32_t num_contents;            /* PULL: content hashes */
    char from[KVRT_XFER_NAME_MAX];    /* the sending agent's name */
    const uint8_t *ticket;            /* parsed and checked */
    uint64_t ticket_bytes;
    const kvrt_block_hash_t *contents; /* PULL; NULL for TICKET */
} kvrt_cluster_msg_t;

/*
 * kvrt_cluster_channel_poll - takes the agent's notifications: fragments
 * of channel messages are put together, hand-off messages go to the
 * receiver (call this before kvrt_cluster_handoff_poll each step), others
 * are counted as foreign and dropped; drops partial messages past their
 * deadline (now_ns on the caller's clock); then writes up to `capacity`
 * complete messages, oldest first, to msgs_out[0 .. *count_out). Never
 * blocks. Errors: KVRT_ERR_INVALID_ARG (NULL channel/count_out, NULL
 * msgs_out with capacity > 0).
 */
kvrt_status_t kvrt_cluster_channel_poll(kvrt_cluster_channel_t *channel, uint64_t now_ns,
                                        kvrt_cluster_msg_t *msgs_out, uint32_t capacity,
                                        uint32_t *count_out);

/* Counters of a channel. Frozen. */
typedef struct kvrt_cluster_channel_stats {
    uint64_t sent;          /* messages sent */
    uint64_t received;      /* messages complete and valid */
    uint64_t refused;       /* fragments or messages dropped as malformed */
    uint64_t over_limit;    /* dropped for a bound (size, pending, buffered) */
    uint64_t expired;       /* partial messages dropped at their deadline */
    uint64_t foreign;       /* notifications neither channel nor hand-off */
    uint64_t handoff_notes; /* hand-off messages given to the receiver */
    uint64_t buffered_bytes; /* held now */
} kvrt_cluster_channel_stats_t;

/* kvrt_cluster_channel_stats - Errors: KVRT_ERR_INVALID_ARG. */
kvrt_status_t kvrt_cluster_channel_stats(const kvrt_cluster_channel_t *channel,
                                         kvrt_cluster_channel_stats_t *stats_out);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_CLUSTER_H */
