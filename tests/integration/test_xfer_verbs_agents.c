/*
 * test_xfer_verbs_agents.c - two transfer agents in one process on the
 * verbs backend. The "soft" suite runs the real backend over the software
 * RDMA device (soft_verbs.h); the "hw" suite runs the same transfers over
 * libibverbs when ibv_get_device_list lists a device, and skips otherwise.
 *
 * What a user would notice: random block lists land byte for byte both
 * ways; KV blocks move between pools whose registration was split below
 * the device's max MR size; the path MTU is the smaller of the two ports';
 * an error completion (access to a deregistered region) fails the request
 * and the connection comes back; a peer that dies or a device that stalls
 * fails every outstanding request within its timeout; notifications
 * arrive in order. At the end nothing is outstanding and the device holds
 * no QP, CQ, MR or PD.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "test_xfer_util.h"
#include "support/soft_verbs.h"
#include "xfer/verbs/verbs_ops.h"

typedef struct env {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *a, *b; /* a dials b */
    kvrt_xfer_peer_t *peer;
    bool soft;
} env_t;

static kvrt_xfer_agent_t *verbs_agent(kvrt_ctx_t *ctx, uint32_t timeout_ms,
                                      uint32_t device_mask)
{
    /* small queues and WRs so that chains, striping and send-queue
     * back-pressure all happen with a few MiB */
    kvrt_verbs_tuning_t t = {.sq_depth = 32, .wr_max_bytes = 128u << 10,
                             .qps_per_peer = 4, .signal_every = 4,
                             .device_mask = device_mask};
    kvrt_verbs_use(kvrt_verbs_current_ops(), &t);
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_TIMEOUT |
                      KVRT_XFER_AGENT_PARAM_RECONNECT,
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_VERBS, .default_timeout_ms = timeout_ms,
        .reconnect_initial_ms = 20, .reconnect_max_ms = 200, .reconnect_attempts = 50};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    kvrt_xfer_backend_kind_t kind;
    ASSERT_OK(ctx, kvrt_xfer_agent_backend(a, &kind));
    cr_assert_eq(kind, KVRT_XFER_BACKEND_VERBS);
    return a;
}

static bool real_device(void)
{
    int n = 0;
    struct ibv_device **list = kvrt_verbs_libibverbs_ops.get_device_list(&n);
    if (list)
        kvrt_verbs_libibverbs_ops.free_device_list(list);
    return list && n > 0;
}

/* soft: a fabric per test; hw: libibverbs, skipping without a device. */
static env_t env_up(bool soft, const soft_verbs_config_t *cfg, uint32_t mask_a,
                    uint32_t mask_b, uint32_t timeout_ms)
{
    env_t e = {.soft = soft};
    if (soft) {
        cr_assert_eq(soft_verbs_start(cfg), 0);
        kvrt_verbs_use(soft_verbs_ops(), NULL);
    } else {
        if (!real_device())
            cr_skip_test("no RDMA device: ibv_get_device_list found none");
        kvrt_verbs_use(NULL, NULL);
    }
    e.ctx = txu_ctx();
    e.a = verbs_agent(e.ctx, timeout_ms, mask_a);
    e.b = verbs_agent(e.ctx, timeout_ms, mask_b);
    e.peer = txu_connect(e.ctx, e.a, e.b);
    return e;
}

static void env_down(env_t *e)
{
    cr_assert_eq(txu_stat_drained(e->ctx, "xfer.0.outstanding", 5000), 0);
    cr_assert_eq(txu_stat(e->ctx, "xfer.0.regions"), 0);
    if (e->b) {
        cr_assert_eq(txu_stat_drained(e->ctx, "xfer.1.outstanding", 5000), 0);
        cr_assert_eq(txu_stat(e->ctx, "xfer.1.regions"), 0);
    }
    ASSERT_OK(e->ctx, kvrt_xfer_disconnect(e->peer));
    ASSERT_OK(e->ctx, kvrt_xfer_agent_destroy(e->a));
    ASSERT_OK(e->ctx, kvrt_xfer_agent_destroy(e->b));
    kvrt_ctx_destroy(e->ctx);
    kvrt_verbs_use(NULL, NULL);
    if (e->soft) {
        soft_verbs_stats_t st;
        soft_verbs_get_stats(&st);
        soft_verbs_stop();
        cr_assert_eq(st.live_qps + st.live_cqs + st.live_mrs + st.live_pds +
                         st.live_channels + st.live_contexts, 0,
                     "leaked: qps %u cqs %u mrs %u pds %u channels %u contexts %u",
                     st.live_qps, st.live_cqs, st.live_mrs, st.live_pds, st.live_channels,
                     st.live_contexts);
        cr_assert_eq(st.cq_overflows, 0);
    }
}

