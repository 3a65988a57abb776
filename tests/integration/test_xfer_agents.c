/*
 * test_xfer_agents.c - two transfer agents in one process over loopback
 * TCP: one-sided WRITE and READ verified byte for byte, KV block transfer
 * between pools of different layouts, notifications, integrity mode, the
 * eventfd, reconnection, and the invariants at the end (no registrations,
 * no outstanding requests).
 */
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test_xfer_util.h"

typedef struct pair {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *a, *b; /* a dials b */
    kvrt_xfer_peer_t *peer;
} pair_t;

static pair_t pair_up(uint32_t timeout_ms)
{
    pair_t p;
    p.ctx = txu_ctx();
    p.a = txu_agent(p.ctx, timeout_ms);
    p.b = txu_agent(p.ctx, timeout_ms);
    p.peer = txu_connect(p.ctx, p.a, p.b);
    return p;
}

static void pair_down(pair_t *p)
{
    /* Nothing outstanding once acknowledgements in flight have landed: a
     * notification counts on its sender until the peer's acknowledgement
     * reaches it, which may be after the peer has seen it. */
    cr_assert_eq(txu_stat_drained(p->ctx, "xfer.0.outstanding", 5000), 0);
    cr_assert_eq(txu_stat_drained(p->ctx, "xfer.1.outstanding", 5000), 0);
    ASSERT_OK(p->ctx, kvrt_xfer_disconnect(p->peer));
    ASSERT_OK(p->ctx, kvrt_xfer_agent_destroy(p->a));
    ASSERT_OK(p->ctx, kvrt_xfer_agent_destroy(p->b));
    kvrt_ctx_destroy(p->ctx);
}

Test(xfer_agents, write_and_read_random_ranges_byte_for_byte)
{
    pair_t p = pair_up(5000);
    const uint64_t bytes = 8u << 20;
    uint8_t *src = aligned_alloc(4096, bytes), *dst = aligned_alloc(4096, bytes);
    uint8_t *back = aligned_alloc(4096, bytes);
    txu_fill(src, bytes, 7);
    memset(dst, 0, bytes);
    memset(back, 0, bytes);
    kvrt_xfer_region_t *ls = txu_register(p.ctx, p.a, src, bytes, 0);
    kvrt_xfer_region_t *lb = txu_register(p.ctx, p.a, back, bytes, 0);
    kvrt_xfer_region_t *rd = txu_register(p.ctx, p.b, dst, bytes,
                                          KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE);
    kvrt_xfer_remote_t *rem = txu_import(p.ctx, p.peer, rd);

    /* Random, non-overlapping destination ranges of 1 B .. 256 KiB. */
    uint64_t rng = 42;
    enum { N = 200 };
    kvrt_xfer_op_t ops[N];
    uint64_t at = 0;
    uint32_t n = 0;
    while (n < N) {
        uint64_t len = 1 + test_rand(&rng) % (256u << 10);
        uint64_t gap = test_rand(&rng) % 4096;
        if (at + gap + len > bytes)
            break;
        uint64_t from = test_rand(&rng) % (bytes - len);
        ops[n++] = (kvrt_xfer_op_t){.opcode = KVRT_XFER_WRITE, .local = ls, .local_offset = from,
                                    .remote = rem, .remote_offset = at + gap, .length = len};
        at += gap + len;
    }
    cr_assert_gt(n, 20);
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(p.ctx, kvrt_xfer_post(p.peer, ops, n, NULL, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 10000));
    ASSERT_OK(p.ctx, kvrt_xfer_request_release(req));
    for (uint32_t i = 0; i < n; i++)
        cr_assert(memcmp(dst + ops[i].remote_offset, src + ops[i].local_offset,
                         ops[i].length) == 0, "op %u landed wrong", i);

    /* Read the same ranges back into another buffer. */
    for (uint32_t i = 0; i < n; i++) {
        ops[i].opcode = KVRT_XFER_READ;
        ops[i].local = lb;
    }
    ASSERT_OK(p.ctx, kvrt_xfer_post(p.peer, ops, n, NULL, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 10000));
    ASSERT_OK(p.ctx, kvrt_xfer_request_release(req));
    for (uint32_t i = 0; i < n; i++)
        cr_assert(memcmp(back + ops[i].local_offset, dst + ops[i].remote_offset,
                         ops[i].length) == 0, "read-back of op %u differs", i);
    cr_assert_eq(txu_stat(p.ctx, "xfer.0.requests_failed"), 0);
    cr_assert_gt(txu_stat(p.ctx, "xfer.0.bytes_written"), 0);

    ASSERT_OK(p.ctx, kvrt_xfer_remote_release(rem));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(ls));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(lb));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(rd));
    cr_assert_eq(txu_stat(p.ctx, "xfer.0.regions"), 0);
    cr_assert_eq(txu_stat(p.ctx, "xfer.1.regions"), 0);
    pair_down(&p);
    free(src);
    free(dst);
    free(back);
}

