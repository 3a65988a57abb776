/*
 * suite_kernels.c - effective bandwidth of the KV kernels against a plain
 * copy of the same bytes measured in the same run: memcpy for the CPU
 * reference kernels, a device-to-device cudaMemcpy for the CUDA kernels
 * (only when kvrt was built with CUDA and a GPU is present; otherwise the
 * CUDA figures are skipped with a note on stderr).
 *
 * Shape: an 8B model's cache (32 layers, 8 KV heads, head_dim 128, fp16,
 * 16-token blocks, LAYER_MAJOR + SEPARATE as vLLM lays it out), 256
 * sequences: a decode step writes one token per sequence into each of the
 * 32 layers; gather, scatter and copy move 64 whole blocks (2 MiB each).
 * Bandwidth counts the bytes written once (a copy reads as many).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "kvrt/kvrt.h"
#include "kvrt/kernels.h"

#if KVRT_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#define SEQS 256u
#define LAYERS 32u
#define MOVE_BLOCKS 64u
#define GPU_TARGET 0.85 /* of cudaMemcpy bandwidth, from the kernels issue */

typedef struct setup {
    kvrt_kv_cache_t cache;
    uint64_t block_bytes;
    int64_t slots[SEQS];
    int32_t blocks[MOVE_BLOCKS];
    kvrt_block_copy_t copies[MOVE_BLOCKS];
    size_t rows_bytes; /* one layer's K (or V) rows of the batch */
} setup_t;

