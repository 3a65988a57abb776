/*
 * test_cluster_pull_tier.c - pulling a prefix a peer holds below its pool
 * (two nodes, two agents on loopback, one process). The holder's KV-event
 * publisher follows its prefix cache and its tier stack, so the directory
 * learns, per tier, where the holder's blocks went when its pool evicted
 * them: host memory, then SSD. The puller's plan prices the tier's extra
 * copy, the holder brings the blocks back into pool blocks (its tier's
 * onload) and sends them, and the puller's request starts from bytes that
 * match what the holder computed. A block gone from every tier ends the
 * pull cleanly and its entries leave the directory. Nothing stays held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "../test_dirs.h"
#include "kvrt/tier.h"
#include "test_cluster_handoff_util.h"

#define NBLOCKS 32u
#define PTPB 16u
#define PLEN 70u /* 4 full blocks and 6 tokens */
#define PKEYS (PLEN / PTPB)
#define HOLDER 1u
#define PULLER 2u

typedef struct world {
    kvrt_ctx_t *ctx;
    /* the holder: pool, cache, tier stack, publisher, sending agent */
    kvrt_pool_t *hpool;
    kvrt_cache_t *hcache;
    kvrt_tier_t *htier;
    kvrt_kv_events_t *events;
    kvrt_xfer_agent_t *hagent;
    kvrt_xfer_region_t *hregion;
    kvrt_cluster_handoff_sender_t *sender;
    /* the puller */
    kvrt_pool_t *ppool;
    kvrt_cache_t *pcache;
    kvrt_sched_t *psched;
    kvrt_xfer_agent_t *pagent;
    kvrt_xfer_region_t *pregion;
    kvrt_cluster_handoff_recv_t *recv;
    kvrt_cluster_dir_t *dir;
    kvrt_block_hash_t model;
    int32_t prompt[PLEN];
    kvrt_block_hash_t keys[PKEYS];
    char ssd_dir[64];
} world_t;

/* Applies the holder's untaken events to the directory. */
static void publish(world_t *w)
{
    static kvrt_kv_event_t ev[4096];
    uint32_t n = 0;
    uint64_t epoch = 0;
    do {
        ASSERT_OK(w->ctx, kvrt_kv_events_take(w->events, ev, 4096, &n, &epoch));
        ASSERT_OK(w->ctx, kvrt_cluster_dir_apply(w->dir, HOLDER, epoch, ev, n));
    } while (n == 4096);
}

/* The holder's prefix of the prompt in the tiers of mask, per the directory. */
static uint32_t holder_prefix(world_t *w, uint32_t mask)
{
    kvrt_cluster_match_t m[2];
    uint32_t n = 0;
    ASSERT_OK(w->ctx, kvrt_cluster_dir_match(w->dir, &w->model, w->keys, PKEYS, mask, m, 2, &n));
    for (uint32_t i = 0; i < n; i++)
        if (m[i].node_id == HOLDER)
            return m[i].prefix_blocks;
    return 0;
}

static void hsettle(world_t *w)
{
    uint32_t n = 0;
    ASSERT_OK(w->ctx, kvrt_tier_drain(w->htier, 10000, NULL, 0, &n));
}

/* Allocates and frees every block the holder's pool can give: its cache
 * evicts everything into the tier stack. */
static void hsqueeze(world_t *w)
{
    hsettle(w); /* the tier copies the next victims ahead */
    kvrt_pool_info_t info;
    ASSERT_OK(w->ctx, kvrt_pool_info(w->hpool, &info));
    int32_t blocks[NBLOCKS];
    uint32_t count = info.free_blocks + info.cached_blocks;
    ASSERT_OK(w->ctx, kvrt_pool_alloc(w->hpool, count, blocks));
    ASSERT_OK(w->ctx, kvrt_pool_free(w->hpool, count, blocks));
    hsettle(w);
}

