/*
 * suite_sched.c - the scheduler's hot path: one kvrt_sched_step plus
 * kvrt_sched_commit with N running decode sequences (contexts of 1-2K
 * tokens) and 256 requests waiting, for N = 1K, 4K, 8K, 16K and 32K; the
 * same with a prefix cache attached (full blocks hashed and inserted as
 * they fill), in a roomy pool (cache: no block taken evicts) and in a full
 * one (cachefull: the pool's free blocks all cached and idle, so that each
 * block taken evicts one, as in a server's steady state); and the
 * speculative variant, k = 4 engine drafts per sequence with a varying
 * accepted count (rollback included), set in one kvrt_sched_set_drafts
 * call (spec4) or carried by the commit before
 * (spec4c, KVRT_COMMIT_DRAFTS, as an engine whose draft model runs right
 * after verification would); and the plain one with requests ending
 * (ends: n/1024 running requests aborted before each step, and drained
 * after its commit, as an engine whose requests finish all the time; no
 * queue behind them, so nobody takes their places).
 *
 * Figures are per sequence, each with its baseline measured beside it:
 * plain at N against plain at 1K (target: within 1.3x, a flat cost per
 * sequence), the cache variants against plain at the same N (within 1.3x),
 * the speculative ones against plain at the same N (within 2x), the one
 * with ends against plain at the same N (within 1.3x; per planned
 * sequence); plain and stop at 1K are their own. Both fixtures are open
 * at once and their repeats alternate, so that a loaded stretch of a
 * shared machine slows both: the note gives the ratio of thread CPU time
 * of each pair of repeats (median and range). Part of that range is the
 * order (in each pair one of the two follows the other's use of the
 * caches), the rest the machine. The bare memcpy of the plan's arrays and
 * the ideal loop at the same N (sched_ideal.c: the memory a decode step and
 * commit cannot avoid, no scheduler) are in the note too, the ideal loop
 * with its ratio to its own figure at 1K.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "sched_bench.h"
#include "sched_ideal.h"
#include "kvrt/kvrt.h"

#define TPB 16u
#define WAITING 256u
#define MAX_SEQ_TOKENS 4096u
#define DRAFTS 4u
#define PATTERNS 16u

typedef struct fixture {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;
    kvrt_sched_t *sched;
    uint32_t n;
    kvrt_seq_id_t *ids;
    int32_t *tokens;   /* commit tokens */
    uint32_t *accepted[PATTERNS];
    int32_t *spec_tokens[PATTERNS];
    uint32_t spec_count[PATTERNS];
    uint32_t *draft_counts;   /* DRAFTS for every sequence */
    int32_t *draft_all;       /* draft_tokens, once per sequence */
    uint64_t now;
    uint32_t waiting;         /* queued behind the running ones */
    uint32_t ends;            /* requests aborted before each step */
    uint32_t next_end;        /* the next one's index in ids */
    uint32_t ended;
    uint64_t planned;         /* plan entries so far */
} fixture_t;

static void fixture_close(fixture_t *f)
{
    kvrt_sched_destroy(f->sched);
    kvrt_cache_destroy(f->cache);
    kvrt_ctx_destroy(f->ctx);
    free(f->ids);
    free(f->tokens);
    free(f->draft_counts);
    free(f->draft_all);
    for (uint32_t p = 0; p < PATTERNS; p++) {
        free(f->accepted[p]);
        free(f->spec_tokens[p]);
    }
}

/* Whether a prefix cache is attached, and how full the pool is. */
typedef enum {
    NO_CACHE,
    CACHE_ROOMY,  /* about 2M free blocks at 32K: no block taken evicts */
    CACHE_FULL,   /* none free: each block taken evicts an idle one */
} cache_use_t;

/* Fills every free block of f's pool with an idle cached block of its own
 * content, released in a random order: from then on each block a decode
 * takes evicts the least recently released one, and the free list hands
 * out the evicted blocks, scattered over the pool (a server's steady
 * state with a prefix cache: a full pool of cached blocks). */
