/*
 * test_helpers.h - shared fixtures for kvrt's Criterion tests.
 */
#ifndef KVRT_TEST_HELPERS_H
#define KVRT_TEST_HELPERS_H

#include <criterion/criterion.h>
#include <stdint.h>

#include "kvrt/kvrt.h"

/* Asserts a call succeeded, printing kvrt's detail text when it did not. */
#define ASSERT_OK(ctx, call)                                                     \
    do {                                                                         \
        kvrt_status_t st_ = (call);                                              \
        cr_assert_eq(st_, KVRT_OK, "%s -> %s: %s", #call, kvrt_status_str(st_),  \
                     kvrt_ctx_last_error(ctx));                                  \
    } while (0)

#define ASSERT_STATUS(expected, call)                                            \
    do {                                                                         \
        kvrt_status_t st_ = (call);                                              \
        cr_assert_eq(st_, (expected), "%s -> %s, wanted %s", #call,              \
                     kvrt_status_str(st_), kvrt_status_str(expected));           \
    } while (0)

/* A small fp16 layout: 2 layers, 2 heads, head_dim 4, `tpb` tokens/block. */
static inline kvrt_kv_layout_t test_layout(uint32_t tpb)
{
    return (kvrt_kv_layout_t){.num_layers = 2, .num_kv_heads = 2, .head_dim = 4,
                              .tokens_per_block = tpb};
}

/* A host-memory pool of `blocks` blocks with no watermark. */
static inline kvrt_pool_t *test_pool(kvrt_ctx_t *ctx, uint32_t blocks, uint32_t tpb)
{
    kvrt_pool_params_t p = {.field_mask = KVRT_POOL_PARAM_WATERMARK,
                            .layout = test_layout(tpb),
                            .num_blocks = blocks,
                            .watermark_blocks = 0};
    kvrt_pool_t *pool = NULL;
    kvrt_status_t st = kvrt_pool_create(ctx, &p, &pool);
    cr_assert_eq(st, KVRT_OK, "pool: %s", kvrt_ctx_last_error(ctx));
    return pool;
}

/* Tokens 0..n-1 shifted by `seed`, so two prompts share what they share. */
static inline void test_prompt(int32_t *t, uint32_t n, int32_t seed)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = (int32_t)i + seed;
}

/* The end-of-test invariant of every cache test: the cache and the pool
 * verify and nothing but the cache holds a block. */
static inline void test_expect_only_cache_holds(kvrt_ctx_t *ctx, kvrt_pool_t *pool,
                                                kvrt_cache_t *cache)
{
    ASSERT_OK(ctx, kvrt_cache_verify(cache));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.used_blocks, 0, "blocks leaked: %u", info.used_blocks);
    cr_assert_eq(info.live_tables, 0, "tables leaked: %u", info.live_tables);
}

/* Small deterministic PRNG (xorshift64*), so failures replay exactly. */
static inline uint64_t test_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static inline uint32_t test_rand_below(uint64_t *state, uint32_t bound)
{
    return bound ? (uint32_t)(test_rand(state) % bound) : 0;
}

/* The engine of the randomized scheduler tests: a model next = model(prev)
 * verifies plan entry i greedily. prev is the input before the entry's
 * drafts (test_input_before_drafts, or the caller's stand-in for a
 * placeholder). Appends the accepted drafts and the model's bonus token to
 * tokens[*n ..] and returns how many drafts were accepted. */
static inline uint32_t test_verify_drafts(const kvrt_batch_plan_t *plan, uint32_t i,
                                          int32_t prev, int32_t (*model)(int32_t),
                                          int32_t *tokens, uint32_t *n)
{
    const kvrt_plan_seq_t *e = &plan->seqs[i];
    const int32_t *drafts = plan->input_tokens + plan->query_start_loc[i] +
                            (e->num_new_tokens - e->num_drafts);
    uint32_t accepted = 0;
    while (accepted < e->num_drafts && drafts[accepted] == model(prev)) {
        prev = drafts[accepted++];
        tokens[(*n)++] = prev;
    }
    tokens[(*n)++] = model(prev);
    return accepted;
}

/* The input token of plan entry i just before its drafts. */
static inline int32_t test_input_before_drafts(const kvrt_batch_plan_t *plan, uint32_t i)
{
    const kvrt_plan_seq_t *e = &plan->seqs[i];
    return plan->input_tokens[plan->query_start_loc[i] + e->num_new_tokens - 1 - e->num_drafts];
}

#endif /* KVRT_TEST_HELPERS_H */
