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

typedef kvrt_status_t (*fill_fn)(size_t size, void *out);

/* The rules for one sized output whose library struct is lib_size bytes
 * and equals `expected`: a size short of the 1.0 struct (too_small) is
 * refused with nothing written; a longer caller struct gets the library's
 * bytes and zeroes; the exact size writes not a byte more. */
static void check_sized_output(fill_fn fill, size_t too_small, const void *expected,
                               size_t lib_size)
{
    oversized_t buf;
    memset(&buf, 0xa5, sizeof(buf));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, fill(too_small, &buf));
    cr_assert_eq(buf.bytes[0], 0xa5, "a refused call wrote its output");

    ASSERT_OK(ctx, fill(sizeof(buf), &buf));
    cr_assert_eq(memcmp(&buf, expected, lib_size), 0);
    for (size_t i = lib_size; i < sizeof(buf); i++)
        cr_assert_eq(buf.bytes[i], 0, "byte %zu past the library's struct not zeroed", i);

    memset(&buf, 0xa5, sizeof(buf));
    ASSERT_OK(ctx, fill(lib_size, &buf));
    cr_assert_eq(memcmp(&buf, expected, lib_size), 0);
    cr_assert_eq(buf.bytes[lib_size], 0xa5, "wrote past the caller's size");
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, fill(lib_size, NULL));
}

static kvrt_status_t fill_pool_info(size_t size, void *out)
{
    return kvrt_pool_info_sized(pool, size, out);
}

static kvrt_status_t fill_cache_stats(size_t size, void *out)
{
    return kvrt_cache_stats_sized(cache, size, out);
}

Test(core_abi_growth, pool_info_writes_exactly_the_callers_size)
{
    int32_t blocks[3];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 3, blocks));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info)); /* the inline wrapper */
    cr_assert_eq(info.used_blocks, 3);
    cr_assert_eq(info.num_blocks, 64);
    /* An older caller knowing fields up to live_tables only: no such 1.0
     * struct exists, so it is refused. */
    check_sized_output(fill_pool_info, offsetof(kvrt_pool_info_t, tokens_per_block), &info,
                       sizeof(info));
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
    check_sized_output(fill_cache_stats, offsetof(kvrt_cache_stats_t, load_factor), &stats,
                       sizeof(stats));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_stats_sized(NULL, sizeof(stats), &stats));
}
