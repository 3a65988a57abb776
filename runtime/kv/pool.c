/*
 * pool.c - fixed arrays of KV blocks: O(1) allocate, reference and free out
 * of a preallocated LIFO free stack, plus the hooks a prefix cache uses to
 * keep blocks alive after their last reference.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool_types.h"

#define KVRT_MAX_POOL_BLOCKS 0x7fffffffu
#define KVRT_DEFAULT_MAX_TABLES 65536u
#define KVRT_MAX_TABLES (1u << 24)

kvrt_ctx_t *kvrt_pool_ctx(const kvrt_pool_t *pool) { return pool->ctx; }
void kvrt_pool_hold(kvrt_pool_t *pool) { pool->holders++; }
void kvrt_pool_unhold(kvrt_pool_t *pool) { pool->holders--; }
uint32_t kvrt_pool_num_blocks(const kvrt_pool_t *pool) { return pool->num_blocks; }
uint32_t kvrt_pool_tokens_per_block(const kvrt_pool_t *pool) { return pool->tokens_per_block; }
uint32_t kvrt_pool_free_count(const kvrt_pool_t *pool) { return pool->free_count; }
uint32_t kvrt_pool_cached_count(const kvrt_pool_t *pool) { return pool->idle_count; }
uint32_t kvrt_pool_watermark(const kvrt_pool_t *pool) { return pool->watermark; }

/* ---- ctl nodes: pool.<group>.* ---------------------------------------- */

#define POOL_GETTER(field)                                                       \
    static void get_##field(void *obj, kvrt_ctl_value_t *v)                      \
    {                                                                            \
        v->u64 = ((const kvrt_pool_t *)obj)->field;                              \
    }
POOL_GETTER(num_blocks)
POOL_GETTER(free_count)
POOL_GETTER(used_count)
POOL_GETTER(idle_count)
POOL_GETTER(watermark)
POOL_GETTER(live_tables)
POOL_GETTER(block_bytes)
POOL_GETTER(tokens_per_block)
POOL_GETTER(hugetlb)

static void get_name(void *obj, kvrt_ctl_value_t *v) { v->str = ((kvrt_pool_t *)obj)->name; }

static kvrt_status_t set_watermark(void *obj, const kvrt_ctl_value_t *v)
{
    kvrt_pool_t *pool = obj;
    if (v->u64 >= pool->num_blocks)
        return kvrt_fail(pool->ctx, KVRT_ERR_OVERFLOW, "watermark %llu >= num_blocks %u",
                         (unsigned long long)v->u64, pool->num_blocks);
    pool->watermark = (uint32_t)v->u64;
    return KVRT_OK;
}

static const kvrt_ctl_node_t pool_nodes[] = {
    {"name", KVRT_CTL_STRING, get_name, NULL, KVRT_CTL_METRIC_GAUGE,
     "The pool's (cache group's) name."},
    {"blocks", KVRT_CTL_U64, get_num_blocks, NULL, KVRT_CTL_METRIC_GAUGE,
     "Blocks in the pool, the null block included."},
    {"free", KVRT_CTL_U64, get_free_count, NULL, KVRT_CTL_METRIC_GAUGE,
     "Blocks on the free list."},
    {"used", KVRT_CTL_U64, get_used_count, NULL, KVRT_CTL_METRIC_GAUGE,
     "Blocks referenced by at least one block table."},
    {"cached", KVRT_CTL_U64, get_idle_count, NULL, KVRT_CTL_METRIC_GAUGE,
     "Unreferenced blocks kept for prefix reuse (evictable)."},
    {"watermark", KVRT_CTL_U64, get_watermark, set_watermark, KVRT_CTL_METRIC_GAUGE,
     "Free blocks kept back from admission."},
    {"tables", KVRT_CTL_U64, get_live_tables, NULL, KVRT_CTL_METRIC_GAUGE,
     "Live block tables."},
    {"block_bytes", KVRT_CTL_U64, get_block_bytes, NULL, KVRT_CTL_METRIC_GAUGE,
     "Bytes of one block across all layers."},
    {"tokens_per_block", KVRT_CTL_U64, get_tokens_per_block, NULL, KVRT_CTL_METRIC_GAUGE,
     "Tokens one block holds."},
    {"hugetlb", KVRT_CTL_U64, get_hugetlb, NULL, KVRT_CTL_METRIC_GAUGE,
     "1 when the pool's host memory is on hugetlb pages."},
};

