/*
 * block_table.c - per-sequence block tables over a pool: append with slot
 * mapping, adopt cached blocks, truncate, copy-on-write fork, export.
 *
 * Every mutation checks everything that can fail (id, length, free blocks,
 * array growth) before it changes anything, so an error leaves the table and
 * the pool exactly as they were.
 */
#include <stdlib.h>
#include <string.h>

#include "pool_types.h"

#define TABLE_INITIAL_CAPACITY 16u
#define NO_SLOT UINT32_MAX

kvrt_status_t kvrt_pool_tables_init(kvrt_pool_t *pool, uint32_t max_tables)
{
    pool->tables = kvrt_calloc_large(max_tables, sizeof(*pool->tables));
    if (!pool->tables)
        return KVRT_ERR_NO_MEMORY;
    pool->max_tables = max_tables;
    /* Thread every slot onto the free list, lowest index first. Every
     * slot's generation starts at this pool's random even point, so a
     * table id of another pool (or of a pool destroyed before this one)
     * names none of its tables but by chance. */
    const uint32_t generation = kvrt_generation_start();
    for (uint32_t i = 0; i < max_tables; i++) {
        pool->tables[i].next_free = i + 1 < max_tables ? i + 1 : NO_SLOT;
        pool->tables[i].generation = generation;
    }
    pool->free_table_head = 0;
    return KVRT_OK;
}

void kvrt_pool_tables_destroy(kvrt_pool_t *pool)
{
    if (!pool->tables)
        return;
    for (uint32_t i = 0; i < pool->max_tables; i++)
        kvrt_arena_free(&pool->table_arena, pool->tables[i].blocks);
    kvrt_arena_destroy(&pool->table_arena);
    kvrt_free_large(pool->tables);
    pool->tables = NULL;
}

static inline kvrt_table_id_t make_id(uint32_t index, uint32_t generation)
{
    return ((uint64_t)generation << 32) | (uint64_t)(index + 1);
}

/* The live slot named by id, or NULL. */
static inline table_slot_t *lookup(const kvrt_pool_t *pool, kvrt_table_id_t id)
{
    uint32_t index = (uint32_t)id - 1;
    uint32_t generation = (uint32_t)(id >> 32);
    if (KVRT_UNLIKELY(index >= pool->max_tables || !(generation & 1)))
        return NULL;
    table_slot_t *t = &pool->tables[index];
    return KVRT_LIKELY(t->generation == generation) ? t : NULL;
}

/* A macro so the message names the public function that was called. */
#define unknown_table(pool, id)                                                  \
    kvrt_fail((pool)->ctx, KVRT_ERR_UNKNOWN_TABLE,                               \
              "pool %s: table id 0x%llx is unknown or destroyed", (pool)->name,  \
              (unsigned long long)(id))

#define CHECK_POOL(pool)                                                         \
    do {                                                                         \
        if (KVRT_UNLIKELY(!(pool)))                                              \
            return KVRT_ERR_INVALID_ARG;                                         \
    } while (0)

/* Makes room for `blocks` entries; the only allocation, amortized. */
static kvrt_status_t ensure_capacity(kvrt_pool_t *pool, table_slot_t *t, uint64_t blocks)
{
    if (KVRT_LIKELY(blocks <= t->capacity))
        return KVRT_OK;
    uint64_t capacity = t->capacity ? t->capacity : TABLE_INITIAL_CAPACITY;
    while (capacity < blocks)
        capacity *= 2;
    /* From the pool's arena: a block-boundary crossing reads and writes the
     * end of its table's array, and thousands of arrays on huge pages keep
     * those accesses from missing the TLB. */
    int32_t *grown = kvrt_arena_alloc(&pool->table_arena, (size_t)capacity * sizeof(int32_t));
    if (!grown)
        return kvrt_fail(pool->ctx, KVRT_ERR_NO_MEMORY, "block table of %llu blocks",
                         (unsigned long long)capacity);
    if (t->blocks)
        memcpy(grown, t->blocks, (size_t)t->num_blocks * sizeof(int32_t));
    kvrt_arena_free(&pool->table_arena, t->blocks);
    t->blocks = grown;
    t->capacity = (uint32_t)capacity;
    return KVRT_OK;
}

static inline uint32_t blocks_for(const kvrt_pool_t *pool, uint64_t tokens)
{
    return (uint32_t)((tokens + pool->tokens_per_block - 1) >> pool->block_shift);
}