static kvrt_status_t run(kvrt_xfer_peer_t *peer, const kvrt_xfer_op_t *ops, uint32_t n)
{
    kvrt_xfer_request_t *req = NULL;
    kvrt_status_t st = kvrt_xfer_post(peer, ops, n, NULL, &req);
    if (st != KVRT_OK)
        return st;
    st = kvrt_xfer_request_wait(req, 10000);
    cr_assert_eq(kvrt_xfer_request_release(req), KVRT_OK);
    return st;
}

/* ---- random block lists ------------------------------------------------------ */

enum { BLOCK = 16u << 10, NBLOCKS = 512 };

/* `count` (local, remote) block pairs: runs of 1..8 blocks contiguous on
 * both sides, at random places, no remote block twice. */
static uint32_t block_pairs(uint64_t seed, uint32_t *from, uint32_t *to, uint32_t count)
{
    uint8_t used[NBLOCKS] = {0};
    uint64_t rng = seed;
    uint32_t n = 0;
    for (int tries = 0; tries < 10000 && n < count; tries++) {
        uint32_t run = 1 + test_rand_below(&rng, 8);
        uint32_t f = test_rand_below(&rng, NBLOCKS - run), t = test_rand_below(&rng, NBLOCKS - run);
        bool free_run = true;
        for (uint32_t i = 0; i < run; i++)
            free_run = free_run && !used[t + i];
        for (uint32_t i = 0; free_run && i < run && n < count; i++) {
            used[t + i] = 1;
            from[n] = f + i;
            to[n++] = t + i;
        }
    }
    return n;
}

static void random_blocks(bool soft)
{
    soft_verbs_config_t cfg = {.devices = 2, .max_sge = 4};
    env_t e = env_up(soft, &cfg, 0, 0, 10000);
    const uint64_t bytes = (uint64_t)NBLOCKS * BLOCK;
    uint8_t *src = aligned_alloc(4096, bytes), *dst = aligned_alloc(4096, bytes);
    uint8_t *back = aligned_alloc(4096, bytes);
    txu_fill(src, bytes, 3);
    memset(dst, 0, bytes);
    memset(back, 0, bytes);
    kvrt_xfer_region_t *ls = txu_register(e.ctx, e.a, src, bytes, 0);
    kvrt_xfer_region_t *lb = txu_register(e.ctx, e.a, back, bytes, 0);
    kvrt_xfer_region_t *rd = txu_register(e.ctx, e.b, dst, bytes,
                                          KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE);
    kvrt_xfer_remote_t *rem = txu_import(e.ctx, e.peer, rd);

    enum { N = 300 };
    uint32_t from[N], to[N];
    uint32_t n = block_pairs(17, from, to, N);
    cr_assert_gt(n, 200);
    kvrt_xfer_op_t ops[N];
    for (uint32_t i = 0; i < n; i++)
        ops[i] = (kvrt_xfer_op_t){.opcode = KVRT_XFER_WRITE, .local = ls,
                                  .local_offset = (uint64_t)from[i] * BLOCK, .remote = rem,
                                  .remote_offset = (uint64_t)to[i] * BLOCK, .length = BLOCK};
    soft_verbs_stats_t s0 = {0}, s1 = {0};
    if (soft)
        soft_verbs_get_stats(&s0);
    ASSERT_STATUS(KVRT_OK, run(e.peer, ops, n));
    for (uint32_t i = 0; i < n; i++)
        cr_assert(memcmp(dst + (uint64_t)to[i] * BLOCK, src + (uint64_t)from[i] * BLOCK,
                         BLOCK) == 0, "block pair %u landed wrong", i);
    /* untouched remote blocks stay zero */
    uint8_t written[NBLOCKS] = {0};
    for (uint32_t i = 0; i < n; i++)
        written[to[i]] = 1;
    static const uint8_t zero[BLOCK];
    for (uint32_t b = 0; b < NBLOCKS; b++)
        if (!written[b])
            cr_assert(memcmp(dst + (uint64_t)b * BLOCK, zero, BLOCK) == 0, "block %u hit", b);

    /* READ the same blocks back into `back` at the source positions */
    for (uint32_t i = 0; i < n; i++) {
        ops[i].opcode = KVRT_XFER_READ;
        ops[i].local = lb;
    }
    ASSERT_STATUS(KVRT_OK, run(e.peer, ops, n));
    for (uint32_t i = 0; i < n; i++)
        cr_assert(memcmp(back + (uint64_t)from[i] * BLOCK, src + (uint64_t)from[i] * BLOCK,
                         BLOCK) == 0, "block pair %u read back wrong", i);
    if (soft) {
        soft_verbs_get_stats(&s1);
        uint64_t wrs = s1.send_wrs - s0.send_wrs, bells = s1.doorbells - s0.doorbells;
        /* runs were coalesced into multi-SGE WRs, WRs chained per doorbell,
         * and spread over every QP of both devices */
        cr_assert_lt(wrs, 2 * n, "%llu WRs for %u blocks each way", (unsigned long long)wrs, n);
        cr_assert_lt(bells, wrs / 2, "%llu doorbells for %llu WRs",
                     (unsigned long long)bells, (unsigned long long)wrs);
        cr_assert_gt(s1.max_chain, 4);
        cr_assert_geq(s1.qps_with_data, 4);
        cr_assert_gt(s1.device_bytes[0], 0);
        cr_assert_gt(s1.device_bytes[1], 0);
        cr_assert_eq(s1.rem_access_errors, 0);
    }
    ASSERT_OK(e.ctx, kvrt_xfer_remote_release(rem));
    ASSERT_OK(e.ctx, kvrt_xfer_deregister(ls));
    ASSERT_OK(e.ctx, kvrt_xfer_deregister(lb));
    ASSERT_OK(e.ctx, kvrt_xfer_deregister(rd));
    env_down(&e);
    free(src);
    free(dst);
    free(back);
}

