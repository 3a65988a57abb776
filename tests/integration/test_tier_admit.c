/*
 * test_tier_admit.c - onload through the scheduler, end to end with a real
 * scheduler, prefix cache and host tier: a request whose prefix was
 * evicted to host memory waits for KV while others run, gets the exact
 * bytes back in its own blocks, and decodes from there; an onload that
 * fails part way recomputes the rest; one slower than its deadline is given
 * up and the request recomputes; nothing leaks (pool and cache verified).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"

#include "../tier_helpers.h"
#include "tier/tier_internal.h"

static kvrt_sched_t *sched;
static char dir[64]; /* the SSD tier's directory, when a test has one */

static void admit_teardown(void)
{
    if (tier)
        ASSERT_OK(ctx, kvrt_tier_destroy(tier));
    tier = NULL;
    if (sched)
        ASSERT_OK(ctx, kvrt_sched_destroy(sched));
    sched = NULL;
    if (cache) {
        ASSERT_OK(ctx, kvrt_pool_verify(pool));
        ASSERT_OK(ctx, kvrt_cache_verify(cache));
    }
    teardown();
    if (dir[0])
        remove_dir(dir);
    dir[0] = 0;
}

TestSuite(tier_admit, .init = setup, .fini = admit_teardown);

#define PROMPT (4 * TPB + 2) /* four whole blocks, then two tokens */

/* Host tier of 64 slots; with ssd, 4 host slots (written back as soon as
 * they fill) over 64 SSD slots (buffered I/O: any file system). */
static void make_tiers(bool ssd)
{
    pool = test_pool(ctx, 33, TPB);
    ASSERT_OK(ctx, kvrt_cache_create(pool, NULL, &cache));
    kvrt_tier_params_t p = {.field_mask = KVRT_TIER_PARAM_HOST_BLOCKS | KVRT_TIER_PARAM_QUEUE_DEPTH,
                            .host_blocks = 64,
                            .queue_depth = 4};
    if (ssd) {
        snprintf(dir, sizeof(dir), "/tmp/kvrt-tier-admit-XXXXXX");
        cr_assert_not_null(mkdtemp(dir));
        p.field_mask |= KVRT_TIER_PARAM_SSD | KVRT_TIER_PARAM_FLAGS;
        p.host_blocks = 4;
        p.ssd_blocks = 64;
        p.ssd_dir = dir;
        p.flags = KVRT_TIER_SSD_BUFFERED;
    }
    ASSERT_OK(ctx, kvrt_tier_create(cache, &p, &tier));
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK, .use_watermark = 0};
    ASSERT_OK(ctx, kvrt_sched_create(ctx, pool, cache, &sp, &sched));
}

static void make(void) { make_tiers(false); }

/* Prompt 100's four blocks go below (host memory, then SSD when there is
 * one) and leave the pool. */
static void evict_prompt_100(void)
{
    if (dir[0]) { /* as test_tier_ssd.c: exactly prompt 100 goes down, to SSD */
        kvrt_pool_info_t info;
        ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
        squeeze(info.free_blocks + info.cached_blocks);
        prefill(100, 4);
        prefill(101, 4);
        squeeze_past_free(1);
        settle();
        return;
    }
    prefill(100, 4);
    prefill(200, 4);
    settle();
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    squeeze(info.free_blocks + info.cached_blocks);
    settle();
}

static kvrt_seq_id_t add(int32_t seed, uint32_t len, int32_t *t)
{
    prompt(t, len, seed);
    kvrt_seq_params_t p = {.prompt = t, .prompt_len = len, .max_new_tokens = 2};
    kvrt_seq_id_t id = 0;
    ASSERT_OK(ctx, kvrt_seq_add(sched, &p, &id));
    return id;
}

static kvrt_seq_info_t info_of(kvrt_seq_id_t id)
{
    kvrt_seq_info_t info;
    ASSERT_OK(ctx, kvrt_seq_info(sched, id, &info));
    return info;
}

static const kvrt_plan_seq_t *find(const kvrt_batch_plan_t *plan, kvrt_seq_id_t id)
{
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        if (plan->seqs[i].id == id)
            return &plan->seqs[i];
    return NULL;
}

/* One engine step: the tier first (it completes arrivals), then the
 * scheduler, then a commit of token 7 for every sampled entry. */
static const kvrt_batch_plan_t *engine_step(uint64_t now)
{
    kvrt_tier_completion_t done[4];
    uint32_t n;
    ASSERT_OK(ctx, kvrt_tier_poll(tier, done, 4, &n));
    cr_assert_eq(n, 0, "an admission's ticket was reported to the engine");
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(ctx, kvrt_sched_step(sched, now, &plan));
    int32_t tokens[64];
    uint32_t k = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        if (plan->seqs[i].sample)
            tokens[k++] = 7;
    kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = k,
                       .tokens = tokens};
    ASSERT_OK(ctx, kvrt_sched_commit(sched, &c));
    return plan;
}

