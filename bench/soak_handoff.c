/*
 * soak_handoff.c - prefill/decode hand-offs between kvrt-soak nodes, with
 * kvrt's cluster hand-off API (kvrt/cluster.h) over the transfer engine.
 *
 * Decode side: a client request that names a prefill node is admitted with
 * kvrt_cluster_handoff_accept (waiting for KV, a deadline) and its ticket
 * goes to the supervisor, which relays it to the prefill node as a router
 * would. Every step, kvrt_cluster_handoff_poll ends hand-offs; the blocks a
 * request keeps (all when LANDED, the verified leading ones when the
 * sender gave up under RECOMPUTE) are verified against their content
 * before the request can run. A hand-off that failed was recomputed or
 * aborted by kvrt; either way the request ends once, through the
 * scheduler.
 *
 * Prefill side: the prompt is prefilled here as a request of its own (two
 * output tokens, so its blocks are written and cached before it ends);
 * when it ends, kvrt_cluster_pull_serve finds its blocks in the prefix
 * cache by content hash, holds them and writes them into the decode
 * node's pool (checksummed); the send is ended once it completes or fails.
 *
 * The prefill node drops a job, and cancels a send, whose hand-off is past
 * its deadline (the ticket's time left, counted from its arrival): kvrt's
 * ticket budget counts from send_begin, which comes after the prefill here,
 * and a sender that writes after the decode node gave the blocks back
 * (deadline + quarantine) writes into other requests' blocks (docs/soak.md,
 * "What the soak found"). --handoff-no-expiry turns this off, to show that.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "soak_node_internal.h"

int soak_handoff_open(node_t *n)
{
    kvrt_cluster_handoff_recv_params_t rp = {
        .field_mask = KVRT_HANDOFF_RECV_PARAM_TIMEOUT | KVRT_HANDOFF_RECV_PARAM_POLICY,
        .agent = n->agent, .region = n->pool_region, .sched = n->sched,
        .timeout_ms = n->cfg->handoff_timeout_ms,
        .on_failure = n->cfg->handoff_fail ? KVRT_HANDOFF_FAIL : KVRT_HANDOFF_RECOMPUTE};
    kvrt_status_t st = kvrt_cluster_handoff_recv_create(n->ctx, &rp, &n->recv);
    if (st != KVRT_OK)
        return soak_node_die(n, "kvrt_cluster_handoff_recv_create", st);
    kvrt_cluster_handoff_sender_params_t sp = {
        .field_mask = KVRT_HANDOFF_SENDER_PARAM_INTEGRITY | KVRT_HANDOFF_SENDER_PARAM_TIMEOUT |
                      KVRT_HANDOFF_SENDER_PARAM_CONNECT_TIMEOUT,
        .agent = n->agent, .region = n->pool_region, .integrity = 1,
        .timeout_ms = n->cfg->transfer_timeout_ms, .connect_timeout_ms = 500};
    if ((st = kvrt_cluster_handoff_sender_create(n->ctx, &sp, &n->sender)) != KVRT_OK)
        return soak_node_die(n, "kvrt_cluster_handoff_sender_create", st);
    n->ticket_msg = malloc(sizeof(soak_msg_prefill_t) + SOAK_MAX_PROMPT * 4u +
                           KVRT_HANDOFF_TICKET_MAX);
    return n->ticket_msg ? 0 : soak_node_die(n, "allocation", KVRT_ERR_NO_MEMORY);
}

/* ---- decode side ---------------------------------------------------------------- */

