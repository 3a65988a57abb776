/*
 * agent.c - the transfer agent: creation and teardown, its two threads
 * (accept, in accept.c: authenticate incoming sockets; upkeep: close broken
 * connections, start reconnection attempts with backoff, each on a thread
 * of its own, expire requests), peers and their
 * states, what an authenticated incoming socket becomes, and the upcalls a
 * backend uses for connections.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "agent_internal.h"
#include "tcp/frame_auth.h"

/* How long one reconnection attempt (dial, handshake, backend set-up) may
 * take; it runs on a thread of its own. */
#define HANDSHAKE_NS (2000ull * 1000000ull)
/* How often the upkeep thread looks at timeouts when nothing wakes it. */
#define UPKEEP_PERIOD_NS (5ull * 1000000ull)

/* ---- statistics ----------------------------------------------------------- */

#define STAT_GETTER(field)                                                       \
    static void get_##field(void *obj, kvrt_ctl_value_t *v)                      \
    {                                                                            \
        kvrt_xfer_agent_t *a = obj;                                              \
        pthread_mutex_lock(&a->lock);                                            \
        v->u64 = a->stats.field;                                                 \
        pthread_mutex_unlock(&a->lock);                                          \
    }
STAT_GETTER(bytes_written)
STAT_GETTER(bytes_read)
STAT_GETTER(ops)
STAT_GETTER(requests)
STAT_GETTER(requests_failed)
STAT_GETTER(refused)
STAT_GETTER(auth_failures)
STAT_GETTER(reconnects)
STAT_GETTER(integrity_failures)
STAT_GETTER(handshakes_pending)
STAT_GETTER(handshakes_dropped)
STAT_GETTER(revocations)
STAT_GETTER(hash_refused)

static void get_queued_bytes(void *obj, kvrt_ctl_value_t *v)
{
    v->u64 = atomic_load_explicit(&((kvrt_xfer_agent_t *)obj)->queued_bytes, memory_order_relaxed);
}

static void get_reads_paused(void *obj, kvrt_ctl_value_t *v)
{
    v->u64 = atomic_load_explicit(&((kvrt_xfer_agent_t *)obj)->reads_paused, memory_order_relaxed);
}

static void get_notifications_dropped(void *obj, kvrt_ctl_value_t *v)
{
    kvrt_xfer_agent_t *a = obj;
    v->u64 = kvrt_cq_counts(a->notes).dropped;
}

static void get_regions(void *obj, kvrt_ctl_value_t *v)
{
    kvrt_xfer_agent_t *a = obj;
    pthread_mutex_lock(&a->lock);
    v->u64 = a->nregions;
    pthread_mutex_unlock(&a->lock);
}

static void get_outstanding(void *obj, kvrt_ctl_value_t *v)
{
    kvrt_xfer_agent_t *a = obj;
    pthread_mutex_lock(&a->lock);
    v->u64 = a->outstanding;
    pthread_mutex_unlock(&a->lock);
}

static void get_peers(void *obj, kvrt_ctl_value_t *v)
{
    kvrt_xfer_agent_t *a = obj;
    pthread_mutex_lock(&a->lock);
    v->u64 = a->npeers;
    pthread_mutex_unlock(&a->lock);
}

static const kvrt_ctl_node_t stat_nodes[] = {
    {"bytes_written", KVRT_CTL_U64, get_bytes_written, NULL, KVRT_CTL_METRIC_COUNTER,
     "Bytes this agent wrote to peers."},
    {"bytes_read", KVRT_CTL_U64, get_bytes_read, NULL, KVRT_CTL_METRIC_COUNTER,
     "Bytes this agent read from peers."},
    {"ops", KVRT_CTL_U64, get_ops, NULL, KVRT_CTL_METRIC_COUNTER,
     "Transfer operations completed."},
    {"requests", KVRT_CTL_U64, get_requests, NULL, KVRT_CTL_METRIC_COUNTER,
     "Transfer requests posted."},
    {"requests_failed", KVRT_CTL_U64, get_requests_failed, NULL, KVRT_CTL_METRIC_COUNTER,
     "Transfer requests that ended in an error."},
    {"refused", KVRT_CTL_U64, get_refused, NULL, KVRT_CTL_METRIC_COUNTER,
     "Peer requests refused (bounds, unknown regions, bad frames)."},
    {"auth_failures", KVRT_CTL_U64, get_auth_failures, NULL, KVRT_CTL_METRIC_COUNTER,
     "Peer connections that failed authentication."},
    {"regions", KVRT_CTL_U64, get_regions, NULL, KVRT_CTL_METRIC_GAUGE,
     "Registered memory regions."},
    {"outstanding", KVRT_CTL_U64, get_outstanding, NULL, KVRT_CTL_METRIC_GAUGE,
     "Transfer requests in flight."},
    {"peers", KVRT_CTL_U64, get_peers, NULL, KVRT_CTL_METRIC_GAUGE,
     "Connected peers."},
    {"reconnects", KVRT_CTL_U64, get_reconnects, NULL, KVRT_CTL_METRIC_COUNTER,
     "Peer connections re-established."},
    {"integrity_failures", KVRT_CTL_U64, get_integrity_failures, NULL, KVRT_CTL_METRIC_COUNTER,
     "Payloads whose checksum did not match."},
    {"notifications_dropped", KVRT_CTL_U64, get_notifications_dropped, NULL, KVRT_CTL_METRIC_COUNTER,
     "Notifications dropped because the queue was full."},
    {"handshakes_pending", KVRT_CTL_U64, get_handshakes_pending, NULL, KVRT_CTL_METRIC_GAUGE,
     "Incoming connections not yet authenticated."},
    {"handshakes_dropped", KVRT_CTL_U64, get_handshakes_dropped, NULL, KVRT_CTL_METRIC_COUNTER,
     "Incoming connections closed before authenticating: deadline passed, or displaced."},
    {"queued_bytes", KVRT_CTL_U64, get_queued_bytes, NULL, KVRT_CTL_METRIC_GAUGE,
     "Bytes held for replies peers have not taken yet."},
    {"reads_paused", KVRT_CTL_U64, get_reads_paused, NULL, KVRT_CTL_METRIC_COUNTER,
     "Times reading from a peer stopped because it did not take its replies."},
    {"revocations", KVRT_CTL_U64, get_revocations, NULL, KVRT_CTL_METRIC_COUNTER,
     "Peers revoked (by call, by deregistration, or for stalled accesses)."},
    {"hash_refused", KVRT_CTL_U64, get_hash_refused, NULL, KVRT_CTL_METRIC_COUNTER,
     "KV checksum messages refused: too much work or over the peer's budget."},
};

