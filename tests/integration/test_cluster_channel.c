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

#include "test_cluster_pair.h"

/* The pair, each node with its channel: the decode node's feeds its
 * receiver. */
typedef struct channels {
    pair_t p;
    kvrt_cluster_channel_t *decode_ch, *prefill_ch;
    char prefill_addr[96];
} channels_t;

static channels_t channels_up(const kvrt_cluster_channel_params_t *prefill_params)
{
    channels_t c = {.p = pair_up(16)};
    ASSERT_OK(c.p.ctx,
              kvrt_xfer_agent_address(c.p.prefill_agent, c.prefill_addr, sizeof(c.prefill_addr)));
    kvrt_cluster_channel_params_t dc = {
        .field_mask = KVRT_CHANNEL_PARAM_RECV, .agent = c.p.decode_agent, .recv = c.p.recv};
    ASSERT_OK(c.p.ctx, kvrt_cluster_channel_create(c.p.ctx, &dc, &c.decode_ch));
    kvrt_cluster_channel_params_t pc = {0};
    if (prefill_params)
        pc = *prefill_params;
    pc.agent = c.p.prefill_agent;
    ASSERT_OK(c.p.ctx, kvrt_cluster_channel_create(c.p.ctx, &pc, &c.prefill_ch));
    return c;
}

static void channels_down(channels_t *c)
{
    ASSERT_OK(c->p.ctx, kvrt_cluster_channel_destroy(c->decode_ch));
    ASSERT_OK(c->p.ctx, kvrt_cluster_channel_destroy(c->prefill_ch));
    kvrt_handoff_recv_stats_t rs;
    ASSERT_OK(c->p.ctx, kvrt_cluster_handoff_recv_stats(c->p.recv, &rs));
    cr_assert_eq(rs.live + rs.quarantined, 0);
    tch_pool_clean(c->p.ctx, c->p.prefill_pool, NULL);
    pair_down(&c->p);
}

/* Polls the prefill node's channel (bounded) until a message arrives. */
static kvrt_cluster_msg_t take_one(channels_t *w)
{
    kvrt_cluster_msg_t m = {0};
    uint32_t n = 0;
    uint64_t end = txu_now_ms() + 10000;
    while (n == 0 && txu_now_ms() < end) {
        ASSERT_OK(w->p.ctx, kvrt_cluster_channel_poll(w->prefill_ch, tch_now_ns(), &m, 1, &n));
        if (n == 0)
            tch_nap_ms(1);
    }
    cr_assert_eq(n, 1, "no message arrived");
    return m;
}

/* The prefill node gives the ticket's hand-off up at once (its ABORT);
 * the decode node polls its channel and receiver until it ended. */
