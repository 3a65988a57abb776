/*
 * accept.c - the accept thread: takes incoming connections and runs their
 * handshakes (sidechannel.h) concurrently, one epoll loop, each connection
 * a small state machine fed by non-blocking reads. No peer can make the
 * listener wait for it: a silent or slow connection only holds its own
 * entry, for at most the pre-authentication deadline
 * (handshake_timeout_ms, counted from accept, however slowly bytes
 * trickle in), and at most max_pending connections wait at once; one more
 * closes the oldest. Once a handshake succeeds the socket goes back to
 * blocking mode and to the agent (xfer_incoming_claim), then to the
 * backend: at once when its accept does not wait on the peer (TCP), else
 * (the verbs QP set-up) on a set-up thread of its own, so that a key
 * holder stalling its set-up holds that thread only, never this loop or
 * another peer's set-up. Set-ups are bounded like handshakes: each by the
 * backend's deadline, and at most max_pending at once; one more aborts the
 * oldest (its socket is shut down, so the backend fails it at once).
 *
 * Everything here belongs to the accept thread; only the two statistics
 * are published under the agent's lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent_internal.h"
#include "core/endian.h"

/* Connections taken per readiness of the listener, so that a burst does
 * not starve handshakes already under way. */
#define ACCEPT_BATCH 64
/* Out of descriptors or memory, the pending connection stays queued and
 * the listener stays readable: it leaves the epoll set for a pause that
 * doubles from the first to the last value. */
#define ACCEPT_BACKOFF_MIN_MS 10
#define ACCEPT_BACKOFF_MAX_MS 500
/* The loop also looks at `stopping` at least this often. */
#define ACCEPT_TICK_MS 50

typedef enum hs_state {
    HS_HELLO,  /* reading the HELLO frame */
    HS_PROOF,  /* CHALLENGE queued or sent; reading the PROOF frame */
    HS_RESULT, /* an accepting RESULT queued; the peer is ours once it is sent */
} hs_state_t;

/* Why a pending connection is dropped (for the log line). */
typedef enum hs_drop {
    DROP_TIMEOUT,
    DROP_DISPLACED,
    DROP_CLOSED,   /* EOF or a socket error from the peer */
    DROP_PROTOCOL, /* not a well-formed handshake frame */
    DROP_REFUSED,  /* the verdict (sent in RESULT) was not KVRT_OK */
    DROP_SHUTDOWN, /* the agent is going away (not logged) */
} hs_drop_t;

typedef struct pending {
    xfer_link_t link; /* in acceptor.pending, oldest first */
    int fd;
    bool dead;        /* closed this round; freed at its end */
    hs_state_t state;
    uint64_t deadline_ns;
    /* The frame being read: header, then payload up to `need`. */
    uint32_t have, need, capacity;
    uint8_t in[KVRT_XFER_SC_HEADER_BYTES + KVRT_XFER_SC_HELLO_BYTES];
    /* What is being sent: CHALLENGE, then RESULT. */
    uint32_t out_sent, out_len;
    uint8_t out[KVRT_XFER_SC_HEADER_BYTES + KVRT_XFER_SC_CHALLENGE_BYTES];
    kvrt_xfer_sc_server_t hs;
    kvrt_xfer_sc_keys_t keys;
} pending_t;

typedef struct acceptor acceptor_t;

/* A backend set-up running on its own thread. */
typedef struct setup {
    xfer_link_t link;       /* in acceptor.setups, oldest first */
    acceptor_t *ac;
    pthread_t thread;
    int abort_fd;           /* a dup of the socket: shutting it down aborts the set-up */
    bool aborted;
    atomic_bool finished;   /* the thread is done; join it */
    xfer_incoming_t in;
} setup_t;

struct acceptor {
    kvrt_xfer_agent_t *a;
    int ep;
    int reap_fd;            /* eventfd: a set-up thread finished (-1: the tick finds it) */
    xfer_link_t setups;     /* oldest first */
    uint32_t nsetups;       /* not aborted */
    xfer_link_t pending;   /* oldest first: deadlines are in this order too */
    xfer_link_t dead;      /* dropped this round, freed at its end */
    uint32_t count;
    uint64_t dropped;      /* timed out or displaced, not yet published */
    bool listening;        /* the listener is in the epoll set */
    int backoff_ms;
    uint64_t resume_ns;    /* when the listener rejoins the set */
};

