/*
 * router.c - choosing a node for a request: round-robin, least-loaded, or
 * cache-aware over the prefix directory (kvrt/cluster.h, docs/cluster.md).
 *
 * Cost of sending a prompt to node n (in prefill-token units):
 *   least-loaded  w_p * queued_prefill(n) + w_d * running_decodes(n)
 *   cache-aware   w_p * (uncached(n) + queued_prefill(n)) + w_d * running_decodes(n)
 * where uncached(n) = prompt tokens - tokens of the longest prefix n holds.
 * This is Dynamo's KV router cost (overlap-weighted prefill plus decode
 * load) with the prefill queue added, so a node that holds the prefix but
 * has a long queue loses to an idle one once the queue costs more than the
 * recomputation.
 */
#include <math.h>
#include <stdlib.h>

#include "cluster/cluster_internal.h"

struct kvrt_cluster_router {
    kvrt_cluster_dir_t *dir;
    kvrt_cluster_router_params_t p;
    uint64_t next; /* round-robin position */
};

KVRT_EXPORT kvrt_status_t kvrt_cluster_router_create(kvrt_cluster_dir_t *dir,
                                                     const kvrt_cluster_router_params_t *params,
                                                     kvrt_cluster_router_t **router_out)
{
    if (!dir || !router_out)
        return dir ? kvrt_fail(cluster_dir_ctx(dir), KVRT_ERR_INVALID_ARG,
                               "router_out is required")
                   : KVRT_ERR_INVALID_ARG;
    kvrt_ctx_t *ctx = cluster_dir_ctx(dir);
    kvrt_cluster_router_params_t in = {0};
    if (params)
        in = *params;
    const uint64_t known = KVRT_ROUTER_PARAM_POLICY | KVRT_ROUTER_PARAM_PREFILL_WEIGHT |
                           KVRT_ROUTER_PARAM_DECODE_WEIGHT | KVRT_ROUTER_PARAM_TOKENS_PER_BLOCK |
                           KVRT_ROUTER_PARAM_TIER_MASK;
    if (in.field_mask & ~known)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(in.field_mask & ~known));
    kvrt_cluster_router_params_t p = {.policy = KVRT_ROUTE_CACHE_AWARE, .prefill_weight = 1.0,
                                      .decode_weight = 20.0, .tokens_per_block = 16,
                                      .tier_mask = KVRT_KV_TIER_MASK_ALL};
    if (in.field_mask & KVRT_ROUTER_PARAM_POLICY) {
        if ((unsigned)in.policy > KVRT_ROUTE_CACHE_AWARE)
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown policy %d", (int)in.policy);
        p.policy = in.policy;
    }
    if (in.field_mask & KVRT_ROUTER_PARAM_PREFILL_WEIGHT)
        p.prefill_weight = in.prefill_weight;
    if (in.field_mask & KVRT_ROUTER_PARAM_DECODE_WEIGHT)
        p.decode_weight = in.decode_weight;
    if (!isfinite(p.prefill_weight) || p.prefill_weight < 0 || !isfinite(p.decode_weight) ||
        p.decode_weight < 0)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "weights must be finite and >= 0");
    if (in.field_mask & KVRT_ROUTER_PARAM_TOKENS_PER_BLOCK) {
        if (in.tokens_per_block == 0 || in.tokens_per_block > 4096)
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "tokens_per_block %u outside 1..4096",
                             in.tokens_per_block);
        p.tokens_per_block = in.tokens_per_block;
    }
    if (in.field_mask & KVRT_ROUTER_PARAM_TIER_MASK) {
        if (in.tier_mask == 0 || (in.tier_mask & ~KVRT_KV_TIER_MASK_ALL))
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "tier_mask 0x%x", in.tier_mask);
        p.tier_mask = in.tier_mask;
    }
    kvrt_cluster_router_t *r = calloc(1, sizeof(*r));
    if (!r)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "router");
    r->dir = dir;
    r->p = p;
    *router_out = r;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_router_destroy(kvrt_cluster_router_t *router)
{
    free(router);
    return KVRT_OK;
}

