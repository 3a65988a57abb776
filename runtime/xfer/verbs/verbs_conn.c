/*
 * verbs_conn.c - a verbs connection: RC queue pairs set up over the
 * authenticated side channel, torn down without leaving work behind, and
 * the small request/reply messages the agent exchanges over QP 0.
 *
 * Set-up (both sides, the dialer speaking first at every step; SETUP,
 * QP_INFO and READY each end with a MAC under the sender's direction key
 * of the socket from the handshake, sidechannel.h):
 *   SETUP  {version 3, QPs wanted}      both use the smaller count; an
 *                                       older version is refused
 *   create a CQ per device, the QPs (RESET -> INIT), the message buffers,
 *   and post the receives
 *   QP_INFO {qpn, psn, gid, lid, mtu, port} per QP
 *   INIT -> RTR with path MTU = min(ours, theirs), RTR -> RTS
 *   READY  {status}                      neither side sends before both
 *                                        are in RTS
 * The side-channel socket then stays open and idle: its EOF is the fastest
 * sign that the peer process died.
 *
 * Messages: at most VB_MSG_SLOTS requests in flight per direction; each
 * side keeps 2 * VB_MSG_SLOTS receives posted (the peer's requests plus
 * the replies to ours), reposting one before anything it sends can cause
 * another to arrive, so a SEND never finds the receive queue empty.
 * Header (24 bytes, little-endian): u32 magic, u8 kind (1 request, 2
 * reply), u8 slot, u16 0, u32 type, i32 status, u32 bytes, u32 0.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <unistd.h>

#include "verbs_internal.h"

/* 2: QP_INFO frames carry a MAC (sidechannel.h); 3: so do SETUP and READY */
#define VB_SETUP_VERSION 3
#define VB_SETUP_BYTES 8     /* SETUP payload before its MAC */
#define VB_SC_SEALED_MAX 8   /* the longest SETUP/READY payload */
#define MSG_REQUEST 1
#define MSG_REPLY 2

static uint8_t *recv_slot(vb_conn_t *c, uint32_t i) { return c->msg_mem + (size_t)i * VB_SLOT_BYTES; }
static uint8_t *req_slot(vb_conn_t *c, uint32_t i)
{
    return recv_slot(c, VB_RECV_WRS + i);
}
static uint8_t *reply_slot(vb_conn_t *c, uint32_t i)
{
    return recv_slot(c, VB_RECV_WRS + VB_MSG_SLOTS + i);
}

static int post_recv_slot(vb_conn_t *c, uint32_t i)
{
    struct ibv_sge sge = {.addr = (uint64_t)(uintptr_t)recv_slot(c, i),
                          .length = VB_SLOT_BYTES, .lkey = c->msg_mr[i]->lkey};
    struct ibv_recv_wr wr = {.wr_id = VB_RECV_FLAG | i, .sg_list = &sge, .num_sge = 1};
    struct ibv_recv_wr *bad;
    return c->b->ops.post_recv(c->qp[0].qp, &wr, &bad);
}

/* ---- creation and teardown ------------------------------------------------- */

static void destroy_objects(vb_conn_t *c)
{
    const kvrt_verbs_ops_t *ops = &c->b->ops;
    for (uint32_t k = 0; k < c->nqp; k++) {
        if (c->qp[k].qp)
            ops->destroy_qp(c->qp[k].qp);
        c->qp[k].qp = NULL;
    }
    for (uint32_t i = 0; i < VB_RECV_WRS + 2 * VB_MSG_SLOTS; i++) {
        if (c->msg_mr[i])
            ops->dereg_mr(c->msg_mr[i]);
        c->msg_mr[i] = NULL;
    }
    for (uint32_t d = 0; d < VB_MAX_DEVICES; d++) {
        if (c->cq[d])
            ops->destroy_cq(c->cq[d]);
        c->cq[d] = NULL;
    }
}