/* ---- create / destroy ------------------------------------------------- */

static void pool_free_memory(kvrt_pool_t *pool)
{
    kvrt_pool_tables_destroy(pool);
    if (pool->host_owned)
        kvrt_host_free(pool->ctx, pool->base);
    kvrt_free_large(pool->meta);
    kvrt_free_large(pool->free_stack);
    free(pool);
}

static void pool_destroy_owned(kvrt_owned_t *owned)
{
    kvrt_pool_t *pool = (kvrt_pool_t *)owned;
    kvrt_ctl_unregister(pool->ctx, pool);
    pool_free_memory(pool);
}

static kvrt_status_t check_pool_params(kvrt_ctx_t *ctx, const kvrt_pool_params_t *p,
                                       uint64_t block_bytes)
{
    const uint64_t known = KVRT_POOL_PARAM_BASE | KVRT_POOL_PARAM_WATERMARK |
                           KVRT_POOL_PARAM_NAME | KVRT_POOL_PARAM_MAX_TABLES;
    if (p->field_mask & ~known)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(p->field_mask & ~known));
    if (p->num_blocks < 2 || p->num_blocks > KVRT_MAX_POOL_BLOCKS)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "num_blocks %u out of range 2..2^31-1 (block 0 is reserved)",
                         p->num_blocks);
    if (block_bytes > UINT64_MAX / p->num_blocks)
        return kvrt_fail(ctx, KVRT_ERR_OVERFLOW, "num_blocks * block_bytes overflows");
    if (p->field_mask & KVRT_POOL_PARAM_BASE) {
        if (!p->base)
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "base is NULL");
        if (p->base_bytes < block_bytes * p->num_blocks)
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                             "base_bytes %llu < %u blocks * %llu bytes",
                             (unsigned long long)p->base_bytes, p->num_blocks,
                             (unsigned long long)block_bytes);
    }
    if ((p->field_mask & KVRT_POOL_PARAM_WATERMARK) && p->watermark_blocks >= p->num_blocks)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "watermark_blocks %u >= num_blocks %u",
                         p->watermark_blocks, p->num_blocks);
    if ((p->field_mask & KVRT_POOL_PARAM_MAX_TABLES) &&
        (p->max_tables == 0 || p->max_tables > KVRT_MAX_TABLES))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "max_tables %u out of range 1..2^24",
                         p->max_tables);
    return KVRT_OK;
}

