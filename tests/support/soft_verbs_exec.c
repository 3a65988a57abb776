/*
 * soft_verbs_exec.c - the software device's data path: posting send and
 * receive WRs, and the worker thread that executes them as an RC
 * requester/responder pair would, with every key, range, access, PSN and
 * MTU check a NIC makes. See soft_verbs.h for the behaviour promised.
 */
#include "soft_verbs_internal.h"

#include <errno.h>
#include <string.h>

/* WRs one QP may execute before the worker turns to the next QP, so one
 * busy QP cannot starve the others. */
#define SV_BURST 64

void sv_schedule(sv_qp_t *qp)
{
    if (qp->queued)
        return;
    qp->queued = true;
    qp->run_next = NULL;
    if (sv_fabric->run_tail)
        sv_fabric->run_tail->run_next = qp;
    else
        sv_fabric->run_head = qp;
    sv_fabric->run_tail = qp;
    pthread_cond_signal(&sv_fabric->work);
}

void sv_unschedule(sv_qp_t *qp)
{
    if (!qp->queued)
        return;
    sv_qp_t *prev = NULL;
    for (sv_qp_t *q = sv_fabric->run_head; q; prev = q, q = q->run_next) {
        if (q != qp)
            continue;
        if (prev)
            prev->run_next = q->run_next;
        else
            sv_fabric->run_head = q->run_next;
        if (sv_fabric->run_tail == q)
            sv_fabric->run_tail = prev;
        break;
    }
    qp->queued = false;
}

/* The error state: the worker flushes what is outstanding. */
void sv_qp_error(sv_qp_t *qp)
{
    qp->qp.state = IBV_QPS_ERR;
    sv_schedule(qp);
}

/* ---- posting ---------------------------------------------------------------------- */

static bool send_opcode_ok(enum ibv_wr_opcode op)
{
    return op == IBV_WR_RDMA_WRITE || op == IBV_WR_RDMA_WRITE_WITH_IMM ||
           op == IBV_WR_RDMA_READ || op == IBV_WR_SEND;
}

int sv_post_send(struct ibv_qp *ibqp, struct ibv_send_wr *wr,
                 struct ibv_send_wr **bad_wr)
{
    sv_qp_t *qp = (sv_qp_t *)(void *)ibqp;
    int rc = 0;
    uint32_t n = 0;
    pthread_mutex_lock(&sv_fabric->lock);
    for (; wr; wr = wr->next) {
        /* hardware accepts WRs in RTS, and in ERR (to flush them) */
        if (qp->qp.state != IBV_QPS_RTS && qp->qp.state != IBV_QPS_ERR)
            rc = EINVAL;
        else if (wr->num_sge < 0 || (uint32_t)wr->num_sge > qp->max_sge ||
                 !send_opcode_ok(wr->opcode))
            rc = EINVAL;
        else if (qp->post_seq - qp->freed_seq >= qp->max_send_wr)
            rc = ENOMEM;
        if (rc != 0) {
            *bad_wr = wr;
            break;
        }
        sv_swr_t *s = &qp->sq[qp->post_seq % qp->max_send_wr];
        s->wr_id = wr->wr_id;
        s->opcode = wr->opcode;
        s->signaled = (wr->send_flags & IBV_SEND_SIGNALED) != 0;
        s->remote_addr = wr->wr.rdma.remote_addr;
        s->rkey = wr->wr.rdma.rkey;
        s->imm = wr->imm_data;
        s->nsge = (uint32_t)wr->num_sge;
        memcpy(s->sge, wr->sg_list, sizeof(*s->sge) * s->nsge);
        qp->post_seq++;
        n++;
    }
    if (n > 0) {
        sv_fabric->stats.doorbells++;
        sv_fabric->stats.send_wrs += n;
        if (n > sv_fabric->stats.max_chain)
            sv_fabric->stats.max_chain = n;
        sv_schedule(qp);
    }
    pthread_mutex_unlock(&sv_fabric->lock);
    return rc;
}

int sv_post_recv(struct ibv_qp *ibqp, struct ibv_recv_wr *wr,
                 struct ibv_recv_wr **bad_wr)
{
    sv_qp_t *qp = (sv_qp_t *)(void *)ibqp;
    int rc = 0;
    pthread_mutex_lock(&sv_fabric->lock);
    for (; wr; wr = wr->next) {
        if (qp->qp.state == IBV_QPS_RESET || wr->num_sge < 0 ||
            (uint32_t)wr->num_sge > qp->max_sge)
            rc = EINVAL;
        else if (qp->rq_post - qp->rq_used >= qp->max_recv_wr)
            rc = ENOMEM;
        if (rc != 0) {
            *bad_wr = wr;
            break;
        }
        sv_rwr_t *r = &qp->rq[qp->rq_post % qp->max_recv_wr];
        r->wr_id = wr->wr_id;
        r->nsge = (uint32_t)wr->num_sge;
        memcpy(r->sge, wr->sg_list, sizeof(*r->sge) * r->nsge);
        qp->rq_post++;
    }
    if (qp->qp.state == IBV_QPS_ERR)
        sv_schedule(qp);
    pthread_mutex_unlock(&sv_fabric->lock);
    return rc;
}

