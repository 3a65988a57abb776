/*
 * channel.c - the cluster channel: hand-off tickets and pull requests
 * between nodes, carried as tagged notifications of the transfer engine
 * (256 bytes each), cut into fragments by the sender and put back together
 * by the receiver under bounds on size, count, memory and time. The channel
 * owns its agent's notifications and hands the hand-off receiver of the
 * same agent the hand-off messages among them.
 *
 * Fragment (one notification, little-endian):
 *   0 u32 magic "KVCM"   4 u16 version (1)   6 u16 kind (TICKET, PULL)
 *   8 u64 message id (per sender)           16 u32 message bytes
 *  20 u32 fragment index                    24 payload (up to 232 bytes)
 * Fragment i carries bytes [i * 232, min((i + 1) * 232, message bytes)).
 * A TICKET message is the ticket; a PULL message is
 *   0 u32 content hashes N   4 u32 ticket bytes T   8 the ticket,
 *   then N x (u64 lo, u64 hi).
 */
#include <stdlib.h>
#include <string.h>

#include "handoff_wire.h"
#include "peer_cache.h"

#define CHAN_MAGIC 0x4d43564bu /* "KVCM" */
#define CHAN_VERSION 1u
#define CHAN_HEAD 24u
#define CHAN_CHUNK (KVRT_XFER_NOTIFY_MAX - CHAN_HEAD)
#define CHAN_MAX_MESSAGE (16u << 20)
#define CHAN_MAX_MESSAGES 4096u /* being put together or untaken, in all */
#define CHAN_NOTE_BATCH 64u
#define CHAN_NOTE_ROUNDS (4096u / CHAN_NOTE_BATCH + 1u)
#define PULL_HEAD 8u

typedef struct chan_msg {
    char from[KVRT_XFER_NAME_MAX];
    uint64_t id;
    uint32_t kind;
    uint32_t bytes;
    uint32_t fragments, got;
    uint8_t *data;
    uint8_t *have; /* per fragment */
    uint64_t deadline_ns;
    bool complete;
    kvrt_block_hash_t *contents; /* PULL, decoded once complete */
    uint32_t num_contents;
    uint32_t ticket_at, ticket_bytes;
} chan_msg_t;

struct kvrt_cluster_channel {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *agent;
    kvrt_cluster_handoff_recv_t *recv;
    uint32_t max_message;
    uint32_t max_pending;
    uint64_t max_buffered;
    uint64_t deadline_ns;
    peer_cache_t peers;
    uint64_t next_id;
    chan_msg_t **msgs; /* being put together or complete, by arrival */
    uint32_t num_msgs;
    chan_msg_t **taken; /* handed out by the last poll */
    uint32_t num_taken;
    kvrt_xfer_notification_t notes[CHAN_NOTE_BATCH];
    kvrt_cluster_channel_stats_t stats;
};

static void msg_free(kvrt_cluster_channel_t *ch, chan_msg_t *m)
{
    ch->stats.buffered_bytes -= m->bytes;
    free(m->data);
    free(m->have);
    free(m->contents);
    free(m);
}