static kvrt_status_t pool_setup_memory(kvrt_pool_t *pool, const kvrt_pool_params_t *p)
{
    if (p->field_mask & KVRT_POOL_PARAM_BASE) {
        pool->base = p->base;
        return KVRT_OK;
    }
    uint64_t bytes = pool->block_bytes * pool->num_blocks;
    if (bytes > SIZE_MAX)
        return kvrt_fail(pool->ctx, KVRT_ERR_OVERFLOW, "pool of %llu bytes",
                         (unsigned long long)bytes);
    pool->base = kvrt_host_alloc(pool->ctx, (size_t)bytes);
    if (!pool->base)
        return kvrt_fail(pool->ctx, KVRT_ERR_NO_MEMORY,
                         "could not map %llu bytes of host memory for %u blocks",
                         (unsigned long long)bytes, pool->num_blocks);
    pool->host_owned = true;
    kvrt_host_region_t region;
    pool->hugetlb = kvrt_host_region_of(pool->ctx, pool->base, (size_t)bytes, &region) &&
                    region.hugetlb;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_pool_create(kvrt_ctx_t *ctx, const kvrt_pool_params_t *p,
                                           kvrt_pool_t **pool_out)
{
    if (!ctx)
        return KVRT_ERR_INVALID_ARG;
    if (!p || !pool_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "params and pool_out are required");
    uint64_t block_bytes = 0;
    kvrt_status_t status = kvrt_layout_block_bytes(&p->layout, &block_bytes);
    if (status != KVRT_OK)
        return kvrt_fail(ctx, status,
                         "layout: layers %u, kv heads %u, head dim %u, tokens per block "
                         "%u (a power of two), dtype %d, format %d, order %d",
                         p->layout.num_layers, p->layout.num_kv_heads, p->layout.head_dim,
                         p->layout.tokens_per_block, (int)p->layout.dtype,
                         (int)p->layout.format, (int)p->layout.order);
    status = check_pool_params(ctx, p, block_bytes);
    if (status != KVRT_OK)
        return status;

    kvrt_pool_t *pool = calloc(1, sizeof(*pool));
    if (!pool)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "pool struct");
    pool->ctx = ctx;
    pool->layout = p->layout;
    pool->block_bytes = block_bytes;
    kvrt_layout_page_bytes(&p->layout, &pool->page_bytes);
    pool->num_blocks = p->num_blocks;
    pool->tokens_per_block = p->layout.tokens_per_block;
    pool->block_shift = (uint32_t)__builtin_ctz(pool->tokens_per_block);
    pool->watermark =
        KVRT_PARAM_OR(p, KVRT_POOL_PARAM_WATERMARK, watermark_blocks, p->num_blocks / 100);
    /* Both indexed at random by every allocation and release; resident
     * from the start, so that no step faults in a page of either. */
    pool->meta = kvrt_calloc_large_resident(p->num_blocks, sizeof(*pool->meta));
    pool->free_stack = kvrt_calloc_large_resident(p->num_blocks, sizeof(*pool->free_stack));
    uint32_t max_tables =
        KVRT_PARAM_OR(p, KVRT_POOL_PARAM_MAX_TABLES, max_tables, KVRT_DEFAULT_MAX_TABLES);
    if (!pool->meta || !pool->free_stack ||
        kvrt_pool_tables_init(pool, max_tables) != KVRT_OK) {
        pool_free_memory(pool);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "bookkeeping for %u blocks",
                         p->num_blocks);
    }
    status = pool_setup_memory(pool, p);
    if (status != KVRT_OK) {
        pool_free_memory(pool);
        return status;
    }
    /* Push high ids first so allocation hands out 1, 2, 3... */
    for (uint32_t b = p->num_blocks - 1; b >= 1; b--)
        pool->free_stack[pool->free_count++] = (int32_t)b;
    pool->meta[KVRT_NULL_BLOCK].state = BLOCK_USED; /* never free, never counted */

    pool->group_id = kvrt_ctx_next_index(ctx, "pool");
    if ((p->field_mask & KVRT_POOL_PARAM_NAME) && p->name)
        snprintf(pool->name, sizeof(pool->name), "%s", p->name);
    else
        snprintf(pool->name, sizeof(pool->name), "pool%u", pool->group_id);
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "pool.%u", pool->group_id);
    if (kvrt_ctl_register(ctx, prefix, pool_nodes, sizeof(pool_nodes) / sizeof(pool_nodes[0]),
                          pool) != KVRT_OK) {
        kvrt_ctx_release_index(ctx, "pool", pool->group_id);
        pool_free_memory(pool);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "ctl registration");
    }
    pool->owned.rank = KVRT_TEARDOWN_POOL;
    kvrt_ctx_own(ctx, &pool->owned, pool_destroy_owned);
    kvrt_log(ctx, KVRT_LOG_INFO,
             "pool %s: %u blocks of %llu bytes (%u tokens), %s memory%s", pool->name,
             pool->num_blocks, (unsigned long long)block_bytes, pool->tokens_per_block,
             pool->host_owned ? "host" : "engine", pool->hugetlb ? " on hugetlb pages" : "");
    *pool_out = pool;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_pool_destroy(kvrt_pool_t *pool)
{
    if (!pool)
        return KVRT_OK;
    if (pool->cache_ops || pool->holders)
        return kvrt_fail(pool->ctx, KVRT_ERR_BUSY,
                         "pool %s is still used by %s; destroy %s first", pool->name,
                         pool->cache_ops ? "a prefix cache" : "a scheduler or a transfer "
                                                              "registration",
                         pool->cache_ops ? "it" : "them");
    kvrt_ctx_disown(pool->ctx, &pool->owned);
    pool_destroy_owned(&pool->owned);
    return KVRT_OK;
}