/* ---- execution ------------------------------------------------------------------ */

/* The host bytes an SGE names, or NULL when its lkey does not allow it. */
static uint8_t *sge_host(const sv_qp_t *qp, const struct ibv_sge *sge, bool write)
{
    sv_mr_t *m = sv_mr_find(sge->lkey);
    if (!m || m->mr.pd != qp->qp.pd || sge->addr < m->iova ||
        sge->length > m->mr.length || sge->addr - m->iova > m->mr.length - sge->length ||
        (write && !(m->access & IBV_ACCESS_LOCAL_WRITE)))
        return NULL;
    return m->host + (sge->addr - m->iova);
}

/* The responder's bytes for [addr, addr + len) under rkey, or NULL. */
static uint8_t *remote_host(const sv_qp_t *r, uint64_t addr, uint32_t rkey,
                            uint64_t len, int need)
{
    sv_mr_t *m = sv_mr_find(rkey);
    if (!m || m->mr.pd != r->qp.pd || !(m->access & need) || !(r->access & need) ||
        addr < m->iova || len > m->mr.length || addr - m->iova > m->mr.length - len)
        return NULL;
    return m->host + (addr - m->iova);
}

/* The responder QP wired to `qp`, or NULL when packets would go nowhere:
 * no such QP, not ready, connected elsewhere, or PSN/MTU disagreeing. */
static sv_qp_t *responder(const sv_qp_t *qp)
{
    if (qp->dev->dead || !qp->dest_dev || qp->dest_dev->dead)
        return NULL;
    sv_qp_t *r = sv_qp_find(qp->dest_qpn);
    if (!r || r->dev != qp->dest_dev ||
        (r->qp.state != IBV_QPS_RTR && r->qp.state != IBV_QPS_RTS) ||
        r->dest_qpn != qp->qp.qp_num || r->dest_dev != qp->dev ||
        r->path_mtu != qp->path_mtu || r->rq_psn != qp->sq_psn)
        return NULL;
    return r;
}

static void recv_cqe(sv_qp_t *r, uint64_t wr_id, enum ibv_wc_status status,
                     enum ibv_wc_opcode opcode, uint32_t bytes, const sv_swr_t *w)
{
    struct ibv_wc wc = {.wr_id = wr_id, .status = status, .opcode = opcode,
                        .byte_len = bytes, .qp_num = r->qp.qp_num};
    if (w && w->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
        wc.wc_flags = IBV_WC_WITH_IMM;
        wc.imm_data = w->imm;
    }
    sv_cq_push(r->rcq, &wc, NULL, 0);
    sv_fabric->stats.recv_cqes++;
}

/* SEND: scatters the requester's gather list into the responder's next
 * receive WR. */
static enum ibv_wc_status exec_send(sv_qp_t *qp, sv_qp_t *r, const sv_swr_t *w,
                                    uint8_t **src, uint64_t len)
{
    if (r->rq_used == r->rq_post)
        return IBV_WC_RNR_RETRY_EXC_ERR;
    sv_rwr_t *rw = &r->rq[r->rq_used++ % r->max_recv_wr];
    uint64_t room = 0;
    for (uint32_t i = 0; i < rw->nsge; i++) {
        if (!sge_host(r, &rw->sge[i], true)) {
            recv_cqe(r, rw->wr_id, IBV_WC_LOC_PROT_ERR, IBV_WC_RECV, 0, NULL);
            sv_qp_error(r);
            return IBV_WC_REM_OP_ERR;
        }
        room += rw->sge[i].length;
    }
    if (room < len) {
        recv_cqe(r, rw->wr_id, IBV_WC_LOC_LEN_ERR, IBV_WC_RECV, 0, NULL);
        sv_qp_error(r);
        return IBV_WC_REM_INV_REQ_ERR;
    }
    uint32_t d = 0;
    uint64_t doff = 0;
    for (uint32_t i = 0; i < w->nsge; i++) {
        uint64_t left = w->sge[i].length, soff = 0;
        while (left > 0) {
            uint64_t n = rw->sge[d].length - doff;
            if (n > left)
                n = left;
            memmove(sge_host(r, &rw->sge[d], true) + doff, src[i] + soff, n);
            left -= n;
            soff += n;
            doff += n;
            if (doff == rw->sge[d].length) {
                d++;
                doff = 0;
            }
        }
    }
    recv_cqe(r, rw->wr_id, IBV_WC_SUCCESS, IBV_WC_RECV, (uint32_t)len, w);
    return IBV_WC_SUCCESS;
}

