/*
 * test_xfer_process.c - agents in two processes: transfers verified byte
 * for byte; a peer killed mid-transfer fails every outstanding request at
 * once (well inside its timeout) and leaves no registration held; a peer
 * that stalls fails them when their timeout expires; a dropped connection
 * reconnects by itself once the peer is back.
 *
 * The peer is a child process started with fork() before the parent makes
 * any thread; it reports its address and region descriptor through a pipe
 * and serves until it is killed (by pid) or its stdin pipe closes.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_xfer_child.h"


typedef struct side {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *agent;
    kvrt_xfer_peer_t *peer;
    kvrt_xfer_remote_t *remote;
    uint8_t *mem;
    kvrt_xfer_region_t *region;
} side_t;

static side_t side_up(child_t *c, uint32_t timeout_ms)
{
    side_t s;
    s.ctx = txu_ctx();
    s.agent = txu_agent(s.ctx, timeout_ms);
    ASSERT_OK(s.ctx, kvrt_xfer_connect(s.agent, c->address, 5000, &s.peer));
    ASSERT_OK(s.ctx, kvrt_xfer_import(s.peer, c->desc, c->desc_len, &s.remote));
    s.mem = aligned_alloc(4096, REGION_BYTES);
    txu_fill(s.mem, REGION_BYTES, 31);
    s.region = txu_register(s.ctx, s.agent, s.mem, REGION_BYTES, 0);
    return s;
}

static void side_down(side_t *s)
{
    cr_assert_eq(txu_stat(s->ctx, "xfer.0.outstanding"), 0);
    ASSERT_OK(s->ctx, kvrt_xfer_deregister(s->region));
    cr_assert_eq(txu_stat(s->ctx, "xfer.0.regions"), 0);
    ASSERT_OK(s->ctx, kvrt_xfer_disconnect(s->peer));
    ASSERT_OK(s->ctx, kvrt_xfer_agent_destroy(s->agent));
    kvrt_ctx_destroy(s->ctx);
    free(s->mem);
}

Test(xfer_process, write_then_read_back_across_processes)
{
    child_t c = child_start("127.0.0.1:0");
    side_t s = side_up(&c, 10000);
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = s.region, .remote = s.remote,
                         .length = REGION_BYTES};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(s.ctx, kvrt_xfer_post(s.peer, &op, 1, NULL, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 15000));
    ASSERT_OK(s.ctx, kvrt_xfer_request_release(req));
    uint8_t *copy = malloc(REGION_BYTES);
    memcpy(copy, s.mem, REGION_BYTES);
    memset(s.mem, 0, REGION_BYTES);
    op.opcode = KVRT_XFER_READ;
    ASSERT_OK(s.ctx, kvrt_xfer_post(s.peer, &op, 1, NULL, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 15000));
    ASSERT_OK(s.ctx, kvrt_xfer_request_release(req));
    cr_assert(memcmp(copy, s.mem, REGION_BYTES) == 0, "round trip through the child differs");
    free(copy);
    side_down(&s);
    child_end(&c);
}

Test(xfer_process, killed_peer_fails_every_request_fast_and_releases_registrations)
{
    child_t c = child_start("127.0.0.1:0");
    const uint32_t timeout_ms = 8000;
    side_t s = side_up(&c, timeout_ms);
    enum { N = 32 };
    kvrt_xfer_request_t *reqs[N];
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = s.region, .remote = s.remote,
                         .length = REGION_BYTES};
    for (int i = 0; i < N; i++) {
        op.opcode = i % 4 == 3 ? KVRT_XFER_READ : KVRT_XFER_WRITE;
        ASSERT_OK(s.ctx, kvrt_xfer_post(s.peer, &op, 1, NULL, &reqs[i]));
    }
    /* 2 GiB queued: the child dies with most of it in flight. */
    usleep(20 * 1000);
    uint64_t t0 = txu_now_ms();
    child_kill(&c);
    int failed = 0;
    for (int i = 0; i < N; i++) {
        kvrt_status_t st = kvrt_xfer_request_wait(reqs[i], timeout_ms + 2000);
        cr_assert_neq(st, KVRT_INPROGRESS, "request %d still pending", i);
        cr_assert(st == KVRT_OK || st == KVRT_ERR_PEER_FAILED, "request %d: %s", i,
                  kvrt_status_str(st));
        failed += st == KVRT_ERR_PEER_FAILED;
        ASSERT_OK(s.ctx, kvrt_xfer_request_release(reqs[i]));
    }
    uint64_t took = txu_now_ms() - t0;
    cr_assert_gt(failed, 0);
    cr_assert_lt(took, timeout_ms / 4, "failing took %llu ms", (unsigned long long)took);
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    ASSERT_OK(s.ctx, kvrt_xfer_peer_info(s.peer, &info));
    cr_assert_neq(info.state, KVRT_XFER_PEER_CONNECTED);
    cr_assert_eq(info.outstanding, 0);
    /* Posting to a peer that is down fails fast. */
    ASSERT_STATUS(KVRT_ERR_PEER_FAILED, kvrt_xfer_post(s.peer, &op, 1, NULL, NULL));
    side_down(&s);
}

