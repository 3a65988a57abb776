/*
 * sched_bench.h - what the scheduler suites (suite_sched.c,
 * suite_sched_hybrid.c) share: their prompts and the commit of a plan
 * without drafts. Both suites draw the same prompts from the same
 * seed, so their figures compare.
 */
#ifndef KVRT_BENCH_SCHED_BENCH_H
#define KVRT_BENCH_SCHED_BENCH_H

#include <stdint.h>

#include "kvrt/kvrt.h"

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
