/*
 * peer.c - peers of an agent: their holds and connections, dialing and
 * authenticating (first connect and reconnects), connect, disconnect and
 * their state, and what a backend reports about a connection (failure,
 * bytes, refusals).
 */
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_internal.h"
#include "tcp/frame_auth.h"

kvrt_xfer_peer_t *xfer_peer_new(kvrt_xfer_agent_t *agent, bool dialed)
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

kvrt_status_t xfer_peer_establish(kvrt_xfer_peer_t *p, uint64_t deadline_ns,
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
    if (conn_index != 0) {
        /* An extra socket must reach the instance the first one did. */
        pthread_mutex_lock(&a->lock);
        bool other = instance != p->remote_instance;
        pthread_mutex_unlock(&a->lock);
        if (other) {
            close(fd);
            return KVRT_ERR_CONNECT;
        }
    } else {
        pthread_mutex_lock(&a->lock);
        bool refused = xfer_name_refused(a, server);
        if (!refused) {
            memcpy(p->remote_name, server, sizeof(p->remote_name));
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
    kvrt_xfer_peer_t *p = xfer_peer_new(agent, true);
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
    kvrt_status_t st = xfer_peer_establish(p, deadline, &conn, why, sizeof(why));
    if (st != KVRT_OK) {
        free(p);
        return kvrt_fail(agent->ctx, st, "connecting to %s: %s", address, why);
    }
    pthread_mutex_lock(&agent->lock);
    xfer_settled(agent);
    p->conn = conn;
    p->attached_instance = p->remote_instance;
    memcpy(p->name, p->remote_name, sizeof(p->name));
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
    info.instance = peer->attached_instance;
    pthread_mutex_unlock(&a->lock);
    memcpy(info_out, &info, info.struct_size < sizeof(info) ? info.struct_size : sizeof(info));
    return KVRT_OK;
}

/* ---- backend upcalls about connections ------------------------------------ */

void kvrt_xfer_bk_conn_failed(kvrt_xfer_bk_peer_t *p, kvrt_status_t status,
                              const char *why)
{
    kvrt_xfer_agent_t *a = p->agent;
    char name[KVRT_XFER_NAME_MAX];
    pthread_mutex_lock(&a->lock);
    memcpy(name, p->name, sizeof(name)); /* an attach may rewrite it */
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
                 "xfer %s: connection to %s lost (%s): %s", a->name, name,
                 kvrt_status_str(status), why ? why : "");
        uint64_t one = 1;
        (void)!write(a->wake_fd, &one, sizeof(one));
    }
}

kvrt_ctx_t *kvrt_xfer_bk_ctx(const kvrt_xfer_bk_peer_t *p) { return p->agent->ctx; }
const char *kvrt_xfer_bk_peer_name(const kvrt_xfer_bk_peer_t *p) { return p->remote_name; }

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
    char name[KVRT_XFER_NAME_MAX];
    pthread_mutex_lock(&a->lock);
    a->stats.refused++;
    bool log = xfer_refusal_log_ok(a, &suppressed);
    memcpy(name, p->name, sizeof(name));
    pthread_mutex_unlock(&a->lock);
    if (log)
        kvrt_log(a->ctx, KVRT_LOG_WARN,
                 "xfer %s: refused from %s (%s): %s (%" PRIu64 " similar lines suppressed)",
                 a->name, name, kvrt_status_str(status), why, suppressed);
}