Test(verbs_soft, random_block_lists_write_and_read_byte_for_byte) { random_blocks(true); }
Test(verbs_hw, random_block_lists_write_and_read_byte_for_byte) { random_blocks(false); }

/* ---- KV blocks over split registrations ------------------------------------------- */

static void kv_split(bool soft)
{
    /* 300 KiB max MR: a 32 KiB-block pool registers in 288 KiB pieces */
    soft_verbs_config_t cfg = {.devices = 1, .max_mr_size = 300u << 10};
    env_t e = env_up(soft, &cfg, 0, 0, 10000);
    kvrt_pool_t *sp = txu_pool(e.ctx, 64, KVRT_ORDER_BLOCK_MAJOR, KVRT_KV_FUSED);
    kvrt_pool_t *dp = txu_pool(e.ctx, 80, KVRT_ORDER_BLOCK_MAJOR, KVRT_KV_FUSED);
    kvrt_pool_info_t si, di;
    kvrt_pool_info(sp, &si);
    kvrt_pool_info(dp, &di);
    txu_fill(si.base, (uint64_t)si.num_blocks * si.block_bytes, 5);
    memset(di.base, 0, (uint64_t)di.num_blocks * di.block_bytes);
    kvrt_xfer_region_t *sr = txu_register_pool(e.ctx, e.a, sp);
    kvrt_xfer_region_t *dr = txu_register_pool(e.ctx, e.b, dp);
    if (soft) {
        soft_verbs_mr_info_t mrs[64];
        uint32_t n = soft_verbs_mrs(mrs, 64);
        cr_assert_leq(n, 64);
        uint32_t pieces = 0;
        for (uint32_t i = 0; i < n; i++) {
            const kvrt_pool_info_t *pi = NULL;
            if (mrs[i].addr >= (uintptr_t)si.base &&
                mrs[i].addr < (uintptr_t)si.base + si.num_blocks * si.block_bytes)
                pi = &si;
            if (mrs[i].addr >= (uintptr_t)di.base &&
                mrs[i].addr < (uintptr_t)di.base + di.num_blocks * di.block_bytes)
                pi = &di;
            if (!pi)
                continue; /* message buffers */
            pieces++;
            cr_assert_leq(mrs[i].length, 300u << 10);
            cr_assert_eq((mrs[i].addr - (uintptr_t)pi->base) % pi->block_bytes, 0,
                         "an MR starts inside a block");
            uint64_t end = mrs[i].addr + mrs[i].length - (uintptr_t)pi->base;
            cr_assert_eq(end % pi->block_bytes, 0, "an MR ends inside a block");
        }
        cr_assert_geq(pieces, 8 + 9, "pools were not split (%u MRs)", pieces);
    }
    kvrt_xfer_remote_t *rem = txu_import(e.ctx, e.peer, dr);
    enum { N = 60 };
    int32_t from[N], to[N];
    for (int i = 0; i < N; i++) {
        from[i] = 1 + i;        /* one long run across several MR pieces */
        to[i] = 79 - i;         /* reversed: no remote run at all */
    }
    const char note[] = "kv-landed";
    kvrt_xfer_kv_params_t kp = {
        .field_mask = KVRT_XFER_KV_PARAM_NOTIFY | KVRT_XFER_KV_PARAM_INTEGRITY,
        .opcode = KVRT_XFER_WRITE, .local = sr, .remote = rem, .local_blocks = from,
        .remote_blocks = to, .count = N, .integrity = 1, .notify = note,
        .notify_bytes = sizeof(note)};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(e.ctx, kvrt_xfer_kv_post(e.peer, &kp, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 10000));
    ASSERT_OK(e.ctx, kvrt_xfer_request_release(req));
    for (int i = 0; i < N; i++)
        cr_assert(memcmp((uint8_t *)di.base + (uint64_t)to[i] * di.block_bytes,
                         (uint8_t *)si.base + (uint64_t)from[i] * si.block_bytes,
                         si.block_bytes) == 0, "block %d landed wrong", from[i]);
    kvrt_xfer_notification_t in;
    cr_assert(txu_wait_note(e.b, &in, 5000), "no notification");
    cr_assert_eq(in.status, KVRT_OK);
    cr_assert_str_eq((const char *)in.data, note);
    ASSERT_OK(e.ctx, kvrt_xfer_remote_release(rem));
    ASSERT_OK(e.ctx, kvrt_xfer_deregister(sr));
    ASSERT_OK(e.ctx, kvrt_xfer_deregister(dr));
    kvrt_pool_destroy(sp);
    kvrt_pool_destroy(dp);
    env_down(&e);
}

