/*
 * test_sched_spec.c - speculative decoding queues: engine drafts planned
 * with KV slots, acceptance and bonus tokens, rollback that leaves the
 * request's tokens, its block table's view and the prefix cache exactly as
 * if the rejected drafts had never been appended (the blocks they took stay
 * with the request and serve its next tokens, or go back before anyone is
 * preempted), the n-gram proposer, adaptive draft length, back-off under
 * the token budget, stop tokens among accepted drafts, and refused bad
 * speculative calls (a wrong accepted draft at any position among them).
 */
#include <string.h>

#include "test_helpers.h"

typedef struct fixture {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;
    kvrt_sched_t *sched;
} fixture_t;

static fixture_t open_fixture_sized(uint32_t draft, bool ngram, uint32_t budget,
                                    uint32_t blocks)
{
    fixture_t f = {0};
    cr_assert_eq(kvrt_ctx_create(NULL, &f.ctx), KVRT_OK);
    f.pool = test_pool(f.ctx, blocks, 4);
    ASSERT_OK(f.ctx, kvrt_cache_create(f.pool, NULL, &f.cache));
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_DRAFT |
                                            KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_CSR_TABLES,
                              .max_draft_tokens = draft, .max_batch_tokens = budget,
                              .csr_block_tables = 1};
    if (ngram) {
        sp.field_mask |= KVRT_SCHED_PARAM_NGRAM;
        sp.ngram_min = 2;
        sp.ngram_max = 3;
    }
    ASSERT_OK(f.ctx, kvrt_sched_create(f.ctx, f.pool, f.cache, &sp, &f.sched));
    return f;
}

static fixture_t open_fixture(uint32_t draft, bool ngram, uint32_t budget)
{
    return open_fixture_sized(draft, ngram, budget, 256);
}

static void close_fixture(fixture_t *f)
{
    ASSERT_OK(f->ctx, kvrt_pool_verify(f->pool));
    ASSERT_OK(f->ctx, kvrt_cache_verify(f->cache));
    kvrt_pool_info_t info;
    ASSERT_OK(f->ctx, kvrt_pool_info(f->pool, &info));
    cr_assert_eq(info.used_blocks, 0, "blocks leaked: %u", info.used_blocks);
    kvrt_sched_destroy(f->sched);
    kvrt_cache_destroy(f->cache);
    kvrt_ctx_destroy(f->ctx);
}

static kvrt_seq_id_t add(fixture_t *f, const int32_t *prompt, uint32_t n, uint32_t max_new)
{
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = n, .max_new_tokens = max_new};
    kvrt_seq_id_t id;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    return id;
}

/* One step for a single request: commits `accepted` drafts and `bonus`. */
static const kvrt_batch_plan_t *step_one(fixture_t *f, uint32_t accepted, int32_t bonus)
{
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, 0, &plan));
    cr_assert_eq(plan->num_seqs, 1);
    int32_t tokens[32];
    const kvrt_plan_seq_t *e = &plan->seqs[0];
    if (accepted == UINT32_MAX)
        accepted = e->num_drafts; /* all of them */
    cr_assert_leq(accepted, e->num_drafts);
    const int32_t *drafts = plan->input_tokens + e->num_new_tokens - e->num_drafts;
    for (uint32_t j = 0; j < accepted; j++)
        tokens[j] = drafts[j];
    tokens[accepted] = bonus;
    uint32_t acc[1] = {accepted};
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = plan->step, .num_seqs = 1,
                       .num_tokens = e->sample ? accepted + 1 : 0, .tokens = tokens,
                       .num_accepted = acc};
    ASSERT_OK(f->ctx, kvrt_sched_commit(f->sched, &c));
    return plan;
}

Test(sched_spec, engine_drafts_get_slots_and_accepted_ones_are_kept)
{
    fixture_t f = open_fixture(4, false, 8192);
    int32_t prompt[6] = {1, 2, 3, 4, 5, 6};
    kvrt_seq_id_t id = add(&f, prompt, 6, 50);
    step_one(&f, 0, 10);
    int32_t draft[4] = {11, 12, 13, 14};
    ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, draft, 4));
    const kvrt_batch_plan_t *plan = step_one(&f, 4, 15);
    const kvrt_plan_seq_t *e = &plan->seqs[0];
    cr_assert_eq(e->kind, KVRT_PLAN_SPEC);
    cr_assert_eq(e->num_drafts, 4);
    cr_assert_eq(e->num_new_tokens, 5);
    cr_assert_eq(e->num_computed_tokens, 6);
    cr_assert_eq(plan->input_tokens[0], 10);
    cr_assert_eq(plan->input_tokens[4], 14);
    cr_assert_eq(plan->positions[4], 10);
    cr_assert_eq(plan->num_draft_tokens, 4);
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.output_tokens, 6);
    cr_assert_eq(info.computed_tokens, 11);
    cr_assert_eq(info.output[5], 15);
    cr_assert_eq(info.spec_accepted, 4);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.spec_proposed, 4);
    cr_assert_eq(st.spec_verifications, 1);
    cr_assert_float_eq(st.spec_mean_accepted, 4.0, 1e-9);
    /* A draft is consumed by the step that used it. */
    plan = step_one(&f, 0, 16);
    cr_assert_eq(plan->seqs[0].kind, KVRT_PLAN_DECODE);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, id));
    uint32_t n;
    kvrt_seq_info_t ev[1];
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 1, &n));
    close_fixture(&f);
}

typedef struct snapshot {
    uint32_t computed, table_tokens, table_blocks, used, cached;
    uint64_t inserts, cache_blocks;
    int32_t output[64];
    uint32_t outputs;
} snapshot_t;

static snapshot_t snap(fixture_t *f, kvrt_seq_id_t id)
{
    snapshot_t s = {0};
    kvrt_seq_info_t info;
    ASSERT_OK(f->ctx, kvrt_seq_info(f->sched, id, &info));
    s.computed = info.computed_tokens;
    s.outputs = info.output_tokens;
    memcpy(s.output, info.output, info.output_tokens * sizeof(int32_t));
    ASSERT_OK(f->ctx, kvrt_seq_blocks(f->sched, id, NULL, &s.table_blocks, &s.table_tokens));
    kvrt_pool_info_t pi;
    ASSERT_OK(f->ctx, kvrt_pool_info(f->pool, &pi));
    s.used = pi.used_blocks;
    s.cached = pi.cached_blocks;
    kvrt_cache_stats_t cs;
    ASSERT_OK(f->ctx, kvrt_cache_stats(f->cache, &cs));
    s.inserts = cs.inserts;
    s.cache_blocks = cs.cached_blocks;
    return s;
}

