/*
 * test_sched_random.c - a long randomized run of the scheduler with a
 * prefix cache, speculation (engine drafts and the n-gram proposer), a pool
 * small enough to force preemption, random aborts, stop tokens, priorities
 * and deadlines, and prefixes arriving asynchronously (waiting for KV: late,
 * partial, failed, aborted mid-arrival). The "model" is deterministic
 * (next = f(previous token)) and the engine verifies drafts against it, so
 * every finished request's output can be checked token by token.
 *
 * After every step: the budget and max_seqs hold, every planned token's
 * slot lies in its sequence's row at its position, no slot is written twice,
 * rows are padded with the null block (past the blocks of their tokens and
 * those rolled-back drafts left), no token is written into a block an
 * outstanding arrival holds, the pool and cache verify. At the
 * end: every request ended exactly once, preempted ones finished, no block
 * or table is left.
 *
 * The run is one seed's; KVRT_SCHED_SOAK_SEED (decimal or 0x hex) runs
 * another, which the log line names so that a failure can be replayed.
 */
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"

#define VOCAB 61
#define MAX_REQ 4096
#define BUDGET 64u
#define MAX_SEQS 12u
#define TPB 4u
#define POOL_BLOCKS 90u
#define MAX_DRAFT 3u

static int32_t model(int32_t prev) { return (prev * 17 + 5) % VOCAB; }

typedef struct tracked {
    kvrt_seq_id_t id;
    int state; /* 0 unused, 1 live, 2 ended */
    bool aborted;
    int32_t stop;
    int32_t priority;
    uint32_t prompt_len;
    uint32_t max_new;
    int32_t prompt[96];
} tracked_t;

/* An arrival the test "transfer engine" has in flight. */
typedef struct inflight {
    kvrt_arrival_id_t id;
    uint32_t num_blocks;
    uint32_t due_step;
    int32_t blocks[32];
} inflight_t;

#define MAX_INFLIGHT 8

typedef struct world {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;
    kvrt_sched_t *sched;
    uint64_t rng;
    tracked_t req[MAX_REQ];
    uint32_t num_req;
    int32_t system[3][40];
    uint64_t finished_checked;
    inflight_t inflight[MAX_INFLIGHT];
    uint32_t num_inflight;
    uint32_t step;
} world_t;

/* Requests carry their index as user tag. */
static tracked_t *find(world_t *w, uint64_t tag, kvrt_seq_id_t id)
{
    cr_assert_lt(tag, w->num_req, "unknown user tag %llu", (unsigned long long)tag);
    cr_assert_eq(w->req[tag].id, id, "id and user tag disagree");
    return &w->req[tag];
}

static void add_random(world_t *w)
{
    if (w->num_req == MAX_REQ)
        return;
    tracked_t *t = &w->req[w->num_req];
    uint32_t sys = test_rand_below(&w->rng, 4);
    uint32_t n = 0;
    if (sys < 3) {
        uint32_t len = 8 + test_rand_below(&w->rng, 33);
        memcpy(t->prompt, w->system[sys], len * sizeof(int32_t));
        n = len;
    }
    uint32_t tail = 1 + test_rand_below(&w->rng, 40);
    for (uint32_t i = 0; i < tail; i++)
        t->prompt[n++] = (int32_t)test_rand_below(&w->rng, VOCAB);
    t->prompt_len = n;
    t->max_new = 1 + test_rand_below(&w->rng, 40);
    t->stop = test_rand_below(&w->rng, 3) == 0 ? (int32_t)test_rand_below(&w->rng, VOCAB) : -1;
    kvrt_seq_params_t p = {
        .field_mask = KVRT_SEQ_PARAM_PRIORITY | KVRT_SEQ_PARAM_USER_TAG |
                      (t->stop >= 0 ? KVRT_SEQ_PARAM_STOP : 0) |
                      (test_rand_below(&w->rng, 2) ? KVRT_SEQ_PARAM_DEADLINE : 0),
        .prompt = t->prompt,
        .prompt_len = n,
        .max_new_tokens = t->max_new,
        .stop_tokens = &t->stop,
        .num_stop_tokens = 1,
        .priority = (int32_t)test_rand_below(&w->rng, 3),
        .deadline_ns = test_rand_below(&w->rng, 100000),
        .user_tag = w->num_req,
    };
    ASSERT_OK(w->ctx, kvrt_seq_add(w->sched, &p, &t->id));
    t->priority = p.priority;
    t->state = 1;
    w->num_req++;
}

