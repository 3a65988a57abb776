/*
 * upkeep.c - the agent's upkeep thread: every UPKEEP_PERIOD_NS, or when
 * woken, it expires requests, revokes peers whose accesses stall, closes
 * broken connections and starts reconnection attempts of dialed peers
 * (exponential backoff with jitter), each attempt on a thread of its own.
 */
#include <poll.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_internal.h"

/* How long one reconnection attempt (dial, handshake, backend set-up) may
 * take; it runs on a thread of its own. */
#define HANDSHAKE_NS (2000ull * 1000000ull)
/* How often the upkeep thread looks at timeouts when nothing wakes it. */
#define UPKEEP_PERIOD_NS (5ull * 1000000ull)

/* A reconnection attempt's thread, listed in agent.dialers until joined. */
typedef struct xfer_dialer {
    xfer_link_t link;
    pthread_t thread;
    kvrt_xfer_peer_t *peer;  /* held (busy, dialing) by the attempt */
    bool done;               /* (lock) the attempt let go of the agent: join it */
} xfer_dialer_t;

/* The end of a reconnection attempt (on its thread, d; on the upkeep
 * thread, d NULL, when no thread could be had): attaches the connection,
 * or counts the failure and sets the next attempt's time; then lets go of
 * the peer and the attempt. */
static void reconnect_finish(kvrt_xfer_peer_t *p, kvrt_status_t st, void *conn, const char *why,
                             xfer_dialer_t *d)
{
    kvrt_xfer_agent_t *a = p->agent;
    void *stale = NULL;
    pthread_mutex_lock(&a->lock);
    if (p->closing) {
        stale = conn; /* disconnected while we dialed */
    } else if (st == KVRT_OK) {
        p->conn = conn;
        p->attached_instance = p->remote_instance;
        memcpy(p->name, p->remote_name, sizeof(p->name));
        p->state = KVRT_XFER_PEER_CONNECTED;
        p->reconnects++;
        p->attempts = 0;
        p->backoff_ms = a->reconnect_initial_ms;
        a->stats.reconnects++;
    } else if (st == KVRT_ERR_AUTH || ++p->attempts >= a->reconnect_attempts) {
        p->state = KVRT_XFER_PEER_FAILED;
        p->last_error = st;
    } else {
        /* Exponential backoff with up to 25% jitter, so that many
         * peers losing one node do not all knock at once. */
        uint32_t next = p->backoff_ms * 2;
        if (next > a->reconnect_max_ms)
            next = a->reconnect_max_ms;
        p->backoff_ms = next;
        uint32_t jitter = randombytes_uniform(next / 4 + 1);
        p->next_attempt_ns = kvrt_now_ns() + (uint64_t)(next + jitter) * 1000000ull;
    }
    char name[KVRT_XFER_NAME_MAX];
    memcpy(name, p->name, sizeof(name));
    pthread_mutex_unlock(&a->lock);
    kvrt_log(a->ctx, st == KVRT_OK ? KVRT_LOG_INFO : KVRT_LOG_DEBUG,
             "xfer %s: reconnect to %s: %s %s", a->name, name, kvrt_status_str(st), why);
    if (stale)
        a->backend->close(a->bk_state, stale);
    pthread_mutex_lock(&a->lock);
    if (st == KVRT_OK)
        xfer_settled(a);
    p->dialing = false;
    xfer_peer_put(p);
    /* The last touch of the agent: the thread only returns after this. */
    if (d)
        d->done = true;
    pthread_mutex_unlock(&a->lock);
}

/* One reconnection attempt (dial, handshakes, backend set-up; at most
 * HANDSHAKE_NS) on a thread of its own, holding the peer: an unreachable
 * or silent address holds this thread only, never the upkeep thread. */
static void *reconnect_main(void *arg)
{
    xfer_dialer_t *d = arg;
    pthread_setname_np(pthread_self(), "kvrt-reconnect"); /* (for ps, gdb and tests) */
    char why[256] = "";
    void *conn = NULL;
    kvrt_status_t st = xfer_peer_establish(d->peer, kvrt_now_ns() + HANDSHAKE_NS, &conn,
                                           why, sizeof(why));
    reconnect_finish(d->peer, st, conn, why, d);
    return NULL;
}

/* Starts the attempt of p (held, dialing) on a thread of its own, or fails
 * it at once without one. */