static int32_t truth(uint32_t i) { return (int32_t)(100 + (i * 7) % 13); }

Test(sched_spec, rollback_is_as_if_rejected_drafts_never_existed)
{
    fixture_t a = open_fixture(4, false, 8192); /* speculates, rejects a lot */
    fixture_t b = open_fixture(0, false, 8192); /* plain decoding */
    int32_t prompt[7] = {9, 8, 7, 6, 5, 4, 3};
    kvrt_seq_id_t ida = add(&a, prompt, 7, 40), idb = add(&b, prompt, 7, 40);
    uint32_t out_a = 0, out_b = 0;
    step_one(&a, 0, truth(out_a++));
    step_one(&b, 0, truth(out_b++));
    uint64_t rng = 77;
    for (int round = 0; round < 12; round++) {
        /* Drafts: the first `good` right, the rest wrong, accepted count
         * chosen so block boundaries are crossed and rolled back. */
        uint32_t d = 1 + test_rand_below(&rng, 4), good = test_rand_below(&rng, d + 1);
        int32_t draft[4];
        for (uint32_t j = 0; j < d; j++)
            draft[j] = j < good ? truth(out_a + j) : 999;
        ASSERT_OK(a.ctx, kvrt_seq_set_draft(a.sched, ida, draft, d));
        step_one(&a, good, truth(out_a + good));
        out_a += good + 1;
        while (out_b < out_a)
            step_one(&b, 0, truth(out_b++));
        snapshot_t sa = snap(&a, ida), sb = snap(&b, idb);
        cr_assert_eq(sa.outputs, sb.outputs);
        cr_assert_arr_eq(sa.output, sb.output, sa.outputs * sizeof(int32_t));
        cr_assert_eq(sa.computed, sb.computed, "round %d", round);
        cr_assert_eq(sa.table_tokens, sb.table_tokens, "round %d", round);
        cr_assert_eq(sa.table_blocks, sb.table_blocks, "round %d", round);
        /* Plus, at most, the one block that 4 rejected positions of 4
         * tokens per block can leave for the next tokens. */
        cr_assert(sa.used == sb.used || sa.used == sb.used + 1,
                  "round %d: %u vs %u used blocks", round, sa.used, sb.used);
        cr_assert_eq(sa.inserts, sb.inserts, "round %d: cache inserts", round);
        cr_assert_eq(sa.cache_blocks, sb.cache_blocks);
        ASSERT_OK(a.ctx, kvrt_pool_verify(a.pool));
    }
    /* The rejected token (999) never reached a's cache: the true sequence is
     * matched in full, and in a's cache exactly as in b's. */
    int32_t seq[7 + 64];
    memcpy(seq, prompt, sizeof(prompt));
    for (uint32_t i = 0; i < out_a; i++)
        seq[7 + i] = truth(i);
    int32_t blocks[32];
    kvrt_cache_match_t ma, mb;
    ASSERT_OK(a.ctx, kvrt_cache_match(a.cache, seq, 7 + out_a, NULL, 32, blocks, NULL, &ma));
    ASSERT_OK(a.ctx, kvrt_pool_free(a.pool, ma.num_blocks, blocks));
    ASSERT_OK(b.ctx, kvrt_cache_match(b.cache, seq, 7 + out_a, NULL, 32, blocks, NULL, &mb));
    ASSERT_OK(b.ctx, kvrt_pool_free(b.pool, mb.num_blocks, blocks));
    cr_assert_eq(ma.num_blocks, mb.num_blocks);
    cr_assert_eq(ma.num_tokens, (snap(&a, ida).computed / 4) * 4);
    kvrt_seq_abort(a.sched, ida);
    kvrt_seq_abort(b.sched, idb);
    uint32_t n;
    kvrt_seq_info_t ev[1];
    ASSERT_OK(a.ctx, kvrt_sched_drain_ended(a.sched, ev, 1, &n));
    ASSERT_OK(b.ctx, kvrt_sched_drain_ended(b.sched, ev, 1, &n));
    close_fixture(&a);
    close_fixture(&b);
}

/* Entry 0's row in the plan, and the blocks its CSR table lists. */
static const int32_t *row0(const kvrt_batch_plan_t *plan, uint32_t *csr_blocks)
{
    *csr_blocks = (uint32_t)(plan->block_table_offsets[1] - plan->block_table_offsets[0]);
    return plan->block_rows + (size_t)plan->seqs[0].row * plan->row_stride;
}