static void check_plan(world_t *w, const kvrt_batch_plan_t *plan)
{
    cr_assert_leq(plan->num_tokens, BUDGET, "budget exceeded: %u", plan->num_tokens);
    cr_assert_leq(plan->num_seqs, MAX_SEQS);
    cr_assert_eq(plan->query_start_loc[0], 0);
    static int64_t seen[BUDGET];
    uint32_t num_seen = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *e = &plan->seqs[i];
        cr_assert_eq((uint32_t)(plan->query_start_loc[i + 1] - plan->query_start_loc[i]),
                     e->num_new_tokens);
        cr_assert_eq((uint32_t)plan->seq_lens[i], e->num_computed_tokens + e->num_new_tokens);
        cr_assert_eq((uint32_t)plan->row_index[i], e->row);
        tracked_t *t = find(w, e->user_tag, e->id);
        cr_assert_not_null(t, "plan names an unknown request");
        cr_assert(e->kind != KVRT_PLAN_SPEC || e->num_drafts + 1 == e->num_new_tokens);
        const int32_t *row = plan->block_rows + (size_t)e->row * plan->row_stride;
        uint32_t blocks = (e->num_computed_tokens + e->num_new_tokens + TPB - 1) / TPB;
        for (uint32_t b = 0; b < blocks; b++)
            cr_assert_gt(row[b], 0, "row %u entry %u is the null block", e->row, b);
        /* Past them, the blocks rolled-back drafts left (at most those of
         * MAX_DRAFT positions), then padding. */
        uint32_t kept = (e->num_computed_tokens + MAX_DRAFT + TPB - 1) / TPB;
        uint32_t pad = blocks;
        while (pad < kept && row[pad] > 0)
            pad++;
        for (; pad < plan->row_stride; pad++)
            cr_assert_eq(row[pad], 0, "row %u not padded at %u", e->row, pad);
        for (uint32_t k = 0; k < e->num_new_tokens; k++) {
            uint32_t tok = (uint32_t)plan->query_start_loc[i] + k;
            uint32_t pos = e->num_computed_tokens + k;
            cr_assert_eq((uint32_t)plan->positions[tok], pos);
            int64_t slot = plan->slot_mapping[tok];
            cr_assert_eq(slot, (int64_t)row[pos / TPB] * TPB + pos % TPB);
            for (uint32_t a = 0; a < w->num_inflight; a++)
                for (uint32_t b = 0; b < w->inflight[a].num_blocks; b++)
                    cr_assert_neq(slot / TPB, w->inflight[a].blocks[b],
                                  "a token written into a block an arrival holds");
            for (uint32_t j = 0; j < num_seen; j++)
                cr_assert_neq(seen[j], slot, "slot %lld written twice", (long long)slot);
            seen[num_seen++] = slot;
        }
    }
}

/* The engine: verifies drafts against the model, samples the bonus; half
 * the commits, at random, also carry drafts for the next step (a draft
 * model's, right 70% of the time). */
static void engine_commit(world_t *w, const kvrt_batch_plan_t *plan)
{
    static int32_t tokens[BUDGET + MAX_SEQS];
    static uint32_t acc[MAX_SEQS], next_counts[MAX_SEQS];
    static int32_t next[MAX_SEQS * MAX_DRAFT];
    const bool with_drafts = test_rand_below(&w->rng, 2);
    uint32_t n = 0, num_next = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *e = &plan->seqs[i];
        acc[i] = 0;
        next_counts[i] = 0;
        if (!e->sample)
            continue;
        acc[i] = test_verify_drafts(plan, i, test_input_before_drafts(plan, i), model, tokens,
                                    &n);
        if (!with_drafts)
            continue;
        next_counts[i] = test_rand_below(&w->rng, MAX_DRAFT + 1);
        int32_t prev = tokens[n - 1];
        for (uint32_t j = 0; j < next_counts[i]; j++) {
            prev = test_rand_below(&w->rng, 10) < 7 ? model(prev)
                                                    : (int32_t)test_rand_below(&w->rng, VOCAB);
            next[num_next++] = prev;
        }
    }
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED |
                                     (with_drafts ? KVRT_COMMIT_DRAFTS : 0),
                       .step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = n,
                       .tokens = tokens, .num_accepted = acc,
                       .num_next_drafts = next_counts, .next_drafts = next};
    ASSERT_OK(w->ctx, kvrt_sched_commit(w->sched, &c));
}