static int fill_with_idle(fixture_t *f, uint64_t *rng)
{
    kvrt_pool_info_t info;
    if (kvrt_pool_info(f->pool, &info) != KVRT_OK)
        return -1;
    const uint32_t count = info.free_blocks;
    int32_t *blocks = malloc((count ? count : 1) * sizeof(int32_t));
    int rc = -1;
    if (!blocks || (count && kvrt_pool_alloc(f->pool, count, blocks) != KVRT_OK))
        goto out;
    for (uint32_t i = 0; i < count; i++) {
        kvrt_block_hash_t content = {sched_bench_rng_next(rng), sched_bench_rng_next(rng)};
        if (kvrt_cache_insert(f->cache, blocks[i], &content, NULL, 0, NULL) != KVRT_OK)
            goto out;
    }
    for (uint32_t i = count; i > 1; i--) { /* Fisher-Yates */
        uint32_t j = (uint32_t)(sched_bench_rng_next(rng) % i);
        int32_t t = blocks[i - 1];
        blocks[i - 1] = blocks[j];
        blocks[j] = t;
    }
    if (kvrt_pool_free(f->pool, count, blocks) == KVRT_OK &&
        kvrt_pool_info(f->pool, &info) == KVRT_OK) {
        if (info.free_blocks == 0 && info.cached_blocks >= count)
            rc = 0;
        else
            fprintf(stderr, "sched fixture: %u blocks free, %u cached after the fill\n",
                    info.free_blocks, info.cached_blocks);
    }
out:
    free(blocks);
    return rc;
}

/* N running decodes with 1-2K tokens of context, WAITING more queued
 * (none with ends); stops: every request has two stop tokens (as an
 * engine's EOS tokens), which the commit checks and no sampled token
 * matches. */
