/*
 * pool_types.h - the pool's struct, shared by pool.c and block_table.c only.
 */
#ifndef KVRT_POOL_TYPES_H
#define KVRT_POOL_TYPES_H

#include "core/arena.h"
#include "pool_internal.h"

enum block_state { BLOCK_FREE = 0, BLOCK_USED = 1, BLOCK_IDLE = 2 };

/* Per-block bookkeeping: 8 bytes so a 100k-block pool stays in L2. */
typedef struct block_meta {
    int32_t refcount;
    uint8_t state;  /* enum block_state */
    uint8_t cached; /* held by the prefix cache */
    uint16_t unused;
} block_meta_t;

typedef struct table_slot {
    uint32_t generation; /* odd while live: a stale id never matches */
    uint32_t num_tokens;
    uint32_t num_blocks;
    uint32_t capacity;   /* of blocks[] */
    int32_t *blocks;
    uint32_t next_free;  /* free-slot list link */
} table_slot_t;

struct kvrt_pool {
    kvrt_owned_t owned;
    kvrt_ctx_t *ctx;
    char name[32];
    uint32_t group_id;
    kvrt_kv_layout_t layout;
    uint64_t page_bytes;
    uint64_t block_bytes;
    uint32_t num_blocks;
    uint32_t tokens_per_block;
    uint32_t block_shift; /* log2(tokens_per_block) */
    uint32_t watermark;
    char *base;
    bool host_owned;
    bool hugetlb;

    block_meta_t *meta;
    int32_t *free_stack; /* LIFO of free blocks: the hottest block is reused */
    uint32_t free_count;
    uint32_t used_count;
    uint32_t idle_count; /* cached blocks with no reference */

    const kvrt_pool_cache_ops_t *cache_ops;
    void *cache;
    uint32_t holders; /* schedulers and transfer registrations using the pool */

    table_slot_t *tables;
    kvrt_arena_t table_arena;  /* the tables' block arrays */
    uint32_t max_tables;
    uint32_t live_tables;
    uint32_t free_table_head; /* UINT32_MAX when empty */
};

/* Shared by pool.c and block_table.c. */
static inline bool block_in_range(const kvrt_pool_t *pool, int32_t block)
{
    return block > 0 && (uint32_t)block < pool->num_blocks;
}

/* Drops one reference; at zero the block becomes free or idle. */
void kvrt_pool_release_one(kvrt_pool_t *pool, int32_t block);
/* Pops `count` blocks (refcount 1 each), evicting when short
 * (kvrt_pool_reclaim, pool_internal.h). The caller checked
 * kvrt_pool_available() first. */
void kvrt_pool_take(kvrt_pool_t *pool, uint32_t count, int32_t *blocks_out);
static inline uint32_t kvrt_pool_available(const kvrt_pool_t *pool)
{
    return pool->free_count + pool->idle_count;
}
void kvrt_pool_tables_destroy(kvrt_pool_t *pool);
kvrt_status_t kvrt_pool_tables_init(kvrt_pool_t *pool, uint32_t max_tables);

#endif /* KVRT_POOL_TYPES_H */
