/*
 * test_sched_controls.c - what a request asks of the scheduler beyond its
 * prompt: prefix-cache control (skip read, skip write, drop the last hit
 * for EAGLE/MTP), stop sets (shared or a request's own) and min_tokens
 * before a stop token counts, and multimodal items that a prefill chunk
 * never cuts.
 */
#include <string.h>

#include "sched_fixture.h"

#define TPB 4u
/* For the preempted item below: 13 blocks besides the null block. A
 * holds 6 once decoding, the three decoders 1 each, then one more every 4
 * tokens: their third blocks find none free, and A (of lower priority)
 * is preempted. */
#define ITEM_POOL_BLOCKS 14u

typedef sched_fixture_t fixture_t;

static fixture_t open_fixture(bool cache, const kvrt_sched_params_t *sp)
{
    return sched_fixture_open(256, TPB, cache, sp);
}

#define close_fixture sched_fixture_close
#define commit_token sched_fixture_commit

static int32_t prompt_33[33];

static kvrt_seq_id_t add_flags(fixture_t *f, uint32_t len, uint32_t cache_flags)
{
    for (int i = 0; i < 33; i++)
        prompt_33[i] = 7 * i + 3;
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_CACHE_FLAGS, .prompt = prompt_33,
                           .prompt_len = len, .max_new_tokens = 1, .cache_flags = cache_flags};
    kvrt_seq_id_t id;
    ASSERT_OK(f->ctx, kvrt_seq_add(f->sched, &p, &id));
    return id;
}

/* Admits the next request alone, runs it to its end; its first entry. */
static kvrt_plan_seq_t run_one(fixture_t *f)
{
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, 0, &plan));
    cr_assert_eq(plan->num_seqs, 1);
    kvrt_plan_seq_t e = plan->seqs[0];
    commit_token(f, plan, 1);
    for (int k = 0; k < 100; k++) {
        ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, 0, &plan));
        if (!plan->num_seqs)
            break;
        commit_token(f, plan, 1);
    }
    kvrt_seq_info_t ev[4];
    uint32_t n;
    ASSERT_OK(f->ctx, kvrt_sched_drain_ended(f->sched, ev, 4, &n));
    cr_assert_eq(n, 1);
    return e;
}

static uint64_t cached_blocks(const fixture_t *f)
{
    kvrt_cache_stats_t st;
    ASSERT_OK(f->ctx, kvrt_cache_stats(f->cache, &st));
    return st.cached_blocks;
}

Test(sched_controls, skip_read_computes_every_token_despite_a_cached_prefix)
{
    fixture_t f = open_fixture(true, NULL);
    add_flags(&f, 33, 0);
    run_one(&f);
    add_flags(&f, 33, KVRT_SEQ_CACHE_SKIP_READ);
    kvrt_plan_seq_t e = run_one(&f);
    cr_assert_eq(e.num_computed_tokens, 0, "nothing taken from the cache");
    cr_assert_eq(e.num_new_tokens, 33);
    add_flags(&f, 33, 0);
    cr_assert_eq(run_one(&f).num_computed_tokens, 32, "others still hit");
    close_fixture(&f);
}

Test(sched_controls, skip_write_leaves_no_block_in_the_cache)
{
    fixture_t f = open_fixture(true, NULL);
    add_flags(&f, 33, KVRT_SEQ_CACHE_SKIP_WRITE);
    run_one(&f);
    cr_assert_eq(cached_blocks(&f), 0, "nothing of it was cached");
    add_flags(&f, 33, 0);
    cr_assert_eq(run_one(&f).num_computed_tokens, 0);
    cr_assert_eq(cached_blocks(&f), 8);
    add_flags(&f, 33, KVRT_SEQ_CACHE_SKIP_WRITE);
    cr_assert_eq(run_one(&f).num_computed_tokens, 32, "it may still read");
    close_fixture(&f);
}