static void free_taken(kvrt_cluster_channel_t *ch)
{
    for (uint32_t i = 0; i < ch->num_taken; i++)
        msg_free(ch, ch->taken[i]);
    ch->num_taken = 0;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_channel_create(kvrt_ctx_t *ctx,
                                                      const kvrt_cluster_channel_params_t *params,
                                                      kvrt_cluster_channel_t **channel_out)
{
    if (!ctx || !params || !params->agent || !channel_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "NULL argument");
    const uint64_t known = KVRT_CHANNEL_PARAM_RECV | KVRT_CHANNEL_PARAM_MAX_MESSAGE |
                           KVRT_CHANNEL_PARAM_MAX_PENDING | KVRT_CHANNEL_PARAM_MAX_BUFFERED |
                           KVRT_CHANNEL_PARAM_DEADLINE | KVRT_CHANNEL_PARAM_CONNECT_TIMEOUT;
    uint64_t f = params->field_mask;
    if (f & ~known)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(f & ~known));
    uint32_t max_message =
        (f & KVRT_CHANNEL_PARAM_MAX_MESSAGE) ? params->max_message_bytes : 1u << 20;
    uint32_t max_pending =
        (f & KVRT_CHANNEL_PARAM_MAX_PENDING) ? params->max_pending_per_peer : 64u;
    uint64_t max_buffered =
        (f & KVRT_CHANNEL_PARAM_MAX_BUFFERED) ? params->max_buffered_bytes : 16ull << 20;
    uint32_t deadline_ms = (f & KVRT_CHANNEL_PARAM_DEADLINE) ? params->deadline_ms : 5000u;
    uint32_t connect_ms =
        (f & KVRT_CHANNEL_PARAM_CONNECT_TIMEOUT) ? params->connect_timeout_ms : 5000u;
    if (max_message < 64 || max_message > CHAN_MAX_MESSAGE || max_pending < 1 ||
        max_pending > 1024 || max_buffered < max_message || deadline_ms < 1 ||
        deadline_ms > 600000u || connect_ms < 1 || connect_ms > 600000u)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "max_message_bytes 64..%u, max_pending_per_peer 1..1024, "
                         "max_buffered_bytes >= max_message_bytes, deadline_ms and "
                         "connect_timeout_ms 1..600000",
                         CHAN_MAX_MESSAGE);
    kvrt_cluster_handoff_recv_t *recv = (f & KVRT_CHANNEL_PARAM_RECV) ? params->recv : NULL;
    kvrt_cluster_channel_t *ch = calloc(1, sizeof(*ch));
    if (ch) {
        ch->msgs = calloc(CHAN_MAX_MESSAGES, sizeof(*ch->msgs));
        ch->taken = calloc(CHAN_MAX_MESSAGES, sizeof(*ch->taken));
    }
    if (!ch || !ch->msgs || !ch->taken) {
        if (ch) {
            free(ch->msgs);
            free(ch->taken);
        }
        free(ch);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "channel");
    }
    if (recv) {
        kvrt_status_t st = handoff_recv_feed(recv, params->agent, true);
        if (st != KVRT_OK) {
            free(ch->msgs);
            free(ch->taken);
            free(ch);
            return st;
        }
    }
    ch->ctx = ctx;
    ch->agent = params->agent;
    ch->recv = recv;
    ch->max_message = max_message;
    ch->max_pending = max_pending;
    ch->max_buffered = max_buffered;
    ch->deadline_ns = (uint64_t)deadline_ms * 1000000u;
    ch->peers =
        (peer_cache_t){.ctx = ctx, .agent = params->agent, .connect_timeout_ms = connect_ms};
    ch->next_id = cluster_random_epoch();
    *channel_out = ch;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_channel_destroy(kvrt_cluster_channel_t *channel)
{
    if (!channel)
        return KVRT_OK;
    if (channel->recv)
        handoff_recv_feed(channel->recv, channel->agent, false);
    free_taken(channel);
    for (uint32_t i = 0; i < channel->num_msgs; i++)
        msg_free(channel, channel->msgs[i]);
    peer_cache_close(&channel->peers);
    free(channel->msgs);
    free(channel->taken);
    free(channel);
    return KVRT_OK;
}

/* ---- sending ---------------------------------------------------------------- */

/* Sends a message of `bytes` bytes, fragment by fragment; `body` copies
 * its bytes [at, at + n) into out. */
typedef void (*body_fn)(const void *user, uint32_t at, uint32_t n, uint8_t *out);

