/*
 * test_cluster_pull_cost.c - the pull cost model: exactly the documented
 * formula per tier (network, then the peer's host copy and SSD read for
 * blocks below its pool), the plan's split of a peer's run by tier from
 * the directory, and bad parameters refused.
 */
#include <math.h>

#include "test_helpers.h"

static kvrt_ctx_t *ctx;
static kvrt_cluster_dir_t *dir;
static const kvrt_block_hash_t model = {1, 2};
static kvrt_block_hash_t keys[16];

static void setup(void)
{
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    ASSERT_OK(ctx, kvrt_cluster_dir_create(ctx, NULL, &dir));
    for (int i = 0; i < 16; i++)
        keys[i] = (kvrt_block_hash_t){(uint64_t)i + 1, 7};
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 1, &model, 11));
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 2, &model, 12));
    /* Node 2: blocks 0-3 on GPU, 4-9 in host memory, 10-11 on disk only. */
    kvrt_kv_event_t ev[12];
    for (uint32_t i = 0; i < 12; i++)
        ev[i] = (kvrt_kv_event_t){.event_id = i + 1,
                                  .kind = KVRT_KV_EVENT_STORED,
                                  .tier = i < 4    ? KVRT_KV_TIER_GPU
                                          : i < 10 ? KVRT_KV_TIER_HOST
                                                   : KVRT_KV_TIER_DISK,
                                  .key = keys[i]};
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 2, 12, ev, 12));
    /* Node 1 (the puller) holds block 0. */
    kvrt_kv_event_t mine = {
        .event_id = 1, .kind = KVRT_KV_EVENT_STORED, .tier = KVRT_KV_TIER_GPU, .key = keys[0]};
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 1, 11, &mine, 1));
}
static void teardown(void)
{
    kvrt_ctx_destroy(ctx);
}

TestSuite(cluster_pull_cost, .init = setup, .fini = teardown);

static const uint64_t bytes = 2u << 20; /* 2 MiB blocks */

static double close_to(double a, double b)
{
    return fabs(a - b) <= 1e-9 * fabs(b);
}

Test(cluster_pull_cost, the_formula_adds_the_tiers_copies_to_the_network)
{
    kvrt_cluster_pull_cost_t c = {.block_bytes = bytes, .tokens_per_block = 16};
    double bits = (double)bytes * 8.0, t = 0, r = 0;
    uint32_t gpu[3] = {5, 0, 0}, host[3] = {2, 3, 0}, disk[3] = {0, 1, 4};
    ASSERT_OK(ctx, kvrt_cluster_pull_cost_us(&c, gpu, &t, &r));
    cr_assert(close_to(t, 20 + 5 * bits / 200e3), "%f", t);
    cr_assert(close_to(r, 5 * 16 * 40.0));
    ASSERT_OK(ctx, kvrt_cluster_pull_cost_us(&c, host, &t, NULL));
    cr_assert(close_to(t, 20 + 5 * bits / 200e3 + 10 + 3 * bits / 400e3), "%f", t);
    ASSERT_OK(ctx, kvrt_cluster_pull_cost_us(&c, disk, &t, NULL));
    cr_assert(close_to(t, 20 + 5 * bits / 200e3 + 10 + 5 * bits / 400e3 + 100 + 4 * bits / 50e3),
              "%f", t);
    c.field_mask = KVRT_PULL_COST_HOST | KVRT_PULL_COST_DISK | KVRT_PULL_COST_NET_GBPS |
                   KVRT_PULL_COST_LATENCY | KVRT_PULL_COST_PREFILL;
    c.net_gbps = 100, c.latency_us = 1, c.prefill_us_per_token = 2;
    c.host_gbps = 50, c.host_latency_us = 3, c.disk_gbps = 10, c.disk_latency_us = 4;
    ASSERT_OK(ctx, kvrt_cluster_pull_cost_us(&c, disk, &t, &r));
    cr_assert(close_to(t, 1 + 5 * bits / 100e3 + 3 + 5 * bits / 50e3 + 4 + 4 * bits / 10e3));
    cr_assert(close_to(r, 5 * 16 * 2.0));
    uint32_t none[3] = {0, 0, 0};
    ASSERT_OK(ctx, kvrt_cluster_pull_cost_us(&c, none, &t, &r));
    cr_assert(close_to(t, 1) && r == 0);
}

