/*
 * attention.c - CPU reference paged decode attention: one query token per
 * sequence over the blocks its table names, grouped-query heads, fp32
 * accumulation with an online softmax (so no buffer grows with the
 * sequence length).
 *
 * Its job is to prove that the bytes kvrt's block tables point at are the
 * K/V attention reads; it is written for clarity, not speed.
 */
#include <math.h>
#include <string.h>

#include "core/core.h"
#include "kv_args.h"
#include "kv_numeric.h"
#include "kvrt/kernels.h"

/* head_dim is at most 1024 by the layout limits. */
#define MAX_HEAD_DIM 1024

static float load_io(const void *p, kvrt_dtype_t dtype, uint64_t i)
{
    switch (dtype) {
    case KVRT_DTYPE_FP16:
        return kv_f16_to_f32(((const uint16_t *)p)[i]);
    case KVRT_DTYPE_BF16:
        return kv_bf16_to_f32(((const uint16_t *)p)[i]);
    default:
        return ((const float *)p)[i];
    }
}

static void store_io(void *p, kvrt_dtype_t dtype, uint64_t i, float v)
{
    if (dtype == KVRT_DTYPE_FP16)
        ((uint16_t *)p)[i] = kv_f32_to_f16(v);
    else if (dtype == KVRT_DTYPE_BF16)
        ((uint16_t *)p)[i] = kv_f32_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

/* One cache element as float, FP8 dequantized with its scale. */
static float load_cache(const kv_geometry_t *g, const char *row, uint32_t e, float scale)
{
    switch (g->dtype) {
    case KVRT_DTYPE_FP16:
        return kv_f16_to_f32(((const uint16_t *)row)[e]);
    case KVRT_DTYPE_BF16:
        return kv_bf16_to_f32(((const uint16_t *)row)[e]);
    default:
        return kv_e4m3_to_f32(((const uint8_t *)row)[e]) * scale;
    }
}

static bool scale_ok(float s) { return isfinite(s) && s > 0.0f; }

static kvrt_status_t check_tables(kvrt_ctx_t *ctx, const kv_geometry_t *g,
                                  const kvrt_kv_cache_t *cache,
                                  const kvrt_decode_attention_t *a)
{
    if (g->fp8 && g->scale_mode == KVRT_SCALE_PER_HEAD) {
        for (uint32_t h = 0; h < g->num_kv_heads; h++) {
            uint64_t i = kv_scale_index(g, a->layer, 0, h);
            if (!scale_ok(cache->k_scales[i]) || !scale_ok(cache->v_scales[i]))
                return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                                 "scale of layer %u head %u is not finite and positive",
                                 a->layer, h);
        }
    }
    for (uint32_t s = 0; s < a->num_seqs; s++) {
        int32_t len = a->seq_lens[s];
        if (len < 0 || (uint64_t)len > (uint64_t)a->table_stride * g->tokens_per_block)
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                             "seq_lens[%u] = %d is outside 0 .. %llu", s, len,
                             (unsigned long long)a->table_stride * g->tokens_per_block);
        uint32_t used = (uint32_t)(((uint64_t)len + g->tokens_per_block - 1) /
                                   g->tokens_per_block);
        const int32_t *row = a->block_tables + (uint64_t)s * a->table_stride;
        for (uint32_t b = 0; b < used; b++) {
            if (row[b] < 0 || (uint32_t)row[b] >= g->num_blocks)
                return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                                 "block_tables[%u][%u] = %d is outside 0 .. %u", s, b, row[b],
                                 g->num_blocks - 1);
            if (g->fp8 && g->scale_mode == KVRT_SCALE_PER_BLOCK) {
                uint64_t i = kv_scale_index(g, a->layer, (uint64_t)row[b], 0);
                if (!scale_ok(cache->k_scales[i]) || !scale_ok(cache->v_scales[i]))
                    return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                                     "scale of block %d is not finite and positive", row[b]);
            }
        }
    }
    return KVRT_OK;
}

/* Attention of one query head over one sequence, written to out[0..head_dim). */
static void attend(const kv_geometry_t *g, const kvrt_kv_cache_t *cache,
                   const kvrt_decode_attention_t *a, const float *q, uint32_t kv_head,
                   const int32_t *table, int32_t len, float scale, float *out)
{
    const char *base = cache->base;
    uint32_t dim = g->head_dim;
    float acc[MAX_HEAD_DIM];
    float max_logit = -INFINITY, denom = 0.0f;
    memset(acc, 0, dim * sizeof(float));
    float k_scale = 1.0f, v_scale = 1.0f;
    for (int32_t t = 0; t < len; t++) {
        uint64_t block = (uint64_t)table[(uint32_t)t / g->tokens_per_block];
        uint64_t row = ((uint32_t)t % g->tokens_per_block) * g->row_bytes +
                       (uint64_t)kv_head * dim * g->elem_bytes;
        const char *k = base + kv_page_offset(g, block, a->layer, KVRT_K) + row;
        const char *v = base + kv_page_offset(g, block, a->layer, KVRT_V) + row;
        if (g->fp8) {
            uint64_t si = kv_scale_index(g, a->layer, block, kv_head);
            k_scale = cache->k_scales[si];
            v_scale = cache->v_scales[si];
        }
        float logit = 0.0f;
        for (uint32_t e = 0; e < dim; e++)
            logit += q[e] * load_cache(g, k, e, k_scale);
        logit *= scale;
        /* Online softmax: rescale what was accumulated when the max grows. */
        float new_max = logit > max_logit ? logit : max_logit;
        float correction = expf(max_logit - new_max);
        float weight = expf(logit - new_max);
        denom = denom * correction + weight;
        for (uint32_t e = 0; e < dim; e++)
            acc[e] = acc[e] * correction + weight * load_cache(g, v, e, v_scale);
        max_logit = new_max;
    }
    float inv = denom > 0.0f ? 1.0f / denom : 0.0f;
    for (uint32_t e = 0; e < dim; e++)
        out[e] = acc[e] * inv;
}

KVRT_EXPORT kvrt_status_t kvrt_cpu_decode_attention(kvrt_ctx_t *ctx,
                                                    const kvrt_kv_cache_t *cache,
                                                    const kvrt_decode_attention_t *attn)
{
    kv_geometry_t g;
    kvrt_dtype_t out_dtype;
    float scale;
    kvrt_status_t status = kv_geometry_init(ctx, __func__, cache, &g);
    if (status == KVRT_OK)
        status = kv_attention_check(ctx, __func__, &g, attn, &out_dtype, &scale);
    if (status == KVRT_OK)
        status = check_tables(ctx, &g, cache, attn);
    if (status != KVRT_OK)
        return status;

    uint32_t dim = g.head_dim;
    uint32_t group = attn->num_q_heads / g.num_kv_heads;
    float q[MAX_HEAD_DIM], o[MAX_HEAD_DIM];
    for (uint32_t s = 0; s < attn->num_seqs; s++) {
        const int32_t *table = attn->block_tables + (uint64_t)s * attn->table_stride;
        for (uint32_t h = 0; h < attn->num_q_heads; h++) {
            uint64_t first = ((uint64_t)s * attn->num_q_heads + h) * dim;
            for (uint32_t e = 0; e < dim; e++)
                q[e] = load_io(attn->query, attn->q_dtype, first + e);
            attend(&g, cache, attn, q, h / group, table, attn->seq_lens[s], scale, o);
            for (uint32_t e = 0; e < dim; e++)
                store_io(attn->out, out_dtype, first + e, o[e]);
        }
    }
    return KVRT_OK;
}
