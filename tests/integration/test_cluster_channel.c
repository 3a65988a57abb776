/*
 * test_cluster_channel.c - hand-off tickets and pull requests carried by the
 * cluster channel over the transfer engine (two agents on loopback, one
 * process): a ticket sent by the decode node reaches the prefill node,
 * which sends the blocks; the decode node's channel hands the receiver its
 * batch messages and the request lands byte for byte. A pull request
 * arrives with its hashes intact. Forged, oversized, contradictory,
 * unfinished and excess fragments are dropped and counted, leave nothing
 * buffered, and the channel keeps working.
 */
#include <stdlib.h>

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
    kvrt_cluster_channel_t *decode_ch, *prefill_ch;
    char decode_addr[96], prefill_addr[96];
} pair_t;

static pair_t pair_up(const kvrt_cluster_channel_params_t *prefill_params)
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
    ASSERT_OK(p.ctx, kvrt_xfer_agent_address(p.decode_agent, p.decode_addr, sizeof(p.decode_addr)));
    ASSERT_OK(p.ctx,
              kvrt_xfer_agent_address(p.prefill_agent, p.prefill_addr, sizeof(p.prefill_addr)));
    kvrt_cluster_handoff_recv_params_t rp = {.field_mask = KVRT_HANDOFF_RECV_PARAM_TIMEOUT,
                                             .agent = p.decode_agent,
                                             .region = p.decode_region,
                                             .sched = p.sched,
                                             .timeout_ms = 20000};
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_recv_create(p.ctx, &rp, &p.recv));
    kvrt_cluster_handoff_sender_params_t tp = {.field_mask = KVRT_HANDOFF_SENDER_PARAM_INTEGRITY,
                                               .agent = p.prefill_agent,
                                               .region = p.prefill_region,
                                               .integrity = 1};
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_sender_create(p.ctx, &tp, &p.sender));
    kvrt_cluster_channel_params_t dc = {
        .field_mask = KVRT_CHANNEL_PARAM_RECV, .agent = p.decode_agent, .recv = p.recv};
    ASSERT_OK(p.ctx, kvrt_cluster_channel_create(p.ctx, &dc, &p.decode_ch));
    kvrt_cluster_channel_params_t pc = {.agent = p.prefill_agent};
    if (prefill_params)
        pc = *prefill_params;
    pc.agent = p.prefill_agent;
    ASSERT_OK(p.ctx, kvrt_cluster_channel_create(p.ctx, &pc, &p.prefill_ch));
    return p;
}

static void pair_down(pair_t *p)
{
    ASSERT_OK(p->ctx, kvrt_cluster_channel_destroy(p->decode_ch));
    ASSERT_OK(p->ctx, kvrt_cluster_channel_destroy(p->prefill_ch));
    ASSERT_OK(p->ctx, kvrt_cluster_handoff_sender_destroy(p->sender));
    kvrt_handoff_recv_stats_t rs;
    ASSERT_OK(p->ctx, kvrt_cluster_handoff_recv_stats(p->recv, &rs));
    cr_assert_eq(rs.live + rs.quarantined, 0);
    ASSERT_OK(p->ctx, kvrt_cluster_handoff_recv_destroy(p->recv));
    tch_pool_clean(p->ctx, p->pool, NULL);
    tch_pool_clean(p->ctx, p->prefill_pool, NULL);
    cr_assert_eq(txu_stat_drained(p->ctx, "xfer.0.outstanding", 5000), 0);
    cr_assert_eq(txu_stat_drained(p->ctx, "xfer.1.outstanding", 5000), 0);
    ASSERT_OK(p->ctx, kvrt_xfer_deregister(p->decode_region));
    ASSERT_OK(p->ctx, kvrt_xfer_deregister(p->prefill_region));
    kvrt_xfer_agent_destroy(p->decode_agent);
    kvrt_xfer_agent_destroy(p->prefill_agent);
    kvrt_sched_destroy(p->sched);
    kvrt_pool_destroy(p->pool);
    kvrt_pool_destroy(p->prefill_pool);
    kvrt_ctx_destroy(p->ctx);
}

static kvrt_seq_id_t add(pair_t *p)
{
    int32_t prompt[PROMPT];
    for (uint32_t i = 0; i < PROMPT; i++)
        prompt[i] = (int32_t)i;
    kvrt_seq_params_t sp = {.prompt = prompt, .prompt_len = PROMPT, .max_new_tokens = 2};
    kvrt_seq_id_t id = 0;
    ASSERT_OK(p->ctx, kvrt_seq_add(p->sched, &sp, &id));
    return id;
}

