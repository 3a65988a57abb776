/*
 * suite_cache.c - prefix-cache hot paths against kvrt's targets (docs/benchmarks.md):
 *   cache.hash.block16       kvrt_block_hash of one 16-token block
 *                            (baseline: XXH3-128 of the 64 raw token bytes)
 *   cache.match.32k_cached   kvrt_cache_match of a 32,768-token prompt whose
 *                            2,048 blocks are all cached: hashing, lookups,
 *                            references (baseline: the hash chain alone)
 *   cache.replay.6cap        kvrt-replay of the Mooncake conversation trace,
 *                            LRU at six capacities (baseline: XXH3-128 over
 *                            the same 6 x 288,500 blocks of 2 KiB)
 *   cache.churn.observer     one eviction + insert cycle (allocate a block,
 *   cache.churn.sink         which evicts the LRU victim; cache it under a
 *                            new key; free it) with a counting observer, and
 *                            with an observer and a sink that drops every
 *                            victim (baseline: the same cycle, nothing
 *                            attached, runs interleaved)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "bench.h"
#include "cache/hooks.h"
#include "kvrt/kvrt.h"

#define BLOCK_TOKENS 16u
#define PROMPT_TOKENS 32768u
#define PROMPT_BLOCKS (PROMPT_TOKENS / BLOCK_TOKENS)

static int32_t prompt[PROMPT_TOKENS];

static void fill_prompt(void)
{
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (uint32_t i = 0; i < PROMPT_TOKENS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        prompt[i] = (int32_t)(x % 128256);
    }
}

static double hash_chain_ns(uint32_t blocks)
{
    kvrt_block_hash_t h = {1, 2};
    uint64_t start = bench_now_ns();
    for (uint32_t i = 0; i < blocks; i++) {
        uint32_t at = (i % PROMPT_BLOCKS) * BLOCK_TOKENS;
        kvrt_block_hash(&h, prompt + at, BLOCK_TOKENS, at, NULL, &h);
    }
    bench_consume(&h);
    return (double)(bench_now_ns() - start);
}

static double raw_xxh3_ns(uint32_t blocks)
{
    XXH128_hash_t h = {0, 0};
    uint64_t start = bench_now_ns();
    for (uint32_t i = 0; i < blocks; i++) {
        uint32_t at = (i % PROMPT_BLOCKS) * BLOCK_TOKENS;
        XXH128_hash_t x = XXH3_128bits(prompt + at, BLOCK_TOKENS * sizeof(int32_t));
        h.low64 ^= x.low64; /* a dependency, as the chain has */
        h.high64 += x.high64;
    }
    bench_consume(&h);
    return (double)(bench_now_ns() - start);
}

static int bench_hash(const bench_options_t *o)
{
    const uint32_t blocks = o->quick ? 200000 : 2000000;
    double kv[1000], base[1000];
    for (int r = 0; r < o->repeats; r++) {
        kv[r] = hash_chain_ns(blocks) / blocks;
        base[r] = raw_xxh3_ns(blocks) / blocks;
    }
    bench_report(&(bench_figure_t){.name = "cache.hash.block16", .unit = "ns/block",
                                   .value = bench_median(kv, o->repeats),
                                   .baseline_name = "xxh3_128.raw64B",
                                   .baseline_value = bench_median(base, o->repeats),
                                   .target = 25, .lower_is_better = true,
                                   .note = "chained, spec v1 record (92 bytes)"});
    return 0;
}

