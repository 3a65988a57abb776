/*
 * soft_verbs_internal.h - the software device's objects, shared by
 * soft_verbs.c (objects, state machine) and soft_verbs_exec.c (posting and
 * the worker that executes WRs). Internal.
 *
 * Every object embeds the libibverbs struct it stands for as its first
 * member, so the pointers the ops table hands out are real ibv_* pointers
 * and the backend reads their public fields (lkey, rkey, qp_num, ...) as
 * it would from hardware. Everything below is guarded by fabric.lock.
 */
#ifndef KVRT_XFER_SOFT_VERBS_INTERNAL_H
#define KVRT_XFER_SOFT_VERBS_INTERNAL_H

#include <pthread.h>

#include "soft_verbs.h"

typedef struct sv_device {
    struct ibv_device dev;
    uint32_t index;
    enum ibv_mtu mtu;
    union ibv_gid gid[2];     /* 0: RoCE v1 link-local, 1: RoCE v2 */
    bool dead;
} sv_device_t;

typedef struct sv_context {
    struct ibv_context ctx;
    sv_device_t *dev;
} sv_context_t;

typedef struct sv_pd {
    struct ibv_pd pd;
    uint32_t users;           /* MRs and QPs */
} sv_pd_t;

typedef struct sv_mr {
    struct ibv_mr mr;
    int access;
    uint64_t iova;
    uint8_t *host;
    struct sv_mr *next;       /* fabric.mrs */
} sv_mr_t;

typedef struct sv_cq sv_cq_t;

typedef struct sv_channel {
    struct ibv_comp_channel ch;
    sv_cq_t *events_head, *events_tail;
    uint32_t cqs;             /* CQs attached */
} sv_channel_t;

typedef struct sv_qp sv_qp_t;

typedef struct sv_cqe {
    struct ibv_wc wc;
    sv_qp_t *qp;              /* send completions: frees SQ slots when polled */
    uint64_t seq;
} sv_cqe_t;

struct sv_cq {
    struct ibv_cq cq;
    sv_channel_t *channel;
    sv_cqe_t *ring;
    uint32_t capacity, head, count;
    bool armed;
    uint32_t events;          /* queued on the channel, not yet read */
    sv_cq_t *event_next;
    uint32_t qps;             /* QPs using it */
};

typedef struct sv_swr {
    uint64_t wr_id;
    enum ibv_wr_opcode opcode;
    bool signaled;
    uint64_t remote_addr;
    uint32_t rkey;
    uint32_t imm;
    uint32_t nsge;
    struct ibv_sge *sge;      /* nsge entries, in the QP's sge pool */
} sv_swr_t;

typedef struct sv_rwr {
    uint64_t wr_id;
    uint32_t nsge;
    struct ibv_sge *sge;
} sv_rwr_t;

struct sv_qp {
    struct ibv_qp qp;
    sv_device_t *dev;
    sv_pd_t *pd;
    sv_cq_t *scq, *rcq;
    uint32_t max_send_wr, max_recv_wr, max_sge;
    /* connection state set by modify_qp */
    uint8_t port;
    int access;
    enum ibv_mtu path_mtu;
    uint32_t dest_qpn, rq_psn, sq_psn;
    sv_device_t *dest_dev;
    /* send queue: WRs [exec_seq, post_seq) wait to run; [freed_seq,
     * exec_seq) ran and hold their slot until a completion at or after
     * them is polled */
    sv_swr_t *sq;
    struct ibv_sge *sq_sge;
    uint64_t post_seq, exec_seq, freed_seq;
    /* receive queue */
    sv_rwr_t *rq;
    struct ibv_sge *rq_sge;
    uint64_t rq_post, rq_used;
    bool queued;              /* on the worker's run list */
    sv_qp_t *run_next;
    sv_qp_t *next;            /* fabric.qps */
    bool carried_data;
};

typedef struct sv_fabric {
    pthread_mutex_t lock;
    pthread_cond_t work;
    pthread_t worker;
    bool stopping, paused;
    soft_verbs_config_t config;
    sv_device_t devices[SOFT_VERBS_MAX_DEVICES];
    sv_mr_t *mrs;
    sv_qp_t *qps;
    sv_qp_t *run_head, *run_tail;
    uint32_t next_qpn, next_key;
    soft_verbs_stats_t stats;
} sv_fabric_t;

/* The one fabric (NULL when none). */
extern sv_fabric_t *sv_fabric;

/* soft_verbs_exec.c */
void *sv_worker_main(void *arg);
void sv_schedule(sv_qp_t *qp);                   /* lock held */
void sv_unschedule(sv_qp_t *qp);                 /* lock held */
void sv_cq_push(sv_cq_t *cq, const struct ibv_wc *wc, sv_qp_t *qp, uint64_t seq);
void sv_qp_error(sv_qp_t *qp);                   /* lock held */
int sv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr,
                 struct ibv_send_wr **bad_wr);
int sv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr,
                 struct ibv_recv_wr **bad_wr);
sv_qp_t *sv_qp_find(uint32_t qp_num);            /* lock held */
sv_mr_t *sv_mr_find(uint32_t key);               /* lock held */

#endif /* KVRT_XFER_SOFT_VERBS_INTERNAL_H */