static kvrt_status_t send_message(kvrt_cluster_channel_t *ch, const char *address, uint32_t kind,
                                  uint32_t bytes, body_fn body, const void *user)
{
    if (bytes > ch->max_message)
        return kvrt_fail(ch->ctx, KVRT_ERR_OVERFLOW, "a message of %u bytes; at most %u", bytes,
                         ch->max_message);
    kvrt_xfer_peer_t *peer = NULL;
    kvrt_status_t st = peer_cache_get(&ch->peers, address, &peer);
    if (st != KVRT_OK)
        return st;
    uint64_t id = ch->next_id++;
    uint8_t frag[KVRT_XFER_NOTIFY_MAX];
    for (uint32_t i = 0, at = 0; at < bytes; i++, at += CHAN_CHUNK) {
        uint32_t n = bytes - at < CHAN_CHUNK ? bytes - at : CHAN_CHUNK;
        kvrt_store_le32(frag, CHAN_MAGIC);
        kvrt_store_le16(frag + 4, CHAN_VERSION);
        kvrt_store_le16(frag + 6, (uint16_t)kind);
        kvrt_store_le64(frag + 8, id);
        kvrt_store_le32(frag + 16, bytes);
        kvrt_store_le32(frag + 20, i);
        body(user, at, n, frag + CHAN_HEAD);
        st = kvrt_xfer_notify(peer, frag, CHAN_HEAD + n);
        if (st != KVRT_OK)
            break;
    }
    peer_cache_put(&ch->peers, peer);
    if (st != KVRT_OK)
        return st;
    ch->stats.sent++;
    return KVRT_OK;
}

