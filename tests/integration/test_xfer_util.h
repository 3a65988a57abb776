/*
 * test_xfer_util.h - fixtures shared by the transfer engine's tests: a
 * context and agent pair on loopback, pools registered for transfer, and
 * bounded waits.
 */
#ifndef KVRT_TEST_XFER_UTIL_H
#define KVRT_TEST_XFER_UTIL_H

#include <criterion/criterion.h>
#include <string.h>
#include <time.h>

#include "core/endian.h"
#include "kvrt/kvrt.h"
#include "test_helpers.h"

static const uint8_t test_xfer_key[32] = "kvrt-test-cluster-key-0123456789";

static inline uint64_t txu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline kvrt_ctx_t *txu_ctx(void)
{
    kvrt_ctx_params_t p = {.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = KVRT_LOG_ERROR};
    kvrt_ctx_t *ctx = NULL;
    cr_assert_eq(kvrt_ctx_create(&p, &ctx), KVRT_OK);
    return ctx;
}

/* An agent on 127.0.0.1 with the test key and `timeout_ms` per request. */
static inline kvrt_xfer_agent_t *txu_agent_key(kvrt_ctx_t *ctx, const uint8_t *key,
                                               uint32_t timeout_ms)
{
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_TIMEOUT |
                      KVRT_XFER_AGENT_PARAM_RECONNECT | KVRT_XFER_AGENT_PARAM_ZEROCOPY,
        .cluster_key = key,
        .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_TCP,
        .default_timeout_ms = timeout_ms,
        .reconnect_initial_ms = 20,
        .reconnect_max_ms = 200,
        .reconnect_attempts = 20,
        /* Low, so that the zero-copy send path runs in the tests too. */
        .zerocopy_threshold = 256u << 10};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    return a;
}

static inline kvrt_xfer_agent_t *txu_agent(kvrt_ctx_t *ctx, uint32_t timeout_ms)
{
    return txu_agent_key(ctx, test_xfer_key, timeout_ms);
}

static inline kvrt_xfer_peer_t *txu_connect(kvrt_ctx_t *ctx, kvrt_xfer_agent_t *from,
                                            kvrt_xfer_agent_t *to)
{
    char addr[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(to, addr, sizeof(addr)));
    kvrt_xfer_peer_t *peer = NULL;
    ASSERT_OK(ctx, kvrt_xfer_connect(from, addr, 5000, &peer));
    return peer;
}

/* A pool of `blocks` blocks of a 4-layer layout, registered for remote
 * read and write. */
static inline kvrt_pool_t *txu_pool(kvrt_ctx_t *ctx, uint32_t blocks, kvrt_kv_order_t order,
                                    kvrt_kv_format_t format)
{
    kvrt_pool_params_t p = {.field_mask = KVRT_POOL_PARAM_WATERMARK,
                            .layout = {.field_mask = KVRT_LAYOUT_FIELD_ORDER |
                                                     KVRT_LAYOUT_FIELD_FORMAT,
                                       .num_layers = 4, .num_kv_heads = 2, .head_dim = 64,
                                       .tokens_per_block = 16, .order = order,
                                       .format = format},
                            .num_blocks = blocks,
                            .watermark_blocks = 0};
    kvrt_pool_t *pool = NULL;
    ASSERT_OK(ctx, kvrt_pool_create(ctx, &p, &pool));
    return pool;
}

static inline kvrt_xfer_region_t *txu_register_pool(kvrt_ctx_t *ctx, kvrt_xfer_agent_t *a,
                                                    kvrt_pool_t *pool)
{
    kvrt_xfer_register_params_t rp = {
        .field_mask = KVRT_XFER_REGISTER_PARAM_POOL | KVRT_XFER_REGISTER_PARAM_ACCESS,
        .pool = pool,
        .access = KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE};
    kvrt_xfer_region_t *r = NULL;
    ASSERT_OK(ctx, kvrt_xfer_register(a, &rp, &r));
    return r;
}

static inline kvrt_xfer_region_t *txu_register(kvrt_ctx_t *ctx, kvrt_xfer_agent_t *a,
                                               void *base, uint64_t bytes, uint32_t access)
{
    kvrt_xfer_register_params_t rp = {.field_mask = KVRT_XFER_REGISTER_PARAM_ACCESS,
                                      .address = base,
                                      .length = bytes,
                                      .access = access};
    kvrt_xfer_region_t *r = NULL;
    ASSERT_OK(ctx, kvrt_xfer_register(a, &rp, &r));
    return r;
}

/* Imports region `r` of one agent into `peer` of another. */
static inline kvrt_xfer_remote_t *txu_import(kvrt_ctx_t *ctx, kvrt_xfer_peer_t *peer,
                                             const kvrt_xfer_region_t *r)
{
    uint8_t desc[KVRT_XFER_DESCRIPTOR_MAX];
    size_t len = 0;
    ASSERT_OK(ctx, kvrt_xfer_region_descriptor(r, desc, sizeof(desc), &len));
    kvrt_xfer_remote_t *rem = NULL;
    ASSERT_OK(ctx, kvrt_xfer_import(peer, desc, len, &rem));
    return rem;
}

/* A registered region's wire id, read from its descriptor (bytes 8..11). */
static inline uint32_t txu_region_id(kvrt_ctx_t *ctx, const kvrt_xfer_region_t *r)
{
    uint8_t desc[KVRT_XFER_DESCRIPTOR_MAX];
    size_t len = 0;
    ASSERT_OK(ctx, kvrt_xfer_region_descriptor(r, desc, sizeof(desc), &len));
    return kvrt_load_le32(desc + 8);
}

static inline uint64_t txu_stat(kvrt_ctx_t *ctx, const char *name)
{
    uint64_t v = 0;
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, name, &v));
    return v;
}

/* Waits (bounded) until the u64 ctl node `name` reads 0 and returns what it
 * reads last. A request completes on its sender only when the peer's answer
 * arrives, which may be after the peer already acted on it (a notification
 * is queued there before its acknowledgement travels back). */
static inline uint64_t txu_stat_drained(kvrt_ctx_t *ctx, const char *name, uint32_t timeout_ms)
{
    uint64_t end = txu_now_ms() + timeout_ms;
    uint64_t v;
    while ((v = txu_stat(ctx, name)) != 0 && txu_now_ms() < end) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return v;
}

/* Waits (bounded) for a notification on agent; 1 when one arrived. */
static inline int txu_wait_note(kvrt_xfer_agent_t *a, kvrt_xfer_notification_t *out,
                                uint32_t timeout_ms)
{
    uint64_t end = txu_now_ms() + timeout_ms;
    while (txu_now_ms() < end) {
        uint32_t n = 0;
        kvrt_xfer_notifications(a, out, 1, &n);
        if (n == 1)
            return 1;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static inline void txu_fill(uint8_t *p, uint64_t bytes, uint64_t seed)
{
    uint64_t s = seed | 1;
    for (uint64_t i = 0; i < bytes; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        p[i] = (uint8_t)s;
    }
}

#endif /* KVRT_TEST_XFER_UTIL_H */
