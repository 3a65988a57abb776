/*
 * test_cluster_pull.c - pulling a prefix from a peer over the transfer
 * engine (two nodes, two agents on loopback, one process): the directory
 * and the cost model pick the peer, the peer serves the blocks from its
 * prefix cache, the puller's request starts from them; a peer that
 * announced blocks it does not hold delivers those it has, the pull ends
 * cleanly with the rest recomputed, and its false entries leave the
 * directory. Nothing is left held on either node.
 */
#include <stdio.h>
#include <stdlib.h>

#include "test_cluster_handoff_util.h"

#define BLOCKS 32u
#define TPB 16u
#define PROMPT 70u /* 4 full blocks and 6 tokens */
#define HOLDER 1u
#define PULLER 2u

typedef struct node {
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;
    kvrt_sched_t *sched;
    kvrt_xfer_agent_t *agent;
    kvrt_xfer_region_t *region;
} node_t;

typedef struct world {
    kvrt_ctx_t *ctx;
    node_t holder, puller;
    kvrt_cluster_dir_t *dir;
    kvrt_cluster_handoff_recv_t *recv;     /* the puller's */
    kvrt_cluster_handoff_sender_t *sender; /* the holder's */
    kvrt_block_hash_t model;
    int32_t prompt[PROMPT];
    kvrt_block_hash_t keys[PROMPT / TPB];
} world_t;

static node_t node_up(kvrt_ctx_t *ctx)
{
    node_t n = {0};
    n.pool = txu_pool(ctx, BLOCKS, KVRT_ORDER_LAYER_MAJOR, KVRT_KV_SEPARATE);
    ASSERT_OK(ctx, kvrt_cache_create(n.pool, NULL, &n.cache));
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK, .use_watermark = 0};
    ASSERT_OK(ctx, kvrt_sched_create(ctx, n.pool, n.cache, &sp, &n.sched));
    n.agent = txu_agent(ctx, 3000);
    n.region = txu_register_pool(ctx, n.agent, n.pool);
    return n;
}

/* Runs the node's requests to their end (bounded); returns the plan entry
 * of `seq` in the first step (its computed tokens tell where it started). */
static kvrt_plan_seq_t run(kvrt_ctx_t *ctx, node_t *n, kvrt_seq_id_t seq)
{
    kvrt_plan_seq_t first = {0};
    kvrt_seq_info_t ended = {0};
    uint32_t got = 0;
    for (int i = 0; i < 100 && got == 0; i++) {
        const kvrt_batch_plan_t *plan;
        ASSERT_OK(ctx, kvrt_sched_step(n->sched, tch_now_ns(), &plan));
        for (uint32_t j = 0; j < plan->num_seqs; j++)
            if (plan->seqs[j].id == seq && first.id == 0)
                first = plan->seqs[j];
        if (plan->num_seqs)
            tch_commit(ctx, n->sched, plan, 5);
        ASSERT_OK(ctx, kvrt_sched_drain_ended(n->sched, &ended, 1, &got));
    }
    cr_assert_eq(got, 1, "the request did not end");
    cr_assert_eq(ended.end_reason, KVRT_END_LENGTH);
    return first;
}

static kvrt_seq_id_t add(kvrt_ctx_t *ctx, node_t *n, const int32_t *prompt, uint32_t len)
{
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = len, .max_new_tokens = 2};
    kvrt_seq_id_t id = 0;
    ASSERT_OK(ctx, kvrt_seq_add(n->sched, &p, &id));
    return id;
}

/* Writes the pattern into the holder's cached block of prompt block `index`. */
static void fill_cached(world_t *w, uint32_t index)
{
    int32_t block = 0;
    ASSERT_OK(w->ctx, kvrt_cache_lookup(w->holder.cache, &w->keys[index], NULL, &block));
    cr_assert_neq(block, KVRT_NULL_BLOCK);
    tch_block_pattern(w->holder.pool, block, index, true);
    ASSERT_OK(w->ctx, kvrt_pool_free(w->holder.pool, 1, &block));
}

