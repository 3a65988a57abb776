/*
 * handoff_recv.c - the decode side of a prefill/decode hand-off: admits a
 * request in waiting for KV, writes the ticket the prefill node needs, and
 * follows the transfer through the notifications its KV writes close with.
 *
 * A hand-off lives in a slot: LIVE while blocks may still land, then either
 * ended at once (every block landed, or the sender closed it: nothing of it
 * is in flight any more) or, when its deadline passes first, QUARANTINED:
 * the request is decided (recomputed or aborted) but its blocks stay held,
 * because a stalled sender could still write into them, until the sender's
 * closing message arrives or the quarantine time passes.
 */
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"
#include "handoff_wire.h"
#include "sched/hooks.h"
#include "xfer/hooks.h"

/* Notifications taken per kvrt_xfer_notifications() call; a poll takes at
 * most what the agent keeps (4096) plus one batch. */
#define RECV_NOTE_BATCH 64u
#define RECV_NOTE_ROUNDS (4096u / RECV_NOTE_BATCH + 1u)

enum slot_state { SLOT_FREE = 0, SLOT_LIVE, SLOT_QUARANTINED };
enum block_state { BLOCK_OPEN = 0, BLOCK_LANDED = 1, BLOCK_BAD = 2 };

typedef struct handoff_slot {
    enum slot_state state;
    uint32_t generation;
    kvrt_seq_id_t seq;
    kvrt_arrival_id_t arrival;
    uint64_t token;
    uint64_t accept_ns;
    uint64_t deadline_ns;
    uint64_t release_ns; /* QUARANTINED: when the blocks go back anyway */
    uint32_t first_block;
    uint32_t num_blocks;
    uint32_t landed;       /* blocks whose batch closed verified */
    uint32_t closed;       /* blocks whose batch closed, verified or not */
    kvrt_status_t failure; /* first failure seen (integrity), else OK */
    int32_t *blocks;       /* the decode pool's block ids to fill */
    uint8_t *batch_closed; /* per block: 0 open, BLOCK_LANDED, BLOCK_BAD */
    bool sender_bound;
    char sender[KVRT_XFER_NAME_MAX];
} handoff_slot_t;

struct kvrt_cluster_handoff_recv {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *agent;
    kvrt_sched_t *sched;
    uint64_t timeout_ns;
    uint64_t quarantine_ns;
    uint32_t refuse_ms; /* a cut-off sender's refusal */
    kvrt_handoff_failure_policy_t policy;
    uint32_t max_handoffs;
    uint32_t high_water; /* slots [0, high_water) were ever used */
    uint64_t now_ns;     /* of the poll in progress */
    bool fed;            /* a channel takes the agent's notifications */
    handoff_slot_t *slots;
    /* Ended hand-offs not yet taken by a poll: a ring of max_handoffs. */
    kvrt_handoff_completion_t *ended;
    uint32_t ended_head, ended_count;
    kvrt_xfer_notification_t *notes;
    char address[HANDOFF_ADDRESS_MAX + 1];
    uint8_t descriptor[KVRT_XFER_DESCRIPTOR_MAX];
    uint32_t descriptor_bytes;
    kvrt_handoff_recv_stats_t stats;
};

static kvrt_handoff_id_t slot_id(const kvrt_cluster_handoff_recv_t *r, const handoff_slot_t *s)
{
    return ((uint64_t)s->generation << 20) | (uint64_t)(s - r->slots);
}

static handoff_slot_t *slot_of(const kvrt_cluster_handoff_recv_t *r, kvrt_handoff_id_t id)
{
    uint64_t index = id & ((1u << 20) - 1u);
    if (index >= r->max_handoffs)
        return NULL;
    handoff_slot_t *s = &r->slots[index];
    if (s->state == SLOT_FREE || (id >> 20) != s->generation)
        return NULL;
    return s;
}

