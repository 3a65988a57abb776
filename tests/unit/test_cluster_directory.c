/*
 * test_cluster_directory.c - the prefix directory against the publishers it
 * follows: after any mix of stores, removals and clears (random, checked
 * against an oracle built from the publishers' own key sets), every node's
 * longest prefix is what it really holds; gaps, restarts, late events of a
 * dead incarnation, duplicates, unknown nodes and models, and bad events
 * are each answered as documented, and never with stale entries; and the
 * etcd view applied member by member never takes a node back to a dead
 * epoch, nor keeps it under a model it no longer serves.
 */
#include <stdlib.h>
#include <string.h>

#include "cluster/cluster_internal.h"
#include "test_helpers.h"

#define NODES 5
#define KEYS 300 /* a universe of chained keys: key i's prefix is keys 0..i */
#define BATCH 4096

static kvrt_ctx_t *ctx;
static kvrt_cluster_dir_t *dir;
static const kvrt_block_hash_t model = {0x1111, 0x2222};
static const kvrt_block_hash_t other_model = {0x3333, 0x4444};

static void setup(void)
{
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    kvrt_cluster_dir_params_t p = {.field_mask = KVRT_CLUSTER_DIR_PARAM_EXPECTED_BLOCKS,
                                   .expected_blocks = 16}; /* forces growth */
    ASSERT_OK(ctx, kvrt_cluster_dir_create(ctx, &p, &dir));
}
static void teardown(void) { kvrt_ctx_destroy(ctx); }

TestSuite(cluster_directory, .init = setup, .fini = teardown);

static kvrt_block_hash_t key(uint64_t i) { return (kvrt_block_hash_t){i * 0x9E3779B1u + 7, ~i}; }

static kvrt_kv_event_t stored(uint64_t id, uint64_t k, uint32_t tier)
{
    return (kvrt_kv_event_t){.event_id = id, .kind = KVRT_KV_EVENT_STORED, .tier = tier,
                             .key = key(k)};
}

/* Keys 0 .. n-1 and the events storing them on GPU, ids 1 .. n. */
static void chain_of(uint32_t n, kvrt_block_hash_t *keys, kvrt_kv_event_t *ev)
{
    for (uint32_t i = 0; i < n; i++) {
        keys[i] = key(i);
        ev[i] = stored((uint64_t)i + 1, i, KVRT_KV_TIER_GPU);
    }
}

/* Longest prefix of node n per the directory. */
static uint32_t prefix_of(uint64_t node, const kvrt_block_hash_t *keys, uint32_t n,
                          uint32_t tiers)
{
    kvrt_cluster_match_t m[NODES + 2];
    uint32_t count = 0;
    ASSERT_OK(ctx, kvrt_cluster_dir_match(dir, &model, keys, n, tiers, m, NODES + 2, &count));
    for (uint32_t i = 0; i < count; i++)
        if (m[i].node_id == node)
            return m[i].prefix_blocks;
    return UINT32_MAX; /* not answering */
}

