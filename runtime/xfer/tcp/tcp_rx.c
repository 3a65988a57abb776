/*
 * tcp_rx.c - the TCP backend's receive side. A frame is staged whole and
 * its tag checked (frame_auth.h) before anything acts on it: a frame that
 * fails drops the connection, and no byte of it reaches memory. Every
 * header goes through kvrt_xfer_wire_parse(); every WRITE and READ_REQ through the agent's
 * registration check (kvrt_xfer_bk_pin) before a byte of the payload is
 * received into, or sent from, registered memory. Answers (ACK, READ_RESP,
 * MSG_REPLY) must match a slot we are waiting on, on the socket it was sent
 * on. Anything else drops the connection.
 *
 * Runs on the progress thread with the backend lock held.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "tcp.h"

static void reset_header(tcp_sock_t *s)
{
    s->phase = RX_HEADER;
    s->dest = NULL;
    s->left = 0;
}

static void reply(tcp_sock_t *s, uint8_t type, int32_t status, uint64_t tag,
                  const uint8_t *payload, uint64_t length)
{
    kvrt_xfer_wire_header_t h = {.type = type, .status = status, .tag = tag, .length = length};
    tcp_frame_t *f = tcp_frame_new(s->conn->st, &h, payload, length);
    if (!f) {
        tcp_conn_fail(s->conn, KVRT_ERR_NO_MEMORY, "no memory for a reply frame");
        return;
    }
    tcp_enqueue_reply(s, f);
}

void tcp_reply_msg(tcp_sock_t *s, uint64_t tag, kvrt_status_t status, const uint8_t *reply,
                   uint32_t bytes)
{
    uint8_t *out = bytes ? malloc(bytes) : NULL;
    if (out)
        memcpy(out, reply, bytes);
    else if (bytes)
        status = KVRT_ERR_NO_MEMORY;
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_MSG_REPLY, .status = status, .tag = tag,
                                 .length = out ? bytes : 0};
    tcp_frame_t *f = tcp_frame_new(s->conn->st, &h, out, h.length);
    if (!f) {
        free(out);
        tcp_conn_fail(s->conn, KVRT_ERR_NO_MEMORY, "no memory for a message reply");
        return;
    }
    f->owned = out;
    tcp_enqueue_reply(s, f);
}

/* The slot an answer names, or UINT32_MAX when it names none of ours. */
static uint32_t answered_slot(tcp_sock_t *s, tcp_slot_kind_t kind)
{
    tcp_conn_t *c = s->conn;
    uint32_t index = (uint32_t)s->h.tag, gen = (uint32_t)(s->h.tag >> 32);
    if (index >= c->nslots)
        return UINT32_MAX;
    tcp_slot_t *slot = &c->slots[index];
    if (slot->kind != kind || slot->gen != gen || slot->sock != s)
        return UINT32_MAX;
    return index;
}

static void protocol_error(tcp_sock_t *s, const char *why)
{
    kvrt_xfer_bk_refuse(s->conn->peer, KVRT_ERR_PROTOCOL, why);
    tcp_conn_fail(s->conn, KVRT_ERR_PROTOCOL, why);
}