static void ticket_body(const void *user, uint32_t at, uint32_t n, uint8_t *out)
{
    memcpy(out, (const uint8_t *)user + at, n);
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_channel_send_ticket(kvrt_cluster_channel_t *channel,
                                                           const char *address, const void *ticket,
                                                           size_t length)
{
    if (!channel || !address || !address[0] || !ticket)
        return kvrt_fail(channel ? channel->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    handoff_ticket_t t;
    kvrt_status_t st = handoff_ticket_parse(channel->ctx, ticket, length, &t);
    if (st != KVRT_OK)
        return st;
    return send_message(channel, address, KVRT_CLUSTER_MSG_TICKET, (uint32_t)length, ticket_body,
                        ticket);
}

typedef struct pull_out {
    uint8_t head[PULL_HEAD];
    const uint8_t *ticket;
    uint32_t ticket_bytes;
    const kvrt_block_hash_t *contents;
} pull_out_t;

static void pull_body(const void *user, uint32_t at, uint32_t n, uint8_t *out)
{
    const pull_out_t *p = user;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t b = (uint64_t)at + i;
        if (b < PULL_HEAD) {
            out[i] = p->head[b];
        } else if (b < PULL_HEAD + p->ticket_bytes) {
            out[i] = p->ticket[b - PULL_HEAD];
        } else {
            uint64_t c = b - PULL_HEAD - p->ticket_bytes;
            const kvrt_block_hash_t *h = &p->contents[c / 16];
            uint64_t word = (c % 16) < 8 ? h->lo : h->hi;
            out[i] = (uint8_t)(word >> (8 * (c % 8)));
        }
    }
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_channel_send_pull(kvrt_cluster_channel_t *channel,
                                                         const char *address, const void *ticket,
                                                         size_t length,
                                                         const kvrt_block_hash_t *contents,
                                                         uint32_t num_contents)
{
    if (!channel || !address || !address[0] || !ticket || (!contents && num_contents > 0))
        return kvrt_fail(channel ? channel->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    handoff_ticket_t t;
    kvrt_status_t st = handoff_ticket_parse(channel->ctx, ticket, length, &t);
    if (st != KVRT_OK)
        return st;
    if (t.first_block > num_contents || t.num_blocks > num_contents - t.first_block)
        return kvrt_fail(channel->ctx, KVRT_ERR_INVALID_ARG,
                         "the ticket names blocks %u..%u of %u hashes", t.first_block,
                         t.first_block + t.num_blocks, num_contents);
    uint64_t bytes = PULL_HEAD + (uint64_t)length + 16ull * num_contents;
    if (bytes > channel->max_message)
        return kvrt_fail(channel->ctx, KVRT_ERR_OVERFLOW, "a pull of %llu bytes; at most %u",
                         (unsigned long long)bytes, channel->max_message);
    pull_out_t p = {.ticket = ticket, .ticket_bytes = (uint32_t)length, .contents = contents};
    kvrt_store_le32(p.head, num_contents);
    kvrt_store_le32(p.head + 4, (uint32_t)length);
    return send_message(channel, address, KVRT_CLUSTER_MSG_PULL, (uint32_t)bytes, pull_body, &p);
}

/* ---- receiving ---------------------------------------------------------------- */

static void msg_drop(kvrt_cluster_channel_t *ch, uint32_t index)
{
    msg_free(ch, ch->msgs[index]);
    memmove(&ch->msgs[index], &ch->msgs[index + 1],
            (ch->num_msgs - index - 1) * sizeof(ch->msgs[0]));
    ch->num_msgs--;
}

/* A complete message's checks; false drops it. */
static bool msg_check(kvrt_cluster_channel_t *ch, chan_msg_t *m)
{
    handoff_ticket_t t;
    if (m->kind == KVRT_CLUSTER_MSG_TICKET) {
        m->ticket_at = 0;
        m->ticket_bytes = m->bytes;
        return handoff_ticket_parse(ch->ctx, m->data, m->bytes, &t) == KVRT_OK;
    }
    if (m->bytes < PULL_HEAD)
        return false;
    uint64_t n = kvrt_load_le32(m->data), tb = kvrt_load_le32(m->data + 4);
    if (PULL_HEAD + tb + 16 * n != m->bytes)
        return false;
    m->ticket_at = PULL_HEAD;
    m->ticket_bytes = (uint32_t)tb;
    if (handoff_ticket_parse(ch->ctx, m->data + PULL_HEAD, tb, &t) != KVRT_OK ||
        t.first_block > n || t.num_blocks > n - t.first_block)
        return false;
    m->num_contents = (uint32_t)n;
    if (n > 0 && !(m->contents = malloc(n * sizeof(*m->contents))))
        return false;
    const uint8_t *p = m->data + PULL_HEAD + tb;
    for (uint64_t i = 0; i < n; i++, p += 16)
        m->contents[i] = (kvrt_block_hash_t){kvrt_load_le64(p), kvrt_load_le64(p + 8)};
    return true;
}

static void on_fragment(kvrt_cluster_channel_t *ch, uint64_t now_ns,
                        const kvrt_xfer_notification_t *n)
{
    if (n->status != KVRT_OK || n->length < CHAN_HEAD + 1 ||
        kvrt_load_le16(n->data + 4) != CHAN_VERSION) {
        ch->stats.refused++;
        return;
    }
    uint32_t kind = kvrt_load_le16(n->data + 6);
    uint64_t id = kvrt_load_le64(n->data + 8);
    uint32_t bytes = kvrt_load_le32(n->data + 16), index = kvrt_load_le32(n->data + 20);
    if ((kind != KVRT_CLUSTER_MSG_TICKET && kind != KVRT_CLUSTER_MSG_PULL) || bytes == 0) {
        ch->stats.refused++;
        return;
    }
    if (bytes > ch->max_message) {
        ch->stats.over_limit++;
        return;
    }
    uint32_t fragments = (bytes + CHAN_CHUNK - 1) / CHAN_CHUNK;
    uint32_t len = n->length - CHAN_HEAD;
    if (index >= fragments ||
        len != (index + 1 == fragments ? bytes - index * CHAN_CHUNK : CHAN_CHUNK)) {
        ch->stats.refused++;
        return;
    }
    char from[KVRT_XFER_NAME_MAX];
    memcpy(from, n->from, sizeof(from));
    from[sizeof(from) - 1] = '\0';
    chan_msg_t *m = NULL;
    uint32_t of_peer = 0, at = 0;
    for (uint32_t i = 0; i < ch->num_msgs; i++) {
        chan_msg_t *c = ch->msgs[i];
        if (strcmp(c->from, from) != 0)
            continue;
        of_peer++;
        if (c->id == id && !c->complete) {
            m = c;
            at = i;
        }
    }
    if (!m) {
        if (of_peer >= ch->max_pending || ch->num_msgs >= CHAN_MAX_MESSAGES ||
            ch->stats.buffered_bytes + bytes > ch->max_buffered) {
            ch->stats.over_limit++;
            return;
        }
        m = calloc(1, sizeof(*m));
        if (m) {
            m->data = malloc(bytes);
            m->have = calloc(fragments, 1);
        }
        if (!m || !m->data || !m->have) {
            if (m) {
                free(m->data);
                free(m->have);
            }
            free(m);
            ch->stats.over_limit++;
            return;
        }
        memcpy(m->from, from, sizeof(from));
        m->id = id;
        m->kind = kind;
        m->bytes = bytes;
        m->fragments = fragments;
        m->deadline_ns = now_ns + ch->deadline_ns;
        ch->stats.buffered_bytes += bytes;
        at = ch->num_msgs;
        ch->msgs[ch->num_msgs++] = m;
    } else if (m->kind != kind || m->bytes != bytes || m->have[index]) {
        /* A fragment that contradicts its message: the message is void. */
        ch->stats.refused++;
        msg_drop(ch, at);
        return;
    }
    memcpy(m->data + (uint64_t)index * CHAN_CHUNK, n->data + CHAN_HEAD, len);
    m->have[index] = 1;
    if (++m->got < m->fragments)
        return;
    if (!msg_check(ch, m)) {
        ch->stats.refused++;
        msg_drop(ch, at);
        return;
    }
    m->complete = true;
    ch->stats.received++;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_channel_poll(kvrt_cluster_channel_t *channel,
                                                    uint64_t now_ns, kvrt_cluster_msg_t *msgs_out,
                                                    uint32_t capacity, uint32_t *count_out)
{
    if (!channel || !count_out || (!msgs_out && capacity > 0))
        return kvrt_fail(channel ? channel->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    kvrt_cluster_channel_t *ch = channel;
    free_taken(ch);
    for (uint32_t round = 0; round < CHAN_NOTE_ROUNDS; round++) {
        uint32_t n = 0;
        kvrt_xfer_notifications(ch->agent, ch->notes, CHAN_NOTE_BATCH, &n);
        for (uint32_t i = 0; i < n; i++) {
            const kvrt_xfer_notification_t *note = &ch->notes[i];
            handoff_msg_t hm;
            if (note->length >= 4 && kvrt_load_le32(note->data) == CHAN_MAGIC) {
                on_fragment(ch, now_ns, note);
            } else if (ch->recv && handoff_msg_decode(note->data, note->length, &hm)) {
                handoff_recv_deliver(ch->recv, now_ns, note);
                ch->stats.handoff_notes++;
            } else {
                ch->stats.foreign++;
            }
        }
        if (n < CHAN_NOTE_BATCH)
            break;
    }
    uint32_t out = 0;
    for (uint32_t i = 0; i < ch->num_msgs;) {
        chan_msg_t *m = ch->msgs[i];
        if (now_ns >= m->deadline_ns) {
            ch->stats.expired++;
            msg_drop(ch, i);
        } else if (m->complete && out < capacity) {
            msgs_out[out++] = (kvrt_cluster_msg_t){.kind = m->kind,
                                                   .num_contents = m->num_contents,
                                                   .ticket = m->data + m->ticket_at,
                                                   .ticket_bytes = m->ticket_bytes,
                                                   .contents = m->contents};
            memcpy(msgs_out[out - 1].from, m->from, sizeof(m->from));
            ch->taken[ch->num_taken++] = m;
            memmove(&ch->msgs[i], &ch->msgs[i + 1], (ch->num_msgs - i - 1) * sizeof(ch->msgs[0]));
            ch->num_msgs--;
        } else {
            i++;
        }
    }
    *count_out = out;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cluster_channel_stats(const kvrt_cluster_channel_t *channel,
                                                     kvrt_cluster_channel_stats_t *stats_out)
{
    if (!channel || !stats_out)
        return kvrt_fail(channel ? channel->ctx : NULL, KVRT_ERR_INVALID_ARG, "NULL argument");
    *stats_out = channel->stats;
    return KVRT_OK;
}
