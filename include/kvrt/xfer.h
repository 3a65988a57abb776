/*
 * kvrt/xfer.h - the transfer engine: one-sided READ/WRITE of registered
 * memory between hosts, and KV block transfer on top of it.
 *
 * Objects:
 *   agent    one per process (or per context): a listening endpoint, the
 *            registered regions, the peers and the completion queue. Two
 *            background threads run per agent: a control thread (accepting,
 *            authenticating, reconnecting, enforcing timeouts) and the
 *            backend's progress thread, plus short-lived ones for waits on
 *            one peer (a reconnection attempt, a verbs set-up); destroy
 *            joins them all.
 *   region   local memory registered for transfers (host memory, or GPU
 *            memory given as a dmabuf fd). Its *descriptor* is a compact byte
 *            string a peer imports to address it remotely.
 *   peer     a connection to another agent, by address ("host:port").
 *   remote   a peer's region, imported from its descriptor.
 *   request  one posted batch of operations; completes exactly once with a
 *            status.
 *
 * Backends: TCP over io_uring (always available) and RDMA verbs (RC queue
 * pairs; used when a device exists). KVRT_XFER_BACKEND_AUTO picks verbs when
 * a device is present, else TCP. Both ends of a connection must use the same
 * backend.
 *
 * Security: peers are untrusted. Every connection is authenticated with a
 * shared cluster key (HMAC-SHA256 challenge-response in both directions);
 * every incoming operation is checked against the local registrations
 * (region id, access rights, offset and length within bounds) and refused
 * otherwise, never served.
 *
 * Failure: nothing waits forever. A peer that disconnects fails every
 * outstanding request to it at once (KVRT_ERR_PEER_FAILED); a peer that
 * stalls fails them when their timeout expires (KVRT_ERR_TIMEOUT). A peer
 * this agent connected to reconnects in the background with exponential
 * backoff; posts to it fail fast while it is down.
 *
 * Threads: unless stated otherwise, agent functions may be called from any
 * thread; they take the agent's lock briefly. The exceptions follow the
 * context's one-thread rule, because they change the context or read a
 * pool: kvrt_xfer_agent_create, kvrt_xfer_agent_destroy, and
 * kvrt_xfer_register with the POOL bit. Completions are delivered by
 * polling (kvrt_xfer_poll, kvrt_xfer_request_test) and signalled through an
 * eventfd (kvrt_xfer_agent_eventfd) that the engine can put in its loop.
 */
#ifndef KVRT_XFER_H
#define KVRT_XFER_H

#include <stddef.h>
#include <stdint.h>

#include "kvrt/context.h"
#include "kvrt/pool.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvrt_xfer_agent kvrt_xfer_agent_t;
typedef struct kvrt_xfer_region kvrt_xfer_region_t;
typedef struct kvrt_xfer_peer kvrt_xfer_peer_t;
typedef struct kvrt_xfer_remote kvrt_xfer_remote_t;
typedef struct kvrt_xfer_request kvrt_xfer_request_t;

typedef enum kvrt_xfer_backend_kind {
    KVRT_XFER_BACKEND_AUTO = 0,  /* verbs when a device exists, else TCP */
    KVRT_XFER_BACKEND_TCP = 1,   /* sockets driven by io_uring */
    KVRT_XFER_BACKEND_VERBS = 2  /* libibverbs RC queue pairs */
} kvrt_xfer_backend_kind_t;

/* Largest descriptor kvrt_xfer_region_descriptor() writes. */
#define KVRT_XFER_DESCRIPTOR_MAX 512
/* Largest notification payload. */
#define KVRT_XFER_NOTIFY_MAX 256
/* Longest agent name, NUL included. */
#define KVRT_XFER_NAME_MAX 64
/* Shortest accepted cluster key. */
#define KVRT_XFER_KEY_MIN 16

enum kvrt_xfer_agent_params_field {
    KVRT_XFER_AGENT_PARAM_BACKEND = 1u << 0,
    KVRT_XFER_AGENT_PARAM_LISTEN = 1u << 1,       /* listen_address */
    KVRT_XFER_AGENT_PARAM_NAME = 1u << 2,
    KVRT_XFER_AGENT_PARAM_TIMEOUT = 1u << 3,      /* default_timeout_ms */
    KVRT_XFER_AGENT_PARAM_CONNECTIONS = 1u << 4,  /* connections_per_peer */
    KVRT_XFER_AGENT_PARAM_MAX_REQUESTS = 1u << 5,
    KVRT_XFER_AGENT_PARAM_RECONNECT = 1u << 6,    /* reconnect_* fields */
    KVRT_XFER_AGENT_PARAM_ZEROCOPY = 1u << 7,     /* zerocopy_threshold */
    KVRT_XFER_AGENT_PARAM_PROTECTION = 1u << 8,   /* frame_protection */
    KVRT_XFER_AGENT_PARAM_MAX_PEERS = 1u << 9,    /* max_peers */
    /* max_pending_handshakes, handshake_timeout_ms */
    KVRT_XFER_AGENT_PARAM_HANDSHAKES = 1u << 10,
    /* Bounds on what one authenticated peer can make the agent hold or do. */
    KVRT_XFER_AGENT_PARAM_MAX_QUEUED = 1u << 11,      /* max_queued_bytes */
    KVRT_XFER_AGENT_PARAM_ACCESS_DEADLINE = 1u << 12  /* access_deadline_ms */
};

