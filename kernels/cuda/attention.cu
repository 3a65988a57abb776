/*
 * attention.cu - CUDA paged decode attention, the device twin of
 * kernels/cpu/attention.c: one query token per sequence over its block
 * table, grouped-query heads, fp32 accumulation, online softmax.
 *
 * One CUDA block per (query head, sequence); its warps split the tokens,
 * each lane holds head_dim / 32 elements of q and of the running output, a
 * warp reduces each logit with shuffles, and the warps' partial softmax
 * states are merged through shared memory at the end. Like the CPU
 * version it exists to check that block tables and cache agree, so it
 * favours clarity over the last bit of speed.
 */
#include <math.h>

#include "cuda_common.cuh"

#define ATTN_WARPS 4
#define ATTN_MAX_DIM 256
#define ATTN_PER_LANE (ATTN_MAX_DIM / 32)

struct attn_args {
    kv_geometry_t g;
    const char *base;
    const float *k_scales;
    const float *v_scales;
    uint32_t layer;
    uint32_t num_q_heads;
    kvrt_dtype_t q_dtype;
    const void *query;
    const int32_t *block_tables;
    uint32_t table_stride;
    const int32_t *seq_lens;
    float scale;
    kvrt_dtype_t out_dtype;
    void *out;
};

static __device__ __forceinline__ float load_io(const void *p, kvrt_dtype_t dtype, uint64_t i)
{
    if (dtype == KVRT_DTYPE_FP16)
        return kv_f16_to_f32(((const uint16_t *)p)[i]);
    if (dtype == KVRT_DTYPE_BF16)
        return kv_bf16_to_f32(((const uint16_t *)p)[i]);
    return ((const float *)p)[i];
}

static __device__ __forceinline__ float load_cache(kvrt_dtype_t dtype, const char *row,
                                                   uint32_t e, float scale)
{
    if (dtype == KVRT_DTYPE_FP16)
        return kv_f16_to_f32(((const uint16_t *)row)[e]);
    if (dtype == KVRT_DTYPE_BF16)
        return kv_bf16_to_f32(((const uint16_t *)row)[e]);
    return kv_e4m3_to_f32(((const uint8_t *)row)[e]) * scale;
}

