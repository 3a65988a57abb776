/*
 * test_sched_hybrid_arrival.c - waiting for KV on a scheduler of several
 * cache groups (a disaggregated engine serving a hybrid model receives
 * every group's prefill K/V from a remote worker): the K/V lands in every
 * group, a sliding-window group only needs its window, the request runs
 * only once every group has reported, and cancellation, deadlines,
 * preemption and the give-way rule for landed K/V account every group.
 */
#include "sched_hybrid_fixture.h"

/* Full attention in 16-token blocks; a window of 24 tokens in 8-token blocks. */
static const uint32_t tpb2[2] = {16, 8};
static const uint32_t window2[2] = {0, 24};

static void prompt_of(int32_t *t, uint32_t n, int32_t seed)
{
    for (uint32_t i = 0; i < n; i++)
        t[i] = (int32_t)((i * 7 + (uint32_t)seed) % 97);
}

typedef struct awaited {
    kvrt_arrival_id_t id;
    uint32_t first[MAX_GROUPS], count[MAX_GROUPS];
} awaited_t;

static awaited_t await_groups(hybrid_t *h, kvrt_seq_id_t seq, uint32_t tokens, uint64_t deadline)
{
    kvrt_arrival_params_t ap = {.field_mask = deadline ? KVRT_ARRIVAL_PARAM_DEADLINE : 0,
                                .num_tokens = tokens, .deadline_ns = deadline};
    awaited_t a;
    ASSERT_OK(h->ctx, kvrt_seq_await_kv_groups(h->sched, seq, &ap, h->num_groups, &a.id,
                                               a.first, a.count));
    return a;
}

static kvrt_seq_info_t info_of(hybrid_t *h, kvrt_seq_id_t id)
{
    kvrt_seq_info_t info;
    ASSERT_OK(h->ctx, kvrt_seq_info(h->sched, id, &info));
    return info;
}

Test(sched_hybrid_arrival, arrival_on_a_hybrid_scheduler_lands_in_every_group)
{
    static const uint32_t blocks[2] = {64, 64};
    hybrid_t h = hybrid_open(2, blocks, tpb2, window2, false, NULL);
    int32_t prompt[100];
    prompt_of(prompt, 100, 3);
    kvrt_seq_id_t id = add_prompt(&h, prompt, 100, 5);
    /* One group's blocks cannot describe two: the one-group call refuses. */
    kvrt_arrival_params_t ap = {.num_tokens = 96};
    kvrt_arrival_id_t single;
    uint32_t first, count, firsts[3], counts[3];
    ASSERT_STATUS(KVRT_ERR_UNSUPPORTED,
                  kvrt_seq_await_kv(h.sched, id, &ap, &single, &first, &count));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_seq_await_kv_groups(h.sched, id, &ap, 3, &single, firsts, counts));
    cr_assert_eq(info_of(&h, id).state, KVRT_SEQ_WAITING);

    awaited_t a = await_groups(&h, id, 96, 0);
    /* Full attention: all 6 blocks of 96 tokens. The window: the token at
     * 96 reads 73..96, blocks 9..11 of 8 tokens; 0..8 are holes. */
    cr_assert_eq(a.first[0], 0);
    cr_assert_eq(a.count[0], 6);
    cr_assert_eq(a.first[1], 9);
    cr_assert_eq(a.count[1], 3);
    cr_assert_eq(used_blocks(&h, 0), 6);
    cr_assert_eq(used_blocks(&h, 1), 3);
    const int32_t *view;
    uint32_t nb, nt;
    ASSERT_OK(h.ctx, kvrt_seq_group_blocks(h.sched, id, 1, &view, &nb, &nt));
    cr_assert_eq(nb, 12);
    cr_assert_eq(nt, 96);
    for (uint32_t j = 0; j < 12; j++)
        cr_assert(j < 9 ? view[j] == KVRT_NULL_BLOCK : view[j] > 0, "entry %u: %d", j, view[j]);
    cr_assert_eq(info_of(&h, id).state, KVRT_SEQ_WAITING_KV);
    verify_all(&h);

    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 1, 3));
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 0, 6));
    kvrt_seq_info_t info = info_of(&h, id);
    cr_assert_eq(info.state, KVRT_SEQ_WAITING);
    cr_assert_eq(info.computed_tokens, 96);
    /* The arrival's id is dead once every group reported. */
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_arrival_group_complete(h.sched, a.id, 0, 0));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_arrival_complete(h.sched, a.id, 0));

    /* The next step computes only the last 4 prompt tokens. */
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(h.ctx, kvrt_sched_step(h.sched, 0, &plan));
    cr_assert_eq(plan->num_seqs, 1);
    cr_assert_eq(plan->seqs[0].num_computed_tokens, 96);
    cr_assert_eq(plan->seqs[0].num_new_tokens, 4);
    check_plan_groups(&h, plan);
    commit_model(&h, plan);
    kvrt_sched_stats_t st;
    ASSERT_OK(h.ctx, kvrt_sched_stats(h.sched, &st));
    cr_assert_eq(st.arrivals, 1);
    cr_assert_eq(st.arrived_tokens, 96);
    cr_assert_eq(st.arrivals_failed, 0);
    run_to_end(&h, 20);
    expect_model_output(&h, id, prompt, 100, 5);
    hybrid_close(&h);
}