/* ---- peers ---------------------------------------------------------------- */

static kvrt_xfer_peer_t *peer_new(kvrt_xfer_agent_t *agent, bool dialed)
{
    kvrt_xfer_peer_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->agent = agent;
    p->dialed = dialed;
    p->state = KVRT_XFER_PEER_CONNECTED;
    p->last_error = KVRT_OK;
    xfer_list_init(&p->link);
    xfer_list_init(&p->requests);
    xfer_list_init(&p->remotes);
    return p;
}

/* Frees a closing peer whose last hold is gone (lock held). */
static void peer_free(kvrt_xfer_peer_t *p)
{
    kvrt_xfer_agent_t *a = p->agent;
    /* Every request completed when the connection closed; whatever still
     * points here only reads its status. */
    while (!xfer_list_empty(&p->requests)) {
        kvrt_xfer_request_t *r = XFER_CONTAINER(p->requests.next, kvrt_xfer_request_t, link);
        xfer_list_del(&r->link);
        r->peer = NULL;
    }
    while (!xfer_list_empty(&p->remotes)) {
        kvrt_xfer_remote_t *r = XFER_CONTAINER(p->remotes.next, kvrt_xfer_remote_t, link);
        xfer_list_del(&r->link);
        free(r);
    }
    a->peers_alive--;
    pthread_cond_broadcast(&a->cond);
    free(p);
}

void xfer_peer_put(kvrt_xfer_peer_t *p)
{
    if (--p->busy == 0 && p->closing)
        peer_free(p);
}

/* Detaches p's connection for closing (lock held, p held): no new backend
 * op starts on it, and those running have returned. */
void *peer_take_conn(kvrt_xfer_peer_t *p)
{
    kvrt_xfer_agent_t *a = p->agent;
    void *conn = p->conn;
    p->conn = NULL;
    while (p->conn_users)
        pthread_cond_wait(&a->cond, &a->lock);
    return conn;
}

/* Starts closing a listed peer (lock held): unlists it, fails its
 * requests, takes a hold and its connection. The caller closes the
 * connection unlocked, then drops the hold with xfer_peer_put(). */
void *peer_shut(kvrt_xfer_peer_t *p, kvrt_status_t status)
{
    kvrt_xfer_agent_t *a = p->agent;
    p->closing = true;
    xfer_list_del(&p->link);
    a->npeers--;
    p->busy++;
    xfer_peer_fail_requests(p, status);
    return peer_take_conn(p);
}

/* Closes conn (if any) of held peer p, then drops the hold. Unlocked. */
void peer_close_put(kvrt_xfer_peer_t *p, void *conn)
{
    kvrt_xfer_agent_t *a = p->agent;
    /* close() completes every batch still on the connection, so after it
     * no request of this peer has anything in flight. */
    if (conn)
        a->backend->close(a->bk_state, conn);
    pthread_mutex_lock(&a->lock);
    xfer_peer_put(p);
    pthread_mutex_unlock(&a->lock);
}

static kvrt_xfer_peer_t *peer_by_session(kvrt_xfer_agent_t *a, const uint8_t *session)
{
    for (xfer_link_t *l = a->peers.next; l != &a->peers; l = l->next) {
        kvrt_xfer_peer_t *p = XFER_CONTAINER(l, kvrt_xfer_peer_t, link);
        if (!p->dialed && memcmp(p->session, session, KVRT_XFER_SESSION_BYTES) == 0)
            return p;
    }
    return NULL;
}

/* Dials, authenticates and sets up the backend connection of a dialed peer
 * (first connect and reconnects). Called without the lock. On success the
 * connection counts in a->settling until the caller attached or closed it. */
