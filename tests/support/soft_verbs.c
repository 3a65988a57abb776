/*
 * soft_verbs.c - the software RDMA device: devices, protection domains,
 * memory regions, completion queues and channels, and the RC queue pair
 * state machine. WR posting and execution live in soft_verbs_exec.c.
 */
#include "soft_verbs_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

sv_fabric_t *sv_fabric;

#define LOCK() pthread_mutex_lock(&sv_fabric->lock)
#define UNLOCK() pthread_mutex_unlock(&sv_fabric->lock)

/* ---- fabric --------------------------------------------------------------- */

int soft_verbs_start(const soft_verbs_config_t *config)
{
    if (sv_fabric)
        return EBUSY;
    soft_verbs_config_t c = config ? *config : (soft_verbs_config_t){0};
    if (c.devices == 0)
        c.devices = 1;
    if (c.devices > SOFT_VERBS_MAX_DEVICES)
        return EINVAL;
    if (c.max_mr_size == 0)
        c.max_mr_size = 1ull << 40;
    if (c.max_sge == 0)
        c.max_sge = 16;
    if (c.max_qp_wr == 0)
        c.max_qp_wr = 4096;
    if (c.max_cqe == 0)
        c.max_cqe = 65536;
    if (c.max_qp_rd_atom == 0)
        c.max_qp_rd_atom = 16;
    sv_fabric_t *f = calloc(1, sizeof(*f));
    if (!f)
        return ENOMEM;
    f->config = c;
    f->next_qpn = 0x11;
    f->next_key = 0x1000;
    for (uint32_t i = 0; i < c.devices; i++) {
        sv_device_t *d = &f->devices[i];
        d->index = i;
        d->mtu = c.active_mtu[i] ? c.active_mtu[i] : IBV_MTU_4096;
        snprintf(d->dev.name, sizeof(d->dev.name), "soft%u", i);
        d->dev.node_type = IBV_NODE_CA;
        d->dev.transport_type = IBV_TRANSPORT_IB;
        d->gid[0].raw[0] = 0xfe;
        d->gid[0].raw[1] = 0x80;
        d->gid[0].raw[15] = (uint8_t)(i + 1);
        /* ::ffff:127.0.0.<i+1>, the shape a RoCE v2 IPv4 GID has */
        d->gid[1].raw[10] = 0xff;
        d->gid[1].raw[11] = 0xff;
        d->gid[1].raw[12] = 127;
        d->gid[1].raw[15] = (uint8_t)(i + 1);
    }
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->work, NULL);
    sv_fabric = f;
    if (pthread_create(&f->worker, NULL, sv_worker_main, f) != 0) {
        sv_fabric = NULL;
        pthread_cond_destroy(&f->work);
        pthread_mutex_destroy(&f->lock);
        free(f);
        return ENOMEM;
    }
    return 0;
}

void soft_verbs_stop(void)
{
    sv_fabric_t *f = sv_fabric;
    if (!f)
        return;
    pthread_mutex_lock(&f->lock);
    f->stopping = true;
    pthread_cond_broadcast(&f->work);
    pthread_mutex_unlock(&f->lock);
    pthread_join(f->worker, NULL);
    sv_fabric = NULL;
    pthread_cond_destroy(&f->work);
    pthread_mutex_destroy(&f->lock);
    free(f);
}

void soft_verbs_get_stats(soft_verbs_stats_t *out)
{
    LOCK();
    *out = sv_fabric->stats;
    UNLOCK();
}

uint32_t soft_verbs_mrs(soft_verbs_mr_info_t *out, uint32_t capacity)
{
    uint32_t n = 0;
    LOCK();
    for (sv_mr_t *m = sv_fabric->mrs; m; m = m->next, n++)
        if (n < capacity)
            out[n] = (soft_verbs_mr_info_t){m->iova, m->mr.length, m->access};
    UNLOCK();
    return n;
}

enum ibv_mtu soft_verbs_qp_path_mtu(uint32_t qp_num)
{
    LOCK();
    sv_qp_t *qp = sv_qp_find(qp_num);
    enum ibv_mtu mtu = qp ? qp->path_mtu : 0;
    UNLOCK();
    return mtu;
}

