/*
 * suite_cluster.c - the cluster layer's hot paths:
 *   cluster.dir.apply        kvrt_cluster_dir_apply of a realistic stream:
 *                            8 nodes storing chains of blocks that share
 *                            prefixes (1 in 4 keys is already known), and
 *                            removing the oldest ones, 4,096 events a
 *                            batch (baseline: a plain open-addressing hash
 *                            map insert of the same 128-bit keys, one u64
 *                            value, no tiers, no ids, no validation);
 *                            target >= 5 million events/s on one core
 *   cluster.dir.apply.large  the same with 4x the events (2.5M keys, where
 *                            the table no longer fits any cache)
 *   cluster.dir.match        kvrt_cluster_dir_match of a 2,048-block prompt
 *                            that one node holds whole, per key
 *   cluster.dir.bytes_per_block  memory per distinct tracked key
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "kvrt/kvrt.h"

#define NODES 8u
#define BATCH 4096u
#define CHAIN 2048u

static kvrt_block_hash_t key_of(uint64_t i)
{
    uint64_t x = i * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return (kvrt_block_hash_t){x, x * 0x94D049BB133111EBull + i};
}

/* Node n's stream: STORED of keys from a shared pool (a quarter of a node's
 * keys are another node's), then REMOVED of the oldest half. */
static kvrt_kv_event_t *make_stream(uint32_t node, uint32_t events)
{
    kvrt_kv_event_t *ev = malloc((size_t)events * sizeof(*ev));
    if (!ev)
        return NULL;
    uint32_t stores = events * 2 / 3;
    for (uint32_t i = 0; i < stores; i++) {
        uint64_t k = (i % 4 == 0) ? (uint64_t)i : (uint64_t)node << 40 | i;
        ev[i] = (kvrt_kv_event_t){.event_id = i + 1, .kind = KVRT_KV_EVENT_STORED,
                                  .tier = KVRT_KV_TIER_GPU, .key = key_of(k)};
    }
    for (uint32_t i = stores; i < events; i++) {
        uint32_t j = i - stores;
        ev[i] = ev[j];
        ev[i].event_id = i + 1;
        ev[i].kind = KVRT_KV_EVENT_REMOVED;
    }
    return ev;
}

/* ---- the baseline: a plain hash map, 128-bit key -> u64 --------------------- */

typedef struct plain_slot {
    uint64_t lo, hi, value;
} plain_slot_t;

static double plain_insert_ns(const kvrt_kv_event_t *const *streams, uint32_t events,
                              plain_slot_t *slots, uint64_t cap)
{
    memset(slots, 0, cap * sizeof(*slots));
    uint64_t start = bench_now_ns();
    for (uint32_t n = 0; n < NODES; n++) {
        for (uint32_t i = 0; i < events; i++) {
            const kvrt_block_hash_t *k = &streams[n][i].key;
            uint64_t s = (k->lo * 0x9E3779B97F4A7C15ull) & (cap - 1);
            while (slots[s].value && (slots[s].lo != k->lo || slots[s].hi != k->hi))
                s = (s + 1) & (cap - 1);
            slots[s].lo = k->lo;
            slots[s].hi = k->hi;
            slots[s].value |= 1ull << n;
        }
    }
    return (double)(bench_now_ns() - start);
}

/* One run over a directory whose table was sized and touched by an earlier
 * run (a long-lived directory's steady state): the nodes re-join empty. */
static double dir_apply_ns(kvrt_cluster_dir_t *dir, const kvrt_kv_event_t *const *streams,
                           uint32_t events, int *failed)
{
    const kvrt_block_hash_t model = {7, 7};
    for (uint32_t n = 0; n < NODES; n++) {
        kvrt_cluster_dir_remove_node(dir, n + 1);
        if (kvrt_cluster_dir_add_node(dir, n + 1, &model, 100 + n) != KVRT_OK)
            *failed = 1;
    }
    uint64_t start = bench_now_ns();
    /* Interleaved by batch, as streams arrive from several nodes. */
    for (uint32_t at = 0; at < events; at += BATCH) {
        uint32_t count = events - at < BATCH ? events - at : BATCH;
        for (uint32_t n = 0; n < NODES; n++)
            if (kvrt_cluster_dir_apply(dir, n + 1, 100 + n, streams[n] + at, count) != KVRT_OK)
                *failed = 1;
    }
    return (double)(bench_now_ns() - start);
}

