/*
 * test_sched_requests.c - a request's life through the scheduler: plan
 * layout, chunked prefill, stop tokens and length, abort in every state,
 * priorities / EDF / FCFS order, the token budget and max_seqs, plan order
 * while requests end among many running, and bad calls that must be
 * refused without changing anything.
 */
#include <string.h>

#include "sched_fixture.h"

typedef sched_fixture_t fixture_t;

static fixture_t open_fixture(uint32_t blocks, uint32_t tpb, const kvrt_sched_params_t *p)
{
    return sched_fixture_open(blocks, tpb, false, p);
}

#define close_fixture sched_fixture_close

static kvrt_seq_id_t add(fixture_t *f, uint32_t prompt_len, uint32_t max_new, int32_t first)
{
    int32_t prompt[4096];
    cr_assert_leq(prompt_len, 4096);
    for (uint32_t i = 0; i < prompt_len; i++)
        prompt[i] = first + (int32_t)i;
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = prompt_len,
                           .max_new_tokens = max_new};
    kvrt_seq_id_t id = 0;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    return id;
}

#define commit_all sched_fixture_commit

#define drain sched_fixture_drain

Test(sched_requests, one_request_prefill_then_decode_to_length)
{
    fixture_t f = open_fixture(64, 4, NULL);
    kvrt_seq_id_t id = add(&f, 10, 3, 100);
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1000, &plan));
    cr_assert_eq(plan->num_seqs, 1);
    cr_assert_eq(plan->num_tokens, 10);
    cr_assert_eq(plan->seqs[0].id, id);
    cr_assert_eq(plan->seqs[0].kind, KVRT_PLAN_PREFILL);
    cr_assert_eq(plan->seqs[0].num_computed_tokens, 0);
    cr_assert_eq(plan->seqs[0].sample, 1);
    cr_assert_eq(plan->query_start_loc[0], 0);
    cr_assert_eq(plan->query_start_loc[1], 10);
    cr_assert_eq(plan->seq_lens[0], 10);
    /* Slots follow the row's blocks, 4 tokens per block. */
    const int32_t *row = plan->block_rows + (size_t)plan->seqs[0].row * plan->row_stride;
    for (uint32_t t = 0; t < 10; t++) {
        cr_assert_eq(plan->input_tokens[t], 100 + (int32_t)t);
        cr_assert_eq(plan->positions[t], (int32_t)t);
        cr_assert_eq(plan->slot_mapping[t], (int64_t)row[t / 4] * 4 + t % 4);
    }
    cr_assert_eq(row[3], KVRT_NULL_BLOCK, "rows are padded with the null block");
    cr_assert_eq(plan->num_rows_changed, 1);
    commit_all(&f, plan, 7);

    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.state, KVRT_SEQ_RUNNING);
    cr_assert_eq(info.output_tokens, 1);
    cr_assert_eq(info.computed_tokens, 10);
    cr_assert_eq(info.first_token_ns, 1000);

    for (int k = 0; k < 2; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2000 + k, &plan));
        cr_assert_eq(plan->num_seqs, 1);
        cr_assert_eq(plan->seqs[0].kind, KVRT_PLAN_DECODE);
        cr_assert_eq(plan->num_tokens, 1);
        cr_assert_eq(plan->positions[0], 10 + k);
        cr_assert_eq(plan->input_tokens[0], k == 0 ? 7 : 8);
        commit_all(&f, plan, 8 + k);
    }
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.state, KVRT_SEQ_ENDED);
    cr_assert_eq(info.end_reason, KVRT_END_LENGTH);
    kvrt_seq_info_t ev[4];
    cr_assert_eq(drain(&f, ev, 4), 1);
    cr_assert_eq(ev[0].id, id);
    cr_assert_eq(ev[0].output_tokens, 3);
    cr_assert_eq(ev[0].output[0], 7);
    cr_assert_eq(ev[0].output[2], 9);
    cr_assert_eq(drain(&f, ev, 4), 0, "an end is reported once");
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_seq_info(f.sched, id, &info));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_seq_abort(f.sched, id));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 3000, &plan));
    cr_assert_eq(plan->num_seqs, 0);
    close_fixture(&f);
}

