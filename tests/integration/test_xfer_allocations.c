/*
 * test_xfer_allocations.c - a post on a warm agent allocates nothing: the
 * request, its operations and first batch, the TCP frames, send records and
 * upcall entries all come from space reserved up front (on both agents,
 * sender and receiver). Every malloc, calloc and realloc in the process is
 * counted through the linker's --wrap (see tests/integration/xfer.cmake).
 */
#include <stdatomic.h>
#include <stdlib.h>

#include "test_xfer_util.h"

void *__real_malloc(size_t bytes);
void *__real_calloc(size_t n, size_t bytes);
void *__real_realloc(void *p, size_t bytes);
void *__wrap_malloc(size_t bytes);
void *__wrap_calloc(size_t n, size_t bytes);
void *__wrap_realloc(void *p, size_t bytes);

static atomic_ulong allocations;

void *__wrap_malloc(size_t bytes)
{
    atomic_fetch_add(&allocations, 1);
    return __real_malloc(bytes);
}

void *__wrap_calloc(size_t n, size_t bytes)
{
    atomic_fetch_add(&allocations, 1);
    return __real_calloc(n, bytes);
}

void *__wrap_realloc(void *p, size_t bytes)
{
    atomic_fetch_add(&allocations, 1);
    return __real_realloc(p, bytes);
}

/* Posts `rounds` requests of `nops` 4 KiB WRITEs, each waited on, released
 * and polled; returns the allocations they made. */
static unsigned long posts(kvrt_ctx_t *ctx, kvrt_xfer_agent_t *a, kvrt_xfer_peer_t *peer,
                           const kvrt_xfer_op_t *ops, uint32_t nops, int rounds)
{
    unsigned long before = atomic_load(&allocations);
    for (int i = 0; i < rounds; i++) {
        kvrt_xfer_request_t *req = NULL;
        ASSERT_OK(ctx, kvrt_xfer_post(peer, ops, nops, NULL, &req));
        ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 10000));
        ASSERT_OK(ctx, kvrt_xfer_request_release(req));
        kvrt_xfer_completion_t c;
        uint32_t n = 0;
        ASSERT_OK(ctx, kvrt_xfer_poll(a, &c, 1, &n));
        cr_assert_eq(n, 1);
    }
    return atomic_load(&allocations) - before;
}

Test(xfer_allocations, posts_on_a_warm_agent_allocate_nothing)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = txu_agent(ctx, 5000), *b = txu_agent(ctx, 5000);
    kvrt_xfer_peer_t *peer = txu_connect(ctx, a, b);
    enum { BYTES = 1 << 16, OPS = 8 };
    uint8_t *src = aligned_alloc(4096, BYTES), *dst = aligned_alloc(4096, BYTES);
    txu_fill(src, BYTES, 9);
    kvrt_xfer_region_t *l = txu_register(ctx, a, src, BYTES, 0);
    kvrt_xfer_region_t *r = txu_register(ctx, b, dst, BYTES, KVRT_XFER_REMOTE_WRITE);
    kvrt_xfer_remote_t *rem = txu_import(ctx, peer, r);
    kvrt_xfer_op_t ops[OPS];
    for (uint32_t i = 0; i < OPS; i++)
        ops[i] = (kvrt_xfer_op_t){.opcode = KVRT_XFER_WRITE, .local = l, .remote = rem,
                                  .local_offset = 4096 * i, .remote_offset = 4096 * i,
                                  .length = 4096};
    (void)posts(ctx, a, peer, ops, OPS, 200); /* warm: caches reach their working size */
    cr_assert_eq(posts(ctx, a, peer, ops, 1, 500), 0, "one operation per post");
    cr_assert_eq(posts(ctx, a, peer, ops, 4, 500), 0, "four operations fit inline");
    /* Longer lists allocate their operation array, and nothing else. */
    cr_assert_eq(posts(ctx, a, peer, ops, OPS, 500), 500);
    cr_assert(memcmp(src, dst, 4096 * OPS) == 0);
    ASSERT_OK(ctx, kvrt_xfer_remote_release(rem));
    ASSERT_OK(ctx, kvrt_xfer_deregister(l));
    ASSERT_OK(ctx, kvrt_xfer_deregister(r));
    cr_assert_eq(txu_stat(ctx, "xfer.0.outstanding"), 0);
    ASSERT_OK(ctx, kvrt_xfer_disconnect(peer));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    kvrt_ctx_destroy(ctx);
    free(src);
    free(dst);
}
