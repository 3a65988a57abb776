/*
 * kvrt/kernels.h - the kernels that move KV through a paged cache: write a
 * step's new K/V, read it back (dequantizing FP8), gather and scatter whole
 * blocks through a staging buffer (device or pinned host memory), copy
 * blocks (copy-on-write), and paged decode attention that reads K/V
 * exactly where kvrt's block tables say it lies.
 *
 * Every kernel except the host staging movers has two variants with the
 * same arguments:
 *   kvrt_cpu_*   host pointers, runs on the calling thread, returns when done;
 *   kvrt_cuda_*  device pointers, enqueued on `stream` (NULL: the legacy
 *                default stream) and returns once launched; the caller
 *                synchronizes the stream before reading results.
 * The CPU variants are the reference the CUDA ones are tested against.
 *
 * Memory follows kvrt/layout.h exactly: a page (block, layer, K or V) is
 * [tokens_per_block][num_kv_heads][head_dim] elements, pages arranged as the
 * layout's format and order say (kvrt_layout_page_offset()). Token `slot`
 * lives in block slot / tokens_per_block at row slot % tokens_per_block.
 *
 * Dtypes: the cache holds FP16, BF16 or FP8_E4M3 (the OCP e4m3fn format:
 * max 448, no infinities, NaN 0x7F/0xFF). Block movers (gather, scatter,
 * copy) move bytes and accept any layout dtype. Conversions round to
 * nearest even; float -> FP8 saturates to +-448 (infinities included) and
 * keeps NaN as NaN. FP8 values are x / scale on write and q * scale on read.
 *
 * Errors and the context: ctx may be NULL; when given, a failure's detail
 * text goes to kvrt_ctx_last_error(ctx) (so concurrent calls must not share
 * a non-NULL ctx). Every function checks its arguments before touching
 * memory and returns KVRT_ERR_INVALID_ARG (NULL pointers, a pointer not
 * aligned to its element size - the cache base to its dtype, scales to 4
 * bytes, rows, queries and outputs to their dtype, index arrays to their
 * integer size -, a field out of range, an index out of range, unknown
 * field_mask bits),
 * KVRT_ERR_BAD_LAYOUT (the cache's layout fails kvrt_layout_validate()),
 * KVRT_ERR_OVERFLOW (sizes whose byte counts would not fit 64 bits),
 * KVRT_ERR_UNSUPPORTED (a dtype combination the kernel does not handle) or,
 * from kvrt_cpu_copy_blocks, KVRT_ERR_NO_MEMORY (its scratch for
 * overlapping pairs); on any error nothing was written.
 *
 * CPU variants validate every index (slots, block ids, sequence lengths)
 * first. CUDA variants cannot read device arrays without synchronizing, so
 * they check everything on the host side and, on the device, skip any
 * out-of-range slot or block id (nothing outside the cache is ever touched;
 * a skipped entry is simply not moved). CUDA variants also return
 * KVRT_ERR_NO_GPU (kvrt built without CUDA, or no device) and
 * KVRT_ERR_DEVICE (a CUDA launch error).
 *
 * Threads: all functions are safe from any thread; a cache region written
 * by one call must not be touched by another concurrently.
 */
#ifndef KVRT_KERNELS_H
#define KVRT_KERNELS_H

#include <stdint.h>

#include "kvrt/block_table.h"
#include "kvrt/context.h"
#include "kvrt/layout.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A CUDA stream: pass (kvrt_cuda_stream_t *)some_cudaStream_t, or NULL. */
typedef struct kvrt_cuda_stream kvrt_cuda_stream_t;

/* How FP8 scales are indexed (read only when the layout dtype is FP8_E4M3). */
typedef enum kvrt_scale_mode {
    KVRT_SCALE_PER_HEAD = 0,  /* scales[layer * num_kv_heads + head] */
    KVRT_SCALE_PER_BLOCK = 1  /* scales[layer * num_blocks + block] */
} kvrt_scale_mode_t;

enum kvrt_kv_cache_field {
    KVRT_KV_CACHE_FIELD_SCALES = 1u << 0 /* scale_mode, k_scales, v_scales */
};