static int bench_match(const bench_options_t *o)
{
    kvrt_ctx_t *ctx = NULL;
    kvrt_pool_t *pool = NULL;
    kvrt_cache_t *cache = NULL;
    kvrt_kv_layout_t layout = {.num_layers = 32, .num_kv_heads = 8, .head_dim = 128,
                               .tokens_per_block = BLOCK_TOKENS};
    uint64_t block_bytes = 0;
    kvrt_layout_block_bytes(&layout, &block_bytes);
    /* A realistic index: 100,000 blocks (262,144 slots), bookkeeping only. */
    const uint32_t num_blocks = 100000;
    kvrt_pool_params_t pp = {.field_mask = KVRT_POOL_PARAM_BASE, .layout = layout,
                             .num_blocks = num_blocks,
                             .base = (void *)(uintptr_t)0x100000000ull,
                             .base_bytes = block_bytes * num_blocks};
    static int32_t blocks[PROMPT_BLOCKS];
    static kvrt_block_hash_t hashes[PROMPT_BLOCKS];
    int rc = -1;
    if (kvrt_ctx_create(NULL, &ctx) != KVRT_OK || kvrt_pool_create(ctx, &pp, &pool) != KVRT_OK ||
        kvrt_cache_create(pool, NULL, &cache) != KVRT_OK ||
        kvrt_pool_alloc(pool, PROMPT_BLOCKS, blocks) != KVRT_OK)
        goto out;
    kvrt_block_hash_t parent;
    kvrt_cache_root(cache, &parent);
    for (uint32_t i = 0; i < PROMPT_BLOCKS; i++) {
        kvrt_block_hash(&parent, prompt + i * BLOCK_TOKENS, BLOCK_TOKENS, i * BLOCK_TOKENS,
                        NULL, &parent);
        if (kvrt_cache_insert(cache, blocks[i], &parent, NULL, i, NULL) != KVRT_OK)
            goto out;
    }
    kvrt_pool_free(pool, PROMPT_BLOCKS, blocks);
    const int inner = o->quick ? 20 : 100;
    double kv[1000], base[1000];
    for (int r = 0; r < o->repeats; r++) {
        uint64_t total = 0;
        for (int k = 0; k < inner; k++) {
            kvrt_cache_match_t m;
            uint64_t start = bench_now_ns();
            kvrt_cache_match(cache, prompt, PROMPT_TOKENS, NULL, PROMPT_BLOCKS, blocks, hashes,
                             &m);
            total += bench_now_ns() - start;
            if (m.num_blocks != PROMPT_BLOCKS) {
                fprintf(stderr, "cache.match: %u of %u blocks hit\n", m.num_blocks,
                        PROMPT_BLOCKS);
                goto out;
            }
            kvrt_pool_free(pool, m.num_blocks, blocks);
        }
        kv[r] = (double)total / inner / 1000.0;
        base[r] = hash_chain_ns(PROMPT_BLOCKS) / 1000.0;
    }
    bench_report(&(bench_figure_t){.name = "cache.match.32k_cached", .unit = "us",
                                   .value = bench_median(kv, o->repeats),
                                   .baseline_name = "hash_chain.2048_blocks",
                                   .baseline_value = bench_median(base, o->repeats),
                                   .target = 60, .lower_is_better = true,
                                   .note = "2,048 blocks of 16, all hit, LRU, 100k-block pool"});
    rc = 0;
out:
    if (rc != 0 && ctx)
        fprintf(stderr, "cache.match: %s\n", kvrt_ctx_last_error(ctx));
    kvrt_cache_destroy(cache);
    kvrt_ctx_destroy(ctx);
    return rc;
}

/* Seconds of the replay itself, read from kvrt-replay --json. */
static double replay_seconds(void)
{
    FILE *p = popen("'" KVRT_REPLAY_PATH "' --json --policy lru --trace '" KVRT_SHIPPED_TRACE "'",
                    "r");
    if (!p)
        return -1;
    static char out[1 << 16];
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    if (pclose(p) != 0)
        return -1;
    const char *at = strstr(out, "\"total_seconds\": ");
    return at ? strtod(at + strlen("\"total_seconds\": "), NULL) : -1;
}

static double raw_trace_bytes_seconds(void)
{
    /* 6 capacities x 288,500 blocks x 512 int32 tokens. */
    static int32_t block[512];
    for (int i = 0; i < 512; i++)
        block[i] = i * 7919;
    XXH128_hash_t h = {0, 0};
    uint64_t start = bench_now_ns();
    for (uint32_t i = 0; i < 6u * 288500u; i++) {
        block[0] = (int32_t)i;
        XXH128_hash_t x = XXH3_128bits(block, sizeof(block));
        h.low64 ^= x.low64;
    }
    bench_consume(&h);
    return (double)(bench_now_ns() - start) * 1e-9;
}

static int bench_replay(const bench_options_t *o)
{
    int repeats = o->quick ? 1 : (o->repeats < 3 ? o->repeats : 3);
    double kv[3], base[3];
    for (int r = 0; r < repeats; r++) {
        kv[r] = replay_seconds();
        if (kv[r] < 0) {
            fprintf(stderr, "cache.replay: kvrt-replay failed\n");
            return -1;
        }
        base[r] = raw_trace_bytes_seconds();
    }
    bench_report(&(bench_figure_t){.name = "cache.replay.6cap", .unit = "s",
                                   .value = bench_median(kv, repeats),
                                   .baseline_name = "xxh3_128.same_bytes",
                                   .baseline_value = bench_median(base, repeats),
                                   .target = 2, .lower_is_better = true,
                                   .note = "conversation trace, LRU, unbounded..1,000 blocks"});
    return 0;
}

/* ---- hooks: the cost of an attached observer and sink ---------------------- */

static void count_event(void *user_data, const kvrt_cache_event_t *event)
{
    (*(uint64_t *)user_data) += event->id;
}

