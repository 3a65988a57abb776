/*
 * tier_helpers.h - what the tier tests share: one pool, cache and tier
 * stack per test, prompts whose blocks carry a known byte pattern, and the
 * engine's moves (prefill, allocation pressure, match + onload + wait).
 * Include after test_helpers.h, once per test program.
 */
#ifndef KVRT_TESTS_TIER_HELPERS_H
#define KVRT_TESTS_TIER_HELPERS_H

#include <dirent.h>
#include <stdio.h>
#include <unistd.h>

#include "kvrt/tier.h"
#include "test_dirs.h"

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

/* Match, onload what the tiers hold, wait; returns blocks landed (the
 * ticket's report in *done_out when not NULL) and checks every landed
 * block's bytes. */
__attribute__((unused)) static uint32_t bring_back(int32_t seed, uint32_t nb, kvrt_tier_match_t *m,
                           kvrt_tier_completion_t *done_out)
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
        if (done_out)
            *done_out = done[0];
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
__attribute__((unused)) static void squeeze_past_free(uint32_t extra)
{
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    squeeze(info.free_blocks + extra);
}

#endif /* KVRT_TESTS_TIER_HELPERS_H */
