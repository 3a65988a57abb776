/*
 * request.c - requests: posting, the in-flight window, closing messages
 * (notifications, and those of the layer that made the request), completion,
 * timeouts, cancel, and the completion and notification queues.
 *
 * A request moves through DATA (batches posted while its window allows),
 * MSGS (closing messages, one at a time) and DONE. It completes exactly
 * once. A failed request completes only when none of its batches is still
 * with the backend, so that once the caller sees the status nothing touches
 * its memory; timeouts and cancels make that prompt through the backend's
 * cancel op.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent_internal.h"

#define BATCH_MAX_OPS 1024u
#define BATCH_MIN_BYTES (4ull << 20)
#define DEFAULT_INFLIGHT (256ull << 20)

static void peer_pump_release(kvrt_xfer_peer_t *p);

/* Frees r (lock held): back to the agent's cache while it has room. */
static void request_free(kvrt_xfer_request_t *r)
{
    kvrt_xfer_agent_t *a = r->agent;
    if (r->user_owned)
        xfer_list_del(&r->owned_link);
    while (r->batch_list) {
        xfer_batch_t *b = r->batch_list;
        r->batch_list = b->next;
        if (b != &r->first_batch)
            free(b);
    }
    if (r->layer)
        r->layer->free_state(r->layer_state);
    if (r->ops != r->inline_ops)
        free(r->ops);
    kvrt_free_list_give(&a->free_requests, r);
}

kvrt_status_t xfer_requests_reserve(kvrt_xfer_agent_t *a)
{
    kvrt_free_list_init(&a->free_requests, sizeof(kvrt_xfer_request_t), a->max_requests);
    if (!kvrt_free_list_reserve(&a->free_requests, XFER_RESERVED_REQUESTS))
        return kvrt_fail(a->ctx, KVRT_ERR_NO_MEMORY, "%u reserved requests",
                         XFER_RESERVED_REQUESTS);
    return KVRT_OK;
}

/* The agent objects behind a backend op's pointers. */
static kvrt_xfer_region_t *op_region(const kvrt_xfer_bk_op_t *op)
{
    return XFER_CONTAINER((void *)(uintptr_t)op->local, kvrt_xfer_region_t, bk);
}

static kvrt_xfer_remote_t *op_remote(const kvrt_xfer_bk_op_t *op)
{
    return XFER_CONTAINER((void *)(uintptr_t)op->remote, kvrt_xfer_remote_t, bk);
}

static void request_maybe_free(kvrt_xfer_request_t *r)
{
    if (r->status == KVRT_INPROGRESS || r->busy)
        return;
    if (!r->user_owned || r->released)
        request_free(r);
}

/* Completes r with status (lock held). */
static void request_complete(kvrt_xfer_request_t *r, kvrt_status_t status)
{
    kvrt_xfer_agent_t *a = r->agent;
    r->phase = XFER_PHASE_DONE;
    for (uint32_t i = 0; i < r->count; i++) {
        op_region(&r->ops[i])->users--;
        if (r->peer) /* a detached request's remotes went with its peer */
            op_remote(&r->ops[i])->users--;
    }
    if (r->msg) {
        r->msg->request = NULL; /* msg_done frees it */
        r->msg = NULL;
    }
    if (r->peer)
        xfer_list_del(&r->link);
    a->outstanding--;
    if (status != KVRT_OK)
        a->stats.requests_failed++;
    if (r->quiet) {
        kvrt_cq_unreserve(a->completions);
    } else {
        kvrt_xfer_completion_t c = {.user_data = r->user_data, .status = status,
                                    .bytes = status == KVRT_OK ? r->bytes : 0};
        kvrt_cq_push_reserved(a->completions, &c);
    }
    r->status = status;
    pthread_cond_broadcast(&a->cond);
    request_maybe_free(r);
}

/* Records a failure; completes at once when nothing is in flight. */
static void request_fail(kvrt_xfer_request_t *r, kvrt_status_t status)
{
    if (r->phase == XFER_PHASE_DONE)
        return;
    if (r->error == KVRT_OK)
        r->error = status;
    if (r->batches_out == 0 && !r->msg)
        request_complete(r, r->error);
}