/* ---- block operations (the hot path) ---------------------------------- */

static void reverse_blocks(int32_t *blocks, uint32_t n)
{
    for (uint32_t i = 0, j = n; i + 1 < j; i++, j--) {
        int32_t t = blocks[i];
        blocks[i] = blocks[j - 1];
        blocks[j - 1] = t;
    }
}

void kvrt_pool_reclaim(kvrt_pool_t *pool, uint32_t count)
{
    const uint32_t had = pool->free_count;
    if (KVRT_LIKELY(had >= count))
        return;
    pool->cache_ops->evict(pool->cache, count - had); /* pushes the victims */
    /* [free blocks, victims in eviction order] becomes [victims reversed,
     * free blocks]: pops hand out the free blocks (top first), then the
     * victims in the order they were evicted, however the takes are
     * grouped, as if each take had evicted what it lacked. */
    reverse_blocks(pool->free_stack, pool->free_count);
    reverse_blocks(pool->free_stack + pool->free_count - had, had);
}

void kvrt_pool_take(kvrt_pool_t *pool, uint32_t count, int32_t *blocks_out)
{
    if (KVRT_UNLIKELY(pool->free_count < count))
        kvrt_pool_reclaim(pool, count);
    for (uint32_t i = 0; i < count; i++) {
        int32_t b = pool->free_stack[--pool->free_count];
        pool->meta[b].refcount = 1;
        pool->meta[b].state = BLOCK_USED;
        blocks_out[i] = b;
    }
    pool->used_count += count;
}

void kvrt_pool_release_one(kvrt_pool_t *pool, int32_t block)
{
    block_meta_t *m = &pool->meta[block];
    if (--m->refcount > 0)
        return;
    pool->used_count--;
    if (m->cached) {
        m->state = BLOCK_IDLE;
        pool->idle_count++;
        pool->cache_ops->block_idle(pool->cache, block);
    } else {
        m->state = BLOCK_FREE;
        pool->free_stack[pool->free_count++] = block;
    }
}

