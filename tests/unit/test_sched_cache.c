/*
 * test_sched_cache.c - prefix-cache-aware admission (hits cost no budget
 * and no new blocks, the last prompt token is always recomputed, salts keep
 * tenants apart) and preemption (the latest request is the victim, it is
 * recomputed mostly from the cache, priorities decide the victim even when
 * it is already planned, and every preempted request still finishes with
 * the right tokens), the order in which a commit stores full blocks, that
 * each stored block is the one holding its tokens, that the blocks outputs
 * fill are cached and matched under their tokens (the newest of which sit
 * in the request's own line) at every block size, and that an ended
 * request's blocks go idle deepest first.
 */
#include <string.h>

#include "cache/hooks.h"
#include "sched_fixture.h"

typedef sched_fixture_t fixture_t;
#define open_fixture sched_fixture_open
#define close_fixture sched_fixture_close

/* The engine's "model": the token at position p. */
static int32_t model_at(uint32_t pos) { return (int32_t)(1000 + pos); }

static void commit_model(fixture_t *f, const kvrt_batch_plan_t *plan)
{
    int32_t tokens[1024];
    uint32_t n = 0;
    cr_assert_leq(plan->num_seqs, 1024);
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        if (plan->seqs[i].sample)
            tokens[n++] = model_at((uint32_t)plan->seq_lens[i]);
    kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = n,
                       .tokens = tokens};
    ASSERT_OK(f->ctx, kvrt_sched_commit(f->sched, &c));
}

static kvrt_seq_id_t add(fixture_t *f, const int32_t *prompt, uint32_t n, uint32_t max_new,
                         const kvrt_hash_keys_t *keys)
{
    kvrt_seq_params_t p = {.field_mask = keys ? KVRT_SEQ_PARAM_KEYS : 0, .prompt = prompt,
                           .prompt_len = n, .max_new_tokens = max_new};
    p.keys = keys;
    kvrt_seq_id_t id;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    return id;
}

static void run_to_end(fixture_t *f, uint32_t expect_events)
{
    const kvrt_batch_plan_t *plan;
    for (int k = 0; k < 1000; k++) {
        ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, (uint64_t)k, &plan));
        if (!plan->num_seqs)
            break;
        commit_model(f, plan);
    }
    kvrt_seq_info_t ev[16];
    uint32_t n;
    ASSERT_OK(f->ctx, kvrt_sched_drain_ended(f->sched, ev, 16, &n));
    cr_assert_eq(n, expect_events);
}

/* Admits the next request alone and returns its plan entry. */
static kvrt_plan_seq_t admit_one(fixture_t *f)
{
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, 0, &plan));
    cr_assert_eq(plan->num_seqs, 1);
    kvrt_plan_seq_t e = plan->seqs[0];
    commit_model(f, plan);
    return e;
}

Test(sched_cache, hits_cost_no_budget_and_the_last_token_is_recomputed)
{
    fixture_t f = open_fixture(256, 4, true, NULL);
    int32_t prompt[40];
    for (int i = 0; i < 40; i++)
        prompt[i] = 7 * i + 3;
    add(&f, prompt, 33, 1, NULL);
    kvrt_plan_seq_t e = admit_one(&f);
    cr_assert_eq(e.num_computed_tokens, 0);
    cr_assert_eq(e.num_new_tokens, 33);
    run_to_end(&f, 1);

    add(&f, prompt, 39, 1, NULL); /* 8 full blocks shared, then 7 new tokens */
    e = admit_one(&f);
    cr_assert_eq(e.num_computed_tokens, 32);
    cr_assert_eq(e.num_new_tokens, 7);
    run_to_end(&f, 1);

    add(&f, prompt, 33, 1, NULL); /* everything cached: the last token again */
    e = admit_one(&f);
    cr_assert_eq(e.num_computed_tokens, 32);
    cr_assert_eq(e.num_new_tokens, 1);
    run_to_end(&f, 1);

    add(&f, prompt, 32, 1, NULL); /* block-aligned: 31 offered, 7 blocks hit */
    e = admit_one(&f);
    cr_assert_eq(e.num_computed_tokens, 28);
    cr_assert_eq(e.num_new_tokens, 4);
    run_to_end(&f, 1);

    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.prefix_hit_tokens, 32 + 32 + 28);
    cr_assert_eq(st.prefix_query_tokens, 32 + 38 + 32 + 31);
    cr_assert_eq(st.prefill_tokens, 33 + 7 + 1 + 4);
    close_fixture(&f);
}