static int fixture_open(fixture_t *f, uint32_t n, bool spec, cache_use_t cache, bool stops,
                        bool ends)
{
    memset(f, 0, sizeof(*f));
    f->n = n;
    f->waiting = ends ? 0 : WAITING;
    f->ends = ends ? (n + 1023) / 1024 : 0;
    kvrt_kv_layout_t layout = {.num_layers = 32, .num_kv_heads = 8, .head_dim = 128,
                               .tokens_per_block = TPB};
    uint64_t block_bytes = 0;
    kvrt_layout_block_bytes(&layout, &block_bytes);
    /* Prompts of 1-2K tokens plus the few hundred steps measured. */
    uint32_t blocks = n * (2048 / TPB + 32) + 1024;
    /* Bookkeeping only: the engine's memory is never touched by kvrt. */
    kvrt_pool_params_t pp = {.field_mask = KVRT_POOL_PARAM_BASE,
                             .layout = layout,
                             .num_blocks = blocks,
                             .base = (void *)(uintptr_t)0x100000000ull,
                             .base_bytes = block_bytes * blocks};
    uint32_t budget = n * (1 + DRAFTS);
    kvrt_sched_params_t sp = {
        .field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS | KVRT_SCHED_PARAM_MAX_SEQS |
                      KVRT_SCHED_PARAM_MAX_REQUESTS | KVRT_SCHED_PARAM_MAX_SEQ_TOKENS |
                      (spec ? KVRT_SCHED_PARAM_DRAFT | KVRT_SCHED_PARAM_ADAPTIVE_DRAFT : 0),
        .max_batch_tokens = budget < 65536 ? 65536 : budget,
        .max_seqs = n,
        .max_requests = n + f->waiting + 64,
        .max_seq_tokens = MAX_SEQ_TOKENS,
        .max_draft_tokens = DRAFTS,
        .adaptive_draft = 0,
    };
    if (kvrt_ctx_create(NULL, &f->ctx) != KVRT_OK ||
        kvrt_pool_create(f->ctx, &pp, &f->pool) != KVRT_OK ||
        (cache && kvrt_cache_create(f->pool, NULL, &f->cache) != KVRT_OK) ||
        kvrt_sched_create(f->ctx, f->pool, f->cache, &sp, &f->sched) != KVRT_OK) {
        fprintf(stderr, "sched fixture: %s\n", kvrt_ctx_last_error(f->ctx));
        return -1;
    }
    f->ids = calloc(n + f->waiting, sizeof(*f->ids));
    f->tokens = calloc((size_t)n * (1 + DRAFTS), sizeof(int32_t));
    static int32_t prompt[2048];
    static const int32_t stop_tokens[2] = {2, 31999};
    uint64_t rng = 0x1234567ull + n;
    for (uint32_t i = 0; i < n + f->waiting; i++) {
        uint32_t len = sched_bench_prompt(&rng, prompt);
        kvrt_seq_params_t p = {.field_mask = stops ? KVRT_SEQ_PARAM_STOP : 0,
                               .prompt = prompt, .prompt_len = len,
                               .max_new_tokens = MAX_SEQ_TOKENS - len,
                               .stop_tokens = stop_tokens, .num_stop_tokens = 2};
        if (kvrt_seq_add(f->sched, &p, &f->ids[i]) != KVRT_OK)
            return -1;
        if (i + 1 == n) {
            /* Prefill the first n before queueing the rest. */
            for (int guard = 0; guard < 100000; guard++) {
                const kvrt_batch_plan_t *plan;
                if (kvrt_sched_step(f->sched, f->now++, &plan) != KVRT_OK)
                    return -1;
                if (sched_bench_commit_plain(f->sched, plan, f->tokens))
                    return -1;
                if (plan->num_prefill_seqs == 0)
                    break;
            }
        }
    }
    for (uint32_t i = 0; i < n * (1 + DRAFTS); i++)
        f->tokens[i] = 7 + (int32_t)(i % 100);
    if (cache == CACHE_FULL && fill_with_idle(f, &rng)) {
        fprintf(stderr, "sched fixture: filling the pool: %s\n", kvrt_ctx_last_error(f->ctx));
        return -1;
    }
    if (spec) {
        f->draft_counts = malloc(n * sizeof(uint32_t));
        f->draft_all = malloc((size_t)n * DRAFTS * sizeof(int32_t));
        if (!f->draft_counts || !f->draft_all)
            return -1;
        for (uint32_t i = 0; i < n; i++) {
            f->draft_counts[i] = DRAFTS;
            for (uint32_t j = 0; j < DRAFTS; j++)
                f->draft_all[i * DRAFTS + j] = 100 + (int32_t)j;
        }
        /* Accepted counts vary per sequence and step: rollback included. */
        for (uint32_t p = 0; p < PATTERNS; p++) {
            f->accepted[p] = malloc(n * sizeof(uint32_t));
            f->spec_tokens[p] = malloc((size_t)n * (1 + DRAFTS) * sizeof(int32_t));
            uint32_t at = 0;
            for (uint32_t i = 0; i < n; i++) {
                uint32_t a = (uint32_t)(sched_bench_rng_next(&rng) % (DRAFTS + 1));
                f->accepted[p][i] = a;
                for (uint32_t j = 0; j < a; j++)
                    f->spec_tokens[p][at++] = 100 + (int32_t)j; /* = the drafts */
                f->spec_tokens[p][at++] = 50;
            }
            f->spec_count[p] = at;
        }
    }
    return 0;
}

/* How the drafts reach the scheduler. */
typedef enum { NO_DRAFTS, DRAFTS_SET, DRAFTS_IN_COMMIT } drafts_t;

/* f->ends requests aborted, spread over the running ones: n is a power of
 * two, so an odd stride visits every index once in n ends. */