Test(sched_requests, stop_token_ends_and_is_kept)
{
    fixture_t f = open_fixture(64, 4, NULL);
    int32_t prompt[3] = {1, 2, 3}, stop[2] = {42, 43};
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_STOP, .prompt = prompt,
                           .prompt_len = 3, .max_new_tokens = 100, .stop_tokens = stop,
                           .num_stop_tokens = 2};
    kvrt_seq_id_t id;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
    const kvrt_batch_plan_t *plan;
    int32_t outs[] = {5, 6, 43};
    for (int k = 0; k < 3; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, k, &plan));
        commit_all(&f, plan, outs[k]);
    }
    kvrt_seq_info_t ev[2];
    cr_assert_eq(drain(&f, ev, 2), 1);
    cr_assert_eq(ev[0].end_reason, KVRT_END_STOP);
    cr_assert_eq(ev[0].output_tokens, 3);
    cr_assert_eq(ev[0].output[2], 43);
    close_fixture(&f);
}

Test(sched_requests, long_prompt_is_chunked)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_CHUNK,
                              .max_batch_tokens = 64, .prefill_chunk_tokens = 16};
    fixture_t f = open_fixture(256, 4, &sp);
    kvrt_seq_id_t a = add(&f, 40, 5, 0);
    const kvrt_batch_plan_t *plan;
    uint32_t expect[] = {16, 16, 8};
    for (int k = 0; k < 3; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, k, &plan));
        cr_assert_eq(plan->num_seqs, 1);
        cr_assert_eq(plan->seqs[0].num_new_tokens, expect[k]);
        cr_assert_eq(plan->seqs[0].num_computed_tokens, 16u * k);
        cr_assert_eq(plan->seqs[0].sample, k == 2);
        cr_assert_eq(plan->input_tokens[0], 16 * k);
        commit_all(&f, plan, 9);
    }
    /* A second request arrives once the first is decoding. */
    add(&f, 4, 5, 500);
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 10, &plan));
    /* Now the decode of a first, then the prefill of the newcomer. */
    cr_assert_eq(plan->num_seqs, 2);
    cr_assert_eq(plan->seqs[0].id, a);
    cr_assert_eq(plan->seqs[0].kind, KVRT_PLAN_DECODE);
    cr_assert_eq(plan->seqs[1].kind, KVRT_PLAN_PREFILL);
    commit_all(&f, plan, 9);
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, a));
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, a, &info));
    cr_assert_eq(info.end_reason, KVRT_END_ABORTED);
    for (int k = 0; k < 20; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 20 + k, &plan));
        if (!plan->num_seqs)
            break;
        commit_all(&f, plan, 9);
    }
    kvrt_seq_info_t ev[4];
    cr_assert_eq(drain(&f, ev, 4), 2);
    close_fixture(&f);
}

Test(sched_requests, budget_and_max_seqs_are_respected)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_MAX_SEQS,
                              .max_batch_tokens = 20, .max_seqs = 3};
    fixture_t f = open_fixture(512, 4, &sp);
    for (int i = 0; i < 6; i++)
        add(&f, 8, 4, 100 * i);
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &plan));
    /* 8 + 8 + 4 (the third is cut by the budget, chunked). */
    cr_assert_eq(plan->num_seqs, 3);
    cr_assert_eq(plan->num_tokens, 20);
    cr_assert_eq(plan->seqs[2].num_new_tokens, 4);
    cr_assert_eq(plan->seqs[2].sample, 0);
    commit_all(&f, plan, 1);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.running, 3);
    cr_assert_eq(st.waiting, 3);
    cr_assert_eq(st.budget_bound_steps, 1);
    for (int k = 0; k < 100; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1 + k, &plan));
        cr_assert_leq(plan->num_tokens, 20);
        cr_assert_leq(plan->num_seqs, 3);
        if (!plan->num_seqs)
            break;
        commit_all(&f, plan, 1);
    }
    kvrt_seq_info_t ev[8];
    cr_assert_eq(drain(&f, ev, 8), 6);
    close_fixture(&f);
}