/* Caches `nb` blocks of a prompt seeded `seed` in the holder's pool; with
 * seed 0, the world's prompt with every block's bytes set to the pattern
 * of its index. */
static void hprefill(world_t *w, int32_t seed, uint32_t nb)
{
    int32_t t[PKEYS * PTPB];
    for (uint32_t i = 0; i < nb * PTPB; i++)
        t[i] = seed ? seed * 1000 + (int32_t)i : w->prompt[i];
    kvrt_block_hash_t parent;
    ASSERT_OK(w->ctx, kvrt_cache_root(w->hcache, &parent));
    for (uint32_t b = 0; b < nb; b++) {
        int32_t block;
        kvrt_block_hash_t h;
        ASSERT_OK(w->ctx, kvrt_pool_alloc(w->hpool, 1, &block));
        ASSERT_OK(w->ctx, kvrt_block_hash(&parent, t + b * PTPB, PTPB, b * PTPB, NULL, &h));
        tch_block_pattern(w->hpool, block, seed ? 100u + b : b, true);
        ASSERT_OK(w->ctx, kvrt_cache_insert(w->hcache, block, &h, NULL, b, NULL));
        ASSERT_OK(w->ctx, kvrt_pool_free(w->hpool, 1, &block));
        parent = h;
    }
}

/* The holder's tier stack (host memory; with an SSD directory, a small
 * host tier over SSD), followed by its publisher. */
static void htier_up(world_t *w)
{
    kvrt_tier_params_t tp = {.field_mask =
                                 KVRT_TIER_PARAM_HOST_BLOCKS | KVRT_TIER_PARAM_QUEUE_DEPTH,
                             .host_blocks = 64,
                             .queue_depth = 4};
    if (w->ssd_dir[0]) {
        tp.field_mask |= KVRT_TIER_PARAM_SSD | KVRT_TIER_PARAM_FLAGS;
        tp.host_blocks = 16; /* the least recent go on to SSD */
        tp.ssd_blocks = 64;
        tp.ssd_dir = w->ssd_dir;
        tp.flags = KVRT_TIER_SSD_BUFFERED;
    }
    ASSERT_OK(w->ctx, kvrt_tier_create(w->hcache, &tp, &w->htier));
    ASSERT_OK(w->ctx, kvrt_kv_events_attach_tier(w->events, w->htier));
}

