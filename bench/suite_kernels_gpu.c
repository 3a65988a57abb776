/*
 * suite_kernels_gpu.c - the CUDA half of kvrt-bench's kernels suite
 * (suite_kernels.c registers the suite): every figure against a copy of
 * the same bytes measured in the same run.
 *
 *  - movement kernels vs a device-to-device cudaMemcpy (target 85%);
 *  - decode attention (32 query heads over 8 KV heads, head_dim 128, FP16,
 *    16-token blocks scattered at random) in GB/s of KV read, against the
 *    device's copy bandwidth counted as bytes read plus written, the DRAM
 *    traffic a copy makes (target 60%); bench/sdpa_baseline.py measures
 *    PyTorch's scaled_dot_product_attention on the same shapes;
 *  - host staging movers vs one cudaMemcpyAsync of the same bytes between
 *    device memory and pinned host memory (target 85%), for 16- and
 *    64-token blocks, and how much of a gather to the host hides behind
 *    kernel work on another stream.
 *
 * Without CUDA (or without a GPU) it says so on stderr and reports nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suite_kernels.h"
#include "kvrt/kvrt.h"

#if !KVRT_HAVE_CUDA
int kernels_run_gpu(const bench_options_t *o)
{
    (void)o;
    fprintf(stderr, "kernels: CUDA figures skipped: kvrt built without CUDA\n");
    return 0;
}
#else
#include <cuda_runtime_api.h>

#define GPU_TARGET 0.85 /* of cudaMemcpy bandwidth */

/* Milliseconds of stmt on `stream`, by events. */
#define STREAM_TIME(ms_out, stream, stmt)                                                  \
    do {                                                                                   \
        cudaEvent_t a_, b_;                                                                \
        cudaEventCreate(&a_);                                                              \
        cudaEventCreate(&b_);                                                              \
        cudaEventRecord(a_, stream);                                                       \
        stmt;                                                                              \
        cudaEventRecord(b_, stream);                                                       \
        cudaEventSynchronize(b_);                                                          \
        cudaEventElapsedTime(&(ms_out), a_, b_);                                           \
        cudaEventDestroy(a_);                                                              \
        cudaEventDestroy(b_);                                                              \
    } while (0)
#define GPU_TIME(ms_out, stmt) STREAM_TIME(ms_out, 0, stmt)

/* ---- movement kernels vs device-to-device cudaMemcpy ------------------- */

static const char *const gpu_names[OP_COUNT] = {
    "kernels.cuda.write_kv.step", "kernels.cuda.gather_blocks", "kernels.cuda.scatter_blocks",
    "kernels.cuda.copy_blocks"};

static int gpu_op(setup_t *s, enum op op, const void *k, const void *v, void *staging,
                  const int64_t *d_slots, const int32_t *d_blocks,
                  const kvrt_block_copy_t *d_copies)
{
    kvrt_status_t st = KVRT_OK;
    kvrt_kv_rows_t rows = {.num_tokens = SEQS, .dtype = KVRT_DTYPE_FP16, .slot_mapping = d_slots};
    switch (op) {
    case OP_WRITE:
        for (uint32_t layer = 0; layer < LAYERS && st == KVRT_OK; layer++) {
            rows.layer = layer;
            st = kvrt_cuda_write_kv(NULL, &s->cache, &rows, k, v, NULL);
        }
        break;
    case OP_GATHER:
        st = kvrt_cuda_gather_blocks(NULL, &s->cache, d_blocks, MOVE_BLOCKS, staging, NULL);
        break;
    case OP_SCATTER:
        st = kvrt_cuda_scatter_blocks(NULL, &s->cache, staging, d_blocks, MOVE_BLOCKS, NULL);
        break;
    default:
        st = kvrt_cuda_copy_blocks(NULL, &s->cache, d_copies, MOVE_BLOCKS, NULL);
        break;
    }
    return st == KVRT_OK ? 0 : -1;
}


