/*
 * backend.h - the transfer backends' ops table and what the agent offers
 * them. Internal: nothing here is ABI.
 *
 * The agent (agent.c) owns everything a user sees: regions and their ids,
 * peers and their states, requests, timeouts, the completion queue,
 * notifications and their ordering, reconnection, authentication. A backend
 * only moves bytes: it registers memory with its transport, turns an
 * authenticated side-channel socket into a connection, carries batches of
 * one-sided operations and small messages, and reports completions back.
 * Frozen per version in the manner of NCCL's net plugins: a change to this
 * table bumps KVRT_XFER_BACKEND_VERSION.
 *
 * Threads. The agent calls ops from any thread, but never two ops on the
 * same connection at once except `post`, `send_msg` and `cancel` (which may
 * race with the backend's own progress thread, so they lock what they
 * share). Upcalls (kvrt_xfer_bk_*) are thread-safe and may be called from
 * the backend's progress thread. kvrt_xfer_bk_batch_done and
 * kvrt_xfer_bk_msg_done may call `post` and `send_msg` synchronously (the
 * agent posts the next window of a request from there), so a backend must
 * not hold its own locks while calling those two or conn_failed: collect
 * completions under the lock, deliver them after unlocking. The others
 * (pin, unpin, refuse, admit_msg, deliver_msg, serve_msg, drop_msg, dial,
 * count_bytes, queued, paused, ctx, peer_name) never call into the backend
 * and may be called with its locks held; deliver_msg and serve_msg may
 * work long (KV checksums), so a backend should not hold its locks across
 * them.
 *
 * Connection set-up. Both backends start from a TCP side channel
 * (sidechannel.h): the dialing agent connects, both ends authenticate with
 * the cluster key, the HELLO names the backend and the session; then the
 * agent hands the socket to `connect` (dialing side) or `accept` (listening
 * side). The verbs backend exchanges kvrt_xfer_sc_qp_info_t over it and may
 * close it; the TCP backend keeps it as its first data connection and
 * opens more with the `dial` upcall.
 *
 * Selecting a backend. backends.c holds the table the agent searches:
 * { TCP, and VERBS when KVRT_HAVE_VERBS_BACKEND is defined }. A verbs
 * backend is added by defining `kvrt_xfer_verbs_backend` in its own file
 * and adding `-DKVRT_HAVE_VERBS_BACKEND` to runtime/xfer/CMakeLists.txt; AUTO
 * picks the first backend whose `probe` succeeds, in order VERBS, TCP.
 */
#ifndef KVRT_XFER_BACKEND_H
#define KVRT_XFER_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "core/core.h"
#include "kvrt/xfer.h"
#include "sidechannel.h"

#define KVRT_XFER_BACKEND_VERSION 3

/* Largest backend key blob inside a region descriptor (verbs: rkeys and
 * addresses of up to 16 MR pieces). */
#define KVRT_XFER_BK_KEY_MAX 384

/* A local region as the backend sees it. Owned by the agent; valid from
 * `reg` until `dereg` returns. */
typedef struct kvrt_xfer_bk_region {
    uint32_t id;              /* the id peers name on the wire */
    uint32_t access;          /* enum kvrt_xfer_access bits */
    uint8_t *base;            /* host address (dmabuf: device VA, never read) */
    uint64_t length;
    int dmabuf_fd;            /* -1 for host memory; the agent keeps it open */
    uint64_t dmabuf_offset;
    /* When splitting the region (e.g. below a device's max MR size), split
     * only at multiples of this many bytes from base, so that no KV extent
     * is cut in two. 1 when the region is not a pool. */
    uint64_t split_align;
    void *backend_data;       /* set by `reg`, passed back to `dereg` */
} kvrt_xfer_bk_region_t;

/* A peer's region as imported from its descriptor. Owned by the agent;
 * valid while any batch using it is outstanding. */
typedef struct kvrt_xfer_bk_remote {
    uint32_t id;
    uint32_t access;
    uint64_t length;
    uint32_t key_bytes;                    /* the peer backend's key blob */
    uint8_t key[KVRT_XFER_BK_KEY_MAX];
} kvrt_xfer_bk_remote_t;

/* One operation. The agent has already checked both sides' bounds and
 * access rights against what it knows (the remote's descriptor); the peer
 * checks again on its side. length >= 1. */
typedef struct kvrt_xfer_bk_op {
    kvrt_xfer_opcode_t opcode;
    const kvrt_xfer_bk_region_t *local;
    uint64_t local_offset;
    const kvrt_xfer_bk_remote_t *remote;
    uint64_t remote_offset;
    uint64_t length;
} kvrt_xfer_bk_op_t;

