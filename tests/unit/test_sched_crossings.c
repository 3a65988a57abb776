/*
 * test_sched_crossings.c - running decodes that cross into a new block in
 * the same step (the scheduler gathers those appends and runs them as one
 * batch) get exactly the slots and blocks that appends one at a time
 * would give them, in plan order; when the pool cannot give every
 * crossing a block, preemption follows the documented victim order, also
 * when an eviction sink keeps the victims reclaiming would free.
 *
 * The reference for "one at a time" is a second pool of the same size,
 * whose tables take each plan entry's tokens in plan order through the
 * public kvrt_table_append.
 */
#include <stdlib.h>
#include <string.h>

#include "cache/hooks.h"
#include "sched_fixture.h"

#define TPB 16u
#define MANY 700u   /* more crossings in one step than one batch holds */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Every planned token's slot is its row's block at its position, rows are
 * padded with the null block (past their tokens' blocks and those that
 * rolled-back drafts of up to max_draft positions left), and no slot
 * appears twice. */
static void check_slots(const kvrt_batch_plan_t *plan, uint32_t max_draft)
{
    int64_t *all = calloc(plan->num_tokens ? plan->num_tokens : 1, sizeof(int64_t));
    cr_assert_not_null(all);
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *e = &plan->seqs[i];
        const int32_t *row = plan->block_rows + (size_t)e->row * plan->row_stride;
        uint32_t blocks = (e->num_computed_tokens + e->num_new_tokens + TPB - 1) / TPB;
        uint32_t kept = (e->num_computed_tokens + max_draft + TPB - 1) / TPB;
        uint32_t held = blocks;
        while (held < kept && row[held] != KVRT_NULL_BLOCK)
            held++;
        for (uint32_t b = 0; b < plan->row_stride; b++)
            cr_assert((b < held) == (row[b] != KVRT_NULL_BLOCK),
                      "row %u entry %u: block %d with %u blocks in use", e->row, b, row[b],
                      blocks);
        for (uint32_t k = 0; k < e->num_new_tokens; k++) {
            uint32_t t = (uint32_t)plan->query_start_loc[i] + k;
            uint32_t pos = e->num_computed_tokens + k;
            cr_assert_eq((uint32_t)plan->positions[t], pos);
            cr_assert_eq(plan->slot_mapping[t], (int64_t)row[pos / TPB] * TPB + pos % TPB,
                         "entry %u token %u: slot %lld is not its row's", i, k,
                         (long long)plan->slot_mapping[t]);
            all[t] = plan->slot_mapping[t];
        }
    }
    qsort(all, plan->num_tokens, sizeof(int64_t), cmp_i64);
    for (uint32_t t = 1; t < plan->num_tokens; t++)
        cr_assert_neq(all[t], all[t - 1], "slot %lld planned twice", (long long)all[t]);
    free(all);
}

static uint32_t index_of(const kvrt_seq_id_t *ids, uint32_t n, kvrt_seq_id_t id)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] == id)
            return i;
    cr_assert_fail("the plan names an unknown request");
    return 0;
}

static void add_requests(sched_fixture_t *f, uint32_t n, uint32_t prompt_len, uint32_t max_new,
                         kvrt_seq_id_t *ids, const int32_t *priorities)
{
    int32_t prompt[64];
    cr_assert_leq(prompt_len, 64);
    for (uint32_t i = 0; i < n; i++) {
        test_prompt(prompt, prompt_len, (int32_t)(i * 7));
        kvrt_seq_params_t p = {.field_mask = priorities ? KVRT_SEQ_PARAM_PRIORITY : 0,
                               .prompt = prompt, .prompt_len = prompt_len,
                               .max_new_tokens = max_new,
                               .priority = priorities ? priorities[i] : 0};
        ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &ids[i]));
    }
}