static int run_gpu_movement(const bench_options_t *o)
{
    uint32_t num_blocks = 1 + 2 * MOVE_BLOCKS + SEQS;
    setup_t s;
    uint64_t block_bytes = 0;
    kvrt_kv_layout_t probe = {.num_layers = LAYERS, .num_kv_heads = 8, .head_dim = 128,
                              .tokens_per_block = 16};
    kvrt_layout_block_bytes(&probe, &block_bytes);
    size_t move_bytes = (size_t)block_bytes * MOVE_BLOCKS;
    size_t rows_bytes = (size_t)SEQS * 8 * 128 * 2;
    void *base = NULL, *staging = NULL, *scratch = NULL, *rows = NULL;
    int64_t *d_slots = NULL;
    int32_t *d_blocks = NULL;
    kvrt_block_copy_t *d_copies = NULL;
    int rc = -1;
    if (cudaMalloc(&base, (size_t)block_bytes * num_blocks) != cudaSuccess ||
        cudaMalloc(&staging, move_bytes) != cudaSuccess ||
        cudaMalloc(&scratch, move_bytes) != cudaSuccess ||
        cudaMalloc(&rows, 2 * rows_bytes) != cudaSuccess ||
        cudaMalloc((void **)&d_slots, sizeof s.slots) != cudaSuccess ||
        cudaMalloc((void **)&d_blocks, sizeof s.blocks) != cudaSuccess ||
        cudaMalloc((void **)&d_copies, sizeof s.copies) != cudaSuccess)
        goto out;
    kernels_setup_layout(&s, num_blocks, base);
    cudaMemcpy(d_slots, s.slots, sizeof s.slots, cudaMemcpyHostToDevice);
    cudaMemcpy(d_blocks, s.blocks, sizeof s.blocks, cudaMemcpyHostToDevice);
    cudaMemcpy(d_copies, s.copies, sizeof s.copies, cudaMemcpyHostToDevice);
    const char *k = rows, *v = (const char *)rows + rows_bytes;
    rc = 0;
    for (int op = 0; op < OP_COUNT && rc == 0; op++) {
        size_t bytes = op == OP_WRITE ? (size_t)LAYERS * 2 * rows_bytes : move_bytes;
        double kern[1000], copy[1000];
        rc |= gpu_op(&s, (enum op)op, k, v, staging, d_slots, d_blocks, d_copies); /* warm */
        for (int r = 0; r < o->repeats && rc == 0; r++) {
            float ms_kernel = 0, ms_copy = 0;
            GPU_TIME(ms_kernel, rc |= gpu_op(&s, (enum op)op, k, v, staging, d_slots, d_blocks,
                                             d_copies));
            if (op == OP_WRITE)
                GPU_TIME(ms_copy, for (uint32_t l = 0; l < LAYERS; l++) {
                    cudaMemcpyAsync((char *)scratch + l * 2 * rows_bytes, k, 2 * rows_bytes,
                                    cudaMemcpyDeviceToDevice, 0);
                });
            else
                GPU_TIME(ms_copy, cudaMemcpyAsync(scratch, staging, bytes,
                                                  cudaMemcpyDeviceToDevice, 0));
            kern[r] = kernels_gbps((double)bytes, ms_kernel * 1e6);
            copy[r] = kernels_gbps((double)bytes, ms_copy * 1e6);
        }
        double kv = bench_median(kern, o->repeats), cv = bench_median(copy, o->repeats);
        kernels_report(gpu_names[op], "GB/s", kv, "cudaMemcpy.d2d", cv, GPU_TARGET * cv,
               "target: 85% of cudaMemcpy of the same bytes");
    }
    if (cudaDeviceSynchronize() != cudaSuccess)
        rc = -1;
out:
    cudaFree(base);
    cudaFree(staging);
    cudaFree(scratch);
    cudaFree(rows);
    cudaFree(d_slots);
    cudaFree(d_blocks);
    cudaFree(d_copies);
    return rc;
}


/* ---- decode attention vs the device's copy bandwidth ------------------- */

#define ATTN_KV_HEADS 8u
#define ATTN_Q_HEADS 32u
#define ATTN_DIM 128u
#define ATTN_TPB 16u
#define ATTN_TARGET 0.60 /* of copy bandwidth (read + write) */

/* Copy bandwidth, bytes read plus written per ns, of 1 GiB copies. */
static double copy_bandwidth(void *a, void *b, size_t bytes, int repeats)
{
    double samples[1000];
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice); /* warm */
    for (int r = 0; r < repeats; r++) {
        float ms = 0;
        GPU_TIME(ms, cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0));
        samples[r] = kernels_gbps(2.0 * (double)bytes, ms * 1e6);
    }
    return bench_median(samples, repeats);
}

