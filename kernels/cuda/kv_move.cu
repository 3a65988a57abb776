/*
 * kv_move.cu - CUDA kernels that move K/V through a paged cache: write and
 * read by slot, gather/scatter whole blocks, copy blocks. Same arguments
 * and results as the CPU references in kernels/cpu/kv_move.c.
 *
 * Addresses come from kv_geometry_t (strides measured on the host with
 * kvrt_layout_page_offset(), see kv_args.h), so device code never repeats
 * layout.h's formulas. Index arrays live in device memory and cannot be
 * checked on the host without a synchronization; the kernels skip any slot
 * or block id outside the cache instead (documented in kvrt/kernels.h).
 *
 * Movement is bandwidth-bound: each CUDA block copies whole token rows or
 * pages with the widest access (up to 16 bytes) every address allows, and
 * grids are capped and loop so a large batch never overflows a dimension.
 */
#include "cuda_common.cuh"

#define MOVE_THREADS 256

template <typename V>
static __device__ __forceinline__ void copy_bytes(char *dst, const char *src, uint64_t bytes)
{
    V *d = reinterpret_cast<V *>(dst);
    const V *s = reinterpret_cast<const V *>(src);
    uint64_t n = bytes / sizeof(V);
#pragma unroll 4
    for (uint64_t i = threadIdx.x; i < n; i += blockDim.x)
        d[i] = s[i];
}

/* ---- write / read by slot --------------------------------------------- */

struct rows_args {
    kv_geometry_t g;
    char *base;
    const int64_t *slots;
    uint32_t layer;
    uint32_t num_tokens;
    kvrt_dtype_t io_dtype;
    uint64_t io_stride_bytes; /* between tokens of key/value */
    char *key;                /* read on write, written on read */
    char *value;
    const float *k_scales;
    const float *v_scales;
};

/* Same dtype in and out: one row per half and token, vector copies, in
 * either direction (a read zeroes the rows of padding slots). */
template <typename V>
__global__ void copy_rows_kernel(rows_args a, bool write)
{
    for (uint64_t t = blockIdx.x; t < a.num_tokens; t += gridDim.x) {
        int64_t slot = a.slots[t];
        bool valid = slot >= 0 && (uint64_t)slot < a.g.num_slots;
        if (write && !valid)
            continue;
        uint64_t block = valid ? (uint64_t)slot / a.g.tokens_per_block : 0;
        uint64_t row = valid ? ((uint64_t)slot % a.g.tokens_per_block) * a.g.row_bytes : 0;
        for (uint32_t half = 0; half < 2; half++) {
            char *io = (half ? a.value : a.key) + t * a.io_stride_bytes;
            if (!valid) {
                V *d = reinterpret_cast<V *>(io);
                for (uint64_t i = threadIdx.x; i < a.g.row_bytes / sizeof(V); i += blockDim.x)
                    d[i] = V();
                continue;
            }
            char *cache = a.base + kv_page_offset(&a.g, block, a.layer, half) + row;
            copy_bytes<V>(write ? cache : io, write ? io : cache, a.g.row_bytes);
        }
    }
}

/*
 * Converting rows: quantize into an FP8 cache (write) or convert out of the
 * cache into io_dtype (read; FP8 dequantized, padding rows zeroed).
 */
__global__ void convert_rows_kernel(rows_args a, bool write)
{
    uint32_t dim = a.g.head_dim;
    for (uint64_t t = blockIdx.x; t < a.num_tokens; t += gridDim.x) {
        int64_t slot = a.slots[t];
        bool valid = slot >= 0 && (uint64_t)slot < a.g.num_slots;
        if (write && !valid)
            continue;
        uint64_t block = valid ? (uint64_t)slot / a.g.tokens_per_block : 0;
        uint64_t row = valid ? ((uint64_t)slot % a.g.tokens_per_block) * a.g.row_bytes : 0;
        for (uint32_t half = 0; half < 2; half++) {
            char *io = (half ? a.value : a.key) + t * a.io_stride_bytes;
            char *cache = a.base + kv_page_offset(&a.g, block, a.layer, half) + row;
            const float *scales = half ? a.v_scales : a.k_scales;
            for (uint32_t e = threadIdx.x; e < a.g.row_elems; e += blockDim.x) {
                if (!valid) {
                    kv_store_elem(io, a.io_dtype, e, 0.0f);
                    continue;
                }
                float scale = a.g.fp8 ? scales[kv_scale_index(&a.g, a.layer, block, e / dim)]
                                      : 1.0f;
                if (write) {
                    kv_store_elem(cache, a.g.dtype, e, kv_load_elem(io, a.io_dtype, e) / scale);
                } else {
                    float v = kv_load_elem(cache, a.g.dtype, e);
                    kv_store_elem(io, a.io_dtype, e, a.g.fp8 ? v * scale : v);
                }
            }
        }
    }
}