static void conn_free(vb_conn_t *c)
{
    for (uint32_t k = 0; k < c->nqp; k++) {
        free(c->qp[k].ring);
        free(c->qp[k].chain);
    }
    free(c->msg_mem);
    if (c->fd >= 0)
        close(c->fd);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static kvrt_status_t create_objects(vb_conn_t *c, uint32_t nqp, char *why, size_t n)
{
    vb_backend_t *b = c->b;
    const kvrt_verbs_ops_t *ops = &b->ops;
    uint32_t depth = b->tuning.sq_depth;
    c->nqp = nqp;
    for (uint32_t d = 0; d < b->ndev && d < nqp; d++) {
        /* every send WR and every receive may complete with an entry */
        uint32_t qps_here = (nqp - d + b->ndev - 1) / b->ndev;
        uint32_t cqe = qps_here * depth + (d == 0 ? VB_RECV_WRS : 0);
        if (cqe > b->dev[d].max_cqe)
            cqe = b->dev[d].max_cqe;
        c->cq[d] = ops->create_cq(b->dev[d].ctx, (int)cqe, c, b->dev[d].channel, 0);
        if (!c->cq[d]) {
            snprintf(why, n, "verbs: ibv_create_cq on %s: %s", b->dev[d].name,
                     strerror(errno));
            return KVRT_ERR_CONNECT;
        }
    }
    for (uint32_t k = 0; k < nqp; k++) {
        vb_qp_t *q = &c->qp[k];
        q->dev = k % b->ndev;
        q->depth = depth;
        q->ring = calloc(depth, sizeof(*q->ring));
        q->chain = calloc(depth, sizeof(*q->chain));
        if (!q->ring || !q->chain)
            return KVRT_ERR_NO_MEMORY;
        vb_device_t *dv = &b->dev[q->dev];
        struct ibv_qp_init_attr ia = {
            .qp_context = c, .send_cq = c->cq[q->dev], .recv_cq = c->cq[q->dev],
            .cap = {.max_send_wr = depth, .max_recv_wr = k == 0 ? VB_RECV_WRS : 0,
                    .max_send_sge = b->max_sge, .max_recv_sge = 1},
            .qp_type = IBV_QPT_RC};
        q->qp = ops->create_qp(dv->pd, &ia);
        if (!q->qp) {
            snprintf(why, n, "verbs: ibv_create_qp on %s: %s", dv->name, strerror(errno));
            return KVRT_ERR_CONNECT;
        }
        struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .pkey_index = 0,
                                .port_num = dv->port,
                                .qp_access_flags = IBV_ACCESS_REMOTE_READ |
                                                   IBV_ACCESS_REMOTE_WRITE};
        int rc = ops->modify_qp(q->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX |
                                               IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
        if (rc != 0) {
            snprintf(why, n, "verbs: QP to INIT: %s", strerror(rc));
            return KVRT_ERR_CONNECT;
        }
        q->psn = randombytes_uniform(1u << 24);
    }
    size_t bytes = (size_t)(VB_RECV_WRS + 2 * VB_MSG_SLOTS) * VB_SLOT_BYTES;
    if (posix_memalign((void **)&c->msg_mem, 4096, bytes) != 0) {
        c->msg_mem = NULL;
        return KVRT_ERR_NO_MEMORY;
    }
    memset(c->msg_mem, 0, bytes);
    for (uint32_t i = 0; i < VB_RECV_WRS + 2 * VB_MSG_SLOTS; i++) {
        c->msg_mr[i] = ops->reg_mr(b->dev[0].pd, recv_slot(c, i), VB_SLOT_BYTES,
                                   IBV_ACCESS_LOCAL_WRITE);
        if (!c->msg_mr[i]) {
            snprintf(why, n, "verbs: registering message buffers: %s", strerror(errno));
            return KVRT_ERR_CONNECT;
        }
    }
    for (uint32_t i = 0; i < 2 * VB_MSG_SLOTS; i++) {
        uint8_t *slot = i < VB_MSG_SLOTS ? req_slot(c, i) : reply_slot(c, i - VB_MSG_SLOTS);
        c->msg_sge[i] = (struct ibv_sge){.addr = (uint64_t)(uintptr_t)slot,
                                         .lkey = c->msg_mr[VB_RECV_WRS + i]->lkey};
        c->msg_wr[i] = (vb_wr_t){.opcode = IBV_WR_SEND, .qp = 0, .nsge = 1,
                                 .msg_sge = &c->msg_sge[i], .last_on_qp = true};
    }
    for (uint32_t i = 0; i < VB_RECV_WRS; i++) {
        int rc = post_recv_slot(c, i);
        if (rc != 0) {
            snprintf(why, n, "verbs: posting receives: %s", strerror(rc));
            return KVRT_ERR_CONNECT;
        }
    }
    return KVRT_OK;
}

static kvrt_status_t to_rts(vb_conn_t *c, const kvrt_xfer_sc_qp_info_t *remote,
                            char *why, size_t n)
{
    vb_backend_t *b = c->b;
    for (uint32_t k = 0; k < c->nqp; k++) {
        vb_qp_t *q = &c->qp[k];
        vb_device_t *dv = &b->dev[q->dev];
        const kvrt_xfer_sc_qp_info_t *r = &remote[k];
        if (r->mtu < IBV_MTU_256 || r->mtu > IBV_MTU_4096 || r->psn > 0xffffff) {
            snprintf(why, n, "verbs: peer sent QP info with MTU %u, PSN %u", r->mtu, r->psn);
            return KVRT_ERR_PROTOCOL;
        }
        struct ibv_qp_attr a = {
            .qp_state = IBV_QPS_RTR,
            .path_mtu = (enum ibv_mtu)kvrt_xfer_sc_mtu_min((uint8_t)dv->mtu, r->mtu),
            .dest_qp_num = r->qp_num, .rq_psn = r->psn,
            .max_dest_rd_atomic = dv->max_dest_rd_atomic,
            .min_rnr_timer = 12, /* 0.64 ms */
            .ah_attr = {.port_num = dv->port, .dlid = r->lid}};
        if (dv->roce) {
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.hop_limit = 64;
            a.ah_attr.grh.sgid_index = (uint8_t)dv->gid_index;
            memcpy(a.ah_attr.grh.dgid.raw, r->gid, 16);
        }
        int rc = b->ops.modify_qp(q->qp, &a,
                                  IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
                                      IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                                      IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
        if (rc != 0) {
            snprintf(why, n, "verbs: QP %u to RTR: %s", k, strerror(rc));
            return KVRT_ERR_CONNECT;
        }
        /* 4.096 us * 2^14 = 67 ms per try, 7 tries: a vanished peer shows
         * as an error completion within about half a second */
        struct ibv_qp_attr s = {.qp_state = IBV_QPS_RTS, .sq_psn = q->psn,
                                .timeout = 14, .retry_cnt = 7, .rnr_retry = 7,
                                .max_rd_atomic = dv->max_rd_atomic};
        rc = b->ops.modify_qp(q->qp, &s, IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT |
                                             IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                                             IBV_QP_MAX_QP_RD_ATOMIC);
        if (rc != 0) {
            snprintf(why, n, "verbs: QP %u to RTS: %s", k, strerror(rc));
            return KVRT_ERR_CONNECT;
        }
    }
    return KVRT_OK;
}

/* Receives a SETUP or READY frame of `bytes` payload and checks its MAC.
 * *got_out gets the payload length, and `theirs` as much of it as fits,
 * even when short: an older peer's SETUP is told apart. */
static kvrt_status_t recv_sealed(int fd, uint16_t type, const char *label,
                                 const kvrt_xfer_sc_keys_t *keys, uint8_t *theirs,
                                 uint32_t bytes, uint32_t *got_out, uint64_t deadline_ns)
{
    uint8_t in[VB_SC_SEALED_MAX + KVRT_XFER_SC_MAC_BYTES];
    *got_out = 0;
    kvrt_status_t st = kvrt_xfer_sc_recv(fd, type, in, bytes + KVRT_XFER_SC_MAC_BYTES,
                                         got_out, deadline_ns);
    memcpy(theirs, in, *got_out < bytes ? *got_out : bytes);
    if (st != KVRT_OK)
        return st;
    if (*got_out != bytes + KVRT_XFER_SC_MAC_BYTES)
        return KVRT_ERR_PROTOCOL;
    if (!kvrt_xfer_sc_frame_mac_ok(keys->rx, label, in, bytes, in + bytes))
        return KVRT_ERR_AUTH;
    return KVRT_OK;
}

/* Swaps one SETUP or READY frame of `bytes` payload, each side's sealed
 * with a MAC under its direction key of the socket (sidechannel.h), the
 * label naming the frame. The dialer sends first; the listener checks
 * the dialer's frame before it answers, so a frame altered on the path
 * gets no answer. Errors: KVRT_ERR_AUTH (their MAC does not check),
 * KVRT_ERR_PROTOCOL (another length), the side channel's. */
static kvrt_status_t swap_sealed(int fd, bool dialer, uint16_t type, const char *label,
                                 const kvrt_xfer_sc_keys_t *keys, const uint8_t *mine,
                                 uint8_t *theirs, uint32_t bytes, uint32_t *got_out,
                                 uint64_t deadline_ns)
{
    uint8_t out[VB_SC_SEALED_MAX + KVRT_XFER_SC_MAC_BYTES];
    memcpy(out, mine, bytes);
    kvrt_xfer_sc_frame_mac(keys->tx, label, out, bytes, out + bytes);
    kvrt_status_t st = KVRT_OK;
    if (dialer)
        st = kvrt_xfer_sc_send(fd, type, out, bytes + KVRT_XFER_SC_MAC_BYTES, deadline_ns);
    if (st == KVRT_OK)
        st = recv_sealed(fd, type, label, keys, theirs, bytes, got_out, deadline_ns);
    if (st == KVRT_OK && !dialer)
        st = kvrt_xfer_sc_send(fd, type, out, bytes + KVRT_XFER_SC_MAC_BYTES, deadline_ns);
    return st;
}

/* The SETUP exchange: both sides' version and QP count; *nqp_out gets the
 * smaller count. A peer of an older set-up version is refused with a
 * reason that says so. */
static kvrt_status_t swap_setup(vb_backend_t *b, int fd, bool dialer,
                                const kvrt_xfer_sc_keys_t *keys, uint32_t *nqp_out,
                                uint64_t deadline_ns, char *why, size_t n)
{
    uint8_t mine[VB_SETUP_BYTES], theirs[VB_SETUP_BYTES] = {0};
    kvrt_store_le32(mine, VB_SETUP_VERSION);
    kvrt_store_le32(mine + 4, b->tuning.qps_per_peer);
    uint32_t got = 0;
    kvrt_status_t st = swap_sealed(fd, dialer, VB_SC_SETUP, "kvrt-verbs-setup", keys, mine,
                                   theirs, VB_SETUP_BYTES, &got, deadline_ns);
    uint32_t version = kvrt_load_le32(theirs), nqp = kvrt_load_le32(theirs + 4);
    if (got == VB_SETUP_BYTES && version < VB_SETUP_VERSION) {
        /* Versions before 3 sent SETUP (8 bytes) and READY without a MAC. */
        snprintf(why, n,
                 "verbs: peer speaks set-up version %u, without authenticated SETUP/READY "
                 "frames; version %d is required",
                 version, VB_SETUP_VERSION);
        return KVRT_ERR_PROTOCOL;
    }
    if (st == KVRT_ERR_AUTH) {
        snprintf(why, n, "verbs: peer's SETUP frame failed authentication");
        return st;
    }
    if (st == KVRT_OK && (version != VB_SETUP_VERSION || nqp == 0)) {
        snprintf(why, n, "verbs: peer's set-up frame is version %u with %u QPs, not version %d",
                 version, nqp, VB_SETUP_VERSION);
        st = KVRT_ERR_PROTOCOL;
    }
    *nqp_out = nqp > b->tuning.qps_per_peer ? b->tuning.qps_per_peer : nqp;
    return st;
}

static kvrt_status_t establish(vb_backend_t *b, kvrt_xfer_bk_peer_t *peer, int fd,
                               const kvrt_xfer_sc_keys_t *keys, bool dialer,
                               uint64_t deadline_ns, void **conn_out, char *why, size_t n)
{
    vb_conn_t *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return KVRT_ERR_NO_MEMORY;
    }
    c->b = b;
    c->peer = peer;
    c->fd = fd;
    pthread_mutex_init(&c->lock, NULL);
    uint32_t nqp = 0;
    kvrt_status_t st = swap_setup(b, fd, dialer, keys, &nqp, deadline_ns, why, n);
    if (st == KVRT_OK)
        st = create_objects(c, nqp, why, n);
    kvrt_xfer_sc_qp_info_t local[VB_MAX_QPS], remote[VB_MAX_QPS];
    if (st == KVRT_OK) {
        for (uint32_t k = 0; k < nqp; k++) {
            vb_device_t *dv = &b->dev[c->qp[k].dev];
            local[k] = (kvrt_xfer_sc_qp_info_t){.qp_num = c->qp[k].qp->qp_num,
                                                .psn = c->qp[k].psn, .lid = dv->lid,
                                                .mtu = (uint8_t)dv->mtu, .port = dv->port};
            memcpy(local[k].gid, dv->gid.raw, 16);
        }
        st = kvrt_xfer_sc_exchange_qp_info(fd, dialer, keys, local, remote, nqp, deadline_ns);
        if (st != KVRT_OK && why[0] == 0)
            snprintf(why, n, "verbs: QP exchange: %s", kvrt_status_str(st));
    }
    if (st == KVRT_OK)
        st = to_rts(c, remote, why, n);
    if (st == KVRT_OK) {
        uint8_t ready[4] = {0}, peer_ready[4] = {0};
        uint32_t got = 0;
        st = swap_sealed(fd, dialer, VB_SC_READY, "kvrt-verbs-ready", keys, ready, peer_ready,
                         sizeof(ready), &got, deadline_ns);
        if (st == KVRT_ERR_AUTH)
            snprintf(why, n, "verbs: peer's READY frame failed authentication");
        if (st == KVRT_OK && kvrt_load_le32(peer_ready) != 0)
            st = KVRT_ERR_CONNECT;
    }
    if (st != KVRT_OK) {
        if (why[0] == 0)
            snprintf(why, n, "verbs: connection set-up with %s failed: %s",
                     kvrt_xfer_bk_peer_name(peer), kvrt_status_str(st));
        destroy_objects(c);
        conn_free(c);
        /* timeouts and resets during set-up mean we could not connect */
        return st == KVRT_ERR_PROTOCOL || st == KVRT_ERR_NO_MEMORY ? st : KVRT_ERR_CONNECT;
    }
    for (uint32_t d = 0; d < VB_MAX_DEVICES; d++)
        if (c->cq[d])
            b->ops.req_notify_cq(c->cq[d], 0);
    /* Completions that landed before the CQs were armed raised no event:
     * the progress thread drains a fresh connection once. */
    pthread_mutex_lock(&b->lock);
    c->fresh = true;
    c->next = b->conns;
    b->conns = c;
    pthread_mutex_unlock(&b->lock);
    vb_wake(b);
    kvrt_log(b->ctx, KVRT_LOG_DEBUG, "verbs: connected to %s with %u QP(s), MTU %d",
             kvrt_xfer_bk_peer_name(peer), nqp,
             128 << kvrt_xfer_sc_mtu_min((uint8_t)b->dev[0].mtu, remote[0].mtu));
    *conn_out = c;
    return KVRT_OK;
}

kvrt_status_t vb_connect(void *state, kvrt_xfer_bk_peer_t *peer, int fd,
                         const kvrt_xfer_sc_keys_t *keys,
                         uint64_t deadline_ns, void **conn_out, char *why,
                         size_t why_bytes)
{
    /* The keys authenticate the QP exchange; the data path is the NIC's
     * (the rkey and QP are the capability). */
    why[0] = 0;
    return establish(state, peer, fd, keys, true, deadline_ns, conn_out, why, why_bytes);
}

kvrt_status_t vb_accept(void *state, kvrt_xfer_bk_peer_t *peer, void *conn, int fd,
                        const kvrt_xfer_sc_keys_t *keys,
                        uint32_t conn_index, void **conn_out, char *why,
                        size_t why_bytes)
{
    why[0] = 0;
    if (conn || conn_index != 0) {
        /* this backend dials no extra sockets; one claiming to be part of
         * an existing session is not from a kvrt verbs peer */
        close(fd);
        snprintf(why, why_bytes, "verbs: unexpected extra side-channel socket");
        return KVRT_ERR_PROTOCOL;
    }
    /* A bounded wait: the dialer drives set-up right after authenticating.
     * The agent runs this on a set-up thread (accept_waits) and aborts it
     * by shutting the socket down, which fails the next read at once. */
    uint64_t deadline = kvrt_now_ns() + 10ull * 1000000000ull;
    return establish(state, peer, fd, keys, false, deadline, conn_out, why, why_bytes);
}

/* Progress thread, no lock held: after this nothing of the connection's
 * work is outstanding and no verbs object of it remains. Destroying a QP
 * guarantees the device no longer touches the memory its WRs named, so
 * batches still outstanding then can complete at once, flushed or not. */
void vb_conn_teardown(vb_conn_t *c)
{
    pthread_mutex_lock(&c->lock);
    vb_conn_fail(c, KVRT_ERR_PEER_FAILED, true, "verbs: connection closed");
    for (uint32_t d = 0; d < VB_MAX_DEVICES; d++)
        if (c->cq[d])
            vb_drain_cq(c, d);
    destroy_objects(c);
    vb_finish_all(c);
    pthread_mutex_unlock(&c->lock);
}

void vb_close(void *state, void *conn)
{
    vb_backend_t *b = state;
    vb_conn_t *c = conn;
    pthread_mutex_lock(&b->lock);
    c->closing = true;
    vb_wake(b);
    while (!c->closed)
        pthread_cond_wait(&b->cond, &b->lock);
    pthread_mutex_unlock(&b->lock);
    conn_free(c);
}

/* ---- messages ------------------------------------------------------------------- */

static void write_header(uint8_t *p, uint8_t kind, uint32_t slot, uint32_t type,
                         int32_t status, uint32_t bytes)
{
    memset(p, 0, VB_MSG_HEADER);
    kvrt_store_le32(p, VB_MSG_MAGIC);
    p[4] = kind;
    p[5] = (uint8_t)slot;
    kvrt_store_le32(p + 8, type);
    kvrt_store_le32(p + 12, (uint32_t)status);
    kvrt_store_le32(p + 16, bytes);
}

static void start_msg(vb_conn_t *c, uint32_t slot, kvrt_xfer_bk_msg_t *msg)
{
    uint8_t *p = req_slot(c, slot);
    write_header(p, MSG_REQUEST, slot, msg->type, 0, msg->bytes);
    if (msg->bytes)
        memcpy(p + VB_MSG_HEADER, msg->payload, msg->bytes);
    c->req[slot] = msg;
    c->msg_sge[slot].length = VB_MSG_HEADER + msg->bytes;
    vb_enqueue(c, &c->msg_wr[slot]);
    vb_kick(c, 0);
}

kvrt_status_t vb_send_msg(void *state, void *conn, kvrt_xfer_bk_msg_t *msg)
{
    vb_conn_t *c = conn;
    if (msg->bytes > KVRT_XFER_MSG_MAX)
        return KVRT_ERR_INVALID_ARG;
    pthread_mutex_lock(&c->lock);
    if (c->failed) {
        pthread_mutex_unlock(&c->lock);
        return KVRT_ERR_PEER_FAILED;
    }
    uint32_t slot = VB_MSG_SLOTS;
    for (uint32_t i = 0; i < VB_MSG_SLOTS && slot == VB_MSG_SLOTS; i++)
        if (!c->req[i] && !c->req_busy[i])
            slot = i;
    if (slot < VB_MSG_SLOTS) {
        start_msg(c, slot, msg);
    } else {
        msg->backend_data[0] = NULL;
        if (c->msgq_tail)
            c->msgq_tail->backend_data[0] = msg;
        else
            c->msgq_head = msg;
        c->msgq_tail = msg;
    }
    pthread_mutex_unlock(&c->lock);
    vb_deliver(c);
    return KVRT_OK;
}

static void defer_msg_failure(vb_conn_t *c, kvrt_xfer_bk_msg_t *m)
{
    m->backend_data[0] = NULL;
    if (c->mfail_tail)
        c->mfail_tail->backend_data[0] = m;
    else
        c->mfail_head = m;
    c->mfail_tail = m;
}

void vb_fail_msgs(vb_conn_t *c)
{
    for (uint32_t i = 0; i < VB_MSG_SLOTS; i++) {
        kvrt_xfer_bk_msg_t *m = c->req[i];
        /* a reply being delivered right now completes through that path */
        if (m && !c->req_busy[i]) {
            c->req[i] = NULL;
            defer_msg_failure(c, m);
        }
    }
    while (c->msgq_head) {
        kvrt_xfer_bk_msg_t *m = c->msgq_head;
        c->msgq_head = m->backend_data[0];
        defer_msg_failure(c, m);
    }
    c->msgq_tail = NULL;
}

static void refuse(vb_conn_t *c, const char *why)
{
    if (!c->report_refuse) {
        c->report_refuse = true;
        snprintf(c->refuse_why, sizeof(c->refuse_why), "verbs: %s", why);
    }
    vb_conn_fail(c, KVRT_ERR_PROTOCOL, false, "verbs: %s from %s", why,
                 kvrt_xfer_bk_peer_name(c->peer));
}

void vb_on_recv(vb_conn_t *c, const struct ibv_wc *wc)
{
    uint32_t r = (uint32_t)(wc->wr_id & ~VB_RECV_FLAG);
    if (c->failed)
        return; /* flushed, or too late to answer */
    if (wc->status != IBV_WC_SUCCESS) {
        if (!c->failed)
            vb_conn_fail(c, KVRT_ERR_PEER_FAILED, false, "verbs: receive failed: %s",
                         ibv_wc_status_str(wc->status));
        return;
    }
    const uint8_t *p = recv_slot(c, r);
    uint32_t slot = p[5], bytes = kvrt_load_le32(p + 16), type = kvrt_load_le32(p + 8);
    int32_t status = (int32_t)kvrt_load_le32(p + 12);
    uint8_t kind = p[4];
    /* everything a peer sends is checked before it is used */
    if (r >= VB_RECV_WRS || wc->byte_len < VB_MSG_HEADER ||
        kvrt_load_le32(p) != VB_MSG_MAGIC || (kind != MSG_REQUEST && kind != MSG_REPLY) ||
        slot >= VB_MSG_SLOTS || p[6] || p[7] || kvrt_load_le32(p + 20) ||
        bytes > KVRT_XFER_MSG_MAX || bytes != wc->byte_len - VB_MSG_HEADER ||
        (kind == MSG_REQUEST && status != 0) || (kind == MSG_REPLY && !c->req[slot])) {
        refuse(c, "malformed message");
        return;
    }
    if (kind == MSG_REPLY) {
        kvrt_xfer_bk_msg_t *m = c->req[slot];
        /* The reply is read in place and the agent may send its next
         * message from inside msg_done, so the slot stays taken and the
         * buffer unposted until the call returns: the peer's sends never
         * outnumber our posted receives. */
        c->req_busy[slot] = true;
        pthread_mutex_unlock(&c->lock);
        kvrt_xfer_bk_msg_done(m, (kvrt_status_t)status, p + VB_MSG_HEADER, bytes);
        pthread_mutex_lock(&c->lock);
        c->req_busy[slot] = false;
        c->req[slot] = NULL;
        if (!c->failed && post_recv_slot(c, r) != 0)
            vb_conn_fail(c, KVRT_ERR_PEER_FAILED, false, "verbs: reposting a receive failed");
        if (!c->failed && c->msgq_head) {
            kvrt_xfer_bk_msg_t *next = c->msgq_head;
            c->msgq_head = next->backend_data[0];
            if (!c->msgq_head)
                c->msgq_tail = NULL;
            start_msg(c, slot, next);
        }
        return;
    }
    /* A request: the agent may take a while (checksums), so it runs
     * unlocked; only this thread touches receive buffers, and the peer
     * cannot reuse reply slot `slot` before it gets our reply. */
    uint8_t *out = reply_slot(c, slot);
    uint32_t reply_bytes = 0;
    pthread_mutex_unlock(&c->lock);
    kvrt_status_t st = kvrt_xfer_bk_deliver_msg(c->peer, type, p + VB_MSG_HEADER, bytes,
                                                out + VB_MSG_HEADER, KVRT_XFER_MSG_MAX,
                                                &reply_bytes);
    pthread_mutex_lock(&c->lock);
    if (c->failed)
        return;
    if (reply_bytes > KVRT_XFER_MSG_MAX)
        reply_bytes = 0;
    if (post_recv_slot(c, r) != 0) {
        vb_conn_fail(c, KVRT_ERR_PEER_FAILED, false, "verbs: reposting a receive failed");
        return;
    }
    write_header(out, MSG_REPLY, slot, type, (int32_t)st, reply_bytes);
    c->msg_sge[VB_MSG_SLOTS + slot].length = VB_MSG_HEADER + reply_bytes;
    vb_enqueue(c, &c->msg_wr[VB_MSG_SLOTS + slot]);
    vb_kick(c, 0);
}