/* A whole header arrived: decide where its payload goes. */
static void on_header(tcp_sock_t *s)
{
    tcp_conn_t *c = s->conn;
    if (kvrt_xfer_wire_parse(s->hdr, sizeof(s->hdr), &s->h) != KVRT_OK) {
        protocol_error(s, "malformed frame header");
        return;
    }
    kvrt_xfer_wire_header_t *h = &s->h;
    TCP_WIRE_ACQUIRE();
    uint8_t *addr = NULL;
    void *pin = NULL;
    kvrt_status_t st;
    switch (h->type) {
    case KVRT_XFER_WIRE_WRITE:
        st = kvrt_xfer_bk_pin(c->peer, h->region, KVRT_XFER_REMOTE_WRITE, h->offset, h->length,
                              &addr, &pin);
        s->left = h->length;
        if (st == KVRT_OK) {
            s->phase = RX_PAYLOAD;
            s->dest = addr;
            s->pin = pin;
        } else {
            /* Refused: the staged payload is skipped, never copied into
             * registered memory; the ACK says why. */
            s->phase = RX_DRAIN;
            s->drain_status = st;
        }
        return;
    case KVRT_XFER_WIRE_READ_REQ:
        st = kvrt_xfer_bk_pin(c->peer, h->region, KVRT_XFER_REMOTE_READ, h->offset, h->length,
                              &addr, &pin);
        if (st == KVRT_OK) {
            kvrt_xfer_wire_header_t r = {.type = KVRT_XFER_WIRE_READ_RESP, .tag = h->tag,
                                         .length = h->length};
            tcp_frame_t *f = tcp_frame_new(c->st, &r, addr, h->length);
            if (!f) {
                kvrt_xfer_bk_unpin(c->peer, pin);
                tcp_conn_fail(c, KVRT_ERR_NO_MEMORY, "no memory for a read response");
                return;
            }
            f->pin = pin;
            tcp_enqueue_reply(s, f);
        } else {
            reply(s, KVRT_XFER_WIRE_READ_RESP, st, h->tag, NULL, 0);
        }
        reset_header(s);
        return;
    case KVRT_XFER_WIRE_ACK:
    case KVRT_XFER_WIRE_READ_RESP: {
        bool ack = h->type == KVRT_XFER_WIRE_ACK;
        uint32_t i = answered_slot(s, ack ? SLOT_WRITE : SLOT_READ);
        if (i == UINT32_MAX || (!ack && h->status == 0 && h->length != c->slots[i].length)) {
            protocol_error(s, "answer to no request of ours");
            return;
        }
        if (ack || h->status != 0) {
            tcp_slot_finish(c, i, (kvrt_status_t)h->status, NULL, 0);
            reset_header(s);
            return;
        }
        s->phase = RX_PAYLOAD;
        s->slot = i;
        s->dest = c->slots[i].dest;
        s->left = h->length;
        return;
    }
    case KVRT_XFER_WIRE_MSG:
    case KVRT_XFER_WIRE_MSG_REPLY:
        if (h->type == KVRT_XFER_WIRE_MSG_REPLY) {
            s->slot = answered_slot(s, SLOT_MSG);
            if (s->slot == UINT32_MAX) {
                protocol_error(s, "reply to no message of ours");
                return;
            }
        }
        s->msg = malloc(h->length ? h->length : 1);
        if (!s->msg) {
            tcp_conn_fail(c, KVRT_ERR_NO_MEMORY, "no memory for a message");
            return;
        }
        s->phase = RX_PAYLOAD;
        s->dest = s->msg;
        s->left = h->length;
        return;
    default:
        protocol_error(s, "unexpected frame type");
        return;
    }
}

/* A payload arrived in full. */
static void on_payload(tcp_sock_t *s)
{
    tcp_conn_t *c = s->conn;
    kvrt_xfer_wire_header_t *h = &s->h;
    switch (h->type) {
    case KVRT_XFER_WIRE_WRITE:
        kvrt_xfer_bk_unpin(c->peer, s->pin);
        s->pin = NULL;
        reply(s, KVRT_XFER_WIRE_ACK, 0, h->tag, NULL, 0);
        break;
    case KVRT_XFER_WIRE_READ_RESP:
        tcp_slot_finish(c, s->slot, KVRT_OK, NULL, 0);
        break;
    case KVRT_XFER_WIRE_MSG: {
        /* Admitted first (the work it asks for, against the peer's budget).
         * Long work (KV checksums) goes to the worker; the rest is served
         * now: the lock is ours, but the agent never calls back into the
         * backend here. The reply is written to the state's buffer (this
         * thread's, under the lock) and copied out at its real size: a
         * queued reply costs what it says, not the largest message. */
        uint32_t len = (uint32_t)h->length, out_bytes = 0;
        uint64_t work = 0;
        kvrt_status_t st = kvrt_xfer_bk_admit_msg(c->peer, h->region, s->msg, len, &work);
        if (st == KVRT_OK && work) {
            if (tcp_worker_queue(s, h->region, h->tag, work, s->msg, len)) {
                s->msg = NULL;
                break;
            }
            kvrt_xfer_bk_drop_msg(c->peer, work);
            st = KVRT_ERR_NO_MEMORY;
        }
        if (st == KVRT_OK)
            st = kvrt_xfer_bk_serve_msg(c->peer, h->region, s->msg, len, 0, c->st->reply,
                                        KVRT_XFER_WIRE_MSG_MAX, &out_bytes);
        tcp_reply_msg(s, h->tag, st, c->st->reply, out_bytes);
        free(s->msg);
        s->msg = NULL;
        break;
    }
    case KVRT_XFER_WIRE_MSG_REPLY:
        tcp_slot_finish(c, s->slot, (kvrt_status_t)h->status, s->msg, (uint32_t)h->length);
        s->msg = NULL; /* the upcall owns it now */
        break;
    default:
        break;
    }
    reset_header(s);
}

/*
 * Receiving. Everything arrives through the socket's staging buffer: one
 * recv brings many frames (a burst of ACKs, a run of WRITEs), and a frame
 * is acted on only once it is staged whole, tag included, and authentic.
 * The stage is compacted only when the rest of it could not take a whole
 * frame, so most recvs move no staged bytes.
 */
