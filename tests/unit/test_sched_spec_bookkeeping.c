/*
 * test_sched_spec_bookkeeping.c - what a speculating request keeps between
 * calls: drafts the engine sets between a step and its commit are the next
 * step's (the commit's tokens do not disturb them), drafts set at the
 * length limit leave the request's own stop tokens intact, and its
 * verification counts stay exact however many verifications it has. Each
 * test checks what an engine reads back: the next plan's drafts, the
 * request's output, its end reason and its counts.
 */
#include <string.h>

#include "sched_fixture.h"

#define K 4u

static sched_fixture_t open_spec(uint32_t max_draft)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_DRAFT |
                                            KVRT_SCHED_PARAM_ADAPTIVE_DRAFT,
                              .max_draft_tokens = max_draft, .adaptive_draft = 0};
    return sched_fixture_open(512, 4, false, &sp);
}

static kvrt_seq_id_t add_running(sched_fixture_t *f, const kvrt_seq_params_t *p)
{
    kvrt_seq_id_t id;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, p, &id));
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, 0, &plan));
    cr_assert_eq(plan->num_seqs, 1);
    sched_fixture_commit(f, plan, 7); /* its first output */
    return id;
}

/* The one entry's drafts in plan; returns their count. */
static uint32_t drafts_of(const kvrt_batch_plan_t *plan, int32_t *out)
{
    cr_assert_eq(plan->num_seqs, 1);
    const kvrt_plan_seq_t *e = &plan->seqs[0];
    memcpy(out, plan->input_tokens + 1, e->num_drafts * sizeof(int32_t));
    return e->num_drafts;
}

/* Commits the one entry of plan: `accepted` of its drafts, then bonus. */
static kvrt_status_t commit_one(sched_fixture_t *f, const kvrt_batch_plan_t *plan,
                                uint32_t accepted, int32_t bonus)
{
    int32_t tokens[1 + KVRT_SCHED_MAX_DRAFT];
    memcpy(tokens, plan->input_tokens + 1, accepted * sizeof(int32_t));
    tokens[accepted] = bonus;
    uint32_t acc[1] = {accepted};
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = plan->step, .num_seqs = 1,
                       .num_tokens = accepted + 1, .tokens = tokens, .num_accepted = acc};
    return kvrt_sched_commit(f->sched, &c);
}

static void end_and_close(sched_fixture_t *f, kvrt_seq_id_t id)
{
    kvrt_seq_info_t info;
    ASSERT_OK(f->ctx, kvrt_seq_info(f->sched, id, &info));
    if (info.state != KVRT_SEQ_ENDED)
        ASSERT_OK(f->ctx, kvrt_seq_abort(f->sched, id));
    kvrt_seq_info_t ev[1];
    uint32_t n = 0;
    ASSERT_OK(f->ctx, kvrt_sched_drain_ended(f->sched, ev, 1, &n));
    cr_assert_eq(n, 1);
    sched_fixture_close(f);
}

Test(sched_spec_bookkeeping, drafts_set_between_a_step_and_its_commit_follow_the_committed_tokens)
{
    sched_fixture_t f = open_spec(K);
    const int32_t prompt[5] = {1, 2, 3, 4, 5};
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 5, .max_new_tokens = 40};
    kvrt_seq_id_t id = add_running(&f, &p);
    const kvrt_batch_plan_t *plan;
    int32_t got[KVRT_SCHED_MAX_DRAFT];

    /* A plain decode is planned; the drafts arrive before its commit. */
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &plan));
    cr_assert_eq(drafts_of(plan, got), 0);
    const int32_t first[K] = {11, 12, 13, 14};
    ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, first, K));
    ASSERT_OK(f.ctx, commit_one(&f, plan, 0, 10));
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.output_tokens, 2, "drafts are not output");
    cr_assert_eq(info.output[1], 10);

    /* The next step verifies them after the committed token; the drafts
     * for the step after arrive before this commit too, which appends
     * more tokens (2 accepted + the bonus) than the plain one did. */
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &plan));
    cr_assert_eq(plan->input_tokens[0], 10);
    cr_assert_eq(drafts_of(plan, got), K);
    cr_assert_arr_eq(got, first, sizeof(first));
    const int32_t second[K] = {21, 22, 23, 24};
    ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, second, K));
    ASSERT_OK(f.ctx, commit_one(&f, plan, 2, 99));
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.output_tokens, 5);
    const int32_t want_out[5] = {7, 10, 11, 12, 99};
    cr_assert_arr_eq(info.output, want_out, sizeof(want_out));

    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 3, &plan));
    cr_assert_eq(plan->input_tokens[0], 99);
    cr_assert_eq(drafts_of(plan, got), K);
    cr_assert_arr_eq(got, second, sizeof(second));
    ASSERT_OK(f.ctx, commit_one(&f, plan, 0, 30));
    end_and_close(&f, id);
}