Test(sched_controls, drop_last_hit_recomputes_the_last_matched_block)
{
    fixture_t f = open_fixture(true, NULL);
    add_flags(&f, 33, 0);
    run_one(&f);
    add_flags(&f, 33, KVRT_SEQ_CACHE_DROP_LAST_HIT);
    kvrt_plan_seq_t e = run_one(&f);
    cr_assert_eq(e.num_computed_tokens, 28, "7 of the 8 hit blocks kept");
    cr_assert_eq(e.num_new_tokens, 5);
    kvrt_sched_stats_t st;
    ASSERT_OK(f.ctx, kvrt_sched_stats(f.sched, &st));
    cr_assert_eq(st.prefix_hit_tokens, 28);
    close_fixture(&f);
}

Test(sched_controls, bad_cache_flags_and_min_tokens_are_refused)
{
    fixture_t f = open_fixture(false, NULL);
    int32_t prompt[2] = {1, 2};
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_CACHE_FLAGS, .prompt = prompt,
                           .prompt_len = 2, .max_new_tokens = 4, .cache_flags = 1u << 9};
    kvrt_seq_id_t id = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_add(f.sched, &p, &id));
    p = (kvrt_seq_params_t){.field_mask = KVRT_SEQ_PARAM_MIN_TOKENS, .prompt = prompt,
                            .prompt_len = 2, .max_new_tokens = 4, .min_tokens = 5};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_add(f.sched, &p, &id));
    p = (kvrt_seq_params_t){.field_mask = KVRT_SEQ_PARAM_KEYS, .prompt = prompt,
                            .prompt_len = 2, .max_new_tokens = 4, .keys = NULL};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_add(f.sched, &p, &id));
    cr_assert_eq(id, 0);
    close_fixture(&f);
}

Test(sched_controls, stop_tokens_are_ignored_until_min_tokens_are_produced)
{
    fixture_t f = open_fixture(false, NULL);
    int32_t prompt[3] = {1, 2, 3}, stop = 42;
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_STOP | KVRT_SEQ_PARAM_MIN_TOKENS,
                           .prompt = prompt, .prompt_len = 3, .max_new_tokens = 10,
                           .stop_tokens = &stop, .num_stop_tokens = 1, .min_tokens = 3};
    kvrt_seq_id_t id;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
    const kvrt_batch_plan_t *plan;
    int32_t outs[] = {42, 5, 42, 42};
    for (int k = 0; k < 4; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, (uint64_t)k, &plan));
        cr_assert_eq(plan->num_seqs, 1, "step %d: ended too early", k);
        commit_token(&f, plan, outs[k]);
    }
    kvrt_seq_info_t ev[2];
    uint32_t n;
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 2, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ev[0].end_reason, KVRT_END_STOP);
    cr_assert_eq(ev[0].output_tokens, 4, "the stop at output 4 (> min_tokens 3) ends it");
    cr_assert_eq(ev[0].output[0], 42, "an early stop token is kept as ordinary output");
    close_fixture(&f);
}

/* Steps and commits until a plan is empty (at most max steps), every
 * sampled token at step k being base + k % period; returns the steps that
 * planned something. */
static int steps_until_idle(fixture_t *f, int max, int32_t base, int period)
{
    const kvrt_batch_plan_t *plan;
    for (int k = 0; k < max; k++) {
        ASSERT_OK(f->ctx, kvrt_sched_step(f->sched, (uint64_t)k, &plan));
        if (!plan->num_seqs)
            return k;
        commit_token(f, plan, base + k % period);
    }
    return max;
}

Test(sched_controls, a_min_tokens_past_the_length_limit_never_lets_a_stop_end_a_request)
{
    /* prompt + 1 + min_tokens overflows 32 bits: the threshold saturates,
     * and the request runs to its length limit (max_seq_tokens 16). */
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_SEQ_TOKENS,
                              .max_seq_tokens = 16};
    fixture_t f = open_fixture(false, &sp);
    int32_t prompt[3] = {1, 2, 3}, stops[2] = {42, 43};
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_STOP | KVRT_SEQ_PARAM_MIN_TOKENS,
                           .prompt = prompt, .prompt_len = 3, .max_new_tokens = UINT32_MAX,
                           .stop_tokens = stops, .num_stop_tokens = 2,
                           .min_tokens = UINT32_MAX - 1};
    kvrt_seq_id_t id;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
    cr_assert_eq(steps_until_idle(&f, 20, 42, 2), 13,
                 "16 tokens: 13 outputs, then nothing to plan");
    kvrt_seq_info_t ev[2];
    cr_assert_eq(sched_fixture_drain(&f, ev, 2), 1);
    cr_assert_eq(ev[0].end_reason, KVRT_END_LENGTH);
    cr_assert_eq(ev[0].output_tokens, 13);
    for (uint32_t j = 0; j < 13; j++)
        cr_assert_eq(ev[0].output[j], 42 + (int32_t)(j & 1), "output %u", j);
    close_fixture(&f);
}

