/*
 * kvrt/tier.h - tiers below the pool: a host-DRAM tier and an SSD tier
 * that keep the blocks the prefix cache evicts, and bring them back.
 *
 * A tier stack is attached to one prefix cache (kvrt_tier_create). From
 * then on, a block the cache evicts is *offloaded*: copied whole, in the
 * staging order of kvrt_cpu_gather_blocks (include/kvrt/kernels.h), into a
 * host slot; when host slots run short the least recently used host blocks
 * are written back to the SSD tier. Neither ever delays an allocation: a
 * victim the tier cannot take at once (no slot, queue full) is dropped and
 * counted. A later prompt asks kvrt_tier_match how far its prefix goes in
 * the pool, then in host memory, then on SSD, and kvrt_tier_onload starts
 * bringing the continuation back (SSD -> host -> pool) into blocks the
 * caller allocated; kvrt_tier_poll reports when they have landed, after
 * which they are cached again and readable. Until then the caller must not
 * read them: no KV is read before its copy completed.
 *
 * Copies and I/O run on one kvrt thread per tier stack; the engine thread
 * only queues work and collects completions (kvrt_tier_poll, or wait on
 * kvrt_tier_fd). SSD I/O is io_uring with registered buffers and a bounded
 * queue depth, O_DIRECT on a file under the directory the engine names
 * (buffered I/O where the file system refuses O_DIRECT, logged). Every SSD
 * block carries a header with the model's root hash, the layout, the
 * block's name (key, content hash, parent, depth) and an XXH3 checksum of
 * its bytes; a read that does not verify is a miss with a reason, never
 * data. At create the SSD index is rebuilt from the file, so a restarted
 * process hits what it offloaded before; the file name and every header
 * carry the root hash (model fingerprint) and layout, so nothing from
 * another model or layout is served.
 *
 * Pools: a pool whose memory the CPU addresses (kvrt-allocated, or
 * KVRT_TIER_HOST_POOL) is copied by the tier's thread with memcpy movers
 * (kvrt_cpu_gather_blocks / kvrt_cpu_scatter_blocks). A device (GPU) pool
 * needs kvrt_tier_device_t (KVRT_TIER_PARAM_DEVICE): the tier's thread
 * enqueues each block's copy on the engine's stream with the kernels' host
 * staging movers (kvrt_cuda_gather_blocks_to_host /
 * kvrt_cuda_scatter_blocks_from_host) and calls the engine's sync on that
 * stream before it reports the copy done, so a block is neither freed
 * after an offload nor readable after an onload before its copy completed.
 *
 * Threads: every function follows the pool's thread rule (the thread that
 * drives the pool, its cache and scheduler), except kvrt_tier_fd's
 * descriptor, which any thread may wait on.
 */
#ifndef KVRT_TIER_H
#define KVRT_TIER_H

#include <stdint.h>

#include "kvrt/cache.h"
#include "kvrt/context.h"
#include "kvrt/kernels.h"
#include "kvrt/sched.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvrt_tier kvrt_tier_t;

enum kvrt_tier_params_field {
    KVRT_TIER_PARAM_HOST_BLOCKS = 1u << 0, /* host_blocks */
    KVRT_TIER_PARAM_SSD = 1u << 1,         /* ssd_dir, ssd_blocks */
    KVRT_TIER_PARAM_QUEUE_DEPTH = 1u << 2, /* queue_depth */
    KVRT_TIER_PARAM_FLAGS = 1u << 3,       /* flags */
    KVRT_TIER_PARAM_DEVICE = 1u << 4,      /* device */
    KVRT_TIER_PARAM_WRITE_THROUGH = 1u << 5 /* write_through_hits */
};

enum kvrt_tier_flags {
    /* Buffered SSD I/O even where O_DIRECT works (tests, tmpfs). */
    KVRT_TIER_SSD_BUFFERED = 1u << 0,
    /* The pool's engine-provided memory is host memory (pools kvrt
     * allocated are known to be). */
    KVRT_TIER_HOST_POOL = 1u << 1
};

/*
 * How the tier reaches a device pool: the engine's CUDA stream for block
 * copies and the two things kvrt cannot do without linking CUDA itself.
 * Copied at create; the callbacks run on the tier's thread and must stay
 * valid until kvrt_tier_destroy returns.
 *   stream  the stream the copies are enqueued on (NULL: the legacy default
 *           stream); give it one of its own (cudaStreamNonBlocking) so the
 *           copies overlap the engine's kernels
 *   sync    waits until `stream` passed every copy enqueued so far
 *           (cudaStreamSynchronize, or cudaEventRecord + cudaEventSynchronize);
 *           returns 0, or nonzero when the copies failed (the blocks are
 *           then dropped or missed, counted in errors)
 *   pin     makes [addr, addr + bytes) pinned for the copy engines
 *           (cudaHostRegister); called once at create with the host slots;
 *           nonzero fails the create with KVRT_ERR_DEVICE
 *   unpin   undoes pin (cudaHostUnregister), at destroy
 */
