/*
 * policy_lru.c - least recently used eviction, the default.
 *
 * The evictable blocks form one doubly linked list threaded through an
 * array of links (a block's previous and next, side by side) indexed by
 * block id, with block 0 (the null block, never cached) as the sentinel:
 * a block joins at the tail when its last reference goes, leaves from
 * anywhere in O(1) when a hit takes it back, and victims come from the
 * head. "Recently used" therefore means "recently released": a block
 * held by a running sequence is not evictable at all, and the order of
 * release inside one sequence (first block first) makes its deepest block
 * the most recent, as in the reference replay semantics.
 *
 * Leaf-first LRU ("lru-leaf") is the same list with one rule for runs: a
 * chain released root first (depth d, d+1, ... within one query tick, as
 * kvrt_pool_free() of a matched prefix or a request's blocks does) is
 * linked deepest-oldest, each deeper block in front of the run's start,
 * so the run's leaf is evicted before its root. Evicting a root first
 * orphans every cached block behind it (a match stops at the first
 * miss), which is what plain LRU does to such a run. A chain released
 * leaf first (kvrt_table_destroy, kvrt_table_truncate) already arrives in
 * that order. Between runs the order is plain recency.
 */
#include <stdlib.h>

#include "cache/cache_internal.h"

#define SENTINEL 0
#define ABSENT (-1)

static kvrt_status_t lru_init(cache_policy_t *p, uint32_t num_blocks)
{
    p->links = kvrt_calloc_large_resident(num_blocks, sizeof(*p->links));
    if (!p->links)
        return KVRT_ERR_NO_MEMORY;
    for (uint32_t b = 0; b < num_blocks; b++)
        p->links[b] = (policy_link_t){ABSENT, ABSENT};
    p->links[SENTINEL] = (policy_link_t){SENTINEL, SENTINEL};
    return KVRT_OK;
}

static kvrt_status_t lru_leaf_init(cache_policy_t *p, uint32_t num_blocks)
{
    p->leaf_first = true;
    p->run[0].first = SENTINEL;
    return lru_init(p, num_blocks);
}

static void lru_destroy(cache_policy_t *p)
{
    kvrt_free_large(p->links);
    p->links = NULL;
}

static void lru_inserted(cache_policy_t *p, int32_t block, uint32_t depth,
                         const kvrt_block_hash_t *key)
{
}
static void lru_hit(cache_policy_t *p, int32_t block) {}

/* Links block in front of `at` (at == a sentinel: at that list's tail). */
static void link_before(cache_policy_t *p, int32_t block, int32_t at)
{
    policy_link_t *const links = p->links;
    int32_t before = links[at].prev;
    links[block] = (policy_link_t){before, at};
    links[before].next = block;
    links[at].prev = block;
    p->evictable++;
}

static void lru_idle(cache_policy_t *p, int32_t block) { link_before(p, block, SENTINEL); }

void kvrt_policy_list_idle(cache_policy_t *p, policy_run_t *run, int32_t sentinel,
                           int32_t block)
{
    uint32_t depth = p->names[block].name.depth;
    bool continues = run->first != SENTINEL && run->tick == p->tick && depth == run->depth + 1;
    if (continues) {
        link_before(p, block, run->first);
    } else {
        link_before(p, block, sentinel);
        run->tick = p->tick;
    }
    run->first = block;
    run->depth = depth;
}

void kvrt_policy_list_unlink(cache_policy_t *p, policy_run_t *run, int32_t block)
{
    if (run && block == run->first)
        run->first = SENTINEL; /* the run's anchor left: the run ends */
    policy_link_t *const links = p->links;
    const policy_link_t at = links[block];
    links[at.prev].next = at.next;
    links[at.next].prev = at.prev;
    links[block] = (policy_link_t){ABSENT, ABSENT};
    p->evictable--;
}

static void lru_leaf_idle(cache_policy_t *p, int32_t block)
{
    kvrt_policy_list_idle(p, &p->run[0], SENTINEL, block);
}

static void lru_unlink(cache_policy_t *p, int32_t block)
{
    kvrt_policy_list_unlink(p, p->leaf_first ? &p->run[0] : NULL, block);
}

static void lru_busy(cache_policy_t *p, int32_t block) { lru_unlink(p, block); }

static int32_t lru_victim(cache_policy_t *p)
{
    int32_t block = p->links[SENTINEL].next;
    lru_unlink(p, block);
    return block;
}

uint32_t kvrt_policy_list_peek(const cache_policy_t *p, int32_t sentinel, int32_t *out,
                               uint32_t max)
{
    uint32_t n = 0;
    for (int32_t b = p->links[sentinel].next; b != sentinel && n < max; b = p->links[b].next)
        out[n++] = b;
    return n;
}

static uint32_t lru_peek(const cache_policy_t *p, int32_t *out, uint32_t max)
{
    return kvrt_policy_list_peek(p, SENTINEL, out, max);
}

static bool lru_contains(const cache_policy_t *p, int32_t block)
{
    return block > 0 && (uint32_t)block < p->num_blocks && p->links[block].next != ABSENT;
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
    .peek = lru_peek,
    .contains = lru_contains,
};

const cache_policy_ops_t kvrt_cache_policy_lru_leaf = {
    .name = "lru-leaf",
    .init = lru_leaf_init,
    .destroy = lru_destroy,
    .inserted = lru_inserted,
    .hit = lru_hit,
    .idle = lru_leaf_idle,
    .busy = lru_busy,
    .victim = lru_victim,
    .peek = lru_peek,
    .contains = lru_contains,
};
