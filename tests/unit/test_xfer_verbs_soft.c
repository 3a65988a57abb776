/*
 * test_xfer_verbs_soft.c - the software RDMA device behaves like a NIC
 * where the verbs backend depends on it: the RC state machine refuses
 * illegal transitions, posting before RTS fails, WR chains cost one
 * doorbell, only signaled WRs complete, the send queue fills when nothing
 * is signaled, every bad rkey / range / access right is an error completion
 * that takes both QPs down, PSN or MTU disagreement looks like a lost peer,
 * completion channels wake a poll(), and every object is accounted for.
 */
#include <criterion/criterion.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support/soft_verbs.h"

static const kvrt_verbs_ops_t *V;

typedef struct side {
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *ch;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    uint8_t *buf;
    struct ibv_mr *mr;
    union ibv_gid gid;
} side_t;

enum { BUF = 1 << 16 };

static void side_open(side_t *s, struct ibv_device *dev, uint32_t sq, int access)
{
    memset(s, 0, sizeof(*s));
    s->ctx = V->open_device(dev);
    cr_assert(s->ctx);
    s->pd = V->alloc_pd(s->ctx);
    s->ch = V->create_comp_channel(s->ctx);
    s->cq = V->create_cq(s->ctx, 64, s, s->ch, 0);
    cr_assert(s->pd && s->ch && s->cq);
    struct ibv_qp_init_attr ia = {.send_cq = s->cq, .recv_cq = s->cq,
                                  .cap = {.max_send_wr = sq, .max_recv_wr = 4,
                                          .max_send_sge = 4, .max_recv_sge = 1},
                                  .qp_type = IBV_QPT_RC};
    s->qp = V->create_qp(s->pd, &ia);
    cr_assert(s->qp);
    s->buf = calloc(1, BUF);
    s->mr = V->reg_mr(s->pd, s->buf, BUF, access);
    cr_assert(s->mr);
    struct ibv_gid_entry e;
    cr_assert_eq(V->query_gid_ex(s->ctx, 1, 1, &e), 0);
    s->gid = e.gid;
}

static void side_close(side_t *s)
{
    cr_assert_eq(V->destroy_qp(s->qp), 0);
    cr_assert_eq(V->dereg_mr(s->mr), 0);
    cr_assert_eq(V->destroy_cq(s->cq), 0);
    cr_assert_eq(V->destroy_comp_channel(s->ch), 0);
    cr_assert_eq(V->dealloc_pd(s->pd), 0);
    cr_assert_eq(V->close_device(s->ctx), 0);
    free(s->buf);
}

static int to_init(side_t *s)
{
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT, .port_num = 1,
                            .qp_access_flags = IBV_ACCESS_REMOTE_READ |
                                               IBV_ACCESS_REMOTE_WRITE};
    return V->modify_qp(s->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                                       IBV_QP_ACCESS_FLAGS);
}

static const int RTR_MASK = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                            IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
                            IBV_QP_MIN_RNR_TIMER;
static const int RTS_MASK = IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT |
                            IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;

static int to_rtr(side_t *s, const side_t *peer, enum ibv_mtu mtu, uint32_t psn)
{
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_RTR, .path_mtu = mtu,
                            .dest_qp_num = peer->qp->qp_num, .rq_psn = psn,
                            .max_dest_rd_atomic = 4, .min_rnr_timer = 12,
                            .ah_attr = {.is_global = 1, .port_num = 1,
                                        .grh = {.dgid = peer->gid, .sgid_index = 1,
                                                .hop_limit = 64}}};
    return V->modify_qp(s->qp, &a, RTR_MASK);
}

static int to_rts(side_t *s, uint32_t psn)
{
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_RTS, .sq_psn = psn, .timeout = 14,
                            .retry_cnt = 7, .rnr_retry = 7, .max_rd_atomic = 4};
    return V->modify_qp(s->qp, &a, RTS_MASK);
}

/* Connects a <-> b with PSNs 100 (a's sends) and 200 (b's sends). */
static void connect_pair(side_t *a, side_t *b)
{
    cr_assert_eq(to_init(a), 0);
    cr_assert_eq(to_init(b), 0);
    cr_assert_eq(to_rtr(a, b, IBV_MTU_1024, 200), 0);
    cr_assert_eq(to_rtr(b, a, IBV_MTU_1024, 100), 0);
    cr_assert_eq(to_rts(a, 100), 0);
    cr_assert_eq(to_rts(b, 200), 0);
}

