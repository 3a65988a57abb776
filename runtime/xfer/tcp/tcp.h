/*
 * tcp.h - the TCP backend's objects, shared by tcp.c (ops, progress
 * thread, sending) and tcp_rx.c (the receive state machine, where every
 * incoming header is parsed and every access checked). Internal.
 *
 * One progress thread per agent drives every socket through one io_uring.
 * All state below is guarded by tcp_state.lock; only the progress thread
 * prepares submissions. Other threads (post, send_msg, accept, close)
 * queue frames or sockets under the lock and wake it through an eventfd.
 */
#ifndef KVRT_XFER_TCP_H
#define KVRT_XFER_TCP_H

#include <liburing.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "../backend.h"
#include "core/free_list.h"
#include "frame_auth.h"
#include "wire.h"

#define TCP_MAX_SOCKS 16
/* Frames and sendmsg records reserved when the backend starts, and the most
 * kept for reuse: steady traffic recycles them instead of allocating. */
#define TCP_RESERVE_FRAMES 1024u
#define TCP_RESERVE_SENDS 64u
#define TCP_CACHE_MAX 16384u
#define TCP_IOV_MAX 128
#define TCP_STAGE (512u << 10)
/* Bytes a frame occupies on the wire. */
#define TCP_FRAME_WIRE(length) (KVRT_XFER_WIRE_HEADER_BYTES + (length) + KVRT_XFER_FRAME_TAG_BYTES)

typedef struct tcp_state tcp_state_t;
typedef struct tcp_conn tcp_conn_t;
typedef struct tcp_sock tcp_sock_t;
typedef struct tcp_job tcp_job_t;

/* An outgoing frame: header, then an optional payload that stays valid
 * until the frame is freed (registered memory, or `owned`). */
typedef struct tcp_frame {
    struct tcp_frame *next;
    uint8_t hdr[KVRT_XFER_WIRE_HEADER_BYTES];
    const uint8_t *payload;
    uint64_t length;
    uint8_t tag[KVRT_XFER_FRAME_TAG_BYTES]; /* sealed as it goes out */
    void *pin;                 /* served READ_RESP: unpinned once sent */
    uint8_t *owned;            /* freed with the frame */
    /* A reply to the peer (ACK, READ_RESP, MSG_REPLY): the memory it holds
     * (record, owned payload or ciphertext), counted in its connection's
     * `queued` from when it is queued until its sendmsg finishes. */
    uint32_t cost;
} tcp_frame_t;

/* What a queued reply frame holds besides its payload. */
#define TCP_FRAME_COST ((uint32_t)sizeof(tcp_frame_t))
/* Payload one sendmsg seals at most (one frame always). Frames are sealed
 * as they go out: the bytes a tag was just computed over are still in
 * cache when the kernel copies them, and AEAD ciphertext buffers exist
 * only in flight. */
#define TCP_SEAL_GATHER (1u << 20)

/* One sendmsg in flight on a socket (several frames). */
typedef struct tcp_send {
    struct tcp_send *next, *prev; /* in st->orphans once finished, notifications due */
    tcp_sock_t *sock;
    tcp_frame_t *frames;
    struct iovec iov[TCP_IOV_MAX];
    struct msghdr msg;
    uint32_t iov_first, iov_count;
    uint32_t notifs;           /* zero-copy notifications still due */
    bool zerocopy, finished;   /* finished: sock is NULL from then on */
} tcp_send_t;

typedef enum tcp_slot_kind { SLOT_WRITE = 1, SLOT_READ = 2, SLOT_MSG = 3 } tcp_slot_kind_t;

/* An outgoing request waiting for its answer; tag = gen << 32 | index. */
typedef struct tcp_slot {
    uint32_t gen, next_free;
    tcp_slot_kind_t kind;      /* 0 when free */
    tcp_sock_t *sock;          /* the answer must come back on it */
    kvrt_xfer_bk_batch_t *batch;
    kvrt_xfer_bk_msg_t *msg;
    uint8_t *dest;             /* READ: where the data lands */
    uint64_t length;
} tcp_slot_t;

