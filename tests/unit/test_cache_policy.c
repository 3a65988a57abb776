/*
 * test_cache_policy.c - what the eviction policies promise a serving
 * engine: a chain released root first loses its leaves first under the
 * default (lru-leaf), tables release leaf first under every policy, the
 * adaptive policy keeps a reused prefix through a scan of one-off prompts
 * that flushes LRU, every policy keeps the cache consistent under a
 * random workload, and kvrt_cache_peek_victims names victims in order.
 */
#include <stdio.h>
#include <string.h>

#include "cache/hooks.h"
#include "test_helpers.h"

#define TPB 4

static kvrt_ctx_t *ctx;
static kvrt_pool_t *pool;
static kvrt_cache_t *cache;

static void make(uint32_t blocks, uint64_t field_mask, kvrt_cache_policy_t policy)
{
    pool = test_pool(ctx, blocks, TPB);
    kvrt_cache_params_t p = {.field_mask = field_mask, .policy = policy};
    ASSERT_OK(ctx, kvrt_cache_create(pool, &p, &cache));
}

static void setup(void) { cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK); }

static void teardown(void)
{
    if (cache) {
        test_expect_only_cache_holds(ctx, pool, cache);
        cr_assert_eq(kvrt_cache_destroy(cache), KVRT_OK);
        cr_assert_eq(kvrt_pool_destroy(pool), KVRT_OK);
    }
    cache = NULL;
    kvrt_ctx_destroy(ctx);
}

TestSuite(cache_policy, .init = setup, .fini = teardown);

/* Allocates and caches the blocks of t (n tokens, whole blocks) that miss,
 * then releases every block of it root first in one kvrt_pool_free, the
 * way kvrt-replay and an engine giving back a matched prefix do. Returns
 * the blocks that hit. */
static uint32_t use_root_first(const int32_t *t, uint32_t n)
{
    int32_t blocks[64];
    kvrt_block_hash_t hashes[64];
    kvrt_cache_match_t m;
    ASSERT_OK(ctx, kvrt_cache_match(cache, t, n, NULL, 64, blocks, hashes, &m));
    kvrt_block_hash_t parent;
    if (m.num_blocks)
        parent = hashes[m.num_blocks - 1];
    else
        ASSERT_OK(ctx, kvrt_cache_root(cache, &parent));
    for (uint32_t i = m.num_blocks; i < n / TPB; i++) {
        kvrt_block_hash_t h;
        ASSERT_OK(ctx, kvrt_block_hash(&parent, t + i * TPB, TPB, i * TPB, NULL, &h));
        ASSERT_OK(ctx, kvrt_pool_alloc(pool, 1, &blocks[i]));
        int32_t cached;
        ASSERT_OK(ctx, kvrt_cache_insert(cache, blocks[i], &h, NULL, i, &cached));
        if (cached != blocks[i]) { /* an orphan of an evicted root: keep the cached one */
            ASSERT_OK(ctx, kvrt_pool_free(pool, 1, &blocks[i]));
            int32_t again;
            ASSERT_OK(ctx, kvrt_cache_lookup(cache, &h, NULL, &again));
            blocks[i] = again;
        }
        parent = h;
    }
    ASSERT_OK(ctx, kvrt_pool_free(pool, n / TPB, blocks));
    return m.num_blocks;
}

/* What a match of t finds, giving the references straight back. */
static uint32_t hits_of(const int32_t *t, uint32_t n)
{
    int32_t blocks[64];
    kvrt_cache_match_t m;
    ASSERT_OK(ctx, kvrt_cache_match(cache, t, n, NULL, 64, blocks, NULL, &m));
    if (m.num_blocks)
        ASSERT_OK(ctx, kvrt_pool_free(pool, m.num_blocks, blocks));
    return m.num_blocks;
}

/* Takes `count` blocks out of the pool and gives them back uncached: the
 * allocation pressure that makes the cache evict. */
static void squeeze(uint32_t count)
{
    int32_t blocks[64];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, count, blocks));
    ASSERT_OK(ctx, kvrt_pool_free(pool, count, blocks));
}

static uint32_t survivors_after_root_first_release(uint64_t mask, kvrt_cache_policy_t policy)
{
    make(9, mask, policy); /* 8 usable */
    int32_t a[16];
    test_prompt(a, 16, 0);
    cr_assert_eq(use_root_first(a, 16), 0);
    squeeze(6); /* 4 free, then 2 of a's 4 blocks are evicted */
    return hits_of(a, 16);
}