/* Steps until every request has ended (bounded), draining the events. */
static void run_to_end(uint64_t now)
{
    kvrt_sched_stats_t st;
    for (int i = 0; i < 100; i++) {
        ASSERT_OK(ctx, kvrt_sched_stats(sched, &st));
        if (!st.running && !st.waiting && !st.awaiting_kv)
            break;
        engine_step(now + (uint64_t)i);
    }
    kvrt_seq_info_t ended[8];
    uint32_t n;
    ASSERT_OK(ctx, kvrt_sched_drain_ended(sched, ended, 8, &n));
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(ended[i].end_reason, KVRT_END_LENGTH, "request %u did not decode", i);
}

static kvrt_tier_admission_t admit(kvrt_seq_id_t id, const int32_t *t, uint64_t deadline)
{
    kvrt_tier_admission_t a;
    ASSERT_OK(ctx, kvrt_tier_admit(tier, sched, id, t, PROMPT, NULL, deadline, &a));
    return a;
}

Test(tier_admit, a_request_waits_for_its_prefix_from_host_memory_then_decodes)
{
    make();
    evict_prompt_100();
    int32_t ta[PROMPT], tb[6];
    kvrt_seq_id_t a = add(100, PROMPT, ta);
    kvrt_seq_id_t b = add(500, 6, tb);
    kvrt_tier_admission_t adm = admit(a, ta, 0);
    cr_assert_eq(adm.match.gpu_blocks, 0);
    cr_assert_eq(adm.match.host_blocks, 4);
    cr_assert_eq(adm.onload_blocks, 4);
    cr_assert_neq(adm.arrival, 0);
    cr_assert_eq(info_of(a).state, KVRT_SEQ_WAITING_KV);
    /* The scheduler runs the other request without waiting for it (the
     * tier is not polled before this step: the onload is still open). */
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(ctx, kvrt_sched_step(sched, 1, &plan));
    cr_assert_not_null(find(plan, b));
    cr_assert_null(find(plan, a), "a request waiting for KV was planned");
    int32_t seven = 7;
    kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = 1,
                       .tokens = &seven};
    ASSERT_OK(ctx, kvrt_sched_commit(sched, &c));
    /* Bounded wait for the copies; poll completes the arrival. */
    uint32_t n;
    ASSERT_OK(ctx, kvrt_tier_drain(tier, 10000, NULL, 0, &n));
    cr_assert_eq(n, 0);
    kvrt_seq_info_t info = info_of(a);
    cr_assert_eq(info.state, KVRT_SEQ_WAITING, "the arrival did not complete");
    cr_assert_eq(info.computed_tokens, 4 * TPB);
    const int32_t *blocks;
    uint32_t nb;
    ASSERT_OK(ctx, kvrt_seq_blocks(sched, a, &blocks, &nb, NULL));
    cr_assert_geq(nb, 4);
    for (uint32_t i = 0; i < 4; i++)
        cr_assert(block_holds(blocks[i], 100, i), "block %u came back with other bytes", i);
    /* It runs from the landed prefix: only the last two tokens are computed. */
    plan = engine_step(2);
    const kvrt_plan_seq_t *ps = find(plan, a);
    cr_assert_not_null(ps);
    cr_assert_eq(ps->num_computed_tokens, 4 * TPB);
    cr_assert_eq(ps->num_new_tokens, 2);
    run_to_end(3);
    kvrt_tier_stats_t ts;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &ts));
    cr_assert_eq(ts.admitted, 1);
    cr_assert_eq(ts.admitted_landed_blocks, 4);
    cr_assert_eq(ts.admitted_failed, 0);
    kvrt_sched_stats_t ss;
    ASSERT_OK(ctx, kvrt_sched_stats(sched, &ss));
    cr_assert_eq(ss.arrivals, 1);
    cr_assert_eq(ss.arrivals_failed, 0);
}

/* Fails the third SSD read (the onload's block 2). */
static int fail_third_read(void *user, tier_job_kind_t kind, int32_t slot)
{
    (void)slot;
    if (kind != JOB_READ)
        return 0;
    return ++*(int *)user == 3 ? EIO : 0;
}