/* The stop set of request i in the next test, its length and min_tokens. */
static uint32_t stop_set_of(int i, int32_t stops[2], uint32_t *min_tokens)
{
    *min_tokens = i == 2 ? 2 : 0;
    stops[0] = i < 4 ? 100 : 97 + i;
    stops[1] = 103;
    return i == 2 || i == 3 ? 2 : 1;
}

Test(sched_controls, requests_sharing_stop_sets_or_past_sixteen_sets_each_stop_on_their_own)
{
    /* Requests 0 and 1 share {100}; 2 has {100, 103} with min_tokens 2
     * (its own area: min_tokens); 3 shares nothing yet {100, 103} makes a
     * second set; 4..22 have {101}..{119}, of which the first 14 fill the
     * 16 shared sets and the last 5 keep their own. Every step samples
     * 100 + step for everyone. */
    enum { ALL = 23 };
    kvrt_sched_params_t sp = sched_fixture_params_for(ALL, TPB);
    fixture_t f = open_fixture(false, &sp);
    int32_t prompt[2] = {1, 2};
    kvrt_seq_id_t ids[ALL];
    for (int i = 0; i < ALL; i++) {
        int32_t stops[2];
        uint32_t min_tokens;
        uint32_t num = stop_set_of(i, stops, &min_tokens);
        kvrt_seq_params_t p = {
            .field_mask = KVRT_SEQ_PARAM_STOP | KVRT_SEQ_PARAM_MIN_TOKENS, .prompt = prompt,
            .prompt_len = 2, .max_new_tokens = 40, .stop_tokens = stops,
            .num_stop_tokens = num, .min_tokens = min_tokens};
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &ids[i]));
    }
    cr_assert_eq(steps_until_idle(&f, 50, 100, 50), 20,
                 "the last request stops at its 20th output (119)");
    kvrt_seq_info_t ev[ALL];
    cr_assert_eq(sched_fixture_drain(&f, ev, ALL), ALL);
    for (int e = 0; e < ALL; e++) {
        int i = 0;
        while (ids[i] != ev[e].id)
            i++;
        /* Its first counted stop: 100 + outputs - 1. */
        uint32_t outputs = i == 2 ? 4 : i < 4 ? 1 : (uint32_t)i - 2;
        cr_assert_eq(ev[e].end_reason, KVRT_END_STOP, "request %d", i);
        cr_assert_eq(ev[e].output_tokens, outputs, "request %d", i);
        cr_assert_eq(ev[e].output[outputs - 1], 100 + (int32_t)outputs - 1, "request %d", i);
    }
    close_fixture(&f);
}

/* Prefill chunks of a request of prompt_len tokens (at most 80) with
 * items[2] under chunk limit `chunk` and budget `budget`; writes each
 * chunk's length. */
static uint32_t mm_chunks(uint32_t budget, uint32_t chunk, uint32_t prompt_len,
                          const kvrt_mm_item_t *items, uint32_t *chunks, uint32_t max_chunks)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS |
                                            KVRT_SCHED_PARAM_CHUNK,
                              .max_batch_tokens = budget, .prefill_chunk_tokens = chunk};
    fixture_t f = open_fixture(false, &sp);
    int32_t prompt[80];
    for (int i = 0; i < 80; i++)
        prompt[i] = i;
    kvrt_hash_keys_t keys = {.field_mask = KVRT_HASH_KEY_MM, .num_mm_items = 2,
                             .mm_items = items};
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_KEYS, .prompt = prompt,
                           .prompt_len = prompt_len, .max_new_tokens = 1, .keys = &keys};
    kvrt_seq_id_t id;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
    uint32_t n = 0;
    const kvrt_batch_plan_t *plan;
    for (int k = 0; k < 20; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, (uint64_t)k, &plan));
        if (!plan->num_seqs)
            break;
        if (plan->seqs[0].kind == KVRT_PLAN_PREFILL && n < max_chunks)
            chunks[n++] = plan->seqs[0].num_new_tokens;
        commit_token(&f, plan, 1);
    }
    kvrt_seq_info_t ev[2];
    uint32_t events;
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 2, &events));
    cr_assert_eq(events, 1);
    close_fixture(&f);
    return n;
}

