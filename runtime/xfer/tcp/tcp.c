/*
 * tcp.c - the TCP backend: one-sided READ/WRITE over sockets driven by
 * io_uring (see tcp.h for the objects, tcp_rx.c for the receive side).
 *
 * Each peer gets up to connections_per_peer sockets; a batch's operations
 * are spread over them by queued bytes, so large batches use them all.
 * Every operation is one frame and is answered (ACK for WRITE, READ_RESP for
 * READ) on the socket it went out on; a batch is done when all its answers
 * are in. A socket has at most one sendmsg in flight, gathering up to 64
 * iovecs of queued frames, so small frames go out together. Payloads of
 * zerocopy_threshold bytes and more go out with IORING_OP_SENDMSG_ZC where
 * the kernel has it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tcp.h"

#define RING_ENTRIES 1024
#define TAG_RECV 1u
#define TAG_SEND 2u
#define TAG_WAKE 3u

static void wake(tcp_state_t *st)
{
    uint64_t one = 1;
    (void)!write(st->wake_fd, &one, sizeof(one));
}

/* ---- frames and slots ------------------------------------------------------- */

tcp_frame_t *tcp_frame_new(tcp_state_t *st, const kvrt_xfer_wire_header_t *h,
                           const uint8_t *payload, uint64_t length)
{
    tcp_frame_t *f = kvrt_free_list_take(&st->frames);
    if (!f)
        return NULL;
    kvrt_xfer_wire_encode(h, f->hdr);
    f->payload = payload;
    f->length = payload ? length : 0;
    return f;
}

void tcp_frame_free(tcp_state_t *st, tcp_frame_t *f)
{
    free(f->owned);
    kvrt_free_list_give(&st->frames, f);
}

#if defined(__SANITIZE_THREAD__)
char kvrt_xfer_tcp_wire_order;
#endif

/* Frames are sealed in the socket's send order as their sendmsg is
 * gathered (send_start): by the progress thread, 1 MiB at a time, just
 * before the kernel copies the same bytes. Sealing a posted batch's MAC
 * frames earlier, on the posting thread once it had dropped the lock, made
 * large batches about 20% slower on two cores (docs/benchmarks.md, "Frame
 * suites"): the bytes had left the cache by the time they were sent. */
void tcp_enqueue(tcp_sock_t *s, tcp_frame_t *f)
{
    TCP_WIRE_RELEASE();
    f->next = NULL;
    if (s->txq_tail)
        s->txq_tail->next = f;
    else
        s->txq = f;
    s->txq_tail = f;
    s->txq_bytes += TCP_FRAME_WIRE(f->length);
}

void tcp_enqueue_reply(tcp_sock_t *s, tcp_frame_t *f)
{
    tcp_conn_t *c = s->conn;
    f->cost = TCP_FRAME_COST + (f->owned ? (uint32_t)f->length : 0);
    c->queued += f->cost;
    kvrt_xfer_bk_queued(c->st->env.agent, (int64_t)f->cost);
    tcp_enqueue(s, f);
}

void tcp_frame_settle(tcp_conn_t *c, tcp_frame_t *f)
{
    if (f->pin)
        kvrt_xfer_bk_unpin(c->peer, f->pin);
    f->pin = NULL;
    if (f->cost) {
        c->queued -= f->cost;
        kvrt_xfer_bk_queued(c->st->env.agent, -(int64_t)f->cost);
        f->cost = 0;
    }
}

/* Reserves n upcall entries (lock held); false without memory. */
static bool upcalls_reserve(tcp_state_t *st, uint32_t n)
{
    uint64_t need = (uint64_t)st->nups + st->ups_promised + n;
    if (need > st->cap_ups) {
        uint64_t cap = st->cap_ups ? st->cap_ups : 256;
        while (cap < need)
            cap *= 2;
        if (cap > UINT32_MAX)
            return false;
        tcp_upcall_t *ring = malloc(cap * sizeof(*ring));
        if (!ring)
            return false;
        for (uint32_t i = 0; i < st->nups; i++)
            ring[i] = st->ups[(st->ups_head + i) % st->cap_ups];
        free(st->ups);
        st->ups = ring;
        st->ups_head = 0;
        st->cap_ups = (uint32_t)cap;
    }
    st->ups_promised += n;
    return true;
}

/* Gives back a reserved entry that will not be used (lock held). */
static void upcalls_unreserve(tcp_state_t *st)
{
    st->ups_promised--;
}

/* Queues an upcall into a reserved entry (lock held). */
void tcp_upcall(tcp_state_t *st, tcp_upcall_t up)
{
    st->ups_promised--;
    st->ups[(st->ups_head + st->nups) % st->cap_ups] = up;
    st->nups++;
}

