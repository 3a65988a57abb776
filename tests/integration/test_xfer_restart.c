/*
 * test_xfer_restart.c - a descriptor names one instance of its agent. A
 * listener restarted on the same address is a new process whose region
 * ids start over, so its first region has the id its predecessor's first
 * region had. A dialer reconnects to it on its own; writes and reads
 * through a remote imported before the restart (or from a descriptor the
 * old process handed out, such as a hand-off ticket still in flight) must
 * be refused, not touch the new process's memory, and a descriptor of the
 * new process must work as soon as the dialer has reconnected (before
 * that, a post is refused as to any peer that is down). The peer's info
 * tells a caller which instance its connection reached.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_xfer_raw.h"

#define BYTES 65536u
#define LISTENER_ACCESS (KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE)

/* An agent listening on `address` (retried for up to 2 s while the old
 * listener's socket goes away). */
static kvrt_xfer_agent_t *listener_at(kvrt_ctx_t *ctx, const char *address)
{
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_LISTEN,
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_TCP, .listen_address = address};
    kvrt_xfer_agent_t *a = NULL;
    for (int i = 0; i < 200; i++) {
        if (kvrt_xfer_agent_create(ctx, &p, &a) == KVRT_OK)
            return a;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_fail("cannot listen on %s again", address);
    return NULL;
}

/* Waits (bounded, 10 s) until the dialer's peer is in `state` with at
 * least `reconnects` reconnections behind it. */
static void wait_peer(kvrt_ctx_t *ctx, kvrt_xfer_peer_t *peer, kvrt_xfer_peer_state_t state,
                      uint32_t reconnects)
{
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    uint64_t end = txu_now_ms() + 10000;
    do {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
        ASSERT_OK(ctx, kvrt_xfer_peer_info(peer, &info));
    } while (!(info.state == state && info.reconnects >= reconnects) && txu_now_ms() < end);
    cr_assert_eq(info.state, state, "peer in state %d, not %d (%s)", (int)info.state,
                 (int)state, kvrt_status_str(info.last_error));
    cr_assert_geq(info.reconnects, reconnects);
}

static void wait_reconnected(kvrt_ctx_t *ctx, kvrt_xfer_peer_t *peer)
{
    wait_peer(ctx, peer, KVRT_XFER_PEER_CONNECTED, 1);
}

/* One WRITE (local to remote) or READ (back) of BYTES bytes; the final
 * status (the post's when it is refused). */
static kvrt_status_t move_all(kvrt_ctx_t *ctx, kvrt_xfer_peer_t *peer, kvrt_xfer_opcode_t opcode,
                              const kvrt_xfer_region_t *local, const kvrt_xfer_remote_t *remote)
{
    kvrt_xfer_op_t op = {.opcode = opcode, .local = local, .remote = remote, .length = BYTES};
    kvrt_xfer_request_t *req = NULL;
    kvrt_status_t st = kvrt_xfer_post(peer, &op, 1, NULL, &req);
    if (st != KVRT_OK)
        return st;
    st = kvrt_xfer_request_wait(req, 10000);
    ASSERT_OK(ctx, kvrt_xfer_request_release(req));
    return st;
}

/* A dialer connected to a listener that the test restarts. */
typedef struct restart {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *dialer;
    kvrt_xfer_agent_t *listener; /* the current one */
    char address[96];
} restart_t;

/* reconnect_ms: the dialer's pause before each reconnection attempt (0:
 * the test default, 20 ms growing to 200). */
static restart_t restart_up(uint32_t reconnect_ms)
{
    restart_t f = {.ctx = txu_ctx()};
    if (reconnect_ms) {
        kvrt_xfer_agent_params_t p = {
            .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_RECONNECT,
            .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
            .backend = KVRT_XFER_BACKEND_TCP, .reconnect_initial_ms = reconnect_ms,
            .reconnect_max_ms = reconnect_ms, .reconnect_attempts = 20};
        ASSERT_OK(f.ctx, kvrt_xfer_agent_create(f.ctx, &p, &f.dialer));
    } else {
        f.dialer = txu_agent(f.ctx, 5000);
    }
    f.listener = listener_at(f.ctx, "127.0.0.1:0");
    ASSERT_OK(f.ctx, kvrt_xfer_agent_address(f.listener, f.address, sizeof(f.address)));
    return f;
}

/* The listener's process is replaced: its region deregistered, a new
 * agent on the same address. */