Test(sched_hybrid_arrival, partial_landing_is_not_runnable)
{
    static const uint32_t blocks[2] = {64, 64};
    hybrid_t h = hybrid_open(2, blocks, tpb2, window2, false, NULL);
    int32_t prompt[100];
    prompt_of(prompt, 100, 5);
    kvrt_seq_id_t id = add_prompt(&h, prompt, 100, 3);
    awaited_t a = await_groups(&h, id, 96, 0);
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 0, a.count[0]));
    /* Group 1 has not reported: never planned, whatever the steps. */
    for (uint64_t now = 0; now < 5; now++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(h.ctx, kvrt_sched_step(h.sched, now, &plan));
        cr_assert_eq(plan->num_seqs, 0);
        cr_assert_eq(info_of(&h, id).state, KVRT_SEQ_WAITING_KV);
        verify_all(&h);
    }
    /* A group reports once; counts above the group's are refused; a
     * count for several groups at once means nothing and is refused. */
    ASSERT_STATUS(KVRT_ERR_BAD_STATE, kvrt_arrival_group_complete(h.sched, a.id, 0, 1));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_arrival_group_complete(h.sched, a.id, 1, a.count[1] + 1));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_arrival_group_complete(h.sched, a.id, 2, 0));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_arrival_complete(h.sched, a.id, 2));
    cr_assert_eq(info_of(&h, id).state, KVRT_SEQ_WAITING_KV);
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 1, a.count[1]));
    cr_assert_eq(info_of(&h, id).computed_tokens, 96);
    run_to_end(&h, 20);
    expect_model_output(&h, id, prompt, 100, 3);
    hybrid_close(&h);
}

Test(sched_hybrid_arrival, a_short_landing_keeps_only_the_prefix_every_group_holds)
{
    static const uint32_t blocks[2] = {64, 64};
    int32_t prompt[100];
    prompt_of(prompt, 100, 11);
    /* The window group needs the window of the last token only: once the
     * full group lands 3 of 6 blocks (48 tokens), the window of token 48 is
     * in blocks never allocated, so nothing is kept. */
    hybrid_t h = hybrid_open(2, blocks, tpb2, window2, false, NULL);
    kvrt_seq_id_t id = add_prompt(&h, prompt, 100, 2);
    awaited_t a = await_groups(&h, id, 96, 0);
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 0, 3));
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 1, a.count[1]));
    kvrt_seq_info_t info = info_of(&h, id);
    cr_assert_eq(info.state, KVRT_SEQ_WAITING);
    cr_assert_eq(info.computed_tokens, 0);
    cr_assert_eq(used_blocks(&h, 0), 0);
    cr_assert_eq(used_blocks(&h, 1), 0);
    kvrt_sched_stats_t st;
    ASSERT_OK(h.ctx, kvrt_sched_stats(h.sched, &st));
    cr_assert_eq(st.arrivals_failed, 1);
    run_to_end(&h, 30);
    expect_model_output(&h, id, prompt, 100, 2);
    hybrid_close(&h);

    /* A window wider than the prompt holds every block from 0: the full
     * group's 48 tokens are kept in both groups. */
    static const uint32_t wide[2] = {0, 200};
    h = hybrid_open(2, blocks, tpb2, wide, false, NULL);
    id = add_prompt(&h, prompt, 100, 2);
    a = await_groups(&h, id, 96, 0);
    cr_assert_eq(a.first[1], 0);
    cr_assert_eq(a.count[1], 12);
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 1, a.count[1]));
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 0, 3));
    info = info_of(&h, id);
    cr_assert_eq(info.computed_tokens, 48);
    cr_assert_eq(used_blocks(&h, 0), 3);
    cr_assert_eq(used_blocks(&h, 1), 6);
    verify_all(&h);
    run_to_end(&h, 30);
    expect_model_output(&h, id, prompt, 100, 2);
    hybrid_close(&h);
}