static void check_output(const tracked_t *t, const kvrt_seq_info_t *ev)
{
    cr_assert(ev->end_reason == KVRT_END_LENGTH || ev->end_reason == KVRT_END_STOP,
              "request %llu ended with reason %d status %d",
              (unsigned long long)ev->user_tag, ev->end_reason, ev->status);
    int32_t prev = t->prompt[t->prompt_len - 1];
    for (uint32_t i = 0; i < ev->output_tokens; i++) {
        cr_assert_eq(ev->output[i], model(prev), "request %llu token %u",
                     (unsigned long long)ev->user_tag, i);
        prev = ev->output[i];
        if (i + 1 < ev->output_tokens)
            cr_assert_neq(prev, t->stop, "output continued past its stop token");
    }
    if (ev->end_reason == KVRT_END_LENGTH)
        cr_assert_eq(ev->output_tokens, t->max_new);
    else
        cr_assert_eq(ev->output[ev->output_tokens - 1], t->stop);
}

static void drain_events(world_t *w)
{
    kvrt_seq_info_t ev[32];
    uint32_t n;
    do {
        ASSERT_OK(w->ctx, kvrt_sched_drain_ended(w->sched, ev, 32, &n));
        for (uint32_t i = 0; i < n; i++) {
            tracked_t *t = find(w, ev[i].user_tag, ev[i].id);
            cr_assert_not_null(t);
            cr_assert_eq(t->state, 1, "request %llu ended twice",
                         (unsigned long long)ev[i].user_tag);
            t->state = 2;
            if (ev[i].end_reason == KVRT_END_ABORTED) {
                cr_assert(t->aborted, "aborted without being asked");
            } else {
                check_output(t, &ev[i]);
                w->finished_checked++;
            }
        }
    } while (n == 32);
}

/* Starts an arrival for a random queued request, some with deadlines. */
static void start_arrival(world_t *w, uint64_t now)
{
    if (w->num_inflight == MAX_INFLIGHT || !w->num_req)
        return;
    /* Among the latest requests: the ones still likely to be queued. */
    uint32_t recent = w->num_req < 16 ? w->num_req : 16;
    tracked_t *t = &w->req[w->num_req - 1 - test_rand_below(&w->rng, recent)];
    kvrt_seq_info_t info;
    if (t->state != 1)
        return;
    ASSERT_OK(w->ctx, kvrt_seq_info(w->sched, t->id, &info));
    uint32_t total = info.prompt_tokens + info.output_tokens;
    if ((info.state != KVRT_SEQ_WAITING && info.state != KVRT_SEQ_PREEMPTED) || total < 2)
        return;
    kvrt_arrival_params_t p = {
        .field_mask = test_rand_below(&w->rng, 2) ? KVRT_ARRIVAL_PARAM_DEADLINE : 0,
        .num_tokens = 1 + test_rand_below(&w->rng, total - 1),
        .deadline_ns = now + 1000 * test_rand_below(&w->rng, 6),
    };
    inflight_t *f = &w->inflight[w->num_inflight];
    uint32_t first, count;
    kvrt_status_t st = kvrt_seq_await_kv(w->sched, t->id, &p, &f->id, &first, &count);
    if (st == KVRT_ERR_NO_BLOCKS || st == KVRT_ERR_BAD_STATE) /* full pool; arrived KV */
        return;
    ASSERT_OK(w->ctx, st);
    ASSERT_OK(w->ctx, kvrt_seq_info(w->sched, t->id, &info));
    cr_assert_eq(info.state, KVRT_SEQ_WAITING_KV);
    const int32_t *blocks;
    ASSERT_OK(w->ctx, kvrt_seq_blocks(w->sched, t->id, &blocks, NULL, NULL));
    cr_assert_leq(count, 32);
    memcpy(f->blocks, blocks + first, count * sizeof(int32_t));
    f->num_blocks = count;
    f->due_step = w->step + test_rand_below(&w->rng, 8);
    w->num_inflight++;
}

/* Completes due arrivals (all when `all`): fully, partly or not at all. */
static void complete_arrivals(world_t *w, bool all)
{
    for (uint32_t i = 0; i < w->num_inflight;) {
        inflight_t *f = &w->inflight[i];
        if (!all && f->due_step > w->step) {
            i++;
            continue;
        }
        uint32_t landed = test_rand_below(&w->rng, 3)
                              ? f->num_blocks
                              : test_rand_below(&w->rng, f->num_blocks + 1);
        ASSERT_OK(w->ctx, kvrt_arrival_complete(w->sched, f->id, landed));
        *f = w->inflight[--w->num_inflight];
    }
}

