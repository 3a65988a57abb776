/*
 * test_sched_hybrid.c - one scheduler over several cache groups (hybrid
 * models): a full-attention group and a sliding-window group with
 * different block sizes. The plan carries one table per group, windows
 * release their past blocks to the pool, a prefix hit counts only as far
 * as every group serves it, preemption and ends free every group, the
 * blocks outputs fill are cached under their tokens in every group, and
 * randomized runs (one or two plans in flight, requests waiting for shared
 * system-prompt blocks or not) keep every invariant in every group.
 */
#include "sched_hybrid_fixture.h"

static const uint32_t two_blocks[2] = {64, 64};
static const uint32_t two_tpb[2] = {16, 8};    /* full: 16-token blocks; window: 8 */
static const uint32_t two_window[2] = {0, 24}; /* the window group reads 24 tokens */

Test(sched_hybrid, plan_carries_one_table_per_group)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_CSR_TABLES, .csr_block_tables = 1};
    hybrid_t h = hybrid_open(2, two_blocks, two_tpb, two_window, false, &sp);
    int32_t prompt[40];
    for (int i = 0; i < 40; i++)
        prompt[i] = i;
    kvrt_seq_id_t id = add_prompt(&h, prompt, 40, 4);
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(h.ctx, kvrt_sched_step(h.sched, 0, &plan));
    cr_assert_eq(plan->num_seqs, 1);
    cr_assert_eq(plan->num_tokens, 40);
    check_plan_groups(&h, plan);
    /* Each group's blocks, as its own table and its own CSR view. */
    for (uint32_t g = 0; g < 2; g++) {
        const int32_t *blocks;
        uint32_t nb, nt;
        ASSERT_OK(h.ctx, kvrt_seq_group_blocks(h.sched, id, g, &blocks, &nb, &nt));
        cr_assert_eq(nb, (40 + two_tpb[g] - 1) / two_tpb[g], "group %u: %u blocks", g, nb);
        cr_assert_eq(nt, 40);
        const kvrt_plan_group_t *pg = &plan->groups[g];
        cr_assert_not_null(pg->block_table_offsets);
        cr_assert_eq(pg->block_table_offsets[1], (int32_t)nb);
        cr_assert_eq(memcmp(pg->block_table_ids, blocks, nb * sizeof(int32_t)), 0);
        cr_assert_eq(used_blocks(&h, g), nb);
    }
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_group_blocks(h.sched, id, 2, NULL, NULL, NULL));
    commit_model(&h, plan);
    run_to_end(&h, 20);
    drain_all(&h);
    hybrid_close(&h);
}

Test(sched_hybrid, window_release_returns_blocks_to_the_pool_and_verify_passes)
{
    /* Chunks of 16 tokens: the window slides during prefill and decode. */
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_MAX_BATCH_TOKENS,
                              .prefill_chunk_tokens = 16, .max_batch_tokens = 16};
    hybrid_t h = hybrid_open(2, two_blocks, two_tpb, two_window, false, &sp);
    int32_t prompt[200];
    for (int i = 0; i < 200; i++)
        prompt[i] = i % 97;
    kvrt_seq_id_t id = add_prompt(&h, prompt, 200, 100);
    uint32_t most_window_blocks = 0;
    for (uint32_t step = 0; step < 200 && checked_step(&h, step); step++) {
        uint32_t used = used_blocks(&h, 1);
        if (used > most_window_blocks)
            most_window_blocks = used;
        kvrt_seq_info_t info;
        ASSERT_OK(h.ctx, kvrt_seq_info(h.sched, id, &info));
        if (info.state != KVRT_SEQ_RUNNING)
            break;
        /* The full group holds every token; the window group its window
         * (24 tokens before the oldest uncommitted one, 16 new, a block of
         * alignment each end: 7 blocks of 8). */
        cr_assert_eq(used_blocks(&h, 0), (info.computed_tokens + 15) / 16);
        cr_assert_leq(used, 7, "window group holds %u blocks at %u tokens", used,
                      info.computed_tokens);
        const int32_t *blocks;
        uint32_t nb;
        ASSERT_OK(h.ctx, kvrt_seq_group_blocks(h.sched, id, 1, &blocks, &nb, NULL));
        if (info.computed_tokens > 64)
            cr_assert_eq(blocks[0], KVRT_NULL_BLOCK, "block 0 left the window, not released");
    }
    cr_assert_geq(most_window_blocks, 3);
    kvrt_seq_info_t ev[1];
    uint32_t n;
    ASSERT_OK(h.ctx, kvrt_sched_drain_ended(h.sched, ev, 1, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ev[0].end_reason, KVRT_END_LENGTH);
    cr_assert_eq(ev[0].output_tokens, 100);
    int32_t prev = prompt[199];
    for (uint32_t i = 0; i < 100; i++) {
        cr_assert_eq(ev[0].output[i], model(prev));
        prev = ev[0].output[i];
    }
    hybrid_close(&h);
}

Test(sched_hybrid, released_table_entries_pass_pool_verify)
{
    kvrt_ctx_t *ctx;
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    kvrt_pool_t *pool = test_pool(ctx, 16, 4);
    kvrt_table_id_t t;
    ASSERT_OK(ctx, kvrt_table_create(pool, &t));
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 14, NULL, NULL, NULL)); /* 4 blocks */
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_table_release_front(pool, t, 4));
    ASSERT_OK(ctx, kvrt_table_release_front(pool, t, 2));
    ASSERT_OK(ctx, kvrt_table_release_front(pool, t, 2)); /* again: nothing more */
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.used_blocks, 2);
    const int32_t *blocks;
    uint32_t nb, nt;
    ASSERT_OK(ctx, kvrt_table_view(pool, t, &blocks, &nb, &nt));
    cr_assert_eq(nb, 4);
    cr_assert_eq(nt, 14);
    cr_assert_eq(blocks[0], KVRT_NULL_BLOCK);
    cr_assert_eq(blocks[1], KVRT_NULL_BLOCK);
    /* Growing, rolling back and forking a table with released blocks. */
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 6, NULL, NULL, NULL));
    ASSERT_OK(ctx, kvrt_table_truncate(pool, t, 13));
    kvrt_table_id_t child;
    kvrt_block_copy_t copy;
    uint32_t copies;
    ASSERT_OK(ctx, kvrt_table_fork(pool, t, 1, &child, &copy, &copies));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    /* Holes adopted before real blocks; never a hole last. */
    kvrt_table_id_t u;
    int32_t got[2];
    ASSERT_OK(ctx, kvrt_table_create(pool, &u));
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 1, got));
    int32_t adopt[3] = {KVRT_NULL_BLOCK, KVRT_NULL_BLOCK, got[0]};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_table_adopt(pool, u, 2, adopt));
    ASSERT_OK(ctx, kvrt_table_adopt(pool, u, 3, adopt));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, t));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, child));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, u));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.used_blocks, 0);
    kvrt_ctx_destroy(ctx);
}