Test(sched_spec, a_rolled_back_draft_keeps_its_block_for_the_next_tokens)
{
    fixture_t f = open_fixture(4, false, 8192); /* 4 tokens per block */
    int32_t prompt[6] = {1, 2, 3, 4, 5, 6};
    kvrt_seq_id_t id = add(&f, prompt, 6, 50);
    step_one(&f, 0, 10); /* 6 computed, 7 tokens */
    int32_t draft[4] = {11, 12, 13, 14};
    ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, draft, 4));
    /* Positions 6..10: blocks 1 and 2. All drafts rejected: 7 computed. */
    uint32_t csr;
    const kvrt_batch_plan_t *plan = step_one(&f, 0, 20);
    const int32_t *row = row0(plan, &csr);
    const int32_t kept = row[2];
    cr_assert_neq(kept, KVRT_NULL_BLOCK);
    cr_assert_eq(csr, 3);
    snapshot_t s = snap(&f, id);
    cr_assert_eq(s.computed, 7);
    cr_assert_eq(s.table_tokens, 7);
    cr_assert_eq(s.table_blocks, 2, "the view lists the blocks of the request's tokens");
    cr_assert_eq(s.used, 3, "the rejected positions' block stays with the request");
    /* Position 7 goes back into block 1; the kept block is not in the
     * CSR table, which lists the blocks of the planned tokens. */
    plan = step_one(&f, 0, 21);
    row = row0(plan, &csr);
    cr_assert_eq(plan->slot_mapping[0], (int64_t)row[1] * 4 + 3);
    cr_assert_eq(row[2], kept, "the row still shows the kept block");
    cr_assert_eq(csr, 2);
    cr_assert_eq(plan->seq_lens[0], 8);
    /* Position 8 is the kept block's first slot: no block taken. */
    plan = step_one(&f, 0, 22);
    row = row0(plan, &csr);
    cr_assert_eq(plan->slot_mapping[0], (int64_t)kept * 4);
    cr_assert_eq(csr, 3);
    cr_assert_eq(plan->block_table_ids[2], kept);
    cr_assert_eq(snap(&f, id).used, 3);
    /* Drafts again, through the kept block into a new one: positions
     * 9..13; accepted in full, the table catches up with the plan. */
    ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, draft, 4));
    plan = step_one(&f, 4, 23);
    row = row0(plan, &csr);
    for (uint32_t k = 0; k < 5; k++)
        cr_assert_eq(plan->slot_mapping[k], (int64_t)row[(9 + k) / 4] * 4 + (9 + k) % 4);
    cr_assert_eq(row[2], kept);
    s = snap(&f, id);
    cr_assert_eq(s.computed, 14);
    cr_assert_eq(s.table_tokens, 14);
    cr_assert_eq(s.table_blocks, 4);
    cr_assert_eq(s.used, 4);
    ASSERT_OK(f.ctx, kvrt_pool_verify(f.pool));
    /* Ending frees the kept blocks with the rest. */
    ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, draft, 4));
    step_one(&f, 0, 24);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, id));
    uint32_t n;
    kvrt_seq_info_t ev[1];
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 1, &n));
    close_fixture(&f);
}

/* The drafts a plan entry carries (empty for a plain decode). */
static uint32_t planned_drafts(const kvrt_batch_plan_t *plan, kvrt_seq_id_t id, int32_t *out)
{
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        if (plan->seqs[i].id == id) {
            const kvrt_plan_seq_t *e = &plan->seqs[i];
            memcpy(out, plan->input_tokens + plan->query_start_loc[i] + 1,
                   e->num_drafts * sizeof(int32_t));
            return e->num_drafts;
        }
    cr_assert_fail("request not planned");
    return 0;
}

/* Commits plan with one token per entry (every draft rejected), then
 * aborts the requests, drains them and closes f: nothing may leak. */
static void commit_and_close(fixture_t *f, const kvrt_batch_plan_t *plan,
                             const kvrt_seq_id_t *ids, uint32_t num_ids)
{
    int32_t tokens[16];
    uint32_t none[16] = {0};
    cr_assert_leq(plan->num_seqs, 16);
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        tokens[i] = 70 + (int32_t)i;
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = plan->step,
                       .num_seqs = plan->num_seqs, .num_tokens = plan->num_seqs,
                       .tokens = tokens, .num_accepted = none};
    ASSERT_OK(f->ctx, kvrt_sched_commit(f->sched, &c));
    for (uint32_t r = 0; r < num_ids; r++)
        kvrt_seq_abort(f->sched, ids[r]);
    uint32_t n;
    kvrt_seq_info_t ev[16];
    ASSERT_OK(f->ctx, kvrt_sched_drain_ended(f->sched, ev, 16, &n));
    close_fixture(f);
}

/* The scene of the two tests below, on a pool of `blocks` blocks of 4
 * tokens: A (4 tokens) and B (7) run their prompts, then both speculate 4
 * drafts; A rejects all of them and keeps the block past its tokens (its
 * third, returned in *kept), B accepts all. A holds 3 blocks, B 3. */
static kvrt_sched_t *kept_block_scene(kvrt_ctx_t *ctx, kvrt_pool_t *pool,
                                      kvrt_sched_params_t sp, kvrt_seq_id_t ids[2],
                                      int32_t *kept)
{
    sp.field_mask |= KVRT_SCHED_PARAM_DRAFT;
    sp.max_draft_tokens = 4;
    kvrt_sched_t *sched;
    ASSERT_OK(ctx, kvrt_sched_create(ctx, pool, NULL, &sp, &sched));
    static const int32_t prompt_a[4] = {1, 2, 3, 4}, prompt_b[7] = {11, 12, 13, 14, 15, 16, 17};
    kvrt_seq_params_t pa = {.prompt = prompt_a, .prompt_len = 4, .max_new_tokens = 12};
    kvrt_seq_params_t pb = {.prompt = prompt_b, .prompt_len = 7, .max_new_tokens = 9};
    ASSERT_OK(ctx, kvrt_seq_add(sched, &pa, &ids[0]));
    ASSERT_OK(ctx, kvrt_seq_add(sched, &pb, &ids[1]));
    /* Step 1: both prompts (1 + 2 blocks). */
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(ctx, kvrt_sched_step(sched, 0, &plan));
    cr_assert_eq(plan->num_seqs, 2);
    int32_t first[2] = {5, 18};
    kvrt_commit_t c = {.step = plan->step, .num_seqs = 2, .num_tokens = 2, .tokens = first};
    ASSERT_OK(ctx, kvrt_sched_commit(sched, &c));
    /* Step 2: 4 drafts each. A (positions 4-8) takes 2 blocks and rejects
     * them all; B (7-11) takes 1 and accepts them all. */
    uint32_t four[2] = {4, 4};
    int32_t drafts[8] = {6, 7, 8, 9, 19, 20, 21, 22};
    ASSERT_OK(ctx, kvrt_sched_set_drafts(sched, 2, ids, four, drafts));
    ASSERT_OK(ctx, kvrt_sched_step(sched, 1, &plan));
    cr_assert_eq(plan->num_seqs, 2);
    cr_assert_eq(plan->seqs[0].id, ids[0]);
    uint32_t accepted[2] = {0, 4};
    int32_t tokens[6] = {60, 19, 20, 21, 22, 23};
    c = (kvrt_commit_t){.field_mask = KVRT_COMMIT_ACCEPTED, .step = plan->step, .num_seqs = 2,
                        .num_tokens = 6, .tokens = tokens, .num_accepted = accepted};
    ASSERT_OK(ctx, kvrt_sched_commit(sched, &c));
    *kept = plan->block_rows[(size_t)plan->seqs[0].row * plan->row_stride + 2];
    cr_assert_neq(*kept, KVRT_NULL_BLOCK, "A keeps the block its rejected drafts took");
    return sched;
}

