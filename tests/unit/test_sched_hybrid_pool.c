/*
 * test_sched_hybrid_pool.c - cache groups sharing one pool (and its prefix
 * cache), as a hybrid model's engine lays out its K/V when every group's
 * block holds the same bytes: one memory that no split decides in
 * advance, one eviction order over every group's cached blocks, each
 * group's blocks found under a chain of its own, and the pool's checks
 * counting every group's needs together.
 */
#include "sched_hybrid_fixture.h"

/* Full attention and a window of 8 tokens, 4-token blocks. */
static const uint32_t full_and_window[2] = {0, 8};
static const uint32_t blocks_of_4[3] = {4, 4, 4};

static void prompt_of(int32_t *t, uint32_t n, int32_t seed)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = (int32_t)((i * 11 + (uint32_t)seed) % 97);
}

/* Chunks of 8 tokens, one request at a time. */
static const kvrt_sched_params_t one_by_chunks = {
    .field_mask = KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_MAX_SEQS,
    .prefill_chunk_tokens = 8,
    .max_seqs = 1};

static uint32_t peak_used;

/* run_to_end, noting the pool's peak use. */
static void run_noting_peak(hybrid_t *h, uint32_t max_steps)
{
    peak_used = 0;
    for (uint32_t step = 0; step < max_steps; step++) {
        bool ran = checked_step(h, step);
        uint32_t used = used_blocks(h, 0);
        if (used > peak_used)
            peak_used = used;
        kvrt_sched_stats_t st;
        ASSERT_OK(h->ctx, kvrt_sched_stats(h->sched, &st));
        if (!ran && !st.running && !st.waiting)
            return;
    }
    cr_assert_fail("still running after %u steps", max_steps);
}

Test(sched_hybrid_pool, groups_sharing_a_pool_fit_a_request_that_no_split_of_it_fits)
{
    /* A 100-token prompt and 4 outputs: full attention holds up to 26
     * blocks of 4 tokens; the window of 8, with chunks of 8, at most 5
     * (the add-time bound). 31 usable blocks hold both only when the
     * groups share them. */
    static const uint32_t shared[2] = {0, 0}, pool_32[1] = {32}, split[2] = {16, 16};
    int32_t prompt[104];
    prompt_of(prompt, 104, 1);
    hybrid_t h = hybrid_open(2, split, blocks_of_4, full_and_window, false, &one_by_chunks);
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 100, .max_new_tokens = 4};
    kvrt_seq_id_t id;
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_seq_add(h.sched, &p, &id));
    hybrid_close(&h);

    h = hybrid_open_shared(2, shared, pool_32, blocks_of_4, full_and_window, false,
                           &one_by_chunks);
    id = add_prompt(&h, prompt, 100, 4);
    run_noting_peak(&h, 40);
    cr_assert_gt(peak_used, 16, "more than half the pool at the peak (%u)", peak_used);
    expect_model_output(&h, id, prompt, 100, 4);

    /* The needs add up: 104 tokens and 4 outputs need 27 + 5 blocks. */
    p.prompt_len = 104;
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_seq_add(h.sched, &p, &id));
    cr_assert(strstr(kvrt_ctx_last_error(h.ctx), "32 blocks"), "%s", kvrt_ctx_last_error(h.ctx));
    hybrid_close(&h);
}

Test(sched_hybrid_pool, blocks_a_window_left_serve_the_full_attention_group_of_the_same_pool)
{
    /* A prefix cache keeps what the window left (idle, evictable): with
     * one eviction order, the full-attention group's growth evicts it. */
    static const uint32_t shared[2] = {0, 0}, pool_32[1] = {32};
    int32_t prompt[100];
    prompt_of(prompt, 100, 2);
    hybrid_t h = hybrid_open_shared(2, shared, pool_32, blocks_of_4, full_and_window, true,
                                    &one_by_chunks);
    add_prompt(&h, prompt, 100, 4);
    run_noting_peak(&h, 40);
    drain_all(&h);
    /* Only the window's blocks were ever idle while the request ran. */
    kvrt_cache_stats_t cs;
    ASSERT_OK(h.ctx, kvrt_cache_stats(h.cache[0], &cs));
    cr_assert_gt(cs.evictions, 0, "the window's cached blocks made room");
    hybrid_close(&h);
}

