/*
 * test_tier_host.c - the host-DRAM tier as an engine sees it: blocks the
 * prefix cache evicts land in host memory instead of being lost, a later
 * prompt finds them (kvrt_tier_match), onload brings the exact bytes back
 * into pool blocks and caches them again, a full tier drops and counts
 * instead of delaying an allocation, blocks next in line for eviction are
 * copied ahead so an eviction that may keep nothing loses nothing, and
 * nothing leaks.
 */
#include <stdio.h>
#include <string.h>

#include "test_helpers.h"

#include "../tier_helpers.h"

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

Test(tier_host, evicted_blocks_come_back_from_host_memory_byte_for_byte)
{
    make(17, 32, 4); /* 16 usable pool blocks */
    prefill(100, 4);
    prefill(200, 4);
    /* One block short: prompt 100's four blocks go down (the queue depth),
     * the next victim is dropped since the queue is full; then, while the
     * tier is polled, the blocks next in line are copied ahead. */
    squeeze_past_free(1);
    kvrt_tier_stats_t s;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    cr_assert_geq(s.host.offloads, 4);
    cr_assert_eq(s.host.drops, 1);
    kvrt_tier_match_t m;
    cr_assert_eq(bring_back(100, 4, &m, NULL), 4);
    cr_assert_eq(m.gpu_blocks, 0);
    cr_assert_eq(m.host_blocks, 4);
    /* Landed blocks are cached again: a match now hits them in the pool. */
    cr_assert_eq(bring_back(100, 4, &m, NULL), 0);
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
    cr_assert_geq(s.host.offloads, 2);
    cr_assert_eq(s.host.drops, 1);
    prefill(7, 2); /* block 1 is computed again */
    kvrt_tier_match_t m;
    cr_assert_eq(bring_back(7, 4, &m, NULL), 2);
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
    cr_assert_geq(v, 4);
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
    /* One block given twice would get two names' bytes; block indexes
     * past 2^32 - 1 do not exist. */
    int32_t used[2];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 1, used));
    used[1] = used[0];
    kvrt_block_hash_t two[2] = {{1, 2}, {3, 4}};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_tier_onload(tier, 0, 2, two, NULL, NULL, used, &ticket, NULL));
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "twice"), "%s", kvrt_ctx_last_error(ctx));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_tier_onload(tier, UINT32_MAX, 2, two, &h, NULL, used, &ticket, NULL));
    ASSERT_OK(ctx, kvrt_pool_free(pool, 1, used));
    /* An onload of nothing still yields a ticket, reported once. */
    ASSERT_OK(ctx, kvrt_tier_onload(tier, 0, 0, NULL, NULL, NULL, NULL, &ticket, NULL));
    kvrt_tier_completion_t done[2];
    ASSERT_OK(ctx, kvrt_tier_poll(tier, done, 2, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(done[0].ticket, ticket);
    cr_assert_eq(done[0].landed, 0);
}

Test(tier_host, blocks_copied_ahead_survive_an_eviction_that_may_keep_nothing)
{
    make(17, 32, 4);
    prefill(42, 4);
    settle(); /* polled: the blocks next in line for eviction are copied ahead */
    kvrt_tier_stats_t s;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    cr_assert_eq(s.host.offloads, 4, "nothing was copied ahead");
    /* Every block at once: no victim may be kept, yet none is lost. */
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    squeeze(info.free_blocks + info.cached_blocks);
    kvrt_tier_match_t m;
    cr_assert_eq(bring_back(42, 4, &m, NULL), 4);
    cr_assert_eq(m.host_blocks, 4);
}

Test(tier_host, an_onload_longer_than_the_queue_is_fed_as_the_queue_drains)
{
    make(33, 64, 2); /* 8 jobs in the queue at most, 12 blocks to bring back */
    prefill(9, 12);
    settle(); /* all 12 copied ahead over several polls */
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    squeeze(info.free_blocks + info.cached_blocks);
    kvrt_tier_match_t m;
    kvrt_tier_completion_t done = {0};
    cr_assert_eq(bring_back(9, 12, &m, &done), 12, "miss %d", done.miss);
    cr_assert_eq(m.host_blocks, 12);
}

Test(tier_host, the_cache_outlives_its_tier_and_a_forgotten_tier_is_torn_down_with_the_context)
{
    make(17, 8, 2);
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_cache_destroy(cache));
    prefill(3, 4);
    squeeze_past_free(1); /* copies in flight when the context goes */
    tier = NULL;          /* forgotten: kvrt_ctx_destroy() must take it down */
    cache = NULL;
}