static int end_some(fixture_t *f)
{
    for (uint32_t e = 0; e < f->ends && f->ended < f->n; e++, f->ended++) {
        if (kvrt_seq_abort(f->sched, f->ids[f->next_end]) != KVRT_OK)
            return -1;
        f->next_end = (f->next_end + 2 * (f->n / 3) + 1) & (f->n - 1);
    }
    return 0;
}

/* What an engine does with the ends after a commit: drains them. */
static int drain_ends(fixture_t *f)
{
    kvrt_seq_info_t events[64];
    uint32_t got;
    do {
        if (kvrt_sched_drain_ended(f->sched, events, 64, &got) != KVRT_OK)
            return -1;
    } while (got == 64);
    return 0;
}

/* One timed iteration; returns the plan, whose sizes the memcpy of the
 * plan's arrays copies. */
static int iterate(fixture_t *f, drafts_t spec, uint32_t k, const kvrt_batch_plan_t **plan_out)
{
    const kvrt_batch_plan_t *plan;
    if (f->ends && end_some(f))
        return -1;
    if (spec == DRAFTS_SET && kvrt_sched_set_drafts(f->sched, f->n, f->ids, f->draft_counts,
                                                    f->draft_all) != KVRT_OK)
        return -1;
    if (kvrt_sched_step(f->sched, f->now++, &plan) != KVRT_OK ||
        plan->num_seqs != f->n - f->ended)
        return -1;
    f->planned += plan->num_seqs;
    if (spec) {
        uint32_t p = k % PATTERNS;
        /* The plan lists the running requests in the same order every step,
         * so one array of drafts per sequence serves every commit. */
        kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED |
                                         (spec == DRAFTS_IN_COMMIT ? KVRT_COMMIT_DRAFTS : 0),
                           .step = plan->step, .num_seqs = plan->num_seqs,
                           .num_tokens = f->spec_count[p], .tokens = f->spec_tokens[p],
                           .num_accepted = f->accepted[p], .num_next_drafts = f->draft_counts,
                           .next_drafts = f->draft_all};
        if (kvrt_sched_commit(f->sched, &c) != KVRT_OK)
            return -1;
    } else if (sched_bench_commit_plain(f->sched, plan, f->tokens)) {
        return -1;
    }
    if (f->ends && drain_ends(f))
        return -1;
    *plan_out = plan;
    return 0;
}

/* The memcpy of the plan's arrays: copying out what the plan hands over. */
static double time_memcpy(const kvrt_batch_plan_t *plan, uint32_t reps)
{
    size_t seqs = plan->num_seqs, toks = plan->num_tokens;
    size_t bytes = seqs * (sizeof(kvrt_plan_seq_t) + 3 * sizeof(int32_t)) +
                   toks * (2 * sizeof(int32_t) + sizeof(int64_t));
    char *dst = malloc(bytes);
    uint64_t start = bench_now_ns();
    for (uint32_t r = 0; r < reps; r++) {
        char *at = dst;
        memcpy(at, plan->seqs, seqs * sizeof(kvrt_plan_seq_t));
        at += seqs * sizeof(kvrt_plan_seq_t);
        memcpy(at, plan->query_start_loc, seqs * sizeof(int32_t));
        at += seqs * sizeof(int32_t);
        memcpy(at, plan->seq_lens, seqs * sizeof(int32_t));
        at += seqs * sizeof(int32_t);
        memcpy(at, plan->row_index, seqs * sizeof(int32_t));
        at += seqs * sizeof(int32_t);
        memcpy(at, plan->input_tokens, toks * sizeof(int32_t));
        at += toks * sizeof(int32_t);
        memcpy(at, plan->positions, toks * sizeof(int32_t));
        at += toks * sizeof(int32_t);
        memcpy(at, plan->slot_mapping, toks * sizeof(int64_t));
        bench_consume(dst);
    }
    double ns = (double)(bench_now_ns() - start) / reps;
    free(dst);
    return ns;
}

