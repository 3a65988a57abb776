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

/* Seals `count` READ_REQs of `length` bytes each, back to back over the
 * first `span` bytes of region `id` (again from 0 past its end); returns
 * the bytes sealed into buf. */
static inline size_t txf_seal_reads(txr_t *r, uint8_t *buf, size_t capacity, uint32_t id,
                                    uint32_t count, uint64_t length, uint64_t span)
{
    size_t at = 0;
    for (uint32_t i = 0; i < count; i++)
        txf_seal(r, buf, capacity, &at,
                 (kvrt_xfer_wire_header_t){.type = KVRT_XFER_WIRE_READ_REQ, .region = id,
                                           .tag = i, .offset = (uint64_t)i * length % span,
                                           .length = length},
                 NULL);
    return at;
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

/* An agent on 127.0.0.1 (TCP, 5 s request timeout, the test key, plus
 * what `extra` sets by its field_mask) with `bytes` of memory registered
 * for remote read and write. */
typedef struct txf_victim {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *agent;
    uint8_t *mem;
    kvrt_xfer_region_t *rw;  /* NULL once deregistered */
} txf_victim_t;

static inline void txf_victim_up(txf_victim_t *v, kvrt_xfer_agent_params_t extra, uint32_t bytes)
{
    v->ctx = txu_ctx();
    extra.field_mask |= KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_TIMEOUT;
    extra.cluster_key = test_xfer_key;
    extra.cluster_key_bytes = 32;
    extra.backend = KVRT_XFER_BACKEND_TCP;
    extra.default_timeout_ms = 5000;
    ASSERT_OK(v->ctx, kvrt_xfer_agent_create(v->ctx, &extra, &v->agent));
    v->mem = aligned_alloc(4096, bytes);
    txu_fill(v->mem, bytes, 11);
    v->rw = txu_register(v->ctx, v->agent, v->mem, bytes,
                         KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE);
}

static inline void txf_victim_down(txf_victim_t *v)
{
    if (v->rw)
        ASSERT_OK(v->ctx, kvrt_xfer_deregister(v->rw));
    ASSERT_OK(v->ctx, kvrt_xfer_agent_destroy(v->agent));
    kvrt_ctx_destroy(v->ctx);
    free(v->mem);
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
