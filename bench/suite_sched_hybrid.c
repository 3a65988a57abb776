/*
 * suite_sched_hybrid.c - the scheduler's hot path on a hybrid model: one
 * kvrt_sched_step plus kvrt_sched_commit with N running decode sequences
 * (contexts of 1-2K tokens, 256 requests waiting) on a scheduler of
 * several cache groups (kvrt_sched_create_groups): 1 full-attention group
 * plus 1 sliding-window group, and 1 full plus 3 sliding (Gemma-3-like
 * interleaving), for N = 1K, 4K and 16K.
 *
 * The window is 1024 tokens so that it slides inside these contexts: every
 * 16 decoded tokens a block leaves each window and goes back to its pool
 * during the measured steps. Block size 16 in every group.
 *
 * Baseline, measured beside each figure (its fixture open at the same
 * time, repeats alternating: sched_bench_alternate): the same workload on
 * one full-attention group (kvrt_sched_create_groups with one group, which
 * takes the single-group fast path). The target is a flat cost per group:
 * G groups within G times the one-group figure. The note gives the ratio
 * of thread CPU time of each pair of repeats, median and range.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "sched_bench.h"
#include "kvrt/kvrt.h"

#define HY_TPB 16u
#define HY_WAITING 256u
#define HY_MAX_SEQ_TOKENS 4096u
#define HY_WINDOW 1024u
#define HY_MAX_GROUPS 4u

typedef struct hybrid_fixture {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pools[HY_MAX_GROUPS];
    kvrt_sched_t *sched;
    uint32_t n;
    int32_t *tokens; /* commit tokens */
    uint64_t now;
} hybrid_fixture_t;

static void hy_close(hybrid_fixture_t *f)
{
    kvrt_sched_destroy(f->sched);
    kvrt_ctx_destroy(f->ctx); /* and every pool */
    free(f->tokens);
}

/* N running decodes (1-2K context) and HY_WAITING queued, over `groups`
 * groups: group 0 full attention, the others windows of HY_WINDOW. The
 * prompts are the same for every group count (same seed). */
static int hy_open(hybrid_fixture_t *f, uint32_t n, uint32_t groups)
{
    memset(f, 0, sizeof(*f));
    f->n = n;
    kvrt_kv_layout_t layout = {.num_layers = 8, .num_kv_heads = 8, .head_dim = 128,
                               .tokens_per_block = HY_TPB};
    uint64_t block_bytes = 0;
    kvrt_layout_block_bytes(&layout, &block_bytes);
    uint32_t blocks = n * (2048 / HY_TPB + 32) + 1024;
    if (kvrt_ctx_create(NULL, &f->ctx) != KVRT_OK)
        return -1;
    kvrt_sched_group_params_t gp[HY_MAX_GROUPS];
    const kvrt_sched_group_params_t *gpp[HY_MAX_GROUPS];
    for (uint32_t g = 0; g < groups; g++) {
        /* Bookkeeping only: the engine's memory is never touched by kvrt. */
        kvrt_pool_params_t pp = {.field_mask = KVRT_POOL_PARAM_BASE,
                                 .layout = layout,
                                 .num_blocks = blocks,
                                 .base = (void *)(uintptr_t)(0x100000000ull << g),
                                 .base_bytes = block_bytes * blocks};
        if (kvrt_pool_create(f->ctx, &pp, &f->pools[g]) != KVRT_OK)
            goto fail;
        gp[g] = (kvrt_sched_group_params_t){
            .field_mask = g ? KVRT_SCHED_GROUP_WINDOW : 0,
            .pool = f->pools[g],
            .sliding_window = g ? HY_WINDOW : 0};
        gpp[g] = &gp[g];
    }
    kvrt_sched_params_t sp = {
        .field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS | KVRT_SCHED_PARAM_MAX_SEQS |
                      KVRT_SCHED_PARAM_MAX_REQUESTS | KVRT_SCHED_PARAM_MAX_SEQ_TOKENS,
        .max_batch_tokens = n < 65536 ? 65536 : n,
        .max_seqs = n,
        .max_requests = n + HY_WAITING + 64,
        .max_seq_tokens = HY_MAX_SEQ_TOKENS,
    };
    if (kvrt_sched_create_groups(f->ctx, groups, gpp, &sp, &f->sched) != KVRT_OK)
        goto fail;
    f->tokens = calloc(n, sizeof(int32_t));
    if (!f->tokens)
        return -1;
    for (uint32_t i = 0; i < n; i++)
        f->tokens[i] = 7 + (int32_t)(i % 100);
    static int32_t prompt[2048];
    uint64_t rng = 0x1234567ull + n;
    for (uint32_t i = 0; i < n + HY_WAITING; i++) {
        uint32_t len = sched_bench_prompt(&rng, prompt);
        kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = len,
                               .max_new_tokens = HY_MAX_SEQ_TOKENS - len};
        kvrt_seq_id_t id;
        if (kvrt_seq_add(f->sched, &p, &id) != KVRT_OK)
            goto fail;
        if (i + 1 != n)
            continue;
        /* Prefill the first n before queueing the rest. */
        for (int guard = 0; guard < 100000; guard++) {
            const kvrt_batch_plan_t *plan;
            if (kvrt_sched_step(f->sched, f->now++, &plan) != KVRT_OK ||
                sched_bench_commit_plain(f->sched, plan, f->tokens))
                goto fail;
            if (plan->num_prefill_seqs == 0)
                break;
        }
    }
    return 0;
