/*
 * suite_kernels.h - what the two files of kvrt-bench's kernels suite share:
 * suite_kernels.c (the suite, CPU figures) and suite_kernels_gpu.c (CUDA
 * figures, built into kvrt-bench only when kvrt has CUDA).
 */
#ifndef KVRT_SUITE_KERNELS_H
#define KVRT_SUITE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "bench.h"
#include "kvrt/kernels.h"

#define SEQS 256u
#define LAYERS 32u
#define MOVE_BLOCKS 64u

/* The four movements timed on each side. */
enum op { OP_WRITE, OP_GATHER, OP_SCATTER, OP_COPY, OP_COUNT };

typedef struct setup {
    kvrt_kv_cache_t cache;
    uint64_t block_bytes;
    int64_t slots[SEQS];
    int32_t blocks[MOVE_BLOCKS];
    kvrt_block_copy_t copies[MOVE_BLOCKS];
    size_t rows_bytes; /* one layer's K (or V) rows of the batch */
} setup_t;

/* Distinct random blocks; sequence i writes row i % 16 of its own block. */

/* Indices and the 8B-model layout (16-token blocks) over `base`. */
void kernels_setup_layout(setup_t *s, uint32_t num_blocks, void *base);
void kernels_report(const char *name, const char *unit, double value, const char *baseline,
                    double base_value, double target, const char *note);
static inline double kernels_gbps(double bytes, double ns) { return bytes / ns; }

/* The CUDA figures: movement, decode attention, host staging. Prints why
 * they are skipped when no GPU is present; 0 unless a kernel failed. */
int kernels_run_gpu(const bench_options_t *o);

#endif /* KVRT_SUITE_KERNELS_H */