/* Polls until n completions arrived or 2 s passed; returns the count. */
static int poll_n(struct ibv_cq *cq, struct ibv_wc *wc, int n)
{
    int got = 0;
    for (int spin = 0; spin < 2000 && got < n; spin++) {
        got += V->poll_cq(cq, n - got, wc + got);
        if (got < n)
            nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    return got;
}

static struct ibv_device **devs;

static void setup(void)
{
    soft_verbs_config_t c = {.devices = 2, .active_mtu = {IBV_MTU_4096, IBV_MTU_1024}};
    cr_assert_eq(soft_verbs_start(&c), 0);
    V = soft_verbs_ops();
    int n = 0;
    devs = V->get_device_list(&n);
    cr_assert_eq(n, 2);
}

static void teardown(void)
{
    V->free_device_list(devs);
    soft_verbs_stats_t st;
    soft_verbs_get_stats(&st);
    soft_verbs_stop();
    /* every test releases everything it made */
    cr_assert_eq(st.live_qps + st.live_cqs + st.live_mrs + st.live_pds +
                     st.live_channels + st.live_contexts, 0,
                 "leaked: qps %u cqs %u mrs %u pds %u channels %u contexts %u",
                 st.live_qps, st.live_cqs, st.live_mrs, st.live_pds, st.live_channels,
                 st.live_contexts);
}

TestSuite(soft_verbs, .init = setup, .fini = teardown);

static const int RW = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;

Test(soft_verbs, qp_state_machine_refuses_illegal_transitions)
{
    side_t a, b;
    side_open(&a, devs[0], 8, RW);
    side_open(&b, devs[1], 8, RW);
    struct ibv_send_wr *bad;
    struct ibv_sge sge = {(uintptr_t)a.buf, 8, a.mr->lkey};
    struct ibv_send_wr wr = {.sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
                             .wr.rdma = {(uintptr_t)b.buf, b.mr->rkey}};

    cr_assert_eq(to_rtr(&a, &b, IBV_MTU_1024, 1), EINVAL, "RESET -> RTR skips INIT");
    struct ibv_qp_attr init = {.qp_state = IBV_QPS_INIT, .port_num = 1};
    cr_assert_eq(V->modify_qp(a.qp, &init, IBV_QP_STATE | IBV_QP_PORT), EINVAL,
                 "INIT needs pkey index and access flags");
    cr_assert_eq(V->post_send(a.qp, &wr, &bad), EINVAL, "post_send in RESET");
    cr_assert_eq(to_init(&a), 0);
    cr_assert_eq(to_rts(&a, 1), EINVAL, "INIT -> RTS skips RTR");
    cr_assert_eq(to_init(&b), 0);
    /* b's port runs at 1024: a 4096 path MTU cannot be set there */
    cr_assert_eq(to_rtr(&b, &a, IBV_MTU_4096, 1), EINVAL);
    struct ibv_qp_attr rtr = {.qp_state = IBV_QPS_RTR, .path_mtu = IBV_MTU_1024,
                              .dest_qp_num = b.qp->qp_num, .max_dest_rd_atomic = 4,
                              .ah_attr = {.is_global = 1, .port_num = 1,
                                          .grh = {.dgid = b.gid, .sgid_index = 1}}};
    cr_assert_eq(V->modify_qp(a.qp, &rtr, RTR_MASK | IBV_QP_SQ_PSN), EINVAL,
                 "an RTS attribute on the way to RTR");
    union ibv_gid nowhere = {.raw = {0xfe, 0x80, [15] = 0x77}};
    rtr.ah_attr.grh.dgid = nowhere;
    cr_assert_eq(V->modify_qp(a.qp, &rtr, RTR_MASK), EINVAL, "a GID of no device");
    cr_assert_eq(to_rtr(&a, &b, IBV_MTU_1024, 7), 0);
    cr_assert_eq(V->post_send(a.qp, &wr, &bad), EINVAL, "post_send in RTR");
    cr_assert_eq(bad, &wr);
    cr_assert_eq(to_rts(&a, 9), 0);
    cr_assert_eq(a.qp->state, IBV_QPS_RTS);
    cr_assert_eq(soft_verbs_qp_path_mtu(a.qp->qp_num), IBV_MTU_1024);
    cr_assert_eq(to_init(&a), EINVAL, "RTS -> INIT goes backwards");
    struct ibv_qp_attr err = {.qp_state = IBV_QPS_ERR};
    cr_assert_eq(V->modify_qp(a.qp, &err, IBV_QP_STATE), 0);
    cr_assert_eq(to_rts(&a, 9), EINVAL, "ERR -> RTS");
    struct ibv_qp_attr reset = {.qp_state = IBV_QPS_RESET};
    cr_assert_eq(V->modify_qp(a.qp, &reset, IBV_QP_STATE), 0);
    cr_assert_eq(to_init(&a), 0, "RESET -> INIT again after a reset");
    side_close(&a);
    side_close(&b);
}

Test(soft_verbs, chain_is_one_doorbell_and_only_signaled_wrs_complete)
{
    side_t a, b;
    side_open(&a, devs[0], 16, RW);
    side_open(&b, devs[1], 16, RW);
    connect_pair(&a, &b);
    for (int i = 0; i < BUF; i++)
        a.buf[i] = (uint8_t)(i * 7 + 1);
    enum { N = 8 };
    struct ibv_sge sge[N][2];
    struct ibv_send_wr wr[N];
    for (int i = 0; i < N; i++) {
        /* two-entry gather lists: the first half, then the second half */
        sge[i][0] = (struct ibv_sge){(uintptr_t)a.buf + i * 1024, 512, a.mr->lkey};
        sge[i][1] = (struct ibv_sge){(uintptr_t)a.buf + i * 1024 + 512, 512, a.mr->lkey};
        wr[i] = (struct ibv_send_wr){.wr_id = (uint64_t)i, .next = i + 1 < N ? &wr[i + 1] : NULL,
                                     .sg_list = sge[i], .num_sge = 2,
                                     .opcode = IBV_WR_RDMA_WRITE,
                                     .send_flags = i == N - 1 ? IBV_SEND_SIGNALED : 0,
                                     .wr.rdma = {(uintptr_t)b.buf + i * 1024, b.mr->rkey}};
    }
    soft_verbs_stats_t before, after;
    soft_verbs_get_stats(&before);
    struct ibv_send_wr *bad = NULL;
    cr_assert_eq(V->post_send(a.qp, wr, &bad), 0);
    struct ibv_wc wc[N];
    cr_assert_eq(poll_n(a.cq, wc, 1), 1);
    cr_assert_eq(wc[0].status, IBV_WC_SUCCESS);
    cr_assert_eq(wc[0].wr_id, N - 1);
    /* a signaled completion implies all earlier WRs completed */
    cr_assert(memcmp(a.buf, b.buf, N * 1024) == 0);
    nanosleep(&(struct timespec){0, 20000000}, NULL);
    cr_assert_eq(V->poll_cq(a.cq, N, wc), 0, "unsignaled WRs produced completions");
    soft_verbs_get_stats(&after);
    cr_assert_eq(after.doorbells - before.doorbells, 1);
    cr_assert_eq(after.send_wrs - before.send_wrs, N);

    /* READ back into a fresh local range */
    struct ibv_sge rs = {(uintptr_t)a.buf + 32768, 4096, a.mr->lkey};
    struct ibv_send_wr rd = {.wr_id = 99, .sg_list = &rs, .num_sge = 1,
                             .opcode = IBV_WR_RDMA_READ, .send_flags = IBV_SEND_SIGNALED,
                             .wr.rdma = {(uintptr_t)b.buf, b.mr->rkey}};
    cr_assert_eq(V->post_send(a.qp, &rd, &bad), 0);
    cr_assert_eq(poll_n(a.cq, wc, 1), 1);
    cr_assert_eq(wc[0].status, IBV_WC_SUCCESS);
    cr_assert_eq(wc[0].opcode, IBV_WC_RDMA_READ);
    cr_assert(memcmp(a.buf + 32768, b.buf, 4096) == 0);
    side_close(&a);
    side_close(&b);
}

Test(soft_verbs, unsignaled_wrs_fill_the_send_queue)
{
    side_t a, b;
    side_open(&a, devs[0], 4, RW);
    side_open(&b, devs[1], 4, RW);
    connect_pair(&a, &b);
    struct ibv_sge sge = {(uintptr_t)a.buf, 64, a.mr->lkey};
    struct ibv_send_wr wr = {.sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
                             .wr.rdma = {(uintptr_t)b.buf, b.mr->rkey}};
    struct ibv_send_wr *bad;
    for (int i = 0; i < 4; i++)
        cr_assert_eq(V->post_send(a.qp, &wr, &bad), 0);
    nanosleep(&(struct timespec){0, 20000000}, NULL);
    /* executed, but nothing signaled: no slot comes back */
    cr_assert_eq(V->post_send(a.qp, &wr, &bad), ENOMEM);
    struct ibv_wc wc[8];
    cr_assert_eq(V->poll_cq(a.cq, 8, wc), 0);
    /* the error state flushes nothing (all ran); a reset frees the queue */
    struct ibv_qp_attr reset = {.qp_state = IBV_QPS_RESET};
    cr_assert_eq(V->modify_qp(a.qp, &reset, IBV_QP_STATE), 0);
    side_close(&a);
    side_close(&b);
}

/* Posts one unsignaled WRITE from a to b described by (addr, rkey, len) and
 * expects `status` on a, with both QPs in the error state afterwards and a
 * following WR flushed. */
static void expect_refused(side_t *a, side_t *b, uint64_t addr, uint32_t rkey, uint32_t len,
                           enum ibv_wr_opcode op, enum ibv_wc_status status)
{
    struct ibv_sge sge = {(uintptr_t)a->buf, len, a->mr->lkey};
    struct ibv_send_wr next = {.wr_id = 2, .sg_list = &sge, .num_sge = 1,
                               .opcode = IBV_WR_RDMA_WRITE,
                               .wr.rdma = {(uintptr_t)b->buf, b->mr->rkey}};
    struct ibv_send_wr wr = {.wr_id = 1, .next = &next, .sg_list = &sge, .num_sge = 1,
                             .opcode = op, .wr.rdma = {addr, rkey}};
    struct ibv_send_wr *bad;
    cr_assert_eq(V->post_send(a->qp, &wr, &bad), 0);
    struct ibv_wc wc[2];
    cr_assert_eq(poll_n(a->cq, wc, 2), 2, "error completions are generated even unsignaled");
    cr_assert_eq(wc[0].wr_id, 1);
    cr_assert_eq(wc[0].status, status, "got %s", ibv_wc_status_str(wc[0].status));
    cr_assert_eq(wc[1].status, IBV_WC_WR_FLUSH_ERR);
    cr_assert_eq(a->qp->state, IBV_QPS_ERR);
}

Test(soft_verbs, remote_key_range_and_access_are_checked)
{
    side_t a, b;
    soft_verbs_stats_t st;
    /* wrong rkey: both ends of the connection go down */
    side_open(&a, devs[0], 8, RW);
    side_open(&b, devs[1], 8, RW);
    connect_pair(&a, &b);
    uint8_t before[64];
    memcpy(before, b.buf, sizeof(before));
    expect_refused(&a, &b, (uintptr_t)b.buf, b.mr->rkey + 1, 64, IBV_WR_RDMA_WRITE,
                   IBV_WC_REM_ACCESS_ERR);
    cr_assert_eq(b.qp->state, IBV_QPS_ERR);
    cr_assert(memcmp(before, b.buf, sizeof(before)) == 0, "refused write landed");
    side_close(&a);
    side_close(&b);

    /* out of bounds by one byte */
    side_open(&a, devs[0], 8, RW);
    side_open(&b, devs[1], 8, RW);
    connect_pair(&a, &b);
    expect_refused(&a, &b, (uintptr_t)b.buf + BUF - 63, b.mr->rkey, 64, IBV_WR_RDMA_WRITE,
                   IBV_WC_REM_ACCESS_ERR);
    side_close(&a);
    side_close(&b);

    /* an MR registered without remote write: reads pass, writes fail */
    side_open(&a, devs[0], 8, RW);
    side_open(&b, devs[1], 8, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
    connect_pair(&a, &b);
    expect_refused(&a, &b, (uintptr_t)b.buf, b.mr->rkey, 64, IBV_WR_RDMA_WRITE,
                   IBV_WC_REM_ACCESS_ERR);
    side_close(&a);
    side_close(&b);

    /* a local key that is not ours */
    side_open(&a, devs[0], 8, RW);
    side_open(&b, devs[1], 8, RW);
    connect_pair(&a, &b);
    struct ibv_sge sge = {(uintptr_t)a.buf, 64, b.mr->lkey};
    struct ibv_send_wr wr = {.sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_RDMA_WRITE,
                             .wr.rdma = {(uintptr_t)b.buf, b.mr->rkey}};
    struct ibv_send_wr *bad;
    cr_assert_eq(V->post_send(a.qp, &wr, &bad), 0);
    struct ibv_wc wc;
    cr_assert_eq(poll_n(a.cq, &wc, 1), 1);
    cr_assert_eq(wc.status, IBV_WC_LOC_PROT_ERR);
    side_close(&a);
    side_close(&b);
    soft_verbs_get_stats(&st);
    cr_assert_eq(st.rem_access_errors, 3);
}

Test(soft_verbs, psn_mismatch_and_dead_peer_look_like_a_lost_connection)
{
    side_t a, b;
    side_open(&a, devs[0], 8, RW);
    side_open(&b, devs[1], 8, RW);
    cr_assert_eq(to_init(&a), 0);
    cr_assert_eq(to_init(&b), 0);
    cr_assert_eq(to_rtr(&a, &b, IBV_MTU_1024, 200), 0);
    cr_assert_eq(to_rtr(&b, &a, IBV_MTU_1024, 555), 0); /* expects 555, a sends 100 */
    cr_assert_eq(to_rts(&a, 100), 0);
    cr_assert_eq(to_rts(&b, 200), 0);
    expect_refused(&a, &b, (uintptr_t)b.buf, b.mr->rkey, 64, IBV_WR_RDMA_WRITE,
                   IBV_WC_RETRY_EXC_ERR);
    side_close(&a);
    side_close(&b);

    side_open(&a, devs[0], 8, RW);
    side_open(&b, devs[1], 8, RW);
    connect_pair(&a, &b);
    cr_assert_eq(soft_verbs_kill_qp(b.qp->qp_num), 0);
    expect_refused(&a, &b, (uintptr_t)b.buf, b.mr->rkey, 64, IBV_WR_RDMA_WRITE,
                   IBV_WC_RETRY_EXC_ERR);
    side_close(&a);
    side_close(&b);
}

Test(soft_verbs, completion_channel_wakes_poll)
{
    side_t a, b;
    side_open(&a, devs[0], 8, RW);
    side_open(&b, devs[1], 8, RW);
    connect_pair(&a, &b);
    cr_assert_eq(V->req_notify_cq(a.cq, 0), 0);
    struct pollfd pfd = {.fd = a.ch->fd, .events = POLLIN};
    cr_assert_eq(poll(&pfd, 1, 0), 0, "no event before any completion");
    struct ibv_sge sge = {(uintptr_t)a.buf, 64, a.mr->lkey};
    struct ibv_send_wr wr = {.wr_id = 5, .sg_list = &sge, .num_sge = 1,
                             .opcode = IBV_WR_RDMA_WRITE, .send_flags = IBV_SEND_SIGNALED,
                             .wr.rdma = {(uintptr_t)b.buf, b.mr->rkey}};
    struct ibv_send_wr *bad;
    cr_assert_eq(V->post_send(a.qp, &wr, &bad), 0);
    cr_assert_eq(poll(&pfd, 1, 2000), 1);
    struct ibv_cq *cq = NULL;
    void *cq_ctx = NULL;
    cr_assert_eq(V->get_cq_event(a.ch, &cq, &cq_ctx), 0);
    cr_assert_eq(cq, a.cq);
    cr_assert_eq(cq_ctx, &a);
    V->ack_cq_events(cq, 1);
    cr_assert_eq(V->get_cq_event(a.ch, &cq, &cq_ctx), -1, "one event per arming");
    struct ibv_wc wc;
    cr_assert_eq(poll_n(a.cq, &wc, 1), 1);
    cr_assert_eq(wc.wr_id, 5);
    side_close(&a);
    side_close(&b);
}

Test(soft_verbs, busy_objects_cannot_be_destroyed)
{
    side_t a;
    side_open(&a, devs[0], 8, RW);
    cr_assert_eq(V->dealloc_pd(a.pd), EBUSY);
    cr_assert_eq(V->destroy_cq(a.cq), EBUSY);
    cr_assert_eq(V->destroy_comp_channel(a.ch), EBUSY);
    side_close(&a);
}