static void restart_listener(restart_t *f, kvrt_xfer_region_t *region)
{
    ASSERT_OK(f->ctx, kvrt_xfer_deregister(region));
    ASSERT_OK(f->ctx, kvrt_xfer_agent_destroy(f->listener));
    f->listener = listener_at(f->ctx, f->address);
}

/* Deregisters each side's region (nothing may still use them), then
 * destroys the agents, which frees the remotes. */
static void restart_down(restart_t *f, kvrt_xfer_region_t *local, kvrt_xfer_region_t *listened)
{
    ASSERT_OK(f->ctx, kvrt_xfer_deregister(local));
    ASSERT_OK(f->ctx, kvrt_xfer_deregister(listened));
    ASSERT_OK(f->ctx, kvrt_xfer_agent_destroy(f->dialer));
    ASSERT_OK(f->ctx, kvrt_xfer_agent_destroy(f->listener));
}

/* Host memory for the plain-write tests: a source on the dialer filled
 * with `fill`, registered; zeroed memory for the listener before and
 * after its restart, the first registered there. */
typedef struct buffers {
    uint8_t *src, *old_mem, *new_mem;
    kvrt_xfer_region_t *local, *old_region;
} buffers_t;

static buffers_t buffers_up(restart_t *f, uint8_t fill)
{
    buffers_t b = {.src = malloc(BYTES), .old_mem = calloc(1, BYTES),
                   .new_mem = calloc(1, BYTES)};
    cr_assert(b.src && b.old_mem && b.new_mem);
    memset(b.src, fill, BYTES);
    b.local = txu_register(f->ctx, f->dialer, b.src, BYTES, 0);
    b.old_region = txu_register(f->ctx, f->listener, b.old_mem, BYTES, LISTENER_ACCESS);
    return b;
}

static void buffers_free(buffers_t *b)
{
    free(b->src);
    free(b->old_mem);
    free(b->new_mem);
}

static bool all_bytes(const uint8_t *p, size_t n, uint8_t v)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return false;
    return true;
}

Test(xfer_restart, a_remote_of_the_listener_before_its_restart_is_refused, .timeout = 60)
{
    restart_t f = restart_up(0);
    kvrt_ctx_t *ctx = f.ctx;
    buffers_t b = buffers_up(&f, 0xab);
    uint32_t old_id = txu_region_id(ctx, b.old_region);
    uint8_t old_desc[KVRT_XFER_DESCRIPTOR_MAX];
    size_t old_len = 0;
    ASSERT_OK(ctx,
              kvrt_xfer_region_descriptor(b.old_region, old_desc, sizeof(old_desc), &old_len));
    kvrt_xfer_peer_t *peer = NULL;
    ASSERT_OK(ctx, kvrt_xfer_connect(f.dialer, f.address, 5000, &peer));
    kvrt_xfer_remote_t *before = NULL;
    ASSERT_OK(ctx, kvrt_xfer_import(peer, old_desc, old_len, &before));
    ASSERT_OK(ctx, move_all(ctx, peer, KVRT_XFER_WRITE, b.local, before));
    cr_assert(all_bytes(b.old_mem, BYTES, 0xab), "the write before the restart did not land");

    /* The new process's first region has the old one's id. */
    restart_listener(&f, b.old_region);
    kvrt_xfer_region_t *new_region =
        txu_register(ctx, f.listener, b.new_mem, BYTES, LISTENER_ACCESS);
    cr_assert_eq(txu_region_id(ctx, new_region), old_id,
                 "the restarted listener's region must reuse the id for this test to mean much");
    wait_reconnected(ctx, peer);

    /* Through the remote imported before, and through the old descriptor
     * imported now (a ticket that was in flight): refused, nothing lands. */
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REGION, move_all(ctx, peer, KVRT_XFER_WRITE, b.local, before));
    kvrt_xfer_remote_t *late = NULL;
    ASSERT_OK(ctx, kvrt_xfer_import(peer, old_desc, old_len, &late));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REGION, move_all(ctx, peer, KVRT_XFER_WRITE, b.local, late));
    struct timespec settle = {0, 50000000};
    nanosleep(&settle, NULL);
    cr_assert(all_bytes(b.new_mem, BYTES, 0), "a stale descriptor wrote into the new process");
    /* Nor is the new process's memory read through it (into b.src, which
     * would turn to its zeroes). */
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REGION, move_all(ctx, peer, KVRT_XFER_READ, b.local, late));
    cr_assert(all_bytes(b.src, BYTES, 0xab), "a stale descriptor read the new process's memory");

    /* The new process's own descriptor works on the same peer. */
    kvrt_xfer_remote_t *current = txu_import(ctx, peer, new_region);
    ASSERT_OK(ctx, move_all(ctx, peer, KVRT_XFER_WRITE, b.local, current));
    cr_assert(all_bytes(b.new_mem, BYTES, 0xab));

    ASSERT_OK(ctx, kvrt_xfer_remote_release(before));
    ASSERT_OK(ctx, kvrt_xfer_remote_release(late));
    ASSERT_OK(ctx, kvrt_xfer_remote_release(current));
    restart_down(&f, b.local, new_region);
    kvrt_ctx_destroy(ctx);
    buffers_free(&b);
}