static void commit_plain(sched_fixture_t *f, const kvrt_batch_plan_t *plan)
{
    int32_t *tokens = calloc(plan->num_seqs + 1, sizeof(int32_t));
    cr_assert_not_null(tokens);
    uint32_t n = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        if (plan->seqs[i].sample)
            tokens[n++] = 5 + (int32_t)(i % 50);
    kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = n,
                       .tokens = tokens};
    ASSERT_OK(f->ctx, kvrt_sched_commit(f->sched, &c));
    free(tokens);
}

/* MANY requests with prompts of one whole block decode 3 blocks more:
 * every decode crosses at positions 16, 32 and 48, all in the same steps.
 * Each plan's slots must be those that `ref`, a pool of the same size
 * whose tables take each entry's tokens in plan order one append at a
 * time, hands out. */
static void decode_against_one_at_a_time(sched_fixture_t *f, kvrt_pool_t *ref)
{
    kvrt_seq_id_t ids[MANY];
    kvrt_table_id_t tables[MANY];
    add_requests(f, MANY, TPB, 3 * TPB + 1, ids, NULL);
    for (uint32_t i = 0; i < MANY; i++)
        ASSERT_OK(f->ctx, kvrt_table_create(ref, &tables[i]));
    int64_t *expect = calloc(MANY * TPB, sizeof(int64_t));
    cr_assert_not_null(expect);
    uint32_t crossing_steps = 0;
    for (uint32_t step = 0; step < 3 * TPB + 8; step++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, step, &plan));
        if (plan->num_seqs == 0)
            break;
        uint32_t crossing = 0;
        for (uint32_t i = 0; i < plan->num_seqs; i++) {
            const kvrt_plan_seq_t *e = &plan->seqs[i];
            uint32_t r = index_of(ids, MANY, e->id);
            int64_t *out = expect + plan->query_start_loc[i];
            ASSERT_OK(f->ctx, kvrt_table_append(ref, tables[r], e->num_new_tokens, out, NULL,
                                                NULL));
            crossing += e->kind == KVRT_PLAN_DECODE && e->num_computed_tokens % TPB == 0;
        }
        for (uint32_t t = 0; t < plan->num_tokens; t++)
            cr_assert_eq(plan->slot_mapping[t], expect[t],
                         "step %u token %u: slot %lld, one at a time %lld", step, t,
                         (long long)plan->slot_mapping[t], (long long)expect[t]);
        check_slots(plan, 0);
        if (crossing) {
            cr_assert_eq(crossing, MANY, "step %u: %u of %u decodes crossed", step, crossing,
                         MANY);
            crossing_steps++;
        }
        commit_plain(f, plan);
        ASSERT_OK(f->ctx, kvrt_pool_verify(f->pool));
        if (f->cache)
            ASSERT_OK(f->ctx, kvrt_cache_verify(f->cache));
    }
    cr_assert_eq(crossing_steps, 3, "decodes crossed together in %u steps", crossing_steps);
    kvrt_seq_info_t ev[64];
    uint32_t ended = 0;
    for (uint32_t n; (n = sched_fixture_drain(f, ev, 64)) > 0;)
        ended += n;
    cr_assert_eq(ended, MANY);
    for (uint32_t i = 0; i < MANY; i++)
        ASSERT_OK(f->ctx, kvrt_table_destroy(ref, tables[i]));
    free(expect);
}

/* Every free block of `pool` made an idle cached block of its own content,
 * released in an order drawn from `seed`: from then on each block taken
 * evicts one. Two pools of the same size filled with the same seed hold
 * the same victims in the same order. */