/*
 * How the TCP backend protects each frame after the handshake. Both ends
 * of a connection must use the same; a mismatch is refused at the
 * handshake with KVRT_ERR_PROTOCOL. The keys are fresh per socket, derived
 * from the cluster key and the handshake transcript. The primitives are
 * agreed per socket: AES-256-GCM / GMAC where the dialer's CPU has AES-NI,
 * ChaCha20-Poly1305 / Poly1305 otherwise (docs/transfer.md, Security).
 * (The verbs backend's data path is the NIC's: see docs/transfer.md,
 * threat model.)
 */
typedef enum kvrt_xfer_protection {
    /* Every frame header and payload authenticated (GMAC or Poly1305);
     * data in the clear. A forged, altered, replayed or reordered frame is
     * dropped and the connection closed. The default. */
    KVRT_XFER_PROTECT_MAC = 0,
    /* As MAC, and payloads encrypted (AES-256-GCM or ChaCha20-Poly1305). */
    KVRT_XFER_PROTECT_AEAD = 1
} kvrt_xfer_protection_t;

/*
 * Agent parameters. cluster_key and cluster_key_bytes are always read (a
 * transfer agent never runs unauthenticated); the rest by field_mask.
 */
typedef struct kvrt_xfer_agent_params {
    uint64_t field_mask;
    const uint8_t *cluster_key;     /* copied; >= KVRT_XFER_KEY_MIN bytes */
    uint32_t cluster_key_bytes;
    kvrt_xfer_backend_kind_t backend; /* default AUTO */
    /* "host:port" to listen on; copied. Port 0 picks a free port. Default
     * "127.0.0.1:0". IPv6 literals go in brackets: "[::1]:0". */
    const char *listen_address;
    const char *name;               /* copied; default "<ctx name>-xfer<N>" */
    uint32_t default_timeout_ms;    /* per request; default 10000 */
    uint32_t connections_per_peer;  /* TCP connections (1..16), default 4 */
    /* Outstanding requests plus completions not yet taken by
     * kvrt_xfer_poll(), 1..2^20, default 4096: the completion queue's size.
     * Also how many freed requests the agent keeps for reuse. */
    uint32_t max_requests;
    uint32_t reconnect_initial_ms;  /* first backoff, default 50 */
    uint32_t reconnect_max_ms;      /* backoff cap, default 2000 */
    uint32_t reconnect_attempts;    /* before the peer is FAILED, default 10 */
    /* Payloads at least this large are sent with zero-copy sends where the
     * kernel supports them; 0 disables zero-copy. Default 1 MiB. */
    uint64_t zerocopy_threshold;
    /* Frame protection on the TCP backend; default KVRT_XFER_PROTECT_MAC. */
    kvrt_xfer_protection_t frame_protection;
    /* Peers that connected to this agent, at most (1..65536, default
     * 1024). One more is refused at the handshake: its kvrt_xfer_connect
     * fails with KVRT_ERR_BUSY. Reconnects and extra sockets of a peer
     * already held do not count. */
    uint32_t max_peers;
    /* Incoming connections not yet authenticated, at most (1..65536,
     * default 256). Handshakes run concurrently; when one more connection
     * arrives with the table full, the oldest pending one is closed. */
    uint32_t max_pending_handshakes;
    /* How long an incoming connection may take to authenticate, counted
     * from its accept (10..60000 ms, default 1000); then it is closed, however
     * slowly it was still sending. */
    uint32_t handshake_timeout_ms;
    /* Bytes the agent may hold for replies a peer has not taken (frame
     * records, reply payloads, ciphertext), per peer; at that much it stops
     * reading from the peer until they drain. 4 KiB..1 GiB, default 16 MiB. */
    uint64_t max_queued_bytes;
    /* A peer holding incoming accesses (pinned memory, e.g. READ responses
     * it does not drain) that completes none of them for this long is
     * revoked: its connection is closed. 10..3,600,000 ms, default 5000. */
    uint32_t access_deadline_ms;
} kvrt_xfer_agent_params_t;

