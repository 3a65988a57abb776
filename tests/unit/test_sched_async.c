/*
 * test_sched_async.c - asynchronous scheduling (max_plans_in_flight 2):
 * the step of N+1 before the commit of N plans one placeholder token per
 * decoding sequence of N, commits apply in order, a request that ends in N
 * is dropped from N+1 cleanly, and a randomized engine running two plans in
 * flight produces exactly the outputs of a synchronous one, both
 * speculating with drafts their commits carry (rejected ones rolled back).
 */
#include <string.h>

#include "sched_fixture.h"

typedef sched_fixture_t fixture_t;

static fixture_t open_async(uint32_t blocks, uint32_t tpb, kvrt_sched_params_t *p)
{
    kvrt_sched_params_t base = {0};
    if (!p)
        p = &base;
    p->field_mask |= KVRT_SCHED_PARAM_PLANS_IN_FLIGHT;
    p->max_plans_in_flight = 2;
    return sched_fixture_open(blocks, tpb, false, p);
}

static kvrt_seq_id_t add(fixture_t *f, uint32_t prompt_len, uint32_t max_new, int32_t stop)
{
    int32_t prompt[256];
    cr_assert_leq(prompt_len, 256);
    for (uint32_t i = 0; i < prompt_len; i++)
        prompt[i] = 100 + (int32_t)i;
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = prompt_len,
                           .max_new_tokens = max_new};
    if (stop >= 0) {
        p.field_mask = KVRT_SEQ_PARAM_STOP;
        p.stop_tokens = &stop;
        p.num_stop_tokens = 1;
    }
    kvrt_seq_id_t id = 0;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    return id;
}

#define drain sched_fixture_drain

/* Destroying the scheduler frees what running requests hold; then the
 * fixture checks that nothing leaked. */
static void close_running(fixture_t *f)
{
    kvrt_sched_destroy(f->sched);
    f->sched = NULL;
    sched_fixture_close(f);
}

Test(sched_async, step_before_commit_plans_a_placeholder_decode)
{
    fixture_t f = open_async(64, 4, NULL);
    kvrt_seq_id_t id = add(&f, 10, 8, -1);
    const kvrt_batch_plan_t *p1, *p2;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &p1));
    cr_assert_eq(p1->num_seqs, 1);
    cr_assert_eq(p1->seqs[0].kind, KVRT_PLAN_PREFILL);
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &p2));
    cr_assert_neq(p1, p2, "two plans in flight are two distinct plans");
    cr_assert_eq(p2->step, p1->step + 1);
    cr_assert_eq(p2->num_seqs, 1);
    cr_assert_eq(p2->seqs[0].id, id);
    cr_assert_eq(p2->seqs[0].kind, KVRT_PLAN_DECODE);
    cr_assert_eq(p2->seqs[0].num_computed_tokens, 10, "as if plan 1 had committed");
    cr_assert_eq(p2->seq_lens[0], 11);
    cr_assert_eq(p2->input_tokens[0], KVRT_TOKEN_PLACEHOLDER);
    cr_assert_eq(p2->positions[0], 10);
    const int32_t *row = p2->block_rows + (size_t)p2->seqs[0].row * p2->row_stride;
    cr_assert_eq(p2->slot_mapping[0], (int64_t)row[2] * 4 + 2, "the slot after plan 1's");
    /* Plan 1 is intact while plan 2 exists. */
    cr_assert_eq(p1->num_tokens, 10);
    cr_assert_eq(p1->input_tokens[0], 100);

    sched_fixture_commit(&f, p1, 7);
    sched_fixture_commit(&f, p2, 8);
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.output_tokens, 2);
    cr_assert_eq(info.computed_tokens, 11);
    cr_assert_eq(info.output[0], 7);
    cr_assert_eq(info.output[1], 8);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, id));
    kvrt_seq_info_t ev[2];
    cr_assert_eq(drain(&f, ev, 2), 1);
    sched_fixture_close(&f);
}