typedef struct kvrt_tier_device {
    kvrt_cuda_stream_t *stream;
    int (*sync)(void *user, kvrt_cuda_stream_t *stream);
    int (*pin)(void *user, void *addr, uint64_t bytes);
    void (*unpin)(void *user, void *addr);
    void *user;
} kvrt_tier_device_t;

typedef struct kvrt_tier_params {
    uint64_t field_mask;
    uint32_t host_blocks;  /* host slots, 1..2^24; required */
    uint32_t ssd_blocks;   /* SSD slots, 1..2^26 (with KVRT_TIER_PARAM_SSD) */
    const char *ssd_dir;   /* existing directory; copied */
    uint32_t queue_depth;  /* I/O and copies in flight, 1..256; default 32 */
    uint32_t flags;        /* enum kvrt_tier_flags */
    const kvrt_tier_device_t *device; /* a device pool's copies; copied */
    /* Write-through: a pool block that kvrt_tier_match (or kvrt_tier_admit)
     * found this many times is copied to host memory while still in use,
     * so its eviction later costs nothing. 0..65535; default 0 (off: only
     * the eviction tail is copied ahead). Hits the caller's own
     * kvrt_cache_match or the scheduler's admissions make are not seen. */
    uint32_t write_through_hits;
} kvrt_tier_params_t;

/*
 * kvrt_tier_create - builds the tier stack under `cache` and attaches it as
 * the cache's eviction sink. Host slots come from kvrt's hugepage-aligned
 * host memory (one region per tier, registrable for RDMA once; each slot is
 * the block padded to 4 KiB plus a 4 KiB header page, faulted in here). With an SSD
 * tier, opens or creates ssd_dir/kvrt-<root>-<layout>.kvblk and rebuilds
 * its index (blocks whose header does not verify are not indexed); the
 * file stays locked (flock) until kvrt_tier_destroy, so no second tier,
 * in this process or another, shares it.
 * The tier holds the cache: kvrt_cache_destroy refuses (KVRT_ERR_BUSY)
 * until kvrt_tier_destroy; kvrt_ctx_destroy destroys a tier left alive
 * before the caches.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, unknown mask bits, out-of-range
 * values, ssd_dir missing, a device without sync/pin/unpin, a device for a
 * pool kvrt allocated in host memory), KVRT_ERR_UNSUPPORTED (a pool of
 * engine memory with neither KVRT_TIER_HOST_POOL nor a device),
 * KVRT_ERR_DEVICE (pin failed),
 * KVRT_ERR_BUSY (the cache already has a sink, or another tier, in this
 * process or another, has the SSD file open: give each its own ssd_dir),
 * KVRT_ERR_NO_MEMORY,
 * KVRT_ERR_IO (the SSD file or io_uring could not be set up).
 */
kvrt_status_t kvrt_tier_create(kvrt_cache_t *cache, const kvrt_tier_params_t *params,
                               kvrt_tier_t **tier_out);

/*
 * kvrt_tier_destroy - waits for copies and I/O in flight (bounded by the
 * queue depth), frees every pool block the tier held, detaches from the
 * cache, closes the SSD file (its blocks stay for the next process) and
 * frees the host slots. Onloads not yet reported are abandoned: nothing
 * they copied is cached or reported, and their destination blocks are the
 * caller's again, to free or reuse. Requests kvrt_tier_admit admitted are
 * completed: with the leading blocks that landed when every block of the
 * ticket had been started, else with 0 (they recompute). NULL is a no-op.
 */
kvrt_status_t kvrt_tier_destroy(kvrt_tier_t *tier);

/* Where a prompt's prefix continues, block by block, pool first. */
typedef struct kvrt_tier_match {
    uint32_t gpu_blocks;  /* in the pool: referenced, as kvrt_cache_match */
    uint32_t host_blocks; /* then found in host memory */
    uint32_t ssd_blocks;  /* then on SSD (only what continues the run) */
    uint32_t unused;
} kvrt_tier_match_t;