Test(cluster_pull_cost, the_plan_splits_the_peers_run_by_tier)
{
    kvrt_cluster_pull_cost_t c = {.block_bytes = bytes, .tokens_per_block = 16};
    kvrt_cluster_pull_plan_t plan;
    ASSERT_OK(ctx, kvrt_cluster_pull_plan(dir, &model, 1, keys, 16, &c, &plan));
    cr_assert_eq(plan.node_id, 2);
    cr_assert_eq(plan.local_blocks, 1);
    cr_assert_eq(plan.peer_blocks, 12);
    cr_assert_eq(plan.tier_blocks[KVRT_KV_TIER_GPU], 3);
    cr_assert_eq(plan.tier_blocks[KVRT_KV_TIER_HOST], 6);
    cr_assert_eq(plan.tier_blocks[KVRT_KV_TIER_DISK], 2);
    double t = 0;
    ASSERT_OK(ctx, kvrt_cluster_pull_cost_us(&c, plan.tier_blocks, &t, NULL));
    cr_assert(close_to(plan.transfer_us, t));
    cr_assert(close_to(plan.recompute_us, 11 * 16 * 40.0));
    cr_assert_eq(plan.worth, plan.transfer_us < plan.recompute_us);
    /* Served from GPU and host only, the run stops where disk begins. */
    c.field_mask = KVRT_PULL_COST_TIER_MASK;
    c.tier_mask = (1u << KVRT_KV_TIER_GPU) | (1u << KVRT_KV_TIER_HOST);
    ASSERT_OK(ctx, kvrt_cluster_pull_plan(dir, &model, 1, keys, 16, &c, &plan));
    cr_assert_eq(plan.peer_blocks, 10);
    cr_assert_eq(plan.tier_blocks[KVRT_KV_TIER_DISK], 0);
    /* GPU only: the peer's run of 4, of which the puller lacks 3. */
    c.tier_mask = 1u << KVRT_KV_TIER_GPU;
    ASSERT_OK(ctx, kvrt_cluster_pull_plan(dir, &model, 1, keys, 16, &c, &plan));
    cr_assert_eq(plan.peer_blocks, 4);
    cr_assert_eq(plan.tier_blocks[KVRT_KV_TIER_GPU], 3);
    /* A slow SSD makes the disk part cost more than recomputing it. */
    c.field_mask = KVRT_PULL_COST_DISK;
    c.disk_gbps = 0.001;
    c.disk_latency_us = 0;
    ASSERT_OK(ctx, kvrt_cluster_pull_plan(dir, &model, 1, keys, 16, &c, &plan));
    cr_assert_eq(plan.worth, 0);
}

Test(cluster_pull_cost, bad_parameters_are_refused)
{
    uint32_t b[3] = {1, 0, 0};
    double t;
    kvrt_cluster_pull_cost_t c = {.block_bytes = bytes, .tokens_per_block = 16};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_pull_cost_us(NULL, b, &t, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_pull_cost_us(&c, NULL, &t, NULL));
    kvrt_cluster_pull_cost_t bad = c;
    bad.field_mask = 1u << 30;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_pull_cost_us(&bad, b, &t, NULL));
    bad = c;
    bad.block_bytes = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_pull_cost_us(&bad, b, &t, NULL));
    bad = c;
    bad.field_mask = KVRT_PULL_COST_HOST;
    bad.host_gbps = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_pull_cost_us(&bad, b, &t, NULL));
    bad.host_gbps = 1;
    bad.host_latency_us = NAN;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_pull_cost_us(&bad, b, &t, NULL));
    bad = c;
    bad.field_mask = KVRT_PULL_COST_DISK;
    bad.disk_gbps = INFINITY;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_pull_cost_us(&bad, b, &t, NULL));
    bad = c;
    bad.field_mask = KVRT_PULL_COST_TIER_MASK;
    bad.tier_mask = 8;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_pull_cost_us(&bad, b, &t, NULL));
    kvrt_cluster_pull_plan_t plan;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_cluster_pull_plan(dir, &model, 1, keys, 16, &bad, &plan));
}