Test(sched_controls, a_prefill_chunk_never_ends_inside_a_multimodal_item)
{
    const kvrt_mm_item_t items[2] = {{.content_hash = {1, 2}, .offset = 10, .length = 20},
                                     {.content_hash = {3, 4}, .offset = 40, .length = 4}};
    uint32_t chunks[8];
    uint32_t n = mm_chunks(64, 16, 50, items, chunks, 8);
    /* [0,10) stops before the first item (16 would end inside it); [10,30)
     * is that item whole, past the chunk limit of 16; [30,46) holds the
     * second item whole; [46,50) is the rest. */
    uint32_t want[] = {10, 20, 16, 4};
    cr_assert_eq(n, 4, "%u chunks", n);
    cr_assert_arr_eq(chunks, want, sizeof(want));
}

/* A request of len tokens of `prompt`, one output, with one multimodal
 * item [offset, offset + length); params point into the struct. */
typedef struct item_request {
    kvrt_mm_item_t item;
    kvrt_hash_keys_t keys;
    kvrt_seq_params_t params;
} item_request_t;

static void item_request(item_request_t *r, const int32_t *prompt, uint32_t len, uint32_t offset,
                         uint32_t length)
{
    r->item = (kvrt_mm_item_t){.offset = offset, .length = length};
    r->keys = (kvrt_hash_keys_t){.field_mask = KVRT_HASH_KEY_MM, .num_mm_items = 1,
                                 .mm_items = &r->item};
    r->params = (kvrt_seq_params_t){.field_mask = KVRT_SEQ_PARAM_KEYS, .prompt = prompt,
                                    .prompt_len = len, .max_new_tokens = 1, .keys = &r->keys};
}

Test(sched_controls, an_item_beyond_the_budget_left_waits_and_one_beyond_any_step_is_refused)
{
    /* Budget 20: B decodes one token a step, so the 20-token item of A
     * never fits beside it: the step after A first waits for it, the item
     * is held the whole budget and runs alone, B waiting that step. */
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS,
                              .max_batch_tokens = 20};
    fixture_t f = open_fixture(false, &sp);
    int32_t prompt[50] = {0};
    kvrt_seq_params_t pb = {.prompt = prompt, .prompt_len = 4, .max_new_tokens = 6};
    kvrt_seq_id_t a, b;
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &pb, &b));
    item_request_t ra;
    item_request(&ra, prompt, 50, 10, 20);
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &ra.params, &a));
    bool item_ran = false;
    const kvrt_batch_plan_t *plan;
    for (int k = 0; k < 40; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, (uint64_t)k, &plan));
        if (!plan->num_seqs)
            break;
        for (uint32_t i = 0; i < plan->num_seqs; i++) {
            const kvrt_plan_seq_t *e = &plan->seqs[i];
            if (e->id != a)
                continue;
            uint32_t from = e->num_computed_tokens, to = from + e->num_new_tokens;
            cr_assert(to <= 10 || to >= 30, "a chunk ends inside the item at %u", to);
            if (from <= 10 && to >= 30) {
                item_ran = true;
                cr_assert_eq(plan->num_seqs, 1, "the item runs alone");
                kvrt_seq_info_t info;
                ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, b, &info));
                cr_assert_eq(info.state, KVRT_SEQ_RUNNING, "B, still decoding, waited");
            }
        }
        commit_token(&f, plan, 1);
    }
    cr_assert(item_ran);
    kvrt_seq_info_t ev[2];
    uint32_t n;
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 2, &n));
    cr_assert_eq(n, 2);

    sp.max_batch_tokens = 19;
    kvrt_sched_t *small;
    ASSERT_OK(f.ctx, kvrt_sched_create(f.ctx, f.pool, NULL, &sp, &small));
    kvrt_seq_id_t id = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_add(small, &ra.params, &id));
    kvrt_sched_destroy(small);
    close_fixture(&f);
}