static kvrt_status_t peer_establish(kvrt_xfer_peer_t *p, uint64_t deadline_ns,
                                    void **conn_out, char *why, size_t why_bytes)
{
    int fd = -1;
    kvrt_xfer_sc_keys_t keys;
    kvrt_status_t st = kvrt_xfer_bk_dial(p, 0, deadline_ns, &fd, &keys);
    if (st != KVRT_OK) {
        snprintf(why, why_bytes, "handshake with %s failed: %s", p->name[0] ? p->name : "peer",
                 kvrt_status_str(st));
        return st;
    }
    kvrt_xfer_agent_t *a = p->agent;
    st = a->backend->connect(a->bk_state, p, fd, &keys, deadline_ns, conn_out, why, why_bytes);
    sodium_memzero(&keys, sizeof(keys));
    if (st != KVRT_OK) {
        pthread_mutex_lock(&a->lock);
        xfer_settled(a);
        pthread_mutex_unlock(&a->lock);
    }
    return st;
}

kvrt_status_t kvrt_xfer_bk_dial(kvrt_xfer_bk_peer_t *p, uint32_t conn_index,
                                uint64_t deadline_ns, int *fd_out,
                                kvrt_xfer_sc_keys_t *keys_out)
{
    kvrt_xfer_agent_t *a = p->agent;
    int fd = -1;
    kvrt_status_t st = kvrt_xfer_sc_dial(&p->addr, deadline_ns, &fd);
    if (st != KVRT_OK)
        return st;
    kvrt_xfer_hello_t hello = {.version = KVRT_XFER_SC_VERSION,
                               .backend = (uint32_t)a->backend->kind,
                               .conn_index = conn_index,
                               /* the mode asked for, and the suite this CPU
                                * runs fastest (the listener takes it) */
                               .protection = (uint32_t)a->protection |
                                             (uint32_t)kvrt_xfer_frame_suite_offer()
                                                 << KVRT_XFER_FRAME_SUITE_SHIFT};
    memcpy(hello.session, p->session, KVRT_XFER_SESSION_BYTES);
    snprintf(hello.name, sizeof(hello.name), "%s", a->name);
    char server[KVRT_XFER_NAME_MAX];
    uint64_t instance = 0;
    st = kvrt_xfer_sc_auth_client(fd, &a->key, &hello, server, &instance, keys_out,
                                  deadline_ns);
    if (st != KVRT_OK) {
        close(fd);
        if (st == KVRT_ERR_AUTH) {
            pthread_mutex_lock(&a->lock);
            a->stats.auth_failures++;
            pthread_mutex_unlock(&a->lock);
        }
        return st == KVRT_ERR_TIMEOUT || st == KVRT_ERR_PEER_FAILED ? KVRT_ERR_CONNECT : st;
    }
    if (conn_index == 0) {
        pthread_mutex_lock(&a->lock);
        bool refused = xfer_name_refused(a, server);
        if (!refused) {
            memcpy(p->name, server, sizeof(p->name));
            /* Set before the connection is attached, so every request
             * admitted on it is checked against this instance. */
            p->remote_instance = instance;
            a->settling++; /* until the caller attached or closed it */
        }
        pthread_mutex_unlock(&a->lock);
        if (refused) {
            close(fd);
            return KVRT_ERR_CONNECT;
        }
    }
    *fd_out = fd;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_connect(kvrt_xfer_agent_t *agent, const char *address,
                                            uint32_t timeout_ms, kvrt_xfer_peer_t **peer_out)
{
    if (!agent || !address || !peer_out)
        return kvrt_fail(agent ? agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "agent, address and peer_out are required");
    kvrt_xfer_peer_t *p = peer_new(agent, true);
    if (!p)
        return kvrt_fail(agent->ctx, KVRT_ERR_NO_MEMORY, "peer");
    if (kvrt_xfer_addr_parse(address, &p->addr) != KVRT_OK) {
        free(p);
        return kvrt_fail(agent->ctx, KVRT_ERR_INVALID_ARG, "bad address \"%s\"", address);
    }
    randombytes_buf(p->session, sizeof(p->session));
    uint64_t deadline = kvrt_now_ns() + (uint64_t)(timeout_ms ? timeout_ms : agent->timeout_ms) * 1000000ull;
    char why[256] = "";
    void *conn = NULL;
    kvrt_status_t st = peer_establish(p, deadline, &conn, why, sizeof(why));
    if (st != KVRT_OK) {
        free(p);
        return kvrt_fail(agent->ctx, st, "connecting to %s: %s", address, why);
    }
    pthread_mutex_lock(&agent->lock);
    xfer_settled(agent);
    p->conn = conn;
    p->connections = agent->connections;
    p->backoff_ms = agent->reconnect_initial_ms;
    xfer_list_push(&agent->peers, &p->link);
    agent->npeers++;
    agent->peers_alive++;
    pthread_mutex_unlock(&agent->lock);
    kvrt_log(agent->ctx, KVRT_LOG_INFO, "xfer %s: connected to %s (%s)", agent->name,
             p->name, address);
    *peer_out = p;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_disconnect(kvrt_xfer_peer_t *peer)
{
    if (!peer)
        return KVRT_OK;
    kvrt_xfer_agent_t *a = peer->agent;
    pthread_mutex_lock(&a->lock);
    if (peer->closing) {
        pthread_mutex_unlock(&a->lock);
        return KVRT_OK;
    }
    void *conn = peer_shut(peer, KVRT_ERR_CANCELED);
    pthread_mutex_unlock(&a->lock);
    /* A thread still holding the peer (a reconnect, a completion) frees it
     * when it lets go. */
    peer_close_put(peer, conn);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_peer_info(const kvrt_xfer_peer_t *peer,
                                              kvrt_xfer_peer_info_t *info_out)
{
    /* The first version of the struct ends after `name`. */
    const size_t first_size = offsetof(kvrt_xfer_peer_info_t, name) + KVRT_XFER_NAME_MAX;
    if (!peer || !info_out || info_out->struct_size < first_size)
        return kvrt_fail(peer ? peer->agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "peer and info_out with struct_size >= %zu are required", first_size);
    kvrt_xfer_agent_t *a = peer->agent;
    kvrt_xfer_peer_info_t info;
    memset(&info, 0, sizeof(info));
    info.struct_size = info_out->struct_size;
    pthread_mutex_lock(&a->lock);
    info.state = peer->state;
    info.last_error = peer->last_error;
    info.connections = peer->conn && !peer->conn_broken ? peer->connections : 0;
    info.reconnects = peer->reconnects;
    for (xfer_link_t *l = peer->requests.next; l != &peer->requests; l = l->next)
        info.outstanding++;
    memcpy(info.name, peer->name, sizeof(info.name));
    pthread_mutex_unlock(&a->lock);
    memcpy(info_out, &info, info.struct_size < sizeof(info) ? info.struct_size : sizeof(info));
    return KVRT_OK;
}

/* ---- backend upcalls about connections ------------------------------------ */

void kvrt_xfer_bk_conn_failed(kvrt_xfer_bk_peer_t *p, kvrt_status_t status,
                              const char *why)
{
    kvrt_xfer_agent_t *a = p->agent;
    pthread_mutex_lock(&a->lock);
    bool first = !p->conn_broken && p->state == KVRT_XFER_PEER_CONNECTED;
    if (first) {
        p->conn_broken = true;
        p->last_error = status;
        p->state = p->dialed ? KVRT_XFER_PEER_RECONNECTING : KVRT_XFER_PEER_CLOSED;
        xfer_peer_fail_requests(p, KVRT_ERR_PEER_FAILED);
    }
    pthread_mutex_unlock(&a->lock);
    if (first) {
        /* A dialer going away is normal for the listening side. */
        kvrt_log(a->ctx, p->dialed ? KVRT_LOG_WARN : KVRT_LOG_INFO,
                 "xfer %s: connection to %s lost (%s): %s", a->name, p->name,
                 kvrt_status_str(status), why ? why : "");
        uint64_t one = 1;
        (void)!write(a->wake_fd, &one, sizeof(one));
    }
}

kvrt_ctx_t *kvrt_xfer_bk_ctx(const kvrt_xfer_bk_peer_t *p) { return p->agent->ctx; }
const char *kvrt_xfer_bk_peer_name(const kvrt_xfer_bk_peer_t *p) { return p->name; }

void kvrt_xfer_bk_count_bytes(kvrt_xfer_agent_t *a, uint64_t written, uint64_t read)
{
    pthread_mutex_lock(&a->lock);
    a->stats.bytes_written += written;
    a->stats.bytes_read += read;
    pthread_mutex_unlock(&a->lock);
}

void kvrt_xfer_bk_queued(kvrt_xfer_agent_t *a, int64_t delta)
{
    atomic_fetch_add_explicit(&a->queued_bytes, (uint_fast64_t)delta, memory_order_relaxed);
}

void kvrt_xfer_bk_paused(kvrt_xfer_agent_t *a)
{
    atomic_fetch_add_explicit(&a->reads_paused, 1, memory_order_relaxed);
}

bool xfer_refusal_log_ok(kvrt_xfer_agent_t *a, uint64_t *suppressed_out)
{
    uint64_t now = kvrt_now_ns();
    if (now - a->refusal_window_ns >= 1000000000ull) {
        a->refusal_window_ns = now;
        a->refusal_lines = 0;
    }
    if (a->refusal_lines >= XFER_REFUSAL_LINES) {
        a->refusals_suppressed++;
        return false;
    }
    a->refusal_lines++;
    *suppressed_out = a->refusals_suppressed;
    a->refusals_suppressed = 0;
    return true;
}

void kvrt_xfer_bk_refuse(kvrt_xfer_bk_peer_t *p, kvrt_status_t status, const char *why)
{
    kvrt_xfer_agent_t *a = p->agent;
    uint64_t suppressed = 0;
    pthread_mutex_lock(&a->lock);
    a->stats.refused++;
    bool log = xfer_refusal_log_ok(a, &suppressed);
    pthread_mutex_unlock(&a->lock);
    if (log)
        kvrt_log(a->ctx, KVRT_LOG_WARN,
                 "xfer %s: refused from %s (%s): %s (%" PRIu64 " similar lines suppressed)",
                 a->name, p->name, kvrt_status_str(status), why, suppressed);
}

/* ---- incoming connections (the accept thread, accept.c, calls these) ------ */

/* A new session beyond max_peers passive peers is refused (KVRT_ERR_BUSY);
 * a reconnect or an extra socket of a session we hold is not new. Only the
 * accept thread admits and creates passive peers, and it does both in one
 * step, so the count cannot change between this answer and the peer's
 * creation. */
kvrt_status_t xfer_admit_peer(void *arg, const kvrt_xfer_hello_t *hello)
{
    kvrt_xfer_agent_t *a = arg;
    pthread_mutex_lock(&a->lock);
    uint32_t passive = 0;
    bool known = false;
    for (xfer_link_t *l = a->peers.next; l != &a->peers; l = l->next) {
        kvrt_xfer_peer_t *p = XFER_CONTAINER(l, kvrt_xfer_peer_t, link);
        passive += !p->dialed && !p->closing;
        known = known || memcmp(p->session, hello->session, sizeof(p->session)) == 0;
    }
    /* A refused name hears so in RESULT (its connect fails with
     * KVRT_ERR_BUSY, as from a full listener); xfer_incoming_claim
     * checks again, under the lock a refusal is installed with. */
    bool refused = a->destroying ||
                   (hello->conn_index == 0 && xfer_name_refused(a, hello->name));
    pthread_mutex_unlock(&a->lock);
    if (refused)
        return KVRT_ERR_BUSY;
    return hello->conn_index != 0 || known || passive < a->max_peers ? KVRT_OK : KVRT_ERR_BUSY;
}

bool xfer_incoming_claim(kvrt_xfer_agent_t *a, int fd, const kvrt_xfer_hello_t *hello,
                         const kvrt_xfer_sc_keys_t *keys, xfer_incoming_t *in)
{
    bool extra = hello->conn_index != 0;
    void *old = NULL, *conn = NULL;
    pthread_mutex_lock(&a->lock);
    if (a->destroying) { /* admitted before destroy began */
        pthread_mutex_unlock(&a->lock);
        close(fd);
        return false;
    }
    kvrt_xfer_peer_t *p = peer_by_session(a, hello->session);
    /* Checked with the lock that kvrt_xfer_refuse_name holds while it
     * installs a refusal: a connection is refused here, or counted in
     * settling and revoked there once attached. */
    bool refused = !extra && xfer_name_refused(a, hello->name);
    if (refused) {
        p = NULL;
    } else if (!extra && p) {
        /* The dialer reconnects: whatever we still hold of its last
         * session is stale. */
        p->busy++;
        old = peer_take_conn(p);
        p->conn_broken = false;
    } else if (!extra) {
        p = peer_new(a, false);
        if (p) {
            memcpy(p->session, hello->session, sizeof(p->session));
            memcpy(p->name, hello->name, sizeof(p->name));
            xfer_list_push(&a->peers, &p->link);
            a->npeers++;
            a->peers_alive++;
            p->busy++;
        }
    } else if (p && p->conn && !p->conn_broken) {
        /* An extra socket of a live session joins its connection. */
        p->busy++;
        p->conn_users++;
        conn = p->conn;
    } else {
        p = NULL; /* an extra socket for a session we do not hold */
    }
    if (p && !extra && !p->closing)
        p->state = KVRT_XFER_PEER_CONNECTED;
    if (p && !extra) {
        a->settling++;
        p->setups++;
    }
    pthread_mutex_unlock(&a->lock);
    if (refused)
        kvrt_log(a->ctx, KVRT_LOG_INFO, "xfer %s: refused %.63s (kvrt_xfer_refuse_name)",
                 a->name, hello->name);
    if (old)
        a->backend->close(a->bk_state, old);
    if (!p) {
        close(fd);
        return false;
    }
    *in = (xfer_incoming_t){.agent = a, .peer = p, .conn = conn, .fd = fd, .keys = *keys,
                            .conn_index = hello->conn_index};
    memcpy(in->name, hello->name, sizeof(in->name));
    return true;
}

void xfer_incoming_setup(xfer_incoming_t *in)
{
    kvrt_xfer_agent_t *a = in->agent;
    kvrt_xfer_peer_t *p = in->peer;
    bool extra = in->conn_index != 0;
    char why[256] = "";
    void *made = in->conn;
    kvrt_status_t st = a->backend->accept(a->bk_state, p, in->conn, in->fd, &in->keys,
                                          in->conn_index, &made, why, sizeof(why));
    sodium_memzero(&in->keys, sizeof(in->keys));
    void *stale = NULL;
    pthread_mutex_lock(&a->lock);
    if (!extra)
        p->setups--;
    if (extra) {
        p->conn_users--;
        pthread_cond_broadcast(&a->cond);
        if (st == KVRT_OK)
            p->connections++;
    } else if (st == KVRT_OK && (p->closing || p->conn)) {
        stale = made; /* closed while we accepted: nobody wants this one */
    } else if (st == KVRT_OK) {
        p->conn = made;
        p->connections = 1;
    } else if (!p->closing && !p->conn && p->setups == 0) {
        /* The backend could not set the connection up (a refused verbs QP
         * exchange, say): a peer without one must not stay listed, holding
         * a place under max_peers. peer_shut's hold goes at once, ours
         * below. Unless another set-up of its session is under way (on a
         * set-up thread: the dialer reconnected meanwhile): the peer is
         * that one's, and goes with it if it fails too. */
        (void)peer_shut(p, KVRT_ERR_PEER_FAILED);
        xfer_peer_put(p);
    }
    pthread_mutex_unlock(&a->lock);
    if (st != KVRT_OK)
        kvrt_log(a->ctx, KVRT_LOG_WARN, "xfer %s: accepting from %s failed: %s", a->name,
                 in->name, why);
    peer_close_put(p, stale);
    if (!extra) {
        pthread_mutex_lock(&a->lock);
        xfer_settled(a);
        pthread_mutex_unlock(&a->lock);
    }
}

/* ---- the upkeep thread ---------------------------------------------------- */

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
    kvrt_status_t st = peer_establish(d->peer, kvrt_now_ns() + HANDSHAKE_NS, &conn, why,
                                      sizeof(why));
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
static void dialers_join(kvrt_xfer_agent_t *a, bool all)
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

static void *upkeep_main(void *arg)
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
        dialers_join(a, false);
    }
    return NULL;
}

/* ---- creation and teardown ------------------------------------------------ */

static void agent_owned_destroy(kvrt_owned_t *self)
{
    kvrt_xfer_agent_destroy(XFER_CONTAINER(self, kvrt_xfer_agent_t, owned));
}

static kvrt_status_t read_params(kvrt_xfer_agent_t *a, const kvrt_xfer_agent_params_t *p,
                                 kvrt_xfer_backend_kind_t *kind, const char **listen)
{
    const uint64_t known = (KVRT_XFER_AGENT_PARAM_ACCESS_DEADLINE << 1) - 1;
    if (p->field_mask & ~known)
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits");
    if (!p->cluster_key || p->cluster_key_bytes < KVRT_XFER_KEY_MIN)
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG, "a cluster key of at least %d bytes is required",
                         KVRT_XFER_KEY_MIN);
    kvrt_xfer_key_derive(p->cluster_key, p->cluster_key_bytes, &a->key);
    uint64_t m = p->field_mask;
    *kind = (m & KVRT_XFER_AGENT_PARAM_BACKEND) ? p->backend : KVRT_XFER_BACKEND_AUTO;
    if (*kind > KVRT_XFER_BACKEND_VERBS)
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG, "unknown backend %d", (int)*kind);
    *listen = (m & KVRT_XFER_AGENT_PARAM_LISTEN) && p->listen_address ? p->listen_address
                                                                      : "127.0.0.1:0";
    a->timeout_ms = (m & KVRT_XFER_AGENT_PARAM_TIMEOUT) ? p->default_timeout_ms : 10000;
    a->connections = (m & KVRT_XFER_AGENT_PARAM_CONNECTIONS) ? p->connections_per_peer : 4;
    a->max_requests = (m & KVRT_XFER_AGENT_PARAM_MAX_REQUESTS) ? p->max_requests : 4096;
    a->reconnect_initial_ms = 50;
    a->reconnect_max_ms = 2000;
    a->reconnect_attempts = 10;
    if (m & KVRT_XFER_AGENT_PARAM_RECONNECT) {
        a->reconnect_initial_ms = p->reconnect_initial_ms;
        a->reconnect_max_ms = p->reconnect_max_ms;
        a->reconnect_attempts = p->reconnect_attempts;
    }
    a->zerocopy_threshold = (m & KVRT_XFER_AGENT_PARAM_ZEROCOPY) ? p->zerocopy_threshold : (1u << 20);
    a->protection = (m & KVRT_XFER_AGENT_PARAM_PROTECTION) ? p->frame_protection
                                                           : KVRT_XFER_PROTECT_MAC;
    a->max_peers = (m & KVRT_XFER_AGENT_PARAM_MAX_PEERS) ? p->max_peers : 1024;
    if (a->max_peers < 1 || a->max_peers > 65536)
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG, "max_peers %u outside 1..65536",
                         a->max_peers);
    a->max_pending = 256;
    a->handshake_timeout_ms = 1000;
    if (m & KVRT_XFER_AGENT_PARAM_HANDSHAKES) {
        a->max_pending = p->max_pending_handshakes;
        a->handshake_timeout_ms = p->handshake_timeout_ms;
    }
    if (a->max_pending < 1 || a->max_pending > 65536 || a->handshake_timeout_ms < 10 ||
        a->handshake_timeout_ms > 60000)
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG,
                         "max_pending_handshakes %u outside 1..65536 or handshake_timeout_ms "
                         "%u outside 10..60000",
                         a->max_pending, a->handshake_timeout_ms);
    a->max_queued_bytes = (m & KVRT_XFER_AGENT_PARAM_MAX_QUEUED) ? p->max_queued_bytes
                                                                 : XFER_MAX_QUEUED_DEFAULT;
    uint32_t deadline_ms = (m & KVRT_XFER_AGENT_PARAM_ACCESS_DEADLINE) ? p->access_deadline_ms
                                                                      : XFER_ACCESS_DEADLINE_MS;
    a->access_deadline_ns = (uint64_t)deadline_ms * 1000000ull;
    if (a->max_queued_bytes < 4096 || a->max_queued_bytes > (1ull << 30) || deadline_ms < 10 ||
        deadline_ms > 3600000)
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG,
                         "max_queued_bytes (4 KiB..1 GiB) or access_deadline_ms (10..3600000) "
                         "out of range");
    if (a->protection != KVRT_XFER_PROTECT_MAC && a->protection != KVRT_XFER_PROTECT_AEAD)
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG, "unknown frame protection %d",
                         (int)a->protection);
    if (a->timeout_ms == 0 || a->connections < 1 || a->connections > 16 ||
        a->max_requests < 1 || a->max_requests > (1u << 20) || a->reconnect_initial_ms == 0 ||
        a->reconnect_max_ms < a->reconnect_initial_ms || a->reconnect_attempts == 0)
        return kvrt_fail(a->ctx, KVRT_ERR_INVALID_ARG,
                         "timeout, connections (1..16), max_requests (1..2^20) or reconnect "
                         "settings out of range");
    /* The default name needs the index, taken once nothing can fail. */
    if ((m & KVRT_XFER_AGENT_PARAM_NAME) && p->name)
        snprintf(a->name, sizeof(a->name), "%s", p->name);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_agent_create(kvrt_ctx_t *ctx,
                                                 const kvrt_xfer_agent_params_t *params,
                                                 kvrt_xfer_agent_t **agent_out)
{
    if (!ctx || !params || !agent_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "ctx, params and agent_out are required");
    if (sodium_init() < 0)
        return kvrt_fail(ctx, KVRT_ERR_INTERNAL, "libsodium failed to initialise");
    /* Here, before any of the agent's threads can be first to use it. */
    if (!kvrt_xfer_frame_crypto_init())
        return kvrt_fail(ctx, KVRT_ERR_INTERNAL, "OpenSSL's libcrypto failed to initialise");
    kvrt_xfer_agent_t *a = calloc(1, sizeof(*a));
    if (!a)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "agent");
    a->ctx = ctx;
    randombytes_buf(&a->instance, sizeof(a->instance));
    a->listen_fd = a->wake_fd = a->accept_epoll = -1;
    xfer_list_init(&a->peers);
    xfer_list_init(&a->owned_requests);
    xfer_list_init(&a->dialers);
    pthread_mutex_init(&a->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->cond, &ca);
    pthread_condattr_destroy(&ca);

    kvrt_xfer_backend_kind_t kind = KVRT_XFER_BACKEND_AUTO;
    const char *listen_text = "127.0.0.1:0";
    char why[256] = "";
    kvrt_status_t st = read_params(a, params, &kind, &listen_text);
    kvrt_xfer_addr_t addr, bound;
    if (st == KVRT_OK && kvrt_xfer_addr_parse(listen_text, &addr) != KVRT_OK)
        st = kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "bad listen address \"%s\"", listen_text);
    if (st == KVRT_OK && kvrt_xfer_backend_select(kind, &a->backend, why, sizeof(why)) != KVRT_OK)
        st = kvrt_fail(ctx, KVRT_ERR_NO_DEVICE, "%s", why);
    a->regions = calloc(XFER_REGION_SLOTS, sizeof(*a->regions));
    a->generations = calloc(XFER_REGION_SLOTS, sizeof(*a->generations));
    if (st == KVRT_OK && (!a->regions || !a->generations))
        st = kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "agent tables");
    if (st == KVRT_OK)
        st = kvrt_cq_create(ctx, a->max_requests, sizeof(kvrt_xfer_completion_t), 0, -1,
                            &a->completions);
    if (st == KVRT_OK)
        st = kvrt_cq_create(ctx, XFER_NOTIFY_QUEUE, sizeof(kvrt_xfer_notification_t),
                            KVRT_CQ_DROP_OLDEST, kvrt_cq_fd(a->completions), &a->notes);
    if (st == KVRT_OK)
        st = xfer_layers_register(a);
    if (st == KVRT_OK)
        st = xfer_requests_reserve(a);
    if (st == KVRT_OK && kvrt_xfer_sc_listen(&addr, &bound, &a->listen_fd) != KVRT_OK)
        st = kvrt_fail(ctx, KVRT_ERR_IO, "cannot listen on %s: %s", listen_text, strerror(errno));
    if (st == KVRT_OK) {
        kvrt_xfer_addr_format(&bound, a->address, sizeof(a->address));
        /* The accept thread takes connections until the queue is empty. */
        if (fcntl(a->listen_fd, F_SETFL, fcntl(a->listen_fd, F_GETFL) | O_NONBLOCK) != 0)
            st = kvrt_fail(ctx, KVRT_ERR_IO, "listener: %s", strerror(errno));
    }
    if (st == KVRT_OK) {
        a->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (a->wake_fd < 0)
            st = kvrt_fail(ctx, KVRT_ERR_IO, "eventfd: %s", strerror(errno));
    }
    if (st == KVRT_OK) {
        a->accept_epoll = epoll_create1(EPOLL_CLOEXEC);
        if (a->accept_epoll < 0)
            st = kvrt_fail(ctx, KVRT_ERR_IO, "epoll: %s", strerror(errno));
    }
    if (st == KVRT_OK) {
        kvrt_xfer_bk_env_t env = {.ctx = ctx, .agent = a, .name = a->name,
                                  .connections_per_peer = a->connections,
                                  .zerocopy_threshold = a->zerocopy_threshold,
                                  .max_queued_bytes = a->max_queued_bytes};
        if (a->backend->init(&env, &a->bk_state, why, sizeof(why)) != KVRT_OK)
            st = kvrt_fail(ctx, KVRT_ERR_IO, "%s backend: %s", a->backend->name, why);
    }
    if (st == KVRT_OK) {
        /* The threads read the name only after taking the lock, so it can
         * be written here, once the last step that can fail succeeded: a
         * failed create takes no index. */
        pthread_mutex_lock(&a->lock);
        if (pthread_create(&a->control, NULL, xfer_accept_main, a) != 0) {
            st = kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "cannot start the accept thread");
        } else if (pthread_create(&a->upkeep, NULL, upkeep_main, a) != 0) {
            a->stopping = true;
            pthread_mutex_unlock(&a->lock);
            pthread_join(a->control, NULL);
            pthread_mutex_lock(&a->lock);
            st = kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "cannot start the upkeep thread");
        } else {
            a->control_started = true;
            a->index = kvrt_ctx_next_index(ctx, "xfer");
            if (!a->name[0])
                snprintf(a->name, sizeof(a->name), "%s-xfer%u", kvrt_ctx_name(ctx), a->index);
        }
        pthread_mutex_unlock(&a->lock);
    }
    if (st != KVRT_OK) {
        if (a->bk_state)
            a->backend->fini(a->bk_state);
        if (a->listen_fd >= 0)
            close(a->listen_fd);
        if (a->wake_fd >= 0)
            close(a->wake_fd);
        if (a->accept_epoll >= 0)
            close(a->accept_epoll);
        kvrt_free_list_drain(&a->free_requests);
        kvrt_cq_destroy(a->notes);
        kvrt_cq_destroy(a->completions);
        free(a->regions);
        free(a->generations);
        pthread_cond_destroy(&a->cond);
        pthread_mutex_destroy(&a->lock);
        free(a);
        return st;
    }
    kvrt_ctx_own(ctx, &a->owned, agent_owned_destroy);
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "xfer.%u", a->index);
    kvrt_ctl_register(ctx, prefix, stat_nodes, sizeof(stat_nodes) / sizeof(stat_nodes[0]), a);
    kvrt_log(ctx, KVRT_LOG_INFO, "xfer %s: %s backend listening on %s", a->name,
             a->backend->name, a->address);
    *agent_out = a;
    return KVRT_OK;
}