/* A closing message still in flight no longer holds the request back once
 * it failed: the message lets go of the request instead. */
static void request_fail_now(kvrt_xfer_request_t *r, kvrt_status_t status)
{
    if (r->phase == XFER_PHASE_DONE)
        return;
    if (r->error == KVRT_OK)
        r->error = status;
    if (r->msg) {
        r->msg->request = NULL;
        r->msg = NULL;
    }
    if (r->batches_out == 0)
        request_complete(r, r->error);
}

kvrt_status_t xfer_request_admit(kvrt_xfer_peer_t *p)
{
    kvrt_xfer_agent_t *a = p->agent;
    if (!xfer_peer_up(p))
        return kvrt_fail(a->ctx, KVRT_ERR_PEER_FAILED, "peer %s is %s", p->name,
                         p->state == KVRT_XFER_PEER_FAILED ? "failed" : "not connected");
    if (kvrt_cq_reserve(a->completions) != KVRT_OK)
        return kvrt_fail(a->ctx, KVRT_ERR_REQUEST_LIMIT,
                         "%u requests outstanding and %u completions unpolled (limit %u)",
                         a->outstanding, kvrt_cq_counts(a->completions).queued,
                         a->max_requests);
    return KVRT_OK;
}

kvrt_xfer_request_t *xfer_request_new(kvrt_xfer_peer_t *p, kvrt_xfer_bk_op_t *ops,
                                      uint32_t count, uint32_t timeout_ms,
                                      uint64_t max_inflight, bool user_owned)
{
    kvrt_xfer_agent_t *a = p->agent;
    kvrt_xfer_request_t *r = kvrt_free_list_take(&a->free_requests);
    if (!r) {
        kvrt_cq_unreserve(a->completions);
        return NULL;
    }
    r->agent = a;
    r->peer = p;
    r->ops = ops;
    if (count <= XFER_INLINE_OPS) {
        if (count)
            memcpy(r->inline_ops, ops, count * sizeof(*ops));
        r->ops = r->inline_ops;
    }
    r->count = count;
    r->user_owned = user_owned;
    xfer_list_init(&r->owned_link);
    if (user_owned)
        xfer_list_push(&a->owned_requests, &r->owned_link);
    r->status = KVRT_INPROGRESS;
    r->error = KVRT_OK;
    r->max_inflight = max_inflight ? max_inflight : DEFAULT_INFLIGHT;
    r->deadline_ns = kvrt_now_ns() + (uint64_t)(timeout_ms ? timeout_ms : a->timeout_ms) * 1000000ull;
    for (uint32_t i = 0; i < count; i++) {
        op_region(&r->ops[i])->users++;
        op_remote(&r->ops[i])->users++;
        r->bytes += r->ops[i].length;
    }
    xfer_list_push(&p->requests, &r->link);
    a->outstanding++;
    a->stats.requests++;
    a->stats.ops += count;
    return r;
}

xfer_msg_t *xfer_msg_new(kvrt_xfer_request_t *r, uint32_t type, uint32_t bytes)
{
    xfer_msg_t *m = calloc(1, sizeof(*m) + bytes);
    if (!m)
        return NULL;
    m->agent = r->agent;
    m->request = r;
    m->bk.type = type;
    m->bk.bytes = bytes;
    m->bk.payload = m->payload;
    return m;
}

xfer_msg_t *xfer_notify_msg(kvrt_xfer_request_t *r)
{
    xfer_msg_t *m = xfer_msg_new(r, XFER_MSG_NOTIFY, r->notify_bytes);
    if (m) {
        memcpy(m->payload, r->notify, r->notify_bytes);
        r->notify_sent = true;
    }
    return m;
}