static world_t world_up(bool ssd)
{
    world_t w = {0};
    w.ctx = txu_ctx();
    w.hpool = txu_pool(w.ctx, NBLOCKS, KVRT_ORDER_LAYER_MAJOR, KVRT_KV_SEPARATE);
    ASSERT_OK(w.ctx, kvrt_cache_create(w.hpool, NULL, &w.hcache));
    ASSERT_OK(w.ctx, kvrt_kv_events_create(w.ctx, NULL, &w.events));
    ASSERT_OK(w.ctx, kvrt_kv_events_attach(w.events, w.hcache, KVRT_KV_TIER_GPU));
    if (ssd) {
        snprintf(w.ssd_dir, sizeof(w.ssd_dir), "/tmp/kvrt-pull-tier-XXXXXX");
        cr_assert_not_null(mkdtemp(w.ssd_dir));
    }
    htier_up(&w);
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_kv_events_attach_tier(w.events, w.htier));
    w.hagent = txu_agent(w.ctx, 3000);
    w.hregion = txu_register_pool(w.ctx, w.hagent, w.hpool);
    kvrt_cluster_handoff_sender_params_t sp = {.field_mask = KVRT_HANDOFF_SENDER_PARAM_INTEGRITY,
                                               .agent = w.hagent,
                                               .region = w.hregion,
                                               .integrity = 1};
    ASSERT_OK(w.ctx, kvrt_cluster_handoff_sender_create(w.ctx, &sp, &w.sender));

    w.ppool = txu_pool(w.ctx, NBLOCKS, KVRT_ORDER_LAYER_MAJOR, KVRT_KV_SEPARATE);
    ASSERT_OK(w.ctx, kvrt_cache_create(w.ppool, NULL, &w.pcache));
    kvrt_sched_params_t schp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK, .use_watermark = 0};
    ASSERT_OK(w.ctx, kvrt_sched_create(w.ctx, w.ppool, w.pcache, &schp, &w.psched));
    w.pagent = txu_agent(w.ctx, 3000);
    w.pregion = txu_register_pool(w.ctx, w.pagent, w.ppool);
    kvrt_cluster_handoff_recv_params_t rp = {
        .agent = w.pagent, .region = w.pregion, .sched = w.psched};
    ASSERT_OK(w.ctx, kvrt_cluster_handoff_recv_create(w.ctx, &rp, &w.recv));

    w.model = (kvrt_block_hash_t){.lo = 0x1234, .hi = 0x5678};
    uint64_t epoch = 0;
    ASSERT_OK(w.ctx, kvrt_kv_events_epoch(w.events, &epoch, NULL));
    ASSERT_OK(w.ctx, kvrt_cluster_dir_create(w.ctx, NULL, &w.dir));
    ASSERT_OK(w.ctx, kvrt_cluster_dir_add_node(w.dir, HOLDER, &w.model, epoch));
    ASSERT_OK(w.ctx, kvrt_cluster_dir_add_node(w.dir, PULLER, &w.model, 99));

    for (uint32_t i = 0; i < PLEN; i++)
        w.prompt[i] = (int32_t)(500 + i);
    kvrt_block_hash_t parent;
    ASSERT_OK(w.ctx, kvrt_cache_root(w.hcache, &parent));
    for (uint32_t b = 0; b < PKEYS; b++) {
        ASSERT_OK(w.ctx,
                  kvrt_block_hash(&parent, w.prompt + b * PTPB, PTPB, b * PTPB, NULL, &w.keys[b]));
        parent = w.keys[b];
    }
    /* The holder computes the prompt's blocks; the directory sees them on GPU. */
    hprefill(&w, 0, PKEYS);
    publish(&w);
    cr_assert_eq(holder_prefix(&w, 1u << KVRT_KV_TIER_GPU), PKEYS);
    return w;
}

/* Pushes the prompt's blocks out of the holder's pool: into host memory,
 * or (with SSD) on to SSD, until the directory sees them only there. */
static void push_down(world_t *w, kvrt_kv_tier_t where)
{
    uint32_t below = 1u << where;
    for (int round = 0; round < 50; round++) {
        hsqueeze(w);
        hprefill(w, 7 + round, 2); /* more pressure, other keys */
        hsqueeze(w);
        publish(w);
        if (holder_prefix(w, 1u << KVRT_KV_TIER_GPU) == 0 &&
            holder_prefix(w, 1u << KVRT_KV_TIER_HOST) == (where == KVRT_KV_TIER_HOST ? PKEYS : 0) &&
            holder_prefix(w, below) == PKEYS)
            return;
    }
    cr_assert_fail("the prompt's blocks did not settle in tier %d: gpu %u host %u disk %u",
                   (int)where, holder_prefix(w, 1u << KVRT_KV_TIER_GPU),
                   holder_prefix(w, 1u << KVRT_KV_TIER_HOST),
                   holder_prefix(w, 1u << KVRT_KV_TIER_DISK));
}

static kvrt_cluster_pull_plan_t plan_for(world_t *w)
{
    kvrt_pool_info_t info;
    ASSERT_OK(w->ctx, kvrt_pool_info(w->ppool, &info));
    kvrt_cluster_pull_cost_t cost = {.block_bytes = info.block_bytes, .tokens_per_block = PTPB};
    kvrt_cluster_pull_plan_t plan;
    ASSERT_OK(w->ctx,
              kvrt_cluster_pull_plan(w->dir, &w->model, PULLER, w->keys, PKEYS, &cost, &plan));
    return plan;
}

/* The whole pull: the puller admits, the holder serves (its engine loop
 * polls the tier and hands the reports to the sender), the puller polls. */