/*
 * kvrt_xfer_agent_create - creates an agent in ctx, binds and listens, and
 * starts its threads. params is not retained. Initializes libsodium and
 * OpenSSL's libcrypto (frame tags) first, on the calling thread; if the
 * process had not initialized libcrypto yet, its exit handler
 * (OPENSSL_cleanup) is registered then. The agent must be destroyed before
 * that handler runs: before exit(), or from an exit handler registered
 * after this call. One registered earlier runs after OPENSSL_cleanup, when
 * the agent's threads' libcrypto state can no longer be freed.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, unknown field bits, key too short,
 * out-of-range values, unparsable address), KVRT_ERR_NO_DEVICE (VERBS asked
 * for and no device or no verbs backend), KVRT_ERR_IO (bind/listen/io_uring
 * setup failed; the text says why), KVRT_ERR_NO_MEMORY, KVRT_ERR_INTERNAL
 * (libsodium or libcrypto failed to initialise). A failed create leaves the
 * context as it was (the next agent is still "xfer.<n>" with the same n).
 * Destroy with kvrt_xfer_agent_destroy() or with the context.
 */
kvrt_status_t kvrt_xfer_agent_create(kvrt_ctx_t *ctx,
                                     const kvrt_xfer_agent_params_t *params,
                                     kvrt_xfer_agent_t **agent_out);

/*
 * kvrt_xfer_agent_destroy - refuses new connections from its start (a
 * peer dialing meanwhile is answered busy, so one that keeps dialing
 * cannot prolong the call), disconnects every peer, completes every
 * outstanding request with KVRT_ERR_CANCELED, frees every request (released
 * or not: request handles die with their agent, so no call may name one
 * afterwards), deregisters every region, and stops and joins every thread
 * the agent started (a reconnection attempt under way first ends, within
 * its 2 s): none of them outlives the call. NULL is a no-op. No other call
 * on the agent, its peers, regions, remotes or requests may run
 * concurrently or follow. Errors: none.
 */
kvrt_status_t kvrt_xfer_agent_destroy(kvrt_xfer_agent_t *agent);

/*
 * kvrt_xfer_agent_address - the address the agent listens on, "host:port"
 * with the real port, NUL-terminated into buf (capacity bytes).
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_BUFFER_TOO_SMALL.
 */
kvrt_status_t kvrt_xfer_agent_address(const kvrt_xfer_agent_t *agent, char *buf,
                                      size_t capacity);

/* kvrt_xfer_agent_backend - the backend in use. Errors: INVALID_ARG. */
kvrt_status_t kvrt_xfer_agent_backend(const kvrt_xfer_agent_t *agent,
                                      kvrt_xfer_backend_kind_t *kind_out);

/*
 * kvrt_xfer_agent_eventfd - an eventfd (owned by the agent, closed by
 * destroy) that becomes readable when a completion or a notification is
 * queued. Read it to reset it, then drain with kvrt_xfer_poll() and
 * kvrt_xfer_notifications(). Errors: KVRT_ERR_INVALID_ARG.
 */
kvrt_status_t kvrt_xfer_agent_eventfd(const kvrt_xfer_agent_t *agent, int *fd_out);

/* ---- memory registration ---------------------------------------------- */

/* What a peer may do to a region. Local use needs no flag. */
enum kvrt_xfer_access {
    KVRT_XFER_REMOTE_READ = 1u << 0,
    KVRT_XFER_REMOTE_WRITE = 1u << 1
};

enum kvrt_xfer_register_params_field {
    KVRT_XFER_REGISTER_PARAM_DMABUF = 1u << 0, /* dmabuf_fd, dmabuf_offset */
    KVRT_XFER_REGISTER_PARAM_ACCESS = 1u << 1,
    KVRT_XFER_REGISTER_PARAM_POOL = 1u << 2    /* pool */
};

/*
 * Registration parameters. address and length are always read:
 *  - host memory: [address, address + length) must be readable and writable
 *    memory that outlives the registration;
 *  - GPU memory (DMABUF bit): dmabuf_fd/dmabuf_offset name it, address is the
 *    device virtual address (for the verbs backend's MR), never dereferenced.
 * With the POOL bit, the region is `pool`'s whole memory (address and length
 * are then ignored) and its descriptor carries the pool's layout, so a peer
 * can move KV blocks with kvrt_xfer_kv_post(). The pool must be on host
 * memory that kvrt allocated (kvrt_pool_info().host_memory), or be named
 * with the DMABUF bit as well: memory the engine handed to a pool is taken
 * for device memory.
 */