/* Cuts the next batch of r (lock held): consecutive ops up to the window. */
static xfer_batch_t *batch_cut(kvrt_xfer_request_t *r)
{
    xfer_batch_t *b = r->batch_list ? calloc(1, sizeof(*b)) : &r->first_batch;
    if (!b)
        return NULL;
    uint64_t cap = r->max_inflight / 4 > BATCH_MIN_BYTES ? r->max_inflight / 4 : BATCH_MIN_BYTES;
    uint32_t first = r->next_op, n = 0;
    uint64_t bytes = 0;
    while (first + n < r->count && n < BATCH_MAX_OPS &&
           (n == 0 || bytes + r->ops[first + n].length <= cap)) {
        bytes += r->ops[first + n].length;
        n++;
    }
    b->bk.ops = r->ops + first;
    b->bk.count = n;
    b->bk.bytes = bytes;
    b->request = r;
    b->next = r->batch_list;
    r->batch_list = b;
    r->next_op += n;
    r->inflight += bytes;
    r->batches_out++;
    return b;
}

void kvrt_xfer_bk_batch_done(kvrt_xfer_bk_batch_t *bk, kvrt_status_t status)
{
    xfer_batch_t *b = (xfer_batch_t *)(void *)bk;
    kvrt_xfer_request_t *r = b->request;
    kvrt_xfer_agent_t *a = r->agent;
    pthread_mutex_lock(&a->lock);
    kvrt_xfer_peer_t *p = r->peer;
    if (p)
        p->busy++; /* keeps the peer while we pump it unlocked */
    b->done = true;
    r->batches_out--;
    r->inflight -= b->bk.bytes;
    /* A connection failure marks every request it carried PEER_FAILED
     * before their batches come back; a batch that names the cause (an
     * error completion for a bad remote access) is the better answer. */
    if (status == KVRT_ERR_REMOTE_ACCESS && r->error == KVRT_ERR_PEER_FAILED)
        r->error = status;
    if (status != KVRT_OK)
        request_fail(r, status);
    else if (r->error != KVRT_OK)
        request_fail(r, r->error);
    else
        request_maybe_free(r);
    pthread_mutex_unlock(&a->lock);
    /* More of this request may now fit the window, and a completed one
     * may have released a gated notification behind it. */
    if (p)
        peer_pump_release(p);
}

/* Frees a closing message (lock held), giving back the work it asked of
 * its peer. */
static void msg_free(xfer_msg_t *m)
{
    if (m->work)
        m->peer->hash_work_out -= m->work;
    free(m);
}

void kvrt_xfer_bk_msg_done(kvrt_xfer_bk_msg_t *bk, kvrt_status_t status,
                           const uint8_t *reply, uint32_t reply_bytes)
{
    xfer_msg_t *m = (xfer_msg_t *)(void *)bk;
    kvrt_xfer_agent_t *a = m->agent;
    pthread_mutex_lock(&a->lock);
    kvrt_xfer_request_t *r = m->request;
    /* The peer is pumped again: a request of it may wait for the work
     * this message gives back. */
    kvrt_xfer_peer_t *p = r ? r->peer : m->work ? m->peer : NULL;
    if (p)
        p->busy++;
    kvrt_status_t st = status;
    if (r && r->layer) {
        /* The layer judges the reply unlocked: it may checksum what a READ
         * brought (up to XFER_HASH_WORK_MAX bytes), and nothing else should
         * wait for that. The request is held and its message stays
         * attached meanwhile, so no other closing message of it starts,
         * and an abort or timeout lets go of it instead. */
        r->busy++;
        pthread_mutex_unlock(&a->lock);
        st = r->layer->on_reply(r, status, reply, reply_bytes);
        pthread_mutex_lock(&a->lock);
        r->busy--;
        if (st == KVRT_ERR_INTEGRITY)
            a->stats.integrity_failures++;
        if (m->request != r) { /* completed meanwhile */
            request_maybe_free(r);
            r = NULL;
        }
    }
    if (r) {
        r->msg = NULL;
        if (st != KVRT_OK)
            request_fail(r, st);
        else if (r->error != KVRT_OK)
            request_fail(r, r->error);
    }
    msg_free(m);
    pthread_mutex_unlock(&a->lock);
    if (p)
        peer_pump_release(p);
}

typedef enum { WORK_NONE, WORK_BATCH, WORK_MSG } work_kind_t;