Test(sched_hybrid_arrival, cancel_releases_every_groups_blocks)
{
    static const uint32_t blocks[2] = {64, 64};
    hybrid_t h = hybrid_open(2, blocks, tpb2, window2, false, NULL);
    int32_t prompt[100];
    prompt_of(prompt, 100, 17);
    /* Aborted while its K/V arrives: each group's blocks stay held until
     * that group reports (the writer may still be writing them). */
    kvrt_seq_id_t id = add_prompt(&h, prompt, 100, 2);
    awaited_t a = await_groups(&h, id, 96, 0);
    ASSERT_OK(h.ctx, kvrt_seq_abort(h.sched, id));
    cr_assert_eq(info_of(&h, id).state, KVRT_SEQ_ENDED);
    cr_assert_eq(used_blocks(&h, 0), 6);
    cr_assert_eq(used_blocks(&h, 1), 3);
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 0, 6));
    cr_assert_eq(used_blocks(&h, 0), 0);
    cr_assert_eq(used_blocks(&h, 1), 3);
    verify_all(&h);
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 1, 0));
    cr_assert_eq(used_blocks(&h, 1), 0);
    drain_all(&h);

    /* Aborted after one group reported: that group's blocks go at once,
     * the other's at its report, here through kvrt_arrival_complete. */
    id = add_prompt(&h, prompt, 100, 2);
    a = await_groups(&h, id, 96, 0);
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 1, a.count[1]));
    ASSERT_OK(h.ctx, kvrt_seq_abort(h.sched, id));
    cr_assert_eq(used_blocks(&h, 0), 6);
    cr_assert_eq(used_blocks(&h, 1), 0);
    ASSERT_OK(h.ctx, kvrt_arrival_complete(h.sched, a.id, 0));
    cr_assert_eq(used_blocks(&h, 0), 0);
    drain_all(&h);

    /* The engine gives up (nothing landed, every group at once): the
     * request is queued again and recomputes its whole prompt. */
    id = add_prompt(&h, prompt, 100, 2);
    a = await_groups(&h, id, 96, 0);
    ASSERT_OK(h.ctx, kvrt_arrival_complete(h.sched, a.id, 0));
    kvrt_seq_info_t info = info_of(&h, id);
    cr_assert_eq(info.state, KVRT_SEQ_WAITING);
    cr_assert_eq(info.computed_tokens, 0);
    cr_assert_eq(used_blocks(&h, 0), 0);
    cr_assert_eq(used_blocks(&h, 1), 0);
    run_to_end(&h, 30);
    expect_model_output(&h, id, prompt, 100, 2);
    hybrid_close(&h);
}

Test(sched_hybrid_arrival, deadline_requeues_the_request_and_keeps_the_blocks_until_reported)
{
    static const uint32_t blocks[2] = {64, 64};
    hybrid_t h = hybrid_open(2, blocks, tpb2, window2, false, NULL);
    int32_t prompt[100];
    prompt_of(prompt, 100, 23);
    kvrt_seq_id_t id = add_prompt(&h, prompt, 100, 2);
    awaited_t a = await_groups(&h, id, 96, 1000);
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 0, a.count[0]));
    /* Before the deadline: waiting; after it: recomputed from the start
     * in fresh blocks, while group 1's arrival blocks stay held. */
    cr_assert(!checked_step(&h, 1000));
    cr_assert(checked_step(&h, 1001));
    kvrt_seq_info_t info = info_of(&h, id);
    cr_assert_eq(info.state, KVRT_SEQ_RUNNING);
    kvrt_sched_stats_t st;
    ASSERT_OK(h.ctx, kvrt_sched_stats(h.sched, &st));
    cr_assert_eq(st.arrivals_expired, 1);
    cr_assert_eq(st.awaiting_kv, 0);
    const int32_t *view;
    uint32_t nb;
    ASSERT_OK(h.ctx, kvrt_seq_group_blocks(h.sched, id, 1, &view, &nb, NULL));
    cr_assert_eq(used_blocks(&h, 1), 3 + nb, "the given-up arrival's 3 blocks are held");
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 1, a.count[1]));
    cr_assert_eq(used_blocks(&h, 1), nb);
    run_to_end(&h, 30);
    expect_model_output(&h, id, prompt, 100, 2);
    hybrid_close(&h);
}

