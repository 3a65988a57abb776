/*
 * test_kv_pool.c - block pool semantics: the null block, all-or-nothing
 * allocation, reference counts, frees that change nothing when wrong,
 * watermarks, host memory.
 */
#include <stdio.h>
#include <string.h>

#include "test_helpers.h"

static kvrt_ctx_t *ctx;
static void setup(void) { cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK); }
static void teardown(void) { kvrt_ctx_destroy(ctx); }
TestSuite(kv_pool, .init = setup, .fini = teardown);

static kvrt_pool_info_t info_of(kvrt_pool_t *pool)
{
    kvrt_pool_info_t info;
    cr_assert_eq(kvrt_pool_info(pool, &info), KVRT_OK);
    return info;
}

Test(kv_pool, null_block_is_never_handed_out)
{
    kvrt_pool_t *pool = test_pool(ctx, 9, 16);
    int32_t blocks[8];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 8, blocks));
    for (int i = 0; i < 8; i++)
        cr_assert(blocks[i] >= 1 && blocks[i] <= 8, "block %d", blocks[i]);
    cr_assert_eq(info_of(pool).free_blocks, 0);
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_pool_free(pool, 1, (int32_t[]){KVRT_NULL_BLOCK}));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_pool_ref(pool, 1, (int32_t[]){KVRT_NULL_BLOCK}));
    ASSERT_OK(ctx, kvrt_pool_free(pool, 8, blocks));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
}

Test(kv_pool, allocation_is_all_or_nothing)
{
    kvrt_pool_t *pool = test_pool(ctx, 11, 16);
    int32_t held[7], more[5];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 7, held));
    for (int i = 0; i < 5; i++)
        more[i] = -77;
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_pool_alloc(pool, 4, more));
    for (int i = 0; i < 5; i++)
        cr_assert_eq(more[i], -77, "output written on failure");
    kvrt_pool_info_t info = info_of(pool);
    cr_assert_eq(info.free_blocks, 3);
    cr_assert_eq(info.used_blocks, 7);
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 3, more));
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_pool_alloc(pool, 1, more + 3));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
}

Test(kv_pool, references_keep_blocks_until_the_last_free)
{
    kvrt_pool_t *pool = test_pool(ctx, 4, 16);
    int32_t b;
    uint32_t rc = 0;
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 1, &b));
    ASSERT_OK(ctx, kvrt_pool_ref(pool, 1, &b));
    ASSERT_OK(ctx, kvrt_pool_ref(pool, 1, &b));
    ASSERT_OK(ctx, kvrt_pool_refcount(pool, b, &rc));
    cr_assert_eq(rc, 3);
    /* The same block twice in one call drops two references. */
    ASSERT_OK(ctx, kvrt_pool_free(pool, 2, (int32_t[]){b, b}));
    ASSERT_OK(ctx, kvrt_pool_refcount(pool, b, &rc));
    cr_assert_eq(rc, 1);
    cr_assert_eq(info_of(pool).used_blocks, 1);
    ASSERT_OK(ctx, kvrt_pool_free(pool, 1, &b));
    cr_assert_eq(info_of(pool).free_blocks, 3);
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
}

Test(kv_pool, a_bad_free_list_changes_nothing)
{
    kvrt_pool_t *pool = test_pool(ctx, 8, 16);
    int32_t b[3];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 3, b));
    kvrt_pool_info_t before = info_of(pool);
    /* b[0] freed once validly, then b[1] twice though it holds one ref. */
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_pool_free(pool, 3, (int32_t[]){b[0], b[1], b[1]}));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_pool_free(pool, 2, (int32_t[]){b[2], 99}));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_pool_free(pool, 2, (int32_t[]){b[2], -3}));
    kvrt_pool_info_t after = info_of(pool);
    cr_assert_eq(memcmp(&before, &after, sizeof(before)), 0);
    for (int i = 0; i < 3; i++) {
        uint32_t rc = 0;
        ASSERT_OK(ctx, kvrt_pool_refcount(pool, b[i], &rc));
        cr_assert_eq(rc, 1);
    }
    /* Referencing a free block is refused too. */
    int32_t free_block = 7;
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_pool_ref(pool, 1, &free_block));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    ASSERT_OK(ctx, kvrt_pool_free(pool, 3, b));
}

Test(kv_pool, watermark_guards_admission)
{
    kvrt_pool_params_t p = {.field_mask = KVRT_POOL_PARAM_WATERMARK, .layout = test_layout(16),
                            .num_blocks = 101, .watermark_blocks = 10};
    kvrt_pool_t *pool = NULL;
    ASSERT_OK(ctx, kvrt_pool_create(ctx, &p, &pool));
    int ok = 0;
    ASSERT_OK(ctx, kvrt_pool_above_watermark(pool, 90, &ok));
    cr_assert(ok);
    ASSERT_OK(ctx, kvrt_pool_above_watermark(pool, 91, &ok));
    cr_assert(!ok);
    /* The default watermark is 1% of the pool. */
    p.field_mask = 0;
    p.num_blocks = 1000;
    kvrt_pool_t *dflt = NULL;
    ASSERT_OK(ctx, kvrt_pool_create(ctx, &p, &dflt));
    cr_assert_eq(info_of(dflt).watermark_blocks, 10);
}

