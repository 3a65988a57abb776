/*
 * host_move.cu - whole blocks between a cache in device memory and pinned
 * host staging, for the tier layer: kvrt_cuda_gather_blocks_to_host and
 * kvrt_cuda_scatter_blocks_from_host.
 *
 * These move bytes with the GPU's copy engines (cudaMemcpyAsync and
 * cudaMemcpy2DAsync), not with a kernel: a copy engine crosses PCIe at
 * full speed without taking multiprocessors from the model running beside
 * it, which is the point of moving KV on its own stream.
 *
 * A block's pages go to staging in gather's order [layer][K, V][page]. Each
 * arrangement of kvrt/layout.h puts those pages at a pattern the copy
 * engine can take in one or two descriptors per block (see block_copies),
 * and whole-block runs that are adjacent on both sides merge into one copy,
 * so the number of copies, not their size, stays small.
 */
#include <string.h>

#include "cuda_common.cuh"

/* cudaMemcpy2D pitches must stay below cudaDevAttrMaxPitch (2^31 - 1 on
 * every current GPU); larger strides fall back to one copy per page. */
#define MAX_PITCH 2147483647ull

typedef struct copy_op {
    bool to_host;
    cudaStream_t stream;
    char *pending_dst; /* a 1D run waiting to grow; len 0 when none */
    const char *pending_src;
    uint64_t pending_len;
    cudaError_t err;
} copy_op_t;

static void flush(copy_op_t *op)
{
    if (op->pending_len && op->err == cudaSuccess)
        op->err = cudaMemcpyAsync(op->pending_dst, op->pending_src, op->pending_len,
                                  cudaMemcpyDefault, op->stream);
    op->pending_len = 0;
}

/* A contiguous copy, merged with the previous one when both sides adjoin. */
static void copy_1d(copy_op_t *op, char *dst, const char *src, uint64_t len)
{
    if (op->pending_len && op->pending_dst + op->pending_len == dst &&
        op->pending_src + op->pending_len == src) {
        op->pending_len += len;
        return;
    }
    flush(op);
    op->pending_dst = dst;
    op->pending_src = src;
    op->pending_len = len;
}

/* rows rows of width bytes: cache side at cache_pitch, staging side at
 * stage_pitch. */
static void copy_2d(copy_op_t *op, char *cache, uint64_t cache_pitch, char *stage,
                    uint64_t stage_pitch, uint64_t width, uint64_t rows)
{
    /* One row is a plain copy: with a single layer the layer stride is 0,
     * a pitch below the width that cudaMemcpy2D must not see. */
    if (rows == 1) {
        copy_1d(op, op->to_host ? stage : cache, op->to_host ? cache : stage, width);
        return;
    }
    flush(op);
    if (op->err != cudaSuccess)
        return;
    if (cache_pitch > MAX_PITCH || stage_pitch > MAX_PITCH) {
        for (uint64_t r = 0; r < rows; r++) {
            char *c = cache + r * cache_pitch, *s = stage + r * stage_pitch;
            copy_1d(op, op->to_host ? s : c, op->to_host ? c : s, width);
        }
        return;
    }
    if (op->to_host)
        op->err = cudaMemcpy2DAsync(stage, stage_pitch, cache, cache_pitch, width, rows,
                                    cudaMemcpyDefault, op->stream);
    else
        op->err = cudaMemcpy2DAsync(cache, cache_pitch, stage, stage_pitch, width, rows,
                                    cudaMemcpyDefault, op->stream);
}

/*
 * One block's pages, in the fewest copies its arrangement allows:
 *  - the whole block contiguous (BLOCK_MAJOR + FUSED): one 1D copy;
 *  - every (layer, half) page at one pitch (LAYER_MAJOR + SEPARATE, whose
 *    layer stride is twice its half stride): one 2D copy of 2L rows;
 *  - K and V adjacent in each layer (LAYER_MAJOR + FUSED): one 2D copy of
 *    L rows of two pages;
 *  - otherwise (BLOCK_MAJOR + SEPARATE): one 2D copy of L rows per half.
 */
