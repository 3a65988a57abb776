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
 * Baseline from the same run: the same workload on one full-attention
 * group (kvrt_sched_create_groups with one group, which takes the
 * single-group fast path). The target is a flat cost per group: G groups
 * within G times the one-group figure.
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

/* The measured iterations, in a function of their own so that callgrind
 * can count exactly them: --toggle-collect=hy_measured_steps. */
__attribute__((noinline)) static int hy_measured_steps(hybrid_fixture_t *f, uint32_t iters)
{
    for (uint32_t i = 0; i < iters; i++) {
        const kvrt_batch_plan_t *plan;
        if (kvrt_sched_step(f->sched, f->now++, &plan) != KVRT_OK || plan->num_seqs != f->n ||
            sched_bench_commit_plain(f->sched, plan, f->tokens))
            return -1;
    }
    return 0;
}

/* Median ns per sequence of step + commit at n over `groups` groups: wall
 * in *ns_out, this thread's CPU time in *cpu_ns_out. */
static int hy_run(const bench_options_t *o, uint32_t n, uint32_t groups, double *ns_out,
                  double *cpu_ns_out)
{
    hybrid_fixture_t f;
    if (hy_open(&f, n, groups) || hy_measured_steps(&f, 10)) {
        hy_close(&f);
        return -1;
    }
    const uint32_t iters = o->quick ? 10 : 20;
    double ns[1000], cpu_ns[1000];
    for (int r = 0; r < o->repeats; r++) {
        uint64_t start = bench_now_ns(), cpu_start = bench_thread_cpu_ns();
        if (hy_measured_steps(&f, iters)) {
            fprintf(stderr, "sched_hybrid (%u, %u groups): %s\n", n, groups,
                    kvrt_ctx_last_error(f.ctx));
            hy_close(&f);
            return -1;
        }
        ns[r] = (double)(bench_now_ns() - start) / iters / n;
        cpu_ns[r] = (double)(bench_thread_cpu_ns() - cpu_start) / iters / n;
    }
    kvrt_sched_stats_t st;
    kvrt_sched_stats(f.sched, &st);
    int rc = st.waiting == HY_WAITING && st.running == n && !st.preemptions ? 0 : -1;
    *ns_out = bench_median(ns, o->repeats);
    *cpu_ns_out = bench_median(cpu_ns, o->repeats);
    hy_close(&f);
    return rc;
}

static int run_sched_hybrid(const bench_options_t *o)
{
    static const uint32_t sizes[3] = {1024, 4096, 16384};
    static const uint32_t group_counts[2] = {2, 4};
    const int count = o->quick && !getenv("KVRT_BENCH_SCHED_HYBRID") ? 2 : 3;
    /* KVRT_BENCH_SCHED_HYBRID=<groups>.<n>[,...] runs those configurations
     * only (1 is the one-group baseline), e.g. one under callgrind. */
    const char *only = getenv("KVRT_BENCH_SCHED_HYBRID");
    for (int i = 0; i < count; i++) {
        double single = 0, single_cpu = 0;
        char config[32];
        snprintf(config, sizeof(config), "1.%u", sizes[i]);
        if ((!only || bench_list_has(only, config)) &&
            hy_run(o, sizes[i], 1, &single, &single_cpu))
            return -1;
        for (int k = 0; k < 2; k++) {
            const uint32_t groups = group_counts[k];
            snprintf(config, sizeof(config), "%u.%u", groups, sizes[i]);
            if (only && !bench_list_has(only, config))
                continue;
            double ns, cpu_ns;
            if (hy_run(o, sizes[i], groups, &ns, &cpu_ns))
                return -1;
            char name[64], note[300];
            snprintf(name, sizeof(name), "sched_hybrid.step_commit.%ugroups.%u", groups,
                     sizes[i]);
            snprintf(note, sizeof(note),
                     "%u running decodes (1-2K context), %u waiting; 1 full-attention group + "
                     "%u sliding-window groups (window %u tokens, blocks of %u); thread CPU "
                     "time %.1f ns/seq, one group %.1f",
                     sizes[i], HY_WAITING, groups - 1, HY_WINDOW, HY_TPB, cpu_ns, single_cpu);
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