Test(sched_hybrid_arrival, preemption_during_await_never_touches_the_arrival)
{
    /* Small pools: two growing requests preempt each other while a third
     * waits for its K/V; the arrival's blocks in both groups stay as they
     * are, and the last running request waits for them instead of failing. */
    static const uint32_t blocks[2] = {17, 24};
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS,
                              .max_batch_tokens = 32};
    hybrid_t h = hybrid_open(2, blocks, tpb2, window2, false, &sp);
    int32_t waiting_prompt[100], p1[40], p2[40];
    prompt_of(waiting_prompt, 100, 29);
    prompt_of(p1, 40, 31);
    prompt_of(p2, 40, 37);
    kvrt_seq_id_t w = add_prompt(&h, waiting_prompt, 100, 4);
    awaited_t a = await_groups(&h, w, 96, 0);
    int32_t held[2][6];
    for (uint32_t g = 0; g < 2; g++) {
        const int32_t *view;
        ASSERT_OK(h.ctx, kvrt_seq_group_blocks(h.sched, w, g, &view, NULL, NULL));
        memcpy(held[g], view + a.first[g], a.count[g] * sizeof(int32_t));
    }
    kvrt_seq_id_t r1 = add_prompt(&h, p1, 40, 120), r2 = add_prompt(&h, p2, 40, 120);
    kvrt_sched_stats_t st = {0};
    uint64_t now = 0;
    for (; now < 400 && st.preemptions < 2; now++) {
        checked_step(&h, now);
        ASSERT_OK(h.ctx, kvrt_sched_stats(h.sched, &st));
        cr_assert_eq(info_of(&h, w).state, KVRT_SEQ_WAITING_KV);
        for (uint32_t g = 0; g < 2; g++) {
            const int32_t *view;
            ASSERT_OK(h.ctx, kvrt_seq_group_blocks(h.sched, w, g, &view, NULL, NULL));
            cr_assert_eq(memcmp(view + a.first[g], held[g], a.count[g] * sizeof(int32_t)), 0,
                         "group %u: the arrival's blocks changed", g);
        }
    }
    cr_assert_geq(st.preemptions, 2, "the pools were meant to force preemptions");
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 0, a.count[0]));
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 1, a.count[1]));
    run_to_end(&h, 2000);
    kvrt_seq_info_t ev[4];
    uint32_t n;
    ASSERT_OK(h.ctx, kvrt_sched_drain_ended(h.sched, ev, 4, &n));
    cr_assert_eq(n, 3);
    for (uint32_t i = 0; i < n; i++) {
        cr_assert(ev[i].id == w || ev[i].id == r1 || ev[i].id == r2);
        cr_assert_eq(ev[i].end_reason, KVRT_END_LENGTH, "request %u: reason %d status %d", i,
                     ev[i].end_reason, ev[i].status);
    }
    hybrid_close(&h);
}

Test(sched_hybrid_arrival, landed_kv_gives_way_to_the_head_in_every_group)
{
    /* Two requests hold K/V that landed: in the window group they fill the
     * pool. A request of higher priority heads the queue with nothing
     * running: the landed K/V behind it gives way, or the queue stalls. */
    static const uint32_t blocks[2] = {64, 7};
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS,
                              .max_batch_tokens = 16};
    hybrid_t h = hybrid_open(2, blocks, tpb2, window2, false, &sp);
    int32_t la[100], lb[100], head[40];
    prompt_of(la, 100, 41);
    prompt_of(lb, 100, 43);
    prompt_of(head, 40, 47);
    kvrt_seq_id_t landed[2] = {add_prompt(&h, la, 100, 2), add_prompt(&h, lb, 100, 2)};
    for (uint32_t i = 0; i < 2; i++) {
        awaited_t a = await_groups(&h, landed[i], 96, 0);
        ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 0, a.count[0]));
        ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 1, a.count[1]));
    }
    cr_assert_eq(used_blocks(&h, 1), 6, "the window group's pool is full");
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_PRIORITY, .prompt = head,
                           .prompt_len = 40, .max_new_tokens = 2, .priority = 1};
    kvrt_seq_id_t first;
    ASSERT_OK(h.ctx, kvrt_seq_add(h.sched, &p, &first));
    cr_assert(checked_step(&h, 0));
    cr_assert_eq(info_of(&h, first).state, KVRT_SEQ_RUNNING);
    /* The later of the two gave its blocks up; the earlier keeps them. */
    cr_assert_eq(info_of(&h, landed[0]).computed_tokens, 96);
    cr_assert_eq(info_of(&h, landed[1]).computed_tokens, 0);
    run_to_end(&h, 100);
    drain_all(&h);
    hybrid_close(&h);
}