/* Finds one thing to hand to the backend (lock held). */
static work_kind_t pump_find(kvrt_xfer_peer_t *p, xfer_batch_t **batch, xfer_msg_t **msg)
{
restart:
    for (xfer_link_t *l = p->requests.next; l != &p->requests; l = l->next) {
        kvrt_xfer_request_t *r = XFER_CONTAINER(l, kvrt_xfer_request_t, link);
        if (r->error != KVRT_OK || r->phase == XFER_PHASE_DONE)
            continue;
        if (r->phase == XFER_PHASE_DATA) {
            if (r->next_op < r->count) {
                if (r->inflight >= r->max_inflight)
                    continue;
                *batch = batch_cut(r);
                if (!*batch) {
                    request_fail(r, KVRT_ERR_NO_MEMORY);
                    goto restart;
                }
                return WORK_BATCH;
            }
            if (r->batches_out > 0 || (r->gated && l != p->requests.next))
                continue;
            r->phase = XFER_PHASE_MSGS;
        }
        if (r->msg)
            continue;
        kvrt_status_t st = KVRT_OK;
        xfer_msg_t *m = NULL;
        if (r->layer) {
            m = r->layer->next_msg(r, &st);
        } else if (r->notify_bytes && !r->notify_sent) {
            m = xfer_notify_msg(r);
            if (!m)
                st = KVRT_ERR_NO_MEMORY;
        }
        if (m) {
            r->msg = m;
            *msg = m;
            return WORK_MSG;
        }
        if (st == KVRT_INPROGRESS)
            continue; /* asked again when the peer has room */
        request_complete(r, st);
        goto restart; /* the list changed */
    }
    return WORK_NONE;
}

void xfer_peer_pump(kvrt_xfer_peer_t *p)
{
    kvrt_xfer_agent_t *a = p->agent;
    /* Bounded: every completion pumps again, so stopping early only delays. */
    for (int round = 0; round < 4096; round++) {
        xfer_batch_t *b = NULL;
        xfer_msg_t *m = NULL;
        pthread_mutex_lock(&a->lock);
        if (p->closing || !p->conn || p->conn_broken) {
            pthread_mutex_unlock(&a->lock);
            return;
        }
        work_kind_t w = pump_find(p, &b, &m);
        if (w == WORK_NONE) {
            pthread_mutex_unlock(&a->lock);
            return;
        }
        void *conn = p->conn;
        kvrt_xfer_request_t *r = w == WORK_BATCH ? b->request : m->request;
        r->busy++;
        p->conn_users++;
        pthread_mutex_unlock(&a->lock);
        kvrt_status_t st = w == WORK_BATCH ? a->backend->post(a->bk_state, conn, &b->bk)
                                           : a->backend->send_msg(a->bk_state, conn, &m->bk);
        pthread_mutex_lock(&a->lock);
        if (--p->conn_users == 0)
            pthread_cond_broadcast(&a->cond);
        /* r stays busy until the failure is recorded: request_fail may
         * complete it, and only the last line below may free it. */
        if (st != KVRT_OK && w == WORK_BATCH) {
            b->done = true;
            r->batches_out--;
            r->inflight -= b->bk.bytes;
            request_fail(r, st);
        } else if (st != KVRT_OK) {
            if (r->msg == m)
                r->msg = NULL;
            msg_free(m);
            request_fail(r, st);
        }
        r->busy--;
        request_maybe_free(r);
        pthread_mutex_unlock(&a->lock);
    }
}

static void peer_pump_release(kvrt_xfer_peer_t *p)
{
    kvrt_xfer_agent_t *a = p->agent;
    xfer_peer_pump(p);
    pthread_mutex_lock(&a->lock);
    xfer_peer_put(p);
    pthread_mutex_unlock(&a->lock);
}

void xfer_peer_fail_requests(kvrt_xfer_peer_t *p, kvrt_status_t status)
{
    xfer_link_t *l = p->requests.next;
    while (l != &p->requests) {
        xfer_link_t *next = l->next;
        request_fail_now(XFER_CONTAINER(l, kvrt_xfer_request_t, link), status);
        l = next;
    }
}