typedef struct kvrt_xfer_register_params {
    uint64_t field_mask;
    void *address;
    uint64_t length;
    int dmabuf_fd;            /* not retained; the backend dups what it needs */
    uint64_t dmabuf_offset;
    uint32_t access;          /* enum kvrt_xfer_access bits; default 0 (local only) */
    kvrt_pool_t *pool;        /* held: kvrt_pool_destroy() answers KVRT_ERR_BUSY
                                 until the region is deregistered */
} kvrt_xfer_register_params_t;

/*
 * kvrt_xfer_register - registers memory once for all transfers. With the
 * POOL bit it reads and holds the pool, so it (and the deregistration of
 * that region) follows the context's one-thread rule.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, length 0, unknown bits or access
 * flags, a pool on engine memory without the DMABUF bit),
 * KVRT_ERR_UNSUPPORTED (dmabuf memory on the TCP backend, which can
 * only serve host memory), KVRT_ERR_DEVICE (the backend refused the memory),
 * KVRT_ERR_NO_MEMORY, KVRT_ERR_OVERFLOW (more than 65535 regions).
 */
kvrt_status_t kvrt_xfer_register(kvrt_xfer_agent_t *agent,
                                 const kvrt_xfer_register_params_t *params,
                                 kvrt_xfer_region_t **region_out);

/*
 * kvrt_xfer_deregister - removes a registration. Peers' later accesses to it
 * are refused (KVRT_ERR_UNKNOWN_REGION). Requests of this agent that use
 * the region make it fail at once. Peers' accesses already in progress
 * are waited for; a peer whose accesses make no progress for 100 ms is
 * revoked (as kvrt_xfer_peer_revoke: its connection is closed), and after
 * 1 s every peer still holding the region is, so a peer cannot keep a
 * region registered. While it waits, the region is refused to new
 * requests (KVRT_ERR_INVALID_ARG) and to peers. NULL is a no-op.
 * Errors: KVRT_ERR_BUSY (outstanding requests of this agent use it,
 * another deregistration of it is in progress, or accesses outlived even
 * the revocations by 1 s; the registration stays as it was).
 */
kvrt_status_t kvrt_xfer_deregister(kvrt_xfer_region_t *region);

/*
 * kvrt_xfer_region_descriptor - writes the region's descriptor (at most
 * KVRT_XFER_DESCRIPTOR_MAX bytes) to buf and its size to *length_out. The
 * descriptor names this agent's region; ship it to a peer by any means.
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_BUFFER_TOO_SMALL (*length_out still
 * tells the size needed).
 */
kvrt_status_t kvrt_xfer_region_descriptor(const kvrt_xfer_region_t *region,
                                          void *buf, size_t capacity,
                                          size_t *length_out);

/* ---- peers -------------------------------------------------------------- */

typedef enum kvrt_xfer_peer_state {
    KVRT_XFER_PEER_CONNECTED = 0,
    KVRT_XFER_PEER_RECONNECTING = 1, /* down; retrying with backoff */
    KVRT_XFER_PEER_FAILED = 2,       /* down for good (attempts exhausted) */
    KVRT_XFER_PEER_CLOSED = 3        /* the remote side of a passive peer left */
} kvrt_xfer_peer_state_t;

/*
 * A point-in-time view of a peer. Growable: the caller sets struct_size to
 * sizeof(kvrt_xfer_peer_info_t) as its header declares it, and the library
 * writes only that many bytes. Fields are only ever appended, so a caller
 * built against an older header gets exactly the fields it knows.
 */
typedef struct kvrt_xfer_peer_info {
    uint32_t struct_size;          /* set by the caller; kept as it was */
    kvrt_xfer_peer_state_t state;
    kvrt_status_t last_error;      /* why it last went down; KVRT_OK if never */
    uint32_t connections;          /* live backend connections */
    uint32_t reconnects;           /* successful reconnections so far */
    uint32_t outstanding;          /* requests not yet completed */
    /* The remote agent's name, as stated in the handshake of the
     * connection attached (kept, like the instance, while the peer is
     * down and through attempts that fail). */
    char name[KVRT_XFER_NAME_MAX];
    /* Appended in the second version. The instance of the remote agent
     * this peer's connection reached (its listener states it in the
     * handshake): 64 random bits the agent drew at creation. It changes
     * when the peer has reconnected to a restarted agent (a new process on
     * the same address), whose regions must be imported again: a remote
     * of the old instance is refused (kvrt_xfer_post). While the peer is
     * down, the last connection's (a reconnection attempt that fails
     * after its handshake changes nothing). */
    uint64_t instance;
} kvrt_xfer_peer_info_t;

