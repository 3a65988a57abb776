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

/* The cost model with its defaults filled in. */
typedef struct pull_model {
    double bits; /* one block */
    double tokens_per_block;
    double net_gbps, latency_us, prefill_us;
    double host_gbps, host_latency_us, disk_gbps, disk_latency_us;
    uint32_t tiers;
} pull_model_t;

static bool rate_ok(double gbps)
{
    return gbps > 0 && isfinite(gbps);
}

static bool cost_ok(double us)
{
    return us >= 0 && isfinite(us);
}

static kvrt_status_t model_of(kvrt_ctx_t *ctx, const kvrt_cluster_pull_cost_t *cost,
                              pull_model_t *m)
{
    const uint64_t known = KVRT_PULL_COST_NET_GBPS | KVRT_PULL_COST_LATENCY |
                           KVRT_PULL_COST_PREFILL | KVRT_PULL_COST_TIER_MASK | KVRT_PULL_COST_HOST |
                           KVRT_PULL_COST_DISK;
    uint64_t f = cost->field_mask;
    if (f & ~known)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(f & ~known));
    *m = (pull_model_t){
        .bits = (double)cost->block_bytes * 8.0,
        .tokens_per_block = cost->tokens_per_block,
        .net_gbps = (f & KVRT_PULL_COST_NET_GBPS) ? cost->net_gbps : 200.0,
        .latency_us = (f & KVRT_PULL_COST_LATENCY) ? cost->latency_us : 20.0,
        .prefill_us = (f & KVRT_PULL_COST_PREFILL) ? cost->prefill_us_per_token : 40.0,
        .host_gbps = (f & KVRT_PULL_COST_HOST) ? cost->host_gbps : 400.0,
        .host_latency_us = (f & KVRT_PULL_COST_HOST) ? cost->host_latency_us : 10.0,
        .disk_gbps = (f & KVRT_PULL_COST_DISK) ? cost->disk_gbps : 50.0,
        .disk_latency_us = (f & KVRT_PULL_COST_DISK) ? cost->disk_latency_us : 100.0,
        .tiers = (f & KVRT_PULL_COST_TIER_MASK) ? cost->tier_mask : KVRT_KV_TIER_MASK_ALL};
    if (!rate_ok(m->net_gbps) || !rate_ok(m->host_gbps) || !rate_ok(m->disk_gbps) ||
        !cost_ok(m->latency_us) || !cost_ok(m->host_latency_us) || !cost_ok(m->disk_latency_us) ||
        !cost_ok(m->prefill_us))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "bandwidths must be > 0, latencies and prefill cost >= 0, all finite");
    if (cost->block_bytes == 0 || cost->tokens_per_block == 0 || m->tiers == 0 ||
        (m->tiers & ~KVRT_KV_TIER_MASK_ALL))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "block_bytes and tokens_per_block > 0, tier_mask within 0x%x",
                         KVRT_KV_TIER_MASK_ALL);
    return KVRT_OK;
}