static const char *drop_text(hs_drop_t why)
{
    switch (why) {
    case DROP_TIMEOUT: return "no handshake before the deadline";
    case DROP_DISPLACED: return "too many handshakes pending, the oldest dropped";
    case DROP_CLOSED: return "closed by the peer";
    case DROP_PROTOCOL: return "not a kvrt handshake";
    default: return "refused";
    }
}

/* Closes a pending connection. Its entry lives until the end of the
 * round, since an event for it may still be in this round's list. */
static void drop(acceptor_t *ac, pending_t *p, hs_drop_t why, kvrt_status_t verdict)
{
    kvrt_xfer_agent_t *a = ac->a;
    uint64_t suppressed = 0;
    bool log = false;
    if (why != DROP_SHUTDOWN) {
        pthread_mutex_lock(&a->lock);
        log = xfer_refusal_log_ok(a, &suppressed);
        pthread_mutex_unlock(&a->lock);
    }
    close(p->fd);
    p->dead = true;
    xfer_list_del(&p->link);
    xfer_list_push(&ac->dead, &p->link);
    ac->count--;
    if (why == DROP_TIMEOUT || why == DROP_DISPLACED)
        ac->dropped++;
    if (log)
        kvrt_log(a->ctx, verdict == KVRT_ERR_AUTH ? KVRT_LOG_WARN : KVRT_LOG_INFO,
                 "xfer %s: incoming connection refused: %s%s%s (%" PRIu64
                 " similar lines suppressed)",
                 a->name, drop_text(why), why == DROP_REFUSED ? ": " : "",
                 why == DROP_REFUSED ? kvrt_status_str(verdict) : "", suppressed);
}

static void expect_frame(pending_t *p, uint32_t capacity)
{
    p->have = 0;
    p->need = KVRT_XFER_SC_HEADER_BYTES;
    p->capacity = capacity;
}

static void queue_frame(pending_t *p, uint16_t type, const uint8_t *payload, uint32_t bytes)
{
    kvrt_xfer_sc_header_encode(p->out, type, bytes);
    memcpy(p->out + KVRT_XFER_SC_HEADER_BYTES, payload, bytes);
    p->out_sent = 0;
    p->out_len = KVRT_XFER_SC_HEADER_BYTES + bytes;
}

/* Sends what is queued; false when the peer failed (p dropped). While
 * something is left (a full send buffer: unlikely for the few hundred
 * bytes a handshake sends, but a peer may arrange it) the connection waits
 * for EPOLLOUT only and nothing more is read from it. */
