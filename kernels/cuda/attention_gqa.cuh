/*
 * attention_gqa.cuh - the main CUDA decode attention kernel: one CUDA block
 * per (KV head, query-head chunk, sequence, piece), which reads the piece's
 * K/V rows of that KV head once and applies them to up to 8 query heads.
 *
 * Work split inside a CUDA block (4 warps): a token's row of one head is
 * head_dim elements; LANES = head_dim rounded up to 64/128/256, divided by
 * 8, lanes share it, each holding 8 consecutive elements (16 bytes of FP16/
 * BF16, 8 of FP8). So a warp works on 32 / LANES tokens at once (4 for
 * head_dim 64, 2 for 128, 1 for 256), and each lane group loads UNROLL
 * tokens' K and V before using any, to keep enough bytes in flight. Dot
 * products reduce across the group with xor shuffles, which leave the sum in
 * every lane, so each lane keeps its own copy of the softmax state (running
 * max and sum per query head) and its 8 elements of each head's output.
 * At the end the groups merge through shared memory, and either the CUDA
 * block writes the output (one piece) or its unnormalized piece goes to the
 * workspace for merge_splits_kernel (attention.cu).
 *
 * Logits are kept in log2 units (q is scaled by softmax_scale * log2(e) on
 * load) so the softmax uses exp2f. FP8 rows are converted with the
 * hardware e4m3 -> f16 conversion where there is one (every e4m3 value is
 * exact in f16), and scaled once per token: the K scale multiplies the dot
 * product, the V scale the token's weight.
 *
 * Internal: included by attention.cu only.
 */
#ifndef KVRT_ATTENTION_GQA_CUH
#define KVRT_ATTENTION_GQA_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <math.h>

#include "cuda_common.cuh"

#define ATTN_MAX_DIM 256
#define GQA_WARPS 4
#define GQA_THREADS (GQA_WARPS * 32)
#ifndef KVRT_GQA_UNROLL
#define KVRT_GQA_UNROLL 4
#endif
#ifndef KVRT_GQA_CH4
#define KVRT_GQA_CH4 1
#endif

/* What both attention paths read: the call, checked and resolved. */
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
    float scale;             /* softmax scale */
    kvrt_dtype_t out_dtype;
    void *out;
};

struct gqa_args : attn_args {
    uint32_t group;          /* query heads per KV head */
    float q_scale;           /* softmax_scale * log2(e) */
    uint32_t splits;         /* pieces per sequence; 1: no workspace used */
    uint32_t split_tokens;   /* tokens per piece; the last one takes the rest */
    float *ws_acc;           /* [seq][q head][piece][head_dim] */
    float *ws_max;           /* [seq][q head][piece] */
    float *ws_sum;
};

static __device__ __forceinline__ void gqa_store_out(const gqa_args &a, uint64_t i, float v)
{
    kv_store_elem(a.out, a.out_dtype, i, v);
}

/* Cache element kinds the kernel is instantiated for. */
enum gqa_kind { GQA_FP16, GQA_BF16, GQA_FP8 };

/* 8 consecutive cache elements: their raw bytes and their float values
 * (FP8 not yet scaled). */
template <int KIND> struct gqa_vec {
    typedef uint4 raw_t; /* 8 x 16 bits */
    static constexpr int bytes = 2;
    static __device__ __forceinline__ void load(raw_t &r, const char *p)
    {
        r = __ldg(reinterpret_cast<const uint4 *>(p));
    }
    static __device__ __forceinline__ void to_float(float *f, const raw_t &r)
    {
        const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (KIND == GQA_BF16) {
                f[2 * i] = __uint_as_float(w[i] << 16);
                f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
            } else {
                float2 x = __half22float2(*reinterpret_cast<const __half2 *>(&w[i]));
                f[2 * i] = x.x;
                f[2 * i + 1] = x.y;
            }
        }
    }
};