Test(tier_admit, a_request_waits_for_its_prefix_from_ssd_then_decodes)
{
    make_tiers(true);
    evict_prompt_100();
    int32_t ta[PROMPT];
    kvrt_seq_id_t a = add(100, PROMPT, ta);
    kvrt_tier_admission_t adm = admit(a, ta, 0);
    cr_assert_eq(adm.match.gpu_blocks, 0);
    cr_assert_gt(adm.match.ssd_blocks, 0, "nothing was written back to SSD");
    cr_assert_eq(adm.match.host_blocks + adm.match.ssd_blocks, 4);
    cr_assert_eq(adm.onload_blocks, 4);
    uint32_t n;
    ASSERT_OK(ctx, kvrt_tier_drain(tier, 10000, NULL, 0, &n));
    kvrt_seq_info_t info = info_of(a);
    cr_assert_eq(info.state, KVRT_SEQ_WAITING);
    cr_assert_eq(info.computed_tokens, 4 * TPB);
    const int32_t *blocks;
    uint32_t nb;
    ASSERT_OK(ctx, kvrt_seq_blocks(sched, a, &blocks, &nb, NULL));
    for (uint32_t i = 0; i < 4; i++)
        cr_assert(block_holds(blocks[i], 100, i), "block %u came back with other bytes", i);
    run_to_end(1);
    kvrt_tier_stats_t ts;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &ts));
    cr_assert_eq(ts.ssd.onloads, adm.match.ssd_blocks);
    cr_assert_eq(ts.admitted_landed_blocks, 4);
}

Test(tier_admit, an_onload_that_fails_part_way_recomputes_the_rest)
{
    make_tiers(true);
    evict_prompt_100();
    int reads = 0;
    kvrt_tier_set_fault_hook(tier, fail_third_read, &reads);
    int32_t ta[PROMPT];
    kvrt_seq_id_t a = add(100, PROMPT, ta);
    kvrt_tier_admission_t adm = admit(a, ta, 0);
    cr_assert_eq(adm.match.ssd_blocks, 4, "the test needs the whole prefix on SSD");
    cr_assert_eq(adm.onload_blocks, 4);
    uint32_t n;
    ASSERT_OK(ctx, kvrt_tier_drain(tier, 10000, NULL, 0, &n));
    kvrt_tier_set_fault_hook(tier, NULL, NULL);
    kvrt_seq_info_t info = info_of(a);
    cr_assert_eq(info.state, KVRT_SEQ_WAITING);
    cr_assert_eq(info.computed_tokens, 2 * TPB, "two blocks landed before the failure");
    const kvrt_batch_plan_t *plan = engine_step(1);
    const kvrt_plan_seq_t *ps = find(plan, a);
    cr_assert_not_null(ps);
    cr_assert_eq(ps->num_computed_tokens, 2 * TPB);
    cr_assert_eq(ps->num_new_tokens, PROMPT - 2 * TPB);
    run_to_end(2);
    kvrt_tier_stats_t ts;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &ts));
    cr_assert_eq(ts.admitted_failed, 1);
    cr_assert_eq(ts.admitted_landed_blocks, 2);
    kvrt_sched_stats_t ss;
    ASSERT_OK(ctx, kvrt_sched_stats(sched, &ss));
    cr_assert_eq(ss.arrivals_failed, 1);
}

Test(tier_admit, an_onload_past_its_deadline_is_given_up_and_recomputed)
{
    make();
    evict_prompt_100();
    int32_t ta[PROMPT];
    kvrt_seq_id_t a = add(100, PROMPT, ta);
    kvrt_tier_admission_t adm = admit(a, ta, 100);
    cr_assert_eq(adm.onload_blocks, 4);
    /* A step past the deadline before the tier reported anything. */
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(ctx, kvrt_sched_step(sched, 1000, &plan));
    const kvrt_plan_seq_t *ps = find(plan, a);
    cr_assert_not_null(ps, "the request was not recomputed at its deadline");
    cr_assert_eq(ps->num_computed_tokens, 0);
    cr_assert_eq(ps->num_new_tokens, PROMPT);
    int32_t seven = 7;
    kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs,
                       .num_tokens = ps->sample ? 1 : 0, .tokens = &seven};
    ASSERT_OK(ctx, kvrt_sched_commit(sched, &c));
    /* The late onload ends; its blocks go back to the pool. */
    uint32_t n;
    ASSERT_OK(ctx, kvrt_tier_drain(tier, 10000, NULL, 0, &n));
    run_to_end(1001);
    kvrt_sched_stats_t ss;
    ASSERT_OK(ctx, kvrt_sched_stats(sched, &ss));
    cr_assert_eq(ss.arrivals_expired, 1);
}

Test(tier_admit, nothing_below_the_pool_leaves_the_request_queued)
{
    make();
    int32_t ta[PROMPT];
    kvrt_seq_id_t a = add(900, PROMPT, ta);
    kvrt_tier_admission_t adm = admit(a, ta, 0);
    cr_assert_eq(adm.arrival, 0);
    cr_assert_eq(adm.onload_blocks, 0);
    cr_assert_eq(info_of(a).state, KVRT_SEQ_WAITING);
    run_to_end(1);
}