/* Runs `prompt` alone to its end (so its blocks are cached in every group). */
static void run_once(hybrid_t *h, const int32_t *prompt, uint32_t len)
{
    add_prompt(h, prompt, len, 2);
    run_to_end(h, 100);
    drain_all(h);
}

/* The hit a new request with `prompt` gets at admission. */
static uint32_t hit_of(hybrid_t *h, const int32_t *prompt, uint32_t len, kvrt_seq_id_t *id_out)
{
    kvrt_seq_id_t id = add_prompt(h, prompt, len, 2);
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(h->ctx, kvrt_sched_step(h->sched, 0, &plan));
    cr_assert_eq(plan->num_seqs, 1);
    check_plan_groups(h, plan);
    commit_model(h, plan);
    kvrt_seq_info_t info;
    ASSERT_OK(h->ctx, kvrt_seq_info(h->sched, id, &info));
    *id_out = id;
    return info.cached_tokens;
}

static hybrid_t cached_pair(void)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_CHUNK, .prefill_chunk_tokens = 32};
    static const uint32_t blocks[2] = {64, 64};
    return hybrid_open(2, blocks, two_tpb, two_window, true, &sp);
}

Test(sched_hybrid, prefix_hit_needs_only_the_window_of_a_sliding_window_group)
{
    hybrid_t h = cached_pair();
    int32_t prompt[161];
    for (int i = 0; i < 161; i++)
        prompt[i] = (i * 7) % 97;
    /* While the request runs, the blocks its window released are the only
     * idle ones of the window group, oldest first: take exactly blocks 0-5
     * (tokens 0..47) out of its cache. (Once it ends they count as
     * released with the rest, deepest first, as full-size K/V would be.) */
    kvrt_seq_id_t first = add_prompt(&h, prompt, 161, 4);
    kvrt_seq_info_t seq;
    uint32_t step = 0;
    do {
        cr_assert(checked_step(&h, step++));
        ASSERT_OK(h.ctx, kvrt_seq_info(h.sched, first, &seq));
    } while (seq.computed_tokens < 161 && step < 20);
    cr_assert(checked_step(&h, step)); /* a decode: the window lets go */
    kvrt_pool_info_t info;
    ASSERT_OK(h.ctx, kvrt_pool_info(h.pool[1], &info));
    cr_assert_geq(info.cached_blocks, 6);
    uint32_t evict = 6;
    int32_t taken[64];
    ASSERT_OK(h.ctx, kvrt_pool_alloc(h.pool[1], info.free_blocks + evict, taken));
    ASSERT_OK(h.ctx, kvrt_pool_free(h.pool[1], info.free_blocks + evict, taken));
    run_to_end(&h, 50);
    drain_all(&h);
    /* The hit: 160 tokens (all but the last, in 16-token units); the window
     * group needs only tokens 137..159, still cached. */
    kvrt_seq_id_t id;
    cr_assert_eq(hit_of(&h, prompt, 161, &id), 160);
    const int32_t *blocks;
    uint32_t nb;
    ASSERT_OK(h.ctx, kvrt_seq_group_blocks(h.sched, id, 1, &blocks, &nb, NULL));
    cr_assert_eq(blocks[0], KVRT_NULL_BLOCK, "an evicted block outside the window is a hole");
    cr_assert_gt(blocks[19], 0);
    ASSERT_OK(h.ctx, kvrt_seq_group_blocks(h.sched, id, 0, &blocks, &nb, NULL));
    for (uint32_t b = 0; b < 10; b++)
        cr_assert_gt(blocks[b], 0, "full attention needs every block");
    run_to_end(&h, 50);
    drain_all(&h);
    hybrid_close(&h);
}

Test(sched_hybrid, prefix_hit_limited_to_the_common_servable_length)
{
    hybrid_t h = cached_pair();
    int32_t prompt[161], other[161];
    for (int i = 0; i < 161; i++)
        prompt[i] = other[i] = (i * 7) % 97;
    run_once(&h, prompt, 161);
    /* The window group loses its whole cache: no hit, although the full
     * group holds the prefix. */
    ASSERT_OK(h.ctx, kvrt_cache_reset(h.cache[1], 0));
    kvrt_seq_id_t id;
    cr_assert_eq(hit_of(&h, prompt, 161, &id), 0);
    run_to_end(&h, 50);
    drain_all(&h);
    /* Now the full group loses its cache (the window group has it back from
     * the run just made): no hit either. */
    ASSERT_OK(h.ctx, kvrt_cache_reset(h.cache[0], 0));
    cr_assert_eq(hit_of(&h, prompt, 161, &id), 0);
    run_to_end(&h, 50);
    drain_all(&h);
    /* Both hold it; a request that shares only 100 tokens hits the largest
     * multiple of 16 both serve: 96. */
    for (int i = 100; i < 161; i++)
        other[i] = 96;
    cr_assert_eq(hit_of(&h, other, 161, &id), 96);
    run_to_end(&h, 50);
    drain_all(&h);
    kvrt_sched_stats_t st;
    ASSERT_OK(h.ctx, kvrt_sched_stats(h.sched, &st));
    cr_assert_eq(st.prefix_hit_tokens, 96);
    hybrid_close(&h);
}

