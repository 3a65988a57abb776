/*
 * test_sched_shared.c - prompts that share a prefix are computed once
 * (shared_prefill_min_tokens): a request whose next blocks another request
 * is computing waits for them, keeps its place, then hits them; it waits
 * only while they are being computed (in chunks, with plans in flight, not
 * for a request aborted or preempted, nor past a reset that leaves the
 * other's blocks out of the cache, nor once the other restarts lower, nor
 * after its own K/V arrived), for its own prompt's blocks when
 * prompts share a template block, and never when the shared part is short,
 * when it skips the cache, when the other request leaves nothing in the
 * cache, or when salts or images differ; hybrid models wait as well, also
 * when group 0 has the smaller blocks. The
 * cache and the scheduler count one query per admission, a pinned head
 * keeps its hits while a request ahead of it waits, and waiting requests
 * leave running decodes the budget for their drafts.
 */
#include "cache/hooks.h"
#include "sched_fixture.h"

#define TPB 16u
#define PREFIX 128u /* eight blocks */
#define SUFFIX 20u

typedef sched_fixture_t fixture_t;

/* Scheduler parameters: the tokens to wait for (0: never), the chunk, the
 * plans in flight. */
static kvrt_sched_params_t params(uint32_t min_tokens, uint32_t chunk, uint32_t in_flight)
{
    return (kvrt_sched_params_t){
        .field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS | KVRT_SCHED_PARAM_MAX_SEQS |
                      KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_SHARED_PREFILL |
                      KVRT_SCHED_PARAM_PLANS_IN_FLIGHT,
        .max_batch_tokens = 1024,
        .max_seqs = 16,
        .prefill_chunk_tokens = chunk,
        .shared_prefill_min_tokens = min_tokens,
        .max_plans_in_flight = in_flight};
}

static fixture_t open_with(const kvrt_sched_params_t *sp)
{
    return sched_fixture_open(512, TPB, true, sp);
}

/* A prompt of `shared` tokens every caller has, then SUFFIX of `variant`'s. */
static void make_prompt(int32_t *prompt, uint32_t shared, uint32_t variant)
{
    for (uint32_t i = 0; i < shared; i++)
        prompt[i] = (int32_t)(100 + 7 * i);
    for (uint32_t i = 0; i < SUFFIX; i++)
        prompt[shared + i] = (int32_t)(50000 + 1000 * variant + i);
}

static kvrt_seq_id_t add_flags(fixture_t *f, uint32_t shared, uint32_t variant,
                               uint32_t cache_flags, const kvrt_hash_keys_t *keys)
{
    int32_t prompt[PREFIX + SUFFIX];
    make_prompt(prompt, shared, variant);
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_CACHE_FLAGS |
                                         (keys ? KVRT_SEQ_PARAM_KEYS : 0),
                           .prompt = prompt, .prompt_len = shared + SUFFIX,
                           .max_new_tokens = 4, .cache_flags = cache_flags, .keys = keys};
    kvrt_seq_id_t id;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    return id;
}

static kvrt_seq_id_t add(fixture_t *f, uint32_t variant)
{
    return add_flags(f, PREFIX, variant, 0, NULL);
}

static const kvrt_batch_plan_t *step(fixture_t *f)
{
    static uint64_t now;
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, ++now, &plan));
    return plan;
}

/* The plan's entry for id, or NULL. */
static const kvrt_plan_seq_t *entry(const kvrt_batch_plan_t *plan, kvrt_seq_id_t id)
{
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        if (plan->seqs[i].id == id)
            return &plan->seqs[i];
    return NULL;
}

static kvrt_sched_stats_t stats(fixture_t *f)
{
    kvrt_sched_stats_t st;
    ASSERT_OK(f->ctx, kvrt_sched_stats(f->sched, &st));
    return st;
}

static kvrt_cache_stats_t cache_stats(fixture_t *f)
{
    kvrt_cache_stats_t st;
    ASSERT_OK(f->ctx, kvrt_cache_stats(f->cache, &st));
    return st;
}

/* Steps and commits until nothing is planned; every request ends. */
static void run_to_end(fixture_t *f, uint32_t requests)
{
    for (int k = 0; k < 200; k++) {
        const kvrt_batch_plan_t *plan = step(f);
        if (!plan->num_seqs)
            break;
        sched_fixture_commit(f, plan, 9);
    }
    kvrt_seq_info_t ev[64];
    cr_assert_leq(requests, 64);
    cr_assert_eq(sched_fixture_drain(f, ev, 64), requests);
    for (uint32_t i = 0; i < requests; i++)
        cr_assert_eq(ev[i].end_reason, KVRT_END_LENGTH);
}

/* Steps, committing, until b is planned; in every step before, a is
 * planned prefilling (b waits only while a computes). Returns b's entry of
 * the plan *plan_out, not committed, and the steps b waited. */
static kvrt_plan_seq_t wait_for_entry(fixture_t *f, kvrt_seq_id_t b, kvrt_seq_id_t a,
                                      const kvrt_batch_plan_t **plan_out, uint32_t *waited)
{
    *waited = 0;
    for (int k = 0; k < 20; k++) {
        const kvrt_batch_plan_t *plan = step(f);
        const kvrt_plan_seq_t *eb = entry(plan, b);
        if (eb) {
            *plan_out = plan;
            return *eb;
        }
        const kvrt_plan_seq_t *ea = entry(plan, a);
        cr_assert_not_null(ea);
        cr_assert_eq(ea->kind, KVRT_PLAN_PREFILL, "b waits only while a prefills");
        sched_fixture_commit(f, plan, 9);
        ++*waited;
    }
    cr_assert_fail("b was never planned");
    return (kvrt_plan_seq_t){0};
}