Test(cluster_directory, follows_random_streams_exactly)
{
    kvrt_kv_events_t *pub[NODES];
    uint8_t held[NODES][KEYS][KVRT_KV_TIERS];
    memset(held, 0, sizeof(held));
    for (int n = 0; n < NODES; n++) {
        ASSERT_OK(ctx, kvrt_kv_events_create(ctx, NULL, &pub[n]));
        uint64_t epoch;
        kvrt_kv_events_epoch(pub[n], &epoch, NULL);
        ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 100 + n, &model, epoch));
    }
    static kvrt_kv_event_t buf[BATCH];
    kvrt_block_hash_t keys[KEYS];
    for (int i = 0; i < KEYS; i++)
        keys[i] = key(i);
    uint64_t rng = 42;
    for (int round = 0; round < 60; round++) {
        for (int n = 0; n < NODES; n++) {
            uint32_t ops = test_rand_below(&rng, 400);
            for (uint32_t o = 0; o < ops; o++) {
                uint32_t k = test_rand_below(&rng, KEYS);
                uint32_t t = test_rand_below(&rng, KVRT_KV_TIERS);
                uint32_t what = test_rand_below(&rng, 1000);
                kvrt_block_hash_t kk = key(k);
                if (what < 2) {
                    ASSERT_OK(ctx, kvrt_kv_events_record(pub[n], KVRT_KV_EVENT_CLEARED, 0, NULL));
                    memset(held[n], 0, sizeof(held[n]));
                } else if (what < 600) {
                    ASSERT_OK(ctx, kvrt_kv_events_record(pub[n], KVRT_KV_EVENT_STORED, t, &kk));
                    held[n][k][t] = 1;
                } else {
                    ASSERT_OK(ctx, kvrt_kv_events_record(pub[n], KVRT_KV_EVENT_REMOVED, t, &kk));
                    held[n][k][t] = 0;
                }
            }
            uint32_t got = 0;
            uint64_t epoch;
            ASSERT_OK(ctx, kvrt_kv_events_take(pub[n], buf, BATCH, &got, &epoch));
            /* Deliver in two pieces, the second one twice (a replay). */
            uint32_t half = got / 2;
            ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 100 + n, epoch, buf, half));
            ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 100 + n, epoch, buf + half, got - half));
            ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 100 + n, epoch, buf + half, got - half));
        }
        /* Every node's prefix from several starting depths (prefixes of
         * the universe's chain) against the oracle. */
        for (uint32_t tiers = 1; tiers <= KVRT_KV_TIER_MASK_ALL; tiers++) {
            for (int n = 0; n < NODES; n++) {
                uint32_t expect = 0;
                while (expect < KEYS) {
                    int any = 0;
                    for (int t = 0; t < KVRT_KV_TIERS; t++)
                        any |= (tiers >> t & 1) && held[n][expect][t];
                    if (!any)
                        break;
                    expect++;
                }
                cr_assert_eq(prefix_of(100 + n, keys, KEYS, tiers), expect,
                             "round %d node %d tiers %u", round, n, tiers);
            }
        }
        for (int n = 0; n < NODES; n++) {
            kvrt_cluster_node_info_t info;
            ASSERT_OK(ctx, kvrt_cluster_dir_node_info(dir, 100 + n, &info));
            for (int t = 0; t < KVRT_KV_TIERS; t++) {
                uint64_t c = 0;
                for (int k = 0; k < KEYS; k++)
                    c += held[n][k][t];
                cr_assert_eq(info.blocks[t], c);
            }
        }
    }
    kvrt_cluster_dir_stats_t s;
    ASSERT_OK(ctx, kvrt_cluster_dir_stats(dir, &s));
    cr_assert_gt(s.events_duplicate, 0);
    cr_assert_eq(s.resyncs, 0);
    cr_assert_leq(s.entries * 2, s.table_slots, "tables stay at most half full");
    /* Removing every node leaves no entry. */
    for (int n = 0; n < NODES; n++)
        ASSERT_OK(ctx, kvrt_cluster_dir_remove_node(dir, 100 + n));
    ASSERT_OK(ctx, kvrt_cluster_dir_stats(dir, &s));
    cr_assert_eq(s.entries, 0);
    cr_assert_eq(s.nodes, 0);
}