Test(verbs_soft, kv_blocks_over_registrations_split_below_max_mr_size) { kv_split(true); }
Test(verbs_hw, kv_blocks_with_integrity) { kv_split(false); }

/* ---- soft-only: what needs a device we control ------------------------------------- */

/* A transfer from `a` to a fresh region of `b`; returns its status. */
static kvrt_status_t one_write(env_t *e, uint64_t bytes, uint8_t seed)
{
    uint8_t *src = aligned_alloc(4096, bytes), *dst = aligned_alloc(4096, bytes);
    memset(src, seed, bytes);
    memset(dst, 0, bytes);
    kvrt_xfer_region_t *ls = txu_register(e->ctx, e->a, src, bytes, 0);
    kvrt_xfer_region_t *rd = txu_register(e->ctx, e->b, dst, bytes, KVRT_XFER_REMOTE_WRITE);
    kvrt_xfer_remote_t *rem = txu_import(e->ctx, e->peer, rd);
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = ls, .remote = rem,
                         .length = bytes};
    kvrt_status_t st = run(e->peer, &op, 1);
    if (st == KVRT_OK)
        cr_assert(memcmp(src, dst, bytes) == 0);
    ASSERT_OK(e->ctx, kvrt_xfer_remote_release(rem));
    ASSERT_OK(e->ctx, kvrt_xfer_deregister(ls));
    ASSERT_OK(e->ctx, kvrt_xfer_deregister(rd));
    free(src);
    free(dst);
    return st;
}

Test(verbs_soft, path_mtu_is_the_smaller_of_both_ports)
{
    soft_verbs_config_t cfg = {.devices = 2, .active_mtu = {IBV_MTU_4096, IBV_MTU_1024}};
    env_t e = env_up(true, &cfg, 1u << 0, 1u << 1, 10000); /* a on 4096, b on 1024 */
    ASSERT_STATUS(KVRT_OK, one_write(&e, 1u << 20, 0x5a));
    soft_verbs_stats_t st;
    soft_verbs_get_stats(&st);
    /* had either side kept its own MTU, the 4096 side's packets would not
     * fit the 1024 side (the device refuses RTR or drops the traffic) */
    cr_assert_eq(st.path_mtu_max, IBV_MTU_1024);
    env_down(&e);
}

