/*
 * suite_core.c - the context's own costs: creating and destroying a
 * context (baseline: the 64 MiB prefaulted host region a context used to
 * map at creation, measured in the same run), a host allocation from kvrt's
 * regions (baseline: the same pool over engine memory), and rendering the
 * Prometheus metrics of a context with a pool, cache and scheduler
 * (baseline: reading every numeric node through kvrt_ctl).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bench.h"
#include "kvrt/kvrt.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define REGION_BYTES ((size_t)64 << 20)
#define MAX_REPEATS 1000

static double time_ctx_create(int count)
{
    uint64_t start = bench_now_ns();
    for (int i = 0; i < count; i++) {
        kvrt_ctx_t *ctx = NULL;
        if (kvrt_ctx_create(NULL, &ctx) != KVRT_OK)
            return -1;
        bench_consume(ctx);
        kvrt_ctx_destroy(ctx);
    }
    return (double)(bench_now_ns() - start) / count;
}

/* What creation cost before host memory was mapped lazily. */
static double time_region_prefault(void)
{
    uint64_t start = bench_now_ns();
    void *p = mmap(NULL, REGION_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED)
        return -1;
    (void)madvise(p, REGION_BYTES, MADV_POPULATE_WRITE);
    munmap(p, REGION_BYTES);
    return (double)(bench_now_ns() - start);
}

static int bench_ctx(const bench_options_t *o)
{
    double create[MAX_REPEATS], prefault[MAX_REPEATS];
    for (int r = 0; r < o->repeats; r++) {
        create[r] = time_ctx_create(o->quick ? 1000 : 10000);
        prefault[r] = time_region_prefault();
        if (create[r] < 0 || prefault[r] < 0)
            return -1;
    }
    bench_report(&(bench_figure_t){.name = "ctx.create_destroy", .unit = "ns",
                                   .value = bench_median(create, o->repeats),
                                   .baseline_name = "prefault_64MiB_region",
                                   .baseline_value = bench_median(prefault, o->repeats),
                                   .lower_is_better = true,
                                   .note = "no host memory is mapped until a host pool "
                                           "needs it"});
    return 0;
}

/* ns per create + destroy of a pool made with params; -1 on failure. */
static double time_pool_create(kvrt_ctx_t *ctx, const kvrt_pool_params_t *params, int count)
{
    uint64_t start = bench_now_ns();
    for (int i = 0; i < count; i++) {
        kvrt_pool_t *pool = NULL;
        if (kvrt_pool_create(ctx, params, &pool) != KVRT_OK)
            return -1;
        kvrt_pool_destroy(pool);
    }
    return (double)(bench_now_ns() - start) / count;
}

/* A host pool's memory comes from a region that exists after the first
 * round: the cost of the first-fit list, not of the kernel. */
static int bench_host_pool(const bench_options_t *o)
{
    static char engine_memory[64 * 16384];
    kvrt_kv_layout_t layout = {.num_layers = 2, .num_kv_heads = 2, .head_dim = 64,
                               .tokens_per_block = 16};
    kvrt_pool_params_t host = {.layout = layout, .num_blocks = 64};
    kvrt_pool_params_t engine = {.field_mask = KVRT_POOL_PARAM_BASE, .layout = layout,
                                 .num_blocks = 64, .base = engine_memory,
                                 .base_bytes = sizeof(engine_memory)};
    kvrt_ctx_t *ctx = NULL;
    if (kvrt_ctx_create(NULL, &ctx) != KVRT_OK)
        return -1;
    const int count = o->quick ? 200 : 2000;
    double kv[MAX_REPEATS], base[MAX_REPEATS];
    int rc = 0;
    for (int r = 0; r < o->repeats && rc == 0; r++) {
        kv[r] = time_pool_create(ctx, &host, count);
        base[r] = time_pool_create(ctx, &engine, count);
        rc = kv[r] < 0 || base[r] < 0 ? -1 : 0;
    }
    kvrt_ctx_destroy(ctx);
    if (rc == 0)
        bench_report(&(bench_figure_t){.name = "host_pool.create_destroy", .unit = "ns",
                                       .value = bench_median(kv, o->repeats),
                                       .baseline_name = "engine_memory_pool",
                                       .baseline_value = bench_median(base, o->repeats),
                                       .lower_is_better = true,
                                       .note = "64 blocks of 16 KiB from kvrt's host regions"});
    return rc;
}

static int bench_metrics(const bench_options_t *o)
{
    kvrt_ctx_t *ctx = NULL;
    kvrt_pool_t *pool = NULL;
    kvrt_cache_t *cache = NULL;
    kvrt_sched_t *sched = NULL;
    kvrt_pool_params_t params = {
        .field_mask = KVRT_POOL_PARAM_BASE,
        .layout = {.num_layers = 32, .num_kv_heads = 8, .head_dim = 128, .tokens_per_block = 16},
        .num_blocks = 4096, .base = (void *)(uintptr_t)0x100000000ull,
        .base_bytes = (uint64_t)4096 << 21};
    if (kvrt_ctx_create(NULL, &ctx) != KVRT_OK || kvrt_pool_create(ctx, &params, &pool) ||
        kvrt_cache_create(pool, NULL, &cache) || kvrt_sched_create(ctx, pool, cache, NULL, &sched)) {
        kvrt_ctx_destroy(ctx);
        return -1;
    }
    size_t length = 0;
    kvrt_metrics_render(ctx, NULL, 0, &length);
    char *text = malloc(length + 4096);
    const char *names = NULL;
    size_t len = sizeof(names);
    kvrt_ctl(ctx, "ctl.names", &names, &len, NULL, 0);
    char *list = strdup(names);
    const int count = o->quick ? 100 : 1000;
    double render[MAX_REPEATS], reads[MAX_REPEATS];
    int nodes = 0;
    int rc = text && list ? 0 : -1;
    for (int r = 0; r < o->repeats && rc == 0; r++) {
        uint64_t start = bench_now_ns();
        for (int i = 0; i < count && rc == 0; i++)
            rc = kvrt_metrics_render(ctx, text, length + 4096, &len) == KVRT_OK ? 0 : -1;
        render[r] = (double)(bench_now_ns() - start) / count;
        start = bench_now_ns();
        for (int i = 0; i < count; i++) {
            nodes = 0;
            for (char *line = list; *line;) {
                char *end = strchr(line, '\n');
                char name[96];
                snprintf(name, sizeof(name), "%.*s", (int)strcspn(line, " "), line);
                uint64_t v;
                if (strstr(line, " u64 ") && kvrt_ctl_get_u64(ctx, name, &v) == KVRT_OK)
                    nodes++;
                line = end ? end + 1 : line + strlen(line);
            }
        }
        reads[r] = (double)(bench_now_ns() - start) / count;
    }
    if (rc == 0)
        bench_report(&(bench_figure_t){.name = "metrics.render", .unit = "ns",
                                   .value = bench_median(render, o->repeats),
                                   .baseline_name = "ctl_read_every_u64_node",
                                   .baseline_value = bench_median(reads, o->repeats),
                                   .lower_is_better = true,
                                   .note = "pool + prefix cache + scheduler"});
    (void)nodes;
    free(text);
    free(list);
    kvrt_ctx_destroy(ctx);
    return rc;
}

static int run(const bench_options_t *o)
{
    if (o->repeats > MAX_REPEATS)
        return -1;
    return bench_ctx(o) || bench_host_pool(o) || bench_metrics(o) ? -1 : 0;
}

KVRT_BENCH_SUITE(core, "context creation, host memory, metrics rendering", run, true)
