/*
 * handoff_send.c - the prefill side of a prefill/decode hand-off: reads a
 * ticket (untrusted bytes), connects to the decode node (one connection per
 * address, kept for later hand-offs), and writes the prompt's blocks into
 * the decode node's pool batch by batch, each batch one KV transfer closed
 * by a notification that names it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"
#include "handoff_send.h"

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_sender_create(
    kvrt_ctx_t *ctx, const kvrt_cluster_handoff_sender_params_t *params,
    kvrt_cluster_handoff_sender_t **sender_out)
{
    if (!ctx || !params || !sender_out || !params->agent || !params->region)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "NULL argument");
    const uint64_t known = KVRT_HANDOFF_SENDER_PARAM_INTEGRITY | KVRT_HANDOFF_SENDER_PARAM_TIMEOUT |
                           KVRT_HANDOFF_SENDER_PARAM_CONNECT_TIMEOUT;
    uint64_t m = params->field_mask;
    if (m & ~known)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(m & ~known));
    uint32_t connect_ms =
        (m & KVRT_HANDOFF_SENDER_PARAM_CONNECT_TIMEOUT) ? params->connect_timeout_ms : 5000u;
    if (connect_ms < 1 || connect_ms > 600000u)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "connect_timeout_ms %u outside 1..600000",
                         connect_ms);
    uint32_t timeout_ms = (m & KVRT_HANDOFF_SENDER_PARAM_TIMEOUT) ? params->timeout_ms : 0;
    if ((m & KVRT_HANDOFF_SENDER_PARAM_TIMEOUT) && (timeout_ms < 1 || timeout_ms > 3600000u))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "timeout_ms %u outside 1..3600000", timeout_ms);
    kvrt_cluster_handoff_sender_t *s = calloc(1, sizeof(*s));
    if (!s)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "sender");
    s->ctx = ctx;
    s->agent = params->agent;
    s->region = params->region;
    s->integrity = (m & KVRT_HANDOFF_SENDER_PARAM_INTEGRITY) ? params->integrity != 0 : 0;
    s->timeout_ms = timeout_ms;
    s->peers = (peer_cache_t){
        .ctx = ctx, .agent = params->agent, .connect_timeout_ms = connect_ms};
    *sender_out = s;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_sender_destroy(kvrt_cluster_handoff_sender_t *sender)
{
    if (!sender)
        return KVRT_OK;
    if (sender->sends > 0)
        return kvrt_fail(sender->ctx, KVRT_ERR_BUSY, "%u sends not ended", sender->sends);
    pull_sources_abandon(sender);
    peer_cache_close(&sender->peers);
    free(sender);
    return KVRT_OK;
}

/* Checks every field of the ticket against its length. */
kvrt_status_t handoff_ticket_parse(kvrt_ctx_t *ctx, const uint8_t *p, size_t length,
                                   handoff_ticket_t *t)
{
    if (length < HANDOFF_TICKET_HEAD || length > KVRT_HANDOFF_TICKET_MAX)
        return kvrt_fail(ctx, KVRT_ERR_PARSE, "ticket of %zu bytes", length);
    if (kvrt_load_le32(p) != HANDOFF_TICKET_MAGIC || kvrt_load_le16(p + 4) != HANDOFF_VERSION)
        return kvrt_fail(ctx, KVRT_ERR_PARSE, "not a version %u hand-off ticket", HANDOFF_VERSION);
    uint32_t address_bytes = kvrt_load_le16(p + 6);
    t->token = kvrt_load_le64(p + 8);
    t->slot = kvrt_load_le32(p + 16);
    t->first_block = kvrt_load_le32(p + 20);
    t->num_blocks = kvrt_load_le32(p + 24);
    t->descriptor_bytes = kvrt_load_le16(p + 28);
    t->budget_ms = kvrt_load_le32(p + 32);
    if (kvrt_load_le16(p + 30) != 0 || kvrt_load_le32(p + 36) != 0)
        return kvrt_fail(ctx, KVRT_ERR_PARSE, "ticket reserved fields are not zero");
    if (t->budget_ms > HANDOFF_BUDGET_MAX_MS)
        return kvrt_fail(ctx, KVRT_ERR_PARSE, "ticket budget of %u ms over %u", t->budget_ms,
                         HANDOFF_BUDGET_MAX_MS);
    if (address_bytes == 0 || address_bytes > HANDOFF_ADDRESS_MAX || t->descriptor_bytes == 0 ||
        t->descriptor_bytes > KVRT_XFER_DESCRIPTOR_MAX || t->num_blocks > KVRT_HANDOFF_MAX_BLOCKS ||
        length !=
            HANDOFF_TICKET_HEAD + address_bytes + t->descriptor_bytes + 4u * (size_t)t->num_blocks)
        return kvrt_fail(ctx, KVRT_ERR_PARSE, "ticket sizes do not add up to %zu bytes", length);
    memcpy(t->address, p + HANDOFF_TICKET_HEAD, address_bytes);
    t->address[address_bytes] = '\0';
    if (strlen(t->address) != address_bytes)
        return kvrt_fail(ctx, KVRT_ERR_PARSE, "ticket address holds a NUL byte");
    t->descriptor = p + HANDOFF_TICKET_HEAD + address_bytes;
    t->blocks = t->descriptor + t->descriptor_bytes;
    for (uint32_t i = 0; i < t->num_blocks; i++)
        if (kvrt_load_le32(t->blocks + 4u * i) > (uint32_t)INT32_MAX)
            return kvrt_fail(ctx, KVRT_ERR_PARSE, "ticket block %u out of range", i);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_send_begin(kvrt_cluster_handoff_sender_t *sender,
                                                          const void *ticket, size_t length,
                                                          kvrt_cluster_handoff_send_t **send_out)
{
    if (!sender || !ticket || !send_out)
        return kvrt_fail(sender ? sender->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    kvrt_ctx_t *ctx = sender->ctx;
    kvrt_cluster_handoff_send_t *send = calloc(1, sizeof(*send));
    if (!send)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "send");
    kvrt_status_t st = handoff_ticket_parse(ctx, ticket, length, &send->ticket);
    uint32_t n = send->ticket.num_blocks;
    if (st == KVRT_OK && n > 0) {
        send->remote_blocks = malloc(n * sizeof(int32_t));
        send->requests = calloc(n, sizeof(*send->requests)); /* >= 1 block a batch */
        if (!send->remote_blocks || !send->requests)
            st = kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "send of %u blocks", n);
        for (uint32_t i = 0; st == KVRT_OK && i < n; i++)
            send->remote_blocks[i] = (int32_t)kvrt_load_le32(send->ticket.blocks + 4u * i);
    }
    if (st == KVRT_OK)
        st = peer_cache_get(&sender->peers, send->ticket.address, &send->peer);
    if (st == KVRT_OK)
        st = kvrt_xfer_import(send->peer, send->ticket.descriptor, send->ticket.descriptor_bytes,
                              &send->remote);
    /* The ticket's bytes are the caller's: keep nothing that points there. */
    send->ticket.descriptor = NULL;
    send->ticket.blocks = NULL;
    if (st != KVRT_OK) {
        if (send->peer)
            peer_cache_put(&sender->peers, send->peer);
        free(send->remote_blocks);
        free(send->requests);
        free(send);
        return st;
    }
    send->sender = sender;
    send->limit = send->ticket.num_blocks;
    /* The budget counts from now, when this node first saw the ticket: a
     * ticket that travelled long is covered by the decode node's
     * quarantine and, past that, by its revocation of this agent. */
    send->deadline_ns = kvrt_now_ns() + (uint64_t)send->ticket.budget_ms * 1000000ull;
    sender->sends++;
    *send_out = send;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_send_info(const kvrt_cluster_handoff_send_t *send,
                                                         uint32_t *num_blocks_out,
                                                         uint32_t *first_block_out)
{
    if (!send)
        return kvrt_fail(NULL, KVRT_ERR_INVALID_ARG, "NULL send");
    if (num_blocks_out)
        *num_blocks_out = send->ticket.num_blocks;
    if (first_block_out)
        *first_block_out = send->ticket.first_block;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_send_blocks(kvrt_cluster_handoff_send_t *send,
                                                           const int32_t *local_blocks,
                                                           uint32_t count)
{
    if (!send || !local_blocks)
        return kvrt_fail(send ? send->sender->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    kvrt_cluster_handoff_sender_t *s = send->sender;
    if (count == 0 || count > HANDOFF_BATCH_MAX || count > send->limit - send->posted)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "%u blocks: 1..%u per batch, %u left in the ticket", count,
                         HANDOFF_BATCH_MAX, send->limit - send->posted);
    if (send->failure != KVRT_OK)
        return kvrt_fail(s->ctx, KVRT_ERR_BAD_STATE, "an earlier batch failed (%s)",
                         kvrt_status_str(send->failure));
    /* Past the deadline the decode node has decided the request and may
     * have given these blocks to another: write nothing. A batch may take
     * until the deadline, no longer (the transfer engine cancels it). */
    uint64_t now = kvrt_now_ns();
    if (now >= send->deadline_ns) {
        send->failure = KVRT_ERR_TIMEOUT;
        return kvrt_fail(s->ctx, KVRT_ERR_TIMEOUT,
                         "the hand-off's deadline passed %llu ms ago: nothing posted",
                         (unsigned long long)((now - send->deadline_ns) / 1000000ull));
    }
    uint64_t left_ms = (send->deadline_ns - now + 999999ull) / 1000000ull;
    uint32_t timeout_ms = s->timeout_ms && s->timeout_ms < left_ms ? s->timeout_ms
                                                                    : (uint32_t)left_ms;
    uint8_t note[HANDOFF_MSG_BYTES];
    handoff_msg_t msg = {.kind = HANDOFF_MSG_BATCH,
                         .slot = send->ticket.slot,
                         .first = send->posted,
                         .count = count,
                         .token = send->ticket.token};
    handoff_msg_encode(note, &msg);
    kvrt_xfer_kv_params_t kp = {.field_mask = KVRT_XFER_KV_PARAM_NOTIFY |
                                              KVRT_XFER_KV_PARAM_INTEGRITY |
                                              KVRT_XFER_KV_PARAM_TIMEOUT,
                                .opcode = KVRT_XFER_WRITE,
                                .local = s->region,
                                .remote = send->remote,
                                .local_blocks = local_blocks,
                                .remote_blocks = send->remote_blocks + send->posted,
                                .count = count,
                                .integrity = s->integrity,
                                .notify = note,
                                .notify_bytes = HANDOFF_MSG_BYTES,
                                .timeout_ms = timeout_ms};
    kvrt_xfer_request_t *req = NULL;
    kvrt_status_t st = kvrt_xfer_kv_post(send->peer, &kp, &req);
    if (st != KVRT_OK)
        return st;
    send->requests[send->num_requests++] = req;
    send->posted += count;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_send_test(kvrt_cluster_handoff_send_t *send)
{
    if (!send)
        return kvrt_fail(NULL, KVRT_ERR_INVALID_ARG, "NULL send");
    bool pending = send->posted < send->limit || send->src.onloading;
    for (uint32_t i = 0; i < send->num_requests; i++) {
        kvrt_status_t st = kvrt_xfer_request_test(send->requests[i]);
        if (st == KVRT_INPROGRESS)
            pending = true;
        else if (st != KVRT_OK && send->failure == KVRT_OK)
            send->failure = st;
    }
    /* Blocks left unposted at the deadline never will be. */
    if (send->failure == KVRT_OK && send->posted < send->limit &&
        kvrt_now_ns() >= send->deadline_ns)
        send->failure = KVRT_ERR_TIMEOUT;
    if (send->failure != KVRT_OK)
        return send->failure;
    return pending ? KVRT_INPROGRESS : KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_send_end(kvrt_cluster_handoff_send_t *send)
{
    if (!send)
        return KVRT_OK;
    bool all_landed = send->posted == send->ticket.num_blocks;
    for (uint32_t i = 0; i < send->num_requests; i++) {
        kvrt_xfer_request_t *r = send->requests[i];
        kvrt_status_t st = kvrt_xfer_request_test(r);
        if (st == KVRT_INPROGRESS) {
            /* Resets a connection with its data in flight: nothing reads
             * the local blocks once the cancel returns. */
            kvrt_xfer_request_cancel(r);
            st = KVRT_ERR_CANCELED;
        }
        if (st != KVRT_OK)
            all_landed = false;
        kvrt_xfer_request_release(r);
    }
    if (!all_landed) {
        /* Best effort: the decode node releases the blocks at once on it,
         * or after its quarantine without it. */
        uint8_t note[HANDOFF_MSG_BYTES];
        handoff_msg_t msg = {
            .kind = HANDOFF_MSG_ABORT, .slot = send->ticket.slot, .token = send->ticket.token};
        handoff_msg_encode(note, &msg);
        kvrt_xfer_notify(send->peer, note, sizeof(note));
    }
    kvrt_xfer_remote_release(send->remote);
    send->remote = NULL;
    peer_cache_put(&send->sender->peers, send->peer);
    send->peer = NULL;
    send->sender->sends--;
    free(send->remote_blocks);
    free(send->requests);
    send->remote_blocks = NULL;
    send->requests = NULL;
    if (pull_source_release(send))
        free(send);
    return KVRT_OK;
}