/*
 * A batch: what one `post` carries. Allocated and owned by the agent; the
 * backend may use `backend_data` (two words) freely between `post` and its
 * kvrt_xfer_bk_batch_done() call. The ops array stays valid until then.
 */
typedef struct kvrt_xfer_bk_batch {
    const kvrt_xfer_bk_op_t *ops;
    uint32_t count;
    uint64_t bytes;
    void *backend_data[2];
} kvrt_xfer_bk_batch_t;

/* A small message (notification, KV checksum exchange) and its reply. */
#define KVRT_XFER_MSG_MAX 65536
typedef struct kvrt_xfer_bk_msg {
    uint32_t type;            /* enum kvrt_xfer_msg_type (agent-defined) */
    uint32_t bytes;           /* payload, <= KVRT_XFER_MSG_MAX */
    const uint8_t *payload;   /* valid until kvrt_xfer_bk_msg_done() */
    void *backend_data[2];
} kvrt_xfer_bk_msg_t;

/* Opaque agent objects backends hand back in upcalls. */
typedef struct kvrt_xfer_peer kvrt_xfer_bk_peer_t;

/* What the agent gives a backend at init. Valid until `fini` returns. */
typedef struct kvrt_xfer_bk_env {
    kvrt_ctx_t *ctx;                 /* for kvrt_log; not for kvrt_fail */
    kvrt_xfer_agent_t *agent;        /* for upcalls */
    const char *name;                /* the agent's name */
    uint32_t connections_per_peer;
    uint64_t zerocopy_threshold;
    /* Bytes a connection may hold for replies its peer has not taken; at
     * that much it stops reading from the peer until they drain. */
    uint64_t max_queued_bytes;
} kvrt_xfer_bk_env_t;

typedef struct kvrt_xfer_backend {
    uint32_t version;                /* KVRT_XFER_BACKEND_VERSION */
    kvrt_xfer_backend_kind_t kind;
    const char *name;                /* "tcp", "verbs" */

    /* KVRT_OK when the backend can run here (verbs: a device is listed).
     * Writes a reason to why[why_bytes] otherwise. No side effects. */
    kvrt_status_t (*probe)(char *why, size_t why_bytes);

    /* Sets up the backend (its progress thread, devices). On failure the
     * backend has released everything and wrote a reason to why. */
    kvrt_status_t (*init)(const kvrt_xfer_bk_env_t *env, void **state_out,
                          char *why, size_t why_bytes);
    /* Tears down: every connection is already closed (`close` was called on
     * each). Joins the backend's threads. */
    void (*fini)(void *state);

    /* Registers a region, setting region->backend_data, and writes the key
     * blob a peer needs (<= KVRT_XFER_BK_KEY_MAX bytes) to key/key_bytes_out.
     * Errors: KVRT_ERR_UNSUPPORTED (this kind of memory cannot be served;
     * TCP and dmabuf), KVRT_ERR_DEVICE, KVRT_ERR_NO_MEMORY. */
    kvrt_status_t (*reg)(void *state, kvrt_xfer_bk_region_t *region, uint8_t *key,
                         uint32_t *key_bytes_out, char *why, size_t why_bytes);
    /* Releases the backend's hold on a region. The agent guarantees no batch
     * using it is outstanding. Must not fail. */
    void (*dereg)(void *state, kvrt_xfer_bk_region_t *region);

    /* Dialing side: `fd` is an authenticated side-channel socket (ownership
     * passes to the backend, also on failure) and `keys` its frame keys
     * (copied if wanted; a backend whose data path does not run over the
     * socket may ignore them). The backend sets up its
     * connection to `peer`, dialing more authenticated sockets with
     * kvrt_xfer_bk_dial() if it wants them, and writes its connection
     * handle. Blocks at most until deadline_ns (kvrt_now_ns clock).
     * Errors: KVRT_ERR_CONNECT, KVRT_ERR_PROTOCOL, KVRT_ERR_NO_MEMORY. */
    kvrt_status_t (*connect)(void *state, kvrt_xfer_bk_peer_t *peer, int fd,
                             const kvrt_xfer_sc_keys_t *keys, uint64_t deadline_ns, void **conn_out, char *why,
                             size_t why_bytes);
    /* Listening side: an authenticated socket for `peer`. `conn` is NULL for
     * the peer's first socket (the backend creates the connection and
     * writes *conn_out) or the connection made by an earlier accept (an
     * extra socket of the same session; *conn_out is left as is). Ownership
     * of fd passes to the backend. Same errors as connect. */
    kvrt_status_t (*accept)(void *state, kvrt_xfer_bk_peer_t *peer, void *conn,
                            int fd, const kvrt_xfer_sc_keys_t *keys, uint32_t conn_index, void **conn_out,
                            char *why, size_t why_bytes);
    /* Closes a connection: every batch and message still outstanding on it
     * completes (with KVRT_ERR_PEER_FAILED) before `close` returns, and no
     * backend thread touches their memory afterwards. */
    void (*close)(void *state, void *conn);

    /* Starts a batch. Returns at once. Exactly one kvrt_xfer_bk_batch_done()
     * follows for an accepted batch, from any thread, possibly before `post`
     * returns. Ordering: none between batches or between the ops of one
     * batch; completion means every op's data landed (WRITE: in the peer's
     * memory; READ: in local memory). Errors (no done call follows):
     * KVRT_ERR_PEER_FAILED (the connection is down), KVRT_ERR_NO_MEMORY. */
    kvrt_status_t (*post)(void *state, void *conn, kvrt_xfer_bk_batch_t *batch);

    /* Sends a message; the peer's agent answers with a status and an
     * optional reply (kvrt_xfer_bk_deliver_msg). Exactly one
     * kvrt_xfer_bk_msg_done() follows an accepted message. No ordering
     * against batches: the agent sends a message only after the batches it
     * must follow completed. Errors as for post. */
    kvrt_status_t (*send_msg)(void *state, void *conn, kvrt_xfer_bk_msg_t *msg);

    /* Stops a batch (timeout or user cancel). On return, or soon after, the
     * batch completes through kvrt_xfer_bk_batch_done(); once done is
     * called, nothing of the batch touches local memory any more. If the
     * batch's data is in flight in a way that cannot be stopped, the backend
     * resets the connection (reporting kvrt_xfer_bk_conn_failed) to make
     * that true. A batch that already completed is ignored. */
    void (*cancel)(void *state, void *conn, kvrt_xfer_bk_batch_t *batch);

    /* Whether `accept` of a session's first socket waits on the peer (the
     * verbs QP set-up, bounded by its own deadline). The agent then runs
     * it on a set-up thread, so that a slow or stalled peer delays no
     * other; it must fail soon after its socket is shut down (the agent's
     * way to abort it). False: `accept` returns without waiting on the
     * peer (TCP) and runs on the accept thread, in arrival order. */
    bool accept_waits;
} kvrt_xfer_backend_t;