void soft_verbs_pause(bool paused)
{
    LOCK();
    sv_fabric->paused = paused;
    pthread_cond_broadcast(&sv_fabric->work);
    UNLOCK();
}

int soft_verbs_kill_qp(uint32_t qp_num)
{
    LOCK();
    sv_qp_t *qp = sv_qp_find(qp_num);
    if (qp)
        sv_qp_error(qp);
    UNLOCK();
    return qp ? 0 : ENOENT;
}

int soft_verbs_kill_device(uint32_t index)
{
    LOCK();
    int rc = ENOENT;
    if (index < sv_fabric->config.devices) {
        sv_fabric->devices[index].dead = true;
        for (sv_qp_t *qp = sv_fabric->qps; qp; qp = qp->next)
            if (qp->dev->index == index)
                sv_qp_error(qp);
        rc = 0;
    }
    UNLOCK();
    return rc;
}

/* ---- devices and contexts -------------------------------------------------- */

static struct ibv_device **sv_get_device_list(int *num)
{
    if (!sv_fabric) {
        errno = ENOSYS;
        return NULL;
    }
    uint32_t n = sv_fabric->config.devices;
    struct ibv_device **list = calloc(n + 1, sizeof(*list));
    if (!list) {
        errno = ENOMEM;
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++)
        list[i] = &sv_fabric->devices[i].dev;
    if (num)
        *num = (int)n;
    return list;
}

static void sv_free_device_list(struct ibv_device **list) { free(list); }

static const char *sv_get_device_name(struct ibv_device *device) { return device->name; }

static struct ibv_context *sv_open_device(struct ibv_device *device)
{
    sv_context_t *c = calloc(1, sizeof(*c));
    if (!c) {
        errno = ENOMEM;
        return NULL;
    }
    c->dev = (sv_device_t *)(void *)device;
    c->ctx.device = device;
    c->ctx.cmd_fd = -1;
    c->ctx.async_fd = -1;
    c->ctx.num_comp_vectors = 1;
    LOCK();
    sv_fabric->stats.live_contexts++;
    UNLOCK();
    return &c->ctx;
}

static int sv_close_device(struct ibv_context *context)
{
    LOCK();
    sv_fabric->stats.live_contexts--;
    UNLOCK();
    free(context);
    return 0;
}

static sv_device_t *ctx_dev(struct ibv_context *context)
{
    return ((sv_context_t *)(void *)context)->dev;
}

static int sv_query_device(struct ibv_context *context, struct ibv_device_attr *a)
{
    const soft_verbs_config_t *c = &sv_fabric->config;
    memset(a, 0, sizeof(*a));
    snprintf(a->fw_ver, sizeof(a->fw_ver), "kvrt-soft-1");
    a->max_mr_size = c->max_mr_size;
    a->page_size_cap = 4096;
    a->max_qp = 4096;
    a->max_qp_wr = (int)c->max_qp_wr;
    a->max_sge = (int)c->max_sge;
    a->max_cq = 4096;
    a->max_cqe = (int)c->max_cqe;
    a->max_mr = 1 << 20;
    a->max_pd = 1024;
    a->max_qp_rd_atom = (int)c->max_qp_rd_atom;
    a->max_qp_init_rd_atom = (int)c->max_qp_rd_atom;
    a->phys_port_cnt = 1;
    return 0;
}

static int sv_query_port(struct ibv_context *context, uint8_t port,
                         struct ibv_port_attr *a)
{
    if (port != 1)
        return EINVAL;
    sv_device_t *d = ctx_dev(context);
    memset(a, 0, sizeof(*a));
    a->state = d->dead ? IBV_PORT_DOWN : IBV_PORT_ACTIVE;
    a->max_mtu = IBV_MTU_4096;
    a->active_mtu = d->mtu;
    a->gid_tbl_len = 2;
    a->link_layer = IBV_LINK_LAYER_ETHERNET;
    a->max_msg_sz = 1u << 31;
    return 0;
}

