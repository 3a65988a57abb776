/*
 * replay.h - kvrt-replay's parts (bench/replay*.c): one replay's result and
 * the replays that do not run through kvrt's cache.
 */
#ifndef KVRT_BENCH_REPLAY_H
#define KVRT_BENCH_REPLAY_H

#include <stdbool.h>
#include <stdint.h>

#include "kvrt/kvrt.h"
#include "kvrt/tier.h"
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
    uint64_t hit_blocks_by_tier[3]; /* gpu (the pool), host, ssd */
    bool tiers;
    double seconds;
} replay_result_t;

/* --host-capacity / --ssd-capacity / --ssd-dir (replay_tier.c). */
typedef struct replay_tiers {
    uint32_t host_blocks; /* 0: no tiers */
    uint32_t ssd_blocks;  /* 0: no SSD tier */
    const char *ssd_dir;  /* NULL: /tmp */
} replay_tiers_t;

typedef struct replay_tier {
    kvrt_tier_t *tier;
    char dir[512];        /* the SSD tier's own directory, removed at close */
} replay_tier_t;

kvrt_status_t replay_tier_open(kvrt_cache_t *cache, const replay_tiers_t *opts,
                               replay_tier_t *out);
void replay_tier_close(replay_tier_t *t);
/* The pool's hits, then onload of what continues below and a wait for it:
 * blocks[0..*hits_out) are held (pool hits and landed blocks), hashes[] the
 * content hashes of at least those; by_tier[] gains each tier's share. */
kvrt_status_t replay_tier_match(replay_tier_t *t, kvrt_pool_t *pool, const int32_t *tokens,
                                uint32_t n, int32_t *blocks, kvrt_block_hash_t *hashes,
                                uint32_t *hits_out, uint64_t by_tier[3]);
kvrt_status_t replay_tier_poll(replay_tier_t *t);

/* Belady's MIN with prefix semantics over the whole trace (replay_belady.c):
 * the most hits any eviction policy can get at this capacity. Returns 0, or
 * -1 when out of memory. */
int replay_belady(const trace_t *trace, uint32_t capacity, replay_result_t *out);

#endif /* KVRT_BENCH_REPLAY_H */