typedef enum tcp_rx_phase { RX_HEADER = 0, RX_PAYLOAD = 1, RX_DRAIN = 2 } tcp_rx_phase_t;

struct tcp_sock {
    tcp_conn_t *conn;
    int fd;
    bool armed;                /* a recv is in flight */
    bool rx_paused;            /* reading stopped: the peer's replies are not drained */
    bool sending;              /* a tcp_send is in flight */
    /* receive state */
    tcp_rx_phase_t phase;
    uint8_t hdr[KVRT_XFER_WIRE_HEADER_BYTES];
    kvrt_xfer_wire_header_t h;
    uint8_t *stage;            /* TCP_STAGE bytes: headers and small payloads */
    uint32_t stage_start, stage_end;
    uint8_t *dest;             /* payload target (registered memory or msg) */
    uint64_t left;
    void *pin;                 /* WRITE into a pinned region */
    uint32_t slot;             /* READ_RESP / MSG_REPLY: the slot answered */
    uint8_t *msg;              /* MSG / MSG_REPLY payload buffer */
    int32_t drain_status;      /* RX_DRAIN: status to ACK with */
    /* send queue */
    tcp_frame_t *txq, *txq_tail;
    uint64_t txq_bytes;
    /* frame authentication: each direction has its key and sequence */
    uint32_t protection;       /* mode and suite, as agreed (frame_auth.h) */
    kvrt_xfer_frame_key_t tx_key, rx_key;
    bool tag_pending;          /* the verified frame's tag is at stage[tag_at] */
    uint32_t tag_at;
};

struct tcp_conn {
    tcp_state_t *st;
    bool zerocopy;             /* worth it: the peer is not on loopback */
    kvrt_xfer_bk_peer_t *peer;
    tcp_conn_t *next;          /* in st->conns */
    tcp_sock_t *socks[TCP_MAX_SOCKS];
    uint32_t nsocks;
    tcp_slot_t *slots;
    uint32_t nslots, free_slot, used_slots;
    uint32_t sqes;             /* submissions in flight (incl. notifications) */
    bool failed;               /* sockets shut down; draining */
    bool closing;              /* close() waits for drained */
    bool drained;              /* everything completed and delivered */
    bool finalized;
    bool fail_reserved;        /* holds an upcall entry for its failure report */
    /* Bytes held for replies to this peer (frame costs). At max_queued the
     * connection stops reading from the peer until they drain. */
    uint64_t queued;
    uint32_t jobs;             /* messages with the worker (tcp_worker.c) */
};

/* A completion to deliver once the lock is dropped. */
typedef struct tcp_upcall {
    enum { UP_BATCH, UP_MSG, UP_FAILED } kind;
    kvrt_xfer_bk_batch_t *batch;
    kvrt_xfer_bk_msg_t *msg;
    kvrt_xfer_bk_peer_t *peer;
    kvrt_status_t status;
    uint8_t *reply;            /* UP_MSG: freed after delivery */
    uint32_t reply_bytes;
} tcp_upcall_t;

struct tcp_state {
    kvrt_xfer_bk_env_t env;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    struct io_uring ring;
    int wake_fd;
    uint64_t wake_buf;
    bool wake_armed, stopping, zc_supported;
    tcp_conn_t *conns;
    /* Upcalls wait in a ring until delivered. Every producer reserved its
     * entry beforehand (a batch when posted, a message when sent, a failure
     * report when its connection was made), so queuing one never fails and
     * no completion is ever lost. */
    tcp_upcall_t *ups;
    uint32_t ups_head, nups, cap_ups, ups_promised;
    kvrt_free_list_t frames;   /* freed frames kept for reuse */
    kvrt_free_list_t sends;    /* freed sendmsg records kept for reuse */
    uint64_t written, read;    /* bytes completed, reported in batches */
    /* Finished sends whose zero-copy notifications are still due; freed
     * when they arrive, or after the ring is gone at fini. */
    tcp_send_t *orphans;
    uint8_t reply[KVRT_XFER_WIRE_MSG_MAX]; /* a message's reply, before it is sized */
    /* Messages that work long, served by the worker (tcp_worker.c). */
    pthread_t worker;
    pthread_cond_t work_cond;
    bool worker_stopping;
    tcp_job_t *jobs, *jobs_tail;
    uint8_t work_reply[KVRT_XFER_WIRE_MSG_MAX]; /* the worker's, unlocked */
};