Test(sched_requests, no_more_run_than_the_budget_so_every_decode_gets_a_token_each_step)
{
    /* 16 sequence slots but a budget of 3 tokens. With two plans in
     * flight, the next plan admits requests in the budget that those whose
     * first token is still in flight leave it: were 6 running once all
     * decode, the budget would let only the first 3 decode, each step,
     * until they ended. At most 3 run; with one plan in flight each of
     * them gets its token every step. */
    for (uint32_t in_flight = 1; in_flight <= 2; in_flight++) {
        kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                                KVRT_SCHED_PARAM_MAX_SEQS |
                                                KVRT_SCHED_PARAM_PLANS_IN_FLIGHT,
                                  .max_batch_tokens = 3, .max_seqs = 16,
                                  .max_plans_in_flight = in_flight};
        fixture_t f = open_fixture(512, 4, &sp);
        for (int i = 0; i < 16; i++)
            add(&f, 1, 8, 100 * i);
        const kvrt_batch_plan_t *plans[2];
        uint32_t ended = 0, in_air = 0;
        for (int k = 0; k < 400 && ended < 16; k++) {
            ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, (uint64_t)k, &plans[in_air]));
            kvrt_sched_stats_t st;
            ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
            cr_assert_leq(st.running, 3, "step %d: %u running", k, st.running);
            if (in_flight == 1) /* every running request has its token */
                cr_assert_eq(plans[0]->num_seqs, st.running, "step %d: %u of %u planned", k,
                             plans[0]->num_seqs, st.running);
            const bool empty = !plans[in_air]->num_seqs;
            in_air += !empty;
            if (in_air && (in_air == in_flight || empty)) {
                commit_all(&f, plans[0], 1); /* the oldest first */
                plans[0] = plans[1];
                in_air--;
            }
            kvrt_seq_info_t ev[16];
            ended += drain(&f, ev, 16);
        }
        cr_assert_eq(ended, 16, "%u plans in flight: %u ended", in_flight, ended);
        close_fixture(&f);
    }
}

Test(sched_requests, priority_then_deadline_then_arrival)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_SEQS, .max_seqs = 1};
    fixture_t f = open_fixture(256, 4, &sp);
    int32_t prompt[2] = {1, 2};
    struct { int32_t prio; uint64_t deadline; } reqs[] = {
        {0, 0}, {0, 500}, {5, 0}, {0, 100}, {5, 900}, {0, 0},
    };
    kvrt_seq_id_t ids[6];
    for (int i = 0; i < 6; i++) {
        kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_PRIORITY | KVRT_SEQ_PARAM_USER_TAG |
                                             (reqs[i].deadline ? KVRT_SEQ_PARAM_DEADLINE : 0),
                               .prompt = prompt, .prompt_len = 2, .max_new_tokens = 1,
                               .priority = reqs[i].prio, .deadline_ns = reqs[i].deadline,
                               .user_tag = (uint64_t)i};
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &ids[i]));
    }
    /* priority 5 with a deadline, priority 5, then EDF (100, 500), then FCFS. */
    uint64_t expect[] = {4, 2, 3, 1, 0, 5};
    const kvrt_batch_plan_t *plan;
    for (int k = 0; k < 6; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1000, &plan));
        cr_assert_eq(plan->num_seqs, 1);
        cr_assert_eq(plan->seqs[0].user_tag, expect[k], "step %d ran tag %llu", k,
                     (unsigned long long)plan->seqs[0].user_tag);
        commit_all(&f, plan, 3);
    }
    kvrt_seq_info_t ev[8];
    cr_assert_eq(drain(&f, ev, 8), 6);
    uint32_t missed = 0;
    for (int i = 0; i < 6; i++)
        missed += ev[i].deadline_missed;
    cr_assert_eq(missed, 3, "all three deadlines were before now_ns 1000");
    close_fixture(&f);
}