/* q's blocks in group g, copied. */
static uint32_t blocks_of(hybrid_t *h, kvrt_seq_id_t q, uint32_t g, int32_t *out)
{
    const int32_t *bl;
    uint32_t nb = 0;
    ASSERT_OK(h->ctx, kvrt_seq_group_blocks(h->sched, q, g, &bl, &nb, NULL));
    memcpy(out, bl, nb * sizeof(int32_t));
    return nb;
}

Test(sched_hybrid_pool, a_prefix_hit_takes_each_groups_own_blocks_from_the_shared_cache)
{
    /* Two full-attention groups and a window of 8 in one pool and cache:
     * the same tokens have one block per group, and a hit must hand each
     * group its own (the second full group finds them by lookups, under a
     * root of its own: under the cache's root it would find group 0's). */
    static const uint32_t three[3] = {0, 0, 0}, pool_64[1] = {64}, windows[3] = {0, 0, 8};
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_CHUNK, .prefill_chunk_tokens = 32};
    hybrid_t h = hybrid_open_shared(3, three, pool_64, blocks_of_4, windows, true, &sp);
    int32_t prompt[24];
    prompt_of(prompt, 24, 3);
    /* A runs its prompt: 6 blocks a group (the window's first 4 left it
     * and are cached, idle). */
    kvrt_seq_id_t a = add_prompt(&h, prompt, 24, 2);
    cr_assert(checked_step(&h, 0));
    int32_t held[3][8];
    for (uint32_t g = 0; g < 3; g++)
        cr_assert_eq(blocks_of(&h, a, g, held[g]), 6);
    for (uint32_t j = 0; j < 6; j++) {
        cr_assert_neq(held[0][j], held[1][j]);
        cr_assert_neq(held[0][j], held[2][j]);
        cr_assert_neq(held[1][j], held[2][j]);
    }
    /* B, the same prompt, while A still runs: a hit of 20 tokens (the last
     * prompt token is recomputed), each group's blocks its own. */
    kvrt_seq_id_t b = add_prompt(&h, prompt, 24, 2);
    cr_assert(checked_step(&h, 1));
    kvrt_seq_info_t info;
    ASSERT_OK(h.ctx, kvrt_seq_info(h.sched, b, &info));
    cr_assert_eq(info.cached_tokens, 20);
    int32_t hit[8];
    for (uint32_t g = 0; g < 2; g++) {
        cr_assert_geq(blocks_of(&h, b, g, hit), 5);
        for (uint32_t j = 0; j < 5; j++)
            cr_assert_eq(hit[j], held[g][j], "group %u block %u", g, j);
    }
    /* The window of token 20 reads 13..19: blocks 3 and 4. */
    cr_assert_geq(blocks_of(&h, b, 2, hit), 5);
    for (uint32_t j = 0; j < 3; j++)
        cr_assert_eq(hit[j], KVRT_NULL_BLOCK);
    for (uint32_t j = 3; j < 5; j++)
        cr_assert_eq(hit[j], held[2][j], "window block %u", j);
    run_to_end(&h, 20);
    drain_all(&h);
    hybrid_close(&h);
}