/* Aborts the scene's n requests; every block is back and the pool sound. */
static void close_kept_block_scene(kvrt_ctx_t *ctx, kvrt_pool_t *pool, kvrt_sched_t *sched,
                                   const kvrt_seq_id_t *ids, uint32_t n)
{
    for (uint32_t r = 0; r < n; r++)
        ASSERT_OK(ctx, kvrt_seq_abort(sched, ids[r]));
    uint32_t ended;
    kvrt_seq_info_t ev[4];
    ASSERT_OK(ctx, kvrt_sched_drain_ended(sched, ev, 4, &ended));
    cr_assert_eq(ended, n);
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.used_blocks, 0);
    kvrt_sched_destroy(sched);
    kvrt_pool_destroy(pool);
    kvrt_ctx_destroy(ctx);
}

/* Blocks that only rejected drafts used go back to the pool before any
 * request is preempted for want of blocks: A rolls its drafts back and
 * keeps a block past its tokens; B, the latest arrival (the victim), then
 * needs a block from a pool with none free, and gets A's instead of being
 * preempted. */
Test(sched_spec, kept_blocks_go_back_before_anyone_is_preempted)
{
    kvrt_ctx_t *ctx;
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    kvrt_pool_t *pool = test_pool(ctx, 7, 4); /* 6 blocks of 4 tokens */
    kvrt_seq_id_t ids[2];
    int32_t kept;
    kvrt_sched_t *sched = kept_block_scene(ctx, pool, (kvrt_sched_params_t){0}, ids, &kept);
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.used_blocks, 6);
    cr_assert_eq(info.free_blocks, 0);
    const kvrt_batch_plan_t *plan;
    kvrt_commit_t c;
    /* Step 3: A decodes inside its tail block; B crosses into position 12
     * with no block free. */
    ASSERT_OK(ctx, kvrt_sched_step(sched, 2, &plan));
    cr_assert_eq(plan->num_preempted, 0, "a kept block was free to give");
    cr_assert_eq(plan->num_seqs, 2);
    const kvrt_plan_seq_t *b = &plan->seqs[1];
    cr_assert_eq(b->id, ids[1]);
    cr_assert_eq(b->num_computed_tokens, 12);
    cr_assert_eq(plan->slot_mapping[plan->query_start_loc[1]], (int64_t)kept * 4,
                 "B's position 12 is in the block A gave back");
    const int32_t *row_a = plan->block_rows + (size_t)plan->seqs[0].row * plan->row_stride;
    cr_assert_eq(row_a[2], KVRT_NULL_BLOCK, "A's row no longer names it");
    uint32_t nb, nt;
    ASSERT_OK(ctx, kvrt_seq_blocks(sched, ids[0], NULL, &nb, &nt));
    cr_assert_eq(nb, 2);
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    /* A goes on as if its drafts had never been: its next token lands in
     * its own tail block, and blocks run out again only when it crosses. */
    int32_t bonus[2] = {61, 24};
    c = (kvrt_commit_t){.step = plan->step, .num_seqs = 2, .num_tokens = 2, .tokens = bonus};
    ASSERT_OK(ctx, kvrt_sched_commit(sched, &c));
    kvrt_seq_info_t sa;
    ASSERT_OK(ctx, kvrt_seq_info(sched, ids[0], &sa));
    cr_assert_eq(sa.computed_tokens, 6);
    cr_assert_eq(sa.output_tokens, 3);
    cr_assert_eq(sa.output[1], 60);
    cr_assert_eq(sa.output[2], 61);
    close_kept_block_scene(ctx, pool, sched, ids, 2);
}

/* Blocks that only rejected drafts used go back before K/V that arrived
 * for a queued request: those hold nothing anyone computed, the arrived
 * K/V (no prefix cache here) would be lost and arrive or be computed
 * again. As above, with L queued (max_seqs 2) holding 2 arrived blocks and
 * the pool full when B crosses. */
Test(sched_spec, kept_blocks_go_back_before_queued_arrived_kv)
{
    kvrt_ctx_t *ctx;
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    kvrt_pool_t *pool = test_pool(ctx, 9, 4); /* 8 blocks of 4 tokens */
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_SEQS | KVRT_SCHED_PARAM_WATERMARK,
                              .max_seqs = 2, .use_watermark = 0};
    kvrt_seq_id_t ids[3];
    int32_t kept;
    kvrt_sched_t *sched = kept_block_scene(ctx, pool, sp, ids, &kept);
    int32_t prompt_l[9] = {31, 32, 33, 34, 35, 36, 37, 38, 39};
    kvrt_seq_params_t pl = {.prompt = prompt_l, .prompt_len = 9, .max_new_tokens = 2};
    ASSERT_OK(ctx, kvrt_seq_add(sched, &pl, &ids[2]));
    kvrt_arrival_params_t ap = {.num_tokens = 8};
    kvrt_arrival_id_t arrival;
    uint32_t first_block, count;
    ASSERT_OK(ctx, kvrt_seq_await_kv(sched, ids[2], &ap, &arrival, &first_block, &count));
    ASSERT_OK(ctx, kvrt_arrival_complete(sched, arrival, count));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.free_blocks, 0, "A 3 (one kept), B 3, L 2 arrived");
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(ctx, kvrt_sched_step(sched, 2, &plan));
    cr_assert_eq(plan->num_preempted, 0);
    cr_assert_eq(plan->num_seqs, 2);
    cr_assert_eq(plan->slot_mapping[plan->query_start_loc[1]], (int64_t)kept * 4,
                 "B's position 12 is in the block A gave back");
    kvrt_seq_info_t li;
    ASSERT_OK(ctx, kvrt_seq_info(sched, ids[2], &li));
    cr_assert_eq(li.state, KVRT_SEQ_WAITING);
    cr_assert_eq(li.computed_tokens, 8, "L's arrived K/V was given up before A's kept block");
    int32_t bonus[2] = {61, 24};
    kvrt_commit_t c = {.step = plan->step, .num_seqs = 2, .num_tokens = 2, .tokens = bonus};
    ASSERT_OK(ctx, kvrt_sched_commit(sched, &c));
    close_kept_block_scene(ctx, pool, sched, ids, 3);
}