template <> struct gqa_vec<GQA_FP8> {
    typedef uint2 raw_t; /* 8 x 8 bits */
    static constexpr int bytes = 1;
    static __device__ __forceinline__ void load(raw_t &r, const char *p)
    {
        r = __ldg(reinterpret_cast<const uint2 *>(p));
    }
    static __device__ __forceinline__ void to_float(float *f, const raw_t &r)
    {
        const uint32_t w[2] = {r.x, r.y};
#pragma unroll
        for (int i = 0; i < 2; i++) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
                __nv_fp8x2_storage_t pair = (__nv_fp8x2_storage_t)(w[i] >> (16 * j));
                __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3);
                float2 x = __half22float2(*reinterpret_cast<__half2 *>(&h));
                f[4 * i + 2 * j] = x.x;
                f[4 * i + 2 * j + 1] = x.y;
            }
        }
    }
};

/* 2^x by the hardware unit (2 ulp; 2^-inf = 0), not the libm sequence. */
static __device__ __forceinline__ float gqa_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

/*
 * DPAD: head_dim rounded up to 64/128/256. GMAX: query heads per CUDA
 * block. KIND: cache dtype. CH: 8-element chunks per lane (2 halves the
 * lanes per row, and so the shuffles and softmax work per token, at the
 * cost of registers; used when GMAX <= 4).
 */