/* iters timed iterations; inlined, so that each entry point below has
 * the loop in its own body (a tail call into a shared one would blur
 * where callgrind's toggle stops). */
__attribute__((always_inline)) static inline int steps(fixture_t *f, drafts_t spec,
                                                       uint32_t iters, uint32_t *k,
                                                       const kvrt_batch_plan_t **plan_out)
{
    for (uint32_t i = 0; i < iters; i++)
        if (iterate(f, spec, (*k)++, plan_out))
            return -1;
    return 0;
}

/* A figure's iterations, in a function of their own so that callgrind can
 * count exactly them: --toggle-collect=measured_steps. */
SCHED_BENCH_STEPS static int measured_steps(fixture_t *f, drafts_t spec, uint32_t iters,
                                         uint32_t *k, const kvrt_batch_plan_t **plan_out)
{
    return steps(f, spec, iters, k, plan_out);
}

/* Its baseline's, timed beside it: outside what callgrind counts. */
SCHED_BENCH_STEPS static int baseline_steps(fixture_t *f, drafts_t spec, uint32_t iters,
                                         uint32_t *k, const kvrt_batch_plan_t **plan_out)
{
    return steps(f, spec, iters, k, plan_out);
}

/* One configuration of the suite. */
typedef struct variant {
    const char *name;  /* KVRT_BENCH_SCHED=<name>.<n> */
    drafts_t drafts;
    cache_use_t cache;
    bool stops;
    bool ends;
    const char *note;
} variant_t;

/* One configuration's fixture and its per-repeat figures, per sequence:
 * wall, this thread's CPU time (on a shared machine the wall clock also
 * counts the time other processes hold the core) and the memcpy of the
 * plan's arrays. */
typedef struct run {
    fixture_t f;
    const variant_t *v;
    uint32_t n, iters, k;
    bool is_baseline;
    double wall[SCHED_BENCH_MAX_REPEATS], cpu[SCHED_BENCH_MAX_REPEATS],
        copy[SCHED_BENCH_MAX_REPEATS];
} run_t;

static int run_open(run_t *r, const bench_options_t *o, uint32_t n, const variant_t *v,
                    bool is_baseline)
{
    r->v = v;
    r->n = n;
    r->iters = o->quick ? 10 : 20;
    r->k = 0;
    r->is_baseline = is_baseline;
    const drafts_t spec = v->drafts;
    if (fixture_open(&r->f, n, spec != NO_DRAFTS, v->cache, v->stops, v->ends))
        return -1;
    /* Commits carry the drafts of the step after: the first are set. */
    if (spec == DRAFTS_IN_COMMIT &&
        kvrt_sched_set_drafts(r->f.sched, n, r->f.ids, r->f.draft_counts, r->f.draft_all) !=
            KVRT_OK)
        return -1;
    const kvrt_batch_plan_t *plan;
    for (uint32_t w = 0; w < 10; w++)
        if (iterate(&r->f, spec, w, &plan))
            return -1;
    return 0;
}

static int run_repeat(void *run, int rep)
{
    run_t *r = run;
    const kvrt_batch_plan_t *plan = NULL;
    uint64_t start = bench_now_ns(), cpu_start = bench_thread_cpu_ns();
    const uint64_t planned = r->f.planned;
    if ((r->is_baseline ? baseline_steps : measured_steps)(&r->f, r->v->drafts, r->iters, &r->k,
                                                           &plan))
        return -1;
    const double seqs = (double)(r->f.planned - planned); /* iters * n without ends */
    r->wall[rep] = (double)(bench_now_ns() - start) / seqs;
    r->cpu[rep] = (double)(bench_thread_cpu_ns() - cpu_start) / seqs;
    r->copy[rep] = time_memcpy(plan, r->iters) / r->n;
    return 0;
}

