/*
 * test_sched_arrival.c - "waiting for KV": a request whose prefix arrives
 * from elsewhere (a tier, a peer) is parked with its blocks while the step
 * keeps scheduling others; it starts once the arrival completes, recomputes
 * what did not land or what came too late, and blocks the caller may still
 * be writing are never handed to anyone else, whatever happens to the
 * request (deadline, abort, drain, destroy).
 */
#include <string.h>

#include "sched_fixture.h"

#define TPB 4u

typedef sched_fixture_t fixture_t;

static fixture_t open_fixture(uint32_t blocks, bool cache)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK, .use_watermark = 0};
    return sched_fixture_open(blocks, TPB, cache, &sp);
}

#define used_blocks sched_fixture_used_blocks
#define close_fixture sched_fixture_close

static kvrt_seq_id_t add(fixture_t *f, uint32_t prompt_len, int32_t first)
{
    int32_t prompt[256];
    for (uint32_t i = 0; i < prompt_len; i++)
        prompt[i] = first + (int32_t)i;
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = prompt_len, .max_new_tokens = 2};
    kvrt_seq_id_t id = 0;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    return id;
}

static kvrt_arrival_id_t await_kv(fixture_t *f, kvrt_seq_id_t id, uint32_t tokens,
                                  uint64_t deadline, uint32_t *first, uint32_t *count)
{
    kvrt_arrival_params_t p = {.field_mask = deadline ? KVRT_ARRIVAL_PARAM_DEADLINE : 0,
                               .num_tokens = tokens,
                               .deadline_ns = deadline};
    kvrt_arrival_id_t a = 0;
    ASSERT_OK(f->ctx, kvrt_seq_await_kv(f->sched, id, &p, &a, first, count));
    return a;
}

static const kvrt_batch_plan_t *step(fixture_t *f, uint64_t now)
{
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, now, &plan));
    return plan;
}

static void commit(fixture_t *f, const kvrt_batch_plan_t *plan)
{
    sched_fixture_commit(f, plan, 7);
}

static int plan_index(const kvrt_batch_plan_t *plan, kvrt_seq_id_t id)
{
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        if (plan->seqs[i].id == id)
            return (int)i;
    return -1;
}

static kvrt_seq_state_t state_of(fixture_t *f, kvrt_seq_id_t id)
{
    kvrt_seq_info_t info;
    ASSERT_OK(f->ctx, kvrt_seq_info(f->sched, id, &info));
    return info.state;
}

/* No slot of the plan lies in blocks[0, n). */
static void assert_plan_avoids(const kvrt_batch_plan_t *plan, const int32_t *blocks, uint32_t n)
{
    for (uint32_t t = 0; t < plan->num_tokens; t++)
        for (uint32_t b = 0; b < n; b++)
            cr_assert_neq(plan->slot_mapping[t] / TPB, blocks[b],
                          "token %u written into block %d that an arrival holds", t, blocks[b]);
}

static void run_to_end(fixture_t *f, uint64_t now)
{
    for (int i = 0; i < 100; i++) {
        const kvrt_batch_plan_t *plan = step(f, now + (uint64_t)i);
        if (!plan->num_seqs)
            break;
        commit(f, plan);
    }
    kvrt_seq_info_t ev[16];
    uint32_t n;
    ASSERT_OK(f->ctx, kvrt_sched_drain_ended(f->sched, ev, 16, &n));
}

Test(sched_arrival, step_keeps_scheduling_others_while_a_prefix_arrives)
{
    fixture_t f = open_fixture(64, false);
    kvrt_seq_id_t a = add(&f, 17, 100);
    kvrt_seq_id_t b = add(&f, 5, 500);
    uint32_t first, count;
    kvrt_arrival_id_t arr = await_kv(&f, a, 16, 0, &first, &count);
    cr_assert_eq(first, 0);
    cr_assert_eq(count, 4);
    cr_assert_eq(state_of(&f, a), KVRT_SEQ_WAITING_KV);
    cr_assert_eq(used_blocks(&f), 4, "the arrival's blocks are allocated up front");
    const int32_t *blocks;
    uint32_t nb;
    ASSERT_OK(f.ctx, kvrt_seq_blocks(f.sched, a, &blocks, &nb, NULL));
    cr_assert_eq(nb, 4);
    int32_t held[4];
    memcpy(held, blocks, sizeof(held));
    for (int i = 0; i < 4; i++) {
        const kvrt_batch_plan_t *plan = step(&f, 10 + (uint64_t)i);
        cr_assert_eq(plan_index(plan, a), -1, "a request waiting for KV was planned");
        if (i == 0)
            cr_assert_geq(plan_index(plan, b), 0, "others are scheduled meanwhile");
        assert_plan_avoids(plan, held, 4);
        if (plan->num_seqs)
            commit(&f, plan);
    }
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.awaiting_kv, 1);
    cr_assert_eq(st.waiting, 0, "it is out of the waiting queue");
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, 4));
    run_to_end(&f, 100);
    close_fixture(&f);
}