/*
 * kvrt_tier_match - kvrt_cache_match(), then follows the chain past the
 * pool's hits through the host and SSD tiers. blocks_out and hashes_out
 * (both max_blocks long, hashes_out required) get the pool hits as in
 * kvrt_cache_match; hashes_out continues with the content hashes of the
 * blocks found in the tiers, the order kvrt_tier_onload wants them.
 * Only the pool hits hold references. Errors: those of kvrt_cache_match.
 */
kvrt_status_t kvrt_tier_match(kvrt_tier_t *tier, const int32_t *tokens, uint32_t num_tokens,
                              const kvrt_hash_keys_t *keys, uint32_t max_blocks,
                              int32_t *blocks_out, kvrt_block_hash_t *hashes_out,
                              kvrt_tier_match_t *match_out);

/*
 * kvrt_tier_onload - starts bringing blocks first_index..first_index+count-1
 * of a sequence back into the pool blocks `blocks` (allocated by the
 * caller, used, not cached: e.g. a table's fresh blocks). contents are
 * those blocks' content hashes (from kvrt_tier_match), parent the content
 * hash of block first_index-1 (NULL when first_index is 0), keys the
 * sequence's hash keys (NULL for none). Returns at once with a ticket that
 * kvrt_tier_poll reports exactly once. *accepted_out (may be NULL) is how
 * many leading blocks were started: a block no longer in any tier, or no
 * host slot free for an SSD read, ends the run; 0 still yields a ticket.
 * The caller must neither read nor free `blocks` until the ticket is
 * reported. Errors: KVRT_ERR_INVALID_ARG (also: a block given twice,
 * indexes past 2^32 - 1), KVRT_ERR_NO_MEMORY, KVRT_ERR_REQUEST_LIMIT (queue
 * full: try later), KVRT_ERR_BAD_STATE (the tier's thread failed).
 */
kvrt_status_t kvrt_tier_onload(kvrt_tier_t *tier, uint32_t first_index, uint32_t count,
                               const kvrt_block_hash_t *contents,
                               const kvrt_block_hash_t *parent, const kvrt_hash_keys_t *keys,
                               const int32_t *blocks, uint64_t *ticket_out,
                               uint32_t *accepted_out);

/* Why an onloaded block did not land. */
typedef enum kvrt_tier_miss {
    KVRT_TIER_MISS_NONE = 0,
    KVRT_TIER_MISS_GONE = 1,      /* evicted from every tier before it could start */
    KVRT_TIER_MISS_CHECKSUM = 2,  /* SSD header or bytes did not verify */
    KVRT_TIER_MISS_TRUNCATED = 3, /* the SSD file ended before the block */
    KVRT_TIER_MISS_IO = 4,        /* the read failed */
    KVRT_TIER_MISS_NO_SLOT = 5,   /* no host slot for the SSD read */
    KVRT_TIER_MISS_RESET = 6      /* the cache was reset (kvrt_cache_reset) while
                                     it was on its way: K/V of before is not
                                     served after */
} kvrt_tier_miss_t;

typedef struct kvrt_tier_completion {
    uint64_t ticket;
    uint32_t requested;    /* count passed to kvrt_tier_onload */
    uint32_t landed;       /* leading blocks now in the pool, cached, readable */
    kvrt_tier_miss_t miss; /* why block `landed` did not (NONE if all did) */
    uint32_t unused;
} kvrt_tier_completion_t;

/*
 * kvrt_tier_poll - collects finished copies and I/O: frees the pool blocks
 * offloads held, moves blocks between tiers, inserts landed onload blocks
 * into the cache, and writes up to `capacity` finished onloads to out.
 * Never blocks. *count_out may be 0. Errors: KVRT_ERR_INVALID_ARG.
 */
kvrt_status_t kvrt_tier_poll(kvrt_tier_t *tier, kvrt_tier_completion_t *out,
                             uint32_t capacity, uint32_t *count_out);

/* An eventfd readable when kvrt_tier_poll has work; valid until destroy. */
int kvrt_tier_fd(const kvrt_tier_t *tier);

/*
 * kvrt_tier_drain - polls until no copy or I/O is in flight or timeout_ms
 * passes, writing finished onloads as kvrt_tier_poll does. For shutdown
 * and tests. Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_TIMEOUT.
 */
kvrt_status_t kvrt_tier_drain(kvrt_tier_t *tier, uint32_t timeout_ms,
                              kvrt_tier_completion_t *out, uint32_t capacity,
                              uint32_t *count_out);