Test(sched_spec_bookkeeping, drafts_at_the_length_limit_leave_the_stop_tokens_intact)
{
    /* min_tokens gives the request stop tokens of its own, kept after its
     * token capacity; drafts set at its last free positions must not
     * overwrite them. */
    sched_fixture_t f = open_spec(KVRT_SCHED_MAX_DRAFT);
    const int32_t prompt[3] = {1, 2, 3};
    const int32_t stops[2] = {500, 501};
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_STOP | KVRT_SEQ_PARAM_MIN_TOKENS,
                           .prompt = prompt, .prompt_len = 3, .max_new_tokens = 4,
                           .stop_tokens = stops, .num_stop_tokens = 2, .min_tokens = 2};
    kvrt_seq_id_t id = add_running(&f, &p);
    const kvrt_batch_plan_t *plan;
    int32_t full[KVRT_SCHED_MAX_DRAFT];
    for (uint32_t j = 0; j < KVRT_SCHED_MAX_DRAFT; j++)
        full[j] = 600 + (int32_t)j;
    /* Outputs 2 and 3, each with the most drafts set after them (room
     * allows none to be verified: one output is left after the bonus). */
    for (uint64_t t = 1; t <= 2; t++) {
        ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, full, KVRT_SCHED_MAX_DRAFT));
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, t, &plan));
        ASSERT_OK(f.ctx, commit_one(&f, plan, 0, 40 + (int32_t)t));
        ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, full, KVRT_SCHED_MAX_DRAFT));
    }
    /* The fourth and last output is a stop token: a stop, not the length. */
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 3, &plan));
    int32_t got[KVRT_SCHED_MAX_DRAFT];
    cr_assert_eq(drafts_of(plan, got), 0, "no room left to verify drafts");
    ASSERT_OK(f.ctx, commit_one(&f, plan, 0, 501));
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
    cr_assert_eq(info.state, KVRT_SEQ_ENDED);
    cr_assert_eq(info.end_reason, KVRT_END_STOP, "end reason %d", (int)info.end_reason);
    const int32_t want_out[4] = {7, 41, 42, 501};
    cr_assert_eq(info.output_tokens, 4);
    cr_assert_arr_eq(info.output, want_out, sizeof(want_out));
    end_and_close(&f, id);
}

Test(sched_spec_bookkeeping, per_request_speculation_counts_stay_exact_over_many_verifications)
{
    /* 16 drafts a step, a varying number accepted, 60 times: 960 drafts
     * proposed, past what an 8-bit count holds. */
    sched_fixture_t f = open_spec(KVRT_SCHED_MAX_DRAFT);
    const int32_t prompt[4] = {1, 2, 3, 4};
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 4, .max_new_tokens = 1100};
    kvrt_seq_id_t id = add_running(&f, &p);
    int32_t drafts[KVRT_SCHED_MAX_DRAFT];
    for (uint32_t j = 0; j < KVRT_SCHED_MAX_DRAFT; j++)
        drafts[j] = 300 + (int32_t)j;
    uint64_t proposed = 0, accepted = 0;
    for (uint32_t t = 0; t < 60; t++) {
        ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, drafts, KVRT_SCHED_MAX_DRAFT));
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, t + 1, &plan));
        cr_assert_eq(plan->seqs[0].num_drafts, KVRT_SCHED_MAX_DRAFT);
        const uint32_t a = (t * 7) % (KVRT_SCHED_MAX_DRAFT + 1); /* 0..16 */
        ASSERT_OK(f.ctx, commit_one(&f, plan, a, 50));
        proposed += KVRT_SCHED_MAX_DRAFT;
        accepted += a;
        kvrt_seq_info_t info;
        ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, id, &info));
        cr_assert_eq(info.spec_proposed, proposed, "after verification %u", t);
        cr_assert_eq(info.spec_accepted, accepted, "after verification %u", t);
    }
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.spec_proposed, proposed);
    cr_assert_eq(st.spec_accepted, accepted);
    end_and_close(&f, id);
}