void tcp_rx_arm(tcp_sock_t *s, struct io_uring_sqe *sqe)
{
    if (s->stage_start > 0 &&
        TCP_STAGE - s->stage_end < TCP_FRAME_WIRE(KVRT_XFER_WIRE_FRAME_MAX)) {
        memmove(s->stage, s->stage + s->stage_start, s->stage_end - s->stage_start);
        if (s->tag_pending)
            s->tag_at -= s->stage_start;
        s->stage_end -= s->stage_start;
        s->stage_start = 0;
    }
    io_uring_prep_recv(sqe, s->fd, s->stage + s->stage_end, TCP_STAGE - s->stage_end, 0);
}

/* The frame at the stage's start, when it is staged whole: checks its tag
 * (decrypting its payload in place). Returns false when more bytes are
 * needed or the connection failed. */
static bool open_frame(tcp_sock_t *s)
{
    uint32_t avail = s->stage_end - s->stage_start;
    const uint8_t *at = s->stage + s->stage_start;
    if (avail < KVRT_XFER_WIRE_HEADER_BYTES)
        return false;
    kvrt_xfer_wire_header_t h;
    if (kvrt_xfer_wire_parse(at, KVRT_XFER_WIRE_HEADER_BYTES, &h) != KVRT_OK) {
        protocol_error(s, "malformed frame header");
        return false;
    }
    uint64_t payload = kvrt_xfer_wire_payload(&h);
    if (avail < TCP_FRAME_WIRE(payload))
        return false;
    uint8_t *body = s->stage + s->stage_start + KVRT_XFER_WIRE_HEADER_BYTES;
    if (!kvrt_xfer_frame_open(&s->rx_key, s->protection, at, body, payload, body + payload)) {
        protocol_error(s, "frame failed authentication");
        return false;
    }
    s->tag_pending = true;
    s->tag_at = s->stage_start + KVRT_XFER_WIRE_HEADER_BYTES + (uint32_t)payload;
    return true;
}

void tcp_rx_drain(tcp_sock_t *s)
{
    tcp_conn_t *c = s->conn;
    while (!c->failed) {
        if (s->tag_pending && s->stage_start == s->tag_at) {
            s->stage_start += KVRT_XFER_FRAME_TAG_BYTES;
            s->tag_pending = false;
        }
        uint32_t avail = s->stage_end - s->stage_start;
        const uint8_t *at = s->stage + s->stage_start;
        if (s->phase == RX_HEADER) {
            /* Backpressure: a peer that does not read our replies gets no
             * more served. The rest stays staged (and the socket unread)
             * until its replies drain; a frame in progress always ends. */
            if (tcp_conn_full(c)) {
                if (!s->rx_paused)
                    kvrt_xfer_bk_paused(c->st->env.agent);
                s->rx_paused = true;
                break;
            }
            if (!open_frame(s))
                break;
            memcpy(s->hdr, at, sizeof(s->hdr));
            s->stage_start += sizeof(s->hdr);
            on_header(s);
            if (!c->failed && s->phase == RX_PAYLOAD && s->left == 0)
                on_payload(s); /* an empty message */
            continue;
        }
        if (avail == 0)
            break;
        uint32_t n = s->left < avail ? (uint32_t)s->left : avail;
        if (s->phase == RX_PAYLOAD) {
            memcpy(s->dest, at, n);
            s->dest += n;
        }
        s->stage_start += n;
        s->left -= n;
        if (s->left == 0 && s->phase == RX_PAYLOAD) {
            on_payload(s);
        } else if (s->left == 0) {
            reply(s, KVRT_XFER_WIRE_ACK, s->drain_status, s->h.tag, NULL, 0);
            reset_header(s);
        }
    }
    if (s->stage_start == s->stage_end && !s->tag_pending)
        s->stage_start = s->stage_end = 0;
}

void tcp_rx_complete(tcp_sock_t *s, int res)
{
    tcp_conn_t *c = s->conn;
    if (c->failed)
        return;
    if (res <= 0) {
        char why[96];
        snprintf(why, sizeof(why), "%s", res == 0 ? "peer closed the connection" : strerror(-res));
        tcp_conn_fail(c, KVRT_ERR_PEER_FAILED, why);
        return;
    }
    s->stage_end += (uint32_t)res;
    tcp_rx_drain(s);
}

void tcp_rx_release(tcp_sock_t *s)
{
    if (s->pin)
        kvrt_xfer_bk_unpin(s->conn->peer, s->pin);
    s->pin = NULL;
    free(s->msg);
    s->msg = NULL;
}