static int run_gpu_attention(const bench_options_t *o)
{
    static const uint32_t seqs_list[] = {16, 64, 256};
    static const uint32_t lens[] = {1024, 4096};
    uint32_t max_tokens = 256 * 4096;
    uint32_t num_blocks = 1 + max_tokens / ATTN_TPB;
    kvrt_kv_layout_t layout = {.num_layers = 1, .num_kv_heads = ATTN_KV_HEADS,
                               .head_dim = ATTN_DIM, .tokens_per_block = ATTN_TPB};
    uint64_t block_bytes = 0;
    kvrt_layout_block_bytes(&layout, &block_bytes);
    size_t cache_bytes = (size_t)block_bytes * num_blocks;
    size_t q_bytes = (size_t)256 * ATTN_Q_HEADS * ATTN_DIM * 2;
    size_t copy_bytes = (size_t)1 << 30;
    void *base = NULL, *query = NULL, *out = NULL;
    int32_t *d_tables = NULL, *d_lens = NULL;
    int32_t *tables = malloc((size_t)max_tokens / ATTN_TPB * sizeof(int32_t));
    int32_t *seq_lens = malloc(256 * sizeof(int32_t));
    int rc = -1;
    if (!tables || !seq_lens || cudaMalloc(&base, cache_bytes) != cudaSuccess ||
        cudaMalloc(&query, q_bytes) != cudaSuccess || cudaMalloc(&out, q_bytes) != cudaSuccess ||
        cudaMalloc((void **)&d_tables, (size_t)max_tokens / ATTN_TPB * 4) != cudaSuccess ||
        cudaMalloc((void **)&d_lens, 256 * 4) != cudaSuccess)
        goto out;
    /* 0x3c3c is FP16 1.0546875: finite logits, all equal; speed does not
     * depend on the values. */
    cudaMemset(base, 0x3c, cache_bytes);
    cudaMemset(query, 0x3c, q_bytes);
    /* The copy-bandwidth reference reads and writes inside the cache. */
    double copy_bw = copy_bandwidth(base, (char *)base + copy_bytes, copy_bytes, o->repeats);
    kernels_report("kernels.cuda.copy_bandwidth.d2d", "GB/s", copy_bw, NULL, 0, 0,
                   "cudaMemcpy d2d of 1 GiB, bytes read + written");
    /* Every sequence's blocks are distinct and scattered over the cache. */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (uint32_t i = 0; i < max_tokens / ATTN_TPB; i++)
        tables[i] = (int32_t)(1 + i);
    for (uint32_t i = max_tokens / ATTN_TPB - 1; i > 0; i--) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint32_t j = (uint32_t)(x % (i + 1));
        int32_t t = tables[i];
        tables[i] = tables[j];
        tables[j] = t;
    }
    rc = 0;
    for (size_t si = 0; si < sizeof seqs_list / sizeof *seqs_list && rc == 0; si++) {
        for (size_t li = 0; li < sizeof lens / sizeof *lens && rc == 0; li++) {
            uint32_t seqs = seqs_list[si], len = lens[li], stride = len / ATTN_TPB;
            for (uint32_t s = 0; s < seqs; s++)
                seq_lens[s] = (int32_t)len;
            cudaMemcpy(d_tables, tables, (size_t)seqs * stride * 4, cudaMemcpyHostToDevice);
            cudaMemcpy(d_lens, seq_lens, seqs * 4, cudaMemcpyHostToDevice);
            kvrt_kv_cache_t cache = {.layout = layout, .num_blocks = num_blocks, .base = base};
            kvrt_decode_attention_t a = {.field_mask = KVRT_ATTN_FIELD_OUT_DTYPE,
                                         .num_seqs = seqs, .num_q_heads = ATTN_Q_HEADS,
                                         .q_dtype = KVRT_DTYPE_FP16, .query = query,
                                         .block_tables = d_tables, .table_stride = stride,
                                         .seq_lens = d_lens, .out_dtype = KVRT_DTYPE_FP16,
                                         .out = out};
            uint64_t ws_bytes = 0;
            void *ws = NULL;
            if (kvrt_cuda_decode_attention_workspace(NULL, &cache, &a, &ws_bytes) != KVRT_OK ||
                (ws_bytes && cudaMalloc(&ws, ws_bytes) != cudaSuccess)) {
                rc = -1;
                break;
            }
            double kv_bytes = (double)seqs * len * ATTN_KV_HEADS * ATTN_DIM * 2 * 2;
            /* Each variant: with the workspace (split), and for the
             * smallest batch also without (one CUDA block per KV head). */
            for (int variant = 0; variant < (seqs == 16 ? 2 : 1) && rc == 0; variant++) {
                a.field_mask = KVRT_ATTN_FIELD_OUT_DTYPE;
                if (variant == 0 && ws) {
                    a.field_mask |= KVRT_ATTN_FIELD_WORKSPACE;
                    a.workspace = ws;
                    a.workspace_bytes = ws_bytes;
                }
                double samples[1000];
                rc |= kvrt_cuda_decode_attention(NULL, &cache, &a, NULL) == KVRT_OK ? 0 : -1;
                for (int r = 0; r < o->repeats && rc == 0; r++) {
                    float ms = 0;
                    GPU_TIME(ms, for (int i = 0; i < 10; i++) rc |=
                                 kvrt_cuda_decode_attention(NULL, &cache, &a, NULL) == KVRT_OK
                                     ? 0
                                     : -1);
                    samples[r] = kernels_gbps(10 * kv_bytes, ms * 1e6);
                }
                char name[96];
                snprintf(name, sizeof name, "kernels.cuda.decode_attention.s%u.len%u%s", seqs,
                         len, variant ? ".unsplit" : "");
                kernels_report(name, "GB/s", bench_median(samples, o->repeats),
                               "copy_bandwidth.d2d", copy_bw, ATTN_TARGET * copy_bw,
                               "KV bytes read; 32 q heads over 8 KV heads, d128, fp16");
            }
            cudaFree(ws);
        }
    }
    if (cudaDeviceSynchronize() != cudaSuccess)
        rc = -1;
