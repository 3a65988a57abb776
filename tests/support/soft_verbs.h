/*
 * soft_verbs.h - a software RDMA device: the subset of verbs kvrt uses,
 * implemented over this process's memory, behind the verbs ops table
 * (verbs_ops.h). Internal: nothing here is ABI.
 *
 * It stands in for a NIC so that the verbs backend's real code is exercised
 * where no RDMA hardware exists, and it is strict where hardware is:
 *  - RC queue pairs with the RESET -> INIT -> RTR -> RTS (-> ERR) state
 *    machine; a transition that skips a state, or lacks (or adds) attribute
 *    mask bits the transition needs, fails with EINVAL; RTR refuses a path
 *    MTU above the port's active MTU or an address that names no device;
 *  - post_send fails (EINVAL) before RTS, and with ENOMEM when the send
 *    queue is full; a send-queue slot is only freed when a completion at or
 *    after it is polled, so unsignaled WRs that are never followed by a
 *    signaled one fill the queue, as on hardware;
 *  - WRs execute asynchronously on the device's worker thread, in order per
 *    QP: RDMA WRITE, WRITE WITH IMM, READ and SEND with gather/scatter
 *    lists; signaled WRs produce a completion, unsignaled ones none;
 *  - every lkey and rkey is checked (key exists, same PD, range inside the
 *    MR, access flags): a bad rkey or range gives IBV_WC_REM_ACCESS_ERR and
 *    moves both QPs to the error state; a bad lkey IBV_WC_LOC_PROT_ERR;
 *    requester and responder must agree on path MTU and PSN and be
 *    connected to each other, else IBV_WC_RETRY_EXC_ERR (what a lost peer
 *    looks like); a SEND with no receive posted is IBV_WC_RNR_RETRY_EXC_ERR;
 *  - a QP in the error state flushes every outstanding WR with
 *    IBV_WC_WR_FLUSH_ERR, one completion each (signaled or not);
 *  - completion channels with an fd that poll() can wait on.
 * Faults can be injected: a killed QP goes to the error state, a killed
 * device stops answering, a paused worker leaves WRs in flight.
 *
 * One device set (a "fabric") exists per process at a time, because verbs
 * entry points such as get_device_list carry no context pointer. All calls
 * are thread-safe (one lock). Not for production traffic: data moves by
 * memcpy under that lock.
 */
#ifndef KVRT_XFER_SOFT_VERBS_H
#define KVRT_XFER_SOFT_VERBS_H

#include <stdbool.h>
#include <stdint.h>

#include "xfer/verbs/verbs_ops.h"

#define SOFT_VERBS_MAX_DEVICES 4

/* Zero fields take the defaults in brackets. */
typedef struct soft_verbs_config {
    uint32_t devices;         /* devices listed [1] */
    uint64_t max_mr_size;     /* [1 TiB] */
    uint32_t max_sge;         /* per WR [16] */
    uint32_t max_qp_wr;       /* per queue [4096] */
    uint32_t max_cqe;         /* [65536] */
    uint32_t max_qp_rd_atom;  /* [16] */
    enum ibv_mtu active_mtu[SOFT_VERBS_MAX_DEVICES]; /* [IBV_MTU_4096] */
} soft_verbs_config_t;

typedef struct soft_verbs_stats {
    uint64_t doorbells;       /* post_send calls that posted WRs */
    uint64_t send_wrs;        /* send WRs posted */
    uint64_t send_cqes;       /* send-side completions generated */
    uint64_t recv_cqes;
    uint64_t bytes;           /* READ/WRITE/SEND payload moved */
    uint64_t rem_access_errors;
    uint64_t cq_overflows;
    uint64_t device_bytes[SOFT_VERBS_MAX_DEVICES]; /* READ/WRITE bytes per
                                 requesting device */
    enum ibv_mtu path_mtu_max; /* highest path MTU any QP reached RTR with */
    uint32_t max_chain;       /* most WRs posted by one post_send */
    uint32_t qps_with_data;   /* QPs (ever) that carried READ/WRITE data */
    uint32_t live_contexts, live_pds, live_mrs, live_cqs, live_qps, live_channels;
} soft_verbs_stats_t;

/* A registered MR as the device sees it. */
typedef struct soft_verbs_mr_info {
    uint64_t addr;            /* iova */
    uint64_t length;
    int access;
} soft_verbs_mr_info_t;

/*
 * Creates the fabric and its worker thread. Returns 0, EBUSY (one exists),
 * EINVAL (bad config) or ENOMEM.
 */
int soft_verbs_start(const soft_verbs_config_t *config);
/* Stops the worker and frees the fabric. Objects still alive are leaked
 * and counted (check the stats first). */
void soft_verbs_stop(void);
/* The ops table that drives this fabric. */
const kvrt_verbs_ops_t *soft_verbs_ops(void);

void soft_verbs_get_stats(soft_verbs_stats_t *out);
/* Copies up to `capacity` live MRs to out; returns how many exist. */
uint32_t soft_verbs_mrs(soft_verbs_mr_info_t *out, uint32_t capacity);
/* The path MTU a QP was moved to RTR with (0 when none or no such QP). */
enum ibv_mtu soft_verbs_qp_path_mtu(uint32_t qp_num);

/*
 * The seam (verbs_seam.c): installs the ops table (NULL: libibverbs) and
 * tuning (NULL: defaults) used by verbs backends created afterwards; both
 * are copied. Not thread-safe against agent creation: call it before
 * creating agents.
 */
void kvrt_verbs_use(const kvrt_verbs_ops_t *ops, const kvrt_verbs_tuning_t *tuning);

/* Faults. */
void soft_verbs_pause(bool paused);        /* worker stops executing WRs */
int soft_verbs_kill_qp(uint32_t qp_num);   /* QP to the error state; ENOENT */
int soft_verbs_kill_device(uint32_t index);/* every QP of it errors, and it
                                              stops answering; ENOENT */

#endif /* KVRT_XFER_SOFT_VERBS_H */