static kvrt_handoff_completion_t pull(world_t *w, kvrt_seq_id_t seq, uint32_t blocks)
{
    kvrt_handoff_accept_params_t ap = {.num_tokens = blocks * PTPB};
    kvrt_handoff_id_t h = 0;
    ASSERT_OK(w->ctx, kvrt_cluster_handoff_accept(w->recv, seq, &ap, tch_now_ns(), &h));
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    size_t len = 0;
    ASSERT_OK(w->ctx, kvrt_cluster_handoff_ticket(w->recv, h, ticket, sizeof(ticket), &len));
    kvrt_cluster_handoff_send_t *send = NULL;
    ASSERT_OK(w->ctx, kvrt_cluster_pull_serve(w->sender, w->hpool, w->hcache, w->htier, NULL,
                                              w->keys, PKEYS, ticket, len, &send));
    tch_send_finish(w->ctx, w->sender, w->htier, send);
    kvrt_handoff_completion_t c = tch_wait_one(w->ctx, w->recv, NULL);
    cr_assert_eq(c.handoff, h);
    return c;
}

/* Runs the puller's request to its end; returns its first plan entry. */
static kvrt_plan_seq_t prun(world_t *w, kvrt_seq_id_t seq)
{
    kvrt_plan_seq_t first = {0};
    kvrt_seq_info_t ended = {0};
    uint32_t got = 0;
    for (int i = 0; i < 100 && got == 0; i++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(w->ctx, kvrt_sched_step(w->psched, tch_now_ns(), &plan));
        for (uint32_t j = 0; j < plan->num_seqs; j++)
            if (plan->seqs[j].id == seq && first.id == 0)
                first = plan->seqs[j];
        if (plan->num_seqs)
            tch_commit(w->ctx, w->psched, plan, 5);
        ASSERT_OK(w->ctx, kvrt_sched_drain_ended(w->psched, &ended, 1, &got));
    }
    cr_assert_eq(got, 1, "the request did not end");
    return first;
}

static kvrt_seq_id_t padd(world_t *w)
{
    kvrt_seq_params_t p = {.prompt = w->prompt, .prompt_len = PLEN, .max_new_tokens = 2};
    kvrt_seq_id_t id = 0;
    ASSERT_OK(w->ctx, kvrt_seq_add(w->psched, &p, &id));
    return id;
}

static void world_down(world_t *w)
{
    kvrt_ctx_t *ctx = w->ctx;
    /* The tier goes first: its keys leave the publisher's set. */
    hsettle(w);
    ASSERT_OK(ctx, kvrt_tier_destroy(w->htier));
    kvrt_kv_event_t snap[NBLOCKS * 4];
    uint32_t n = 0;
    ASSERT_OK(ctx, kvrt_kv_events_snapshot(w->events, snap, NBLOCKS * 4, &n, NULL));
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(snap[i].tier, KVRT_KV_TIER_GPU, "a destroyed tier's key is still announced");
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND, kvrt_kv_events_detach_tier(w->events));
    ASSERT_OK(ctx, kvrt_cluster_handoff_sender_destroy(w->sender));
    kvrt_handoff_recv_stats_t rs;
    ASSERT_OK(ctx, kvrt_cluster_handoff_recv_stats(w->recv, &rs));
    cr_assert_eq(rs.live + rs.quarantined, 0);
    ASSERT_OK(ctx, kvrt_cluster_handoff_recv_destroy(w->recv));
    kvrt_cluster_dir_destroy(w->dir);
    kvrt_kv_events_destroy(w->events);
    kvrt_pool_t *pools[2] = {w->hpool, w->ppool};
    kvrt_cache_t *caches[2] = {w->hcache, w->pcache};
    for (int i = 0; i < 2; i++)
        tch_pool_clean(ctx, pools[i], caches[i]);
    cr_assert_eq(txu_stat_drained(ctx, "xfer.0.outstanding", 5000), 0);
    cr_assert_eq(txu_stat_drained(ctx, "xfer.1.outstanding", 5000), 0);
    ASSERT_OK(ctx, kvrt_xfer_deregister(w->hregion));
    ASSERT_OK(ctx, kvrt_xfer_deregister(w->pregion));
    cr_assert_eq(txu_stat(ctx, "xfer.0.regions"), 0);
    cr_assert_eq(txu_stat(ctx, "xfer.1.regions"), 0);
    kvrt_xfer_agent_destroy(w->hagent);
    kvrt_xfer_agent_destroy(w->pagent);
    kvrt_sched_destroy(w->psched);
    kvrt_cache_destroy(w->pcache);
    kvrt_cache_destroy(w->hcache);
    kvrt_pool_destroy(w->ppool);
    kvrt_pool_destroy(w->hpool);
    kvrt_ctx_destroy(ctx);
    if (w->ssd_dir[0])
        remove_dir(w->ssd_dir);
}

