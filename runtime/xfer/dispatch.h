/*
 * dispatch.h - the message API that layers above the transfer engine build
 * on. Internal: nothing here is ABI.
 *
 * A message is a small request/reply exchange with a peer, carried by the
 * backend in order with the data posted before it (kvrt_xfer_bk_msg_t). On
 * the receiving side the dispatcher hands it to the handler registered for
 * its type; on the sending side a request may carry a layer (its ops and
 * state below) that produces the request's closing messages and judges
 * their replies. The agent and request code know no message kind but the
 * plain notification: a new kind is a new handler and a new layer, not a
 * new branch there.
 *
 * Registration happens while an agent is created, before its threads and
 * backend start, and the table never changes afterwards, so handlers are
 * looked up without a lock.
 */
#ifndef KVRT_XFER_DISPATCH_H
#define KVRT_XFER_DISPATCH_H

#include <stdint.h>

#include "kvrt/xfer.h"

/* Wire values of the message types, allocated here so that layers never
 * collide. Released values never change meaning. */
enum xfer_msg_type {
    XFER_MSG_NOTIFY = 1,     /* request.c: payload is the notification */
    XFER_MSG_KV_VERIFY = 2,  /* kv/: checksums to verify, maybe a notification */
    XFER_MSG_KV_HASHES = 3,  /* kv/: asks for checksums of blocks */
    XFER_MSG_TYPES = 16      /* table size: types are 1..XFER_MSG_TYPES-1 */
};

typedef struct xfer_msg xfer_msg_t;

/*
 * Serves one received message of `bytes` payload from peer, on a backend
 * thread with no agent lock held. May write a reply of up to `capacity`
 * bytes and set *reply_bytes_out. Returns the status the sender's message
 * completes with; a malformed message is refused (kvrt_xfer_bk_refuse) and
 * answered with KVRT_ERR_PROTOCOL.
 */
typedef kvrt_status_t (*xfer_msg_serve_fn)(kvrt_xfer_peer_t *peer, uint32_t type,
                                           const uint8_t *payload, uint32_t bytes,
                                           uint8_t *reply, uint32_t capacity,
                                           uint32_t *reply_bytes_out);

/*
 * The work a received message asks for, in bytes its handler will read
 * (KV checksums), judged before it is queued, on the backend's I/O thread:
 * it must be cheap. KVRT_OK with *work_out 0 for a message served at once
 * (malformed ones too: the handler refuses them quickly); an error refuses
 * the message with that status (KVRT_ERR_REQUEST_LIMIT: more than
 * XFER_HASH_WORK_MAX). Admitted work counts against the peer's budget
 * (XFER_HASH_BUDGET) until served; beyond it a message is refused with
 * KVRT_ERR_BUSY.
 */
typedef kvrt_status_t (*xfer_msg_work_fn)(kvrt_xfer_peer_t *peer, uint32_t type,
                                          const uint8_t *payload, uint32_t bytes,
                                          uint64_t *work_out);

/* Registers the handler of `type` on agent (during create only), and for
 * handlers that may work long, what a message asks of them (work may be
 * NULL: every message is cheap). KVRT_ERR_INVALID_ARG for a type out of
 * range or taken. */
kvrt_status_t xfer_dispatch_register(kvrt_xfer_agent_t *agent, uint32_t type,
                                     xfer_msg_serve_fn serve);
kvrt_status_t xfer_dispatch_register_work(kvrt_xfer_agent_t *agent, uint32_t type,
                                          xfer_msg_serve_fn serve, xfer_msg_work_fn work);

/* Registers every layer's handlers: the list of layers lives in
 * dispatch.c. */
kvrt_status_t xfer_layers_register(kvrt_xfer_agent_t *agent);

/*
 * The sending side of a layer. A request made by a layer carries these ops
 * and the layer's state; the request code calls them with the agent lock
 * held (on_reply excepted) and knows nothing else of the layer.
 */
typedef struct xfer_request_layer {
    /* The request's next closing message once its data landed (use
     * xfer_msg_new); NULL when none is left, with *status_out KVRT_OK,
     * KVRT_INPROGRESS when one must wait (the peer is asked for as much
     * work as it takes: asked again when a message completes), or an
     * error the request fails with. */
    xfer_msg_t *(*next_msg)(kvrt_xfer_request_t *r, kvrt_status_t *status_out);
    /* Judges the reply to the last closing message (status is what the
     * peer answered); returns what the request continues or fails with
     * (KVRT_ERR_INTEGRITY is counted in integrity_failures). Called
     * WITHOUT the agent lock, the request held: it may read the request's
     * layer state and regions, and checksum for a while. */
    kvrt_status_t (*on_reply)(kvrt_xfer_request_t *r, kvrt_status_t status,
                              const uint8_t *reply, uint32_t bytes);
    /* Frees the layer's state with the request. */
    void (*free_state)(void *state);
} xfer_request_layer_t;

#endif /* KVRT_XFER_DISPATCH_H */
