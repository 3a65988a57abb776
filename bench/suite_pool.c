/*
 * suite_pool.c - block pool and block table hot paths: alloc+free per block
 * (batches of 1 and 16), decode-style append per token, bulk append, fork,
 * slot mapping. Baseline: malloc/free of the same count, same run.
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"
#include "kvrt/kvrt.h"

#define POOL_BLOCKS 100000u
#define BLOCK_TOKENS 16u

typedef struct fixture {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
} fixture_t;

static int fixture_open(fixture_t *f)
{
    kvrt_kv_layout_t layout = {.num_layers = 32, .num_kv_heads = 8, .head_dim = 128,
                               .tokens_per_block = BLOCK_TOKENS};
    /* Engine-style memory: the pool only computes addresses into it, so a
     * dummy base suffices for bookkeeping benchmarks. */
    uint64_t block_bytes = 0;
    kvrt_layout_block_bytes(&layout, &block_bytes);
    kvrt_pool_params_t params = {.field_mask = KVRT_POOL_PARAM_BASE,
                                 .layout = layout,
                                 .num_blocks = POOL_BLOCKS,
                                 .base = (void *)(uintptr_t)0x100000000ull,
                                 .base_bytes = block_bytes * POOL_BLOCKS};
    if (kvrt_ctx_create(NULL, &f->ctx) != KVRT_OK)
        return -1;
    if (kvrt_pool_create(f->ctx, &params, &f->pool) != KVRT_OK) {
        fprintf(stderr, "pool: %s\n", kvrt_ctx_last_error(f->ctx));
        return -1;
    }
    return 0;
}

/* ns per block for alloc+free of `batch` blocks at a time, `total` blocks. */
static double time_pool(kvrt_pool_t *pool, uint32_t batch, uint32_t total)
{
    int32_t blocks[64];
    uint64_t start = bench_now_ns();
    for (uint32_t done = 0; done < total; done += batch) {
        if (kvrt_pool_alloc(pool, batch, blocks) != KVRT_OK)
            return -1;
        bench_consume(blocks);
        kvrt_pool_free(pool, batch, blocks);
    }
    return (double)(bench_now_ns() - start) / total;
}

static double time_malloc(uint32_t batch, uint32_t total)
{
    void *ptrs[64];
    uint64_t start = bench_now_ns();
    for (uint32_t done = 0; done < total; done += batch) {
        for (uint32_t i = 0; i < batch; i++)
            ptrs[i] = malloc(64);
        bench_consume(ptrs);
        for (uint32_t i = 0; i < batch; i++)
            free(ptrs[i]);
    }
    return (double)(bench_now_ns() - start) / total;
}

static int bench_alloc_free(const bench_options_t *o, fixture_t *f)
{
    const uint32_t total = o->quick ? 200000 : 2000000;
    /* Half the pool held throughout, so the free stack is not trivially
     * short and the counters see a realistic mix. */
    static int32_t held[POOL_BLOCKS / 2];
    if (kvrt_pool_alloc(f->pool, POOL_BLOCKS / 2, held) != KVRT_OK)
        return -1;
    uint32_t batches[] = {1, 16};
    for (int b = 0; b < 2; b++) {
        double kv[1000], base[1000];
        for (int r = 0; r < o->repeats; r++) {
            kv[r] = time_pool(f->pool, batches[b], total);
            base[r] = time_malloc(batches[b], total);
            if (kv[r] < 0)
                return -1;
        }
        char name[64], base_name[64];
        snprintf(name, sizeof(name), "pool.alloc_free.batch%u", batches[b]);
        snprintf(base_name, sizeof(base_name), "malloc_free.batch%u", batches[b]);
        bench_report(&(bench_figure_t){.name = name, .unit = "ns/block",
                                       .value = bench_median(kv, o->repeats),
                                       .baseline_name = base_name,
                                       .baseline_value = bench_median(base, o->repeats),
                                       .target = 20, .lower_is_better = true,
                                       .note = "pool of 100,000 blocks, half held"});
    }
    return kvrt_pool_free(f->pool, POOL_BLOCKS / 2, held) == KVRT_OK ? 0 : -1;
}

/* Decode-style: one token per call with its slot, across many tables so
 * the working set looks like a batch, not one hot table. */