/* An ended request's blocks go idle deepest first, so under plain LRU
 * (which evicts in release order, no leaf-first rule) the blocks another
 * request evicts are its deepest, and its root and the blocks right after
 * still serve a recomputation of its prompt. */
Test(sched_cache, an_ended_requests_blocks_go_idle_deepest_first)
{
    kvrt_cache_params_t cp = {.field_mask = KVRT_CACHE_PARAM_POLICY, .policy = KVRT_CACHE_LRU};
    fixture_t f = sched_fixture_open_cache(13, 4, true, &cp, NULL); /* 12 usable, 4 tokens */
    int32_t a[16], b[40];
    for (int i = 0; i < 16; i++)
        a[i] = 100 + i;
    for (int i = 0; i < 40; i++)
        b[i] = 500 + i;
    add(&f, a, 16, 1, NULL); /* 4 full blocks, idle in the cache once it ends */
    admit_one(&f);
    run_to_end(&f, 1);
    add(&f, b, 40, 1, NULL); /* 10 blocks: 8 free, and 2 of a's evicted */
    admit_one(&f);
    run_to_end(&f, 1);
    add(&f, a, 16, 1, NULL);
    kvrt_plan_seq_t e = admit_one(&f);
    cr_assert_eq(e.num_computed_tokens, 8, "a's first two blocks survive (%u tokens hit)",
                 e.num_computed_tokens);
    run_to_end(&f, 1);
    close_fixture(&f);
}

Test(sched_cache, salts_keep_tenants_apart)
{
    fixture_t f = open_fixture(256, 4, true, NULL);
    int32_t prompt[17];
    for (int i = 0; i < 17; i++)
        prompt[i] = i;
    kvrt_hash_keys_t a = {.field_mask = KVRT_HASH_KEY_SALT, .salt = "tenant-a", .salt_bytes = 8};
    kvrt_hash_keys_t b = {.field_mask = KVRT_HASH_KEY_SALT, .salt = "tenant-b", .salt_bytes = 8};
    add(&f, prompt, 17, 1, &a);
    admit_one(&f);
    run_to_end(&f, 1);
    add(&f, prompt, 17, 1, &b);
    cr_assert_eq(admit_one(&f).num_computed_tokens, 0, "another tenant's blocks were shared");
    run_to_end(&f, 1);
    add(&f, prompt, 17, 1, &a);
    cr_assert_eq(admit_one(&f).num_computed_tokens, 16);
    run_to_end(&f, 1);
    close_fixture(&f);
}

Test(sched_cache, latest_request_is_preempted_recomputed_from_cache_and_finishes)
{
    /* 16 usable blocks of 2 tokens; each request needs up to 10. */
    fixture_t f = open_fixture(17, 2, true, NULL);
    int32_t pa[8] = {1, 2, 3, 4, 5, 6, 7, 8}, pb[8] = {11, 12, 13, 14, 15, 16, 17, 18};
    kvrt_seq_id_t a = add(&f, pa, 8, 12, NULL), b = add(&f, pb, 8, 12, NULL);
    const kvrt_batch_plan_t *plan;
    uint32_t preempted_b = 0, preempted_a = 0;
    for (int k = 0; k < 200; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, (uint64_t)k, &plan));
        for (uint32_t i = 0; i < plan->num_preempted; i++) {
            preempted_a += plan->preempted[i] == a;
            preempted_b += plan->preempted[i] == b;
        }
        if (!plan->num_seqs)
            break;
        commit_model(&f, plan);
        ASSERT_OK(f.ctx, kvrt_pool_verify(f.pool));
    }
    cr_assert_gt(preempted_b, 0, "the latest request is the victim");
    cr_assert_eq(preempted_a, 0);
    kvrt_seq_info_t ev[2];
    uint32_t n;
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 2, &n));
    cr_assert_eq(n, 2);
    for (uint32_t i = 0; i < 2; i++) {
        cr_assert_eq(ev[i].end_reason, KVRT_END_LENGTH);
        for (uint32_t t = 0; t < 12; t++)
            cr_assert_eq(ev[i].output[t], model_at(8 + t), "request %u token %u", i, t);
        if (ev[i].id == b) {
            cr_assert_eq(ev[i].preemptions, preempted_b);
            cr_assert_gt(ev[i].cached_tokens, 0, "recomputation used the cache");
        }
    }
    close_fixture(&f);
}

