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
 *   cluster.channel.tickets  hand-off tickets of 128 blocks (3 fragments
 *                            each) carried by the cluster channel between
 *                            two agents on loopback TCP, sent and put
 *                            back together, per second (baseline: the
 *                            same number of bare 256-byte notifications
 *                            over the same agents, the channel's carrier)
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

/* ---- the cluster channel ------------------------------------------------------- */

#define CH_TICKETS 2000u
#define CH_WINDOW 32u  /* tickets in flight: below the agent's request limit */
#define CH_BLOCKS 128u /* a 2,048-token prompt's hand-off */

static const uint8_t channel_key[32] = "kvrt-bench-cluster-key-012345678";

typedef struct channel_rig {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *a, *b;
    kvrt_xfer_peer_t *peer; /* a -> b, the baseline's */
    kvrt_cluster_channel_t *ca, *cb;
    char b_addr[96];
    uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    size_t ticket_len;
} channel_rig_t;

/* A real ticket of CH_BLOCKS blocks: a decode node's receiver over b. */
static int make_ticket(channel_rig_t *r)
{
    kvrt_pool_params_t pp = {.layout = {.num_layers = 1, .num_kv_heads = 1, .head_dim = 16,
                                        .tokens_per_block = 16},
                             .num_blocks = CH_BLOCKS + 8};
    kvrt_pool_t *pool = NULL;
    kvrt_sched_t *sched = NULL;
    kvrt_xfer_region_t *region = NULL;
    kvrt_cluster_handoff_recv_t *recv = NULL;
    static int32_t prompt[CH_BLOCKS * 16 + 1];
    for (uint32_t i = 0; i < CH_BLOCKS * 16 + 1; i++)
        prompt[i] = (int32_t)i;
    kvrt_seq_params_t sp = {.prompt = prompt, .prompt_len = CH_BLOCKS * 16 + 1,
                            .max_new_tokens = 1};
    kvrt_xfer_register_params_t rp = {.field_mask = KVRT_XFER_REGISTER_PARAM_POOL |
                                                    KVRT_XFER_REGISTER_PARAM_ACCESS,
                                      .access = KVRT_XFER_REMOTE_WRITE};
    kvrt_seq_id_t seq = 0;
    kvrt_handoff_id_t h = 0;
    kvrt_handoff_accept_params_t ap = {.num_tokens = CH_BLOCKS * 16};
    if (kvrt_pool_create(r->ctx, &pp, &pool) != KVRT_OK ||
        kvrt_sched_create(r->ctx, pool, NULL, NULL, &sched) != KVRT_OK)
        return -1;
    rp.pool = pool;
    kvrt_cluster_handoff_recv_params_t hp = {.agent = r->b, .sched = sched};
    if (kvrt_xfer_register(r->b, &rp, &region) != KVRT_OK)
        return -1;
    hp.region = region;
    int rc = kvrt_cluster_handoff_recv_create(r->ctx, &hp, &recv) != KVRT_OK ||
             kvrt_seq_add(sched, &sp, &seq) != KVRT_OK ||
             kvrt_cluster_handoff_accept(recv, seq, &ap, bench_now_ns(), &h) != KVRT_OK ||
             kvrt_cluster_handoff_ticket(recv, h, r->ticket, sizeof(r->ticket),
                                         &r->ticket_len) != KVRT_OK;
    kvrt_cluster_handoff_recv_destroy(recv); /* the ticket's bytes stay valid */
    return rc ? -1 : 0;
}

static int channel_rig_up(channel_rig_t *r)
{
    memset(r, 0, sizeof(*r));
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = KVRT_LOG_ERROR};
    kvrt_xfer_agent_params_t p = {.field_mask = KVRT_XFER_AGENT_PARAM_BACKEND,
                                  .cluster_key = channel_key, .cluster_key_bytes = 32,
                                  .backend = KVRT_XFER_BACKEND_TCP};
    kvrt_cluster_channel_params_t chp = {0};
    if (kvrt_ctx_create(&cp, &r->ctx) != KVRT_OK ||
        kvrt_xfer_agent_create(r->ctx, &p, &r->a) != KVRT_OK ||
        kvrt_xfer_agent_create(r->ctx, &p, &r->b) != KVRT_OK ||
        kvrt_xfer_agent_address(r->b, r->b_addr, sizeof(r->b_addr)) != KVRT_OK ||
        kvrt_xfer_connect(r->a, r->b_addr, 5000, &r->peer) != KVRT_OK)
        return -1;
    chp.agent = r->a;
    if (kvrt_cluster_channel_create(r->ctx, &chp, &r->ca) != KVRT_OK)
        return -1;
    /* Every ticket in flight may be waiting to be taken at once. */
    chp = (kvrt_cluster_channel_params_t){.field_mask = KVRT_CHANNEL_PARAM_MAX_PENDING,
                                          .agent = r->b,
                                          .max_pending_per_peer = 2 * CH_WINDOW};
    if (kvrt_cluster_channel_create(r->ctx, &chp, &r->cb) != KVRT_OK)
        return -1;
    return make_ticket(r);
}

