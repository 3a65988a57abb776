/*
 * sim_kv.c - kvrt-sim's KV memory per cache group (see sim_kv.h).
 */
#include "sim_kv.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>

#include "sim_engine.h"

/* Made-up engine memory: each group's pool after the previous one's. */
#define SIM_KV_BASE 0x100000000ull

uint64_t sim_kv_block_bytes(const sim_config_t *c, uint32_t layers, uint32_t block_tokens)
{
    /* fp16 K and V of `layers` layers for block_tokens tokens. */
    return (uint64_t)layers * 2u * c->num_kv_heads * c->head_dim * 2u * block_tokens;
}

static uint32_t blocks_in(double bytes, uint64_t block)
{
    double n = block ? floor(bytes / (double)block) : 0.0;
    return n > 2147483647.0 ? 2147483647u : n < 0.0 ? 0u : (uint32_t)n;
}

/* One pool for every group (see sim_kv.h). */
static int plan_shared(const sim_config_t *c, sim_kv_t *kv, char *error, size_t error_size)
{
    const uint32_t full = c->num_layers - c->window_layers, window = c->window_layers;
    if (c->window_kv_gb > 0.0) {
        snprintf(error, error_size, "--window-kv-gb splits the KV memory and --shared-kv "
                                    "shares it: one or the other");
        return -1;
    }
    if (c->window_block_tokens && c->window_block_tokens != c->block_tokens) {
        snprintf(error, error_size, "groups sharing a pool have one block size: "
                                    "--window-block-tokens must be --block-tokens");
        return -1;
    }
    /* As many layers per group as the smaller kind has, unless that makes
     * more groups than kvrt takes: then fewer, larger groups (the last of
     * each kind padded). */
    uint32_t per_group = full < window ? full : window;
    while ((full + per_group - 1) / per_group + (window + per_group - 1) / per_group >
           SIM_KV_MAX_GROUPS)
        per_group++;
    const uint32_t fulls = (full + per_group - 1) / per_group;
    kv->shared = 1;
    kv->group_layers = per_group;
    kv->num_groups = fulls + (window + per_group - 1) / per_group;
    const uint64_t block_bytes = sim_kv_block_bytes(c, per_group, c->block_tokens);
    for (uint32_t i = 0, left = full; i < kv->num_groups; i++) {
        if (i == fulls)
            left = window;
        uint32_t layers = left < per_group ? left : per_group;
        kv->groups[i] = (sim_kv_group_t){.layers = layers, .block_tokens = c->block_tokens,
                                         .block_bytes = block_bytes,
                                         .sliding_window = i < fulls ? 0 : c->sliding_window};
        left -= layers;
    }
    kv->groups[0].num_blocks = blocks_in(c->kv_gb * 1e9, block_bytes);
    return 0;
}

int sim_kv_plan(const sim_config_t *c, sim_kv_t *kv, char *error, size_t error_size)
{
    *kv = (sim_kv_t){0};
    double bytes = c->kv_gb * 1e9;
    bool hybrid = c->sliding_window && !c->window_kv_full;
    if (hybrid && c->window_kv_shared && c->window_layers == c->num_layers) {
        snprintf(error, error_size, "with a window on every layer there is one group: "
                                    "nothing to share a pool with");
        return -1;
    }
    if (hybrid && c->window_kv_shared) {
        if (plan_shared(c, kv, error, error_size) != 0)
            return -1;
    } else if (!hybrid || c->window_layers == c->num_layers) {
        if (hybrid && c->window_kv_gb > 0.0) {
            snprintf(error, error_size, "with a window on every layer there is one group: "
                                        "the window KV memory is the KV memory");
            return -1;
        }
        /* One group: every layer, the whole memory. */
        sim_kv_group_t *g = &kv->groups[0];
        g->layers = c->num_layers;
        g->block_tokens = hybrid && c->window_block_tokens ? c->window_block_tokens
                                                            : c->block_tokens;
        g->sliding_window = hybrid ? c->sliding_window : 0;
        g->block_bytes = sim_kv_block_bytes(c, g->layers, g->block_tokens);
        g->num_blocks = blocks_in(bytes, g->block_bytes);
        kv->num_groups = 1;
    } else {
        sim_kv_group_t *full = &kv->groups[0], *win = &kv->groups[1];
        *full = (sim_kv_group_t){.layers = c->num_layers - c->window_layers,
                                 .block_tokens = c->block_tokens};
        *win = (sim_kv_group_t){.layers = c->window_layers,
                                .block_tokens = c->window_block_tokens ? c->window_block_tokens
                                                                       : c->block_tokens,
                                .sliding_window = c->sliding_window};
        full->block_bytes = sim_kv_block_bytes(c, full->layers, full->block_tokens);
        win->block_bytes = sim_kv_block_bytes(c, win->layers, win->block_tokens);
        if (c->window_kv_gb > 0.0 && !(c->window_kv_gb < c->kv_gb)) {
            snprintf(error, error_size, "window KV memory (%g GB) must be below the KV "
                                        "memory (%g GB)", c->window_kv_gb, c->kv_gb);
            return -1;
        }
        win->num_blocks = c->window_kv_gb > 0.0 ? blocks_in(c->window_kv_gb * 1e9,
                                                            win->block_bytes)
                                                : blocks_in(bytes * win->layers /
                                                                c->num_layers,
                                                            win->block_bytes);
        full->num_blocks = blocks_in(bytes - (double)win->num_blocks *
                                                 (double)win->block_bytes,
                                     full->block_bytes);
        kv->num_groups = 2;
    }
    for (uint32_t i = 0; i < sim_kv_num_pools(kv); i++) {
        if (kv->groups[i].num_blocks < 16) {
            snprintf(error, error_size, "the %s KV memory holds %u blocks (at least 16 needed)",
                     kv->shared                    ? "shared"
                     : kv->groups[i].sliding_window ? "sliding-window"
                                                    : "full-attention",
                     kv->groups[i].num_blocks);
            return -1;
        }
    }
    return 0;
}

