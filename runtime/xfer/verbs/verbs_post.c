/*
 * verbs_post.c - the verbs data path: a batch of one-sided operations
 * becomes RDMA WRITE/READ work requests, striped over the connection's
 * queue pairs and posted as chains with one doorbell each; completions
 * retire them in order.
 *
 * Building WRs. Operations are cut where a local or remote MR piece ends
 * and at wr_max_bytes (the striping unit); pieces that continue the
 * previous WR's remote range on the same rkey join it as further SGEs
 * (merged into the last SGE when locally contiguous too), up to the
 * device's max_sge. So a run of contiguous KV blocks becomes one WR with
 * as few SGEs as its local layout allows. Each new WR goes to the next QP
 * in turn.
 *
 * Signaling and send-queue accounting. A send-queue slot is only free once
 * a completion at or after it has been polled. Every chain's last WR is
 * signaled (and every signal_every-th WR, and each batch's last WR on a
 * QP), so every posted WR has a signaled WR at or after it; a chain never
 * holds more WRs than the queue has free slots, and WRs that do not fit
 * wait in the QP's queue until completions free slots.
 *
 * Errors. RC completes in order, so a completion for WR s retires every
 * WR up to s; an error completion (any status but success) fails the
 * connection: all its QPs go to the error state, the device flushes what
 * was posted (each flushed WR completes, retiring it), queued WRs are
 * dropped, and each batch completes once its last WR is retired, so no
 * batch is reported done while the NIC may still touch its memory.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "verbs_internal.h"

#define SEQ_MASK ((1ull << 48) - 1)

/* The peer's key blob as written by vb_reg (verbs_backend.c), checked. */
typedef struct key_view {
    uint32_t ndev, npieces;
    uint64_t base, piece;
    const uint8_t *rkeys;
} key_view_t;

static bool key_parse(const kvrt_xfer_bk_remote_t *r, key_view_t *v)
{
    const uint8_t *k = r->key;
    if (r->key_bytes < VB_KEY_HEADER || k[0] != 1)
        return false;
    v->ndev = k[1];
    v->npieces = k[2];
    v->base = kvrt_load_le64(k + 8);
    v->piece = kvrt_load_le64(k + 16);
    v->rkeys = k + VB_KEY_HEADER;
    return v->ndev >= 1 && v->ndev <= VB_MAX_DEVICES && v->npieces >= 1 &&
           v->npieces <= VB_MAX_PIECES &&
           r->key_bytes == VB_KEY_HEADER + 4 * v->ndev * v->npieces && v->piece > 0 &&
           r->length <= v->piece * v->npieces && v->base + r->length >= v->base;
}

static uint32_t key_rkey(const key_view_t *v, uint32_t qp, uint64_t piece)
{
    /* the peer's QP k sits on its device k % ndev, as ours does */
    return kvrt_load_le32(v->rkeys + 4 * ((qp % v->ndev) * v->npieces + piece));
}

static kvrt_status_t map_wc_status(enum ibv_wc_status s)
{
    return s == IBV_WC_REM_ACCESS_ERR ? KVRT_ERR_REMOTE_ACCESS : KVRT_ERR_PEER_FAILED;
}

/* ---- completing batches ------------------------------------------------------ */

static void finish(vb_conn_t *c, vb_batch_t *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        c->batches = b->next;
    if (b->next)
        b->next->prev = b->prev;
    kvrt_status_t st = b->canceled ? KVRT_ERR_CANCELED : b->status;
    if (st == KVRT_OK) {
        c->count_written += b->written;
        c->count_read += b->read;
    }
    /* the batch's two backend words now carry its status and the link of
     * the list vb_deliver() walks */
    kvrt_xfer_bk_batch_t *bk = b->bk;
    bk->backend_data[0] = (void *)(intptr_t)st;
    bk->backend_data[1] = NULL;
    if (c->done_tail)
        c->done_tail->backend_data[1] = bk;
    else
        c->done_head = bk;
    c->done_tail = bk;
    free(b->wrs);
    free(b->sges);
    free(b);
}