/* Two nodes; the holder has computed the first `held` blocks of the prompt
 * (a request that shares them) but the directory believes it holds
 * `announced`. */
static world_t world_up(uint32_t held, uint32_t announced)
{
    world_t w = {0};
    w.ctx = txu_ctx();
    w.holder = node_up(w.ctx);
    w.puller = node_up(w.ctx);
    for (uint32_t i = 0; i < PROMPT; i++)
        w.prompt[i] = (int32_t)(500 + i);
    kvrt_block_hash_t parent;
    ASSERT_OK(w.ctx, kvrt_cache_root(w.holder.cache, &parent));
    for (uint32_t b = 0; b < PROMPT / TPB; b++) {
        ASSERT_OK(w.ctx, kvrt_block_hash(&parent, w.prompt + b * TPB, TPB, b * TPB, NULL,
                                         &w.keys[b]));
        parent = w.keys[b];
    }
    /* The holder computes a prompt sharing `held` full blocks. */
    int32_t other[PROMPT];
    memcpy(other, w.prompt, sizeof(other));
    uint32_t other_len = held * TPB + 3;
    for (uint32_t i = held * TPB; i < other_len; i++)
        other[i] = 9;
    run(w.ctx, &w.holder, add(w.ctx, &w.holder, other, other_len));
    for (uint32_t b = 0; b < held; b++)
        fill_cached(&w, b);

    /* The directory: what the holder announced. */
    w.model = (kvrt_block_hash_t){.lo = 0x1234, .hi = 0x5678};
    ASSERT_OK(w.ctx, kvrt_cluster_dir_create(w.ctx, NULL, &w.dir));
    ASSERT_OK(w.ctx, kvrt_cluster_dir_add_node(w.dir, HOLDER, &w.model, 77));
    ASSERT_OK(w.ctx, kvrt_cluster_dir_add_node(w.dir, PULLER, &w.model, 78));
    kvrt_kv_event_t ev[PROMPT / TPB];
    for (uint32_t b = 0; b < announced; b++)
        ev[b] = (kvrt_kv_event_t){.event_id = b + 1, .kind = KVRT_KV_EVENT_STORED,
                                  .tier = KVRT_KV_TIER_GPU, .key = w.keys[b]};
    ASSERT_OK(w.ctx, kvrt_cluster_dir_apply(w.dir, HOLDER, 77, ev, announced));

    kvrt_cluster_handoff_recv_params_t rp = {.agent = w.puller.agent,
                                             .region = w.puller.region,
                                             .sched = w.puller.sched};
    ASSERT_OK(w.ctx, kvrt_cluster_handoff_recv_create(w.ctx, &rp, &w.recv));
    kvrt_cluster_handoff_sender_params_t sp = {
        .field_mask = KVRT_HANDOFF_SENDER_PARAM_INTEGRITY, .agent = w.holder.agent,
        .region = w.holder.region, .integrity = 1};
    ASSERT_OK(w.ctx, kvrt_cluster_handoff_sender_create(w.ctx, &sp, &w.sender));
    return w;
}

static void node_down(kvrt_ctx_t *ctx, node_t *n, const char *agent)
{
    tch_pool_clean(ctx, n->pool, n->cache);
    char name[64];
    snprintf(name, sizeof(name), "%s.outstanding", agent);
    cr_assert_eq(txu_stat_drained(ctx, name, 5000), 0);
    ASSERT_OK(ctx, kvrt_xfer_deregister(n->region));
    snprintf(name, sizeof(name), "%s.regions", agent);
    cr_assert_eq(txu_stat(ctx, name), 0);
    kvrt_xfer_agent_destroy(n->agent);
    kvrt_sched_destroy(n->sched);
    kvrt_cache_destroy(n->cache);
    kvrt_pool_destroy(n->pool);
}