KVRT_EXPORT kvrt_status_t kvrt_table_create(kvrt_pool_t *pool, kvrt_table_id_t *table_out)
{
    CHECK_POOL(pool);
    if (!table_out)
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG, "table_out is NULL");
    uint32_t index = pool->free_table_head;
    if (index == NO_SLOT)
        return kvrt_fail(pool->ctx, KVRT_ERR_NO_TABLES, "pool %s: all %u tables live",
                         pool->name, pool->max_tables);
    table_slot_t *t = &pool->tables[index];
    /* A live table always has an array, so views never hand out NULL. */
    kvrt_status_t status = ensure_capacity(pool, t, 1);
    if (status != KVRT_OK)
        return status;
    pool->free_table_head = t->next_free;
    t->generation++; /* even -> odd: live */
    t->num_tokens = 0;
    t->num_blocks = 0;
    pool->live_tables++;
    *table_out = make_id(index, t->generation);
    return KVRT_OK;
}

/* Deepest block first: a cache evicting in release order (LRU) then loses a
 * chain's leaves before its root, and no cached leaf outlives the root
 * every match of it needs. */
static void release_blocks(kvrt_pool_t *pool, const int32_t *blocks, uint32_t count)
{
    for (uint32_t i = count; i-- > 0;)
        if (blocks[i] != KVRT_NULL_BLOCK) /* released already (a window's past) */
            kvrt_pool_release_one(pool, blocks[i]);
}

KVRT_EXPORT kvrt_status_t kvrt_table_destroy(kvrt_pool_t *pool, kvrt_table_id_t id)
{
    if (id == 0) /* the null id: like destroy(NULL), nothing to do */
        return KVRT_OK;
    CHECK_POOL(pool);
    table_slot_t *t = lookup(pool, id);
    if (!t)
        return unknown_table(pool, id);
    release_blocks(pool, t->blocks, t->num_blocks);
    t->generation++; /* odd -> even: retired */
    t->num_blocks = t->num_tokens = 0;
    uint32_t index = (uint32_t)(t - pool->tables);
    t->next_free = pool->free_table_head;
    pool->free_table_head = index;
    pool->live_tables--;
    return KVRT_OK;
}

/* Slot of token `pos` of t (pos < t->num_tokens). */
static inline int64_t slot_of(const kvrt_pool_t *pool, const table_slot_t *t, uint32_t pos)
{
    return ((int64_t)t->blocks[pos >> pool->block_shift] << pool->block_shift) |
           (int64_t)(pos & (pool->tokens_per_block - 1));
}

void kvrt_table_prefetch(const kvrt_pool_t *pool, kvrt_table_id_t id)
{
    uint32_t index = (uint32_t)id - 1;
    if (index < pool->max_tables)
        __builtin_prefetch(&pool->tables[index], 1);
}

void kvrt_table_prefetch_end(const kvrt_pool_t *pool, kvrt_table_id_t id)
{
    const table_slot_t *t = lookup(pool, id);
    if (t && t->num_blocks)
        __builtin_prefetch(t->blocks + t->num_blocks - 1, 1);
}

/* Appends num_tokens to t after counting `filled` tokens its owner wrote
 * in its tail block already (kvrt_table_append_filled; 0 for a plain
 * append): the copy-on-write check looks at the tail those leave. */