Test(tier_admit, bad_arguments_change_nothing)
{
    make();
    evict_prompt_100();
    int32_t ta[PROMPT];
    kvrt_seq_id_t a = add(100, PROMPT, ta);
    kvrt_tier_admission_t adm;
    cr_assert_eq(kvrt_tier_admit(NULL, sched, a, ta, PROMPT, NULL, 0, &adm),
                 KVRT_ERR_INVALID_ARG);
    cr_assert_eq(kvrt_tier_admit(tier, NULL, a, ta, PROMPT, NULL, 0, &adm),
                 KVRT_ERR_INVALID_ARG);
    cr_assert_eq(kvrt_tier_admit(tier, sched, a, NULL, PROMPT, NULL, 0, &adm),
                 KVRT_ERR_INVALID_ARG);
    cr_assert_eq(kvrt_tier_admit(tier, sched, a, ta, PROMPT - 1, NULL, 0, &adm),
                 KVRT_ERR_INVALID_ARG);
    cr_assert_eq(kvrt_tier_admit(tier, sched, a + 1000, ta, PROMPT, NULL, 0, &adm),
                 KVRT_ERR_UNKNOWN_REQUEST);
    cr_assert_eq(info_of(a).state, KVRT_SEQ_WAITING);
    /* A scheduler over another pool (its block ids would name blocks of
     * the tier's pool that others hold), or without the tier's cache. */
    kvrt_pool_info_t before;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &before));
    kvrt_pool_t *other_pool = test_pool(ctx, 33, TPB);
    kvrt_cache_t *other_cache;
    ASSERT_OK(ctx, kvrt_cache_create(other_pool, NULL, &other_cache));
    kvrt_sched_t *elsewhere[2];
    ASSERT_OK(ctx, kvrt_sched_create(ctx, other_pool, other_cache, NULL, &elsewhere[0]));
    ASSERT_OK(ctx, kvrt_sched_create(ctx, pool, NULL, NULL, &elsewhere[1]));
    for (int i = 0; i < 2; i++) {
        kvrt_seq_params_t sp = {.prompt = ta, .prompt_len = PROMPT, .max_new_tokens = 2};
        kvrt_seq_id_t id;
        ASSERT_OK(ctx, kvrt_seq_add(elsewhere[i], &sp, &id));
        cr_assert_eq(kvrt_tier_admit(tier, elsewhere[i], id, ta, PROMPT, NULL, 0, &adm),
                     KVRT_ERR_INVALID_ARG);
        kvrt_seq_info_t info;
        ASSERT_OK(ctx, kvrt_seq_info(elsewhere[i], id, &info));
        cr_assert_eq(info.state, KVRT_SEQ_WAITING);
        ASSERT_OK(ctx, kvrt_sched_destroy(elsewhere[i]));
    }
    kvrt_pool_info_t after;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &after));
    cr_assert_eq(after.used_blocks, before.used_blocks);
    ASSERT_OK(ctx, kvrt_cache_destroy(other_cache));
    ASSERT_OK(ctx, kvrt_pool_destroy(other_pool));
    /* Admitting twice: the second finds the request waiting for KV. */
    adm = admit(a, ta, 0);
    cr_assert_neq(adm.arrival, 0);
    cr_assert_eq(kvrt_tier_admit(tier, sched, a, ta, PROMPT, NULL, 0, &adm), KVRT_ERR_BAD_STATE);
    uint32_t n;
    ASSERT_OK(ctx, kvrt_tier_drain(tier, 10000, NULL, 0, &n));
    run_to_end(1);
}

Test(tier_admit, destroying_the_tier_completes_its_arrivals)
{
    make();
    evict_prompt_100();
    int32_t ta[PROMPT];
    kvrt_seq_id_t a = add(100, PROMPT, ta);
    admit(a, ta, 0);
    ASSERT_OK(ctx, kvrt_tier_destroy(tier));
    tier = NULL;
    cr_assert_neq(info_of(a).state, KVRT_SEQ_WAITING_KV, "the arrival was left open");
    kvrt_sched_stats_t st;
    for (int i = 0; i < 100; i++) {
        ASSERT_OK(ctx, kvrt_sched_stats(sched, &st));
        if (!st.running && !st.waiting && !st.awaiting_kv)
            break;
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(ctx, kvrt_sched_step(sched, 1 + (uint64_t)i, &plan));
        int32_t tokens[8] = {7, 7, 7, 7, 7, 7, 7, 7};
        uint32_t k = 0;
        for (uint32_t j = 0; j < plan->num_seqs; j++)
            k += plan->seqs[j].sample;
        kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = k,
                           .tokens = tokens};
        ASSERT_OK(ctx, kvrt_sched_commit(sched, &c));
    }
    kvrt_seq_info_t ended[2];
    uint32_t n;
    ASSERT_OK(ctx, kvrt_sched_drain_ended(sched, ended, 2, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ended[0].end_reason, KVRT_END_LENGTH);
}