/*
 * A frame sent is a release and a frame received an acquire: the kernel
 * orders them, but ThreadSanitizer cannot see socket I/O done by io_uring,
 * so two agents in one process (the tests) would otherwise show the data a
 * progress thread copied out of a frame as racing with the peer's reader.
 */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
extern char kvrt_xfer_tcp_wire_order;
#define TCP_WIRE_RELEASE() __tsan_release(&kvrt_xfer_tcp_wire_order)
#define TCP_WIRE_ACQUIRE() __tsan_acquire(&kvrt_xfer_tcp_wire_order)
#else
#define TCP_WIRE_RELEASE() ((void)0)
#define TCP_WIRE_ACQUIRE() ((void)0)
#endif

/* tcp.c */
_Static_assert(TCP_FRAME_WIRE(KVRT_XFER_WIRE_FRAME_MAX) <= TCP_STAGE,
               "a whole frame must fit the receive stage");
/* A frame from the state's cache (st->lock held); NULL without memory. */
tcp_frame_t *tcp_frame_new(tcp_state_t *st, const kvrt_xfer_wire_header_t *h,
                           const uint8_t *payload, uint64_t length);
/* Frees f (st->lock held); a reply must be settled first. */
void tcp_frame_free(tcp_state_t *st, tcp_frame_t *f);
/* Queues f on s (st->lock held); it is sealed when it goes out. */
void tcp_enqueue(tcp_sock_t *s, tcp_frame_t *f);
void tcp_upcall(tcp_state_t *st, tcp_upcall_t up);
void tcp_conn_fail(tcp_conn_t *c, kvrt_status_t status, const char *why);
/* Completes slot `index` of c with status (and reply for messages). */
void tcp_slot_finish(tcp_conn_t *c, uint32_t index, kvrt_status_t status,
                     uint8_t *reply, uint32_t reply_bytes);

/* Queues a reply frame on s, counting its cost against the peer
 * (st->lock held). */
void tcp_enqueue_reply(tcp_sock_t *s, tcp_frame_t *f);
/* Drops a frame's pin and its cost from c (st->lock held, c alive). */
void tcp_frame_settle(tcp_conn_t *c, tcp_frame_t *f);
/* Whether c holds as many reply bytes as it may (reads stop). */
static inline bool tcp_conn_full(const tcp_conn_t *c)
{
    return c->queued >= c->st->env.max_queued_bytes;
}

/* tcp_worker.c: the thread serving admitted messages that work long. */
bool tcp_worker_start(tcp_state_t *st);
/* Joins it; no connection is left, so neither is a job. */
void tcp_worker_stop(tcp_state_t *st);
/* Hands a message admitted with `work` to the worker (st->lock held); it
 * takes payload over. False without memory (nothing changed). */
bool tcp_worker_queue(tcp_sock_t *s, uint32_t type, uint64_t tag, uint64_t work,
                      uint8_t *payload, uint32_t bytes);

/* tcp_rx.c: queues the reply to message `tag` on s: status, and `bytes`
 * of reply copied out at their real size (st->lock held). */
void tcp_reply_msg(tcp_sock_t *s, uint64_t tag, kvrt_status_t status, const uint8_t *reply,
                   uint32_t bytes);
/* Handles a finished recv of `res` bytes on s. */
void tcp_rx_complete(tcp_sock_t *s, int res);
/* Prepares the next recv of s into the ring. */
void tcp_rx_arm(tcp_sock_t *s, struct io_uring_sqe *sqe);
/* Releases what s's receive side holds (on connection teardown). */
void tcp_rx_release(tcp_sock_t *s);
/* Consumes whole frames staged on s, stopping at a frame boundary while
 * the connection is full (s->rx_paused). */
void tcp_rx_drain(tcp_sock_t *s);

#endif /* KVRT_XFER_TCP_H */