static void dialer_start(kvrt_xfer_agent_t *a, kvrt_xfer_peer_t *p)
{
    xfer_dialer_t *d = calloc(1, sizeof(*d));
    if (d)
        d->peer = p;
    if (!d || pthread_create(&d->thread, NULL, reconnect_main, d) != 0) {
        free(d);
        reconnect_finish(p, KVRT_ERR_NO_MEMORY, NULL, "(no thread for the attempt)", NULL);
        return;
    }
    /* Listed once started: this (upkeep) thread lists and joins them, and
     * destroy only once it has stopped, so no one reads d->thread early. */
    pthread_mutex_lock(&a->lock);
    xfer_list_push(&a->dialers, &d->link);
    pthread_mutex_unlock(&a->lock);
}

/* Joins the attempts' threads that are done (on the upkeep thread), or all
 * of them (destroy, once the upkeep thread has stopped: an attempt under
 * way ends within HANDSHAKE_NS). Joined unlocked: an attempt needs the
 * lock to finish. */
void xfer_dialers_join(kvrt_xfer_agent_t *a, bool all)
{
    xfer_link_t ended;
    xfer_list_init(&ended);
    pthread_mutex_lock(&a->lock);
    for (xfer_link_t *l = a->dialers.next, *next; l != &a->dialers; l = next) {
        next = l->next;
        if (all || XFER_CONTAINER(l, xfer_dialer_t, link)->done) {
            xfer_list_del(l);
            xfer_list_push(&ended, l);
        }
    }
    pthread_mutex_unlock(&a->lock);
    while (!xfer_list_empty(&ended)) {
        xfer_dialer_t *d = XFER_CONTAINER(ended.next, xfer_dialer_t, link);
        xfer_list_del(&d->link);
        pthread_join(d->thread, NULL);
        free(d);
    }
}

/* Closes broken connections and starts reconnection attempts of dialed
 * peers whose backoff ran out. One action per call; never waits on a
 * peer: backend closes run unlocked, attempts on their own threads. */
static bool upkeep_peers(kvrt_xfer_agent_t *a)
{
    uint64_t now = kvrt_now_ns();
    pthread_mutex_lock(&a->lock);
    for (xfer_link_t *l = a->peers.next; l != &a->peers; l = l->next) {
        kvrt_xfer_peer_t *p = XFER_CONTAINER(l, kvrt_xfer_peer_t, link);
        if (p->conn_broken) {
            void *conn;
            if (!p->dialed) {
                /* A passive peer ends with its connection. */
                conn = peer_shut(p, KVRT_ERR_PEER_FAILED);
            } else {
                p->busy++;
                conn = peer_take_conn(p);
                p->conn_broken = false;
                p->next_attempt_ns = now + (uint64_t)p->backoff_ms * 1000000ull;
            }
            pthread_mutex_unlock(&a->lock);
            peer_close_put(p, conn);
            return true;
        }
        if (p->dialed && p->state == KVRT_XFER_PEER_RECONNECTING && !p->conn && !p->dialing &&
            now >= p->next_attempt_ns) {
            p->busy++;
            p->dialing = true;
            pthread_mutex_unlock(&a->lock);
            dialer_start(a, p);
            return true;
        }
    }
    pthread_mutex_unlock(&a->lock);
    return false;
}

void *xfer_upkeep_main(void *arg)
{
    kvrt_xfer_agent_t *a = arg;
    for (;;) {
        struct pollfd p = {.fd = a->wake_fd, .events = POLLIN};
        if (poll(&p, 1, (int)(UPKEEP_PERIOD_NS / 1000000ull)) > 0) {
            uint64_t v;
            (void)!read(a->wake_fd, &v, sizeof(v));
        }
        pthread_mutex_lock(&a->lock);
        bool stop = a->stopping;
        pthread_mutex_unlock(&a->lock);
        if (stop)
            break;
        xfer_requests_expire(a, kvrt_now_ns());
        pthread_mutex_lock(&a->lock);
        xfer_revoke_stalled(a, a->access_deadline_ns, KVRT_ERR_TIMEOUT);
        pthread_mutex_unlock(&a->lock);
        for (int i = 0; i < 64 && upkeep_peers(a); i++)
            ;
        xfer_dialers_join(a, false);
    }
    return NULL;
}