static double node_cost(const kvrt_cluster_router_t *r, uint32_t slot, uint64_t uncached)
{
    const kvrt_cluster_load_t *l = cluster_dir_slot_load(r->dir, slot);
    return r->p.prefill_weight * (double)(uncached + l->queued_prefill_tokens) +
           r->p.decode_weight * (double)l->running_decodes;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_router_pick(kvrt_cluster_router_t *router,
                                                   const kvrt_block_hash_t *model,
                                                   const kvrt_block_hash_t *keys,
                                                   uint32_t num_keys, uint64_t prompt_tokens,
                                                   kvrt_route_choice_t *choice_out)
{
    if (!router || !model || !choice_out || (num_keys > 0 && !keys))
        return router ? kvrt_fail(cluster_dir_ctx(router->dir), KVRT_ERR_INVALID_ARG,
                                  "model, keys and choice_out are required")
                      : KVRT_ERR_INVALID_ARG;
    const kvrt_cluster_dir_t *dir = router->dir;
    kvrt_ctx_t *ctx = cluster_dir_ctx(dir);
    int m = cluster_dir_model_index(dir, model);
    if (m < 0)
        return kvrt_fail(ctx, KVRT_ERR_UNKNOWN_MODEL, "model %016llx%016llx",
                         (unsigned long long)model->hi, (unsigned long long)model->lo);
    uint64_t nodes = cluster_dir_model_nodes(dir, m, false);
    if (!nodes)
        return kvrt_fail(ctx, KVRT_ERR_NOT_FOUND, "no node serves the model now");
    uint32_t prefix[KVRT_CLUSTER_MAX_NODES] = {0};
    cluster_dir_prefixes(dir, m, keys, num_keys, router->p.tier_mask, prefix, NULL);
    uint64_t tpb = router->p.tokens_per_block;
    kvrt_route_choice_t best = {0};
    int best_slot = -1;
    for (uint64_t b = nodes; b; b &= b - 1) {
        int s = __builtin_ctzll(b);
        if (prefix[s] > best.best_blocks || best.best_node_id == 0) {
            best.best_blocks = prefix[s];
            best.best_node_id = cluster_dir_slot_node_id(dir, (uint32_t)s);
        }
    }
    if (router->p.policy == KVRT_ROUTE_ROUND_ROBIN) {
        uint32_t count = (uint32_t)__builtin_popcountll(nodes);
        uint64_t k = router->next++ % count;
        uint64_t b = nodes;
        for (uint64_t i = 0; i < k; i++)
            b &= b - 1;
        best_slot = __builtin_ctzll(b);
        uint64_t cached = (uint64_t)prefix[best_slot] * tpb;
        best.cost = node_cost(router, (uint32_t)best_slot,
                              prompt_tokens > cached ? prompt_tokens - cached : 0);
    } else {
        for (uint64_t b = nodes; b; b &= b - 1) {
            int s = __builtin_ctzll(b);
            uint64_t cached = (uint64_t)prefix[s] * tpb;
            uint64_t uncached = prompt_tokens > cached ? prompt_tokens - cached : 0;
            double cost = node_cost(router, (uint32_t)s,
                                    router->p.policy == KVRT_ROUTE_CACHE_AWARE ? uncached : 0);
            bool better = best_slot < 0 || cost < best.cost;
            if (!better && cost == best.cost) {
                /* More free blocks, then the lower node id: the same choice
                 * on every router, whatever slots their directories gave. */
                uint64_t mine = cluster_dir_slot_load(dir, (uint32_t)s)->free_blocks;
                uint64_t theirs = cluster_dir_slot_load(dir, (uint32_t)best_slot)->free_blocks;
                better = mine > theirs ||
                         (mine == theirs && cluster_dir_slot_node_id(dir, (uint32_t)s) <
                                                cluster_dir_slot_node_id(dir, (uint32_t)best_slot));
            }
            if (better) {
                best_slot = s;
                best.cost = cost;
            }
        }
    }
    best.node_id = cluster_dir_slot_node_id(dir, (uint32_t)best_slot);
    best.cached_blocks = prefix[best_slot];
    *choice_out = best;
    return KVRT_OK;
}
