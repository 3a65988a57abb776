/*
 * test_sched_stats.c - the scheduler's statistics: acceptance counted per
 * draft position, a prefix-hit rate over the recent window beside the
 * total, and outputs that grow without breaking callers compiled against
 * another size of kvrt_sched_stats_t / kvrt_seq_info_t; request counts that
 * add up, also while plans in flight hold a request that ended.
 */
#include <string.h>

#include "sched_fixture.h"

typedef sched_fixture_t fixture_t;

static fixture_t open_fixture(uint32_t draft)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_DRAFT |
                                            KVRT_SCHED_PARAM_ADAPTIVE_DRAFT,
                              .max_draft_tokens = draft, .adaptive_draft = 0};
    return sched_fixture_open(1024, 4, true, &sp);
}

#define close_fixture sched_fixture_close

/* One step: every sampling entry accepts `accepted` drafts (at most its
 * own) and samples token 9. */
static uint32_t step_accept(fixture_t *f, uint32_t accepted)
{
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, 0, &plan));
    if (!plan->num_seqs)
        return 0;
    int32_t tokens[2048];
    uint32_t acc[512], n = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *e = &plan->seqs[i];
        acc[i] = 0;
        if (!e->sample)
            continue;
        acc[i] = accepted < e->num_drafts ? accepted : e->num_drafts;
        const int32_t *drafts = plan->input_tokens + plan->query_start_loc[i] + 1;
        for (uint32_t j = 0; j < acc[i]; j++)
            tokens[n++] = drafts[j];
        tokens[n++] = 9;
    }
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED, .step = plan->step,
                       .num_seqs = plan->num_seqs, .num_tokens = n, .tokens = tokens,
                       .num_accepted = acc};
    ASSERT_OK(f->ctx, kvrt_sched_commit(f->sched, &c));
    return plan->num_seqs;
}

static void drain_all(fixture_t *f)
{
    kvrt_seq_info_t ev[64];
    uint32_t n;
    do
        ASSERT_OK(f->ctx, kvrt_sched_drain_ended(f->sched, ev, 64, &n));
    while (n == 64);
}

Test(sched_stats, acceptance_is_counted_per_draft_position)
{
    fixture_t f = open_fixture(3);
    int32_t prompt[5] = {1, 2, 3, 4, 5}, draft[3] = {7, 7, 7};
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 5, .max_new_tokens = 40};
    kvrt_seq_id_t id;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
    step_accept(&f, 0); /* prefill */
    uint32_t accepted[] = {0, 1, 2, 3, 1};
    for (int k = 0; k < 5; k++) {
        ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, id, draft, 3));
        step_accept(&f, accepted[k]);
    }
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    for (int j = 0; j < 3; j++)
        cr_assert_eq(st.spec_proposed_at[j], 5, "position %d", j);
    cr_assert_eq(st.spec_proposed_at[3], 0);
    cr_assert_eq(st.spec_accepted_at[0], 4, "accepted in all but the first step");
    cr_assert_eq(st.spec_accepted_at[1], 2);
    cr_assert_eq(st.spec_accepted_at[2], 1);
    cr_assert_eq(st.spec_accepted_at[0] + st.spec_accepted_at[1] + st.spec_accepted_at[2],
                 st.spec_accepted);
    uint64_t node = 0;
    ASSERT_OK(f.ctx, kvrt_ctl_get_u64(f.ctx, "sched.0.spec_accepted_at.1", &node));
    cr_assert_eq(node, 2);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, id));
    drain_all(&f);
    close_fixture(&f);
}

/* Admits `count` requests whose prompts (9 tokens: 2 full blocks offered)
 * are all alike when `same`, all different otherwise; runs them out. */
static void admit_wave(fixture_t *f, uint32_t count, bool same, int32_t base)
{
    for (uint32_t r = 0; r < count; r++) {
        int32_t prompt[9];
        for (int i = 0; i < 9; i++)
            prompt[i] = same ? 5 + i : base + (int32_t)(r * 9) + i;
        kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 9, .max_new_tokens = 1};
        kvrt_seq_id_t id;
        ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    }
    for (int k = 0; k < 1000 && step_accept(f, 0); k++)
        ;
    drain_all(f);
}

