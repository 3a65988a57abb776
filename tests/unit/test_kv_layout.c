/*
 * test_kv_layout.c - layout validation and address arithmetic, checked
 * against an oracle that walks each arrangement's tensors in storage order
 * and numbers the pages as it meets them.
 */
#include <stdlib.h>

#include "test_helpers.h"

/* Oracle: enumerate pages in storage order; returns page index or -1. */
static int64_t oracle_page(const kvrt_kv_layout_t *l, uint32_t num_blocks, uint32_t block,
                           uint32_t layer, uint32_t half)
{
    int64_t index = 0;
    int separate = l->format == KVRT_KV_SEPARATE;
    if (l->order == KVRT_ORDER_LAYER_MAJOR) {
        for (uint32_t ly = 0; ly < l->num_layers; ly++) {
            if (separate) {
                for (uint32_t h = 0; h < 2; h++)          /* K tensor, then V tensor */
                    for (uint32_t b = 0; b < num_blocks; b++, index++)
                        if (ly == layer && h == half && b == block)
                            return index;
            } else {
                for (uint32_t b = 0; b < num_blocks; b++) /* [blocks][2][page] */
                    for (uint32_t h = 0; h < 2; h++, index++)
                        if (ly == layer && h == half && b == block)
                            return index;
            }
        }
    } else if (separate) {
        for (uint32_t h = 0; h < 2; h++)                  /* [2][blocks][layers] */
            for (uint32_t b = 0; b < num_blocks; b++)
                for (uint32_t ly = 0; ly < l->num_layers; ly++, index++)
                    if (ly == layer && h == half && b == block)
                        return index;
    } else {
        for (uint32_t b = 0; b < num_blocks; b++)         /* [blocks][layers][2] */
            for (uint32_t ly = 0; ly < l->num_layers; ly++)
                for (uint32_t h = 0; h < 2; h++, index++)
                    if (ly == layer && h == half && b == block)
                        return index;
    }
    return -1;
}

static kvrt_kv_layout_t make_layout(uint32_t layers, uint32_t heads, uint32_t dim, uint32_t tpb,
                                    kvrt_dtype_t dtype, kvrt_kv_format_t format,
                                    kvrt_kv_order_t order)
{
    return (kvrt_kv_layout_t){.field_mask = KVRT_LAYOUT_FIELD_DTYPE | KVRT_LAYOUT_FIELD_FORMAT |
                                            KVRT_LAYOUT_FIELD_ORDER,
                              .num_layers = layers, .num_kv_heads = heads, .head_dim = dim,
                              .tokens_per_block = tpb, .dtype = dtype, .format = format,
                              .order = order};
}

Test(kv_layout, offsets_match_storage_order_oracle)
{
    uint64_t rng = 42;
    const kvrt_dtype_t dtypes[] = {KVRT_DTYPE_FP16, KVRT_DTYPE_BF16, KVRT_DTYPE_FP8_E4M3,
                                   KVRT_DTYPE_FP32};
    for (int trial = 0; trial < 60; trial++) {
        kvrt_kv_layout_t l = make_layout(1 + test_rand_below(&rng, 5), 1 + test_rand_below(&rng, 4),
                                         8 << test_rand_below(&rng, 4), 1u << test_rand_below(&rng, 9),
                                         dtypes[test_rand_below(&rng, 4)],
                                         (kvrt_kv_format_t)(trial & 1),
                                         (kvrt_kv_order_t)((trial >> 1) & 1));
        uint32_t num_blocks = 1 + test_rand_below(&rng, 7);
        uint64_t page = 0, block_bytes = 0;
        ASSERT_STATUS(KVRT_OK, kvrt_layout_page_bytes(&l, &page));
        ASSERT_STATUS(KVRT_OK, kvrt_layout_block_bytes(&l, &block_bytes));
        cr_assert_eq(page, (uint64_t)l.tokens_per_block * l.num_kv_heads * l.head_dim *
                               kvrt_dtype_size(l.dtype));
        cr_assert_eq(block_bytes, page * 2 * l.num_layers);
        for (uint32_t b = 0; b < num_blocks; b++)
            for (uint32_t ly = 0; ly < l.num_layers; ly++)
                for (uint32_t h = 0; h < 2; h++) {
                    uint64_t offset = 0;
                    ASSERT_STATUS(KVRT_OK, kvrt_layout_page_offset(&l, num_blocks, b, ly,
                                                                   (kvrt_kv_half_t)h, &offset));
                    int64_t expected = oracle_page(&l, num_blocks, b, ly, h);
                    cr_assert_eq(offset, (uint64_t)expected * page,
                                 "trial %d block %u layer %u half %u", trial, b, ly, h);
                }
    }
}

/* Extents of one block cover exactly its 2*layers pages, ascending, and no
 * byte of another block. */