Test(sched_shared, prompts_sharing_a_prefix_admitted_together_compute_it_once)
{
    kvrt_sched_params_t sp = params(64, 1024, 1);
    fixture_t f = open_with(&sp);
    kvrt_seq_id_t id[4];
    for (uint32_t i = 0; i < 4; i++)
        id[i] = add(&f, i);

    const kvrt_batch_plan_t *plan = step(&f);
    cr_assert_eq(plan->num_seqs, 1, "the others wait for the shared blocks");
    cr_assert_eq(plan->seqs[0].id, id[0]);
    cr_assert_eq(plan->num_prefill_tokens, PREFIX + SUFFIX);
    cr_assert_eq(stats(&f).shared_prefill_waits, 3);
    sched_fixture_commit(&f, plan, 9);

    plan = step(&f);
    cr_assert_eq(plan->num_seqs, 4);
    for (uint32_t i = 1; i < 4; i++) {
        const kvrt_plan_seq_t *e = entry(plan, id[i]);
        cr_assert_not_null(e);
        cr_assert_eq(e->kind, KVRT_PLAN_PREFILL);
        cr_assert_eq(e->num_computed_tokens, PREFIX, "request %u hit %u", i,
                     e->num_computed_tokens);
        cr_assert_eq(e->num_new_tokens, SUFFIX);
    }
    cr_assert_eq(plan->num_prefill_tokens, 3 * SUFFIX);
    sched_fixture_commit(&f, plan, 9);

    /* One query per admission, in the cache and in the scheduler. */
    kvrt_cache_stats_t cs = cache_stats(&f);
    cr_assert_eq(cs.queries, 4);
    cr_assert_eq(cs.hit_tokens, 3 * PREFIX);
    kvrt_sched_stats_t st = stats(&f);
    cr_assert_eq(st.prefix_hit_tokens, 3 * PREFIX);
    cr_assert_eq(st.prefix_query_tokens, 4 * (PREFIX + SUFFIX - 1));
    cr_assert_eq(st.shared_prefill_waits, 3);
    run_to_end(&f, 4);
    sched_fixture_close(&f);
}

Test(sched_shared, with_the_option_off_every_request_computes_its_prompt)
{
    kvrt_sched_params_t sp = params(0, 1024, 1);
    fixture_t f = open_with(&sp);
    for (uint32_t i = 0; i < 4; i++)
        add(&f, i);
    const kvrt_batch_plan_t *plan = step(&f);
    cr_assert_eq(plan->num_seqs, 4);
    cr_assert_eq(plan->num_prefill_tokens, 4 * (PREFIX + SUFFIX));
    cr_assert_eq(stats(&f).shared_prefill_waits, 0);
    sched_fixture_commit(&f, plan, 9);
    run_to_end(&f, 4);
    sched_fixture_close(&f);
}

/* a computes its prompt in chunks of 32 tokens (two blocks); b waits while
 * 32 or more tokens they share are left for a to commit, put off without a
 * match after the first step (the cache counts a's query and b's
 * admission), then hits what a committed and computes the rest itself.
 * With its own suffix b shares a's 8 prefix blocks: it waits 4 steps and
 * hits 128 tokens; with a prompt that is the start of a's (100 tokens, 99
 * offered: 6 full blocks) it waits 3 and hits 96. */
Test(sched_shared, a_request_waits_while_another_prefills_the_prefix_in_chunks)
{
    const struct { uint32_t len, variant, waits, hit; } cases[] = {
        {PREFIX + SUFFIX, 1, 4, PREFIX}, {100, 0, 3, 96}};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        kvrt_sched_params_t sp = params(32, 32, 1);
        fixture_t f = open_with(&sp);
        int32_t prompt[2][PREFIX + SUFFIX];
        make_prompt(prompt[0], PREFIX, 0);
        make_prompt(prompt[1], PREFIX, cases[c].variant);
        kvrt_seq_params_t pa = {.prompt = prompt[0], .prompt_len = PREFIX + SUFFIX,
                                .max_new_tokens = 2};
        kvrt_seq_params_t pb = {.prompt = prompt[1], .prompt_len = cases[c].len,
                                .max_new_tokens = 2};
        kvrt_seq_id_t a, b;
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &pa, &a));
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &pb, &b));
        const kvrt_batch_plan_t *plan;
        uint32_t waited;
        kvrt_plan_seq_t eb = wait_for_entry(&f, b, a, &plan, &waited);
        cr_assert_eq(waited, cases[c].waits, "b of %u tokens: %u waits", cases[c].len, waited);
        cr_assert_eq(eb.num_computed_tokens, cases[c].hit);
        cr_assert_eq(stats(&f).shared_prefill_waits, cases[c].waits);
        cr_assert_eq(cache_stats(&f).queries, 2);
        sched_fixture_commit(&f, plan, 9);
        run_to_end(&f, 2);
        sched_fixture_close(&f);
    }
}

Test(sched_shared, a_request_stops_waiting_when_the_other_is_aborted)
{
    kvrt_sched_params_t sp = params(64, 32, 1);
    fixture_t f = open_with(&sp);
    kvrt_seq_id_t a = add(&f, 0), b = add(&f, 1);
    const kvrt_batch_plan_t *plan = step(&f);
    cr_assert_not_null(entry(plan, a));
    cr_assert_null(entry(plan, b));
    sched_fixture_commit(&f, plan, 9);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, a));

    plan = step(&f);
    const kvrt_plan_seq_t *eb = entry(plan, b);
    cr_assert_not_null(eb, "nobody computes b's next blocks any more");
    cr_assert_eq(eb->num_computed_tokens, 32, "b hits what a committed");
    cr_assert_eq(stats(&f).shared_prefill_waits, 1);
    sched_fixture_commit(&f, plan, 9);
    for (int k = 0; k < 50; k++) {
        plan = step(&f);
        if (!plan->num_seqs)
            break;
        sched_fixture_commit(&f, plan, 9);
    }
    kvrt_seq_info_t ev[4];
    cr_assert_eq(sched_fixture_drain(&f, ev, 4), 2);
    sched_fixture_close(&f);
}

Test(sched_shared, short_prefixes_and_requests_that_skip_the_cache_never_wait)
{
    kvrt_sched_params_t sp = params(64, 1024, 1);
    static const uint8_t salt_a[] = {1, 2, 3}, salt_b[] = {4, 5, 6};
    const kvrt_hash_keys_t ka = {.field_mask = KVRT_HASH_KEY_SALT, .salt = salt_a,
                                 .salt_bytes = 3};
    const kvrt_hash_keys_t kb = {.field_mask = KVRT_HASH_KEY_SALT, .salt = salt_b,
                                 .salt_bytes = 3};
    /* Two images behind the same placeholder tokens (16..47). */
    const kvrt_mm_item_t image_a = {.content_hash = {1, 2}, .offset = 16, .length = 32};
    const kvrt_mm_item_t image_b = {.content_hash = {3, 4}, .offset = 16, .length = 32};
    const kvrt_hash_keys_t ma = {.field_mask = KVRT_HASH_KEY_MM, .num_mm_items = 1,
                                 .mm_items = &image_a};
    const kvrt_hash_keys_t mb = {.field_mask = KVRT_HASH_KEY_MM, .num_mm_items = 1,
                                 .mm_items = &image_b};
    struct {
        const char *what;
        uint32_t shared, flags_a, flags_b;
        const kvrt_hash_keys_t *keys_a, *keys_b;
    } cases[] = {
        {"48 shared tokens, 64 asked", 48, 0, 0, NULL, NULL},
        {"the second skips reading the cache", PREFIX, 0, KVRT_SEQ_CACHE_SKIP_READ, NULL, NULL},
        {"the first writes nothing to the cache", PREFIX, KVRT_SEQ_CACHE_SKIP_WRITE, 0, NULL,
         NULL},
        {"different salts", PREFIX, 0, 0, &ka, &kb},
        {"different images behind the same tokens", PREFIX, 0, 0, &ma, &mb},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        fixture_t f = open_with(&sp);
        add_flags(&f, cases[c].shared, 0, cases[c].flags_a, cases[c].keys_a);
        add_flags(&f, cases[c].shared, 1, cases[c].flags_b, cases[c].keys_b);
        const kvrt_batch_plan_t *plan = step(&f);
        cr_assert_eq(plan->num_seqs, 2, "%s: both admitted", cases[c].what);
        cr_assert_eq(stats(&f).shared_prefill_waits, 0, "%s", cases[c].what);
        sched_fixture_commit(&f, plan, 9);
        run_to_end(&f, 2);
        sched_fixture_close(&f);
    }
}