static kvrt_handoff_id_t accept(pair_t *p, kvrt_seq_id_t seq, uint8_t *ticket, size_t *len)
{
    kvrt_handoff_accept_params_t ap = {.num_tokens = PROMPT - 1};
    kvrt_handoff_id_t h = 0;
    ASSERT_OK(p->ctx, kvrt_cluster_handoff_accept(p->recv, seq, &ap, tch_now_ns(), &h));
    ASSERT_OK(p->ctx,
              kvrt_cluster_handoff_ticket(p->recv, h, ticket, KVRT_HANDOFF_TICKET_MAX, len));
    return h;
}

/* Polls the prefill node's channel (bounded) until a message arrives. */
static kvrt_cluster_msg_t take_one(pair_t *p)
{
    kvrt_cluster_msg_t m = {0};
    uint32_t n = 0;
    uint64_t end = txu_now_ms() + 10000;
    while (n == 0 && txu_now_ms() < end) {
        ASSERT_OK(p->ctx, kvrt_cluster_channel_poll(p->prefill_ch, tch_now_ns(), &m, 1, &n));
        if (n == 0)
            tch_nap_ms(1);
    }
    cr_assert_eq(n, 1, "no message arrived");
    return m;
}

/* The prefill node gives the ticket's hand-off up at once (its ABORT);
 * the decode node polls its channel and receiver until it ended. */
static void give_up(pair_t *p, const kvrt_cluster_msg_t *m)
{
    kvrt_cluster_handoff_send_t *send = NULL;
    ASSERT_OK(p->ctx,
              kvrt_cluster_handoff_send_begin(p->sender, m->ticket, m->ticket_bytes, &send));
    ASSERT_OK(p->ctx, kvrt_cluster_handoff_send_end(send));
    kvrt_handoff_completion_t c = tch_wait_one(p->ctx, p->recv, p->decode_ch);
    cr_assert_eq(c.status, KVRT_ERR_CANCELED);
}

static kvrt_cluster_channel_stats_t ch_stats(kvrt_cluster_channel_t *ch)
{
    kvrt_cluster_channel_stats_t st;
    ASSERT_OK(NULL, kvrt_cluster_channel_stats(ch, &st));
    return st;
}

Test(cluster_channel, a_ticket_over_the_channel_drives_a_handoff_that_lands, .timeout = 60)
{
    pair_t p = pair_up(NULL);
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    size_t len = 0;
    kvrt_seq_id_t seq = add(&p);
    kvrt_handoff_id_t h = accept(&p, seq, ticket, &len);
    ASSERT_OK(p.ctx, kvrt_cluster_channel_send_ticket(p.decode_ch, p.prefill_addr, ticket, len));

    /* The prefill node: the ticket arrives whole, from the decode agent. */
    kvrt_cluster_msg_t m = take_one(&p);
    cr_assert_eq(m.kind, KVRT_CLUSTER_MSG_TICKET);
    cr_assert_eq(m.ticket_bytes, len);
    cr_assert_eq(memcmp(m.ticket, ticket, len), 0);
    cr_assert_null(m.contents);
    char decode_name[KVRT_XFER_NAME_MAX];
    kvrt_xfer_peer_t *back = txu_connect(p.ctx, p.prefill_agent, p.decode_agent);
    kvrt_xfer_peer_info_t pi = {.struct_size = sizeof(pi)};
    ASSERT_OK(p.ctx, kvrt_xfer_peer_info(back, &pi));
    memcpy(decode_name, pi.name, sizeof(decode_name));
    kvrt_xfer_disconnect(back);
    cr_assert_str_eq(m.from, decode_name);

    kvrt_cluster_handoff_send_t *send = NULL;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_begin(p.sender, m.ticket, m.ticket_bytes, &send));
    uint32_t nb = 0;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_info(send, &nb, NULL));
    int32_t local[BLOCKS];
    ASSERT_OK(p.ctx, kvrt_pool_alloc(p.prefill_pool, nb, local));
    for (uint32_t b = 0; b < nb; b++)
        tch_block_pattern(p.prefill_pool, local[b], b, true);
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_blocks(send, local, nb));

    /* The decode node: its channel feeds the receiver the batch message. */
    kvrt_handoff_completion_t c = tch_wait_one(p.ctx, p.recv, p.decode_ch);
    cr_assert_eq(c.handoff, h);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_LANDED, "outcome %u status %d", c.outcome, c.status);
    cr_assert_geq(ch_stats(p.decode_ch).handoff_notes, 1);
    kvrt_handoff_recv_stats_t rs;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_recv_stats(p.recv, &rs));
    cr_assert_eq(rs.refused + rs.foreign, 0);
    const int32_t *blocks = NULL;
    ASSERT_OK(p.ctx, kvrt_seq_blocks(p.sched, seq, &blocks, NULL, NULL));
    for (uint32_t b = 0; b < nb; b++)
        cr_assert(tch_block_pattern(p.pool, blocks[b], b, false), "block %u differs", b);
    tch_send_finish(p.ctx, p.sender, NULL, send);
    ASSERT_OK(p.ctx, kvrt_pool_free(p.prefill_pool, nb, local));

    /* A pull request: the ticket and every hash arrive intact. */
    kvrt_seq_id_t seq2 = add(&p);
    accept(&p, seq2, ticket, &len);
    kvrt_block_hash_t hashes[300];
    for (uint32_t i = 0; i < 300; i++)
        hashes[i] = (kvrt_block_hash_t){.lo = 0x1111111111111111ull * (i + 1), .hi = ~(uint64_t)i};
    ASSERT_OK(p.ctx, kvrt_cluster_channel_send_pull(p.decode_ch, p.prefill_addr, ticket, len,
                                                    hashes, 300));
    m = take_one(&p);
    cr_assert_eq(m.kind, KVRT_CLUSTER_MSG_PULL);
    cr_assert_eq(m.ticket_bytes, len);
    cr_assert_eq(memcmp(m.ticket, ticket, len), 0);
    cr_assert_eq(m.num_contents, 300);
    for (uint32_t i = 0; i < 300; i++)
        cr_assert(m.contents[i].lo == hashes[i].lo && m.contents[i].hi == hashes[i].hi,
                  "hash %u differs", i);
    /* A ticket naming more blocks than the hashes is not sent. */
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_channel_send_pull(p.decode_ch, p.prefill_addr,
                                                                       ticket, len, hashes, 2));
    give_up(&p, &m);
    ASSERT_OK(p.ctx, kvrt_seq_abort(p.sched, seq2));
    ASSERT_OK(p.ctx, kvrt_seq_abort(p.sched, seq));
    kvrt_cluster_channel_stats_t st = ch_stats(p.prefill_ch);
    cr_assert_eq(st.received, 2);
    cr_assert_eq(st.refused + st.over_limit + st.expired + st.foreign, 0);
    pair_down(&p);
}

