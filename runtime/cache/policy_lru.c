/*
 * policy_lru.c - least recently used eviction, the default.
 *
 * The evictable blocks form one doubly linked list threaded through two
 * int32 arrays indexed by block id, with block 0 (the null block, never
 * cached) as the sentinel: a block joins at the tail when its last
 * reference goes, leaves from anywhere in O(1) when a hit takes it back,
 * and victims come from the head. "Recently used" therefore means "recently
 * released": a block held by a running sequence is not evictable at all,
 * and the order of release inside one sequence (first block first) makes
 * its deepest block the most recent, as in the reference replay semantics.
 */
#include <stdlib.h>

#include "cache/cache_internal.h"

#define SENTINEL 0
#define ABSENT (-1)

static kvrt_status_t lru_init(cache_policy_t *p, uint32_t num_blocks)
{
    p->prev = malloc((size_t)num_blocks * sizeof(*p->prev));
    p->next = malloc((size_t)num_blocks * sizeof(*p->next));
    if (!p->prev || !p->next)
        return KVRT_ERR_NO_MEMORY;
    for (uint32_t b = 0; b < num_blocks; b++)
        p->prev[b] = p->next[b] = ABSENT;
    p->prev[SENTINEL] = p->next[SENTINEL] = SENTINEL;
    return KVRT_OK;
}

static void lru_destroy(cache_policy_t *p)
{
    free(p->prev);
    free(p->next);
    p->prev = p->next = NULL;
}

static void lru_inserted(cache_policy_t *p, int32_t block, uint32_t depth,
                         const kvrt_block_hash_t *key)
{
}
static void lru_hit(cache_policy_t *p, int32_t block) {}

static void lru_idle(cache_policy_t *p, int32_t block)
{
    int32_t last = p->prev[SENTINEL];
    p->prev[block] = last;
    p->next[block] = SENTINEL;
    p->next[last] = block;
    p->prev[SENTINEL] = block;
    p->evictable++;
}

static void lru_unlink(cache_policy_t *p, int32_t block)
{
    p->next[p->prev[block]] = p->next[block];
    p->prev[p->next[block]] = p->prev[block];
    p->prev[block] = p->next[block] = ABSENT;
    p->evictable--;
}

static void lru_busy(cache_policy_t *p, int32_t block) { lru_unlink(p, block); }

static int32_t lru_victim(cache_policy_t *p)
{
    int32_t block = p->next[SENTINEL];
    lru_unlink(p, block);
    return block;
}

static bool lru_contains(const cache_policy_t *p, int32_t block)
{
    return block > 0 && (uint32_t)block < p->num_blocks && p->next[block] != ABSENT;
}

const cache_policy_ops_t kvrt_cache_policy_lru = {
    .name = "lru",
    .init = lru_init,
    .destroy = lru_destroy,
    .inserted = lru_inserted,
    .hit = lru_hit,
    .idle = lru_idle,
    .busy = lru_busy,
    .victim = lru_victim,
    .contains = lru_contains,
};
