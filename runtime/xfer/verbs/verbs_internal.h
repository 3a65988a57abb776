/*
 * verbs_internal.h - the verbs backend's objects, shared by verbs_backend.c
 * (devices, registration, the progress thread), verbs_conn.c (queue pair
 * set-up, teardown, messages) and verbs_post.c (work-request chains and
 * completions). Internal.
 *
 * Locking: backend.lock guards the connection list and each connection's
 * closing/closed flags; conn.lock guards everything else of a connection
 * (queues, rings, batches, message slots). No lock is held across an
 * upcall (the agent may post from inside batch_done): completions, failure
 * reports and refusals are collected in the connection under its lock and
 * handed to the agent by vb_deliver() once the lock is released.
 */
#ifndef KVRT_XFER_VERBS_INTERNAL_H
#define KVRT_XFER_VERBS_INTERNAL_H

#include <pthread.h>

#include "../backend.h"
#include "core/endian.h"
#include "../sidechannel.h"
#include "verbs_ops.h"

#define VB_MAX_DEVICES 4
#define VB_MAX_PIECES 16           /* MRs per region and device */
#define VB_MAX_QPS 16              /* queue pairs per connection */
#define VB_MAX_SGE 16              /* gather/scatter entries per WR */
#define VB_MSG_SLOTS 4             /* messages in flight per direction */
#define VB_MSG_HEADER 24
#define VB_SLOT_BYTES (VB_MSG_HEADER + KVRT_XFER_MSG_MAX)
#define VB_RECV_WRS (2 * VB_MSG_SLOTS)
#define VB_MSG_MAGIC 0x4d56564bu   /* "KVVM" little-endian */
#define VB_KEY_HEADER 24
#define VB_RECV_FLAG (1ull << 63)  /* wr_id bit: a receive */
/* Side-channel frame types of this backend (>= 64, see sidechannel.h). */
#define VB_SC_SETUP 64
#define VB_SC_READY 65

typedef struct vb_device {
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *channel;
    char name[64];
    uint8_t port;
    enum ibv_mtu mtu;              /* the port's active MTU */
    bool roce;                     /* Ethernet link layer: address by GID */
    uint32_t gid_index;
    union ibv_gid gid;
    uint16_t lid;
    uint64_t max_mr_size;
    uint32_t max_sge, max_qp_wr, max_cqe;
    uint8_t max_rd_atomic, max_dest_rd_atomic;
} vb_device_t;

typedef struct vb_conn vb_conn_t;

typedef struct vb_backend {
    kvrt_verbs_ops_t ops;
    kvrt_verbs_tuning_t tuning;    /* defaults resolved */
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *agent;
    struct ibv_device **list;
    vb_device_t dev[VB_MAX_DEVICES];
    uint32_t ndev;
    uint32_t max_sge;              /* smallest of the devices', capped */
    uint64_t max_mr_size;          /* smallest of the devices' */
    pthread_mutex_t lock;
    pthread_cond_t cond;           /* a connection finished closing */
    vb_conn_t *conns;
    int wake_fd;
    pthread_t thread;
    bool stopping;
} vb_backend_t;

/* A registered region: the same piece layout on every device. */
typedef struct vb_region {
    uint32_t ndev, npieces;
    uint64_t piece_bytes;
    struct ibv_mr *mr[VB_MAX_DEVICES][VB_MAX_PIECES];
} vb_region_t;

typedef struct vb_batch vb_batch_t;

/* One work request, queued on a QP until the send queue has room. */
typedef struct vb_wr {
    struct vb_wr *next;
    vb_batch_t *batch;             /* NULL for a message SEND */
    enum ibv_wr_opcode opcode;
    bool last_on_qp;               /* last WR of its batch on this QP */
    uint32_t qp;
    uint32_t nsge;
    uint32_t sge_first;            /* index into batch->sges (data WRs) */
    struct ibv_sge *msg_sge;       /* the SGE of a message SEND */
    uint64_t remote_addr;
    uint32_t rkey;
    uint64_t bytes;
} vb_wr_t;

struct vb_batch {
    kvrt_xfer_bk_batch_t *bk;
    vb_conn_t *conn;
    vb_batch_t *prev, *next;       /* conn->batches */
    vb_wr_t *wrs;
    uint32_t nwr;
    struct ibv_sge *sges;
    uint32_t nsge, sge_capacity, wr_capacity;
    uint32_t left;                 /* WRs not retired (queued or posted) */
    uint32_t posted_left;          /* posted, not retired */
    kvrt_status_t status;          /* first error */
    bool canceled;
    uint64_t written, read;
};