Test(sched_arrival, landed_prefix_counts_as_computed_and_the_request_starts_after_completion)
{
    fixture_t f = open_fixture(64, false);
    kvrt_seq_id_t a = add(&f, 18, 100);
    uint32_t first, count;
    kvrt_arrival_id_t arr = await_kv(&f, a, 16, 0, &first, &count);
    const int32_t *blocks;
    ASSERT_OK(f.ctx, kvrt_seq_blocks(f.sched, a, &blocks, NULL, NULL));
    int32_t held[4];
    memcpy(held, blocks, sizeof(held));
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, count));
    cr_assert_eq(state_of(&f, a), KVRT_SEQ_WAITING);
    const kvrt_batch_plan_t *plan = step(&f, 1);
    int i = plan_index(plan, a);
    cr_assert_geq(i, 0, "it starts at the next step");
    cr_assert_eq(plan->seqs[i].num_computed_tokens, 16, "the landed tokens are computed");
    cr_assert_eq(plan->seqs[i].num_new_tokens, 2, "only the rest is prefilled");
    const int32_t *row = plan->block_rows + (size_t)plan->seqs[i].row * plan->row_stride;
    cr_assert_arr_eq(row, held, sizeof(held), "the landed blocks are its table");
    commit(&f, plan);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.arrived_tokens, 16);
    cr_assert_eq(st.prefill_tokens, 2);
    cr_assert_eq(st.prefix_hit_tokens, 0, "arrived tokens are not prefix-cache hits");
    run_to_end(&f, 10);
    close_fixture(&f);
}

Test(sched_arrival, partial_arrival_keeps_what_landed_and_recomputes_the_rest)
{
    fixture_t f = open_fixture(64, false);
    kvrt_seq_id_t a = add(&f, 18, 100);
    uint32_t first, count;
    kvrt_arrival_id_t arr = await_kv(&f, a, 16, 0, &first, &count);
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, 1));
    cr_assert_eq(used_blocks(&f), 1, "blocks that did not land are freed");
    const kvrt_batch_plan_t *plan = step(&f, 1);
    int i = plan_index(plan, a);
    cr_assert_geq(i, 0);
    cr_assert_eq(plan->seqs[i].num_computed_tokens, 4);
    cr_assert_eq(plan->seqs[i].num_new_tokens, 14);
    commit(&f, plan);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.arrivals_failed, 1);
    run_to_end(&f, 10);
    close_fixture(&f);
}

Test(sched_arrival, failed_arrival_recomputes_the_whole_prefix)
{
    fixture_t f = open_fixture(64, false);
    kvrt_seq_id_t a = add(&f, 9, 100);
    uint32_t first, count;
    kvrt_arrival_id_t arr = await_kv(&f, a, 8, 0, &first, &count);
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, 0));
    cr_assert_eq(used_blocks(&f), 0);
    const kvrt_batch_plan_t *plan = step(&f, 1);
    int i = plan_index(plan, a);
    cr_assert_geq(i, 0);
    cr_assert_eq(plan->seqs[i].num_computed_tokens, 0);
    cr_assert_eq(plan->seqs[i].num_new_tokens, 9);
    commit(&f, plan);
    run_to_end(&f, 10);
    close_fixture(&f);
}

Test(sched_arrival, arrival_past_its_deadline_is_recomputed_and_its_blocks_held_until_completed)
{
    fixture_t f = open_fixture(64, false);
    kvrt_seq_id_t a = add(&f, 9, 100);
    uint32_t first, count;
    kvrt_arrival_id_t arr = await_kv(&f, a, 8, 1000, &first, &count);
    const int32_t *blocks;
    ASSERT_OK(f.ctx, kvrt_seq_blocks(f.sched, a, &blocks, NULL, NULL));
    int32_t held[2];
    memcpy(held, blocks, sizeof(held));
    const kvrt_batch_plan_t *plan = step(&f, 1000);
    cr_assert_eq(plan->num_seqs, 0, "not given up at its deadline");
    plan = step(&f, 1001);
    int i = plan_index(plan, a);
    cr_assert_geq(i, 0, "given up after its deadline and recomputed at once");
    cr_assert_eq(plan->seqs[i].num_computed_tokens, 0);
    assert_plan_avoids(plan, held, 2);
    cr_assert_eq(used_blocks(&f), 2 + 3, "the late arrival's blocks stay held");
    commit(&f, plan);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.arrivals_expired, 1);
    cr_assert_eq(st.awaiting_kv, 0);
    run_to_end(&f, 2000);
    cr_assert_eq(used_blocks(&f), 2, "held until the caller completes the arrival");
    /* A count the arrival cannot have is refused, given up or not. */
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_arrival_complete(f.sched, arr, count + 1));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_arrival_group_complete(f.sched, arr, 0, count + 1));
    cr_assert_eq(used_blocks(&f), 2);
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, count));
    cr_assert_eq(used_blocks(&f), 0);
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_arrival_complete(f.sched, arr, count));
    close_fixture(&f);
}