/* Every request is still where the fixture put it: nothing was preempted. */
static int run_check(const run_t *r)
{
    kvrt_sched_stats_t st;
    kvrt_sched_stats(r->f.sched, &st);
    if (st.waiting == r->f.waiting && st.running == r->n - r->f.ended && !st.preemptions)
        return 0;
    fprintf(stderr, "sched bench (%s.%u): requests moved or preempted\n", r->v->name, r->n);
    return -1;
}

/* Why r failed, when its context knows (a failed check has said so). */
static void run_say_why(const run_t *r)
{
    if (r && r->f.ctx && *kvrt_ctx_last_error(r->f.ctx))
        fprintf(stderr, "sched bench (%s.%u): %s\n", r->v->name, r->n,
                kvrt_ctx_last_error(r->f.ctx));
}

/* A figure, and its baseline when it has one (base_v at base_n), timed
 * alternately (sched_bench_alternate). */
typedef struct figure_result {
    double wall, cpu, copy;    /* the figure's medians */
    double base_wall;          /* its baseline's median wall time; 0 without one */
    sched_bench_ratio_t ratio; /* CPU time / baseline's, per pair of repeats */
} figure_result_t;

static int run_figure(const bench_options_t *o, uint32_t n, const variant_t *v,
                      const variant_t *base_v, uint32_t base_n, figure_result_t *out)
{
    static run_t runs[2];
    run_t *fig = &runs[0], *base = base_v ? &runs[1] : NULL;
    memset(fig, 0, sizeof(*fig));
    if (base)
        memset(base, 0, sizeof(*base));
    const int repeats = o->repeats;
    int rc = -1;
    void *failed = fig; /* the run that failed */
    if (run_open(fig, o, n, v, false))
        goto out;
    failed = base;
    if (base && run_open(base, o, base_n, base_v, true))
        goto out;
    if (sched_bench_alternate(repeats, run_repeat, fig, fig->cpu, base, base ? base->cpu : NULL,
                              &out->ratio, &failed))
        goto out;
    if (run_check(fig) || (base && run_check(base)))
        goto out; /* (failed is NULL: the checks say why) */
    out->wall = bench_median(fig->wall, repeats);
    out->cpu = bench_median(fig->cpu, repeats);
    out->copy = bench_median(fig->copy, repeats);
    if (base)
        out->base_wall = bench_median(base->wall, repeats);
    rc = 0;
out:
    if (rc)
        run_say_why(failed);
    fixture_close(&fig->f);
    if (base)
        fixture_close(&base->f);
    return rc;
}

#define NUM_SIZES 5
#define NUM_VARIANTS 7