static uint32_t slot_take(tcp_conn_t *c)
{
    if (c->free_slot == UINT32_MAX) {
        uint32_t cap = c->nslots ? c->nslots * 2 : 1024;
        tcp_slot_t *n = realloc(c->slots, cap * sizeof(*n));
        if (!n)
            return UINT32_MAX;
        memset(n + c->nslots, 0, (cap - c->nslots) * sizeof(*n));
        for (uint32_t i = c->nslots; i < cap; i++)
            n[i].next_free = i + 1 < cap ? i + 1 : UINT32_MAX;
        c->free_slot = c->nslots;
        c->slots = n;
        c->nslots = cap;
    }
    uint32_t i = c->free_slot;
    c->free_slot = c->slots[i].next_free;
    c->slots[i].gen++;
    c->used_slots++;
    return i;
}

void tcp_slot_finish(tcp_conn_t *c, uint32_t index, kvrt_status_t status, uint8_t *reply,
                     uint32_t reply_bytes)
{
    tcp_slot_t *s = &c->slots[index];
    tcp_state_t *st = c->st;
    if (s->kind == SLOT_MSG) {
        tcp_upcall(st, (tcp_upcall_t){.kind = UP_MSG, .msg = s->msg, .status = status,
                                      .reply = reply, .reply_bytes = reply_bytes});
    } else {
        kvrt_xfer_bk_batch_t *b = s->batch;
        if (status == KVRT_OK) {
            if (s->kind == SLOT_WRITE)
                st->written += s->length;
            else
                st->read += s->length;
        } else if ((intptr_t)b->backend_data[1] == KVRT_OK) {
            b->backend_data[1] = (void *)(intptr_t)status;
        }
        uintptr_t left = (uintptr_t)b->backend_data[0] - 1;
        b->backend_data[0] = (void *)left;
        if (left == 0)
            tcp_upcall(st, (tcp_upcall_t){.kind = UP_BATCH, .batch = b,
                                          .status = (kvrt_status_t)(intptr_t)b->backend_data[1]});
        free(reply);
    }
    s->kind = 0;
    s->batch = NULL;
    s->msg = NULL;
    s->next_free = c->free_slot;
    c->free_slot = index;
    c->used_slots--;
}

/* ---- connection failure ----------------------------------------------------- */

void tcp_conn_fail(tcp_conn_t *c, kvrt_status_t status, const char *why)
{
    if (c->failed)
        return;
    c->failed = true;
    /* Shutting the sockets down makes every recv and send in flight on
     * them complete, so the connection drains in bounded time. */
    for (uint32_t i = 0; i < c->nsocks; i++)
        shutdown(c->socks[i]->fd, SHUT_RDWR);
    if (!c->closing && c->fail_reserved) {
        c->fail_reserved = false;
        /* Without memory for the text the report still goes, without it. */
        tcp_upcall(c->st, (tcp_upcall_t){.kind = UP_FAILED, .peer = c->peer, .status = status,
                                         .reply = (uint8_t *)strdup(why ? why : "")});
    }
    wake(c->st);
}

/* Once nothing is in flight on a failed connection, completes every slot
 * and frees the frames and buffers it held. */
static void conn_finalize(tcp_conn_t *c)
{
    for (uint32_t i = 0; i < c->nslots; i++)
        if (c->slots[i].kind)
            tcp_slot_finish(c, i, KVRT_ERR_PEER_FAILED, NULL, 0);
    for (uint32_t i = 0; i < c->nsocks; i++) {
        tcp_sock_t *s = c->socks[i];
        while (s->txq) {
            tcp_frame_t *f = s->txq;
            s->txq = f->next;
            tcp_frame_settle(c, f);
            tcp_frame_free(c->st, f);
        }
        s->txq_tail = NULL;
        s->txq_bytes = 0;
        tcp_rx_release(s);
    }
    c->finalized = true;
}

static void conn_free(tcp_conn_t *c)
{
    if (c->fail_reserved) {
        pthread_mutex_lock(&c->st->lock);
        upcalls_unreserve(c->st);
        pthread_mutex_unlock(&c->st->lock);
    }
    /* Data still unsent when a connection closes (replies a stalled or
     * revoked peer did not take) would stay in the kernel for as long as
     * the peer keeps its window shut, and with it the pages of zero-copy
     * sends and their notifications: an abortive close (RST) drops it. */
    struct linger abort_close = {.l_onoff = 1, .l_linger = 0};
    for (uint32_t i = 0; i < c->nsocks; i++) {
        int unsent = 0;
        if (ioctl(c->socks[i]->fd, SIOCOUTQ, &unsent) == 0 && unsent > 0)
            setsockopt(c->socks[i]->fd, SOL_SOCKET, SO_LINGER, &abort_close,
                       sizeof(abort_close));
        close(c->socks[i]->fd);
        kvrt_xfer_frame_key_clear(&c->socks[i]->tx_key);
        kvrt_xfer_frame_key_clear(&c->socks[i]->rx_key);
        free(c->socks[i]->stage);
        free(c->socks[i]);
    }
    free(c->slots);
    free(c);
}

