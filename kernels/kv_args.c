/*
 * kv_args.c - argument checks and address geometry shared by every kernel
 * variant (see kv_args.h).
 */
#include "kv_args.h"

#include <math.h>

#include "core/core.h"

#define KNOWN_CACHE_FIELDS ((uint64_t)KVRT_KV_CACHE_FIELD_SCALES)
#define KNOWN_ROWS_FIELDS ((uint64_t)KVRT_KV_ROWS_FIELD_TOKEN_STRIDE)
#define KNOWN_ATTN_FIELDS                                                                  \
    ((uint64_t)(KVRT_ATTN_FIELD_SCALE | KVRT_ATTN_FIELD_OUT_DTYPE |                        \
                KVRT_ATTN_FIELD_MAX_SEQ_LEN | KVRT_ATTN_FIELD_WORKSPACE))

/* Token strides beyond 2^40 elements describe no real tensor and would let
 * stride * tokens * element size overflow 64 bits. */
#define MAX_TOKEN_STRIDE (1ull << 40)

uint32_t kv_io_dtype_bytes(kvrt_dtype_t dtype)
{
    switch (dtype) {
    case KVRT_DTYPE_FP16:
    case KVRT_DTYPE_BF16:
        return 2;
    case KVRT_DTYPE_FP32:
        return 4;
    default:
        return 0;
    }
}

/*
 * A GPU faults (and loses its context) on a load not aligned to its size,
 * and the CPU references' typed loads are undefined behaviour there too, so
 * every array the kernels index must start on a multiple of its element
 * size. Allocators always give that; an odd offset into a byte buffer is a
 * caller's mistake, refused here the same way on both sides.
 */
static bool misaligned(const void *p, uint32_t elem_bytes)
{
    return elem_bytes > 1 && ((uintptr_t)p % elem_bytes) != 0;
}

static uint64_t page_offset_of(const kvrt_kv_layout_t *layout, uint32_t num_blocks,
                               uint32_t block, uint32_t layer, kvrt_kv_half_t half)
{
    uint64_t offset = 0;
    /* Validated by the caller: arguments are in range, so this cannot fail. */
    (void)kvrt_layout_page_offset(layout, num_blocks, block, layer, half, &offset);
    return offset;
}

kvrt_status_t kv_geometry_init(kvrt_ctx_t *ctx, const char *func,
                               const kvrt_kv_cache_t *cache, kv_geometry_t *g)
{
    if (!cache)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "cache is NULL");
    if (cache->field_mask & ~KNOWN_CACHE_FIELDS)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "unknown cache field_mask bits 0x%llx",
                          (unsigned long long)(cache->field_mask & ~KNOWN_CACHE_FIELDS));
    kvrt_status_t status = kvrt_layout_validate(&cache->layout);
    if (status != KVRT_OK)
        return kvrt_fail_(ctx, func, status, "cache layout is invalid");
    if (!cache->base || cache->num_blocks == 0)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "cache base is NULL or num_blocks is 0");
    const kvrt_kv_layout_t *l = &cache->layout;
    g->dtype = kvrt_layout_resolved(l).dtype;
    g->elem_bytes = kvrt_dtype_size(g->dtype);
    if (misaligned(cache->base, g->elem_bytes))
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "cache base %p is not aligned to its %u-byte elements", cache->base,
                          g->elem_bytes);
    g->num_layers = l->num_layers;
    g->num_kv_heads = l->num_kv_heads;
    g->head_dim = l->head_dim;
    g->tokens_per_block = l->tokens_per_block;
    g->num_blocks = cache->num_blocks;
    g->row_elems = l->num_kv_heads * l->head_dim; /* <= 2^20 by the layout limits */
    g->row_bytes = (uint64_t)g->row_elems * g->elem_bytes;
    g->page_bytes = g->row_bytes * l->tokens_per_block; /* <= 2^34 */
    g->block_bytes = g->page_bytes * 2 * l->num_layers;  /* <= 2^45 */
    if (g->block_bytes > UINT64_MAX / cache->num_blocks)
        return kvrt_fail_(ctx, func, KVRT_ERR_OVERFLOW, "cache size overflows 64 bits");
    g->num_slots = (uint64_t)cache->num_blocks * l->tokens_per_block;

    uint64_t origin = page_offset_of(l, g->num_blocks, 0, 0, KVRT_K);
    g->block_stride =
        g->num_blocks > 1 ? page_offset_of(l, g->num_blocks, 1, 0, KVRT_K) - origin : 0;
    g->layer_stride =
        g->num_layers > 1 ? page_offset_of(l, g->num_blocks, 0, 1, KVRT_K) - origin : 0;
    g->half_stride = page_offset_of(l, g->num_blocks, 0, 0, KVRT_V) - origin;

    g->fp8 = g->dtype == KVRT_DTYPE_FP8_E4M3;
    g->scale_mode = KVRT_SCALE_PER_HEAD;
    if (g->fp8) {
        if (!(cache->field_mask & KVRT_KV_CACHE_FIELD_SCALES) || !cache->k_scales ||
            !cache->v_scales)
            return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                              "an FP8 cache needs k_scales and v_scales");
        if (misaligned(cache->k_scales, sizeof(float)) ||
            misaligned(cache->v_scales, sizeof(float)))
            return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                              "k_scales or v_scales is not aligned to 4 bytes");
        if ((unsigned)cache->scale_mode > KVRT_SCALE_PER_BLOCK)
            return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "unknown scale_mode %d",
                              (int)cache->scale_mode);
        g->scale_mode = cache->scale_mode;
    }
    return KVRT_OK;
}

