/*
 * test_cluster_handoff_hostile.c - the hand-off against bad input, in one
 * process with two agents on loopback: tickets that do not add up are
 * refused before anything connects; notifications with a wrong token, a
 * batch outside the ticket or a repeated batch change nothing and are
 * counted; limits and wrong calls answer with a status; a sender that gives
 * up releases the decode node's blocks at once; destroying a receiver with
 * live hand-offs strands nothing.
 */
#include <stdlib.h>

#include "test_cluster_pair.h"

/* Polls (bounded) until `want` hand-offs ended or 10 s passed. */
static uint32_t poll_ended(pair_t *p, kvrt_handoff_completion_t *out, uint32_t want)
{
    uint32_t got = 0;
    uint64_t end = txu_now_ms() + 10000;
    while (got < want && txu_now_ms() < end) {
        uint32_t n = 0;
        ASSERT_OK(p->ctx,
                  kvrt_cluster_handoff_poll(p->recv, tch_now_ns(), out + got, want - got, &n));
        got += n;
        struct timespec ts = {0, 2000000};
        if (got < want)
            nanosleep(&ts, NULL);
    }
    return got;
}

static kvrt_handoff_recv_stats_t stats(pair_t *p)
{
    kvrt_handoff_recv_stats_t st;
    uint32_t n = 0;
    ASSERT_OK(p->ctx, kvrt_cluster_handoff_poll(p->recv, tch_now_ns(), NULL, 0, &n));
    ASSERT_OK(p->ctx, kvrt_cluster_handoff_recv_stats(p->recv, &st));
    return st;
}

Test(cluster_handoff_hostile, tickets_that_do_not_add_up_are_refused, .timeout = 60)
{
    pair_t p = pair_up(16);
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX], bad[KVRT_HANDOFF_TICKET_MAX];
    size_t len = 0;
    kvrt_seq_id_t seq = add(&p);
    kvrt_handoff_id_t h = accept(&p, seq, ticket, &len);
    kvrt_cluster_handoff_send_t *send = NULL;

    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_cluster_handoff_send_begin(p.sender, ticket, 10, &send));
    ASSERT_STATUS(KVRT_ERR_PARSE,
                  kvrt_cluster_handoff_send_begin(p.sender, ticket, len - 1, &send));
    memcpy(bad, ticket, len);
    bad[len] = 0;
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_cluster_handoff_send_begin(p.sender, bad, len + 1, &send));
    memcpy(bad, ticket, len);
    bad[0] ^= 1; /* magic */
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_cluster_handoff_send_begin(p.sender, bad, len, &send));
    memcpy(bad, ticket, len);
    kvrt_store_le16(bad + 6, 0); /* no address */
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_cluster_handoff_send_begin(p.sender, bad, len, &send));
    memcpy(bad, ticket, len);
    kvrt_store_le16(bad + 28, 0xffff); /* descriptor larger than allowed */
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_cluster_handoff_send_begin(p.sender, bad, len, &send));
    memcpy(bad, ticket, len);
    kvrt_store_le32(bad + 24, 0xffffffffu); /* block count that overflows */
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_cluster_handoff_send_begin(p.sender, bad, len, &send));
    memcpy(bad, ticket, len);
    bad[41] = '\0'; /* a NUL inside the address */
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_cluster_handoff_send_begin(p.sender, bad, len, &send));
    memcpy(bad, ticket, len);
    kvrt_store_le32(bad + 32, 3600001u); /* a budget past any deadline allowed */
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_cluster_handoff_send_begin(p.sender, bad, len, &send));
    memcpy(bad, ticket, len);
    kvrt_store_le32(bad + 36, 1); /* reserved */
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_cluster_handoff_send_begin(p.sender, bad, len, &send));
    memcpy(bad, ticket, len);
    kvrt_store_le16(bad + 4, 1); /* version 1: no deadline, refused */
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_cluster_handoff_send_begin(p.sender, bad, len, &send));
    memcpy(bad, ticket, len);
    kvrt_store_le32(bad + len - 4, 0x80000000u); /* a block id no pool has */
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_cluster_handoff_send_begin(p.sender, bad, len, &send));
    cr_assert_null(send);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_cluster_handoff_send_begin(p.sender, NULL, len, &send));

    /* The real ticket works; a sender that gives up releases the blocks at
     * once and the request is recomputed (the default policy). */
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_begin(p.sender, ticket, len, &send));
    uint32_t n = 0, first = 9;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_info(send, &n, &first));
    cr_assert_eq(n, 5);
    cr_assert_eq(first, 0);
    int32_t local[BLOCKS];
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_send_blocks(send, local, 0));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_send_blocks(send, local, n + 1));
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_cluster_handoff_sender_destroy(p.sender));
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_end(send));
    kvrt_handoff_completion_t c;
    cr_assert_eq(poll_ended(&p, &c, 1), 1, "the abandoned hand-off did not end");
    cr_assert_eq(c.handoff, h);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_RECOMPUTED);
    cr_assert_eq(c.status, KVRT_ERR_CANCELED);
    kvrt_seq_info_t info;
    ASSERT_OK(p.ctx, kvrt_seq_info(p.sched, seq, &info));
    cr_assert_eq(info.state, KVRT_SEQ_WAITING);
    cr_assert_eq(stats(&p).quarantined, 0);
    ASSERT_OK(p.ctx, kvrt_seq_abort(p.sched, seq));
    kvrt_seq_info_t ended;
    ASSERT_OK(p.ctx, kvrt_sched_drain_ended(p.sched, &ended, 1, &n));
    pair_down(&p);
}

