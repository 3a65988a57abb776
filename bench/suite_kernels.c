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

#include "kvrt/kvrt.h"
#include "suite_kernels.h"

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

void kernels_setup_layout(setup_t *s, uint32_t num_blocks, void *base)
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

void kernels_report(const char *name, const char *unit, double value, const char *baseline,
                    double base_value, double target, const char *note)
{
    bench_figure_t f = {.name = name, .unit = unit, .value = value,
                        .baseline_name = baseline, .baseline_value = base_value,
                        .target = target, .note = note};
    bench_report(&f);
}

/* ---- CPU reference kernels vs memcpy ----------------------------------- */

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

/* What a CPU figure times: one kernel of a setup, beside memcpy of the
 * same bytes (one 128 MiB copy, or for a decode step one per layer and
 * half). */
typedef struct cpu_run {
    setup_t *s;
    const void *k, *v;
    char *staging, *scratch;
} cpu_run_t;

static void baseline_copy(const cpu_run_t *c, enum op op, size_t bytes)
{
    if (op != OP_WRITE) {
        memcpy(c->scratch, c->staging, bytes);
        return;
    }
    for (uint32_t layer = 0; layer < LAYERS; layer++) {
        memcpy(c->scratch + layer * 2 * c->s->rows_bytes, c->k, c->s->rows_bytes);
        memcpy(c->scratch + (layer * 2 + 1) * c->s->rows_bytes, c->v, c->s->rows_bytes);
    }
}

/* Times op against its memcpy and reports the medians. The two take turns
 * going first, so neither always runs in the other's wake (caches, the
 * neighbours' load). */
static int time_cpu_op(const bench_options_t *o, const cpu_run_t *c, enum op op,
                       const char *name, const char *note)
{
    /* A decode step writes 32 layers x (K + V) x 256 rows. */
    size_t bytes = op == OP_WRITE ? (size_t)LAYERS * 2 * c->s->rows_bytes
                                  : (size_t)c->s->block_bytes * MOVE_BLOCKS;
    double kern[1000], copy[1000];
    int rc = 0;
    for (int r = 0; r < o->repeats; r++) {
        uint64_t t_kern = 0, t_copy = 0;
        for (int turn = 0; turn < 2; turn++) {
            bool kernel_turn = (turn == 0) == (r % 2 == 0);
            uint64_t t0 = bench_now_ns();
            if (kernel_turn)
                rc |= cpu_op(c->s, op, c->k, c->v, c->staging);
            else
                baseline_copy(c, op, bytes);
            *(kernel_turn ? &t_kern : &t_copy) = bench_now_ns() - t0;
        }
        bench_consume(c->scratch);
        kern[r] = kernels_gbps((double)bytes, (double)t_kern);
        copy[r] = kernels_gbps((double)bytes, (double)t_copy);
    }
    kernels_report(name, "GB/s", bench_median(kern, o->repeats), "memcpy",
                   bench_median(copy, o->repeats), 0, note);
    return rc;
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
    kernels_setup_layout(&s, num_blocks, base);
    cpu_run_t c = {.s = &s, .k = rows, .v = rows + s.rows_bytes, .staging = staging,
                   .scratch = scratch};
    int rc = 0;
    for (int op = 0; op < OP_COUNT && rc == 0; op++)
        rc |= time_cpu_op(o, &c, (enum op)op, cpu_names[op], NULL);

    /* What scattered blocks cost: the same bytes gathered from and
     * scattered into blocks 1..64 of a BLOCK_MAJOR + FUSED view of the same
     * pool, one contiguous run, so the mover makes one streaming copy.
     * Beside the random-block figures, the ratio is the price of 4096
     * scattered 32 KiB pages; beside memcpy, what the movers' own copy
     * loop gains or loses against glibc's. */
    setup_t adjacent = s;
    adjacent.cache.layout.field_mask = KVRT_LAYOUT_FIELD_FORMAT | KVRT_LAYOUT_FIELD_ORDER;
    adjacent.cache.layout.format = KVRT_KV_FUSED;
    adjacent.cache.layout.order = KVRT_ORDER_BLOCK_MAJOR;
    for (uint32_t i = 0; i < MOVE_BLOCKS; i++)
        adjacent.blocks[i] = (int32_t)(1 + i);
    c.s = &adjacent;
    if (rc == 0)
        rc |= time_cpu_op(o, &c, OP_GATHER, "kernels.cpu.gather_blocks.contiguous",
                          "64 adjacent blocks: one streaming run");
    if (rc == 0)
        rc |= time_cpu_op(o, &c, OP_SCATTER, "kernels.cpu.scatter_blocks.contiguous",
                          "64 adjacent blocks: one streaming run");
    kvrt_ctx_destroy(ctx);
    free(staging);
    free(scratch);
    free(rows);
    return rc;
}