static void channel_rig_down(channel_rig_t *r)
{
    kvrt_cluster_channel_destroy(r->ca);
    kvrt_cluster_channel_destroy(r->cb);
    kvrt_xfer_agent_destroy(r->a);
    kvrt_xfer_agent_destroy(r->b);
    kvrt_ctx_destroy(r->ctx);
}

/* Seconds to carry `count` tickets over the channel (CH_WINDOW at a time),
 * or -1. */
static double channel_run(channel_rig_t *r, uint32_t count)
{
    kvrt_cluster_msg_t msgs[CH_WINDOW];
    uint64_t start = bench_now_ns(), deadline = start + 60ull * 1000000000u;
    for (uint32_t sent = 0, got = 0; got < count;) {
        while (sent < count && sent - got < CH_WINDOW) {
            if (kvrt_cluster_channel_send_ticket(r->ca, r->b_addr, r->ticket, r->ticket_len) !=
                KVRT_OK)
                return -1;
            sent++;
        }
        uint32_t n = 0;
        kvrt_cluster_channel_poll(r->cb, bench_now_ns(), msgs, CH_WINDOW, &n);
        got += n;
        if (bench_now_ns() > deadline)
            return -1;
    }
    return (double)(bench_now_ns() - start) / 1e9;
}

/* Seconds to carry `count` bare notifications of 256 bytes, or -1. */
static double notify_run(channel_rig_t *r, uint32_t count)
{
    static kvrt_xfer_notification_t notes[CH_WINDOW * 3];
    uint8_t bytes[KVRT_XFER_NOTIFY_MAX];
    memset(bytes, 0x5a, sizeof(bytes));
    uint64_t start = bench_now_ns(), deadline = start + 60ull * 1000000000u;
    for (uint32_t sent = 0, got = 0; got < count;) {
        while (sent < count && sent - got < CH_WINDOW * 3) {
            if (kvrt_xfer_notify(r->peer, bytes, sizeof(bytes)) != KVRT_OK)
                return -1;
            sent++;
        }
        uint32_t n = 0;
        kvrt_xfer_notifications(r->b, notes, CH_WINDOW * 3, &n);
        got += n;
        if (bench_now_ns() > deadline)
            return -1;
    }
    return (double)(bench_now_ns() - start) / 1e9;
}

static int bench_channel(const bench_options_t *o)
{
    channel_rig_t *r = calloc(1, sizeof(*r));
    if (!r || channel_rig_up(r) != 0) {
        if (r)
            channel_rig_down(r);
        free(r);
        return -1;
    }
    uint32_t count = o->quick ? CH_TICKETS / 10 : CH_TICKETS;
    uint32_t fragments = (uint32_t)((r->ticket_len + 231) / 232);
    int repeats = o->repeats > 100 ? 100 : o->repeats;
    double rate[100], base[100];
    int failed = 0;
    for (int i = 0; i < repeats && !failed; i++) {
        double t = channel_run(r, count), b = notify_run(r, count * fragments);
        failed = t <= 0 || b <= 0;
        rate[i] = count / t / 1e3;
        base[i] = count / b / 1e3; /* tickets' worth of notifications */
    }
    if (!failed)
        bench_report(&(bench_figure_t){.name = "cluster.channel.tickets", .unit = "ktickets/s",
                                       .value = bench_median(rate, repeats),
                                       .baseline_name = "xfer.notify.same_fragments",
                                       .baseline_value = bench_median(base, repeats),
                                       .lower_is_better = false,
                                       .note = "128-block tickets (3 notifications each), "
                                               "32 in flight, loopback TCP"});
    channel_rig_down(r);
    free(r);
    return failed ? -1 : 0;
}

static int bench_cluster(const bench_options_t *o)
{
    if (bench_apply(o) != 0)
        return -1;
    return bench_channel(o);
}

KVRT_BENCH_SUITE(cluster, "prefix directory: event apply rate, match, memory; the channel",
                 bench_cluster, true)