Test(sched_arrival, abort_while_waiting_for_kv_ends_it_and_frees_everything_at_completion)
{
    fixture_t f = open_fixture(64, false);
    kvrt_seq_id_t a = add(&f, 9, 100);
    uint32_t first, count;
    kvrt_arrival_id_t arr = await_kv(&f, a, 8, 0, &first, &count);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, a));
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, a));
    kvrt_seq_info_t ev[4];
    uint32_t n;
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 4, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ev[0].end_reason, KVRT_END_ABORTED);
    cr_assert_eq(used_blocks(&f), 2, "the caller may still be writing them");
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, count));
    cr_assert_eq(used_blocks(&f), 0);
    close_fixture(&f);
}

Test(sched_arrival, destroy_with_arrivals_outstanding_frees_their_blocks)
{
    fixture_t f = open_fixture(64, false);
    uint32_t first, count;
    await_kv(&f, add(&f, 9, 100), 8, 0, &first, &count);
    kvrt_seq_id_t b = add(&f, 9, 200);
    await_kv(&f, b, 8, 0, &first, &count);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, b));
    ASSERT_OK(f.ctx, kvrt_sched_destroy(f.sched));
    f.sched = NULL;
    close_fixture(&f);
}

Test(sched_arrival, local_cache_hits_are_kept_and_only_the_rest_arrives)
{
    fixture_t f = open_fixture(64, true);
    kvrt_seq_id_t warm = add(&f, 9, 100);
    (void)warm;
    run_to_end(&f, 1);
    kvrt_seq_id_t a = add(&f, 17, 100); /* shares its first 8 tokens */
    uint32_t first, count;
    kvrt_arrival_id_t arr = await_kv(&f, a, 16, 0, &first, &count);
    cr_assert_eq(first, 2, "two blocks come from the local cache");
    cr_assert_eq(count, 2);
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, count));
    const kvrt_batch_plan_t *plan = step(&f, 100);
    int i = plan_index(plan, a);
    cr_assert_geq(i, 0);
    cr_assert_eq(plan->seqs[i].num_computed_tokens, 16);
    commit(&f, plan);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.prefix_hit_tokens, 8);
    cr_assert_eq(st.arrived_tokens, 8);
    run_to_end(&f, 200);
    close_fixture(&f);
}

/* An arrival of no blocks (the local cache already holds more than the
 * caller would send) still has to be completed, and completing it keeps
 * the hits: the request prefills only what they do not cover. */
Test(sched_arrival, an_arrival_of_no_blocks_keeps_the_local_hits)
{
    fixture_t f = open_fixture(64, true);
    add(&f, 13, 100);
    run_to_end(&f, 1); /* 3 full blocks of the prompt are cached */
    kvrt_seq_id_t a = add(&f, 13, 100);
    uint32_t first, count;
    kvrt_arrival_id_t arr = await_kv(&f, a, 8, 0, &first, &count);
    cr_assert_eq(count, 0, "the cache holds the 8 tokens already");
    cr_assert_eq(first, 3);
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, 0));
    const int32_t *blocks;
    uint32_t num_blocks, num_tokens;
    ASSERT_OK(f.ctx, kvrt_seq_blocks(f.sched, a, &blocks, &num_blocks, &num_tokens));
    cr_assert_eq(num_blocks, 3, "the hits are kept");
    const kvrt_batch_plan_t *plan = step(&f, 100);
    int i = plan_index(plan, a);
    cr_assert_geq(i, 0);
    cr_assert_eq(plan->seqs[i].num_computed_tokens, 12);
    cr_assert_eq(plan->seqs[i].num_new_tokens, 1, "only the last token is computed");
    commit(&f, plan);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.arrivals_failed, 0);
    run_to_end(&f, 200);
    close_fixture(&f);
}

Test(sched_arrival, landed_blocks_enter_the_prefix_cache_at_first_commit)
{
    fixture_t f = open_fixture(64, true);
    kvrt_seq_id_t a = add(&f, 17, 100);
    uint32_t first, count;
    kvrt_arrival_id_t arr = await_kv(&f, a, 16, 0, &first, &count);
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, count));
    run_to_end(&f, 1);
    add(&f, 17, 100);
    const kvrt_batch_plan_t *plan = step(&f, 100);
    cr_assert_eq(plan->num_seqs, 1);
    cr_assert_eq(plan->seqs[0].num_computed_tokens, 16, "the arrived prefix is a cache hit");
    commit(&f, plan);
    run_to_end(&f, 200);
    close_fixture(&f);
}