Test(sched_hybrid, preemption_and_request_end_free_all_groups_blocks)
{
    /* The window group has room to spare; the full group runs out, so the
     * later request is preempted and must give back its blocks in both. */
    static const uint32_t blocks[2] = {9, 64};
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK, .use_watermark = 0};
    hybrid_t h = hybrid_open(2, blocks, two_tpb, two_window, false, &sp);
    int32_t prompt[60];
    for (int i = 0; i < 60; i++)
        prompt[i] = i;
    kvrt_seq_id_t a = add_prompt(&h, prompt, 60, 40);
    kvrt_seq_id_t b = add_prompt(&h, prompt + 1, 50, 40);
    bool preempted = false;
    for (uint32_t step = 0; step < 400; step++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(h.ctx, kvrt_sched_step(h.sched, step, &plan));
        if (plan->num_preempted) {
            cr_assert_eq(plan->preempted[0], b, "the later arrival is the victim");
            const int32_t *bl;
            uint32_t nb;
            for (uint32_t g = 0; g < 2; g++) {
                ASSERT_OK(h.ctx, kvrt_seq_group_blocks(h.sched, b, g, &bl, &nb, NULL));
                cr_assert_eq(nb, 0, "group %u: the victim still holds %u blocks", g, nb);
            }
            preempted = true;
        }
        if (!plan->num_seqs)
            break;
        check_plan_groups(&h, plan);
        commit_model(&h, plan);
        verify_all(&h);
    }
    cr_assert(preempted, "the full-attention pool is meant to run out");
    /* Abort mid-run frees every group as well. */
    kvrt_seq_id_t c = add_prompt(&h, prompt, 60, 40);
    for (uint32_t step = 0; step < 3; step++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(h.ctx, kvrt_sched_step(h.sched, step, &plan));
        if (plan->num_seqs)
            commit_model(&h, plan);
    }
    cr_assert_gt(used_blocks(&h, 0), 0);
    cr_assert_gt(used_blocks(&h, 1), 0);
    ASSERT_OK(h.ctx, kvrt_seq_abort(h.sched, c));
    cr_assert_eq(used_blocks(&h, 0), 0);
    cr_assert_eq(used_blocks(&h, 1), 0);
    kvrt_seq_info_t ev[4];
    uint32_t n;
    ASSERT_OK(h.ctx, kvrt_sched_drain_ended(h.sched, ev, 4, &n));
    cr_assert_eq(n, 3);
    for (uint32_t i = 0; i < n; i++)
        if (ev[i].id != c)
            cr_assert_eq(ev[i].end_reason, KVRT_END_LENGTH);
    (void)a;
    hybrid_close(&h);
}

/* A group of smaller blocks fills its blocks between group 0's block
 * boundaries: each commit offers them to that group's cache at once. */
Test(sched_hybrid, a_group_of_smaller_blocks_caches_each_block_the_commit_fills)
{
    const uint32_t blocks[2] = {64, 256}, tpb[2] = {16, 4}, window[2] = {0, 0};
    hybrid_t h = hybrid_open(2, blocks, tpb, window, true, NULL);
    int32_t prompt[6];
    test_prompt(prompt, 6, 300);
    add_prompt(&h, prompt, 6, 20);
    for (uint64_t step = 1; step <= 12; step++) {
        cr_assert(checked_step(&h, step));
        /* Computed tokens: the prompt, then one per decode before the last. */
        kvrt_sched_stats_t st;
        ASSERT_OK(h.ctx, kvrt_sched_stats(h.sched, &st));
        uint32_t computed = 6 + (uint32_t)step - 1;
        kvrt_cache_stats_t cs[2];
        for (uint32_t g = 0; g < 2; g++)
            ASSERT_OK(h.ctx, kvrt_cache_stats(h.cache[g], &cs[g]));
        cr_assert_eq(cs[1].inserts, computed / 4, "step %llu: %llu of %u small blocks cached",
                     (unsigned long long)step, (unsigned long long)cs[1].inserts,
                     computed / 4);
        cr_assert_eq(cs[0].inserts, computed / 16);
    }
    run_to_end(&h, 64);
    drain_all(&h);
    hybrid_close(&h);
}

