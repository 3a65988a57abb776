/*
 * agent_internal.h - the agent's objects as agent.c, peer.c, upkeep.c,
 * accept.c, region.c, request.c, revoke.c and kv.c share them. Internal: nothing here is ABI.
 *
 * Locking: one mutex per agent (agent->lock) guards every field below that
 * changes after creation: the region table, peers and their states,
 * requests, the completion and notification queues and the statistics.
 * Backend ops are never called with it held (a backend may complete work
 * synchronously inside an op, which takes the lock again); the pattern is
 * "decide under the lock, act after unlocking".
 *
 * Lifetimes. Whatever a thread uses after dropping the lock, it holds:
 *  - a peer: p->busy++ under the lock before unlocking (the peer must be
 *    listed in agent->peers, or reached through r->peer, or already held),
 *    xfer_peer_put() under the lock after. Closing a peer (disconnect,
 *    dropping a broken passive peer, agent destroy) marks it `closing` and
 *    unlists it in one locked section, so no thread finds it anew; the
 *    peer is freed by whoever drops the last hold after that, never
 *    earlier. A thread that made a connection for a peer that is closing
 *    by then closes that connection itself.
 *  - a peer's connection: besides holding the peer, p->conn_users++ while a
 *    backend op (post, send_msg, cancel, accept of an extra socket) runs on
 *    p->conn. Only peer_take_conn() (peer.c) detaches a connection for closing,
 *    and it waits until no op uses it.
 *  - a region: `users` counts operations of outstanding requests, taken in
 *    the same locked section that validates the region; `pins` counts
 *    incoming accesses. Deregistration marks the region `dying` (lookup and
 *    new requests refuse it; its slot stays taken) and frees it only with
 *    users == 0 and pins == 0; otherwise it clears `dying` again and
 *    returns KVRT_ERR_BUSY.
 *  - a request: r->busy while a thread uses it unlocked; it is freed by
 *    request_maybe_free() once complete, not busy, and not owned by the
 *    user (or released). User-owned requests stay on agent->owned_requests
 *    until freed; agent destroy frees what is left.
 */
#ifndef KVRT_XFER_AGENT_INTERNAL_H
#define KVRT_XFER_AGENT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "dispatch.h"
#include "core/completion_queue.h"
#include "core/core.h"
#include "core/free_list.h"
#include "kvrt/xfer.h"
#include "sidechannel.h"

/* Region ids: low 16 bits a slot, high 16 bits a generation, so a stale id
 * from a deregistered region never names its slot's next tenant. */
#define XFER_REGION_SLOTS 65536u
#define XFER_NOTIFY_QUEUE 4096u
/* Requests of up to this many (split) operations keep them inline, and the
 * first batch of every request is part of it: a plain post allocates
 * nothing once the agent's request cache is warm. */
#define XFER_INLINE_OPS 4u
/* Requests made when an agent is created (at most max_requests); freed
 * requests are kept for reuse up to max_requests. */
#define XFER_RESERVED_REQUESTS 256u
/* Operations longer than this are split; it is also a TCP frame's limit. */
#define XFER_OP_SPLIT (16ull << 20)
/* What one peer may make the agent hold or do, by default (agent params). */
#define XFER_MAX_QUEUED_DEFAULT (16ull << 20)
#define XFER_ACCESS_DEADLINE_MS 5000u
/* KV checksum work one message may ask for (blocks x block bytes), unless
 * it names a single block, and what one peer may have queued with an
 * agent. Senders cut their messages to fit the first and keep within the
 * second, so only a hostile peer is refused. */
#define XFER_HASH_WORK_MAX (256ull << 20)
#define XFER_HASH_BUDGET (1ull << 30)

typedef struct xfer_link {
    struct xfer_link *prev, *next;
} xfer_link_t;

