/*
 * attention.cu - CUDA paged decode attention, the device twin of
 * kernels/cpu/attention.c: one query token per sequence over its block
 * table, grouped-query heads, fp32 accumulation, online softmax.
 *
 * Decode attention reads every K/V byte once and does little arithmetic
 * with it, so its speed is the speed at which it reads the cache. The main
 * path (attention_gqa.cuh) therefore reads each KV head of a sequence once
 * for all the query heads sharing it, 16 bytes per lane, and splits long
 * sequences across CUDA blocks when the batch alone would leave
 * multiprocessors idle; a second kernel here merges the pieces' softmax
 * states (flash-decoding).
 *
 * Caches the main path cannot read with aligned vectors (head_dim not a
 * multiple of 8, a base not 16-byte aligned) take the simple path: one CUDA
 * block per (query head, sequence), each warp a token at a time.
 */
#include <math.h>
#include <string.h>

#include "attention_gqa.cuh"

#define SIMPLE_WARPS 4
#define ATTN_PER_LANE (ATTN_MAX_DIM / 32)

/* ---- the simple path --------------------------------------------------- */


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

__global__ void simple_attention_kernel(attn_args a)
{
    __shared__ float part_max[SIMPLE_WARPS], part_sum[SIMPLE_WARPS];
    __shared__ float part_acc[SIMPLE_WARPS][ATTN_MAX_DIM];

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

    /* Unsigned token indices: len can be 2^31 - 1, and t + SIMPLE_WARPS
     * must not wrap (see attention_gqa.cuh). Out of range: read nothing
     * rather than past the table. */
    int32_t seq_len = a.seq_lens[seq];
    uint64_t max_len = (uint64_t)a.table_stride * g.tokens_per_block;
    uint32_t len = seq_len < 0 || (uint64_t)seq_len > max_len ? 0 : (uint32_t)seq_len;
    const int32_t *table = a.block_tables + (uint64_t)seq * a.table_stride;
    float run_max = -INFINITY, run_sum = 0.0f;
    for (uint32_t t = warp; t < len; t += SIMPLE_WARPS) {
        int32_t block = table[t / g.tokens_per_block];
        if (block < 0 || (uint32_t)block >= g.num_blocks)
            continue; /* an invalid id contributes nothing */
        uint64_t row = (uint64_t)(t % g.tokens_per_block) * g.row_bytes +
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
    for (int w = 0; w < SIMPLE_WARPS; w++)
        total_max = fmaxf(total_max, part_max[w]);
    float weights[SIMPLE_WARPS], total_sum = 0.0f;
    for (int w = 0; w < SIMPLE_WARPS; w++) {
        weights[w] = part_sum[w] > 0.0f ? expf(part_max[w] - total_max) : 0.0f;
        total_sum += part_sum[w] * weights[w];
    }
    float inv = total_sum > 0.0f ? 1.0f / total_sum : 0.0f;
    for (uint32_t e = threadIdx.x; e < dim; e += blockDim.x) {
        float o = 0.0f;
        for (int w = 0; w < SIMPLE_WARPS; w++)
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

/* ---- merging the pieces of split sequences ---------------------------- */

/*
 * One CUDA block per (query head, sequence): weights every piece's partial
 * sum by exp2(its max - the overall max) and normalizes. A piece that saw
 * no token (sum 0, max -inf) drops out.
 */
__global__ void merge_splits_kernel(gqa_args a)
{
    uint32_t head = blockIdx.x, seq = blockIdx.y, dim = a.g.head_dim;
    uint64_t row = (uint64_t)seq * a.num_q_heads + head;
    const float *m = a.ws_max + row * a.splits;
    const float *l = a.ws_sum + row * a.splits;
    const float *acc = a.ws_acc + row * a.splits * dim;
    float top = -INFINITY;
    for (uint32_t s = 0; s < a.splits; s++)
        if (l[s] > 0.0f)
            top = fmaxf(top, m[s]);
    float total = 0.0f;
    for (uint32_t s = 0; s < a.splits; s++)
        if (l[s] > 0.0f)
            total += l[s] * exp2f(m[s] - top);
    float inv = total > 0.0f ? 1.0f / total : 0.0f;
    for (uint32_t e = threadIdx.x; e < dim; e += blockDim.x) {
        float o = 0.0f;
        for (uint32_t s = 0; s < a.splits; s++)
            if (l[s] > 0.0f)
                o += acc[(uint64_t)s * dim + e] * exp2f(m[s] - top);
        gqa_store_out(a, row * dim + e, o * inv);
    }
}

/* ---- planning and launch ----------------------------------------------- */

/* Tokens below which a piece is not worth a CUDA block of its own. */
#define MIN_SPLIT_TOKENS 256u
/* CUDA blocks per multiprocessor the split count aims for: 2-3 are
 * resident at a time, so this is about three waves, enough that the last
 * wave's idle multiprocessors cost little. */
#define BLOCKS_PER_SM 8u
#define MAX_SPLITS 64u

typedef struct attn_plan {
    bool gqa;            /* the main path; false: the simple path */
    uint32_t group_max;  /* query heads per CUDA block: 1, 2, 4 or 8 */
    uint32_t chunks;     /* CUDA blocks per KV head: ceil(group / group_max) */
    uint32_t splits;     /* pieces per sequence */
    uint32_t split_tokens;
    uint64_t split_bytes; /* workspace per piece of every (seq, query head) */
} attn_plan_t;

static kvrt_status_t plan_attention(kvrt_ctx_t *ctx, const char *func, const kv_geometry_t *g,
                                    const kvrt_kv_cache_t *cache,
                                    const kvrt_decode_attention_t *attn, uint64_t workspace_bytes,
                                    attn_plan_t *p)
{
    memset(p, 0, sizeof *p);
    p->splits = 1;
    p->gqa = g->head_dim % 8 == 0 && ((uintptr_t)cache->base & 15) == 0;
    if (!p->gqa)
        return KVRT_OK;
    uint32_t group = attn->num_q_heads / g->num_kv_heads;
    p->group_max = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
    p->chunks = (group + p->group_max - 1) / p->group_max;
    uint64_t max_len = (uint64_t)attn->table_stride * g->tokens_per_block;
    if (attn->field_mask & KVRT_ATTN_FIELD_MAX_SEQ_LEN)
        max_len = attn->max_seq_len;
    p->split_bytes = (uint64_t)attn->num_seqs * attn->num_q_heads * (g->head_dim + 2) * 4;
    if (p->split_bytes == 0)
        return KVRT_OK; /* no sequences: nothing to split (and nothing to divide by) */
    int device = 0, sms = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
        (void)cudaGetLastError();
        return kvrt_fail_(ctx, func, KVRT_ERR_DEVICE, "cannot read the multiprocessor count");
    }
    uint64_t blocks = (uint64_t)attn->num_seqs * g->num_kv_heads * p->chunks;
    uint64_t want = ((uint64_t)sms * BLOCKS_PER_SM + blocks - 1) / (blocks ? blocks : 1);
    uint64_t by_len = max_len / MIN_SPLIT_TOKENS;
    uint64_t splits = want < by_len ? want : by_len;
    if (splits > MAX_SPLITS)
        splits = MAX_SPLITS;
    uint64_t fits = workspace_bytes / p->split_bytes;
    if (splits > fits)
        splits = fits;
    p->splits = splits > 1 ? (uint32_t)splits : 1;
    p->split_tokens = (uint32_t)((max_len + p->splits - 1) / p->splits);
    return KVRT_OK;
}

/* Everything both entry points check, then the plan. */
static kvrt_status_t check_and_plan(kvrt_ctx_t *ctx, const char *func,
                                    const kvrt_kv_cache_t *cache,
                                    const kvrt_decode_attention_t *attn, uint64_t workspace_bytes,
                                    kv_geometry_t *g, kvrt_dtype_t *out_dtype, float *scale,
                                    attn_plan_t *plan)
{
    kvrt_status_t status = kv_geometry_init(ctx, func, cache, g);
    if (status == KVRT_OK)
        status = kv_attention_check(ctx, func, g, attn, out_dtype, scale);
    if (status == KVRT_OK && g->head_dim > ATTN_MAX_DIM)
        status = kvrt_fail_(ctx, func, KVRT_ERR_UNSUPPORTED, "head_dim %u is above %u on the GPU",
                            g->head_dim, ATTN_MAX_DIM);
    if (status == KVRT_OK && attn->num_seqs > KV_MAX_GRID)
        status = kvrt_fail_(ctx, func, KVRT_ERR_UNSUPPORTED, "%u sequences; at most %u per call",
                            attn->num_seqs, KV_MAX_GRID);
    if (status == KVRT_OK)
        status = kv_cuda_ready(ctx, func);
    if (status == KVRT_OK)
        status = plan_attention(ctx, func, g, cache, attn, workspace_bytes, plan);
    return status;
}

extern "C" KVRT_EXPORT kvrt_status_t kvrt_cuda_decode_attention_workspace(
    kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache, const kvrt_decode_attention_t *attn,
    uint64_t *bytes_out)
{
    if (!bytes_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "bytes_out is NULL");
    kv_geometry_t g;
    kvrt_dtype_t out_dtype;
    float scale;
    attn_plan_t plan;
    kvrt_status_t status =
        check_and_plan(ctx, __func__, cache, attn, UINT64_MAX, &g, &out_dtype, &scale, &plan);
    if (status == KVRT_OK)
        *bytes_out = plan.splits > 1 ? plan.splits * plan.split_bytes : 0;
    return status;
}

static attn_args resolve_args(const kv_geometry_t &g, const kvrt_kv_cache_t *cache,
                              const kvrt_decode_attention_t *attn, float scale,
                              kvrt_dtype_t out_dtype)
{
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
    return a;
}

extern "C" KVRT_EXPORT kvrt_status_t kvrt_cuda_decode_attention(kvrt_ctx_t *ctx,
                                                                const kvrt_kv_cache_t *cache,
                                                                const kvrt_decode_attention_t *attn,
                                                                kvrt_cuda_stream_t *stream)
{
    kv_geometry_t g;
    kvrt_dtype_t out_dtype;
    float scale;
    attn_plan_t plan;
    /* Without a workspace every sequence is one piece. */
    uint64_t workspace = attn && (attn->field_mask & KVRT_ATTN_FIELD_WORKSPACE)
                             ? attn->workspace_bytes
                             : 0;
    kvrt_status_t status =
        check_and_plan(ctx, __func__, cache, attn, workspace, &g, &out_dtype, &scale, &plan);
    if (status != KVRT_OK || attn->num_seqs == 0)
        return status;
    attn_args common = resolve_args(g, cache, attn, scale, out_dtype);
    if (!plan.gqa) {
        dim3 grid(attn->num_q_heads, attn->num_seqs), block(SIMPLE_WARPS * 32);
        simple_attention_kernel<<<grid, block, 0, kv_stream(stream)>>>(common);
        return kv_cuda_launched(ctx, __func__);
    }

    gqa_args a;
    static_cast<attn_args &>(a) = common;
    a.group = attn->num_q_heads / g.num_kv_heads;
    a.q_scale = scale * 1.4426950408889634f; /* logits in log2 units: exp2 below */
    a.splits = plan.splits;
    a.split_tokens = plan.split_tokens;
    a.ws_acc = a.ws_max = a.ws_sum = NULL;
    if (plan.splits > 1) {
        uint64_t rows = (uint64_t)attn->num_seqs * attn->num_q_heads * plan.splits;
        a.ws_acc = (float *)attn->workspace;
        a.ws_max = a.ws_acc + rows * g.head_dim;
        a.ws_sum = a.ws_max + rows;
    }
    dim3 grid(g.num_kv_heads * plan.chunks, attn->num_seqs, plan.splits);
    if (grid.x > KV_MAX_GRID)
        return kvrt_fail(ctx, KVRT_ERR_UNSUPPORTED, "%u query heads; too many for one launch",
                         attn->num_q_heads);
    gqa_launch(a, plan.group_max, grid, kv_stream(stream));
    if (plan.splits > 1)
        merge_splits_kernel<<<dim3(attn->num_q_heads, attn->num_seqs), 128, 0,
                              kv_stream(stream)>>>(a);
    return kv_cuda_launched(ctx, __func__);
}