template <int DPAD, int GMAX, int KIND, int CH>
__global__ void __launch_bounds__(GQA_THREADS) gqa_attention_kernel(gqa_args a)
{
    constexpr int LANES = DPAD / (8 * CH); /* lanes per token row */
    constexpr int TPW = 32 / LANES;        /* tokens per warp at once */
    constexpr int GROUPS = GQA_WARPS * TPW;
    constexpr int UNROLL = GMAX >= 8 ? 2 : KVRT_GQA_UNROLL;
    constexpr int EB = gqa_vec<KIND>::bytes;
    typedef gqa_vec<KIND> vec;

    __shared__ float sh_max[GROUPS][GMAX], sh_sum[GROUPS][GMAX];
    __shared__ float sh_acc[GROUPS][GMAX][DPAD];

    const kv_geometry_t &g = a.g;
    const uint32_t dim = g.head_dim;
    const uint32_t kv_head = blockIdx.x % g.num_kv_heads;
    const uint32_t chunk = blockIdx.x / g.num_kv_heads;
    const uint32_t seq = blockIdx.y, piece = blockIdx.z;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const uint32_t sub = lane / LANES, li = lane % LANES;
    const uint32_t gid = warp * TPW + sub;
    const uint32_t first_q = kv_head * a.group + chunk * GMAX;
    const uint32_t heads = min((uint32_t)GMAX, a.group - chunk * GMAX);
    uint32_t e0[CH];
    bool active[CH];
#pragma unroll
    for (int c = 0; c < CH; c++) {
        e0[c] = (li + c * LANES) * 8; /* each load instruction stays coalesced */
        active[c] = e0[c] < dim;
    }

    float q[GMAX][CH][8], acc[GMAX][CH][8], run_max[GMAX], run_sum[GMAX];
#pragma unroll
    for (int h = 0; h < GMAX; h++) {
        uint64_t q_row = ((uint64_t)seq * a.num_q_heads + first_q + h) * dim;
#pragma unroll
        for (int c = 0; c < CH; c++)
#pragma unroll
            for (int i = 0; i < 8; i++) {
                bool used = active[c] && (uint32_t)h < heads;
                q[h][c][i] = used ? kv_load_elem(a.query, a.q_dtype, q_row + e0[c] + i) * a.q_scale
                                  : 0.0f;
                acc[h][c][i] = 0.0f;
            }
        run_max[h] = -INFINITY;
        run_sum[h] = 0.0f;
    }

    /* Token indices are unsigned 32-bit: a sequence has at most 2^31 - 1
     * tokens (kv_attention_check), so an index plus the lookahead below
     * (a few hundred) never wraps, where int32 would turn negative and
     * index before the table. */
    int32_t seq_len = a.seq_lens[seq];
    uint64_t max_len = (uint64_t)a.table_stride * g.tokens_per_block;
    uint32_t len = seq_len < 0 || (uint64_t)seq_len > max_len ? 0 : (uint32_t)seq_len;
    uint32_t t_begin = (uint32_t)min((uint64_t)piece * a.split_tokens, (uint64_t)len);
    uint32_t t_end = piece + 1 == a.splits ? len : min(len, t_begin + a.split_tokens);
    const int32_t *table = a.block_tables + (uint64_t)seq * a.table_stride;
    const uint32_t tpb_shift = __ffs(g.tokens_per_block) - 1; /* a power of two */
    const char *head_base = a.base + (uint64_t)a.layer * g.layer_stride +
                            (uint64_t)kv_head * dim * EB;

    /* The block ids of a step's tokens are loaded one step ahead, so each
     * step waits for one round trip to memory (K/V), not two (id, then
     * K/V). -1 marks a token past the piece. */
    constexpr uint32_t STEP = GROUPS * UNROLL;
    int32_t next_block[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; u++) {
        uint32_t t = t_begin + warp * TPW + sub + u * GROUPS;
        next_block[u] = t < t_end ? __ldg(&table[t >> tpb_shift]) : -1;
    }

    /* t_warp is the same in every lane of a warp, so the shuffles below
     * always run with the whole warp. */
    for (uint32_t t_warp = t_begin + warp * TPW; t_warp < t_end; t_warp += STEP) {
        typename vec::raw_t kr[UNROLL][CH], vr[UNROLL][CH];
        bool ok[UNROLL];
        float k_scale[UNROLL], v_scale[UNROLL];
        int32_t step_block[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            step_block[u] = next_block[u];
            uint32_t t_next = t_warp + STEP + sub + u * GROUPS;
            next_block[u] = t_next < t_end ? __ldg(&table[t_next >> tpb_shift]) : -1;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            uint32_t t = t_warp + sub + u * GROUPS;
            int32_t block = step_block[u];
            ok[u] = block >= 0 && (uint32_t)block < g.num_blocks; /* invalid ids add nothing */
            k_scale[u] = v_scale[u] = 1.0f;
            if (ok[u]) {
                const char *k = head_base + (uint64_t)block * g.block_stride +
                                (uint64_t)(t & (g.tokens_per_block - 1)) * g.row_bytes;
#pragma unroll
                for (int c = 0; c < CH; c++)
                    if (active[c]) {
                        vec::load(kr[u][c], k + e0[c] * EB);
                        vec::load(vr[u][c], k + g.half_stride + e0[c] * EB);
                    }
                if (KIND == GQA_FP8) {
                    uint64_t si = kv_scale_index(&g, a.layer, (uint64_t)block, kv_head);
                    k_scale[u] = __ldg(&a.k_scales[si]);
                    v_scale[u] = __ldg(&a.v_scales[si]);
                }
            }
        }
        float logit[UNROLL][GMAX];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            float dot[GMAX];
#pragma unroll
            for (int h = 0; h < GMAX; h++)
                dot[h] = 0.0f;
#pragma unroll
            for (int c = 0; c < CH; c++) {
                float kf[8];
                if (active[c] && ok[u])
                    vec::to_float(kf, kr[u][c]);
                else
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        kf[i] = 0.0f;
#pragma unroll
                for (int h = 0; h < GMAX; h++)
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        dot[h] += q[h][c][i] * kf[i];
            }
#pragma unroll
            for (int h = 0; h < GMAX; h++) {
#pragma unroll
                for (int off = LANES / 2; off > 0; off /= 2)
                    dot[h] += __shfl_xor_sync(0xffffffffu, dot[h], off);
                logit[u][h] = ok[u] ? dot[h] * k_scale[u] : -INFINITY;
            }
        }
        /* One softmax rescale per UNROLL tokens: the new max covers them
         * all. Tokens that do not exist have logit -inf and weight 0. */
        float weight[UNROLL][GMAX];
#pragma unroll
        for (int h = 0; h < GMAX; h++) {
            float top = run_max[h];
#pragma unroll
            for (int u = 0; u < UNROLL; u++)
                top = fmaxf(top, logit[u][h]);
            float correction = top == -INFINITY ? 1.0f : gqa_exp2(run_max[h] - top);
            run_sum[h] *= correction;
#pragma unroll
            for (int c = 0; c < CH; c++)
#pragma unroll
                for (int i = 0; i < 8; i++)
                    acc[h][c][i] *= correction;
#pragma unroll
            for (int u = 0; u < UNROLL; u++) {
                weight[u][h] = top == -INFINITY ? 0.0f : gqa_exp2(logit[u][h] - top);
                run_sum[h] += weight[u][h];
                weight[u][h] *= v_scale[u];
            }
            run_max[h] = top;
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
#pragma unroll
            for (int c = 0; c < CH; c++) {
                if (!(active[c] && ok[u]))
                    continue;
                float vf[8];
                vec::to_float(vf, vr[u][c]);
#pragma unroll
                for (int h = 0; h < GMAX; h++)
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        acc[h][c][i] += weight[u][h] * vf[i];
            }
        }
    }

    /* Merge the lane groups: every lane of a group holds the same state. */