Test(sched_arrival, refused_calls_change_nothing)
{
    fixture_t f = open_fixture(8, false); /* 7 usable blocks */
    kvrt_seq_id_t a = add(&f, 9, 100);
    kvrt_arrival_params_t p = {.num_tokens = 9};
    kvrt_arrival_id_t arr = 0;
    uint32_t first = 77, count = 77;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_await_kv(f.sched, a, &p, &arr, &first, &count));
    p.num_tokens = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_await_kv(f.sched, a, &p, &arr, &first, &count));
    p = (kvrt_arrival_params_t){.field_mask = 1u << 9, .num_tokens = 4};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_await_kv(f.sched, a, &p, &arr, &first, &count));
    p = (kvrt_arrival_params_t){.num_tokens = 4};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_await_kv(f.sched, a, NULL, &arr, &first, &count));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST,
                  kvrt_seq_await_kv(f.sched, a + 2, &p, &arr, &first, &count));
    cr_assert_eq(first, 77);
    cr_assert_eq(arr, 0);
    cr_assert_eq(state_of(&f, a), KVRT_SEQ_WAITING);
    cr_assert_eq(used_blocks(&f), 0);

    /* A running request is not queued. */
    const kvrt_batch_plan_t *plan = step(&f, 1);
    ASSERT_STATUS(KVRT_ERR_BAD_STATE, kvrt_seq_await_kv(f.sched, a, &p, &arr, &first, &count));
    commit(&f, plan);
    cr_assert_eq(used_blocks(&f), 3);

    /* Not enough blocks: nothing allocated, the request stays queued. */
    int32_t prompt[40] = {0};
    kvrt_seq_params_t sp = {.prompt = prompt, .prompt_len = 20, .max_new_tokens = 1};
    kvrt_seq_id_t big;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &sp, &big));
    p.num_tokens = 19;
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_seq_await_kv(f.sched, big, &p, &arr, &first, &count));
    cr_assert_eq(state_of(&f, big), KVRT_SEQ_WAITING);
    cr_assert_eq(used_blocks(&f), 3);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, big));

    /* Completion: too many blocks, unknown ids, twice. */
    kvrt_seq_id_t c = add(&f, 5, 300);
    p.num_tokens = 4;
    arr = await_kv(&f, c, 4, 0, &first, &count);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_arrival_complete(f.sched, arr, count + 1));
    cr_assert_eq(state_of(&f, c), KVRT_SEQ_WAITING_KV);
    ASSERT_STATUS(KVRT_ERR_BAD_STATE, kvrt_seq_await_kv(f.sched, c, &p, &arr, &first, &count));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_arrival_complete(f.sched, arr + 2, 0));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_arrival_complete(f.sched, 0, 0));
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, count));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST, kvrt_arrival_complete(f.sched, arr, count));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_arrival_complete(NULL, arr, 0));
    run_to_end(&f, 10);
    close_fixture(&f);
}

/* A request of prompt 100..107 followed by `extra` tokens from `first`. */
static kvrt_seq_id_t add_sharing(fixture_t *f, uint32_t extra, int32_t first, uint32_t max_new)
{
    int32_t prompt[64];
    for (uint32_t i = 0; i < 8 + extra; i++)
        prompt[i] = i < 8 ? 100 + (int32_t)i : first + (int32_t)i;
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 8 + extra,
                           .max_new_tokens = max_new};
    kvrt_seq_id_t id = 0;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    return id;
}

Test(sched_arrival, a_refused_arrival_counts_no_query_and_leaves_the_pinned_head_its_hits)
{
    fixture_t f = open_fixture(16, true); /* 15 usable blocks of 4 tokens */
    add_sharing(&f, 0, 0, 1);
    run_to_end(&f, 1); /* caches blocks of 100..103 and 104..107 */
    int32_t own[36];
    for (int i = 0; i < 36; i++)
        own[i] = 900 + i;
    kvrt_seq_params_t rp = {.prompt = own, .prompt_len = 36, .max_new_tokens = 4};
    kvrt_seq_id_t running;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &rp, &running)); /* will hold 10 blocks */
    int32_t token = 7;
    const kvrt_batch_plan_t *plan = step(&f, 10);
    sched_fixture_commit(&f, plan, token);
    /* The head shares the cached prefix and needs 5 blocks past it: it
     * keeps its 2 hits while it waits (3 blocks are free). */
    kvrt_seq_id_t head = add_sharing(&f, 20, 500, 4);
    kvrt_seq_id_t other = add_sharing(&f, 24, 700, 4);
    plan = step(&f, 11);
    cr_assert_eq(plan->num_seqs, 1, "only the running request runs");
    sched_fixture_commit(&f, plan, token);
    uint32_t head_blocks = 0;
    ASSERT_OK(f.ctx, kvrt_seq_blocks(f.sched, head, NULL, &head_blocks, NULL));
    cr_assert_eq(head_blocks, 2, "the head holds its hits");

    kvrt_sched_stats_t before, after;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &before));
    uint32_t used = used_blocks(&f);
    /* The other request hits the same 2 blocks but needs 6 more. */
    kvrt_arrival_params_t p = {.num_tokens = 31};
    kvrt_arrival_id_t arr = 0;
    uint32_t first = 0, count = 0;
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS,
                  kvrt_seq_await_kv(f.sched, other, &p, &arr, &first, &count));
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &after));
    cr_assert_eq(after.prefix_query_tokens, before.prefix_query_tokens,
                 "a refused arrival counts no query (its request is matched again later)");
    cr_assert_eq(after.window_query_tokens, before.window_query_tokens);
    cr_assert_eq(after.window_hit_tokens, before.window_hit_tokens);
    cr_assert_eq(used_blocks(&f), used, "the head keeps its hits, the refused one has none");
    ASSERT_OK(f.ctx, kvrt_seq_blocks(f.sched, head, NULL, &head_blocks, NULL));
    cr_assert_eq(head_blocks, 2);
    uint32_t other_blocks = 9;
    ASSERT_OK(f.ctx, kvrt_seq_blocks(f.sched, other, NULL, &other_blocks, NULL));
    cr_assert_eq(other_blocks, 0);
    cr_assert_eq(state_of(&f, other), KVRT_SEQ_WAITING);

    /* Room again: both are admitted, each counting its query (27 and 31
     * tokens offered) and its hit once, at its admission. */
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, running));
    run_to_end(&f, 12);
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &after));
    cr_assert_eq(after.prefix_query_tokens, before.prefix_query_tokens + 27 + 31);
    cr_assert_eq(after.window_query_tokens, after.prefix_query_tokens);
    cr_assert_eq(after.prefix_hit_tokens, before.prefix_hit_tokens + 8 + 8);
    close_fixture(&f);
}