static kvrt_seq_id_t add_priority(fixture_t *f, const int32_t *prompt, uint32_t n,
                                  uint32_t max_new, int32_t priority)
{
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_PRIORITY, .prompt = prompt,
                           .prompt_len = n, .max_new_tokens = max_new, .priority = priority};
    kvrt_seq_id_t id;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    return id;
}

/* The plan's arrays agree with each other (after an entry was taken out). */
static void assert_plan_consistent(const kvrt_batch_plan_t *plan)
{
    uint32_t tokens = 0, max_len = 0;
    cr_assert_eq(plan->query_start_loc[0], 0);
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *e = &plan->seqs[i];
        cr_assert_eq((uint32_t)plan->query_start_loc[i], tokens);
        cr_assert_eq((uint32_t)plan->seq_lens[i], e->num_computed_tokens + e->num_new_tokens);
        cr_assert_eq((uint32_t)plan->row_index[i], e->row);
        for (uint32_t k = 0; k < e->num_new_tokens; k++) {
            uint32_t pos = e->num_computed_tokens + k;
            const int32_t *row = plan->block_rows + (size_t)e->row * plan->row_stride;
            cr_assert_eq((uint32_t)plan->positions[tokens + k], pos);
            cr_assert_eq(plan->slot_mapping[tokens + k],
                         (int64_t)row[pos / plan->tokens_per_block] * plan->tokens_per_block +
                             pos % plan->tokens_per_block);
        }
        tokens += e->num_new_tokens;
        if ((uint32_t)plan->seq_lens[i] > max_len)
            max_len = (uint32_t)plan->seq_lens[i];
    }
    cr_assert_eq(plan->num_tokens, tokens);
    cr_assert_eq((uint32_t)plan->query_start_loc[plan->num_seqs], tokens);
    cr_assert_eq(plan->max_seq_len, max_len);
}

Test(sched_cache, lowest_priority_request_is_the_victim_even_when_already_planned)
{
    /* 5 usable blocks of 2 tokens. A (priority 0) is admitted first, so its
     * decode is planned before B's; B (priority 1) then needs a block. */
    fixture_t f = open_fixture(6, 2, false, NULL);
    int32_t pa[4] = {1, 2, 3, 4}, pb[4] = {11, 12, 13, 14};
    kvrt_seq_id_t a = add_priority(&f, pa, 4, 4, 0);
    kvrt_seq_id_t b = add_priority(&f, pb, 4, 4, 1);
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &plan));
    cr_assert_eq(plan->num_seqs, 2);
    commit_model(&f, plan);
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &plan));
    cr_assert_eq(plan->num_preempted, 1);
    cr_assert_eq(plan->preempted[0], a, "the lower priority is the victim");
    cr_assert_eq(plan->num_seqs, 1, "the victim's entry left the plan");
    cr_assert_eq(plan->seqs[0].id, b);
    cr_assert_eq(plan->num_decode_seqs, 1);
    assert_plan_consistent(plan);
    commit_model(&f, plan);
    ASSERT_OK(f.ctx, kvrt_pool_verify(f.pool));
    run_to_end(&f, 2);
    close_fixture(&f);
}