void vb_deliver(vb_conn_t *c)
{
    pthread_mutex_lock(&c->lock);
    kvrt_xfer_bk_batch_t *done = c->done_head;
    kvrt_xfer_bk_msg_t *mfail = c->mfail_head;
    uint64_t written = c->count_written, read = c->count_read;
    bool report_fail = c->report_fail, report_refuse = c->report_refuse;
    kvrt_status_t report_status = c->report_status;
    char why[sizeof(c->report_why)], refuse_why[sizeof(c->refuse_why)];
    memcpy(why, c->report_why, sizeof(why));
    memcpy(refuse_why, c->refuse_why, sizeof(refuse_why));
    c->done_head = c->done_tail = NULL;
    c->mfail_head = c->mfail_tail = NULL;
    c->count_written = c->count_read = 0;
    c->report_fail = c->report_refuse = false;
    pthread_mutex_unlock(&c->lock);

    if (report_refuse)
        kvrt_xfer_bk_refuse(c->peer, KVRT_ERR_PROTOCOL, refuse_why);
    if (written || read)
        kvrt_xfer_bk_count_bytes(c->b->agent, written, read);
    /* The connection's failure first: a request failed by it completes only
     * after its peer already shows the failure (state, last_error), as on
     * the TCP backend; the batches then name their own causes. */
    if (report_fail)
        kvrt_xfer_bk_conn_failed(c->peer, report_status, why);
    while (done) {
        kvrt_xfer_bk_batch_t *next = done->backend_data[1];
        kvrt_xfer_bk_batch_done(done, (kvrt_status_t)(intptr_t)done->backend_data[0]);
        done = next;
    }
    while (mfail) {
        kvrt_xfer_bk_msg_t *next = mfail->backend_data[0];
        kvrt_xfer_bk_msg_done(mfail, KVRT_ERR_PEER_FAILED, NULL, 0);
        mfail = next;
    }
}

/* One WR is done with, posted (`posted`) or dropped from a queue. */
static void retire(vb_conn_t *c, vb_wr_t *w, bool posted, kvrt_status_t st)
{
    vb_batch_t *b = w->batch;
    if (!b)
        return; /* message SENDs: their requests wait for the reply */
    b->left--;
    if (posted)
        b->posted_left--;
    if (st != KVRT_OK && b->status == KVRT_OK)
        b->status = st;
    if (st == KVRT_OK) {
        if (w->opcode == IBV_WR_RDMA_READ)
            b->read += w->bytes;
        else
            b->written += w->bytes;
    }
    if (b->left == 0)
        finish(c, b);
}

void vb_finish_all(vb_conn_t *c)
{
    for (uint32_t k = 0; k < c->nqp; k++)
        c->qp[k].retired = c->qp[k].posted;
    while (c->batches) {
        vb_batch_t *b = c->batches;
        if (b->status == KVRT_OK)
            b->status = KVRT_ERR_PEER_FAILED;
        finish(c, b);
    }
}

void vb_conn_fail(vb_conn_t *c, kvrt_status_t status, bool quiet, const char *fmt, ...)
{
    if (c->failed)
        return;
    c->failed = true;
    c->fail_status = status;
    for (uint32_t k = 0; k < c->nqp; k++) {
        vb_qp_t *q = &c->qp[k];
        if (q->qp) {
            struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
            c->b->ops.modify_qp(q->qp, &a, IBV_QP_STATE);
        }
    }
    for (uint32_t k = 0; k < c->nqp; k++) {
        vb_qp_t *q = &c->qp[k];
        while (q->pend_head) {
            vb_wr_t *w = q->pend_head;
            q->pend_head = w->next;
            retire(c, w, false, KVRT_ERR_PEER_FAILED);
        }
        q->pend_tail = NULL;
    }
    vb_fail_msgs(c);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->report_why, sizeof(c->report_why), fmt, ap);
    va_end(ap);
    kvrt_log(c->b->ctx, quiet ? KVRT_LOG_DEBUG : KVRT_LOG_WARN, "%s", c->report_why);
    c->report_fail = !quiet;
    c->report_status = status;
}

/* ---- posting ------------------------------------------------------------------ */