static void world_down(world_t *w)
{
    ASSERT_OK(w->ctx, kvrt_cluster_handoff_sender_destroy(w->sender));
    kvrt_handoff_recv_stats_t st;
    ASSERT_OK(w->ctx, kvrt_cluster_handoff_recv_stats(w->recv, &st));
    cr_assert_eq(st.live + st.quarantined, 0);
    ASSERT_OK(w->ctx, kvrt_cluster_handoff_recv_destroy(w->recv));
    kvrt_cluster_dir_destroy(w->dir);
    node_down(w->ctx, &w->holder, "xfer.0");
    node_down(w->ctx, &w->puller, "xfer.1");
    kvrt_ctx_destroy(w->ctx);
}

/* The puller's side up to the end of the transfer; returns its completion. */
static kvrt_handoff_completion_t pull(world_t *w, kvrt_seq_id_t seq,
                                      const kvrt_cluster_pull_plan_t *plan)
{
    kvrt_handoff_accept_params_t ap = {.num_tokens = plan->peer_blocks * TPB};
    kvrt_handoff_id_t h = 0;
    ASSERT_OK(w->ctx, kvrt_cluster_handoff_accept(w->recv, seq, &ap, tch_now_ns(), &h));
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    size_t len = 0;
    ASSERT_OK(w->ctx, kvrt_cluster_handoff_ticket(w->recv, h, ticket, sizeof(ticket), &len));
    /* ... the ticket and the prompt's block hashes travel to the peer ... */
    kvrt_cluster_handoff_send_t *send = NULL;
    ASSERT_OK(w->ctx, kvrt_cluster_pull_serve(w->sender, w->holder.pool, w->holder.cache, NULL, NULL,
                                              w->keys, PROMPT / TPB, ticket, len, &send));
    tch_send_finish(w->ctx, w->sender, NULL, send);
    kvrt_handoff_completion_t c = tch_wait_one(w->ctx, w->recv, NULL);
    cr_assert_eq(c.handoff, h);
    return c;
}

static kvrt_cluster_pull_plan_t plan_for(world_t *w)
{
    kvrt_pool_info_t info;
    ASSERT_OK(w->ctx, kvrt_pool_info(w->puller.pool, &info));
    kvrt_cluster_pull_cost_t cost = {.block_bytes = info.block_bytes, .tokens_per_block = TPB};
    kvrt_cluster_pull_plan_t plan;
    ASSERT_OK(w->ctx, kvrt_cluster_pull_plan(w->dir, &w->model, PULLER, w->keys, PROMPT / TPB,
                                             &cost, &plan));
    return plan;
}

