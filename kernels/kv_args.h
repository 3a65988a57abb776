/*
 * kv_args.h - argument checks and address geometry shared by the CPU and
 * CUDA variants of every kernel, so both refuse exactly the same input.
 *
 * Geometry: every arrangement in kvrt/layout.h places a page at an affine
 * function of its coordinates,
 *     offset(block, layer, half) = block * block_stride
 *                                + layer * layer_stride + half * half_stride,
 * so the strides are measured once per call with kvrt_layout_page_offset()
 * (the single source of the formulas) and the kernels, host and device,
 * only ever compute that sum. test_kernels_layout checks the decomposition
 * against kvrt_layout_page_offset() for all four arrangements.
 *
 * Internal: nothing here is ABI.
 */
#ifndef KVRT_KV_ARGS_H
#define KVRT_KV_ARGS_H

#include <stdbool.h>
#include <stdint.h>

#include "kvrt/kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The two address helpers below are compiled for the GPU too. */
#ifdef __CUDACC__
#define KV_HD __host__ __device__
#else
#define KV_HD
#endif

typedef struct kv_geometry {
    kvrt_dtype_t dtype;      /* cache dtype */
    uint32_t elem_bytes;
    uint32_t num_layers;
    uint32_t num_kv_heads;
    uint32_t head_dim;
    uint32_t tokens_per_block;
    uint32_t num_blocks;
    uint32_t row_elems;      /* num_kv_heads * head_dim: one token's row */
    uint64_t row_bytes;
    uint64_t page_bytes;
    uint64_t block_bytes;    /* 2 * num_layers pages */
    uint64_t num_slots;      /* num_blocks * tokens_per_block */
    uint64_t block_stride;   /* bytes; see the top of this file */
    uint64_t layer_stride;
    uint64_t half_stride;
    bool fp8;                /* FP8_E4M3 cache: scales are present */
    kvrt_scale_mode_t scale_mode;
} kv_geometry_t;

/* Byte offset of a page inside the cache. */
static inline KV_HD uint64_t kv_page_offset(const kv_geometry_t *g, uint64_t block,
                                            uint64_t layer, uint64_t half)
{
    return block * g->block_stride + layer * g->layer_stride + half * g->half_stride;
}

/* Index of the scale for (layer, block, head) in a k_scales/v_scales array. */
static inline KV_HD uint64_t kv_scale_index(const kv_geometry_t *g, uint64_t layer,
                                            uint64_t block, uint64_t head)
{
    return g->scale_mode == KVRT_SCALE_PER_HEAD ? layer * g->num_kv_heads + head
                                                : layer * g->num_blocks + block;
}

/*
 * Checks the cache descriptor (NULLs, unknown bits, layout, scales present
 * for FP8, the pool's size fits in 64 bits) and fills *g. `func` names the
 * public function in the error text.
 */
kvrt_status_t kv_geometry_init(kvrt_ctx_t *ctx, const char *func,
                               const kvrt_kv_cache_t *cache, kv_geometry_t *g);

/*
 * Checks rows (unknown bits, layer, stride, pointers) for a write (`write`
 * true: rows->dtype must match the cache or be FP16/BF16 into FP8) or a read
 * (rows->dtype FP16, BF16 or FP32). Does not read slot_mapping.
 * *token_stride_out is the stride in elements.
 */
kvrt_status_t kv_rows_check(kvrt_ctx_t *ctx, const char *func, const kv_geometry_t *g,
                            const kvrt_kv_rows_t *rows, const void *key,
                            const void *value, bool write, uint64_t *token_stride_out);

/* Checks a block list's pointers and that count blocks fit a staging size. */
kvrt_status_t kv_blocks_check(kvrt_ctx_t *ctx, const char *func, const kv_geometry_t *g,
                              const int32_t *blocks, uint32_t count, const void *staging);

/* Checks a copy list's pointer (its ids are the caller's to check). */
kvrt_status_t kv_copies_check(kvrt_ctx_t *ctx, const char *func,
                              const kvrt_block_copy_t *copies, uint32_t count);

/*
 * Checks a decode-attention call except the contents of its index arrays;
 * *out_dtype_out and *scale_out are the effective output dtype and softmax
 * scale.
 */
kvrt_status_t kv_attention_check(kvrt_ctx_t *ctx, const char *func, const kv_geometry_t *g,
                                 const kvrt_decode_attention_t *attn,
                                 kvrt_dtype_t *out_dtype_out, float *scale_out);

/* Bytes of one element of the dtypes rows, queries and outputs may use. */
uint32_t kv_io_dtype_bytes(kvrt_dtype_t dtype);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_KV_ARGS_H */