/* ---- CPU reference attention ------------------------------------------ */

/*
 * The CPU reference decode attention (written for clarity: it reads each KV
 * head once per query head) in GB/s of KV read, beside memcpy of the same
 * bytes. 4 sequences of 1024 tokens, 32 query heads over 8 KV heads,
 * head_dim 128, FP16.
 */
static int run_cpu_attention(const bench_options_t *o)
{
    enum { A_SEQS = 4, A_LEN = 1024, A_TPB = 16, A_QH = 32, A_KVH = 8, A_DIM = 128 };
    kvrt_kv_layout_t layout = {.num_layers = 1, .num_kv_heads = A_KVH, .head_dim = A_DIM,
                               .tokens_per_block = A_TPB};
    uint64_t block_bytes = 0;
    kvrt_layout_block_bytes(&layout, &block_bytes);
    uint32_t num_blocks = 1 + A_SEQS * A_LEN / A_TPB;
    size_t kv_bytes = (size_t)A_SEQS * A_LEN * A_KVH * A_DIM * 2 * 2;
    char *base = malloc((size_t)block_bytes * num_blocks), *scratch = malloc(kv_bytes);
    uint16_t *query = malloc((size_t)A_SEQS * A_QH * A_DIM * 2);
    float *out = malloc((size_t)A_SEQS * A_QH * A_DIM * 4);
    int32_t tables[A_SEQS * A_LEN / A_TPB], lens[A_SEQS];
    if (!base || !scratch || !query || !out)
        return -1;
    memset(base, 0x3c, (size_t)block_bytes * num_blocks); /* FP16 1.05 */
    memset(query, 0x3c, (size_t)A_SEQS * A_QH * A_DIM * 2);
    for (uint32_t i = 0; i < A_SEQS * A_LEN / A_TPB; i++)
        tables[i] = (int32_t)(1 + (i * 37) % (num_blocks - 1)); /* 37 is prime to 256 */
    for (uint32_t s = 0; s < A_SEQS; s++)
        lens[s] = A_LEN;
    kvrt_kv_cache_t cache = {.layout = layout, .num_blocks = num_blocks, .base = base};
    kvrt_decode_attention_t a = {.num_seqs = A_SEQS, .num_q_heads = A_QH,
                                 .q_dtype = KVRT_DTYPE_FP16, .query = query,
                                 .block_tables = tables, .table_stride = A_LEN / A_TPB,
                                 .seq_lens = lens, .out = out};
    int rc = 0;
    int repeats = o->repeats < 5 ? o->repeats : 5; /* ~0.1 s a call */
    double kern[1000], copy[1000];
    for (int r = 0; r < repeats && rc == 0; r++) {
        uint64_t t0 = bench_now_ns();
        rc |= kvrt_cpu_decode_attention(NULL, &cache, &a) == KVRT_OK ? 0 : -1;
        uint64_t t1 = bench_now_ns();
        memcpy(scratch, base + block_bytes, kv_bytes);
        uint64_t t2 = bench_now_ns();
        bench_consume(scratch);
        kern[r] = kernels_gbps((double)kv_bytes, (double)(t1 - t0));
        copy[r] = kernels_gbps((double)kv_bytes, (double)(t2 - t1));
    }
    kernels_report("kernels.cpu.decode_attention", "GB/s", bench_median(kern, repeats),
                   "memcpy", bench_median(copy, repeats), 0,
                   "KV bytes read; a correctness reference, not a fast path");
    free(base);
    free(scratch);
    free(query);
    free(out);
    return rc;
}

static int run_kernels(const bench_options_t *o)
{
    int rc = run_cpu(o);
    rc |= run_cpu_attention(o);
    rc |= kernels_run_gpu(o);
    return rc;
}

KVRT_BENCH_SUITE(kernels, "KV kernels: GB/s vs memcpy (CPU) and cudaMemcpy (GPU)", run_kernels,
                 true)