kvrt_status_t kv_rows_check(kvrt_ctx_t *ctx, const char *func, const kv_geometry_t *g,
                            const kvrt_kv_rows_t *rows, const void *key,
                            const void *value, bool write, uint64_t *token_stride_out)
{
    if (!rows)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "rows is NULL");
    if (rows->field_mask & ~KNOWN_ROWS_FIELDS)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "unknown rows field_mask bits 0x%llx",
                          (unsigned long long)(rows->field_mask & ~KNOWN_ROWS_FIELDS));
    if (rows->layer >= g->num_layers)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "layer %u of %u", rows->layer,
                          g->num_layers);
    uint64_t stride = g->row_elems;
    if (rows->field_mask & KVRT_KV_ROWS_FIELD_TOKEN_STRIDE) {
        if (rows->token_stride < g->row_elems || rows->token_stride > MAX_TOKEN_STRIDE)
            return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                              "token_stride %llu is outside %u .. 2^40",
                              (unsigned long long)rows->token_stride, g->row_elems);
        stride = rows->token_stride;
    }
    if (kv_io_dtype_bytes(rows->dtype) == 0)
        return kvrt_fail_(ctx, func, KVRT_ERR_UNSUPPORTED, "rows dtype %d is not FP16/BF16/FP32",
                          (int)rows->dtype);
    bool cache_ok = g->dtype == KVRT_DTYPE_FP16 || g->dtype == KVRT_DTYPE_BF16 || g->fp8;
    if (!cache_ok)
        return kvrt_fail_(ctx, func, KVRT_ERR_UNSUPPORTED,
                          "cache dtype %d is not FP16/BF16/FP8_E4M3", (int)g->dtype);
    if (write && rows->dtype != g->dtype &&
        !(g->fp8 && (rows->dtype == KVRT_DTYPE_FP16 || rows->dtype == KVRT_DTYPE_BF16)))
        return kvrt_fail_(ctx, func, KVRT_ERR_UNSUPPORTED,
                          "cannot write rows of dtype %d into a cache of dtype %d",
                          (int)rows->dtype, (int)g->dtype);
    if (rows->num_tokens > 0 && (!rows->slot_mapping || !key || !value))
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "slot_mapping, key or value is NULL");
    uint32_t io_bytes = kv_io_dtype_bytes(rows->dtype);
    if (rows->num_tokens > 0 &&
        (misaligned(rows->slot_mapping, sizeof(int64_t)) || misaligned(key, io_bytes) ||
         misaligned(value, io_bytes)))
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "slot_mapping, key or value is not aligned to its element size");
    *token_stride_out = stride;
    return KVRT_OK;
}

kvrt_status_t kv_blocks_check(kvrt_ctx_t *ctx, const char *func, const kv_geometry_t *g,
                              const int32_t *blocks, uint32_t count, const void *staging)
{
    if (count > 0 && (!blocks || !staging))
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "blocks or staging is NULL");
    if (count > 0 && misaligned(blocks, sizeof(int32_t)))
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "blocks is not aligned to 4 bytes");
    if (count > 0 && g->block_bytes > UINT64_MAX / count)
        return kvrt_fail_(ctx, func, KVRT_ERR_OVERFLOW, "staging size overflows 64 bits");
    return KVRT_OK;
}

