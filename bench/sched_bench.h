/*
 * sched_bench.h - what the scheduler suites (suite_sched.c,
 * suite_sched_hybrid.c) share: their prompts, the commit of a plan
 * without drafts, and timing a figure beside its baseline. Both suites
 * draw the same prompts from the same seed, so their figures compare.
 */
#ifndef KVRT_BENCH_SCHED_BENCH_H
#define KVRT_BENCH_SCHED_BENCH_H

#include <stdint.h>

#include "bench.h"
#include "kvrt/kvrt.h"

/* For the functions that run a figure's timed iterations and its
 * baseline's: kept out of line so that callgrind can count one and not the
 * other (--toggle-collect), and apart: folding the two identical bodies
 * into one (identical code folding) would put the baseline's iterations
 * into what callgrind counts. */
#if defined(__GNUC__) && !defined(__clang__)
#define SCHED_BENCH_STEPS __attribute__((noinline, noipa))
#else
#define SCHED_BENCH_STEPS __attribute__((noinline))
#endif

#define SCHED_BENCH_MAX_REPEATS 1000

/* A figure's thread CPU time over its baseline's, pair of repeats by pair:
 * median and range. */
typedef struct sched_bench_ratio {
    double median, min, max;
} sched_bench_ratio_t;

/* Times `repeats` repeats (1..SCHED_BENCH_MAX_REPEATS) of the run `fig`
 * and, unless `base` is NULL, of the run `base`, alternately: both
 * fixtures are open at once, so that a loaded stretch of a shared machine
 * slows both, and which goes first alternates too (neither always follows
 * the other's use of the caches). repeat(run, r) times repeat r of a run,
 * leaving its thread CPU time per sequence in fig_cpu[r] or base_cpu[r].
 * With a base, *ratio gets fig_cpu over base_cpu pair by pair. Returns 0,
 * or -1 with *failed the run whose repeat failed. */
static inline int sched_bench_alternate(int repeats, int (*repeat)(void *run, int r), void *fig,
                                        const double *fig_cpu, void *base,
                                        const double *base_cpu, sched_bench_ratio_t *ratio,
                                        void **failed)
{
    double ratios[SCHED_BENCH_MAX_REPEATS];
    if (repeats < 1 || repeats > SCHED_BENCH_MAX_REPEATS)
        return -1;
    for (int r = 0; r < repeats; r++) {
        void *first = base && (r & 1) ? base : fig, *second = first == fig ? base : fig;
        *failed = first;
        if (repeat(first, r))
            return -1;
        *failed = second;
        if (second && repeat(second, r))
            return -1;
        if (base)
            ratios[r] = fig_cpu[r] / base_cpu[r];
    }
    *failed = NULL;
    if (!base)
        return 0;
    ratio->min = ratio->max = ratios[0];
    for (int r = 1; r < repeats; r++) {
        ratio->min = ratios[r] < ratio->min ? ratios[r] : ratio->min;
        ratio->max = ratios[r] > ratio->max ? ratios[r] : ratio->max;
    }
    ratio->median = bench_median(ratios, repeats);
    return 0;
}

/* xorshift64: cheap and reproducible; quality is irrelevant here. */
static inline uint64_t sched_bench_rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* The suites' prompts: 1-2K tokens drawn from `rng` into prompt[2048];
 * returns the length. */
static inline uint32_t sched_bench_prompt(uint64_t *rng, int32_t prompt[2048])
{
    uint32_t len = 1024 + (uint32_t)(sched_bench_rng_next(rng) % 1024);
    for (uint32_t t = 0; t < len; t++)
        prompt[t] = (int32_t)(sched_bench_rng_next(rng) % 32000);
    return len;
}

/* Commits `plan` with one token from `tokens` per sampled sequence (no
 * drafts). Returns 0, or -1 if the scheduler refused the commit. */
static inline int sched_bench_commit_plain(kvrt_sched_t *sched, const kvrt_batch_plan_t *plan,
                                           const int32_t *tokens)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++)
        n += plan->seqs[i].sample;
    kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = n,
                       .tokens = tokens};
    return kvrt_sched_commit(sched, &c) == KVRT_OK ? 0 : -1;
}

#endif