Test(cluster_pull, a_missing_prefix_is_pulled_when_cheaper_and_the_request_starts_from_it,
     .timeout = 60)
{
    world_t w = world_up(4, 4);
    kvrt_cluster_pull_plan_t plan = plan_for(&w);
    cr_assert_eq(plan.node_id, HOLDER);
    cr_assert_eq(plan.local_blocks, 0);
    cr_assert_eq(plan.peer_blocks, 4);
    cr_assert_eq(plan.worth, 1, "transfer %.1f us vs recompute %.1f us", plan.transfer_us,
                 plan.recompute_us);

    /* A slow enough network makes recomputing cheaper. */
    kvrt_pool_info_t info;
    ASSERT_OK(w.ctx, kvrt_pool_info(w.puller.pool, &info));
    kvrt_cluster_pull_cost_t slow = {.field_mask = KVRT_PULL_COST_NET_GBPS |
                                                   KVRT_PULL_COST_LATENCY,
                                     .block_bytes = info.block_bytes, .tokens_per_block = TPB,
                                     .net_gbps = 0.01, .latency_us = 5000};
    kvrt_cluster_pull_plan_t no;
    ASSERT_OK(w.ctx, kvrt_cluster_pull_plan(w.dir, &w.model, PULLER, w.keys, 4, &slow, &no));
    cr_assert_eq(no.worth, 0);
    slow.net_gbps = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_cluster_pull_plan(w.dir, &w.model, PULLER, w.keys, 4, &slow, &no));
    slow.net_gbps = 1;
    kvrt_block_hash_t other_model = {.lo = 1};
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_MODEL,
                  kvrt_cluster_pull_plan(w.dir, &other_model, PULLER, w.keys, 4, &slow, &no));

    kvrt_seq_id_t seq = add(w.ctx, &w.puller, w.prompt, PROMPT);
    kvrt_handoff_completion_t c = pull(&w, seq, &plan);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_LANDED, "outcome %u status %d", c.outcome, c.status);
    cr_assert_eq(c.landed_blocks, 4);
    const int32_t *blocks = NULL;
    uint32_t nb = 0;
    ASSERT_OK(w.ctx, kvrt_seq_blocks(w.puller.sched, seq, &blocks, &nb, NULL));
    cr_assert_eq(nb, 4);
    for (uint32_t b = 0; b < 4; b++)
        cr_assert(tch_block_pattern(w.puller.pool, blocks[b], b, false), "pulled block %u differs",
                  b);
    kvrt_plan_seq_t first = run(w.ctx, &w.puller, seq);
    cr_assert_eq(first.num_computed_tokens, 64);
    cr_assert_eq(first.num_new_tokens, PROMPT - 64);
    world_down(&w);
}

Test(cluster_pull, a_peer_announcing_blocks_it_lacks_fails_cleanly_and_loses_them,
     .timeout = 60)
{
    world_t w = world_up(2, 4); /* holds 2, announced 4 */
    kvrt_cluster_pull_plan_t plan = plan_for(&w);
    cr_assert_eq(plan.node_id, HOLDER);
    cr_assert_eq(plan.peer_blocks, 4);
    cr_assert_eq(plan.worth, 1);

    kvrt_seq_id_t seq = add(w.ctx, &w.puller, w.prompt, PROMPT);
    kvrt_handoff_completion_t c = pull(&w, seq, &plan);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_RECOMPUTED);
    cr_assert_eq(c.status, KVRT_ERR_CANCELED);
    cr_assert_eq(c.blocks, 4);
    cr_assert_eq(c.landed_blocks, 2, "the blocks the peer had are kept");

    ASSERT_OK(w.ctx, kvrt_cluster_pull_forget(w.dir, HOLDER, w.keys, PROMPT / TPB, &c));
    kvrt_cluster_match_t m[4];
    uint32_t n = 0;
    ASSERT_OK(w.ctx, kvrt_cluster_dir_match(w.dir, &w.model, w.keys, 4, 0, m, 4, &n));
    for (uint32_t i = 0; i < n; i++)
        if (m[i].node_id == HOLDER)
            cr_assert_eq(m[i].prefix_blocks, 2, "false entries stay in the directory");
    kvrt_cluster_node_info_t info;
    ASSERT_OK(w.ctx, kvrt_cluster_dir_node_info(w.dir, HOLDER, &info));
    cr_assert_eq(info.blocks[KVRT_KV_TIER_GPU], 2);

    /* The request starts from the two blocks that came, recomputes the rest. */
    const int32_t *blocks = NULL;
    uint32_t nb = 0;
    ASSERT_OK(w.ctx, kvrt_seq_blocks(w.puller.sched, seq, &blocks, &nb, NULL));
    cr_assert_eq(nb, 2);
    for (uint32_t b = 0; b < 2; b++)
        cr_assert(tch_block_pattern(w.puller.pool, blocks[b], b, false));
    kvrt_plan_seq_t first = run(w.ctx, &w.puller, seq);
    cr_assert_eq(first.num_computed_tokens, 32);
    world_down(&w);
}
