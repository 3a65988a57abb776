/*
 * test_xfer_flood.h - a hostile authenticated peer that sends without
 * reading: frames are sealed in bulk (test_xfer_raw.h's keys) and written
 * without blocking, so a test sees when the agent stops reading instead of
 * hanging; plus the process's resident memory and bounded waits on ctl
 * nodes.
 */
#ifndef KVRT_TEST_XFER_FLOOD_H
#define KVRT_TEST_XFER_FLOOD_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "test_xfer_raw.h"

/* The handshake on a connected socket `fd` (MAC frames). */
static inline txr_t txf_handshake(int fd, const char *name)
{
    txr_t r = {.fd = fd};
    kvrt_xfer_key_t key;
    cr_assert_eq(kvrt_xfer_key_derive(test_xfer_key, 32, &key), KVRT_OK);
    kvrt_xfer_hello_t hello = {.version = KVRT_XFER_SC_VERSION, .backend = KVRT_XFER_BACKEND_TCP,
                               .protection = KVRT_XFER_PROTECT_MAC};
    snprintf(hello.name, sizeof(hello.name), "%s", name);
    randombytes_buf(hello.session, sizeof(hello.session));
    kvrt_xfer_sc_keys_t keys;
    cr_assert_eq(kvrt_xfer_sc_auth_client(r.fd, &key, &hello, NULL, &keys, txr_deadline()),
                 KVRT_OK);
    memcpy(r.tx.key, keys.tx, sizeof(r.tx.key));
    memcpy(r.rx.key, keys.rx, sizeof(r.rx.key));
    return r;
}

/* A peer that keeps what the agent sends it unread: a receive buffer as
 * small as the kernel allows, so the agent's replies back up in the agent
 * rather than in the kernel. */
static inline txr_t txf_connect_silent(kvrt_ctx_t *ctx, kvrt_xfer_agent_t *a, const char *name)
{
    char text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(a, text, sizeof(text)));
    txr_t r = txr_connect(text, name);
    int small = 4096;
    setsockopt(r.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    setsockopt(r.fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    return r;
}

/* Appends one sealed frame to buf at *at (capacity checked). */
static inline void txf_seal(txr_t *r, uint8_t *buf, size_t capacity, size_t *at,
                            kvrt_xfer_wire_header_t h, const void *payload)
{
    uint64_t n = payload ? h.length : 0;
    cr_assert_leq(*at + KVRT_XFER_WIRE_HEADER_BYTES + n + KVRT_XFER_FRAME_TAG_BYTES, capacity);
    uint8_t *hdr = buf + *at;
    kvrt_xfer_wire_encode(&h, hdr);
    if (n)
        memcpy(hdr + KVRT_XFER_WIRE_HEADER_BYTES, payload, n);
    kvrt_xfer_frame_seal(&r->tx, KVRT_XFER_PROTECT_MAC, hdr, hdr + KVRT_XFER_WIRE_HEADER_BYTES,
                         NULL, n, hdr + KVRT_XFER_WIRE_HEADER_BYTES + n);
    *at += KVRT_XFER_WIRE_HEADER_BYTES + n + KVRT_XFER_FRAME_TAG_BYTES;
}

/* Writes buf without blocking for longer than stall_ms at a time. Returns
 * the bytes written: all of them, or fewer once the agent has stopped
 * taking them for stall_ms (or the connection broke). */
static inline size_t txf_write(int fd, const uint8_t *buf, size_t bytes, uint32_t stall_ms)
{
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    size_t done = 0;
    uint64_t idle_since = txu_now_ms();
    while (done < bytes) {
        ssize_t n = send(fd, buf + done, bytes - done, MSG_NOSIGNAL);
        if (n > 0) {
            done += (size_t)n;
            idle_since = txu_now_ms();
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            break;
        if (txu_now_ms() - idle_since >= stall_ms)
            break;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        (void)poll(&p, 1, 20);
    }
    fcntl(fd, F_SETFL, flags);
    return done;
}

/* Resident memory of this process, bytes. */
static inline uint64_t txf_rss(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    cr_assert(f && fscanf(f, "%lu %lu", &size, &resident) == 2);
    fclose(f);
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Waits (bounded) until ctl node `name` reads at least `want`; returns
 * what it read last. */
static inline uint64_t txf_stat_reaches(kvrt_ctx_t *ctx, const char *name, uint64_t want,
                                        uint32_t timeout_ms)
{
    uint64_t end = txu_now_ms() + timeout_ms, v;
    while ((v = txu_stat(ctx, name)) < want && txu_now_ms() < end) {
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    return v;
}

/* Reads and discards until the agent closes the connection; true when it
 * did within timeout_ms. */
static inline bool txf_closed_by_agent(int fd, uint32_t timeout_ms)
{
    static uint8_t sink[1 << 16];
    uint64_t end = txu_now_ms() + timeout_ms;
    while (txu_now_ms() < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        ssize_t n = recv(fd, sink, sizeof(sink), 0);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
            return true;
    }
    return false;
}

#endif /* KVRT_TEST_XFER_FLOOD_H */