Test(sched_async, a_third_plan_in_flight_is_refused_without_change)
{
    fixture_t f = open_async(64, 4, NULL);
    add(&f, 6, 8, -1);
    const kvrt_batch_plan_t *p1, *p2, *p3 = NULL;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &p1));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &p2));
    uint32_t used = sched_fixture_used_blocks(&f);
    ASSERT_STATUS(KVRT_ERR_BAD_STATE, kvrt_sched_step(f.sched, 3, &p3));
    cr_assert_null(p3);
    cr_assert_eq(sched_fixture_used_blocks(&f), used);
    sched_fixture_commit(&f, p1, 1);
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 3, &p3));
    cr_assert_eq(p3->step, p2->step + 1);
    cr_assert_eq(p3->positions[0], 7, "two placeholders ahead: 6 + 1");
    sched_fixture_commit(&f, p2, 2);
    sched_fixture_commit(&f, p3, 3);
    close_running(&f);
}

Test(sched_async, commits_apply_in_step_order)
{
    fixture_t f = open_async(64, 4, NULL);
    add(&f, 6, 8, -1);
    const kvrt_batch_plan_t *p1, *p2;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &p1));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &p2));
    int32_t tok = 5;
    kvrt_commit_t c = {.step = p2->step, .num_seqs = 1, .num_tokens = 1, .tokens = &tok};
    ASSERT_STATUS(KVRT_ERR_NO_STEP, kvrt_sched_commit(f.sched, &c));
    /* The refused commit changed nothing: plan 1 then plan 2 still commit. */
    sched_fixture_commit(&f, p1, 1);
    sched_fixture_commit(&f, p2, 2);
    ASSERT_STATUS(KVRT_ERR_NO_STEP, kvrt_sched_commit(f.sched, &c));
    close_running(&f);
}

Test(sched_async, request_ended_in_n_is_dropped_from_n_plus_1)
{
    fixture_t f = open_async(64, 4, NULL);
    kvrt_seq_id_t a = add(&f, 6, 20, 99);
    kvrt_seq_id_t b = add(&f, 6, 20, 99);
    const kvrt_batch_plan_t *p1, *p2, *p3;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &p1));
    cr_assert_eq(p1->num_seqs, 2);
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &p2));
    cr_assert_eq(p2->num_seqs, 2);
    /* a samples its stop token in plan 1; b goes on. */
    int32_t toks[2] = {99, 5};
    cr_assert_eq(p1->seqs[0].id, a);
    kvrt_commit_t c = {.step = p1->step, .num_seqs = 2, .num_tokens = 2, .tokens = toks};
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    kvrt_seq_info_t ev[4];
    cr_assert_eq(drain(&f, ev, 4), 1);
    cr_assert_eq(ev[0].id, a);
    cr_assert_eq(ev[0].end_reason, KVRT_END_STOP);
    cr_assert_eq(ev[0].output_tokens, 1);
    /* Plan 2 still holds a: its blocks stay until plan 2 commits. */
    uint32_t used_in_flight = sched_fixture_used_blocks(&f);
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 3, &p3));
    cr_assert_eq(p3->num_seqs, 1, "the ended request is not planned again");
    cr_assert_eq(p3->seqs[0].id, b);
    toks[0] = 42; /* whatever the engine sampled for a is ignored */
    toks[1] = 6;
    c = (kvrt_commit_t){.step = p2->step, .num_seqs = 2, .num_tokens = 2, .tokens = toks};
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    cr_assert_lt(sched_fixture_used_blocks(&f), used_in_flight, "a's blocks are free now");
    sched_fixture_commit(&f, p3, 7);
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, b, &info));
    cr_assert_eq(info.output_tokens, 3);
    cr_assert_eq(info.output[2], 7);
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_seq_info(f.sched, a, &info));
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, b));
    cr_assert_eq(drain(&f, ev, 4), 1);
    sched_fixture_close(&f);
}

Test(sched_async, abort_in_two_plans_frees_at_the_last_commit)
{
    fixture_t f = open_async(64, 4, NULL);
    kvrt_seq_id_t a = add(&f, 6, 20, -1);
    const kvrt_batch_plan_t *p1, *p2;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &p1));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &p2));
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, a));
    kvrt_seq_info_t ev[2];
    cr_assert_eq(drain(&f, ev, 2), 1, "the end is drained at once");
    uint32_t used = sched_fixture_used_blocks(&f);
    cr_assert_gt(used, 0, "the engine may still write its blocks");
    sched_fixture_commit(&f, p1, 1);
    cr_assert_eq(sched_fixture_used_blocks(&f), used, "plan 2 still writes them");
    sched_fixture_commit(&f, p2, 2);
    cr_assert_eq(sched_fixture_used_blocks(&f), 0);
    sched_fixture_close(&f);
}

/* Plans one request to the end of its prompt, takes `empty` empty steps
 * while its last token is in flight, then plans another request. */