Test(cluster_directory, gap_forces_a_snapshot_before_the_node_answers_again)
{
    kvrt_kv_events_params_t p = {.field_mask = KVRT_KV_EVENTS_PARAM_CAPACITY, .capacity = 16};
    kvrt_kv_events_t *pub = NULL;
    ASSERT_OK(ctx, kvrt_kv_events_create(ctx, &p, &pub));
    uint64_t epoch;
    kvrt_kv_events_epoch(pub, &epoch, NULL);
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 7, &model, epoch));
    kvrt_block_hash_t keys[40];
    for (int i = 0; i < 40; i++) {
        keys[i] = key(i);
        ASSERT_OK(ctx, kvrt_kv_events_record(pub, KVRT_KV_EVENT_STORED, 0, &keys[i]));
    }
    kvrt_kv_event_t buf[64];
    uint32_t n = 0;
    ASSERT_OK(ctx, kvrt_kv_events_take(pub, buf, 64, &n, NULL));
    cr_assert_eq(buf[0].event_id, 25, "the ring overflowed");
    ASSERT_STATUS(KVRT_ERR_RESYNC, kvrt_cluster_dir_apply(dir, 7, epoch, buf, n));
    cr_assert_eq(prefix_of(7, keys, 40, 0), UINT32_MAX, "a resyncing node does not answer");
    ASSERT_STATUS(KVRT_ERR_RESYNC, kvrt_cluster_dir_apply(dir, 7, epoch, buf, n));
    uint64_t last;
    ASSERT_OK(ctx, kvrt_kv_events_snapshot(pub, buf, 64, &n, &last));
    ASSERT_OK(ctx, kvrt_cluster_dir_load_snapshot(dir, 7, epoch, last, buf, n));
    cr_assert_eq(prefix_of(7, keys, 40, 0), 40);
    /* The stream goes on from the snapshot. */
    ASSERT_OK(ctx, kvrt_kv_events_record(pub, KVRT_KV_EVENT_REMOVED, 0, &keys[10]));
    ASSERT_OK(ctx, kvrt_kv_events_take(pub, buf, 64, &n, NULL));
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 7, epoch, buf, n));
    cr_assert_eq(prefix_of(7, keys, 40, 0), 10);
    kvrt_cluster_dir_stats_t s;
    kvrt_cluster_dir_stats(dir, &s);
    cr_assert_eq(s.resyncs, 1);
}

Test(cluster_directory, restart_drops_old_entries_and_late_events_are_refused)
{
    const uint64_t e1 = 0xA1, e2 = 0xB2;
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 9, &model, e1));
    kvrt_block_hash_t keys[8];
    kvrt_kv_event_t ev[8];
    chain_of(8, keys, ev);
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 9, e1, ev, 8));
    cr_assert_eq(prefix_of(9, keys, 8, 0), 8);
    /* The node restarts: its new stream starts at 1 and holds key 0 only. */
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 9, e2, ev, 1));
    cr_assert_eq(prefix_of(9, keys, 8, 0), 1, "entries of the old epoch were dropped");
    /* A late batch of the dead incarnation changes nothing. */
    ASSERT_STATUS(KVRT_ERR_STALE_EPOCH, kvrt_cluster_dir_apply(dir, 9, e1, ev + 1, 7));
    cr_assert_eq(prefix_of(9, keys, 8, 0), 1);
    /* A third epoch seen mid-stream: entries dropped, snapshot needed. */
    ASSERT_STATUS(KVRT_ERR_RESYNC, kvrt_cluster_dir_apply(dir, 9, 0xC3, ev + 3, 2));
    cr_assert_eq(prefix_of(9, keys, 8, 0), UINT32_MAX);
    ASSERT_OK(ctx, kvrt_cluster_dir_load_snapshot(dir, 9, 0xC3, 4, ev, 2));
    cr_assert_eq(prefix_of(9, keys, 8, 0), 2);
    kvrt_cluster_node_info_t info;
    ASSERT_OK(ctx, kvrt_cluster_dir_node_info(dir, 9, &info));
    cr_assert_eq(info.next_event_id, 5);
    cr_assert_eq(info.epoch, 0xC3);
}

static uint32_t sync_one(uint64_t node, uint64_t epoch, const kvrt_block_hash_t *m)
{
    kvrt_cluster_member_t member = {.node_id = node, .epoch = epoch, .model = *m};
    uint32_t added = 0, removed = 0;
    ASSERT_OK(ctx, cluster_dir_sync_member(dir, &member, &added, &removed));
    return added + removed;
}