static kvrt_status_t wait_connected(kvrt_xfer_peer_t *peer, uint32_t ms)
{
    uint64_t end = txu_now_ms() + ms;
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    do {
        kvrt_xfer_peer_info(peer, &info);
        if (info.state == KVRT_XFER_PEER_CONNECTED)
            return KVRT_OK;
        nanosleep(&(struct timespec){0, 5000000}, NULL);
    } while (txu_now_ms() < end);
    return KVRT_ERR_TIMEOUT;
}

Test(verbs_soft, error_completion_fails_the_request_and_the_connection_comes_back)
{
    soft_verbs_config_t cfg = {.devices = 1};
    env_t e = env_up(true, &cfg, 0, 0, 5000);
    const uint64_t bytes = 256u << 10;
    uint8_t *src = aligned_alloc(4096, bytes), *dst = aligned_alloc(4096, bytes);
    memset(src, 1, bytes);
    memset(dst, 0, bytes);
    kvrt_xfer_region_t *ls = txu_register(e.ctx, e.a, src, bytes, 0);
    kvrt_xfer_region_t *rd = txu_register(e.ctx, e.b, dst, bytes, KVRT_XFER_REMOTE_WRITE);
    kvrt_xfer_remote_t *rem = txu_import(e.ctx, e.peer, rd);
    /* the holder deregisters; our descriptor still looks valid, so only
     * the device's rkey check can refuse the write */
    ASSERT_OK(e.ctx, kvrt_xfer_deregister(rd));
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = ls, .remote = rem,
                         .length = bytes};
    kvrt_status_t st = run(e.peer, &op, 1);
    cr_assert(st == KVRT_ERR_REMOTE_ACCESS || st == KVRT_ERR_PEER_FAILED, "got %s",
              kvrt_status_str(st));
    for (uint64_t i = 0; i < bytes; i++)
        cr_assert_eq(dst[i], 0, "a refused write landed");
    soft_verbs_stats_t s;
    soft_verbs_get_stats(&s);
    cr_assert_geq(s.rem_access_errors, 1);
    ASSERT_OK(e.ctx, kvrt_xfer_remote_release(rem));
    ASSERT_OK(e.ctx, kvrt_xfer_deregister(ls));
    /* the QPs went to the error state; the agent reconnects */
    ASSERT_OK(e.ctx, wait_connected(e.peer, 5000));
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    ASSERT_OK(e.ctx, kvrt_xfer_peer_info(e.peer, &info));
    cr_assert_geq(info.reconnects, 1);
    ASSERT_STATUS(KVRT_OK, one_write(&e, 1u << 20, 0x33));
    free(src);
    free(dst);
    env_down(&e);
}

/* One WRITE of `bytes` from a's memory into b's, registered and imported. */
typedef struct one_op {
    uint8_t *src, *dst;
    kvrt_xfer_region_t *ls, *rd;
    kvrt_xfer_remote_t *rem;
    kvrt_xfer_op_t op;
} one_op_t;

static one_op_t one_op_up(env_t *e, uint64_t bytes, uint8_t fill)
{
    one_op_t o;
    o.src = aligned_alloc(4096, bytes);
    o.dst = aligned_alloc(4096, bytes);
    memset(o.src, fill, bytes);
    o.ls = txu_register(e->ctx, e->a, o.src, bytes, 0);
    o.rd = txu_register(e->ctx, e->b, o.dst, bytes, KVRT_XFER_REMOTE_WRITE);
    o.rem = txu_import(e->ctx, e->peer, o.rd);
    o.op = (kvrt_xfer_op_t){.opcode = KVRT_XFER_WRITE, .local = o.ls, .remote = o.rem,
                            .length = bytes};
    return o;
}

/* Nothing holds the registrations any more: they all go. b's goes with b
 * when the test destroyed it. */
static void one_op_down(env_t *e, one_op_t *o)
{
    ASSERT_OK(e->ctx, kvrt_xfer_remote_release(o->rem));
    ASSERT_OK(e->ctx, kvrt_xfer_deregister(o->ls));
    if (e->b)
        ASSERT_OK(e->ctx, kvrt_xfer_deregister(o->rd));
    free(o->src);
    free(o->dst);
}