static bool flush(acceptor_t *ac, pending_t *p)
{
    while (p->out_sent < p->out_len) {
        ssize_t n = send(p->fd, p->out + p->out_sent, p->out_len - p->out_sent,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p->out_sent += (uint32_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = p};
            epoll_ctl(ac->ep, EPOLL_CTL_MOD, p->fd, &ev);
            return true;
        } else {
            drop(ac, p, DROP_CLOSED, KVRT_OK);
            return false;
        }
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
    epoll_ctl(ac->ep, EPOLL_CTL_MOD, p->fd, &ev);
    return true;
}

/* ---- backend set-ups --------------------------------------------------- */

static void *setup_main(void *arg)
{
    setup_t *s = arg;
    xfer_incoming_setup(&s->in);
    atomic_store(&s->finished, true);
    if (s->ac->reap_fd >= 0) {
        uint64_t one = 1;
        (void)!write(s->ac->reap_fd, &one, sizeof(one));
    }
    return NULL;
}

static void setup_abort(setup_t *s)
{
    if (s->aborted)
        return;
    s->aborted = true;
    s->ac->nsetups--;
    shutdown(s->abort_fd, SHUT_RDWR);
}

/* Joins the set-up threads that finished (all of them, with `all`). */
static void setups_reap(acceptor_t *ac, bool all)
{
    for (xfer_link_t *l = ac->setups.next, *next; l != &ac->setups; l = next) {
        next = l->next;
        setup_t *s = XFER_CONTAINER(l, setup_t, link);
        if (!all && !atomic_load(&s->finished))
            continue;
        pthread_join(s->thread, NULL);
        if (!s->aborted)
            ac->nsetups--;
        close(s->abort_fd);
        xfer_list_del(&s->link);
        free(s);
    }
}

/* Starts the backend's set-up of a claimed socket on a thread of its own;
 * at max_pending set-ups the oldest is aborted first. Without the means
 * to (memory, descriptors, threads) the set-up fails at once, on this
 * thread, its socket shut down first so that nothing waits. */
static void setup_start(acceptor_t *ac, xfer_incoming_t *in)
{
    kvrt_xfer_agent_t *a = ac->a;
    /* Set-ups that just finished do not count (nor get aborted: their
     * connection may be live by now). */
    setups_reap(ac, false);
    if (ac->nsetups >= a->max_pending) {
        for (xfer_link_t *l = ac->setups.next; l != &ac->setups; l = l->next) {
            setup_t *old = XFER_CONTAINER(l, setup_t, link);
            if (!old->aborted && !atomic_load(&old->finished)) {
                setup_abort(old);
                break;
            }
        }
        uint64_t suppressed = 0;
        pthread_mutex_lock(&a->lock);
        bool log = xfer_refusal_log_ok(a, &suppressed);
        pthread_mutex_unlock(&a->lock);
        if (log)
            kvrt_log(a->ctx, KVRT_LOG_WARN,
                     "xfer %s: %u backend set-ups pending, the oldest aborted (%" PRIu64
                     " similar lines suppressed)",
                     a->name, a->max_pending, suppressed);
    }
    setup_t *s = calloc(1, sizeof(*s));
    if (s) {
        s->ac = ac;
        s->in = *in;
        s->abort_fd = fcntl(in->fd, F_DUPFD_CLOEXEC, 0);
    }
    if (s && s->abort_fd >= 0 && pthread_create(&s->thread, NULL, setup_main, s) == 0) {
        sodium_memzero(&in->keys, sizeof(in->keys));
        xfer_list_push(&ac->setups, &s->link);
        ac->nsetups++;
        return;
    }
    if (s && s->abort_fd >= 0)
        close(s->abort_fd);
    if (s)
        sodium_memzero(&s->in.keys, sizeof(s->in.keys));
    free(s);
    shutdown(in->fd, SHUT_RDWR);
    xfer_incoming_setup(in);
}

/* The handshake succeeded and RESULT is out: the socket becomes the
 * agent's, then the backend's. */
static void hand_over(acceptor_t *ac, pending_t *p)
{
    kvrt_xfer_agent_t *a = ac->a;
    int fd = p->fd;
    epoll_ctl(ac->ep, EPOLL_CTL_DEL, fd, NULL);
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    kvrt_xfer_hello_t hello = p->hs.parsed;
    /* Unlisted like a drop, without closing: the fd is passed on. */
    p->dead = true;
    xfer_list_del(&p->link);
    xfer_list_push(&ac->dead, &p->link);
    ac->count--;
    xfer_incoming_t in;
    bool claimed = xfer_incoming_claim(a, fd, &hello, &p->keys, &in);
    sodium_memzero(&p->keys, sizeof(p->keys));
    if (!claimed)
        return;
    if (a->backend->accept_waits && in.conn_index == 0)
        setup_start(ac, &in);
    else
        xfer_incoming_setup(&in);
}

/* A whole frame is in p->in: the next step of the handshake. */
static void on_frame(acceptor_t *ac, pending_t *p)
{
    kvrt_xfer_agent_t *a = ac->a;
    const uint8_t *payload = p->in + KVRT_XFER_SC_HEADER_BYTES;
    uint32_t bytes = p->have - KVRT_XFER_SC_HEADER_BYTES;
    if (p->state == HS_HELLO) {
        if (kvrt_xfer_sc_server_hello(&p->hs, &a->key, a->name, a->instance, payload,
                                      bytes) != KVRT_OK) {
            drop(ac, p, DROP_PROTOCOL, KVRT_ERR_PROTOCOL);
            return;
        }
        p->state = HS_PROOF;
        expect_frame(p, KVRT_XFER_SC_PROOF_BYTES);
        queue_frame(p, KVRT_XFER_SC_CHALLENGE, p->hs.challenge, KVRT_XFER_SC_CHALLENGE_BYTES);
        flush(ac, p);
        return;
    }
    /* The PROOF. admit runs here, on this one thread, so the peer count
     * it answers from cannot change before the peer is made. */
    kvrt_status_t verdict = kvrt_xfer_sc_server_proof(
        &p->hs, &a->key, (uint32_t)a->backend->kind, (uint32_t)a->protection,
        xfer_admit_peer, a, payload, bytes, &p->keys);
    uint8_t result[KVRT_XFER_SC_RESULT_BYTES];
    kvrt_store_le32(result, (uint32_t)(int32_t)verdict);
    queue_frame(p, KVRT_XFER_SC_RESULT, result, sizeof(result));
    if (verdict != KVRT_OK) {
        /* Counted before the dialer can read RESULT, then one try at
         * telling it why (not waited for), then the close. */
        if (verdict == KVRT_ERR_AUTH) {
            pthread_mutex_lock(&a->lock);
            a->stats.auth_failures++;
            pthread_mutex_unlock(&a->lock);
        }
        (void)!send(p->fd, p->out, p->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        drop(ac, p, DROP_REFUSED, verdict);
        return;
    }
    p->state = HS_RESULT;
    if (flush(ac, p) && p->out_sent == p->out_len)
        hand_over(ac, p);
}

/* Reads what the peer sent, never past the frame expected (the bytes after
 * the handshake belong to the backend), and acts on whole frames. */
static void on_readable(acceptor_t *ac, pending_t *p)
{
    while (!p->dead && p->state != HS_RESULT && p->out_sent == p->out_len) {
        ssize_t n = recv(p->fd, p->in + p->have, p->need - p->have, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            drop(ac, p, DROP_CLOSED, KVRT_OK);
            return;
        }
        p->have += (uint32_t)n;
        if (p->have < p->need)
            continue;
        if (p->need == KVRT_XFER_SC_HEADER_BYTES) {
            uint16_t type = p->state == HS_HELLO ? KVRT_XFER_SC_HELLO : KVRT_XFER_SC_PROOF;
            uint32_t bytes = 0;
            if (kvrt_xfer_sc_header_check(p->in, type, p->capacity, &bytes) != KVRT_OK) {
                drop(ac, p, DROP_PROTOCOL, KVRT_ERR_PROTOCOL);
                return;
            }
            p->need += bytes;
            if (bytes)
                continue;
        }
        on_frame(ac, p);
    }
}

static void on_event(acceptor_t *ac, pending_t *p, uint32_t events)
{
    if (p->dead)
        return;
    if (p->out_sent < p->out_len) {
        if (!flush(ac, p))
            return;
        if (p->out_sent < p->out_len) {
            if (events & (EPOLLERR | EPOLLHUP))
                drop(ac, p, DROP_CLOSED, KVRT_OK);
            return;
        }
        if (p->state == HS_RESULT) {
            hand_over(ac, p);
            return;
        }
    }
    on_readable(ac, p);
}

static void listener_pause(acceptor_t *ac)
{
    kvrt_xfer_agent_t *a = ac->a;
    bool first = ac->backoff_ms == 0;
    ac->backoff_ms = first ? ACCEPT_BACKOFF_MIN_MS
                           : (ac->backoff_ms * 2 > ACCEPT_BACKOFF_MAX_MS ? ACCEPT_BACKOFF_MAX_MS
                                                                         : ac->backoff_ms * 2);
    if (first)
        kvrt_log(a->ctx, KVRT_LOG_WARN, "xfer %s: cannot accept: %s; backing off", a->name,
                 strerror(errno));
    epoll_ctl(ac->ep, EPOLL_CTL_DEL, a->listen_fd, NULL);
    ac->listening = false;
    ac->resume_ns = kvrt_now_ns() + (uint64_t)ac->backoff_ms * 1000000ull;
}

static void listener_resume(acceptor_t *ac)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ac->ep, EPOLL_CTL_ADD, ac->a->listen_fd, &ev) == 0)
        ac->listening = true;
    else
        ac->resume_ns = kvrt_now_ns() + (uint64_t)ACCEPT_BACKOFF_MAX_MS * 1000000ull;
}