Test(sched_controls, an_item_that_never_fits_beside_the_decodes_gets_the_next_step)
{
    /* Budget 24: 12 long requests decode every step and leave 12 tokens,
     * never enough for A's 16-token item. The step after A first waits,
     * the item is held its 16 tokens: the first 8 decodes run beside it,
     * the other 4 wait that step and run in the next. */
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS,
                              .max_batch_tokens = 24};
    fixture_t f = open_fixture(false, &sp);
    int32_t prompt[24] = {0};
    kvrt_seq_params_t pd = {.prompt = prompt, .prompt_len = 2, .max_new_tokens = 60};
    kvrt_seq_id_t decoders[12], a;
    for (int i = 0; i < 12; i++)
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &pd, &decoders[i]));
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 0, &plan));
    cr_assert_eq(plan->num_seqs, 12, "the decoders' prefills");
    commit_token(&f, plan, 1);
    item_request_t ra;
    item_request(&ra, prompt, 24, 4, 16);
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &ra.params, &a));
    /* Step 2: A's first chunk [0, 4) ends before the item. Step 3: the
     * item does not fit in the 12 tokens left. Step 4: it is held. */
    uint32_t item_step = 0, skipped = 0;
    for (uint32_t k = 2; k <= 6 && !item_step; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, k, &plan));
        for (uint32_t i = 0; i < plan->num_seqs; i++) {
            const kvrt_plan_seq_t *e = &plan->seqs[i];
            if (e->id == a && e->num_computed_tokens <= 4 &&
                e->num_computed_tokens + e->num_new_tokens >= 20) {
                item_step = k;
                skipped = 13 - plan->num_seqs;
            }
        }
        commit_token(&f, plan, 1);
    }
    cr_assert_eq(item_step, 4, "the item ran in step %u", item_step);
    cr_assert_eq(skipped, 4, "%u decodes waited beside the item", skipped);
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 7, &plan));
    cr_assert_eq(plan->num_seqs, 13, "every decode, and A's last token");
    commit_token(&f, plan, 1);
    for (int i = 0; i < 12; i++)
        ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, decoders[i]));
    for (int k = 0; k < 10; k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, 8, &plan));
        if (!plan->num_seqs)
            break;
        commit_token(&f, plan, 1);
    }
    kvrt_seq_info_t ev[16];
    uint32_t n;
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 16, &n));
    cr_assert_eq(n, 13);
    close_fixture(&f);
}

Test(sched_controls, an_item_past_the_prompt_is_refused)
{
    fixture_t f = open_fixture(false, NULL);
    int32_t prompt[30] = {0};
    kvrt_mm_item_t items[2] = {{.offset = 4, .length = 8}, {.offset = 21, .length = 10}};
    kvrt_hash_keys_t keys = {.field_mask = KVRT_HASH_KEY_MM, .num_mm_items = 2,
                             .mm_items = items};
    kvrt_seq_params_t p = {.field_mask = KVRT_SEQ_PARAM_KEYS, .prompt = prompt,
                           .prompt_len = 30, .max_new_tokens = 4, .keys = &keys};
    kvrt_seq_id_t id = 0;
    /* [21, 31) ends one token past a prompt of 30: no chunk could hold it
     * whole before the output starts. */
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_add(f.sched, &p, &id));
    cr_assert_eq(id, 0);
    cr_assert_str_not_empty(kvrt_ctx_last_error(f.ctx));
    items[1].offset = 40;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_seq_add(f.sched, &p, &id));
    items[1] = (kvrt_mm_item_t){.offset = 20, .length = 10}; /* ends at the prompt's end */
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &p, &id));
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, id));
    kvrt_seq_info_t ev[1];
    uint32_t n;
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 1, &n));
    close_fixture(&f);
}