/* Posts `n` requests of `bytes` each while the device is paused, then
 * does `fault` and resumes; every request must end with a failure within
 * `within_ms`. */
static void outstanding_fail(env_t *e, uint32_t n, uint64_t bytes, void (*fault)(env_t *),
                             uint32_t within_ms)
{
    one_op_t o = one_op_up(e, bytes, 7);
    kvrt_xfer_request_t *req[16];
    cr_assert_leq(n, 16);
    soft_verbs_pause(true);
    uint64_t t0 = txu_now_ms();
    for (uint32_t i = 0; i < n; i++)
        ASSERT_OK(e->ctx, kvrt_xfer_post(e->peer, &o.op, 1, NULL, &req[i]));
    fault(e);
    soft_verbs_pause(false);
    for (uint32_t i = 0; i < n; i++) {
        kvrt_status_t st = kvrt_xfer_request_wait(req[i], within_ms + 2000);
        cr_assert(kvrt_failed(st), "request %u: %s", i, kvrt_status_str(st));
        ASSERT_OK(e->ctx, kvrt_xfer_request_release(req[i]));
    }
    uint64_t took = txu_now_ms() - t0;
    cr_assert_lt(took, within_ms, "failing took %llu ms", (unsigned long long)took);
    one_op_down(e, &o);
}

static void kill_peer_device(env_t *e) { cr_assert_eq(soft_verbs_kill_device(1), 0); }

Test(verbs_soft, peer_device_death_fails_every_outstanding_request)
{
    soft_verbs_config_t cfg = {.devices = 2};
    env_t e = env_up(true, &cfg, 1u << 0, 1u << 1, 5000);
    outstanding_fail(&e, 8, 1u << 20, kill_peer_device, 2000);
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    ASSERT_OK(e.ctx, kvrt_xfer_peer_info(e.peer, &info));
    cr_assert_neq(info.last_error, KVRT_OK);
    env_down(&e);
}

Test(verbs_soft, stalled_device_requests_time_out_and_the_peer_recovers)
{
    soft_verbs_config_t cfg = {.devices = 1};
    env_t e = env_up(true, &cfg, 0, 0, 300);
    /* the device executes nothing until every request timed out */
    uint8_t *src = aligned_alloc(4096, 1u << 20), *dst = aligned_alloc(4096, 1u << 20);
    memset(src, 9, 1u << 20);
    kvrt_xfer_region_t *ls = txu_register(e.ctx, e.a, src, 1u << 20, 0);
    kvrt_xfer_region_t *rd = txu_register(e.ctx, e.b, dst, 1u << 20, KVRT_XFER_REMOTE_WRITE);
    kvrt_xfer_remote_t *rem = txu_import(e.ctx, e.peer, rd);
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = ls, .remote = rem,
                         .length = 1u << 20};
    soft_verbs_pause(true);
    uint64_t t0 = txu_now_ms();
    kvrt_xfer_request_t *req[4];
    for (int i = 0; i < 4; i++)
        ASSERT_OK(e.ctx, kvrt_xfer_post(e.peer, &op, 1, NULL, &req[i]));
    /* the first to expire resets the connection (its WRs cannot be
     * recalled from the device), which fails the others with it */
    ASSERT_STATUS(KVRT_ERR_TIMEOUT, kvrt_xfer_request_wait(req[0], 2000));
    for (int i = 0; i < 4; i++) {
        kvrt_status_t st = kvrt_xfer_request_wait(req[i], 2000);
        cr_assert(st == KVRT_ERR_TIMEOUT || st == KVRT_ERR_PEER_FAILED, "request %d: %s", i,
                  kvrt_status_str(st));
        ASSERT_OK(e.ctx, kvrt_xfer_request_release(req[i]));
    }
    uint64_t took = txu_now_ms() - t0;
    cr_assert_lt(took, 300 + 250, "timeouts took %llu ms", (unsigned long long)took);
    soft_verbs_pause(false);
    ASSERT_OK(e.ctx, kvrt_xfer_remote_release(rem));
    ASSERT_OK(e.ctx, kvrt_xfer_deregister(ls));
    ASSERT_OK(e.ctx, kvrt_xfer_deregister(rd));
    ASSERT_OK(e.ctx, wait_connected(e.peer, 5000));
    ASSERT_STATUS(KVRT_OK, one_write(&e, 256u << 10, 0x44));
    free(src);
    free(dst);
    env_down(&e);
}

