/*
 * test_cluster_events.c - a node's KV event stream: ids grow by one, only
 * changes are published, take drains in order, a full ring drops its
 * oldest (and a consumer sees the gap), snapshots hold exactly the keys
 * held, and restarted publishers get a new epoch.
 */
#include <string.h>

#include "test_helpers.h"

static kvrt_ctx_t *ctx;

static void setup(void) { cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK); }
static void teardown(void) { kvrt_ctx_destroy(ctx); }

TestSuite(cluster_events, .init = setup, .fini = teardown);

static kvrt_block_hash_t key(uint64_t i) { return (kvrt_block_hash_t){i * 0x9E37u + 1, i}; }

Test(cluster_events, ids_grow_by_one_and_only_changes_are_published)
{
    kvrt_kv_events_t *ev = NULL;
    ASSERT_OK(ctx, kvrt_kv_events_create(ctx, NULL, &ev));
    kvrt_block_hash_t k1 = key(1), k2 = key(2);
    ASSERT_OK(ctx, kvrt_kv_events_record(ev, KVRT_KV_EVENT_STORED, KVRT_KV_TIER_GPU, &k1));
    ASSERT_OK(ctx, kvrt_kv_events_record(ev, KVRT_KV_EVENT_STORED, KVRT_KV_TIER_GPU, &k1));
    ASSERT_OK(ctx, kvrt_kv_events_record(ev, KVRT_KV_EVENT_STORED, KVRT_KV_TIER_HOST, &k1));
    ASSERT_OK(ctx, kvrt_kv_events_record(ev, KVRT_KV_EVENT_REMOVED, KVRT_KV_TIER_GPU, &k2));
    ASSERT_OK(ctx, kvrt_kv_events_record(ev, KVRT_KV_EVENT_STORED, KVRT_KV_TIER_GPU, &k2));
    ASSERT_OK(ctx, kvrt_kv_events_record(ev, KVRT_KV_EVENT_REMOVED, KVRT_KV_TIER_GPU, &k1));
    kvrt_kv_event_t out[8];
    uint32_t n = 0;
    uint64_t epoch = 0, epoch2 = 0, last = 0;
    ASSERT_OK(ctx, kvrt_kv_events_take(ev, out, 8, &n, &epoch));
    cr_assert_eq(n, 4, "duplicate stores and removals of absent keys publish nothing");
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(out[i].event_id, i + 1);
    cr_assert_eq(out[1].tier, KVRT_KV_TIER_HOST);
    cr_assert_eq(out[3].kind, KVRT_KV_EVENT_REMOVED);
    cr_assert_neq(epoch, 0);
    ASSERT_OK(ctx, kvrt_kv_events_epoch(ev, &epoch2, &last));
    cr_assert_eq(epoch2, epoch);
    cr_assert_eq(last, 4);
    ASSERT_OK(ctx, kvrt_kv_events_take(ev, out, 8, &n, NULL));
    cr_assert_eq(n, 0, "take drains");
    /* Snapshot: k1 on host, k2 on GPU. */
    uint32_t count = 0;
    ASSERT_STATUS(KVRT_ERR_BUFFER_TOO_SMALL, kvrt_kv_events_snapshot(ev, out, 1, &count, &last));
    cr_assert_eq(count, 2);
    ASSERT_OK(ctx, kvrt_kv_events_snapshot(ev, out, 8, &count, &last));
    cr_assert_eq(count, 2);
    cr_assert_eq(last, 4);
    int host = 0, gpu = 0;
    for (uint32_t i = 0; i < count; i++) {
        cr_assert_eq(out[i].kind, KVRT_KV_EVENT_STORED);
        host += out[i].tier == KVRT_KV_TIER_HOST && out[i].key.lo == k1.lo;
        gpu += out[i].tier == KVRT_KV_TIER_GPU && out[i].key.lo == k2.lo;
    }
    cr_assert(host == 1 && gpu == 1);
    /* Cleared: one record, then the snapshot is empty. */
    ASSERT_OK(ctx, kvrt_kv_events_record(ev, KVRT_KV_EVENT_CLEARED, KVRT_KV_TIER_GPU, NULL));
    ASSERT_OK(ctx, kvrt_kv_events_take(ev, out, 8, &n, NULL));
    cr_assert_eq(n, 1);
    cr_assert_eq(out[0].kind, KVRT_KV_EVENT_CLEARED);
    cr_assert_eq(out[0].event_id, 5);
    ASSERT_OK(ctx, kvrt_kv_events_snapshot(ev, out, 8, &count, &last));
    cr_assert_eq(count, 0);
    ASSERT_OK(ctx, kvrt_kv_events_destroy(ev));
}