Test(sched_hybrid_arrival, one_window_group_takes_the_one_group_calls_with_holes_first)
{
    /* A model of sliding-window layers only: one group, so kvrt_seq_await_kv
     * and kvrt_arrival_complete serve it; only the window arrives. */
    static const uint32_t blocks[1] = {32}, tpb[1] = {8}, window[1] = {24};
    hybrid_t h = hybrid_open(1, blocks, tpb, window, false, NULL);
    int32_t prompt[100];
    prompt_of(prompt, 100, 53);
    kvrt_seq_id_t id = add_prompt(&h, prompt, 100, 3);
    kvrt_arrival_params_t ap = {.num_tokens = 90};
    kvrt_arrival_id_t arrival;
    uint32_t first, count;
    ASSERT_OK(h.ctx, kvrt_seq_await_kv(h.sched, id, &ap, &arrival, &first, &count));
    /* The token at 90 reads 67..90: blocks 8..11 (the last one partial). */
    cr_assert_eq(first, 8);
    cr_assert_eq(count, 4);
    cr_assert_eq(used_blocks(&h, 0), 4);
    const int32_t *view;
    uint32_t nb, nt;
    ASSERT_OK(h.ctx, kvrt_seq_blocks(h.sched, id, &view, &nb, &nt));
    cr_assert_eq(nb, 12);
    cr_assert_eq(nt, 90);
    cr_assert_eq(view[7], KVRT_NULL_BLOCK);
    cr_assert_gt(view[8], 0);
    verify_all(&h);
    ASSERT_OK(h.ctx, kvrt_arrival_complete(h.sched, arrival, count));
    cr_assert_eq(info_of(&h, id).computed_tokens, 90);
    run_to_end(&h, 30);
    expect_model_output(&h, id, prompt, 100, 3);
    hybrid_close(&h);
}

/* ---- randomized ------------------------------------------------------------ */

#define RA_REQ 300
#define RA_INFLIGHT 12

typedef struct ra_req {
    kvrt_seq_id_t id;
    uint32_t len, max_new;
    int32_t prompt[72];
    bool live, aborted;
} ra_req_t;

typedef struct ra_arrival {
    kvrt_arrival_id_t id;
    uint32_t count[MAX_GROUPS];
    uint64_t due[MAX_GROUPS]; /* step at which each group reports */
    bool reported[MAX_GROUPS];
} ra_arrival_t;

typedef struct ra_world {
    hybrid_t h;
    uint64_t rng;
    ra_req_t req[RA_REQ];
    uint32_t num_req;
    ra_arrival_t arr[RA_INFLIGHT];
    uint32_t num_arr;
    uint32_t finished;
    int32_t last_sampled[RA_REQ];
    const kvrt_batch_plan_t *in_flight[2];
    uint32_t num_in_flight;
} ra_world_t;

static void ra_start_arrival(ra_world_t *w, uint64_t now)
{
    if (w->num_arr == RA_INFLIGHT || !w->num_req)
        return;
    ra_req_t *r = &w->req[w->num_req - 1 - test_rand_below(&w->rng, w->num_req < 8 ? w->num_req : 8)];
    if (!r->live)
        return;
    kvrt_seq_info_t info = info_of(&w->h, r->id);
    uint32_t total = info.prompt_tokens + info.output_tokens;
    if (info.state != KVRT_SEQ_WAITING && info.state != KVRT_SEQ_PREEMPTED)
        return;
    kvrt_arrival_params_t ap = {
        .field_mask = test_rand_below(&w->rng, 3) ? 0 : KVRT_ARRIVAL_PARAM_DEADLINE,
        .num_tokens = 1 + test_rand_below(&w->rng, total - 1),
        .deadline_ns = now + test_rand_below(&w->rng, 6)};
    ra_arrival_t *a = &w->arr[w->num_arr];
    uint32_t first[MAX_GROUPS];
    kvrt_status_t st = kvrt_seq_await_kv_groups(w->h.sched, r->id, &ap, w->h.num_groups, &a->id,
                                                first, a->count);
    if (st == KVRT_ERR_NO_BLOCKS || st == KVRT_ERR_BAD_STATE)
        return;
    ASSERT_OK(w->h.ctx, st);
    cr_assert_eq(info_of(&w->h, r->id).state, KVRT_SEQ_WAITING_KV);
    for (uint32_t g = 0; g < w->h.num_groups; g++) {
        /* The blocks to fill are real; a window group's before them holes. */
        const int32_t *view;
        uint32_t nb;
        ASSERT_OK(w->h.ctx, kvrt_seq_group_blocks(w->h.sched, r->id, g, &view, &nb, NULL));
        cr_assert_leq(first[g] + a->count[g], nb);
        for (uint32_t j = first[g]; j < first[g] + a->count[g]; j++)
            cr_assert_gt(view[j], 0, "group %u entry %u", g, j);
        if (w->h.window[g] == 0)
            for (uint32_t j = 0; j < first[g]; j++)
                cr_assert_gt(view[j], 0, "group %u hit entry %u", g, j);
        a->due[g] = now + test_rand_below(&w->rng, 8);
        a->reported[g] = false;
    }
    w->num_arr++;
}