void vb_enqueue(vb_conn_t *c, vb_wr_t *w)
{
    vb_qp_t *q = &c->qp[w->qp];
    w->next = NULL;
    if (q->pend_tail)
        q->pend_tail->next = w;
    else
        q->pend_head = w;
    q->pend_tail = w;
}

void vb_kick(vb_conn_t *c, uint32_t k)
{
    vb_qp_t *q = &c->qp[k];
    if (c->failed || !q->pend_head)
        return;
    uint32_t room = q->depth - (uint32_t)(q->posted - q->retired);
    uint32_t n = 0;
    uint32_t every = c->b->tuning.signal_every;
    while (n < room && q->pend_head) {
        vb_wr_t *w = q->pend_head;
        q->pend_head = w->next;
        struct ibv_send_wr *sw = &q->chain[n];
        memset(sw, 0, sizeof(*sw));
        sw->wr_id = ((uint64_t)k << 48) | ((q->posted + n) & SEQ_MASK);
        sw->opcode = w->opcode;
        sw->sg_list = w->batch ? &w->batch->sges[w->sge_first] : w->msg_sge;
        sw->num_sge = (int)w->nsge;
        if (w->opcode != IBV_WR_SEND) {
            sw->wr.rdma.remote_addr = w->remote_addr;
            sw->wr.rdma.rkey = w->rkey;
        }
        if (++q->since_signal >= every || w->last_on_qp) {
            sw->send_flags = IBV_SEND_SIGNALED;
            q->since_signal = 0;
        }
        if (n > 0)
            q->chain[n - 1].next = sw;
        q->ring[(q->posted + n) % q->depth] = w;
        if (w->batch)
            w->batch->posted_left++;
        n++;
    }
    if (!q->pend_head)
        q->pend_tail = NULL;
    if (n == 0)
        return;
    q->chain[n - 1].send_flags |= IBV_SEND_SIGNALED;
    q->since_signal = 0;
    struct ibv_send_wr *bad = NULL;
    int rc = c->b->ops.post_send(q->qp, q->chain, &bad);
    uint32_t ok = n;
    if (rc != 0)
        ok = bad ? (uint32_t)(bad - q->chain) : 0;
    for (uint32_t i = ok; i < n; i++) {
        vb_wr_t *w = q->ring[(q->posted + i) % q->depth];
        q->ring[(q->posted + i) % q->depth] = NULL;
        if (w->batch)
            w->batch->posted_left--;
        retire(c, w, false, KVRT_ERR_PEER_FAILED);
    }
    q->posted += ok;
    if (rc != 0)
        vb_conn_fail(c, KVRT_ERR_PEER_FAILED, false, "verbs: ibv_post_send on QP %u: %s",
                     k, strerror(rc));
}

static bool grow(void **array, uint32_t *capacity, uint32_t needed, size_t item)
{
    if (needed <= *capacity)
        return true;
    uint32_t cap = *capacity ? *capacity * 2 : 16;
    while (cap < needed)
        cap *= 2;
    void *p = realloc(*array, (size_t)cap * item);
    if (!p)
        return false;
    *array = p;
    *capacity = cap;
    return true;
}

/* Adds [loff, loff + n) of the local region to WR w. False when w has no
 * SGE left for it. */
static bool add_sge(vb_batch_t *b, vb_wr_t *w, uint64_t addr, uint32_t lkey,
                    uint64_t n, uint32_t max_sge)
{
    if (w->nsge > 0) {
        struct ibv_sge *last = &b->sges[w->sge_first + w->nsge - 1];
        if (last->lkey == lkey && last->addr + last->length == addr) {
            last->length += (uint32_t)n;
            return true;
        }
        if (w->nsge == max_sge)
            return false;
    }
    if (!grow((void **)&b->sges, &b->sge_capacity, b->nsge + 1, sizeof(*b->sges)))
        return false;
    b->sges[b->nsge++] = (struct ibv_sge){.addr = addr, .length = (uint32_t)n,
                                          .lkey = lkey};
    w->nsge++;
    return true;
}

