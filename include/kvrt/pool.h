/*
 * kvrt/pool.h - paged KV block pools, one per cache group.
 *
 * A pool is a fixed array of `num_blocks` KV blocks of one layout. Block 0 is
 * the reserved null block: never allocated, used to pad block tables, so
 * `num_blocks - 1` blocks are usable. Every other block is in exactly one
 * state:
 *   free    on the free list, reference count 0;
 *   used    reference count >= 1 (held by block tables or callers);
 *   cached  reference count 0 but kept by a prefix cache attached to the
 *           pool; reclaimed (evicted) only when an allocation finds no free
 *           block.
 * free + used + cached == num_blocks - 1 at all times.
 *
 * Memory: the engine hands over the base of `num_blocks * block_bytes` bytes
 * (usually GPU memory; kvrt never touches it on the CPU) or kvrt allocates
 * host memory from its arena (2 MiB aligned, prefaulted, hugepages where
 * available, and registrable for RDMA once).
 *
 * Allocation, reference and free are O(1) per block and never call malloc.
 * Threads: one thread at a time per pool (the context's rule).
 */
#ifndef KVRT_POOL_H
#define KVRT_POOL_H

#include <stdint.h>

#include "kvrt/context.h"
#include "kvrt/layout.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvrt_pool kvrt_pool_t;

/* The null block id, used as padding in block tables. */
#define KVRT_NULL_BLOCK 0

enum kvrt_pool_params_field {
    KVRT_POOL_PARAM_BASE = 1u << 0,       /* base and base_bytes */
    KVRT_POOL_PARAM_WATERMARK = 1u << 1,  /* watermark_blocks */
    KVRT_POOL_PARAM_NAME = 1u << 2,
    KVRT_POOL_PARAM_MAX_TABLES = 1u << 3  /* max_tables */
};

/*
 * Pool parameters. layout and num_blocks are always read, the rest by
 * field_mask. The layout is embedded by value: kvrt_kv_layout_t is frozen
 * (kvrt/layout.h), so this struct can still grow at its end.
 */
typedef struct kvrt_pool_params {
    uint64_t field_mask;
    kvrt_kv_layout_t layout;
    uint32_t num_blocks;        /* 2 .. 2^31-1, block 0 included */
    /* Engine-owned memory of at least num_blocks * block_bytes; must outlive
     * the pool. Without it kvrt allocates host memory. */
    void *base;
    uint64_t base_bytes;
    /* Free blocks kept back from admission (see kvrt_pool_above_watermark);
     * default 1% of the pool. */
    uint32_t watermark_blocks;
    const char *name;           /* copied; default "pool<N>" */
    uint32_t max_tables;        /* live block tables at once, default 65536 */
} kvrt_pool_params_t;

/*
 * A point-in-time view of a pool's counters. Grows at its end in later
 * minor versions: kvrt_pool_info() passes sizeof(kvrt_pool_info_t) of the
 * caller's header, and the library writes exactly that many bytes
 * (docs/abi.md, "Output structs").
 */
typedef struct kvrt_pool_info {
    uint32_t group_id;          /* index of this pool (cache group) in its ctx */
    uint32_t num_blocks;        /* including the null block */
    uint32_t free_blocks;
    uint32_t used_blocks;
    uint32_t cached_blocks;     /* reclaimable, held only by a prefix cache */
    uint32_t watermark_blocks;
    uint32_t live_tables;
    uint32_t tokens_per_block;
    uint64_t block_bytes;
    void *base;
    int host_memory;            /* 1 when kvrt allocated base in host memory */
    int hugepages;              /* 1 when host memory is on hugetlb pages */
} kvrt_pool_info_t;

/*
 * kvrt_pool_create - creates a pool (cache group) in ctx. params is copied.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, unknown field bits, num_blocks out of
 * range, base_bytes too small, watermark >= num_blocks), KVRT_ERR_BAD_LAYOUT,
 * KVRT_ERR_OVERFLOW (num_blocks * block_bytes overflows), KVRT_ERR_NO_MEMORY.
 * The per-block bookkeeping (metadata and free stack, 12 bytes a block) is
 * made resident here, so that no later allocation or release faults in a
 * page of it.
 * Destroy with kvrt_pool_destroy() or with the context.
 */
kvrt_status_t kvrt_pool_create(kvrt_ctx_t *ctx, const kvrt_pool_params_t *params,
                               kvrt_pool_t **pool_out);

/*
 * kvrt_pool_destroy - frees the pool, its block tables and (if kvrt owns it)
 * its memory. A prefix cache, scheduler or transfer-agent registration
 * built on the pool must be destroyed first. kvrt_pool_destroy(NULL) is a
 * no-op. (kvrt_ctx_destroy() frees them all in the right order.)
 * Errors: KVRT_ERR_BUSY (still in use; nothing is freed).
 */