Test(sched_hybrid, the_blocks_of_outputs_are_cached_under_their_tokens_in_every_group)
{
    /* Blocks of 4 and 8 tokens: both fill blocks inside the last line of
     * 16 tokens, whose newest tokens the request's own line holds. */
    const uint32_t blocks[2] = {64, 64}, tpb[2] = {4, 8}, window[2] = {0, 0};
    hybrid_t h = hybrid_open(2, blocks, tpb, window, true, NULL);
    int32_t tokens[64];
    test_prompt(tokens, 13, 400);
    add_prompt(&h, tokens, 13, 48);
    run_to_end(&h, 100);
    kvrt_seq_info_t ev[2];
    uint32_t n;
    ASSERT_OK(h.ctx, kvrt_sched_drain_ended(h.sched, ev, 2, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ev[0].output_tokens, 48);
    memcpy(tokens + 13, ev[0].output, 48 * sizeof(int32_t));
    /* 60 tokens were computed: both groups serve 56. */
    kvrt_seq_id_t id;
    cr_assert_eq(hit_of(&h, tokens, 61, &id), 56);
    run_to_end(&h, 10);
    drain_all(&h);
    hybrid_close(&h);
}

/* A request preempted with outputs in its own line (sched_seq_tokens) is
 * matched again in every group under its tokens, those included: its
 * readmission hits what a match of its tokens made by the test just before
 * finds (blocks of 4 and 8 tokens, both full attention). With skip_write
 * the request hashes nothing itself (its token array is then behind its
 * line), and a twin run before it, whose blocks the test holds, is what
 * it hits. */
static void a_preempted_request_hits_its_own_outputs(bool skip_write)
{
    /* The twin holds the blocks of 53 computed tokens; A's prompt hits 1. */
    const uint32_t blocks[2] = {16 + (skip_write ? 12 : 0), 64}, tpb[2] = {4, 8};
    const uint32_t window[2] = {0, 0};
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK, .use_watermark = 0};
    hybrid_t h = hybrid_open(2, blocks, tpb, window, true, &sp);
    int32_t ta[64], th[8];
    test_prompt(ta, 6, 700);
    test_prompt(th, 6, 800);
    for (uint32_t t = 6; t < 64; t++)
        ta[t] = model(ta[t - 1]); /* A's outputs, and the twin's */
    int32_t twin[2][16];
    kvrt_cache_match_t twin_match[2] = {{0}, {0}};
    if (skip_write) {
        add_prompt(&h, ta, 6, 48);
        run_to_end(&h, 100);
        drain_all(&h);
        for (uint32_t g = 0; g < 2; g++)
            ASSERT_OK(h.ctx, kvrt_cache_match(h.cache[g], ta, 53, NULL, 16, twin[g], NULL,
                                              &twin_match[g]));
    }
    kvrt_seq_params_t pa = {.field_mask = KVRT_SEQ_PARAM_CACHE_FLAGS, .prompt = ta,
                            .prompt_len = 6, .max_new_tokens = 48,
                            .cache_flags = skip_write ? KVRT_SEQ_CACHE_SKIP_WRITE : 0};
    kvrt_seq_params_t ph = {.field_mask = KVRT_SEQ_PARAM_PRIORITY, .prompt = th,
                            .prompt_len = 6, .max_new_tokens = 26, .priority = 1};
    kvrt_seq_id_t a, hi;
    ASSERT_OK(h.ctx, kvrt_seq_add(h.sched, &pa, &a));
    ASSERT_OK(h.ctx, kvrt_seq_add(h.sched, &ph, &hi));
    uint32_t a_tokens = 6; /* followed through the plans (kvrt_seq_info writes back) */
    bool preempted = false, readmitted = false;
    for (uint64_t k = 0; k < 200 && !readmitted; k++) {
        uint32_t expect = UINT32_MAX;
        for (uint32_t g = 0; preempted && g < 2; g++) { /* both groups must serve it */
            int32_t hits[64];
            kvrt_cache_match_t m;
            ASSERT_OK(h.ctx, kvrt_cache_match(h.cache[g], ta, a_tokens - 1, NULL, 64, hits,
                                              NULL, &m));
            ASSERT_OK(h.ctx, kvrt_pool_free(h.pool[g], m.num_blocks, hits));
            expect = m.num_tokens / 8 * 8 < expect ? m.num_tokens / 8 * 8 : expect;
        }
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(h.ctx, kvrt_sched_step(h.sched, k, &plan));
        for (uint32_t i = 0; i < plan->num_preempted; i++)
            preempted |= plan->preempted[i] == a;
        for (uint32_t i = 0; i < plan->num_seqs; i++) {
            if (plan->seqs[i].id != a)
                continue;
            if (!preempted && plan->seqs[i].sample)
                a_tokens = (uint32_t)plan->seq_lens[i] + 1;
            if (preempted && plan->seqs[i].kind == KVRT_PLAN_PREFILL) {
                readmitted = true;
                cr_assert_gt(expect, a_tokens / 16 * 16, "the test reaches the recent line");
                cr_assert_eq(plan->seqs[i].num_computed_tokens, expect,
                             "%s: %u hit, %u cached", skip_write ? "skip write" : "plain",
                             plan->seqs[i].num_computed_tokens, expect);
            }
        }
        if (plan->num_seqs) {
            check_plan_groups(&h, plan);
            commit_model(&h, plan);
        }
        verify_all(&h);
    }
    cr_assert(readmitted, "A was preempted and admitted again");
    (void)hi;
    for (uint32_t g = 0; g < 2; g++)
        ASSERT_OK(h.ctx, kvrt_pool_free(h.pool[g], twin_match[g].num_blocks, twin[g]));
    run_to_end(&h, 200);
    drain_all(&h);
    hybrid_close(&h);
}

Test(sched_hybrid, a_preempted_request_hits_the_blocks_of_its_newest_outputs_in_every_group)
{
    a_preempted_request_hits_its_own_outputs(false);
    a_preempted_request_hits_its_own_outputs(true);
}

Test(sched_hybrid, bad_groups_are_refused)
{
    kvrt_ctx_t *ctx;
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    kvrt_pool_t *p0 = test_pool(ctx, 16, 16), *p1 = test_pool(ctx, 16, 8);
    kvrt_cache_t *c0;
    ASSERT_OK(ctx, kvrt_cache_create(p0, NULL, &c0));
    kvrt_sched_group_params_t g0 = {.pool = p0}, g1 = {.pool = p1};
    const kvrt_sched_group_params_t *both[2] = {&g0, &g1};
    kvrt_sched_t *s = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create_groups(ctx, 0, both, NULL, &s));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create_groups(ctx, 2, NULL, NULL, &s));
    g1.field_mask = 1u << 7;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create_groups(ctx, 2, both, NULL, &s));
    g1.field_mask = 0;
    g0.field_mask = KVRT_SCHED_GROUP_CACHE; /* a cache on one group only */
    g0.cache = c0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create_groups(ctx, 2, both, NULL, &s));
    g1.field_mask = KVRT_SCHED_GROUP_CACHE; /* a cache of another pool */
    g1.cache = c0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create_groups(ctx, 2, both, NULL, &s));
    cr_assert_null(s);
    /* Waiting for KV names one group's blocks: refused. */
    g0.field_mask = g1.field_mask = 0;
    ASSERT_OK(ctx, kvrt_sched_create_groups(ctx, 2, both, NULL, &s));
    int32_t prompt[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 8, .max_new_tokens = 1};
    kvrt_seq_id_t id;
    ASSERT_OK(ctx, kvrt_seq_add(s, &p, &id));
    kvrt_arrival_params_t ap = {.num_tokens = 4};
    kvrt_arrival_id_t arrival;
    uint32_t first, count;
    ASSERT_STATUS(KVRT_ERR_UNSUPPORTED,
                  kvrt_seq_await_kv(s, id, &ap, &arrival, &first, &count));
    /* A request too long for the smaller pool is refused at add. */
    int32_t longer[200] = {0};
    p.prompt = longer;
    p.prompt_len = 200;
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_seq_add(s, &p, &id));
    ASSERT_OK(ctx, kvrt_sched_destroy(s));
    kvrt_ctx_destroy(ctx);
}