/* Fails r and cancels whatever of it the backend still holds. Called
 * unlocked; r must be held (busy) by the caller. */
static void request_abort(kvrt_xfer_request_t *r, kvrt_status_t status)
{
    kvrt_xfer_agent_t *a = r->agent;
    enum { MAX_CANCEL = 64 };
    xfer_batch_t *victims[MAX_CANCEL];
    uint32_t n = 0;
    pthread_mutex_lock(&a->lock);
    request_fail_now(r, status);
    kvrt_xfer_peer_t *p = r->peer;
    void *conn = p && !p->conn_broken ? p->conn : NULL;
    for (xfer_batch_t *b = r->batch_list; b && n < MAX_CANCEL && conn; b = b->next)
        if (!b->done)
            victims[n++] = b;
    if (n) {
        p->busy++;
        p->conn_users++;
    }
    pthread_mutex_unlock(&a->lock);
    if (!n)
        return;
    /* Batches stay allocated until the request is freed, which r's busy
     * count prevents, so these pointers stay valid. More than MAX_CANCEL
     * batches in flight: canceling the first resets the connection, which
     * ends the others too. */
    for (uint32_t i = 0; i < n; i++)
        a->backend->cancel(a->bk_state, conn, &victims[i]->bk);
    pthread_mutex_lock(&a->lock);
    if (--p->conn_users == 0)
        pthread_cond_broadcast(&a->cond);
    xfer_peer_put(p);
    pthread_mutex_unlock(&a->lock);
}

void xfer_requests_destroy_all(kvrt_xfer_agent_t *a)
{
    pthread_mutex_lock(&a->lock);
    while (!xfer_list_empty(&a->owned_requests))
        request_free(XFER_CONTAINER(a->owned_requests.next, kvrt_xfer_request_t, owned_link));
    pthread_mutex_unlock(&a->lock);
}

void xfer_requests_expire(kvrt_xfer_agent_t *a, uint64_t now_ns)
{
    for (int round = 0; round < 1024; round++) {
        kvrt_xfer_request_t *victim = NULL;
        pthread_mutex_lock(&a->lock);
        for (xfer_link_t *pl = a->peers.next; pl != &a->peers && !victim; pl = pl->next) {
            kvrt_xfer_peer_t *p = XFER_CONTAINER(pl, kvrt_xfer_peer_t, link);
            for (xfer_link_t *l = p->requests.next; l != &p->requests; l = l->next) {
                kvrt_xfer_request_t *r = XFER_CONTAINER(l, kvrt_xfer_request_t, link);
                if (r->phase != XFER_PHASE_DONE && r->deadline_ns <= now_ns && !r->expired) {
                    r->expired = true;
                    victim = r;
                    break;
                }
            }
        }
        if (victim)
            victim->busy++;
        pthread_mutex_unlock(&a->lock);
        if (!victim)
            return;
        request_abort(victim, KVRT_ERR_TIMEOUT);
        pthread_mutex_lock(&a->lock);
        victim->busy--;
        request_maybe_free(victim);
        pthread_mutex_unlock(&a->lock);
    }
}

/* ---- public calls ----------------------------------------------------------- */

/* What can be checked of an op without touching its region or remote. */
static kvrt_status_t check_op_args(kvrt_xfer_peer_t *p, const kvrt_xfer_op_t *op, uint32_t i)
{
    if (!op->local || !op->remote ||
        (op->opcode != KVRT_XFER_WRITE && op->opcode != KVRT_XFER_READ) || op->length == 0)
        return kvrt_fail(p->agent->ctx, KVRT_ERR_INVALID_ARG,
                         "op %u: needs a region, a remote, READ or WRITE and a length", i);
    return KVRT_OK;
}

/* Checks op against its region and remote (lock held; the request that
 * takes their users is made in the same locked section). */