Test(xfer_process, stalled_peer_times_out_on_time)
{
    child_t c = child_start("127.0.0.1:0");
    side_t s = side_up(&c, 10000);
    /* Freeze the child: the kernel keeps accepting bytes until the socket
     * buffers fill, then nothing moves and nothing is acknowledged. */
    kill(c.pid, SIGSTOP);
    const uint32_t timeout_ms = 400;
    kvrt_xfer_post_params_t pp = {.field_mask = KVRT_XFER_POST_PARAM_TIMEOUT,
                                  .timeout_ms = timeout_ms};
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = s.region, .remote = s.remote,
                         .length = REGION_BYTES};
    kvrt_xfer_request_t *req = NULL;
    uint64_t t0 = txu_now_ms();
    ASSERT_OK(s.ctx, kvrt_xfer_post(s.peer, &op, 1, &pp, &req));
    kvrt_status_t st = kvrt_xfer_request_wait(req, 5000);
    uint64_t took = txu_now_ms() - t0;
    ASSERT_STATUS(KVRT_ERR_TIMEOUT, st);
    cr_assert_geq(took, timeout_ms - 5);
    cr_assert_lt(took, timeout_ms + 300, "timed out after %llu ms", (unsigned long long)took);
    ASSERT_OK(s.ctx, kvrt_xfer_request_release(req));
    kill(c.pid, SIGCONT);
    child_kill(&c);
    side_down(&s);
}

Test(xfer_process, dropped_connection_reconnects)
{
    /* Both children are forked before this process has threads; the
     * second one learns its address (the first one's) when it starts. */
    child_t c = child_fork_in(NULL, "127.0.0.1:0");
    child_t again = child_fork_in(NULL, NULL);
    child_go(&c);
    side_t s = side_up(&c, 5000);
    char go[97] = "g";
    memcpy(go + 1, c.address, 96);
    child_kill(&c);
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    uint64_t end = txu_now_ms() + 3000;
    do {
        ASSERT_OK(s.ctx, kvrt_xfer_peer_info(s.peer, &info));
    } while (info.state == KVRT_XFER_PEER_CONNECTED && txu_now_ms() < end && !usleep(2000));
    cr_assert_eq(info.state, KVRT_XFER_PEER_RECONNECTING);

    /* The peer comes back on the same address; the dialer finds it. */
    child_go_at(&again, go);
    end = txu_now_ms() + 5000;
    do {
        ASSERT_OK(s.ctx, kvrt_xfer_peer_info(s.peer, &info));
    } while (info.state != KVRT_XFER_PEER_CONNECTED && txu_now_ms() < end && !usleep(5000));
    cr_assert_eq(info.state, KVRT_XFER_PEER_CONNECTED);
    cr_assert_eq(info.reconnects, 1);
    cr_assert_eq(txu_stat(s.ctx, "xfer.0.reconnects"), 1);

    kvrt_xfer_remote_t *rem = NULL;
    ASSERT_OK(s.ctx, kvrt_xfer_import(s.peer, again.desc, again.desc_len, &rem));
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = s.region, .remote = rem,
                         .length = 1u << 20};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(s.ctx, kvrt_xfer_post(s.peer, &op, 1, NULL, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 5000));
    ASSERT_OK(s.ctx, kvrt_xfer_request_release(req));
    side_down(&s);
    child_end(&again);
}