/* The etcd view is refreshed every poll_ms (not at all while etcd is out
 * of reach), so it may still show the epoch a node had before the one its
 * own events brought: applying it must change nothing (it used to take the
 * node back, refusing the live incarnation's events and taking the dead
 * one's). */
Test(cluster_directory, a_lagging_view_never_takes_a_node_back_to_a_dead_epoch)
{
    const uint64_t e1 = 0xA1, e2 = 0xB2;
    cr_assert_eq(sync_one(9, e1, &model), 1, "added");
    kvrt_block_hash_t keys[4];
    kvrt_kv_event_t ev[4];
    chain_of(4, keys, ev);
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 9, e1, ev, 2));
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 9, e2, ev, 1)); /* restarted */
    cr_assert_eq(sync_one(9, e1, &model), 0, "a lagging view changed the node");
    kvrt_cluster_node_info_t info;
    ASSERT_OK(ctx, kvrt_cluster_dir_node_info(dir, 9, &info));
    cr_assert_eq(info.epoch, e2);
    cr_assert_eq(prefix_of(9, keys, 4, 0), 1);
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 9, e2, ev + 1, 1)); /* the live stream */
    ASSERT_STATUS(KVRT_ERR_STALE_EPOCH, kvrt_cluster_dir_apply(dir, 9, e1, ev + 2, 1));
    cr_assert_eq(prefix_of(9, keys, 4, 0), 2);
    cr_assert_eq(sync_one(9, e2, &model), 0, "the view caught up: nothing to do");
    cr_assert_eq(sync_one(9, 0xC3, &model), 2, "a newer epoch restarts it");
    cr_assert_eq(prefix_of(9, keys, 4, 0), 0);
}

/* A node id outlives a redeployment (it is, say, a hash of the address): a
 * node back serving another model is listed under that model only, with
 * nothing of the old one, and the old incarnation's late events are
 * refused. */
Test(cluster_directory, a_node_back_with_another_model_is_matched_for_that_model_only)
{
    const uint64_t e1 = 0xA1, e2 = 0xB2;
    sync_one(9, e1, &model);
    kvrt_block_hash_t keys[2] = {key(0), key(1)};
    kvrt_kv_event_t ev[2] = {stored(1, 0, KVRT_KV_TIER_GPU), stored(2, 1, KVRT_KV_TIER_GPU)};
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 9, e1, ev, 2));
    cr_assert_eq(prefix_of(9, keys, 2, 0), 2);
    cr_assert_eq(sync_one(9, e2, &other_model), 2, "removed and added again");
    cr_assert_eq(prefix_of(9, keys, 2, 0), UINT32_MAX, "still listed for the old model");
    kvrt_cluster_match_t m[2];
    uint32_t count = 0;
    ASSERT_OK(ctx, kvrt_cluster_dir_match(dir, &other_model, keys, 2, 0, m, 2, &count));
    cr_assert_eq(count, 1);
    cr_assert_eq(m[0].node_id, 9);
    cr_assert_eq(m[0].prefix_blocks, 0, "entries of the old model carried over");
    ASSERT_STATUS(KVRT_ERR_STALE_EPOCH, kvrt_cluster_dir_apply(dir, 9, e1, ev, 1));
}

static uint64_t table_bytes(void)
{
    kvrt_cluster_dir_stats_t st;
    ASSERT_OK(ctx, kvrt_cluster_dir_stats(dir, &st));
    return st.table_bytes;
}

/* n events storing keys 0 .. n-1 on GPU, ids 1 .. n (free() them). */
static kvrt_kv_event_t *stores_of(uint32_t n)
{
    kvrt_kv_event_t *ev = malloc(n * sizeof(*ev));
    cr_assert_not_null(ev);
    for (uint32_t i = 0; i < n; i++)
        ev[i] = stored(i + 1, i, KVRT_KV_TIER_GPU);
    return ev;
}

