/*
 * test_sched_cache_reset.c - kvrt_cache_reset with a scheduler built on the
 * cache: it empties the cache so later requests miss, refuses while cached
 * blocks are referenced (changing nothing), and with FORGET_BUSY unindexes
 * referenced blocks, which their holders keep until they end.
 */
#include "sched_fixture.h"

#define TPB 4u

typedef sched_fixture_t fixture_t;

static fixture_t open_fixture(void) { return sched_fixture_open(64, TPB, true, NULL); }

static kvrt_pool_info_t pool_info(const fixture_t *f)
{
    kvrt_pool_info_t info;
    ASSERT_OK(f->ctx, kvrt_pool_info(f->pool, &info));
    return info;
}

static kvrt_cache_stats_t cache_stats(const fixture_t *f)
{
    kvrt_cache_stats_t st;
    ASSERT_OK(f->ctx, kvrt_cache_stats(f->cache, &st));
    return st;
}

#define close_fixture sched_fixture_close

static kvrt_seq_id_t add(fixture_t *f, uint32_t max_new)
{
    int32_t prompt[17];
    for (int i = 0; i < 17; i++)
        prompt[i] = 100 + i;
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 17, .max_new_tokens = max_new};
    kvrt_seq_id_t id;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    return id;
}

/* One step and its commit; returns the computed tokens of the first entry. */
static uint32_t step_commit(fixture_t *f, uint64_t now)
{
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, now, &plan));
    if (!plan->num_seqs)
        return UINT32_MAX;
    uint32_t computed = plan->seqs[0].num_computed_tokens;
    sched_fixture_commit(f, plan, 5);
    return computed;
}

static void run_to_end(fixture_t *f)
{
    for (int i = 0; i < 100 && step_commit(f, (uint64_t)i) != UINT32_MAX; i++)
        ;
    kvrt_seq_info_t ev[8];
    uint32_t n;
    ASSERT_OK(f->ctx, kvrt_sched_drain_ended(f->sched, ev, 8, &n));
}

Test(sched_cache_reset, reset_with_a_scheduler_attached_empties_the_cache_and_later_requests_miss)
{
    fixture_t f = open_fixture();
    add(&f, 2);
    run_to_end(&f);
    cr_assert_eq(cache_stats(&f).cached_blocks, 4);
    ASSERT_OK(f.ctx, kvrt_cache_reset(f.cache, 0));
    cr_assert_eq(cache_stats(&f).cached_blocks, 0);
    cr_assert_eq(pool_info(&f).cached_blocks, 0);
    cr_assert_eq(pool_info(&f).free_blocks, 63, "every idle block is free again");
    ASSERT_OK(f.ctx, kvrt_cache_verify(f.cache));
    add(&f, 2);
    cr_assert_eq(step_commit(&f, 100), 0, "nothing cached before the reset is matched");
    run_to_end(&f);
    cr_assert_eq(cache_stats(&f).cached_blocks, 4, "the cache fills again");
    close_fixture(&f);
}

Test(sched_cache_reset, reset_refuses_while_cached_blocks_are_referenced_and_changes_nothing)
{
    fixture_t f = open_fixture();
    add(&f, 8);
    step_commit(&f, 1); /* prefill: its 4 full blocks are cached and held */
    kvrt_cache_stats_t before = cache_stats(&f);
    kvrt_pool_info_t pool_before = pool_info(&f);
    cr_assert_eq(before.cached_blocks, 4);
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_cache_reset(f.cache, 0));
    cr_assert_eq(cache_stats(&f).cached_blocks, before.cached_blocks);
    cr_assert_eq(pool_info(&f).used_blocks, pool_before.used_blocks);
    ASSERT_OK(f.ctx, kvrt_cache_verify(f.cache));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_reset(f.cache, 1u << 7));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_reset(NULL, 0));
    run_to_end(&f);
    ASSERT_OK(f.ctx, kvrt_cache_reset(f.cache, 0));
    close_fixture(&f);
}

Test(sched_cache_reset, forget_busy_unindexes_referenced_blocks_which_their_holders_keep)
{
    fixture_t f = open_fixture();
    add(&f, 8);
    step_commit(&f, 1);
    ASSERT_OK(f.ctx, kvrt_cache_reset(f.cache, KVRT_CACHE_RESET_FORGET_BUSY));
    cr_assert_eq(cache_stats(&f).cached_blocks, 0);
    cr_assert_eq(pool_info(&f).used_blocks, 5, "the running request keeps its blocks");
    ASSERT_OK(f.ctx, kvrt_cache_verify(f.cache));
    add(&f, 2);
    run_to_end(&f);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.prefix_hit_tokens, 0, "the second request found nothing from before");
    ASSERT_OK(f.ctx, kvrt_pool_verify(f.pool));
    close_fixture(&f);
}