Test(sched_hybrid_pool, an_arrival_into_a_shared_pool_counts_every_groups_blocks_together)
{
    /* A 64-token arrival needs 16 blocks of full attention and 2 of the
     * window (the token at 64 reads 57..63). With 17 free blocks each
     * group alone would fit; together they do not. */
    static const uint32_t shared[2] = {0, 0}, pool_23[1] = {23};
    int32_t prompt[70];
    prompt_of(prompt, 70, 4);
    hybrid_t h = hybrid_open_shared(2, shared, pool_23, blocks_of_4, full_and_window, false,
                                    &one_by_chunks);
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 66, .max_new_tokens = 1};
    kvrt_seq_id_t id;
    ASSERT_OK(h.ctx, kvrt_seq_add(h.sched, &p, &id));
    int32_t engine[5]; /* blocks the engine holds for itself */
    ASSERT_OK(h.ctx, kvrt_pool_alloc(h.pool[0], 5, engine));
    kvrt_arrival_params_t ap = {.num_tokens = 64};
    kvrt_arrival_id_t arrival;
    uint32_t first[2], count[2];
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS,
                  kvrt_seq_await_kv_groups(h.sched, id, &ap, 2, &arrival, first, count));
    cr_assert_eq(used_blocks(&h, 0), 5, "a refused arrival holds nothing");
    ASSERT_OK(h.ctx, kvrt_pool_free(h.pool[0], 1, engine));
    ASSERT_OK(h.ctx, kvrt_seq_await_kv_groups(h.sched, id, &ap, 2, &arrival, first, count));
    cr_assert_eq(first[0], 0);
    cr_assert_eq(count[0], 16);
    cr_assert_eq(first[1], 14);
    cr_assert_eq(count[1], 2);
    cr_assert_eq(used_blocks(&h, 0), 4 + 18);
    ASSERT_OK(h.ctx, kvrt_pool_free(h.pool[0], 4, engine + 1));
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, arrival, 0, count[0]));
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, arrival, 1, count[1]));
    run_to_end(&h, 20);
    drain_all(&h);
    hybrid_close(&h);
}

/* Steps until request id has ended (bounded). */
static void step_until_ended(hybrid_t *h, kvrt_seq_id_t id, uint32_t *step)
{
    kvrt_seq_info_t info;
    for (uint32_t n = 0; n < 40; n++) {
        ASSERT_OK(h->ctx, kvrt_seq_info(h->sched, id, &info));
        if (info.state == KVRT_SEQ_ENDED)
            return;
        cr_assert(checked_step(h, (*step)++));
    }
    cr_assert_fail("request still running");
}

Test(sched_hybrid_pool, blocks_a_window_released_early_are_evicted_with_the_rest_of_their_request)
{
    /* B's window lets go of its first blocks while B runs; A ends after
     * that, B later. As full-size K/V would, eviction then takes A's
     * blocks before any of B's: B's early blocks count as released when
     * B ends. So C, sharing B's first 32 tokens, still hits them after
     * as many blocks are evicted as were idle when A ended (B's early ones
     * among them, which would go first if they counted from their
     * release). */
    static const uint32_t shared[2] = {0, 0}, pool_96[1] = {96};
    static const kvrt_sched_params_t sp = {
        .field_mask = KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_MAX_SEQS,
        .prefill_chunk_tokens = 8, .max_seqs = 2};
    hybrid_t h = hybrid_open_shared(2, shared, pool_96, blocks_of_4, full_and_window, true, &sp);
    int32_t b_prompt[80], a_prompt[8], c_prompt[41];
    prompt_of(b_prompt, 80, 5);
    prompt_of(a_prompt, 8, 40);
    kvrt_seq_id_t b = add_prompt(&h, b_prompt, 80, 2);
    uint32_t step = 0;
    kvrt_seq_info_t info;
    do {
        cr_assert(checked_step(&h, step++));
        ASSERT_OK(h.ctx, kvrt_seq_info(h.sched, b, &info));
    } while (info.computed_tokens < 48);
    cr_assert(checked_step(&h, step++)); /* B's window has let go of blocks 0-9 */
    kvrt_seq_id_t a = add_prompt(&h, a_prompt, 8, 1);
    step_until_ended(&h, a, &step);
    kvrt_pool_info_t pi;
    ASSERT_OK(h.ctx, kvrt_pool_info(h.pool[0], &pi));
    const uint32_t idle_when_a_ended = pi.cached_blocks;
    cr_assert_geq(idle_when_a_ended, 10 + 4, "B's early blocks and A's 2 + 2");
    step_until_ended(&h, b, &step);
    drain_all(&h);
    ASSERT_OK(h.ctx, kvrt_pool_info(h.pool[0], &pi));
    int32_t taken[96];
    ASSERT_OK(h.ctx, kvrt_pool_alloc(h.pool[0], pi.free_blocks + idle_when_a_ended, taken));
    ASSERT_OK(h.ctx, kvrt_pool_free(h.pool[0], pi.free_blocks + idle_when_a_ended, taken));
    /* C: B's first 32 tokens, then its own. */
    memcpy(c_prompt, b_prompt, 32 * sizeof(int32_t));
    prompt_of(c_prompt + 32, 9, 60);
    kvrt_seq_id_t c = add_prompt(&h, c_prompt, 41, 1);
    cr_assert(checked_step(&h, step++));
    ASSERT_OK(h.ctx, kvrt_seq_info(h.sched, c, &info));
    cr_assert_eq(info.cached_tokens, 32, "C hit %u tokens", info.cached_tokens);
    run_to_end(&h, 20);
    drain_all(&h);
    hybrid_close(&h);
}