/*
 * One paged KV cache as the kernels see it: a layout, a block count and the
 * base of num_blocks * block_bytes bytes (host memory for kvrt_cpu_*, device
 * memory for kvrt_cuda_*; a kvrt_pool's kvrt_pool_info() gives all three).
 * An FP8_E4M3 cache needs scales (field KVRT_KV_CACHE_FIELD_SCALES): finite,
 * positive floats in the same memory space as base. With PER_BLOCK scales,
 * kvrt_*_copy_blocks copies a block's scales along with its pages; gather
 * and scatter move page bytes only, the caller moves the scales.
 * Nothing here is retained after a call returns.
 */
typedef struct kvrt_kv_cache {
    uint64_t field_mask;
    kvrt_kv_layout_t layout;
    uint32_t num_blocks;
    void *base;
    kvrt_scale_mode_t scale_mode;
    float *k_scales;
    float *v_scales;
} kvrt_kv_cache_t;

enum kvrt_kv_rows_field {
    KVRT_KV_ROWS_FIELD_TOKEN_STRIDE = 1u << 0 /* token_stride */
};

/*
 * Dense per-token K/V rows and their slots: token i's rows are key/value
 * + i * token_stride elements, each [num_kv_heads][head_dim] contiguous.
 * token_stride defaults to num_kv_heads * head_dim (a dense tensor); a
 * larger stride reads K and V out of a fused QKV projection in place.
 * slot_mapping[i] < 0 marks padding: that token is skipped on write and
 * reads as zeros.
 */
typedef struct kvrt_kv_rows {
    uint64_t field_mask;
    uint32_t layer;
    uint32_t num_tokens;
    kvrt_dtype_t dtype;           /* of key/value: FP16 or BF16 (FP32 too for reads) */
    uint64_t token_stride;        /* in elements */
    const int64_t *slot_mapping;  /* [num_tokens] */
} kvrt_kv_rows_t;

/*
 * kvrt_cpu_write_kv / kvrt_cuda_write_kv - writes key/value rows of layer
 * rows->layer into the cache at rows->slot_mapping (the per-step
 * "reshape and cache"). rows->dtype must equal the cache dtype, or be FP16/
 * BF16 with an FP8_E4M3 cache (quantized with the cache's scales). A slot
 * must be below num_blocks * tokens_per_block; every slot in range is
 * written, duplicates last-wins on the CPU and in unspecified order on the
 * GPU. Errors: see the top of this header.
 */
kvrt_status_t kvrt_cpu_write_kv(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                const kvrt_kv_rows_t *rows, const void *key,
                                const void *value);
kvrt_status_t kvrt_cuda_write_kv(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                 const kvrt_kv_rows_t *rows, const void *key,
                                 const void *value, kvrt_cuda_stream_t *stream);

/*
 * kvrt_cpu_read_kv / kvrt_cuda_read_kv - the inverse of write_kv: reads
 * layer rows->layer at each slot into key_out/value_out, converting from the
 * cache dtype (FP8 dequantized with the cache's scales) to rows->dtype
 * (FP16, BF16 or FP32). Padding slots read as zeros.
 * Errors: see the top of this header.
 */
kvrt_status_t kvrt_cpu_read_kv(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                               const kvrt_kv_rows_t *rows, void *key_out,
                               void *value_out);
kvrt_status_t kvrt_cuda_read_kv(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                const kvrt_kv_rows_t *rows, void *key_out,
                                void *value_out, kvrt_cuda_stream_t *stream);

/*
 * kvrt_cpu_gather_blocks / kvrt_cuda_gather_blocks - copies `count` whole
 * blocks (every layer, K and V) into the contiguous staging buffer
 * staging_out of count * block_bytes bytes. Staging order is fixed, whatever
 * the cache's arrangement: [i][layer][K, V][page], which is exactly how a
 * BLOCK_MAJOR + FUSED pool stores a block, so staging can be written to
 * disk, sent, or memcpy'd into such a pool as is.
 * Block ids (0 included) must be below num_blocks; repeats are allowed.
 * Errors: see the top of this header.
 */
kvrt_status_t kvrt_cpu_gather_blocks(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                     const int32_t *blocks, uint32_t count,
                                     void *staging_out);
kvrt_status_t kvrt_cuda_gather_blocks(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                      const int32_t *blocks, uint32_t count,
                                      void *staging_out, kvrt_cuda_stream_t *stream);