/*
 * kvrt_xfer_connect - connects to the agent at address ("host:port"),
 * authenticates both ways and sets up the backend's connections. Blocks at
 * most timeout_ms (0: the agent's default timeout). The peer is owned by
 * the agent; release it with kvrt_xfer_disconnect().
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_CONNECT (unreachable, refused,
 * timed out), KVRT_ERR_AUTH (cluster keys differ), KVRT_ERR_PROTOCOL (the
 * other side is not a compatible kvrt agent), KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_xfer_connect(kvrt_xfer_agent_t *agent, const char *address,
                                uint32_t timeout_ms, kvrt_xfer_peer_t **peer_out);

/*
 * kvrt_xfer_disconnect - closes the peer: its outstanding requests complete
 * with KVRT_ERR_CANCELED, its imported remotes are freed. NULL is a no-op.
 * Errors: none.
 */
kvrt_status_t kvrt_xfer_disconnect(kvrt_xfer_peer_t *peer);

/*
 * kvrt_xfer_peer_revoke - takes back everything the peer was given, now:
 * its outstanding requests complete with KVRT_ERR_CANCELED, its incoming
 * accesses in progress (READs being served, pinned memory) are dropped and
 * its connection is closed, so no later frame of it is served. The peer
 * stays (RECONNECTING, last_error KVRT_ERR_CANCELED) and reconnects with
 * backoff as after a broken connection; disconnect it to be rid of it.
 * Returns once the connection is closed: nothing of the peer's pins
 * memory afterwards. A peer that is down already only has its requests
 * failed. Thread-safe (any thread). Errors: KVRT_ERR_INVALID_ARG (NULL).
 */
kvrt_status_t kvrt_xfer_peer_revoke(kvrt_xfer_peer_t *peer);

/*
 * kvrt_xfer_revoke_name - revokes every peer named `name` (the name it
 * gave in its handshake; peers that connected to this agent as well as
 * those it connected to), as kvrt_xfer_peer_revoke() does. A peer that
 * connected to this agent is dropped; if it connects again it is a new
 * peer. *revoked_out (may be NULL) gets how many were revoked.
 * Thread-safe. Errors: KVRT_ERR_INVALID_ARG (NULL agent or name),
 * KVRT_ERR_NOT_FOUND (no peer of that name; nothing changed).
 */
kvrt_status_t kvrt_xfer_revoke_name(kvrt_xfer_agent_t *agent, const char *name,
                                    uint32_t *revoked_out);

/* Longest refusal kvrt_xfer_refuse_name() takes. */
#define KVRT_XFER_REFUSE_MAX_MS 3600000u

/*
 * kvrt_xfer_refuse_name - refuses the agent name `name` for refuse_ms and
 * revokes every peer of that name now (as kvrt_xfer_revoke_name), so that
 * neither a frame it sent before nor a connection it makes during the
 * refusal reaches this agent's memory: a cluster uses it before it gives a
 * dead or stalled node's blocks to other requests. While refused, the
 * listener closes a connection whose handshake names `name` before it
 * becomes a peer (its kvrt_xfer_connect fails with KVRT_ERR_BUSY), and
 * a dialed peer that answers with that name fails its
 * (re)connect like an unreachable one (KVRT_ERR_CONNECT, retried with
 * backoff). A second call moves the end to the later of the two;
 * refuse_ms 0 lifts the refusal (and revokes nothing).
 *
 * What it guarantees once it returns: every connection of a peer of that
 * name is closed, and the backend finished with it (backend.h `close`):
 * the TCP backend applies incoming WRITE frames on its progress thread
 * under its lock, and its close takes that lock and waits until the
 * progress thread let go of the connection, so a frame being applied when
 * the call began has landed before it returns and none lands after;
 * connections that passed the name check just before the refusal are
 * waited for (at most their handshake deadline) and revoked too. A verbs
 * connection's queue pairs are destroyed at close, after which the NIC
 * accepts none of their writes (not exercised without an RDMA NIC).
 *
 * At most 256 names are refused at once (refusals that ran out are
 * forgotten). Thread-safe (any thread; blocks for the revocations, as
 * kvrt_xfer_peer_revoke). *revoked_out (may be NULL) gets how many peers
 * were revoked (0 is not an error). Errors: KVRT_ERR_INVALID_ARG (NULL, a
 * name of 0 or 64+ bytes, refuse_ms over KVRT_XFER_REFUSE_MAX_MS),
 * KVRT_ERR_REQUEST_LIMIT (256 names refused; nothing changed),
 * KVRT_ERR_NO_MEMORY (the refusal holds, no peer was revoked: call again).
 */