fail:
    fprintf(stderr, "sched_hybrid fixture (%u groups): %s\n", groups,
            kvrt_ctx_last_error(f->ctx));
    return -1;
}

/* iters timed iterations; inlined, so that each entry point below has
 * the loop in its own body (a tail call into a shared one would blur
 * where callgrind's toggle stops). */
__attribute__((always_inline)) static inline int hy_steps(hybrid_fixture_t *f, uint32_t iters)
{
    for (uint32_t i = 0; i < iters; i++) {
        const kvrt_batch_plan_t *plan;
        if (kvrt_sched_step(f->sched, f->now++, &plan) != KVRT_OK || plan->num_seqs != f->n ||
            sched_bench_commit_plain(f->sched, plan, f->tokens))
            return -1;
    }
    return 0;
}

/* A figure's iterations, in a function of their own so that callgrind can
 * count exactly them: --toggle-collect=hy_measured_steps. */
SCHED_BENCH_STEPS static int hy_measured_steps(hybrid_fixture_t *f, uint32_t iters)
{
    return hy_steps(f, iters);
}

/* The one-group baseline's, timed beside it: outside what callgrind
 * counts. */
SCHED_BENCH_STEPS static int hy_baseline_steps(hybrid_fixture_t *f, uint32_t iters)
{
    return hy_steps(f, iters);
}

/* One fixture and its per-repeat figures, per sequence: wall and this
 * thread's CPU time (on a shared machine the wall clock also counts the
 * time other processes hold the core). */
typedef struct hy_run {
    hybrid_fixture_t f;
    uint32_t groups, iters;
    double wall[SCHED_BENCH_MAX_REPEATS], cpu[SCHED_BENCH_MAX_REPEATS];
} hy_run_t;

static int hy_run_open(hy_run_t *r, const bench_options_t *o, uint32_t n, uint32_t groups)
{
    r->groups = groups;
    r->iters = o->quick ? 10 : 20;
    return hy_open(&r->f, n, groups) || hy_steps(&r->f, 10) ? -1 : 0;
}

static int hy_run_repeat(void *run, int rep)
{
    hy_run_t *r = run;
    uint64_t start = bench_now_ns(), cpu_start = bench_thread_cpu_ns();
    if ((r->groups == 1 ? hy_baseline_steps : hy_measured_steps)(&r->f, r->iters))
        return -1;
    r->wall[rep] = (double)(bench_now_ns() - start) / r->iters / r->f.n;
    r->cpu[rep] = (double)(bench_thread_cpu_ns() - cpu_start) / r->iters / r->f.n;
    return 0;
}

/* Every request is where the fixture put it: nothing was preempted. */
static int hy_run_check(const hy_run_t *r)
{
    kvrt_sched_stats_t st;
    kvrt_sched_stats(r->f.sched, &st);
    if (st.waiting == HY_WAITING && st.running == r->f.n && !st.preemptions)
        return 0;
    fprintf(stderr, "sched_hybrid (%u, %u groups): requests moved or preempted\n", r->f.n,
            r->groups);
    return -1;
}