Test(sched_cache, a_request_is_never_preempted_for_one_of_lower_priority)
{
    /* High (priority 2) arrives first, low (0) second; 7 usable blocks of 2
     * tokens, each request grows to 8 blocks. High is never the victim: when
     * low needs a block, low itself gives way. */
    fixture_t f = open_fixture(8, 2, false, NULL);
    int32_t ph[4] = {1, 2, 3, 4}, pl[4] = {11, 12, 13, 14};
    kvrt_seq_id_t high = add_priority(&f, ph, 4, 10, 2);
    kvrt_seq_id_t low = add_priority(&f, pl, 4, 10, 0);
    uint32_t high_preempted = 0, low_preempted = 0;
    const kvrt_batch_plan_t *plan;
    for (int k = 0; k < 200; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, (uint64_t)k, &plan));
        assert_plan_consistent(plan);
        for (uint32_t i = 0; i < plan->num_preempted; i++) {
            high_preempted += plan->preempted[i] == high;
            low_preempted += plan->preempted[i] == low;
        }
        if (!plan->num_seqs)
            break;
        commit_model(&f, plan);
    }
    cr_assert_eq(high_preempted, 0);
    cr_assert_gt(low_preempted, 0, "the pool was meant to run out");
    run_to_end(&f, 2);
    close_fixture(&f);
}

/* What the observer of the next test saw: STORED blocks, in order. */
typedef struct stored_log {
    int32_t blocks[1024];
    uint32_t count;
} stored_log_t;

static void log_stored(void *user_data, const kvrt_cache_event_t *ev)
{
    stored_log_t *log = user_data;
    if (ev->kind == KVRT_CACHE_EVENT_STORED && log->count < 1024)
        log->blocks[log->count++] = ev->block;
}

/* One commit fills a block in more requests than one insert batch holds,
 * and some of them end in that commit: every block is stored, in plan
 * order, and an ending request's block is stored before it is released. */
Test(sched_cache, a_commits_full_blocks_are_stored_in_plan_order_before_any_end)
{
    enum { N = 300, TPB = 16 };
    kvrt_sched_params_t sp = sched_fixture_params_for(N, TPB);
    fixture_t f = open_fixture(4 * N, TPB, true, &sp);
    stored_log_t log = {0};
    ASSERT_OK(f.ctx, kvrt_cache_observe(f.cache, log_stored, &log));
    /* Prompts of 15 tokens: the first decode fills block 0. Every third
     * request stops on the token that decode samples. */
    const int32_t stop = model_at(TPB);
    for (uint32_t i = 0; i < N; i++) {
        int32_t prompt[TPB - 1];
        test_prompt(prompt, TPB - 1, (int32_t)(i * 100));
        kvrt_seq_params_t p = {.field_mask = i % 3 == 0 ? KVRT_SEQ_PARAM_STOP : 0,
                               .prompt = prompt, .prompt_len = TPB - 1,
                               .max_new_tokens = 8, .stop_tokens = &stop,
                               .num_stop_tokens = 1};
        kvrt_seq_id_t id;
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
    }
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 1, &plan));
    cr_assert_eq(plan->num_prefill_seqs, N);
    commit_model(&f, plan);
    cr_assert_eq(log.count, 0, "no block is full after the prefill");

    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 2, &plan));
    cr_assert_eq(plan->num_decode_seqs, N);
    int32_t expect[N];
    for (uint32_t i = 0; i < N; i++)
        expect[i] = plan->block_rows[(size_t)plan->seqs[i].row * plan->row_stride];
    int32_t tokens[N];
    for (uint32_t i = 0; i < N; i++)
        tokens[i] = model_at((uint32_t)plan->seq_lens[i]);
    kvrt_commit_t c = {.step = plan->step, .num_seqs = N, .num_tokens = N, .tokens = tokens};
    ASSERT_OK(f.ctx, kvrt_sched_commit(f.sched, &c));
    cr_assert_eq(log.count, N, "%u of %u full blocks stored", log.count, N);
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(log.blocks[i], expect[i], "store %u: block %d, plan order says %d", i,
                     log.blocks[i], expect[i]);
    ASSERT_OK(f.ctx, kvrt_cache_verify(f.cache));
    ASSERT_OK(f.ctx, kvrt_pool_verify(f.pool));
    kvrt_seq_info_t ev[N];
    uint32_t ended = sched_fixture_drain(&f, ev, N);
    cr_assert_eq(ended, N / 3, "every third request stopped");
    /* The stopped requests' blocks stayed cached, now idle. */
    kvrt_pool_info_t info;
    ASSERT_OK(f.ctx, kvrt_pool_info(f.pool, &info));
    cr_assert_geq(info.cached_blocks, N / 3);
    for (uint32_t step = 3; step < 20; step++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, step, &plan));
        if (!plan->num_seqs)
            break;
        commit_model(&f, plan);
    }
    while (sched_fixture_drain(&f, ev, N) > 0)
        ;
    close_fixture(&f);
}