static enum ibv_wc_status execute(sv_qp_t *qp, const sv_swr_t *w, uint32_t *bytes_out)
{
    sv_qp_t *r = responder(qp);
    if (!r)
        return IBV_WC_RETRY_EXC_ERR;
    bool is_read = w->opcode == IBV_WR_RDMA_READ;
    uint8_t *local[64];
    uint64_t len = 0;
    if (w->nsge > 64)
        return IBV_WC_LOC_LEN_ERR;
    for (uint32_t i = 0; i < w->nsge; i++) {
        local[i] = sge_host(qp, &w->sge[i], is_read);
        if (!local[i])
            return IBV_WC_LOC_PROT_ERR;
        len += w->sge[i].length;
    }
    *bytes_out = (uint32_t)len;
    sv_fabric->stats.bytes += len;
    if (w->opcode == IBV_WR_SEND)
        return exec_send(qp, r, w, local, len);

    int need = is_read ? IBV_ACCESS_REMOTE_READ : IBV_ACCESS_REMOTE_WRITE;
    uint8_t *remote = remote_host(r, w->remote_addr, w->rkey, len, need);
    if (!remote) {
        /* the responder NAKs and both ends of the connection go down */
        sv_fabric->stats.rem_access_errors++;
        sv_qp_error(r);
        return IBV_WC_REM_ACCESS_ERR;
    }
    if (w->opcode == IBV_WR_RDMA_WRITE_WITH_IMM && r->rq_used == r->rq_post)
        return IBV_WC_RNR_RETRY_EXC_ERR;
    uint64_t off = 0;
    for (uint32_t i = 0; i < w->nsge; i++) {
        if (is_read)
            memmove(local[i], remote + off, w->sge[i].length);
        else
            memmove(remote + off, local[i], w->sge[i].length);
        off += w->sge[i].length;
    }
    sv_fabric->stats.device_bytes[qp->dev->index] += len;
    if (!qp->carried_data) {
        qp->carried_data = true;
        sv_fabric->stats.qps_with_data++;
    }
    if (w->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
        sv_rwr_t *rw = &r->rq[r->rq_used++ % r->max_recv_wr];
        recv_cqe(r, rw->wr_id, IBV_WC_SUCCESS, IBV_WC_RECV_RDMA_WITH_IMM,
                 (uint32_t)len, w);
    }
    return IBV_WC_SUCCESS;
}

static enum ibv_wc_opcode wc_opcode(enum ibv_wr_opcode op)
{
    switch (op) {
    case IBV_WR_RDMA_READ:
        return IBV_WC_RDMA_READ;
    case IBV_WR_SEND:
        return IBV_WC_SEND;
    default:
        return IBV_WC_RDMA_WRITE;
    }
}

static void send_cqe(sv_qp_t *qp, const sv_swr_t *w, uint64_t seq,
                     enum ibv_wc_status status, uint32_t bytes)
{
    struct ibv_wc wc = {.wr_id = w->wr_id, .status = status,
                        .opcode = wc_opcode(w->opcode), .byte_len = bytes,
                        .qp_num = qp->qp.qp_num};
    sv_cq_push(qp->scq, &wc, qp, seq);
    sv_fabric->stats.send_cqes++;
}

/* Every outstanding WR of a QP in the error state completes with a flush
 * error, signaled or not, and so do its posted receives. */
static void flush(sv_qp_t *qp)
{
    while (qp->exec_seq < qp->post_seq) {
        uint64_t seq = qp->exec_seq++;
        send_cqe(qp, &qp->sq[seq % qp->max_send_wr], seq, IBV_WC_WR_FLUSH_ERR, 0);
    }
    while (qp->rq_used < qp->rq_post) {
        sv_rwr_t *rw = &qp->rq[qp->rq_used++ % qp->max_recv_wr];
        recv_cqe(qp, rw->wr_id, IBV_WC_WR_FLUSH_ERR, IBV_WC_RECV, 0, NULL);
    }
}

static void run_qp(sv_qp_t *qp)
{
    if (qp->qp.state == IBV_QPS_ERR) {
        flush(qp);
        return;
    }
    if (qp->qp.state != IBV_QPS_RTS)
        return;
    for (int k = 0; k < SV_BURST && qp->exec_seq < qp->post_seq; k++) {
        uint64_t seq = qp->exec_seq++;
        const sv_swr_t *w = &qp->sq[seq % qp->max_send_wr];
        uint32_t bytes = 0;
        enum ibv_wc_status st = execute(qp, w, &bytes);
        if (st != IBV_WC_SUCCESS) {
            send_cqe(qp, w, seq, st, 0);
            sv_qp_error(qp);
            return;
        }
        if (w->signaled)
            send_cqe(qp, w, seq, IBV_WC_SUCCESS, bytes);
    }
    if (qp->exec_seq < qp->post_seq)
        sv_schedule(qp);
}

void *sv_worker_main(void *arg)
{
    sv_fabric_t *f = arg;
    pthread_mutex_lock(&f->lock);
    while (!f->stopping) {
        if (f->paused || !f->run_head) {
            pthread_cond_wait(&f->work, &f->lock);
            continue;
        }
        sv_qp_t *qp = f->run_head;
        f->run_head = qp->run_next;
        if (!f->run_head)
            f->run_tail = NULL;
        qp->queued = false;
        run_qp(qp);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}
