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