/* The table grows for what a batch will store, once it is accepted: a
 * batch refused for its stale epoch, of events already applied, or past a
 * gap grows nothing (a peer could make it grow to any size and it never
 * shrinks). */
Test(cluster_directory, a_refused_or_duplicate_batch_grows_no_table)
{
    const uint32_t n = 200000;
    kvrt_kv_event_t *ev = stores_of(n);
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 9, &model, 0xA1));
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 9, 0xA1, ev, 1));
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 9, 0xB2, ev, 1)); /* 0xA1 is stale now */
    const uint64_t before = table_bytes();
    ASSERT_STATUS(KVRT_ERR_STALE_EPOCH, kvrt_cluster_dir_apply(dir, 9, 0xA1, ev, n));
    cr_assert_eq(table_bytes(), before, "a refused batch grew the table");
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 9, 0xB2, ev, 1)); /* id 1 again */
    cr_assert_eq(table_bytes(), before, "a batch of duplicates grew the table");
    /* Stores the batch's last CLEARED wipes count for nothing either. */
    for (uint32_t i = 0; i < n; i++)
        ev[i].event_id = i + 2;
    ev[n - 1] = (kvrt_kv_event_t){.event_id = n + 1, .kind = KVRT_KV_EVENT_CLEARED};
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 9, 0xB2, ev, n));
    cr_assert_eq(table_bytes(), before, "stores wiped by the batch's clear grew the table");
    kvrt_block_hash_t keys[2] = {key(0), key(1)};
    cr_assert_eq(prefix_of(9, keys, 2, 0), 0);
    /* Nor a batch past a gap (it resyncs the node, applying nothing). */
    for (uint32_t i = 0; i < n; i++)
        ev[i] = stored(n + 10 + i, i, KVRT_KV_TIER_GPU);
    ASSERT_STATUS(KVRT_ERR_RESYNC, kvrt_cluster_dir_apply(dir, 9, 0xB2, ev, n));
    cr_assert_eq(table_bytes(), before, "a batch past a gap grew the table");
    free(ev);
}

/* A peer that clears (or restarts) at every batch, beside a node holding
 * many keys: each drop looks up the peer's own keys; the big node's
 * entries stay. Churn that outgrows the peer's key list costs one walk,
 * and the list serves the drops after it again. */