/* Distinct random blocks; sequence i writes row i % 16 of its own block. */
static void setup_indices(setup_t *s, uint32_t num_blocks)
{
    uint32_t *perm = malloc(num_blocks * sizeof(uint32_t));
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (uint32_t i = 0; i < num_blocks; i++)
        perm[i] = i;
    for (uint32_t i = num_blocks - 1; i > 1; i--) { /* block 0 stays the null block */
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint32_t j = 1 + (uint32_t)(x % i);
        uint32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (uint32_t i = 0; i < SEQS; i++)
        s->slots[i] = (int64_t)perm[1 + i] * 16 + (i % 16);
    for (uint32_t i = 0; i < MOVE_BLOCKS; i++) {
        s->blocks[i] = (int32_t)perm[1 + i];
        s->copies[i] = (kvrt_block_copy_t){.src_block = (int32_t)perm[1 + i],
                                           .dst_block = (int32_t)perm[1 + MOVE_BLOCKS + i]};
    }
    free(perm);
}

static void setup_layout(setup_t *s, uint32_t num_blocks, void *base)
{
    memset(s, 0, sizeof *s);
    s->cache.layout = (kvrt_kv_layout_t){.num_layers = LAYERS, .num_kv_heads = 8,
                                         .head_dim = 128, .tokens_per_block = 16};
    s->cache.num_blocks = num_blocks;
    s->cache.base = base;
    kvrt_layout_block_bytes(&s->cache.layout, &s->block_bytes);
    s->rows_bytes = (size_t)SEQS * 8 * 128 * 2;
    setup_indices(s, num_blocks);
}

static double gbps(double bytes, double ns) { return bytes / ns; }

static void report(const char *name, double value, const char *baseline, double base_value,
                   double target, const char *note)
{
    bench_figure_t f = {.name = name, .unit = "GB/s", .value = value,
                        .baseline_name = baseline, .baseline_value = base_value,
                        .target = target, .note = note};
    bench_report(&f);
}

/* ---- CPU reference kernels vs memcpy ----------------------------------- */

enum op { OP_WRITE, OP_GATHER, OP_SCATTER, OP_COPY, OP_COUNT };
static const char *const cpu_names[OP_COUNT] = {
    "kernels.cpu.write_kv.step", "kernels.cpu.gather_blocks", "kernels.cpu.scatter_blocks",
    "kernels.cpu.copy_blocks"};

static int cpu_op(setup_t *s, enum op op, const void *k, const void *v, void *staging)
{
    kvrt_status_t st = KVRT_OK;
    kvrt_kv_rows_t rows = {.num_tokens = SEQS, .dtype = KVRT_DTYPE_FP16, .slot_mapping = s->slots};
    switch (op) {
    case OP_WRITE:
        for (uint32_t layer = 0; layer < LAYERS && st == KVRT_OK; layer++) {
            rows.layer = layer;
            st = kvrt_cpu_write_kv(NULL, &s->cache, &rows, k, v);
        }
        break;
    case OP_GATHER:
        st = kvrt_cpu_gather_blocks(NULL, &s->cache, s->blocks, MOVE_BLOCKS, staging);
        break;
    case OP_SCATTER:
        st = kvrt_cpu_scatter_blocks(NULL, &s->cache, staging, s->blocks, MOVE_BLOCKS);
        break;
    default:
        st = kvrt_cpu_copy_blocks(NULL, &s->cache, s->copies, MOVE_BLOCKS);
        break;
    }
    return st == KVRT_OK ? 0 : -1;
}

static int run_cpu(const bench_options_t *o)
{
    uint32_t num_blocks = 1 + 2 * MOVE_BLOCKS + SEQS; /* null block, movers, writers */
    setup_t s;
    uint64_t block_bytes = 0;
    kvrt_kv_layout_t probe = {.num_layers = LAYERS, .num_kv_heads = 8, .head_dim = 128,
                              .tokens_per_block = 16};
    kvrt_layout_block_bytes(&probe, &block_bytes);
    size_t cache_bytes = (size_t)block_bytes * num_blocks;
    size_t move_bytes = (size_t)block_bytes * MOVE_BLOCKS;
    /* The cache is a kvrt pool's own host memory (2 MiB aligned, hugepages
     * where the system has them), as a CPU tier would hold it. */
    kvrt_ctx_t *ctx = NULL;
    kvrt_pool_t *pool = NULL;
    kvrt_pool_info_t info;
    kvrt_pool_params_t params = {.layout = probe, .num_blocks = num_blocks};
    if (kvrt_ctx_create(NULL, &ctx) != KVRT_OK || kvrt_pool_create(ctx, &params, &pool) != KVRT_OK ||
        kvrt_pool_info(pool, &info) != KVRT_OK) {
        kvrt_ctx_destroy(ctx);
        return -1;
    }
    char *base = info.base, *staging = malloc(move_bytes), *scratch = malloc(move_bytes);
    char *rows = malloc(2 * (size_t)SEQS * 8 * 128 * 2);
    if (!staging || !scratch || !rows)
        return -1;
    memset(base, 1, cache_bytes); /* fault every page in before timing */
    memset(staging, 2, move_bytes);
    memset(scratch, 3, move_bytes);
    memset(rows, 4, 2 * (size_t)SEQS * 8 * 128 * 2);
    setup_layout(&s, num_blocks, base);
    const void *k = rows, *v = rows + s.rows_bytes;

    int rc = 0;
    for (int op = 0; op < OP_COUNT && rc == 0; op++) {
        /* A decode step writes 32 layers x (K + V) x 256 rows. */
        size_t bytes = op == OP_WRITE ? (size_t)LAYERS * 2 * s.rows_bytes : move_bytes;
        double kern[1000], base_ns[1000];
        for (int r = 0; r < o->repeats; r++) {
            uint64_t t0 = bench_now_ns();
            rc |= cpu_op(&s, (enum op)op, k, v, staging);
            uint64_t t1 = bench_now_ns();
            if (op == OP_WRITE)
                for (uint32_t layer = 0; layer < LAYERS; layer++) {
                    memcpy(scratch + layer * 2 * s.rows_bytes, k, s.rows_bytes);
                    memcpy(scratch + (layer * 2 + 1) * s.rows_bytes, v, s.rows_bytes);
                }
            else
                memcpy(scratch, staging, bytes);
            uint64_t t2 = bench_now_ns();
            bench_consume(scratch);
            kern[r] = gbps((double)bytes, (double)(t1 - t0));
            base_ns[r] = gbps((double)bytes, (double)(t2 - t1));
        }
        report(cpu_names[op], bench_median(kern, o->repeats), "memcpy",
               bench_median(base_ns, o->repeats), 0, NULL);
    }
    kvrt_ctx_destroy(ctx);
    free(staging);
    free(scratch);
    free(rows);
    return rc;
}

/* ---- CUDA kernels vs device-to-device cudaMemcpy ----------------------- */

#if KVRT_HAVE_CUDA
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

/* Milliseconds of `fn` on the default stream, by events. */
#define GPU_TIME(ms_out, stmt)                                                             \
    do {                                                                                   \
        cudaEvent_t a_, b_;                                                                \
        cudaEventCreate(&a_);                                                              \
        cudaEventCreate(&b_);                                                              \
        cudaEventRecord(a_, 0);                                                            \
        stmt;                                                                              \
        cudaEventRecord(b_, 0);                                                            \
        cudaEventSynchronize(b_);                                                          \
        cudaEventElapsedTime(&(ms_out), a_, b_);                                           \
        cudaEventDestroy(a_);                                                              \
        cudaEventDestroy(b_);                                                              \
    } while (0)

static int run_gpu(const bench_options_t *o)
{
    int devices = 0;
    if (kvrt_cuda_device_count(&devices) != KVRT_OK) {
        fprintf(stderr, "kernels: CUDA figures skipped: no GPU present\n");
        return 0;
    }
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
    setup_layout(&s, num_blocks, base);
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
            kern[r] = gbps((double)bytes, ms_kernel * 1e6);
            copy[r] = gbps((double)bytes, ms_copy * 1e6);
        }
        double kv = bench_median(kern, o->repeats), cv = bench_median(copy, o->repeats);
        report(gpu_names[op], kv, "cudaMemcpy.d2d", cv, GPU_TARGET * cv,
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
#endif

static int run_kernels(const bench_options_t *o)
{
    int rc = run_cpu(o);
#if KVRT_HAVE_CUDA
    rc |= run_gpu(o);
#else
    fprintf(stderr, "kernels: CUDA figures skipped: kvrt built without CUDA\n");
#endif
    return rc;
}

KVRT_BENCH_SUITE(kernels, "KV kernels: GB/s vs memcpy (CPU) and cudaMemcpy (GPU)", run_kernels,
                 true)