/* A 41-token prompt runs alone and ends (10 blocks a group cached, 20 in
 * all); `evict` blocks are then evicted; the hit of the same prompt. */
static uint32_t hit_after_evicting(const uint32_t *windows, kvrt_cache_policy_t policy,
                                   bool hit_once_first, uint32_t evict)
{
    static const uint32_t shared[2] = {0, 0}, pool_64[1] = {64};
    const kvrt_cache_params_t cp = {.field_mask = KVRT_CACHE_PARAM_POLICY, .policy = policy};
    hybrid_t h = hybrid_open_cached(2, shared, pool_64, blocks_of_4, windows, &cp,
                                    &one_by_chunks);
    int32_t prompt[41];
    prompt_of(prompt, 41, 7);
    for (uint32_t run = 0; run < (hit_once_first ? 2u : 1u); run++) {
        add_prompt(&h, prompt, 41, 1);
        run_to_end(&h, 40);
        drain_all(&h);
    }
    kvrt_pool_info_t pi;
    ASSERT_OK(h.ctx, kvrt_pool_info(h.pool[0], &pi));
    cr_assert_eq(pi.cached_blocks, 20);
    int32_t taken[64];
    ASSERT_OK(h.ctx, kvrt_pool_alloc(h.pool[0], pi.free_blocks + evict, taken));
    ASSERT_OK(h.ctx, kvrt_pool_free(h.pool[0], pi.free_blocks + evict, taken));
    kvrt_seq_id_t b = add_prompt(&h, prompt, 41, 1);
    cr_assert(checked_step(&h, 100));
    kvrt_seq_info_t info;
    ASSERT_OK(h.ctx, kvrt_seq_info(h.sched, b, &info));
    run_to_end(&h, 40);
    drain_all(&h);
    hybrid_close(&h);
    return info.cached_tokens;
}

Test(sched_hybrid_pool, groups_sharing_a_cache_release_a_request_depth_by_depth)
{
    /* Evicting 10 of the 20 (what 5 full-size blocks of both groups'
     * layers weigh) leaves full-size K/V a hit of 20 tokens: so must the
     * groups, their blocks released deepest first, interleaved. Released
     * group after group, the first group's whole chain, its root
     * included, would go first: no hit at all. */
    static const uint32_t full_full[2] = {0, 0};
    cr_assert_eq(hit_after_evicting(full_full, KVRT_CACHE_LRU_LEAF, false, 10), 20);
    cr_assert_eq(hit_after_evicting(full_and_window, KVRT_CACHE_LRU_LEAF, false, 10), 20);
    cr_assert_eq(hit_after_evicting(full_full, KVRT_CACHE_LRU, false, 10), 20);
}

Test(sched_hybrid_pool, a_group_found_by_lookups_counts_one_hit_per_admission)
{
    /* Under LFU, the second full-attention group (found by lookups) must
     * count a hit once per admission, as the first group's match does:
     * probing it as well would rank the first group's chain below and
     * evict it whole. */
    static const uint32_t full_full[2] = {0, 0};
    cr_assert_eq(hit_after_evicting(full_full, KVRT_CACHE_LFU, true, 10), 20);
}