static void forge(pair_t *p, kvrt_xfer_peer_t *peer, uint32_t kind, uint32_t slot,
                  uint32_t first, uint32_t count, uint64_t token)
{
    uint8_t m[32] = {0};
    kvrt_store_le32(m, 0x4e48564bu);
    kvrt_store_le16(m + 4, (uint16_t)kind);
    kvrt_store_le32(m + 8, slot);
    kvrt_store_le32(m + 12, first);
    kvrt_store_le32(m + 16, count);
    kvrt_store_le64(m + 24, token);
    ASSERT_OK(p->ctx, kvrt_xfer_notify(peer, m, sizeof(m)));
}

Test(cluster_handoff_hostile, forged_or_repeated_messages_change_nothing, .timeout = 60)
{
    pair_t p = pair_up(16);
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    size_t len = 0;
    kvrt_seq_id_t seq = add(&p);
    kvrt_handoff_id_t h = accept(&p, seq, ticket, &len);
    uint64_t token = kvrt_load_le64(ticket + 8);
    uint32_t slot = kvrt_load_le32(ticket + 16);

    kvrt_xfer_peer_t *forger = txu_connect(p.ctx, p.prefill_agent, p.decode_agent);
    uint8_t junk[40] = "not a hand-off message at all";
    ASSERT_OK(p.ctx, kvrt_xfer_notify(forger, junk, sizeof(junk)));
    forge(&p, forger, 1, slot, 0, 1, token ^ 1);     /* wrong token */
    forge(&p, forger, 1, slot + 1, 0, 1, token);     /* another slot */
    forge(&p, forger, 1, slot, 4, 2, token);         /* past the ticket */
    forge(&p, forger, 1, slot, 0xffffffffu, 2, token); /* wrapping */
    forge(&p, forger, 9, slot, 0, 1, token);         /* unknown kind */
    uint64_t end = txu_now_ms() + 10000;
    kvrt_handoff_recv_stats_t st = stats(&p);
    while (st.refused + st.foreign < 6 && txu_now_ms() < end)
        st = stats(&p);
    cr_assert_eq(st.foreign, 2);
    cr_assert_eq(st.refused, 4);
    cr_assert_eq(st.live, 1);

    /* The real transfer: two batches; a repeated batch message is refused. */
    kvrt_cluster_handoff_send_t *send = NULL;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_begin(p.sender, ticket, len, &send));
    int32_t local[5];
    ASSERT_OK(p.ctx, kvrt_pool_alloc(p.prefill_pool, 5, local));
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_blocks(send, local, 2));
    end = txu_now_ms() + 10000;
    while (kvrt_cluster_handoff_send_test(send) == KVRT_INPROGRESS && txu_now_ms() < end &&
           txu_stat(p.ctx, "xfer.1.outstanding") > 0)
        ;
    forge(&p, forger, 1, slot, 0, 2, token);
    forge(&p, forger, 1, slot, 1, 1, token);
    end = txu_now_ms() + 10000;
    while ((st = stats(&p)).refused < 6 && txu_now_ms() < end)
        ;
    cr_assert_eq(st.refused, 6);
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_blocks(send, local + 2, 3));
    kvrt_handoff_completion_t c;
    cr_assert_eq(poll_ended(&p, &c, 1), 1);
    cr_assert_eq(c.handoff, h);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_LANDED);
    cr_assert_eq(c.landed_blocks, 5);
    end = txu_now_ms() + 10000;
    while (kvrt_cluster_handoff_send_test(send) == KVRT_INPROGRESS && txu_now_ms() < end)
        ;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_test(send));
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_end(send));
    ASSERT_OK(p.ctx, kvrt_pool_free(p.prefill_pool, 5, local));
    /* Messages for a hand-off that ended are refused too. */
    forge(&p, forger, 2, slot, 0, 0, token);
    end = txu_now_ms() + 10000;
    while ((st = stats(&p)).refused < 7 && txu_now_ms() < end)
        ;
    cr_assert_eq(st.refused, 7);
    kvrt_xfer_disconnect(forger);
    ASSERT_OK(p.ctx, kvrt_seq_abort(p.sched, seq));
    kvrt_seq_info_t ended;
    uint32_t n = 0;
    ASSERT_OK(p.ctx, kvrt_sched_drain_ended(p.sched, &ended, 1, &n));
    pair_down(&p);
}