static void rows_changed_across_empty_steps(uint32_t empty)
{
    fixture_t f = open_async(64, 4, NULL);
    add(&f, 6, 1, -1); /* its first token is its last: nothing follows it */
    const kvrt_batch_plan_t *p1, *none, *next;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &p1));
    cr_assert_eq(p1->num_rows_changed, 1);
    const int32_t first_row = p1->rows_changed[0];
    for (uint32_t i = 0; i < empty; i++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2 + i, &none));
        cr_assert_eq(none->num_seqs, 0);
    }
    kvrt_seq_id_t b = add(&f, 6, 4, -1);
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2 + empty, &next));
    cr_assert_eq(next->num_seqs, 1);
    cr_assert_eq(next->seqs[0].id, b);
    cr_assert_eq(next->num_rows_changed, 1);
    cr_assert_eq(next->rows_changed[0], (int32_t)next->seqs[0].row);
    cr_assert_neq(next->seqs[0].row, (uint32_t)first_row);
    cr_assert_eq(p1->num_rows_changed, 1);
    cr_assert_eq(p1->rows_changed[0], first_row,
                 "plan 1's list changed while in flight (%u empty steps)", empty);
    sched_fixture_commit(&f, p1, 1);
    sched_fixture_commit(&f, next, 2);
    close_running(&f);
}

/* Empty steps (nothing to plan while the only request's last token is in
 * flight) do not reuse the rows_changed list of the plan in flight, however
 * many come between. */
Test(sched_async, empty_steps_leave_the_rows_changed_list_of_a_plan_in_flight)
{
    for (uint32_t empty = 0; empty <= 4; empty++)
        rows_changed_across_empty_steps(empty);
}

/* A request that cannot grow, alone but for one that ended while a plan
 * in flight still holds it, waits for that plan's commit (which frees the
 * ended one's blocks) instead of being preempted and recomputing. */
Test(sched_async, a_request_alone_but_for_an_ended_one_in_flight_waits_for_its_blocks)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_DRAFT, .max_draft_tokens = 2};
    fixture_t f = open_async(16, 4, &sp);
    kvrt_seq_id_t a = add(&f, 2, 20, -1);
    kvrt_seq_id_t b = add(&f, 2, 20, -1);
    const kvrt_batch_plan_t *p1, *p2, *p3, *p4, *p5;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &p1));
    sched_fixture_commit(&f, p1, 7);
    /* The caller holds every other block: a's next block can only be
     * one b gives back. */
    kvrt_pool_info_t pi;
    ASSERT_OK(f.ctx, kvrt_pool_info(f.pool, &pi));
    int32_t held[16];
    cr_assert_leq(pi.free_blocks, 16);
    ASSERT_OK(f.ctx, kvrt_pool_alloc(f.pool, pi.free_blocks, held));
    int32_t draft = 8;
    ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, a, &draft, 1));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &p2)); /* a verifies, b decodes */
    cr_assert_eq(p2->num_seqs, 2);
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 3, &p3)); /* b alone: a's check in flight */
    cr_assert_eq(p3->num_seqs, 1);
    cr_assert_eq(p3->seqs[0].id, b);
    /* a accepts its draft: its next token opens a block. */
    int32_t toks[3];
    uint32_t accepted[2], n = 0;
    for (uint32_t i = 0; i < 2; i++) {
        bool is_a = p2->seqs[i].id == a;
        accepted[i] = is_a;
        if (is_a)
            toks[n++] = 8;
        toks[n++] = 9;
    }
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = p2->step, .num_seqs = 2,
                       .num_tokens = n, .tokens = toks, .num_accepted = accepted};
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, b));
    kvrt_seq_info_t ev[2];
    cr_assert_eq(drain(&f, ev, 2), 1);

    int32_t next_draft = 11;
    ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, a, &next_draft, 1));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 4, &p4));
    cr_assert_eq(p4->num_seqs, 0, "no block for a until plan 3 commits");
    cr_assert_eq(p4->num_preempted, 0, "a is alone but for b, which plan 3 still holds");
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, a, &info));
    cr_assert_eq(info.state, KVRT_SEQ_RUNNING);
    cr_assert_eq(info.preemptions, 0);
    cr_assert_eq(info.computed_tokens, 4);

    sched_fixture_commit(&f, p3, 5); /* b's blocks come back */
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 5, &p5));
    cr_assert_eq(p5->num_seqs, 1);
    cr_assert_eq(p5->seqs[0].id, a);
    cr_assert_eq(p5->seqs[0].num_computed_tokens, 4, "nothing recomputed");
    /* A request left out of a step without being preempted keeps the
     * drafts the engine set for it. */
    cr_assert_eq(p5->seqs[0].kind, KVRT_PLAN_SPEC);
    cr_assert_eq(p5->seqs[0].num_new_tokens, 2);
    cr_assert_eq(p5->input_tokens[1], next_draft);
    int32_t t5 = 6;
    uint32_t none = 0;
    kvrt_commit_t c5 = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = p5->step, .num_seqs = 1,
                        .num_tokens = 1, .tokens = &t5, .num_accepted = &none};
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c5));
    ASSERT_OK(f.ctx, kvrt_pool_free(f.pool, pi.free_blocks, held));
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, a));
    cr_assert_eq(drain(&f, ev, 2), 1);
    sched_fixture_close(&f);
}

