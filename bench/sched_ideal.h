/*
 * sched_ideal.h - the sched suite's ideal loop (sched_ideal.c): the memory
 * a decode step and its commit cannot avoid, without a scheduler, as a
 * same-run floor for the suite's per-sequence figures.
 */
#ifndef KVRT_BENCH_SCHED_IDEAL_H
#define KVRT_BENCH_SCHED_IDEAL_H

#include <stdint.h>

/* Median, over `repeats` runs of `iters` step + commit iterations (after
 * one untimed run), of this thread's CPU time per sequence in ns, at n
 * sequences, into *ns_out. Returns 0, or -1 on a zero n or iters, repeats
 * outside 1..1000, or no memory (*ns_out unchanged). Allocates and frees
 * about 5 KiB per sequence. */
int sched_ideal_ns(uint32_t n, uint32_t iters, int repeats, double *ns_out);

#endif