static inline void xfer_list_init(xfer_link_t *head) { head->prev = head->next = head; }
static inline bool xfer_list_empty(const xfer_link_t *head) { return head->next == head; }
static inline void xfer_list_push(xfer_link_t *head, xfer_link_t *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}
static inline void xfer_list_del(xfer_link_t *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = l;
}
#define XFER_CONTAINER(ptr, type, member)                                        \
    ((type *)(void *)((char *)(ptr) - __builtin_offsetof(type, member)))

typedef struct xfer_stats {
    uint64_t bytes_written, bytes_read, ops, requests, requests_failed, refused,
        auth_failures, reconnects, integrity_failures, revocations, hash_refused;
    uint64_t handshakes_pending;  /* gauge, written by the accept thread */
    uint64_t handshakes_dropped;  /* timed out or displaced before authenticating */
} xfer_stats_t;

struct kvrt_xfer_region {
    kvrt_xfer_agent_t *agent;
    kvrt_xfer_bk_region_t bk;
    uint32_t key_bytes;
    uint8_t key[KVRT_XFER_BK_KEY_MAX];
    bool has_pool;
    kvrt_pool_t *pool;  /* held while registered (POOL bit), else NULL */
    kvrt_kv_layout_t layout;
    uint32_t num_blocks;
    bool ready;     /* registered with the backend; served from now on */
    bool dying;     /* being deregistered: refused to lookups and requests */
    uint32_t pins;  /* incoming accesses in progress (kvrt_xfer_bk_pin) */
    uint32_t users; /* local operations of outstanding batches */
};

struct kvrt_xfer_remote {
    kvrt_xfer_peer_t *peer;
    xfer_link_t link;        /* in peer->remotes */
    kvrt_xfer_bk_remote_t bk;
    uint64_t instance;       /* of the agent that registered it (descriptor) */
    bool has_pool;
    bool device;             /* the peer's region is device (dmabuf) memory */
    kvrt_kv_layout_t layout;
    uint32_t num_blocks;
    uint32_t users;          /* operations of outstanding batches */
};

struct kvrt_xfer_peer {
    kvrt_xfer_agent_t *agent;
    xfer_link_t link;        /* in agent->peers */
    bool dialed;             /* we connected (and so we reconnect) */
    bool closing;            /* unlisted; freed when the last hold goes */
    uint32_t busy;           /* holds: threads using it unlocked */
    uint32_t conn_users;     /* backend ops running on conn */
    kvrt_xfer_addr_t addr;
    uint8_t session[KVRT_XFER_SESSION_BYTES];
    /* The name the remote agent stated in the handshake of the connection
     * attached (peer info, logs, notifications); remote_name is the last
     * handshake's, which the backend setting up that connection names. */
    char name[KVRT_XFER_NAME_MAX];
    char remote_name[KVRT_XFER_NAME_MAX];
    /* A dialed peer's remote agent instance, as its listener stated it in
     * the last handshake: only remotes of that instance are posted to. */
    uint64_t remote_instance;
    /* The instance of the last connection attached (what peer info
     * reports): remote_instance is set by a handshake, before the backend
     * is set up, and an attempt may still fail after it. */
    uint64_t attached_instance;
    kvrt_xfer_peer_state_t state;
    kvrt_status_t last_error;
    void *conn;              /* backend connection, NULL while down */
    bool conn_broken;        /* backend reported failure; close pending */
    uint32_t connections;
    uint32_t reconnects, attempts, backoff_ms;
    uint64_t next_attempt_ns;
    bool dialing;            /* a reconnection attempt's thread holds it */
    uint32_t setups;         /* claimed first sockets still being set up (passive) */
    xfer_link_t requests;    /* outstanding, in post order */
    xfer_link_t remotes;
    uint64_t next_seq;
    /* Incoming accesses in progress (kvrt_xfer_bk_pin) and when one last
     * began or ended: pins with no progress for the access deadline get
     * the peer revoked. */
    uint32_t pins;
    uint64_t progress_ns;
    uint64_t hash_work;      /* KV checksum bytes of its messages admitted, not served */
    uint64_t hash_work_out;  /* ... of our messages to it, not yet answered */
};