/* Reports due groups (all when `all`): fully, partly or nothing. */
static void ra_report(ra_world_t *w, uint64_t now, bool all)
{
    for (uint32_t i = 0; i < w->num_arr;) {
        ra_arrival_t *a = &w->arr[i];
        uint32_t left = 0;
        for (uint32_t g = 0; g < w->h.num_groups; g++) {
            if (a->reported[g])
                continue;
            if (!all && a->due[g] > now) {
                left++;
                continue;
            }
            uint32_t landed = test_rand_below(&w->rng, 4)
                                  ? a->count[g]
                                  : test_rand_below(&w->rng, a->count[g] + 1);
            ASSERT_OK(w->h.ctx, kvrt_arrival_group_complete(w->h.sched, a->id, g, landed));
            a->reported[g] = true;
        }
        if (left) {
            i++;
            continue;
        }
        ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_arrival_complete(w->h.sched, a->id, 0));
        *a = w->arr[--w->num_arr];
    }
}

static void ra_drain(ra_world_t *w)
{
    kvrt_seq_info_t ev[16];
    uint32_t n;
    do {
        ASSERT_OK(w->h.ctx, kvrt_sched_drain_ended(w->h.sched, ev, 16, &n));
        for (uint32_t i = 0; i < n; i++) {
            ra_req_t *r = &w->req[ev[i].user_tag];
            cr_assert(r->live && r->id == ev[i].id, "request %llu ended twice",
                      (unsigned long long)ev[i].user_tag);
            r->live = false;
            if (ev[i].end_reason == KVRT_END_ABORTED) {
                cr_assert(r->aborted);
                continue;
            }
            cr_assert_eq(ev[i].end_reason, KVRT_END_LENGTH, "reason %d status %d",
                         ev[i].end_reason, ev[i].status);
            cr_assert_eq(ev[i].output_tokens, r->max_new);
            int32_t prev = r->prompt[r->len - 1];
            for (uint32_t k = 0; k < r->max_new; k++) {
                cr_assert_eq(ev[i].output[k], model(prev));
                prev = ev[i].output[k];
            }
            w->finished++;
        }
    } while (n == 16);
}

static void ra_add(ra_world_t *w, const int32_t (*system)[32])
{
    if (w->num_req == RA_REQ)
        return;
    ra_req_t *r = &w->req[w->num_req];
    r->len = 8 + test_rand_below(&w->rng, 64);
    r->max_new = 1 + test_rand_below(&w->rng, 24);
    for (uint32_t i = 0; i < r->len; i++) /* shared system prompts: prefix hits */
        r->prompt[i] = i < 32 && test_rand_below(&w->rng, 4) ? system[w->num_req % 2][i]
                                                             : (int32_t)test_rand_below(&w->rng, 97);
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_PRIORITY | KVRT_SEQ_PARAM_USER_TAG,
                           .prompt = r->prompt, .prompt_len = r->len,
                           .max_new_tokens = r->max_new,
                           .priority = (int32_t)test_rand_below(&w->rng, 3),
                           .user_tag = w->num_req};
    ASSERT_OK(w->h.ctx, kvrt_seq_add(w->h.sched, &p, &r->id));
    r->live = true;
    w->num_req++;
}

/* The engine: the model's next token for every sampling entry. A
 * placeholder input (a plan built before the previous one was committed)
 * stands for the token it sampled last for that request. */
static void ra_commit(ra_world_t *w, const kvrt_batch_plan_t *plan)
{
    int32_t tokens[64];
    uint32_t n = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *e = &plan->seqs[i];
        if (!e->sample)
            continue;
        int32_t prev = test_input_before_drafts(plan, i);
        if (prev == KVRT_TOKEN_PLACEHOLDER)
            prev = w->last_sampled[e->user_tag];
        test_verify_drafts(plan, i, prev, model, tokens, &n);
        w->last_sampled[e->user_tag] = tokens[n - 1];
    }
    kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = n,
                       .tokens = tokens};
    ASSERT_OK(w->h.ctx, kvrt_sched_commit(w->h.sched, &c));
}

/* One step, every group's plan checked; the oldest plan committed once
 * plans_in_flight are held (at once when `flush`); every pool and cache
 * verified. False when the plan was empty and none is in flight. */
static bool ra_step(ra_world_t *w, uint64_t now, uint32_t plans_in_flight, bool flush)
{
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(w->h.ctx, kvrt_sched_step(w->h.sched, now, &plan));
    if (plan->num_seqs) {
        check_plan_groups(&w->h, plan);
        w->in_flight[w->num_in_flight++] = plan;
    }
    bool ran = w->num_in_flight > 0;
    if (w->num_in_flight == plans_in_flight || (flush && w->num_in_flight)) {
        ra_commit(w, w->in_flight[0]);
        w->in_flight[0] = w->in_flight[1];
        w->num_in_flight--;
    }
    verify_all(&w->h);
    return ran;
}