typedef struct vb_qp {
    struct ibv_qp *qp;
    uint32_t dev;                  /* local device index */
    uint32_t depth;                /* send queue slots */
    uint64_t posted, retired;      /* WR sequence numbers */
    vb_wr_t **ring;                /* ring[seq % depth]: posted WRs */
    struct ibv_send_wr *chain;     /* depth entries, built per doorbell */
    vb_wr_t *pend_head, *pend_tail;
    uint32_t since_signal;
    uint32_t psn;
} vb_qp_t;

struct vb_conn {
    vb_backend_t *b;
    kvrt_xfer_bk_peer_t *peer;
    int fd;                        /* side channel, watched for EOF */
    pthread_mutex_t lock;
    vb_conn_t *next;               /* backend->conns */
    bool closing, closed;          /* backend->lock */
    bool fresh;                    /* backend->lock: not yet drained once */
    bool fd_done;                  /* progress thread: side channel ended */
    struct ibv_cq *cq[VB_MAX_DEVICES];
    uint32_t nqp;
    vb_qp_t qp[VB_MAX_QPS];
    uint32_t next_qp;
    bool failed;
    kvrt_status_t fail_status;
    vb_batch_t *batches;
    /* messages: [recv 2R][request sends R][reply sends R] slots */
    uint8_t *msg_mem;
    /* one MR per slot: a slot always fits a device's max MR size */
    struct ibv_mr *msg_mr[VB_RECV_WRS + 2 * VB_MSG_SLOTS];
    struct ibv_sge msg_sge[2 * VB_MSG_SLOTS];
    vb_wr_t msg_wr[2 * VB_MSG_SLOTS];
    kvrt_xfer_bk_msg_t *req[VB_MSG_SLOTS];
    bool req_busy[VB_MSG_SLOTS];   /* reply being delivered; slot not free */
    kvrt_xfer_bk_msg_t *msgq_head, *msgq_tail;
    /* upcalls waiting for the lock to be released (vb_deliver) */
    kvrt_xfer_bk_batch_t *done_head, *done_tail; /* via backend_data[1] */
    kvrt_xfer_bk_msg_t *mfail_head, *mfail_tail;  /* via backend_data[0] */
    uint64_t count_written, count_read;
    bool report_fail, report_refuse;
    kvrt_status_t report_status;
    char report_why[256], refuse_why[96];
};

/* verbs_backend.c */
void vb_wake(vb_backend_t *b);

/* verbs_conn.c */
kvrt_status_t vb_connect(void *state, kvrt_xfer_bk_peer_t *peer, int fd,
                         const kvrt_xfer_sc_keys_t *keys,
                         uint64_t deadline_ns, void **conn_out, char *why,
                         size_t why_bytes);
kvrt_status_t vb_accept(void *state, kvrt_xfer_bk_peer_t *peer, void *conn, int fd,
                        const kvrt_xfer_sc_keys_t *keys,
                        uint32_t conn_index, void **conn_out, char *why,
                        size_t why_bytes);
void vb_close(void *state, void *conn);
kvrt_status_t vb_send_msg(void *state, void *conn, kvrt_xfer_bk_msg_t *msg);
/* Tears a closing connection down (progress thread, no lock held). */
void vb_conn_teardown(vb_conn_t *c);
/* Handles a receive completion (progress thread, conn lock held; may drop
 * and retake it). */
void vb_on_recv(vb_conn_t *c, const struct ibv_wc *wc);
/* Fails messages outstanding on a failed connection (conn lock held). */
void vb_fail_msgs(vb_conn_t *c);

/* verbs_post.c */
/* Hands collected completions and reports to the agent. Call without the
 * conn lock. */
void vb_deliver(vb_conn_t *c);
kvrt_status_t vb_post(void *state, void *conn, kvrt_xfer_bk_batch_t *batch);
void vb_cancel(void *state, void *conn, kvrt_xfer_bk_batch_t *batch);
/* Posts queued WRs of QP k as far as its send queue allows (conn lock). */
void vb_kick(vb_conn_t *c, uint32_t k);
/* Queues a WR on its QP (conn lock). */
void vb_enqueue(vb_conn_t *c, vb_wr_t *w);
/* Polls one CQ of a connection dry (conn lock held). Returns entries seen. */
int vb_drain_cq(vb_conn_t *c, uint32_t dev);
/* Marks the connection failed: QPs to the error state, queued work
 * retired, messages failed; tells the agent unless `quiet` (conn lock). */
void vb_conn_fail(vb_conn_t *c, kvrt_status_t status, bool quiet, const char *fmt,
                  ...) KVRT_PRINTF(4, 5);
/* Completes every batch still outstanding (after its QPs are gone). */
void vb_finish_all(vb_conn_t *c);

#endif /* KVRT_XFER_VERBS_INTERNAL_H */