/* What the observer of the next tests saw: each STORED block and its
 * position in its sequence. */
typedef struct named_log {
    struct { int32_t block; uint32_t depth; } stored[256];
    uint32_t count;
} named_log_t;

static void log_named(void *user_data, const kvrt_cache_event_t *ev)
{
    named_log_t *log = user_data;
    if (ev->kind == KVRT_CACHE_EVENT_STORED && log->count < 256) {
        log->stored[log->count].block = ev->block;
        log->stored[log->count++].depth = ev->name.depth;
    }
}

enum { ROWS_N = 12, ROWS_TPB = 16, ROWS_MAX = 64 };

/* A plan's rows as its step gave them. */
typedef struct plan_rows {
    const kvrt_batch_plan_t *plan;
    uint32_t entries;
    uint32_t lens[ROWS_N];
    int32_t rows[ROWS_N][ROWS_MAX];
} plan_rows_t;

static void take_rows(plan_rows_t *r, const kvrt_batch_plan_t *plan)
{
    cr_assert_leq(plan->num_seqs, ROWS_N);
    r->plan = plan;
    r->entries = plan->num_seqs;
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        r->lens[i] = ((uint32_t)plan->seq_lens[i] + ROWS_TPB - 1) / ROWS_TPB;
        cr_assert_leq(r->lens[i], ROWS_MAX);
        memcpy(r->rows[i], plan->block_rows + (size_t)plan->seqs[i].row * plan->row_stride,
               r->lens[i] * sizeof(int32_t));
    }
}

/* Commits r's plan; every block the commit stores is the one a row of
 * the plan holds at the stored position. Returns how many it stored. */
static uint32_t commit_checking_stores(fixture_t *f, named_log_t *log, const plan_rows_t *r)
{
    log->count = 0;
    commit_model(f, r->plan);
    cr_assert_lt(log->count, 256, "more stores in one commit than the log holds");
    for (uint32_t k = 0; k < log->count; k++) {
        bool found = false;
        for (uint32_t i = 0; i < r->entries && !found; i++)
            found = log->stored[k].depth < r->lens[i] &&
                    r->rows[i][log->stored[k].depth] == log->stored[k].block;
        cr_assert(found, "step %llu: block %d stored at position %u, which no row holds there",
                  (unsigned long long)r->plan->step, log->stored[k].block,
                  log->stored[k].depth);
    }
    kvrt_seq_info_t ev[ROWS_N];
    sched_fixture_drain(f, ev, ROWS_N);
    return log->count;
}

/* Prefill chunks that end inside a block, chunks that fill several, and
 * decodes that fill one, with one plan in flight or two (the step of N+1
 * before the commit of N): every block a commit stores is the one holding
 * its tokens, and every full block is stored. */
