/*
 * layout.c - byte arithmetic of a KV layout (see kvrt/layout.h for the four
 * arrangements and their formulas).
 */
#include "kvrt/layout.h"

#include "core/core.h"

#define KVRT_LAYOUT_MAX_DIM 1024u
#define KVRT_LAYOUT_MAX_BLOCK_TOKENS 4096u

KVRT_EXPORT uint32_t kvrt_dtype_size(kvrt_dtype_t dtype)
{
    switch (dtype) {
    case KVRT_DTYPE_FP16:
    case KVRT_DTYPE_BF16:
        return 2;
    case KVRT_DTYPE_FP8_E4M3:
    case KVRT_DTYPE_FP8_E5M2:
        return 1;
    case KVRT_DTYPE_FP32:
        return 4;
    }
    return 0;
}

static kvrt_dtype_t layout_dtype(const kvrt_kv_layout_t *l)
{
    return kvrt_layout_resolved(l).dtype;
}

static kvrt_kv_format_t layout_format(const kvrt_kv_layout_t *l)
{
    return kvrt_layout_resolved(l).format;
}

static kvrt_kv_order_t layout_order(const kvrt_kv_layout_t *l)
{
    return kvrt_layout_resolved(l).order;
}

KVRT_EXPORT kvrt_status_t kvrt_layout_validate(const kvrt_kv_layout_t *l)
{
    if (!l)
        return KVRT_ERR_INVALID_ARG;
    const uint64_t known = KVRT_LAYOUT_OPTIONAL_FIELDS;
    uint32_t tpb = l->tokens_per_block;
    if ((l->field_mask & ~known) || l->num_layers == 0 ||
        l->num_layers > KVRT_LAYOUT_MAX_DIM || l->num_kv_heads == 0 ||
        l->num_kv_heads > KVRT_LAYOUT_MAX_DIM || l->head_dim == 0 ||
        l->head_dim > KVRT_LAYOUT_MAX_DIM || tpb == 0 ||
        tpb > KVRT_LAYOUT_MAX_BLOCK_TOKENS || (tpb & (tpb - 1)) != 0 ||
        kvrt_dtype_size(layout_dtype(l)) == 0 ||
        (unsigned)layout_format(l) > KVRT_KV_FUSED ||
        (unsigned)layout_order(l) > KVRT_ORDER_BLOCK_MAJOR)
        return KVRT_ERR_BAD_LAYOUT;
    return KVRT_OK;
}

/* Validated; callers check the status first. Fits easily in 64 bits:
 * 4096 * 1024 * 1024 * 4 = 2^34. */
static uint64_t page_bytes(const kvrt_kv_layout_t *l)
{
    return (uint64_t)l->tokens_per_block * l->num_kv_heads * l->head_dim *
           kvrt_dtype_size(layout_dtype(l));
}

KVRT_EXPORT kvrt_status_t kvrt_layout_page_bytes(const kvrt_kv_layout_t *l,
                                                 uint64_t *bytes_out)
{
    kvrt_status_t status = kvrt_layout_validate(l);
    if (status != KVRT_OK)
        return status;
    if (!bytes_out)
        return KVRT_ERR_INVALID_ARG;
    *bytes_out = page_bytes(l);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_layout_block_bytes(const kvrt_kv_layout_t *l,
                                                  uint64_t *bytes_out)
{
    kvrt_status_t status = kvrt_layout_validate(l);
    if (status != KVRT_OK)
        return status;
    if (!bytes_out)
        return KVRT_ERR_INVALID_ARG;
    *bytes_out = page_bytes(l) * 2 * l->num_layers;
    return KVRT_OK;
}

/* Page index of (block, layer, half) in units of pages; see layout.h. */
static uint64_t page_index(const kvrt_kv_layout_t *l, uint64_t num_blocks, uint64_t block,
                           uint64_t layer, uint64_t half)
{
    uint64_t layers = l->num_layers;
    if (layout_order(l) == KVRT_ORDER_LAYER_MAJOR)
        return layout_format(l) == KVRT_KV_SEPARATE
                   ? (layer * 2 + half) * num_blocks + block
                   : (layer * num_blocks + block) * 2 + half;
    return layout_format(l) == KVRT_KV_SEPARATE ? (half * num_blocks + block) * layers + layer
                                                : (block * layers + layer) * 2 + half;
}

KVRT_EXPORT kvrt_status_t kvrt_layout_page_offset(const kvrt_kv_layout_t *l,
                                                  uint32_t num_blocks, uint32_t block,
                                                  uint32_t layer, kvrt_kv_half_t half,
                                                  uint64_t *offset_out)
{
    kvrt_status_t status = kvrt_layout_validate(l);
    if (status != KVRT_OK)
        return status;
    if (!offset_out || block >= num_blocks || layer >= l->num_layers ||
        (unsigned)half > KVRT_V)
        return KVRT_ERR_INVALID_ARG;
    /* No wrap: the last page of a pool this large must still be addressable. */
    uint64_t pages = (uint64_t)num_blocks * 2 * l->num_layers;
    if (pages > UINT64_MAX / page_bytes(l))
        return KVRT_ERR_OVERFLOW;
    *offset_out = page_index(l, num_blocks, block, layer, (uint64_t)half) * page_bytes(l);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_layout_block_extents(const kvrt_kv_layout_t *l,
                                                    uint32_t num_blocks, uint32_t block,
                                                    kvrt_extent_t *extents_out,
                                                    uint32_t capacity,
                                                    uint32_t *count_out)
{
    kvrt_status_t status = kvrt_layout_validate(l);
    if (status != KVRT_OK)
        return status;
    if (!count_out || (capacity && !extents_out) || block >= num_blocks)
        return KVRT_ERR_INVALID_ARG;
    uint64_t page = page_bytes(l);
    if ((uint64_t)num_blocks * 2 * l->num_layers > UINT64_MAX / page)
        return KVRT_ERR_OVERFLOW;
    uint32_t count;
    uint64_t run_pages; /* pages per contiguous extent */
    bool fused = layout_format(l) == KVRT_KV_FUSED;
    if (layout_order(l) == KVRT_ORDER_BLOCK_MAJOR) {
        count = fused ? 1 : 2;
        run_pages = fused ? 2ull * l->num_layers : l->num_layers;
    } else {
        count = fused ? l->num_layers : 2 * l->num_layers;
        run_pages = fused ? 2 : 1;
    }
    *count_out = count;
    if (capacity < count)
        return KVRT_ERR_BUFFER_TOO_SMALL;
    /* Extent i starts at the page that begins run i; ascending by
     * construction: layer-major runs go layer by layer (K before V), block-
     * major separate puts the K tensor before the V tensor. */
    for (uint32_t i = 0; i < count; i++) {
        uint64_t layer, half;
        if (layout_order(l) == KVRT_ORDER_BLOCK_MAJOR) {
            layer = 0;
            half = fused ? 0 : i;
        } else {
            layer = fused ? i : i / 2;
            half = fused ? 0 : i % 2;
        }
        extents_out[i].offset = page_index(l, num_blocks, block, layer, half) * page;
        extents_out[i].length = run_pages * page;
    }
    return KVRT_OK;
}