Test(cluster_handoff_hostile, limits_and_wrong_calls_answer_with_a_status, .timeout = 60)
{
    pair_t p = pair_up(1);
    kvrt_cluster_handoff_recv_t *r = NULL;
    kvrt_cluster_handoff_recv_params_t rp = {.agent = p.decode_agent,
                                             .region = p.decode_region, .sched = p.sched};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_recv_create(p.ctx, NULL, &r));
    rp.field_mask = 1u << 20;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_recv_create(p.ctx, &rp, &r));
    rp.field_mask = KVRT_HANDOFF_RECV_PARAM_TIMEOUT;
    rp.timeout_ms = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_recv_create(p.ctx, &rp, &r));
    rp.field_mask = KVRT_HANDOFF_RECV_PARAM_POLICY;
    rp.on_failure = (kvrt_handoff_failure_policy_t)7;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_recv_create(p.ctx, &rp, &r));
    rp.field_mask = KVRT_HANDOFF_RECV_PARAM_REFUSE;
    rp.refuse_ms = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_recv_create(p.ctx, &rp, &r));
    rp.refuse_ms = 3600001u;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_recv_create(p.ctx, &rp, &r));
    rp.field_mask = 0;
    rp.sched = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_recv_create(p.ctx, &rp, &r));
    /* A region of another pool than the scheduler's: senders would write
     * the scheduler's block ids into blocks of that pool others hold. */
    rp.sched = p.sched;
    kvrt_xfer_region_t *other = txu_register_pool(p.ctx, p.decode_agent, p.prefill_pool);
    rp.region = other;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_recv_create(p.ctx, &rp, &r));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(other));
    rp.region = p.decode_region;
    cr_assert_null(r);
    kvrt_cluster_handoff_sender_t *s = NULL;
    kvrt_cluster_handoff_sender_params_t sp = {.field_mask = 1u << 9, .agent = p.prefill_agent,
                                               .region = p.prefill_region};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_sender_create(p.ctx, &sp, &s));
    cr_assert_null(s);

    kvrt_seq_id_t a = add(&p), b = add(&p);
    kvrt_handoff_accept_params_t ap = {.num_tokens = PROMPT};
    kvrt_handoff_id_t h = 0;
    /* The last token is always recomputed: the scheduler refuses it. */
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_cluster_handoff_accept(p.recv, a, &ap, tch_now_ns(), &h));
    ap.num_tokens = PROMPT - 1;
    ap.field_mask = 1u << 5;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_cluster_handoff_accept(p.recv, a, &ap, tch_now_ns(), &h));
    ap.field_mask = 0;
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REQUEST,
                  kvrt_cluster_handoff_accept(p.recv, a + 12345, &ap, tch_now_ns(), &h));
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_accept(p.recv, a, &ap, tch_now_ns(), &h));
    kvrt_handoff_id_t h2 = 0;
    ASSERT_STATUS(KVRT_ERR_REQUEST_LIMIT,
                  kvrt_cluster_handoff_accept(p.recv, b, &ap, tch_now_ns(), &h2));
    uint8_t small[8];
    size_t len = 0;
    ASSERT_STATUS(KVRT_ERR_BUFFER_TOO_SMALL,
                  kvrt_cluster_handoff_ticket(p.recv, h, small, sizeof(small), &len));
    cr_assert_gt(len, sizeof(small));
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND,
                  kvrt_cluster_handoff_ticket(p.recv, h + (1u << 20), small, 8, &len));
    uint32_t count = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_poll(p.recv, 0, NULL, 4, &count));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_handoff_poll(NULL, 0, NULL, 0, &count));
    kvrt_seq_info_t info;
    ASSERT_OK(p.ctx, kvrt_seq_info(p.sched, b, &info));
    cr_assert_eq(info.state, KVRT_SEQ_WAITING, "a refused accept changes nothing");
    /* Destroying the receiver with a live hand-off returns its blocks
     * (once the request is gone, nothing holds them). */
    ASSERT_OK(p.ctx, kvrt_seq_abort(p.sched, a));
    ASSERT_OK(p.ctx, kvrt_seq_abort(p.sched, b));
    kvrt_seq_info_t ended[2];
    uint32_t n = 0;
    ASSERT_OK(p.ctx, kvrt_sched_drain_ended(p.sched, ended, 2, &n));
    cr_assert_eq(n, 2);
    pair_down(&p);
}

