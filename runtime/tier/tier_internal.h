/*
 * tier_internal.h - the parts of runtime/tier, shared by its files only:
 * the slot directory each tier keeps (slot_dir.c), the SSD file and its
 * block headers (ssd_file.c), the copy/I-O thread (tier_worker.c) and the
 * tier stack itself: lifecycle and poll (tier.c), moving blocks down
 * (tier_offload.c), bringing them back (tier_onload.c) and onload through
 * the scheduler (tier_admit.c).
 *
 * Ownership and threads: the directories, the onload tickets and every
 * counter belong to the engine thread (the pool's thread). The worker
 * thread only executes jobs it is handed (copy a block, write or read an
 * SSD slot) on memory the engine thread reserved for that job, and reports
 * each job's result through a completion queue; the engine thread applies
 * results in kvrt_tier_poll. So no lock guards any directory.
 */
#ifndef KVRT_TIER_INTERNAL_H
#define KVRT_TIER_INTERNAL_H

#include <liburing.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache/hooks.h"
#include "core/completion_queue.h"
#include "core/core.h"
#include "kvrt/kernels.h"
#include "kvrt/sched.h"
#include "kvrt/tier.h"
#include "tier/hooks.h"

#define TIER_ALIGN 4096u
#define TIER_HEADER_BYTES 4096u
#define TIER_MAX_QUEUE_DEPTH 256u

/* A slot, in host memory and on SSD alike: a TIER_HEADER_BYTES header page
 * then the block's bytes padded to TIER_ALIGN. Host slots carry the header
 * page too, so an SSD write or read of a block is one aligned I/O of the
 * whole slot straight from or into its host slot. */
static inline uint64_t tier_slot_bytes(uint64_t block_bytes)
{
    return TIER_HEADER_BYTES + (block_bytes + TIER_ALIGN - 1) / TIER_ALIGN * TIER_ALIGN;
}

/* ---- slot directory (slot_dir.c) ------------------------------------------
 * The slots of one tier: a key -> slot index (open addressing, linear
 * probing, backward-shift deletion), each slot's block name, a free list,
 * and an LRU list of the slots that may be evicted (indexed, not pinned).
 */
typedef enum slot_state {
    SLOT_FREE = 0,
    SLOT_FILLING = 1, /* reserved for a block being written; not indexed */
    SLOT_READY = 2,   /* indexed; evictable when pins == 0 */
    SLOT_STALE = 3    /* unindexed while pinned (a reset): freed by its last unpin */
} slot_state_t;

typedef struct slot_dir {
    uint32_t num_slots;
    uint32_t used;                  /* slots not FREE */
    uint8_t *state;
    uint16_t *pins;                 /* readers in flight */
    uint8_t *evicting;              /* chosen as a victim, copy out in flight */
    kvrt_cache_block_name_t *names;
    int32_t *prev, *next;           /* LRU, sentinel num_slots; -1: not linked */
    int32_t *free_stack;
    uint32_t free_count;
    int32_t *index;                 /* key -> slot + 1; 0 empty */
    uint64_t index_mask;
    /* told of every key indexed and unindexed (tier/hooks.h); NULL: none */
    kvrt_tier_observer_fn observe;
    void *observe_user;
    kvrt_tier_level_t level;
} slot_dir_t;

kvrt_status_t tier_dir_init(slot_dir_t *d, uint32_t num_slots);
void tier_dir_destroy(slot_dir_t *d);
int32_t tier_dir_find(const slot_dir_t *d, const kvrt_block_hash_t *key);
/* A FREE slot, now FILLING; -1 when none is free. */
int32_t tier_dir_take(slot_dir_t *d);
/* Indexes a FILLING slot under name and makes it the most recent; returns
 * the slot now indexed under the key. A slot of the same key indexed
 * already is released first, unless a copy reads it: then that one stays
 * and `slot` is freed instead. */
int32_t tier_dir_publish(slot_dir_t *d, int32_t slot, const kvrt_cache_block_name_t *name);
/* Makes an indexed, unpinned slot the most recent. */
void tier_dir_touch(slot_dir_t *d, int32_t slot);
/* The least recently used evictable slot, or -1. */
int32_t tier_dir_lru(const slot_dir_t *d);
void tier_dir_pin(slot_dir_t *d, int32_t slot);
void tier_dir_unpin(slot_dir_t *d, int32_t slot);
/* Unindexes the slot (if indexed) and frees it. */
void tier_dir_release(slot_dir_t *d, int32_t slot);
/* Unindexes a READY slot at once: frees it, or, while copies read it,
 * makes it STALE, freed by its last unpin. */