Test(sched_arrival, queued_arrived_kv_is_given_up_under_pressure_before_any_preemption)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK |
                                            KVRT_SCHED_PARAM_MAX_SEQS,
                              .use_watermark = 0,
                              .max_seqs = 1};
    fixture_t f = sched_fixture_open(8, TPB, false, &sp); /* 7 usable blocks */
    int32_t prompt[32];
    for (int i = 0; i < 32; i++)
        prompt[i] = i;
    kvrt_seq_params_t rp = {.prompt = prompt, .prompt_len = 4, .max_new_tokens = 12};
    kvrt_seq_id_t r;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &rp, &r));
    commit(&f, step(&f, 1));
    kvrt_seq_id_t l = add(&f, 21, 100);
    uint32_t first, count;
    kvrt_arrival_id_t arr = await_kv(&f, l, 20, 0, &first, &count);
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, count));
    cr_assert_eq(used_blocks(&f), 1 + 5);
    for (int i = 0; i < 20; i++) {
        const kvrt_batch_plan_t *plan = step(&f, 2 + (uint64_t)i);
        if (!plan->num_seqs)
            break;
        cr_assert_eq(plan->num_preempted, 0);
        commit(&f, plan);
        if (state_of(&f, r) == KVRT_SEQ_ENDED)
            break;
    }
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, r, &info));
    cr_assert_eq(info.state, KVRT_SEQ_ENDED);
    cr_assert_eq(info.end_reason, KVRT_END_LENGTH, "the running request grew to its end");
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, l, &info));
    cr_assert_eq(info.state, KVRT_SEQ_WAITING);
    cr_assert_eq(info.computed_tokens, 0, "its arrived K/V was given up");
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.preemptions, 0);
    run_to_end(&f, 100);
    close_fixture(&f);
}

/*
 * Found by kvrt-soak: nothing runs, the head of the queue needs more blocks
 * than are free, and a request behind it holds arrived K/V. Before, no step
 * ever freed anything (only a running request's growth gave arrived K/V
 * up), so the node stalled for good. The queued K/V must give way: the
 * head runs, the other request recomputes, both finish, nothing leaks.
 */
Test(sched_arrival, arrived_kv_behind_a_head_that_cannot_fit_gives_way_when_nothing_runs)
{
    fixture_t f = open_fixture(12, false);
    kvrt_seq_id_t head = add(&f, 36, 100); /* 9 blocks */
    kvrt_seq_id_t behind = add(&f, 21, 500);
    uint32_t first, count;
    kvrt_arrival_id_t arr = await_kv(&f, behind, 20, 0, &first, &count);
    cr_assert_eq(count, 5);
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arr, count));
    cr_assert_eq(used_blocks(&f), 5, "the arrived K/V is held while queued");
    int planned = 0;
    for (int i = 0; i < 50 && !planned; i++) {
        const kvrt_batch_plan_t *plan = step(&f, 10 + (uint64_t)i);
        planned = plan_index(plan, head) >= 0;
        if (plan->num_seqs)
            commit(&f, plan);
    }
    cr_assert(planned, "the head never ran: queued arrived K/V kept it out");
    run_to_end(&f, 100);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.finished_length, 2, "both requests finish");
    close_fixture(&f);
}

/* ---- the onload stall ---------------------------------------------------- */

/* Steps (committing token 7) until every request has ended, at most
 * max_steps; returns the steps taken, or max_steps + 1 when requests are
 * still live then: the scheduler stopped making progress. */
static uint32_t steps_to_drain(fixture_t *f, uint64_t now, uint32_t max_steps)
{
    for (uint32_t i = 0; i < max_steps; i++) {
        kvrt_sched_stats_t st;
        ASSERT_OK(f->ctx, kvrt_sched_stats(f->sched, &st));
        if (st.running + st.waiting + st.awaiting_kv == 0)
            return i;
        const kvrt_batch_plan_t *plan = step(f, now + i);
        if (plan->num_seqs)
            commit(f, plan);
    }
    return max_steps + 1;
}