KVRT_EXPORT kvrt_status_t
kvrt_cluster_handoff_recv_create(kvrt_ctx_t *ctx, const kvrt_cluster_handoff_recv_params_t *params,
                                 kvrt_cluster_handoff_recv_t **recv_out)
{
    if (!ctx || !params || !recv_out || !params->agent || !params->region || !params->sched)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "NULL argument");
    /* Senders write the blocks the scheduler hands out by id into the
     * region: of another pool, the ids would name blocks others hold. */
    if (kvrt_sched_num_groups(params->sched) != 1 ||
        kvrt_xfer_region_pool(params->region) != kvrt_sched_group_pool(params->sched, 0))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "the region must be registered for the scheduler's pool (one cache "
                         "group)");
    const uint64_t known = KVRT_HANDOFF_RECV_PARAM_TIMEOUT | KVRT_HANDOFF_RECV_PARAM_POLICY |
                           KVRT_HANDOFF_RECV_PARAM_QUARANTINE |
                           KVRT_HANDOFF_RECV_PARAM_MAX_HANDOFFS | KVRT_HANDOFF_RECV_PARAM_REFUSE;
    uint64_t m = params->field_mask;
    if (m & ~known)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(m & ~known));
    uint32_t timeout_ms = (m & KVRT_HANDOFF_RECV_PARAM_TIMEOUT) ? params->timeout_ms : 10000u;
    if (timeout_ms < 1 || timeout_ms > 3600000u)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "timeout_ms %u outside 1..3600000", timeout_ms);
    uint32_t quarantine_ms =
        (m & KVRT_HANDOFF_RECV_PARAM_QUARANTINE) ? params->quarantine_ms : 2u * timeout_ms;
    if (quarantine_ms > 3600000u * 2u)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "quarantine_ms %u too large", quarantine_ms);
    kvrt_handoff_failure_policy_t policy =
        (m & KVRT_HANDOFF_RECV_PARAM_POLICY) ? params->on_failure : KVRT_HANDOFF_RECOMPUTE;
    if (policy != KVRT_HANDOFF_RECOMPUTE && policy != KVRT_HANDOFF_FAIL)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown failure policy %d", (int)policy);
    uint64_t refuse_default = (uint64_t)timeout_ms + quarantine_ms;
    uint32_t refuse_ms = (m & KVRT_HANDOFF_RECV_PARAM_REFUSE) ? params->refuse_ms
                         : refuse_default > KVRT_XFER_REFUSE_MAX_MS ? KVRT_XFER_REFUSE_MAX_MS
                                                                    : (uint32_t)refuse_default;
    if (refuse_ms < 1 || refuse_ms > KVRT_XFER_REFUSE_MAX_MS)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "refuse_ms %u outside 1..%u", refuse_ms,
                         KVRT_XFER_REFUSE_MAX_MS);
    uint32_t max = (m & KVRT_HANDOFF_RECV_PARAM_MAX_HANDOFFS) ? params->max_handoffs : 1024u;
    if (max < 1 || max > 65536u)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "max_handoffs %u outside 1..65536", max);

    kvrt_cluster_handoff_recv_t *r = calloc(1, sizeof(*r));
    if (!r)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "receiver");
    r->slots = calloc(max, sizeof(*r->slots));
    r->ended = calloc(max, sizeof(*r->ended));
    r->notes = calloc(RECV_NOTE_BATCH, sizeof(*r->notes));
    if (!r->slots || !r->ended || !r->notes) {
        kvrt_cluster_handoff_recv_destroy(r);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "receiver tables for %u hand-offs", max);
    }
    size_t desc_len = 0;
    kvrt_status_t st = kvrt_xfer_region_descriptor(params->region, r->descriptor,
                                                   sizeof(r->descriptor), &desc_len);
    if (st == KVRT_OK)
        st = kvrt_xfer_agent_address(params->agent, r->address, sizeof(r->address));
    if (st != KVRT_OK) {
        kvrt_cluster_handoff_recv_destroy(r);
        return kvrt_fail(ctx, st, "reading the agent's address and the region's descriptor");
    }
    r->descriptor_bytes = (uint32_t)desc_len;
    r->ctx = ctx;
    r->agent = params->agent;
    r->sched = params->sched;
    r->timeout_ns = (uint64_t)timeout_ms * 1000000u;
    r->quarantine_ns = (uint64_t)quarantine_ms * 1000000u;
    r->refuse_ms = refuse_ms;
    r->policy = policy;
    r->max_handoffs = max;
    *recv_out = r;
    return KVRT_OK;
}

