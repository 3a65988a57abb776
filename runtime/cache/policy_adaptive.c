/*
 * policy_adaptive.c - adaptive two-list eviction ("adaptive"), after ARC
 * (Megiddo and Modha, FAST'03), on leaf-first lists.
 *
 * The evictable blocks sit in two recency lists: probation holds blocks
 * used once since they were indexed, protected holds blocks used again (a
 * hit, or an insert of a key the cache evicted before: it came back, so it
 * is reused). Victims come from probation while it is longer than its
 * target, else from protected. The target adapts as in ARC, from the keys
 * of victims remembered in a direct-mapped table: a key evicted from
 * probation that comes back says probation was too short (target grows),
 * one evicted from protected says protected was (target shrinks).
 *
 * Why: with small caches, most of a trace's blocks are used once (the new
 * turn of a conversation, a one-off document) and plain LRU lets them push
 * out the shared prefixes that are used again; with large caches, ARC's
 * target grows until it behaves like LRU. Both lists are leaf-first
 * (policy_lru.c): a run of one chain released root first loses its leaf
 * first.
 */
#include <stdlib.h>

#include "cache/cache_internal.h"

#define PROBATION 0
#define PROTECTED 1
#define ABSENT (-1)
#define HISTORY_MIN_SLOTS (1u << 16)

static inline int32_t sentinel_of(const cache_policy_t *p, int list)
{
    return list == PROBATION ? 0 : (int32_t)p->num_blocks;
}

static kvrt_status_t adaptive_init(cache_policy_t *p, uint32_t num_blocks)
{
    /* One more entry in the links: the protected list's sentinel. */
    p->links = kvrt_calloc_large_resident((size_t)num_blocks + 1, sizeof(*p->links));
    p->protected = kvrt_calloc_large_resident(num_blocks, sizeof(*p->protected));
    uint64_t slots = HISTORY_MIN_SLOTS;
    while (slots < 2ull * num_blocks)
        slots <<= 1;
    p->history = kvrt_calloc_large_resident(slots, sizeof(*p->history));
    p->history_mask = slots - 1;
    if (!p->links || !p->protected || !p->history)
        return KVRT_ERR_NO_MEMORY;
    for (uint32_t b = 0; b <= num_blocks; b++)
        p->links[b] = (policy_link_t){ABSENT, ABSENT};
    for (int list = PROBATION; list <= PROTECTED; list++) {
        int32_t s = sentinel_of(p, list);
        p->links[s] = (policy_link_t){s, s};
        p->run[list].first = 0;
    }
    p->target = num_blocks / 2;
    return KVRT_OK;
}

static void adaptive_destroy(cache_policy_t *p)
{
    kvrt_free_large(p->links);
    kvrt_free_large(p->protected);
    kvrt_free_large(p->history);
    p->links = NULL;
    p->protected = NULL;
    p->history = NULL;
}

static inline uint64_t history_tag(uint64_t key_lo) { return key_lo & ~0xffull; }

static void adaptive_inserted(cache_policy_t *p, int32_t block, uint32_t depth,
                              const kvrt_block_hash_t *key)
{
    uint64_t *slot = &p->history[key->lo & p->history_mask];
    bool returning = *slot && (*slot & ~0xffull) == history_tag(key->lo);
    p->protected[block] = returning;
    if (returning) {
        bool from_probation = (*slot & 0xff) == PROBATION + 1;
        if (from_probation && p->target < p->num_blocks)
            p->target++;
        else if (!from_probation && p->target > 0)
            p->target--;
        *slot = 0;
    }
}

static void adaptive_hit(cache_policy_t *p, int32_t block) { p->protected[block] = 1; }

static void adaptive_idle(cache_policy_t *p, int32_t block)
{
    int list = p->protected[block];
    kvrt_policy_list_idle(p, &p->run[list], sentinel_of(p, list), block);
    p->list_count[list]++;
}

static void adaptive_busy(cache_policy_t *p, int32_t block)
{
    int list = p->protected[block];
    kvrt_policy_list_unlink(p, &p->run[list], block);
    p->list_count[list]--;
}

static int32_t adaptive_victim(cache_policy_t *p)
{
    uint32_t probation = p->list_count[PROBATION];
    int list = probation && (probation > p->target || !p->list_count[PROTECTED]) ? PROBATION
                                                                                 : PROTECTED;
    int32_t block = p->links[sentinel_of(p, list)].next;
    kvrt_policy_list_unlink(p, &p->run[list], block);
    p->list_count[list]--;
    uint64_t k = p->names[block].name.key.lo;
    p->history[k & p->history_mask] = history_tag(k) | (uint64_t)(list + 1);
    return block;
}

/* Probation first, then protected: the order victims take while
 * probation is above its target, which is when the cache is under
 * pressure from new blocks. */
static uint32_t adaptive_peek(const cache_policy_t *p, int32_t *out, uint32_t max)
{
    uint32_t n = kvrt_policy_list_peek(p, sentinel_of(p, PROBATION), out, max);
    return n + kvrt_policy_list_peek(p, sentinel_of(p, PROTECTED), out + n, max - n);
}

static bool adaptive_contains(const cache_policy_t *p, int32_t block)
{
    return block > 0 && (uint32_t)block < p->num_blocks && p->links[block].next != ABSENT;
}

const cache_policy_ops_t kvrt_cache_policy_adaptive = {
    .name = "adaptive",
    .init = adaptive_init,
    .destroy = adaptive_destroy,
    .inserted = adaptive_inserted,
    .hit = adaptive_hit,
    .idle = adaptive_idle,
    .busy = adaptive_busy,
    .victim = adaptive_victim,
    .peek = adaptive_peek,
    .contains = adaptive_contains,
};