/* Evicts every idle block of h's pool of group g. */
static void evict_all(hybrid_t *h, uint32_t g)
{
    kvrt_pool_info_t pi;
    ASSERT_OK(h->ctx, kvrt_pool_info(h->pool[g], &pi));
    int32_t taken[128];
    const uint32_t n = pi.free_blocks + pi.cached_blocks;
    cr_assert_leq(n, 128);
    ASSERT_OK(h->ctx, kvrt_pool_alloc(h->pool[g], n, taken));
    ASSERT_OK(h->ctx, kvrt_pool_free(h->pool[g], n, taken));
}

/* Runs a 41-token prompt (seed) to its end. */
static void run_prompt(hybrid_t *h, int32_t seed)
{
    int32_t prompt[41];
    prompt_of(prompt, 41, seed);
    add_prompt(h, prompt, 41, 1);
    run_to_end(h, 40);
    drain_all(h);
}

static void expect_queries(const hybrid_t *h, uint32_t g, uint64_t queries, uint64_t hit,
                           uint64_t never, uint64_t evicted)
{
    kvrt_cache_stats_t cs;
    ASSERT_OK(h->ctx, kvrt_cache_stats(h->cache[g], &cs));
    cr_assert_eq(cs.queries, queries, "group %u: %llu queries", g,
                 (unsigned long long)cs.queries);
    cr_assert_eq(cs.query_tokens, 40 * queries);
    cr_assert_eq(cs.hit_tokens, hit, "group %u: %llu hit tokens", g,
                 (unsigned long long)cs.hit_tokens);
    cr_assert_eq(cs.miss_never_cached, never, "group %u: %llu never cached", g,
                 (unsigned long long)cs.miss_never_cached);
    cr_assert_eq(cs.miss_evicted, evicted, "group %u: %llu evicted", g,
                 (unsigned long long)cs.miss_evicted);
    cr_assert_eq(cs.miss_partial, 0);
}

Test(sched_hybrid_pool, a_cache_every_group_looks_up_in_counts_each_admissions_query)
{
    /* No match runs on a cache whose every group finds its hits by
     * lookups (a window-only model; a window group 0 sharing its pool
     * with a full-attention group), so the scheduler counts its query:
     * a first prompt misses (never cached), the same prompt hits its 40
     * offered tokens, and after every block is evicted it misses again,
     * as evicted. */
    static const uint32_t window_only[1] = {8}, window_full[2] = {8, 0}, shared[2] = {0, 0};
    static const uint32_t pool_64[1] = {64};
    for (uint32_t layout = 0; layout < 2; layout++) {
        hybrid_t h = layout == 0 ? hybrid_open(1, pool_64, blocks_of_4, window_only, true,
                                               &one_by_chunks)
                                 : hybrid_open_shared(2, shared, pool_64, blocks_of_4,
                                                      window_full, true, &one_by_chunks);
        run_prompt(&h, 7);
        expect_queries(&h, 0, 1, 0, 40, 0);
        run_prompt(&h, 7);
        expect_queries(&h, 0, 2, 40, 40, 0);
        evict_all(&h, 0);
        run_prompt(&h, 7);
        expect_queries(&h, 0, 3, 40, 40, 40);
        hybrid_close(&h);
    }
}

Test(sched_hybrid_pool, a_window_cache_counts_what_it_serves_whatever_the_others_serve)
{
    /* A window group in a pool of its own beside a full-attention group:
     * with the full group's blocks evicted the request hits nothing, but
     * the window's cache counts the 40 tokens it would have served, as a
     * match counts its own blocks whatever another group serves. */
    static const uint32_t pools[2] = {64, 64};
    hybrid_t h = hybrid_open(2, pools, blocks_of_4, full_and_window, true, &one_by_chunks);
    run_prompt(&h, 9);
    expect_queries(&h, 1, 1, 0, 40, 0);
    evict_all(&h, 0);
    run_prompt(&h, 9);
    expect_queries(&h, 0, 2, 0, 40, 40);
    expect_queries(&h, 1, 2, 40, 40, 0);
    hybrid_close(&h);
}