static int sv_query_gid_ex(struct ibv_context *context, uint32_t port,
                           uint32_t index, struct ibv_gid_entry *e)
{
    if (port != 1 || index > 1)
        return ENODATA;
    sv_device_t *d = ctx_dev(context);
    memset(e, 0, sizeof(*e));
    e->gid = d->gid[index];
    e->gid_index = index;
    e->port_num = port;
    e->gid_type = index == 0 ? IBV_GID_TYPE_ROCE_V1 : IBV_GID_TYPE_ROCE_V2;
    return 0;
}

/* ---- protection domains and memory regions ------------------------------- */

static struct ibv_pd *sv_alloc_pd(struct ibv_context *context)
{
    sv_pd_t *pd = calloc(1, sizeof(*pd));
    if (!pd) {
        errno = ENOMEM;
        return NULL;
    }
    pd->pd.context = context;
    LOCK();
    sv_fabric->stats.live_pds++;
    UNLOCK();
    return &pd->pd;
}

static int sv_dealloc_pd(struct ibv_pd *ibpd)
{
    sv_pd_t *pd = (sv_pd_t *)(void *)ibpd;
    LOCK();
    int rc = pd->users ? EBUSY : 0;
    if (rc == 0)
        sv_fabric->stats.live_pds--;
    UNLOCK();
    if (rc == 0)
        free(pd);
    return rc;
}

static struct ibv_mr *sv_reg_mr(struct ibv_pd *ibpd, void *addr, size_t length,
                                int access)
{
    const int known = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
                      IBV_ACCESS_REMOTE_READ;
    /* as on hardware: remote write needs local write */
    if (length == 0 || (access & ~known) ||
        ((access & IBV_ACCESS_REMOTE_WRITE) && !(access & IBV_ACCESS_LOCAL_WRITE))) {
        errno = EINVAL;
        return NULL;
    }
    if (length > sv_fabric->config.max_mr_size) {
        errno = EINVAL;
        return NULL;
    }
    sv_mr_t *m = calloc(1, sizeof(*m));
    if (!m) {
        errno = ENOMEM;
        return NULL;
    }
    sv_pd_t *pd = (sv_pd_t *)(void *)ibpd;
    m->mr.context = ibpd->context;
    m->mr.pd = ibpd;
    m->mr.addr = addr;
    m->mr.length = length;
    m->access = access;
    m->iova = (uint64_t)(uintptr_t)addr;
    m->host = addr;
    LOCK();
    /* keys advance by an odd stride so neighbouring MRs' keys differ in
     * many bits and a guessed or off-by-one key names nothing */
    sv_fabric->next_key += 0x1d3;
    m->mr.lkey = m->mr.rkey = sv_fabric->next_key;
    m->next = sv_fabric->mrs;
    sv_fabric->mrs = m;
    pd->users++;
    sv_fabric->stats.live_mrs++;
    UNLOCK();
    return &m->mr;
}

/* dmabuf memory needs a real device to map it; the software device says no
 * the way a device without dmabuf support does. */
static struct ibv_mr *sv_reg_dmabuf_mr(struct ibv_pd *pd, uint64_t offset,
                                       size_t length, uint64_t iova, int fd,
                                       int access)
{
    errno = EOPNOTSUPP;
    return NULL;
}

static int sv_dereg_mr(struct ibv_mr *ibmr)
{
    sv_mr_t *m = (sv_mr_t *)(void *)ibmr;
    LOCK();
    for (sv_mr_t **pp = &sv_fabric->mrs; *pp; pp = &(*pp)->next)
        if (*pp == m) {
            *pp = m->next;
            break;
        }
    ((sv_pd_t *)(void *)ibmr->pd)->users--;
    sv_fabric->stats.live_mrs--;
    UNLOCK();
    free(m);
    return 0;
}

sv_mr_t *sv_mr_find(uint32_t key)
{
    for (sv_mr_t *m = sv_fabric->mrs; m; m = m->next)
        if (m->mr.lkey == key)
            return m;
    return NULL;
}