Test(sched_hybrid, a_single_window_group_releases_its_past_and_hits_with_holes)
{
    /* A model of sliding-window layers only: group 0 itself has a window. */
    static const uint32_t blocks[1] = {64}, tpb[1] = {8}, window[1] = {16};
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_CHUNK, .prefill_chunk_tokens = 16};
    hybrid_t h = hybrid_open(1, blocks, tpb, window, true, &sp);
    int32_t prompt[121];
    for (int i = 0; i < 121; i++)
        prompt[i] = (i * 5) % 97;
    kvrt_seq_id_t first = add_prompt(&h, prompt, 121, 30);
    uint32_t most = 0;
    for (uint32_t step = 0; step < 100 && checked_step(&h, step); step++)
        if (used_blocks(&h, 0) > most)
            most = used_blocks(&h, 0);
    /* 16 tokens of window before 16 new ones, a block each end: 5 of 8. */
    cr_assert_leq(most, 5, "a window of 16 held %u blocks", most);
    kvrt_seq_info_t ev[1];
    uint32_t n;
    ASSERT_OK(h.ctx, kvrt_sched_drain_ended(h.sched, ev, 1, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ev[0].id, first);
    cr_assert_eq(ev[0].output_tokens, 30);
    /* The same prompt again: 120 tokens hit, the first blocks as holes. */
    kvrt_seq_id_t id;
    cr_assert_eq(hit_of(&h, prompt, 121, &id), 120);
    const int32_t *bl;
    uint32_t nb;
    ASSERT_OK(h.ctx, kvrt_seq_blocks(h.sched, id, &bl, &nb, NULL));
    cr_assert_eq(bl[0], KVRT_NULL_BLOCK);
    cr_assert_gt(bl[14], 0);
    run_to_end(&h, 50);
    drain_all(&h);
    hybrid_close(&h);
}

/* A prefill chunk is checked for blocks after the window's past has been
 * released, as its append releases it: a long prompt through a window in a
 * pool much smaller than the prompt runs alone to its end (it was failed
 * with KVRT_ERR_NO_BLOCKS, its own out-of-window blocks counted as held). */
Test(sched_hybrid, a_long_prefill_through_a_window_fits_a_pool_smaller_than_its_prompt)
{
    static const uint32_t blocks[1] = {41}, tpb[1] = {1}, window[1] = {4};
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_WATERMARK,
                              .max_batch_tokens = 30, .use_watermark = 0};
    hybrid_t h = hybrid_open(1, blocks, tpb, window, false, &sp);
    int32_t prompt[90];
    for (int i = 0; i < 90; i++)
        prompt[i] = i % 97;
    kvrt_seq_id_t id = add_prompt(&h, prompt, 90, 4);
    for (uint32_t step = 0; step < 20 && checked_step(&h, step); step++)
        cr_assert_leq(used_blocks(&h, 0), 34, "the window's past was not released");
    kvrt_seq_info_t ev[1];
    uint32_t n;
    ASSERT_OK(h.ctx, kvrt_sched_drain_ended(h.sched, ev, 1, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ev[0].id, id);
    cr_assert_eq(ev[0].end_reason, KVRT_END_LENGTH, "ended %d: %s", ev[0].end_reason,
                 kvrt_status_str(ev[0].status));
    cr_assert_eq(ev[0].output_tokens, 4);
    hybrid_close(&h);
}

Test(sched_hybrid, a_window_group_needs_room_only_for_its_window_and_one_step_of_a_request)
{
    /* A 4-token window over 1-token blocks, a step budget of 64 and chunks
     * of 8: kvrt_seq_add counts its window and one chunk (+1 block), 13
     * blocks, so a pool of 16 runs a 90-token prompt although the budget
     * alone would allow a 64-token chunk; it holds 11 at most (the 3
     * blocks a chunk's first token reads back, and the chunk's 8). */
    static const uint32_t blocks[1] = {16}, tpb[1] = {1}, window[1] = {4};
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_WATERMARK,
                              .max_batch_tokens = 64, .prefill_chunk_tokens = 8,
                              .use_watermark = 0};
    hybrid_t h = hybrid_open(1, blocks, tpb, window, false, &sp);
    int32_t prompt[90];
    for (int i = 0; i < 90; i++)
        prompt[i] = i % 97;
    kvrt_seq_id_t id = add_prompt(&h, prompt, 90, 4);
    uint32_t most = 0;
    for (uint32_t step = 0; step < 40 && checked_step(&h, step); step++)
        most = used_blocks(&h, 0) > most ? used_blocks(&h, 0) : most;
    cr_assert_eq(most, 11, "the window's 3 blocks before a chunk and its 8");
    kvrt_seq_info_t ev[1];
    uint32_t n;
    ASSERT_OK(h.ctx, kvrt_sched_drain_ended(h.sched, ev, 1, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ev[0].id, id);
    cr_assert_eq(ev[0].end_reason, KVRT_END_LENGTH);
    /* A multimodal item is planned whole, past the chunk size: a request
     * with a 12-token item needs its window and the item (17 blocks), more
     * than the pool holds, and is refused at once rather than stalled. */
    kvrt_mm_item_t item = {.content_hash = {1, 2}, .offset = 20, .length = 12};
    kvrt_hash_keys_t keys = {.field_mask = KVRT_HASH_KEY_MM, .num_mm_items = 1,
                             .mm_items = &item};
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_KEYS, .prompt = prompt,
                           .prompt_len = 90, .max_new_tokens = 4, .keys = &keys};
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_seq_add(h.sched, &p, &id));
    cr_assert(strstr(kvrt_ctx_last_error(h.ctx), "needs 17 blocks") != NULL, "%s",
              kvrt_ctx_last_error(h.ctx));
    item.length = 10; /* 15 blocks: runs, the item in one chunk */
    ASSERT_OK(h.ctx, kvrt_seq_add(h.sched, &p, &id));
    bool item_whole = false;
    most = 0;
    for (uint32_t step = 0; step < 40; step++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(h.ctx, kvrt_sched_step(h.sched, step, &plan));
        if (!plan->num_seqs)
            break;
        item_whole = item_whole || (plan->seqs[0].num_computed_tokens == 20 &&
                                    plan->seqs[0].num_new_tokens == 10);
        check_plan_groups(&h, plan);
        commit_model(&h, plan);
        verify_all(&h);
        most = used_blocks(&h, 0) > most ? used_blocks(&h, 0) : most;
    }
    cr_assert(item_whole, "the item [20, 30) was not planned in one chunk");
    cr_assert_eq(most, 13, "the window's 3 blocks before the item and its 10");
    ASSERT_OK(h.ctx, kvrt_sched_drain_ended(h.sched, ev, 1, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ev[0].end_reason, KVRT_END_LENGTH);
    hybrid_close(&h);
}

/* ---- randomized ------------------------------------------------------------ */