/* `groups` groups at n beside one group at n: medians of wall time in
 * *ns_out and *single_out, of CPU time in *cpu_ns_out and *single_cpu_out,
 * the pairs' ratio in *ratio. */
static int hy_run_pair(const bench_options_t *o, uint32_t n, uint32_t groups, double *ns_out,
                       double *cpu_ns_out, double *single_out, double *single_cpu_out,
                       sched_bench_ratio_t *ratio)
{
    static hy_run_t runs[2];
    hy_run_t *fig = &runs[0], *base = &runs[1];
    memset(runs, 0, sizeof(runs));
    void *failed = NULL;
    int rc = -1;
    if (hy_run_open(fig, o, n, groups) || hy_run_open(base, o, n, 1))
        goto out;
    if (sched_bench_alternate(o->repeats, hy_run_repeat, fig, fig->cpu, base, base->cpu, ratio,
                              &failed)) {
        const hy_run_t *why = failed;
        if (why)
            fprintf(stderr, "sched_hybrid (%u, %u groups): %s\n", n, why->groups,
                    kvrt_ctx_last_error(why->f.ctx));
        goto out;
    }
    if (hy_run_check(fig) || hy_run_check(base))
        goto out;
    *ns_out = bench_median(fig->wall, o->repeats);
    *cpu_ns_out = bench_median(fig->cpu, o->repeats);
    *single_out = bench_median(base->wall, o->repeats);
    *single_cpu_out = bench_median(base->cpu, o->repeats);
    rc = 0;
out:
    hy_close(&fig->f);
    hy_close(&base->f);
    return rc;
}

static int run_sched_hybrid(const bench_options_t *o)
{
    static const uint32_t sizes[3] = {1024, 4096, 16384};
    static const uint32_t group_counts[2] = {2, 4};
    const int count = o->quick && !getenv("KVRT_BENCH_SCHED_HYBRID") ? 2 : 3;
    /* KVRT_BENCH_SCHED_HYBRID=<groups>.<n>[,...] runs those configurations
     * only (2 or 4 groups, each with its one-group baseline beside it),
     * e.g. one under callgrind: --toggle-collect=hy_measured_steps counts
     * its instructions, not its baseline's. */
    const char *only = getenv("KVRT_BENCH_SCHED_HYBRID");
    for (int i = 0; i < count; i++) {
        for (int k = 0; k < 2; k++) {
            const uint32_t groups = group_counts[k];
            char config[32];
            snprintf(config, sizeof(config), "%u.%u", groups, sizes[i]);
            if (only && !bench_list_has(only, config))
                continue;
            double ns, cpu_ns, single, single_cpu;
            sched_bench_ratio_t ratio;
            if (hy_run_pair(o, sizes[i], groups, &ns, &cpu_ns, &single, &single_cpu, &ratio))
                return -1;
            char name[64], note[360];
            snprintf(name, sizeof(name), "sched_hybrid.step_commit.%ugroups.%u", groups,
                     sizes[i]);
            snprintf(note, sizeof(note),
                     "%u running decodes (1-2K context), %u waiting; 1 full-attention group + "
                     "%u sliding-window groups (window %u tokens, blocks of %u); thread CPU "
                     "time %.1f ns/seq, one group %.1f; over one group's, repeat by repeat: "
                     "%.2f (%.2f-%.2f)",
                     sizes[i], HY_WAITING, groups - 1, HY_WINDOW, HY_TPB, cpu_ns, single_cpu,
                     ratio.median, ratio.min, ratio.max);
            bench_report(&(bench_figure_t){
                .name = name, .unit = "ns/seq", .value = ns,
                .baseline_name = "one_group_same_n", .baseline_value = single,
                .target = single * groups, .lower_is_better = true, .note = note});
        }
    }
    return 0;
}

KVRT_BENCH_SUITE(sched_hybrid,
                 "step + commit per sequence, 1K-16K decodes: 2 and 4 cache groups vs one",
                 run_sched_hybrid, false)