/* Adds n (<= 16) requests of the same prompt and runs their prefill step:
 * each samples its first token, 7, and decodes from then on. */
static void add_and_prefill(fixture_t *f, const int32_t *prompt, uint32_t len,
                            uint32_t max_new, kvrt_seq_id_t *ids, uint32_t n)
{
    cr_assert_leq(n, 16);
    for (uint32_t r = 0; r < n; r++)
        ids[r] = add(f, prompt, len, max_new);
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, 0, &plan));
    cr_assert_eq(plan->num_seqs, n);
    int32_t first[16];
    for (uint32_t r = 0; r < n; r++)
        first[r] = 7;
    kvrt_commit_t c = {.step = plan->step, .num_seqs = n, .num_tokens = n, .tokens = first};
    ASSERT_OK(f->ctx, kvrt_sched_commit(f->sched, &c));
}

Test(sched_spec, set_drafts_for_many_requests_is_all_or_nothing)
{
    fixture_t f = open_fixture(4, false, 8192);
    int32_t prompt[3] = {1, 2, 3};
    kvrt_seq_id_t id[3];
    add_and_prefill(&f, prompt, 3, 20, id, 3);
    const kvrt_batch_plan_t *plan;
    /* Request 0 gets drafts; then a call naming 0 and 1 fails on 1's
     * negative token, another on an unknown id: 0 keeps its drafts, 1 has
     * none. */
    uint32_t two[2] = {2, 2};
    int32_t first[2] = {11, 12};
    ASSERT_OK(f.ctx, kvrt_sched_set_drafts(f.sched, 1, id, two, first));
    int32_t bad[4] = {21, 22, 31, -1};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_set_drafts(f.sched, 2, id, two, bad));
    kvrt_seq_id_t unknown[2] = {id[1], id[2] + 0x200000000ull};
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST,
                  kvrt_sched_set_drafts(f.sched, 2, unknown, two, bad));
    /* Refused at its last entry, a call that named 1 twice and cleared 0
     * (count 0) leaves both as they were. */
    kvrt_seq_id_t mixed[4] = {id[1], id[1], id[0], id[2] + 0x200000000ull};
    uint32_t mixed_counts[4] = {2, 1, 0, 1};
    int32_t mixed_tokens[4] = {61, 62, 63, 64};
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST,
                  kvrt_sched_set_drafts(f.sched, 4, mixed, mixed_counts, mixed_tokens));
    /* Request 2 is named twice: the later drafts win, as with two calls. */
    kvrt_seq_id_t twice[2] = {id[2], id[2]};
    uint32_t counts[2] = {3, 1};
    int32_t tokens[4] = {41, 42, 43, 51};
    ASSERT_OK(f.ctx, kvrt_sched_set_drafts(f.sched, 2, twice, counts, tokens));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &plan));
    int32_t got[4];
    cr_assert_eq(planned_drafts(plan, id[0], got), 2);
    cr_assert_eq(got[0], 11);
    cr_assert_eq(got[1], 12);
    cr_assert_eq(planned_drafts(plan, id[1], got), 0, "a refused call set no drafts");
    cr_assert_eq(planned_drafts(plan, id[2], got), 1);
    cr_assert_eq(got[0], 51);
    commit_and_close(&f, plan, id, 3);
}

/* A refused call names its first bad entry, whichever check it fails:
 * a negative draft before an unknown id is the one reported. */
Test(sched_spec, a_refused_set_drafts_names_its_first_bad_entry)
{
    fixture_t f = open_fixture(4, false, 8192);
    int32_t prompt[3] = {1, 2, 3};
    kvrt_seq_id_t id[3];
    add_and_prefill(&f, prompt, 3, 20, id, 3);
    const kvrt_seq_id_t gone = id[2] + 0x200000000ull;
    uint32_t counts[3] = {1, 1, 1};
    int32_t negative_second[3] = {5, -3, 6};
    kvrt_seq_id_t ids[3] = {id[0], id[1], gone};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_sched_set_drafts(f.sched, 3, ids, counts, negative_second));
    cr_assert(strstr(kvrt_ctx_last_error(f.ctx), "entry 1:") != NULL, "%s",
              kvrt_ctx_last_error(f.ctx));
    int32_t negative_third[3] = {5, 6, -3};
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST,
                  kvrt_sched_set_drafts(f.sched, 3, ids, counts, negative_third));
    cr_assert(strstr(kvrt_ctx_last_error(f.ctx), "entry 2:") != NULL, "%s",
              kvrt_ctx_last_error(f.ctx));
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &plan));
    int32_t got[4];
    for (int i = 0; i < 3; i++)
        cr_assert_eq(planned_drafts(plan, id[i], got), 0, "a refused call set no drafts");
    commit_and_close(&f, plan, id, 3);
}