static void make_write_through(uint32_t hits)
{
    pool = test_pool(ctx, 17, TPB);
    ASSERT_OK(ctx, kvrt_cache_create(pool, NULL, &cache));
    kvrt_tier_params_t p = {.field_mask = KVRT_TIER_PARAM_HOST_BLOCKS |
                                          KVRT_TIER_PARAM_QUEUE_DEPTH |
                                          KVRT_TIER_PARAM_WRITE_THROUGH,
                            .host_blocks = 32,
                            .queue_depth = 4,
                            .write_through_hits = hits};
    ASSERT_OK(ctx, kvrt_tier_create(cache, &p, &tier));
}

/* Matches prompt 100 (4 blocks) and keeps the references: blocks in use
 * are never next in line for eviction, so only write-through copies them. */
static void hit_and_hold(int32_t *hits)
{
    int32_t t[4 * TPB];
    kvrt_block_hash_t hashes[4];
    kvrt_tier_match_t m;
    prompt(t, 4 * TPB, 100);
    ASSERT_OK(ctx, kvrt_tier_match(tier, t, 4 * TPB, NULL, 4, hits, hashes, &m));
    cr_assert_eq(m.gpu_blocks, 4);
    settle();
}

Test(tier_host, blocks_hit_often_enough_are_written_through_while_in_use)
{
    make_write_through(2);
    prefill(100, 4);
    int32_t first[4], second[4];
    hit_and_hold(first);
    kvrt_tier_stats_t s;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    cr_assert_eq(s.write_throughs, 0, "one hit is below the threshold");
    cr_assert_eq(s.host.used_blocks, 0);
    hit_and_hold(second);
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    cr_assert_eq(s.write_throughs, 4);
    cr_assert_eq(s.host.offloads, 4);
    cr_assert_eq(s.host.used_blocks, 4);
    ASSERT_OK(ctx, kvrt_pool_free(pool, 4, second));
    ASSERT_OK(ctx, kvrt_pool_free(pool, 4, first));
    /* Evicted now: nothing to copy or drop, and the bytes come back. */
    squeeze_past_free(4);
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    cr_assert_eq(s.host.drops, 0);
    kvrt_tier_match_t m;
    cr_assert_eq(bring_back(100, 4, &m, NULL), 4);
    cr_assert_eq(m.host_blocks, 4);
}

Test(tier_host, without_write_through_blocks_in_use_stay_only_in_the_pool)
{
    make_write_through(0);
    prefill(100, 4);
    int32_t first[4], second[4];
    hit_and_hold(first);
    hit_and_hold(second);
    kvrt_tier_stats_t s;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    cr_assert_eq(s.write_throughs, 0);
    cr_assert_eq(s.host.used_blocks, 0);
    ASSERT_OK(ctx, kvrt_pool_free(pool, 4, second));
    ASSERT_OK(ctx, kvrt_pool_free(pool, 4, first));
}

/* Destroying the tier abandons onloads not yet reported: their blocks are
 * the caller's again, and whatever it writes into them must never be
 * found under the names the onload was to give them. */
Test(tier_host, an_onload_the_destroy_abandons_leaves_nothing_in_the_cache)
{
    make(17, 32, 8);
    prefill(100, 4);
    settle(); /* copied ahead while idle */
    /* Prompt 100 goes down to host memory, a block at a time. */
    int32_t held[16];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 12, held));
    for (int i = 0; i < 4; i++) {
        ASSERT_OK(ctx, kvrt_pool_alloc(pool, 1, &held[12 + i]));
        settle();
    }
    ASSERT_OK(ctx, kvrt_pool_free(pool, 16, held));
    int32_t t[17], hits[4], fresh[4];
    kvrt_block_hash_t hashes[4];
    kvrt_tier_match_t m;
    prompt(t, 17, 100); /* the last token's block is never matched */
    ASSERT_OK(ctx, kvrt_tier_match(tier, t, 17, NULL, 4, hits, hashes, &m));
    cr_assert_eq(m.gpu_blocks, 0);
    cr_assert_eq(m.host_blocks, 4, "gpu %u host %u", m.gpu_blocks, m.host_blocks);
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 4, fresh));
    uint64_t ticket;
    uint32_t accepted;
    ASSERT_OK(ctx, kvrt_tier_onload(tier, 0, 4, hashes, NULL, NULL, fresh, &ticket, &accepted));
    cr_assert_eq(accepted, 4);
    ASSERT_OK(ctx, kvrt_tier_destroy(tier)); /* before any poll reports it */
    tier = NULL;
    for (uint32_t i = 0; i < 4; i++)
        fill_block(fresh[i], 999, i); /* reused for another request */
    kvrt_cache_match_t cm;
    ASSERT_OK(ctx, kvrt_cache_match(cache, t, 17, NULL, 4, hits, NULL, &cm));
    cr_assert_eq(cm.num_blocks, 0, "an abandoned onload's block was cached (%u found)",
                 cm.num_blocks);
    ASSERT_OK(ctx, kvrt_pool_free(pool, 4, fresh));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
}
