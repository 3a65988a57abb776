/*
 * test_tier_host.c - the host-DRAM tier as an engine sees it: blocks the
 * prefix cache evicts land in host memory instead of being lost, a later
 * prompt finds them (kvrt_tier_match), onload brings the exact bytes back
 * into pool blocks and caches them again, a full tier drops and counts
 * instead of delaying an allocation, and nothing leaks.
 */
#include <stdio.h>
#include <string.h>

#include "kvrt/kernels.h"
#include "kvrt/tier.h"
#include "test_helpers.h"

#define TPB 4

static kvrt_ctx_t *ctx;
static kvrt_pool_t *pool;
static kvrt_cache_t *cache;
static kvrt_tier_t *tier;

static void setup(void) { cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK); }

static void teardown(void)
{
    if (tier)
        cr_assert_eq(kvrt_tier_destroy(tier), KVRT_OK);
    if (cache) {
        kvrt_pool_info_t info;
        cr_assert_eq(kvrt_pool_info(pool, &info), KVRT_OK);
        cr_assert_eq(info.used_blocks, 0, "blocks leaked: %u", info.used_blocks);
        cr_assert_eq(kvrt_cache_destroy(cache), KVRT_OK);
        cr_assert_eq(kvrt_pool_destroy(pool), KVRT_OK);
    }
    tier = NULL;
    cache = NULL;
    kvrt_ctx_destroy(ctx);
}

TestSuite(tier_host, .init = setup, .fini = teardown);

static void make(uint32_t pool_blocks, uint32_t host_blocks, uint32_t queue_depth)
{
    pool = test_pool(ctx, pool_blocks, TPB);
    ASSERT_OK(ctx, kvrt_cache_create(pool, NULL, &cache));
    kvrt_tier_params_t p = {.field_mask = KVRT_TIER_PARAM_HOST_BLOCKS | KVRT_TIER_PARAM_QUEUE_DEPTH,
                            .host_blocks = host_blocks,
                            .queue_depth = queue_depth};
    ASSERT_OK(ctx, kvrt_tier_create(cache, &p, &tier));
}

static void prompt(int32_t *t, uint32_t n, int32_t seed)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = (int32_t)i + seed;
}

/* The bytes a block holds in these tests: a pattern of the prompt seed,
 * the block's position and the page, so a wrong block, page or a torn
 * copy shows. Pages are addressed one by one (the layout decides where). */
static bool block_pattern(int32_t block, int32_t seed, uint32_t position, bool write)
{
    kvrt_kv_layout_t layout;
    uint64_t page_bytes;
    ASSERT_OK(ctx, kvrt_pool_layout(pool, &layout));
    ASSERT_OK(ctx, kvrt_layout_page_bytes(&layout, &page_bytes));
    for (uint32_t l = 0; l < layout.num_layers; l++)
        for (int half = 0; half < 2; half++) {
            uint8_t *page;
            ASSERT_OK(ctx, kvrt_pool_page_address(pool, block, l, (kvrt_kv_half_t)half,
                                                  (void **)&page));
            for (uint64_t i = 0; i < page_bytes; i++) {
                uint8_t want = (uint8_t)(seed * 31 + position * 7 + l * 5 + half * 3 + i);
                if (write)
                    page[i] = want;
                else if (page[i] != want)
                    return false;
            }
        }
    return true;
}

static void fill_block(int32_t block, int32_t seed, uint32_t position)
{
    block_pattern(block, seed, position, true);
}

static bool block_holds(int32_t block, int32_t seed, uint32_t position)
{
    return block_pattern(block, seed, position, false);
}

/* Prefills a prompt of nb blocks into fresh blocks, fills their bytes and
 * caches them, then releases them (leaf first, like a finished table). */
static void prefill(int32_t seed, uint32_t nb)
{
    int32_t t[64], blocks[16];
    prompt(t, nb * TPB, seed);
    kvrt_block_hash_t parent;
    ASSERT_OK(ctx, kvrt_cache_root(cache, &parent));
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, nb, blocks));
    for (uint32_t i = 0; i < nb; i++) {
        kvrt_block_hash_t h;
        ASSERT_OK(ctx, kvrt_block_hash(&parent, t + i * TPB, TPB, i * TPB, NULL, &h));
        fill_block(blocks[i], seed, i);
        ASSERT_OK(ctx, kvrt_cache_insert(cache, blocks[i], &h, NULL, i, NULL));
        parent = h;
    }
    for (uint32_t i = nb; i-- > 0;)
        ASSERT_OK(ctx, kvrt_pool_free(pool, 1, &blocks[i]));
}