__global__ void decode_attention_kernel(attn_args a)
{
    __shared__ float part_max[ATTN_WARPS], part_sum[ATTN_WARPS];
    __shared__ float part_acc[ATTN_WARPS][ATTN_MAX_DIM];

    const kv_geometry_t &g = a.g;
    uint32_t head = blockIdx.x, seq = blockIdx.y;
    uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint32_t dim = g.head_dim;
    uint32_t kv_head = head / (a.num_q_heads / g.num_kv_heads);
    uint64_t q_first = ((uint64_t)seq * a.num_q_heads + head) * dim;

    float q[ATTN_PER_LANE], acc[ATTN_PER_LANE];
#pragma unroll
    for (int j = 0; j < ATTN_PER_LANE; j++) {
        uint32_t e = lane + 32 * j;
        q[j] = e < dim ? load_io(a.query, a.q_dtype, q_first + e) : 0.0f;
        acc[j] = 0.0f;
    }

    int32_t len = a.seq_lens[seq];
    int64_t max_len = (int64_t)a.table_stride * g.tokens_per_block;
    if (len < 0 || len > max_len)
        len = 0; /* out of range: read nothing rather than past the table */
    const int32_t *table = a.block_tables + (uint64_t)seq * a.table_stride;
    float run_max = -INFINITY, run_sum = 0.0f;
    for (int32_t t = (int32_t)warp; t < len; t += ATTN_WARPS) {
        int32_t block = table[(uint32_t)t / g.tokens_per_block];
        if (block < 0 || (uint32_t)block >= g.num_blocks)
            continue; /* an invalid id contributes nothing */
        uint64_t row = ((uint32_t)t % g.tokens_per_block) * g.row_bytes +
                       (uint64_t)kv_head * dim * g.elem_bytes;
        const char *k = a.base + kv_page_offset(&g, (uint64_t)block, a.layer, KVRT_K) + row;
        const char *v = a.base + kv_page_offset(&g, (uint64_t)block, a.layer, KVRT_V) + row;
        float k_scale = 1.0f, v_scale = 1.0f;
        if (g.fp8) {
            uint64_t si = kv_scale_index(&g, a.layer, (uint64_t)block, kv_head);
            k_scale = a.k_scales[si];
            v_scale = a.v_scales[si];
        }
        float dot = 0.0f;
#pragma unroll
        for (int j = 0; j < ATTN_PER_LANE; j++) {
            uint32_t e = lane + 32 * j;
            if (e < dim)
                dot += q[j] * load_cache(g.dtype, k, e, k_scale);
        }
        for (int off = 16; off > 0; off /= 2)
            dot += __shfl_xor_sync(0xffffffffu, dot, off);
        float logit = dot * a.scale;
        float new_max = fmaxf(run_max, logit);
        float correction = expf(run_max - new_max);
        float weight = expf(logit - new_max);
        run_sum = run_sum * correction + weight;
#pragma unroll
        for (int j = 0; j < ATTN_PER_LANE; j++) {
            uint32_t e = lane + 32 * j;
            float val = e < dim ? load_cache(g.dtype, v, e, v_scale) : 0.0f;
            acc[j] = acc[j] * correction + weight * val;
        }
        run_max = new_max;
    }

    if (lane == 0) {
        part_max[warp] = run_max;
        part_sum[warp] = run_sum;
    }
#pragma unroll
    for (int j = 0; j < ATTN_PER_LANE; j++) {
        uint32_t e = lane + 32 * j;
        if (e < dim)
            part_acc[warp][e] = acc[j];
    }
    __syncthreads();

    /* Merge the warps' softmax states; a warp that saw no token has max
     * -inf and sum 0 and drops out (its weight exp(-inf) is 0). */
    float total_max = -INFINITY;
    for (int w = 0; w < ATTN_WARPS; w++)
        total_max = fmaxf(total_max, part_max[w]);
    float weights[ATTN_WARPS], total_sum = 0.0f;
    for (int w = 0; w < ATTN_WARPS; w++) {
        weights[w] = part_sum[w] > 0.0f ? expf(part_max[w] - total_max) : 0.0f;
        total_sum += part_sum[w] * weights[w];
    }
    float inv = total_sum > 0.0f ? 1.0f / total_sum : 0.0f;
    for (uint32_t e = threadIdx.x; e < dim; e += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < ATTN_WARPS; w++)
            o += part_acc[w][e] * weights[w];
        o *= inv;
        uint64_t i = q_first + e;
        if (a.out_dtype == KVRT_DTYPE_FP16)
            ((uint16_t *)a.out)[i] = kv_f32_to_f16(o);
        else if (a.out_dtype == KVRT_DTYPE_BF16)
            ((uint16_t *)a.out)[i] = kv_f32_to_bf16(o);
        else
            ((float *)a.out)[i] = o;
    }
}

extern "C" KVRT_EXPORT kvrt_status_t kvrt_cuda_decode_attention(kvrt_ctx_t *ctx,
                                                                const kvrt_kv_cache_t *cache,
                                                                const kvrt_decode_attention_t *attn,
                                                                kvrt_cuda_stream_t *stream)
{
    kv_geometry_t g;
    kvrt_dtype_t out_dtype;
    float scale;
    kvrt_status_t status = kv_geometry_init(ctx, __func__, cache, &g);
    if (status == KVRT_OK)
        status = kv_attention_check(ctx, __func__, &g, attn, &out_dtype, &scale);
    if (status == KVRT_OK && g.head_dim > ATTN_MAX_DIM)
        status = kvrt_fail(ctx, KVRT_ERR_UNSUPPORTED, "head_dim %u is above %u on the GPU",
                           g.head_dim, ATTN_MAX_DIM);
    if (status == KVRT_OK && attn->num_seqs > KV_MAX_GRID)
        status = kvrt_fail(ctx, KVRT_ERR_UNSUPPORTED, "%u sequences; at most %u per call",
                           attn->num_seqs, KV_MAX_GRID);
    if (status == KVRT_OK)
        status = kv_cuda_ready(ctx, __func__);
    if (status != KVRT_OK || attn->num_seqs == 0)
        return status;

    attn_args a;
    a.g = g;
    a.base = (const char *)cache->base;
    a.k_scales = cache->k_scales;
    a.v_scales = cache->v_scales;
    a.layer = attn->layer;
    a.num_q_heads = attn->num_q_heads;
    a.q_dtype = attn->q_dtype;
    a.query = attn->query;
    a.block_tables = attn->block_tables;
    a.table_stride = attn->table_stride;
    a.seq_lens = attn->seq_lens;
    a.scale = scale;
    a.out_dtype = out_dtype;
    a.out = attn->out;
    dim3 grid(attn->num_q_heads, attn->num_seqs), block(ATTN_WARPS * 32);
    decode_attention_kernel<<<grid, block, 0, kv_stream(stream)>>>(a);
    return kv_cuda_launched(ctx, __func__);
}
