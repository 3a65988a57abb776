/*
 * test_kernels_layout.c - the kernels put K/V exactly where kvrt/layout.h
 * and kvrt's pools say it lies: the affine strides the kernels use agree
 * with kvrt_layout_page_offset() for all four arrangements, and a write
 * through slots from a real block table lands at kvrt_pool_page_address().
 */
#include <criterion/criterion.h>

#include "kernels/kv_args.h"
#include "kvrt/block_table.h"
#include "kvrt/pool.h"
#include "test_kernels_oracle.h"

Test(kernels_layout, strides_reproduce_page_offsets_for_every_arrangement)
{
    uint64_t rng = 3;
    for (int trial = 0; trial < 64; trial++) {
        kvrt_kv_layout_t l = oracle_layout(&rng, KVRT_DTYPE_FP16);
        l.format = (kvrt_kv_format_t)(trial & 1);
        l.order = (kvrt_kv_order_t)((trial >> 1) & 1);
        uint32_t num_blocks = 1 + test_rand_below(&rng, 9);
        uint64_t dummy; /* aligned like any allocation */
        kvrt_kv_cache_t cache = {.layout = l, .num_blocks = num_blocks, .base = &dummy};
        kv_geometry_t g;
        cr_assert_eq(kv_geometry_init(NULL, "test", &cache, &g), KVRT_OK);
        for (uint32_t b = 0; b < num_blocks; b++)
            for (uint32_t layer = 0; layer < l.num_layers; layer++)
                for (int half = 0; half < 2; half++) {
                    uint64_t want = 0;
                    cr_assert_eq(kvrt_layout_page_offset(&l, num_blocks, b, layer,
                                                         (kvrt_kv_half_t)half, &want),
                                 KVRT_OK);
                    cr_assert_eq(kv_page_offset(&g, b, layer, (uint64_t)half), want,
                                 "format %d order %d block %u layer %u half %d", l.format,
                                 l.order, b, layer, half);
                }
    }
}

/* Writes one distinct pattern per token through slots from kvrt_table_append
 * and reads each token's rows back at kvrt_pool_page_address(). */
static void check_pool_placement(kvrt_kv_format_t format, kvrt_kv_order_t order)
{
    kvrt_ctx_t *ctx = NULL;
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    kvrt_pool_params_t params = {0};
    params.layout.field_mask = KVRT_LAYOUT_FIELD_FORMAT | KVRT_LAYOUT_FIELD_ORDER;
    params.layout.format = format;
    params.layout.order = order;
    params.layout.num_layers = 3;
    params.layout.num_kv_heads = 2;
    params.layout.head_dim = 64;
    params.layout.tokens_per_block = 16;
    params.num_blocks = 12;
    kvrt_pool_t *pool = NULL;
    cr_assert_eq(kvrt_pool_create(ctx, &params, &pool), KVRT_OK);
    kvrt_pool_info_t info;
    cr_assert_eq(kvrt_pool_info(pool, &info), KVRT_OK);

    kvrt_table_id_t table;
    cr_assert_eq(kvrt_table_create(pool, &table), KVRT_OK);
    enum { TOKENS = 37, ROW = 2 * 64 };
    int64_t slots[TOKENS];
    cr_assert_eq(kvrt_table_append(pool, table, TOKENS, slots, NULL, NULL), KVRT_OK);

    static uint16_t key[TOKENS][ROW], value[TOKENS][ROW];
    for (int t = 0; t < TOKENS; t++)
        for (int e = 0; e < ROW; e++) {
            key[t][e] = (uint16_t)(t * 1000 + e);
            value[t][e] = (uint16_t)(40000 + t * 100 + e);
        }
    kvrt_kv_cache_t cache = {.layout = params.layout, .num_blocks = info.num_blocks,
                             .base = info.base};
    kvrt_kv_rows_t rows = {.layer = 2, .num_tokens = TOKENS, .dtype = KVRT_DTYPE_FP16,
                           .slot_mapping = slots};
    cr_assert_eq(kvrt_cpu_write_kv(ctx, &cache, &rows, key, value), KVRT_OK);

    const int32_t *blocks;
    uint32_t num_blocks;
    cr_assert_eq(kvrt_table_view(pool, table, &blocks, &num_blocks, NULL), KVRT_OK);
    for (int t = 0; t < TOKENS; t++) {
        void *k_page, *v_page;
        cr_assert_eq(kvrt_pool_page_address(pool, blocks[t / 16], 2, KVRT_K, &k_page), KVRT_OK);
        cr_assert_eq(kvrt_pool_page_address(pool, blocks[t / 16], 2, KVRT_V, &v_page), KVRT_OK);
        cr_assert_eq(memcmp((char *)k_page + (t % 16) * ROW * 2, key[t], ROW * 2), 0,
                     "K of token %d", t);
        cr_assert_eq(memcmp((char *)v_page + (t % 16) * ROW * 2, value[t], ROW * 2), 0,
                     "V of token %d", t);
    }
    cr_assert_eq(kvrt_table_destroy(pool, table), KVRT_OK);
    cr_assert_eq(kvrt_pool_verify(pool), KVRT_OK);
    cr_assert_eq(kvrt_pool_info(pool, &info), KVRT_OK);
    cr_assert_eq(info.used_blocks, 0, "no block leaked");
    kvrt_ctx_destroy(ctx);
}

Test(kernels_layout, write_lands_at_pool_page_address_layer_major_separate)
{
    check_pool_placement(KVRT_KV_SEPARATE, KVRT_ORDER_LAYER_MAJOR);
}

Test(kernels_layout, write_lands_at_pool_page_address_layer_major_fused)
{
    check_pool_placement(KVRT_KV_FUSED, KVRT_ORDER_LAYER_MAJOR);
}

Test(kernels_layout, write_lands_at_pool_page_address_block_major_separate)
{
    check_pool_placement(KVRT_KV_SEPARATE, KVRT_ORDER_BLOCK_MAJOR);
}

Test(kernels_layout, write_lands_at_pool_page_address_block_major_fused)
{
    check_pool_placement(KVRT_KV_FUSED, KVRT_ORDER_BLOCK_MAJOR);
}