static void fill_with_idle(kvrt_ctx_t *ctx, kvrt_pool_t *pool, kvrt_cache_t *cache,
                           uint64_t seed)
{
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    const uint32_t n = info.free_blocks;
    int32_t *blocks = calloc(n, sizeof(int32_t));
    cr_assert_not_null(blocks);
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, n, blocks));
    uint64_t rng = seed;
    for (uint32_t i = 0; i < n; i++) {
        kvrt_block_hash_t content = {test_rand_below(&rng, UINT32_MAX), 1000u + i};
        ASSERT_OK(ctx, kvrt_cache_insert(cache, blocks[i], &content, NULL, 0, NULL));
    }
    for (uint32_t i = n; i > 1; i--) {
        uint32_t j = (uint32_t)test_rand_below(&rng, i);
        int32_t t = blocks[i - 1];
        blocks[i - 1] = blocks[j];
        blocks[j] = t;
    }
    ASSERT_OK(ctx, kvrt_pool_free(pool, n, blocks));
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.free_blocks, 0);
    cr_assert_eq(info.cached_blocks, n);
    free(blocks);
}

/* decode_against_one_at_a_time in a pool of its own, against a reference
 * pool of the same size. full_pool: both pools have a prefix cache and
 * are full of the same idle cached blocks, so every block taken evicts
 * one; the batch evicts for all its appends before the first. */
static void crossings_against_one_at_a_time(bool full_pool)
{
    const uint32_t blocks = MANY * 4 + 16;
    kvrt_sched_params_t sp = sched_fixture_params_for(MANY, TPB);
    sched_fixture_t f = sched_fixture_open(blocks, TPB, full_pool, &sp);
    kvrt_pool_t *ref = test_pool(f.ctx, blocks, TPB);
    kvrt_cache_t *ref_cache = NULL;
    if (full_pool) {
        ASSERT_OK(f.ctx, kvrt_cache_create(ref, NULL, &ref_cache));
        fill_with_idle(f.ctx, f.pool, f.cache, 0xf111ull);
        fill_with_idle(f.ctx, ref, ref_cache, 0xf111ull);
    }
    decode_against_one_at_a_time(&f, ref);
    if (full_pool) {
        /* Prompt blocks and 3 crossings each, every one an eviction. */
        kvrt_cache_stats_t st, ref_st;
        ASSERT_OK(f.ctx, kvrt_cache_stats(f.cache, &st));
        ASSERT_OK(f.ctx, kvrt_cache_stats(ref_cache, &ref_st));
        cr_assert_eq(st.evictions, 4 * MANY);
        cr_assert_eq(ref_st.evictions, st.evictions);
        ASSERT_OK(f.ctx, kvrt_cache_destroy(ref_cache));
    }
    ASSERT_OK(f.ctx, kvrt_pool_destroy(ref));
    sched_fixture_close(&f);
}

Test(sched_crossings, many_decodes_crossing_together_get_the_slots_of_appends_one_at_a_time)
{
    crossings_against_one_at_a_time(false);
}

Test(sched_crossings, crossings_in_a_full_pool_evict_what_appends_one_at_a_time_would)
{
    crossings_against_one_at_a_time(true);
}