Test(sched_spec, drafts_that_come_with_the_commit_are_the_next_steps)
{
    fixture_t f = open_fixture(4, false, 8192);
    int32_t prompt[3] = {1, 2, 3};
    kvrt_seq_id_t id[3];
    id[0] = add(&f, prompt, 3, 20);
    id[1] = add(&f, prompt, 3, 20);
    id[2] = add(&f, prompt, 3, 1); /* ends at its first token */
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &plan));
    for (int r = 0; r < 3; r++)
        cr_assert_eq(plan->seqs[r].id, id[r], "prefills in arrival order");
    int32_t bonus[3] = {7, 8, 9};
    uint32_t counts[3] = {2, 0, 3};
    int32_t next[5] = {11, 12, 31, 32, 33};
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_DRAFTS, .step = plan->step, .num_seqs = 3,
                       .num_tokens = 3, .tokens = bonus, .num_next_drafts = counts,
                       .next_drafts = next};
    /* Refused whole, each time with nothing changed. */
    counts[2] = 5;
    ASSERT_STATUS(KVRT_ERR_TOKEN_COUNT, kvrt_sched_commit(f.sched, &c)); /* 5 > 4 */
    counts[2] = 3;
    next[3] = -1;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_commit(f.sched, &c));
    next[3] = 32;
    c.next_drafts = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_commit(f.sched, &c));
    c.next_drafts = next;
    c.num_next_drafts = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_commit(f.sched, &c));
    c.num_next_drafts = counts;
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id[0], &info));
    cr_assert_eq(info.output_tokens, 0, "a refused commit changed a request");
    /* Request 2 ends at this commit: its drafts are dropped. */
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &plan));
    cr_assert_eq(plan->num_seqs, 2);
    int32_t got[4];
    cr_assert_eq(planned_drafts(plan, id[0], got), 2);
    cr_assert_eq(got[0], 11);
    cr_assert_eq(got[1], 12);
    cr_assert_eq(planned_drafts(plan, id[1], got), 0);
    /* Accept request 0's first draft; the commit gives 1 its drafts. */
    uint32_t acc[2] = {1, 0}, counts2[2] = {0, 1};
    int32_t tokens2[3] = {11, 50, 60}, next2[1] = {61};
    c = (kvrt_commit_t){.field_mask = KVRT_COMMIT_ACCEPTED | KVRT_COMMIT_DRAFTS,
                        .step = plan->step, .num_seqs = 2, .num_tokens = 3, .tokens = tokens2,
                        .num_accepted = acc, .num_next_drafts = counts2, .next_drafts = next2};
    if (plan->seqs[0].id != id[0]) { /* plan order */
        acc[0] = 0;
        acc[1] = 1;
        counts2[0] = 1;
        counts2[1] = 0;
        tokens2[0] = 60;
        tokens2[1] = 11;
        tokens2[2] = 50;
    }
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id[0], &info));
    cr_assert_eq(info.output_tokens, 3);
    cr_assert_eq(info.output[2], 50);
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &plan));
    cr_assert_eq(planned_drafts(plan, id[0], got), 0, "consumed by the step that used them");
    cr_assert_eq(planned_drafts(plan, id[1], got), 1);
    cr_assert_eq(got[0], 61);
    commit_and_close(&f, plan, id, 3); /* 2 already ended */
}

Test(sched_spec, next_drafts_on_a_chunk_that_samples_nothing_or_without_speculation_are_refused)
{
    fixture_t f = open_fixture(4, false, 4); /* 4 tokens a step: chunked prefill */
    int32_t prompt[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    kvrt_seq_id_t id = add(&f, prompt, 10, 5);
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &plan));
    cr_assert_eq(plan->seqs[0].sample, 0);
    uint32_t counts[1] = {1};
    int32_t next[1] = {5};
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_DRAFTS, .step = plan->step, .num_seqs = 1,
                       .num_tokens = 0, .num_next_drafts = counts, .next_drafts = next};
    ASSERT_STATUS(KVRT_ERR_TOKEN_COUNT, kvrt_sched_commit(f.sched, &c));
    counts[0] = 0;
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    kvrt_seq_abort(f.sched, id);
    uint32_t n;
    kvrt_seq_info_t ev[1];
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 1, &n));
    close_fixture(&f);

    fixture_t off = open_fixture(0, false, 8192); /* speculation off */
    id = add(&off, prompt, 3, 5);
    ASSERT_OK(off.ctx, kvrt_sched_step(off.sched, 0, &plan));
    counts[0] = 1;
    int32_t bonus[1] = {4};
    c = (kvrt_commit_t){.field_mask = KVRT_COMMIT_DRAFTS, .step = plan->step, .num_seqs = 1,
                        .num_tokens = 1, .tokens = bonus, .num_next_drafts = counts,
                        .next_drafts = next};
    ASSERT_STATUS(KVRT_ERR_UNSUPPORTED, kvrt_sched_commit(off.sched, &c));
    counts[0] = 0;
    ASSERT_OK(off.ctx, kvrt_sched_commit(off.sched, &c));
    kvrt_seq_abort(off.sched, id);
    ASSERT_OK(off.ctx, kvrt_sched_drain_ended(off.sched, ev, 1, &n));
    close_fixture(&off);
}

Test(sched_spec, ngram_proposer_continues_the_latest_longest_match)
{
    fixture_t f = open_fixture(3, true, 8192);
    /* ... 7 8 9 | 1 2 3 4 5 | 7 8 9 | 6 6 | 7 8 -> the suffix "7 8" matches
     * at two places; the latest is followed by 9 6 6. */
    int32_t prompt[] = {7, 8, 9, 1, 2, 3, 4, 5, 7, 8, 9, 6, 6, 7};
    kvrt_seq_id_t id = add(&f, prompt, sizeof(prompt) / sizeof(prompt[0]), 20);
    step_one(&f, 0, 8); /* prefill; sampled 8 */
    const kvrt_batch_plan_t *plan = step_one(&f, 3, 1);
    const kvrt_plan_seq_t *e = &plan->seqs[0];
    cr_assert_eq(e->kind, KVRT_PLAN_SPEC);
    cr_assert_eq(e->num_drafts, 3);
    cr_assert_eq(plan->input_tokens[0], 8);
    cr_assert_eq(plan->input_tokens[1], 9);
    cr_assert_eq(plan->input_tokens[2], 6);
    cr_assert_eq(plan->input_tokens[3], 6);
    /* Now "... 6 6 1": no earlier "6 1" or longer match: plain decode. */
    plan = step_one(&f, 0, 2);
    cr_assert_eq(plan->seqs[0].kind, KVRT_PLAN_DECODE);
    kvrt_seq_abort(f.sched, id);
    uint32_t n;
    kvrt_seq_info_t ev[1];
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 1, &n));
    close_fixture(&f);
}