Test(sched_stats, hit_rate_window_covers_only_recent_admissions)
{
    fixture_t f = open_fixture(0);
    admit_wave(&f, KVRT_SCHED_HIT_WINDOW, false, 1000);
    admit_wave(&f, 1, true, 0); /* caches the shared prompt */
    admit_wave(&f, KVRT_SCHED_HIT_WINDOW - 1, true, 0);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.window_query_tokens, 8ull * KVRT_SCHED_HIT_WINDOW);
    cr_assert_eq(st.window_hit_tokens, 8ull * (KVRT_SCHED_HIT_WINDOW - 1),
                 "the window holds the hits of the last wave only");
    cr_assert_gt(st.prefix_hit_rate_window, 0.99);
    cr_assert_lt(st.prefix_hit_rate, 0.5, "the total still counts the misses");
    cr_assert_eq(st.prefix_query_tokens, 16ull * KVRT_SCHED_HIT_WINDOW);
    close_fixture(&f);
}

/* Adds a request of `len` tokens first, first + 1, ...; its id. */
static kvrt_seq_id_t add_run(fixture_t *f, uint32_t len, int32_t first, int32_t priority,
                             uint32_t new_tokens)
{
    int32_t prompt[64];
    cr_assert_leq(len, 64);
    for (uint32_t i = 0; i < len; i++)
        prompt[i] = first + (int32_t)i;
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_PRIORITY, .prompt = prompt,
                           .prompt_len = len, .max_new_tokens = new_tokens,
                           .priority = priority};
    kvrt_seq_id_t id;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    return id;
}

Test(sched_stats, a_head_matched_again_after_giving_up_its_hits_counts_its_query_once)
{
    /* 12 blocks of 4 tokens. A 9-token prompt leaves 2 blocks cached; a
     * long request then holds every other block. A, the cached prompt
     * again, matches its 2 blocks but finds none for its last token: the
     * pinned head. B, of higher priority, becomes the head and A gives its
     * hits up; both are admitted once the long request ends, A asking the
     * cache a second time. Each admission counts one query and its hit (at
     * its first match 2 blocks, whatever the second finds), in the totals
     * and in the window alike. */
    fixture_t f = sched_fixture_open(12, 4, true, NULL);
    admit_wave(&f, 1, true, 0); /* tokens 5..13, as A's below */
    add_run(&f, 36, 500, 0, 4);
    cr_assert_eq(step_accept(&f, 0), 1, "the long request's prefill");
    add_run(&f, 9, 5, 0, 1); /* A */
    cr_assert_eq(step_accept(&f, 0), 1, "A does not fit beside it");
    add_run(&f, 13, 900, 1, 1); /* B */
    for (int k = 0; k < 100 && step_accept(&f, 0); k++)
        ;
    kvrt_seq_info_t ev[8];
    uint32_t n = sched_fixture_drain(&f, ev, 8);
    cr_assert_eq(n, 3);
    uint64_t offered = 8, hits = 0; /* the first wave's request */
    for (uint32_t i = 0; i < n; i++) {
        cr_assert_eq(ev[i].end_reason, KVRT_END_LENGTH);
        offered += ev[i].prompt_tokens - 1;
        hits += ev[i].cached_tokens;
    }
    kvrt_cache_stats_t cs;
    ASSERT_OK(f.ctx, kvrt_cache_stats(f.cache, &cs));
    cr_assert_eq(cs.queries, 5, "A asked the cache twice (%llu queries)",
                 (unsigned long long)cs.queries);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.preemptions, 0);
    cr_assert_eq(st.prefix_query_tokens, offered, "%llu tokens offered",
                 (unsigned long long)st.prefix_query_tokens);
    cr_assert_eq(st.prefix_hit_tokens, hits);
    cr_assert_eq(st.window_query_tokens, st.prefix_query_tokens);
    cr_assert_eq(st.window_hit_tokens, st.prefix_hit_tokens);
    close_fixture(&f);
}

/* Admissions that hit, then ones that miss with shorter prompts: the
 * window's figures go down as the hitting ones leave it (and never wrap
 * below zero), the totals keep everything. */
Test(sched_stats, the_window_lets_hits_and_tokens_go_as_admissions_leave_it)
{
    fixture_t f = open_fixture(0);
    admit_wave(&f, 1, true, 0); /* caches the shared prompt */
    admit_wave(&f, KVRT_SCHED_HIT_WINDOW, true, 0); /* the window: all hits */
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.window_hit_tokens, 8ull * KVRT_SCHED_HIT_WINDOW);
    for (int32_t r = 0; r < 3; r++)
        add_run(&f, 5, 20000 + 5 * r, 0, 1); /* 4 tokens offered, no hit */
    for (int k = 0; k < 100 && step_accept(&f, 0); k++)
        ;
    drain_all(&f);
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.window_hit_tokens, 8ull * (KVRT_SCHED_HIT_WINDOW - 3), "%llu",
                 (unsigned long long)st.window_hit_tokens);
    cr_assert_eq(st.window_query_tokens, 8ull * (KVRT_SCHED_HIT_WINDOW - 3) + 3 * 4, "%llu",
                 (unsigned long long)st.window_query_tokens);
    cr_assert_leq(st.prefix_hit_rate_window, 1.0);
    cr_assert_gt(st.prefix_hit_rate_window, 0.99);
    uint64_t node = 0;
    ASSERT_OK(f.ctx, kvrt_ctl_get_u64(f.ctx, "sched.0.window_hit_tokens", &node));
    cr_assert_eq(node, st.window_hit_tokens);
    cr_assert_eq(st.prefix_hit_tokens, 8ull * KVRT_SCHED_HIT_WINDOW);
    close_fixture(&f);
}