Test(sched_crossings, crossings_past_the_free_blocks_preempt_the_lowest_priority_latest_first)
{
    enum { N = 300, FREE_AFTER_PREFILL = 120 };
    kvrt_sched_params_t sp = sched_fixture_params_for(N, TPB);
    /* The pool's block 0 is the null block: N prompt blocks and the free
     * ones, fewer than the N decodes that cross next. */
    sched_fixture_t f = sched_fixture_open(1 + N + FREE_AFTER_PREFILL, TPB, false, &sp);
    kvrt_seq_id_t ids[N];
    int32_t prio[N];
    uint64_t rng = 0xc0551ull;
    for (uint32_t i = 0; i < N; i++)
        prio[i] = (int32_t)test_rand_below(&rng, 4);
    add_requests(&f, N, TPB, 8, ids, prio);
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &plan));
    cr_assert_eq(plan->num_prefill_seqs, N, "every prompt is prefilled in one step");
    commit_plain(&f, plan);

    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &plan));
    check_slots(plan, 0);
    bool planned[N] = {0}, preempted[N] = {0};
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        planned[index_of(ids, N, plan->seqs[i].id)] = true;
    for (uint32_t i = 0; i < plan->num_preempted; i++)
        preempted[index_of(ids, N, plan->preempted[i])] = true;
    uint32_t num_planned = 0, num_preempted = 0;
    for (uint32_t i = 0; i < N; i++) {
        cr_assert(planned[i] != preempted[i], "request %u: planned %d, preempted %d", i,
                  planned[i], preempted[i]);
        num_planned += planned[i];
        num_preempted += preempted[i];
    }
    cr_assert_gt(num_preempted, 0);
    cr_assert_leq(num_planned, FREE_AFTER_PREFILL + num_preempted,
                  "more crossings than blocks");
    /* Victims: the lowest priority first, the latest arrival among equals. */
    for (uint32_t v = 0; v < N; v++)
        for (uint32_t k = 0; preempted[v] && k < N; k++)
            if (planned[k])
                cr_assert(prio[v] < prio[k] || (prio[v] == prio[k] && v > k),
                          "request %u (priority %d) preempted while %u (priority %d) runs",
                          v, prio[v], k, prio[k]);
    ASSERT_OK(f.ctx, kvrt_pool_verify(f.pool));
    /* Every running request holds its prompt block and its new one. */
    cr_assert_eq(sched_fixture_used_blocks(&f), 2 * num_planned);
    commit_plain(&f, plan);
    for (uint32_t i = 0; i < N; i++)
        ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, ids[i]));
    kvrt_seq_info_t ev[64];
    uint32_t ended = 0;
    for (uint32_t n; (n = sched_fixture_drain(&f, ev, 64)) > 0;)
        ended += n;
    cr_assert_eq(ended, N);
    sched_fixture_close(&f);
}

/* Random prompt lengths, drafts, rejections, aborts and a pool too small
 * for everyone: crossings are gathered in some steps and run one at a
 * time in others, and the plan must always agree with its rows. */
Test(sched_crossings, a_tail_block_filled_then_referenced_is_crossed_without_a_copy)
{
    /* A prompt of 2 blocks and 2 tokens as a chunk of 30, then 2 tokens
     * inside the tail block (its table told only at the next crossing);
     * that commit fills the block, on which the engine then takes a
     * reference. The next decode crosses into a new block: no copy of the
     * full block, and the table holds every token. */
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_CHUNK, .prefill_chunk_tokens = 30};
    sched_fixture_t f = sched_fixture_open(64, TPB, false, &sp);
    int32_t prompt[32];
    for (int i = 0; i < 32; i++)
        prompt[i] = 3 * i + 1;
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 32, .max_new_tokens = 4};
    kvrt_seq_id_t id;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
    const kvrt_batch_plan_t *plan;
    for (uint64_t k = 0; k < 2; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, k, &plan));
        cr_assert_eq(plan->num_seqs, 1);
        sched_fixture_commit(&f, plan, 5);
    }
    const int32_t *bl;
    uint32_t nb = 0, tokens = 0;
    ASSERT_OK(f.ctx, kvrt_seq_blocks(f.sched, id, &bl, &nb, &tokens));
    cr_assert_eq(nb, 2);
    int32_t full = bl[1];
    ASSERT_OK(f.ctx, kvrt_pool_ref(f.pool, 1, &full));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &plan));
    cr_assert_eq(plan->num_seqs, 1);
    cr_assert_eq(plan->num_copies, 0, "the full block was copied");
    check_slots(plan, 0);
    cr_assert_neq(plan->slot_mapping[0] / TPB, full);
    sched_fixture_commit(&f, plan, 5);
    ASSERT_OK(f.ctx, kvrt_seq_blocks(f.sched, id, &bl, &nb, &tokens));
    cr_assert_eq(tokens, 33);
    cr_assert_eq(bl[1], full);
    ASSERT_OK(f.ctx, kvrt_pool_free(f.pool, 1, &full));
    for (uint64_t k = 3; k < 20; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, k, &plan));
        if (!plan->num_seqs)
            break;
        sched_fixture_commit(&f, plan, 5);
    }
    kvrt_seq_info_t ev[1];
    cr_assert_eq(sched_fixture_drain(&f, ev, 1), 1);
    sched_fixture_close(&f);
}