kvrt_status_t kvrt_xfer_refuse_name(kvrt_xfer_agent_t *agent, const char *name,
                                    uint32_t refuse_ms, uint32_t *revoked_out);

/*
 * kvrt_xfer_peer_info - state, counters and the remote agent's instance,
 * into the caller's struct (set info_out->struct_size first; a struct of
 * the first version, which ends at `name`, gets no instance).
 * Errors: KVRT_ERR_INVALID_ARG (NULL, or a struct_size smaller than the
 * first version of the struct).
 */
kvrt_status_t kvrt_xfer_peer_info(const kvrt_xfer_peer_t *peer,
                                  kvrt_xfer_peer_info_t *info_out);

/*
 * kvrt_xfer_import - imports a peer's region descriptor. The remote is owned
 * by the peer (freed with it) or released with kvrt_xfer_remote_release().
 * A descriptor names one instance of the agent that wrote it (an agent
 * created again, in a restarted process or not, is another instance, even
 * on the same address): the remote is usable only while the peer is
 * connected to that instance (kvrt_xfer_post), so after the peer restarts,
 * import its new descriptor.
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_PARSE (malformed descriptor,
 * including sizes that do not add up or overflow), KVRT_ERR_UNSUPPORTED
 * (descriptor of another backend), KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_xfer_import(kvrt_xfer_peer_t *peer, const void *descriptor,
                               size_t length, kvrt_xfer_remote_t **remote_out);

/* kvrt_xfer_remote_release - frees an imported remote. NULL is a no-op.
 * Requests posted against it must have completed. Errors: KVRT_ERR_BUSY. */
kvrt_status_t kvrt_xfer_remote_release(kvrt_xfer_remote_t *remote);

/* ---- one-sided operations ---------------------------------------------- */

typedef enum kvrt_xfer_opcode {
    KVRT_XFER_WRITE = 0, /* local -> remote */
    KVRT_XFER_READ = 1   /* remote -> local */
} kvrt_xfer_opcode_t;

/*
 * One operation: `length` bytes between local+offset and remote+offset. An
 * element of a caller's array, so it carries no field_mask and is frozen:
 * an operation needing more fields will be a new type with its own post
 * function (kvrt_xfer_post_v2), never a change to this one.
 */
typedef struct kvrt_xfer_op {
    kvrt_xfer_opcode_t opcode;
    const kvrt_xfer_region_t *local;
    uint64_t local_offset;
    const kvrt_xfer_remote_t *remote;
    uint64_t remote_offset;
    uint64_t length;
} kvrt_xfer_op_t;

enum kvrt_xfer_post_params_field {
    KVRT_XFER_POST_PARAM_TIMEOUT = 1u << 0,   /* timeout_ms */
    KVRT_XFER_POST_PARAM_USER_DATA = 1u << 1, /* user_data */
    KVRT_XFER_POST_PARAM_INFLIGHT = 1u << 2,  /* max_inflight_bytes */
    KVRT_XFER_POST_PARAM_NOTIFY = 1u << 3     /* notify, notify_bytes */
};

typedef struct kvrt_xfer_post_params {
    uint64_t field_mask;
    uint32_t timeout_ms;        /* default: the agent's */
    uint64_t user_data;         /* echoed in the completion */
    /* Bytes handed to the backend at once; default 256 MiB; 0 is refused. */
    uint64_t max_inflight_bytes;
    /* Delivered to the peer once every operation of this request landed. */
    const void *notify;         /* copied */
    uint32_t notify_bytes;      /* 1 .. KVRT_XFER_NOTIFY_MAX */
} kvrt_xfer_post_params_t;

/*
 * kvrt_xfer_post - posts `count` operations to one peer as one request and
 * returns at once (the request is in progress). ops is copied.
 * With request_out non-NULL the caller owns the request: test or wait on it
 * and release it. With request_out NULL the request frees itself when it
 * completes. Either way its completion is queued for kvrt_xfer_poll().
 * Errors (nothing is posted): KVRT_ERR_INVALID_ARG (NULL, count 0, bad
 * opcode, bad params, regions of another agent or peer, a region being
 * deregistered), KVRT_ERR_REMOTE_ACCESS (an
 * operation out of a region's bounds or rights), KVRT_ERR_PEER_FAILED (the
 * peer is down), KVRT_ERR_UNKNOWN_REGION (the peer is connected to another
 * instance of its agent than the one a remote's descriptor names: it
 * restarted), KVRT_ERR_REQUEST_LIMIT (outstanding requests plus
 * unpolled completions reached max_requests, 4096 by default: a completion
 * is never dropped, so posting fails until kvrt_xfer_poll() takes some),
 * KVRT_ERR_NO_MEMORY.
 * Memory: a post allocates nothing once the agent is warm, as with UCX's
 * reserved request space: the agent reserves 256 requests at create and
 * keeps up to max_requests freed ones; a request holds up to 4 operations
 * (after splitting those over 16 MiB) and its first batch inline, and the
 * TCP backend recycles its frames. Longer operation lists allocate.
 */