typedef enum xfer_phase {
    XFER_PHASE_DATA = 0,     /* batches being posted or in flight */
    XFER_PHASE_MSGS = 1,     /* closing messages (checksums, notification) */
    XFER_PHASE_DONE = 2
} xfer_phase_t;

typedef struct xfer_batch xfer_batch_t;

struct xfer_batch {
    kvrt_xfer_bk_batch_t bk;   /* first: the backend hands this pointer back */
    kvrt_xfer_request_t *request;
    xfer_batch_t *next;
    bool done;
};

struct kvrt_xfer_request {
    kvrt_xfer_agent_t *agent;
    kvrt_xfer_peer_t *peer;    /* NULL once the peer is gone */
    xfer_link_t link;          /* in peer->requests while outstanding */
    xfer_link_t owned_link;    /* in agent->owned_requests if user_owned */
    uint64_t deadline_ns;
    uint64_t user_data;
    uint64_t bytes;
    bool user_owned, released;
    bool quiet;                /* no completion entry (kvrt_xfer_notify) */
    bool gated;                /* waits for every earlier request (notify) */
    bool notify_sent;
    bool expired;              /* its deadline passed and it was aborted */
    xfer_phase_t phase;
    kvrt_status_t status;      /* KVRT_INPROGRESS until complete */
    kvrt_status_t error;       /* first failure seen, reported at the end */
    uint32_t busy;             /* a thread uses it unlocked; freeing waits */
    kvrt_xfer_bk_op_t *ops;    /* inline_ops, or malloc'd for longer lists */
    uint32_t count, next_op;
    uint64_t inflight, max_inflight;
    uint32_t batches_out;      /* posted, not yet done */
    xfer_batch_t *batch_list;  /* every batch made, freed with the request */
    xfer_msg_t *msg;           /* the closing message in flight, or NULL */
    uint8_t notify[KVRT_XFER_NOTIFY_MAX];
    uint32_t notify_bytes;
    kvrt_xfer_bk_op_t inline_ops[XFER_INLINE_OPS];
    xfer_batch_t first_batch;  /* the first batch cut; later ones are malloc'd */
    /* The layer that made the request (its closing messages), or NULL. */
    const xfer_request_layer_t *layer;
    void *layer_state;
};

/* A closing message. It outlives its request if the request completes
 * (times out) first: the request lets go and msg_done frees it. */
struct xfer_msg {
    kvrt_xfer_bk_msg_t bk;     /* first */
    kvrt_xfer_agent_t *agent;
    kvrt_xfer_request_t *request; /* NULL once the request let go */
    /* Work it asks of the peer (counted in peer->hash_work_out until it
     * is answered; the peer outlives every message on its connection). */
    kvrt_xfer_peer_t *peer;
    uint64_t work;
    uint8_t payload[];
};

/* A peer name refused until until_ns (revoke.c). */
#define XFER_REFUSED_NAMES_MAX 256u
typedef struct xfer_refusal {
    char name[KVRT_XFER_NAME_MAX];
    uint64_t until_ns;
} xfer_refusal_t;

struct kvrt_xfer_agent {
    kvrt_owned_t owned;
    kvrt_ctx_t *ctx;
    uint32_t index;
    char name[KVRT_XFER_NAME_MAX];
    char address[96];
    kvrt_xfer_key_t key;
    uint64_t instance;         /* random; see sidechannel.h, "Instances" */
    const kvrt_xfer_backend_t *backend;
    void *bk_state;
    uint32_t timeout_ms, connections, max_requests;
    uint32_t reconnect_initial_ms, reconnect_max_ms, reconnect_attempts;
    uint64_t zerocopy_threshold;
    kvrt_xfer_protection_t protection;
    uint32_t max_peers;        /* passive peers held at most */
    uint32_t max_pending;      /* unauthenticated connections held at most */
    uint32_t handshake_timeout_ms; /* pre-authentication deadline */
    uint64_t max_queued_bytes; /* per peer, for the backend */
    uint64_t access_deadline_ns;
    atomic_uint_fast64_t queued_bytes, reads_paused; /* backend-reported */

