/*
 * verbs_backend.c - the RDMA verbs transfer backend: device discovery,
 * memory registration and the progress thread. Connections are in
 * verbs_conn.c, the data path in verbs_post.c.
 *
 * Every verbs call goes through the ops table of verbs_ops.h, so the same
 * code runs over libibverbs or over the software device.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "verbs_internal.h"

#define VB_DEFAULT_SIGNAL_EVERY 16
#define VB_DEFAULT_SQ_DEPTH 256
#define VB_DEFAULT_WR_BYTES (1ull << 20)

static kvrt_status_t vb_probe(char *why, size_t why_bytes)
{
    const kvrt_verbs_ops_t *ops = kvrt_verbs_current_ops();
    int n = 0;
    struct ibv_device **list = ops->get_device_list(&n);
    if (list)
        ops->free_device_list(list);
    if (!list || n == 0) {
        snprintf(why, why_bytes, "no RDMA device: ibv_get_device_list found none");
        return KVRT_ERR_NO_DEVICE;
    }
    return KVRT_OK;
}

/* RoCE: prefer a RoCE v2 GID holding an IPv4-mapped address (routable and
 * what RoCE v2 deployments use), then any RoCE v2 GID, then index 0. */
static void pick_gid(vb_backend_t *b, vb_device_t *d, int table_len)
{
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t zero[16];
    int best = -1, best_rank = 0;
    for (int i = 0; i < table_len; i++) {
        struct ibv_gid_entry e;
        if (b->ops.query_gid_ex(d->ctx, d->port, (uint32_t)i, &e) != 0 ||
            memcmp(e.gid.raw, zero, 16) == 0)
            continue;
        int rank = 1;
        if (e.gid_type == IBV_GID_TYPE_ROCE_V2)
            rank = memcmp(e.gid.raw, v4mapped, 12) == 0 ? 3 : 2;
        if (rank > best_rank) {
            best_rank = rank;
            best = i;
            d->gid = e.gid;
        }
    }
    d->gid_index = best < 0 ? 0 : (uint32_t)best;
}

static uint8_t cap_u8(int v, int cap)
{
    return (uint8_t)(v < 1 ? 1 : v > cap ? cap : v);
}

/* Opens a device and finds an active port; false when it has none. */
static bool open_device(vb_backend_t *b, struct ibv_device *ibdev, vb_device_t *d)
{
    memset(d, 0, sizeof(*d));
    d->ctx = b->ops.open_device(ibdev);
    if (!d->ctx)
        return false;
    snprintf(d->name, sizeof(d->name), "%s", b->ops.get_device_name(ibdev));
    struct ibv_device_attr da;
    struct ibv_port_attr pa;
    if (b->ops.query_device(d->ctx, &da) != 0)
        goto fail;
    for (uint8_t p = 1; p <= da.phys_port_cnt; p++) {
        if (b->ops.query_port(d->ctx, p, &pa) == 0 && pa.state == IBV_PORT_ACTIVE) {
            d->port = p;
            break;
        }
    }
    if (d->port == 0)
        goto fail;
    d->mtu = pa.active_mtu;
    d->roce = pa.link_layer == IBV_LINK_LAYER_ETHERNET;
    d->lid = pa.lid;
    if (d->roce)
        pick_gid(b, d, pa.gid_tbl_len);
    d->max_mr_size = da.max_mr_size;
    d->max_sge = (uint32_t)da.max_sge;
    d->max_qp_wr = (uint32_t)da.max_qp_wr;
    d->max_cqe = (uint32_t)da.max_cqe;
    /* outstanding RDMA READs per QP, both directions, as the device allows */
    d->max_rd_atomic = cap_u8(da.max_qp_rd_atom, 16);
    d->max_dest_rd_atomic = cap_u8(da.max_qp_init_rd_atom, 16);
    d->pd = b->ops.alloc_pd(d->ctx);
    if (!d->pd)
        goto fail;
    d->channel = b->ops.create_comp_channel(d->ctx);
    if (!d->channel)
        goto fail_pd;
    /* the progress thread polls the fd and reads events until EAGAIN */
    int fl = fcntl(d->channel->fd, F_GETFL);
    if (fl < 0 || fcntl(d->channel->fd, F_SETFL, fl | O_NONBLOCK) != 0)
        goto fail_channel;
    return true;
fail_channel:
    b->ops.destroy_comp_channel(d->channel);
fail_pd:
    b->ops.dealloc_pd(d->pd);
fail:
    b->ops.close_device(d->ctx);
    return false;
}

static void close_device(vb_backend_t *b, vb_device_t *d)
{
    b->ops.destroy_comp_channel(d->channel);
    b->ops.dealloc_pd(d->pd);
    b->ops.close_device(d->ctx);
}