static kvrt_status_t build(vb_conn_t *c, vb_batch_t *b)
{
    uint64_t wr_max = c->b->tuning.wr_max_bytes;
    uint32_t max_sge = c->b->max_sge;
    for (uint32_t i = 0; i < b->bk->count; i++) {
        const kvrt_xfer_bk_op_t *op = &b->bk->ops[i];
        const vb_region_t *lr = op->local->backend_data;
        key_view_t kv;
        if (!key_parse(op->remote, &kv) || op->length == 0 ||
            op->local_offset > op->local->length ||
            op->length > op->local->length - op->local_offset ||
            op->remote_offset > op->remote->length ||
            op->length > op->remote->length - op->remote_offset)
            return KVRT_ERR_REMOTE_ACCESS;
        enum ibv_wr_opcode opcode =
            op->opcode == KVRT_XFER_READ ? IBV_WR_RDMA_READ : IBV_WR_RDMA_WRITE;
        uint64_t loff = op->local_offset, roff = op->remote_offset, left = op->length;
        while (left > 0) {
            uint64_t lp = loff / lr->piece_bytes, rp = roff / kv.piece;
            uint64_t n = left;
            if ((lp + 1) * lr->piece_bytes - loff < n)
                n = (lp + 1) * lr->piece_bytes - loff;
            if ((rp + 1) * kv.piece - roff < n)
                n = (rp + 1) * kv.piece - roff;
            vb_wr_t *w = b->nwr ? &b->wrs[b->nwr - 1] : NULL;
            uint64_t raddr = kv.base + roff;
            bool joined = false;
            if (w && w->opcode == opcode && w->bytes < wr_max &&
                w->rkey == key_rkey(&kv, w->qp, rp) && w->remote_addr + w->bytes == raddr) {
                if (n > wr_max - w->bytes)
                    n = wr_max - w->bytes;
                uint32_t lkey = lr->mr[c->qp[w->qp].dev][lp]->lkey;
                joined = add_sge(b, w, (uint64_t)(uintptr_t)(op->local->base + loff),
                                 lkey, n, max_sge);
            }
            if (!joined) {
                if (!grow((void **)&b->wrs, &b->wr_capacity, b->nwr + 1, sizeof(*b->wrs)))
                    return KVRT_ERR_NO_MEMORY;
                w = &b->wrs[b->nwr++];
                uint32_t k = c->next_qp++ % c->nqp;
                *w = (vb_wr_t){.batch = b, .opcode = opcode, .qp = k,
                               .sge_first = b->nsge, .remote_addr = raddr,
                               .rkey = key_rkey(&kv, k, rp)};
                if (n > wr_max)
                    n = wr_max;
                uint32_t lkey = lr->mr[c->qp[k].dev][lp]->lkey;
                if (!add_sge(b, w, (uint64_t)(uintptr_t)(op->local->base + loff), lkey,
                             n, max_sge))
                    return KVRT_ERR_NO_MEMORY;
            }
            w->bytes += n;
            loff += n;
            roff += n;
            left -= n;
        }
    }
    /* a batch's last WR on each QP is signaled so it completes promptly */
    uint64_t seen = 0;
    for (uint32_t i = b->nwr; i-- > 0;) {
        uint64_t bit = 1ull << b->wrs[i].qp;
        if (!(seen & bit))
            b->wrs[i].last_on_qp = true;
        seen |= bit;
    }
    return KVRT_OK;
}

kvrt_status_t vb_post(void *state, void *conn, kvrt_xfer_bk_batch_t *bk)
{
    vb_conn_t *c = conn;
    vb_batch_t *b = calloc(1, sizeof(*b));
    if (!b)
        return KVRT_ERR_NO_MEMORY;
    b->bk = bk;
    b->conn = c;
    pthread_mutex_lock(&c->lock);
    kvrt_status_t st = c->failed ? KVRT_ERR_PEER_FAILED : build(c, b);
    if (st != KVRT_OK) {
        pthread_mutex_unlock(&c->lock);
        free(b->wrs);
        free(b->sges);
        free(b);
        return st;
    }
    bk->backend_data[0] = b;
    b->left = b->nwr;
    b->next = c->batches;
    if (c->batches)
        c->batches->prev = b;
    c->batches = b;
    uint64_t used = 0;
    for (uint32_t i = 0; i < b->nwr; i++) {
        vb_enqueue(c, &b->wrs[i]);
        used |= 1ull << b->wrs[i].qp;
    }
    /* the batch may complete (and be freed) inside a kick */
    for (uint32_t k = 0; k < c->nqp; k++)
        if (used & (1ull << k))
            vb_kick(c, k);
    pthread_mutex_unlock(&c->lock);
    vb_deliver(c);
    return KVRT_OK;
}