Test(sched_shared, a_waiting_request_keeps_its_place_in_the_queue)
{
    kvrt_sched_params_t sp = params(64, 1024, 1);
    fixture_t f = open_with(&sp);
    kvrt_seq_id_t a = add(&f, 0), b = add(&f, 1);
    kvrt_seq_id_t c = add_flags(&f, 0, 2, 0, NULL); /* shares nothing */
    kvrt_seq_id_t d = add(&f, 3);
    const kvrt_batch_plan_t *plan = step(&f);
    cr_assert_eq(plan->num_seqs, 2);
    cr_assert_eq(plan->seqs[0].id, a);
    cr_assert_eq(plan->seqs[1].id, c, "admission goes on past a waiting request");
    sched_fixture_commit(&f, plan, 9);
    kvrt_seq_id_t e = add(&f, 4); /* arrives later than b and d: shares, but hits */

    plan = step(&f);
    /* The decodes of a and c, then b, d and e in arrival order. */
    cr_assert_eq(plan->num_seqs, 5);
    cr_assert_eq(plan->seqs[2].id, b);
    cr_assert_eq(plan->seqs[3].id, d);
    cr_assert_eq(plan->seqs[4].id, e);
    for (uint32_t i = 2; i < 5; i++)
        cr_assert_eq(plan->seqs[i].num_computed_tokens, PREFIX);
    sched_fixture_commit(&f, plan, 9);
    run_to_end(&f, 5);
    sched_fixture_close(&f);
}

Test(sched_shared, with_two_plans_in_flight_the_waiting_request_hits_the_committed_prefix)
{
    kvrt_sched_params_t sp = params(64, 1024, 2);
    fixture_t f = open_with(&sp);
    kvrt_seq_id_t a = add(&f, 0), b = add(&f, 1);
    const kvrt_batch_plan_t *p1 = step(&f);
    cr_assert_eq(p1->num_seqs, 1);
    cr_assert_eq(p1->seqs[0].id, a);
    /* Step 2 before step 1's commit: a's prompt is still in flight. */
    const kvrt_batch_plan_t *p2 = step(&f);
    cr_assert_null(entry(p2, b), "b waits for the blocks a plan in flight computes");
    sched_fixture_commit(&f, p1, 9);
    if (p2->num_seqs)
        sched_fixture_commit(&f, p2, 9);
    const kvrt_batch_plan_t *p3 = step(&f);
    const kvrt_plan_seq_t *eb = entry(p3, b);
    cr_assert_not_null(eb);
    cr_assert_eq(eb->num_computed_tokens, PREFIX);
    cr_assert_eq(stats(&f).shared_prefill_waits, 2);
    sched_fixture_commit(&f, p3, 9);
    run_to_end(&f, 2);
    sched_fixture_close(&f);
}

/* Many requests with one prompt (parallel sampling): at most max_seqs wait
 * in a step, every one of them hits the prompt once it is cached, and the
 * pool holds one copy of it. */
Test(sched_shared, many_copies_of_one_prompt_hold_one_copy_of_its_blocks)
{
    kvrt_sched_params_t sp = params(64, 1024, 1);
    sp.max_requests = 64;
    sp.field_mask |= KVRT_SCHED_PARAM_MAX_REQUESTS;
    fixture_t f = open_with(&sp);
    for (uint32_t i = 0; i < 40; i++)
        add(&f, 0); /* the same prompt 40 times */
    const kvrt_batch_plan_t *plan = step(&f);
    cr_assert_eq(plan->num_seqs, 1);
    cr_assert_eq(stats(&f).shared_prefill_waits, 16, "at most max_seqs wait in one step");
    sched_fixture_commit(&f, plan, 9);
    plan = step(&f);
    cr_assert_eq(plan->num_seqs, 16, "max_seqs");
    for (uint32_t i = 1; i < 16; i++)
        cr_assert_eq(plan->seqs[i].num_computed_tokens, PREFIX + 16,
                     "a whole block of the suffix too");
    /* One copy of the prompt's full blocks, and a tail block each. */
    cr_assert_eq(sched_fixture_used_blocks(&f), (PREFIX + SUFFIX) / TPB + 16);
    sched_fixture_commit(&f, plan, 9);
    run_to_end(&f, 40);
    sched_fixture_close(&f);
}

/* Prompts that share a cached system prompt and then a block of template
 * tokens (the first tokens of the block where they part): the samples of
 * each still wait for their own prompt's first request. */
Test(sched_shared, samples_of_prompts_sharing_a_template_block_wait_for_their_own)
{
    kvrt_sched_params_t sp = params(32, 1024, 1);
    fixture_t f = open_with(&sp);
    int32_t system[PREFIX + SUFFIX];
    make_prompt(system, PREFIX, 9);
    kvrt_seq_params_t sys = {.prompt = system, .prompt_len = PREFIX + 1, .max_new_tokens = 1};
    kvrt_seq_id_t sys_id;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &sys, &sys_id));
    run_to_end(&f, 1); /* the system prompt's 8 blocks are cached */
    int32_t prompt[2][PREFIX + 64];
    for (uint32_t v = 0; v < 2; v++) {
        make_prompt(prompt[v], PREFIX, 0);
        for (uint32_t i = 0; i < 64; i++) /* 6 template tokens, then the prompt's own */
            prompt[v][PREFIX + i] = i < 6 ? 7000 + (int32_t)i : (int32_t)(8000 + 100 * v + i);
    }
    kvrt_seq_id_t id[2][4];
    for (uint32_t k = 0; k < 4; k++)
        for (uint32_t v = 0; v < 2; v++) {
            kvrt_seq_params_t p = {.prompt = prompt[v], .prompt_len = PREFIX + 64,
                                   .max_new_tokens = 2};
            ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id[v][k]));
        }
    const kvrt_batch_plan_t *plan = step(&f);
    cr_assert_eq(plan->num_seqs, 2, "one request of each prompt computes it");
    cr_assert_not_null(entry(plan, id[0][0]));
    cr_assert_not_null(entry(plan, id[1][0]));
    cr_assert_eq(stats(&f).shared_prefill_waits, 6);
    sched_fixture_commit(&f, plan, 9);
    plan = step(&f);
    for (uint32_t v = 0; v < 2; v++)
        for (uint32_t k = 1; k < 4; k++) {
            const kvrt_plan_seq_t *e = entry(plan, id[v][k]);
            cr_assert_not_null(e);
            cr_assert_eq(e->num_computed_tokens, PREFIX + 48, "prompt %u sample %u", v, k);
        }
    sched_fixture_commit(&f, plan, 9);
    run_to_end(&f, 8);
    sched_fixture_close(&f);
}