/* ---- upcalls: what a backend may call on the agent ---------------------- */

/* A batch finished: KVRT_OK, or the first error among its ops
 * (KVRT_ERR_REMOTE_ACCESS / KVRT_ERR_UNKNOWN_REGION when the peer refused,
 * KVRT_ERR_PEER_FAILED, KVRT_ERR_CANCELED). Exactly once per batch. */
void kvrt_xfer_bk_batch_done(kvrt_xfer_bk_batch_t *batch, kvrt_status_t status);

/* A message was answered (reply valid only during the call) or failed. */
void kvrt_xfer_bk_msg_done(kvrt_xfer_bk_msg_t *msg, kvrt_status_t status,
                           const uint8_t *reply, uint32_t reply_bytes);

/*
 * A message arrived from `peer`. The agent handles it and writes a reply of
 * at most reply_capacity bytes; the returned status goes back to the sender.
 * It may compute checksums over registered memory, bounded per message
 * (XFER_HASH_WORK_MAX) and per peer (XFER_HASH_BUDGET): admit + serve in
 * one call, for a backend that serves messages where they arrive.
 */
kvrt_status_t kvrt_xfer_bk_deliver_msg(kvrt_xfer_bk_peer_t *peer, uint32_t type,
                                       const uint8_t *payload, uint32_t bytes,
                                       uint8_t *reply, uint32_t reply_capacity,
                                       uint32_t *reply_bytes_out);

/*
 * The same in two steps, so that long work runs off the I/O thread:
 * admit_msg (cheap; may be called with backend locks held) judges the
 * work a message asks for and reserves it against the peer's budget
 * (*work_out; 0: serve it at once). A refused message (KVRT_ERR_BUSY over
 * budget, KVRT_ERR_REQUEST_LIMIT too much for one message) is answered
 * with that status. serve_msg (no backend lock held) serves it and gives
 * the work back; drop_msg gives it back for a message that will not be
 * served (its connection went).
 */
kvrt_status_t kvrt_xfer_bk_admit_msg(kvrt_xfer_bk_peer_t *peer, uint32_t type,
                                     const uint8_t *payload, uint32_t bytes,
                                     uint64_t *work_out);
