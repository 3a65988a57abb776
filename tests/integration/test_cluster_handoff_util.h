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

#endif /* KVRT_TEST_CLUSTER_HANDOFF_UTIL_H */