void vb_wake(vb_backend_t *b)
{
    uint64_t one = 1;
    if (write(b->wake_fd, &one, sizeof(one)) < 0) {
        /* the counter cannot overflow: the progress thread resets it */
    }
}

/* ---- progress thread ------------------------------------------------------- */

#define VB_POLL_FDS (1 + VB_MAX_DEVICES + 256)

static void on_channel(vb_backend_t *b, vb_device_t *d)
{
    struct ibv_cq *cq;
    void *cq_ctx;
    while (b->ops.get_cq_event(d->channel, &cq, &cq_ctx) == 0) {
        vb_conn_t *c = cq_ctx;
        uint32_t dev = (uint32_t)(d - b->dev);
        b->ops.ack_cq_events(cq, 1);
        pthread_mutex_lock(&c->lock);
        /* re-arm before draining, so a completion landing in between
         * raises a new event instead of being missed */
        b->ops.req_notify_cq(cq, 0);
        vb_drain_cq(c, dev);
        pthread_mutex_unlock(&c->lock);
        vb_deliver(c);
    }
}

/* The side channel carries nothing after set-up: readable means the peer
 * closed it (or broke protocol). Either way the connection is gone. */
static void on_side_channel(vb_conn_t *c)
{
    uint8_t byte;
    ssize_t n = recv(c->fd, &byte, 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    c->fd_done = true; /* stop watching: an ended socket stays readable */
    if (n > 0)
        kvrt_xfer_bk_refuse(c->peer, KVRT_ERR_PROTOCOL,
                            "verbs: data on the side channel after set-up");
    pthread_mutex_lock(&c->lock);
    vb_conn_fail(c, n > 0 ? KVRT_ERR_PROTOCOL : KVRT_ERR_PEER_FAILED, false,
                 "verbs: side channel to %s closed", kvrt_xfer_bk_peer_name(c->peer));
    pthread_mutex_unlock(&c->lock);
    vb_deliver(c);
}

static void *progress_main(void *arg)
{
    vb_backend_t *b = arg;
    struct pollfd pfd[VB_POLL_FDS];
    vb_conn_t *watched[VB_POLL_FDS];
    pthread_mutex_lock(&b->lock);
    while (!b->stopping) {
        /* connections are only ever unlinked here, so the pointers
         * gathered below stay valid until the next round */
        vb_conn_t *closing = NULL;
        for (vb_conn_t **pp = &b->conns; *pp;) {
            vb_conn_t *c = *pp;
            if (c->closing) {
                *pp = c->next;
                c->next = closing;
                closing = c;
            } else {
                pp = &c->next;
            }
        }
        if (closing) {
            /* no lock across the agent's upcalls */
            pthread_mutex_unlock(&b->lock);
            for (vb_conn_t *c = closing; c; c = c->next) {
                vb_conn_teardown(c);
                vb_deliver(c);
            }
            pthread_mutex_lock(&b->lock);
            for (vb_conn_t *c = closing, *next; c; c = next) {
                next = c->next;
                c->closed = true;
            }
            pthread_cond_broadcast(&b->cond);
            continue;
        }
        nfds_t n = 0;
        pfd[n++] = (struct pollfd){.fd = b->wake_fd, .events = POLLIN};
        for (uint32_t d = 0; d < b->ndev; d++)
            pfd[n++] = (struct pollfd){.fd = b->dev[d].channel->fd, .events = POLLIN};
        vb_conn_t *fresh[VB_POLL_FDS];
        uint32_t nfresh = 0;
        for (vb_conn_t *c = b->conns; c && nfresh < VB_POLL_FDS; c = c->next)
            if (c->fresh) {
                c->fresh = false;
                fresh[nfresh++] = c;
            }
        nfds_t first_conn = n;
        for (vb_conn_t *c = b->conns; c && n < VB_POLL_FDS; c = c->next) {
            if (c->fd < 0 || c->fd_done)
                continue;
            watched[n] = c;
            pfd[n++] = (struct pollfd){.fd = c->fd, .events = POLLIN | POLLRDHUP};
        }
        pthread_mutex_unlock(&b->lock);
        for (uint32_t i = 0; i < nfresh; i++) {
            pthread_mutex_lock(&fresh[i]->lock);
            for (uint32_t d = 0; d < VB_MAX_DEVICES; d++)
                if (fresh[i]->cq[d])
                    vb_drain_cq(fresh[i], d);
            pthread_mutex_unlock(&fresh[i]->lock);
            vb_deliver(fresh[i]);
        }
        int ready = poll(pfd, n, 100);
        if (ready > 0) {
            if (pfd[0].revents) {
                uint64_t v;
                if (read(b->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
                    /* only EAGAIN can happen on a non-blocking eventfd */
                }
            }
            for (uint32_t d = 0; d < b->ndev; d++)
                if (pfd[1 + d].revents)
                    on_channel(b, &b->dev[d]);
            for (nfds_t i = first_conn; i < n; i++)
                if (pfd[i].revents)
                    on_side_channel(watched[i]);
        }
        pthread_mutex_lock(&b->lock);
    }
    pthread_mutex_unlock(&b->lock);
    return NULL;
}

/* ---- init / fini --------------------------------------------------------------- */

static void resolve_tuning(vb_backend_t *b, uint32_t connections)
{
    kvrt_verbs_tuning_t t = kvrt_verbs_current_tuning();
    if (t.signal_every == 0)
        t.signal_every = VB_DEFAULT_SIGNAL_EVERY;
    if (t.sq_depth == 0)
        t.sq_depth = VB_DEFAULT_SQ_DEPTH;
    if (t.wr_max_bytes == 0 || t.wr_max_bytes > (1ull << 30))
        t.wr_max_bytes = VB_DEFAULT_WR_BYTES;
    if (t.qps_per_peer == 0)
        t.qps_per_peer = connections ? connections : 4;
    if (t.qps_per_peer > VB_MAX_QPS)
        t.qps_per_peer = VB_MAX_QPS;
    b->tuning = t;
}

static kvrt_status_t vb_init(const kvrt_xfer_bk_env_t *env, void **state_out,
                             char *why, size_t why_bytes)
{
    vb_backend_t *b = calloc(1, sizeof(*b));
    if (!b)
        return KVRT_ERR_NO_MEMORY;
    b->ops = *kvrt_verbs_current_ops();
    b->ctx = env->ctx;
    b->agent = env->agent;
    resolve_tuning(b, env->connections_per_peer);
    int n = 0;
    b->list = b->ops.get_device_list(&n);
    for (int i = 0; b->list && i < n && b->ndev < VB_MAX_DEVICES; i++)
        if ((b->tuning.device_mask == 0 ||
             (i < 32 && (b->tuning.device_mask & (1u << i)))) &&
            open_device(b, b->list[i], &b->dev[b->ndev]))
            b->ndev++;
    if (b->ndev == 0) {
        snprintf(why, why_bytes, "%s",
                 n == 0 ? "no RDMA device: ibv_get_device_list found none"
                        : "no RDMA device with an active port");
        if (b->list)
            b->ops.free_device_list(b->list);
        free(b);
        return KVRT_ERR_NO_DEVICE;
    }
    b->max_sge = VB_MAX_SGE;
    b->max_mr_size = UINT64_MAX;
    for (uint32_t d = 0; d < b->ndev; d++) {
        if (b->dev[d].max_sge < b->max_sge)
            b->max_sge = b->dev[d].max_sge;
        if (b->dev[d].max_mr_size < b->max_mr_size)
            b->max_mr_size = b->dev[d].max_mr_size;
        if (b->tuning.sq_depth > b->dev[d].max_qp_wr)
            b->tuning.sq_depth = b->dev[d].max_qp_wr;
    }
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->cond, NULL);
    b->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (b->wake_fd < 0 || pthread_create(&b->thread, NULL, progress_main, b) != 0) {
        snprintf(why, why_bytes, "verbs: cannot start the progress thread");
        if (b->wake_fd >= 0)
            close(b->wake_fd);
        for (uint32_t d = 0; d < b->ndev; d++)
            close_device(b, &b->dev[d]);
        b->ops.free_device_list(b->list);
        pthread_cond_destroy(&b->cond);
        pthread_mutex_destroy(&b->lock);
        free(b);
        return KVRT_ERR_NO_MEMORY;
    }
    kvrt_log(b->ctx, KVRT_LOG_INFO, "verbs: %u device(s) via %s, first %s (MTU %d)",
             b->ndev, b->ops.name, b->dev[0].name, 128 << b->dev[0].mtu);
    *state_out = b;
    return KVRT_OK;
}

static void vb_fini(void *state)
{
    vb_backend_t *b = state;
    pthread_mutex_lock(&b->lock);
    b->stopping = true;
    pthread_mutex_unlock(&b->lock);
    vb_wake(b);
    pthread_join(b->thread, NULL);
    for (uint32_t d = 0; d < b->ndev; d++)
        close_device(b, &b->dev[d]);
    b->ops.free_device_list(b->list);
    close(b->wake_fd);
    pthread_cond_destroy(&b->cond);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

/* ---- registration ------------------------------------------------------------- */

static void dereg_pieces(vb_backend_t *b, vb_region_t *r)
{
    for (uint32_t d = 0; d < r->ndev; d++)
        for (uint32_t p = 0; p < r->npieces; p++)
            if (r->mr[d][p])
                b->ops.dereg_mr(r->mr[d][p]);
}

/*
 * One MR per piece and device. A region larger than the device's max MR
 * size is cut into equal pieces whose size is a multiple of split_align,
 * so a KV extent never straddles two MRs (and one SGE never needs two).
 * Key blob: u8 version, u8 devices, u8 pieces, u8 0, u32 0, u64 base,
 * u64 piece bytes, then u32 rkey[device][piece].
 */
static kvrt_status_t vb_reg(void *state, kvrt_xfer_bk_region_t *region, uint8_t *key,
                            uint32_t *key_bytes_out, char *why, size_t why_bytes)
{
    vb_backend_t *b = state;
    bool dmabuf = region->dmabuf_fd >= 0;
    uint64_t align = region->split_align ? region->split_align : 1;
    uint64_t piece = b->max_mr_size / align * align;
    if (piece == 0) {
        snprintf(why, why_bytes, "verbs: max MR size %llu is below the split alignment %llu",
                 (unsigned long long)b->max_mr_size, (unsigned long long)align);
        return KVRT_ERR_DEVICE;
    }
    if (piece > region->length)
        piece = region->length;
    uint64_t npieces = (region->length + piece - 1) / piece;
    if (npieces > VB_MAX_PIECES) {
        snprintf(why, why_bytes, "verbs: %llu bytes need %llu MRs of at most %llu (limit %d)",
                 (unsigned long long)region->length, (unsigned long long)npieces,
                 (unsigned long long)piece, VB_MAX_PIECES);
        return KVRT_ERR_DEVICE;
    }
    vb_region_t *r = calloc(1, sizeof(*r));
    if (!r)
        return KVRT_ERR_NO_MEMORY;
    r->ndev = b->ndev;
    r->npieces = (uint32_t)npieces;
    r->piece_bytes = piece;
    int access = IBV_ACCESS_LOCAL_WRITE;
    if (region->access & KVRT_XFER_REMOTE_READ)
        access |= IBV_ACCESS_REMOTE_READ;
    if (region->access & KVRT_XFER_REMOTE_WRITE)
        access |= IBV_ACCESS_REMOTE_WRITE;
    for (uint32_t d = 0; d < b->ndev; d++) {
        for (uint32_t p = 0; p < r->npieces; p++) {
            uint64_t off = p * piece;
            uint64_t len = region->length - off < piece ? region->length - off : piece;
            if (dmabuf)
                r->mr[d][p] = b->ops.reg_dmabuf_mr(
                    b->dev[d].pd, region->dmabuf_offset + off, len,
                    (uint64_t)(uintptr_t)(region->base + off), region->dmabuf_fd, access);
            else
                r->mr[d][p] = b->ops.reg_mr(b->dev[d].pd, region->base + off, len, access);
            if (!r->mr[d][p]) {
                int err = errno;
                snprintf(why, why_bytes, "verbs: %s on %s failed: %s",
                         dmabuf ? "ibv_reg_dmabuf_mr" : "ibv_reg_mr", b->dev[d].name,
                         strerror(err));
                dereg_pieces(b, r);
                free(r);
                return dmabuf && err == EOPNOTSUPP ? KVRT_ERR_UNSUPPORTED
                                                   : KVRT_ERR_DEVICE;
            }
        }
    }
    memset(key, 0, VB_KEY_HEADER);
    key[0] = 1;
    key[1] = (uint8_t)r->ndev;
    key[2] = (uint8_t)r->npieces;
    kvrt_store_le64(key + 8, (uint64_t)(uintptr_t)region->base);
    kvrt_store_le64(key + 16, piece);
    for (uint32_t d = 0; d < r->ndev; d++)
        for (uint32_t p = 0; p < r->npieces; p++)
            kvrt_store_le32(key + VB_KEY_HEADER + 4 * (d * r->npieces + p), r->mr[d][p]->rkey);
    *key_bytes_out = VB_KEY_HEADER + 4 * r->ndev * r->npieces;
    region->backend_data = r;
    return KVRT_OK;
}

static void vb_dereg(void *state, kvrt_xfer_bk_region_t *region)
{
    vb_region_t *r = region->backend_data;
    if (!r)
        return;
    dereg_pieces(state, r);
    free(r);
    region->backend_data = NULL;
}

const kvrt_xfer_backend_t kvrt_xfer_verbs_backend = {
    .version = KVRT_XFER_BACKEND_VERSION,
    .kind = KVRT_XFER_BACKEND_VERBS,
    .name = "verbs",
    .probe = vb_probe,
    .init = vb_init,
    .fini = vb_fini,
    .reg = vb_reg,
    .dereg = vb_dereg,
    .connect = vb_connect,
    .accept = vb_accept,
    .close = vb_close,
    .post = vb_post,
    .send_msg = vb_send_msg,
    .cancel = vb_cancel,
    .accept_waits = true,
};