Test(cache_policy, the_default_evicts_a_chain_released_root_first_from_its_leaf)
{
    cr_assert_eq(survivors_after_root_first_release(0, KVRT_CACHE_LRU), 2,
                 "the default policy evicted the root and orphaned the leaves");
    const char *name = NULL;
    size_t len = sizeof(name);
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    char node[64];
    snprintf(node, sizeof(node), "cache.%u.policy", info.group_id);
    ASSERT_OK(ctx, kvrt_ctl(ctx, node, &name, &len, NULL, 0));
    cr_assert_str_eq(name, "lru-leaf");
}

Test(cache_policy, plain_lru_keeps_release_order_and_orphans_the_leaves)
{
    /* The reference semantics of kvrt-replay: root released first, root
     * evicted first, nothing hits. */
    cr_assert_eq(survivors_after_root_first_release(KVRT_CACHE_PARAM_POLICY, KVRT_CACHE_LRU), 0);
}

Test(cache_policy, adaptive_is_leaf_first_too)
{
    cr_assert_eq(
        survivors_after_root_first_release(KVRT_CACHE_PARAM_POLICY, KVRT_CACHE_ADAPTIVE), 2);
}

static uint32_t hot_hits_after_scan(kvrt_cache_policy_t policy)
{
    make(17, KVRT_CACHE_PARAM_POLICY, policy); /* 16 usable */
    int32_t hot[16], doc[16];
    test_prompt(hot, 16, 0);
    use_root_first(hot, 16);
    cr_assert_eq(use_root_first(hot, 16), 4, "the hot prompt is reused");
    for (int32_t d = 0; d < 10; d++) { /* 40 one-off blocks: 2.5x the pool */
        test_prompt(doc, 16, 1000 * (d + 1));
        cr_assert_eq(use_root_first(doc, 16), 0);
    }
    return hits_of(hot, 16);
}

Test(cache_policy, adaptive_keeps_a_reused_prefix_through_a_scan)
{
    cr_assert_eq(hot_hits_after_scan(KVRT_CACHE_ADAPTIVE), 4);
}

Test(cache_policy, lru_loses_a_reused_prefix_to_a_scan)
{
    cr_assert_eq(hot_hits_after_scan(KVRT_CACHE_LRU_LEAF), 0);
}

/* Random prompts sharing prefixes, used and released through both paths
 * (tables, which release leaf first, and kvrt_pool_free root first); the
 * cache and the pool must verify after every step and nothing may leak. */
static void random_workload(kvrt_cache_policy_t policy, uint64_t seed)
{
    make(33, KVRT_CACHE_PARAM_POLICY, policy);
    uint64_t rng = seed;
    kvrt_table_id_t live[4] = {0};
    for (int step = 0; step < 2000; step++) {
        int32_t t[32];
        uint32_t n = TPB * (1 + test_rand_below(&rng, 8));
        test_prompt(t, n, 100 * (int32_t)test_rand_below(&rng, 12));
        uint32_t slot = test_rand_below(&rng, 4);
        if (test_rand_below(&rng, 2)) {
            use_root_first(t, n);
        } else {
            ASSERT_OK(ctx, kvrt_table_destroy(pool, live[slot]));
            int32_t blocks[8];
            kvrt_cache_match_t m;
            ASSERT_OK(ctx, kvrt_cache_match(cache, t, n, NULL, 8, blocks, NULL, &m));
            ASSERT_OK(ctx, kvrt_table_create(pool, &live[slot]));
            if (m.num_blocks)
                ASSERT_OK(ctx, kvrt_table_adopt(pool, live[slot], m.num_blocks, blocks));
        }
        ASSERT_OK(ctx, kvrt_cache_verify(cache));
        ASSERT_OK(ctx, kvrt_pool_verify(pool));
    }
    for (int i = 0; i < 4; i++)
        ASSERT_OK(ctx, kvrt_table_destroy(pool, live[i]));
    kvrt_cache_stats_t s;
    ASSERT_OK(ctx, kvrt_cache_stats(cache, &s));
    cr_assert_gt(s.evictions, 100, "the workload never made the policy evict");
    cr_assert_gt(s.hit_tokens, 0, "the workload never hit");
}

Test(cache_policy, lru_leaf_stays_consistent_under_a_random_workload)
{
    random_workload(KVRT_CACHE_LRU_LEAF, 0x1eaf);
}