/* Requests that drop their last hit (EAGLE/MTP) wait as others do and
 * hit all but their last block; the cache counts one query each. */
Test(sched_shared, requests_dropping_their_last_hit_wait_and_are_counted_once)
{
    kvrt_sched_params_t sp = params(64, 1024, 1);
    fixture_t f = open_with(&sp);
    kvrt_seq_id_t a = add(&f, 0), b[3];
    for (uint32_t i = 0; i < 3; i++)
        b[i] = add_flags(&f, PREFIX, 1 + i, KVRT_SEQ_CACHE_DROP_LAST_HIT, NULL);
    const kvrt_batch_plan_t *plan = step(&f);
    cr_assert_eq(plan->num_seqs, 1);
    cr_assert_eq(plan->seqs[0].id, a);
    sched_fixture_commit(&f, plan, 9);
    plan = step(&f);
    for (uint32_t i = 0; i < 3; i++) {
        const kvrt_plan_seq_t *e = entry(plan, b[i]);
        cr_assert_not_null(e);
        cr_assert_eq(e->num_computed_tokens, PREFIX - TPB);
    }
    sched_fixture_commit(&f, plan, 9);
    kvrt_cache_stats_t cs = cache_stats(&f);
    cr_assert_eq(cs.queries, 4);
    cr_assert_eq(cs.hit_tokens, 3 * PREFIX, "hits as matched, before the drop");
    cr_assert_eq(cs.query_tokens, 4 * (PREFIX + SUFFIX - 1));
    run_to_end(&f, 4);
    sched_fixture_close(&f);
}

/* b drops its last hit (EAGLE/MTP) and comes up after a, which drops its
 * own, has committed its first chunk: b recomputes the block it dropped,
 * a notes the block after it, and b still waits for a's next blocks
 * instead of computing them too; then it hits all of the prefix but its
 * last block. */
Test(sched_shared, a_request_dropping_its_last_hit_waits_for_a_prefill_under_way)
{
    kvrt_sched_params_t sp = params(32, 32, 1);
    fixture_t f = open_with(&sp);
    kvrt_seq_id_t a = add_flags(&f, PREFIX, 0, KVRT_SEQ_CACHE_DROP_LAST_HIT, NULL);
    sched_fixture_commit(&f, step(&f), 9); /* a committed 32 tokens */
    kvrt_seq_id_t b = add_flags(&f, PREFIX, 1, KVRT_SEQ_CACHE_DROP_LAST_HIT, NULL);
    const kvrt_batch_plan_t *plan;
    uint32_t waited;
    kvrt_plan_seq_t eb = wait_for_entry(&f, b, a, &plan, &waited);
    cr_assert_eq(waited, 3, "b waited %u steps", waited);
    cr_assert_eq(eb.num_computed_tokens, PREFIX - TPB);
    cr_assert_eq(cache_stats(&f).queries, 2);
    sched_fixture_commit(&f, plan, 9);
    run_to_end(&f, 2);
    sched_fixture_close(&f);
}

/* A request whose K/V dates from before a cache reset leaves nothing in
 * the cache: nobody waits for it. */
Test(sched_shared, nobody_waits_for_a_request_that_holds_kv_from_before_a_reset)
{
    kvrt_sched_params_t sp = params(64, 32, 1);
    fixture_t f = open_with(&sp);
    kvrt_seq_id_t a = add(&f, 0);
    sched_fixture_commit(&f, step(&f), 9); /* a computed 32 tokens */
    ASSERT_OK(f.ctx, kvrt_cache_reset(f.cache, KVRT_CACHE_RESET_FORGET_BUSY));
    kvrt_seq_id_t b = add(&f, 1);
    const kvrt_batch_plan_t *plan = step(&f);
    cr_assert_not_null(entry(plan, a));
    cr_assert_not_null(entry(plan, b), "b computes its prompt itself");
    cr_assert_eq(stats(&f).shared_prefill_waits, 0);
    sched_fixture_commit(&f, plan, 9);
    run_to_end(&f, 2);
    sched_fixture_close(&f);
}

/* A request already waiting stops when a reset leaves the one it waits
 * for out of the cache (its K/V predates the reset): it is admitted in the
 * next step and computes its prompt. */
Test(sched_shared, a_waiting_request_stops_when_a_reset_leaves_the_other_out_of_the_cache)
{
    kvrt_sched_params_t sp = params(64, 32, 1);
    fixture_t f = open_with(&sp);
    kvrt_seq_id_t a = add(&f, 0), b = add(&f, 1);
    const kvrt_batch_plan_t *plan = step(&f);
    cr_assert_not_null(entry(plan, a));
    cr_assert_null(entry(plan, b), "b waits for a's blocks");
    sched_fixture_commit(&f, plan, 9);
    ASSERT_OK(f.ctx, kvrt_cache_reset(f.cache, KVRT_CACHE_RESET_FORGET_BUSY));
    plan = step(&f);
    const kvrt_plan_seq_t *e = entry(plan, b);
    cr_assert_not_null(e, "b waited for blocks a will never cache");
    cr_assert_eq(e->num_computed_tokens, 0);
    cr_assert_eq(stats(&f).shared_prefill_waits, 1);
    sched_fixture_commit(&f, plan, 9);
    run_to_end(&f, 2);
    sched_fixture_close(&f);
}

/* Requests waiting for another's prompt blocks are not prefill this step
 * can run: a running decode's drafts keep the budget they would have
 * without them. */