int soak_handoff_accept(node_t *n, request_t *r, double now)
{
    /* Whole blocks before the prompt's last token arrive; the last token
     * is computed here, as its logits are. */
    uint32_t want = (r->prompt_len - 1) / SOAK_BLOCK_TOKENS;
    if (want == 0)
        return -1;
    kvrt_handoff_accept_params_t ap = {.num_tokens = want * SOAK_BLOCK_TOKENS};
    kvrt_handoff_id_t h = 0;
    if (kvrt_cluster_handoff_accept(n->recv, r->seq, &ap, (uint64_t)(now * 1e9), &h) != KVRT_OK)
        return -1; /* no blocks to spare now: prefilled here */
    n->c.handoffs++;
    r->handoff = h;
    soak_msg_prefill_t m = {.type = SOAK_MSG_TICKET, .node = r->prefill, .id = r->id,
                            .prompt_len = r->prompt_len,
                            .ttl_ms = n->cfg->handoff_expiry ? n->cfg->handoff_timeout_ms : 0};
    size_t head = sizeof(m) + (size_t)r->prompt_len * 4u, len = 0;
    /* A ticket that cannot be written leaves the hand-off to its deadline. */
    if (kvrt_cluster_handoff_ticket(n->recv, h, n->ticket_msg + head, KVRT_HANDOFF_TICKET_MAX,
                                    &len) != KVRT_OK)
        return 0;
    m.ticket_len = (uint32_t)len;
    memcpy(n->ticket_msg, &m, sizeof(m));
    memcpy(n->ticket_msg + sizeof(m), r->tokens, (size_t)r->prompt_len * 4u);
    soak_node_send(n, n->ticket_msg, head + len);
    return 0;
}

/*
 * The blocks a hand-off left in request r, [first, first + count): each
 * must hold its content. One the corrupter damaged is caught here and
 * written again (recomputed); any other that does not verify is a wrong
 * delivery (handoff_bad) and the request is aborted before it reads it.
 */
static void verify_landed(node_t *n, request_t *r, uint32_t first, uint32_t count)
{
    const int32_t *blocks = NULL;
    uint32_t nb = 0;
    if (count == 0 || kvrt_seq_blocks(n->sched, r->seq, &blocks, &nb, NULL) != KVRT_OK ||
        first + count > nb || first + count > r->full_blocks)
        return;
    uint32_t damaged = first + (uint32_t)(soak_splitmix(&n->rng) % count);
    int injected = soak_node_corrupt_maybe(n, blocks[damaged]);
    int bad = 0;
    for (uint32_t b = first; b < first + count; b++) {
        soak_verdict_t v = soak_node_block_check(n, blocks[b], &r->hashes[b]);
        if (v == SOAK_BLOCK_OK) {
            n->c.handoff_blocks++;
        } else if (injected && b == damaged && v == SOAK_BLOCK_CORRUPT) {
            n->c.corrupt_rejected++;
            soak_node_block_fill(n, blocks[b], &r->hashes[b]);
        } else {
            n->c.handoff_bad++;
            bad = 1;
            fprintf(stderr, "kvrt-soak node %u: hand-off of request %llu: block %u (pool %d) "
                            "is %s\n",
                    n->cfg->index, (unsigned long long)r->id, b, blocks[b],
                    v == SOAK_BLOCK_STALE ? "another block" : "corrupt");
        }
    }
    r->handed_end = first + count;
    if (bad)
        kvrt_seq_abort(n->sched, r->seq);
}

void soak_handoff_poll(node_t *n, double now)
{
    kvrt_handoff_completion_t done[32];
    uint32_t got = 0;
    do {
        if (kvrt_cluster_handoff_poll(n->recv, (uint64_t)(now * 1e9), done, 32, &got) !=
            KVRT_OK)
            return;
        for (uint32_t i = 0; i < got; i++) {
            const kvrt_handoff_completion_t *c = &done[i];
            if (c->outcome == KVRT_HANDOFF_LANDED)
                n->c.handoffs_landed++;
            else if (c->outcome == KVRT_HANDOFF_RECOMPUTED)
                n->c.handoffs_recomputed++;
            else
                n->c.handoffs_failed++;
            kvrt_seq_info_t info;
            if (kvrt_seq_info(n->sched, c->seq, &info) != KVRT_OK || info.user_tag >= MAX_LIVE)
                continue;
            request_t *r = &n->live[info.user_tag];
            if (!r->used || r->handoff != c->handoff)
                continue;
            r->handoff = 0;
            if (c->outcome != KVRT_HANDOFF_FAILED)
                verify_landed(n, r, c->first_block, c->landed_blocks);
        }
    } while (got == 32);
}

/* ---- prefill side ---------------------------------------------------------------- */