void tier_dir_forget(slot_dir_t *d, int32_t slot);

/* ---- the SSD file (ssd_file.c) ---------------------------------------------
 * One file of fixed slots: slot i at i * slot_bytes, a TIER_HEADER_BYTES
 * header then the block's bytes padded to TIER_ALIGN. The header is
 * little-endian: magic, version, root hash, layout hash, block bytes, the
 * block's name, XXH3-64 of the bytes, XXH3-64 of the header before it.
 */
typedef struct ssd_file {
    int fd;
    bool buffered;                /* O_DIRECT refused or not asked for */
    char path[4096];
    uint64_t slot_bytes;
    uint64_t block_bytes;
    kvrt_block_hash_t root;
    uint64_t layout_hash;
} ssd_file_t;

kvrt_status_t tier_ssd_open(kvrt_ctx_t *ctx, ssd_file_t *f, const char *dir,
                            const kvrt_block_hash_t *root, uint64_t layout_hash,
                            uint64_t block_bytes, bool want_buffered);
void tier_ssd_close(ssd_file_t *f);
/* Clears slots [first, first + count) on disk so that no header there
 * reads back (a restart does not index them); a failure is logged. */
void tier_ssd_discard(kvrt_ctx_t *ctx, const ssd_file_t *f, uint32_t first, uint32_t count);
/* Allocates the file's space up front (overwrites, not extending writes,
 * which ext4 and XFS serialize under O_DIRECT); a failure is logged. */
void tier_ssd_reserve(kvrt_ctx_t *ctx, const ssd_file_t *f, uint32_t slots);
/* Reads every header present (buffered preads, at create) and publishes the
 * slots whose header verifies into dir; returns how many. */
uint32_t tier_ssd_rebuild(kvrt_ctx_t *ctx, const ssd_file_t *f, slot_dir_t *dir);
void tier_ssd_header_write(const ssd_file_t *f, const kvrt_cache_block_name_t *name,
                           uint64_t payload_checksum, void *header);
/* Checks a header read back against the file's identity and the name the
 * directory expects; then the payload's checksum. */
bool tier_ssd_header_check(const ssd_file_t *f, const void *header,
                           const kvrt_cache_block_name_t *expect, uint64_t *checksum_out);
uint64_t tier_checksum(const void *bytes, uint64_t len);
/* True when the file was deleted or replaced under kvrt. */
bool tier_ssd_lost(const ssd_file_t *f);

/* ---- jobs and the worker (tier_worker.c) --------------------------------- */
typedef enum tier_job_kind {
    JOB_DEMOTE = 1, /* pool block -> host slot */
    JOB_WRITE = 2,  /* host slot -> SSD slot */
    JOB_READ = 3,   /* SSD slot -> host slot, verified */
    JOB_LAND = 4    /* host slot -> pool block */
} tier_job_kind_t;

typedef struct tier_job {
    tier_job_kind_t kind;
    int32_t block;
    int32_t host_slot;
    int32_t ssd_slot;
    uint32_t ticket_slot;     /* onloads: index in the ticket table */
    uint32_t position;        /* onloads: block index within the ticket */
    bool ahead;               /* JOB_DEMOTE of a block still cached (clean-ahead) */
    uint64_t epoch;           /* the cache's resets when submitted (tier_submit) */
    kvrt_cache_block_name_t name;
    /* results, set by the worker */
    int err;                  /* 0 or a positive errno */
    kvrt_tier_miss_t miss;
} tier_job_t;

/* Test hook: returns a positive errno to fail an SSD operation. */
typedef int (*tier_fault_fn)(void *user_data, tier_job_kind_t kind, int32_t ssd_slot);

typedef struct tier_worker {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    tier_job_t *ring;         /* jobs handed over, not yet taken */
    uint32_t ring_capacity, head, count;
    bool stop, started;
    kvrt_cq_t *done;          /* finished jobs, to the engine thread */
    struct io_uring uring;
    bool uring_ready;
    bool fixed_buffers;       /* host slab registered */
    uint64_t chunk_bytes;     /* slab bytes per registered chunk (whole slots) */
    uint32_t queue_depth;
    /* what jobs touch, read-only for the worker */
    kvrt_kv_cache_t pool_view;
    uint8_t *host_base;       /* host slots of host_stride = tier_slot_bytes() */
    uint64_t host_stride;
    const ssd_file_t *ssd;
    tier_fault_fn fault;
    void *fault_user;
    bool has_device;          /* device pool: copies on the engine's stream */
    kvrt_tier_device_t device;
} tier_worker_t;