Test(kv_layout, block_extents_cover_exactly_the_block)
{
    for (int arrangement = 0; arrangement < 4; arrangement++) {
        kvrt_kv_layout_t l = make_layout(3, 2, 8, 4, KVRT_DTYPE_FP16,
                                         (kvrt_kv_format_t)(arrangement & 1),
                                         (kvrt_kv_order_t)(arrangement >> 1));
        const uint32_t num_blocks = 5;
        uint64_t page = 0;
        kvrt_layout_page_bytes(&l, &page);
        uint32_t pages_total = num_blocks * 2 * l.num_layers;
        int owner[5 * 2 * 3];
        for (uint32_t i = 0; i < pages_total; i++)
            owner[i] = -1;
        for (uint32_t b = 0; b < num_blocks; b++) {
            kvrt_extent_t ext[16];
            uint32_t count = 0;
            ASSERT_STATUS(KVRT_OK, kvrt_layout_block_extents(&l, num_blocks, b, ext, 16, &count));
            uint32_t expected_count = arrangement == 3 ? 1 : arrangement == 2 ? 2
                                      : arrangement == 1 ? 3 : 6;
            cr_assert_eq(count, expected_count, "arrangement %d", arrangement);
            uint64_t covered = 0;
            for (uint32_t e = 0; e < count; e++) {
                if (e > 0)
                    cr_assert_gt(ext[e].offset, ext[e - 1].offset);
                cr_assert_eq(ext[e].offset % page, 0);
                for (uint64_t p = ext[e].offset / page; p < (ext[e].offset + ext[e].length) / page; p++) {
                    cr_assert_eq(owner[p], -1, "page %lu claimed twice", (unsigned long)p);
                    owner[p] = (int)b;
                }
                covered += ext[e].length;
            }
            cr_assert_eq(covered, page * 2 * l.num_layers);
            /* Every page of the block (by the offset function) is inside. */
            for (uint32_t ly = 0; ly < l.num_layers; ly++)
                for (uint32_t h = 0; h < 2; h++) {
                    uint64_t off;
                    kvrt_layout_page_offset(&l, num_blocks, b, ly, (kvrt_kv_half_t)h, &off);
                    cr_assert_eq(owner[off / page], (int)b);
                }
            kvrt_extent_t one;
            if (count > 1) {
                uint32_t needed = 0;
                ASSERT_STATUS(KVRT_ERR_BUFFER_TOO_SMALL,
                              kvrt_layout_block_extents(&l, num_blocks, b, &one, 1, &needed));
                cr_assert_eq(needed, count);
            }
        }
    }
}

Test(kv_layout, invalid_layouts_are_refused)
{
    kvrt_kv_layout_t good = make_layout(2, 2, 64, 16, KVRT_DTYPE_BF16, KVRT_KV_FUSED,
                                        KVRT_ORDER_BLOCK_MAJOR);
    ASSERT_STATUS(KVRT_OK, kvrt_layout_validate(&good));
    kvrt_kv_layout_t bad;
    bad = good; bad.tokens_per_block = 24;  ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_layout_validate(&bad));
    bad = good; bad.tokens_per_block = 0;   ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_layout_validate(&bad));
    bad = good; bad.tokens_per_block = 8192; ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_layout_validate(&bad));
    bad = good; bad.num_layers = 0;         ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_layout_validate(&bad));
    bad = good; bad.num_kv_heads = 5000;    ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_layout_validate(&bad));
    bad = good; bad.head_dim = 0;           ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_layout_validate(&bad));
    bad = good; bad.dtype = (kvrt_dtype_t)77; ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_layout_validate(&bad));
    bad = good; bad.format = (kvrt_kv_format_t)2; ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_layout_validate(&bad));
    bad = good; bad.order = (kvrt_kv_order_t)9; ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_layout_validate(&bad));
    bad = good; bad.field_mask |= 1u << 20; ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_layout_validate(&bad));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_layout_validate(NULL));
    /* Unset optional fields fall back to defaults even if garbage is there. */
    bad = good; bad.field_mask = 0; bad.dtype = (kvrt_dtype_t)77;
    ASSERT_STATUS(KVRT_OK, kvrt_layout_validate(&bad));
    uint64_t off = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_layout_page_offset(&good, 4, 4, 0, KVRT_K, &off));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_layout_page_offset(&good, 4, 0, 2, KVRT_K, &off));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_layout_page_offset(&good, 4, 0, 0, (kvrt_kv_half_t)2, &off));
    cr_assert_eq(kvrt_dtype_size((kvrt_dtype_t)0), 0);
}

Test(kv_layout, pool_addresses_are_base_plus_offset)
{
    kvrt_ctx_t *ctx = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(NULL, &ctx));
    kvrt_kv_layout_t l = make_layout(4, 8, 128, 16, KVRT_DTYPE_FP16, KVRT_KV_FUSED,
                                     KVRT_ORDER_LAYER_MAJOR);
    uint64_t block_bytes = 0;
    kvrt_layout_block_bytes(&l, &block_bytes);
    /* Engine memory: an address range kvrt must never touch. */
    uintptr_t base = (uintptr_t)0x7f0000000000ull;
    kvrt_pool_params_t p = {.field_mask = KVRT_POOL_PARAM_BASE, .layout = l, .num_blocks = 100,
                            .base = (void *)base, .base_bytes = block_bytes * 100};
    kvrt_pool_t *pool = NULL;
    ASSERT_OK(ctx, kvrt_pool_create(ctx, &p, &pool));
    void *addr = NULL;
    uint64_t off = 0;
    ASSERT_OK(ctx, kvrt_pool_page_address(pool, 37, 3, KVRT_V, &addr));
    kvrt_layout_page_offset(&l, 100, 37, 3, KVRT_V, &off);
    cr_assert_eq((uintptr_t)addr, base + off);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_page_address(pool, 100, 0, KVRT_K, &addr));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_page_address(pool, -1, 0, KVRT_K, &addr));
    /* Too little engine memory is refused. */
    p.base_bytes = block_bytes * 99;
    kvrt_pool_t *small = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_pool_create(ctx, &p, &small));
    cr_assert_null(small);
    kvrt_ctx_destroy(ctx);
}