Test(sched_shared, waiting_requests_leave_the_budget_to_the_drafts_of_running_decodes)
{
    uint64_t drafts[2] = {0};
    for (int with_waiters = 0; with_waiters < 2; with_waiters++) {
        kvrt_sched_params_t sp = params(32, 32, 1);
        sp.field_mask |= KVRT_SCHED_PARAM_DRAFT | KVRT_SCHED_PARAM_ADAPTIVE_DRAFT;
        sp.max_batch_tokens = 256;
        sp.max_draft_tokens = 4;
        sp.adaptive_draft = 0;
        fixture_t f = open_with(&sp);
        int32_t prompt[20];
        for (int i = 0; i < 20; i++)
            prompt[i] = 60000 + i;
        kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 20, .max_new_tokens = 40};
        kvrt_seq_id_t decoding;
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &decoding));
        sched_fixture_commit(&f, step(&f), 9);
        add(&f, 0); /* prefills in chunks of 32 */
        for (int k = 0; with_waiters && k < 8; k++)
            add(&f, 1 + (uint32_t)k); /* wait for its blocks */
        for (int k = 0; k < 3; k++) {
            const int32_t d[4] = {1, 2, 3, 4};
            ASSERT_OK(f.ctx, kvrt_seq_set_draft(f.sched, decoding, d, 4));
            const kvrt_batch_plan_t *plan = step(&f);
            cr_assert_eq(plan->num_seqs, 2, "the waiting requests wait");
            if (k > 0) /* (in the first, they came up after the decodes were planned) */
                drafts[with_waiters] += plan->num_draft_tokens;
            sched_fixture_commit(&f, plan, 9);
        }
        if (with_waiters)
            cr_assert_eq(stats(&f).shared_prefill_waits, 24);
        run_to_end(&f, with_waiters ? 10 : 2);
        sched_fixture_close(&f);
    }
    cr_assert_eq(drafts[0], 8);
    cr_assert_eq(drafts[1], drafts[0], "drafts %llu with waiting requests, %llu without",
                 (unsigned long long)drafts[1], (unsigned long long)drafts[0]);
}

/* A head that did not fit holds its hits (pinned); a request ahead of it
 * that comes up and waits leaves them to it, so it is not matched again:
 * the cache counts one query per admission. Images at token 64 make the
 * waiting request wait twice, matched before each: for blocks 0-1, then
 * for 2-3 (the blocks before its image), while the head stays pinned. */
Test(sched_shared, a_request_that_waits_leaves_the_pinned_head_its_hits)
{
    kvrt_ctx_t *ctx;
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    kvrt_pool_params_t pp = {.field_mask = KVRT_POOL_PARAM_WATERMARK,
                             .layout = test_layout(TPB),
                             .num_blocks = 41,
                             .watermark_blocks = 20};
    fixture_t f = {.ctx = ctx};
    ASSERT_OK(ctx, kvrt_pool_create(ctx, &pp, &f.pool));
    ASSERT_OK(ctx, kvrt_cache_create(f.pool, NULL, &f.cache));
    kvrt_sched_params_t sp = params(32, 32, 1);
    sp.max_batch_tokens = 128;
    ASSERT_OK(ctx, kvrt_sched_create(ctx, f.pool, f.cache, &sp, &f.sched));
    /* A long request holds most blocks, so a later head does not fit. */
    int32_t long_prompt[256];
    for (int i = 0; i < 256; i++)
        long_prompt[i] = 30000 + i;
    kvrt_seq_params_t lp = {.prompt = long_prompt, .prompt_len = 256, .max_new_tokens = 30};
    kvrt_seq_id_t holder;
    ASSERT_OK(ctx, kvrt_seq_add(f.sched, &lp, &holder));
    for (int k = 0; k < 9; k++)
        sched_fixture_commit(&f, step(&f), 9);
    const kvrt_mm_item_t image_a = {.content_hash = {1, 2}, .offset = 64, .length = 32};
    const kvrt_mm_item_t image_w = {.content_hash = {3, 4}, .offset = 64, .length = 32};
    const kvrt_hash_keys_t ka = {.field_mask = KVRT_HASH_KEY_MM, .num_mm_items = 1,
                                 .mm_items = &image_a};
    const kvrt_hash_keys_t kw = {.field_mask = KVRT_HASH_KEY_MM, .num_mm_items = 1,
                                 .mm_items = &image_w};
    kvrt_seq_id_t a = add_flags(&f, PREFIX, 0, 0, &ka);
    kvrt_seq_id_t w = add_flags(&f, PREFIX, 0, 0, &kw);
    int32_t other[PREFIX + SUFFIX];
    for (uint32_t i = 0; i < PREFIX + SUFFIX; i++)
        other[i] = 40000 + (int32_t)i;
    kvrt_seq_params_t hp = {.prompt = other, .prompt_len = PREFIX + SUFFIX, .max_new_tokens = 4};
    kvrt_seq_id_t head;
    ASSERT_OK(ctx, kvrt_seq_add(f.sched, &hp, &head));
    const uint64_t queries = cache_stats(&f).queries;
    for (int k = 0; k < 2; k++) {
        const kvrt_batch_plan_t *plan = step(&f);
        cr_assert_not_null(entry(plan, a));
        cr_assert_null(entry(plan, w));
        cr_assert_null(entry(plan, head), "the head does not fit while a prefills");
        sched_fixture_commit(&f, plan, 9);
    }
    cr_assert_eq(stats(&f).shared_prefill_waits, 2, "w matched and waited twice");
    cr_assert_eq(cache_stats(&f).queries - queries, 2, "a and the head, each matched once");
    run_to_end(&f, 4);
    sched_fixture_close(&f);
}

/* A hybrid model (a full-attention group of 16-token blocks, a 64-token
 * sliding window over 8-token blocks): copies of a prompt wait while the
 * first computes it, then hit it in both groups; each group's cache counts
 * one query per admission. */
/* A hybrid scheduler: group 0 of blocks0 blocks of tpb0 tokens, group 1
 * of blocks1 of tpb1 tokens over a window of `window` tokens (0: full
 * attention), each with a cache. */
typedef struct hybrid {
    fixture_t f;
    kvrt_pool_t *pools[2];
    kvrt_cache_t *caches[2];
} hybrid_t;