/* ---- completion channels and queues ---------------------------------------- */

static struct ibv_comp_channel *sv_create_comp_channel(struct ibv_context *context)
{
    sv_channel_t *ch = calloc(1, sizeof(*ch));
    if (!ch) {
        errno = ENOMEM;
        return NULL;
    }
    ch->ch.context = context;
    ch->ch.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ch->ch.fd < 0) {
        free(ch);
        return NULL;
    }
    LOCK();
    sv_fabric->stats.live_channels++;
    UNLOCK();
    return &ch->ch;
}

static int sv_destroy_comp_channel(struct ibv_comp_channel *ibch)
{
    sv_channel_t *ch = (sv_channel_t *)(void *)ibch;
    LOCK();
    int rc = ch->cqs ? EBUSY : 0;
    if (rc == 0)
        sv_fabric->stats.live_channels--;
    UNLOCK();
    if (rc == 0) {
        close(ch->ch.fd);
        free(ch);
    }
    return rc;
}

static struct ibv_cq *sv_create_cq(struct ibv_context *context, int cqe,
                                   void *cq_context, struct ibv_comp_channel *channel,
                                   int comp_vector)
{
    if (cqe < 1 || (uint32_t)cqe > sv_fabric->config.max_cqe) {
        errno = EINVAL;
        return NULL;
    }
    sv_cq_t *cq = calloc(1, sizeof(*cq));
    sv_cqe_t *ring = calloc((size_t)cqe, sizeof(*ring));
    if (!cq || !ring) {
        free(cq);
        free(ring);
        errno = ENOMEM;
        return NULL;
    }
    cq->cq.context = context;
    cq->cq.channel = channel;
    cq->cq.cq_context = cq_context;
    cq->cq.cqe = cqe;
    cq->channel = (sv_channel_t *)(void *)channel;
    cq->ring = ring;
    cq->capacity = (uint32_t)cqe;
    LOCK();
    if (cq->channel)
        cq->channel->cqs++;
    sv_fabric->stats.live_cqs++;
    UNLOCK();
    return &cq->cq;
}

static int sv_destroy_cq(struct ibv_cq *ibcq)
{
    sv_cq_t *cq = (sv_cq_t *)(void *)ibcq;
    LOCK();
    int rc = cq->qps ? EBUSY : 0;
    if (rc == 0) {
        /* pending events of this CQ vanish with it, as in the kernel */
        if (cq->channel) {
            sv_channel_t *ch = cq->channel;
            sv_cq_t **pp = &ch->events_head;
            ch->events_tail = NULL;
            while (*pp) {
                if (*pp == cq)
                    *pp = cq->event_next;
                else {
                    ch->events_tail = *pp;
                    pp = &(*pp)->event_next;
                }
            }
            ch->cqs--;
        }
        sv_fabric->stats.live_cqs--;
    }
    UNLOCK();
    if (rc == 0) {
        free(cq->ring);
        free(cq);
    }
    return rc;
}

static int sv_req_notify_cq(struct ibv_cq *ibcq, int solicited_only)
{
    sv_cq_t *cq = (sv_cq_t *)(void *)ibcq;
    if (!cq->channel)
        return EINVAL;
    LOCK();
    cq->armed = true;
    UNLOCK();
    return 0;
}

static int sv_get_cq_event(struct ibv_comp_channel *ibch, struct ibv_cq **cq_out,
                           void **cq_context)
{
    sv_channel_t *ch = (sv_channel_t *)(void *)ibch;
    LOCK();
    sv_cq_t *cq = ch->events_head;
    if (cq) {
        if (--cq->events == 0) {
            ch->events_head = cq->event_next;
            if (!ch->events_head)
                ch->events_tail = NULL;
        }
    }
    if (!ch->events_head) {
        uint64_t v;
        /* reset readiness; nothing is lost, events are counted above */
        if (read(ch->ch.fd, &v, sizeof(v)) < 0 && errno != EAGAIN) {
            /* an eventfd read only fails with EAGAIN */
        }
    }
    UNLOCK();
    if (!cq) {
        errno = EAGAIN;
        return -1;
    }
    *cq_out = &cq->cq;
    *cq_context = cq->cq.cq_context;
    return 0;
}