kvrt_status_t kv_copies_check(kvrt_ctx_t *ctx, const char *func,
                              const kvrt_block_copy_t *copies, uint32_t count)
{
    if (count > 0 && !copies)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "copies is NULL");
    if (count > 0 && misaligned(copies, sizeof(int32_t)))
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "copies is not aligned to 4 bytes");
    return KVRT_OK;
}

kvrt_status_t kv_attention_check(kvrt_ctx_t *ctx, const char *func, const kv_geometry_t *g,
                                 const kvrt_decode_attention_t *a,
                                 kvrt_dtype_t *out_dtype_out, float *scale_out)
{
    if (!a)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "attention arguments are NULL");
    if (a->field_mask & ~KNOWN_ATTN_FIELDS)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "unknown attention field_mask bits 0x%llx",
                          (unsigned long long)(a->field_mask & ~KNOWN_ATTN_FIELDS));
    if (a->layer >= g->num_layers)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "layer %u of %u", a->layer,
                          g->num_layers);
    if (a->num_q_heads == 0 || a->num_q_heads % g->num_kv_heads != 0)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "num_q_heads %u is not a positive multiple of %u KV heads",
                          a->num_q_heads, g->num_kv_heads);
    if (!(g->dtype == KVRT_DTYPE_FP16 || g->dtype == KVRT_DTYPE_BF16 || g->fp8))
        return kvrt_fail_(ctx, func, KVRT_ERR_UNSUPPORTED,
                          "cache dtype %d is not FP16/BF16/FP8_E4M3", (int)g->dtype);
    if (kv_io_dtype_bytes(a->q_dtype) == 0)
        return kvrt_fail_(ctx, func, KVRT_ERR_UNSUPPORTED, "q_dtype %d is not FP16/BF16/FP32",
                          (int)a->q_dtype);
    kvrt_dtype_t out_dtype =
        (a->field_mask & KVRT_ATTN_FIELD_OUT_DTYPE) ? a->out_dtype : KVRT_DTYPE_FP32;
    if (out_dtype != KVRT_DTYPE_FP32 && out_dtype != a->q_dtype)
        return kvrt_fail_(ctx, func, KVRT_ERR_UNSUPPORTED,
                          "out_dtype %d is neither FP32 nor q_dtype", (int)out_dtype);
    float scale = 1.0f / sqrtf((float)g->head_dim);
    if (a->field_mask & KVRT_ATTN_FIELD_SCALE) {
        if (!isfinite(a->softmax_scale))
            return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "softmax_scale is not finite");
        scale = a->softmax_scale;
    }
    if (a->num_seqs > 0 &&
        (!a->query || !a->block_tables || !a->seq_lens || !a->out || a->table_stride == 0))
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "query, block_tables, seq_lens or out is NULL, or table_stride 0");
    if (a->num_seqs > 0 &&
        (misaligned(a->query, kv_io_dtype_bytes(a->q_dtype)) ||
         misaligned(a->out, kv_io_dtype_bytes(out_dtype)) ||
         misaligned(a->block_tables, sizeof(int32_t)) || misaligned(a->seq_lens, sizeof(int32_t))))
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "query, out, block_tables or seq_lens is not aligned to its element "
                          "size");
    if ((uint64_t)a->table_stride * g->tokens_per_block > INT32_MAX)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "table_stride %u covers more than 2^31 tokens", a->table_stride);
    if ((a->field_mask & KVRT_ATTN_FIELD_MAX_SEQ_LEN) &&
        (uint64_t)a->max_seq_len > (uint64_t)a->table_stride * g->tokens_per_block)
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "max_seq_len %u is above table_stride * tokens_per_block",
                          a->max_seq_len);
    if ((a->field_mask & KVRT_ATTN_FIELD_WORKSPACE) && a->workspace_bytes > 0 &&
        (!a->workspace || ((uintptr_t)a->workspace & 15) != 0))
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "workspace is NULL or not 16-byte aligned");
    *out_dtype_out = out_dtype;
    *scale_out = scale;
    return KVRT_OK;
}