static hybrid_t open_hybrid_sized(uint32_t tpb0, uint32_t blocks0, uint32_t tpb1,
                                  uint32_t blocks1, uint32_t window,
                                  const kvrt_sched_params_t *sp)
{
    hybrid_t h = {0};
    cr_assert_eq(kvrt_ctx_create(NULL, &h.f.ctx), KVRT_OK);
    h.pools[0] = test_pool(h.f.ctx, blocks0, tpb0);
    h.pools[1] = test_pool(h.f.ctx, blocks1, tpb1);
    kvrt_sched_group_params_t gp[2];
    const kvrt_sched_group_params_t *gpp[2];
    for (uint32_t g = 0; g < 2; g++) {
        ASSERT_OK(h.f.ctx, kvrt_cache_create(h.pools[g], NULL, &h.caches[g]));
        gp[g] = (kvrt_sched_group_params_t){.field_mask = KVRT_SCHED_GROUP_CACHE,
                                            .pool = h.pools[g], .cache = h.caches[g]};
        gpp[g] = &gp[g];
    }
    if (window) {
        gp[1].field_mask |= KVRT_SCHED_GROUP_WINDOW;
        gp[1].sliding_window = window;
    }
    h.f.pool = h.pools[0];
    ASSERT_OK(h.f.ctx, kvrt_sched_create_groups(h.f.ctx, 2, gpp, sp, &h.f.sched));
    return h;
}

/* The same with room for 4096 tokens in each group. */
static hybrid_t open_hybrid(uint32_t tpb0, uint32_t tpb1, uint32_t window,
                            const kvrt_sched_params_t *sp)
{
    return open_hybrid_sized(tpb0, 4096 / tpb0, tpb1, 4096 / tpb1, window, sp);
}

/* Requires no used block and no live table in either group (every request
 * has ended), then destroys everything. */
static void close_hybrid(hybrid_t *h)
{
    for (uint32_t g = 0; g < 2; g++) {
        kvrt_pool_info_t info;
        ASSERT_OK(h->f.ctx, kvrt_pool_info(h->pools[g], &info));
        cr_assert_eq(info.used_blocks, 0, "group %u: %u blocks leaked", g, info.used_blocks);
        cr_assert_eq(info.live_tables, 0, "group %u: %u tables leaked", g, info.live_tables);
    }
    ASSERT_OK(h->f.ctx, kvrt_sched_destroy(h->f.sched));
    for (uint32_t g = 0; g < 2; g++) {
        ASSERT_OK(h->f.ctx, kvrt_cache_destroy(h->caches[g]));
        ASSERT_OK(h->f.ctx, kvrt_pool_verify(h->pools[g]));
    }
    kvrt_ctx_destroy(h->f.ctx);
}

Test(sched_shared, hybrid_schedulers_compute_a_shared_prompt_once_in_every_group)
{
    kvrt_sched_params_t sp = params(32, 32, 1);
    hybrid_t h = open_hybrid(TPB, 8, 64, &sp);
    fixture_t *f = &h.f;
    kvrt_seq_id_t a = add(f, 0), b[2] = {add(f, 1), add(f, 2)};
    const kvrt_batch_plan_t *plan = NULL;
    uint32_t waited = 0;
    kvrt_plan_seq_t eb = wait_for_entry(f, b[0], a, &plan, &waited);
    cr_assert_eq(waited, PREFIX / 32, "b waits while a computes the shared run: %u", waited);
    cr_assert_eq(eb.num_computed_tokens, PREFIX, "b hits the shared prompt in both groups");
    const kvrt_plan_seq_t *e = entry(plan, b[1]);
    cr_assert_not_null(e);
    cr_assert_eq(e->num_computed_tokens, PREFIX);
    cr_assert_eq(stats(f).shared_prefill_waits, 2 * waited);
    sched_fixture_commit(f, plan, 9);
    for (uint32_t g = 0; g < 2; g++) {
        kvrt_cache_stats_t cs;
        ASSERT_OK(f->ctx, kvrt_cache_stats(h.caches[g], &cs));
        /* One query per request in each cache, the waits' taken back:
         * the window group's cache counts its lookups as one. */
        cr_assert_eq(cs.queries, 3, "group %u: %llu queries", g,
                     (unsigned long long)cs.queries);
    }
    run_to_end(f, 3);
    close_hybrid(&h);
}

/* Group 0's blocks (16 tokens) smaller than group 1's (64): a hit is a
 * multiple of 64, and a's chunks of 48 end inside 64-token units, so a
 * notes the block where b's hit ends (its length rounded down to 64), not
 * the block at its length. */
Test(sched_shared, hybrid_schedulers_wait_when_group_0_has_the_smaller_blocks)
{
    for (uint32_t window = 0; window <= 128; window += 128) {
        kvrt_sched_params_t sp = params(32, 48, 1);
        hybrid_t h = open_hybrid(TPB, 64, window, &sp);
        fixture_t *f = &h.f;
        kvrt_seq_id_t a = add(f, 0);
        sched_fixture_commit(f, step(f), 9); /* a at 48 */
        kvrt_seq_id_t b = add(f, 1);
        const kvrt_batch_plan_t *plan = NULL;
        uint32_t waited = 0;
        kvrt_plan_seq_t eb = wait_for_entry(f, b, a, &plan, &waited);
        /* a commits 96 then 144: b waits for both chunks, then hits the
         * whole shared prefix. */
        cr_assert_eq(waited, 2, "window %u: b waited %u steps", window, waited);
        cr_assert_eq(eb.num_computed_tokens, PREFIX, "window %u", window);
        cr_assert_eq(eb.num_new_tokens, SUFFIX, "b computes only its own tokens");
        sched_fixture_commit(f, plan, 9);
        run_to_end(f, 2);
        close_hybrid(&h);
    }
}

/* Steps (committing) up to `steps` times or until nothing runs. Returns
 * the first plan entry of `watch` (its num_computed_tokens, UINT32_MAX if
 * never planned), the waits counted when `victim` was first preempted
 * (*waits_at_preemption), and adds `late` (when not NULL) before step 2. */
static uint32_t run_watching(fixture_t *f, kvrt_seq_id_t watch, kvrt_seq_id_t victim,
                             const kvrt_seq_params_t *late, uint64_t *waits_at_preemption)
{
    uint32_t first = UINT32_MAX;
    *waits_at_preemption = UINT64_MAX;
    for (int k = 0; k < 60; k++) {
        if (k == 1 && late) {
            kvrt_seq_id_t id;
            ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, late, &id));
        }
        const kvrt_batch_plan_t *plan = step(f);
        for (uint32_t i = 0; i < plan->num_preempted; i++)
            if (plan->preempted[i] == victim && *waits_at_preemption == UINT64_MAX)
                *waits_at_preemption = stats(f).shared_prefill_waits;
        const kvrt_plan_seq_t *e = entry(plan, watch);
        if (e && first == UINT32_MAX)
            first = e->num_computed_tokens;
        if (!plan->num_seqs && !stats(f).running && !stats(f).waiting)
            return first;
        if (plan->num_seqs)
            sched_fixture_commit(f, plan, 9);
    }
    cr_assert_fail("requests still running after 60 steps");
    return first;
}