Test(cache_policy, adaptive_stays_consistent_under_a_random_workload)
{
    random_workload(KVRT_CACHE_ADAPTIVE, 0xada9);
}

/* kvrt_cache_peek_victims names the blocks in the order they are evicted:
 * after each single eviction the list is the previous one less its head. */
static void peek_is_the_eviction_order(kvrt_cache_policy_t policy)
{
    make(9, KVRT_CACHE_PARAM_POLICY, policy);
    int32_t a[16], b[8];
    test_prompt(a, 16, 0);
    test_prompt(b, 8, 500);
    use_root_first(a, 16);
    use_root_first(b, 8);
    int32_t before[8], after[8];
    kvrt_cache_block_name_t names[8];
    uint32_t n = kvrt_cache_peek_victims(cache, before, names, 8);
    cr_assert_eq(n, 6);
    for (uint32_t round = 0; round < 3; round++) {
        kvrt_pool_info_t info;
        ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
        squeeze(info.free_blocks + 1);
        uint32_t m = kvrt_cache_peek_victims(cache, after, names, 8);
        cr_assert_eq(m, n - 1);
        for (uint32_t i = 0; i < m; i++)
            cr_assert_eq(after[i], before[i + 1], "round %u: position %u", round, i);
        memcpy(before, after, sizeof(after));
        n = m;
    }
}

Test(cache_policy, peek_names_the_victims_in_order_lru_leaf)
{
    peek_is_the_eviction_order(KVRT_CACHE_LRU_LEAF);
}

Test(cache_policy, peek_names_the_victims_in_order_adaptive)
{
    peek_is_the_eviction_order(KVRT_CACHE_ADAPTIVE);
}

/* A pool of 8 usable blocks, 6 of them cached and idle (released in a
 * scrambled order) and 2 free. */
static void two_free_six_idle(kvrt_pool_t *p, kvrt_cache_t *c)
{
    int32_t blocks[8];
    ASSERT_OK(ctx, kvrt_pool_alloc(p, 8, blocks));
    for (uint32_t i = 0; i < 6; i++) {
        kvrt_block_hash_t content = {100u + i, 7u};
        ASSERT_OK(ctx, kvrt_cache_insert(c, blocks[i], &content, NULL, 0, NULL));
    }
    const int32_t order[8] = {blocks[3], blocks[6], blocks[1], blocks[5],
                              blocks[0], blocks[7], blocks[2], blocks[4]};
    for (uint32_t i = 0; i < 8; i++)
        ASSERT_OK(ctx, kvrt_pool_free(p, 1, &order[i]));
}

/* An allocation short of free blocks evicts what it lacks and hands out
 * the free blocks, then the victims in the order they were evicted: the
 * blocks that allocations of one block each would hand out, in the same
 * order, however the blocks are asked for. */
Test(cache_policy, an_allocation_that_evicts_hands_out_what_single_allocations_would)
{
    make(9, 0, KVRT_CACHE_LRU_LEAF);
    kvrt_pool_t *twin_pool = test_pool(ctx, 9, TPB);
    kvrt_cache_t *twin;
    ASSERT_OK(ctx, kvrt_cache_create(twin_pool, NULL, &twin));
    two_free_six_idle(pool, cache);
    two_free_six_idle(twin_pool, twin);
    int32_t victims[8];
    kvrt_cache_block_name_t names[8];
    cr_assert_eq(kvrt_cache_peek_victims(cache, victims, names, 8), 6);
    int32_t together[7], one_by_one[7];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 7, together));
    for (uint32_t i = 0; i < 7; i++)
        ASSERT_OK(ctx, kvrt_pool_alloc(twin_pool, 1, &one_by_one[i]));
    for (uint32_t i = 0; i < 7; i++)
        cr_assert_eq(together[i], one_by_one[i], "block %u: %d, one at a time %d", i,
                     together[i], one_by_one[i]);
    for (uint32_t i = 2; i < 7; i++)
        cr_assert_eq(together[i], victims[i - 2], "block %u is not victim %u", i, i - 2);
    ASSERT_OK(ctx, kvrt_pool_free(pool, 7, together));
    ASSERT_OK(ctx, kvrt_pool_free(twin_pool, 7, one_by_one));
    test_expect_only_cache_holds(ctx, twin_pool, twin);
    ASSERT_OK(ctx, kvrt_cache_destroy(twin));
    ASSERT_OK(ctx, kvrt_pool_destroy(twin_pool));
}