Test(sched_spec, draft_length_adapts_to_acceptance)
{
    fixture_t f = open_fixture(4, false, 8192);
    int32_t prompt[3] = {1, 2, 3};
    kvrt_seq_id_t id = add(&f, prompt, 3, 200);
    step_one(&f, 0, 4);
    int32_t draft[4] = {50, 51, 52, 53};
    kvrt_seq_info_t info;
    for (int k = 0; k < 20; k++) {
        ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, draft, 4));
        step_one(&f, 0, 4);
    }
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.draft_length, 1, "never accepted: shrinks to 1, got %u",
                 info.draft_length);
    uint32_t longest = 0;
    for (int k = 0; k < 30; k++) {
        ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, draft, 4));
        const kvrt_batch_plan_t *plan = step_one(&f, UINT32_MAX, 0);
        if (plan->seqs[0].num_drafts > longest)
            longest = plan->seqs[0].num_drafts;
    }
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.draft_length, 4, "always accepted: grows back to k, got %u",
                 info.draft_length);
    cr_assert_eq(longest, 4);
    kvrt_seq_abort(f.sched, id);
    uint32_t n;
    kvrt_seq_info_t ev[1];
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 1, &n));
    close_fixture(&f);
}

/* The median draft length a request settles at when each draft is
 * accepted with chance p (given the ones before it were), over the last
 * 100 of 200 steps, with k drafts offered each step. */
static uint32_t settled_draft_length(double p, uint32_t k)
{
    fixture_t f = open_fixture_sized(k, false, 8192, 1024);
    int32_t prompt[3] = {1, 2, 3};
    kvrt_seq_id_t id = add(&f, prompt, 3, 4000);
    step_one(&f, 0, 4);
    int32_t draft[16];
    for (uint32_t j = 0; j < 16; j++)
        draft[j] = 50 + (int32_t)j;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    uint32_t counts[17] = {0};
    for (uint32_t step = 0; step < 200; step++) {
        ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, draft, k));
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &plan));
        const uint32_t d = plan->seqs[0].num_drafts;
        uint32_t a = 0;
        for (; a < d; a++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            if ((double)(rng >> 11) / 9007199254740992.0 >= p)
                break;
        }
        int32_t tokens[17];
        for (uint32_t j = 0; j < a; j++)
            tokens[j] = draft[j];
        tokens[a] = 4;
        kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = plan->step,
                           .num_seqs = 1, .num_tokens = a + 1, .tokens = tokens,
                           .num_accepted = &a};
        ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
        if (step >= 100)
            counts[d]++;
    }
    kvrt_seq_abort(f.sched, id);
    uint32_t n;
    kvrt_seq_info_t ev[1];
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 1, &n));
    close_fixture(&f);
    uint32_t median = 0;
    for (uint32_t seen = 0; seen + counts[median] < 50; median++)
        seen += counts[median];
    return median;
}

Test(sched_spec, draft_length_settles_where_the_next_draft_is_worth_verifying)
{
    /* Drafts accepted each with chance p: the longest length whose last
     * draft lands with chance p^j >= 1/4 is 2 at p = 0.57, 4 at 0.73, 6
     * at 0.8, 8 of 8 at 0.95. The estimate follows about the last five
     * verifications, so the length moves around it: its median over 100
     * steps is within one of it. Averaging the fraction of drafts accepted
     * instead read p = 0.73 and 0.8 low (a rejection ends the count early)
     * and settled at 2 and 3. */
    static const struct {
        double p;
        uint32_t expect;
    } cases[] = {{0.57, 2}, {0.73, 4}, {0.8, 6}, {0.95, 8}};
    for (uint32_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint32_t got = settled_draft_length(cases[i].p, 8);
        cr_assert(got + 1 >= cases[i].expect && got <= cases[i].expect + 1,
                  "p = %.2f: settled at %u drafts, expected %u", cases[i].p, got,
                  cases[i].expect);
    }
}

Test(sched_spec, drafts_back_off_when_the_budget_binds)
{
    fixture_t f = open_fixture(4, false, 24);
    kvrt_seq_id_t ids[8];
    for (int i = 0; i < 8; i++) {
        int32_t prompt[2] = {i, i + 1};
        ids[i] = add(&f, prompt, 2, 100);
    }
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &plan));
    int32_t tokens[64] = {0};
    kvrt_commit_t c = {.step = plan->step, .num_seqs = 8, .num_tokens = 8, .tokens = tokens};
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    int32_t draft[4] = {1, 2, 3, 4};
    for (int i = 0; i < 8; i++)
        ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, ids[i], draft, 4));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &plan));
    /* 8 decodes leave 16 tokens of slack: 2 drafts each, not 4. */
    cr_assert_eq(plan->num_seqs, 8);
    cr_assert_leq(plan->num_tokens, 24);
    for (uint32_t i = 0; i < 8; i++)
        cr_assert_eq(plan->seqs[i].num_drafts, 2);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.spec_backoff_tokens, 16);
    uint32_t acc[8] = {0};
    c = (kvrt_commit_t){.field_mask = KVRT_COMMIT_ACCEPTED, .step = plan->step, .num_seqs = 8,
                        .num_tokens = 8, .tokens = tokens, .num_accepted = acc};
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    for (int i = 0; i < 8; i++)
        kvrt_seq_abort(f.sched, ids[i]);
    uint32_t n;
    kvrt_seq_info_t ev[8];
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 8, &n));
    cr_assert_eq(n, 8);
    close_fixture(&f);
}

/* Every accepted draft is checked, at any position and whatever the
 * number of drafts (up to 4 and up to 8 are checked as vectors, more or
 * near the end of the tokens one by one): a wrong or negative one is
 * refused, nothing changes, and the right commit still goes through. */