Test(cluster_handoff_hostile, blocks_that_land_after_the_deadline_are_not_used, .timeout = 60)
{
    pair_t p = pair_up(16);
    kvrt_seq_id_t seq = add(&p);
    /* The sender counts the ticket's budget on its own clock and gives up
     * when it runs out, so the budget must outlast a send on a loaded
     * machine (under ThreadSanitizer one can take more than 50 ms); the
     * receiver's deadline is judged on the step clock the poll is given. */
    const uint32_t timeout_ms = 5000;
    kvrt_handoff_accept_params_t ap = {.field_mask = KVRT_HANDOFF_ACCEPT_PARAM_TIMEOUT,
                                       .num_tokens = PROMPT - 1, .timeout_ms = timeout_ms};
    uint64_t start = tch_now_ns();
    kvrt_handoff_id_t h = 0;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_accept(p.recv, seq, &ap, start, &h));
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    size_t len = 0;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_ticket(p.recv, h, ticket, sizeof(ticket), &len));
    kvrt_cluster_handoff_send_t *send = NULL;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_begin(p.sender, ticket, len, &send));
    int32_t local[5];
    ASSERT_OK(p.ctx, kvrt_pool_alloc(p.prefill_pool, 5, local));
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_blocks(send, local, 5));
    uint64_t end = txu_now_ms() + 10000;
    while (kvrt_cluster_handoff_send_test(send) == KVRT_INPROGRESS && txu_now_ms() < end)
        tch_nap_ms(1);
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_test(send));
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_end(send));
    ASSERT_OK(p.ctx, kvrt_pool_free(p.prefill_pool, 5, local));

    /* Every block is there, but the first poll comes after the deadline
     * (on the step clock): the request is recomputed, and since nothing is
     * in flight any more the blocks go back at once. */
    kvrt_handoff_completion_t c;
    uint32_t n = 0;
    const uint64_t past_deadline = start + (timeout_ms + 10) * 1000000ull;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_poll(p.recv, past_deadline, &c, 1, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(c.outcome, KVRT_HANDOFF_RECOMPUTED);
    cr_assert_eq(c.status, KVRT_ERR_TIMEOUT);
    cr_assert_eq(c.landed_blocks, 0);
    kvrt_handoff_recv_stats_t st;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_recv_stats(p.recv, &st));
    cr_assert_eq(st.quarantined, 0);
    cr_assert_eq(st.live, 0);
    kvrt_seq_info_t info;
    ASSERT_OK(p.ctx, kvrt_seq_info(p.sched, seq, &info));
    cr_assert_eq(info.computed_tokens, 0);
    ASSERT_OK(p.ctx, kvrt_seq_abort(p.sched, seq));
    kvrt_seq_info_t ended;
    ASSERT_OK(p.ctx, kvrt_sched_drain_ended(p.sched, &ended, 1, &n));
    pair_down(&p);
}