Test(cluster_events, full_ring_drops_oldest_and_leaves_a_gap)
{
    kvrt_kv_events_params_t p = {.field_mask = KVRT_KV_EVENTS_PARAM_CAPACITY, .capacity = 16};
    kvrt_kv_events_t *ev = NULL;
    ASSERT_OK(ctx, kvrt_kv_events_create(ctx, &p, &ev));
    for (uint64_t i = 0; i < 40; i++) {
        kvrt_block_hash_t k = key(i);
        ASSERT_OK(ctx, kvrt_kv_events_record(ev, KVRT_KV_EVENT_STORED, KVRT_KV_TIER_GPU, &k));
    }
    kvrt_kv_event_t out[64];
    uint32_t n = 0;
    ASSERT_OK(ctx, kvrt_kv_events_take(ev, out, 64, &n, NULL));
    cr_assert_eq(n, 16);
    cr_assert_eq(out[0].event_id, 25, "the 24 oldest were dropped");
    cr_assert_eq(out[15].event_id, 40);
    /* The snapshot still has all 40 keys. */
    uint64_t last = 0;
    ASSERT_OK(ctx, kvrt_kv_events_snapshot(ev, out, 64, &n, &last));
    cr_assert_eq(n, 40);
    cr_assert_eq(last, 40);
    kvrt_kv_events_destroy(ev);
}

Test(cluster_events, each_publisher_has_its_own_epoch_and_bad_input_is_refused)
{
    kvrt_kv_events_t *a = NULL, *b = NULL, *c = NULL;
    ASSERT_OK(ctx, kvrt_kv_events_create(ctx, NULL, &a));
    ASSERT_OK(ctx, kvrt_kv_events_create(ctx, NULL, &b));
    uint64_t ea, eb;
    kvrt_kv_events_epoch(a, &ea, NULL);
    kvrt_kv_events_epoch(b, &eb, NULL);
    cr_assert_neq(ea, eb, "a restarted node must not continue an old stream");
    kvrt_kv_events_params_t p = {.field_mask = KVRT_KV_EVENTS_PARAM_EPOCH, .epoch = 0};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_kv_events_create(ctx, &p, &c));
    p = (kvrt_kv_events_params_t){.field_mask = KVRT_KV_EVENTS_PARAM_CAPACITY, .capacity = 3};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_kv_events_create(ctx, &p, &c));
    p = (kvrt_kv_events_params_t){.field_mask = 1u << 9};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_kv_events_create(ctx, &p, &c));
    cr_assert_null(c);
    kvrt_block_hash_t k = key(3);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_kv_events_record(a, KVRT_KV_EVENT_STORED, (kvrt_kv_tier_t)7, &k));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_kv_events_record(a, (kvrt_kv_event_kind_t)9, KVRT_KV_TIER_GPU, &k));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_kv_events_record(a, KVRT_KV_EVENT_STORED, KVRT_KV_TIER_GPU, NULL));
    uint64_t last = 1;
    kvrt_kv_events_epoch(a, NULL, &last);
    cr_assert_eq(last, 0, "refused records publish nothing");
    uint32_t n;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_kv_events_take(a, NULL, 4, &n, NULL));
    /* Left to the context to free: b. */
    kvrt_kv_events_destroy(a);
    kvrt_kv_events_destroy(NULL);
}

