/*
 * sched_fixture.h - a context, a host pool, an optional prefix cache and a
 * scheduler for the scheduler's tests; closing checks that nothing leaked.
 */
#ifndef KVRT_TEST_SCHED_FIXTURE_H
#define KVRT_TEST_SCHED_FIXTURE_H

#include "test_helpers.h"

typedef struct sched_fixture {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    kvrt_cache_t *cache; /* NULL without one */
    kvrt_sched_t *sched;
} sched_fixture_t;

/* Parameters for n requests all running at once, each with a prompt
 * chunk of up to tpb tokens in one step. */
static inline kvrt_sched_params_t sched_fixture_params_for(uint32_t n, uint32_t tpb)
{
    return (kvrt_sched_params_t){.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                               KVRT_SCHED_PARAM_MAX_SEQS |
                                               KVRT_SCHED_PARAM_MAX_REQUESTS,
                                 .max_batch_tokens = n * tpb,
                                 .max_seqs = n,
                                 .max_requests = n};
}

/* A pool of `blocks` blocks of `tpb` tokens (no watermark), with a cache
 * created with cp (NULL: its defaults) when `cache`; sp may be NULL. */
static inline sched_fixture_t sched_fixture_open_cache(uint32_t blocks, uint32_t tpb, bool cache,
                                                       const kvrt_cache_params_t *cp,
                                                       const kvrt_sched_params_t *sp)
{
    sched_fixture_t f = {0};
    cr_assert_eq(kvrt_ctx_create(NULL, &f.ctx), KVRT_OK);
    f.pool = test_pool(f.ctx, blocks, tpb);
    if (cache)
        ASSERT_OK(f.ctx, kvrt_cache_create(f.pool, cp, &f.cache));
    ASSERT_OK(f.ctx, kvrt_sched_create(f.ctx, f.pool, f.cache, sp, &f.sched));
    return f;
}

/* The same with the cache's defaults. */
static inline sched_fixture_t sched_fixture_open(uint32_t blocks, uint32_t tpb, bool cache,
                                                 const kvrt_sched_params_t *sp)
{
    return sched_fixture_open_cache(blocks, tpb, cache, NULL, sp);
}

static inline uint32_t sched_fixture_used_blocks(const sched_fixture_t *f)
{
    kvrt_pool_info_t info;
    ASSERT_OK(f->ctx, kvrt_pool_info(f->pool, &info));
    return info.used_blocks;
}

/* Verifies the pool and cache, requires no used block and no live table,
 * and destroys everything (f->sched may already be destroyed: NULL). */
static inline void sched_fixture_close(sched_fixture_t *f)
{
    ASSERT_OK(f->ctx, kvrt_pool_verify(f->pool));
    if (f->cache)
        ASSERT_OK(f->ctx, kvrt_cache_verify(f->cache));
    kvrt_pool_info_t info;
    ASSERT_OK(f->ctx, kvrt_pool_info(f->pool, &info));
    cr_assert_eq(info.used_blocks, 0, "blocks leaked: %u used", info.used_blocks);
    cr_assert_eq(info.live_tables, 0, "tables leaked: %u", info.live_tables);
    kvrt_sched_destroy(f->sched);
    kvrt_cache_destroy(f->cache);
    kvrt_ctx_destroy(f->ctx);
}

/* Commits `token` for every sampling entry of plan (no draft accepted). */
static inline void sched_fixture_commit(sched_fixture_t *f, const kvrt_batch_plan_t *plan,
                                        int32_t token)
{
    int32_t tokens[1024];
    uint32_t n = 0;
    cr_assert_leq(plan->num_seqs, 1024);
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        if (plan->seqs[i].sample)
            tokens[n++] = token;
    kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = n,
                       .tokens = tokens};
    ASSERT_OK(f->ctx, kvrt_sched_commit(f->sched, &c));
}

/* Drains up to cap end events; returns how many. */
static inline uint32_t sched_fixture_drain(sched_fixture_t *f, kvrt_seq_info_t *events,
                                           uint32_t cap)
{
    uint32_t n = 0;
    ASSERT_OK(f->ctx, kvrt_sched_drain_ended(f->sched, events, cap, &n));
    return n;
}

#endif /* KVRT_TEST_SCHED_FIXTURE_H */