/* ---- sending ---------------------------------------------------------------- */

static void send_prep(tcp_state_t *st, tcp_send_t *t, struct io_uring_sqe *sqe)
{
    memset(&t->msg, 0, sizeof(t->msg));
    t->msg.msg_iov = t->iov + t->iov_first;
    t->msg.msg_iovlen = t->iov_count - t->iov_first;
    if (t->zerocopy)
        io_uring_prep_sendmsg_zc(sqe, t->sock->fd, &t->msg, MSG_NOSIGNAL | MSG_WAITALL);
    else
        io_uring_prep_sendmsg(sqe, t->sock->fd, &t->msg, MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data(sqe, (void *)((uintptr_t)t | TAG_SEND));
    t->sock->conn->sqes++;
}

/* Seals f, the next AEAD frame out on s, into a buffer of its own (the
 * payload is registered memory, or the frame already owns it). False
 * without memory for the ciphertext; f is then left as it was. */
static bool frame_seal_aead(tcp_sock_t *s, tcp_frame_t *f)
{
    if (!f->length) {
        kvrt_xfer_frame_seal(&s->tx_key, s->protection, f->hdr, NULL, NULL, 0, f->tag);
        return true;
    }
    uint8_t *out = f->owned ? f->owned : malloc(f->length);
    if (!out)
        return false;
    if (f->cost && !f->owned) {
        f->cost += (uint32_t)f->length;
        s->conn->queued += f->length;
        kvrt_xfer_bk_queued(s->conn->st->env.agent, (int64_t)f->length);
    }
    kvrt_xfer_frame_seal(&s->tx_key, s->protection, f->hdr, f->payload, out, f->length, f->tag);
    f->owned = out;
    f->payload = out;
    return true;
}

/* Gathers queued frames of s into one sendmsg, sealing each; NULL without
 * memory for even the first (AEAD). */
static tcp_send_t *send_start(tcp_state_t *st, tcp_sock_t *s)
{
    tcp_send_t *t = kvrt_free_list_take(&st->sends);
    if (!t)
        return NULL;
    t->sock = s;
    tcp_frame_t **tail = &t->frames;
    uint64_t sealed = 0;
    bool aead = kvrt_xfer_frame_mode(s->protection) == KVRT_XFER_PROTECT_AEAD;
    while (s->txq && t->iov_count + 3 <= TCP_IOV_MAX &&
           !(t->frames && sealed + s->txq->length > TCP_SEAL_GATHER)) {
        tcp_frame_t *f = s->txq;
        if (aead && !frame_seal_aead(s, f))
            break;
        if (!aead)
            kvrt_xfer_frame_seal(&s->tx_key, s->protection, f->hdr, f->payload, NULL, f->length,
                                 f->tag);
        sealed += f->length;
        s->txq = f->next;
        s->txq_bytes -= TCP_FRAME_WIRE(f->length);
        f->next = NULL;
        *tail = f;
        tail = &f->next;
        t->iov[t->iov_count++] = (struct iovec){f->hdr, sizeof(f->hdr)};
        if (f->length) {
            t->iov[t->iov_count++] = (struct iovec){(void *)f->payload, (size_t)f->length};
            if (st->zc_supported && s->conn->zerocopy && st->env.zerocopy_threshold &&
                f->length >= st->env.zerocopy_threshold)
                t->zerocopy = true;
        }
        t->iov[t->iov_count++] = (struct iovec){f->tag, sizeof(f->tag)};
    }
    if (!s->txq)
        s->txq_tail = NULL;
    if (!t->frames) {
        kvrt_free_list_give(&st->sends, t);
        return NULL;
    }
    s->sending = true;
    return t;
}

static void send_free(tcp_state_t *st, tcp_send_t *t)
{
    while (t->frames) {
        tcp_frame_t *f = t->frames;
        t->frames = f->next;
        tcp_frame_free(st, f);
    }
    kvrt_free_list_give(&st->sends, t);
}

/* Ends a sendmsg: its socket may send again, and its frames' pins and
 * costs are settled while the connection is still there. The kernel may
 * still read zero-copy pages until its notifications (after the
 * connection is gone if it closes first): from here on the record stands
 * alone, on st->orphans until then. Unpinning before that is safe: the
 * kernel holds its own references to those pages, and the frame's tag
 * already covers the bytes the peer must get. */
static void send_finish(tcp_state_t *st, tcp_send_t *t)
{
    for (tcp_frame_t *f = t->frames; f; f = f->next)
        tcp_frame_settle(t->sock->conn, f);
    t->finished = true;
    t->sock->sending = false;
    t->sock = NULL;
    if (t->notifs == 0) {
        send_free(st, t);
        return;
    }
    t->next = st->orphans;
    if (t->next)
        t->next->prev = t;
    t->prev = NULL;
    st->orphans = t;
}

/* A sendmsg completed with res bytes or an error. Returns true when t must
 * be resubmitted for the rest. */
static bool send_complete(tcp_state_t *st, tcp_send_t *t, int res)
{
    tcp_conn_t *c = t->sock->conn;
    if (res <= 0 || c->failed) {
        if (!c->failed)
            tcp_conn_fail(c, KVRT_ERR_PEER_FAILED, res < 0 ? strerror(-res) : "send failed");
    } else {
        size_t n = (size_t)res;
        while (n > 0 && t->iov_first < t->iov_count) {
            struct iovec *v = &t->iov[t->iov_first];
            if (n >= v->iov_len) {
                n -= v->iov_len;
                t->iov_first++;
            } else {
                v->iov_base = (uint8_t *)v->iov_base + n;
                v->iov_len -= n;
                n = 0;
            }
        }
        if (t->iov_first < t->iov_count)
            return true;
    }
    send_finish(st, t);
    return false;
}

/* ---- the progress thread ------------------------------------------------------ */

static struct io_uring_sqe *sqe_get(tcp_state_t *st)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&st->ring);
    if (!sqe) {
        io_uring_submit(&st->ring);
        sqe = io_uring_get_sqe(&st->ring);
    }
    return sqe;
}