void soak_handoff_prefill(node_t *n, const uint8_t *buf, size_t len)
{
    soak_msg_prefill_t m;
    memcpy(&m, buf, sizeof(m));
    if (m.prompt_len < 2 || m.prompt_len > SOAK_MAX_PROMPT ||
        m.ticket_len > KVRT_HANDOFF_TICKET_MAX ||
        len != sizeof(m) + (size_t)m.prompt_len * 4u + m.ticket_len) {
        fprintf(stderr, "kvrt-soak node %u: malformed prefill job\n", n->cfg->index);
        _exit(4);
    }
    request_t *r = soak_node_request_slot(n);
    if (!r || n->finishing) {
        /* No room: the decode node's hand-off runs into its deadline. */
        n->c.prefill_sends_failed++;
        return;
    }
    /* Two output tokens (any: the decode node emits the answer): the first
     * commit writes and caches the prompt's blocks, the second ends the
     * request with them still cached. */
    int32_t *tokens = malloc(((size_t)m.prompt_len + 2) * 4u);
    if (!tokens)
        _exit(5);
    memcpy(tokens, buf + sizeof(m), (size_t)m.prompt_len * 4u);
    tokens[m.prompt_len] = tokens[m.prompt_len + 1] = tokens[0];
    int bad = soak_node_request_init(n, r, tokens, m.prompt_len, 2);
    free(tokens);
    if (bad != 0 || !(r->ticket = malloc(m.ticket_len ? m.ticket_len : 1)))
        _exit(5);
    memcpy(r->ticket, buf + sizeof(m) + (size_t)m.prompt_len * 4u, m.ticket_len);
    r->ticket_len = m.ticket_len;
    r->expires_s = m.ttl_ms ? soak_node_now_s() + m.ttl_ms / 1e3 : INFINITY;
    r->used = 1;
    r->role = ROLE_PREFILL;
    r->id = m.id;
    r->home = n->cfg->index;
    r->arrival_s = soak_node_now_s();
    n->c.prefills++;
    soak_node_admit_later(n, r);
}

void soak_handoff_serve(node_t *n, request_t *r, const kvrt_seq_info_t *ev)
{
    kvrt_cluster_handoff_send_t *send = NULL;
    if (soak_node_now_s() >= r->expires_s) {
        n->c.prefills_expired++;
        return;
    }
    if ((ev->end_reason != KVRT_END_STOP && ev->end_reason != KVRT_END_LENGTH) ||
        n->num_sends == MAX_SENDS ||
        kvrt_cluster_pull_serve(n->sender, n->pool, n->cache, NULL, NULL, r->hashes,
                                r->full_blocks, r->ticket, r->ticket_len, &send) != KVRT_OK) {
        n->c.prefill_sends_failed++;
        return;
    }
    n->send_expires_s[n->num_sends] = r->expires_s;
    n->sends[n->num_sends++] = send;
}

void soak_handoff_progress(node_t *n)
{
    double now = soak_node_now_s();
    for (uint32_t i = 0; i < n->num_sends;) {
        kvrt_status_t st = kvrt_cluster_handoff_send_test(n->sends[i]);
        if (st == KVRT_INPROGRESS && now < n->send_expires_s[i]) {
            i++;
            continue;
        }
        if (st == KVRT_OK)
            n->c.prefill_sends_ok++;
        else if (st == KVRT_INPROGRESS)
            n->c.prefills_expired++; /* send_end cancels what is in flight */
        else
            n->c.prefill_sends_failed++;
        kvrt_cluster_handoff_send_end(n->sends[i]);
        n->num_sends--;
        n->sends[i] = n->sends[n->num_sends];
        n->send_expires_s[i] = n->send_expires_s[n->num_sends];
    }
}

uint64_t soak_handoff_pending(node_t *n)
{
    kvrt_handoff_recv_stats_t s = {0};
    kvrt_cluster_handoff_recv_stats(n->recv, &s);
    return (uint64_t)s.live + s.quarantined + n->num_sends;
}

void soak_handoff_close_sends(node_t *n)
{
    for (uint32_t i = 0; i < n->num_sends; i++)
        kvrt_cluster_handoff_send_end(n->sends[i]);
    n->num_sends = 0;
    kvrt_cluster_handoff_sender_destroy(n->sender);
    n->sender = NULL;
    free(n->ticket_msg);
    n->ticket_msg = NULL;
}
