/*
 * tcp_rx.c - the TCP backend's receive side. Every header goes through
 * kvrt_xfer_wire_parse(); every WRITE and READ_REQ through the agent's
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
    tcp_enqueue(s, f);
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
    s->last_payload = kvrt_xfer_wire_payload(h);
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
            /* Refused: the payload is read into scratch and thrown away,
             * never into registered memory; the ACK says why. */
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
                kvrt_xfer_bk_unpin(c->st->env.agent, pin);
                tcp_conn_fail(c, KVRT_ERR_NO_MEMORY, "no memory for a read response");
                return;
            }
            f->pin = pin;
            tcp_enqueue(s, f);
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
        kvrt_xfer_bk_unpin(c->st->env.agent, s->pin);
        s->pin = NULL;
        reply(s, KVRT_XFER_WIRE_ACK, 0, h->tag, NULL, 0);
        break;
    case KVRT_XFER_WIRE_READ_RESP:
        tcp_slot_finish(c, s->slot, KVRT_OK, NULL, 0);
        break;
    case KVRT_XFER_WIRE_MSG: {
        /* The agent handles it now (it may checksum KV blocks); the lock
         * is ours, but the agent never calls back into the backend here. */
        uint8_t *out = malloc(KVRT_XFER_WIRE_MSG_MAX);
        uint32_t out_bytes = 0;
        kvrt_status_t st = out ? kvrt_xfer_bk_deliver_msg(c->peer, h->region, s->msg,
                                                          (uint32_t)h->length, out,
                                                          KVRT_XFER_WIRE_MSG_MAX, &out_bytes)
                               : KVRT_ERR_NO_MEMORY;
        kvrt_xfer_wire_header_t r = {.type = KVRT_XFER_WIRE_MSG_REPLY, .status = st,
                                     .tag = h->tag, .length = out_bytes};
        tcp_frame_t *f = tcp_frame_new(c->st, &r, out, out_bytes);
        if (!f) {
            free(out);
            tcp_conn_fail(c, KVRT_ERR_NO_MEMORY, "no memory for a message reply");
        } else {
            f->owned = out;
            tcp_enqueue(s, f);
        }
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
 * Receiving. Headers and small payloads arrive through the socket's
 * staging buffer: one recv brings many frames (a burst of ACKs, a run of
 * 16 KiB WRITEs), which are parsed and copied out of it. A payload larger
 * than what is staged is received straight into its destination with
 * MSG_WAITALL, so bulk data is not copied twice.
 */
void tcp_rx_arm(tcp_sock_t *s, struct io_uring_sqe *sqe)
{
    bool staged = s->stage_end > s->stage_start;
    if (s->phase == RX_PAYLOAD && !staged) {
        s->direct = true;
        size_t len = s->left > (1u << 30) ? (1u << 30) : (size_t)s->left;
        io_uring_prep_recv(sqe, s->fd, s->dest, len, MSG_WAITALL);
        return;
    }
    if (s->phase == RX_DRAIN && !staged) {
        s->direct = true;
        size_t len = s->left > TCP_SCRATCH ? TCP_SCRATCH : (size_t)s->left;
        io_uring_prep_recv(sqe, s->fd, s->conn->st->scratch, len, 0);
        return;
    }
    if (s->stage_start > 0) {
        memmove(s->stage, s->stage + s->stage_start, s->stage_end - s->stage_start);
        s->stage_end -= s->stage_start;
        s->stage_start = 0;
    }
    s->direct = false;
    /* After small frames, read big: many frames per system call, copied out
     * of the stage. After a large payload, read small: the next frame is
     * likely large too, and most of it is better received directly. */
    uint32_t room = TCP_STAGE - s->stage_end;
    uint32_t want = s->last_payload >= TCP_DIRECT_MIN ? TCP_STAGE_READ_SMALL : TCP_STAGE;
    io_uring_prep_recv(sqe, s->fd, s->stage + s->stage_end, room < want ? room : want, 0);
}

/* Consumes what is staged: whole headers, and payload bytes for the frame
 * in progress. */
static void drain_stage(tcp_sock_t *s)
{
    tcp_conn_t *c = s->conn;
    while (!c->failed) {
        uint32_t avail = s->stage_end - s->stage_start;
        const uint8_t *at = s->stage + s->stage_start;
        if (s->phase == RX_HEADER) {
            if (avail < sizeof(s->hdr))
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
    if (s->stage_start == s->stage_end)
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
    if (!s->direct) {
        s->stage_end += (uint32_t)res;
        drain_stage(s);
        return;
    }
    s->left -= (uint64_t)res;
    if (s->phase == RX_PAYLOAD) {
        s->dest += res;
        if (s->left == 0)
            on_payload(s);
    } else if (s->left == 0) {
        reply(s, KVRT_XFER_WIRE_ACK, s->drain_status, s->h.tag, NULL, 0);
        reset_header(s);
    }
}

void tcp_rx_release(tcp_sock_t *s)
{
    if (s->pin)
        kvrt_xfer_bk_unpin(s->conn->st->env.agent, s->pin);
    s->pin = NULL;
    free(s->msg);
    s->msg = NULL;
}