static void give_up(channels_t *w, const kvrt_cluster_msg_t *m)
{
    kvrt_cluster_handoff_send_t *send = NULL;
    ASSERT_OK(w->p.ctx,
              kvrt_cluster_handoff_send_begin(w->p.sender, m->ticket, m->ticket_bytes, &send));
    ASSERT_OK(w->p.ctx, kvrt_cluster_handoff_send_end(send));
    kvrt_handoff_completion_t c = tch_wait_one(w->p.ctx, w->p.recv, w->decode_ch);
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
    channels_t w = channels_up(NULL);
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    size_t len = 0;
    kvrt_seq_id_t seq = add(&w.p);
    kvrt_handoff_id_t h = accept(&w.p, seq, ticket, &len);
    ASSERT_OK(w.p.ctx, kvrt_cluster_channel_send_ticket(w.decode_ch, w.prefill_addr, ticket, len));

    /* The prefill node: the ticket arrives whole, from the decode agent. */
    kvrt_cluster_msg_t m = take_one(&w);
    cr_assert_eq(m.kind, KVRT_CLUSTER_MSG_TICKET);
    cr_assert_eq(m.ticket_bytes, len);
    cr_assert_eq(memcmp(m.ticket, ticket, len), 0);
    cr_assert_null(m.contents);
    char decode_name[KVRT_XFER_NAME_MAX];
    kvrt_xfer_peer_t *back = txu_connect(w.p.ctx, w.p.prefill_agent, w.p.decode_agent);
    kvrt_xfer_peer_info_t pi = {.struct_size = sizeof(pi)};
    ASSERT_OK(w.p.ctx, kvrt_xfer_peer_info(back, &pi));
    memcpy(decode_name, pi.name, sizeof(decode_name));
    kvrt_xfer_disconnect(back);
    cr_assert_str_eq(m.from, decode_name);

    kvrt_cluster_handoff_send_t *send = NULL;
    ASSERT_OK(w.p.ctx,
              kvrt_cluster_handoff_send_begin(w.p.sender, m.ticket, m.ticket_bytes, &send));
    uint32_t nb = 0;
    ASSERT_OK(w.p.ctx, kvrt_cluster_handoff_send_info(send, &nb, NULL));
    int32_t local[BLOCKS];
    ASSERT_OK(w.p.ctx, kvrt_pool_alloc(w.p.prefill_pool, nb, local));
    for (uint32_t b = 0; b < nb; b++)
        tch_block_pattern(w.p.prefill_pool, local[b], b, true);
    ASSERT_OK(w.p.ctx, kvrt_cluster_handoff_send_blocks(send, local, nb));

    /* The decode node: its channel feeds the receiver the batch message. */
    kvrt_handoff_completion_t c = tch_wait_one(w.p.ctx, w.p.recv, w.decode_ch);
    cr_assert_eq(c.handoff, h);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_LANDED, "outcome %u status %d", c.outcome, c.status);
    cr_assert_geq(ch_stats(w.decode_ch).handoff_notes, 1);
    kvrt_handoff_recv_stats_t rs;
    ASSERT_OK(w.p.ctx, kvrt_cluster_handoff_recv_stats(w.p.recv, &rs));
    cr_assert_eq(rs.refused + rs.foreign, 0);
    const int32_t *blocks = NULL;
    ASSERT_OK(w.p.ctx, kvrt_seq_blocks(w.p.sched, seq, &blocks, NULL, NULL));
    for (uint32_t b = 0; b < nb; b++)
        cr_assert(tch_block_pattern(w.p.pool, blocks[b], b, false), "block %u differs", b);
    tch_send_finish(w.p.ctx, w.p.sender, NULL, send);
    ASSERT_OK(w.p.ctx, kvrt_pool_free(w.p.prefill_pool, nb, local));

    /* A pull request: the ticket and every hash arrive intact. */
    kvrt_seq_id_t seq2 = add(&w.p);
    accept(&w.p, seq2, ticket, &len);
    kvrt_block_hash_t hashes[300];
    for (uint32_t i = 0; i < 300; i++)
        hashes[i] = (kvrt_block_hash_t){.lo = 0x1111111111111111ull * (i + 1), .hi = ~(uint64_t)i};
    ASSERT_OK(w.p.ctx, kvrt_cluster_channel_send_pull(w.decode_ch, w.prefill_addr, ticket, len,
                                                      hashes, 300));
    m = take_one(&w);
    cr_assert_eq(m.kind, KVRT_CLUSTER_MSG_PULL);
    cr_assert_eq(m.ticket_bytes, len);
    cr_assert_eq(memcmp(m.ticket, ticket, len), 0);
    cr_assert_eq(m.num_contents, 300);
    for (uint32_t i = 0; i < 300; i++)
        cr_assert(m.contents[i].lo == hashes[i].lo && m.contents[i].hi == hashes[i].hi,
                  "hash %u differs", i);
    /* A ticket naming more blocks than the hashes is not sent. */
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_channel_send_pull(w.decode_ch, w.prefill_addr,
                                                                       ticket, len, hashes, 2));
    give_up(&w, &m);
    ASSERT_OK(w.p.ctx, kvrt_seq_abort(w.p.sched, seq2));
    ASSERT_OK(w.p.ctx, kvrt_seq_abort(w.p.sched, seq));
    kvrt_cluster_channel_stats_t st = ch_stats(w.prefill_ch);
    cr_assert_eq(st.received, 2);
    cr_assert_eq(st.refused + st.over_limit + st.expired + st.foreign, 0);
    channels_down(&w);
}

/* A fragment as the channel's wire format lays it out. */
static void frag(channels_t *w, kvrt_xfer_peer_t *peer, uint16_t version, uint16_t kind,
                 uint64_t id, uint32_t bytes, uint32_t index, const uint8_t *payload, uint32_t len)
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
    ASSERT_OK(w->p.ctx, kvrt_xfer_notify(peer, f, 24 + len));
}