#pragma unroll
    for (int h = 0; h < GMAX; h++) {
        if (li == 0) {
            sh_max[gid][h] = run_max[h];
            sh_sum[gid][h] = run_sum[h];
        }
#pragma unroll
        for (int c = 0; c < CH; c++)
#pragma unroll
            for (int i = 0; i < 8; i++)
                sh_acc[gid][h][e0[c] + i] = acc[h][c][i];
    }
    __syncthreads();
    for (uint32_t idx = threadIdx.x; idx < heads * dim; idx += GQA_THREADS) {
        uint32_t h = idx / dim, e = idx % dim;
        float top = -INFINITY;
        for (int j = 0; j < GROUPS; j++)
            if (sh_sum[j][h] > 0.0f)
                top = fmaxf(top, sh_max[j][h]);
        float total = 0.0f, o = 0.0f;
        for (int j = 0; j < GROUPS; j++) {
            if (sh_sum[j][h] > 0.0f) {
                float w = gqa_exp2(sh_max[j][h] - top);
                total += sh_sum[j][h] * w;
                o += sh_acc[j][h][e] * w;
            }
        }
        uint64_t row = (uint64_t)seq * a.num_q_heads + first_q + h;
        if (a.splits == 1) {
            gqa_store_out(a, row * dim + e, total > 0.0f ? o / total : 0.0f);
        } else {
            uint64_t at = row * a.splits + piece;
            a.ws_acc[at * dim + e] = o;
            if (e == 0) {
                a.ws_max[at] = top;
                a.ws_sum[at] = total;
            }
        }
    }
}

template <int DPAD, int GMAX, int CH>
static void gqa_launch_dim(const gqa_args &a, dim3 grid, cudaStream_t stream)
{
    if (a.g.dtype == KVRT_DTYPE_FP8_E4M3)
        gqa_attention_kernel<DPAD, GMAX, GQA_FP8, CH><<<grid, GQA_THREADS, 0, stream>>>(a);
    else if (a.g.dtype == KVRT_DTYPE_BF16)
        gqa_attention_kernel<DPAD, GMAX, GQA_BF16, CH><<<grid, GQA_THREADS, 0, stream>>>(a);
    else
        gqa_attention_kernel<DPAD, GMAX, GQA_FP16, CH><<<grid, GQA_THREADS, 0, stream>>>(a);
}

template <int GMAX>
static void gqa_launch_group(const gqa_args &a, dim3 grid, cudaStream_t stream)
{
    constexpr int CH = GMAX <= 2 ? 2 : GMAX == 4 ? KVRT_GQA_CH4 : 1;
    if (a.g.head_dim <= 64)
        gqa_launch_dim<64, GMAX, CH>(a, grid, stream);
    else if (a.g.head_dim <= 128)
        gqa_launch_dim<128, GMAX, CH>(a, grid, stream);
    else
        gqa_launch_dim<256, GMAX, CH>(a, grid, stream);
}

/* Launches the instance for group_max (1, 2, 4 or 8) and the head_dim. */
static inline void gqa_launch(const gqa_args &a, uint32_t group_max, dim3 grid,
                              cudaStream_t stream)
{
    switch (group_max) {
    case 1:
        gqa_launch_group<1>(a, grid, stream);
        break;
    case 2:
        gqa_launch_group<2>(a, grid, stream);
        break;
    case 4:
        gqa_launch_group<4>(a, grid, stream);
        break;
    default:
        gqa_launch_group<8>(a, grid, stream);
        break;
    }
}

#endif /* KVRT_ATTENTION_GQA_CUH */