/* Blocks of a pool, hashed page by page, for comparing two pools. */
static void block_bytes(kvrt_pool_t *pool, int32_t block, uint8_t *out)
{
    kvrt_kv_layout_t l;
    kvrt_pool_layout(pool, &l);
    uint64_t page = 0;
    kvrt_layout_page_bytes(&l, &page);
    for (uint32_t layer = 0; layer < l.num_layers; layer++)
        for (int half = 0; half < 2; half++) {
            void *addr = NULL;
            kvrt_pool_page_address(pool, block, layer, (kvrt_kv_half_t)half, &addr);
            memcpy(out, addr, page);
            out += page;
        }
}

static void kv_round_trip(kvrt_kv_order_t src_order, kvrt_kv_format_t src_format,
                          kvrt_kv_order_t dst_order, kvrt_kv_format_t dst_format, int integrity)
{
    pair_t p = pair_up(10000);
    kvrt_pool_t *sp = txu_pool(p.ctx, 257, src_order, src_format);
    kvrt_pool_t *dp = txu_pool(p.ctx, 301, dst_order, dst_format);
    kvrt_pool_info_t si, di;
    kvrt_pool_info(sp, &si);
    kvrt_pool_info(dp, &di);
    txu_fill(si.base, (uint64_t)si.num_blocks * si.block_bytes, 11);
    memset(di.base, 0, (uint64_t)di.num_blocks * di.block_bytes);
    kvrt_xfer_region_t *sr = txu_register_pool(p.ctx, p.a, sp);
    kvrt_xfer_region_t *dr = txu_register_pool(p.ctx, p.b, dp);
    kvrt_xfer_remote_t *rem = txu_import(p.ctx, p.peer, dr);

    /* A random list with contiguous runs and scattered blocks. */
    enum { N = 120 };
    int32_t from[N], to[N];
    uint64_t rng = 99;
    int32_t used[301] = {0};
    for (int i = 0; i < N; i++) {
        from[i] = i < 40 ? 10 + i : 1 + (int32_t)(test_rand(&rng) % 256);
        int32_t t;
        do {
            t = i < 40 ? 100 + i : 1 + (int32_t)(test_rand(&rng) % 300);
        } while (used[t]);
        used[t] = 1;
        to[i] = t;
    }
    const char note[] = "prefill-done";
    kvrt_xfer_kv_params_t kp = {.field_mask = KVRT_XFER_KV_PARAM_NOTIFY | KVRT_XFER_KV_PARAM_INTEGRITY,
                                 .opcode = KVRT_XFER_WRITE, .local = sr, .remote = rem,
                                 .local_blocks = from, .remote_blocks = to, .count = N,
                                 .integrity = integrity, .notify = note,
                                 .notify_bytes = sizeof(note)};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(p.ctx, kvrt_xfer_kv_post(p.peer, &kp, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 10000));
    ASSERT_OK(p.ctx, kvrt_xfer_request_release(req));
    kvrt_xfer_notification_t note_in;
    cr_assert(txu_wait_note(p.b, &note_in, 5000), "no notification arrived");
    cr_assert_eq(note_in.status, KVRT_OK);
    cr_assert_eq(note_in.length, sizeof(note));
    cr_assert_str_eq((const char *)note_in.data, note);

    uint8_t *x = malloc(si.block_bytes), *y = malloc(si.block_bytes);
    for (int i = 0; i < N; i++) {
        block_bytes(sp, from[i], x);
        block_bytes(dp, to[i], y);
        cr_assert(memcmp(x, y, si.block_bytes) == 0, "block %d -> %d differs", from[i], to[i]);
    }

    /* And pull them back the other way into fresh source blocks. */
    memset((uint8_t *)si.base + si.block_bytes * 200, 0, si.block_bytes * 50);
    int32_t back[N], want[N];
    int nb = 0;
    for (int i = 0; i < N && nb < 50; i++)
        if (i % 2 == 0) {
            back[nb] = 200 + nb;
            want[nb] = to[i];
            nb++;
        }
    kp = (kvrt_xfer_kv_params_t){.field_mask = KVRT_XFER_KV_PARAM_INTEGRITY,
                                 .opcode = KVRT_XFER_READ, .local = sr, .remote = rem,
                                 .local_blocks = back, .remote_blocks = want,
                                 .count = (uint32_t)nb, .integrity = integrity};
    ASSERT_OK(p.ctx, kvrt_xfer_kv_post(p.peer, &kp, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 10000));
    ASSERT_OK(p.ctx, kvrt_xfer_request_release(req));
    for (int i = 0; i < nb; i++) {
        block_bytes(sp, back[i], x);
        block_bytes(dp, want[i], y);
        cr_assert(memcmp(x, y, si.block_bytes) == 0, "read back block %d differs", want[i]);
    }
    free(x);
    free(y);
    ASSERT_OK(p.ctx, kvrt_xfer_remote_release(rem));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(sr));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(dr));
    pair_down(&p);
}