/* A send holds the connection its sender's cache gave it, and the remote
 * it imported from it, until it ends: when its decode node goes away and
 * the connection fails, another ticket to the same address must not close
 * that connection under it (which freed both: a use after free), but is
 * refused until the first send has ended. */
Test(cluster_handoff_hostile, a_connection_a_send_still_holds_is_not_closed_under_it,
     .timeout = 60)
{
    pair_t p = pair_up(4);
    kvrt_seq_id_t seq = add(&p);
    static uint8_t ticket[KVRT_HANDOFF_TICKET_MAX];
    size_t len = 0;
    accept(&p, seq, ticket, &len);
    kvrt_cluster_handoff_send_t *first = NULL;
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_begin(p.sender, ticket, len, &first));
    /* The decode node goes away before the prefill posts anything. */
    ASSERT_OK(p.ctx, kvrt_xfer_agent_destroy(p.decode_agent));
    p.decode_agent = NULL;
    kvrt_status_t st = KVRT_OK;
    kvrt_cluster_handoff_send_t *second = NULL;
    uint64_t end = txu_now_ms() + 20000;
    while (txu_now_ms() < end) {
        st = kvrt_cluster_handoff_send_begin(p.sender, ticket, len, &second);
        if (st == KVRT_OK) { /* still reconnecting: the same connection, held */
            ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_end(second));
            second = NULL;
        } else if (st == KVRT_ERR_PEER_FAILED) {
            break; /* failed, and held by the first send */
        }
        tch_nap_ms(20);
    }
    cr_assert_eq(st, KVRT_ERR_PEER_FAILED, "%s", kvrt_ctx_last_error(p.ctx));
    cr_assert_null(second);
    int32_t local[5];
    ASSERT_OK(p.ctx, kvrt_pool_alloc(p.prefill_pool, 5, local));
    cr_assert_neq(kvrt_cluster_handoff_send_blocks(first, local, 5), KVRT_OK);
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_send_end(first));
    ASSERT_OK(p.ctx, kvrt_pool_free(p.prefill_pool, 5, local));
    /* Once it has ended, the connection may go: the next ticket dials
     * again (and finds nobody there). */
    st = kvrt_cluster_handoff_send_begin(p.sender, ticket, len, &second);
    cr_assert(st != KVRT_OK && st != KVRT_ERR_PEER_FAILED, "%d: %s", st,
              kvrt_ctx_last_error(p.ctx));
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_sender_destroy(p.sender));
    ASSERT_OK(p.ctx, kvrt_cluster_handoff_recv_destroy(p.recv));
    kvrt_seq_info_t ended;
    uint32_t n = 0;
    ASSERT_OK(p.ctx, kvrt_seq_abort(p.sched, seq));
    ASSERT_OK(p.ctx, kvrt_sched_drain_ended(p.sched, &ended, 1, &n));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(p.prefill_region));
    kvrt_xfer_agent_destroy(p.prefill_agent); /* (the decode agent took its region) */
    kvrt_pool_info_t info;
    ASSERT_OK(p.ctx, kvrt_pool_info(p.pool, &info));
    cr_assert_eq(info.used_blocks, 0, "blocks stranded: %u", info.used_blocks);
    kvrt_sched_destroy(p.sched);
    kvrt_pool_destroy(p.pool);
    kvrt_pool_destroy(p.prefill_pool);
    kvrt_ctx_destroy(p.ctx);
}
