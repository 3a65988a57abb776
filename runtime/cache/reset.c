/*
 * reset.c - kvrt_cache_reset: empties the prefix cache without destroying
 * it, e.g. after the engine loads new weights (vLLM's reset_prefix_cache),
 * so that no block computed before the reset is matched after it. Works
 * while schedulers are built on the cache; a whole-cache walk, O(blocks).
 */
#include "cache/cache_internal.h"

/* Takes `block`, just unindexed, out of the cache. An eviction sink is
 * told first (hooks.h): a tier copying the block below keeps a reference
 * until its copy ends, so that the block is not reused while it is read. */
static void uncache(const cache_parts_t *c, int32_t block)
{
    if (c->sink) {
        kvrt_cache_victim_t victim = {.block = block, .may_keep = true, .discard = true,
                                      .name = c->names[block].name};
        if (c->sink(c->sink_data, &victim) == KVRT_CACHE_SINK_KEEP) {
            kvrt_pool_uncache_held(c->pool, block);
            return;
        }
    }
    kvrt_pool_uncache(c->pool, block);
}

KVRT_EXPORT kvrt_status_t kvrt_cache_reset(kvrt_cache_t *cache, uint32_t flags)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARG;
    cache_parts_t c;
    kvrt_cache_parts(cache, &c);
    if (flags & ~(uint32_t)KVRT_CACHE_RESET_FORGET_BUSY)
        return kvrt_fail(c.ctx, KVRT_ERR_INVALID_ARG, "cache %s: unknown reset flags 0x%x",
                         c.name, flags & ~(uint32_t)KVRT_CACHE_RESET_FORGET_BUSY);
    /* Blocks still referenced: refuse before anything changes, unless they
     * may simply leave the index. */
    uint32_t busy = 0;
    for (uint32_t b = 1; b < c.num_blocks; b++) {
        uint32_t refs = 0;
        if (kvrt_pool_is_cached(c.pool, (int32_t)b) &&
            kvrt_pool_refcount(c.pool, (int32_t)b, &refs) == KVRT_OK && refs)
            busy++;
    }
    if (busy && !(flags & KVRT_CACHE_RESET_FORGET_BUSY))
        return kvrt_fail(c.ctx, KVRT_ERR_BUSY,
                         "cache %s: %u cached blocks are still referenced (by running or "
                         "queued requests); release them, or pass "
                         "KVRT_CACHE_RESET_FORGET_BUSY",
                         c.name, busy);
    /* Idle blocks: out of the policy and the index, onto the free list
     * unless the sink finishes a copy from one first. */
    while (c.policy->evictable) {
        int32_t block = c.policy->ops->victim(c.policy);
        kvrt_cache_index_remove(c.index, &c.names[block].name.key);
        uncache(&c, block);
    }
    /* Referenced blocks: out of the index; their holders keep them as
     * ordinary used blocks, freed when the last reference goes. */
    for (uint32_t b = 1; busy && b < c.num_blocks; b++) {
        if (!kvrt_pool_is_cached(c.pool, (int32_t)b))
            continue;
        kvrt_cache_index_remove(c.index, &c.names[b].name.key);
        uncache(&c, (int32_t)b);
        busy--;
    }
    /* Misses after a reset read "never cached", not "evicted". */
    for (uint64_t i = 0; i <= c.index->mask; i++)
        c.index->slots[i].explain_keys[0] = c.index->slots[i].explain_keys[1] = 0;
    kvrt_cache_count_reset(cache);
    kvrt_cache_emit_cleared(cache);
    kvrt_log(c.ctx, KVRT_LOG_INFO, "cache %s: reset", c.name);
    return KVRT_OK;
}