Test(sched_stats, outputs_grow_without_breaking_callers_of_another_size)
{
    fixture_t f = open_fixture(0);
    int32_t prompt[3] = {1, 2, 3};
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 3, .max_new_tokens = 1};
    kvrt_seq_id_t id;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));

    /* A caller built against a larger (newer) struct: the bytes past what
     * this library knows are left as they were. */
    struct {
        kvrt_sched_stats_t st;
        uint64_t newer[4];
    } big;
    memset(&big, 0xab, sizeof(big));
    ASSERT_OK(f.ctx, kvrt_sched_stats_sized(f.sched, &big.st, sizeof(big)));
    cr_assert_eq(big.st.added, 1);
    cr_assert_eq(big.newer[3], 0xababababababababull);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_sched_stats_sized(f.sched, &big.st, KVRT_SCHED_STATS_SIZE_1_0 - 8));

    struct {
        kvrt_seq_info_t info;
        uint64_t newer;
    } events[3];
    memset(events, 0xab, sizeof(events));
    ASSERT_OK(f.ctx, kvrt_seq_info_sized(f.sched, id, &events[0].info, sizeof(events[0])));
    cr_assert_eq(events[0].info.id, id);
    cr_assert_eq(events[0].newer, 0xababababababababull);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_info_sized(f.sched, id, &events[0].info, 8));

    step_accept(&f, 0);
    uint32_t n = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_sched_drain_ended_sized(f.sched, &events[0].info, 8, 3, &n));
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended_sized(f.sched, &events[0].info, sizeof(events[0]),
                                                  3, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(events[0].info.id, id, "elements are event_size apart");
    cr_assert_eq(events[0].info.end_reason, KVRT_END_LENGTH);
    cr_assert_eq(events[0].newer, 0xababababababababull);
    close_fixture(&f);
}

/* Request counts add up at every moment: added = ended + waiting + running
 * + awaiting KV. */
static void expect_counts(const fixture_t *f, uint64_t running, uint64_t aborted)
{
    kvrt_sched_stats_t st;
    ASSERT_OK(f->ctx, kvrt_sched_stats(f->sched, &st));
    cr_assert_eq(st.running, running, "running %llu, expected %llu",
                 (unsigned long long)st.running, (unsigned long long)running);
    cr_assert_eq(st.aborted, aborted);
    cr_assert_eq(st.added, st.finished_length + st.finished_stop + st.aborted + st.failed +
                               st.waiting + st.running + st.awaiting_kv);
}

Test(sched_stats, a_request_aborted_while_plans_hold_it_no_longer_counts_as_running)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_PLANS_IN_FLIGHT,
                              .max_plans_in_flight = 2};
    fixture_t f = sched_fixture_open(1024, 4, true, &sp);
    int32_t prompt[6] = {1, 2, 3, 4, 5, 6};
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 6, .max_new_tokens = 50};
    kvrt_seq_id_t ids[2];
    for (int i = 0; i < 2; i++)
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &ids[i]));
    const kvrt_batch_plan_t *first, *second;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &first));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &second));
    cr_assert_eq(second->num_seqs, 2, "both plans hold both requests");
    uint32_t used = sched_fixture_used_blocks(&f);
    expect_counts(&f, 2, 0);

    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, ids[0]));
    expect_counts(&f, 1, 1);
    cr_assert_eq(sched_fixture_used_blocks(&f), used, "its blocks wait for the plans");
    sched_fixture_commit(&f, first, 7);
    expect_counts(&f, 1, 1);
    sched_fixture_commit(&f, second, 7);
    expect_counts(&f, 1, 1);
    cr_assert_lt(sched_fixture_used_blocks(&f), used, "freed once the last plan committed");

    /* Its place is free again: a third request runs beside the second. */
    kvrt_seq_id_t third;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &third));
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &plan));
    cr_assert_eq(plan->num_seqs, 2);
    sched_fixture_commit(&f, plan, 7);
    expect_counts(&f, 2, 1);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, ids[1]));
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, third));
    expect_counts(&f, 0, 3);
    drain_all(&f);
    close_fixture(&f);
}
