/*
 * test_core_host_memory.c - the context's host memory: nothing mapped until
 * first use, alignment, first-fit reuse, regions returned when a large
 * allocation is freed, region lookup.
 */
#include <stdint.h>
#include <string.h>

#include "core/core.h"
#include "test_helpers.h"

#define MIB ((size_t)1 << 20)

static kvrt_ctx_t *small_region_ctx(void)
{
    kvrt_ctx_params_t p = {.field_mask = KVRT_CTX_PARAM_HOST_REGION_BYTES |
                                         KVRT_CTX_PARAM_HUGEPAGES,
                           .host_region_bytes = 4 * MIB,
                           .hugepages = KVRT_HUGEPAGE_OFF};
    kvrt_ctx_t *ctx = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(&p, &ctx));
    return ctx;
}

static void usage(kvrt_ctx_t *ctx, uint64_t *regions, uint64_t *bytes)
{
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "ctx.host.regions", regions));
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "ctx.host.mapped_bytes", bytes));
}

Test(core_host_memory, a_new_context_maps_nothing)
{
    kvrt_ctx_t *ctx = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(NULL, &ctx));
    uint64_t regions = 1, bytes = 1;
    usage(ctx, &regions, &bytes);
    cr_assert_eq(regions, 0, "a context with no host pool must not map a region");
    cr_assert_eq(bytes, 0);
    kvrt_ctx_destroy(ctx);
}

Test(core_host_memory, alignment_and_first_fit_reuse)
{
    kvrt_ctx_t *ctx = small_region_ctx();
    char *a = kvrt_host_alloc(ctx, 1000);
    char *b = kvrt_host_alloc(ctx, 1000);
    char *big = kvrt_host_alloc(ctx, 2 * MIB);
    cr_assert(a && b && big);
    cr_assert_eq((uintptr_t)a % 64, 0);
    cr_assert_eq((uintptr_t)b % 64, 0);
    cr_assert_eq((uintptr_t)big % (2 * MIB), 0);
    cr_assert(b >= a + 1000 || a >= b + 1000, "allocations overlap");
    memset(a, 0xaa, 1000);
    memset(b, 0xbb, 1000);
    memset(big, 0xcc, 2 * MIB);
    cr_assert_eq((unsigned char)a[999], 0xaa);
    kvrt_host_free(ctx, a);
    char *again = kvrt_host_alloc(ctx, 500);
    cr_assert_eq(again, a, "the freed gap is reused first");
    uint64_t regions = 0, bytes = 0;
    usage(ctx, &regions, &bytes);
    cr_assert_eq(regions, 1, "all three fit one 4 MiB region");
    cr_assert_eq(bytes, 4 * MIB);
    kvrt_host_free(ctx, again);
    kvrt_host_free(ctx, b);
    kvrt_host_free(ctx, big);
    usage(ctx, &regions, &bytes);
    cr_assert_eq(regions, 1, "an ordinary region stays for reuse");
    kvrt_ctx_destroy(ctx);
}

Test(core_host_memory, a_large_allocation_gets_and_returns_its_own_region)
{
    kvrt_ctx_t *ctx = small_region_ctx();
    char *small = kvrt_host_alloc(ctx, 4096);
    char *large = kvrt_host_alloc(ctx, 9 * MIB);
    cr_assert(small && large);
    uint64_t regions = 0, bytes = 0;
    usage(ctx, &regions, &bytes);
    cr_assert_eq(regions, 2);
    cr_assert_eq(bytes, 4 * MIB + 10 * MIB, "9 MiB rounds up to 10 MiB");
    kvrt_host_region_t region;
    cr_assert(kvrt_host_region_of(ctx, large, 9 * MIB, &region));
    cr_assert_eq((char *)region.base, large);
    cr_assert_eq(region.bytes, 10 * MIB);
    cr_assert(!kvrt_host_region_of(ctx, large, 11 * MIB, NULL), "past the region's end");
    large[9 * MIB - 1] = 1;
    kvrt_host_free(ctx, large);
    usage(ctx, &regions, &bytes);
    cr_assert_eq(regions, 1, "the dedicated region is unmapped with its allocation");
    cr_assert_eq(bytes, 4 * MIB);
    kvrt_host_free(ctx, small);
    kvrt_ctx_destroy(ctx);
}

Test(core_host_memory, many_allocations_fill_regions_without_overlap)
{
    kvrt_ctx_t *ctx = small_region_ctx();
    enum { N = 200 };
    char *p[N];
    for (int i = 0; i < N; i++) {
        size_t bytes = 4096 + (size_t)(i % 7) * 10000;
        p[i] = kvrt_host_alloc(ctx, bytes);
        cr_assert(p[i]);
        memset(p[i], i & 0xff, bytes);
    }
    for (int i = 0; i < N; i += 2)
        kvrt_host_free(ctx, p[i]);
    for (int i = 1; i < N; i += 2)
        cr_assert_eq((unsigned char)p[i][0], (unsigned)(i & 0xff), "freeing neighbours "
                                                                    "kept this intact");
    for (int i = 1; i < N; i += 2)
        kvrt_host_free(ctx, p[i]);
    kvrt_ctx_destroy(ctx);
}