    pthread_mutex_t lock;
    pthread_cond_t cond;       /* completions, unpins, peer changes */
    int listen_fd, wake_fd;
    int accept_epoll;          /* the accept thread's: listener + handshakes */
    pthread_t control, upkeep;
    bool control_started, stopping;
    /* kvrt_xfer_agent_destroy has begun: no incoming connection is taken
     * any more, so a peer that keeps dialing cannot keep it closing
     * connections for ever. */
    bool destroying;

    kvrt_xfer_region_t **regions;
    uint16_t *generations;
    uint32_t nregions;
    xfer_link_t peers;
    uint32_t npeers;           /* listed peers */
    uint32_t peers_alive;      /* allocated peers, closing ones included */
    xfer_link_t owned_requests;
    uint32_t outstanding;      /* requests not yet complete */
    kvrt_free_list_t free_requests; /* freed requests kept for reuse */

    /* Completions: max_requests slots, one reserved by every outstanding
     * request, so a completion always has room and post is refused while
     * outstanding + unpolled == max_requests. Notifications: the last
     * XFER_NOTIFY_QUEUE, dropping the oldest. Both signal one eventfd (the
     * completions queue's), the one kvrt_xfer_agent_eventfd() returns. */
    kvrt_cq_t *completions;
    kvrt_cq_t *notes;
    xfer_stats_t stats;
    /* Refusal log lines: at most XFER_REFUSAL_LINES per second, the rest
     * counted and reported with the next line let through. */
    uint64_t refusal_window_ns, refusals_suppressed;
    uint32_t refusal_lines;
    xfer_msg_serve_fn handlers[XFER_MSG_TYPES]; /* dispatch.c; fixed after create */
    xfer_msg_work_fn work_of[XFER_MSG_TYPES];   /* NULL: cheap, served at once */
    /* Names refused at the handshake until a time (kvrt_xfer_refuse_name;
     * revoke.c). */
    xfer_refusal_t refused_names[XFER_REFUSED_NAMES_MAX];
    uint32_t nrefused_names;
    /* Connections past the name check and not yet attached to their peer
     * or closed: kvrt_xfer_refuse_name waits for none to be left. */
    uint32_t settling;
    /* The threads of reconnection attempts (xfer_dialer_t, upkeep.c), under
     * the lock: the upkeep thread joins those whose attempt is done, and
     * destroy the rest, so that no thread of the agent outlives it. */
    xfer_link_t dialers;
};

/* ---- peer.c ------------------------------------------------------------ */
/* Whether requests can be admitted to p now (lock held): connected, with a
 * live connection, not closing. */
static inline bool xfer_peer_up(const kvrt_xfer_peer_t *p)
{
    return !p->closing && p->state == KVRT_XFER_PEER_CONNECTED && p->conn && !p->conn_broken;
}
#define XFER_REFUSAL_LINES 10
/* Whether a refusal may be logged now (lock held): a peer can make the
 * agent refuse as fast as it sends, and each refusal must not cost a log
 * line. *suppressed_out gets how many were held back since the last line. */
bool xfer_refusal_log_ok(kvrt_xfer_agent_t *a, uint64_t *suppressed_out);

/* Drops a hold on p (lock held); frees p when it was the last hold of a
 * closing peer. */
void xfer_peer_put(kvrt_xfer_peer_t *p);
/* Detaches p's connection for closing (lock held, p held), waiting until
 * no backend op runs on it. */
void *peer_take_conn(kvrt_xfer_peer_t *p);
/* Starts closing a listed peer (lock held): unlists it, fails its requests
 * with status, takes a hold and its connection for peer_close_put(). */