static void destroy_peer_agent(env_t *e)
{
    ASSERT_OK(e->ctx, kvrt_xfer_agent_destroy(e->b));
    e->b = NULL;
}

Test(verbs_soft, killed_peer_fails_every_outstanding_request)
{
    soft_verbs_config_t cfg = {.devices = 1};
    env_t e = env_up(true, &cfg, 0, 0, 5000);
    outstanding_fail(&e, 8, 1u << 20, destroy_peer_agent, 2000);
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    ASSERT_OK(e.ctx, kvrt_xfer_peer_info(e.peer, &info));
    cr_assert_neq(info.state, KVRT_XFER_PEER_CONNECTED);
    env_down(&e);
}

Test(verbs_soft, notifications_arrive_in_order_beyond_the_message_window)
{
    soft_verbs_config_t cfg = {.devices = 1};
    env_t e = env_up(true, &cfg, 0, 0, 5000);
    enum { N = 24 };
    for (uint32_t i = 0; i < N; i++) {
        char msg[32];
        int len = snprintf(msg, sizeof(msg), "note-%02u", i);
        ASSERT_OK(e.ctx, kvrt_xfer_notify(e.peer, msg, (uint32_t)len + 1));
    }
    for (uint32_t i = 0; i < N; i++) {
        kvrt_xfer_notification_t in;
        cr_assert(txu_wait_note(e.b, &in, 5000), "notification %u missing", i);
        char want[32];
        snprintf(want, sizeof(want), "note-%02u", i);
        cr_assert_str_eq((const char *)in.data, want);
    }
    env_down(&e);
}

Test(verbs_soft, a_request_held_by_the_device_is_tested_waited_on_and_canceled)
{
    soft_verbs_config_t cfg = {.devices = 1};
    env_t e = env_up(true, &cfg, 0, 0, 5000);
    one_op_t o = one_op_up(&e, 1u << 20, 5);
    kvrt_xfer_post_params_t pp = {.field_mask = KVRT_XFER_POST_PARAM_USER_DATA, .user_data = 77};
    kvrt_xfer_request_t *req = NULL;
    soft_verbs_pause(true); /* the device executes nothing: the request stays in flight */
    ASSERT_OK(e.ctx, kvrt_xfer_post(e.peer, &o.op, 1, &pp, &req));
    ASSERT_STATUS(KVRT_INPROGRESS, kvrt_xfer_request_test(req));
    ASSERT_STATUS(KVRT_INPROGRESS, kvrt_xfer_request_wait(req, 50));
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_xfer_request_release(req));
    uint32_t n = 0;
    kvrt_xfer_completion_t c[2];
    ASSERT_OK(e.ctx, kvrt_xfer_poll(e.a, c, 2, &n));
    cr_assert_eq(n, 0, "no completion while in flight");
    /* Cancel resets the connection, whose WRs the device cannot recall;
     * the request completes once the backend let go of them all. */
    ASSERT_OK(e.ctx, kvrt_xfer_request_cancel(req));
    ASSERT_STATUS(KVRT_ERR_CANCELED, kvrt_xfer_request_wait(req, 5000));
    ASSERT_STATUS(KVRT_ERR_CANCELED, kvrt_xfer_request_test(req));
    ASSERT_OK(e.ctx, kvrt_xfer_request_cancel(req)); /* a second cancel changes nothing */
    ASSERT_STATUS(KVRT_ERR_CANCELED, kvrt_xfer_request_test(req));
    ASSERT_OK(e.ctx, kvrt_xfer_poll(e.a, c, 2, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(c[0].user_data, 77);
    cr_assert_eq(c[0].status, KVRT_ERR_CANCELED);
    cr_assert_eq(c[0].bytes, 0);
    ASSERT_OK(e.ctx, kvrt_xfer_request_release(req));
    soft_verbs_pause(false);
    one_op_down(&e, &o);
    ASSERT_OK(e.ctx, wait_connected(e.peer, 5000));
    ASSERT_STATUS(KVRT_OK, one_write(&e, 256u << 10, 0x55));
    env_down(&e);
}