static int run_apply(const bench_options_t *o, uint32_t events, bool large)
{
    kvrt_ctx_t *ctx = NULL;
    if (kvrt_ctx_create(NULL, &ctx) != KVRT_OK)
        return -1;
    kvrt_kv_event_t *streams[NODES] = {0};
    uint64_t cap = 1;
    while (cap < (uint64_t)events * NODES * 2)
        cap <<= 1;
    plain_slot_t *slots = malloc(cap * sizeof(*slots));
    int failed = slots == NULL;
    for (uint32_t n = 0; n < NODES && !failed; n++)
        failed = (streams[n] = make_stream(n, events)) == NULL;
    double dir_rate[100], base_rate[100];
    int repeats = o->repeats > 100 ? 100 : o->repeats;
    kvrt_cluster_dir_t *warm = NULL;
    if (!failed && kvrt_cluster_dir_create(ctx, NULL, &warm) != KVRT_OK)
        failed = 1;
    const kvrt_kv_event_t *const *in = (const kvrt_kv_event_t *const *)streams;
    if (!failed)
        dir_apply_ns(warm, in, events, &failed); /* sizes and touches the table */
    for (int r = 0; r < repeats && !failed; r++) {
        double total = (double)events * NODES;
        dir_rate[r] = total / dir_apply_ns(warm, in, events, &failed) * 1e3;
        base_rate[r] = total / plain_insert_ns(in, events, slots, cap) * 1e3;
    }
    kvrt_cluster_dir_destroy(warm);
    if (!failed && large) {
        bench_report(&(bench_figure_t){.name = "cluster.dir.apply.large", .unit = "Mevents/s",
                                       .value = bench_median(dir_rate, repeats),
                                       .baseline_name = "plain_hashmap.insert",
                                       .baseline_value = bench_median(base_rate, repeats),
                                       .lower_is_better = false,
                                       .note = "8 x 600k events, 2.5M keys: a 320 MB table, "
                                               "bound by DRAM and TLB misses"});
    } else if (!failed) {
        bench_report(&(bench_figure_t){.name = "cluster.dir.apply", .unit = "Mevents/s",
                                       .value = bench_median(dir_rate, repeats),
                                       .baseline_name = "plain_hashmap.insert",
                                       .baseline_value = bench_median(base_rate, repeats),
                                       .target = 5, .lower_is_better = false,
                                       .note = "8 nodes, 2/3 stored, 1/3 removed, batches "
                                               "of 4096"});
        /* Memory: peak table over the keys tracked at the end of a store
         * phase is what a user sizes for; report slot bytes per key at the
         * table's current fill. */
        kvrt_cluster_dir_t *dir = NULL;
        const kvrt_block_hash_t model = {7, 7};
        kvrt_cluster_dir_create(ctx, NULL, &dir);
        kvrt_cluster_dir_add_node(dir, 1, &model, 1);
        uint32_t stores = events * 2 / 3;
        for (uint32_t at = 0; at < stores; at += BATCH)
            kvrt_cluster_dir_apply(dir, 1, 1, streams[0] + at,
                                   stores - at < BATCH ? stores - at : BATCH);
        kvrt_cluster_dir_stats_t s;
        kvrt_cluster_dir_stats(dir, &s);
        bench_report(&(bench_figure_t){.name = "cluster.dir.bytes_per_block", .unit = "bytes",
                                       .value = (double)s.table_bytes / (double)s.entries,
                                       .lower_is_better = true,
                                       .note = "40-byte slots, table 1/4..1/2 full"});
        /* Match: a 2,048-key chain all nodes hold a part of. */
        kvrt_block_hash_t keys[CHAIN];
        for (uint32_t i = 0; i < CHAIN; i++)
            keys[i] = streams[0][i * 4 % stores].key; /* the shared keys */
        kvrt_cluster_match_t m[NODES];
        uint32_t count;
        double match_ns[100];
        const uint32_t queries = o->quick ? 200 : 2000;
        for (int r = 0; r < repeats; r++) {
            uint64_t start = bench_now_ns();
            for (uint32_t q = 0; q < queries; q++)
                kvrt_cluster_dir_match(dir, &model, keys, CHAIN, 0, m, NODES, &count);
            match_ns[r] = (double)(bench_now_ns() - start) / queries / CHAIN;
        }
        bench_consume(m);
        bench_report(&(bench_figure_t){.name = "cluster.dir.match", .unit = "ns/key",
                                       .value = bench_median(match_ns, repeats),
                                       .lower_is_better = true,
                                       .note = "2048-key prompt, 1 node holding it all"});
        kvrt_cluster_dir_destroy(dir);
    }
    for (uint32_t n = 0; n < NODES; n++)
        free(streams[n]);
    free(slots);
    kvrt_ctx_destroy(ctx);
    return failed ? -1 : 0;
}

static int bench_apply(const bench_options_t *o)
{
    /* 8 nodes x 100k stored blocks: ~640k distinct keys, an 80 MB table. */
    if (run_apply(o, o->quick ? 30000 : 150000, false) != 0)
        return -1;
    return o->quick ? 0 : run_apply(o, 600000, true);
}

KVRT_BENCH_SUITE(cluster, "prefix directory: event apply rate, match, memory", bench_apply, true)