Test(xfer_agents, kv_blocks_same_layout)
{
    kv_round_trip(KVRT_ORDER_LAYER_MAJOR, KVRT_KV_SEPARATE, KVRT_ORDER_LAYER_MAJOR,
                  KVRT_KV_SEPARATE, 0);
}

Test(xfer_agents, kv_blocks_between_different_layouts_with_integrity)
{
    kv_round_trip(KVRT_ORDER_BLOCK_MAJOR, KVRT_KV_FUSED, KVRT_ORDER_LAYER_MAJOR, KVRT_KV_FUSED, 1);
    kv_round_trip(KVRT_ORDER_LAYER_MAJOR, KVRT_KV_SEPARATE, KVRT_ORDER_BLOCK_MAJOR,
                  KVRT_KV_SEPARATE, 1);
}

Test(xfer_agents, completion_queue_and_eventfd)
{
    pair_t p = pair_up(5000);
    const uint64_t bytes = 1u << 20;
    uint8_t *src = aligned_alloc(4096, bytes), *dst = aligned_alloc(4096, bytes);
    txu_fill(src, bytes, 3);
    kvrt_xfer_region_t *ls = txu_register(p.ctx, p.a, src, bytes, 0);
    kvrt_xfer_region_t *rd = txu_register(p.ctx, p.b, dst, bytes, KVRT_XFER_REMOTE_WRITE);
    kvrt_xfer_remote_t *rem = txu_import(p.ctx, p.peer, rd);
    int efd = -1;
    ASSERT_OK(p.ctx, kvrt_xfer_agent_eventfd(p.a, &efd));
    for (uint64_t i = 0; i < 16; i++) {
        kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = ls, .local_offset = i * 65536,
                             .remote = rem, .remote_offset = i * 65536, .length = 65536};
        kvrt_xfer_post_params_t pp = {.field_mask = KVRT_XFER_POST_PARAM_USER_DATA,
                                      .user_data = 1000 + i};
        /* No request handle: the completion queue is the only report. */
        ASSERT_OK(p.ctx, kvrt_xfer_post(p.peer, &op, 1, &pp, NULL));
    }
    uint64_t seen = 0, sum = 0;
    uint64_t end = txu_now_ms() + 10000;
    while (seen < 16 && txu_now_ms() < end) {
        struct pollfd pfd = {.fd = efd, .events = POLLIN};
        if (poll(&pfd, 1, 100) == 1) {
            uint64_t v;
            cr_assert_eq(read(efd, &v, sizeof(v)), (ssize_t)sizeof(v));
        }
        kvrt_xfer_completion_t c[8];
        uint32_t n = 0;
        ASSERT_OK(p.ctx, kvrt_xfer_poll(p.a, c, 8, &n));
        for (uint32_t i = 0; i < n; i++) {
            cr_assert_eq(c[i].status, KVRT_OK);
            cr_assert_eq(c[i].bytes, 65536);
            sum += c[i].user_data;
        }
        seen += n;
    }
    cr_assert_eq(seen, 16);
    cr_assert_eq(sum, 16 * 1000 + 120);
    cr_assert(memcmp(src, dst, bytes) == 0);
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(ls));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(rd));
    pair_down(&p);
    free(src);
    free(dst);
}