static kvrt_cache_sink_verdict_t drop_victim(void *user_data, const kvrt_cache_victim_t *victim)
{
    (*(uint64_t *)user_data) += (uint64_t)victim->block;
    return KVRT_CACHE_SINK_DROP;
}

/* ns per cycle of `cycles` evict + insert cycles on a full cache. */
static double churn_ns(kvrt_pool_t *pool, kvrt_cache_t *cache, uint32_t cycles,
                       uint64_t *next_key)
{
    uint64_t start = bench_now_ns();
    for (uint32_t i = 0; i < cycles; i++) {
        int32_t block;
        kvrt_block_hash_t content = {++*next_key * 0x9e3779b97f4a7c15ull, *next_key};
        if (kvrt_pool_alloc(pool, 1, &block) != KVRT_OK ||
            kvrt_cache_insert(cache, block, &content, NULL, i & 63, NULL) != KVRT_OK ||
            kvrt_pool_free(pool, 1, &block) != KVRT_OK)
            return -1;
    }
    return (double)(bench_now_ns() - start) / cycles;
}

static int bench_hooks(const bench_options_t *o)
{
    kvrt_ctx_t *ctx = NULL;
    kvrt_pool_t *pool = NULL;
    kvrt_cache_t *cache = NULL;
    const uint32_t num_blocks = 100000;
    kvrt_kv_layout_t layout = {.num_layers = 32, .num_kv_heads = 8, .head_dim = 128,
                               .tokens_per_block = BLOCK_TOKENS};
    uint64_t block_bytes = 0;
    kvrt_layout_block_bytes(&layout, &block_bytes);
    kvrt_pool_params_t pp = {.field_mask = KVRT_POOL_PARAM_BASE,
                             .layout = layout, .num_blocks = num_blocks,
                             .base = (void *)(uintptr_t)0x100000000ull,
                             .base_bytes = block_bytes * num_blocks};
    uint64_t next_key = 0, sunk = 0;
    const uint32_t cycles = o->quick ? 100000 : 1000000;
    double none[1000], observed[1000], sinked[1000];
    int rc = -1;
    if (kvrt_ctx_create(NULL, &ctx) != KVRT_OK || kvrt_pool_create(ctx, &pp, &pool) != KVRT_OK ||
        kvrt_cache_create(pool, NULL, &cache) != KVRT_OK)
        goto out;
    /* Fill the pool with cached blocks, so every cycle evicts. */
    if (churn_ns(pool, cache, num_blocks, &next_key) < 0)
        goto out;
    for (int r = 0; r < o->repeats; r++) {
        none[r] = churn_ns(pool, cache, cycles, &next_key);
        if (kvrt_cache_observe(cache, count_event, &sunk) != KVRT_OK)
            goto out;
        observed[r] = churn_ns(pool, cache, cycles, &next_key);
        if (kvrt_cache_set_sink(cache, drop_victim, &sunk) != KVRT_OK)
            goto out;
        sinked[r] = churn_ns(pool, cache, cycles, &next_key);
        if (kvrt_cache_set_sink(cache, NULL, NULL) != KVRT_OK ||
            kvrt_cache_unobserve(cache, count_event, &sunk) != KVRT_OK)
            goto out;
        if (none[r] < 0 || observed[r] < 0 || sinked[r] < 0)
            goto out;
    }
    bench_consume(&sunk);
    double base = bench_median(none, o->repeats);
    bench_report(&(bench_figure_t){.name = "cache.churn.observer", .unit = "ns/cycle",
                                   .value = bench_median(observed, o->repeats),
                                   .baseline_name = "cache.churn.detached",
                                   .baseline_value = base, .lower_is_better = true,
                                   .note = "alloc (evicts LRU) + insert + free, 100k blocks"});
    bench_report(&(bench_figure_t){.name = "cache.churn.sink", .unit = "ns/cycle",
                                   .value = bench_median(sinked, o->repeats),
                                   .baseline_name = "cache.churn.detached",
                                   .baseline_value = base, .lower_is_better = true,
                                   .note = "observer + a sink that drops every victim"});
    rc = 0;
out:
    if (rc != 0 && ctx)
        fprintf(stderr, "cache.churn: %s\n", kvrt_ctx_last_error(ctx));
    kvrt_cache_destroy(cache);
    kvrt_ctx_destroy(ctx);
    return rc;
}

static int run_cache(const bench_options_t *o)
{
    fill_prompt();
    if (bench_hash(o) != 0 || bench_match(o) != 0 || bench_hooks(o) != 0)
        return -1;
    return bench_replay(o);
}

KVRT_BENCH_SUITE(cache, "prefix cache: block hashing, cached-prefix match, trace replay",
                 run_cache, true)