/* A fragment as the channel's wire format lays it out. */
static void frag(pair_t *p, kvrt_xfer_peer_t *peer, uint16_t version, uint16_t kind, uint64_t id,
                 uint32_t bytes, uint32_t index, const uint8_t *payload, uint32_t len)
{
    uint8_t f[KVRT_XFER_NOTIFY_MAX] = {0};
    kvrt_store_le32(f, 0x4d43564bu);
    kvrt_store_le16(f + 4, version);
    kvrt_store_le16(f + 6, kind);
    kvrt_store_le64(f + 8, id);
    kvrt_store_le32(f + 16, bytes);
    kvrt_store_le32(f + 20, index);
    if (len)
        memcpy(f + 24, payload, len);
    ASSERT_OK(p->ctx, kvrt_xfer_notify(peer, f, 24 + len));
}

/* Polls the prefill channel until `want` fragments were judged. */
static kvrt_cluster_channel_stats_t judged(pair_t *p, uint64_t want, uint32_t *delivered)
{
    kvrt_cluster_channel_stats_t st = {0};
    uint64_t end = txu_now_ms() + 10000;
    kvrt_cluster_msg_t m[4];
    *delivered = 0;
    while (txu_now_ms() < end) {
        uint32_t n = 0;
        ASSERT_OK(p->ctx, kvrt_cluster_channel_poll(p->prefill_ch, tch_now_ns(), m, 4, &n));
        *delivered += n;
        st = ch_stats(p->prefill_ch);
        if (st.refused + st.over_limit + st.foreign >= want)
            break;
        tch_nap_ms(1);
    }
    return st;
}