static void sv_ack_cq_events(struct ibv_cq *cq, unsigned int nevents) {}

/* Adds a completion; fires the channel if the CQ is armed. Lock held. */
void sv_cq_push(sv_cq_t *cq, const struct ibv_wc *wc, sv_qp_t *qp, uint64_t seq)
{
    if (cq->count == cq->capacity) {
        sv_fabric->stats.cq_overflows++;
        return;
    }
    sv_cqe_t *e = &cq->ring[(cq->head + cq->count) % cq->capacity];
    e->wc = *wc;
    e->qp = qp;
    e->seq = seq;
    cq->count++;
    if (cq->armed && cq->channel) {
        sv_channel_t *ch = cq->channel;
        cq->armed = false;
        if (cq->events++ == 0) {
            cq->event_next = NULL;
            if (ch->events_tail)
                ch->events_tail->event_next = cq;
            else
                ch->events_head = cq;
            ch->events_tail = cq;
        }
        uint64_t one = 1;
        if (write(ch->ch.fd, &one, sizeof(one)) < 0) {
            /* cannot overflow: the counter is reset on every drain */
        }
    }
}

static int sv_poll_cq(struct ibv_cq *ibcq, int n, struct ibv_wc *wc)
{
    sv_cq_t *cq = (sv_cq_t *)(void *)ibcq;
    int got = 0;
    LOCK();
    while (got < n && cq->count > 0) {
        sv_cqe_t *e = &cq->ring[cq->head];
        wc[got++] = e->wc;
        /* polling a send completion frees its slot and every slot before
         * it: this is what makes unsignaled WRs need a signaled successor */
        if (e->qp && e->seq + 1 > e->qp->freed_seq)
            e->qp->freed_seq = e->seq + 1;
        cq->head = (cq->head + 1) % cq->capacity;
        cq->count--;
    }
    UNLOCK();
    return got;
}

/* ---- queue pairs ---------------------------------------------------------------- */

sv_qp_t *sv_qp_find(uint32_t qp_num)
{
    for (sv_qp_t *qp = sv_fabric->qps; qp; qp = qp->next)
        if (qp->qp.qp_num == qp_num)
            return qp;
    return NULL;
}

static struct ibv_qp *sv_create_qp(struct ibv_pd *ibpd, struct ibv_qp_init_attr *a)
{
    const soft_verbs_config_t *c = &sv_fabric->config;
    if (a->qp_type != IBV_QPT_RC || !a->send_cq || !a->recv_cq || a->srq ||
        a->cap.max_send_wr == 0 || a->cap.max_send_wr > c->max_qp_wr ||
        a->cap.max_recv_wr > c->max_qp_wr || a->cap.max_send_sge > c->max_sge ||
        a->cap.max_recv_sge > c->max_sge || a->cap.max_send_sge == 0) {
        errno = EINVAL;
        return NULL;
    }
    uint32_t sge = a->cap.max_send_sge > a->cap.max_recv_sge ? a->cap.max_send_sge
                                                             : a->cap.max_recv_sge;
    uint32_t rwr = a->cap.max_recv_wr ? a->cap.max_recv_wr : 1;
    sv_qp_t *qp = calloc(1, sizeof(*qp));
    sv_swr_t *sq = calloc(a->cap.max_send_wr, sizeof(*sq));
    struct ibv_sge *sq_sge = calloc((size_t)a->cap.max_send_wr * sge, sizeof(*sq_sge));
    sv_rwr_t *rq = calloc(rwr, sizeof(*rq));
    struct ibv_sge *rq_sge = calloc((size_t)rwr * sge, sizeof(*rq_sge));
    if (!qp || !sq || !sq_sge || !rq || !rq_sge) {
        free(qp);
        free(sq);
        free(sq_sge);
        free(rq);
        free(rq_sge);
        errno = ENOMEM;
        return NULL;
    }
    for (uint32_t i = 0; i < a->cap.max_send_wr; i++)
        sq[i].sge = &sq_sge[(size_t)i * sge];
    for (uint32_t i = 0; i < rwr; i++)
        rq[i].sge = &rq_sge[(size_t)i * sge];
    qp->sq = sq;
    qp->sq_sge = sq_sge;
    qp->rq = rq;
    qp->rq_sge = rq_sge;
    qp->max_send_wr = a->cap.max_send_wr;
    qp->max_recv_wr = a->cap.max_recv_wr;
    qp->max_sge = sge;
    qp->dev = ctx_dev(ibpd->context);
    qp->pd = (sv_pd_t *)(void *)ibpd;
    qp->scq = (sv_cq_t *)(void *)a->send_cq;
    qp->rcq = (sv_cq_t *)(void *)a->recv_cq;
    qp->qp.context = ibpd->context;
    qp->qp.qp_context = a->qp_context;
    qp->qp.pd = ibpd;
    qp->qp.send_cq = a->send_cq;
    qp->qp.recv_cq = a->recv_cq;
    qp->qp.qp_type = IBV_QPT_RC;
    qp->qp.state = IBV_QPS_RESET;
    LOCK();
    qp->qp.qp_num = sv_fabric->next_qpn++;
    qp->next = sv_fabric->qps;
    sv_fabric->qps = qp;
    qp->pd->users++;
    qp->scq->qps++;
    qp->rcq->qps++;
    sv_fabric->stats.live_qps++;
    UNLOCK();
    return &qp->qp;
}