Test(sched_requests, abort_in_every_state_frees_everything)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_SEQS, .max_seqs = 2};
    fixture_t f = open_fixture(256, 4, &sp);
    kvrt_seq_id_t running = add(&f, 9, 50, 0);
    kvrt_seq_id_t in_plan = add(&f, 9, 50, 100);
    kvrt_seq_id_t waiting = add(&f, 9, 50, 200);
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &plan));
    commit_all(&f, plan, 1);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, waiting));
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, waiting)); /* idempotent */
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, running));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &plan));
    cr_assert_eq(plan->num_seqs, 1);
    /* Aborted while the engine runs it: ends now, blocks freed at commit. */
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, in_plan));
    kvrt_seq_info_t ev[4];
    cr_assert_eq(drain(&f, ev, 4), 3);
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_seq_abort(f.sched, in_plan));
    kvrt_pool_info_t info;
    ASSERT_OK(f.ctx, kvrt_pool_info(f.pool, &info));
    cr_assert_gt(info.used_blocks, 0, "in-flight blocks stay until the commit");
    commit_all(&f, plan, 1);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ev[i].end_reason, KVRT_END_ABORTED);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.aborted, 3);
    cr_assert_eq(st.running + st.waiting + st.ended_undrained, 0);
    close_fixture(&f);
}

/* Requests ending at every few steps (by length, and aborts, one while
 * the engine runs it) among 40 running: the running array keeps their
 * places until they are an eighth of it, and an admission into a full
 * array compacts it first. Every step plans every running request once, in
 * admission order (FCFS: the order they were added, told by user_tag). */
Test(sched_requests, ends_among_many_running_keep_the_plan_in_admission_order)
{
    enum { MAX_SEQS = 40, TOTAL = 72 };
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_SEQS |
                                            KVRT_SCHED_PARAM_MAX_BATCH_TOKENS,
                              .max_seqs = MAX_SEQS, .max_batch_tokens = 1024};
    fixture_t f = open_fixture(4096, 4, &sp);
    kvrt_seq_id_t ids[TOTAL];
    for (uint32_t i = 0; i < TOTAL; i++) {
        int32_t prompt[4] = {(int32_t)i, 1, 2, 3};
        kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_USER_TAG,
                               .prompt = prompt, .prompt_len = 4,
                               .max_new_tokens = 3 + (i * 7) % 29, .user_tag = i};
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &ids[i]));
    }
    uint32_t ended = 0, aborted = 0, last = TOTAL; /* waiting ones are taken from the end */
    const kvrt_batch_plan_t *plan;
    for (uint32_t step = 0; step < 400 && ended < TOTAL; step++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, step, &plan));
        kvrt_sched_stats_t st;
        ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
        cr_assert_eq(plan->num_seqs, st.running, "step %u: %u planned of %llu running", step,
                     plan->num_seqs, (unsigned long long)st.running);
        cr_assert_leq(plan->num_seqs, MAX_SEQS);
        for (uint32_t i = 1; i < plan->num_seqs; i++)
            cr_assert_lt(plan->seqs[i - 1].user_tag, plan->seqs[i].user_tag,
                         "step %u: entry %u (tag %llu) after tag %llu", step, i,
                         (unsigned long long)plan->seqs[i].user_tag,
                         (unsigned long long)plan->seqs[i - 1].user_tag);
        /* Every fifth step, an abort: of a request in this plan (it ends
         * now, its place is released at the commit) or of a waiting one. */
        if (step % 5 == 4 && plan->num_seqs > 2) {
            const kvrt_seq_id_t victim =
                step % 10 == 4 ? plan->seqs[plan->num_seqs / 2].id : ids[--last];
            kvrt_seq_info_t info; /* (a drained one is unknown) */
            if (kvrt_seq_info(f.sched, victim, &info) == KVRT_OK &&
                info.state != KVRT_SEQ_ENDED) {
                ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, victim));
                aborted++;
            }
        }
        commit_all(&f, plan, 1);
        kvrt_seq_info_t ev[TOTAL];
        ended += drain(&f, ev, TOTAL);
    }
    cr_assert_eq(ended, TOTAL);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.aborted, aborted);
    cr_assert_gt(aborted, 4);
    cr_assert_eq(st.finished_length + st.aborted, TOTAL);
    cr_assert_eq(st.preemptions, 0);
    close_fixture(&f);
}