KVRT_EXPORT kvrt_status_t kvrt_pool_alloc(kvrt_pool_t *pool, uint32_t count,
                                          int32_t *blocks_out)
{
    if (KVRT_UNLIKELY(!pool || !blocks_out || count == 0))
        return kvrt_fail(pool ? pool->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "pool and blocks_out are required and count must be > 0");
    if (KVRT_UNLIKELY(count > kvrt_pool_available(pool)))
        return kvrt_fail(pool->ctx, KVRT_ERR_NO_BLOCKS,
                         "pool %s: %u blocks requested, %u free and %u reclaimable",
                         pool->name, count, pool->free_count, pool->idle_count);
    kvrt_pool_take(pool, count, blocks_out);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_pool_ref(kvrt_pool_t *pool, uint32_t count,
                                        const int32_t *blocks)
{
    if (KVRT_UNLIKELY(!pool || (!blocks && count)))
        return kvrt_fail(pool ? pool->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "pool and blocks are required");
    for (uint32_t i = 0; i < count; i++) {
        int32_t b = blocks[i];
        if (!block_in_range(pool, b) || pool->meta[b].state != BLOCK_USED)
            return kvrt_fail(pool->ctx, KVRT_ERR_UNKNOWN_BLOCK,
                             "pool %s: block %d (entry %u) is not in use", pool->name, b, i);
    }
    /* Validated above, so only overflow can stop us; undo on it. */
    for (uint32_t i = 0; i < count; i++) {
        block_meta_t *m = &pool->meta[blocks[i]];
        if (KVRT_UNLIKELY(m->refcount == INT32_MAX)) {
            int32_t full = blocks[i];
            while (i-- > 0)
                pool->meta[blocks[i]].refcount--;
            return kvrt_fail(pool->ctx, KVRT_ERR_OVERFLOW,
                             "pool %s: block %d reference count at its limit", pool->name,
                             full);
        }
        m->refcount++;
    }
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_pool_free(kvrt_pool_t *pool, uint32_t count,
                                         const int32_t *blocks)
{
    if (KVRT_UNLIKELY(!pool || (!blocks && count)))
        return kvrt_fail(pool ? pool->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "pool and blocks are required");
    /* Pass 1 drops the references and undoes them all if one was not held,
     * so a bad list changes nothing. Pass 2 releases blocks that hit 0. */
    for (uint32_t i = 0; i < count; i++) {
        int32_t b = blocks[i];
        if (KVRT_UNLIKELY(!block_in_range(pool, b) || pool->meta[b].refcount <= 0)) {
            for (uint32_t j = 0; j < i; j++)
                pool->meta[blocks[j]].refcount++;
            return kvrt_fail(pool->ctx, KVRT_ERR_UNKNOWN_BLOCK,
                             "pool %s: block %d (entry %u) holds no reference to drop",
                             pool->name, b, i);
        }
        pool->meta[b].refcount--;
    }
    for (uint32_t i = 0; i < count; i++) {
        int32_t b = blocks[i];
        if (pool->meta[b].refcount == 0 && pool->meta[b].state == BLOCK_USED) {
            pool->meta[b].refcount = 1; /* release_one drops the last one */
            kvrt_pool_release_one(pool, b);
        }
    }
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_pool_refcount(const kvrt_pool_t *pool, int32_t block,
                                             uint32_t *refcount_out)
{
    if (!pool || !refcount_out)
        return kvrt_fail(pool ? pool->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    if (!block_in_range(pool, block))
        return kvrt_fail(pool->ctx, KVRT_ERR_UNKNOWN_BLOCK,
                         "pool %s: block %d out of range 1..%u", pool->name, block,
                         pool->num_blocks - 1);
    *refcount_out = (uint32_t)pool->meta[block].refcount;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_pool_info_sized(const kvrt_pool_t *pool, size_t info_size,
                                               kvrt_pool_info_t *out)
{
    const size_t min_size = KVRT_OUTPUT_SIZE_1_0(kvrt_pool_info_t, hugepages);
    if (!pool || !out || info_size < min_size)
        return kvrt_fail(pool ? pool->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "info_out is required and info_size (%zu) at least %zu", info_size,
                         min_size);
    const kvrt_pool_info_t info = {
        .group_id = pool->group_id,
        .num_blocks = pool->num_blocks,
        .free_blocks = pool->free_count,
        .used_blocks = pool->used_count,
        .cached_blocks = pool->idle_count,
        .watermark_blocks = pool->watermark,
        .live_tables = pool->live_tables,
        .tokens_per_block = pool->tokens_per_block,
        .block_bytes = pool->block_bytes,
        .base = pool->base,
        .host_memory = pool->host_owned,
        .hugepages = pool->hugetlb,
    };
    kvrt_output_copy(out, info_size, &info, sizeof(info));
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_pool_above_watermark(const kvrt_pool_t *pool, uint32_t count,
                                                    int *ok_out)
{
    if (!pool || !ok_out)
        return kvrt_fail(pool ? pool->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    uint64_t available = kvrt_pool_available(pool);
    *ok_out = available >= (uint64_t)count + pool->watermark;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_pool_layout(const kvrt_pool_t *pool, kvrt_kv_layout_t *out)
{
    if (!pool || !out)
        return kvrt_fail(pool ? pool->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    *out = pool->layout;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_pool_page_address(const kvrt_pool_t *pool, int32_t block,
                                                 uint32_t layer, kvrt_kv_half_t half,
                                                 void **address_out)
{
    if (!pool || !address_out)
        return kvrt_fail(pool ? pool->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    uint64_t offset;
    if (block < 0 ||
        kvrt_layout_page_offset(&pool->layout, pool->num_blocks, (uint32_t)block, layer,
                                half, &offset) != KVRT_OK)
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG,
                         "pool %s: block %d / layer %u / half %d out of range", pool->name,
                         block, layer, (int)half);
    /* Address arithmetic only: engine memory is never dereferenced here. */
    *address_out = (void *)((uintptr_t)pool->base + (uintptr_t)offset);
    return KVRT_OK;
}

/* ---- prefix-cache hooks ----------------------------------------------- */

kvrt_status_t kvrt_pool_attach_cache(kvrt_pool_t *pool, const kvrt_pool_cache_ops_t *ops,
                                     void *cache)
{
    if (pool->cache_ops)
        return kvrt_fail(pool->ctx, KVRT_ERR_BUSY, "pool %s already has a prefix cache",
                         pool->name);
    pool->cache_ops = ops;
    pool->cache = cache;
    return KVRT_OK;
}

void kvrt_pool_detach_cache(kvrt_pool_t *pool)
{
    for (uint32_t b = 1; b < pool->num_blocks; b++)
        if (pool->meta[b].cached)
            kvrt_pool_uncache(pool, (int32_t)b);
    pool->cache_ops = NULL;
    pool->cache = NULL;
}

bool kvrt_pool_mark_cached(kvrt_pool_t *pool, int32_t block)
{
    if (!block_in_range(pool, block) || pool->meta[block].state != BLOCK_USED)
        return false;
    pool->meta[block].cached = 1;
    return true;
}

void kvrt_pool_uncache(kvrt_pool_t *pool, int32_t block)
{
    block_meta_t *m = &pool->meta[block];
    m->cached = 0;
    if (m->state == BLOCK_IDLE) {
        m->state = BLOCK_FREE;
        pool->idle_count--;
        pool->free_stack[pool->free_count++] = block;
    }
}

void kvrt_pool_uncache_held(kvrt_pool_t *pool, int32_t block)
{
    block_meta_t *m = &pool->meta[block];
    m->cached = 0;
    if (m->state == BLOCK_USED) {
        m->refcount++;
        return;
    }
    m->state = BLOCK_USED;
    m->refcount = 1;
    pool->idle_count--;
    pool->used_count++;
}

bool kvrt_pool_ref_cached(kvrt_pool_t *pool, int32_t block)
{
    if (!block_in_range(pool, block))
        return false;
    block_meta_t *m = &pool->meta[block];
    if (!m->cached || m->refcount == INT32_MAX)
        return false;
    if (m->state == BLOCK_IDLE) {
        m->state = BLOCK_USED;
        pool->idle_count--;
        pool->used_count++;
        pool->cache_ops->block_busy(pool->cache, block);
    }
    m->refcount++;
    return true;
}

bool kvrt_pool_is_cached(const kvrt_pool_t *pool, int32_t block)
{
    return block_in_range(pool, block) && pool->meta[block].cached;
}

void kvrt_pool_prefetch_block(const kvrt_pool_t *pool, int32_t block)
{
    if (block_in_range(pool, block))
        __builtin_prefetch(&pool->meta[block], 1);
}

void kvrt_pool_prefetch_free(const kvrt_pool_t *pool, uint32_t depth)
{
    if (depth < pool->free_count)
        __builtin_prefetch(&pool->meta[pool->free_stack[pool->free_count - 1 - depth]], 1);
}