/* The attribute bits each transition requires and tolerates (IB spec
 * table "QP state transition properties", the subset RC uses). */
#define M_INIT_REQ (IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)
#define M_RTR_REQ                                                                \
    (IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |              \
     IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)
#define M_RTR_OPT (IBV_QP_ACCESS_FLAGS | IBV_QP_PKEY_INDEX)
#define M_RTS_REQ                                                                \
    (IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |          \
     IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC)
#define M_RTS_OPT (IBV_QP_ACCESS_FLAGS | IBV_QP_MIN_RNR_TIMER)

static bool mask_ok(int mask, int required, int optional)
{
    return (mask & required) == required && (mask & ~(required | optional)) == 0;
}

static sv_device_t *device_of_gid(const union ibv_gid *gid)
{
    for (uint32_t i = 0; i < sv_fabric->config.devices; i++)
        for (int g = 0; g < 2; g++)
            if (memcmp(sv_fabric->devices[i].gid[g].raw, gid->raw, 16) == 0)
                return &sv_fabric->devices[i];
    return NULL;
}

static int to_rtr(sv_qp_t *qp, const struct ibv_qp_attr *a)
{
    if (a->path_mtu < IBV_MTU_256 || a->path_mtu > qp->dev->mtu ||
        a->max_dest_rd_atomic > sv_fabric->config.max_qp_rd_atom ||
        a->rq_psn > 0xffffff || !a->ah_attr.is_global ||
        a->ah_attr.grh.sgid_index > 1 || a->ah_attr.port_num != qp->port)
        return EINVAL;
    sv_device_t *dest = device_of_gid(&a->ah_attr.grh.dgid);
    if (!dest)
        return EINVAL;
    qp->dest_dev = dest;
    qp->dest_qpn = a->dest_qp_num;
    qp->rq_psn = a->rq_psn;
    qp->path_mtu = a->path_mtu;
    if (a->path_mtu > sv_fabric->stats.path_mtu_max)
        sv_fabric->stats.path_mtu_max = a->path_mtu;
    return 0;
}