static int bench_append(const bench_options_t *o, fixture_t *f)
{
    enum { TABLES = 256 };
    const uint32_t tokens_each = o->quick ? 256 : 1024;
    kvrt_table_id_t tables[TABLES];
    double decode[1000], bulk[1000], base[1000];
    static int64_t slots[4096];
    for (int r = 0; r < o->repeats; r++) {
        for (int t = 0; t < TABLES; t++)
            kvrt_table_create(f->pool, &tables[t]);
        uint64_t start = bench_now_ns();
        for (uint32_t k = 0; k < tokens_each; k++)
            for (int t = 0; t < TABLES; t++)
                if (kvrt_table_append(f->pool, tables[t], 1, slots, NULL, NULL) != KVRT_OK)
                    return -1;
        decode[r] = (double)(bench_now_ns() - start) / ((double)TABLES * tokens_each);
        for (int t = 0; t < TABLES; t++)
            kvrt_table_destroy(f->pool, tables[t]);

        for (int t = 0; t < TABLES; t++)
            kvrt_table_create(f->pool, &tables[t]);
        start = bench_now_ns();
        for (int t = 0; t < TABLES; t++)
            for (uint32_t k = 0; k < tokens_each; k += 512)
                if (kvrt_table_append(f->pool, tables[t], 512, slots, NULL, NULL) != KVRT_OK)
                    return -1;
        bulk[r] = (double)(bench_now_ns() - start) / ((double)TABLES * tokens_each);
        for (int t = 0; t < TABLES; t++)
            kvrt_table_destroy(f->pool, tables[t]);

        /* Baseline: the bare store of one int64 per token, same count. */
        volatile int64_t *sink = slots;
        start = bench_now_ns();
        for (uint32_t k = 0; k < tokens_each; k++)
            for (int t = 0; t < TABLES; t++)
                sink[t] = (int64_t)k * t;
        base[r] = (double)(bench_now_ns() - start) / ((double)TABLES * tokens_each);
    }
    bench_report(&(bench_figure_t){.name = "table.append.decode", .unit = "ns/token",
                                   .value = bench_median(decode, o->repeats),
                                   .baseline_name = "int64_store",
                                   .baseline_value = bench_median(base, o->repeats),
                                   .target = 5, .lower_is_better = true,
                                   .note = "1 token per call with slot, 256 tables"});
    bench_report(&(bench_figure_t){.name = "table.append.prefill", .unit = "ns/token",
                                   .value = bench_median(bulk, o->repeats),
                                   .baseline_name = "int64_store",
                                   .baseline_value = bench_median(base, o->repeats),
                                   .target = 5, .lower_is_better = true,
                                   .note = "512 tokens per call with slots"});
    return 0;
}

static int bench_fork_and_slots(const bench_options_t *o, fixture_t *f)
{
    const int forks = o->quick ? 2000 : 20000;
    kvrt_table_id_t parent, children[4];
    kvrt_block_copy_t copies[4];
    uint32_t n_copies;
    static int64_t slots[2048];
    kvrt_table_create(f->pool, &parent);
    /* 1,000 tokens: 62 full blocks shared, one partial copied per child. */
    if (kvrt_table_append(f->pool, parent, 1000, NULL, NULL, NULL) != KVRT_OK)
        return -1;
    double fork_ns[1000], slot_ns[1000], base_ns[1000];
    for (int r = 0; r < o->repeats; r++) {
        uint64_t start = bench_now_ns();
        for (int i = 0; i < forks; i++) {
            if (kvrt_table_fork(f->pool, parent, 4, children, copies, &n_copies) != KVRT_OK)
                return -1;
            for (int c = 0; c < 4; c++)
                kvrt_table_destroy(f->pool, children[c]);
        }
        fork_ns[r] = (double)(bench_now_ns() - start) / forks;

        start = bench_now_ns();
        for (int i = 0; i < forks; i++) {
            kvrt_table_slots(f->pool, parent, 0, 1000, slots);
            bench_consume(slots);
        }
        slot_ns[r] = (double)(bench_now_ns() - start) / ((double)forks * 1000);

        start = bench_now_ns();
        for (int i = 0; i < forks; i++) {
            for (int k = 0; k < 1000; k++)
                slots[k] = k;
            bench_consume(slots);
        }
        base_ns[r] = (double)(bench_now_ns() - start) / ((double)forks * 1000);
    }
    kvrt_table_destroy(f->pool, parent);
    bench_report(&(bench_figure_t){.name = "table.fork4_destroy", .unit = "ns/fork",
                                   .value = bench_median(fork_ns, o->repeats),
                                   .note = "1,000-token parent into 4 children, incl. destroy"});
    bench_report(&(bench_figure_t){.name = "table.slot_mapping", .unit = "ns/token",
                                   .value = bench_median(slot_ns, o->repeats),
                                   .baseline_name = "int64_fill",
                                   .baseline_value = bench_median(base_ns, o->repeats)});
    return 0;
}

static int run_pool_suite(const bench_options_t *o)
{
    fixture_t f = {0};
    int rc = fixture_open(&f);
    if (rc == 0)
        rc = bench_alloc_free(o, &f);
    if (rc == 0)
        rc = bench_append(o, &f);
    if (rc == 0)
        rc = bench_fork_and_slots(o, &f);
    if (rc == 0 && kvrt_pool_verify(f.pool) != KVRT_OK) {
        fprintf(stderr, "pool invariant broken: %s\n", kvrt_ctx_last_error(f.ctx));
        rc = -1;
    }
    kvrt_ctx_destroy(f.ctx);
    return rc;
}

/* Malloc baseline runs in the same loop shape, so the ratio is fair. */
KVRT_BENCH_SUITE(pool, "KV block pool and block tables (targets: alloc+free <= 20 ns/block, append <= 5 ns/token)",
                 run_pool_suite, true)