static void settle(void)
{
    uint32_t n;
    ASSERT_OK(ctx, kvrt_tier_drain(tier, 10000, NULL, 0, &n));
}

/* Allocates and frees `count` blocks: the pressure that makes the cache
 * evict into the tier. */
static void squeeze(uint32_t count)
{
    int32_t blocks[64];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, count, blocks));
    ASSERT_OK(ctx, kvrt_pool_free(pool, count, blocks));
    settle();
}

/* Match, onload what the tiers hold, wait; returns blocks landed and
 * checks every landed block's bytes. */
static uint32_t bring_back(int32_t seed, uint32_t nb, kvrt_tier_match_t *m)
{
    int32_t t[64], hits[16], fresh[16];
    kvrt_block_hash_t hashes[16];
    prompt(t, nb * TPB, seed);
    ASSERT_OK(ctx, kvrt_tier_match(tier, t, nb * TPB, NULL, 16, hits, hashes, m));
    uint32_t below = m->host_blocks + m->ssd_blocks;
    uint32_t landed = 0;
    if (below) {
        ASSERT_OK(ctx, kvrt_pool_alloc(pool, below, fresh));
        uint64_t ticket;
        uint32_t accepted;
        ASSERT_OK(ctx, kvrt_tier_onload(tier, m->gpu_blocks, below, hashes + m->gpu_blocks,
                                        m->gpu_blocks ? &hashes[m->gpu_blocks - 1] : NULL,
                                        NULL, fresh, &ticket, &accepted));
        cr_assert_eq(accepted, below);
        kvrt_tier_completion_t done[4];
        uint32_t n;
        ASSERT_OK(ctx, kvrt_tier_drain(tier, 10000, done, 4, &n));
        cr_assert_eq(n, 1, "one ticket, reported once");
        cr_assert_eq(done[0].ticket, ticket);
        landed = done[0].landed;
        for (uint32_t i = 0; i < landed; i++)
            cr_assert(block_holds(fresh[i], seed, m->gpu_blocks + i),
                      "block %u came back with other bytes", m->gpu_blocks + i);
        ASSERT_OK(ctx, kvrt_pool_free(pool, below, fresh));
    }
    if (m->gpu_blocks)
        ASSERT_OK(ctx, kvrt_pool_free(pool, m->gpu_blocks, hits));
    return landed;
}

/* The pool's free blocks, then `extra` more than that: what makes the
 * cache evict (and the tier take) its least recently used blocks. */
static void squeeze_past_free(uint32_t extra)
{
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    squeeze(info.free_blocks + extra);
}

Test(tier_host, evicted_blocks_come_back_from_host_memory_byte_for_byte)
{
    make(17, 32, 4); /* 16 usable pool blocks */
    prefill(100, 4);
    prefill(200, 4);
    /* One block short: prompt 100's four blocks go down (the queue depth),
     * the next victim is dropped since the queue is full. */
    squeeze_past_free(1);
    kvrt_tier_stats_t s;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    cr_assert_eq(s.host.offloads, 4);
    cr_assert_eq(s.host.used_blocks, 4);
    cr_assert_eq(s.host.drops, 1);
    kvrt_tier_match_t m;
    cr_assert_eq(bring_back(100, 4, &m), 4);
    cr_assert_eq(m.gpu_blocks, 0);
    cr_assert_eq(m.host_blocks, 4);
    /* Landed blocks are cached again: a match now hits them in the pool. */
    cr_assert_eq(bring_back(100, 4, &m), 0);
    cr_assert_eq(m.gpu_blocks, 4, "onloaded blocks were not cached");
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    cr_assert_eq(s.host.onloads, 4);
    cr_assert_eq(s.host.hits, 4);
}