Test(sched_async, placeholder_that_reaches_the_length_limit_is_not_planned)
{
    fixture_t f = open_async(64, 4, NULL);
    add(&f, 6, 1, -1);
    const kvrt_batch_plan_t *p1, *p2;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &p1));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &p2));
    cr_assert_eq(p2->num_seqs, 0, "its one output token is the one plan 1 samples");
    sched_fixture_commit(&f, p1, 1);
    kvrt_seq_info_t ev[2];
    cr_assert_eq(drain(&f, ev, 2), 1);
    cr_assert_eq(ev[0].end_reason, KVRT_END_LENGTH);
    sched_fixture_close(&f);
}

Test(sched_async, prefill_chunks_continue_while_in_flight)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_CHUNK, .prefill_chunk_tokens = 4};
    fixture_t f = open_async(64, 4, &sp);
    add(&f, 10, 4, -1);
    const kvrt_batch_plan_t *p1, *p2;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &p1));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &p2));
    cr_assert_eq(p2->seqs[0].kind, KVRT_PLAN_PREFILL);
    cr_assert_eq(p2->seqs[0].num_computed_tokens, 4);
    cr_assert_eq(p2->input_tokens[0], 104, "the prompt's next chunk");
    cr_assert_eq(p2->seqs[0].sample, 0);
    sched_fixture_commit(&f, p1, 1);
    sched_fixture_commit(&f, p2, 1);
    close_running(&f);
}

Test(sched_async, drafts_in_flight_wait_for_their_commit)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_DRAFT |
                                            KVRT_SCHED_PARAM_ADAPTIVE_DRAFT,
                              .max_draft_tokens = 2, .adaptive_draft = 0};
    fixture_t f = open_async(64, 4, &sp);
    kvrt_seq_id_t id = add(&f, 6, 20, -1);
    const kvrt_batch_plan_t *p1, *p2, *p3;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &p1));
    sched_fixture_commit(&f, p1, 1);
    int32_t draft[2] = {2, 3};
    ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, draft, 2));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &p2));
    cr_assert_eq(p2->seqs[0].kind, KVRT_PLAN_SPEC);
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 3, &p3));
    cr_assert_eq(p3->num_seqs, 0, "its length after verification is unknown");
    int32_t toks[2] = {2, 9};
    uint32_t acc = 1;
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = p2->step, .num_seqs = 1,
                       .num_tokens = 2, .tokens = toks, .num_accepted = &acc};
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 4, &p3));
    cr_assert_eq(p3->num_seqs, 1);
    cr_assert_eq(p3->input_tokens[0], 9);
    cr_assert_eq(p3->positions[0], 8);
    sched_fixture_commit(&f, p3, 1);
    close_running(&f);
}

/* ---- randomized: async outputs equal sync outputs ------------------------- */

/* The deterministic "model": the token sampled at context length L of the
 * request tagged tag. Outputs then depend on nothing but the request. */
static int32_t model(uint64_t tag, uint32_t len)
{
    uint64_t x = tag * 0x9e3779b97f4a7c15ull + len * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 31;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 29;
    return (int32_t)(x % 50); /* stop token 0 is sampled now and then */
}

#define REQS 120u
#define MAX_OUT 40u

typedef struct run_result {
    uint64_t preemptions;
    uint64_t spec_accepted, rolled_back;
    uint64_t placeholders;
    uint32_t out_len[REQS];
    int32_t out[REQS][MAX_OUT];
    uint8_t reason[REQS];
} run_result_t;

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