static kvrt_status_t launch_rows(kvrt_ctx_t *ctx, const char *func,
                                 const kvrt_kv_cache_t *cache, const kvrt_kv_rows_t *rows,
                                 const void *key, const void *value, bool write,
                                 kvrt_cuda_stream_t *stream)
{
    kv_geometry_t g;
    uint64_t stride;
    kvrt_status_t status = kv_geometry_init(ctx, func, cache, &g);
    if (status == KVRT_OK)
        status = kv_rows_check(ctx, func, &g, rows, key, value, write, &stride);
    if (status == KVRT_OK)
        status = kv_cuda_ready(ctx, func);
    if (status != KVRT_OK || rows->num_tokens == 0)
        return status;

    rows_args a;
    a.g = g;
    a.base = (char *)cache->base;
    a.slots = rows->slot_mapping;
    a.layer = rows->layer;
    a.num_tokens = rows->num_tokens;
    a.io_dtype = rows->dtype;
    a.io_stride_bytes = stride * kv_io_dtype_bytes(rows->dtype);
    a.key = (char *)key;
    a.value = (char *)value;
    a.k_scales = cache->k_scales;
    a.v_scales = cache->v_scales;
    dim3 grid(kv_grid(rows->num_tokens)), block(MOVE_THREADS);
    cudaStream_t s = kv_stream(stream);
    if (rows->dtype == g.dtype) {
        unsigned w = kv_vector_bytes((uintptr_t)a.base | (uintptr_t)key | (uintptr_t)value |
                                     (uintptr_t)g.row_bytes | (uintptr_t)a.io_stride_bytes);
        if (w >= 16)
            copy_rows_kernel<uint4><<<grid, block, 0, s>>>(a, write);
        else if (w == 8)
            copy_rows_kernel<uint2><<<grid, block, 0, s>>>(a, write);
        else if (w == 4)
            copy_rows_kernel<uint32_t><<<grid, block, 0, s>>>(a, write);
        else
            copy_rows_kernel<uint16_t><<<grid, block, 0, s>>>(a, write);
    } else {
        convert_rows_kernel<<<grid, block, 0, s>>>(a, write);
    }
    return kv_cuda_launched(ctx, func);
}

extern "C" KVRT_EXPORT kvrt_status_t kvrt_cuda_write_kv(kvrt_ctx_t *ctx,
                                                        const kvrt_kv_cache_t *cache,
                                                        const kvrt_kv_rows_t *rows,
                                                        const void *key, const void *value,
                                                        kvrt_cuda_stream_t *stream)
{
    return launch_rows(ctx, __func__, cache, rows, key, value, true, stream);
}

extern "C" KVRT_EXPORT kvrt_status_t kvrt_cuda_read_kv(kvrt_ctx_t *ctx,
                                                       const kvrt_kv_cache_t *cache,
                                                       const kvrt_kv_rows_t *rows,
                                                       void *key_out, void *value_out,
                                                       kvrt_cuda_stream_t *stream)
{
    return launch_rows(ctx, __func__, cache, rows, key_out, value_out, false, stream);
}

/* ---- whole pages: gather, scatter, copy -------------------------------- */

enum move_mode { MOVE_GATHER = 0, MOVE_SCATTER = 1, MOVE_COPY = 2 };

struct pages_args {
    kv_geometry_t g;
    char *base;
    char *staging;                  /* gather/scatter: [i][layer][K, V][page] */
    const int32_t *blocks;          /* gather/scatter */
    const kvrt_block_copy_t *copies; /* copy */
    uint64_t num_pages;             /* count * num_layers * 2 */
    float *k_scales;                /* copy with per-block scales, else NULL */
    float *v_scales;
};

/* One CUDA block per page (looping over the grid), one page per iteration. */
template <typename V>
__global__ void move_pages_kernel(pages_args a, int mode)
{
    uint64_t pages_per_block = 2ull * a.g.num_layers;
    for (uint64_t p = blockIdx.x; p < a.num_pages; p += gridDim.x) {
        uint64_t i = p / pages_per_block;
        uint32_t layer = (uint32_t)((p % pages_per_block) / 2);
        uint32_t half = (uint32_t)(p % 2);
        const char *src;
        char *dst;
        if (mode == MOVE_COPY) {
            int32_t s = a.copies[i].src_block, d = a.copies[i].dst_block;
            if (s == d || s < 0 || d < 0 || (uint32_t)s >= a.g.num_blocks ||
                (uint32_t)d >= a.g.num_blocks)
                continue;
            src = a.base + kv_page_offset(&a.g, (uint64_t)s, layer, half);
            dst = a.base + kv_page_offset(&a.g, (uint64_t)d, layer, half);
            if (a.k_scales && threadIdx.x == 0) {
                float *scales = half ? a.v_scales : a.k_scales;
                scales[kv_scale_index(&a.g, layer, (uint64_t)d, 0)] =
                    scales[kv_scale_index(&a.g, layer, (uint64_t)s, 0)];
            }
        } else {
            int32_t b = a.blocks[i];
            if (b < 0 || (uint32_t)b >= a.g.num_blocks)
                continue;
            char *page = a.base + kv_page_offset(&a.g, (uint64_t)b, layer, half);
            char *stage = a.staging + p * a.g.page_bytes;
            src = mode == MOVE_GATHER ? page : stage;
            dst = mode == MOVE_GATHER ? stage : page;
        }
        copy_bytes<V>(dst, src, a.g.page_bytes);
    }
}