/* Runs one request of prompt_len + max_new tokens alone, with k drafts
 * set before every step (all rejected), to its end; returns the most
 * blocks the pool had in use. */
static uint32_t run_alone(fixture_t *f, uint32_t prompt_len, uint32_t max_new, uint32_t k)
{
    kvrt_seq_id_t id = add(f, prompt_len, max_new, 1);
    uint32_t most = 0;
    for (uint64_t step = 0; step < 200; step++) {
        int32_t drafts[4] = {9, 9, 9, 9};
        if (k)
            (void)kvrt_seq_set_draft(f->sched, id, drafts, k); /* refused in its prefill */
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, step, &plan));
        if (!plan->num_seqs)
            break;
        uint32_t used = sched_fixture_used_blocks(f);
        most = used > most ? used : most;
        commit_all(f, plan, 7);
    }
    kvrt_seq_info_t ev[1];
    cr_assert_eq(drain(f, ev, 1), 1);
    cr_assert_eq(ev[0].end_reason, KVRT_END_LENGTH, "ended %d: %s", ev[0].end_reason,
                 kvrt_status_str(ev[0].status));
    cr_assert_eq(ev[0].output_tokens, max_new);
    return most;
}

/* A request whose K/V fills the pool exactly is accepted and runs alone to
 * its end: its last token has no K/V, and drafts never reach past the
 * length limit, so neither needs a block (one more token is refused). */
Test(sched_requests, a_request_that_fits_the_pool_exactly_is_accepted_and_runs_alone)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK |
                                            KVRT_SCHED_PARAM_DRAFT,
                              .use_watermark = 0, .max_draft_tokens = 4};
    fixture_t f = open_fixture(9, 16, &sp); /* 8 blocks: K/V of 128 tokens */
    cr_assert_eq(run_alone(&f, 100, 29, 0), 8, "128 tokens with K/V");
    cr_assert_eq(run_alone(&f, 100, 25, 4), 8, "drafts up to the limit");
    int32_t prompt[100] = {0};
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 100, .max_new_tokens = 30};
    kvrt_seq_id_t id;
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_seq_add(f.sched, &p, &id));
    close_fixture(&f);
}

