/*
 * test_core_abi_growth.c - output structs that grow without breaking
 * callers (docs/abi.md, "Output structs"): the library writes exactly the
 * size the caller's header knows, refuses less than the 1.0 struct, and
 * zeroes what a newer caller's struct has beyond its own.
 */
#include <stddef.h>
#include <string.h>

#include "test_helpers.h"

static kvrt_ctx_t *ctx;
static kvrt_pool_t *pool;
static kvrt_cache_t *cache;

static void setup(void)
{
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    pool = test_pool(ctx, 64, 16);
    ASSERT_OK(ctx, kvrt_cache_create(pool, NULL, &cache));
}

static void teardown(void) { kvrt_ctx_destroy(ctx); }

TestSuite(core_abi_growth, .init = setup, .fini = teardown);

/* A caller struct with room past the library's, filled with a sentinel. */
typedef struct {
    unsigned char bytes[sizeof(kvrt_cache_stats_t) + sizeof(kvrt_pool_info_t) + 64];
} oversized_t;

Test(core_abi_growth, pool_info_writes_exactly_the_callers_size)
{
    int32_t blocks[3];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 3, blocks));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info)); /* the inline wrapper */
    cr_assert_eq(info.used_blocks, 3);
    cr_assert_eq(info.num_blocks, 64);

    /* An older caller knowing fields up to live_tables only: refused, as
     * the 1.0 struct is the smallest there is, and nothing is written. */
    oversized_t buf;
    memset(&buf, 0xa5, sizeof(buf));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_pool_info_sized(pool, offsetof(kvrt_pool_info_t, tokens_per_block),
                                       (kvrt_pool_info_t *)&buf));
    cr_assert_eq(buf.bytes[0], 0xa5);

    /* A newer caller, whose struct is longer: the library's part is
     * written, the rest zeroed. */
    ASSERT_OK(ctx, kvrt_pool_info_sized(pool, sizeof(buf), (kvrt_pool_info_t *)&buf));
    cr_assert_eq(memcmp(&buf, &info, sizeof(info)), 0);
    for (size_t i = sizeof(info); i < sizeof(buf); i++)
        cr_assert_eq(buf.bytes[i], 0, "byte %zu past the library's struct not zeroed", i);

    /* The exact size writes not a byte more. */
    memset(&buf, 0xa5, sizeof(buf));
    ASSERT_OK(ctx, kvrt_pool_info_sized(pool, sizeof(info), (kvrt_pool_info_t *)&buf));
    cr_assert_eq(memcmp(&buf, &info, sizeof(info)), 0);
    cr_assert_eq(buf.bytes[sizeof(info)], 0xa5);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_info_sized(pool, sizeof(info), NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_info_sized(NULL, sizeof(info), &info));
    ASSERT_OK(ctx, kvrt_pool_free(pool, 3, blocks));
}

Test(core_abi_growth, cache_stats_writes_exactly_the_callers_size)
{
    int32_t hits[4];
    int32_t tokens[64] = {0};
    kvrt_cache_match_t m;
    ASSERT_OK(ctx, kvrt_cache_match(cache, tokens, 64, NULL, 4, hits, NULL, &m));
    kvrt_cache_stats_t stats;
    ASSERT_OK(ctx, kvrt_cache_stats(cache, &stats));
    cr_assert_eq(stats.queries, 1);
    cr_assert_eq(stats.query_tokens, 64);

    oversized_t buf;
    memset(&buf, 0xa5, sizeof(buf));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_cache_stats_sized(cache, offsetof(kvrt_cache_stats_t, load_factor),
                                         (kvrt_cache_stats_t *)&buf));
    cr_assert_eq(buf.bytes[0], 0xa5);
    ASSERT_OK(ctx, kvrt_cache_stats_sized(cache, sizeof(buf), (kvrt_cache_stats_t *)&buf));
    cr_assert_eq(memcmp(&buf, &stats, sizeof(stats)), 0);
    for (size_t i = sizeof(stats); i < sizeof(buf); i++)
        cr_assert_eq(buf.bytes[i], 0);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_stats_sized(cache, sizeof(stats), NULL));
}