/* b waits for a, which skips reading the cache; a is preempted by c (of
 * higher priority) and comes back at 0. b stops waiting: a's recomputed
 * blocks would stay a's own (their keys are cached), and b is matched to
 * what is cached of the blocks a computed before. */
Test(sched_shared, a_wait_ends_when_the_other_restarts_below_where_it_was)
{
    kvrt_sched_params_t sp = params(32, 32, 1);
    sp.field_mask |= KVRT_SCHED_PARAM_WATERMARK | KVRT_SCHED_PARAM_MAX_SEQ_TOKENS;
    sp.use_watermark = 0;
    sp.max_seq_tokens = 192;
    fixture_t f = sched_fixture_open(16, TPB, true, &sp);
    kvrt_seq_id_t a = add_flags(&f, PREFIX, 0, KVRT_SEQ_CACHE_SKIP_READ, NULL);
    kvrt_seq_id_t b = add(&f, 0); /* the same prompt */
    int32_t other[120];
    for (uint32_t i = 0; i < 120; i++)
        other[i] = (int32_t)(9000 + i);
    kvrt_seq_params_t pc = {.field_mask = KVRT_SEQ_PARAM_PRIORITY, .prompt = other,
                            .prompt_len = 120, .max_new_tokens = 2, .priority = 1};
    uint64_t waits_then;
    uint32_t hit = run_watching(&f, b, a, &pc, &waits_then);
    cr_assert_neq(waits_then, UINT64_MAX, "c's growth preempted a");
    cr_assert_gt(waits_then, 0, "b waited for a before");
    cr_assert_eq(stats(&f).shared_prefill_waits, waits_then,
                 "b waited for a's recomputation from 0");
    cr_assert_geq(hit, 64, "b hit %u tokens: what a committed was evicted meanwhile", hit);
    kvrt_seq_info_t ev[4];
    cr_assert_eq(sched_fixture_drain(&f, ev, 4), 3);
    sched_fixture_close(&f);
}

/* b waits for a, then its prefix arrives (kvrt_seq_await_kv) and it runs;
 * preempted later while a still prefills, b is matched again (its blocks
 * are cached), not put off for a run it stopped waiting for. */
Test(sched_shared, a_request_whose_kv_arrived_no_longer_waits_for_the_other)
{
    enum { LONG = 276 };
    kvrt_sched_params_t sp = params(32, 32, 1);
    sp.field_mask |= KVRT_SCHED_PARAM_WATERMARK | KVRT_SCHED_PARAM_MAX_SEQ_TOKENS;
    sp.use_watermark = 0;
    sp.max_seq_tokens = 320;
    fixture_t f = sched_fixture_open(24, TPB, true, &sp);
    int32_t prompt[LONG], other[200];
    for (uint32_t i = 0; i < LONG; i++)
        prompt[i] = (int32_t)(100 + 7 * i);
    for (uint32_t i = 0; i < 200; i++)
        other[i] = (int32_t)(9000 + i);
    kvrt_seq_params_t pa = {.field_mask = KVRT_SEQ_PARAM_PRIORITY, .prompt = prompt,
                            .prompt_len = LONG, .max_new_tokens = 2, .priority = 1};
    kvrt_seq_params_t pb = {.prompt = prompt, .prompt_len = LONG, .max_new_tokens = 2};
    kvrt_seq_params_t pc = pa;
    pc.prompt = other;
    pc.prompt_len = 200;
    kvrt_seq_id_t a, b;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &pa, &a));
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &pb, &b));
    sched_fixture_commit(&f, step(&f), 9); /* a's first chunk; b waits */
    cr_assert_eq(stats(&f).shared_prefill_waits, 1);
    kvrt_arrival_params_t ap = {.num_tokens = 160};
    kvrt_arrival_id_t arrival;
    uint32_t first, count;
    ASSERT_OK(f.ctx, kvrt_seq_await_kv(f.sched, b, &ap, &arrival, &first, &count));
    ASSERT_OK(f.ctx, kvrt_arrival_complete(f.sched, arrival, count));
    uint64_t waits_then;
    run_watching(&f, b, b, &pc, &waits_then);
    cr_assert_neq(waits_then, UINT64_MAX, "c's growth preempted b");
    cr_assert_eq(stats(&f).shared_prefill_waits, 1, "b waited again for a: %llu waits",
                 (unsigned long long)stats(&f).shared_prefill_waits);
    kvrt_seq_info_t ev[4];
    cr_assert_eq(sched_fixture_drain(&f, ev, 4), 3);
    sched_fixture_close(&f);
}

/* Hybrid, 16- and 64-token blocks: a and b share their first 144 tokens
 * (9 of group 0's blocks), but a hit is a multiple of 64, so b can use 128
 * of them. b waits while a computes those, not for a's chunk past them. */
Test(sched_shared, a_hybrid_request_waits_only_for_what_a_hit_can_use)
{
    kvrt_sched_params_t sp = params(16, 48, 1);
    hybrid_t h = open_hybrid(TPB, 64, 0, &sp);
    fixture_t *f = &h.f;
    int32_t pa[244], pb[164];
    for (uint32_t i = 0; i < 244; i++)
        pa[i] = i < 144 ? (int32_t)(100 + 7 * i) : (int32_t)(70000 + i);
    for (uint32_t i = 0; i < 164; i++)
        pb[i] = i < 144 ? (int32_t)(100 + 7 * i) : (int32_t)(80000 + i);
    kvrt_seq_params_t qa = {.prompt = pa, .prompt_len = 244, .max_new_tokens = 2};
    kvrt_seq_params_t qb = {.prompt = pb, .prompt_len = 164, .max_new_tokens = 2};
    kvrt_seq_id_t a, b;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &qa, &a));
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &qb, &b));
    const kvrt_batch_plan_t *plan;
    uint32_t waited;
    kvrt_plan_seq_t eb = wait_for_entry(f, b, a, &plan, &waited);
    /* a commits 48, 96, 144: by then b's 128 are there. */
    cr_assert_eq(waited, 3, "b waited %u steps", waited);
    cr_assert_eq(eb.num_computed_tokens, 128);
    sched_fixture_commit(f, plan, 9);
    run_to_end(f, 2);
    close_hybrid(&h);
}

/* Hybrid, 16- and 64-token blocks: b waits for a, which drops its last
 * hit (KVRT_SEQ_CACHE_DROP_LAST_HIT). c's growth preempts a, which comes
 * back a hit unit below what it had cached: the wait goes on, so the two
 * do not both compute the prefix again. */