Test(sched_requests, bad_calls_are_refused_and_change_nothing)
{
    fixture_t f = open_fixture(64, 4, NULL);
    int32_t prompt[4] = {1, 2, 3, -1};
    kvrt_seq_id_t id = 0;
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 4, .max_new_tokens = 2};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_add(f.sched, &p, &id));
    p.prompt_len = 3;
    p.max_new_tokens = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_add(f.sched, &p, &id));
    p.max_new_tokens = 2;
    p.field_mask = 1u << 20;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_add(f.sched, &p, &id));
    p.field_mask = 0;
    p.max_new_tokens = 10000; /* 63 blocks of 4 hold at most 252 tokens */
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_seq_add(f.sched, &p, &id));
    cr_assert_eq(id, 0, "outputs are written only on success");
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_seq_abort(f.sched, 12345));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_seq_abort(f.sched, 0));
    ASSERT_STATUS(KVRT_ERR_UNSUPPORTED, kvrt_seq_set_draft(f.sched, 1, prompt, 1));

    kvrt_commit_t c = {.step = 1};
    ASSERT_STATUS(KVRT_ERR_NO_STEP, kvrt_sched_commit(f.sched, &c));
    p.max_new_tokens = 2;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &plan));
    ASSERT_STATUS(KVRT_ERR_BAD_STATE, kvrt_sched_step(f.sched, 0, &plan));
    int32_t toks[3] = {5, 6, 7};
    uint32_t acc[1] = {1};
    c = (kvrt_commit_t){.step = plan->step + 1, .num_seqs = 1, .num_tokens = 1, .tokens = toks};
    ASSERT_STATUS(KVRT_ERR_NO_STEP, kvrt_sched_commit(f.sched, &c));
    c.step = plan->step;
    c.num_seqs = 2;
    ASSERT_STATUS(KVRT_ERR_TOKEN_COUNT, kvrt_sched_commit(f.sched, &c));
    c.num_seqs = 1;
    c.num_tokens = 2;
    ASSERT_STATUS(KVRT_ERR_TOKEN_COUNT, kvrt_sched_commit(f.sched, &c));
    c.num_tokens = 0;
    ASSERT_STATUS(KVRT_ERR_TOKEN_COUNT, kvrt_sched_commit(f.sched, &c));
    c.num_tokens = 2;
    c.field_mask = KVRT_COMMIT_ACCEPTED;
    c.num_accepted = acc;
    ASSERT_STATUS(KVRT_ERR_TOKEN_COUNT, kvrt_sched_commit(f.sched, &c)); /* no drafts */
    c.field_mask = 0;
    c.num_tokens = 1;
    toks[0] = -3;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_commit(f.sched, &c));
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.output_tokens, 0, "refused commits change nothing");
    cr_assert_eq(info.computed_tokens, 0);
    toks[0] = 5;
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    ASSERT_STATUS(KVRT_ERR_NO_STEP, kvrt_sched_commit(f.sched, &c)); /* twice */
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.output_tokens, 1);
    cr_assert_eq(info.computed_tokens, 3);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, id));
    uint32_t n;
    kvrt_seq_info_t ev[1];
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 1, &n));

    kvrt_sched_t *other = NULL;
    kvrt_sched_params_t bad = {.field_mask = KVRT_SCHED_PARAM_CHUNK,
                               .prefill_chunk_tokens = 9000};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create(f.ctx, f.pool, NULL, &bad, &other));
    bad = (kvrt_sched_params_t){.field_mask = KVRT_SCHED_PARAM_NGRAM, .ngram_min = 1,
                                .ngram_max = 2};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create(f.ctx, f.pool, NULL, &bad, &other));
    /* A switch other than 0 or 1 (a field mixed up with its neighbour). */
    bad = (kvrt_sched_params_t){.field_mask = KVRT_SCHED_PARAM_WATERMARK, .use_watermark = 2};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create(f.ctx, f.pool, NULL, &bad, &other));
    bad = (kvrt_sched_params_t){.field_mask = KVRT_SCHED_PARAM_ADAPTIVE_DRAFT,
                                .adaptive_draft = -1};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create(f.ctx, f.pool, NULL, &bad, &other));
    bad = (kvrt_sched_params_t){.field_mask = KVRT_SCHED_PARAM_CSR_TABLES,
                                .csr_block_tables = 3};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create(f.ctx, f.pool, NULL, &bad, &other));
    cr_assert_null(other);
    close_fixture(&f);
}