static kvrt_status_t launch_pages(kvrt_ctx_t *ctx, const char *func, pages_args *a, int mode,
                                  cudaStream_t s)
{
    unsigned w = kv_vector_bytes((uintptr_t)a->base | (uintptr_t)a->staging |
                                 (uintptr_t)a->g.page_bytes);
    dim3 grid(kv_grid(a->num_pages)), block(MOVE_THREADS);
    if (w >= 16)
        move_pages_kernel<uint4><<<grid, block, 0, s>>>(*a, mode);
    else if (w == 8)
        move_pages_kernel<uint2><<<grid, block, 0, s>>>(*a, mode);
    else if (w == 4)
        move_pages_kernel<uint32_t><<<grid, block, 0, s>>>(*a, mode);
    else if (w == 2)
        move_pages_kernel<uint16_t><<<grid, block, 0, s>>>(*a, mode);
    else
        move_pages_kernel<uint8_t><<<grid, block, 0, s>>>(*a, mode);
    return kv_cuda_launched(ctx, func);
}

static kvrt_status_t stage_blocks(kvrt_ctx_t *ctx, const char *func,
                                  const kvrt_kv_cache_t *cache, const int32_t *blocks,
                                  uint32_t count, void *staging, int mode,
                                  kvrt_cuda_stream_t *stream)
{
    kv_geometry_t g;
    kvrt_status_t status = kv_geometry_init(ctx, func, cache, &g);
    if (status == KVRT_OK)
        status = kv_blocks_check(ctx, func, &g, blocks, count, staging);
    if (status == KVRT_OK)
        status = kv_cuda_ready(ctx, func);
    if (status != KVRT_OK || count == 0)
        return status;
    pages_args a = {};
    a.g = g;
    a.base = (char *)cache->base;
    a.staging = (char *)staging;
    a.blocks = blocks;
    a.num_pages = (uint64_t)count * 2 * g.num_layers;
    return launch_pages(ctx, func, &a, mode, kv_stream(stream));
}

extern "C" KVRT_EXPORT kvrt_status_t kvrt_cuda_gather_blocks(kvrt_ctx_t *ctx,
                                                             const kvrt_kv_cache_t *cache,
                                                             const int32_t *blocks,
                                                             uint32_t count, void *staging_out,
                                                             kvrt_cuda_stream_t *stream)
{
    return stage_blocks(ctx, __func__, cache, blocks, count, staging_out, MOVE_GATHER, stream);
}

extern "C" KVRT_EXPORT kvrt_status_t kvrt_cuda_scatter_blocks(kvrt_ctx_t *ctx,
                                                              const kvrt_kv_cache_t *cache,
                                                              const void *staging,
                                                              const int32_t *blocks,
                                                              uint32_t count,
                                                              kvrt_cuda_stream_t *stream)
{
    return stage_blocks(ctx, __func__, cache, blocks, count, (void *)staging, MOVE_SCATTER,
                        stream);
}

extern "C" KVRT_EXPORT kvrt_status_t kvrt_cuda_copy_blocks(kvrt_ctx_t *ctx,
                                                           const kvrt_kv_cache_t *cache,
                                                           const kvrt_block_copy_t *copies,
                                                           uint32_t count,
                                                           kvrt_cuda_stream_t *stream)
{
    kv_geometry_t g;
    kvrt_status_t status = kv_geometry_init(ctx, __func__, cache, &g);
    if (status == KVRT_OK)
        status = kv_copies_check(ctx, __func__, copies, count);
    if (status == KVRT_OK)
        status = kv_cuda_ready(ctx, __func__);
    if (status != KVRT_OK || count == 0)
        return status;
    pages_args a = {};
    a.g = g;
    a.base = (char *)cache->base;
    a.copies = copies;
    a.num_pages = (uint64_t)count * 2 * g.num_layers;
    if (g.fp8 && g.scale_mode == KVRT_SCALE_PER_BLOCK) {
        a.k_scales = cache->k_scales;
        a.v_scales = cache->v_scales;
    }
    return launch_pages(ctx, __func__, &a, MOVE_COPY, kv_stream(stream));
}