static void on_listener(acceptor_t *ac)
{
    kvrt_xfer_agent_t *a = ac->a;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(a->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                listener_pause(ac);
            else if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN: the queue is empty */
        }
        ac->backoff_ms = 0;
        if (ac->count >= a->max_pending)
            drop(ac, XFER_CONTAINER(ac->pending.next, pending_t, link), DROP_DISPLACED,
                 KVRT_OK);
        pending_t *p = calloc(1, sizeof(*p));
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = p};
        if (!p || epoll_ctl(ac->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            free(p);
            close(fd);
            continue;
        }
        p->fd = fd;
        p->state = HS_HELLO;
        p->deadline_ns = kvrt_now_ns() + (uint64_t)a->handshake_timeout_ms * 1000000ull;
        expect_frame(p, KVRT_XFER_SC_HELLO_BYTES);
        xfer_list_push(&ac->pending, &p->link);
        ac->count++;
    }
}

/* Milliseconds epoll may sleep: until the oldest deadline, the listener's
 * return, or the next look at `stopping`. */
static int wait_ms(const acceptor_t *ac, uint64_t now)
{
    uint64_t until = now + ACCEPT_TICK_MS * 1000000ull;
    if (!xfer_list_empty(&ac->pending)) {
        const pending_t *oldest = XFER_CONTAINER(ac->pending.next, pending_t, link);
        if (oldest->deadline_ns < until)
            until = oldest->deadline_ns;
    }
    if (!ac->listening && ac->resume_ns < until)
        until = ac->resume_ns;
    return until <= now ? 0 : (int)((until - now + 999999) / 1000000);
}