Test(xfer_restart, a_kv_transfer_to_the_pool_before_a_restart_is_refused, .timeout = 60)
{
    restart_t f = restart_up(0);
    kvrt_ctx_t *ctx = f.ctx;
    kvrt_pool_t *src = txu_pool(ctx, 8, KVRT_ORDER_BLOCK_MAJOR, KVRT_KV_FUSED);
    kvrt_pool_t *old_pool = txu_pool(ctx, 8, KVRT_ORDER_BLOCK_MAJOR, KVRT_KV_FUSED);
    kvrt_pool_t *new_pool = txu_pool(ctx, 8, KVRT_ORDER_BLOCK_MAJOR, KVRT_KV_FUSED);
    kvrt_pool_info_t si, ni;
    ASSERT_OK(ctx, kvrt_pool_info(src, &si));
    ASSERT_OK(ctx, kvrt_pool_info(new_pool, &ni));
    size_t pool_bytes = (size_t)ni.num_blocks * ni.block_bytes;
    memset(si.base, 0x5c, (size_t)si.num_blocks * si.block_bytes);
    memset(ni.base, 0, pool_bytes);

    kvrt_xfer_region_t *local = txu_register_pool(ctx, f.dialer, src);
    kvrt_xfer_region_t *old_region = txu_register_pool(ctx, f.listener, old_pool);
    kvrt_xfer_peer_t *peer = txu_connect(ctx, f.dialer, f.listener);
    kvrt_xfer_remote_t *before = txu_import(ctx, peer, old_region);
    uint32_t old_id = txu_region_id(ctx, old_region);

    restart_listener(&f, old_region);
    kvrt_xfer_region_t *new_region = txu_register_pool(ctx, f.listener, new_pool);
    cr_assert_eq(txu_region_id(ctx, new_region), old_id);
    wait_reconnected(ctx, peer);

    int32_t blocks[3] = {1, 2, 3};
    kvrt_xfer_kv_params_t kp = {.opcode = KVRT_XFER_WRITE, .local = local, .remote = before,
                                .local_blocks = blocks, .remote_blocks = blocks, .count = 3};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_REGION, kvrt_xfer_kv_post(peer, &kp, &req));
    cr_assert_null(req);
    cr_assert(all_bytes(ni.base, pool_bytes, 0), "a stale KV transfer wrote into the new pool");

    kp.remote = txu_import(ctx, peer, new_region);
    ASSERT_OK(ctx, kvrt_xfer_kv_post(peer, &kp, &req));
    ASSERT_OK(ctx, kvrt_xfer_request_wait(req, 10000));
    ASSERT_OK(ctx, kvrt_xfer_request_release(req));
    /* Block-major fused: blocks 1..3 are one contiguous extent. */
    const uint8_t *landed = (const uint8_t *)ni.base + ni.block_bytes;
    cr_assert(all_bytes(landed, 3 * (size_t)ni.block_bytes, 0x5c));

    restart_down(&f, local, new_region);
    ASSERT_OK(ctx, kvrt_pool_destroy(src));
    ASSERT_OK(ctx, kvrt_pool_destroy(old_pool));
    ASSERT_OK(ctx, kvrt_pool_destroy(new_pool));
    kvrt_ctx_destroy(ctx);
}

/* The other order: the dialer has the new process's descriptor before it
 * has reconnected. The post is refused as for any peer that is down, not
 * as a descriptor of the wrong instance, and works once reconnected. */