/*
 * kvrt_cpu_scatter_blocks / kvrt_cuda_scatter_blocks - the inverse: writes
 * staging (same order as gather) into the listed blocks. A block listed
 * twice receives one of its two images (the last on the CPU).
 * Errors: see the top of this header.
 */
kvrt_status_t kvrt_cpu_scatter_blocks(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                      const void *staging, const int32_t *blocks,
                                      uint32_t count);
kvrt_status_t kvrt_cuda_scatter_blocks(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                       const void *staging, const int32_t *blocks,
                                       uint32_t count, kvrt_cuda_stream_t *stream);

/*
 * kvrt_cpu_copy_blocks / kvrt_cuda_copy_blocks - copies whole blocks
 * src -> dst for each of `count` pairs (the copies kvrt_table_append and
 * kvrt_table_fork report), with their per-block scales when the cache has
 * them. The pairs run as if at once: no dst may be another pair's src or
 * dst (on the CPU this is checked: KVRT_ERR_INVALID_ARG); src == dst is a
 * no-op. Errors: see the top of this header.
 */
kvrt_status_t kvrt_cpu_copy_blocks(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                   const kvrt_block_copy_t *copies, uint32_t count);
kvrt_status_t kvrt_cuda_copy_blocks(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                    const kvrt_block_copy_t *copies, uint32_t count,
                                    kvrt_cuda_stream_t *stream);

/*
 * kvrt_cuda_gather_blocks_to_host / kvrt_cuda_scatter_blocks_from_host -
 * the host tier's movers: whole blocks between a cache in device memory and
 * a staging buffer in pinned host memory (cudaHostAlloc/cudaMallocHost, or
 * cudaHostRegister), in gather's staging order [i][layer][K, V][page], so a
 * host tier can store staging as is and hand it to kvrt_cpu_* too.
 *
 * The bytes move by the GPU's copy engines, not by a kernel: the copies are
 * enqueued on `stream` and the call returns without waiting. Give the
 * movement a stream of its own (cudaStreamCreateWithFlags(...,
 * cudaStreamNonBlocking)) and it overlaps with kernels on other streams
 * while taking no multiprocessors from them. Block ids are host memory here
 * (the tier decides on the host what moves) and every one is checked before
 * anything is enqueued; repeats are allowed (on scatter the last image of a
 * block wins).
 *
 * Ownership: blocks is read before the call returns and not retained;
 * host_staging and the cache must stay allocated, and untouched by anyone
 * else, until the stream passes this point (cudaStreamSynchronize, or an
 * event recorded after the call). Threads: safe from any thread; calls on
 * different streams must not touch the same blocks or staging bytes.
 *
 * Errors: see the top of this header; also KVRT_ERR_INVALID_ARG when
 * host_staging is not count * block_bytes of pinned host memory or the
 * cache's base is not device memory, and KVRT_ERR_DEVICE when CUDA refuses
 * a copy (copies enqueued before it may still run, so the staging or the
 * listed blocks may then hold partial contents).
 */
kvrt_status_t kvrt_cuda_gather_blocks_to_host(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                              const int32_t *blocks, uint32_t count,
                                              void *host_staging_out,
                                              kvrt_cuda_stream_t *stream);
kvrt_status_t kvrt_cuda_scatter_blocks_from_host(kvrt_ctx_t *ctx,
                                                 const kvrt_kv_cache_t *cache,
                                                 const void *host_staging,
                                                 const int32_t *blocks, uint32_t count,
                                                 kvrt_cuda_stream_t *stream);

enum kvrt_decode_attention_field {
    KVRT_ATTN_FIELD_SCALE = 1u << 0,       /* softmax_scale, default 1/sqrt(head_dim) */
    KVRT_ATTN_FIELD_OUT_DTYPE = 1u << 1,   /* out_dtype, default FP32 */
    KVRT_ATTN_FIELD_MAX_SEQ_LEN = 1u << 2, /* max_seq_len, default table_stride * tokens_per_block */
    KVRT_ATTN_FIELD_WORKSPACE = 1u << 3    /* workspace, workspace_bytes (CUDA only) */
};