static double transfer_us(const pull_model_t *m, const uint32_t blocks[KVRT_KV_TIERS])
{
    double all =
        (double)blocks[KVRT_KV_TIER_GPU] + blocks[KVRT_KV_TIER_HOST] + blocks[KVRT_KV_TIER_DISK];
    double below = (double)blocks[KVRT_KV_TIER_HOST] + blocks[KVRT_KV_TIER_DISK];
    double disk = blocks[KVRT_KV_TIER_DISK];
    double us = m->latency_us + all * m->bits / (m->net_gbps * 1e3);
    /* The peer brings what is below its pool back first: SSD -> host ->
     * pool, then the network. */
    if (below > 0)
        us += m->host_latency_us + below * m->bits / (m->host_gbps * 1e3);
    if (disk > 0)
        us += m->disk_latency_us + disk * m->bits / (m->disk_gbps * 1e3);
    return us;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_pull_cost_us(const kvrt_cluster_pull_cost_t *cost,
                                                    const uint32_t blocks[KVRT_KV_TIERS],
                                                    double *transfer_us_out,
                                                    double *recompute_us_out)
{
    if (!cost || !blocks)
        return kvrt_fail(NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    pull_model_t m = {0};
    kvrt_status_t st = model_of(NULL, cost, &m);
    if (st != KVRT_OK)
        return st;
    double all = (double)blocks[0] + blocks[1] + blocks[2];
    if (transfer_us_out)
        *transfer_us_out = transfer_us(&m, blocks);
    if (recompute_us_out)
        *recompute_us_out = all * m.tokens_per_block * m.prefill_us;
    return KVRT_OK;
}

static uint32_t clamp(uint32_t v, uint32_t lo, uint32_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

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
    pull_model_t m = {0};
    kvrt_status_t st = model_of(ctx, cost, &m);
    if (st != KVRT_OK)
        return st;
    kvrt_cluster_match_t matches[KVRT_CLUSTER_MAX_NODES];
    uint32_t count = 0;
    st = kvrt_cluster_dir_match(dir, model, keys, num_keys, m.tiers, matches,
                                KVRT_CLUSTER_MAX_NODES, &count);
    if (st != KVRT_OK)
        return st;
    kvrt_cluster_pull_plan_t plan = {0};
    uint32_t peer_gpu = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (matches[i].node_id == local_node)
            plan.local_blocks = matches[i].prefix_blocks;
        else if (matches[i].prefix_blocks > plan.peer_blocks ||
                 (matches[i].prefix_blocks == plan.peer_blocks && plan.node_id != 0 &&
                  matches[i].node_id < plan.node_id)) {
            /* Ties go to the lower id, so every node picks the same source. */
            plan.node_id = matches[i].node_id;
            plan.peer_blocks = matches[i].prefix_blocks;
            peer_gpu = matches[i].gpu_prefix_blocks;
        }
    }
    if (plan.peer_blocks <= plan.local_blocks) {
        plan.node_id = 0;
        plan.peer_blocks = 0;
        *plan_out = plan;
        return KVRT_OK;
    }
    /* Where the run comes from: the peer's GPU run, then what continues in
     * host memory, then the rest (on SSD). */
    uint32_t upper = m.tiers & ((1u << KVRT_KV_TIER_GPU) | (1u << KVRT_KV_TIER_HOST));
    uint32_t peer_upper = (m.tiers & (1u << KVRT_KV_TIER_GPU)) ? peer_gpu : 0;
    if (upper & (1u << KVRT_KV_TIER_HOST)) {
        st = kvrt_cluster_dir_match(dir, model, keys, plan.peer_blocks, upper, matches,
                                    KVRT_CLUSTER_MAX_NODES, &count);
        if (st != KVRT_OK)
            return st;
        for (uint32_t i = 0; i < count; i++)
            if (matches[i].node_id == plan.node_id)
                peer_upper = matches[i].prefix_blocks;
    }
    if (!(m.tiers & (1u << KVRT_KV_TIER_GPU)))
        peer_gpu = 0;
    uint32_t gpu_end = clamp(peer_gpu, plan.local_blocks, plan.peer_blocks);
    uint32_t host_end = clamp(peer_upper, gpu_end, plan.peer_blocks);
    plan.tier_blocks[KVRT_KV_TIER_GPU] = gpu_end - plan.local_blocks;
    plan.tier_blocks[KVRT_KV_TIER_HOST] = host_end - gpu_end;
    plan.tier_blocks[KVRT_KV_TIER_DISK] = plan.peer_blocks - host_end;
    plan.transfer_us = transfer_us(&m, plan.tier_blocks);
    plan.recompute_us =
        (double)(plan.peer_blocks - plan.local_blocks) * m.tokens_per_block * m.prefill_us;
    plan.worth = plan.transfer_us < plan.recompute_us;
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