static KVRT_ALWAYS_INLINE kvrt_status_t append(kvrt_pool_t *pool, table_slot_t *t,
                                               uint32_t filled, uint32_t num_tokens,
                                               int64_t *slots_out, kvrt_block_copy_t *copy_out,
                                               uint32_t *num_copies_out)
{
    const uint32_t told = t->num_tokens + filled;
    /* Fast path, most decode steps: the tokens fit in the private tail block,
     * so nothing is allocated or copied. */
    uint32_t offset = told & (pool->tokens_per_block - 1);
    if (KVRT_LIKELY(offset != 0 && num_tokens <= pool->tokens_per_block - offset)) {
        int32_t tail = t->blocks[t->num_blocks - 1];
        if (KVRT_LIKELY(pool->meta[tail].refcount == 1)) {
            if (slots_out) {
                int64_t base = ((int64_t)tail << pool->block_shift) | offset;
                for (uint32_t k = 0; k < num_tokens; k++)
                    slots_out[k] = base + k;
            }
            if (num_copies_out)
                *num_copies_out = 0;
            t->num_tokens = told + num_tokens;
            return KVRT_OK;
        }
    }
    uint64_t new_tokens = (uint64_t)told + num_tokens;
    if (KVRT_UNLIKELY(new_tokens > KVRT_TABLE_MAX_TOKENS))
        return kvrt_fail(pool->ctx, KVRT_ERR_TABLE_TOO_LONG,
                         "table would hold %llu tokens (limit %u)",
                         (unsigned long long)new_tokens, KVRT_TABLE_MAX_TOKENS);
    uint32_t new_blocks = blocks_for(pool, new_tokens);
    uint32_t grow = new_blocks - t->num_blocks;
    /* Copy-on-write: never write into a partial block someone else holds. */
    bool cow = offset != 0 && pool->meta[t->blocks[t->num_blocks - 1]].refcount > 1;
    if (KVRT_UNLIKELY(cow && (!copy_out || !num_copies_out)))
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG,
                         "last block %d is shared; a copy is needed, so copy_out and "
                         "num_copies_out are required",
                         t->blocks[t->num_blocks - 1]);
    uint32_t needed = grow + (cow ? 1u : 0u);
    if (KVRT_UNLIKELY(needed > kvrt_pool_available(pool)))
        return kvrt_fail(pool->ctx, KVRT_ERR_NO_BLOCKS,
                         "pool %s: append of %u tokens needs %u blocks, %u available",
                         pool->name, num_tokens, needed, kvrt_pool_available(pool));
    kvrt_status_t status = ensure_capacity(pool, t, new_blocks);
    if (KVRT_UNLIKELY(status != KVRT_OK))
        return status;

    if (KVRT_UNLIKELY(cow)) {
        int32_t *last = &t->blocks[t->num_blocks - 1];
        int32_t fresh;
        kvrt_pool_take(pool, 1, &fresh);
        *copy_out = (kvrt_block_copy_t){.src_block = *last, .dst_block = fresh};
        kvrt_pool_release_one(pool, *last);
        *last = fresh;
    }
    if (num_copies_out)
        *num_copies_out = cow ? 1u : 0u;
    if (grow)
        kvrt_pool_take(pool, grow, t->blocks + t->num_blocks);
    t->num_blocks = new_blocks;
    uint32_t first = told;
    t->num_tokens = (uint32_t)new_tokens;
    if (slots_out) {
        /* Walk block by block: one table read per block, not per token. */
        uint32_t pos = first, i = 0;
        while (i < num_tokens) {
            uint32_t run = pool->tokens_per_block - (pos & (pool->tokens_per_block - 1));
            if (run > num_tokens - i)
                run = num_tokens - i;
            int64_t base = slot_of(pool, t, pos);
            for (uint32_t k = 0; k < run; k++)
                slots_out[i + k] = base + k;
            i += run;
            pos += run;
        }
    }
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_table_append(kvrt_pool_t *pool, kvrt_table_id_t id,
                                            uint32_t num_tokens, int64_t *slots_out,
                                            kvrt_block_copy_t *copy_out,
                                            uint32_t *num_copies_out)
{
    CHECK_POOL(pool);
    table_slot_t *t = lookup(pool, id);
    if (KVRT_UNLIKELY(!t))
        return unknown_table(pool, id);
    if (KVRT_UNLIKELY(num_tokens == 0))
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG, "num_tokens is 0");
    return append(pool, t, 0, num_tokens, slots_out, copy_out, num_copies_out);
}

kvrt_status_t kvrt_table_append_filled(kvrt_pool_t *pool, kvrt_table_id_t id, uint32_t filled,
                                       uint32_t num_tokens, int64_t *slots_out,
                                       kvrt_block_copy_t *copy_out, uint32_t *num_copies_out)
{
    table_slot_t *t = lookup(pool, id);
    if (KVRT_UNLIKELY(!t))
        return unknown_table(pool, id);
    const uint32_t offset = t->num_tokens & (pool->tokens_per_block - 1);
    if (KVRT_UNLIKELY(filled && (offset == 0 || filled > pool->tokens_per_block - offset)))
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG,
                         "%u tokens do not fit in the tail block (%u of %u used)", filled,
                         offset, pool->tokens_per_block);
    if (num_tokens == 0) {
        t->num_tokens += filled;
        if (num_copies_out)
            *num_copies_out = 0;
        return KVRT_OK;
    }
    return append(pool, t, filled, num_tokens, slots_out, copy_out, num_copies_out);
}

kvrt_status_t kvrt_table_reserve(kvrt_pool_t *pool, kvrt_table_id_t id, uint32_t num_blocks)
{
    table_slot_t *t = lookup(pool, id);
    if (!t)
        return unknown_table(pool, id);
    return ensure_capacity(pool, t, num_blocks);
}

