/*
 * test_cluster_router.c - routing: round-robin cycles, least-loaded follows
 * load, cache-aware trades the prefix it finds against the queue in front
 * of it, exactly by the documented cost, and weights can be overridden.
 */
#include "test_helpers.h"

static kvrt_ctx_t *ctx;
static kvrt_cluster_dir_t *dir;
static const kvrt_block_hash_t model = {1, 2};
static kvrt_block_hash_t keys[64];

static void setup(void)
{
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    ASSERT_OK(ctx, kvrt_cluster_dir_create(ctx, NULL, &dir));
    for (int i = 0; i < 64; i++)
        keys[i] = (kvrt_block_hash_t){(uint64_t)i + 1, 99};
    for (uint64_t n = 1; n <= 3; n++)
        ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, n, &model, 10 + n));
    /* Node 2 holds the first 32 blocks. */
    kvrt_kv_event_t ev[32];
    for (int i = 0; i < 32; i++)
        ev[i] = (kvrt_kv_event_t){.event_id = (uint64_t)i + 1, .kind = KVRT_KV_EVENT_STORED,
                                  .tier = KVRT_KV_TIER_HOST, .key = keys[i]};
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 2, 12, ev, 32));
}
static void teardown(void) { kvrt_ctx_destroy(ctx); }

TestSuite(cluster_router, .init = setup, .fini = teardown);

static kvrt_cluster_router_t *router(kvrt_route_policy_t policy)
{
    kvrt_cluster_router_params_t p = {.field_mask = KVRT_ROUTER_PARAM_POLICY, .policy = policy};
    kvrt_cluster_router_t *r = NULL;
    ASSERT_OK(ctx, kvrt_cluster_router_create(dir, &p, &r));
    return r;
}

static void load(uint64_t node, uint64_t queued, uint64_t decodes)
{
    kvrt_cluster_load_t l = {.field_mask = KVRT_CLUSTER_LOAD_QUEUED_PREFILL |
                                           KVRT_CLUSTER_LOAD_RUNNING_DECODES,
                             .queued_prefill_tokens = queued, .running_decodes = decodes};
    ASSERT_OK(ctx, kvrt_cluster_dir_set_load(dir, node, &l));
}

Test(cluster_router, round_robin_cycles)
{
    kvrt_cluster_router_t *r = router(KVRT_ROUTE_ROUND_ROBIN);
    kvrt_route_choice_t c;
    uint64_t seen[6];
    for (int i = 0; i < 6; i++) {
        ASSERT_OK(ctx, kvrt_cluster_router_pick(r, &model, keys, 64, 1024, &c));
        seen[i] = c.node_id;
        cr_assert_eq(c.best_blocks, 32);
        cr_assert_eq(c.best_node_id, 2);
    }
    cr_assert(seen[0] != seen[1] && seen[1] != seen[2] && seen[0] != seen[2]);
    cr_assert(seen[3] == seen[0] && seen[4] == seen[1] && seen[5] == seen[2]);
    kvrt_cluster_router_destroy(r);
}

Test(cluster_router, least_loaded_and_cache_aware)
{
    load(1, 100, 0);
    load(2, 300, 0);
    load(3, 0, 10); /* 10 decodes cost 200 by default */
    kvrt_cluster_router_t *ll = router(KVRT_ROUTE_LEAST_LOADED);
    kvrt_cluster_router_t *ca = router(KVRT_ROUTE_CACHE_AWARE);
    kvrt_route_choice_t c;
    ASSERT_OK(ctx, kvrt_cluster_router_pick(ll, &model, keys, 64, 1024, &c));
    cr_assert_eq(c.node_id, 1);
    /* Cache-aware: node 2 has 512 of the 1024 tokens; 512 + 300 < 1024 + 100. */
    ASSERT_OK(ctx, kvrt_cluster_router_pick(ca, &model, keys, 64, 1024, &c));
    cr_assert_eq(c.node_id, 2);
    cr_assert_eq(c.cached_blocks, 32);
    cr_assert_float_eq(c.cost, 812.0, 1e-9);
    /* A long queue on node 2 outweighs its prefix. */
    load(2, 1000, 0);
    ASSERT_OK(ctx, kvrt_cluster_router_pick(ca, &model, keys, 64, 1024, &c));
    cr_assert_eq(c.node_id, 1);
    cr_assert_eq(c.cached_blocks, 0);
    cr_assert_eq(c.best_node_id, 2, "the pull source is still reported");
    /* Heavier decode weight: node 3 (10 decodes) loses more. Lighter: wins. */
    kvrt_cluster_router_params_t p = {.field_mask = KVRT_ROUTER_PARAM_DECODE_WEIGHT |
                                                    KVRT_ROUTER_PARAM_PREFILL_WEIGHT,
                                      .decode_weight = 1.0, .prefill_weight = 1.0};
    kvrt_cluster_router_t *light = NULL;
    ASSERT_OK(ctx, kvrt_cluster_router_create(dir, &p, &light));
    ASSERT_OK(ctx, kvrt_cluster_router_pick(light, &model, keys, 64, 1024, &c));
    cr_assert_eq(c.node_id, 3);
    kvrt_cluster_router_destroy(ll);
    kvrt_cluster_router_destroy(ca);
    kvrt_cluster_router_destroy(light);
}

Test(cluster_router, bad_input)
{
    kvrt_cluster_router_params_t p = {.field_mask = KVRT_ROUTER_PARAM_PREFILL_WEIGHT,
                                      .prefill_weight = -1};
    kvrt_cluster_router_t *r = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_router_create(dir, &p, &r));
    p = (kvrt_cluster_router_params_t){.field_mask = KVRT_ROUTER_PARAM_POLICY, .policy = 9};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_router_create(dir, &p, &r));
    cr_assert_null(r);
    r = router(KVRT_ROUTE_CACHE_AWARE);
    kvrt_route_choice_t c;
    kvrt_block_hash_t unknown = {5, 5};
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_MODEL, kvrt_cluster_router_pick(r, &unknown, keys, 4, 64, &c));
    for (uint64_t n = 1; n <= 3; n++)
        ASSERT_OK(ctx, kvrt_cluster_dir_remove_node(dir, n));
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND, kvrt_cluster_router_pick(r, &model, keys, 4, 64, &c));
    kvrt_cluster_router_destroy(r);
}

/* Equal cost and free blocks: the lower node id, whatever slot the
 * directory gave each node (slots of removed nodes are reused), so that
 * every router picks alike. */
Test(cluster_router, ties_go_to_the_lower_node_id_whatever_the_slots)
{
    static const kvrt_block_hash_t other = {7, 7};
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 30, &other, 1));
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 20, &other, 1));
    kvrt_cluster_router_t *r = router(KVRT_ROUTE_LEAST_LOADED);
    kvrt_route_choice_t c;
    ASSERT_OK(ctx, kvrt_cluster_router_pick(r, &other, keys, 4, 64, &c));
    cr_assert_eq(c.node_id, 20);
    ASSERT_OK(ctx, kvrt_cluster_dir_remove_node(dir, 30));
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 40, &other, 1)); /* takes 30's slot */
    ASSERT_OK(ctx, kvrt_cluster_router_pick(r, &other, keys, 4, 64, &c));
    cr_assert_eq(c.node_id, 20, "the node in the lower slot won the tie");
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 10, &other, 1));
    ASSERT_OK(ctx, kvrt_cluster_router_pick(r, &other, keys, 4, 64, &c));
    cr_assert_eq(c.node_id, 10);
    kvrt_cluster_router_destroy(r);
}