/*
 * kvrt_tier_admit - admits a queued request (WAITING or PREEMPTED) of
 * `sched` whose prompt continues below the pool: follows the prompt
 * through the pool, host and SSD (kvrt_tier_match), and when host or SSD
 * hold the continuation, puts the request in WAITING_KV for those blocks
 * (kvrt_seq_await_kv, with deadline_ns on the step clock, 0 for none) and
 * starts their onload into the blocks the scheduler allocated. Returns at
 * once; the scheduler keeps planning other requests. kvrt_tier_poll (call
 * it once per step, before kvrt_sched_step, or when kvrt_tier_fd is
 * readable) completes the arrival when the onload ends
 * (kvrt_arrival_complete with the blocks landed): the request runs from
 * its next admission with those blocks computed and recomputes the rest.
 * An onload that fails lands short and the rest is recomputed; one slower
 * than the deadline is given up by the scheduler at that step (the
 * request recomputes everything it did not hit in the pool) and its
 * blocks come back to the pool when the copies end. Admission tickets are
 * never reported by kvrt_tier_poll.
 * tokens/num_tokens/keys must be the request's prompt and hash keys, as
 * given to kvrt_seq_add (num_tokens is checked against the request).
 * Only whole blocks before the prompt's last token are onloaded.
 * *out (may be NULL): where the prefix continues, the arrival (0 when
 * nothing was started: no block below the pool, and the request stays
 * queued as it was) and the blocks being brought back.
 * Rules: the scheduler must be over the tier's pool and cache; destroy the
 * tier before any scheduler it admitted requests to (kvrt_tier_destroy
 * completes their arrivals, with what landed or 0: see there;
 * kvrt_ctx_destroy tears tiers down before schedulers).
 * Errors: KVRT_ERR_INVALID_ARG (NULL tier/sched/tokens, num_tokens not the
 * request's prompt length, a scheduler not over the tier's pool and cache
 * or of several cache groups, blocks that are not the request's fresh
 * blocks of the tier's pool), those of
 * kvrt_tier_match and kvrt_seq_await_kv (then nothing changed), and
 * KVRT_ERR_REQUEST_LIMIT (onload queue full: the arrival is completed with
 * 0 blocks and the request is queued again, to recompute), KVRT_ERR_NO_MEMORY.
 */
typedef struct kvrt_tier_admission {
    kvrt_tier_match_t match;   /* pool / host / SSD blocks of the prefix */
    kvrt_arrival_id_t arrival; /* 0: nothing started */
    uint64_t ticket;
    uint32_t onload_blocks;    /* blocks being brought back */
    uint32_t unused;
} kvrt_tier_admission_t;

kvrt_status_t kvrt_tier_admit(kvrt_tier_t *tier, kvrt_sched_t *sched, kvrt_seq_id_t id,
                              const int32_t *tokens, uint32_t num_tokens,
                              const kvrt_hash_keys_t *keys, uint64_t deadline_ns,
                              kvrt_tier_admission_t *out);

/* One tier's counters; also ctl nodes tier.<group>.host.* and .ssd.*. */
typedef struct kvrt_tier_level_stats {
    uint64_t capacity_blocks;
    uint64_t used_blocks;   /* slots holding a block (or being filled) */
    uint64_t hits;          /* blocks kvrt_tier_match found here (first here) */
    uint64_t offloads;      /* blocks written into this tier from the pool */
    uint64_t onloads;       /* blocks read out of it toward the pool: an SSD
                             * block lands through a host slot, so it counts
                             * in ssd.onloads and in host.onloads */
    uint64_t drops;         /* blocks it could not take (busy, full, failed) */
    uint64_t errors;        /* I/O errors, verify failures, lost files */
    uint64_t evictions;     /* blocks pushed out (to the next tier or away),
                             * host: also for the slot an SSD read takes */
} kvrt_tier_level_stats_t;

typedef struct kvrt_tier_stats {
    kvrt_tier_level_stats_t host;
    kvrt_tier_level_stats_t ssd;
    uint32_t ssd_buffered;  /* 1 when the SSD tier fell back to buffered I/O */
    uint32_t in_flight;     /* copies and I/O queued or running */
    uint32_t unused;
    uint64_t admitted;               /* kvrt_tier_admit calls that started an onload */
    uint64_t admitted_landed_blocks; /* blocks those onloads brought back */
    uint64_t admitted_failed;        /* of them, onloads that landed short */
    uint64_t write_throughs;         /* blocks copied by write-through */
} kvrt_tier_stats_t;

/* kvrt_tier_stats - a snapshot. Errors: KVRT_ERR_INVALID_ARG. */
kvrt_status_t kvrt_tier_stats(const kvrt_tier_t *tier, kvrt_tier_stats_t *stats_out);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_TIER_H */
