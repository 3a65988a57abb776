/*
 * test_xfer_relay.h - an attacker on the path, for the transfer engine's
 * security tests: a thread that forwards every byte between dialers and an
 * agent (so the handshake passes through it, as it does through any relay
 * without the key), and on request injects a frame of its own into the
 * first dialer's stream or flips one bit of it, counted in bytes from the
 * start.
 */
#ifndef KVRT_TEST_XFER_RELAY_H
#define KVRT_TEST_XFER_RELAY_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
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

static inline void write_fully(int fd, const uint8_t *p, size_t n)
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

static inline void *relay_main(void *arg)
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

static inline void relay_start(relay_t *r, kvrt_ctx_t *ctx, kvrt_xfer_agent_t *target)
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

static inline void relay_stop(relay_t *r)
{
    atomic_store(&r->stop, true);
    pthread_join(r->thread, NULL);
    for (uint32_t i = 0; i < r->pairs; i++) {
        close(r->client[i]);
        close(r->server[i]);
    }
    close(r->listen_fd);
}

#endif /* KVRT_TEST_XFER_RELAY_H */