Test(sched_arrival, onload_stall_landed_requests_behind_the_head_give_up_its_blocks)
{
    fixture_t f = open_fixture(8, false); /* 7 usable blocks, no watermark */
    kvrt_seq_id_t head = add(&f, 17, 100); /* its first chunk needs 5 blocks */
    kvrt_seq_id_t b = add(&f, 9, 200);
    kvrt_seq_id_t c = add(&f, 9, 300);
    uint32_t first, count;
    /* Onloads for the later two land while the head has not run yet. */
    kvrt_arrival_id_t ab = await_kv(&f, b, 8, 0, &first, &count);
    kvrt_arrival_id_t ac = await_kv(&f, c, 8, 0, &first, &count);
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, ab, count));
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, ac, count));
    cr_assert_eq(used_blocks(&f), 4, "3 blocks free: the head does not fit");

    const kvrt_batch_plan_t *plan = step(&f, 1);
    cr_assert_eq(plan->num_seqs, 1, "nothing was admitted: the queue stalled");
    cr_assert_eq(plan->seqs[0].id, head, "the head goes first");
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, c, &info));
    cr_assert_eq(info.computed_tokens, 0, "the one admitted last gave its K/V up");
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, b, &info));
    cr_assert_eq(info.computed_tokens, 8, "one release was enough: b keeps its K/V");
    commit(&f, plan);

    uint32_t steps = steps_to_drain(&f, 2, 50);
    cr_assert_leq(steps, 50, "requests still live after 50 steps");
    kvrt_seq_info_t ev[4];
    cr_assert_eq(sched_fixture_drain(&f, ev, 4), 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ev[i].end_reason, KVRT_END_LENGTH);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.preemptions, 0);
    cr_assert_eq(st.failed, 0);
    cr_assert_eq(st.arrived_tokens, 16, "both arrivals landed");
    close_fixture(&f);
}

Test(sched_arrival, onload_stall_landed_kv_is_kept_when_giving_it_up_would_not_admit_the_head)
{
    fixture_t f = open_fixture(8, false); /* 7 usable blocks */
    int32_t prompt[12];
    for (int i = 0; i < 12; i++)
        prompt[i] = 900 + i;
    kvrt_seq_params_t rp = {.prompt = prompt, .prompt_len = 12, .max_new_tokens = 3};
    kvrt_seq_id_t r;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &rp, &r));
    commit(&f, step(&f, 1)); /* r runs, 3 blocks */
    kvrt_seq_id_t head = add(&f, 17, 100); /* needs 5 */
    kvrt_seq_id_t l = add(&f, 9, 200);
    uint32_t first, count;
    kvrt_arrival_id_t al = await_kv(&f, l, 8, 0, &first, &count);
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, al, count));
    /* 2 free + 2 that l holds < 5: giving l's K/V up would not help. */
    const kvrt_batch_plan_t *plan = step(&f, 2);
    cr_assert_eq(plan->num_seqs, 1);
    cr_assert_eq(plan->seqs[0].id, r);
    kvrt_seq_info_t info;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, l, &info));
    cr_assert_eq(info.computed_tokens, 8, "l's arrived K/V was given up for nothing");
    commit(&f, plan);
    cr_assert_leq(steps_to_drain(&f, 3, 50), 50, "requests still live after 50 steps");
    kvrt_seq_info_t ev[4];
    cr_assert_eq(sched_fixture_drain(&f, ev, 4), 3);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.prefill_tokens, 12 + 17 + 1, "l prefilled only its last token");
    (void)head;
    close_fixture(&f);
}

/* A request that pinned its prefix hits as the head while a
 * higher-priority request waited for KV is behind that request once its K/V
 * lands: it gives its hits up when they are what the new head lacks. */
Test(sched_arrival, onload_stall_a_pinned_request_behind_a_landed_head_gives_up_its_hits)
{
    fixture_t f = open_fixture(12, true); /* 11 usable blocks */
    add(&f, 21, 500);
    run_to_end(&f, 1); /* 5 blocks of 500.. cached, idle */
    int32_t prompt[25];
    for (int i = 0; i < 25; i++)
        prompt[i] = 700 + i;
    kvrt_seq_params_t hp = {.field_mask = KVRT_SEQ_PARAM_PRIORITY, .prompt = prompt,
                            .prompt_len = 25, .max_new_tokens = 2, .priority = 1};
    kvrt_seq_id_t h;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &hp, &h));
    uint32_t first, count;
    kvrt_arrival_id_t ah = await_kv(&f, h, 24, 0, &first, &count); /* 6 free blocks */
    kvrt_seq_id_t p = add(&f, 41, 500); /* 5 hits, 6 more blocks: does not fit */
    cr_assert_eq(step(&f, 2)->num_seqs, 0);
    const int32_t *blocks;
    uint32_t nb;
    ASSERT_OK(f.ctx, kvrt_seq_blocks(f.sched, p, &blocks, &nb, NULL));
    cr_assert_eq(nb, 5, "the waiting head keeps its hits");
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, ah, count));
    /* h (priority 1) heads the queue and lacks one block; p's hits hold
     * the only ones. */
    const kvrt_batch_plan_t *plan = step(&f, 3);
    cr_assert_eq(plan->num_seqs, 1, "nothing was admitted: the queue stalled");
    cr_assert_eq(plan->seqs[0].id, h);
    cr_assert_eq(plan->seqs[0].num_computed_tokens, 24, "h keeps its arrived K/V");
    commit(&f, plan);
    cr_assert_leq(steps_to_drain(&f, 4, 50), 50, "requests still live after 50 steps");
    kvrt_seq_info_t ev[4];
    cr_assert_eq(sched_fixture_drain(&f, ev, 4), 2);
    close_fixture(&f);
}