Test(cluster_channel, hostile_fragments_are_dropped_counted_and_bounded, .timeout = 60)
{
    kvrt_cluster_channel_params_t pc = {.field_mask = KVRT_CHANNEL_PARAM_MAX_MESSAGE |
                                                      KVRT_CHANNEL_PARAM_MAX_PENDING |
                                                      KVRT_CHANNEL_PARAM_DEADLINE,
                                        .max_message_bytes = 4096,
                                        .max_pending_per_peer = 2,
                                        .deadline_ms = 300};
    pair_t p = pair_up(&pc);
    kvrt_xfer_peer_t *evil = txu_connect(p.ctx, p.decode_agent, p.prefill_agent);
    uint8_t junk[232];
    for (uint32_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(i * 7 + 1);

    frag(&p, evil, 2, 1, 1, 10, 0, junk, 10);      /* unknown version: refused */
    frag(&p, evil, 1, 9, 2, 10, 0, junk, 10);      /* unknown kind: refused */
    frag(&p, evil, 1, 1, 3, 5000, 0, junk, 232);   /* longer than allowed: over limit */
    frag(&p, evil, 1, 1, 4, 10, 1, junk, 10);      /* fragment beyond the message: refused */
    frag(&p, evil, 1, 1, 5, 300, 0, junk, 100);    /* wrong fragment length: refused */
    frag(&p, evil, 1, 1, 100, 1000, 0, junk, 232); /* partial message 100 */
    frag(&p, evil, 1, 1, 101, 1000, 0, junk, 232); /* partial message 101 */
    frag(&p, evil, 1, 1, 102, 1000, 0, junk, 232); /* a third of this peer: over limit */
    frag(&p, evil, 1, 1, 100, 1000, 0, junk, 232); /* repeats a fragment: 100 void, refused */
    frag(&p, evil, 1, 2, 101, 1000, 1, junk, 232); /* contradicts 101's kind: void, refused */
    frag(&p, evil, 1, 1, 6, 40, 0, junk, 40);      /* complete, not a ticket: refused */
    ASSERT_OK(p.ctx, kvrt_xfer_notify(evil, "not ours", 8)); /* foreign */
    uint32_t delivered = 0;
    kvrt_cluster_channel_stats_t st = judged(&p, 10, &delivered);
    cr_assert_eq(delivered, 0);
    cr_assert_eq(st.refused, 7, "refused %llu", (unsigned long long)st.refused);
    cr_assert_eq(st.over_limit, 2);
    cr_assert_eq(st.foreign, 1);
    cr_assert_eq(st.buffered_bytes, 0, "void messages stay buffered");

    /* A pull whose ticket names blocks beyond its hashes is refused whole. */
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    size_t len = 0;
    kvrt_seq_id_t seq = add(&p);
    accept(&p, seq, ticket, &len);
    uint8_t pull[4096] = {0};
    kvrt_store_le32(pull, 1); /* one hash; the ticket names five blocks */
    kvrt_store_le32(pull + 4, (uint32_t)len);
    memcpy(pull + 8, ticket, len);
    uint32_t bytes = 8 + (uint32_t)len + 16;
    for (uint32_t i = 0, at = 0; at < bytes; i++, at += 232)
        frag(&p, evil, 1, 2, 7, bytes, i, pull + at, bytes - at < 232 ? bytes - at : 232);
    /* A partial message left alone expires at its deadline. */
    frag(&p, evil, 1, 1, 8, 1000, 0, junk, 232);
    st = judged(&p, 11, &delivered);
    cr_assert_eq(delivered, 0);
    cr_assert_eq(st.refused, 8);
    uint64_t end = txu_now_ms() + 10000;
    while (ch_stats(p.prefill_ch).buffered_bytes > 0 && txu_now_ms() < end) {
        uint32_t n = 0;
        ASSERT_OK(p.ctx, kvrt_cluster_channel_poll(p.prefill_ch, tch_now_ns(), NULL, 0, &n));
        tch_nap_ms(5);
    }
    st = ch_stats(p.prefill_ch);
    cr_assert_eq(st.buffered_bytes, 0);
    cr_assert_geq(st.expired, 1);

    /* The channel still works: the real ticket arrives. */
    ASSERT_OK(p.ctx, kvrt_cluster_channel_send_ticket(p.decode_ch, p.prefill_addr, ticket, len));
    kvrt_cluster_msg_t m = take_one(&p);
    cr_assert_eq(m.kind, KVRT_CLUSTER_MSG_TICKET);
    cr_assert_eq(memcmp(m.ticket, ticket, len), 0);

    /* Sending checks: not a ticket, too long for the destination's bound. */
    ASSERT_STATUS(KVRT_ERR_PARSE,
                  kvrt_cluster_channel_send_ticket(p.decode_ch, p.prefill_addr, junk, 40));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_cluster_channel_send_ticket(p.decode_ch, "", ticket, len));
    kvrt_cluster_channel_t *small = NULL;
    kvrt_cluster_channel_params_t sc = {.field_mask = KVRT_CHANNEL_PARAM_MAX_MESSAGE,
                                        .agent = p.decode_agent,
                                        .max_message_bytes = 64};
    ASSERT_OK(p.ctx, kvrt_cluster_channel_create(p.ctx, &sc, &small));
    ASSERT_STATUS(KVRT_ERR_OVERFLOW,
                  kvrt_cluster_channel_send_ticket(small, p.prefill_addr, ticket, len));
    kvrt_cluster_channel_destroy(small);
    /* Parameters: out of range, and a receiver fed by a channel already. */
    sc.max_message_bytes = 10;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_channel_create(p.ctx, &sc, &small));
    kvrt_cluster_channel_params_t twice = {
        .field_mask = KVRT_CHANNEL_PARAM_RECV, .agent = p.decode_agent, .recv = p.recv};
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_cluster_channel_create(p.ctx, &twice, &small));
    twice.agent = p.prefill_agent;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_channel_create(p.ctx, &twice, &small));

    kvrt_xfer_disconnect(evil);
    give_up(&p, &m);
    ASSERT_OK(p.ctx, kvrt_seq_abort(p.sched, seq));
    pair_down(&p);
}