#define RND_REQ 400
#define RND_BUDGET 48u
#define RND_SEQS 8u

typedef struct rnd_req {
    kvrt_seq_id_t id;
    int state; /* 0 unused, 1 live, 2 ended */
    bool aborted;
    int32_t stop;
    uint32_t prompt_len, max_new;
    int32_t prompt[80];
} rnd_req_t;

/* The engine: verifies drafts against the model, samples the bonus. A
 * placeholder input is the token it sampled last for that request. */
static void rnd_commit(hybrid_t *h, const kvrt_batch_plan_t *plan, int32_t *last_sampled)
{
    int32_t tokens[RND_BUDGET + RND_SEQS];
    uint32_t acc[RND_SEQS], n = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *e = &plan->seqs[i];
        acc[i] = 0;
        if (!e->sample)
            continue;
        int32_t prev = test_input_before_drafts(plan, i);
        if (prev == KVRT_TOKEN_PLACEHOLDER)
            prev = last_sampled[e->user_tag];
        acc[i] = test_verify_drafts(plan, i, prev, model, tokens, &n);
        last_sampled[e->user_tag] = tokens[n - 1];
    }
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = plan->step,
                       .num_seqs = plan->num_seqs, .num_tokens = n, .tokens = tokens,
                       .num_accepted = acc};
    ASSERT_OK(h->ctx, kvrt_sched_commit(h->sched, &c));
}

static void rnd_drain(hybrid_t *h, rnd_req_t *req, uint32_t *checked)
{
    kvrt_seq_info_t ev[16];
    uint32_t n;
    do {
        ASSERT_OK(h->ctx, kvrt_sched_drain_ended(h->sched, ev, 16, &n));
        for (uint32_t i = 0; i < n; i++) {
            rnd_req_t *t = &req[ev[i].user_tag];
            cr_assert_eq(t->id, ev[i].id);
            cr_assert_eq(t->state, 1, "request %llu ended twice",
                         (unsigned long long)ev[i].user_tag);
            t->state = 2;
            if (ev[i].end_reason == KVRT_END_ABORTED) {
                cr_assert(t->aborted);
                continue;
            }
            cr_assert(ev[i].end_reason == KVRT_END_LENGTH || ev[i].end_reason == KVRT_END_STOP,
                      "request %llu: end %d status %d", (unsigned long long)ev[i].user_tag,
                      ev[i].end_reason, ev[i].status);
            int32_t prev = t->prompt[t->prompt_len - 1];
            for (uint32_t k = 0; k < ev[i].output_tokens; k++) {
                cr_assert_eq(ev[i].output[k], model(prev), "request %llu token %u",
                             (unsigned long long)ev[i].user_tag, k);
                prev = ev[i].output[k];
            }
            if (ev[i].end_reason == KVRT_END_LENGTH)
                cr_assert_eq(ev[i].output_tokens, t->max_new);
            (*checked)++;
        }
    } while (n == 16);
}

/* Three groups: group g uses the pool of owner[g], which owner[g] == g
 * creates with blocks[g] blocks (async_blocks[g] with two plans in flight,
 * which are never preempted: tighter pools then) of tpb[g] tokens. */
typedef struct rnd_layout {
    uint32_t owner[3], window[3], tpb[3], blocks[3], async_blocks[3];
} rnd_layout_t;

/* Full attention in 8-token blocks, windows of 12 tokens in 4-token blocks
 * and of 40 in 16-token blocks, each in a pool of its own; pools small
 * enough to preempt. */
static const rnd_layout_t own_pools = {.owner = {0, 1, 2}, .window = {0, 12, 40},
                                       .tpb = {8, 4, 16}, .blocks = {60, 90, 40},
                                       .async_blocks = {36, 90, 40}};

/* A randomized run over three groups laid out as `lay`, with
 * plans_in_flight plans in flight; requests sharing a system prompt wait
 * for its blocks when share_tokens (shared_prefill_min_tokens) is not 0. */