static kvrt_status_t check_op(kvrt_xfer_peer_t *p, const kvrt_xfer_op_t *op, uint32_t i)
{
    kvrt_xfer_agent_t *a = p->agent;
    const kvrt_xfer_region_t *l = op->local;
    const kvrt_xfer_remote_t *r = op->remote;
    if (l->agent != a || r->peer != p || l->dying || !l->ready)
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG,
                         "op %u: needs a registered region of this agent and a remote of "
                         "this peer",
                         i);
    uint32_t need = op->opcode == KVRT_XFER_WRITE ? KVRT_XFER_REMOTE_WRITE : KVRT_XFER_REMOTE_READ;
    if (op->local_offset > l->bk.length || op->length > l->bk.length - op->local_offset ||
        op->remote_offset > r->bk.length || op->length > r->bk.length - op->remote_offset ||
        !(r->bk.access & need))
        return kvrt_fail(a->ctx, KVRT_ERR_REMOTE_ACCESS,
                         "op %u: out of a region's bounds or without remote %s rights", i,
                         need == KVRT_XFER_REMOTE_WRITE ? "write" : "read");
    return xfer_remote_current(r, i);
}

/* Copies ops into backend ops, splitting long ones: into `room` (of
 * XFER_INLINE_OPS) when they fit, else into a malloc'd array. NULL on no
 * memory. */
static kvrt_xfer_bk_op_t *expand_ops(const kvrt_xfer_op_t *ops, uint32_t count,
                                     kvrt_xfer_bk_op_t *room, uint32_t *n_out)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < count; i++)
        n += (ops[i].length + XFER_OP_SPLIT - 1) / XFER_OP_SPLIT;
    if (n > UINT32_MAX)
        return NULL;
    kvrt_xfer_bk_op_t *out = n <= XFER_INLINE_OPS ? room : malloc((size_t)n * sizeof(*out));
    if (!out)
        return NULL;
    uint32_t k = 0;
    for (uint32_t i = 0; i < count; i++)
        for (uint64_t done = 0; done < ops[i].length; done += XFER_OP_SPLIT) {
            uint64_t len = ops[i].length - done < XFER_OP_SPLIT ? ops[i].length - done : XFER_OP_SPLIT;
            out[k++] = (kvrt_xfer_bk_op_t){.opcode = ops[i].opcode, .local = &ops[i].local->bk,
                                           .local_offset = ops[i].local_offset + done,
                                           .remote = &ops[i].remote->bk,
                                           .remote_offset = ops[i].remote_offset + done,
                                           .length = len};
        }
    *n_out = k;
    return out;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_post(kvrt_xfer_peer_t *peer, const kvrt_xfer_op_t *ops,
                                         uint32_t count, const kvrt_xfer_post_params_t *params,
                                         kvrt_xfer_request_t **request_out)
{
    if (!peer || !ops || count == 0)
        return kvrt_fail(peer ? peer->agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "peer, ops and count are required");
    kvrt_xfer_agent_t *a = peer->agent;
    kvrt_xfer_post_params_t pp = {0};
    if (params)
        pp = *params;
    const uint64_t known = (KVRT_XFER_POST_PARAM_NOTIFY << 1) - 1;
    if ((pp.field_mask & ~known) ||
        ((pp.field_mask & KVRT_XFER_POST_PARAM_NOTIFY) &&
         (!pp.notify || pp.notify_bytes == 0 || pp.notify_bytes > KVRT_XFER_NOTIFY_MAX)))
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG, "unknown field bits or bad notification");
    if ((pp.field_mask & KVRT_XFER_POST_PARAM_INFLIGHT) && pp.max_inflight_bytes == 0)
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG, "max_inflight_bytes must not be 0");
    for (uint32_t i = 0; i < count; i++) {
        kvrt_status_t st = check_op_args(peer, &ops[i], i);
        if (st != KVRT_OK)
            return st;
    }
    uint32_t n = 0;
    kvrt_xfer_bk_op_t room[XFER_INLINE_OPS];
    kvrt_xfer_bk_op_t *bk = expand_ops(ops, count, room, &n);
    if (!bk)
        return kvrt_fail(a->ctx, KVRT_ERR_NO_MEMORY, "%u operations", count);
    pthread_mutex_lock(&a->lock);
    kvrt_status_t st = KVRT_OK;
    for (uint32_t i = 0; i < count && st == KVRT_OK; i++)
        st = check_op(peer, &ops[i], i);
    if (st == KVRT_OK)
        st = xfer_request_admit(peer);
    kvrt_xfer_request_t *r = NULL;
    if (st == KVRT_OK) {
        r = xfer_request_new(peer, bk, n,
                             (pp.field_mask & KVRT_XFER_POST_PARAM_TIMEOUT) ? pp.timeout_ms : 0,
                             (pp.field_mask & KVRT_XFER_POST_PARAM_INFLIGHT) ? pp.max_inflight_bytes : 0,
                             request_out != NULL);
        if (!r)
            st = kvrt_fail(a->ctx, KVRT_ERR_NO_MEMORY, "request");
    }
    if (st != KVRT_OK) {
        pthread_mutex_unlock(&a->lock);
        if (bk != room)
            free(bk);
        return st;
    }
    xfer_request_launch(a, peer, r,
                        (pp.field_mask & KVRT_XFER_POST_PARAM_USER_DATA) ? pp.user_data : 0,
                        (pp.field_mask & KVRT_XFER_POST_PARAM_NOTIFY) ? pp.notify : NULL,
                        pp.notify_bytes, request_out);
    return KVRT_OK;
}