static void free_dead(acceptor_t *ac)
{
    while (!xfer_list_empty(&ac->dead)) {
        pending_t *p = XFER_CONTAINER(ac->dead.next, pending_t, link);
        xfer_list_del(&p->link);
        sodium_memzero(&p->keys, sizeof(p->keys));
        free(p);
    }
}

void *xfer_accept_main(void *arg)
{
    acceptor_t ac = {.a = arg, .ep = ((kvrt_xfer_agent_t *)arg)->accept_epoll};
    kvrt_xfer_agent_t *a = ac.a;
    xfer_list_init(&ac.pending);
    xfer_list_init(&ac.dead);
    xfer_list_init(&ac.setups);
    listener_resume(&ac);
    /* Set-up threads signal it when done; its events carry &ac.reap_fd. */
    ac.reap_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event rev = {.events = EPOLLIN, .data.ptr = &ac.reap_fd};
    if (ac.reap_fd >= 0 && epoll_ctl(ac.ep, EPOLL_CTL_ADD, ac.reap_fd, &rev) != 0) {
        close(ac.reap_fd);
        ac.reap_fd = -1;
    }
    uint64_t published = 0;
    for (;;) {
        struct epoll_event ev[64];
        int n = epoll_wait(ac.ep, ev, 64, wait_ms(&ac, kvrt_now_ns()));
        pthread_mutex_lock(&a->lock);
        bool stop = a->stopping;
        pthread_mutex_unlock(&a->lock);
        if (stop)
            break;
        for (int i = 0; i < n; i++) {
            if (ev[i].data.ptr == &ac.reap_fd) {
                uint64_t v;
                (void)!read(ac.reap_fd, &v, sizeof(v));
            } else if (ev[i].data.ptr) {
                on_event(&ac, ev[i].data.ptr, ev[i].events);
            } else if (ac.listening) {
                on_listener(&ac);
            }
        }
        setups_reap(&ac, false);
        uint64_t now = kvrt_now_ns();
        while (!xfer_list_empty(&ac.pending)) {
            pending_t *oldest = XFER_CONTAINER(ac.pending.next, pending_t, link);
            if (oldest->deadline_ns > now)
                break;
            drop(&ac, oldest, DROP_TIMEOUT, KVRT_OK);
        }
        if (!ac.listening && now >= ac.resume_ns)
            listener_resume(&ac);
        free_dead(&ac);
        if (published != ac.count || ac.dropped) {
            pthread_mutex_lock(&a->lock);
            a->stats.handshakes_pending = ac.count;
            a->stats.handshakes_dropped += ac.dropped;
            pthread_mutex_unlock(&a->lock);
            published = ac.count;
            ac.dropped = 0;
        }
    }
    while (!xfer_list_empty(&ac.pending))
        drop(&ac, XFER_CONTAINER(ac.pending.next, pending_t, link), DROP_SHUTDOWN, KVRT_OK);
    free_dead(&ac);
    /* Set-ups under way fail at once with their sockets shut down. */
    for (xfer_link_t *l = ac.setups.next; l != &ac.setups; l = l->next)
        setup_abort(XFER_CONTAINER(l, setup_t, link));
    setups_reap(&ac, true);
    if (ac.reap_fd >= 0) {
        epoll_ctl(ac.ep, EPOLL_CTL_DEL, ac.reap_fd, NULL);
        close(ac.reap_fd);
    }
    return NULL;
}