Test(cluster_directory, a_node_that_clears_at_every_batch_never_walks_the_table)
{
    const uint32_t big = 100000;
    kvrt_kv_event_t *ev = stores_of(big);
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 1, &model, 0xA1));
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 1, 0xA1, ev, big));
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 2, &model, 0xB1));
    uint64_t id = 1, epoch = 0xB1;
    const uint64_t peer_key = 1u << 30;
    for (uint32_t b = 0; b < 2000; b++) {
        if (b % 4 == 3) { /* a restart: a new epoch from id 1 */
            epoch++;
            id = 1;
        }
        kvrt_kv_event_t batch[3] = {
            {.event_id = id, .kind = KVRT_KV_EVENT_CLEARED},
            stored(id + 1, peer_key + b, KVRT_KV_TIER_HOST),
            stored(id + 2, b % 7, KVRT_KV_TIER_GPU), /* also one of the big node's */
        };
        ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 2, epoch, batch, 3));
        id += 3;
    }
    cr_assert_eq(cluster_dir_table_walks(dir), 0, "a drop walked the table");
    kvrt_cluster_node_info_t info;
    ASSERT_OK(ctx, kvrt_cluster_dir_node_info(dir, 2, &info));
    cr_assert_eq(info.blocks[KVRT_KV_TIER_HOST] + info.blocks[KVRT_KV_TIER_GPU], 2);
    kvrt_block_hash_t keys[8];
    for (int i = 0; i < 8; i++)
        keys[i] = key(i);
    cr_assert_eq(prefix_of(1, keys, 8, 0), 8, "the big node lost entries");
    kvrt_block_hash_t last[2] = {key(peer_key + 1999), key(1999 % 7)};
    cr_assert_eq(prefix_of(2, last, 2, 0), 2);
    cr_assert_eq(prefix_of(2, keys, 1, 0), 0, "an entry of before the clear survived");
    /* The same key stored and removed over and over outgrows the list. */
    const uint32_t churn = 20000;
    for (uint32_t i = 0; i < churn; i++)
        ev[i] = (kvrt_kv_event_t){.event_id = id + i,
                                  .kind = i % 2 ? KVRT_KV_EVENT_REMOVED : KVRT_KV_EVENT_STORED,
                                  .tier = KVRT_KV_TIER_DISK, .key = key(3)};
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 2, epoch, ev, churn));
    id += churn;
    kvrt_kv_event_t clear = {.event_id = id++, .kind = KVRT_KV_EVENT_CLEARED};
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 2, epoch, &clear, 1));
    cr_assert_eq(cluster_dir_table_walks(dir), 1, "a given-up list did not walk once");
    cr_assert_eq(prefix_of(2, last, 1, 0), 0);
    kvrt_kv_event_t again[2] = {stored(id, 5, KVRT_KV_TIER_GPU),
                                {.event_id = id + 1, .kind = KVRT_KV_EVENT_CLEARED}};
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 2, epoch, again, 1));
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 2, epoch, again + 1, 1));
    cr_assert_eq(cluster_dir_table_walks(dir), 1, "the list did not start again");
    ASSERT_OK(ctx, kvrt_cluster_dir_node_info(dir, 2, &info));
    cr_assert_eq(info.blocks[0] + info.blocks[1] + info.blocks[2], 0);
    cr_assert_eq(prefix_of(1, keys, 8, 0), 8, "the big node lost entries");
    kvrt_cluster_dir_stats_t s;
    ASSERT_OK(ctx, kvrt_cluster_dir_stats(dir, &s));
    cr_assert_eq(s.entries, big, "a dropped entry stayed, or the big node lost one");
    free(ev);
}

Test(cluster_directory, bad_input_changes_nothing)
{
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 1, &model, 5));
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_cluster_dir_add_node(dir, 1, &model, 6));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_dir_add_node(dir, 0, &model, 6));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_dir_add_node(dir, 2, &model, 0));
    kvrt_kv_event_t ev[3] = {stored(1, 1, 0), stored(2, 2, 0), stored(3, 3, 0)};
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_NODE, kvrt_cluster_dir_apply(dir, 99, 5, ev, 3));
    ev[2].tier = 9;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_dir_apply(dir, 1, 5, ev, 3));
    ev[2].tier = 0;
    ev[1].kind = 77;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_dir_apply(dir, 1, 5, ev, 3));
    kvrt_cluster_node_info_t info;
    ASSERT_OK(ctx, kvrt_cluster_dir_node_info(dir, 1, &info));
    cr_assert_eq(info.next_event_id, 1, "a refused batch applies nothing");
    cr_assert_eq(info.blocks[0], 0);
    ev[1].kind = KVRT_KV_EVENT_STORED;
    kvrt_block_hash_t keys[3] = {key(1), key(2), key(3)};
    kvrt_cluster_match_t m[4];
    uint32_t count = 0;
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_MODEL,
                  kvrt_cluster_dir_match(dir, &other_model, keys, 3, 0, m, 4, &count));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_cluster_dir_match(dir, &model, keys, 3, 1u << 5, m, 4, &count));
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 2, &model, 6));
    ASSERT_STATUS(KVRT_ERR_BUFFER_TOO_SMALL,
                  kvrt_cluster_dir_match(dir, &model, keys, 3, 0, m, 1, &count));
    cr_assert_eq(count, 2);
    /* Out of order within a batch is a gap. */
    kvrt_kv_event_t swapped[2] = {stored(2, 2, 0), stored(1, 1, 0)};
    ASSERT_STATUS(KVRT_ERR_RESYNC, kvrt_cluster_dir_apply(dir, 2, 6, swapped, 2));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_NODE, kvrt_cluster_dir_remove_node(dir, 3));
    /* Two models never share entries. */
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 3, &other_model, 8));
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 1, 5, ev, 3));
    ASSERT_OK(ctx, kvrt_cluster_dir_match(dir, &other_model, keys, 3, 0, m, 4, &count));
    cr_assert_eq(count, 1);
    cr_assert_eq(m[0].node_id, 3);
    cr_assert_eq(m[0].prefix_blocks, 0);
    ASSERT_OK(ctx, kvrt_cluster_dir_match(dir, &model, keys, 3, 0, m, 4, &count));
    cr_assert_eq(count, 1, "node 2 is resyncing");
    cr_assert_eq(m[0].prefix_blocks, 3);
    cr_assert_eq(m[0].gpu_prefix_blocks, 3);
}

