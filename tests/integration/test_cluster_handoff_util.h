/*
 * test_cluster_handoff_util.h - what the hand-off and pull tests share: the
 * step clock, committing a plan, and blocks filled with a pattern that
 * names their place in the request, to check what landed byte for byte.
 */
#ifndef KVRT_TEST_CLUSTER_HANDOFF_UTIL_H
#define KVRT_TEST_CLUSTER_HANDOFF_UTIL_H

#include <time.h>

#include "test_xfer_util.h"

/* The clock both nodes pass to their steps and hand-off polls. */
static inline uint64_t tch_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void tch_nap_ms(uint32_t ms)
{
    struct timespec ts = {ms / 1000u, (long)(ms % 1000u) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Commits `token` for every entry of the plan that samples. */
static inline void tch_commit(kvrt_ctx_t *ctx, kvrt_sched_t *sched,
                              const kvrt_batch_plan_t *plan, int32_t token)
{
    int32_t tokens[64];
    uint32_t n = 0;
    cr_assert_leq(plan->num_seqs, 64);
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        if (plan->seqs[i].sample)
            tokens[n++] = token;
    kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = n,
                       .tokens = tokens};
    ASSERT_OK(ctx, kvrt_sched_commit(sched, &c));
}

/* The byte at `i` of page (layer, half) of the request's block `index`. */
static inline uint8_t tch_pattern(uint32_t index, uint32_t layer, int half, uint64_t i)
{
    return (uint8_t)(index * 31u + layer * 7u + (uint32_t)half * 3u + (uint32_t)(i % 251u));
}

/* Fills (fill) or checks (!fill) every page of `block` against the pattern
 * of request block `index`; true when every byte matches. */
static inline bool tch_block_pattern(kvrt_pool_t *pool, int32_t block, uint32_t index, bool fill)
{
    kvrt_kv_layout_t l;
    kvrt_pool_layout(pool, &l);
    uint64_t page = 0;
    kvrt_layout_page_bytes(&l, &page);
    for (uint32_t layer = 0; layer < l.num_layers; layer++)
        for (int half = 0; half < 2; half++) {
            uint8_t *a = NULL;
            kvrt_pool_page_address(pool, block, layer, (kvrt_kv_half_t)half, (void **)&a);
            for (uint64_t i = 0; i < page; i++) {
                if (fill)
                    a[i] = tch_pattern(index, layer, half, i);
                else if (a[i] != tch_pattern(index, layer, half, i))
                    return false;
            }
        }
    return true;
}

/* Waits (bounded, 10 s) until `send` is no longer in progress, polling
 * `tier` (may be NULL) and handing its reports to the sender as a serving
 * engine's loop does; asserts that it succeeded, and ends it. */
static inline void tch_send_finish(kvrt_ctx_t *ctx, kvrt_cluster_handoff_sender_t *sender,
                                   kvrt_tier_t *tier, kvrt_cluster_handoff_send_t *send)
{
    uint64_t end = txu_now_ms() + 10000;
    kvrt_status_t st;
    while ((st = kvrt_cluster_handoff_send_test(send)) == KVRT_INPROGRESS && txu_now_ms() < end) {
        kvrt_tier_completion_t done[8];
        uint32_t n = 0;
        if (tier) {
            ASSERT_OK(ctx, kvrt_tier_poll(tier, done, 8, &n));
            ASSERT_OK(ctx, kvrt_cluster_pull_onloaded(sender, tier, done, n));
        }
    }
    ASSERT_OK(ctx, st);
    ASSERT_OK(ctx, kvrt_cluster_handoff_send_end(send));
}

/* Polls (bounded, 10 s) the receiver, after its channel when it has one,
 * until a hand-off ended; returns its completion. */
static inline kvrt_handoff_completion_t
tch_wait_one(kvrt_ctx_t *ctx, kvrt_cluster_handoff_recv_t *recv, kvrt_cluster_channel_t *channel)
{
    kvrt_handoff_completion_t c = {0};
    uint32_t got = 0;
    uint64_t end = txu_now_ms() + 10000;
    while (got == 0 && txu_now_ms() < end) {
        uint32_t n = 0;
        if (channel)
            ASSERT_OK(ctx, kvrt_cluster_channel_poll(channel, tch_now_ns(), NULL, 0, &n));
        ASSERT_OK(ctx, kvrt_cluster_handoff_poll(recv, tch_now_ns(), &c, 1, &got));
    }
    cr_assert_eq(got, 1, "the hand-off did not end");
    return c;
}

/* A node's pool holds no block or table and verifies, and its cache (may
 * be NULL) verifies. */
static inline void tch_pool_clean(kvrt_ctx_t *ctx, kvrt_pool_t *pool, kvrt_cache_t *cache)
{
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.used_blocks, 0, "blocks stranded: %u", info.used_blocks);
    cr_assert_eq(info.live_tables, 0, "tables stranded: %u", info.live_tables);
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    if (cache)
        ASSERT_OK(ctx, kvrt_cache_verify(cache));
}

#endif /* KVRT_TEST_CLUSTER_HANDOFF_UTIL_H */