/* Fed by a real cache: inserts and evictions reach a directory through the
 * publisher, and the directory's view matches the cache's contents. */
Test(cluster_events, follows_a_cache_through_its_observer_hook)
{
    kvrt_pool_t *pool = test_pool(ctx, 9, 16); /* 8 usable blocks */
    kvrt_cache_t *cache = NULL;
    ASSERT_OK(ctx, kvrt_cache_create(pool, NULL, &cache));
    kvrt_kv_events_t *ev = NULL;
    ASSERT_OK(ctx, kvrt_kv_events_create(ctx, NULL, &ev));
    ASSERT_OK(ctx, kvrt_kv_events_attach(ev, cache, KVRT_KV_TIER_GPU));
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_kv_events_attach(ev, cache, KVRT_KV_TIER_GPU));
    kvrt_cluster_dir_t *dir = NULL;
    ASSERT_OK(ctx, kvrt_cluster_dir_create(ctx, NULL, &dir));
    kvrt_block_hash_t fp = {0}, root;
    uint64_t epoch;
    kvrt_kv_events_epoch(ev, &epoch, NULL);
    ASSERT_OK(ctx, kvrt_cache_root(cache, &root));
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 1, &fp, epoch));
    /* Cache 8 blocks of one chain, then let them go idle. */
    int32_t blocks[8];
    kvrt_block_hash_t chain[16];
    int32_t tokens[16];
    kvrt_block_hash_t parent = root;
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 8, blocks));
    for (int b = 0; b < 8; b++) {
        for (int t = 0; t < 16; t++)
            tokens[t] = b * 16 + t;
        ASSERT_OK(ctx, kvrt_block_hash(&parent, tokens, 16, (uint32_t)b * 16, NULL, &chain[b]));
        ASSERT_OK(ctx, kvrt_cache_insert(cache, blocks[b], &chain[b], NULL, (uint32_t)b, NULL));
        parent = chain[b];
    }
    ASSERT_OK(ctx, kvrt_pool_free(pool, 8, blocks));
    kvrt_kv_event_t out[32];
    uint32_t n = 0;
    ASSERT_OK(ctx, kvrt_kv_events_take(ev, out, 32, &n, NULL));
    cr_assert_eq(n, 8);
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 1, epoch, out, n));
    kvrt_cluster_match_t m[2];
    uint32_t count;
    ASSERT_OK(ctx, kvrt_cluster_dir_match(dir, &fp, chain, 8, 0, m, 2, &count));
    cr_assert_eq(m[0].prefix_blocks, 8);
    /* An allocation evicts 3 (LRU: the first inserted); the directory
     * follows. */
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 3, blocks));
    ASSERT_OK(ctx, kvrt_kv_events_take(ev, out, 32, &n, NULL));
    cr_assert_eq(n, 3);
    cr_assert_eq(out[0].kind, KVRT_KV_EVENT_REMOVED);
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 1, epoch, out, n));
    kvrt_cluster_node_info_t info;
    ASSERT_OK(ctx, kvrt_cluster_dir_node_info(dir, 1, &info));
    cr_assert_eq(info.blocks[KVRT_KV_TIER_GPU], 5);
    ASSERT_OK(ctx, kvrt_pool_free(pool, 3, blocks));
    /* A followed cache cannot go away under its publisher; detached, it can
     * and no event reaches the publisher. */
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_cache_destroy(cache));
    ASSERT_OK(ctx, kvrt_kv_events_detach(ev));
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND, kvrt_kv_events_detach(ev));
    ASSERT_OK(ctx, kvrt_cache_destroy(cache));
    ASSERT_OK(ctx, kvrt_kv_events_take(ev, out, 32, &n, NULL));
    cr_assert_eq(n, 0);
    kvrt_pool_info_t pi;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &pi));
    cr_assert_eq(pi.used_blocks, 0);
}