Test(sched_crossings, randomized_crossings_keep_slots_rows_and_pool_consistent, .timeout = 120)
{
    enum { N = 400, STEPS = 300 };
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_MAX_SEQS |
                                            KVRT_SCHED_PARAM_MAX_REQUESTS |
                                            KVRT_SCHED_PARAM_DRAFT,
                              .max_batch_tokens = 2048,
                              .max_seqs = 320,
                              .max_requests = N,
                              .max_draft_tokens = 4};
    sched_fixture_t f = sched_fixture_open(600, TPB, false, &sp);
    uint64_t rng = 0xfeedull;
    kvrt_seq_id_t ids[N];
    int32_t prompt[64];
    for (uint32_t i = 0; i < N; i++) {
        uint32_t len = 1 + test_rand_below(&rng, 64);
        test_prompt(prompt, len, (int32_t)i);
        kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_PRIORITY,
                               .prompt = prompt, .prompt_len = len,
                               .max_new_tokens = 8 + test_rand_below(&rng, 120),
                               .priority = (int32_t)test_rand_below(&rng, 3)};
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &ids[i]));
    }
    static int32_t tokens[2048 * 2];
    static uint32_t accepted[2048];
    static kvrt_seq_id_t draft_ids[320];
    uint64_t preemptions = 0;
    for (uint32_t step = 0; step < STEPS; step++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, step, &plan));
        check_slots(plan, sp.max_draft_tokens);
        preemptions += plan->num_preempted;
        uint32_t n = 0, nd = 0;
        for (uint32_t i = 0; i < plan->num_seqs; i++) {
            const kvrt_plan_seq_t *e = &plan->seqs[i];
            accepted[i] = e->num_drafts ? test_rand_below(&rng, e->num_drafts + 1) : 0;
            if (e->sample) { /* the accepted drafts, then a bonus token */
                const int32_t *d = plan->input_tokens + plan->query_start_loc[i] +
                                   (e->num_new_tokens - e->num_drafts);
                for (uint32_t k = 0; k < accepted[i]; k++)
                    tokens[n++] = d[k];
                tokens[n++] = 100 + (int32_t)test_rand_below(&rng, 50);
            }
            if (e->kind != KVRT_PLAN_PREFILL && test_rand_below(&rng, 2))
                draft_ids[nd++] = e->id;
        }
        kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = plan->step,
                           .num_seqs = plan->num_seqs, .num_tokens = n, .tokens = tokens,
                           .num_accepted = accepted};
        if (plan->num_seqs)
            ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
        for (uint32_t d = 0; d < nd; d++) { /* 1-4 drafts; ended ones refuse */
            int32_t draft[4];
            uint32_t count = 1 + test_rand_below(&rng, 4);
            for (uint32_t k = 0; k < count; k++)
                draft[k] = 100 + (int32_t)test_rand_below(&rng, 50);
            kvrt_status_t st = kvrt_seq_set_draft(f.sched, draft_ids[d], draft, count);
            cr_assert(st == KVRT_OK || st == KVRT_ERR_BAD_STATE, "set_draft: %s",
                      kvrt_ctx_last_error(f.ctx));
        }
        if (test_rand_below(&rng, 8) == 0) /* an abort now and then */
            kvrt_seq_abort(f.sched, ids[test_rand_below(&rng, N)]);
        ASSERT_OK(f.ctx, kvrt_pool_verify(f.pool));
        kvrt_seq_info_t ev[64];
        while (sched_fixture_drain(&f, ev, 64) > 0)
            ;
    }
    cr_assert_gt(preemptions, 0, "the pool is meant to be too small");
    for (uint32_t i = 0; i < N; i++)
        kvrt_seq_abort(f.sched, ids[i]); /* ended ones answer an error */
    kvrt_seq_info_t ev[64];
    while (sched_fixture_drain(&f, ev, 64) > 0)
        ;
    sched_fixture_close(&f);
}