Test(cluster_directory, holds_at_most_64_nodes)
{
    for (uint64_t n = 1; n <= KVRT_CLUSTER_MAX_NODES; n++)
        ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, n, n % 2 ? &model : &other_model, n));
    ASSERT_STATUS(KVRT_ERR_OVERFLOW, kvrt_cluster_dir_add_node(dir, 1000, &model, 1));
    ASSERT_OK(ctx, kvrt_cluster_dir_remove_node(dir, 64));
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 1000, &model, 1));
}

Test(cluster_directory, forget_drops_what_a_peer_announced_but_lacks)
{
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 4, &model, 44));
    kvrt_block_hash_t keys[6];
    kvrt_kv_event_t ev[6];
    for (int i = 0; i < 6; i++) {
        keys[i] = key(i);
        ev[i] = stored((uint64_t)i + 1, (uint64_t)i, i % 2 ? KVRT_KV_TIER_HOST : KVRT_KV_TIER_GPU);
    }
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 4, 44, ev, 6));
    cr_assert_eq(prefix_of(4, keys, 6, 0), 6);
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_NODE, kvrt_cluster_dir_forget(dir, 5, keys, 1));
    ASSERT_OK(ctx, kvrt_cluster_dir_forget(dir, 4, keys + 3, 3));
    cr_assert_eq(prefix_of(4, keys, 6, 0), 3);
    kvrt_cluster_node_info_t info;
    ASSERT_OK(ctx, kvrt_cluster_dir_node_info(dir, 4, &info));
    cr_assert_eq(info.blocks[KVRT_KV_TIER_GPU] + info.blocks[KVRT_KV_TIER_HOST], 3);
    kvrt_cluster_dir_stats_t s;
    ASSERT_OK(ctx, kvrt_cluster_dir_stats(dir, &s));
    cr_assert_eq(s.entries, 3);
    /* The stream goes on: a later STORED brings one back. */
    kvrt_kv_event_t again = stored(7, 3, KVRT_KV_TIER_GPU);
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 4, 44, &again, 1));
    cr_assert_eq(prefix_of(4, keys, 6, 0), 4);
}

Test(cluster_directory, counters_are_ctl_nodes)
{
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 4, &model, 44));
    kvrt_kv_event_t ev[2] = {stored(1, 1, 0), stored(2, 2, 0)};
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 4, 44, ev, 2));
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 4, 44, ev, 2));
    uint64_t v = 0;
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "cluster.dir.0.entries", &v));
    cr_assert_eq(v, 2);
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "cluster.dir.0.events_duplicate", &v));
    cr_assert_eq(v, 2);
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "cluster.dir.0.nodes", &v));
    cr_assert_eq(v, 1);
    ASSERT_OK(ctx, kvrt_cluster_dir_destroy(dir));
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND, kvrt_ctl_get_u64(ctx, "cluster.dir.0.entries", &v));
    dir = NULL;
}
