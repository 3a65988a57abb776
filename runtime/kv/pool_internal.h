/*
 * pool_internal.h - the pool as the prefix cache (runtime/cache) sees it.
 *
 * Dependencies point one way (kv <- cache), so the pool knows a cache only
 * through this ops table. A block the cache holds carries a "cached" flag;
 * when its last reference goes, it becomes *idle* instead of free and the
 * pool tells the cache (block_idle) so the eviction policy can track it.
 * When an idle block is referenced again (a prefix hit), the pool tells the
 * cache (block_busy) so the policy drops it from its evictable set in O(1).
 * When an allocation finds the free list short, the pool asks the cache to
 * evict: the cache picks victims, forgets them and calls
 * kvrt_pool_uncache() on each, which puts them on the free list (or
 * kvrt_pool_uncache_held() on one an eviction sink keeps; the cache then
 * evicts another, so `count` blocks are freed in the end).
 */
#ifndef KVRT_POOL_INTERNAL_H
#define KVRT_POOL_INTERNAL_H

#include "core/core.h"
#include "kvrt/block_table.h"
#include "kvrt/pool.h"

typedef struct kvrt_pool_cache_ops {
    void (*block_idle)(void *cache, int32_t block);
    void (*block_busy)(void *cache, int32_t block);
    /* Free `count` idle blocks (the pool guarantees that many exist). */
    void (*evict)(void *cache, uint32_t count);
} kvrt_pool_cache_ops_t;

/* Attaches a cache. Errors: KVRT_ERR_BUSY (one is attached already). */
kvrt_status_t kvrt_pool_attach_cache(kvrt_pool_t *pool, const kvrt_pool_cache_ops_t *ops,
                                     void *cache);
/* Detaches the cache: every cached flag is cleared, idle blocks become free. */
void kvrt_pool_detach_cache(kvrt_pool_t *pool);

/* Marks a used block as held by the cache. Returns false when the block is
 * not in use (nothing changes). */
bool kvrt_pool_mark_cached(kvrt_pool_t *pool, int32_t block);
/* Clears the cached flag; an idle block goes to the free list. */
void kvrt_pool_uncache(kvrt_pool_t *pool, int32_t block);
/* Clears the cached flag of a block and hands one reference of it to
 * whoever the cache gives it to (an eviction sink), who frees it later with
 * kvrt_pool_free(): an idle block becomes used with that one reference; a
 * used one (a cache reset's referenced blocks) gains it beside its
 * holders'. */
void kvrt_pool_uncache_held(kvrt_pool_t *pool, int32_t block);
/* Takes a reference on a cached block, idle or used (a prefix hit). Returns
 * false when the block is not cached or its count would overflow. */
bool kvrt_pool_ref_cached(kvrt_pool_t *pool, int32_t block);
bool kvrt_pool_is_cached(const kvrt_pool_t *pool, int32_t block);
/* Warms the block's bookkeeping before a batch of kvrt_pool_ref_cached(). */
void kvrt_pool_prefetch_block(const kvrt_pool_t *pool, int32_t block);
/* Warms the bookkeeping of the block `depth` entries below the top of the
 * free list: the (depth + 1)-th block the next allocations take. No effect
 * when the free list is shorter. */
void kvrt_pool_prefetch_free(const kvrt_pool_t *pool, uint32_t depth);
/* Evicts what the free list lacks for `count` blocks (the caller knows
 * that many are free or idle) in one call to the cache's evict; the takes
 * that follow hand out the free blocks and then the victims in the order
 * takes of one block each would have, evicting as they went (an eviction
 * sink may keep other victims than single takes would). A batch of
 * appends calls it before its first with the blocks they will take
 * (sched's crossing.c), so that no append waits for an eviction. */
void kvrt_pool_reclaim(kvrt_pool_t *pool, uint32_t count);
/* kvrt_table_append() after counting `filled` tokens that the table's
 * owner already wrote in its tail block, without telling it, while the
 * block was its own (a scheduler's decodes inside the tail block: sched's
 * q->lag). Those need no copy even if the block is shared by now (a block
 * they filled, offered to the cache and adopted, or referenced by the
 * engine): the holders took it with them in it. The copy-on-write check
 * applies to the num_tokens new ones, which may be 0. All or nothing.
 * Errors: those of kvrt_table_append(), and KVRT_ERR_INVALID_ARG when
 * `filled` does not fit in the tail block. */
kvrt_status_t kvrt_table_append_filled(kvrt_pool_t *pool, kvrt_table_id_t table, uint32_t filled,
                                       uint32_t num_tokens, int64_t *slots_out,
                                       kvrt_block_copy_t *copy_out, uint32_t *num_copies_out);
/* Warms a table's slot before a batch of kvrt_table_append() calls. */
void kvrt_table_prefetch(const kvrt_pool_t *pool, kvrt_table_id_t table);
/* Warms the end of a table's block array, where an append reads its tail
 * and writes new blocks. Reads the slot, so call it after
 * kvrt_table_prefetch() has had time to land. */
void kvrt_table_prefetch_end(const kvrt_pool_t *pool, kvrt_table_id_t table);

/* Holds keep kvrt_pool_destroy() from freeing a pool that a scheduler or a
 * transfer-engine registration still uses (it answers KVRT_ERR_BUSY). */
void kvrt_pool_hold(kvrt_pool_t *pool);
void kvrt_pool_unhold(kvrt_pool_t *pool);

kvrt_ctx_t *kvrt_pool_ctx(const kvrt_pool_t *pool);
uint32_t kvrt_pool_num_blocks(const kvrt_pool_t *pool);
uint32_t kvrt_pool_tokens_per_block(const kvrt_pool_t *pool);
uint32_t kvrt_pool_free_count(const kvrt_pool_t *pool);
uint32_t kvrt_pool_cached_count(const kvrt_pool_t *pool);
uint32_t kvrt_pool_watermark(const kvrt_pool_t *pool);

/* Grows a table's block array to hold num_blocks without reallocating (a
 * scheduler sizes its tables once for its longest request, so appends on
 * its hot path never allocate). Errors: KVRT_ERR_UNKNOWN_TABLE,
 * KVRT_ERR_NO_MEMORY. */
kvrt_status_t kvrt_table_reserve(kvrt_pool_t *pool, kvrt_table_id_t table, uint32_t num_blocks);

#endif /* KVRT_POOL_INTERNAL_H */