Test(sched_controls, a_chunk_that_covers_one_item_does_not_end_inside_the_next)
{
    const kvrt_mm_item_t items[2] = {{.offset = 1, .length = 4}, {.offset = 22, .length = 16}};
    uint32_t chunks[8];
    uint32_t n = mm_chunks(8192, 32, 65, items, chunks, 8);
    /* 32 tokens from 0 would cover [1, 5) and end inside [22, 38): the
     * chunk stops at 22; the next starts at that item and takes 32. */
    uint32_t want[] = {22, 32, 11};
    cr_assert_eq(n, 3, "%u chunks", n);
    cr_assert_arr_eq(chunks, want, sizeof(want));
}

/* A request preempted while decoding recomputes its prompt from its first
 * token; with its item there, its first chunk is the item whole. Three
 * decoders leave 15 of the 18 tokens a step, never the item's 16, so the
 * preempted request must have the item held for it the step after it
 * first waits, as a request queued for the first time would. */
Test(sched_controls, a_preempted_request_waiting_for_its_item_gets_the_next_step)
{
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS,
                              .max_batch_tokens = 18};
    fixture_t f = sched_fixture_open(ITEM_POOL_BLOCKS, TPB, false, &sp);
    int32_t prompt[20] = {0};
    item_request_t ra;
    item_request(&ra, prompt, 20, 0, 16);
    ra.params.field_mask |= KVRT_SEQ_PARAM_PRIORITY;
    ra.params.priority = -1; /* the victim when blocks run out */
    ra.params.max_new_tokens = 16;
    kvrt_seq_id_t a, decoders[3];
    ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &ra.params, &a));
    const kvrt_batch_plan_t *plan;
    uint32_t k = 1;
    for (; k <= 2; k++) { /* A's prompt: 18 tokens, then 2 */
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, k, &plan));
        commit_token(&f, plan, 1);
    }
    kvrt_seq_params_t pd = {.prompt = prompt, .prompt_len = 2, .max_new_tokens = 26};
    for (int i = 0; i < 3; i++)
        ASSERT_OK(f.ctx, kvrt_seq_add(f.sched, &pd, &decoders[i]));
    /* Steps until A is preempted (the decoders' blocks run out), then
     * until its item is planned. */
    uint32_t preempted_at = 0, waited_at = 0, item_at = 0;
    for (; k <= 40 && !item_at && (!preempted_at || k <= preempted_at + 4); k++) {
        ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, k, &plan));
        bool planned = false;
        for (uint32_t i = 0; i < plan->num_seqs; i++)
            if (plan->seqs[i].id == a) {
                planned = true;
                if (preempted_at && plan->seqs[i].num_computed_tokens == 0 &&
                    plan->seqs[i].num_new_tokens >= 16)
                    item_at = k;
            }
        kvrt_seq_info_t info;
        ASSERT_OK(f.ctx, kvrt_seq_info(f.sched, a, &info));
        if (!preempted_at && info.state == KVRT_SEQ_PREEMPTED)
            preempted_at = k;
        /* Not readmitted in the step that preempted it: it first waits
         * for its item in the next. */
        if (preempted_at && k > preempted_at && !planned && !waited_at)
            waited_at = k;
        if (k > 3) /* the decoders' prompts ran in step 3 */
            cr_assert_geq(plan->num_decode_seqs, item_at == k ? 2u : 3u,
                          "the decoders run on: step %u planned %u decodes", k,
                          plan->num_decode_seqs);
        commit_token(&f, plan, 1);
    }
    cr_assert(preempted_at, "A was never preempted");
    cr_assert(waited_at, "A's item never waited");
    cr_assert_eq(item_at, waited_at + 1, "preempted at step %u, waited at %u, item at %u",
                 preempted_at, waited_at, item_at);
    ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, a));
    for (int i = 0; i < 3; i++)
        ASSERT_OK(f.ctx, kvrt_seq_abort(f.sched, decoders[i]));
    ASSERT_OK(f.ctx, kvrt_sched_step(f.sched, k, &plan));
    cr_assert_eq(plan->num_seqs, 0);
    kvrt_seq_info_t ev[8];
    uint32_t n;
    ASSERT_OK(f.ctx, kvrt_sched_drain_ended(f.sched, ev, 8, &n));
    cr_assert_eq(n, 4);
    close_fixture(&f);
}