Test(sched_shared, a_wait_goes_on_when_the_other_comes_back_only_its_dropped_hit_lower)
{
    kvrt_sched_params_t sp = params(16, 16, 1);
    sp.field_mask |= KVRT_SCHED_PARAM_WATERMARK | KVRT_SCHED_PARAM_MAX_SEQ_TOKENS;
    sp.use_watermark = 0;
    sp.max_seq_tokens = 256;
    /* Tight pools, so that c's prefill preempts a: 15 and 4 usable blocks. */
    hybrid_t h = open_hybrid_sized(TPB, 16, 64, 5, 0, &sp);
    fixture_t *f = &h.f;
    kvrt_seq_id_t a = add_flags(f, PREFIX, 0, KVRT_SEQ_CACHE_DROP_LAST_HIT, NULL);
    kvrt_seq_id_t b = add(f, 0);
    int32_t other[120];
    for (uint32_t i = 0; i < 120; i++)
        other[i] = (int32_t)(9000 + i);
    kvrt_seq_params_t pc = {.field_mask = KVRT_SEQ_PARAM_PRIORITY, .prompt = other,
                            .prompt_len = 120, .max_new_tokens = 2, .priority = 1};
    uint64_t shared = 0; /* tokens of the shared prefix a and b compute */
    uint32_t a_preempted = 0;
    for (int k = 0; k < 200; k++) {
        if (k == 5) {
            kvrt_seq_id_t id;
            ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &pc, &id));
        }
        const kvrt_batch_plan_t *plan = step(f);
        for (uint32_t i = 0; i < plan->num_preempted; i++)
            a_preempted += plan->preempted[i] == a;
        const kvrt_plan_seq_t *both[2] = {entry(plan, a), entry(plan, b)};
        for (uint32_t i = 0; i < 2; i++) {
            const kvrt_plan_seq_t *e = both[i];
            if (e && e->kind == KVRT_PLAN_PREFILL && e->num_computed_tokens < PREFIX) {
                uint32_t end = e->num_computed_tokens + e->num_new_tokens;
                shared += (end < PREFIX ? end : PREFIX) - e->num_computed_tokens;
            }
        }
        if (!plan->num_seqs && !stats(f).running && !stats(f).waiting)
            break;
        if (plan->num_seqs)
            sched_fixture_commit(f, plan, 9);
    }
    cr_assert_gt(a_preempted, 0, "c's prefill preempted a");
    /* Ending the wait there: 368 tokens of the prefix computed, 608 in all. */
    cr_assert_leq(shared, 304, "a and b computed %llu tokens of the shared prefix",
                  (unsigned long long)shared);
    cr_assert_leq(stats(f).prefill_tokens, 480);
    kvrt_seq_info_t ev[4];
    cr_assert_eq(sched_fixture_drain(f, ev, 4), 3);
    close_hybrid(&h);
}

/* A request noted in a step and then preempted in it (a request of higher
 * priority planned after it needed its blocks) is not waited for: the
 * request sharing its prompt is matched and, finding no room, waits as
 * the queue's head, not for it. */
Test(sched_shared, nobody_waits_for_a_request_preempted_in_the_same_step)
{
    kvrt_sched_params_t sp = params(32, 32, 1);
    sp.max_batch_tokens = 64;
    sp.field_mask |= KVRT_SCHED_PARAM_WATERMARK;
    sp.use_watermark = 0;
    fixture_t f = sched_fixture_open(11, TPB, true, &sp); /* 10 usable blocks */
    kvrt_seq_id_t a1 = add(&f, 0);
    int32_t other[PREFIX + SUFFIX];
    make_prompt(other, PREFIX, 7);
    other[0] = 1; /* shares nothing with the others */
    kvrt_seq_params_t p2 = {.field_mask = KVRT_SEQ_PARAM_PRIORITY, .prompt = other,
                            .prompt_len = PREFIX + SUFFIX, .max_new_tokens = 2, .priority = 5};
    kvrt_seq_id_t a2;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p2, &a2));
    sched_fixture_commit(&f, step(&f), 9); /* a1 and a2: 2 blocks each */
    sched_fixture_commit(&f, step(&f), 9); /* 4 each */
    int32_t prompt[PREFIX + SUFFIX];
    make_prompt(prompt, PREFIX, 1);
    kvrt_seq_params_t pb = {.field_mask = KVRT_SEQ_PARAM_PRIORITY, .prompt = prompt,
                            .prompt_len = PREFIX + SUFFIX, .max_new_tokens = 2, .priority = 3};
    kvrt_seq_id_t b;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &pb, &b));
    const kvrt_batch_plan_t *plan = step(&f);
    bool a1_preempted = false;
    for (uint32_t i = 0; i < plan->num_preempted; i++)
        a1_preempted |= plan->preempted[i] == a1;
    cr_assert(a1_preempted, "a2's chunk took a1's blocks");
    cr_assert_null(entry(plan, b));
    cr_assert_eq(stats(&f).shared_prefill_waits, 0, "b did not wait for a preempted request");
    sched_fixture_commit(&f, plan, 9);
    run_to_end(&f, 3);
    sched_fixture_close(&f);
}

/* Two requests with the same tokens and different images behind them
 * (blocks 4 and 5): the one that comes second waits for the blocks before
 * the image, in runs, and computes from the image on. */
Test(sched_shared, a_request_waits_only_for_the_blocks_before_a_different_image)
{
    kvrt_sched_params_t sp = params(32, 32, 1);
    fixture_t f = open_with(&sp);
    const kvrt_mm_item_t image_a = {.content_hash = {1, 2}, .offset = 64, .length = 32};
    const kvrt_mm_item_t image_b = {.content_hash = {3, 4}, .offset = 64, .length = 32};
    const kvrt_hash_keys_t ka = {.field_mask = KVRT_HASH_KEY_MM, .num_mm_items = 1,
                                 .mm_items = &image_a};
    const kvrt_hash_keys_t kb = {.field_mask = KVRT_HASH_KEY_MM, .num_mm_items = 1,
                                 .mm_items = &image_b};
    kvrt_seq_id_t a = add_flags(&f, PREFIX, 0, 0, &ka), b = add_flags(&f, PREFIX, 0, 0, &kb);
    const kvrt_batch_plan_t *plan;
    uint32_t waited;
    kvrt_plan_seq_t eb = wait_for_entry(&f, b, a, &plan, &waited);
    /* Blocks 0-1, then 2-3, each waited for in the step a computed them. */
    cr_assert_eq(waited, 2);
    cr_assert_eq(stats(&f).shared_prefill_waits, 2);
    cr_assert_eq(eb.num_computed_tokens, 64);
    sched_fixture_commit(&f, plan, 9);
    run_to_end(&f, 2);
    sched_fixture_close(&f);
}