static int sv_modify_qp(struct ibv_qp *ibqp, struct ibv_qp_attr *a, int mask)
{
    sv_qp_t *qp = (sv_qp_t *)(void *)ibqp;
    if (!(mask & IBV_QP_STATE))
        return EINVAL;
    int rc = 0;
    LOCK();
    enum ibv_qp_state cur = qp->qp.state, next = a->qp_state;
    if (next == IBV_QPS_ERR) {
        sv_qp_error(qp);
    } else if (next == IBV_QPS_RESET) {
        sv_unschedule(qp);
        qp->exec_seq = qp->freed_seq = qp->post_seq;
        qp->rq_used = qp->rq_post;
        qp->qp.state = IBV_QPS_RESET;
    } else if (cur == IBV_QPS_RESET && next == IBV_QPS_INIT) {
        if (!mask_ok(mask, M_INIT_REQ, 0) || a->port_num != 1 || a->pkey_index != 0)
            rc = EINVAL;
        else {
            qp->port = a->port_num;
            qp->access = a->qp_access_flags;
            qp->qp.state = IBV_QPS_INIT;
        }
    } else if (cur == IBV_QPS_INIT && next == IBV_QPS_RTR) {
        rc = mask_ok(mask, M_RTR_REQ, M_RTR_OPT) ? to_rtr(qp, a) : EINVAL;
        if (rc == 0)
            qp->qp.state = IBV_QPS_RTR;
    } else if (cur == IBV_QPS_RTR && next == IBV_QPS_RTS) {
        if (!mask_ok(mask, M_RTS_REQ, M_RTS_OPT) || a->sq_psn > 0xffffff ||
            a->retry_cnt > 7 || a->rnr_retry > 7 || a->timeout > 31 ||
            a->max_rd_atomic > sv_fabric->config.max_qp_rd_atom)
            rc = EINVAL;
        else {
            qp->sq_psn = a->sq_psn;
            qp->qp.state = IBV_QPS_RTS;
        }
    } else {
        rc = EINVAL; /* skips a state, goes backwards, or leaves ERR */
    }
    UNLOCK();
    return rc;
}

static int sv_destroy_qp(struct ibv_qp *ibqp)
{
    sv_qp_t *qp = (sv_qp_t *)(void *)ibqp;
    LOCK();
    sv_unschedule(qp);
    for (sv_qp_t **pp = &sv_fabric->qps; *pp; pp = &(*pp)->next)
        if (*pp == qp) {
            *pp = qp->next;
            break;
        }
    /* completions already queued stay pollable but no longer free slots */
    for (uint32_t i = 0; i < qp->scq->count; i++) {
        sv_cqe_t *e = &qp->scq->ring[(qp->scq->head + i) % qp->scq->capacity];
        if (e->qp == qp)
            e->qp = NULL;
    }
    qp->pd->users--;
    qp->scq->qps--;
    qp->rcq->qps--;
    sv_fabric->stats.live_qps--;
    UNLOCK();
    free(qp->sq);
    free(qp->sq_sge);
    free(qp->rq);
    free(qp->rq_sge);
    free(qp);
    return 0;
}

static const kvrt_verbs_ops_t sv_ops = {
    .name = "soft",
    .get_device_list = sv_get_device_list,
    .free_device_list = sv_free_device_list,
    .get_device_name = sv_get_device_name,
    .open_device = sv_open_device,
    .close_device = sv_close_device,
    .query_device = sv_query_device,
    .query_port = sv_query_port,
    .query_gid_ex = sv_query_gid_ex,
    .alloc_pd = sv_alloc_pd,
    .dealloc_pd = sv_dealloc_pd,
    .reg_mr = sv_reg_mr,
    .reg_dmabuf_mr = sv_reg_dmabuf_mr,
    .dereg_mr = sv_dereg_mr,
    .create_comp_channel = sv_create_comp_channel,
    .destroy_comp_channel = sv_destroy_comp_channel,
    .create_cq = sv_create_cq,
    .destroy_cq = sv_destroy_cq,
    .req_notify_cq = sv_req_notify_cq,
    .get_cq_event = sv_get_cq_event,
    .ack_cq_events = sv_ack_cq_events,
    .poll_cq = sv_poll_cq,
    .create_qp = sv_create_qp,
    .modify_qp = sv_modify_qp,
    .destroy_qp = sv_destroy_qp,
    .post_send = sv_post_send,
    .post_recv = sv_post_recv,
};

const kvrt_verbs_ops_t *soft_verbs_ops(void) { return &sv_ops; }