kvrt_status_t tier_worker_start(kvrt_ctx_t *ctx, tier_worker_t *w, uint32_t host_slots);
void tier_worker_stop(tier_worker_t *w);
/* Hands a job over; false when the ring is full. */
bool tier_worker_submit(tier_worker_t *w, const tier_job_t *job);

/* ---- the tier stack (tier.c, tier_offload.c, tier_onload.c, tier_admit.c) - */

typedef struct tier_admit_stats {
    uint64_t admitted;      /* requests put in WAITING_KV with an onload */
    uint64_t landed_blocks; /* blocks their onloads brought back */
    uint64_t failed;        /* onloads that landed fewer blocks than asked */
} tier_admit_stats_t;

#define MAX_TICKETS 64u
/* Clean-ahead looks at most this many queue depths of victims ahead: about
 * what a long prompt's allocation evicts at once. */
#define AHEAD_WINDOW 16u
#define MAX_ONLOAD_BLOCKS 65536u

/* A clean-ahead copy of a block the cache still holds (no reference): if
 * the cache evicts it meanwhile, the sink keeps it until the copy is done,
 * or, when it may not keep it, marks the copy torn (the block is reused at
 * once) so the copy is thrown away. */
enum ahead_state { AHEAD_NONE = 0, AHEAD_COPYING = 1, AHEAD_KEPT = 2, AHEAD_TORN = 3 };

typedef enum block_fate { FATE_PENDING = 0, FATE_LANDED = 1, FATE_FAILED = 2 } block_fate_t;

typedef struct ticket {
    uint64_t id;             /* 0: free */
    uint32_t count, accepted, pending;
    uint32_t next;           /* first block not started yet (< accepted: retried in poll) */
    kvrt_tier_miss_t miss;   /* of the first block not accepted */
    int32_t *blocks;
    kvrt_cache_block_name_t *names;
    uint8_t *fate;
    kvrt_tier_miss_t *misses;
    kvrt_sched_t *sched;     /* kvrt_tier_admit: the arrival this ticket completes */
    kvrt_arrival_id_t arrival;
    uint64_t epoch;          /* the cache's resets when it was opened */
} ticket_t;

struct kvrt_tier {
    kvrt_owned_t owned;      /* first: kvrt_ctx_destroy() tears a forgotten tier down */
    kvrt_ctx_t *ctx;
    kvrt_cache_t *cache;
    kvrt_pool_t *pool;
    uint32_t group_id;
    uint32_t queue_depth;
    kvrt_block_hash_t root;
    slot_dir_t host, ssd;
    bool has_ssd;
    ssd_file_t file;
    bool file_lost;
    char ssd_dir[4096];
    void *slab_raw;          /* what kvrt_host_alloc returned */
    uint8_t *slab;           /* host slots: slab_raw rounded up to 2 MiB */
    bool slab_pinned;        /* by the device's pin (device pools) */
    tier_worker_t worker;
    tier_job_t *done;        /* poll's buffer */
    uint32_t in_flight;
    uint32_t writebacks;     /* host slots on their way to SSD */
    uint32_t demotes;        /* pool -> host copies in flight */
    uint8_t *ahead;          /* per pool block: enum ahead_state */
    uint32_t ahead_backoff;  /* polls clean-ahead pauses after a failed copy */
    uint32_t ahead_skip;     /* polls left in the current pause */
    uint32_t wt_hits;        /* write-through after this many pool hits (0: off) */
    uint16_t *hit_count;     /* per pool block: pool hits kvrt_tier_match saw ... */
    uint64_t *hit_key;       /* ... for the block cached under this key */
    bool ahead_settled;      /* the last scan reached the window's end ... */
    uint64_t ahead_clock;    /* ... at this count of changes (tier_clean_ahead) */
    uint32_t ahead_slack;    /* changes before the next scan (tier_clean_ahead) */
    bool ahead_file_lost;    /* ... with the SSD file in this state */
    uint32_t tokens_per_block;
    uint32_t open_tickets;   /* tickets not finished: poll advances them */
    uint64_t next_file_check_ns; /* poll checks the SSD file from then on */
    int32_t *peek_blocks;    /* clean-ahead candidates, AHEAD_WINDOW x queue_depth */
    kvrt_cache_block_name_t *peek_names;
    kvrt_tier_level_stats_t host_stats, ssd_stats;
    ticket_t tickets[MAX_TICKETS];
    uint64_t next_ticket;
    kvrt_tier_completion_t *ready; /* finished tickets not yet reported */
    uint32_t ready_count;
    tier_admit_stats_t admit_stats;
    uint64_t write_throughs; /* blocks copied by write-through */
    uint64_t resets;         /* the cache's resets seen (tier_sync_reset) */
    bool destroying;         /* kvrt_tier_destroy: onloads it abandons publish nothing */
};

