/*
 * pull.c - whether to pull a prefix from a peer instead of recomputing it:
 * the directory says which node holds the longest prefix of a prompt, and
 * the cost model compares moving its extra blocks with prefilling their
 * tokens. The move itself is a hand-off whose sender is the peer
 * (kvrt_cluster_pull_serve); a peer found lacking blocks it announced loses
 * those entries (kvrt_cluster_pull_forget).
 */
#include <math.h>

#include "cluster_internal.h"

KVRT_EXPORT kvrt_status_t kvrt_cluster_pull_plan(const kvrt_cluster_dir_t *dir,
                                                 const kvrt_block_hash_t *model,
                                                 uint64_t local_node, const kvrt_block_hash_t *keys,
                                                 uint32_t num_keys,
                                                 const kvrt_cluster_pull_cost_t *cost,
                                                 kvrt_cluster_pull_plan_t *plan_out)
{
    kvrt_ctx_t *ctx = dir ? cluster_dir_ctx(dir) : NULL;
    if (!dir || !model || (!keys && num_keys > 0) || !cost || !plan_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "NULL argument");
    const uint64_t known = KVRT_PULL_COST_NET_GBPS | KVRT_PULL_COST_LATENCY |
                           KVRT_PULL_COST_PREFILL | KVRT_PULL_COST_TIER_MASK;
    uint64_t m = cost->field_mask;
    if (m & ~known)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(m & ~known));
    double gbps = (m & KVRT_PULL_COST_NET_GBPS) ? cost->net_gbps : 200.0;
    double latency_us = (m & KVRT_PULL_COST_LATENCY) ? cost->latency_us : 20.0;
    double prefill_us = (m & KVRT_PULL_COST_PREFILL) ? cost->prefill_us_per_token : 40.0;
    uint32_t tiers = (m & KVRT_PULL_COST_TIER_MASK) ? cost->tier_mask : 1u << KVRT_KV_TIER_GPU;
    if (!(gbps > 0) || !isfinite(gbps) || !(latency_us >= 0) || !isfinite(latency_us) ||
        !(prefill_us >= 0) || !isfinite(prefill_us))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "net_gbps must be > 0, latency and prefill cost >= 0, all finite");
    if (cost->block_bytes == 0 || cost->tokens_per_block == 0 || tiers == 0 ||
        (tiers & ~KVRT_KV_TIER_MASK_ALL))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "block_bytes and tokens_per_block > 0, tier_mask within 0x%x",
                         KVRT_KV_TIER_MASK_ALL);
    kvrt_cluster_match_t matches[KVRT_CLUSTER_MAX_NODES];
    uint32_t count = 0;
    kvrt_status_t st = kvrt_cluster_dir_match(dir, model, keys, num_keys, tiers, matches,
                                              KVRT_CLUSTER_MAX_NODES, &count);
    if (st != KVRT_OK)
        return st;
    kvrt_cluster_pull_plan_t plan = {0};
    for (uint32_t i = 0; i < count; i++) {
        if (matches[i].node_id == local_node)
            plan.local_blocks = matches[i].prefix_blocks;
        else if (matches[i].prefix_blocks > plan.peer_blocks ||
                 (matches[i].prefix_blocks == plan.peer_blocks && plan.node_id != 0 &&
                  matches[i].node_id < plan.node_id)) {
            /* Ties go to the lower id, so every node picks the same source. */
            plan.node_id = matches[i].node_id;
            plan.peer_blocks = matches[i].prefix_blocks;
        }
    }
    if (plan.peer_blocks > plan.local_blocks) {
        double blocks = (double)(plan.peer_blocks - plan.local_blocks);
        plan.transfer_us = latency_us + blocks * (double)cost->block_bytes * 8.0 / (gbps * 1e3);
        plan.recompute_us = blocks * (double)cost->tokens_per_block * prefill_us;
        plan.worth = plan.transfer_us < plan.recompute_us;
    } else {
        plan.node_id = 0;
        plan.peer_blocks = 0;
    }
    *plan_out = plan;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_pull_forget(kvrt_cluster_dir_t *dir, uint64_t node_id,
                                                   const kvrt_block_hash_t *keys, uint32_t num_keys,
                                                   const kvrt_handoff_completion_t *completion)
{
    if (!dir || !completion || (!keys && num_keys > 0))
        return kvrt_fail(dir ? cluster_dir_ctx(dir) : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    /* Only a source that answered (and gave up) proved it lacks the rest;
     * one that timed out may just be slow or gone, which membership
     * handles. */
    if (completion->status != KVRT_ERR_CANCELED || completion->landed_blocks >= completion->blocks)
        return KVRT_OK;
    uint64_t from = (uint64_t)completion->first_block + completion->landed_blocks;
    uint64_t to = (uint64_t)completion->first_block + completion->blocks;
    if (from >= num_keys)
        return KVRT_OK;
    if (to > num_keys)
        to = num_keys;
    return kvrt_cluster_dir_forget(dir, node_id, keys + from, (uint32_t)(to - from));
}
