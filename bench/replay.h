/*
 * replay.h - kvrt-replay's parts (bench/replay*.c): one replay's result and
 * the replays that do not run through kvrt's cache.
 */
#ifndef KVRT_BENCH_REPLAY_H
#define KVRT_BENCH_REPLAY_H

#include <stdbool.h>
#include <stdint.h>

#include "trace.h"

#define REPLAY_UNBOUNDED 0u

typedef struct replay_result {
    const char *policy;
    uint32_t capacity; /* REPLAY_UNBOUNDED or blocks */
    uint64_t hit_blocks;
    uint64_t total_blocks;
    uint64_t evictions;
    uint64_t miss_evicted_blocks;
    uint64_t miss_never_cached_blocks;
    double seconds;
} replay_result_t;

/* Belady's MIN with prefix semantics over the whole trace (replay_belady.c):
 * the most hits any eviction policy can get at this capacity. Returns 0, or
 * -1 when out of memory. */
int replay_belady(const trace_t *trace, uint32_t capacity, replay_result_t *out);

#endif /* KVRT_BENCH_REPLAY_H */