static void randomized_run(const rnd_layout_t *lay, uint32_t plans_in_flight, uint64_t seed,
                           uint32_t share_tokens)
{
    kvrt_sched_params_t sp = {
        .field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS | KVRT_SCHED_PARAM_MAX_SEQS |
                      KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_DRAFT | KVRT_SCHED_PARAM_NGRAM |
                      KVRT_SCHED_PARAM_CSR_TABLES | KVRT_SCHED_PARAM_PLANS_IN_FLIGHT |
                      KVRT_SCHED_PARAM_SHARED_PREFILL,
        .max_plans_in_flight = plans_in_flight,
        .max_batch_tokens = RND_BUDGET,
        .max_seqs = RND_SEQS,
        .prefill_chunk_tokens = 20,
        .max_draft_tokens = 3,
        .ngram_min = 1,
        .ngram_max = 3,
        .csr_block_tables = 1,
        .shared_prefill_min_tokens = share_tokens,
    };
    hybrid_t h = hybrid_open_shared(3, lay->owner,
                                    plans_in_flight > 1 ? lay->async_blocks : lay->blocks,
                                    lay->tpb, lay->window, true, &sp);
    static rnd_req_t req[RND_REQ];
    memset(req, 0, sizeof(req));
    uint32_t num_req = 0, checked = 0;
    static int32_t last_sampled[RND_REQ];
    const kvrt_batch_plan_t *in_flight[2];
    uint32_t num_in_flight = 0;
    uint64_t rng = seed;
    int32_t system[2][48];
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 48; i++)
            system[s][i] = (int32_t)test_rand_below(&rng, 97);
    uint64_t preemptions = 0;
    /* References the engine holds for a few steps (to send a block
     * elsewhere, say) on full blocks of requests in the last plan, mostly
     * on their last full block, which their tables may not have been told
     * is full (tokens planned inside a tail block are told at the next
     * append). */
    struct {
        uint32_t group;
        int32_t block;
    } held[8];
    uint32_t num_held = 0, num_planned = 0;
    kvrt_seq_id_t planned[16];
    for (uint32_t step = 0; step < 6000; step++) {
        if (num_planned && num_held < 8 && test_rand_below(&rng, 3) == 0) {
            const kvrt_seq_id_t id = planned[test_rand_below(&rng, num_planned)];
            const uint32_t g = test_rand_below(&rng, 3);
            kvrt_seq_info_t info;
            const int32_t *bl;
            uint32_t nb = 0;
            if (kvrt_seq_info(h.sched, id, &info) == KVRT_OK &&
                info.state == KVRT_SEQ_RUNNING &&
                kvrt_seq_group_blocks(h.sched, id, g, &bl, &nb, NULL) == KVRT_OK) {
                uint32_t full = info.computed_tokens / h.tpb[g];
                full = full < nb ? full : nb;
                uint32_t back = test_rand_below(&rng, 4);
                uint32_t j = full ? full - 1 - (back < full && back < 2 ? back : 0) : 0;
                if (full && bl[j] != KVRT_NULL_BLOCK) {
                    ASSERT_OK(h.ctx, kvrt_pool_ref(h.pool[g], 1, &bl[j]));
                    held[num_held].group = g;
                    held[num_held++].block = bl[j];
                }
            }
        }
        if (num_held && (test_rand_below(&rng, 3) == 0 || step >= 4000)) {
            num_held--;
            ASSERT_OK(h.ctx, kvrt_pool_free(h.pool[held[num_held].group], 1,
                                            &held[num_held].block));
        }
        if (step < 4000 && num_req < RND_REQ && test_rand_below(&rng, 5) < 2) {
            rnd_req_t *t = &req[num_req];
            uint32_t n = 0, sys = test_rand_below(&rng, 3);
            if (sys < 2) {
                n = 8 + test_rand_below(&rng, 41);
                memcpy(t->prompt, system[sys], n * sizeof(int32_t));
            }
            for (uint32_t tail = 1 + test_rand_below(&rng, 30); tail; tail--)
                t->prompt[n++] = (int32_t)test_rand_below(&rng, 97);
            t->prompt_len = n;
            t->max_new = 1 + test_rand_below(&rng, 40);
            t->stop = test_rand_below(&rng, 3) == 0 ? (int32_t)test_rand_below(&rng, 97) : -1;
            kvrt_seq_params_t p = {
                .field_mask = KVRT_SEQ_PARAM_PRIORITY | KVRT_SEQ_PARAM_USER_TAG |
                              (t->stop >= 0 ? KVRT_SEQ_PARAM_STOP : 0),
                .prompt = t->prompt, .prompt_len = n, .max_new_tokens = t->max_new,
                .stop_tokens = &t->stop, .num_stop_tokens = 1,
                .priority = (int32_t)test_rand_below(&rng, 2), .user_tag = num_req};
            ASSERT_OK(h.ctx, kvrt_seq_add(h.sched, &p, &t->id));
            t->state = 1;
            num_req++;
        }
        if (num_req && test_rand_below(&rng, 10) == 0) {
            rnd_req_t *t = &req[test_rand_below(&rng, num_req)];
            kvrt_seq_info_t info;
            if (t->state == 1 && kvrt_seq_info(h.sched, t->id, &info) == KVRT_OK &&
                info.state != KVRT_SEQ_ENDED) {
                ASSERT_OK(h.ctx, kvrt_seq_abort(h.sched, t->id));
                t->aborted = true;
            }
        }
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(h.ctx, kvrt_sched_step(h.sched, step, &plan));
        cr_assert_leq(plan->num_tokens, RND_BUDGET);
        preemptions += plan->num_preempted;
        check_plan_groups(&h, plan);
        for (uint32_t g = 0; g < 3; g++) /* CSR equals the rows */
            for (uint32_t i = 0; i < plan->num_seqs; i++) {
                const kvrt_plan_group_t *pg = &plan->groups[g];
                uint32_t from = (uint32_t)pg->block_table_offsets[i];
                uint32_t nb = (uint32_t)pg->block_table_offsets[i + 1] - from;
                cr_assert_eq(memcmp(pg->block_table_ids + from,
                                    pg->block_rows + (size_t)plan->seqs[i].row * pg->row_stride,
                                    nb * sizeof(int32_t)),
                             0);
            }
        num_planned = plan->num_seqs < 16 ? plan->num_seqs : 16;
        for (uint32_t i = 0; i < num_planned; i++)
            planned[i] = plan->seqs[i].id;
        if (plan->num_seqs)
            in_flight[num_in_flight++] = plan;
        /* An empty step: nothing new to run, so the plan in flight commits
         * (as an engine's would) rather than wait for an arrival. And now
         * and then the engine commits before its next step, as one whose
         * drafts are pending does: only then are drafts verified. */
        while (num_in_flight == plans_in_flight ||
               (num_in_flight &&
                (step >= 4000 || !plan->num_seqs || test_rand_below(&rng, 3) == 0))) {
            rnd_commit(&h, in_flight[0], last_sampled);
            in_flight[0] = in_flight[1];
            num_in_flight--;
        }
        verify_all(&h);
        rnd_drain(&h, req, &checked);
        kvrt_sched_stats_t st;
        ASSERT_OK(h.ctx, kvrt_sched_stats(h.sched, &st));
        if (step >= 4000 && !st.running && !st.waiting && !st.ended_undrained && !num_in_flight &&
            !num_held)
            break;
    }
    for (uint32_t i = 0; i < num_req; i++)
        cr_assert_eq(req[i].state, 2, "request %u never ended", i);
    kvrt_sched_stats_t st;
    ASSERT_OK(h.ctx, kvrt_sched_stats(h.sched, &st));
    cr_assert_eq(st.failed, 0);
    cr_assert_gt(preemptions, 0, "the pools are meant to be too small");
    cr_assert_gt(st.prefix_hit_tokens, 0);
    cr_assert_gt(st.spec_accepted, 0);
    cr_assert_gt(checked, 150);
    cr_assert_eq(st.shared_prefill_waits > 0, share_tokens > 0);
    cr_log_info("hybrid, %u plan(s) in flight: %u requests, %llu preemptions, hits %llu/%llu, "
                "spec %llu/%llu, shared-prefill waits %llu",
                plans_in_flight, num_req,
                (unsigned long long)preemptions, (unsigned long long)st.prefix_hit_tokens,
                (unsigned long long)st.prefix_query_tokens, (unsigned long long)st.spec_accepted,
                (unsigned long long)st.spec_proposed,
                (unsigned long long)st.shared_prefill_waits);
    hybrid_close(&h);
}