#define DRAFTS 3u

/* What the engine commits for a plan: tokens, accepted drafts, and drafts
 * for each request's next step. */
typedef struct engine_out {
    int32_t tokens[64];
    uint32_t accepted[64];
    uint32_t next_counts[64];
    int32_t next[64 * DRAFTS];
} engine_out_t;

/* Samples for plan p, checking the placeholder contract: a placeholder is
 * at the position the previous sampling of that request produced. Drafts
 * are verified against the model and accepted while they match; each
 * sampling entry gets 0-3 drafts for its next step, right 70% of the time. */
static uint32_t sample_plan(const kvrt_batch_plan_t *p, uint32_t *last_sampled_len,
                            engine_out_t *o, uint64_t *rng, run_result_t *r)
{
    uint32_t n = 0, num_next = 0;
    for (uint32_t i = 0; i < p->num_seqs; i++) {
        const kvrt_plan_seq_t *e = &p->seqs[i];
        uint64_t tag = e->user_tag;
        int32_t in = p->input_tokens[p->query_start_loc[i]];
        uint32_t pos = (uint32_t)p->positions[p->query_start_loc[i]];
        r->placeholders += in == KVRT_TOKEN_PLACEHOLDER;
        if (in == KVRT_TOKEN_PLACEHOLDER)
            cr_assert_eq(last_sampled_len[tag], pos,
                         "placeholder of request %llu at position %u, last sample made %u",
                         (unsigned long long)tag, pos, last_sampled_len[tag]);
        o->accepted[i] = 0;
        o->next_counts[i] = 0;
        if (!e->sample)
            continue;
        /* The first token is sampled at context length seq_len - drafts. */
        const uint32_t first = (uint32_t)p->seq_lens[i] - e->num_drafts;
        const int32_t *d = p->input_tokens + p->query_start_loc[i] + 1;
        uint32_t a = 0;
        while (a < e->num_drafts && d[a] == model(tag, first + a))
            o->tokens[n++] = d[a++];
        o->tokens[n++] = model(tag, first + a);
        o->accepted[i] = a;
        last_sampled_len[tag] = first + a;
        o->next_counts[i] = (uint32_t)(rng_next(rng) % (DRAFTS + 1));
        for (uint32_t j = 0; j < o->next_counts[i]; j++)
            o->next[num_next++] = rng_next(rng) % 10 < 7 ? model(tag, first + a + 1 + j)
                                                         : (int32_t)(rng_next(rng) % 50);
    }
    return n;
}

/* Samples and commits the oldest plan in flight. */
static void commit_oldest(fixture_t *f, const kvrt_batch_plan_t **fifo, uint32_t *pending,
                          uint32_t *last_sampled_len, uint64_t *rng, run_result_t *r)
{
    static engine_out_t o;
    const kvrt_batch_plan_t *p = fifo[0];
    uint32_t n = sample_plan(p, last_sampled_len, &o, rng, r);
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED | KVRT_COMMIT_DRAFTS,
                       .step = p->step, .num_seqs = p->num_seqs, .num_tokens = n,
                       .tokens = o.tokens, .num_accepted = o.accepted,
                       .num_next_drafts = o.next_counts, .next_drafts = o.next};
    ASSERT_OK(f->ctx, kvrt_sched_commit(f->sched, &c));
    fifo[0] = fifo[1];
    (*pending)--;
}

