/*
 * verbs_ops.h - the seam between the verbs backend and libibverbs.
 * Internal: nothing here is ABI.
 *
 * Every verbs call the backend makes goes through one table of function
 * pointers with libibverbs' own signatures and types. The default table
 * calls libibverbs; tests install another one (the software device in
 * soft_verbs.h) so that the real backend code runs, unchanged, on a machine
 * without an RDMA NIC. Objects handed out by one table are only ever given
 * back to the same table: the backend never calls the static inline verbs
 * helpers (ibv_post_send, ibv_poll_cq, ...) on its own.
 *
 * Errors follow libibverbs: calls returning int give 0 or an errno value
 * (post_send/post_recv also set *bad_wr); calls returning a pointer give
 * NULL and set errno.
 */
#ifndef KVRT_XFER_VERBS_OPS_H
#define KVRT_XFER_VERBS_OPS_H

#include <infiniband/verbs.h>
#include <stdint.h>

typedef struct kvrt_verbs_ops {
    const char *name; /* "libibverbs", "soft" */

    struct ibv_device **(*get_device_list)(int *num_devices);
    void (*free_device_list)(struct ibv_device **list);
    const char *(*get_device_name)(struct ibv_device *device);
    struct ibv_context *(*open_device)(struct ibv_device *device);
    int (*close_device)(struct ibv_context *context);

    int (*query_device)(struct ibv_context *context, struct ibv_device_attr *attr);
    int (*query_port)(struct ibv_context *context, uint8_t port,
                      struct ibv_port_attr *attr);
    int (*query_gid_ex)(struct ibv_context *context, uint32_t port,
                        uint32_t index, struct ibv_gid_entry *entry);

    struct ibv_pd *(*alloc_pd)(struct ibv_context *context);
    int (*dealloc_pd)(struct ibv_pd *pd);
    struct ibv_mr *(*reg_mr)(struct ibv_pd *pd, void *addr, size_t length,
                             int access);
    struct ibv_mr *(*reg_dmabuf_mr)(struct ibv_pd *pd, uint64_t offset,
                                    size_t length, uint64_t iova, int fd,
                                    int access);
    int (*dereg_mr)(struct ibv_mr *mr);

    struct ibv_comp_channel *(*create_comp_channel)(struct ibv_context *context);
    int (*destroy_comp_channel)(struct ibv_comp_channel *channel);
    struct ibv_cq *(*create_cq)(struct ibv_context *context, int cqe,
                                void *cq_context, struct ibv_comp_channel *channel,
                                int comp_vector);
    int (*destroy_cq)(struct ibv_cq *cq);
    int (*req_notify_cq)(struct ibv_cq *cq, int solicited_only);
    /* Non-blocking here: the backend sets the channel's fd O_NONBLOCK, so
     * this returns -1 with errno EAGAIN when no event is pending. */
    int (*get_cq_event)(struct ibv_comp_channel *channel, struct ibv_cq **cq,
                        void **cq_context);
    void (*ack_cq_events)(struct ibv_cq *cq, unsigned int nevents);
    int (*poll_cq)(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc);

    struct ibv_qp *(*create_qp)(struct ibv_pd *pd, struct ibv_qp_init_attr *attr);
    int (*modify_qp)(struct ibv_qp *qp, struct ibv_qp_attr *attr, int attr_mask);
    int (*destroy_qp)(struct ibv_qp *qp);
    int (*post_send)(struct ibv_qp *qp, struct ibv_send_wr *wr,
                     struct ibv_send_wr **bad_wr);
    int (*post_recv)(struct ibv_qp *qp, struct ibv_recv_wr *wr,
                     struct ibv_recv_wr **bad_wr);
} kvrt_verbs_ops_t;

/* The table that calls libibverbs. */
extern const kvrt_verbs_ops_t kvrt_verbs_libibverbs_ops;

/*
 * Tuning the backend reads when an agent creates it. Zero fields mean the
 * default. Tests lower them to reach edge cases with little memory.
 */
typedef struct kvrt_verbs_tuning {
    uint32_t signal_every;   /* signal every Nth WR of a chain; default 16 */
    uint32_t sq_depth;       /* send queue WRs per QP; default 256 (capped
                                by the device's max_qp_wr) */
    uint64_t wr_max_bytes;   /* bytes per WR (a striping unit); default 1 MiB */
    uint32_t qps_per_peer;   /* default: the agent's connections_per_peer */
    uint32_t device_mask;    /* bit i: use the i-th listed device; 0: all */
} kvrt_verbs_tuning_t;

/*
 * The table and tuning a verbs backend takes when an agent creates it. The
 * library's (weak) definitions answer libibverbs and the defaults; the test
 * seam (tests/support/verbs_seam.c, linked into test programs only)
 * overrides both at link time so tests can install the software device.
 */
const kvrt_verbs_ops_t *kvrt_verbs_current_ops(void);
kvrt_verbs_tuning_t kvrt_verbs_current_tuning(void);

#endif /* KVRT_XFER_VERBS_OPS_H */