static void stores_the_blocks_holding_their_tokens(bool async)
{
    kvrt_sched_params_t sp = sched_fixture_params_for(ROWS_N, ROWS_TPB);
    sp.max_batch_tokens = 37; /* chunks end at every offset in a block */
    if (async) {
        sp.field_mask |= KVRT_SCHED_PARAM_PLANS_IN_FLIGHT;
        sp.max_plans_in_flight = 2;
    }
    fixture_t f = open_fixture(64 * ROWS_N, ROWS_TPB, true, &sp);
    named_log_t log = {0};
    ASSERT_OK(f.ctx, kvrt_cache_observe(f.cache, log_named, &log));
    uint32_t expect = 0;
    for (uint32_t i = 0; i < ROWS_N; i++) {
        int32_t prompt[100];
        uint32_t n = 20 + 7 * i, max_new = 40;
        test_prompt(prompt, n, (int32_t)(i * 1000));
        add(&f, prompt, n, max_new, NULL);
        expect += (n + max_new - 1) / ROWS_TPB; /* the last token is never computed */
    }
    static plan_rows_t taken[2]; /* the plans in flight, oldest first */
    uint32_t stored = 0, pending = 0;
    for (uint64_t step = 0; step < 1000; step++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, step, &plan));
        if (plan->num_seqs)
            take_rows(&taken[pending++], plan);
        else if (pending == 0)
            break;
        /* Async: the next step comes before this commit, unless it has
         * nothing to plan until the commit. */
        if (pending == (async ? 2u : 1u) || !plan->num_seqs) {
            stored += commit_checking_stores(&f, &log, &taken[0]);
            taken[0] = taken[1];
            pending--;
        }
    }
    cr_assert_eq(pending, 0);
    cr_assert_eq(stored, expect, "%u blocks stored, %u full", stored, expect);
    close_fixture(&f);
}

Test(sched_cache, every_stored_block_is_the_one_holding_its_tokens)
{
    stores_the_blocks_holding_their_tokens(false);
}

Test(sched_cache, every_stored_block_is_the_one_holding_its_tokens_with_two_plans_in_flight)
{
    stores_the_blocks_holding_their_tokens(true);
}

/* A run to the end of a request of prompt_len tokens and max_new outputs;
 * then a request of exactly its tokens (prompt and outputs, as drained)
 * must hit every block the first one computed. The outputs' newest tokens
 * sit in the request's own line until 16 of them are known: the blocks
 * they fill are hashed from there. */
static void outputs_are_cached_under_their_tokens(uint32_t tpb)
{
    fixture_t f = open_fixture(128, tpb, true, NULL);
    int32_t tokens[64];
    const uint32_t prompt_len = 13, max_new = 48, total = prompt_len + max_new;
    test_prompt(tokens, prompt_len, 500);
    add(&f, tokens, prompt_len, max_new, NULL);
    const kvrt_batch_plan_t *plan;
    for (int k = 0; k < 100; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, (uint64_t)k, &plan));
        if (!plan->num_seqs)
            break;
        commit_model(&f, plan);
    }
    kvrt_seq_info_t ev[2];
    uint32_t n;
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 2, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ev[0].output_tokens, max_new);
    for (uint32_t t = 0; t < max_new; t++) {
        cr_assert_eq(ev[0].output[t], model_at(prompt_len + t), "output %u", t);
        tokens[prompt_len + t] = ev[0].output[t];
    }
    /* Its last token was never computed: the blocks of total - 1. */
    const uint32_t expect = (total - 1) / tpb * tpb;
    if (tpb <= 8) /* blocks inside the last line of 16 tokens are checked */
        cr_assert_gt(expect, 48);
    add(&f, tokens, total, 1, NULL);
    kvrt_plan_seq_t e = admit_one(&f);
    cr_assert_eq(e.num_computed_tokens, expect, "blocks of %u tokens: %u hit, %u computed",
                 tpb, e.num_computed_tokens, expect);
    run_to_end(&f, 1);
    close_fixture(&f);
}

Test(sched_cache, the_blocks_of_outputs_are_cached_under_their_tokens_at_every_block_size)
{
    for (uint32_t tpb = 2; tpb <= 32; tpb *= 2)
        outputs_are_cached_under_their_tokens(tpb);
}

/* A (priority 0) and H (priority 1) decode until H needs a block the pool
 * no longer has: A is preempted with tokens its line of recent tokens
 * holds, H ends, and A is matched again: it must hit every block of its
 * tokens still cached, which the test finds with its own match of A's
 * tokens just before that step. With skip_write, A caches nothing of its
 * own (so nothing hashed its tokens before the match): a twin with its
 * prompt ran first, and the test holds the twin's blocks, which hold A's
 * tokens too (the model's token depends on the position only). */