/* Prepares every recv and send that can start (lock held). */
static void prepare(tcp_state_t *st)
{
    if (!st->wake_armed) {
        struct io_uring_sqe *sqe = sqe_get(st);
        if (sqe) {
            io_uring_prep_read(sqe, st->wake_fd, &st->wake_buf, sizeof(st->wake_buf), 0);
            io_uring_sqe_set_data(sqe, (void *)(uintptr_t)TAG_WAKE);
            st->wake_armed = true;
        }
    }
    for (tcp_conn_t *c = st->conns; c; c = c->next) {
        if (c->failed)
            continue;
        for (uint32_t i = 0; i < c->nsocks; i++) {
            tcp_sock_t *s = c->socks[i];
            if (s->rx_paused && !tcp_conn_full(c)) {
                /* Its replies drained: serve what is staged, then read on. */
                s->rx_paused = false;
                tcp_rx_drain(s);
                if (c->failed)
                    break;
            }
            if (!s->armed && !s->rx_paused) {
                struct io_uring_sqe *sqe = sqe_get(st);
                if (!sqe)
                    return;
                tcp_rx_arm(s, sqe);
                io_uring_sqe_set_data(sqe, (void *)((uintptr_t)s | TAG_RECV));
                s->armed = true;
                c->sqes++;
            }
            if (!s->sending && s->txq) {
                struct io_uring_sqe *sqe = sqe_get(st);
                if (!sqe)
                    return;
                tcp_send_t *t = send_start(st, s);
                if (!t) {
                    io_uring_prep_nop(sqe);
                    tcp_conn_fail(c, KVRT_ERR_NO_MEMORY, "no memory for a send");
                    continue;
                }
                send_prep(st, t, sqe);
            }
        }
    }
}

static void handle_cqe(tcp_state_t *st, struct io_uring_cqe *cqe)
{
    uintptr_t data = (uintptr_t)io_uring_cqe_get_data(cqe);
    uint32_t tag = data & 7u;
    if (tag == TAG_WAKE) {
        st->wake_armed = false;
        return;
    }
    if (tag == TAG_RECV) {
        tcp_sock_t *s = (tcp_sock_t *)(data & ~(uintptr_t)7);
        s->armed = false;
        s->conn->sqes--;
        tcp_rx_complete(s, cqe->res);
        return;
    }
    if (tag == TAG_SEND) {
        tcp_send_t *t = (tcp_send_t *)(data & ~(uintptr_t)7);
        if (cqe->flags & IORING_CQE_F_NOTIF) {
            if (--t->notifs == 0 && t->finished) {
                if (t->prev)
                    t->prev->next = t->next;
                else
                    st->orphans = t->next;
                if (t->next)
                    t->next->prev = t->prev;
                send_free(st, t);
            }
            return;
        }
        if (cqe->flags & IORING_CQE_F_MORE)
            t->notifs++;
        tcp_conn_t *c = t->sock->conn;
        c->sqes--;
        if (send_complete(st, t, cqe->res)) {
            struct io_uring_sqe *sqe = sqe_get(st);
            if (sqe) {
                send_prep(st, t, sqe);
            } else {
                tcp_conn_fail(c, KVRT_ERR_INTERNAL, "submission queue full");
                send_finish(st, t);
            }
        }
    }
}