kvrt_status_t kvrt_xfer_bk_serve_msg(kvrt_xfer_bk_peer_t *peer, uint32_t type,
                                     const uint8_t *payload, uint32_t bytes, uint64_t work,
                                     uint8_t *reply, uint32_t reply_capacity,
                                     uint32_t *reply_bytes_out);
void kvrt_xfer_bk_drop_msg(kvrt_xfer_bk_peer_t *peer, uint64_t work);

/*
 * A connection broke (EOF, reset, error completion). The backend must still
 * complete that connection's outstanding work (with KVRT_ERR_PEER_FAILED);
 * the agent later calls `close` and, for peers it dialed, reconnects with
 * backoff. May be called more than once; later calls are ignored.
 */
void kvrt_xfer_bk_conn_failed(kvrt_xfer_bk_peer_t *peer, kvrt_status_t status,
                              const char *why);

/*
 * Incoming one-sided access (software transports only: the TCP backend
 * serves its peers' READ/WRITE itself; a NIC checks rkeys in hardware).
 * Finds region `id`, checks the access right and that [offset, offset +
 * length) lies inside it, and pins it so that deregistration waits until
 * kvrt_xfer_bk_unpin(). Writes the address to *address_out.
 * Errors (each refused access is logged and counted): KVRT_ERR_UNKNOWN_REGION,
 * KVRT_ERR_REMOTE_ACCESS (no such right, or out of bounds).
 */
kvrt_status_t kvrt_xfer_bk_pin(kvrt_xfer_bk_peer_t *peer, uint32_t id,
                               uint32_t access, uint64_t offset, uint64_t length,
                               uint8_t **address_out, void **pin_out);
/* Ends an access pinned for `peer`. Pins count per region and per peer:
 * a peer holding pins that has released none for the agent's access
 * deadline is revoked (its connection closed), and deregistration revokes
 * peers whose pins keep a region. So a backend unpins every pin of a
 * connection before its `close` returns. */
void kvrt_xfer_bk_unpin(kvrt_xfer_bk_peer_t *peer, void *pin);

/* Counts and logs an incoming message refused as malformed (the backend
 * then drops the connection). */
void kvrt_xfer_bk_refuse(kvrt_xfer_bk_peer_t *peer, kvrt_status_t status,
                         const char *why);

/*
 * Dials one more authenticated side-channel socket to `peer` (same session,
 * connection index conn_index), blocking at most until deadline_ns; the
 * caller owns the fd; *keys_out (may be NULL) gets its frame keys. Errors: KVRT_ERR_CONNECT, KVRT_ERR_AUTH,
 * KVRT_ERR_PROTOCOL.
 */
kvrt_status_t kvrt_xfer_bk_dial(kvrt_xfer_bk_peer_t *peer, uint32_t conn_index,
                                uint64_t deadline_ns, int *fd_out,
                                kvrt_xfer_sc_keys_t *keys_out);

/* The agent's context and name, for a backend's log lines. */
kvrt_ctx_t *kvrt_xfer_bk_ctx(const kvrt_xfer_bk_peer_t *peer);
const char *kvrt_xfer_bk_peer_name(const kvrt_xfer_bk_peer_t *peer);

/* Counts bytes moved (for the agent's statistics). */
void kvrt_xfer_bk_count_bytes(kvrt_xfer_agent_t *agent, uint64_t written,
                              uint64_t read);
/* Reply bytes held for peers changed by delta; a connection stopped
 * reading because its peer does not take its replies. Lock-free (the
 * "queued_bytes" and "reads_paused" statistics). */
void kvrt_xfer_bk_queued(kvrt_xfer_agent_t *agent, int64_t delta);
void kvrt_xfer_bk_paused(kvrt_xfer_agent_t *agent);

/* ---- the backend table (backends.c) ------------------------------------- */

extern const kvrt_xfer_backend_t kvrt_xfer_tcp_backend;
#ifdef KVRT_HAVE_VERBS_BACKEND
extern const kvrt_xfer_backend_t kvrt_xfer_verbs_backend;
#endif

/*
 * Picks the backend for `kind`: AUTO tries VERBS (when built in) then TCP,
 * taking the first whose probe passes; TCP or VERBS asks for that one.
 * Errors: KVRT_ERR_NO_DEVICE (VERBS not built in or its probe failed; why
 * says which).
 */
kvrt_status_t kvrt_xfer_backend_select(kvrt_xfer_backend_kind_t kind,
                                       const kvrt_xfer_backend_t **backend_out,
                                       char *why, size_t why_bytes);

#endif /* KVRT_XFER_BACKEND_H */
