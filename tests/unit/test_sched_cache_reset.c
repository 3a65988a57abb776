/*
 * test_sched_cache_reset.c - kvrt_cache_reset with a scheduler built on the
 * cache: it empties the cache so later requests miss, refuses while cached
 * blocks are referenced (changing nothing), and with FORGET_BUSY unindexes
 * referenced blocks, which their holders keep until they end. K/V a
 * request held at a reset (computed with the old weights) never reaches the
 * cache afterwards, not even in blocks it fills later.
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

/* Admits a request of `len` tokens starting at `first`, steps once and
 * returns its prefix hit (the step's computed tokens for it). */
static uint32_t hit_of(fixture_t *f, int32_t first, uint32_t len, const int32_t *tail,
                       uint32_t tail_len)
{
    int32_t prompt[64];
    cr_assert_leq(len + tail_len, 64);
    for (uint32_t i = 0; i < len; i++)
        prompt[i] = first + (int32_t)i;
    for (uint32_t i = 0; i < tail_len; i++)
        prompt[len + i] = tail[i];
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = len + tail_len, .max_new_tokens = 1};
    kvrt_seq_id_t id;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    uint32_t hit = step_commit(f, 1000);
    run_to_end(f);
    return hit;
}

/* A reset with flags 0 succeeds while a request runs inside its first
 * block (nothing of it is cached yet); the block it fills afterwards holds
 * K/V computed before the reset and is not offered, while a request
 * admitted after the reset fills the cache as usual. */
Test(sched_cache_reset, a_block_filled_after_the_reset_by_a_request_running_before_is_not_cached)
{
    fixture_t f = open_fixture();
    int32_t two[2] = {100, 101};
    kvrt_seq_params_t p = {.prompt = two, .prompt_len = 2, .max_new_tokens = 6};
    kvrt_seq_id_t old;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &old));
    step_commit(&f, 1); /* K/V of 100, 101 */
    ASSERT_OK(f.ctx, kvrt_cache_reset(f.cache, 0));
    int32_t fresh[8] = {300, 301, 302, 303, 304, 305, 306, 307};
    p = (kvrt_seq_params_t){.prompt = fresh, .prompt_len = 8, .max_new_tokens = 2};
    kvrt_seq_id_t young;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &young));
    run_to_end(&f); /* the old request fills its blocks 0 and 1 */
    cr_assert_eq(cache_stats(&f).cached_blocks, 2, "the young request's two blocks only");
    int32_t after[3] = {5, 5, 5};
    cr_assert_eq(hit_of(&f, 100, 2, after, 3), 0, "K/V from before the reset was matched");
    cr_assert_eq(hit_of(&f, 300, 8, NULL, 0), 4, "the young request's blocks are served");
    close_fixture(&f);
}

/* With FORGET_BUSY a running request keeps its K/V; the blocks it fills
 * after the reset chain onto its prefix, and once a later request has
 * cached the same prefix afresh they would be found through it: they are
 * never offered. */
Test(sched_cache_reset, blocks_filled_after_a_forget_busy_reset_are_not_found_through_a_new_prefix)
{
    fixture_t f = open_fixture();
    add(&f, 8); /* 17 prompt tokens, then 5 as every output */
    step_commit(&f, 1);
    ASSERT_OK(f.ctx, kvrt_cache_reset(f.cache, KVRT_CACHE_RESET_FORGET_BUSY));
    run_to_end(&f); /* fills blocks 4 and 5: 116 5 5 5 | 5 5 5 5 */
    cr_assert_eq(cache_stats(&f).cached_blocks, 0);
    /* The same 16-token prefix, computed after the reset, is cached. */
    cr_assert_eq(hit_of(&f, 100, 16, NULL, 0), 0);
    cr_assert_eq(cache_stats(&f).cached_blocks, 4, "blocks 0-3 of the new request");
    int32_t tail[6] = {115, 116, 5, 5, 5, 5};
    cr_assert_eq(hit_of(&f, 100, 15, tail, 6), 16, "only what was computed after the reset");
    ASSERT_OK(f.ctx, kvrt_pool_verify(f.pool));
    close_fixture(&f);
}

Test(sched_cache_reset, a_request_that_starts_waiting_for_kv_after_a_reset_caches_its_blocks)
{
    /* The reset comes before any step saw it and before the request's K/V
     * exists: that K/V is of the new weights, so its blocks are cached when
     * they land and as the request fills more. */
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK, .use_watermark = 0};
    sched_fixture_t f = sched_fixture_open(64, 4, true, &sp);
    int32_t prompt[17];
    for (int i = 0; i < 17; i++)
        prompt[i] = 100 + i;
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 17, .max_new_tokens = 8};
    kvrt_seq_id_t id;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
    ASSERT_OK(f.ctx, kvrt_cache_reset(f.cache, 0));
    kvrt_arrival_params_t ap = {.num_tokens = 16};
    kvrt_arrival_id_t a;
    uint32_t first, count;
    ASSERT_OK(f.ctx, kvrt_seq_await_kv(f.sched, id, &ap, &a, &first, &count));
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, a, count));
    kvrt_cache_stats_t cs;
    ASSERT_OK(f.ctx, kvrt_cache_stats(f.cache, &cs));
    cr_assert_eq(cs.cached_blocks, 4, "%llu blocks cached at landing",
                 (unsigned long long)cs.cached_blocks);
    for (uint64_t t = 1; t <= 20; t++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, t, &plan));
        if (!plan->num_seqs)
            break;
        sched_fixture_commit(&f, plan, 7);
    }
    kvrt_seq_info_t ev[1];
    cr_assert_eq(sched_fixture_drain(&f, ev, 1), 1);
    ASSERT_OK(f.ctx, kvrt_cache_stats(f.cache, &cs));
    cr_assert_eq(cs.cached_blocks, 6, "%llu blocks cached at the end (24 tokens computed)",
                 (unsigned long long)cs.cached_blocks);
    sched_fixture_close(&f);
}