/* Delivers collected completions with the lock dropped. */
static void deliver(tcp_state_t *st)
{
    while (st->nups || st->written || st->read) {
        uint64_t w = st->written, r = st->read;
        st->written = st->read = 0;
        /* Oldest first, one at a time: the ring may grow meanwhile. */
        tcp_upcall_t u = {.kind = UP_BATCH};
        bool have = st->nups > 0;
        if (have) {
            u = st->ups[st->ups_head];
            st->ups_head = (st->ups_head + 1) % st->cap_ups;
            st->nups--;
        }
        pthread_mutex_unlock(&st->lock);
        if (w || r)
            kvrt_xfer_bk_count_bytes(st->env.agent, w, r);
        if (have) {
            if (u.kind == UP_BATCH)
                kvrt_xfer_bk_batch_done(u.batch, u.status);
            else if (u.kind == UP_MSG)
                kvrt_xfer_bk_msg_done(u.msg, u.status, u.reply, u.reply_bytes);
            else
                kvrt_xfer_bk_conn_failed(u.peer, u.status, (const char *)u.reply);
            free(u.reply);
        }
        pthread_mutex_lock(&st->lock);
    }
}

static void *progress_main(void *arg)
{
    tcp_state_t *st = arg;
    pthread_mutex_lock(&st->lock);
    while (!st->stopping) {
        prepare(st);
        /* Failed connections whose submissions all came back can give up
         * their slots; their completions go out with the others below. */
        for (tcp_conn_t *c = st->conns; c; c = c->next)
            if (c->failed && c->sqes == 0 && c->jobs == 0 && !c->finalized)
                conn_finalize(c);
        deliver(st);
        bool signal = false;
        for (tcp_conn_t *c = st->conns; c; c = c->next)
            if (c->finalized && !c->drained) {
                c->drained = true;
                signal = true;
            }
        if (signal)
            pthread_cond_broadcast(&st->cond);
        pthread_mutex_unlock(&st->lock);
        io_uring_submit_and_wait(&st->ring, 1);
        pthread_mutex_lock(&st->lock);
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&st->ring, head, cqe)
        {
            handle_cqe(st, cqe);
            seen++;
        }
        io_uring_cq_advance(&st->ring, seen);
    }
    pthread_mutex_unlock(&st->lock);
    return NULL;
}

/* ---- the ops table ------------------------------------------------------------ */

static kvrt_status_t tcp_probe(char *why, size_t why_bytes)
{
    (void)why;
    (void)why_bytes;
    return KVRT_OK;
}

static kvrt_status_t tcp_init(const kvrt_xfer_bk_env_t *env, void **state_out, char *why,
                              size_t why_bytes)
{
    tcp_state_t *st = calloc(1, sizeof(*st));
    if (!st) {
        snprintf(why, why_bytes, "no memory");
        return KVRT_ERR_NO_MEMORY;
    }
    st->env = *env;
    kvrt_free_list_init(&st->frames, sizeof(tcp_frame_t), TCP_CACHE_MAX);
    kvrt_free_list_init(&st->sends, sizeof(tcp_send_t), TCP_CACHE_MAX);
    int rc = io_uring_queue_init(RING_ENTRIES, &st->ring, 0);
    if (rc < 0) {
        snprintf(why, why_bytes, "io_uring_queue_init: %s", strerror(-rc));
        free(st);
        return KVRT_ERR_IO;
    }
    struct io_uring_probe *probe = io_uring_get_probe_ring(&st->ring);
    st->zc_supported = probe && io_uring_opcode_supported(probe, IORING_OP_SENDMSG_ZC);
    io_uring_free_probe(probe);
    st->wake_fd = eventfd(0, EFD_CLOEXEC);
    pthread_mutex_init(&st->lock, NULL);
    pthread_cond_init(&st->cond, NULL);
    bool worker = st->wake_fd >= 0 && tcp_worker_start(st);
    if (!worker || pthread_create(&st->thread, NULL, progress_main, st) != 0) {
        snprintf(why, why_bytes, "cannot start the progress and worker threads");
        if (worker)
            tcp_worker_stop(st);
        if (st->wake_fd >= 0)
            close(st->wake_fd);
        io_uring_queue_exit(&st->ring);
        pthread_mutex_destroy(&st->lock);
        pthread_cond_destroy(&st->cond);
        free(st);
        return KVRT_ERR_IO;
    }
    /* Frames and sendmsg records reserved up front (no connection exists
     * yet, so the progress thread touches neither); what cannot be had now
     * is allocated when needed. */
    pthread_mutex_lock(&st->lock);
    (void)kvrt_free_list_reserve(&st->frames, TCP_RESERVE_FRAMES);
    (void)kvrt_free_list_reserve(&st->sends, TCP_RESERVE_SENDS);
    pthread_mutex_unlock(&st->lock);
    *state_out = st;
    return KVRT_OK;
}