void vb_cancel(void *state, void *conn, kvrt_xfer_bk_batch_t *bk)
{
    vb_conn_t *c = conn;
    pthread_mutex_lock(&c->lock);
    vb_batch_t *b = c->batches;
    while (b && b->bk != bk)
        b = b->next;
    if (!b) {
        pthread_mutex_unlock(&c->lock);
        return; /* already completed */
    }
    b->canceled = true;
    /* WRs still queued here never reach the NIC */
    uint32_t dropped = 0;
    for (uint32_t k = 0; k < c->nqp; k++) {
        vb_qp_t *q = &c->qp[k];
        vb_wr_t **pp = &q->pend_head;
        q->pend_tail = NULL;
        while (*pp) {
            if ((*pp)->batch == b) {
                *pp = (*pp)->next;
                dropped++;
            } else {
                q->pend_tail = *pp;
                pp = &(*pp)->next;
            }
        }
    }
    b->left -= dropped;
    if (b->left == 0)
        finish(c, b);
    else
        /* posted WRs cannot be recalled: only resetting the QPs (and
         * waiting for their flush) guarantees the NIC is done with the
         * batch's memory */
        vb_conn_fail(c, KVRT_ERR_CANCELED, false,
                     "verbs: a canceled batch had RDMA operations in flight; "
                     "resetting the connection to %s", kvrt_xfer_bk_peer_name(c->peer));
    pthread_mutex_unlock(&c->lock);
    vb_deliver(c);
}

/* ---- completions ------------------------------------------------------------- */

static void on_send_completion(vb_conn_t *c, const struct ibv_wc *wc)
{
    uint32_t k = (uint32_t)(wc->wr_id >> 48);
    if (k >= c->nqp)
        return;
    vb_qp_t *q = &c->qp[k];
    /* rebuild the full sequence number from its low 48 bits */
    uint64_t seq = q->retired + ((wc->wr_id - q->retired) & SEQ_MASK);
    if (seq >= q->posted)
        return;
    kvrt_status_t st = KVRT_OK;
    if (wc->status != IBV_WC_SUCCESS)
        st = wc->status == IBV_WC_WR_FLUSH_ERR ? KVRT_ERR_PEER_FAILED
                                               : map_wc_status(wc->status);
    for (uint64_t s = q->retired; s <= seq; s++) {
        vb_wr_t *w = q->ring[s % q->depth];
        q->ring[s % q->depth] = NULL;
        q->retired = s + 1;
        if (w)
            retire(c, w, true, s == seq ? st : KVRT_OK);
    }
    if (wc->status != IBV_WC_SUCCESS && !c->failed)
        vb_conn_fail(c, map_wc_status(wc->status), false,
                     "verbs: %s on QP %u to %s", ibv_wc_status_str(wc->status), k,
                     kvrt_xfer_bk_peer_name(c->peer));
}

int vb_drain_cq(vb_conn_t *c, uint32_t dev)
{
    struct ibv_wc wc[32];
    int total = 0;
    for (;;) {
        int n = c->b->ops.poll_cq(c->cq[dev], 32, wc);
        if (n <= 0)
            break;
        total += n;
        for (int i = 0; i < n; i++) {
            if (wc[i].wr_id & VB_RECV_FLAG)
                vb_on_recv(c, &wc[i]);
            else
                on_send_completion(c, &wc[i]);
        }
        for (uint32_t k = 0; k < c->nqp; k++)
            if (c->qp[k].dev == dev)
                vb_kick(c, k);
    }
    return total;
}