out:
    cudaFree(base);
    cudaFree(query);
    cudaFree(out);
    cudaFree(d_tables);
    cudaFree(d_lens);
    free(tables);
    free(seq_lens);
    return rc;
}

/* ---- host staging movers vs cudaMemcpyAsync ----------------------------- */


static int host_moves(const bench_options_t *o, uint32_t tpb, cudaStream_t stream)
{
    kvrt_kv_layout_t layout = {.num_layers = LAYERS, .num_kv_heads = 8, .head_dim = 128,
                               .tokens_per_block = tpb};
    uint64_t block_bytes = 0;
    kvrt_layout_block_bytes(&layout, &block_bytes);
    uint32_t num_blocks = 1 + 2 * MOVE_BLOCKS;
    size_t bytes = (size_t)block_bytes * MOVE_BLOCKS;
    void *base = NULL, *pinned = NULL;
    int32_t blocks[MOVE_BLOCKS];
    kvrt_block_copy_t copies[MOVE_BLOCKS], *d_copies = NULL;
    kvrt_cuda_stream_t *s = (kvrt_cuda_stream_t *)stream;
    int rc = -1;
    if (cudaMalloc(&base, (size_t)block_bytes * num_blocks) != cudaSuccess ||
        cudaMallocHost(&pinned, bytes) != cudaSuccess ||
        cudaMalloc((void **)&d_copies, sizeof copies) != cudaSuccess)
        goto out;
    cudaMemset(base, 1, (size_t)block_bytes * num_blocks);
    memset(pinned, 2, bytes);
    /* Blocks 1, 3, 5, ...: every block a separate run, the worst case.
     * The kernels run beside the gather read those blocks and write the
     * even ones, so the two never write what the other touches. */
    for (uint32_t i = 0; i < MOVE_BLOCKS; i++) {
        blocks[i] = (int32_t)(1 + 2 * i);
        copies[i] = (kvrt_block_copy_t){.src_block = (int32_t)(1 + 2 * i),
                                        .dst_block = (int32_t)(2 + 2 * i)};
    }
    cudaMemcpy(d_copies, copies, sizeof copies, cudaMemcpyHostToDevice);
    kvrt_kv_cache_t cache = {.layout = layout, .num_blocks = num_blocks, .base = base};
    rc = 0;
    for (int dir = 0; dir < 2 && rc == 0; dir++) {
        double kern[1000], copy[1000];
        for (int r = -1; r < o->repeats && rc == 0; r++) { /* r = -1 warms up */
            float ms_kernel = 0, ms_copy = 0;
            if (dir == 0) {
                STREAM_TIME(ms_kernel, stream,
                            rc |= kvrt_cuda_gather_blocks_to_host(NULL, &cache, blocks,
                                                                  MOVE_BLOCKS, pinned, s));
                STREAM_TIME(ms_copy, stream,
                            cudaMemcpyAsync(pinned, base, bytes, cudaMemcpyDeviceToHost, stream));
            } else {
                STREAM_TIME(ms_kernel, stream,
                            rc |= kvrt_cuda_scatter_blocks_from_host(NULL, &cache, pinned,
                                                                     blocks, MOVE_BLOCKS, s));
                STREAM_TIME(ms_copy, stream,
                            cudaMemcpyAsync(base, pinned, bytes, cudaMemcpyHostToDevice, stream));
            }
            if (r >= 0) {
                kern[r] = kernels_gbps((double)bytes, ms_kernel * 1e6);
                copy[r] = kernels_gbps((double)bytes, ms_copy * 1e6);
            }
        }
        char name[96];
        snprintf(name, sizeof name, "kernels.cuda.%s.tpb%u",
                 dir == 0 ? "gather_blocks_to_host" : "scatter_blocks_from_host", tpb);
        double cv = bench_median(copy, o->repeats);
        kernels_report(name, "GB/s", bench_median(kern, o->repeats),
                       dir == 0 ? "cudaMemcpyAsync.d2h" : "cudaMemcpyAsync.h2d", cv,
                       GPU_TARGET * cv, "64 blocks, layer-major separate K/V, pinned staging");
    }
    /* Overlap: the gather on its own stream while copy_blocks kernels run
     * on the legacy stream. 1 = the gather hid entirely behind them. */
    if (rc == 0 && tpb == 16) {
        double hidden[1000];
        for (int r = 0; r < o->repeats && rc == 0; r++) {
            float ms_gather = 0, ms_kernels = 0, ms_both = 0;
            STREAM_TIME(ms_gather, stream,
                        rc |= kvrt_cuda_gather_blocks_to_host(NULL, &cache, blocks, MOVE_BLOCKS,
                                                              pinned, s));
            GPU_TIME(ms_kernels, for (int i = 0; i < 20; i++) rc |=
                                 kvrt_cuda_copy_blocks(NULL, &cache, d_copies, MOVE_BLOCKS, NULL));
            uint64_t t0 = bench_now_ns();
            rc |= kvrt_cuda_gather_blocks_to_host(NULL, &cache, blocks, MOVE_BLOCKS, pinned, s);
            for (int i = 0; i < 20; i++)
                rc |= kvrt_cuda_copy_blocks(NULL, &cache, d_copies, MOVE_BLOCKS, NULL);
            cudaDeviceSynchronize();
            ms_both = (float)((bench_now_ns() - t0) / 1e6);
            double shorter = ms_gather < ms_kernels ? ms_gather : ms_kernels;
            hidden[r] = (ms_gather + ms_kernels - ms_both) / shorter;
        }
        kernels_report("kernels.cuda.gather_blocks_to_host.overlap", "fraction hidden",
                       bench_median(hidden, o->repeats), NULL, 0, 0,
                       "gather on its own stream beside 20 copy_blocks kernels on the legacy "
                       "stream; 1 = fully hidden, 0 = serialized");
    }
    if (cudaDeviceSynchronize() != cudaSuccess)
        rc = -1;
out:
    cudaFree(base);
    cudaFreeHost(pinned);
    cudaFree(d_copies);
    return rc;
}

static int run_gpu_host(const bench_options_t *o)
{
    cudaStream_t stream;
    if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess)
        return -1;
    int rc = host_moves(o, 16, stream);
    if (rc == 0)
        rc = host_moves(o, 64, stream);
    cudaStreamDestroy(stream);
    return rc;
}

int kernels_run_gpu(const bench_options_t *o)
{
    int devices = 0;
    if (kvrt_cuda_device_count(&devices) != KVRT_OK) {
        fprintf(stderr, "kernels: CUDA figures skipped: no GPU present\n");
        return 0;
    }
    int rc = run_gpu_movement(o);
    if (rc == 0)
        rc = run_gpu_attention(o);
    if (rc == 0)
        rc = run_gpu_host(o);
    return rc;
}
#endif /* KVRT_HAVE_CUDA */