/* A randomized run over three groups with arrivals: requests added,
 * awaited (with and without deadlines), each group reporting on its own
 * step with all, some or none of its blocks, aborts; with plans_in_flight
 * 2, asynchronous steps. */
static void ra_run(uint32_t plans_in_flight, uint64_t seed, bool one_pool)
{
    /* Full attention in 8-token blocks, windows of 12 tokens in 4-token
     * blocks and of 40 in 16-token blocks (one_pool: all three in one pool
     * of 8-token blocks), prefix caches on; pools small enough that
     * arrivals, preemption and the give-way rule all happen (plans in
     * flight are never preempted: tighter then). */
    static const uint32_t own[3] = {0, 1, 2}, shared[3] = {0, 0, 0}, window[3] = {0, 12, 40};
    static const uint32_t tpb_own[3] = {8, 4, 16}, tpb_shared[3] = {8, 8, 8};
    const uint32_t blocks[3] = {one_pool ? (plans_in_flight > 1 ? 84 : 96)
                                         : (plans_in_flight > 1 ? 40 : 48),
                                80, 36};
    kvrt_sched_params_t sp = {
        .field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS | KVRT_SCHED_PARAM_MAX_SEQS |
                      KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_PLANS_IN_FLIGHT,
        .max_batch_tokens = 48,
        .max_seqs = 8,
        .prefill_chunk_tokens = 20,
        .max_plans_in_flight = plans_in_flight,
    };
    static ra_world_t w;
    memset(&w, 0, sizeof(w));
    w.rng = seed;
    w.h = hybrid_open_shared(3, one_pool ? shared : own, blocks,
                             one_pool ? tpb_shared : tpb_own, window, true, &sp);
    int32_t system[2][32];
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 32; i++)
            system[s][i] = (int32_t)test_rand_below(&w.rng, 97);
    uint64_t now = 0;
    for (uint32_t step = 0; step < 3000; step++, now++) {
        if (step < 2400) {
            if (test_rand_below(&w.rng, 5) < 2)
                ra_add(&w, system);
            for (uint32_t k = 0; k < 3; k++) /* requests just added are queued */
                ra_start_arrival(&w, now);
            if (w.num_req && test_rand_below(&w.rng, 12) == 0) {
                ra_req_t *r = &w.req[test_rand_below(&w.rng, w.num_req)];
                if (r->live) {
                    ASSERT_OK(w.h.ctx, kvrt_seq_abort(w.h.sched, r->id));
                    r->aborted = info_of(&w.h, r->id).end_reason == KVRT_END_ABORTED;
                }
            }
        }
        ra_report(&w, now, false);
        ra_step(&w, now, plans_in_flight, false);
        ra_drain(&w);
    }
    ra_report(&w, now, true);
    for (uint32_t step = 0; step < 4000; step++) {
        bool ran = ra_step(&w, now++, plans_in_flight, true);
        ra_drain(&w);
        kvrt_sched_stats_t st;
        ASSERT_OK(w.h.ctx, kvrt_sched_stats(w.h.sched, &st));
        if (!ran && !st.running && !st.waiting && !st.awaiting_kv)
            break;
    }
    for (uint32_t i = 0; i < w.num_req; i++)
        cr_assert(!w.req[i].live, "request %u never ended", i);
    kvrt_sched_stats_t st;
    ASSERT_OK(w.h.ctx, kvrt_sched_stats(w.h.sched, &st));
    cr_assert_eq(st.failed, 0);
    cr_assert_gt(st.arrivals, 100, "only %llu arrivals", (unsigned long long)st.arrivals);
    cr_assert_gt(st.arrived_tokens, 0);
    cr_assert_gt(st.arrivals_failed, 0);
    cr_assert_gt(st.arrivals_expired, 0);
    cr_assert_gt(st.preemptions, 0);
    cr_assert_gt(w.finished, w.num_req / 2);
    cr_log_info("hybrid arrivals, %u plan(s) in flight: %u requests, %llu arrivals (%llu "
                "failed, %llu expired), %llu tokens arrived, %llu preemptions",
                plans_in_flight, w.num_req, (unsigned long long)st.arrivals,
                (unsigned long long)st.arrivals_failed, (unsigned long long)st.arrivals_expired,
                (unsigned long long)st.arrived_tokens, (unsigned long long)st.preemptions);
    hybrid_close(&w.h);
}

Test(sched_hybrid_arrival, randomized_run_with_arrivals_keeps_every_pool_verified, .timeout = 120)
{
    ra_run(1, 0x6a11e7ull, false);
}

