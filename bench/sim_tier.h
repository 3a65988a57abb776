/*
 * sim_tier.h - kvrt-sim's model of the tiers below the GPU (--host-gb,
 * --ssd-gb): which blocks the host-DRAM and SSD tiers hold, and how long
 * bringing a prefix back from them takes.
 *
 * What is real: the prefix cache's eviction sink hands every block the GPU
 * cache evicts to the model (as it hands it to kvrt's tier, runtime/tier),
 * the model keeps the blocks' names in the tier's own slot directories
 * (runtime/tier/slot_dir.c: LRU per tier, host overflow written back to
 * SSD, SSD evicting its least recently used block), and an admitted request
 * whose prompt continues below the GPU goes through the scheduler's
 * "waiting for KV" path (kvrt_seq_await_kv, kvrt_arrival_complete) as
 * kvrt_tier_admit does it. What is modeled: the bytes. An onload takes
 *
 *     SSD stage   ssd_latency + ssd_blocks x block bytes / ssd bandwidth
 *     host stage  host_latency + (host + ssd blocks) x block bytes / host bandwidth
 *
 * each stage a FIFO link (one transfer at a time, the next queued behind
 * it), so concurrent onloads share the bandwidth. An onload that would
 * take longer than computing its tokens (prefill_us_per_token each, a lower
 * bound of a prefill) is not started: the request recomputes, as an engine
 * would choose. Offload is assumed to keep up with evictions (the real
 * tier drops what it cannot take; its rates are in docs/benchmarks.md).
 */
#ifndef KVRT_BENCH_SIM_TIER_H
#define KVRT_BENCH_SIM_TIER_H

#include <stddef.h>
#include <stdint.h>

#include "kvrt/kvrt.h"

typedef struct sim_tier_config {
    double host_gb, ssd_gb;   /* tier sizes, 10^9 bytes; 0: no such tier */
    double host_gbps;         /* host <-> GPU, 10^9 bytes/s (PCIe 5 x16, effective) */
    double host_latency_us;   /* fixed cost of one host -> GPU onload */
    double ssd_gbps;          /* SSD read, 10^9 bytes/s (one NVMe drive) */
    double ssd_latency_us;    /* fixed cost of one SSD read */
} sim_tier_config_t;

/* kvrt-sim's defaults (docs/simulator.md): no tiers, and the link figures
 * used when they are turned on. */
sim_tier_config_t sim_tier_config_default(void);

/* 0, or -1 with a message: sizes >= 0, SSD only under a host tier,
 * bandwidths > 0, latencies >= 0. */
int sim_tier_config_validate(const sim_tier_config_t *c, char *error, size_t error_size);

typedef struct sim_tier_results {
    int enabled;
    uint32_t host_blocks, ssd_blocks; /* capacity */
    uint64_t offloaded_blocks;        /* GPU evictions taken by the host tier */
    uint64_t written_back_blocks;     /* host -> SSD */
    uint64_t host_hit_blocks, ssd_hit_blocks; /* brought back, per tier */
    uint64_t onloads;                 /* requests that waited for KV */
    uint64_t recompute_cheaper;       /* onloads not started: recomputing is faster */
    uint64_t no_room;                 /* onloads not started: no GPU blocks free */
    double onload_ms_mean, onload_ms_max; /* admission to landed, queueing included */
} sim_tier_results_t;

typedef struct sim_tier sim_tier_t;

/*
 * Attaches the model under `cache` (its eviction sink) for requests of
 * `sched`. *out is NULL when the configuration has no tier. block_bytes is
 * one block's KV; prefill_us_per_token the cost model's compute per token.
 */
int sim_tier_open(const sim_tier_config_t *config, kvrt_cache_t *cache, kvrt_sched_t *sched,
                  uint64_t block_bytes, double prefill_us_per_token, sim_tier_t **out,
                  char *error, size_t error_size);
void sim_tier_close(sim_tier_t *tier);

/* A request just added (queued): when its prompt continues below the GPU
 * cache, starts the onload that brings those blocks back. 0, or -1 with a
 * message when kvrt refused something it should not have. */
int sim_tier_admit(sim_tier_t *tier, kvrt_seq_id_t id, const int32_t *prompt,
                   uint32_t prompt_len, double now_us, char *error, size_t error_size);

/* Completes the onloads that have landed by now_us (the requests become
 * schedulable with those blocks computed). */
int sim_tier_land(sim_tier_t *tier, double now_us, char *error, size_t error_size);

/* When the next onload lands; INFINITY when none is in flight. */
double sim_tier_next_us(const sim_tier_t *tier);

void sim_tier_results(const sim_tier_t *tier, sim_tier_results_t *out);

#endif /* KVRT_BENCH_SIM_TIER_H */