kvrt_status_t kvrt_pool_destroy(kvrt_pool_t *pool);

/*
 * kvrt_pool_alloc - allocates `count` blocks, each with reference count 1,
 * writing their ids to blocks_out[0..count). All or nothing: when fewer than
 * `count` blocks are free or reclaimable, nothing changes. Cached blocks are
 * reclaimed (evicted from the prefix cache) only when the free list runs out:
 * the free blocks come first, then the victims in the order the cache
 * evicted them, so one call for n blocks returns what n calls for one
 * would (without an eviction sink, which may keep different victims when
 * asked for n at once).
 * Errors: KVRT_ERR_INVALID_ARG (NULL pool/blocks_out, count 0),
 * KVRT_ERR_NO_BLOCKS.
 */
kvrt_status_t kvrt_pool_alloc(kvrt_pool_t *pool, uint32_t count,
                              int32_t *blocks_out);

/*
 * kvrt_pool_ref - takes one more reference on each listed used block.
 * A reference keeps the block's K/V as it is only for full blocks of a
 * scheduler's running request: the scheduler writes a request's next
 * tokens into its partial last block, taking it for the request's own
 * (kvrt/sched.h; docs/scheduler.md, *Cost*); hold one on such a block
 * only while that request does not run.
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_UNKNOWN_BLOCK (a block that is free,
 * cached, the null block or out of range; nothing changes), KVRT_ERR_OVERFLOW
 * (a reference count would pass 2^31-1).
 */
kvrt_status_t kvrt_pool_ref(kvrt_pool_t *pool, uint32_t count,
                            const int32_t *blocks);

/*
 * kvrt_pool_free - drops one reference on each listed block; a block whose
 * count reaches 0 becomes free (or cached, when a prefix cache holds it).
 * A block may appear several times (one reference dropped per appearance).
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_UNKNOWN_BLOCK (a listed block holds
 * fewer references than it appears; nothing changes).
 */
kvrt_status_t kvrt_pool_free(kvrt_pool_t *pool, uint32_t count,
                             const int32_t *blocks);

/* kvrt_pool_refcount - reference count of a block (0 for free or cached).
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_UNKNOWN_BLOCK (out of range). */
kvrt_status_t kvrt_pool_refcount(const kvrt_pool_t *pool, int32_t block,
                                 uint32_t *refcount_out);

/*
 * kvrt_pool_info_sized - do not call directly from C; use kvrt_pool_info().
 * Writes the pool's counters and geometry to the info_size bytes at
 * info_out, info_size being sizeof(kvrt_pool_info_t) in the caller's header
 * (bindings pass their own struct's size): fields past info_size are not
 * written; bytes past the library's own struct are zeroed.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, info_size below the 1.0 struct).
 */
kvrt_status_t kvrt_pool_info_sized(const kvrt_pool_t *pool, size_t info_size,
                                   kvrt_pool_info_t *info_out);

/* kvrt_pool_info - counters and geometry. Errors: KVRT_ERR_INVALID_ARG. */
static inline kvrt_status_t kvrt_pool_info(const kvrt_pool_t *pool, kvrt_pool_info_t *info_out)
{
    return kvrt_pool_info_sized(pool, sizeof(*info_out), info_out);
}

/*
 * kvrt_pool_above_watermark - 1 in *ok_out when `count` more blocks can be
 * taken (free plus reclaimable) while leaving watermark_blocks in reserve.
 * Schedulers admit new work only while this holds. Errors: INVALID_ARG.
 */
kvrt_status_t kvrt_pool_above_watermark(const kvrt_pool_t *pool, uint32_t count,
                                        int *ok_out);

/*
 * kvrt_pool_layout - the pool's layout (copied out). Errors: INVALID_ARG.
 */
kvrt_status_t kvrt_pool_layout(const kvrt_pool_t *pool, kvrt_kv_layout_t *layout_out);

/*
 * kvrt_pool_page_address - address of the page (block, layer, half) inside
 * the pool's memory: base + kvrt_layout_page_offset(). For engine memory the
 * address is only computed, never dereferenced. Any block id in range is
 * accepted (the engine may address the null block for padding).
 * Errors: KVRT_ERR_INVALID_ARG (NULL, out of range).
 */
kvrt_status_t kvrt_pool_page_address(const kvrt_pool_t *pool, int32_t block,
                                     uint32_t layer, kvrt_kv_half_t half,
                                     void **address_out);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_POOL_H */
