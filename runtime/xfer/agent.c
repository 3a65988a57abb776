/*
 * agent.c - the transfer agent: creation and teardown, its statistics, and
 * what an authenticated incoming socket becomes (a passive peer, or an
 * extra socket of one). Its threads: accept (accept.c: authenticates
 * incoming sockets) and upkeep (upkeep.c: broken connections, reconnection
 * attempts, expiring requests); peers and their connections are peer.c's.
 */
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "agent_internal.h"
#include "tcp/frame_auth.h"

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

/* ---- incoming connections (the accept thread, accept.c, calls these) ------ */

static kvrt_xfer_peer_t *peer_by_session(kvrt_xfer_agent_t *a, const uint8_t *session)
{
    for (xfer_link_t *l = a->peers.next; l != &a->peers; l = l->next) {
        kvrt_xfer_peer_t *p = XFER_CONTAINER(l, kvrt_xfer_peer_t, link);
        if (!p->dialed && memcmp(p->session, session, KVRT_XFER_SESSION_BYTES) == 0)
            return p;
    }
    return NULL;
}

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
        p = xfer_peer_new(a, false);
        if (p) {
            memcpy(p->session, hello->session, sizeof(p->session));
            memcpy(p->name, hello->name, sizeof(p->name));
            memcpy(p->remote_name, hello->name, sizeof(p->remote_name));
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
        } else if (pthread_create(&a->upkeep, NULL, xfer_upkeep_main, a) != 0) {
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
    /* A reconnection attempt under way ends within its 2 s; its
     * connection, if any, goes to a closing peer and is closed. */
    xfer_dialers_join(a, true);
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