static void tcp_fini(void *state)
{
    tcp_state_t *st = state;
    tcp_worker_stop(st);
    pthread_mutex_lock(&st->lock);
    st->stopping = true;
    pthread_mutex_unlock(&st->lock);
    wake(st);
    pthread_join(st->thread, NULL);
    /* Every connection was closed before fini, so nothing is in flight but
     * the wake read, which exiting the ring cancels. */
    io_uring_queue_exit(&st->ring);
    /* With the ring gone no notification can name a record any more; the
     * kernel keeps its own references to the pages it may still send. */
    while (st->orphans) {
        tcp_send_t *t = st->orphans;
        st->orphans = t->next;
        send_free(st, t);
    }
    close(st->wake_fd);
    free(st->ups);
    kvrt_free_list_drain(&st->frames);
    kvrt_free_list_drain(&st->sends);
    pthread_mutex_destroy(&st->lock);
    pthread_cond_destroy(&st->cond);
    free(st);
}

static kvrt_status_t tcp_reg(void *state, kvrt_xfer_bk_region_t *region, uint8_t *key,
                             uint32_t *key_bytes_out, char *why, size_t why_bytes)
{
    (void)state;
    (void)key;
    if (region->dmabuf_fd >= 0) {
        snprintf(why, why_bytes, "GPU (dmabuf) memory cannot be served over TCP; "
                                 "stage it through host memory or use the verbs backend");
        return KVRT_ERR_UNSUPPORTED;
    }
    /* Peers name the region by id; there is no key to hand out. */
    region->backend_data = NULL;
    *key_bytes_out = 0;
    return KVRT_OK;
}

static void tcp_dereg(void *state, kvrt_xfer_bk_region_t *region)
{
    (void)state;
    (void)region;
}

static tcp_sock_t *sock_new(tcp_conn_t *c, int fd, const kvrt_xfer_sc_keys_t *keys)
{
    /* Answers are 40-byte frames: Nagle would hold each one back until the
     * previous is acknowledged (tens of milliseconds with delayed ACKs). */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    tcp_sock_t *s = calloc(1, sizeof(*s));
    if (s)
        s->stage = malloc(TCP_STAGE);
    if (!s || !s->stage || !kvrt_xfer_frame_key_init(&s->tx_key, keys->protection, keys->tx)) {
        if (s)
            free(s->stage);
        free(s);
        return NULL;
    }
    if (!kvrt_xfer_frame_key_init(&s->rx_key, keys->protection, keys->rx)) {
        kvrt_xfer_frame_key_clear(&s->tx_key);
        free(s->stage);
        free(s);
        return NULL;
    }
    s->conn = c;
    s->fd = fd;
    s->protection = keys->protection;
    return s;
}

static tcp_conn_t *conn_new(tcp_state_t *st, kvrt_xfer_bk_peer_t *peer, int fd,
                            const kvrt_xfer_sc_keys_t *keys)
{
    tcp_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->st = st;
    c->peer = peer;
    c->free_slot = UINT32_MAX;
    /* The entry its failure report will need, reserved now. */
    pthread_mutex_lock(&st->lock);
    c->fail_reserved = upcalls_reserve(st, 1);
    pthread_mutex_unlock(&st->lock);
    c->socks[0] = c->fail_reserved ? sock_new(c, fd, keys) : NULL;
    if (!c->socks[0]) {
        conn_free(c);
        return NULL;
    }
    c->nsocks = 1;
    /* Over loopback the kernel copies zero-copy sends anyway, and pays for
     * the notifications on top: use them only towards another host. */
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    c->zerocopy = false;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET)
            c->zerocopy = (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) != 127;
        else if (ss.ss_family == AF_INET6)
            c->zerocopy = !IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr);
    }
    return c;
}

static void conn_publish(tcp_state_t *st, tcp_conn_t *c)
{
    pthread_mutex_lock(&st->lock);
    c->next = st->conns;
    st->conns = c;
    pthread_mutex_unlock(&st->lock);
    wake(st);
}

/* Adds a socket to a live connection; false when it cannot take one. */
static bool conn_add_sock(tcp_state_t *st, tcp_conn_t *c, int fd,
                          const kvrt_xfer_sc_keys_t *keys)
{
    pthread_mutex_lock(&st->lock);
    bool ok = !c->failed && c->nsocks < TCP_MAX_SOCKS;
    tcp_sock_t *s = ok ? sock_new(c, fd, keys) : NULL;
    if (s)
        c->socks[c->nsocks++] = s;
    pthread_mutex_unlock(&st->lock);
    if (s)
        wake(st);
    return s != NULL;
}