/* Polls the prefill channel until `want` fragments were judged. */
static kvrt_cluster_channel_stats_t judged(channels_t *w, uint64_t want, uint32_t *delivered)
{
    kvrt_cluster_channel_stats_t st = {0};
    uint64_t end = txu_now_ms() + 10000;
    kvrt_cluster_msg_t m[4];
    *delivered = 0;
    while (txu_now_ms() < end) {
        uint32_t n = 0;
        ASSERT_OK(w->p.ctx, kvrt_cluster_channel_poll(w->prefill_ch, tch_now_ns(), m, 4, &n));
        *delivered += n;
        st = ch_stats(w->prefill_ch);
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
    channels_t w = channels_up(&pc);
    kvrt_xfer_peer_t *evil = txu_connect(w.p.ctx, w.p.decode_agent, w.p.prefill_agent);
    uint8_t junk[232];
    for (uint32_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(i * 7 + 1);

    frag(&w, evil, 2, 1, 1, 10, 0, junk, 10);      /* unknown version: refused */
    frag(&w, evil, 1, 9, 2, 10, 0, junk, 10);      /* unknown kind: refused */
    frag(&w, evil, 1, 1, 3, 5000, 0, junk, 232);   /* longer than allowed: over limit */
    frag(&w, evil, 1, 1, 4, 10, 1, junk, 10);      /* fragment beyond the message: refused */
    frag(&w, evil, 1, 1, 5, 300, 0, junk, 100);    /* wrong fragment length: refused */
    frag(&w, evil, 1, 1, 100, 1000, 0, junk, 232); /* partial message 100 */
    frag(&w, evil, 1, 1, 101, 1000, 0, junk, 232); /* partial message 101 */
    frag(&w, evil, 1, 1, 102, 1000, 0, junk, 232); /* a third of this peer: over limit */
    frag(&w, evil, 1, 1, 100, 1000, 0, junk, 232); /* repeats a fragment: 100 void, refused */
    frag(&w, evil, 1, 2, 101, 1000, 1, junk, 232); /* contradicts 101's kind: void, refused */
    frag(&w, evil, 1, 1, 6, 40, 0, junk, 40);      /* complete, not a ticket: refused */
    ASSERT_OK(w.p.ctx, kvrt_xfer_notify(evil, "not ours", 8)); /* foreign */
    uint32_t delivered = 0;
    kvrt_cluster_channel_stats_t st = judged(&w, 10, &delivered);
    cr_assert_eq(delivered, 0);
    cr_assert_eq(st.refused, 7, "refused %llu", (unsigned long long)st.refused);
    cr_assert_eq(st.over_limit, 2);
    cr_assert_eq(st.foreign, 1);
    cr_assert_eq(st.buffered_bytes, 0, "void messages stay buffered");

    /* A pull whose ticket names blocks beyond its hashes is refused whole. */
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    size_t len = 0;
    kvrt_seq_id_t seq = add(&w.p);
    accept(&w.p, seq, ticket, &len);
    uint8_t pull[4096] = {0};
    kvrt_store_le32(pull, 1); /* one hash; the ticket names five blocks */
    kvrt_store_le32(pull + 4, (uint32_t)len);
    memcpy(pull + 8, ticket, len);
    uint32_t bytes = 8 + (uint32_t)len + 16;
    for (uint32_t i = 0, at = 0; at < bytes; i++, at += 232)
        frag(&w, evil, 1, 2, 7, bytes, i, pull + at, bytes - at < 232 ? bytes - at : 232);
    /* A partial message left alone expires at its deadline. */
    frag(&w, evil, 1, 1, 8, 1000, 0, junk, 232);
    st = judged(&w, 11, &delivered);
    cr_assert_eq(delivered, 0);
    cr_assert_eq(st.refused, 8);
    /* (It may not have arrived yet when the pull was judged: wait for its
     * expiry, not only for an empty buffer.) */
    uint64_t end = txu_now_ms() + 10000;
    for (st = ch_stats(w.prefill_ch); (st.buffered_bytes > 0 || st.expired == 0) &&
                                      txu_now_ms() < end;
         st = ch_stats(w.prefill_ch)) {
        uint32_t n = 0;
        ASSERT_OK(w.p.ctx, kvrt_cluster_channel_poll(w.prefill_ch, tch_now_ns(), NULL, 0, &n));
        tch_nap_ms(5);
    }
    cr_assert_eq(st.buffered_bytes, 0);
    cr_assert_geq(st.expired, 1);

    /* The channel still works: the real ticket arrives. */
    ASSERT_OK(w.p.ctx, kvrt_cluster_channel_send_ticket(w.decode_ch, w.prefill_addr, ticket, len));
    kvrt_cluster_msg_t m = take_one(&w);
    cr_assert_eq(m.kind, KVRT_CLUSTER_MSG_TICKET);
    cr_assert_eq(memcmp(m.ticket, ticket, len), 0);

    /* Sending checks: not a ticket, too long for the destination's bound. */
    ASSERT_STATUS(KVRT_ERR_PARSE,
                  kvrt_cluster_channel_send_ticket(w.decode_ch, w.prefill_addr, junk, 40));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_cluster_channel_send_ticket(w.decode_ch, "", ticket, len));
    kvrt_cluster_channel_t *small = NULL;
    kvrt_cluster_channel_params_t sc = {.field_mask = KVRT_CHANNEL_PARAM_MAX_MESSAGE,
                                        .agent = w.p.decode_agent,
                                        .max_message_bytes = 64};
    ASSERT_OK(w.p.ctx, kvrt_cluster_channel_create(w.p.ctx, &sc, &small));
    ASSERT_STATUS(KVRT_ERR_OVERFLOW,
                  kvrt_cluster_channel_send_ticket(small, w.prefill_addr, ticket, len));
    kvrt_cluster_channel_destroy(small);
    /* Parameters: out of range, and a receiver fed by a channel already. */
    sc.max_message_bytes = 10;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_channel_create(w.p.ctx, &sc, &small));
    kvrt_cluster_channel_params_t twice = {
        .field_mask = KVRT_CHANNEL_PARAM_RECV, .agent = w.p.decode_agent, .recv = w.p.recv};
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_cluster_channel_create(w.p.ctx, &twice, &small));
    twice.agent = w.p.prefill_agent;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_channel_create(w.p.ctx, &twice, &small));

    kvrt_xfer_disconnect(evil);
    give_up(&w, &m);
    ASSERT_OK(w.p.ctx, kvrt_seq_abort(w.p.sched, seq));
    channels_down(&w);
}