/* Gives the slot's blocks back to the scheduler and frees the slot. */
static void slot_release(kvrt_cluster_handoff_recv_t *r, handoff_slot_t *s, uint32_t landed)
{
    kvrt_arrival_complete(r->sched, s->arrival, landed);
    free(s->blocks);
    free(s->batch_closed);
    if (s->state == SLOT_QUARANTINED)
        r->stats.quarantined--;
    else
        r->stats.live--;
    uint32_t generation = s->generation;
    memset(s, 0, sizeof(*s));
    s->generation = generation;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_recv_destroy(kvrt_cluster_handoff_recv_t *recv)
{
    if (!recv)
        return KVRT_OK;
    for (uint32_t i = 0; recv->slots && i < recv->high_water; i++)
        if (recv->slots[i].state != SLOT_FREE)
            slot_release(recv, &recv->slots[i], 0);
    free(recv->slots);
    free(recv->ended);
    free(recv->notes);
    free(recv);
    return KVRT_OK;
}

static void push_ended(kvrt_cluster_handoff_recv_t *r, const handoff_slot_t *s,
                       kvrt_handoff_outcome_t outcome, kvrt_status_t status, uint32_t kept)
{
    kvrt_handoff_completion_t *c = &r->ended[(r->ended_head + r->ended_count) % r->max_handoffs];
    r->ended_count++;
    *c = (kvrt_handoff_completion_t){.handoff = slot_id(r, s),
                                     .seq = s->seq,
                                     .outcome = outcome,
                                     .status = status,
                                     .blocks = s->num_blocks,
                                     .first_block = s->first_block,
                                     .landed_blocks = kept};
    r->stats.blocks_landed += kept;
    if (outcome == KVRT_HANDOFF_LANDED) {
        r->stats.landed++;
    } else if (outcome == KVRT_HANDOFF_RECOMPUTED) {
        r->stats.recomputed++;
    } else {
        r->stats.failed++;
    }
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_accept(kvrt_cluster_handoff_recv_t *recv,
                                                      kvrt_seq_id_t seq,
                                                      const kvrt_handoff_accept_params_t *params,
                                                      uint64_t now_ns,
                                                      kvrt_handoff_id_t *handoff_out)
{
    if (!recv || !params || !handoff_out)
        return kvrt_fail(recv ? recv->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    kvrt_ctx_t *ctx = recv->ctx;
    if (params->field_mask & ~(uint64_t)KVRT_HANDOFF_ACCEPT_PARAM_TIMEOUT)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)params->field_mask);
    uint64_t timeout_ns = recv->timeout_ns;
    if (params->field_mask & KVRT_HANDOFF_ACCEPT_PARAM_TIMEOUT) {
        if (params->timeout_ms < 1 || params->timeout_ms > 3600000u)
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "timeout_ms %u outside 1..3600000",
                             params->timeout_ms);
        timeout_ns = (uint64_t)params->timeout_ms * 1000000u;
    }
    if (recv->stats.live + recv->stats.quarantined + recv->ended_count >= recv->max_handoffs)
        return kvrt_fail(ctx, KVRT_ERR_REQUEST_LIMIT, "%u hand-offs live, quarantined or unpolled",
                         recv->max_handoffs);
    handoff_slot_t *s = NULL;
    for (uint32_t i = 0; i < recv->max_handoffs && !s; i++)
        if (recv->slots[i].state == SLOT_FREE)
            s = &recv->slots[i];
    if (!s)
        return kvrt_fail(ctx, KVRT_ERR_REQUEST_LIMIT, "no free hand-off slot");

    uint64_t token = cluster_random_epoch(); /* 64 random bits, the ticket's secret */
    kvrt_arrival_params_t ap = {.field_mask = KVRT_ARRIVAL_PARAM_DEADLINE,
                                .num_tokens = params->num_tokens,
                                .deadline_ns = now_ns + timeout_ns};
    kvrt_arrival_id_t arrival = 0;
    uint32_t first = 0, count = 0;
    kvrt_status_t st = kvrt_seq_await_kv(recv->sched, seq, &ap, &arrival, &first, &count);
    if (st != KVRT_OK)
        return st; /* the scheduler set the message */
    const int32_t *table = NULL;
    st = kvrt_seq_blocks(recv->sched, seq, &table, NULL, NULL);
    int32_t *blocks = NULL;
    uint8_t *closed = NULL;
    if (st == KVRT_OK && count > KVRT_HANDOFF_MAX_BLOCKS)
        st = kvrt_fail(ctx, KVRT_ERR_OVERFLOW, "%u blocks; a hand-off carries at most %u", count,
                       KVRT_HANDOFF_MAX_BLOCKS);
    if (st == KVRT_OK && count > 0) {
        blocks = malloc(count * sizeof(*blocks));
        closed = calloc(count, 1);
        if (!blocks || !closed)
            st = kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "hand-off of %u blocks", count);
        else
            memcpy(blocks, table + first, count * sizeof(*blocks));
    }
    if (st != KVRT_OK) {
        free(blocks);
        free(closed);
        /* Back to the queue with nothing arrived: as if never accepted. */
        kvrt_arrival_complete(recv->sched, arrival, 0);
        return st;
    }
    uint32_t generation = s->generation + 1u;
    if (generation >= (1u << 24))
        generation = 1;
    *s = (handoff_slot_t){.state = SLOT_LIVE,
                          .generation = generation,
                          .seq = seq,
                          .arrival = arrival,
                          .token = token,
                          .accept_ns = now_ns,
                          .deadline_ns = now_ns + timeout_ns,
                          .first_block = first,
                          .num_blocks = count,
                          .blocks = blocks,
                          .batch_closed = closed};
    uint32_t index = (uint32_t)(s - recv->slots);
    if (index + 1 > recv->high_water)
        recv->high_water = index + 1;
    recv->stats.accepted++;
    recv->stats.live++;
    *handoff_out = slot_id(recv, s);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_ticket(const kvrt_cluster_handoff_recv_t *recv,
                                                      kvrt_handoff_id_t handoff, void *buf,
                                                      size_t capacity, size_t *length_out)
{
    if (!recv || !length_out || (!buf && capacity > 0))
        return kvrt_fail(recv ? recv->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    const handoff_slot_t *s = slot_of(recv, handoff);
    if (!s || s->state != SLOT_LIVE)
        return kvrt_fail(recv->ctx, KVRT_ERR_NOT_FOUND, "hand-off %llx is not live",
                         (unsigned long long)handoff);
    uint32_t address_bytes = (uint32_t)strlen(recv->address);
    size_t need =
        HANDOFF_TICKET_HEAD + address_bytes + recv->descriptor_bytes + 4u * (size_t)s->num_blocks;
    *length_out = need;
    if (capacity < need)
        return kvrt_fail(recv->ctx, KVRT_ERR_BUFFER_TOO_SMALL, "the ticket needs %zu bytes", need);
    uint8_t *p = buf;
    memset(p, 0, HANDOFF_TICKET_HEAD);
    kvrt_store_le32(p, HANDOFF_TICKET_MAGIC);
    kvrt_store_le16(p + 4, HANDOFF_VERSION);
    kvrt_store_le16(p + 6, (uint16_t)address_bytes);
    kvrt_store_le64(p + 8, s->token);
    kvrt_store_le32(p + 16, (uint32_t)(s - recv->slots));
    kvrt_store_le32(p + 20, s->first_block);
    kvrt_store_le32(p + 24, s->num_blocks);
    kvrt_store_le16(p + 28, (uint16_t)recv->descriptor_bytes);
    /* The budget: what is left to the deadline at the latest step clock
     * the receiver saw (accept or poll); the sender counts it from when it
     * reads the ticket. */
    uint64_t now = recv->now_ns > s->accept_ns ? recv->now_ns : s->accept_ns;
    uint64_t budget_ms = now < s->deadline_ns ? (s->deadline_ns - now) / 1000000u : 0;
    kvrt_store_le32(p + 32, (uint32_t)budget_ms);
    p += HANDOFF_TICKET_HEAD;
    memcpy(p, recv->address, address_bytes);
    p += address_bytes;
    memcpy(p, recv->descriptor, recv->descriptor_bytes);
    p += recv->descriptor_bytes;
    for (uint32_t i = 0; i < s->num_blocks; i++, p += 4)
        kvrt_store_le32(p, (uint32_t)s->blocks[i]);
    return KVRT_OK;
}

/* The request's fate once the hand-off failed, by policy. */
static kvrt_handoff_outcome_t fail_request(kvrt_cluster_handoff_recv_t *r, handoff_slot_t *s)
{
    if (r->policy == KVRT_HANDOFF_FAIL) {
        /* Ends at once; an already ended or drained request is left alone. */
        kvrt_seq_abort(r->sched, s->seq);
        return KVRT_HANDOFF_FAILED;
    }
    return KVRT_HANDOFF_RECOMPUTED;
}

/* Verified blocks counted from the first, up to the first that is not. */
static uint32_t landed_prefix(const handoff_slot_t *s)
{
    uint32_t n = 0;
    while (n < s->num_blocks && s->batch_closed[n] == BLOCK_LANDED)
        n++;
    return n;
}

/* Nothing of the hand-off is in flight any more: decide and release. A
 * sender that gave up after some batches (a pull source that lacked the
 * rest) leaves its verified leading blocks to the request under RECOMPUTE:
 * only the rest is recomputed. */
static void slot_closed(kvrt_cluster_handoff_recv_t *r, handoff_slot_t *s, kvrt_status_t why)
{
    if (s->state == SLOT_QUARANTINED) {
        slot_release(r, s, 0);
        return;
    }
    /* Too late: a step may have given the arrival up already, so no block
     * is promised to the request. */
    bool late = r->now_ns >= s->deadline_ns;
    if (why == KVRT_OK && late)
        why = KVRT_ERR_TIMEOUT;
    if (why == KVRT_OK && s->landed == s->num_blocks) {
        push_ended(r, s, KVRT_HANDOFF_LANDED, KVRT_OK, s->num_blocks);
        slot_release(r, s, s->num_blocks);
        return;
    }
    kvrt_handoff_outcome_t outcome = fail_request(r, s);
    uint32_t kept = outcome == KVRT_HANDOFF_RECOMPUTED && !late ? landed_prefix(s) : 0;
    push_ended(r, s, outcome, why, kept);
    slot_release(r, s, kept);
}

/* The quarantine ends and the sender never closed the hand-off: it is
 * dead, stalled or ignores its ticket's deadline. Before the blocks go to
 * other requests, cut it off with the transfer engine: its connections
 * close (a frame of it being applied lands before this returns, none
 * after) and its name is refused for refuse_ms, so that a stalled sender
 * that resumes and dials again as a new peer writes nothing into them; an
 * honest one stopped at its own deadline long before. (No bounded refusal
 * stops a sender that ignores its deadline for longer: refuse_ms sets how
 * long is enough.) A sender that never closed a batch is unknown (whoever holds the
 * ticket may write): only its ticket's budget covers it. */
static void cut_off_sender(kvrt_cluster_handoff_recv_t *r, const handoff_slot_t *s)
{
    if (!s->sender_bound)
        return;
    uint32_t revoked = 0;
    kvrt_status_t st = kvrt_xfer_refuse_name(r->agent, s->sender, r->refuse_ms, &revoked);
    kvrt_log(r->ctx, st == KVRT_OK ? KVRT_LOG_WARN : KVRT_LOG_ERROR,
             "hand-off sender %.64s closed nothing by the end of its quarantine: %s (%u "
             "connections revoked, refused for %u ms)",
             s->sender, st == KVRT_OK ? "revoked" : kvrt_status_str(st), revoked, r->refuse_ms);
}

/* The deadline passed and the request is decided, but the sender may
 * still write: hold the blocks until its closing message arrives or the
 * quarantine time passes (then it is cut off). */
static void quarantine(kvrt_cluster_handoff_recv_t *r, handoff_slot_t *s)
{
    s->state = SLOT_QUARANTINED;
    s->release_ns = r->now_ns + r->quarantine_ns;
    r->stats.live--;
    r->stats.quarantined++;
}

static void on_message(kvrt_cluster_handoff_recv_t *r, const kvrt_xfer_notification_t *n)
{
    handoff_msg_t m;
    if (!handoff_msg_decode(n->data, n->length, &m)) {
        r->stats.foreign++;
        return;
    }
    handoff_slot_t *s = m.slot < r->max_handoffs ? &r->slots[m.slot] : NULL;
    if (!s || s->state == SLOT_FREE || s->token != m.token) {
        r->stats.refused++;
        return;
    }
    char from[KVRT_XFER_NAME_MAX];
    memcpy(from, n->from, sizeof(from));
    from[sizeof(from) - 1] = '\0';
    if (s->sender_bound && strcmp(s->sender, from) != 0) {
        r->stats.refused++;
        return;
    }
    if (m.kind == HANDOFF_MSG_ABORT) {
        s->sender_bound = true;
        memcpy(s->sender, from, sizeof(from));
        slot_closed(r, s, s->failure != KVRT_OK ? s->failure : KVRT_ERR_CANCELED);
        return;
    }
    if (m.count == 0 || m.count > s->num_blocks || m.first > s->num_blocks - m.count) {
        r->stats.refused++;
        return;
    }
    for (uint32_t i = 0; i < m.count; i++)
        if (s->batch_closed[m.first + i]) {
            r->stats.refused++;
            return;
        }
    s->sender_bound = true;
    memcpy(s->sender, from, sizeof(from));
    memset(s->batch_closed + m.first, n->status == KVRT_OK ? BLOCK_LANDED : BLOCK_BAD, m.count);
    s->closed += m.count;
    if (n->status == KVRT_OK)
        s->landed += m.count;
    else if (s->failure == KVRT_OK)
        s->failure = n->status == KVRT_ERR_INTEGRITY ? KVRT_ERR_INTEGRITY : KVRT_ERR_PROTOCOL;
    if (s->closed == s->num_blocks)
        slot_closed(r, s, s->failure);
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_poll(kvrt_cluster_handoff_recv_t *recv,
                                                    uint64_t now_ns,
                                                    kvrt_handoff_completion_t *completions_out,
                                                    uint32_t capacity, uint32_t *count_out)
{
    if (!recv || !count_out || (!completions_out && capacity > 0))
        return kvrt_fail(recv ? recv->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    recv->now_ns = now_ns;
    for (uint32_t round = 0; !recv->fed && round < RECV_NOTE_ROUNDS; round++) {
        uint32_t n = 0;
        kvrt_xfer_notifications(recv->agent, recv->notes, RECV_NOTE_BATCH, &n);
        for (uint32_t i = 0; i < n; i++)
            on_message(recv, &recv->notes[i]);
        if (n < RECV_NOTE_BATCH)
            break;
    }
    for (uint32_t i = 0; i < recv->high_water; i++) {
        handoff_slot_t *s = &recv->slots[i];
        if (s->state == SLOT_LIVE && s->num_blocks == 0) {
            slot_closed(recv, s, KVRT_OK);
        } else if (s->state == SLOT_LIVE && now_ns >= s->deadline_ns) {
            push_ended(recv, s, fail_request(recv, s),
                       s->failure != KVRT_OK ? s->failure : KVRT_ERR_TIMEOUT, 0);
            quarantine(recv, s);
        } else if (s->state == SLOT_QUARANTINED && now_ns >= s->release_ns) {
            cut_off_sender(recv, s);
            slot_release(recv, s, 0);
        }
    }
    uint32_t taken = 0;
    while (taken < capacity && recv->ended_count > 0) {
        completions_out[taken++] = recv->ended[recv->ended_head];
        recv->ended_head = (recv->ended_head + 1) % recv->max_handoffs;
        recv->ended_count--;
    }
    *count_out = taken;
    return KVRT_OK;
}

kvrt_status_t handoff_recv_feed(kvrt_cluster_handoff_recv_t *recv,
                                const kvrt_xfer_agent_t *agent, bool fed)
{
    if (fed && recv->agent != agent)
        return kvrt_fail(recv->ctx, KVRT_ERR_INVALID_ARG, "the receiver is on another agent");
    if (fed && recv->fed)
        return kvrt_fail(recv->ctx, KVRT_ERR_BUSY, "a channel feeds the receiver already");
    recv->fed = fed;
    return KVRT_OK;
}

void handoff_recv_deliver(kvrt_cluster_handoff_recv_t *recv, uint64_t now_ns,
                          const kvrt_xfer_notification_t *note)
{
    recv->now_ns = now_ns;
    on_message(recv, note);
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_handoff_recv_stats(const kvrt_cluster_handoff_recv_t *recv,
                                                          kvrt_handoff_recv_stats_t *stats_out)
{
    if (!recv || !stats_out)
        return kvrt_fail(recv ? recv->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    *stats_out = recv->stats;
    return KVRT_OK;
}
