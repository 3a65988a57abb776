/*
 * kvrt/layout.h - how one cache group's KV blocks lie in memory.
 *
 * A block holds `tokens_per_block` tokens of K and V for every layer of its
 * cache group. The unit of layout is a *page*: one block, one layer, one of
 * K or V, stored as [tokens_per_block][num_kv_heads][head_dim] elements
 * (token-major, the order paged-attention kernels read). Pages are arranged
 * in one of four ways (L = num_layers, N = num_blocks, P = page bytes):
 *
 *   LAYER_MAJOR, SEPARATE  per layer a K tensor [N][page] then a V tensor:
 *                          offset = ((layer * 2 + kv) * N + block) * P
 *   LAYER_MAJOR, FUSED     per layer one tensor [N][2][page] (vLLM's shape):
 *                          offset = ((layer * N + block) * 2 + kv) * P
 *   BLOCK_MAJOR, SEPARATE  a K tensor [N][L][page] then a V tensor:
 *                          offset = ((kv * N + block) * L + layer) * P
 *   BLOCK_MAJOR, FUSED     one tensor [N][L][2][page]; a block is contiguous:
 *                          offset = ((block * L + layer) * 2 + kv) * P
 *
 * These functions are pure and safe from any thread.
 */
#ifndef KVRT_LAYOUT_H
#define KVRT_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "kvrt/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kvrt_dtype {
    KVRT_DTYPE_FP16 = 1,
    KVRT_DTYPE_BF16 = 2,
    KVRT_DTYPE_FP8_E4M3 = 3,
    KVRT_DTYPE_FP8_E5M2 = 4,
    KVRT_DTYPE_FP32 = 5
} kvrt_dtype_t;

typedef enum kvrt_kv_format {
    KVRT_KV_SEPARATE = 0, /* K and V in separate tensors */
    KVRT_KV_FUSED = 1     /* K and V pages adjacent */
} kvrt_kv_format_t;

typedef enum kvrt_kv_order {
    KVRT_ORDER_LAYER_MAJOR = 0, /* one tensor (or K/V pair) per layer */
    KVRT_ORDER_BLOCK_MAJOR = 1  /* all layers of a block together */
} kvrt_kv_order_t;

/* Which half of the cache: K (0) or V (1). */
typedef enum kvrt_kv_half { KVRT_K = 0, KVRT_V = 1 } kvrt_kv_half_t;

enum kvrt_kv_layout_field {
    KVRT_LAYOUT_FIELD_DTYPE = 1u << 0,  /* default FP16 */
    KVRT_LAYOUT_FIELD_FORMAT = 1u << 1, /* default SEPARATE */
    KVRT_LAYOUT_FIELD_ORDER = 1u << 2   /* default LAYER_MAJOR */
};

/*
 * One cache group's KV shape. num_layers, num_kv_heads, head_dim and
 * tokens_per_block are always read; the optional fields by field_mask.
 * Limits: 1..1024 layers, 1..1024 KV heads, head_dim 1..1024,
 * tokens_per_block a power of two in 1..4096.
 *
 * Frozen: its size and fields never change, because it is embedded by value
 * (kvrt_pool_params_t, kvrt_kv_cache_t) and copied into descriptors and
 * fingerprints. A later layout feature comes as a field_mask bit that needs
 * no storage, or as a new struct that the params needing it point to.
 */
typedef struct kvrt_kv_layout {
    uint64_t field_mask;
    uint32_t num_layers;
    uint32_t num_kv_heads;
    uint32_t head_dim;
    uint32_t tokens_per_block;
    kvrt_dtype_t dtype;
    kvrt_kv_format_t format;
    kvrt_kv_order_t order;
} kvrt_kv_layout_t;

/* One contiguous byte range of a pool. Frozen: an array element. */
typedef struct kvrt_extent {
    uint64_t offset;
    uint64_t length;
} kvrt_extent_t;

/*
 * kvrt_layout_validate - checks a layout. Errors: KVRT_ERR_INVALID_ARG
 * (NULL), KVRT_ERR_BAD_LAYOUT (a field out of the limits above, unknown enum
 * value or unknown field_mask bit).
 */
kvrt_status_t kvrt_layout_validate(const kvrt_kv_layout_t *layout);

/* Bytes of one element of dtype; 0 for an unknown dtype (the one function
 * here that answers in-band: it is a pure table lookup). */
uint32_t kvrt_dtype_size(kvrt_dtype_t dtype);

/*
 * kvrt_layout_page_bytes / kvrt_layout_block_bytes - bytes of one page
 * (block x layer x K-or-V) and of one whole block (2 * num_layers pages).
 * Errors: those of kvrt_layout_validate().
 */
kvrt_status_t kvrt_layout_page_bytes(const kvrt_kv_layout_t *layout,
                                     uint64_t *bytes_out);
kvrt_status_t kvrt_layout_block_bytes(const kvrt_kv_layout_t *layout,
                                      uint64_t *bytes_out);

/*
 * kvrt_layout_page_offset - byte offset of the page (block, layer, half) in
 * a pool of num_blocks blocks laid out as `layout` (formulas above).
 * Errors: those of kvrt_layout_validate(); KVRT_ERR_INVALID_ARG when block
 * >= num_blocks, layer >= num_layers or half is not K/V; KVRT_ERR_OVERFLOW
 * when a pool of num_blocks such blocks would not fit 64-bit byte offsets.
 */
kvrt_status_t kvrt_layout_page_offset(const kvrt_kv_layout_t *layout,
                                      uint32_t num_blocks, uint32_t block,
                                      uint32_t layer, kvrt_kv_half_t half,
                                      uint64_t *offset_out);

/*
 * kvrt_layout_block_extents - the contiguous byte ranges that make up one
 * block, in ascending offset order: 1 for
 * BLOCK_MAJOR+FUSED, 2 for BLOCK_MAJOR+SEPARATE, num_layers for
 * LAYER_MAJOR+FUSED, 2*num_layers for LAYER_MAJOR+SEPARATE. Used to move
 * whole blocks (transfer, offload). Writes at most `capacity` extents and
 * the count to *count_out.
 * Errors: those of kvrt_layout_page_offset(); KVRT_ERR_BUFFER_TOO_SMALL when
 * capacity is below the count (*count_out still tells the count needed;
 * nothing is written to extents_out).
 */
kvrt_status_t kvrt_layout_block_extents(const kvrt_kv_layout_t *layout,
                                        uint32_t num_blocks, uint32_t block,
                                        kvrt_extent_t *extents_out,
                                        uint32_t capacity, uint32_t *count_out);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_LAYOUT_H */