void *peer_shut(kvrt_xfer_peer_t *p, kvrt_status_t status);
/* Closes conn (if any) of held peer p, then drops the hold. Unlocked. */
void peer_close_put(kvrt_xfer_peer_t *p, void *conn);
/* A new, unlisted peer in state CONNECTED; NULL on no memory. */
kvrt_xfer_peer_t *xfer_peer_new(kvrt_xfer_agent_t *agent, bool dialed);
/* Dials, authenticates and sets up the backend connection of dialed peer
 * p (first connect and reconnects), unlocked. On success the connection
 * counts in agent->settling until the caller attached or closed it. */
kvrt_status_t xfer_peer_establish(kvrt_xfer_peer_t *p, uint64_t deadline_ns,
                                  void **conn_out, char *why, size_t why_bytes);

/* ---- upkeep.c ---------------------------------------------------------- */
/* The upkeep thread (started by agent create, stopped by `stopping`). */
void *xfer_upkeep_main(void *agent);
/* Joins the reconnection attempts' threads that are done, or all of them
 * (agent destroy, once the upkeep thread has stopped). Unlocked. */
void xfer_dialers_join(kvrt_xfer_agent_t *agent, bool all);

/* ---- revoke.c ---------------------------------------------------------- */
/* Revokes listed peer p (lock held; returns with it held, having dropped
 * it meanwhile): fails its requests, closes its connection (so its pins
 * go), drops it if passive, else leaves it RECONNECTING. */
void xfer_peer_revoke(kvrt_xfer_peer_t *p, kvrt_status_t why);
/* Revokes every listed peer holding pins that made no progress for
 * idle_ns (0: every peer holding pins). Lock held (dropped meanwhile).
 * Returns how many. */
uint32_t xfer_revoke_stalled(kvrt_xfer_agent_t *agent, uint64_t idle_ns, kvrt_status_t why);
/* Whether a peer naming itself `name` is refused now (kvrt_xfer_refuse_name;
 * lock held). Forgets refusals that ran out. */
bool xfer_name_refused(kvrt_xfer_agent_t *a, const char *name);
/* A connection counted in a->settling is attached or closed (lock held). */
void xfer_settled(kvrt_xfer_agent_t *a);

/* ---- agent.c ----------------------------------------------------------- */
/* The listener's admission of an authenticated HELLO (a kvrt_xfer_sc_admit_fn
 * with the agent as arg): KVRT_ERR_BUSY for a new session beyond
 * max_peers. */
kvrt_status_t xfer_admit_peer(void *agent, const kvrt_xfer_hello_t *hello);
/* An authenticated incoming socket on its way to becoming a passive
 * peer's connection (or an extra socket of one): claimed on the accept
 * thread, set up by the backend there or on a set-up thread. */
typedef struct xfer_incoming {
    kvrt_xfer_agent_t *agent;
    kvrt_xfer_peer_t *peer;  /* held (and counted in settling for a first socket) */
    void *conn;              /* the connection an extra socket joins, else NULL */
    int fd;                  /* blocking; the backend's from xfer_incoming_setup */
    uint32_t conn_index;
    kvrt_xfer_sc_keys_t keys;
    char name[KVRT_XFER_NAME_MAX];
} xfer_incoming_t;
/* Finds or makes the peer the socket fd (blocking; ownership passes) is
 * for, and holds it in *in (accept thread, unlocked: admission and the
 * peer's creation stay on that one thread). false: nothing to set up (a
 * refused name, an extra socket of no live session), fd closed. */
bool xfer_incoming_claim(kvrt_xfer_agent_t *a, int fd, const kvrt_xfer_hello_t *hello,
                         const kvrt_xfer_sc_keys_t *keys, xfer_incoming_t *in);
/* Runs the backend's accept on a claimed socket and attaches the result
 * to its peer, or drops the peer if the set-up failed; lets go of what
 * the claim held. Any thread, unlocked; blocks while the backend does. */
void xfer_incoming_setup(xfer_incoming_t *in);

/* ---- accept.c ------------------------------------------------------------ */
/* The accept thread (started by agent create, stopped by `stopping`):
 * accepts connections and runs their handshakes concurrently. */
void *xfer_accept_main(void *agent);