Test(sched_spec, a_wrong_or_negative_accepted_draft_is_refused_at_any_position)
{
    fixture_t f = open_fixture(12, false, 8192);
    int32_t prompt[5] = {1, 2, 3, 4, 5};
    const uint32_t counts[3] = {12, 6, 3};
    kvrt_seq_id_t ids[3];
    add_and_prefill(&f, prompt, 5, 40, ids, 3);
    int32_t drafts[21];
    for (uint32_t k = 0; k < 21; k++)
        drafts[k] = 200 + (int32_t)k;
    ASSERT_OK(f.ctx, kvrt_sched_set_drafts(f.sched, 3, ids, counts, drafts));
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &plan));
    cr_assert_eq(plan->num_seqs, 3);
    /* All drafts accepted, then a bonus token: 24 tokens. */
    int32_t good[24];
    uint32_t acc[3], total = 0;
    for (uint32_t i = 0; i < 3; i++) {
        const kvrt_plan_seq_t *e = &plan->seqs[i];
        cr_assert_eq(e->kind, KVRT_PLAN_SPEC);
        acc[i] = e->num_drafts;
        const int32_t *planned = plan->input_tokens + plan->query_start_loc[i] + 1;
        for (uint32_t j = 0; j < e->num_drafts; j++)
            good[total++] = planned[j];
        good[total++] = 77;
    }
    cr_assert_eq(total, 24);
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = plan->step, .num_seqs = 3,
                       .num_tokens = total, .num_accepted = acc};
    int32_t bad[24];
    uint32_t refused = 0;
    for (uint32_t k = 0; k < total; k++) {
        for (int how = 0; how < 2; how++) {
            if (good[k] == 77 && how == 0)
                continue; /* the bonus token may be anything but negative */
            memcpy(bad, good, sizeof(bad));
            bad[k] = how ? -1 - (int32_t)k : good[k] + 1;
            c.tokens = bad;
            ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_commit(f.sched, &c));
            refused++;
        }
    }
    cr_assert_eq(refused, 21 * 2 + 3);
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, ids[0], &info));
    cr_assert_eq(info.output_tokens, 1, "refused commits changed nothing");
    c.tokens = good;
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.spec_verifications, 3);
    cr_assert_eq(st.spec_proposed, 21);
    cr_assert_eq(st.spec_accepted, 21);
    cr_assert_eq(st.spec_proposed_at[11], 1);
    cr_assert_eq(st.spec_proposed_at[5], 2);
    cr_assert_eq(st.spec_accepted_at[0], 3);
    for (uint32_t r = 0; r < 3; r++) {
        ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, ids[r], &info));
        cr_assert_eq(info.output_tokens, 2 + counts[r]);
        cr_assert_eq(info.spec_accepted, counts[r]);
        ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, ids[r]));
    }
    uint32_t n;
    kvrt_seq_info_t ev[3];
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 3, &n));
    close_fixture(&f);
}

/* Adds a request with stop tokens {42} (and min_tokens when nonzero),
 * prefills it (its first output 10), sets drafts, and commits them all
 * accepted with the bonus 42; returns its end event. */
static kvrt_seq_info_t stop_in_drafts(fixture_t *f, uint32_t min_tokens, const int32_t drafts[4])
{
    int32_t prompt[6] = {1, 2, 3, 4, 5, 6}, stop = 42;
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_STOP | KVRT_SEQ_PARAM_MIN_TOKENS,
                           .prompt = prompt, .prompt_len = 6, .max_new_tokens = 20,
                           .stop_tokens = &stop, .num_stop_tokens = 1,
                           .min_tokens = min_tokens};
    kvrt_seq_id_t id;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    step_one(f, 0, 10);
    ASSERT_OK(f->ctx, kvrt_seq_set_draft(f->sched, id, drafts, 4));
    const kvrt_batch_plan_t *plan = step_one(f, UINT32_MAX, 42);
    cr_assert_eq(plan->seqs[0].num_drafts, 4);
    kvrt_seq_info_t ev[1];
    uint32_t n;
    ASSERT_OK(f->ctx, kvrt_sched_drain_ended(f->sched, ev, 1, &n));
    cr_assert_eq(n, 1, "the stop among the accepted drafts ends the request");
    cr_assert_eq(ev[0].end_reason, KVRT_END_STOP);
    return ev[0];
}

Test(sched_spec, a_stop_among_accepted_drafts_ends_the_request_once_min_tokens_are_out)
{
    fixture_t f = open_fixture(4, false, 8192);
    /* min_tokens 2 (the request's own stop area): outputs 10, 42 (the 2nd
     * output: ignored), 42 (the 3rd: counts); nothing after it is kept. */
    const int32_t all_stops[4] = {42, 42, 42, 42};
    kvrt_seq_info_t e = stop_in_drafts(&f, 2, all_stops);
    cr_assert_eq(e.output_tokens, 3);
    cr_assert_eq(e.output[1], 42);
    cr_assert_eq(e.output[2], 42);
    /* No min_tokens (the shared set): the 2nd draft is the stop. */
    const int32_t second[4] = {5, 42, 7, 8};
    e = stop_in_drafts(&f, 0, second);
    cr_assert_eq(e.output_tokens, 3);
    cr_assert_eq(e.output[1], 5);
    cr_assert_eq(e.output[2], 42);
    close_fixture(&f);
}

Test(sched_spec, bad_speculative_calls_are_refused)
{
    fixture_t f = open_fixture(2, false, 8192);
    int32_t prompt[3] = {1, 2, 3}, draft[3] = {5, 6, 7};
    kvrt_seq_id_t id = add(&f, prompt, 3, 20);
    ASSERT_STATUS(KVRT_ERR_BAD_STATE, kvrt_seq_set_draft(f.sched, id, draft, 1));
    step_one(&f, 0, 4);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_set_draft(f.sched, id, draft, 3));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_set_draft(f.sched, id, NULL, 1));
    ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, draft, 2));
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &plan));
    int32_t tokens[4] = {5, 9, 8, 0};
    uint32_t acc[1] = {3};
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = plan->step, .num_seqs = 1,
                       .num_tokens = 4, .tokens = tokens, .num_accepted = acc};
    ASSERT_STATUS(KVRT_ERR_TOKEN_COUNT, kvrt_sched_commit(f.sched, &c)); /* 3 > 2 drafts */
    acc[0] = 2;
    c.num_tokens = 3;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_commit(f.sched, &c)); /* 9 != draft 6 */
    c.num_accepted = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_commit(f.sched, &c));
    c.num_accepted = acc;
    acc[0] = 1;
    c.num_tokens = 2;
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.output_tokens, 3);
    cr_assert_eq(info.computed_tokens, 5);
    cr_assert_eq(info.output[1], 5);
    cr_assert_eq(info.output[2], 9);
    kvrt_seq_abort(f.sched, id);
    uint32_t n;
    kvrt_seq_info_t ev[1];
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 1, &n));
    close_fixture(&f);
}
