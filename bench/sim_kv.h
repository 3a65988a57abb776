/*
 * sim_kv.h - kvrt-sim's KV memory: one block pool (and prefix cache) per
 * cache group, and the scheduler over them.
 *
 * A plain model has one group: every layer, full attention, the whole of
 * --kv-gb. A hybrid model (--sliding-window W with --window-layers of the
 * layers reading only the last W positions, as Gemma 2/3, gpt-oss and
 * Mistral do) has two: group 0 the full-attention layers, group 1 the
 * window layers, each with its own pool, block size and cache. When every
 * layer reads a window there is one group, a window group.
 *
 * The two pools split --kv-gb: the window group gets --window-kv-gb, by
 * default its layers' share (window_layers / num_layers), the full-attention
 * group the rest. At that share each group holds as many tokens as one
 * pool of full-size K/V would. Under memory pressure the window group
 * still loses some prefix hits that pool keeps: its blocks become
 * evictable as they leave the window, before their request ends (they
 * count as released when it ends, but may be gone by then). Less memory
 * for the window group buys the full-attention group room for more
 * requests and costs the window group more of the cached blocks a hit
 * needs (docs/simulator.md, "Hybrid models", measures both).
 *
 * With window_kv_shared (--shared-kv) the groups share one pool and one
 * prefix cache instead, as vLLM's hybrid allocator does: no split decided
 * in advance, one eviction order over every group's cached blocks. A
 * shared pool's blocks hold the same bytes in every group, so the layers
 * are split into groups of as many layers as the smaller kind has
 * (Gemma 3's 5:1 makes one full and five window groups; 28 full layers
 * and 4 window ones, seven full and one window group); when that makes
 * more groups than kvrt's limit, every group gets more layers and the
 * last of each kind is padded. Padding costs memory, never compute.
 *
 * With window_kv_full (the comparison run) the model and its cost are the
 * same but the engine holds every layer's K/V for every token in one
 * full-attention group, as an engine without a hybrid allocator does.
 *
 * The pools live at made-up addresses: kvrt only computes addresses in
 * them.
 */
#ifndef KVRT_BENCH_SIM_KV_H
#define KVRT_BENCH_SIM_KV_H

#include <stddef.h>
#include <stdint.h>

#include "kvrt/kvrt.h"

struct sim_config;

#define SIM_KV_MAX_GROUPS KVRT_SCHED_MAX_GROUPS

/* One cache group. With a shared pool, group 0's pool fields (num_blocks,
 * block_bytes, peak_used_blocks) describe the one pool, and every group's
 * pool and cache are group 0's. */
typedef struct sim_kv_group {
    uint32_t layers;            /* the model's layers whose K/V the group holds */
    uint32_t block_tokens;
    uint32_t sliding_window;    /* 0: full attention */
    uint32_t num_blocks;        /* kvrt's null block included */
    uint64_t block_bytes;       /* fp16 K and V of the group's layers (shared:
                                   of group_layers, padding included) */
    uint32_t peak_used_blocks;
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;        /* NULL without the prefix cache */
} sim_kv_group_t;

typedef struct sim_kv {
    uint32_t num_groups;
    int shared;                 /* every group in group 0's pool */
    uint32_t group_layers;      /* shared: layers each block holds */
    sim_kv_group_t groups[SIM_KV_MAX_GROUPS];
} sim_kv_t;

/* Bytes of one block: fp16 K and V of `layers` layers for block_tokens. */
uint64_t sim_kv_block_bytes(const struct sim_config *config, uint32_t layers,
                            uint32_t block_tokens);

/*
 * Lays out the groups of a configuration (layers, block sizes, windows and
 * block counts; no kvrt object). Returns 0, or -1 with a message (a group
 * that would hold fewer than 16 blocks, --window-kv-gb not below --kv-gb,
 * a shared pool with nothing to share or split, or of two block sizes).
 */
int sim_kv_plan(const struct sim_config *config, sim_kv_t *kv, char *error,
                size_t error_size);

/*
 * Creates each group's pool and, with the prefix cache, its cache, then the
 * scheduler over them (params as for kvrt_sched_create). Returns KVRT_OK,
 * or kvrt's status with *call_out naming the call that failed; whatever was
 * created is released by sim_kv_close either way.
 */
kvrt_status_t sim_kv_open(sim_kv_t *kv, kvrt_ctx_t *ctx, const struct sim_config *config,
                          const kvrt_sched_params_t *params, kvrt_sched_t **sched_out,
                          const char **call_out);

/* The pools: every group's own, or the one group 0 holds for all. */
static inline uint32_t sim_kv_num_pools(const sim_kv_t *kv)
{
    return kv->shared ? 1u : kv->num_groups;
}

/* Records each pool's use after a step (the peaks). */
void sim_kv_sample(sim_kv_t *kv);

/*
 * After every request ended: each pool verified and empty. Returns 0, or -1
 * with a message.
 */
int sim_kv_check_empty(sim_kv_t *kv, kvrt_ctx_t *ctx, char *error, size_t error_size);

/* Sums the groups' cache evictions. */
uint64_t sim_kv_evictions(const sim_kv_t *kv);

/* Destroys the caches (the pools go with the context). NULL-safe. */
void sim_kv_close(sim_kv_t *kv);

#endif /* KVRT_BENCH_SIM_KV_H */