static int run_sched(const bench_options_t *o)
{
    const uint32_t sizes[NUM_SIZES] = {1024, 4096, 8192, 16384, 32768};
    const int count = o->quick && !getenv("KVRT_BENCH_SCHED") ? 2 : NUM_SIZES;
    /* plain and stop: flat per sequence against their own 1K figure;
     * the others against plain at the same size. */
    static const variant_t variants[NUM_VARIANTS] = {
        {"plain", NO_DRAFTS, NO_CACHE, false, false, ""},
        {"cache", NO_DRAFTS, CACHE_ROOMY, false, false,
         "; prefix cache on (~n/16 blocks hashed + inserted per step)"},
        {"cachefull", NO_DRAFTS, CACHE_FULL, false, false,
         "; prefix cache on, pool full of idle cached blocks (~n/16 evicted, hashed + "
         "inserted per step)"},
        {"spec4", DRAFTS_SET, NO_CACHE, false, false,
         "; 4 drafts each via kvrt_sched_set_drafts, 0-4 accepted"},
        {"spec4c", DRAFTS_IN_COMMIT, NO_CACHE, false, false,
         "; 4 drafts each carried by the commit, 0-4 accepted"},
        {"stop", NO_DRAFTS, NO_CACHE, true, false,
         "; 2 stop tokens each (checked, never sampled)"},
        {"ends", NO_DRAFTS, NO_CACHE, false, true,
         "; n/1024 aborted before each step and drained after it, none waiting"},
    };
    double ideal[NUM_SIZES] = {0};
    /* KVRT_BENCH_SCHED=<variant>.<n>[,...] runs those configurations only
     * (each with its baseline beside it, if it has one), e.g. one under
     * callgrind, whose --toggle-collect=measured_steps counts the
     * configuration's instructions and not its baseline's. The baseline's
     * repeats still pass through the simulated caches in between:
     * KVRT_BENCH_SCHED_ALONE=1 runs every figure without its baseline (no
     * ratio, no target), for miss counts comparable with a run alone. */
    const char *only = getenv("KVRT_BENCH_SCHED");
    const char *alone = getenv("KVRT_BENCH_SCHED_ALONE");
    const bool with_baselines = !alone || strcmp(alone, "1") != 0;
    for (int vi = 0; vi < NUM_VARIANTS; vi++) {
        const variant_t *v = &variants[vi];
        const bool flat = v->drafts == NO_DRAFTS && !v->cache && !v->ends;
        for (int i = 0; i < count; i++) {
            char config[32];
            snprintf(config, sizeof(config), "%s.%u", v->name, sizes[i]);
            if (only && !bench_list_has(only, config))
                continue;
            /* Flat ones against themselves at 1K (which has none), the
             * others against plain at the same N; none alone. */
            const variant_t *base_v =
                !with_baselines ? NULL : flat ? (i > 0 ? v : NULL) : &variants[0];
            const uint32_t base_n = flat ? sizes[0] : sizes[i];
            figure_result_t fr = {0};
            if (run_figure(o, sizes[i], v, base_v, base_n, &fr))
                return -1;
            /* Once per size, before its first figure's note. */
            if (ideal[i] == 0 &&
                sched_ideal_ns(sizes[i], o->quick ? 10 : 20, o->repeats, &ideal[i]))
                return -1;
            char ideal_ratio[32] = "", paired[96] = "";
            if (ideal[0] > 0 && i > 0)
                snprintf(ideal_ratio, sizeof(ideal_ratio), ", %.2fx its 1K", ideal[i] / ideal[0]);
            if (base_v)
                snprintf(paired, sizeof(paired),
                         "; thread CPU time over the baseline's, repeat by repeat: %.2f "
                         "(%.2f-%.2f)",
                         fr.ratio.median, fr.ratio.min, fr.ratio.max);
            char name[64], note[400], baseline[32];
            snprintf(name, sizeof(name), "sched.step_commit.%s%s%u", vi ? v->name : "",
                     vi ? "." : "", sizes[i]);
            snprintf(note, sizeof(note),
                     "%u running decodes (1-2K context), %u waiting%s; thread CPU time "
                     "%.1f ns/seq%s; memcpy of the plan arrays %.2f ns/seq; ideal loop %.2f "
                     "ns/seq%s",
                     sizes[i], v->ends ? 0u : WAITING, v->note, fr.cpu, paired, fr.copy,
                     ideal[i], ideal_ratio);
            if (flat)
                snprintf(baseline, sizeof(baseline), "%s_at_1024", v->name);
            else
                snprintf(baseline, sizeof(baseline), "plain_same_n");
            /* 1K flat: its own; alone: none */
            const double base = base_v ? fr.base_wall : flat && i == 0 ? fr.wall : 0;
            bench_report(&(bench_figure_t){
                .name = name, .unit = "ns/seq", .value = fr.wall,
                .baseline_name = base > 0 ? baseline : NULL, .baseline_value = base,
                .target = base * (v->drafts != NO_DRAFTS ? 2.0 : 1.3),
                .lower_is_better = true, .note = note});
        }
    }
    return 0;
}

KVRT_BENCH_SUITE(sched,
                 "step + commit per sequence, 1K-32K decodes: plain, cache (roomy, full), "
                 "k=4, stops, ends",
                 run_sched, true)