/* Pulls the prompt's 4 blocks from where push_down left them and checks
 * every byte and the request's start. */
static void pull_from(kvrt_kv_tier_t where)
{
    world_t w = world_up(where == KVRT_KV_TIER_DISK);
    push_down(&w, where);
    kvrt_cluster_pull_plan_t plan = plan_for(&w);
    cr_assert_eq(plan.node_id, HOLDER);
    cr_assert_eq(plan.peer_blocks, PKEYS);
    cr_assert_eq(plan.tier_blocks[KVRT_KV_TIER_GPU], 0);
    cr_assert_eq(plan.tier_blocks[where], PKEYS, "the plan prices the blocks from the wrong tier");
    cr_assert_eq(plan.worth, 1, "transfer %.1f us vs recompute %.1f us", plan.transfer_us,
                 plan.recompute_us);
    /* The tier's copy is priced: a GPU-resident run of the same length costs
     * less. */
    uint32_t on_gpu[KVRT_KV_TIERS] = {PKEYS, 0, 0};
    double gpu_us = 0;
    kvrt_pool_info_t info;
    ASSERT_OK(w.ctx, kvrt_pool_info(w.ppool, &info));
    kvrt_cluster_pull_cost_t cost = {.block_bytes = info.block_bytes, .tokens_per_block = PTPB};
    ASSERT_OK(w.ctx, kvrt_cluster_pull_cost_us(&cost, on_gpu, &gpu_us, NULL));
    cr_assert_lt(gpu_us, plan.transfer_us);

    kvrt_seq_id_t seq = padd(&w);
    kvrt_handoff_completion_t c = pull(&w, seq, plan.peer_blocks);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_LANDED, "outcome %u status %d", c.outcome, c.status);
    cr_assert_eq(c.landed_blocks, PKEYS);
    const int32_t *blocks = NULL;
    uint32_t nb = 0;
    ASSERT_OK(w.ctx, kvrt_seq_blocks(w.psched, seq, &blocks, &nb, NULL));
    cr_assert_eq(nb, PKEYS);
    for (uint32_t b = 0; b < PKEYS; b++)
        cr_assert(tch_block_pattern(w.ppool, blocks[b], b, false),
                  "block %u pulled from tier %d differs from what the holder computed", b,
                  (int)where);
    kvrt_plan_seq_t first = prun(&w, seq);
    cr_assert_eq(first.num_computed_tokens, PKEYS * PTPB);
    /* Bringing them back cached them again on the holder's GPU. */
    publish(&w);
    cr_assert_eq(holder_prefix(&w, 1u << KVRT_KV_TIER_GPU), PKEYS);
    world_down(&w);
}

Test(cluster_pull_tier, a_block_evicted_to_host_memory_is_pulled_byte_for_byte, .timeout = 60)
{
    pull_from(KVRT_KV_TIER_HOST);
}

Test(cluster_pull_tier, a_block_written_back_to_ssd_is_pulled_byte_for_byte, .timeout = 60)
{
    pull_from(KVRT_KV_TIER_DISK);
}