/* An onload the randomized test has in flight. */
typedef struct onload {
    kvrt_arrival_id_t id;
    uint32_t count;
    uint32_t due;
    int32_t blocks[16];
} onload_t;

/* Random requests, onloads started for random queued ones (in any order,
 * so later requests' K/V lands before older heads run) and landing whole,
 * in part or not at all, with and without a prefix cache, synchronous or
 * with a plan in flight: every request ends, within a bound of steps, and
 * no planned token is written into a block an onload may still write. */
static void random_onloads(bool cache, uint64_t seed, bool async)
{
    /* async: the engine asks for step N + 1 before committing step N. */
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK |
                                            (async ? KVRT_SCHED_PARAM_PLANS_IN_FLIGHT : 0),
                              .use_watermark = 0,
                              .max_plans_in_flight = 2};
    fixture_t f = sched_fixture_open(24, TPB, cache, &sp); /* 23 usable blocks */
    const kvrt_batch_plan_t *in_flight = NULL;
    uint64_t rng = seed;
    kvrt_seq_id_t ids[640];
    uint32_t num_ids = 0;
    onload_t inflight[8];
    uint32_t num_inflight = 0;
    uint32_t step_no = 0;
    for (; step_no < 400; step_no++) {
        for (uint32_t a = test_rand_below(&rng, 3); step_no < 300 && a && num_ids < 640; a--) {
            int32_t prompt[48];
            uint32_t len = 2 + test_rand_below(&rng, 39);
            int32_t base = 100 * (int32_t)test_rand_below(&rng, 4);
            for (uint32_t i = 0; i < len; i++)
                prompt[i] = base + (int32_t)i;
            kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_PRIORITY,
                                   .prompt = prompt,
                                   .prompt_len = len,
                                   .max_new_tokens = 1 + test_rand_below(&rng, 6),
                                   .priority = (int32_t)test_rand_below(&rng, 3)};
            ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &ids[num_ids++]));
        }
        if (step_no < 300 && num_ids && num_inflight < 8 && test_rand_below(&rng, 2)) {
            /* Among the latest: the ones likely still queued. */
            kvrt_seq_id_t id = ids[num_ids - 1 - test_rand_below(&rng, num_ids < 16 ? num_ids : 16)];
            kvrt_seq_info_t info;
            if (kvrt_seq_info(f.sched, id, &info) == KVRT_OK &&
                (info.state == KVRT_SEQ_WAITING || info.state == KVRT_SEQ_PREEMPTED)) {
                uint32_t total = info.prompt_tokens + info.output_tokens;
                kvrt_arrival_params_t ap = {.num_tokens = 1 + test_rand_below(&rng, total - 1)};
                onload_t *o = &inflight[num_inflight];
                uint32_t first;
                kvrt_status_t st =
                    kvrt_seq_await_kv(f.sched, id, &ap, &o->id, &first, &o->count);
                if (st == KVRT_OK) {
                    const int32_t *blocks;
                    ASSERT_OK(f.ctx, kvrt_seq_blocks(f.sched, id, &blocks, NULL, NULL));
                    cr_assert_leq(o->count, 16);
                    memcpy(o->blocks, blocks + first, o->count * sizeof(int32_t));
                    o->due = step_no + test_rand_below(&rng, 5);
                    num_inflight++;
                } else {
                    cr_assert(st == KVRT_ERR_NO_BLOCKS || st == KVRT_ERR_BAD_STATE,
                              "await_kv: %s", kvrt_status_str(st));
                }
            }
        }
        for (uint32_t i = 0; i < num_inflight;) {
            if (inflight[i].due > step_no) {
                i++;
                continue;
            }
            uint32_t landed = test_rand_below(&rng, 4) ? inflight[i].count
                                                       : test_rand_below(&rng, inflight[i].count + 1);
            ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, inflight[i].id, landed));
            inflight[i] = inflight[--num_inflight];
        }
        const kvrt_batch_plan_t *plan = step(&f, step_no);
        for (uint32_t i = 0; i < num_inflight; i++)
            assert_plan_avoids(plan, inflight[i].blocks, inflight[i].count);
        if (in_flight)
            commit(&f, in_flight);
        in_flight = NULL;
        if (plan->num_seqs && async)
            in_flight = plan;
        else if (plan->num_seqs)
            commit(&f, plan);
        ASSERT_OK(f.ctx, kvrt_pool_verify(f.pool));
        kvrt_seq_info_t ev[64];
        while (sched_fixture_drain(&f, ev, 64) == 64)
            ;
    }
    cr_assert_eq(num_inflight, 0);
    if (in_flight)
        commit(&f, in_flight);
    /* Nothing new: whatever is queued must drain. A request runs at most
     * 40 + 6 tokens in steps of at least one token; in series they
     * take fewer than 46 steps each. */
    uint32_t bound = num_ids * 46;
    uint32_t steps = steps_to_drain(&f, step_no, bound);
    cr_assert_leq(steps, bound, "seed %llx: requests still live after %u steps: stalled",
                  (unsigned long long)seed, bound);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.finished_length + st.finished_stop, num_ids);
    cr_assert_gt(st.arrived_tokens, 0);
    kvrt_seq_info_t ev[64];
    while (sched_fixture_drain(&f, ev, 64) == 64)
        ;
    close_fixture(&f);
}