Test(xfer_restart, a_descriptor_of_the_new_listener_waits_for_the_reconnection, .timeout = 60)
{
    /* Attempts 3 s apart: the peer stays down while the test posts. */
    restart_t f = restart_up(3000);
    kvrt_ctx_t *ctx = f.ctx;
    buffers_t b = buffers_up(&f, 0x3c);
    kvrt_xfer_peer_t *peer = txu_connect(ctx, f.dialer, f.listener);

    restart_listener(&f, b.old_region);
    kvrt_xfer_region_t *new_region =
        txu_register(ctx, f.listener, b.new_mem, BYTES, LISTENER_ACCESS);
    kvrt_xfer_remote_t *current = txu_import(ctx, peer, new_region);
    wait_peer(ctx, peer, KVRT_XFER_PEER_RECONNECTING, 0);
    ASSERT_STATUS(KVRT_ERR_PEER_FAILED, move_all(ctx, peer, KVRT_XFER_WRITE, b.local, current));

    wait_reconnected(ctx, peer);
    ASSERT_OK(ctx, move_all(ctx, peer, KVRT_XFER_WRITE, b.local, current));
    cr_assert(all_bytes(b.new_mem, BYTES, 0x3c));

    restart_down(&f, b.local, new_region);
    kvrt_ctx_destroy(ctx);
    buffers_free(&b);
}

static uint64_t peer_instance(kvrt_ctx_t *ctx, kvrt_xfer_peer_t *peer)
{
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    ASSERT_OK(ctx, kvrt_xfer_peer_info(peer, &info));
    return info.instance;
}

/* What tells a caller that its peer's regions must be imported again: the
 * instance in the peer's info stays through a reconnection to the same
 * process and changes with a restart. */
Test(xfer_restart, the_peer_reports_the_instance_it_is_connected_to, .timeout = 60)
{
    restart_t f = restart_up(0);
    kvrt_ctx_t *ctx = f.ctx;
    buffers_t b = buffers_up(&f, 0x5a);
    kvrt_xfer_peer_t *peer = txu_connect(ctx, f.dialer, f.listener);
    uint64_t first = peer_instance(ctx, peer);

    /* The connection breaks; the same process takes the dialer back. */
    ASSERT_OK(ctx, kvrt_xfer_peer_revoke(peer));
    wait_reconnected(ctx, peer);
    cr_assert_eq(peer_instance(ctx, peer), first, "the same listener read as another instance");

    restart_listener(&f, b.old_region);
    kvrt_xfer_region_t *new_region =
        txu_register(ctx, f.listener, b.new_mem, BYTES, LISTENER_ACCESS);
    wait_peer(ctx, peer, KVRT_XFER_PEER_CONNECTED, 2);
    uint64_t second = peer_instance(ctx, peer);
    cr_assert_neq(second, first, "a restarted listener read as the same instance");
    cr_assert(first != 0 && second != 0);

    restart_down(&f, b.local, new_region);
    kvrt_ctx_destroy(ctx);
    buffers_free(&b);
}

/* The instance (and the name) are the attached connection's, not the last
 * handshake's: an attempt whose handshake reached another agent and whose
 * extra sockets then failed left the peer down, and the caller must not
 * read a restart into it. */
Test(xfer_restart, an_attempt_that_fails_after_its_handshake_changes_no_instance, .timeout = 60)
{
    restart_t f = restart_up(0);
    kvrt_ctx_t *ctx = f.ctx;
    kvrt_xfer_peer_t *peer = txu_connect(ctx, f.dialer, f.listener);
    kvrt_xfer_peer_info_t before = {.struct_size = sizeof(before)};
    ASSERT_OK(ctx, kvrt_xfer_peer_info(peer, &before));
    uint64_t first = before.instance;
    cr_assert_neq(first, TXR_INSTANCE);
    cr_assert(strcmp(before.name, "raw") != 0);

    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(f.listener));
    f.listener = NULL;
    /* A raw listener (stating TXR_INSTANCE) in its place completes the
     * handshake of each attempt's first socket and closes the extra one:
     * a dialer sends an attempt's extra sockets only after its first
     * one's handshake, so they alternate. */
    txr_holder_t h;
    txr_holder_start(&h, f.address, 2);
    /* Two handshakes: the first attempt has failed after its own. */
    uint64_t end = txu_now_ms() + 10000;
    while (atomic_load(&h.handshakes) < 2 && txu_now_ms() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    cr_assert_geq(atomic_load(&h.handshakes), 2, "the dialer did not come back");
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    ASSERT_OK(ctx, kvrt_xfer_peer_info(peer, &info));
    cr_assert_neq(info.state, KVRT_XFER_PEER_CONNECTED);
    cr_assert_eq(info.instance, first, "an attempt that failed changed the instance");
    cr_assert_str_eq(info.name, before.name, "an attempt that failed changed the name");

    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(f.dialer));
    txr_holder_stop(&h);
    kvrt_ctx_destroy(ctx);
}