/* A's tables are told its last 2 prompt tokens only at its next append:
 * a chunk of 14 of a 16-token prompt, then 2 inside the tail block. That
 * commit fills the block; `share` then gives it another holder before A's
 * next step. A's decode must land in a new block of its own in every
 * group, its rows naming it, with no copy (checked_step), and its tables
 * must hold all its tokens. */
static void fill_then_share(hybrid_t *h, void (*share)(hybrid_t *h, kvrt_seq_id_t a))
{
    int32_t prompt[20];
    for (int i = 0; i < 20; i++)
        prompt[i] = (i * 5) % 97;
    kvrt_seq_id_t a = add_prompt(h, prompt, 16, 8);
    cr_assert(checked_step(h, 0));
    cr_assert(checked_step(h, 1));
    share(h, a);
    cr_assert(checked_step(h, 2));
    for (uint32_t g = 0; g < h->num_groups; g++) {
        uint32_t tokens = 0;
        ASSERT_OK(h->ctx, kvrt_seq_group_blocks(h->sched, a, g, NULL, NULL, &tokens));
        cr_assert_eq(tokens, 17, "group %u holds %u tokens", g, tokens);
    }
}

static kvrt_seq_id_t waiting_b;
static kvrt_arrival_id_t arrival_b;

/* B, sharing A's prompt, awaits K/V (a hand-off): it adopts the cached
 * blocks, A's full tail among them. */
static void share_by_arrival(hybrid_t *h, kvrt_seq_id_t a)
{
    (void)a;
    int32_t prompt[20];
    for (int i = 0; i < 20; i++)
        prompt[i] = (i * 5) % 97;
    waiting_b = add_prompt(h, prompt, 20, 4);
    kvrt_arrival_params_t ap = {.num_tokens = 8};
    uint32_t first = 0, count = 0;
    ASSERT_OK(h->ctx, kvrt_seq_await_kv(h->sched, waiting_b, &ap, &arrival_b, &first, &count));
    const int32_t *bl;
    uint32_t nb = 0;
    ASSERT_OK(h->ctx, kvrt_seq_blocks(h->sched, waiting_b, &bl, &nb, NULL));
    cr_assert_eq(nb, 4, "B adopted A's 4 prompt blocks (%u)", nb);
}

static int32_t tail_refs[MAX_GROUPS];

/* The engine takes a reference on A's full tail block in every group (to
 * send it elsewhere, say). */
static void share_by_reference(hybrid_t *h, kvrt_seq_id_t a)
{
    for (uint32_t g = 0; g < h->num_groups; g++) {
        const int32_t *bl;
        uint32_t nb = 0;
        ASSERT_OK(h->ctx, kvrt_seq_group_blocks(h->sched, a, g, &bl, &nb, NULL));
        tail_refs[g] = bl[16 / h->tpb[g] - 1];
        ASSERT_OK(h->ctx, kvrt_pool_ref(h->pool[g], 1, &tail_refs[g]));
    }
}

Test(sched_hybrid, a_tail_block_filled_then_shared_keeps_its_tokens_without_a_copy)
{
    /* One sliding-window group (hybrid), a prefix cache, a hand-off. */
    static const uint32_t blocks1[1] = {64}, tpb1[1] = {4}, window1[1] = {54};
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_CHUNK |
                                            KVRT_SCHED_PARAM_MAX_SEQS,
                              .prefill_chunk_tokens = 14, .max_seqs = 1};
    hybrid_t h = hybrid_open(1, blocks1, tpb1, window1, true, &sp);
    fill_then_share(&h, share_by_arrival);
    ASSERT_OK(h.ctx, kvrt_arrival_complete(h.sched, arrival_b, 0));
    run_to_end(&h, 60);
    drain_all(&h);
    hybrid_close(&h);

    /* Full attention in blocks of 4 and 8 with a window, the engine holding
     * the tail blocks. */
    static const uint32_t blocks2[2] = {64, 64}, tpb2[2] = {4, 8}, window2[2] = {0, 40};
    h = hybrid_open(2, blocks2, tpb2, window2, false, &sp);
    fill_then_share(&h, share_by_reference);
    for (uint32_t g = 0; g < h.num_groups; g++)
        ASSERT_OK(h.ctx, kvrt_pool_free(h.pool[g], 1, &tail_refs[g]));
    run_to_end(&h, 60);
    drain_all(&h);
    hybrid_close(&h);
}

Test(sched_hybrid, randomized_run_keeps_every_invariant_in_every_group, .timeout = 120)
{
    randomized_run(&own_pools, 1, 0xfeedbeef1234ull, 8);
}

Test(sched_hybrid, randomized_async_run_keeps_every_invariant_in_every_group, .timeout = 120)
{
    randomized_run(&own_pools, 2, 0xa5a5f00d77ull, 0);
}

Test(sched_hybrid, randomized_async_run_with_shared_prompts_waiting_keeps_every_invariant,
     .timeout = 120)
{
    randomized_run(&own_pools, 2, 0xa5a5f00d77ull, 8);
}

/* One pool of 8-token blocks for all three groups (full attention,
 * windows of 12 and 40): one memory, one eviction order. */
static const rnd_layout_t one_pool = {.owner = {0, 0, 0}, .window = {0, 12, 40},
                                      .tpb = {8, 8, 8}, .blocks = {120}, .async_blocks = {96}};

/* Two full-attention groups share a pool and its cache (the second finds
 * its hits by lookups under a root of its own); the window group has its
 * own pool of smaller blocks. */
static const rnd_layout_t two_full_in_one_pool = {
    .owner = {0, 1, 0}, .window = {0, 12, 0}, .tpb = {8, 4, 8},
    .blocks = {110, 90}, .async_blocks = {72, 90}};

Test(sched_hybrid, randomized_run_over_groups_sharing_one_pool_keeps_every_invariant,
     .timeout = 120)
{
    randomized_run(&one_pool, 1, 0x5eed0001ull, 8);
    randomized_run(&two_full_in_one_pool, 1, 0x5eed0002ull, 0);
}

Test(sched_hybrid, randomized_async_run_over_groups_sharing_one_pool_keeps_every_invariant,
     .timeout = 120)
{
    randomized_run(&one_pool, 2, 0x5eed0003ull, 8);
    randomized_run(&two_full_in_one_pool, 2, 0x5eed0004ull, 0);
}
