/*
 * test_xfer_mitm.c - an attacker on the path who does not hold the cluster
 * key. A relay thread forwards every byte between two agents, so the
 * handshake succeeds through it; then it injects a frame of its own, or
 * flips a byte of a frame in flight. Every frame after the handshake is
 * authenticated: the forged or altered frame is refused, the connection
 * closed, and no byte of it reaches registered memory.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test_xfer_util.h"
#include "xfer/sidechannel.h"
#include "xfer/tcp/wire.h"

#define RELAY_PAIRS 16

typedef struct relay {
    int listen_fd;
    kvrt_xfer_addr_t target;
    char address[96];
    pthread_t thread;
    atomic_bool stop;
    /* What to do to the client -> server bytes of the first pair. */
    atomic_int inject;            /* 1: write `frame` once, at a frame boundary */
    uint8_t frame[KVRT_XFER_WIRE_HEADER_BYTES + 16 + 16]; /* header, payload, tag */
    atomic_long flip_at;          /* >= 0: flip that many bytes further on */
    atomic_int done;              /* the injection or flip happened */
    int client[RELAY_PAIRS], server[RELAY_PAIRS];
    uint32_t pairs;
} relay_t;

static void write_fully(int fd, const uint8_t *p, size_t n)
{
    uint64_t end = txu_now_ms() + 3000;
    while (n > 0 && txu_now_ms() < end) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void *relay_main(void *arg)
{
    relay_t *r = arg;
    static uint8_t buf[1 << 16];
    while (!atomic_load(&r->stop)) {
        struct pollfd p[1 + 2 * RELAY_PAIRS];
        p[0] = (struct pollfd){.fd = r->listen_fd, .events = POLLIN};
        for (uint32_t i = 0; i < r->pairs; i++) {
            p[1 + 2 * i] = (struct pollfd){.fd = r->client[i], .events = POLLIN};
            p[2 + 2 * i] = (struct pollfd){.fd = r->server[i], .events = POLLIN};
        }
        if (atomic_load(&r->inject) == 1 && r->pairs > 0) {
            write_fully(r->server[0], r->frame, sizeof(r->frame));
            atomic_store(&r->inject, 0);
            atomic_store(&r->done, 1);
        }
        if (poll(p, 1 + 2 * r->pairs, 20) <= 0)
            continue;
        if ((p[0].revents & POLLIN) && r->pairs < RELAY_PAIRS) {
            int c = accept(r->listen_fd, NULL, NULL);
            int s = -1;
            if (c >= 0 && kvrt_xfer_sc_dial(&r->target, kvrt_now_ns() + 2000000000ull, &s) ==
                              KVRT_OK) {
                r->client[r->pairs] = c;
                r->server[r->pairs] = s;
                r->pairs++;
            } else if (c >= 0) {
                close(c);
            }
        }
        for (uint32_t i = 0; i < r->pairs; i++) {
            for (int dir = 0; dir < 2; dir++) {
                struct pollfd *q = &p[1 + 2 * i + dir];
                if (q->fd < 0 || !(q->revents & (POLLIN | POLLHUP | POLLERR)))
                    continue;
                int from = dir ? r->server[i] : r->client[i];
                int to = dir ? r->client[i] : r->server[i];
                ssize_t n = recv(from, buf, sizeof(buf), MSG_DONTWAIT);
                if (n <= 0) {
                    if (n < 0 && (errno == EAGAIN || errno == EINTR))
                        continue;
                    shutdown(to, SHUT_WR);
                    continue;
                }
                long at = dir == 0 ? atomic_load(&r->flip_at) : -1;
                if (at >= 0 && at < n) {
                    buf[at] ^= 0x01;
                    atomic_store(&r->flip_at, -1);
                    atomic_store(&r->done, 1);
                } else if (at >= n) {
                    atomic_store(&r->flip_at, at - n);
                }
                write_fully(to, buf, (size_t)n);
            }
        }
    }
    return NULL;
}

static void relay_start(relay_t *r, kvrt_ctx_t *ctx, kvrt_xfer_agent_t *target)
{
    memset(r, 0, sizeof(*r));
    atomic_store(&r->flip_at, -1);
    char text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(target, text, sizeof(text)));
    cr_assert_eq(kvrt_xfer_addr_parse(text, &r->target), KVRT_OK);
    kvrt_xfer_addr_t any, bound;
    cr_assert_eq(kvrt_xfer_addr_parse("127.0.0.1:0", &any), KVRT_OK);
    cr_assert_eq(kvrt_xfer_sc_listen(&any, &bound, &r->listen_fd), KVRT_OK);
    kvrt_xfer_addr_format(&bound, r->address, sizeof(r->address));
    cr_assert_eq(pthread_create(&r->thread, NULL, relay_main, r), 0);
}

static void relay_stop(relay_t *r)
{
    atomic_store(&r->stop, true);
    pthread_join(r->thread, NULL);
    for (uint32_t i = 0; i < r->pairs; i++) {
        close(r->client[i]);
        close(r->server[i]);
    }
    close(r->listen_fd);
}

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