/*
 * One decode step of attention: one query token per sequence attends to the
 * seq_lens[s] tokens its block table names. Query head h reads KV head
 * h / (num_q_heads / num_kv_heads) (grouped-query attention).
 *
 * max_seq_len is a planning hint for the CUDA variant: it splits each
 * sequence into pieces of about max_seq_len / splits tokens. A sequence
 * longer than the hint is still attended in full (its last piece is longer),
 * so a wrong hint costs speed, never correctness. At most
 * table_stride * tokens_per_block.
 *
 * workspace (device memory, workspace_bytes long, 16-byte aligned) lets the
 * CUDA variant split long sequences across several CUDA blocks and merge
 * the pieces in a second pass (flash-decoding); without it every sequence is
 * one piece. kvrt_cuda_decode_attention_workspace() gives the bytes that
 * allow every split the call would choose; a smaller workspace allows fewer.
 * The workspace is scratch, written and read on the call's stream only, so
 * calls on different streams need different workspaces. The CPU variant
 * ignores it.
 */
typedef struct kvrt_decode_attention {
    uint64_t field_mask;
    uint32_t layer;
    uint32_t num_seqs;
    uint32_t num_q_heads;          /* a multiple of the layout's num_kv_heads */
    kvrt_dtype_t q_dtype;          /* FP16, BF16 or FP32 */
    const void *query;             /* [num_seqs][num_q_heads][head_dim] */
    const int32_t *block_tables;   /* [num_seqs][table_stride] (kvrt_table_export rows) */
    uint32_t table_stride;         /* entries per row */
    const int32_t *seq_lens;       /* [num_seqs], 0 .. table_stride * tokens_per_block */
    float softmax_scale;
    kvrt_dtype_t out_dtype;        /* FP32 or q_dtype */
    void *out;                     /* [num_seqs][num_q_heads][head_dim] */
    uint32_t max_seq_len;          /* KVRT_ATTN_FIELD_MAX_SEQ_LEN */
    void *workspace;               /* KVRT_ATTN_FIELD_WORKSPACE */
    uint64_t workspace_bytes;
} kvrt_decode_attention_t;

/*
 * kvrt_cpu_decode_attention / kvrt_cuda_decode_attention - softmax(q K^T *
 * scale) V per sequence and query head, accumulated in fp32. A sequence of
 * length 0 gives zeros; num_seqs 0 is a no-op (and needs no workspace).
 * The CUDA variant takes head_dim up to 256
 * (KVRT_ERR_UNSUPPORTED above).
 *
 * The CUDA variant reads each KV head of a sequence once for all the query
 * heads that share it, 16 bytes per access, and with a workspace splits
 * sequences across CUDA blocks when the batch alone would not fill the GPU.
 * That path needs head_dim a multiple of 8 and base 16-byte aligned; other
 * caches take a simpler path with the same results (one CUDA block per query
 * head and sequence). Results agree with the CPU reference to 1e-4 relative
 * (summation order differs). Errors: see the top of this header.
 */
kvrt_status_t kvrt_cpu_decode_attention(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                        const kvrt_decode_attention_t *attn);
kvrt_status_t kvrt_cuda_decode_attention(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                         const kvrt_decode_attention_t *attn,
                                         kvrt_cuda_stream_t *stream);

/*
 * kvrt_cuda_decode_attention_workspace - the workspace bytes with which
 * kvrt_cuda_decode_attention(cache, attn) on the current device may use
 * every split it would choose (0: the call would not split). attn's
 * workspace fields are ignored. Nothing is retained.
 * Errors: those of kvrt_cuda_decode_attention's argument checks,
 * KVRT_ERR_INVALID_ARG (bytes_out NULL), KVRT_ERR_NO_GPU.
 */
kvrt_status_t kvrt_cuda_decode_attention_workspace(kvrt_ctx_t *ctx,
                                                   const kvrt_kv_cache_t *cache,
                                                   const kvrt_decode_attention_t *attn,
                                                   uint64_t *bytes_out);

/*
 * kvrt_cuda_device_count - number of CUDA devices kvrt can launch on.
 * Errors: KVRT_ERR_INVALID_ARG (NULL), KVRT_ERR_NO_GPU (built without CUDA,
 * no driver, or no device; *count_out is not written).
 */
kvrt_status_t kvrt_cuda_device_count(int *count_out);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_KERNELS_H */