Test(sched_requests, an_id_of_another_scheduler_or_of_an_arrival_is_refused)
{
    /* Two schedulers on one pool: each one's first request sits in slot 0,
     * yet neither answers to the other's id; an arrival's id names no
     * request and a request's id no arrival. */
    fixture_t f = open_fixture(64, 4, NULL);
    kvrt_sched_t *other;
    ASSERT_OK(f.ctx, kvrt_sched_create(f.ctx, f.pool, NULL, NULL, &other));
    int32_t prompt[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 8, .max_new_tokens = 2};
    kvrt_seq_id_t mine, theirs;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &mine));
    ASSERT_OK(f.ctx, kvrt_seq_add(other, &p, &theirs));
    cr_assert_neq(mine, theirs);
    kvrt_seq_info_t info;
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_seq_info(f.sched, theirs, &info));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_seq_abort(other, mine));
    kvrt_arrival_params_t ap = {.num_tokens = 4};
    kvrt_arrival_id_t arrival = 0;
    uint32_t first = 0, count = 0;
    ASSERT_OK(f.ctx, kvrt_seq_await_kv(f.sched, mine, &ap, &arrival, &first, &count));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_seq_info(f.sched, arrival, &info));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_arrival_complete(f.sched, mine, count));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_arrival_complete(other, arrival, count));
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, mine, &info));
    cr_assert_eq(info.state, KVRT_SEQ_WAITING_KV, "nothing happened to it");
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arrival, count));
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, mine));
    ASSERT_OK(f.ctx, kvrt_seq_abort(other, theirs));
    kvrt_seq_info_t ev[2];
    cr_assert_eq(drain(&f, ev, 2), 1);
    uint32_t n = 0;
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(other, ev, 2, &n));
    cr_assert_eq(n, 1);
    ASSERT_OK(f.ctx, kvrt_sched_destroy(other));
    close_fixture(&f);
}

Test(sched_requests, an_id_of_a_scheduler_created_64_before_is_refused)
{
    /* An engine that recreates its scheduler (every RL episode, every
     * weight update) and keeps a stale id: 64 schedulers later the tag in
     * ids repeats, and the stale id must still name no request. */
    fixture_t f = open_fixture(64, 4, NULL);
    const kvrt_sched_params_t small = {.field_mask = KVRT_SCHED_PARAM_MAX_REQUESTS,
                                       .max_requests = 4};
    int32_t prompt[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 8, .max_new_tokens = 2};
    kvrt_sched_t *old = NULL, *other = NULL;
    kvrt_seq_id_t stale;
    ASSERT_OK(f.ctx, kvrt_sched_create(f.ctx, f.pool, NULL, &small, &old));
    ASSERT_OK(f.ctx, kvrt_seq_add(old, &p, &stale));
    ASSERT_OK(f.ctx, kvrt_sched_destroy(old));
    for (int i = 0; i < 63; i++) {
        ASSERT_OK(f.ctx, kvrt_sched_create(f.ctx, f.pool, NULL, &small, &other));
        ASSERT_OK(f.ctx, kvrt_sched_destroy(other));
    }
    ASSERT_OK(f.ctx, kvrt_sched_create(f.ctx, f.pool, NULL, &small, &other));
    kvrt_seq_id_t fresh;
    ASSERT_OK(f.ctx, kvrt_seq_add(other, &p, &fresh)); /* the same slot as stale's */
    cr_assert_neq(fresh, stale);
    kvrt_seq_info_t info;
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_seq_info(other, stale, &info));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_seq_abort(other, stale));
    ASSERT_OK(f.ctx, kvrt_seq_info(other, fresh, &info));
    cr_assert_eq(info.state, KVRT_SEQ_WAITING, "nothing happened to it");
    ASSERT_OK(f.ctx, kvrt_sched_destroy(other));
    close_fixture(&f);
}

Test(sched_requests, ctl_nodes_report_the_counters)
{
    fixture_t f = open_fixture(64, 4, NULL);
    add(&f, 5, 1, 0);
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &plan));
    commit_all(&f, plan, 1);
    uint64_t v = 0;
    ASSERT_OK(f.ctx, kvrt_ctl_get_u64(f.ctx, "sched.0.prefill_tokens", &v));
    cr_assert_eq(v, 5);
    ASSERT_OK(f.ctx, kvrt_ctl_get_u64(f.ctx, "sched.0.finished_length", &v));
    cr_assert_eq(v, 1);
    double d = -1;
    ASSERT_OK(f.ctx, kvrt_ctl_get_double(f.ctx, "sched.0.spec_acceptance", &d));
    cr_assert_eq(d, 0.0);
    uint32_t n;
    kvrt_seq_info_t ev[1];
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 1, &n));
    close_fixture(&f);
}