/* Closes every listed peer; each is marked closing and held before the
 * lock is dropped, so no other thread frees it meanwhile. */
static void close_all_peers(kvrt_xfer_agent_t *a)
{
    for (;;) {
        pthread_mutex_lock(&a->lock);
        kvrt_xfer_peer_t *p = xfer_list_empty(&a->peers)
                                  ? NULL
                                  : XFER_CONTAINER(a->peers.next, kvrt_xfer_peer_t, link);
        void *conn = p ? peer_shut(p, KVRT_ERR_CANCELED) : NULL;
        pthread_mutex_unlock(&a->lock);
        if (!p)
            return;
        peer_close_put(p, conn);
    }
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_agent_destroy(kvrt_xfer_agent_t *a)
{
    if (!a)
        return KVRT_OK;
    /* No new connection from here on (the accept thread refuses them),
     * then peers: closing their connections completes every batch, so
     * the requests end and the regions lose their users. */
    pthread_mutex_lock(&a->lock);
    a->destroying = true;
    pthread_mutex_unlock(&a->lock);
    close_all_peers(a);
    pthread_mutex_lock(&a->lock);
    a->stopping = true;
    pthread_mutex_unlock(&a->lock);
    uint64_t one = 1;
    (void)!write(a->wake_fd, &one, sizeof(one));
    if (a->control_started) {
        pthread_join(a->control, NULL);
        pthread_join(a->upkeep, NULL);
    }
    /* A reconnection attempt under way ends within HANDSHAKE_NS; its
     * connection, if any, goes to a closing peer and is closed. */
    dialers_join(a, true);
    /* The threads may have accepted a peer in the meantime. */
    close_all_peers(a);
    /* With the threads stopped and every connection closed, no hold is
     * left; a peer still allocated is freed by the hold being dropped. */
    pthread_mutex_lock(&a->lock);
    while (a->peers_alive)
        pthread_cond_wait(&a->cond, &a->lock);
    pthread_mutex_unlock(&a->lock);
    xfer_requests_destroy_all(a);
    xfer_regions_destroy_all(a);
    a->backend->fini(a->bk_state);
    kvrt_ctl_unregister(a->ctx, a);
    kvrt_ctx_disown(a->ctx, &a->owned);
    close(a->listen_fd);
    close(a->wake_fd);
    close(a->accept_epoll);
    kvrt_free_list_drain(&a->free_requests);
    kvrt_cq_destroy(a->notes);
    kvrt_cq_destroy(a->completions);
    free(a->regions);
    free(a->generations);
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->lock);
    free(a);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_agent_address(const kvrt_xfer_agent_t *agent, char *buf,
                                                  size_t capacity)
{
    if (!agent || !buf)
        return kvrt_fail(agent ? agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "agent and buf are required");
    size_t need = strlen(agent->address) + 1;
    if (capacity < need)
        return kvrt_fail(agent->ctx, KVRT_ERR_BUFFER_TOO_SMALL, "address needs %zu bytes", need);
    memcpy(buf, agent->address, need);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_agent_backend(const kvrt_xfer_agent_t *agent,
                                                  kvrt_xfer_backend_kind_t *kind_out)
{
    if (!agent || !kind_out)
        return kvrt_fail(agent ? agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "agent and kind_out are required");
    *kind_out = agent->backend->kind;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_xfer_agent_eventfd(const kvrt_xfer_agent_t *agent, int *fd_out)
{
    if (!agent || !fd_out)
        return kvrt_fail(agent ? agent->ctx : NULL, KVRT_ERR_INVALID_ARG,
                         "agent and fd_out are required");
    *fd_out = kvrt_cq_fd(agent->completions);
    return KVRT_OK;
}