static void run(uint64_t seed, uint32_t in_flight, run_result_t *r)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_CHUNK |
                                            KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_MAX_SEQS |
                                            KVRT_SCHED_PARAM_PLANS_IN_FLIGHT |
                                            KVRT_SCHED_PARAM_DRAFT |
                                            KVRT_SCHED_PARAM_ADAPTIVE_DRAFT,
                              .prefill_chunk_tokens = 24, .max_batch_tokens = 64,
                              .max_seqs = 16, .max_plans_in_flight = in_flight,
                              .max_draft_tokens = DRAFTS, .adaptive_draft = 0};
    /* Few blocks: preemption happens. */
    fixture_t f = sched_fixture_open(72, 4, seed & 1, &sp);
    memset(r, 0, sizeof(*r));
    uint64_t rng = seed * 2654435761u + 1;    /* the workload: same in both runs */
    uint64_t engine = seed * 0x9e3779b9u + 7; /* when the async engine commits */
    uint64_t drafter = seed * 0x85ebca6bu + 3; /* the engine's drafts */
    uint32_t added = 0, ended = 0;
    uint32_t last_sampled_len[REQS] = {0};
    const kvrt_batch_plan_t *fifo[2];
    uint32_t pending = 0;
    for (uint32_t iter = 0; iter < 20000 && ended < REQS; iter++) {
        if (added < REQS && rng_next(&rng) % 3 == 0) {
            int32_t prompt[48];
            uint32_t len = 2 + (uint32_t)(rng_next(&rng) % 46);
            for (uint32_t t = 0; t < len; t++) /* shared prefixes: cache hits */
                prompt[t] = (int32_t)(t < 16 ? (added % 3) * 10 + t : rng_next(&rng) % 50);
            int32_t stop = 0;
            kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_STOP | KVRT_SEQ_PARAM_USER_TAG |
                                                 KVRT_SEQ_PARAM_PRIORITY,
                                   .prompt = prompt, .prompt_len = len,
                                   .max_new_tokens = 1 + (uint32_t)(rng_next(&rng) % MAX_OUT),
                                   .stop_tokens = &stop, .num_stop_tokens = 1,
                                   .user_tag = added,
                                   .priority = (int32_t)(rng_next(&rng) % 3)};
            kvrt_seq_id_t id;
            ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
            added++;
        }
        /* Async: step while there is room, commit the oldest at random. */
        bool commit_now = pending == in_flight || (pending && rng_next(&engine) % 2);
        if (!commit_now) {
            const kvrt_batch_plan_t *p;
            ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, iter, &p));
            if (p->num_seqs)
                fifo[pending++] = p;
        } else {
            commit_oldest(&f, fifo, &pending, last_sampled_len, &drafter, r);
        }
        kvrt_seq_info_t ev[16];
        uint32_t got;
        do {
            got = drain(&f, ev, 16);
            for (uint32_t k = 0; k < got; k++) {
                uint64_t tag = ev[k].user_tag;
                cr_assert_lt(tag, REQS);
                cr_assert_leq(ev[k].output_tokens, MAX_OUT);
                r->out_len[tag] = ev[k].output_tokens;
                memcpy(r->out[tag], ev[k].output, ev[k].output_tokens * sizeof(int32_t));
                r->reason[tag] = (uint8_t)ev[k].end_reason;
                ended++;
            }
        } while (got == 16);
    }
    cr_assert_eq(ended, REQS, "every request ended (seed %llu, %u in flight)",
                 (unsigned long long)seed, in_flight);
    while (pending) /* plans still holding ended requests */
        commit_oldest(&f, fifo, &pending, last_sampled_len, &drafter, r);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    r->preemptions = st.preemptions;
    r->spec_accepted = st.spec_accepted;
    r->rolled_back = st.spec_proposed - st.spec_accepted;
    kvrt_sched_destroy(f.sched);
    f.sched = NULL;
    if (f.cache)
        ASSERT_OK(f.ctx, kvrt_cache_reset(f.cache, 0));
    sched_fixture_close(&f);
}

Test(sched_async, randomized_async_outputs_equal_sync_outputs, .timeout = 120)
{
    static run_result_t sync, async;
    uint64_t preemptions = 0, placeholders = 0, accepted = 0, rolled_back = 0;
    for (uint64_t seed = 1; seed <= 12; seed++) {
        run(seed, 1, &sync);
        run(seed, 2, &async);
        cr_assert_eq(sync.placeholders, 0);
        preemptions += async.preemptions;
        placeholders += async.placeholders;
        accepted += async.spec_accepted + sync.spec_accepted;
        rolled_back += async.rolled_back + sync.rolled_back;
        for (uint32_t t = 0; t < REQS; t++) {
            cr_assert_eq(async.out_len[t], sync.out_len[t], "seed %llu request %u",
                         (unsigned long long)seed, t);
            cr_assert_eq(async.reason[t], sync.reason[t]);
            cr_assert_arr_eq(async.out[t], sync.out[t], sync.out_len[t] * sizeof(int32_t));
        }
    }
    /* The runs did exercise what they compare. */
    cr_assert_gt(preemptions, 0, "no preemption under async steps");
    cr_assert_gt(placeholders, 1000, "only %llu placeholder decodes",
                 (unsigned long long)placeholders);
    cr_assert_gt(accepted, 1000, "drafts were accepted");
    cr_assert_gt(rolled_back, 1000, "drafts were rolled back");
}
