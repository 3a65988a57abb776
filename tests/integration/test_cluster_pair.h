/*
 * test_cluster_pair.h - a decode node and a prefill node in one process,
 * two agents on loopback, for the hand-off tests that need no second
 * process (hostile input, the cluster channel): the decode node's pool,
 * scheduler, agent and receiver, the prefill node's pool, agent and
 * sender; a request of PROMPT tokens and its hand-off's ticket; and a
 * teardown that checks nothing is left held.
 */
#ifndef KVRT_TEST_CLUSTER_PAIR_H
#define KVRT_TEST_CLUSTER_PAIR_H

#include "test_cluster_handoff_util.h"

#define BLOCKS 32u
#define PROMPT 70u /* 4 full blocks of 16 and 6 tokens */

typedef struct pair {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool, *prefill_pool;
    kvrt_sched_t *sched;
    kvrt_xfer_agent_t *decode_agent, *prefill_agent;
    kvrt_xfer_region_t *decode_region, *prefill_region;
    kvrt_cluster_handoff_recv_t *recv;
    kvrt_cluster_handoff_sender_t *sender;
} pair_t;

static inline pair_t pair_up(uint32_t max_handoffs)
{
    pair_t p = {0};
    p.ctx = txu_ctx();
    p.pool = txu_pool(p.ctx, BLOCKS, KVRT_ORDER_LAYER_MAJOR, KVRT_KV_SEPARATE);
    p.prefill_pool = txu_pool(p.ctx, BLOCKS, KVRT_ORDER_LAYER_MAJOR, KVRT_KV_SEPARATE);
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK, .use_watermark = 0};
    ASSERT_OK(p.ctx, kvrt_sched_create(p.ctx, p.pool, NULL, &sp, &p.sched));
    p.decode_agent = txu_agent(p.ctx, 3000);
    p.prefill_agent = txu_agent(p.ctx, 3000);
    p.decode_region = txu_register_pool(p.ctx, p.decode_agent, p.pool);
    p.prefill_region = txu_register_pool(p.ctx, p.prefill_agent, p.prefill_pool);
    kvrt_cluster_handoff_recv_params_t rp = {
        .field_mask = KVRT_HANDOFF_RECV_PARAM_MAX_HANDOFFS | KVRT_HANDOFF_RECV_PARAM_TIMEOUT,
        .agent = p.decode_agent, .region = p.decode_region, .sched = p.sched,
        .timeout_ms = 20000, .max_handoffs = max_handoffs};
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_recv_create(p.ctx, &rp, &p.recv));
    kvrt_cluster_handoff_sender_params_t tp = {.agent = p.prefill_agent,
                                               .region = p.prefill_region};
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_sender_create(p.ctx, &tp, &p.sender));
    return p;
}

static inline void pair_down(pair_t *p)
{
    ASSERT_OK(p->ctx, kvrt_cluster_handoff_sender_destroy(p->sender));
    ASSERT_OK(p->ctx, kvrt_cluster_handoff_recv_destroy(p->recv));
    kvrt_pool_info_t info;
    ASSERT_OK(p->ctx, kvrt_pool_info(p->pool, &info));
    cr_assert_eq(info.used_blocks, 0, "blocks stranded: %u", info.used_blocks);
    cr_assert_eq(info.live_tables, 0);
    ASSERT_OK(p->ctx, kvrt_pool_verify(p->pool));
    cr_assert_eq(txu_stat_drained(p->ctx, "xfer.0.outstanding", 5000), 0);
    cr_assert_eq(txu_stat_drained(p->ctx, "xfer.1.outstanding", 5000), 0);
    ASSERT_OK(p->ctx, kvrt_xfer_deregister(p->decode_region));
    ASSERT_OK(p->ctx, kvrt_xfer_deregister(p->prefill_region));
    cr_assert_eq(txu_stat(p->ctx, "xfer.0.regions"), 0);
    cr_assert_eq(txu_stat(p->ctx, "xfer.1.regions"), 0);
    kvrt_xfer_agent_destroy(p->decode_agent);
    kvrt_xfer_agent_destroy(p->prefill_agent);
    kvrt_sched_destroy(p->sched);
    kvrt_pool_destroy(p->pool);
    kvrt_pool_destroy(p->prefill_pool);
    kvrt_ctx_destroy(p->ctx);
}

static inline kvrt_seq_id_t add(pair_t *p)
{
    int32_t prompt[PROMPT];
    for (uint32_t i = 0; i < PROMPT; i++)
        prompt[i] = (int32_t)i;
    kvrt_seq_params_t sp = {.prompt = prompt, .prompt_len = PROMPT, .max_new_tokens = 2};
    kvrt_seq_id_t id = 0;
    ASSERT_OK(p->ctx, kvrt_seq_add(p->sched, &sp, &id));
    return id;
}

static inline kvrt_handoff_id_t accept(pair_t *p, kvrt_seq_id_t seq, uint8_t *ticket, size_t *len)
{
    kvrt_handoff_accept_params_t ap = {.num_tokens = PROMPT - 1};
    kvrt_handoff_id_t h = 0;
    ASSERT_OK(p->ctx, kvrt_cluster_handoff_accept(p->recv, seq, &ap, tch_now_ns(), &h));
    ASSERT_OK(p->ctx, kvrt_cluster_handoff_ticket(p->recv, h, ticket,
                                                  KVRT_HANDOFF_TICKET_MAX, len));
    return h;
}

#endif /* KVRT_TEST_CLUSTER_PAIR_H */