/* An eviction sink that keeps every victim it may (as a busy host tier
 * would), so one allocation can use up many idle cached blocks. */
typedef struct keeper {
    int32_t kept[4096];
    uint32_t count;
} keeper_t;

static kvrt_cache_sink_verdict_t keep_all(void *user_data, const kvrt_cache_victim_t *victim)
{
    keeper_t *k = user_data;
    if (!victim->may_keep || k->count == 4096)
        return KVRT_CACHE_SINK_DROP;
    k->kept[k->count++] = victim->block;
    return KVRT_CACHE_SINK_KEEP;
}

Test(sched_crossings, crossings_into_idle_blocks_a_sink_keeps_preempt_instead_of_failing)
{
    enum { FINISHED = 100, N = 100 };
    kvrt_sched_params_t sp = sched_fixture_params_for(N, 2 * TPB);
    /* Block 0 is the null block; the rest: the finished requests' two
     * cached blocks each, then exactly the running prompts' blocks. */
    sched_fixture_t f = sched_fixture_open(1 + 2 * FINISHED + N, TPB, true, &sp);
    static keeper_t k;
    k.count = 0;
    ASSERT_OK(f.ctx, kvrt_cache_set_sink(f.cache, keep_all, &k));
    kvrt_seq_id_t ids[N];
    add_requests(&f, FINISHED, 2 * TPB, 1, ids, NULL); /* ids reused below */
    for (uint64_t step = 1; step < 10; step++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, step, &plan));
        if (!plan->num_seqs)
            break;
        commit_plain(&f, plan);
    }
    kvrt_seq_info_t ev[64];
    while (sched_fixture_drain(&f, ev, 64) > 0)
        ;
    kvrt_pool_info_t info;
    ASSERT_OK(f.ctx, kvrt_pool_info(f.pool, &info));
    cr_assert_eq(info.cached_blocks, 2 * FINISHED, "the finished prompts are cached, idle");
    /* N prompts of 15 tokens take the free blocks; their second decode
     * crosses into a block only eviction can give. */
    int32_t prompt[TPB];
    for (uint32_t i = 0; i < N; i++) {
        test_prompt(prompt, TPB - 1, (int32_t)(100000 + i * 50));
        kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_PRIORITY, .prompt = prompt,
                               .prompt_len = TPB - 1, .max_new_tokens = 4,
                               .priority = (int32_t)(i % 3)};
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &ids[i]));
    }
    uint64_t preempted = 0;
    for (uint64_t step = 10; step < 400; step++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, step, &plan));
        check_slots(plan, 0);
        preempted += plan->num_preempted;
        if (plan->num_seqs)
            commit_plain(&f, plan);
        ASSERT_OK(f.ctx, kvrt_pool_verify(f.pool));
        /* The sink copies in the background, then gives its blocks back. */
        if (k.count)
            ASSERT_OK(f.ctx, kvrt_pool_free(f.pool, k.count, k.kept));
        k.count = 0;
        while (sched_fixture_drain(&f, ev, 64) > 0)
            ;
        kvrt_sched_stats_t st;
        ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
        cr_assert_eq(st.failed, 0, "step %llu: a request failed for want of a block",
                     (unsigned long long)step);
        if (st.running + st.waiting == 0)
            break;
    }
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.running + st.waiting, 0, "every request finished");
    cr_assert_eq(st.finished_length, FINISHED + N);
    cr_assert_gt(preempted, 0, "the sink was meant to starve the crossings");
    ASSERT_OK(f.ctx, kvrt_cache_set_sink(f.cache, NULL, NULL));
    sched_fixture_close(&f);
}