static kvrt_status_t tcp_connect(void *state, kvrt_xfer_bk_peer_t *peer, int fd,
                                 const kvrt_xfer_sc_keys_t *keys, uint64_t deadline_ns, void **conn_out, char *why,
                                 size_t why_bytes)
{
    tcp_state_t *st = state;
    tcp_conn_t *c = conn_new(st, peer, fd, keys);
    if (!c) {
        close(fd);
        snprintf(why, why_bytes, "no memory");
        return KVRT_ERR_NO_MEMORY;
    }
    /* The extra sockets are dialed before the connection is published, so
     * the peer sees them all before any frame. */
    for (uint32_t i = 1; i < st->env.connections_per_peer; i++) {
        int extra = -1;
        kvrt_xfer_sc_keys_t extra_keys;
        kvrt_status_t s = kvrt_xfer_bk_dial(peer, i, deadline_ns, &extra, &extra_keys);
        if (s != KVRT_OK) {
            snprintf(why, why_bytes, "extra connection %u: %s", i, kvrt_status_str(s));
            conn_free(c);
            return s;
        }
        c->socks[c->nsocks] = sock_new(c, extra, &extra_keys);
        if (!c->socks[c->nsocks]) {
            close(extra);
            conn_free(c);
            snprintf(why, why_bytes, "no memory");
            return KVRT_ERR_NO_MEMORY;
        }
        c->nsocks++;
    }
    conn_publish(st, c);
    *conn_out = c;
    return KVRT_OK;
}

static kvrt_status_t tcp_accept(void *state, kvrt_xfer_bk_peer_t *peer, void *conn, int fd,
                                const kvrt_xfer_sc_keys_t *keys, uint32_t conn_index, void **conn_out, char *why,
                                size_t why_bytes)
{
    tcp_state_t *st = state;
    if (conn) {
        if (conn_index >= TCP_MAX_SOCKS || !conn_add_sock(st, conn, fd, keys)) {
            close(fd);
            snprintf(why, why_bytes, "connection %u not accepted", conn_index);
            return KVRT_ERR_PROTOCOL;
        }
        return KVRT_OK;
    }
    tcp_conn_t *c = conn_new(st, peer, fd, keys);
    if (!c) {
        close(fd);
        snprintf(why, why_bytes, "no memory");
        return KVRT_ERR_NO_MEMORY;
    }
    conn_publish(st, c);
    *conn_out = c;
    return KVRT_OK;
}