Test(sched_arrival, onload_stall_randomized_onloads_never_stall_the_queue)
{
    for (uint64_t seed = 1; seed <= 8; seed++) {
        random_onloads(false, 0x9e3779b97f4a7c15ull * seed, false);
        random_onloads(true, 0xc2b2ae3d27d4eb4full * seed, false);
        random_onloads(true, 0x165667b19e3779f9ull * seed, true);
    }
}

/* A fixture whose pool has 64 blocks and only max_tables block tables. */
static fixture_t open_with_tables(uint32_t max_tables, const kvrt_sched_params_t *sp)
{
    fixture_t f = {0};
    cr_assert_eq(kvrt_ctx_create(NULL, &f.ctx), KVRT_OK);
    kvrt_pool_params_t pp = {.field_mask = KVRT_POOL_PARAM_MAX_TABLES,
                             .layout = {.num_layers = 2, .num_kv_heads = 2, .head_dim = 4,
                                        .tokens_per_block = TPB},
                             .num_blocks = 64, .max_tables = max_tables};
    ASSERT_OK(f.ctx, kvrt_pool_create(f.ctx, &pp, &f.pool));
    ASSERT_OK(f.ctx, kvrt_sched_create(f.ctx, f.pool, NULL, sp, &f.sched));
    return f;
}

/* Steps from step `t` on until `live` requests have ended (bounded);
 * `head` must have been planned on the way. */
static void run_until_all_ended(fixture_t *f, kvrt_seq_id_t head, uint64_t t, uint32_t live)
{
    bool head_ran = false;
    uint32_t ended = 0;
    for (uint64_t end = t + 40; t < end && ended < live; t++) {
        const kvrt_batch_plan_t *plan = step(f, t);
        head_ran = head_ran || plan_index(plan, head) >= 0;
        if (plan->num_seqs)
            commit(f, plan);
        kvrt_seq_info_t ev[4];
        ended += sched_fixture_drain(f, ev, 4);
    }
    cr_assert(head_ran, "the head never ran: %s", kvrt_ctx_last_error(f->ctx));
    cr_assert_eq(ended, live);
}

Test(sched_arrival, onload_stall_arrived_kv_behind_the_head_gives_up_its_table_when_nothing_runs)
{
    /* A pool of three tables: three requests behind the head hold them
     * with arrived K/V. With nothing running no table would come back, so
     * they give theirs up (the latest first) and the head runs; every
     * request then ends and nothing leaks. */
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK | KVRT_SCHED_PARAM_MAX_SEQS,
                              .use_watermark = 0, .max_seqs = 3};
    fixture_t f = open_with_tables(3, &sp);
    kvrt_seq_id_t head = add(&f, 5, 500);
    for (int k = 0; k < 3; k++) {
        uint32_t first, count;
        kvrt_arrival_id_t a = await_kv(&f, add(&f, 9, 100 * (k + 1)), 8, 0, &first, &count);
        ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, a, count));
    }
    run_until_all_ended(&f, head, 1, 4);
    close_fixture(&f);
}

Test(sched_arrival, onload_stall_arrived_kv_keeps_its_table_while_a_plan_in_flight_holds_one)
{
    /* Two tables, two plans in flight: R, planned and then aborted, keeps
     * its table until its plan is committed. The head finds no table, but
     * one comes back at that commit: L keeps its arrived K/V, and the head
     * runs once the table is back. */
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK |
                                            KVRT_SCHED_PARAM_PLANS_IN_FLIGHT,
                              .use_watermark = 0, .max_plans_in_flight = 2};
    fixture_t f = open_with_tables(2, &sp);
    kvrt_seq_id_t r = add(&f, 5, 900);
    const kvrt_batch_plan_t *first_plan = step(&f, 1);
    cr_assert_eq(first_plan->num_seqs, 1);
    kvrt_seq_id_t head = add(&f, 5, 500), l = add(&f, 9, 100);
    uint32_t first, count;
    kvrt_arrival_id_t a = await_kv(&f, l, 8, 0, &first, &count);
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, a, count));
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, r));
    const kvrt_batch_plan_t *second = step(&f, 2);
    cr_assert_eq(plan_index(second, head), -1, "no table for the head yet");
    kvrt_seq_info_t li;
    ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, l, &li));
    cr_assert_eq(li.computed_tokens, 8, "L gave its arrived K/V up for a table on its way back");
    commit(&f, first_plan);
    if (second->num_seqs)
        commit(&f, second);
    run_until_all_ended(&f, head, 3, 3);
    close_fixture(&f);
}
