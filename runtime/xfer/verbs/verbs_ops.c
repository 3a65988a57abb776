/*
 * verbs_ops.c - the default verbs ops table (libibverbs) and the seam's
 * current selection.
 *
 * Most entries point straight at libibverbs; the few verbs that are
 * static inline or macros in <infiniband/verbs.h> get small wrappers so the
 * table holds real function addresses.
 */
#include "verbs_ops.h"

#include <stddef.h>

static int lib_query_port(struct ibv_context *context, uint8_t port,
                          struct ibv_port_attr *attr)
{
    return ibv_query_port(context, port, attr);
}

static int lib_query_gid_ex(struct ibv_context *context, uint32_t port,
                            uint32_t index, struct ibv_gid_entry *entry)
{
    return ibv_query_gid_ex(context, port, index, entry, 0);
}

static struct ibv_mr *lib_reg_mr(struct ibv_pd *pd, void *addr, size_t length,
                                 int access)
{
    return ibv_reg_mr(pd, addr, length, access);
}

static int lib_req_notify_cq(struct ibv_cq *cq, int solicited_only)
{
    return ibv_req_notify_cq(cq, solicited_only);
}

static int lib_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc)
{
    return ibv_poll_cq(cq, num_entries, wc);
}

static int lib_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr,
                         struct ibv_send_wr **bad_wr)
{
    return ibv_post_send(qp, wr, bad_wr);
}

static int lib_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr,
                         struct ibv_recv_wr **bad_wr)
{
    return ibv_post_recv(qp, wr, bad_wr);
}

static const char *lib_get_device_name(struct ibv_device *device)
{
    return ibv_get_device_name(device);
}

const kvrt_verbs_ops_t kvrt_verbs_libibverbs_ops = {
    .name = "libibverbs",
    .get_device_list = ibv_get_device_list,
    .free_device_list = ibv_free_device_list,
    .get_device_name = lib_get_device_name,
    .open_device = ibv_open_device,
    .close_device = ibv_close_device,
    .query_device = ibv_query_device,
    .query_port = lib_query_port,
    .query_gid_ex = lib_query_gid_ex,
    .alloc_pd = ibv_alloc_pd,
    .dealloc_pd = ibv_dealloc_pd,
    .reg_mr = lib_reg_mr,
    .reg_dmabuf_mr = ibv_reg_dmabuf_mr,
    .dereg_mr = ibv_dereg_mr,
    .create_comp_channel = ibv_create_comp_channel,
    .destroy_comp_channel = ibv_destroy_comp_channel,
    .create_cq = ibv_create_cq,
    .destroy_cq = ibv_destroy_cq,
    .req_notify_cq = lib_req_notify_cq,
    .get_cq_event = ibv_get_cq_event,
    .ack_cq_events = ibv_ack_cq_events,
    .poll_cq = lib_poll_cq,
    .create_qp = ibv_create_qp,
    .modify_qp = ibv_modify_qp,
    .destroy_qp = ibv_destroy_qp,
    .post_send = lib_post_send,
    .post_recv = lib_post_recv,
};

/* The library's answers: libibverbs, default tuning. Weak, so a test
 * program that links tests/support/verbs_seam.c gets that file's instead;
 * nothing can replace them in libkvrt.so (hidden symbols). */
__attribute__((weak)) const kvrt_verbs_ops_t *kvrt_verbs_current_ops(void)
{
    return &kvrt_verbs_libibverbs_ops;
}

__attribute__((weak)) kvrt_verbs_tuning_t kvrt_verbs_current_tuning(void)
{
    return (kvrt_verbs_tuning_t){0};
}