KVRT_EXPORT kvrt_status_t kvrt_table_adopt(kvrt_pool_t *pool, kvrt_table_id_t id,
                                           uint32_t count, const int32_t *blocks)
{
    CHECK_POOL(pool);
    table_slot_t *t = lookup(pool, id);
    if (!t)
        return unknown_table(pool, id);
    if (count == 0 || !blocks)
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG, "blocks NULL or count 0");
    if (t->num_tokens & (pool->tokens_per_block - 1))
        return kvrt_fail(pool->ctx, KVRT_ERR_BAD_STATE,
                         "table ends in a partial block (%u tokens); only whole blocks "
                         "can be adopted",
                         t->num_tokens);
    uint64_t new_tokens = (uint64_t)t->num_tokens + ((uint64_t)count << pool->block_shift);
    if (new_tokens > KVRT_TABLE_MAX_TOKENS)
        return kvrt_fail(pool->ctx, KVRT_ERR_TABLE_TOO_LONG, "table would exceed %u tokens",
                         KVRT_TABLE_MAX_TOKENS);
    /* The caller must hold one reference per appearance (the table takes
     * them over): drop them tentatively, like kvrt_pool_free, and put them
     * back, so a block listed more often than it is held is refused. */
    for (uint32_t i = 0; i < count; i++) {
        int32_t b = blocks[i];
        if (b == KVRT_NULL_BLOCK)
            continue; /* a hole: tokens no kernel reads, holding nothing */
        if (!block_in_range(pool, b) || pool->meta[b].refcount <= 0) {
            for (uint32_t j = 0; j < i; j++)
                if (blocks[j] != KVRT_NULL_BLOCK)
                    pool->meta[blocks[j]].refcount++;
            return kvrt_fail(pool->ctx, KVRT_ERR_UNKNOWN_BLOCK,
                             "block %d (entry %u) is not in use, or listed more often "
                             "than it is held",
                             b, i);
        }
        pool->meta[b].refcount--;
    }
    for (uint32_t i = 0; i < count; i++)
        if (blocks[i] != KVRT_NULL_BLOCK)
            pool->meta[blocks[i]].refcount++;
    if (count && blocks[count - 1] == KVRT_NULL_BLOCK)
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG,
                         "the last adopted entry is a hole: a table ends in a real block");
    kvrt_status_t status = ensure_capacity(pool, t, (uint64_t)t->num_blocks + count);
    if (status != KVRT_OK)
        return status;
    memcpy(t->blocks + t->num_blocks, blocks, (size_t)count * sizeof(int32_t));
    t->num_blocks += count;
    t->num_tokens = (uint32_t)new_tokens;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_table_truncate(kvrt_pool_t *pool, kvrt_table_id_t id,
                                              uint32_t num_tokens)
{
    CHECK_POOL(pool);
    table_slot_t *t = lookup(pool, id);
    if (!t)
        return unknown_table(pool, id);
    if (num_tokens > t->num_tokens)
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG,
                         "cannot truncate a table of %u tokens to %u", t->num_tokens,
                         num_tokens);
    uint32_t keep = blocks_for(pool, num_tokens);
    release_blocks(pool, t->blocks + keep, t->num_blocks - keep);
    t->num_blocks = keep;
    t->num_tokens = num_tokens;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_table_release_front(kvrt_pool_t *pool, kvrt_table_id_t id,
                                                   uint32_t num_blocks)
{
    CHECK_POOL(pool);
    table_slot_t *t = lookup(pool, id);
    if (!t)
        return unknown_table(pool, id);
    uint32_t full = t->num_tokens >> pool->block_shift;
    /* Never the block holding the last token: appends go on writing it. */
    if (num_blocks > full || (num_blocks == t->num_blocks && num_blocks))
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG,
                         "cannot release %u leading blocks of a table of %u tokens (%u "
                         "full blocks, the last one kept)",
                         num_blocks, t->num_tokens, full);
    for (uint32_t i = 0; i < num_blocks; i++)
        if (t->blocks[i] != KVRT_NULL_BLOCK) {
            kvrt_pool_release_one(pool, t->blocks[i]);
            t->blocks[i] = KVRT_NULL_BLOCK;
        }
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_table_fork(kvrt_pool_t *pool, kvrt_table_id_t parent_id,
                                          uint32_t num_children,
                                          kvrt_table_id_t *children_out,
                                          kvrt_block_copy_t *copies_out,
                                          uint32_t *num_copies_out)
{
    CHECK_POOL(pool);
    table_slot_t *parent = lookup(pool, parent_id);
    if (!parent)
        return unknown_table(pool, parent_id);
    if (num_children == 0 || !children_out || !copies_out || !num_copies_out)
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG,
                         "num_children > 0, children_out, copies_out and num_copies_out "
                         "are required");
    uint32_t free_slots = pool->max_tables - pool->live_tables;
    if (num_children > free_slots)
        return kvrt_fail(pool->ctx, KVRT_ERR_NO_TABLES, "fork of %u needs %u table slots, %u free",
                         num_children, num_children, free_slots);
    bool partial = (parent->num_tokens & (pool->tokens_per_block - 1)) != 0;
    uint32_t shared = parent->num_blocks - (partial ? 1u : 0u);
    if (partial && num_children > kvrt_pool_available(pool))
        return kvrt_fail(pool->ctx, KVRT_ERR_NO_BLOCKS,
                         "fork of %u needs %u blocks for the partial last block, %u "
                         "available",
                         num_children, num_children, kvrt_pool_available(pool));
    for (uint32_t i = 0; i < shared; i++)
        if (pool->meta[parent->blocks[i]].refcount > INT32_MAX - (int32_t)num_children)
            return kvrt_fail(pool->ctx, KVRT_ERR_OVERFLOW,
                             "block %d reference count would pass its limit",
                             parent->blocks[i]);
    /* Grow every child's array before touching any block: the one step
     * that can still fail. Children come off the free-slot list in order. */
    uint32_t index = pool->free_table_head;
    for (uint32_t c = 0; c < num_children; c++) {
        table_slot_t *child = &pool->tables[index];
        kvrt_status_t status =
            ensure_capacity(pool, child, parent->num_blocks ? parent->num_blocks : 1);
        if (status != KVRT_OK)
            return status;
        index = child->next_free;
    }
    for (uint32_t c = 0; c < num_children; c++) {
        kvrt_table_create(pool, &children_out[c]);
        table_slot_t *child = lookup(pool, children_out[c]);
        for (uint32_t i = 0; i < shared; i++) {
            child->blocks[i] = parent->blocks[i];
            if (parent->blocks[i] != KVRT_NULL_BLOCK)
                pool->meta[parent->blocks[i]].refcount++;
        }
        if (partial) {
            kvrt_pool_take(pool, 1, &child->blocks[shared]);
            copies_out[c] = (kvrt_block_copy_t){.src_block = parent->blocks[shared],
                                                .dst_block = child->blocks[shared]};
        }
        child->num_blocks = parent->num_blocks;
        child->num_tokens = parent->num_tokens;
    }
    *num_copies_out = partial ? num_children : 0;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_table_view(const kvrt_pool_t *pool, kvrt_table_id_t id,
                                          const int32_t **blocks_out,
                                          uint32_t *num_blocks_out, uint32_t *num_tokens_out)
{
    CHECK_POOL(pool);
    const table_slot_t *t = lookup(pool, id);
    if (!t)
        return unknown_table(pool, id);
    if (blocks_out)
        *blocks_out = t->blocks;
    if (num_blocks_out)
        *num_blocks_out = t->num_blocks;
    if (num_tokens_out)
        *num_tokens_out = t->num_tokens;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_table_export(const kvrt_pool_t *pool, kvrt_table_id_t id,
                                            int32_t *blocks_out, uint32_t capacity,
                                            uint32_t pad_to, uint32_t *count_out)
{
    CHECK_POOL(pool);
    const table_slot_t *t = lookup(pool, id);
    if (!t)
        return unknown_table(pool, id);
    if (!blocks_out || !count_out)
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG,
                         "blocks_out and count_out are required");
    uint32_t width = pad_to > t->num_blocks ? pad_to : t->num_blocks;
    if ((pad_to && pad_to < t->num_blocks) || capacity < width) {
        *count_out = width; /* the size needed (the documented exception) */
        return kvrt_fail(pool->ctx, KVRT_ERR_BUFFER_TOO_SMALL,
                         "table has %u blocks; pad_to %u, capacity %u", t->num_blocks,
                         pad_to, capacity);
    }
    if (t->num_blocks)
        memcpy(blocks_out, t->blocks, (size_t)t->num_blocks * sizeof(int32_t));
    for (uint32_t i = t->num_blocks; i < width; i++)
        blocks_out[i] = KVRT_NULL_BLOCK;
    *count_out = t->num_blocks;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_table_slots(const kvrt_pool_t *pool, kvrt_table_id_t id,
                                           uint32_t first, uint32_t count, int64_t *slots_out)
{
    CHECK_POOL(pool);
    const table_slot_t *t = lookup(pool, id);
    if (!t)
        return unknown_table(pool, id);
    if (!slots_out || (uint64_t)first + count > t->num_tokens)
        return kvrt_fail(pool->ctx, KVRT_ERR_INVALID_ARG,
                         "tokens [%u, %llu) outside a table of %u tokens", first,
                         (unsigned long long)first + count, t->num_tokens);
    for (uint32_t i = 0; i < count; i++)
        slots_out[i] = slot_of(pool, t, first + i);
    return KVRT_OK;
}

/* ---- invariants -------------------------------------------------------- */

#define VERIFY(cond, ...)                                                        \
    do {                                                                         \
        if (!(cond)) {                                                           \
            kvrt_status_t verify_status_ =                                       \
                kvrt_fail(pool->ctx, KVRT_ERR_INTERNAL, __VA_ARGS__);            \
            free(seen);                                                          \
            return verify_status_;                                               \
        }                                                                        \
    } while (0)

KVRT_EXPORT kvrt_status_t kvrt_pool_verify(const kvrt_pool_t *pool)
{
    CHECK_POOL(pool);
    uint32_t *seen = calloc(pool->num_blocks, sizeof(uint32_t));
    if (!seen)
        return kvrt_fail(pool->ctx, KVRT_ERR_NO_MEMORY, "verify scratch");
    uint32_t n_free = 0, n_used = 0, n_idle = 0;
    for (uint32_t b = 1; b < pool->num_blocks; b++) {
        const block_meta_t *m = &pool->meta[b];
        switch (m->state) {
        case BLOCK_FREE:
            n_free++;
            VERIFY(m->refcount == 0 && !m->cached, "free block %u has refcount %d/cached %u", b,
                   m->refcount, m->cached);
            break;
        case BLOCK_USED:
            n_used++;
            VERIFY(m->refcount > 0, "used block %u has refcount %d", b, m->refcount);
            break;
        case BLOCK_IDLE:
            n_idle++;
            VERIFY(m->refcount == 0 && m->cached, "idle block %u: refcount %d, cached %u", b,
                   m->refcount, m->cached);
            break;
        default:
            VERIFY(0, "block %u in unknown state %u", b, m->state);
        }
    }
    VERIFY(n_free == pool->free_count && n_used == pool->used_count &&
               n_idle == pool->idle_count,
           "counters free %u/used %u/cached %u, states say %u/%u/%u", pool->free_count,
           pool->used_count, pool->idle_count, n_free, n_used, n_idle);
    VERIFY(n_free + n_used + n_idle == pool->num_blocks - 1, "states do not cover the pool");
    for (uint32_t i = 0; i < pool->free_count; i++) {
        int32_t b = pool->free_stack[i];
        VERIFY(block_in_range(pool, b) && pool->meta[b].state == BLOCK_FREE && !seen[b]++,
               "free list entry %u (block %d) is not a unique free block", i, b);
    }
    memset(seen, 0, pool->num_blocks * sizeof(uint32_t));
    uint32_t live = 0;
    for (uint32_t i = 0; i < pool->max_tables; i++) {
        const table_slot_t *t = &pool->tables[i];
        if (!(t->generation & 1))
            continue;
        live++;
        VERIFY(t->num_blocks == blocks_for(pool, t->num_tokens),
               "table %u: %u blocks for %u tokens", i, t->num_blocks, t->num_tokens);
        for (uint32_t k = 0; k < t->num_blocks; k++) {
            int32_t b = t->blocks[k];
            if (b == KVRT_NULL_BLOCK && k + 1 < t->num_blocks)
                continue; /* released (kvrt_table_release_front) or a hole */
            VERIFY(block_in_range(pool, b) && pool->meta[b].state == BLOCK_USED,
                   "table %u entry %u names block %d, which is not in use", i, k, b);
            seen[b]++;
        }
    }
    VERIFY(live == pool->live_tables, "%u live tables counted, %u recorded", live,
           pool->live_tables);
    for (uint32_t b = 1; b < pool->num_blocks; b++)
        VERIFY((uint32_t)pool->meta[b].refcount >= seen[b],
               "block %u: refcount %d below its %u table references", b,
               pool->meta[b].refcount, seen[b]);
    free(seen);
    return KVRT_OK;
}