static void random_actions(world_t *w, uint64_t now)
{
    if (test_rand_below(&w->rng, 3) == 0)
        start_arrival(w, now);
    complete_arrivals(w, false);
    uint32_t adds = test_rand_below(&w->rng, 5) < 2 ? 1 : 0;
    for (uint32_t i = 0; i < adds; i++)
        add_random(w);
    if (w->num_req && test_rand_below(&w->rng, 8) == 0) {
        tracked_t *t = &w->req[test_rand_below(&w->rng, w->num_req)];
        if (t->state == 1) {
            ASSERT_OK(w->ctx, kvrt_seq_abort(w->sched, t->id));
            ASSERT_OK(w->ctx, kvrt_seq_abort(w->sched, t->id));
            kvrt_seq_info_t info;
            ASSERT_OK(w->ctx, kvrt_seq_info(w->sched, t->id, &info));
            if (info.end_reason == KVRT_END_ABORTED)
                t->aborted = true;
        }
    }
    /* Engine drafts on some decoding requests: right 70% of the time. */
    for (uint32_t k = 0; k < 4 && w->num_req; k++) {
        tracked_t *t = &w->req[test_rand_below(&w->rng, w->num_req)];
        kvrt_seq_info_t info;
        if (t->state != 1 || kvrt_seq_info(w->sched, t->id, &info) != KVRT_OK ||
            info.state != KVRT_SEQ_RUNNING || info.output_tokens == 0 ||
            info.computed_tokens + 1 != info.prompt_tokens + info.output_tokens)
            continue;
        int32_t draft[3];
        int32_t prev = info.output[info.output_tokens - 1];
        for (int j = 0; j < 3; j++) {
            draft[j] = test_rand_below(&w->rng, 10) < 7 ? model(prev)
                                                        : (int32_t)test_rand_below(&w->rng, VOCAB);
            prev = draft[j];
        }
        kvrt_status_t st = kvrt_seq_set_draft(w->sched, t->id, draft,
                                              1 + test_rand_below(&w->rng, 3));
        /* A readmitted request may still be recomputing its last prompt or
         * output token: not decoding yet, and refused as such. */
        if (info.preemptions > 0 && st == KVRT_ERR_BAD_STATE)
            continue;
        ASSERT_OK(w->ctx, st);
    }
}

static void one_step(world_t *w, uint64_t now)
{
    const kvrt_batch_plan_t *plan;
    w->step++;
    ASSERT_OK(w->ctx, kvrt_sched_step(w->sched, now, &plan));
    check_plan(w, plan);
    for (uint32_t i = 0; i < plan->num_preempted; i++) {
        kvrt_seq_info_t info;
        ASSERT_OK(w->ctx, kvrt_seq_info(w->sched, plan->preempted[i], &info));
        cr_assert_eq(info.state, KVRT_SEQ_PREEMPTED);
        cr_assert_eq(info.computed_tokens, 0);
        /* No decode that ran before this step and still runs ranks below
         * the victim: lower priority, or equal priority and later arrival. */
        const tracked_t *victim = find(w, info.user_tag, info.id);
        for (uint32_t j = 0; j < plan->num_seqs; j++) {
            const kvrt_plan_seq_t *e = &plan->seqs[j];
            if (e->kind == KVRT_PLAN_PREFILL)
                continue;
            const tracked_t *kept = find(w, e->user_tag, e->id);
            cr_assert(kept->priority > victim->priority ||
                          (kept->priority == victim->priority && e->user_tag < info.user_tag),
                      "request %llu (priority %d) preempted while %llu (priority %d) runs",
                      (unsigned long long)info.user_tag, victim->priority,
                      (unsigned long long)e->user_tag, kept->priority);
        }
    }
    if (plan->num_seqs) {
        /* Sometimes abort a request the engine is running right now. */
        if (test_rand_below(&w->rng, 20) == 0) {
            tracked_t *t = find(w, plan->seqs[0].user_tag, plan->seqs[0].id);
            ASSERT_OK(w->ctx, kvrt_seq_abort(w->sched, t->id));
            t->aborted = true;
        }
        engine_commit(w, plan);
    }
    ASSERT_OK(w->ctx, kvrt_pool_verify(w->pool));
    ASSERT_OK(w->ctx, kvrt_cache_verify(w->cache));
    drain_events(w);
}