static kvrt_status_t open_group(sim_kv_group_t *g, uint32_t index, uint32_t layers,
                                uint64_t base, kvrt_ctx_t *ctx, const sim_config_t *c,
                                const char **call_out)
{
    kvrt_pool_params_t pp = {
        .field_mask = KVRT_POOL_PARAM_BASE | KVRT_POOL_PARAM_NAME,
        .layout = {.num_layers = layers, .num_kv_heads = c->num_kv_heads,
                   .head_dim = c->head_dim, .tokens_per_block = g->block_tokens},
        .num_blocks = g->num_blocks,
        .base = (void *)(uintptr_t)base,
        .base_bytes = (uint64_t)g->num_blocks * g->block_bytes,
        .name = index ? "sim-gpu-window" : "sim-gpu",
    };
    kvrt_status_t st;
    *call_out = "kvrt_pool_create";
    if ((st = kvrt_pool_create(ctx, &pp, &g->pool)) != KVRT_OK || !c->prefix_cache)
        return st;
    kvrt_cache_params_t cp = {.field_mask = KVRT_CACHE_PARAM_POLICY |
                                            KVRT_CACHE_PARAM_FINGERPRINT,
                              .policy = c->cache_policy};
    *call_out = "kvrt_cache_create";
    if ((st = kvrt_model_fingerprint("meta-llama/Llama-3.1-8B-Instruct", &pp.layout,
                                     &cp.model_fingerprint)) != KVRT_OK)
        return st;
    return kvrt_cache_create(g->pool, &cp, &g->cache);
}

kvrt_status_t sim_kv_open(sim_kv_t *kv, kvrt_ctx_t *ctx, const sim_config_t *c,
                          const kvrt_sched_params_t *params, kvrt_sched_t **sched_out,
                          const char **call_out)
{
    uint64_t base = SIM_KV_BASE;
    kvrt_status_t st;
    for (uint32_t i = 0; i < sim_kv_num_pools(kv); i++) {
        sim_kv_group_t *g = &kv->groups[i];
        if ((st = open_group(g, i, kv->shared ? kv->group_layers : g->layers, base, ctx, c,
                             call_out)) != KVRT_OK)
            return st;
        base += (uint64_t)g->num_blocks * g->block_bytes;
    }
    for (uint32_t i = 1; kv->shared && i < kv->num_groups; i++) {
        kv->groups[i].pool = kv->groups[0].pool;
        kv->groups[i].cache = kv->groups[0].cache;
    }
    *call_out = "kvrt_sched_create";
    const sim_kv_group_t *g0 = &kv->groups[0];
    if (kv->num_groups == 1 && !g0->sliding_window)
        return kvrt_sched_create(ctx, g0->pool, g0->cache, params, sched_out);
    kvrt_sched_group_params_t groups[SIM_KV_MAX_GROUPS];
    const kvrt_sched_group_params_t *list[SIM_KV_MAX_GROUPS];
    for (uint32_t i = 0; i < kv->num_groups; i++) {
        const sim_kv_group_t *g = &kv->groups[i];
        groups[i] = (kvrt_sched_group_params_t){
            .field_mask = KVRT_SCHED_GROUP_CACHE | KVRT_SCHED_GROUP_WINDOW,
            .pool = g->pool, .cache = g->cache, .sliding_window = g->sliding_window};
        list[i] = &groups[i];
    }
    *call_out = "kvrt_sched_create_groups";
    return kvrt_sched_create_groups(ctx, kv->num_groups, list, params, sched_out);
}

void sim_kv_sample(sim_kv_t *kv)
{
    for (uint32_t i = 0; i < sim_kv_num_pools(kv); i++) {
        kvrt_pool_info_t info;
        kvrt_pool_info(kv->groups[i].pool, &info);
        if (info.used_blocks > kv->groups[i].peak_used_blocks)
            kv->groups[i].peak_used_blocks = info.used_blocks;
    }
}

int sim_kv_check_empty(sim_kv_t *kv, kvrt_ctx_t *ctx, char *error, size_t error_size)
{
    for (uint32_t i = 0; i < sim_kv_num_pools(kv); i++) {
        kvrt_status_t st = kvrt_pool_verify(kv->groups[i].pool);
        if (st != KVRT_OK) {
            snprintf(error, error_size, "kvrt_pool_verify (group %u): %s (%s)", i,
                     kvrt_status_str(st), kvrt_ctx_last_error(ctx));
            return -1;
        }
        kvrt_pool_info_t info;
        kvrt_pool_info(kv->groups[i].pool, &info);
        if (info.used_blocks != 0) {
            snprintf(error, error_size, "%u KV blocks%s still in use after every request "
                                        "ended", info.used_blocks,
                     sim_kv_num_pools(kv) > 1 ? (i ? " of the window group"
                                                   : " of the full group")
                                              : "");
            return -1;
        }
    }
    return 0;
}

uint64_t sim_kv_evictions(const sim_kv_t *kv)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < sim_kv_num_pools(kv); i++) {
        if (kv->groups[i].cache) {
            kvrt_cache_stats_t cs;
            kvrt_cache_stats(kv->groups[i].cache, &cs);
            n += cs.evictions;
        }
    }
    return n;
}

void sim_kv_close(sim_kv_t *kv)
{
    for (uint32_t i = 0; kv && i < kv->num_groups; i++) {
        if (i < sim_kv_num_pools(kv))
            kvrt_cache_destroy(kv->groups[i].cache);
        kv->groups[i].cache = NULL;
    }
}
