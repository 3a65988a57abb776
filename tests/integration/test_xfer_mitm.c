/*
 * test_xfer_mitm.c - an attacker on the path who does not hold the cluster
 * key. A relay thread forwards every byte between two agents, so the
 * handshake succeeds through it; then it injects a frame of its own, or
 * flips a byte of a frame in flight. Every frame after the handshake is
 * authenticated: the forged or altered frame is refused, the connection
 * closed, and no byte of it reaches registered memory.
 */
#include <sodium.h>
#include <stdlib.h>
#include <unistd.h>

#include "test_xfer_relay.h"
#include "xfer/tcp/wire.h"

static bool contains(const uint8_t *mem, size_t bytes, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= bytes; i++)
        if (memcmp(mem + i, needle, n) == 0)
            return true;
    return false;
}

typedef struct mitm {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *client, *server; /* xfer.0, xfer.1 */
    relay_t relay;
    kvrt_xfer_peer_t *peer;
    uint8_t *src, *dst;
    kvrt_xfer_region_t *ls, *rd;
    kvrt_xfer_remote_t *rem;
} mitm_t;

enum { REGION = 1 << 20 };

static void mitm_up(mitm_t *m)
{
    m->ctx = txu_ctx();
    m->client = txu_agent(m->ctx, 3000);
    m->server = txu_agent(m->ctx, 3000);
    relay_start(&m->relay, m->ctx, m->server);
    ASSERT_OK(m->ctx, kvrt_xfer_connect(m->client, m->relay.address, 5000, &m->peer));
    m->src = aligned_alloc(4096, REGION);
    m->dst = aligned_alloc(4096, REGION);
    txu_fill(m->src, REGION, 5);
    memset(m->dst, 0, REGION);
    m->ls = txu_register(m->ctx, m->client, m->src, REGION, KVRT_XFER_REMOTE_READ);
    m->rd = txu_register(m->ctx, m->server, m->dst, REGION,
                         KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE);
    m->rem = txu_import(m->ctx, m->peer, m->rd);
    /* The relay is transparent: an honest write goes through it. */
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = m->ls, .remote = m->rem,
                         .length = 4096};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(m->ctx, kvrt_xfer_post(m->peer, &op, 1, NULL, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 5000));
    ASSERT_OK(m->ctx, kvrt_xfer_request_release(req));
    cr_assert(memcmp(m->dst, m->src, 4096) == 0);
    memset(m->dst, 0, 4096);
}

static void mitm_down(mitm_t *m)
{
    ASSERT_OK(m->ctx, kvrt_xfer_remote_release(m->rem));
    ASSERT_OK(m->ctx, kvrt_xfer_agent_destroy(m->client));
    relay_stop(&m->relay);
    ASSERT_OK(m->ctx, kvrt_xfer_agent_destroy(m->server));
    kvrt_ctx_destroy(m->ctx);
    free(m->src);
    free(m->dst);
}

Test(xfer_mitm, injected_write_after_the_handshake_never_lands, .timeout = 30)
{
    mitm_t m;
    mitm_up(&m);
    uint64_t refused0 = txu_stat(m.ctx, "xfer.1.refused");
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_WRITE,
                                 .region = txu_region_id(m.ctx, m.rd), .tag = 77,
                                 .offset = 8192, .length = 16};
    kvrt_xfer_wire_encode(&h, m.relay.frame);
    memcpy(m.relay.frame + KVRT_XFER_WIRE_HEADER_BYTES, "INJECTED-BY-MITM", 16);
    /* The attacker knows the format, not the key: its best tag is a guess. */
    randombytes_buf(m.relay.frame + KVRT_XFER_WIRE_HEADER_BYTES + 16, 16);
    atomic_store(&m.relay.inject, 1);
    uint64_t end = txu_now_ms() + 3000;
    while (txu_now_ms() < end && (!atomic_load(&m.relay.done) ||
                                  txu_stat(m.ctx, "xfer.1.refused") == refused0))
        usleep(10000);
    cr_assert(atomic_load(&m.relay.done), "the relay never injected");
    usleep(200000);
    cr_assert(!contains(m.dst, REGION, "INJECTED-BY-MITM"),
              "a frame forged on the path landed in registered memory");
    cr_assert_gt(txu_stat(m.ctx, "xfer.1.refused"), refused0,
                 "the forged frame was not refused");
    mitm_down(&m);
}

Test(xfer_mitm, byte_flipped_in_flight_fails_the_write_and_lands_nothing, .timeout = 30)
{
    mitm_t m;
    mitm_up(&m);
    uint64_t refused0 = txu_stat(m.ctx, "xfer.1.refused");
    /* One 256 KiB write is one frame: the 1000th byte from now is in its
     * payload. */
    atomic_store(&m.relay.flip_at, 1000);
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = m.ls, .remote = m.rem,
                         .remote_offset = 65536, .length = 256u << 10};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(m.ctx, kvrt_xfer_post(m.peer, &op, 1, NULL, &req));
    kvrt_status_t st = kvrt_xfer_request_wait(req, 5000);
    ASSERT_OK(m.ctx, kvrt_xfer_request_release(req));
    cr_assert(atomic_load(&m.relay.done), "the relay never flipped a byte");
    cr_assert_neq(st, KVRT_OK, "an altered write was reported as done");
    cr_assert_neq(st, KVRT_INPROGRESS);
    for (uint32_t i = 0; i < REGION; i++)
        cr_assert_eq(m.dst[i], 0, "byte %u of the altered frame landed", i);
    cr_assert_gt(txu_stat(m.ctx, "xfer.1.refused"), refused0);
    mitm_down(&m);
}
