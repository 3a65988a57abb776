/*
 * no_cuda.c - the kvrt_cuda_* entry points of a kvrt built without the
 * CUDA toolkit (or with -DKVRT_CUDA=OFF): each answers KVRT_ERR_NO_GPU, so
 * an engine can probe for GPU kernels at run time against one ABI.
 */
#include "core/core.h"
#include "kvrt/kernels.h"

static kvrt_status_t no_gpu(kvrt_ctx_t *ctx, const char *func)
{
    return kvrt_fail_(ctx, func, KVRT_ERR_NO_GPU, "kvrt was built without CUDA");
}

KVRT_EXPORT kvrt_status_t kvrt_cuda_device_count(int *count_out)
{
    return count_out ? KVRT_ERR_NO_GPU : KVRT_ERR_INVALID_ARG;
}

KVRT_EXPORT kvrt_status_t kvrt_cuda_write_kv(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                             const kvrt_kv_rows_t *rows, const void *key,
                                             const void *value, kvrt_cuda_stream_t *stream)
{
    return no_gpu(ctx, __func__);
}

KVRT_EXPORT kvrt_status_t kvrt_cuda_read_kv(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                            const kvrt_kv_rows_t *rows, void *key_out,
                                            void *value_out, kvrt_cuda_stream_t *stream)
{
    return no_gpu(ctx, __func__);
}

KVRT_EXPORT kvrt_status_t kvrt_cuda_gather_blocks(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                                  const int32_t *blocks, uint32_t count,
                                                  void *staging_out, kvrt_cuda_stream_t *stream)
{
    return no_gpu(ctx, __func__);
}

KVRT_EXPORT kvrt_status_t kvrt_cuda_scatter_blocks(kvrt_ctx_t *ctx,
                                                   const kvrt_kv_cache_t *cache,
                                                   const void *staging, const int32_t *blocks,
                                                   uint32_t count, kvrt_cuda_stream_t *stream)
{
    return no_gpu(ctx, __func__);
}

KVRT_EXPORT kvrt_status_t kvrt_cuda_copy_blocks(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                                const kvrt_block_copy_t *copies, uint32_t count,
                                                kvrt_cuda_stream_t *stream)
{
    return no_gpu(ctx, __func__);
}

KVRT_EXPORT kvrt_status_t kvrt_cuda_decode_attention(kvrt_ctx_t *ctx,
                                                     const kvrt_kv_cache_t *cache,
                                                     const kvrt_decode_attention_t *attn,
                                                     kvrt_cuda_stream_t *stream)
{
    return no_gpu(ctx, __func__);
}

KVRT_EXPORT kvrt_status_t kvrt_cuda_decode_attention_workspace(
    kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache, const kvrt_decode_attention_t *attn,
    uint64_t *bytes_out)
{
    return no_gpu(ctx, __func__);
}

KVRT_EXPORT kvrt_status_t kvrt_cuda_gather_blocks_to_host(
    kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache, const int32_t *blocks, uint32_t count,
    void *host_staging_out, kvrt_cuda_stream_t *stream)
{
    return no_gpu(ctx, __func__);
}

KVRT_EXPORT kvrt_status_t kvrt_cuda_scatter_blocks_from_host(
    kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache, const void *host_staging,
    const int32_t *blocks, uint32_t count, kvrt_cuda_stream_t *stream)
{
    return no_gpu(ctx, __func__);
}