void xfer_request_launch(kvrt_xfer_agent_t *a, kvrt_xfer_peer_t *peer,
                         kvrt_xfer_request_t *r, uint64_t user_data, const void *notify,
                         uint32_t notify_bytes, kvrt_xfer_request_t **request_out)
{
    r->user_data = user_data;
    if (notify) {
        memcpy(r->notify, notify, notify_bytes);
        r->notify_bytes = notify_bytes;
    }
    if (request_out)
        *request_out = r;
    /* Pump outside the lock, holding the peer so it outlives the pump. */
    peer->busy++;
    pthread_mutex_unlock(&a->lock);
    xfer_peer_pump(peer);
    pthread_mutex_lock(&a->lock);
    xfer_peer_put(peer);
    pthread_mutex_unlock(&a->lock);
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_notify(kvrt_xfer_peer_t *peer, const void *data,
                                           uint32_t length)
{
    if (!peer || !data || length == 0 || length > KVRT_XFER_NOTIFY_MAX)
        return kvrt_fail(peer ? peer->agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "peer, data and a length of 1..%d are required", KVRT_XFER_NOTIFY_MAX);
    kvrt_xfer_agent_t *a = peer->agent;
    pthread_mutex_lock(&a->lock);
    kvrt_status_t st = xfer_request_admit(peer);
    kvrt_xfer_request_t *r = st == KVRT_OK ? xfer_request_new(peer, NULL, 0, 0, 0, false) : NULL;
    if (st == KVRT_OK && !r)
        st = kvrt_fail(a->ctx, KVRT_ERR_NO_MEMORY, "notification");
    if (r) {
        r->quiet = true;
        r->gated = true;
        memcpy(r->notify, data, length);
        r->notify_bytes = length;
        peer->busy++;
    }
    pthread_mutex_unlock(&a->lock);
    if (st != KVRT_OK)
        return st;
    xfer_peer_pump(peer);
    pthread_mutex_lock(&a->lock);
    xfer_peer_put(peer);
    pthread_mutex_unlock(&a->lock);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_request_test(const kvrt_xfer_request_t *r)
{
    if (!r)
        return kvrt_fail(NULL, KVRT_ERR_INVALID_ARG, "request is required");
    pthread_mutex_lock(&r->agent->lock);
    kvrt_status_t st = r->status;
    pthread_mutex_unlock(&r->agent->lock);
    return st;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_request_wait(const kvrt_xfer_request_t *r, uint32_t timeout_ms)
{
    if (!r)
        return kvrt_fail(NULL, KVRT_ERR_INVALID_ARG, "request is required");
    kvrt_xfer_agent_t *a = r->agent;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t t = (uint64_t)ts.tv_nsec + (uint64_t)timeout_ms * 1000000ull;
    ts.tv_sec += (time_t)(t / 1000000000ull);
    ts.tv_nsec = (long)(t % 1000000000ull);
    pthread_mutex_lock(&a->lock);
    while (r->status == KVRT_INPROGRESS)
        if (pthread_cond_timedwait(&a->cond, &a->lock, &ts) == ETIMEDOUT)
            break;
    kvrt_status_t st = r->status;
    pthread_mutex_unlock(&a->lock);
    return st;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_request_cancel(kvrt_xfer_request_t *r)
{
    if (!r)
        return kvrt_fail(NULL, KVRT_ERR_INVALID_ARG, "request is required");
    kvrt_xfer_agent_t *a = r->agent;
    pthread_mutex_lock(&a->lock);
    bool live = r->status == KVRT_INPROGRESS;
    if (live)
        r->busy++;
    pthread_mutex_unlock(&a->lock);
    if (!live)
        return KVRT_OK;
    request_abort(r, KVRT_ERR_CANCELED);
    pthread_mutex_lock(&a->lock);
    r->busy--;
    request_maybe_free(r);
    pthread_mutex_unlock(&a->lock);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_request_release(kvrt_xfer_request_t *r)
{
    if (!r)
        return KVRT_OK;
    kvrt_xfer_agent_t *a = r->agent;
    pthread_mutex_lock(&a->lock);
    if (r->status == KVRT_INPROGRESS) {
        pthread_mutex_unlock(&a->lock);
        return kvrt_fail(a->ctx, KVRT_ERR_BUSY, "request still in progress");
    }
    r->released = true;
    request_maybe_free(r);
    pthread_mutex_unlock(&a->lock);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_poll(kvrt_xfer_agent_t *a, kvrt_xfer_completion_t *out,
                                         uint32_t capacity, uint32_t *count_out)
{
    if (!a || !count_out || (!out && capacity))
        return kvrt_fail(a ? a->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "agent, count_out and room for completions are required");
    *count_out = kvrt_cq_poll(a->completions, out, capacity);
    return KVRT_OK;
}

/* Receiver side of XFER_MSG_NOTIFY. */
static kvrt_status_t serve_notify(kvrt_xfer_peer_t *p, uint32_t type, const uint8_t *payload,
                                  uint32_t bytes, uint8_t *reply, uint32_t capacity,
                                  uint32_t *reply_bytes_out)
{
    if (bytes == 0 || bytes > KVRT_XFER_NOTIFY_MAX) {
        kvrt_xfer_bk_refuse(p, KVRT_ERR_PROTOCOL, "notification of bad size");
        return KVRT_ERR_PROTOCOL;
    }
    pthread_mutex_lock(&p->agent->lock);
    xfer_notification_push(p->agent, p->name, KVRT_OK, payload, bytes);
    pthread_mutex_unlock(&p->agent->lock);
    return KVRT_OK;
}

kvrt_status_t xfer_notify_register(kvrt_xfer_agent_t *a)
{
    return xfer_dispatch_register(a, XFER_MSG_NOTIFY, serve_notify);
}

void xfer_notification_push(kvrt_xfer_agent_t *a, const char *from, kvrt_status_t status,
                            const uint8_t *data, uint32_t bytes)
{
    kvrt_xfer_notification_t n;
    memset(&n, 0, sizeof(n));
    memcpy(n.from, from, KVRT_XFER_NAME_MAX);
    n.from[KVRT_XFER_NAME_MAX - 1] = '\0';
    n.status = status;
    n.length = bytes;
    memcpy(n.data, data, bytes);
    (void)kvrt_cq_push(a->notes, &n); /* drops the oldest when full */
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_notifications(kvrt_xfer_agent_t *a,
                                                  kvrt_xfer_notification_t *out,
                                                  uint32_t capacity, uint32_t *count_out)
{
    if (!a || !count_out || (!out && capacity))
        return kvrt_fail(a ? a->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "agent, count_out and room for notifications are required");
    *count_out = kvrt_cq_poll(a->notes, out, capacity);
    return KVRT_OK;
}