static void tcp_close(void *state, void *conn)
{
    tcp_state_t *st = state;
    tcp_conn_t *c = conn;
    pthread_mutex_lock(&st->lock);
    c->closing = true;
    if (!c->failed)
        tcp_conn_fail(c, KVRT_ERR_PEER_FAILED, "closed");
    wake(st);
    /* The progress thread drains the sockets, completes every slot and
     * delivers those completions before it marks the connection drained. */
    while (!c->drained)
        pthread_cond_wait(&st->cond, &st->lock);
    for (tcp_conn_t **p = &st->conns; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    pthread_mutex_unlock(&st->lock);
    conn_free(c);
}

/* The live socket with the fewest queued bytes. */
static tcp_sock_t *pick_sock(tcp_conn_t *c)
{
    tcp_sock_t *best = c->socks[0];
    for (uint32_t i = 1; i < c->nsocks; i++)
        if (c->socks[i]->txq_bytes < best->txq_bytes)
            best = c->socks[i];
    return best;
}

/* Frames an operation of `length` bytes takes (at most FRAME_MAX each). */
static uint64_t op_frames(uint64_t length)
{
    return length <= KVRT_XFER_WIRE_FRAME_MAX ? 1
                                              : (length + KVRT_XFER_WIRE_FRAME_MAX - 1) /
                                                    KVRT_XFER_WIRE_FRAME_MAX;
}

static kvrt_status_t tcp_post(void *state, void *conn, kvrt_xfer_bk_batch_t *batch)
{
    tcp_state_t *st = state;
    tcp_conn_t *c = conn;
    pthread_mutex_lock(&st->lock);
    if (c->failed || !upcalls_reserve(st, 1)) {
        pthread_mutex_unlock(&st->lock);
        return c->failed ? KVRT_ERR_PEER_FAILED : KVRT_ERR_NO_MEMORY;
    }
    /* Every frame is answered; the batch completes with the last answer. */
    uint64_t frames = 0;
    for (uint32_t i = 0; i < batch->count; i++)
        frames += op_frames(batch->ops[i].length);
    batch->backend_data[0] = (void *)(uintptr_t)frames;
    batch->backend_data[1] = (void *)(intptr_t)KVRT_OK;
    uint64_t queued = 0;
    for (uint32_t i = 0; i < batch->count && queued < frames; i++) {
        const kvrt_xfer_bk_op_t *op = &batch->ops[i];
        bool write = op->opcode == KVRT_XFER_WRITE;
        for (uint64_t at = 0; at < op->length || (at == 0 && op->length == 0);) {
            uint64_t n = op->length - at;
            if (n > KVRT_XFER_WIRE_FRAME_MAX)
                n = KVRT_XFER_WIRE_FRAME_MAX;
            uint8_t *local = op->local->base + op->local_offset + at;
            uint32_t index = slot_take(c);
            kvrt_xfer_wire_header_t h = {
                .type = write ? KVRT_XFER_WIRE_WRITE : KVRT_XFER_WIRE_READ_REQ,
                .region = op->remote->id, .offset = op->remote_offset + at, .length = n};
            tcp_frame_t *f = NULL;
            if (index != UINT32_MAX) {
                h.tag = (uint64_t)c->slots[index].gen << 32 | index;
                f = tcp_frame_new(st, &h, write ? local : NULL, n);
            }
            if (!f) {
                /* Frames already queued will complete; the rest count as
                 * failed now, so the batch still completes exactly once. */
                if (index != UINT32_MAX) {
                    c->slots[index].kind = SLOT_WRITE;
                    c->slots[index].batch = batch;
                    tcp_slot_finish(c, index, KVRT_ERR_NO_MEMORY, NULL, 0);
                    queued++;
                }
                uintptr_t left = (uintptr_t)batch->backend_data[0] - (frames - queued);
                batch->backend_data[0] = (void *)left;
                batch->backend_data[1] = (void *)(intptr_t)KVRT_ERR_NO_MEMORY;
                if (left == 0 && frames > queued)
                    tcp_upcall(st, (tcp_upcall_t){.kind = UP_BATCH, .batch = batch,
                                                  .status = KVRT_ERR_NO_MEMORY});
                queued = frames;
                break;
            }
            tcp_sock_t *s = pick_sock(c);
            c->slots[index] = (tcp_slot_t){.gen = c->slots[index].gen,
                                           .kind = write ? SLOT_WRITE : SLOT_READ,
                                           .sock = s, .batch = batch,
                                           .dest = write ? NULL : local,
                                           .length = n, .next_free = UINT32_MAX};
            tcp_enqueue(s, f);
            queued++;
            at += n;
            if (n == 0)
                break;
        }
    }
    pthread_mutex_unlock(&st->lock);
    wake(st);
    return KVRT_OK;
}

static kvrt_status_t tcp_send_msg(void *state, void *conn, kvrt_xfer_bk_msg_t *msg)
{
    tcp_state_t *st = state;
    tcp_conn_t *c = conn;
    pthread_mutex_lock(&st->lock);
    kvrt_status_t rc = KVRT_OK;
    bool reserved = !c->failed && upcalls_reserve(st, 1);
    uint32_t index = reserved ? slot_take(c) : UINT32_MAX;
    if (c->failed) {
        rc = KVRT_ERR_PEER_FAILED;
    } else if (index == UINT32_MAX) {
        rc = KVRT_ERR_NO_MEMORY;
    } else {
        kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_MSG, .region = msg->type,
                                     .tag = (uint64_t)c->slots[index].gen << 32 | index,
                                     .length = msg->bytes};
        tcp_frame_t *f = tcp_frame_new(st, &h, msg->payload, msg->bytes);
        if (!f) {
            c->slots[index].next_free = c->free_slot;
            c->free_slot = index;
            c->used_slots--;
            rc = KVRT_ERR_NO_MEMORY;
        } else {
            tcp_sock_t *s = c->socks[0];
            c->slots[index] = (tcp_slot_t){.gen = c->slots[index].gen, .kind = SLOT_MSG,
                                           .sock = s, .msg = msg, .next_free = UINT32_MAX};
            tcp_enqueue(s, f);
        }
    }
    if (rc != KVRT_OK && reserved)
        upcalls_unreserve(st);
    pthread_mutex_unlock(&st->lock);
    if (rc == KVRT_OK)
        wake(st);
    return rc;
}

static void tcp_cancel(void *state, void *conn, kvrt_xfer_bk_batch_t *batch)
{
    tcp_state_t *st = state;
    tcp_conn_t *c = conn;
    pthread_mutex_lock(&st->lock);
    bool live = false;
    for (uint32_t i = 0; i < c->nslots && !live; i++)
        live = c->slots[i].kind && c->slots[i].batch == batch;
    /* A frame of the batch may be half sent, or its data half received
     * into the caller's memory; only resetting the connection stops both
     * for certain. The connection then reconnects. */
    if (live)
        tcp_conn_fail(c, KVRT_ERR_CANCELED, "a request was canceled or timed out mid-flight");
    pthread_mutex_unlock(&st->lock);
}

const kvrt_xfer_backend_t kvrt_xfer_tcp_backend = {
    .version = KVRT_XFER_BACKEND_VERSION,
    .kind = KVRT_XFER_BACKEND_TCP,
    .name = "tcp",
    .probe = tcp_probe,
    .init = tcp_init,
    .fini = tcp_fini,
    .reg = tcp_reg,
    .dereg = tcp_dereg,
    .connect = tcp_connect,
    .accept = tcp_accept,
    .close = tcp_close,
    .post = tcp_post,
    .send_msg = tcp_send_msg,
    .cancel = tcp_cancel,
};