kvrt_status_t kvrt_xfer_post(kvrt_xfer_peer_t *peer, const kvrt_xfer_op_t *ops,
                             uint32_t count, const kvrt_xfer_post_params_t *params,
                             kvrt_xfer_request_t **request_out);

/*
 * kvrt_xfer_request_test - the request's status: KVRT_INPROGRESS, KVRT_OK or
 * the error it failed with (KVRT_ERR_TIMEOUT, KVRT_ERR_CANCELED,
 * KVRT_ERR_PEER_FAILED, KVRT_ERR_REMOTE_ACCESS, KVRT_ERR_UNKNOWN_REGION,
 * KVRT_ERR_INTEGRITY, ...). Returns KVRT_ERR_INVALID_ARG for NULL.
 */
kvrt_status_t kvrt_xfer_request_test(const kvrt_xfer_request_t *request);

/*
 * kvrt_xfer_request_wait - blocks until the request completes or timeout_ms
 * passes; returns what kvrt_xfer_request_test() would (KVRT_INPROGRESS when
 * the wait ran out first). Never blocks past the request's own timeout plus
 * a few milliseconds.
 */
kvrt_status_t kvrt_xfer_request_wait(const kvrt_xfer_request_t *request,
                                     uint32_t timeout_ms);

/*
 * kvrt_xfer_request_cancel - completes the request with KVRT_ERR_CANCELED if
 * it has not completed. Data may already have landed, partly or wholly. A
 * backend connection with the request's data in flight is reset (and
 * reconnects) so that nothing touches the local memory afterwards.
 * Errors: KVRT_ERR_INVALID_ARG. Canceling a completed request is a no-op.
 */
kvrt_status_t kvrt_xfer_request_cancel(kvrt_xfer_request_t *request);

/*
 * kvrt_xfer_request_release - frees a completed request. NULL is a no-op.
 * Errors: KVRT_ERR_BUSY (still in progress: cancel or wait first).
 */
kvrt_status_t kvrt_xfer_request_release(kvrt_xfer_request_t *request);

/*
 * A completion taken from the agent's queue. An element of a caller's
 * array, so it carries no size and is frozen: a completion with more fields
 * will be a new type with its own poll function (kvrt_xfer_poll_v2).
 */
typedef struct kvrt_xfer_completion {
    uint64_t user_data;
    kvrt_status_t status;
    uint64_t bytes;            /* bytes the request moved when it succeeded */
} kvrt_xfer_completion_t;

/*
 * kvrt_xfer_poll - takes up to `capacity` completions, oldest first.
 * Writes the number taken (possibly 0) to *count_out. Errors: INVALID_ARG.
 */
kvrt_status_t kvrt_xfer_poll(kvrt_xfer_agent_t *agent,
                             kvrt_xfer_completion_t *completions,
                             uint32_t capacity, uint32_t *count_out);

/* ---- notifications ------------------------------------------------------ */

/*
 * kvrt_xfer_notify - sends `length` bytes (1..KVRT_XFER_NOTIFY_MAX, copied)
 * to the peer, delivered after every operation posted to it before this
 * call has landed. Returns at once; the notification waits for those
 * operations and is dropped if one of them fails (the peer then never sees
 * it). Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_PEER_FAILED,
 * KVRT_ERR_REQUEST_LIMIT (as kvrt_xfer_post: a notification counts as a
 * request until the peer acknowledges it), KVRT_ERR_NO_MEMORY.
 */
kvrt_status_t kvrt_xfer_notify(kvrt_xfer_peer_t *peer, const void *data,
                               uint32_t length);

/*
 * A notification received from a peer. An element of a caller's array, so
 * it carries no size and is frozen: a notification with more fields will be
 * a new type with its own function (kvrt_xfer_notifications_v2).
 */
typedef struct kvrt_xfer_notification {
    char from[KVRT_XFER_NAME_MAX];   /* the sending agent's name */
    /* KVRT_OK, or KVRT_ERR_INTEGRITY when it closes a KV transfer whose
     * checksums did not match here (the blocks must not be used). */
    kvrt_status_t status;
    uint32_t length;
    uint8_t data[KVRT_XFER_NOTIFY_MAX];
} kvrt_xfer_notification_t;