Test(kv_pool, bad_parameters_are_refused_with_a_message)
{
    kvrt_pool_t *pool = NULL;
    kvrt_pool_params_t p = {.layout = test_layout(16), .num_blocks = 1};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_create(ctx, &p, &pool));
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "num_blocks 1"), "%s", kvrt_ctx_last_error(ctx));
    p.num_blocks = 16;
    p.layout.tokens_per_block = 12;
    ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_pool_create(ctx, &p, &pool));
    p.layout = test_layout(16);
    p.field_mask = 1u << 30;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_create(ctx, &p, &pool));
    p.field_mask = KVRT_POOL_PARAM_WATERMARK;
    p.watermark_blocks = 16;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_create(ctx, &p, &pool));
    p.field_mask = KVRT_POOL_PARAM_BASE;
    p.base = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_create(ctx, &p, &pool));
    p.field_mask = KVRT_POOL_PARAM_MAX_TABLES;
    p.max_tables = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_create(ctx, &p, &pool));
    /* 2^31-1 blocks of 1 GiB each overflows 64-bit bytes. */
    p = (kvrt_pool_params_t){.layout = {.num_layers = 1024, .num_kv_heads = 1024,
                                        .head_dim = 1024, .tokens_per_block = 4096},
                             .num_blocks = 0x7fffffff};
    ASSERT_STATUS(KVRT_ERR_OVERFLOW, kvrt_pool_create(ctx, &p, &pool));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_create(ctx, NULL, &pool));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_create(NULL, &p, &pool));
    cr_assert_null(pool);
    /* Calls on a NULL pool fail cleanly. */
    int32_t b;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_alloc(NULL, 1, &b));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_free(NULL, 1, &b));
    ASSERT_STATUS(KVRT_OK, kvrt_pool_destroy(NULL));
    kvrt_pool_t *real = test_pool(ctx, 4, 16);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_alloc(real, 0, &b));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_alloc(real, 1, NULL));
}

Test(kv_pool, host_memory_is_aligned_writable_and_in_one_region)
{
    kvrt_kv_layout_t l = {.num_layers = 4, .num_kv_heads = 4, .head_dim = 64, .tokens_per_block = 16};
    kvrt_pool_params_t p = {.layout = l, .num_blocks = 256};
    kvrt_pool_t *pool = NULL;
    ASSERT_OK(ctx, kvrt_pool_create(ctx, &p, &pool));
    kvrt_pool_info_t info = info_of(pool);
    cr_assert(info.host_memory);
    cr_assert_eq((uintptr_t)info.base % (2u << 20), 0, "pool base not 2 MiB aligned");
    /* Write a distinct byte into every page, read it back. */
    for (int32_t b = 1; b < 256; b += 17)
        for (uint32_t layer = 0; layer < 4; layer++)
            for (int h = 0; h < 2; h++) {
                void *addr;
                ASSERT_OK(ctx, kvrt_pool_page_address(pool, b, layer, (kvrt_kv_half_t)h, &addr));
                memset(addr, (b + (int)layer * 2 + h) & 0xff, (size_t)info.block_bytes / 8);
            }
    for (int32_t b = 1; b < 256; b += 17)
        for (uint32_t layer = 0; layer < 4; layer++)
            for (int h = 0; h < 2; h++) {
                void *addr;
                ASSERT_OK(ctx, kvrt_pool_page_address(pool, b, layer, (kvrt_kv_half_t)h, &addr));
                cr_assert_eq(((unsigned char *)addr)[info.block_bytes / 8 - 1],
                             (b + (int)layer * 2 + h) & 0xff);
            }
}

static int hugepages_reserved(void)
{
    FILE *f = fopen("/proc/sys/vm/nr_hugepages", "r");
    int n = 0;
    if (f) {
        if (fscanf(f, "%d", &n) != 1)
            n = 0;
        fclose(f);
    }
    return n;
}

Test(kv_pool, hugepage_modes)
{
    /* OFF always works; REQUIRE works only with reserved hugetlb pages and
     * otherwise fails cleanly with NO_MEMORY. */
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_HUGEPAGES | KVRT_CTX_PARAM_HOST_REGION_BYTES |
                                          KVRT_CTX_PARAM_LOG_LEVEL,
                            .hugepages = KVRT_HUGEPAGE_OFF, .host_region_bytes = 4u << 20,
                            .log_level = KVRT_LOG_ERROR};
    kvrt_ctx_t *off = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(&cp, &off));
    kvrt_pool_params_t p = {.layout = test_layout(16), .num_blocks = 64};
    kvrt_pool_t *pool = NULL;
    ASSERT_OK(off, kvrt_pool_create(off, &p, &pool));
    cr_assert_eq(info_of(pool).hugepages, 0);
    kvrt_ctx_destroy(off);

    cp.hugepages = KVRT_HUGEPAGE_REQUIRE;
    cp.field_mask |= KVRT_CTX_PARAM_LOG_FN;
    cp.log_fn = NULL; /* NULL keeps the stderr default */
    kvrt_ctx_t *req = NULL;
    /* Host memory is mapped on first use, so the context itself is made. */
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(&cp, &req));
    pool = NULL;
    if (hugepages_reserved() < 8) {
        /* The host pool's region needs hugetlb pages. */
        ASSERT_STATUS(KVRT_ERR_NO_MEMORY, kvrt_pool_create(req, &p, &pool));
        cr_assert_null(pool);
        kvrt_ctx_destroy(req);
        return;
    }
    ASSERT_OK(req, kvrt_pool_create(req, &p, &pool));
    cr_assert_eq(info_of(pool).hugepages, 1);
    kvrt_ctx_destroy(req);
}

Test(kv_pool, destroy_frees_live_tables_and_their_blocks)
{
    /* No cache attached: destroy frees live tables and their blocks. */
    kvrt_pool_t *pool = test_pool(ctx, 32, 16);
    kvrt_table_id_t t;
    ASSERT_OK(ctx, kvrt_table_create(pool, &t));
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 100, NULL, NULL, NULL));
    ASSERT_OK(ctx, kvrt_pool_destroy(pool));
    uint64_t v;
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND, kvrt_ctl_get_u64(ctx, "pool.0.free", &v));
}
