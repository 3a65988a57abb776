/*
 * tcp_worker.c - serves messages whose handlers work long (KV checksums
 * over registered memory) off the progress thread and without the backend
 * lock, so one peer's checksums never hold up another peer's frames.
 *
 * The receive side admits a message first (kvrt_xfer_bk_admit_msg: the
 * work it asks for, against the peer's budget); cheap ones are served
 * where they arrive, the rest become jobs here, in arrival order. A job
 * owns the message's payload, counts against its connection's queued
 * bytes (so a flood of them stops reading from the peer, as unread
 * replies do) and in conn->jobs (a connection is finalized only once
 * none is left). A job of a connection that failed meanwhile is dropped
 * unserved.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tcp.h"

struct tcp_job {
    struct tcp_job *next;
    tcp_sock_t *sock;          /* the reply goes out on it */
    uint32_t type;
    uint64_t tag;
    uint64_t work;             /* admitted against the peer's budget */
    uint32_t cost;             /* counted in the connection's queued bytes */
    uint32_t bytes;
    uint8_t *payload;          /* owned */
};

static void *worker_main(void *arg);

bool tcp_worker_start(tcp_state_t *st)
{
    pthread_cond_init(&st->work_cond, NULL);
    if (pthread_create(&st->worker, NULL, worker_main, st) != 0) {
        pthread_cond_destroy(&st->work_cond);
        return false;
    }
    return true;
}

void tcp_worker_stop(tcp_state_t *st)
{
    pthread_mutex_lock(&st->lock);
    st->worker_stopping = true;
    pthread_cond_signal(&st->work_cond);
    pthread_mutex_unlock(&st->lock);
    pthread_join(st->worker, NULL);
    pthread_cond_destroy(&st->work_cond);
}

bool tcp_worker_queue(tcp_sock_t *s, uint32_t type, uint64_t tag, uint64_t work,
                      uint8_t *payload, uint32_t bytes)
{
    tcp_conn_t *c = s->conn;
    tcp_state_t *st = c->st;
    tcp_job_t *j = malloc(sizeof(*j));
    if (!j)
        return false;
    *j = (tcp_job_t){.sock = s, .type = type, .tag = tag, .work = work, .bytes = bytes,
                     .payload = payload, .cost = (uint32_t)sizeof(*j) + bytes};
    c->jobs++;
    c->queued += j->cost;
    kvrt_xfer_bk_queued(st->env.agent, (int64_t)j->cost);
    if (st->jobs_tail)
        st->jobs_tail->next = j;
    else
        st->jobs = j;
    st->jobs_tail = j;
    pthread_cond_signal(&st->work_cond);
    return true;
}

/* Ends job j (lock held): the reply (status, reply_bytes of st->work_reply)
 * goes out unless the connection failed. */
static void job_finish(tcp_state_t *st, tcp_job_t *j, kvrt_status_t status, uint32_t reply_bytes)
{
    tcp_sock_t *s = j->sock;
    tcp_conn_t *c = s->conn;
    if (!c->failed)
        tcp_reply_msg(s, j->tag, status, st->work_reply, reply_bytes);
    c->queued -= j->cost;
    kvrt_xfer_bk_queued(st->env.agent, -(int64_t)j->cost);
    c->jobs--;
    free(j->payload);
    free(j);
    /* The progress thread sends the reply, resumes reading if the
     * connection was full, or finalizes it. */
    uint64_t one = 1;
    (void)!write(st->wake_fd, &one, sizeof(one));
}

static void *worker_main(void *arg)
{
    tcp_state_t *st = arg;
    pthread_mutex_lock(&st->lock);
    for (;;) {
        while (!st->jobs && !st->worker_stopping)
            pthread_cond_wait(&st->work_cond, &st->lock);
        if (!st->jobs)
            break;
        tcp_job_t *j = st->jobs;
        st->jobs = j->next;
        if (!st->jobs)
            st->jobs_tail = NULL;
        tcp_conn_t *c = j->sock->conn;
        kvrt_xfer_bk_peer_t *peer = c->peer;
        if (c->failed) {
            pthread_mutex_unlock(&st->lock);
            kvrt_xfer_bk_drop_msg(peer, j->work);
            pthread_mutex_lock(&st->lock);
            job_finish(st, j, KVRT_ERR_PEER_FAILED, 0);
            continue;
        }
        /* The connection cannot be finalized (nor its peer freed) while
         * the job counts in c->jobs, so both stay valid unlocked. */
        pthread_mutex_unlock(&st->lock);
        uint32_t reply_bytes = 0;
        kvrt_status_t status = kvrt_xfer_bk_serve_msg(peer, j->type, j->payload, j->bytes, j->work,
                                                      st->work_reply, KVRT_XFER_WIRE_MSG_MAX,
                                                      &reply_bytes);
        pthread_mutex_lock(&st->lock);
        job_finish(st, j, status, reply_bytes);
    }
    pthread_mutex_unlock(&st->lock);
    return NULL;
}