/*
 * kvrt_xfer_notifications - takes up to `capacity` received notifications,
 * oldest first; *count_out gets the number taken. The agent keeps the last
 * 4096 unread ones (older ones are dropped and counted in the
 * "xfer.<n>.notifications_dropped" ctl node). Errors: INVALID_ARG.
 */
kvrt_status_t kvrt_xfer_notifications(kvrt_xfer_agent_t *agent,
                                      kvrt_xfer_notification_t *out,
                                      uint32_t capacity, uint32_t *count_out);

/* ---- KV block transfer -------------------------------------------------- */

enum kvrt_xfer_kv_params_field {
    KVRT_XFER_KV_PARAM_INTEGRITY = 1u << 0, /* integrity */
    KVRT_XFER_KV_PARAM_NOTIFY = 1u << 1,    /* notify, notify_bytes */
    KVRT_XFER_KV_PARAM_TIMEOUT = 1u << 2,
    KVRT_XFER_KV_PARAM_INFLIGHT = 1u << 3,
    KVRT_XFER_KV_PARAM_USER_DATA = 1u << 4
};

/*
 * Moves whole KV blocks (every layer, K and V) between a local pool region
 * and a peer's pool region (both registered with the POOL bit). Block i of
 * local_blocks pairs with block i of remote_blocks. The two pools may have
 * different layouts (order, format, block count) as long as their pages
 * have the same size and their layer counts agree. Contiguous runs on both
 * sides are coalesced into single operations.
 *
 * opcode, local, remote, local_blocks, remote_blocks and count are always
 * read; the rest by field_mask: INTEGRITY -> integrity, NOTIFY -> notify
 * and notify_bytes, TIMEOUT -> timeout_ms, INFLIGHT -> max_inflight_bytes,
 * USER_DATA -> user_data.
 */
typedef struct kvrt_xfer_kv_params {
    uint64_t field_mask;
    kvrt_xfer_opcode_t opcode;          /* WRITE pushes, READ pulls */
    const kvrt_xfer_region_t *local;
    const kvrt_xfer_remote_t *remote;
    const int32_t *local_blocks;        /* copied */
    const int32_t *remote_blocks;       /* copied */
    uint32_t count;
    /* Checks every block's XXH3-64 on arrival: for WRITE the receiver
     * verifies before delivering the notification, for READ this side
     * verifies against the holder's checksums. A mismatch fails the request
     * with KVRT_ERR_INTEGRITY. Checksums are computed on the CPU, so either
     * pool being device (dmabuf) memory makes it KVRT_ERR_UNSUPPORTED.
     * A checksum message asks the peer for at most 256 MiB of hashing
     * (fewer blocks per message when blocks are large), and at most 1 GiB
     * of it is outstanding per peer: further messages wait for answers.
     * The receiver refuses more (KVRT_ERR_REQUEST_LIMIT, KVRT_ERR_BUSY). */
    int integrity;
    const void *notify;                 /* copied; 1..KVRT_XFER_NOTIFY_MAX
                                           bytes, delivered once all landed */
    uint32_t notify_bytes;
    uint32_t timeout_ms;                /* default: the agent's */
    uint64_t max_inflight_bytes;        /* default 64 MiB; 0 is refused */
    uint64_t user_data;                 /* echoed in the completion */
} kvrt_xfer_kv_params_t;

/*
 * kvrt_xfer_kv_post - posts a KV block transfer as one request (same
 * ownership rules as kvrt_xfer_post()).
 * Errors: those of kvrt_xfer_post(), and KVRT_ERR_INVALID_ARG (a region not
 * registered with a pool, block id out of range or the null block, layouts
 * that do not pair up), KVRT_ERR_UNSUPPORTED (integrity with a pool in
 * device memory on either side).
 */
kvrt_status_t kvrt_xfer_kv_post(kvrt_xfer_peer_t *peer,
                                const kvrt_xfer_kv_params_t *params,
                                kvrt_xfer_request_t **request_out);

/*
 * Statistics are ctl nodes under "xfer.<n>." (n counts agents in the
 * context): bytes_written, bytes_read, ops, requests, requests_failed,
 * refused (incoming operations refused), auth_failures, regions,
 * outstanding, peers, reconnects, integrity_failures,
 * notifications_dropped, queued_bytes (held for replies peers have not
 * taken, all peers), reads_paused (times a peer's reading stopped for
 * that), revocations (peers revoked: by call, deregistration or access
 * deadline), hash_refused (KV checksum messages refused for size or
 * budget); all u64, read-only.
 */

#ifdef __cplusplus
}
#endif

#endif /* KVRT_XFER_H */