Test(tier_host, a_prefix_split_between_pool_and_host_continues_across_them)
{
    make(17, 32, 2);
    prefill(7, 4);
    prefill(8, 4);
    /* Blocks 3 and 2 of prompt 7 go down (the queue depth), block 1 is
     * dropped (the queue was full): the price of never waiting. */
    squeeze_past_free(1);
    kvrt_tier_stats_t s;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    cr_assert_eq(s.host.offloads, 2);
    cr_assert_eq(s.host.drops, 1);
    prefill(7, 2); /* block 1 is computed again */
    kvrt_tier_match_t m;
    cr_assert_eq(bring_back(7, 4, &m), 2);
    cr_assert_eq(m.gpu_blocks, 2);
    cr_assert_eq(m.host_blocks, 2);
}

Test(tier_host, a_full_host_tier_evicts_its_oldest_and_never_delays_an_allocation)
{
    make(17, 4, 2);
    for (int32_t p = 0; p < 8; p++) {
        prefill(1000 * (p + 1), 4);
        squeeze_past_free(1); /* must succeed whatever the tier's state */
    }
    kvrt_tier_stats_t s;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    cr_assert_leq(s.host.used_blocks, 4);
    cr_assert_gt(s.host.offloads, 4);
    cr_assert_gt(s.host.evictions, 0, "a full tier must evict its oldest");
    cr_assert_eq(s.in_flight, 0);
}

Test(tier_host, metrics_are_ctl_nodes)
{
    make(17, 32, 4);
    prefill(5, 3);
    prefill(6, 4);
    squeeze_past_free(1);
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    char name[64];
    uint64_t v;
    snprintf(name, sizeof(name), "tier.%u.host.offloads", info.group_id);
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, name, &v));
    cr_assert_eq(v, 4);
    snprintf(name, sizeof(name), "tier.%u.host.capacity_blocks", info.group_id);
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, name, &v));
    cr_assert_eq(v, 32);
    snprintf(name, sizeof(name), "tier.%u.ssd.capacity_blocks", info.group_id);
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, name, &v));
    cr_assert_eq(v, 0);
}

Test(tier_host, every_public_function_refuses_bad_input)
{
    pool = test_pool(ctx, 9, TPB);
    ASSERT_OK(ctx, kvrt_cache_create(pool, NULL, &cache));
    kvrt_tier_params_t p = {.field_mask = KVRT_TIER_PARAM_HOST_BLOCKS, .host_blocks = 0};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_tier_create(cache, &p, &tier));
    p.host_blocks = 4;
    p.field_mask |= 1u << 20;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_tier_create(cache, &p, &tier));
    p.field_mask = KVRT_TIER_PARAM_HOST_BLOCKS | KVRT_TIER_PARAM_SSD;
    p.ssd_dir = "/nonexistent/kvrt";
    p.ssd_blocks = 4;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_tier_create(cache, &p, &tier));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_tier_create(NULL, &p, &tier));
    p.field_mask = KVRT_TIER_PARAM_HOST_BLOCKS;
    ASSERT_OK(ctx, kvrt_tier_create(cache, &p, &tier));
    kvrt_tier_t *second;
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_tier_create(cache, &p, &second));
    uint64_t ticket;
    kvrt_block_hash_t h = {1, 2};
    int32_t block = 3; /* free, not used */
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_tier_onload(tier, 0, 1, &h, NULL, NULL, &block, &ticket, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_tier_onload(tier, 1, 1, &h, NULL, NULL, &block, &ticket, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_tier_onload(NULL, 0, 0, NULL, NULL, NULL, NULL,
                                                         &ticket, NULL));
    uint32_t n;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_tier_poll(tier, NULL, 4, &n));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_tier_poll(NULL, NULL, 0, &n));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_tier_stats(tier, NULL));
    kvrt_tier_match_t m;
    int32_t t[8] = {0};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_tier_match(tier, t, 8, NULL, 2, &block, NULL, &m));
    cr_assert_eq(kvrt_tier_destroy(NULL), KVRT_OK);
    /* An onload of nothing still yields a ticket, reported once. */
    ASSERT_OK(ctx, kvrt_tier_onload(tier, 0, 0, NULL, NULL, NULL, NULL, &ticket, NULL));
    kvrt_tier_completion_t done[2];
    ASSERT_OK(ctx, kvrt_tier_poll(tier, done, 2, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(done[0].ticket, ticket);
    cr_assert_eq(done[0].landed, 0);
}