Test(cluster_pull_tier, a_block_gone_from_every_tier_fails_the_pull_and_leaves_the_directory,
     .timeout = 60)
{
    world_t w = world_up(false);
    push_down(&w, KVRT_KV_TIER_HOST);
    /* The holder's host memory loses the prompt's blocks to other keys,
     * and the directory has not heard yet (those events are in flight). */
    for (int round = 0; round < 40; round++) {
        hprefill(&w, 50 + round, 2);
        hsqueeze(&w);
    }
    /* The other keys went into host memory (copied ahead of the pool's
     * evictions) and pushed the prompt's blocks out of it. */
    kvrt_tier_stats_t ts;
    ASSERT_OK(w.ctx, kvrt_tier_stats(w.htier, &ts));
    cr_assert_geq(ts.host.evictions, PKEYS, "host memory evicted %llu blocks (offloads %llu, "
                  "drops %llu)", (unsigned long long)ts.host.evictions,
                  (unsigned long long)ts.host.offloads, (unsigned long long)ts.host.drops);
    kvrt_cluster_pull_plan_t plan = plan_for(&w);
    cr_assert_eq(plan.node_id, HOLDER);
    cr_assert_eq(plan.tier_blocks[KVRT_KV_TIER_HOST], PKEYS);

    kvrt_seq_id_t seq = padd(&w);
    kvrt_handoff_completion_t c = pull(&w, seq, plan.peer_blocks);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_RECOMPUTED, "outcome %u status %d: the pull landed "
                 "blocks the holder no longer has", c.outcome, c.status);
    cr_assert_eq(c.status, KVRT_ERR_CANCELED);
    cr_assert_eq(c.landed_blocks, 0);
    ASSERT_OK(w.ctx, kvrt_cluster_pull_forget(w.dir, HOLDER, w.keys, PKEYS, &c));
    cr_assert_eq(holder_prefix(&w, KVRT_KV_TIER_MASK_ALL), 0, "the false entries stay");
    kvrt_plan_seq_t first = prun(&w, seq);
    cr_assert_eq(first.num_computed_tokens, 0);
    publish(&w);
    cr_assert_eq(holder_prefix(&w, KVRT_KV_TIER_MASK_ALL), 0);
    world_down(&w);
}

Test(cluster_pull_tier, a_restarted_tier_announces_what_its_ssd_file_holds_and_serves_it,
     .timeout = 60)
{
    world_t w = world_up(true);
    push_down(&w, KVRT_KV_TIER_DISK);
    /* The tier stack goes: its keys leave the directory with it. */
    hsettle(&w);
    ASSERT_OK(w.ctx, kvrt_tier_destroy(w.htier));
    publish(&w);
    cr_assert_eq(holder_prefix(&w, KVRT_KV_TIER_MASK_ALL), 0);
    /* A new one over the same SSD file rebuilds its index; attaching the
     * publisher announces what it found. */
    htier_up(&w);
    publish(&w);
    cr_assert_eq(holder_prefix(&w, 1u << KVRT_KV_TIER_DISK), PKEYS);
    kvrt_cluster_pull_plan_t plan = plan_for(&w);
    cr_assert_eq(plan.tier_blocks[KVRT_KV_TIER_DISK], PKEYS);
    kvrt_seq_id_t seq = padd(&w);
    kvrt_handoff_completion_t c = pull(&w, seq, plan.peer_blocks);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_LANDED, "outcome %u status %d", c.outcome, c.status);
    const int32_t *blocks = NULL;
    ASSERT_OK(w.ctx, kvrt_seq_blocks(w.psched, seq, &blocks, NULL, NULL));
    for (uint32_t b = 0; b < PKEYS; b++)
        cr_assert(tch_block_pattern(w.ppool, blocks[b], b, false),
                  "block %u read back from the SSD file differs", b);
    prun(&w, seq);
    world_down(&w);
}