static void a_preempted_request_hits_its_own_outputs(uint32_t tpb, bool skip_write)
{
    /* A and H hold about 2 * 30 / tpb blocks when the pool runs out; the
     * test holds the twin's blocks of 53 computed tokens, of which A's
     * prompt hits those of 5. */
    const uint32_t usable = 60 / tpb + (skip_write ? 53 / tpb - 5 / tpb : 0);
    fixture_t f = open_fixture(usable + 1, tpb, true, NULL);
    int32_t pa[64], ph[8];
    test_prompt(pa, 6, 700);
    test_prompt(ph, 6, 800);
    for (uint32_t t = 6; t < 64; t++)
        pa[t] = model_at(t); /* A's tokens, and the twin's */
    int32_t twin_blocks[32];
    kvrt_cache_match_t twin = {0};
    if (skip_write) {
        add(&f, pa, 6, 48, NULL);
        run_to_end(&f, 1);
        ASSERT_OK(f.ctx, kvrt_cache_match(f.cache, pa, 53, NULL, 32, twin_blocks, NULL, &twin));
        cr_assert_eq(twin.num_tokens, 53 / tpb * tpb);
    }
    kvrt_seq_params_t ap = {.field_mask = KVRT_SEQ_PARAM_PRIORITY | KVRT_SEQ_PARAM_CACHE_FLAGS,
                            .prompt = pa, .prompt_len = 6, .max_new_tokens = 48,
                            .cache_flags = skip_write ? KVRT_SEQ_CACHE_SKIP_WRITE : 0};
    kvrt_seq_id_t a;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &ap, &a));
    add_priority(&f, ph, 6, 26, 1); /* H */
    const kvrt_batch_plan_t *plan;
    /* A's token count, followed through the plans: kvrt_seq_info would
     * write its recent tokens back, which the match must do itself. */
    uint32_t a_tokens = 6;
    bool preempted = false, readmitted = false;
    for (int k = 0; k < 200 && !readmitted; k++) {
        uint32_t expect = 0;
        if (preempted) { /* match A's tokens, give the hits back */
            int32_t hit_blocks[64];
            kvrt_cache_match_t m;
            ASSERT_OK(f.ctx, kvrt_cache_match(f.cache, pa, a_tokens - 1, NULL, 64, hit_blocks,
                                              NULL, &m));
            ASSERT_OK(f.ctx, kvrt_pool_free(f.pool, m.num_blocks, hit_blocks));
            expect = m.num_tokens;
        }
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, (uint64_t)k, &plan));
        for (uint32_t i = 0; i < plan->num_preempted; i++)
            preempted |= plan->preempted[i] == a;
        for (uint32_t i = 0; i < plan->num_seqs; i++) {
            if (plan->seqs[i].id != a)
                continue;
            if (!preempted && plan->seqs[i].sample) /* its token count after the commit */
                a_tokens = (uint32_t)plan->seq_lens[i] + 1;
            if (preempted && plan->seqs[i].kind == KVRT_PLAN_PREFILL) {
                readmitted = true;
                /* Blocks of A's newest 16 tokens are among them. */
                cr_assert_gt(expect, a_tokens / 16 * 16,
                             "blocks of %u tokens: the test reaches the recent line", tpb);
                cr_assert_eq(plan->seqs[i].num_computed_tokens, expect,
                             "blocks of %u tokens%s: %u hit, %u cached", tpb,
                             skip_write ? ", skip write" : "",
                             plan->seqs[i].num_computed_tokens, expect);
            }
        }
        if (plan->num_seqs)
            commit_model(&f, plan);
    }
    cr_assert(readmitted, "blocks of %u tokens: A was preempted and admitted again", tpb);
    ASSERT_OK(f.ctx, kvrt_pool_free(f.pool, twin.num_blocks, twin_blocks));
    run_to_end(&f, 2);
    close_fixture(&f);
}

Test(sched_cache, a_preempted_request_hits_the_blocks_of_its_newest_outputs)
{
    for (uint32_t tpb = 2; tpb <= 8; tpb *= 2) {
        a_preempted_request_hits_its_own_outputs(tpb, false);
        a_preempted_request_hits_its_own_outputs(tpb, true);
    }
}