Test(sched_hybrid_arrival, randomized_async_run_with_arrivals_keeps_every_pool_verified,
     .timeout = 120)
{
    ra_run(2, 0x6a11e8ull, false);
}

Test(sched_hybrid_arrival, randomized_runs_with_arrivals_into_one_shared_pool_keep_it_verified,
     .timeout = 120)
{
    ra_run(1, 0x6a11e9ull, true);
    ra_run(2, 0x6a11eaull, true);
}

/* One window group of 16 over 1-token blocks (pool_blocks of them), chunks
 * of 4, a prefix cache: a 21-token request of prompt[0, 50) has run and
 * left its blocks cached, so the next request of that prompt hits 21. */
static hybrid_t window_hit_scene(uint32_t pool_blocks, int32_t prompt[50])
{
    const uint32_t blocks[1] = {pool_blocks}, tpb[1] = {1}, window[1] = {16};
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_WATERMARK,
                              .max_batch_tokens = 64, .prefill_chunk_tokens = 4,
                              .use_watermark = 0};
    hybrid_t h = hybrid_open(1, blocks, tpb, window, true, &sp);
    prompt_of(prompt, 50, 3);
    add_prompt(&h, prompt, 21, 1);
    for (uint32_t step = 0; step < 40 && checked_step(&h, step); step++)
        ;
    drain_all(&h);
    return h;
}

/* One window group of 16 over 1-token blocks, chunks of 4: a request holds
 * at most 16 + 4 blocks (+1), so kvrt_seq_add takes it into a pool of 21.
 * After a 21-token hit, an arrival up to `end` lets go of the hits its
 * window no longer reads (all of them past one window) before it takes
 * blocks, counting them as free: it fits in that pool wherever it ends,
 * and the queued request holds only the window of `end`. */
static void an_arrival_after_a_hit(uint32_t end)
{
    int32_t prompt[50];
    hybrid_t h = window_hit_scene(22, prompt);
    kvrt_seq_id_t id = add_prompt(&h, prompt, 50, 2);
    awaited_t a = await_groups(&h, id, end, 0);
    cr_assert_leq(used_blocks(&h, 0), 16, "end %u: %u blocks held while queued", end,
                  used_blocks(&h, 0));
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 0, a.count[0]));
    for (uint32_t step = 0; step < 60 && checked_step(&h, step); step++)
        cr_assert_leq(used_blocks(&h, 0), 21);
    expect_model_output(&h, id, prompt, 50, 2);
    drain_all(&h);
    hybrid_close(&h);
}

Test(sched_hybrid_arrival, an_arrival_after_a_hit_lets_go_of_the_hits_its_window_no_longer_reads)
{
    for (uint32_t end = 21; end <= 49; end += 2)
        an_arrival_after_a_hit(end);
}

Test(sched_hybrid_arrival, a_short_landing_after_a_hit_gives_the_hits_up_and_finds_them_again)
{
    /* Window 16 over 1-token blocks: a 21-token hit, an arrival up to 30
     * (which lets go of the hits before the window of 30, blocks 0..14),
     * and 5 of its blocks land. The window of 26 would need blocks 11..25,
     * so nothing is usable: the request holds nothing, the arrival counts
     * as failed, and at admission the hits are found again in the cache. */
    int32_t prompt[50];
    hybrid_t h = window_hit_scene(64, prompt);
    kvrt_seq_id_t id = add_prompt(&h, prompt, 50, 2);
    awaited_t a = await_groups(&h, id, 30, 0);
    cr_assert_eq(info_of(&h, id).computed_tokens, 21);
    cr_assert_eq(used_blocks(&h, 0), 15, "the window of 30: its 6 hits and 9 new blocks");
    ASSERT_OK(h.ctx, kvrt_arrival_group_complete(h.sched, a.id, 0, 5));
    cr_assert_eq(info_of(&h, id).computed_tokens, 0);
    cr_assert_eq(used_blocks(&h, 0), 0);
    kvrt_sched_stats_t st;
    ASSERT_OK(h.ctx, kvrt_sched_stats(h.sched, &st));
    cr_assert_eq(st.arrivals_failed, 1);
    uint64_t hits_before = st.prefix_hit_tokens;
    run_to_end(&h, 80);
    ASSERT_OK(h.ctx, kvrt_sched_stats(h.sched, &st));
    cr_assert_eq(st.prefix_hit_tokens - hits_before, 21, "the hits were not found again: %llu",
                 (unsigned long long)(st.prefix_hit_tokens - hits_before));
    expect_model_output(&h, id, prompt, 50, 2);
    hybrid_close(&h);
}