/* ---- region.c ---------------------------------------------------------- */
void xfer_regions_destroy_all(kvrt_xfer_agent_t *agent);
/* Looks a region up by wire id; caller holds the lock. Dying or not yet
 * ready regions are not found. */
kvrt_xfer_region_t *xfer_region_lookup(kvrt_xfer_agent_t *agent, uint32_t id);
/* KVRT_ERR_UNKNOWN_REGION, with a message naming op (the op's index in
 * its request), if r's peer is connected to another instance than the
 * one r's descriptor names; else KVRT_OK (a peer that is down is refused
 * by the admission instead). Caller holds the lock, in the section that
 * admits the request, so no reconnection can come between. */
kvrt_status_t xfer_remote_current(const kvrt_xfer_remote_t *r, uint32_t op);

/* ---- request.c --------------------------------------------------------- */
/* Checks that a request can be admitted to peer and reserves its completion
 * slot (lock held). On KVRT_OK the caller calls xfer_request_new next, in
 * the same locked section; it takes over the reservation. */
kvrt_status_t xfer_request_admit(kvrt_xfer_peer_t *peer);
/* Makes an outstanding request (lock held, admitted, ops validated in the
 * same locked section). With count <= XFER_INLINE_OPS the ops are copied
 * into the request and stay the caller's; longer lists must be malloc'd and
 * the request takes them over. NULL when out of memory (the admission's
 * reservation is then given back; malloc'd ops stay the caller's). */
kvrt_xfer_request_t *xfer_request_new(kvrt_xfer_peer_t *peer, kvrt_xfer_bk_op_t *ops,
                                      uint32_t count, uint32_t timeout_ms,
                                      uint64_t max_inflight, bool user_owned);
/* Reserves the agent's first requests (at create). */
kvrt_status_t xfer_requests_reserve(kvrt_xfer_agent_t *agent);
/* Drives a peer's requests forward: posts batches and closing messages as
 * the window and ordering allow. Call without the lock, holding the peer. */
void xfer_peer_pump(kvrt_xfer_peer_t *peer);
/* Finishes a post made under a->lock: the caller's data, the notification
 * (NULL: none), the handle; then pumps the peer outside the lock. Returns
 * with a->lock released. */
void xfer_request_launch(kvrt_xfer_agent_t *a, kvrt_xfer_peer_t *peer,
                         kvrt_xfer_request_t *r, uint64_t user_data, const void *notify,
                         uint32_t notify_bytes, kvrt_xfer_request_t **request_out);
/* Fails every outstanding request of a peer with status (lock held). Their
 * batches end when the connection closes. */
void xfer_peer_fail_requests(kvrt_xfer_peer_t *peer, kvrt_status_t status);
/* Frees the user-owned requests left at agent destroy (every peer is
 * closed, so they are complete). */
void xfer_requests_destroy_all(kvrt_xfer_agent_t *agent);
/* Fails expired requests and cancels their batches; call unlocked. */
void xfer_requests_expire(kvrt_xfer_agent_t *agent, uint64_t now_ns);
/* Allocates a closing message of `bytes` payload for r (lock held). */
xfer_msg_t *xfer_msg_new(kvrt_xfer_request_t *r, uint32_t type, uint32_t bytes);
/* r's notification as a closing message, marked sent (lock held); NULL
 * without memory. */
xfer_msg_t *xfer_notify_msg(kvrt_xfer_request_t *r);
/* Queues a received notification (lock held) and signals the eventfd. */
void xfer_notification_push(kvrt_xfer_agent_t *agent, const char *from,
                            kvrt_status_t status, const uint8_t *data,
                            uint32_t bytes);

/* ---- the layers' registrations (listed in dispatch.c) ------------------ */
kvrt_status_t xfer_notify_register(kvrt_xfer_agent_t *agent); /* request.c */
kvrt_status_t xfer_kv_register(kvrt_xfer_agent_t *agent);     /* kv/kv.c */

#endif /* KVRT_XFER_AGENT_INTERNAL_H */