Test(sched_soak, randomized_run_keeps_every_invariant, .timeout = 240)
{
    static world_t w;
    memset(&w, 0, sizeof(w));
    w.rng = 0x5eed1234abcdull;
    const char *seed = getenv("KVRT_SCHED_SOAK_SEED");
    if (seed && *seed)
        w.rng = strtoull(seed, NULL, 0) | 1; /* the generator needs a non-zero state */
    const uint64_t first_seed = w.rng;
    cr_assert_eq(kvrt_ctx_create(NULL, &w.ctx), KVRT_OK);
    kvrt_pool_params_t pp = {.field_mask = KVRT_POOL_PARAM_WATERMARK,
                             .layout = test_layout(TPB),
                             .num_blocks = POOL_BLOCKS,
                             .watermark_blocks = 4};
    ASSERT_OK(w.ctx, kvrt_pool_create(w.ctx, &pp, &w.pool));
    ASSERT_OK(w.ctx, kvrt_cache_create(w.pool, NULL, &w.cache));
    kvrt_sched_params_t sp = {
        .field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS | KVRT_SCHED_PARAM_MAX_SEQS |
                      KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_DRAFT |
                      KVRT_SCHED_PARAM_NGRAM | KVRT_SCHED_PARAM_CSR_TABLES |
                      KVRT_SCHED_PARAM_SHARED_PREFILL,
        .max_batch_tokens = BUDGET,
        .max_seqs = MAX_SEQS,
        .prefill_chunk_tokens = 24,
        .max_draft_tokens = MAX_DRAFT,
        .ngram_min = 1,
        .ngram_max = 3,
        .csr_block_tables = 1,
        /* system prompts are shared: requests wait for their blocks */
        .shared_prefill_min_tokens = 8,
    };
    ASSERT_OK(w.ctx, kvrt_sched_create(w.ctx, w.pool, w.cache, &sp, &w.sched));
    for (int s = 0; s < 3; s++)
        for (int i = 0; i < 40; i++)
            w.system[s][i] = (int32_t)test_rand_below(&w.rng, VOCAB);

    uint64_t now = 0;
    for (int step = 0; step < 4000; step++) {
        if (step < 3000)
            random_actions(&w, now);
        one_step(&w, now += 1000);
    }
    complete_arrivals(&w, true);
    /* Let everything still live finish; bounded. */
    for (int step = 0; step < 5000; step++) {
        kvrt_sched_stats_t st;
        ASSERT_OK(w.ctx, kvrt_sched_stats(w.sched, &st));
        if (st.running + st.waiting + st.ended_undrained == 0)
            break;
        one_step(&w, now += 1000);
    }
    kvrt_sched_stats_t st;
    ASSERT_OK(w.ctx, kvrt_sched_stats(w.sched, &st));
    cr_assert_eq(st.running + st.waiting + st.ended_undrained, 0, "requests left live");
    for (uint32_t i = 0; i < w.num_req; i++)
        cr_assert_eq(w.req[i].state, 2, "request %u never ended", i);
    cr_assert_eq(st.added, w.num_req);
    cr_assert_eq(st.finished_length + st.finished_stop + st.aborted + st.failed, w.num_req);
    cr_assert_eq(st.failed, 0);
    cr_assert_gt(st.preemptions, 0, "the pool is meant to be too small");
    cr_assert_gt(st.prefix_hit_tokens, 0);
    cr_assert_gt(st.shared_prefill_waits, 0);
    cr_assert_gt(st.spec_accepted, 0);
    cr_assert_gt(w.finished_checked, 100);
    cr_assert_gt(st.arrived_tokens, 0);
    cr_assert_gt(st.arrivals_expired, 0);
    cr_assert_gt(st.arrivals_failed, 0);
    cr_assert_eq(st.awaiting_kv, 0);
    kvrt_pool_info_t info;
    ASSERT_OK(w.ctx, kvrt_pool_info(w.pool, &info));
    cr_assert_eq(info.used_blocks, 0, "%u blocks still used", info.used_blocks);
    cr_assert_eq(info.live_tables, 0);
    cr_log_info("seed 0x%llx: requests %u, preemptions %llu, prefix hits %llu/%llu, spec %llu/%llu, "
                "budget-bound steps %llu, arrivals %llu (%llu tokens, %llu expired, "
                "%llu failed), shared-prefill waits %llu",
                (unsigned long long)first_seed, w.num_req, (unsigned long long)st.preemptions,
                (unsigned long long)st.prefix_hit_tokens,
                (unsigned long long)st.prefix_query_tokens,
                (unsigned long long)st.spec_accepted, (unsigned long long)st.spec_proposed,
                (unsigned long long)st.budget_bound_steps, (unsigned long long)st.arrivals,
                (unsigned long long)st.arrived_tokens, (unsigned long long)st.arrivals_expired,
                (unsigned long long)st.arrivals_failed,
                (unsigned long long)st.shared_prefill_waits);
    ASSERT_OK(w.ctx, kvrt_sched_destroy(w.sched));
    ASSERT_OK(w.ctx, kvrt_cache_destroy(w.cache));
    kvrt_ctx_destroy(w.ctx);
}