static void block_copies(copy_op_t *op, const kv_geometry_t *g, char *base, uint64_t block,
                         char *stage)
{
    uint64_t page = g->page_bytes, layers = g->num_layers;
    char *first = base + kv_page_offset(g, block, 0, KVRT_K);
    if (g->half_stride == page && g->layer_stride == 2 * page) {
        copy_1d(op, op->to_host ? stage : first, op->to_host ? first : stage, g->block_bytes);
    } else if (g->layer_stride == 2 * g->half_stride) {
        copy_2d(op, first, g->half_stride, stage, page, page, 2 * layers);
    } else if (g->half_stride == page) {
        copy_2d(op, first, g->layer_stride, stage, 2 * page, 2 * page, layers);
    } else {
        for (uint32_t half = 0; half < 2; half++)
            copy_2d(op, first + half * g->half_stride, g->layer_stride, stage + half * page,
                    2 * page, page, layers);
    }
}

static bool is_pinned_host(const void *p)
{
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return attr.type == cudaMemoryTypeHost;
}

static bool is_device(const void *p)
{
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

static kvrt_status_t host_move(kvrt_ctx_t *ctx, const char *func, const kvrt_kv_cache_t *cache,
                               const int32_t *blocks, uint32_t count, char *staging,
                               bool to_host, kvrt_cuda_stream_t *stream)
{
    kv_geometry_t g;
    kvrt_status_t status = kv_geometry_init(ctx, func, cache, &g);
    if (status == KVRT_OK)
        status = kv_blocks_check(ctx, func, &g, blocks, count, staging);
    for (uint32_t i = 0; status == KVRT_OK && i < count; i++)
        if (blocks[i] < 0 || (uint32_t)blocks[i] >= g.num_blocks)
            status = kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                                "blocks[%u] = %d is outside 0 .. %u", i, blocks[i],
                                g.num_blocks - 1);
    if (status == KVRT_OK)
        status = kv_cuda_ready(ctx, func);
    if (status != KVRT_OK || count == 0)
        return status;
    uint64_t bytes = g.block_bytes * count;
    if (!is_pinned_host(staging) || !is_pinned_host(staging + bytes - 1))
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                          "staging is not %llu bytes of pinned host memory "
                          "(cudaHostAlloc or cudaHostRegister)",
                          (unsigned long long)bytes);
    if (!is_device(cache->base))
        return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG, "cache base is not device memory");

    copy_op_t op;
    memset(&op, 0, sizeof op);
    op.to_host = to_host;
    op.stream = kv_stream(stream);
    for (uint32_t i = 0; i < count && op.err == cudaSuccess; i++)
        block_copies(&op, &g, (char *)cache->base, (uint64_t)blocks[i],
                     staging + (uint64_t)i * g.block_bytes);
    flush(&op);
    if (op.err != cudaSuccess) {
        (void)cudaGetLastError();
        return kvrt_fail_(ctx, func, KVRT_ERR_DEVICE, "enqueueing a copy failed: %s",
                          cudaGetErrorString(op.err));
    }
    return KVRT_OK;
}

extern "C" KVRT_EXPORT kvrt_status_t kvrt_cuda_gather_blocks_to_host(
    kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache, const int32_t *blocks, uint32_t count,
    void *host_staging_out, kvrt_cuda_stream_t *stream)
{
    return host_move(ctx, __func__, cache, blocks, count, (char *)host_staging_out, true,
                     stream);
}

extern "C" KVRT_EXPORT kvrt_status_t kvrt_cuda_scatter_blocks_from_host(
    kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache, const void *host_staging,
    const int32_t *blocks, uint32_t count, kvrt_cuda_stream_t *stream)
{
    /* Read-only in this direction. */
    return host_move(ctx, __func__, cache, blocks, count, (char *)(uintptr_t)host_staging,
                     false, stream);
}