/* tier.c */
/* Hands a job to the worker (stamped with the reset epoch) and counts it
 * in flight; false when full. */
bool tier_submit(kvrt_tier_t *t, const tier_job_t *job);
/* When the cache was reset since the last call (kvrt_cache_resets): every
 * block the levels hold was computed before it, so each is unindexed at
 * once (slots copies still read are freed when they end), the SSD file's
 * space for them is given back, and jobs and tickets of the old epoch
 * publish nothing. Called first by every entry point: the sink, poll,
 * match and onload. One compare when nothing was reset. */
void tier_sync_reset(kvrt_tier_t *t);
/* A job or ticket of an epoch before the last reset. */
static inline bool tier_stale(const kvrt_tier_t *t, uint64_t epoch) { return epoch != t->resets; }
void tier_refresh_used(kvrt_tier_t *t);

/* tier_offload.c: the eviction sink, clean-ahead, write-through,
 * write-back and their completions. */
kvrt_cache_sink_verdict_t tier_sink(void *user, const kvrt_cache_victim_t *victim);
/* Frees or starts freeing host slots until queue_depth are free or on
 * their way out (write-back). */
void tier_make_room(kvrt_tier_t *t);
bool tier_copy_ahead(kvrt_tier_t *t, int32_t b, const kvrt_cache_block_name_t *name);
void tier_clean_ahead(kvrt_tier_t *t);
void tier_write_through(kvrt_tier_t *t, const int32_t *blocks,
                        const kvrt_block_hash_t *contents, uint32_t n,
                        const kvrt_hash_keys_t *keys);
void tier_log_ssd_failure(kvrt_tier_t *t, const tier_job_t *job, const char *what);
void tier_finish_demote(kvrt_tier_t *t, const tier_job_t *job);
void tier_finish_write(kvrt_tier_t *t, const tier_job_t *job);
/* Drops the SSD tier's blocks when its file was deleted or replaced, and
 * creates the file again once nothing is in flight. */
void tier_check_file(kvrt_tier_t *t);

/* tier_onload.c: tickets and their completions. */
/* Follows a prompt's blocks from..to-1 (each chained on the content hash
 * before it, *parent before the first) through the host directory, then
 * the SSD one (NULL: none), and stops at the first block in neither.
 * Writes each found block's content hash to hashes[i] and, with in_ssd,
 * whether it was found on SSD. Returns how many were found; *ssd_count_out
 * of them on SSD. (kvrt_tier_match; kvrt-sim's tier model.) */
uint32_t tier_follow_below(const slot_dir_t *host, const slot_dir_t *ssd,
                           const kvrt_block_hash_t *parent, const int32_t *tokens,
                           uint32_t tokens_per_block, uint32_t from, uint32_t to,
                           const kvrt_hash_keys_t *keys, kvrt_block_hash_t *hashes,
                           uint8_t *in_ssd, uint32_t *ssd_count_out);
void tier_advance(kvrt_tier_t *t, ticket_t *k);
void tier_finish_read(kvrt_tier_t *t, const tier_job_t *job);
void tier_finish_land(kvrt_tier_t *t, const tier_job_t *job);

/* kvrt_tier_onload; with sched != NULL the ticket is not reported by poll
 * but completes `arrival` (kvrt_arrival_complete with the blocks landed). */
kvrt_status_t tier_onload_start(kvrt_tier_t *tier, uint32_t first_index, uint32_t count,
                                const kvrt_block_hash_t *contents,
                                const kvrt_block_hash_t *parent, const kvrt_hash_keys_t *keys,
                                const int32_t *blocks, kvrt_sched_t *sched,
                                kvrt_arrival_id_t arrival, uint64_t *ticket_out,
                                uint32_t *accepted_out);
kvrt_pool_t *tier_pool(const kvrt_tier_t *tier);
kvrt_cache_t *tier_cache(const kvrt_tier_t *tier);
/* The slot directory of a level, for kvrt_tier_observe (tier_observe.c). */
slot_dir_t *tier_level_dir(kvrt_tier_t *tier, kvrt_tier_level_t level);
tier_admit_stats_t *tier_admit_stats(kvrt_tier_t *tier);

/* Tests: installs a fault hook (NULL removes it); call with nothing in
 * flight (after kvrt_tier_drain). */
void kvrt_tier_set_fault_hook(kvrt_tier_t *tier, tier_fault_fn fn, void *user_data);

#endif /* KVRT_TIER_INTERNAL_H */