Test(xfer_agents, notify_follows_earlier_writes)
{
    pair_t p = pair_up(5000);
    const uint64_t bytes = 32u << 20;
    uint8_t *src = aligned_alloc(4096, bytes), *dst = aligned_alloc(4096, bytes);
    txu_fill(src, bytes, 5);
    memset(dst, 0, bytes);
    kvrt_xfer_region_t *ls = txu_register(p.ctx, p.a, src, bytes, 0);
    kvrt_xfer_region_t *rd = txu_register(p.ctx, p.b, dst, bytes, KVRT_XFER_REMOTE_WRITE);
    kvrt_xfer_remote_t *rem = txu_import(p.ctx, p.peer, rd);
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = ls, .remote = rem, .length = bytes};
    ASSERT_OK(p.ctx, kvrt_xfer_post(p.peer, &op, 1, NULL, NULL));
    ASSERT_OK(p.ctx, kvrt_xfer_notify(p.peer, "go", 3));
    kvrt_xfer_notification_t note;
    cr_assert(txu_wait_note(p.b, &note, 10000));
    /* When the notification is visible, all of the write has landed. */
    cr_assert(memcmp(src, dst, bytes) == 0);
    cr_assert_str_eq((const char *)note.data, "go");
    kvrt_xfer_completion_t c;
    uint32_t n = 0;
    uint64_t end = txu_now_ms() + 5000;
    while (n == 0 && txu_now_ms() < end)
        kvrt_xfer_poll(p.a, &c, 1, &n);
    cr_assert_eq(n, 1);
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(ls));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(rd));
    pair_down(&p);
    free(src);
    free(dst);
}

Test(xfer_agents, bad_posts_are_refused_locally)
{
    pair_t p = pair_up(5000);
    uint8_t *buf = aligned_alloc(4096, 65536);
    kvrt_xfer_region_t *l = txu_register(p.ctx, p.a, buf, 65536, 0);
    kvrt_xfer_region_t *ro = txu_register(p.ctx, p.b, buf, 4096, KVRT_XFER_REMOTE_READ);
    kvrt_xfer_remote_t *rem = txu_import(p.ctx, p.peer, ro);
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = l, .remote = rem, .length = 16};
    ASSERT_STATUS(KVRT_ERR_REMOTE_ACCESS, kvrt_xfer_post(p.peer, &op, 1, NULL, NULL));
    op.opcode = KVRT_XFER_READ;
    op.remote_offset = 4090;
    ASSERT_STATUS(KVRT_ERR_REMOTE_ACCESS, kvrt_xfer_post(p.peer, &op, 1, NULL, NULL));
    op.remote_offset = 0;
    op.length = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_post(p.peer, &op, 1, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_xfer_import(p.peer, "garbage", 7, &rem));
    kvrt_xfer_register_params_t rp = {.field_mask = KVRT_XFER_REGISTER_PARAM_DMABUF,
                                      .address = (void *)0x10000, .length = 4096,
                                      .dmabuf_fd = 0};
    kvrt_xfer_region_t *gpu = NULL;
    ASSERT_STATUS(KVRT_ERR_UNSUPPORTED, kvrt_xfer_register(p.a, &rp, &gpu));
    cr_assert_eq(txu_stat(p.ctx, "xfer.0.requests"), 0);
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(l));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(ro));
    pair_down(&p);
    free(buf);
}

Test(xfer_agents, wrong_cluster_key_is_refused)
{
    kvrt_ctx_t *ctx = txu_ctx();
    static const uint8_t other[32] = "another-cluster-key-abcdefghijkl";
    kvrt_xfer_agent_t *a = txu_agent_key(ctx, other, 2000);
    kvrt_xfer_agent_t *b = txu_agent(ctx, 2000);
    char addr[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(b, addr, sizeof(addr)));
    kvrt_xfer_peer_t *peer = NULL;
    ASSERT_STATUS(KVRT_ERR_AUTH, kvrt_xfer_connect(a, addr, 2000, &peer));
    cr_assert_null(peer);
    /* The dialer finds out first (the listener's proof does not check);
     * the listener never admits it. */
    cr_assert_eq(txu_stat(ctx, "xfer.0.auth_failures"), 1);
    usleep(100 * 1000);
    cr_assert_eq(txu_stat(ctx, "xfer.1.peers"), 0);
    cr_assert_eq(txu_stat(ctx, "xfer.0.peers"), 0);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    kvrt_ctx_destroy(ctx);
}
