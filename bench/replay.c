/*
 * replay.c - kvrt-replay: replays a request trace through the real prefix
 * cache (a kvrt pool, kvrt_cache_match/lookup/insert, kvrt's block hashes
 * and eviction policies) and reports hit rates per capacity and policy.
 *
 *   kvrt-replay [--trace PATH] [--format auto|mooncake|azure]
 *               [--capacity unbounded,100000,...]
 *               [--policy lru,lfu,lfu-aged,lru-leaf,adaptive,belady|all] [--json]
 *               [--host-capacity N [--ssd-capacity N [--ssd-dir DIR]]]
 *
 * With --host-capacity the real tier stack sits under the cache
 * (replay_tier.c) and every result also reports hit_blocks_by_tier.
 *
 * Model: one kvrt block per 512-token trace block (tokens_per_block 512).
 * Each block's token ids are a deterministic function of its hash id, so
 * equal ids give equal tokens and kvrt hashes, chains and indexes them
 * itself. Every block is treated as full, the last one of a request too,
 * because the trace's hash ids already stand for it (the reference figures
 * count it). Per request, in file order:
 *   1. kvrt_cache_match() on all its tokens: the leading run of cached
 *      blocks, references taken; the hits are released again in order;
 *   2. each later block, in order: kvrt_cache_lookup() touches it when it
 *      is cached, else a block is allocated from the pool (evicting when
 *      none is free), inserted and released.
 * A released cached block becomes evictable, so the release order is the
 * "touched in order" of the reference semantics (bench/traces/README.md)
 * and LRU reproduces the reference counts. The pool has capacity + 1
 * blocks (block 0 is the null block); "unbounded" is one block per trace
 * block, so nothing is ever evicted. The pool is bookkeeping only: it is
 * given a placeholder engine-memory range that nothing reads or writes.
 *
 * Azure traces carry no prefix information: every block gets an id of its
 * own, so hit rates are 0 and only the replay speed means something.
 * Exit status: 0 ok, 1 bad trace or replay failure, 2 bad usage.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvrt/kvrt.h"
#include "replay.h"

#define MAX_RUNS 16
#define UNBOUNDED REPLAY_UNBOUNDED

/* "belady" is the clairvoyant bound (replay_belady.c), not a kvrt policy. */
static const struct {
    const char *name;
    kvrt_cache_policy_t policy;
    bool clairvoyant;
} policies[] = {{"lru", KVRT_CACHE_LRU, false},           {"lfu", KVRT_CACHE_LFU, false},
                {"lfu-aged", KVRT_CACHE_LFU_AGED, false}, {"lru-leaf", KVRT_CACHE_LRU_LEAF, false},
                {"adaptive", KVRT_CACHE_ADAPTIVE, false}, {"belady", KVRT_CACHE_LRU, true}};
#define NUM_POLICIES (sizeof(policies) / sizeof(policies[0]))

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The token ids of a trace block: splitmix64 of its id spread over the
 * block (two 31-bit words of it first, so distinct ids give distinct
 * blocks), then an arithmetic run that costs one add per token. */
static void block_tokens(int64_t hash_id, int32_t *tokens)
{
    uint64_t z = (uint64_t)hash_id + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    tokens[0] = (int32_t)(z & 0x7fffffff);
    tokens[1] = (int32_t)((z >> 31) & 0x7fffffff);
    uint32_t base = (uint32_t)(z >> 16);
    for (uint32_t j = 2; j < TRACE_BLOCK_TOKENS; j++)
        tokens[j] = (int32_t)((base + j * 0x9e3779b9u) & 0x7fffffff);
}

typedef struct replay {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;
    int32_t *tokens;          /* one request's tokens */
    int32_t *blocks;          /* one request's hit blocks */
    kvrt_block_hash_t *hashes;
    uint32_t max_blocks;      /* longest request, in blocks */
    replay_tiers_t tiers;     /* host_blocks 0: none */
    replay_tier_t tier;
    uint64_t by_tier[3];
} replay_t;

#define CHECK(call)                                                              \
    do {                                                                         \
        kvrt_status_t s_ = (call);                                               \
        if (s_ != KVRT_OK) {                                                     \
            fprintf(stderr, "kvrt-replay: %s: %s (%s)\n", #call,                 \
                    kvrt_status_str(s_), kvrt_ctx_last_error(r->ctx));           \
            return -1;                                                           \
        }                                                                        \
    } while (0)

static int replay_request(replay_t *r, const int64_t *ids, uint32_t n, uint64_t *hits)
{
    for (uint32_t i = 0; i < n; i++)
        block_tokens(ids[i], r->tokens + (size_t)i * TRACE_BLOCK_TOKENS);
    kvrt_cache_match_t m = {0};
    if (r->tier.tier) {
        CHECK(replay_tier_match(&r->tier, r->pool, r->tokens, n, r->blocks, r->hashes,
                                &m.num_blocks, r->by_tier));
        CHECK(replay_tier_poll(&r->tier));
    } else {
        CHECK(kvrt_cache_match(r->cache, r->tokens, n * TRACE_BLOCK_TOKENS, NULL, n, r->blocks,
                               r->hashes, &m));
    }
    *hits += m.num_blocks;
    if (m.num_blocks)
        CHECK(kvrt_pool_free(r->pool, m.num_blocks, r->blocks));
    kvrt_block_hash_t parent;
    if (m.num_blocks)
        parent = r->hashes[m.num_blocks - 1];
    else
        CHECK(kvrt_cache_root(r->cache, &parent));
    for (uint32_t i = m.num_blocks; i < n; i++) {
        kvrt_block_hash_t content;
        CHECK(kvrt_block_hash(&parent, r->tokens + (size_t)i * TRACE_BLOCK_TOKENS,
                              TRACE_BLOCK_TOKENS, i * TRACE_BLOCK_TOKENS, NULL, &content));
        int32_t block;
        CHECK(kvrt_cache_lookup(r->cache, &content, NULL, &block));
        if (block == KVRT_NULL_BLOCK) {
            CHECK(kvrt_pool_alloc(r->pool, 1, &block));
            CHECK(kvrt_cache_insert(r->cache, block, &content, NULL, i, NULL));
        }
        CHECK(kvrt_pool_free(r->pool, 1, &block));
        parent = content;
    }
    return 0;
}

static int replay_setup(replay_t *r, uint32_t num_blocks, kvrt_cache_policy_t policy)
{
    static char placeholder[4096] __attribute__((aligned(4096)));
    bool tiers = r->tiers.host_blocks > 0;
    kvrt_pool_params_t pp = {
        .field_mask = KVRT_POOL_PARAM_BASE | KVRT_POOL_PARAM_WATERMARK |
                      KVRT_POOL_PARAM_MAX_TABLES,
        .layout = {.num_layers = 1, .num_kv_heads = 1, .head_dim = 1,
                   .tokens_per_block = TRACE_BLOCK_TOKENS},
        .num_blocks = num_blocks,
        .base = placeholder,
        .watermark_blocks = 0,
        .max_tables = 1,
    };
    uint64_t block_bytes;
    CHECK(kvrt_layout_block_bytes(&pp.layout, &block_bytes));
    pp.base_bytes = block_bytes * num_blocks;
    if (tiers) /* the tiers copy blocks: kvrt allocates real memory */
        pp.field_mask &= ~(uint64_t)KVRT_POOL_PARAM_BASE;
    CHECK(kvrt_pool_create(r->ctx, &pp, &r->pool));
    kvrt_cache_params_t cp = {.field_mask = KVRT_CACHE_PARAM_POLICY, .policy = policy};
    CHECK(kvrt_cache_create(r->pool, &cp, &r->cache));
    memset(r->by_tier, 0, sizeof(r->by_tier));
    if (tiers)
        CHECK(replay_tier_open(r->cache, &r->tiers, &r->tier));
    return 0;
}

static int replay_one(replay_t *r, const trace_t *trace, uint32_t capacity,
                      size_t policy_index, replay_result_t *out)
{
    uint32_t num_blocks = capacity == UNBOUNDED ? (uint32_t)trace->num_hash_ids + 1
                                                : capacity + 1;
    double start = now_seconds();
    if (policies[policy_index].clairvoyant) {
        int rc = replay_belady(trace, capacity, out);
        if (rc != 0)
            fprintf(stderr, "kvrt-replay: out of memory for the clairvoyant bound\n");
        out->seconds = now_seconds() - start;
        return rc;
    }
    r->pool = NULL;
    r->cache = NULL;
    if (replay_setup(r, num_blocks, policies[policy_index].policy) != 0)
        return -1;
    uint64_t hits = 0;
    int rc = 0;
    for (size_t i = 0; i < trace->num_requests && rc == 0; i++) {
        uint32_t n = trace->requests[i].num_hash_ids;
        if (n)
            rc = replay_request(r, trace_request_hash_ids(trace, i), n, &hits);
    }
    kvrt_cache_stats_t stats;
    if (rc == 0 && kvrt_cache_stats(r->cache, &stats) == KVRT_OK) {
        *out = (replay_result_t){
            .policy = policies[policy_index].name,
            .capacity = capacity,
            .hit_blocks = hits,
            .total_blocks = trace->num_hash_ids,
            .evictions = stats.evictions,
            .miss_evicted_blocks = stats.miss_evicted / TRACE_BLOCK_TOKENS,
            .miss_never_cached_blocks = stats.miss_never_cached / TRACE_BLOCK_TOKENS,
            .tiers = r->tier.tier != NULL,
        };
        memcpy(out->hit_blocks_by_tier, r->by_tier, sizeof(r->by_tier));
    }
    if (r->tier.tier)
        replay_tier_close(&r->tier);
    kvrt_cache_destroy(r->cache);
    kvrt_pool_destroy(r->pool);
    out->seconds = now_seconds() - start;
    return rc;
}

/* ---- command line ------------------------------------------------------- */

static int parse_capacities(const char *text, uint32_t *caps, int *n)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", text);
    *n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_RUNS)
            return -1;
        if (!strcmp(tok, "unbounded")) {
            caps[(*n)++] = UNBOUNDED;
            continue;
        }
        char *end;
        unsigned long long v = strtoull(tok, &end, 10);
        if (*tok == '-' || end == tok || *end || v < 1 || v > 0x7ffffffeull)
            return -1;
        caps[(*n)++] = (uint32_t)v;
    }
    return *n ? 0 : -1;
}

static int parse_policies(const char *text, size_t *chosen, int *n)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", text);
    *n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        bool all = !strcmp(tok, "all"), found = false;
        for (size_t p = 0; p < NUM_POLICIES; p++)
            if ((all || !strcmp(tok, policies[p].name)) && *n < MAX_RUNS) {
                chosen[(*n)++] = p;
                found = true;
            }
        if (!found)
            return -1;
    }
    return *n ? 0 : -1;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: kvrt-replay [--trace PATH] [--format auto|mooncake|azure]\n"
                 "                   [--capacity unbounded,N,...]\n"
                 "                   [--policy lru,lfu,lfu-aged,lru-leaf,adaptive,belady|all]"
                 " [--json]\n"
                 "                   [--host-capacity N [--ssd-capacity N [--ssd-dir DIR]]]\n"
                 "belady is the clairvoyant bound (Belady's MIN, prefix semantics, no tiers)\n"
                 "--host-capacity/--ssd-capacity: tiers below the pool, in blocks\n"
                 "default trace: %s\n", KVRT_SHIPPED_TRACE);
}

static void print_capacity(FILE *out, uint32_t capacity, bool json)
{
    if (capacity == UNBOUNDED)
        fprintf(out, json ? "null" : "%10s", "unbounded");
    else
        fprintf(out, json ? "%u" : "%10u", capacity);
}

static void print_results(const trace_t *trace, const char *path, const replay_result_t *res,
                          int n, double total, bool json)
{
    const char *format = trace->format == TRACE_FORMAT_MOONCAKE ? "mooncake" : "azure";
    if (!json) {
        printf("kvrt-replay: %s (%s): %zu requests, %zu blocks of %u tokens\n", path, format,
               trace->num_requests, trace->num_hash_ids, TRACE_BLOCK_TOKENS);
        printf("%-9s %10s %11s %12s %8s %10s %12s %12s %8s %11s\n", "policy", "capacity",
               "hit_blocks", "total_blocks", "hit_rate", "evictions", "miss_evicted",
               "miss_never", "seconds", "blocks/s");
    } else {
        printf("{\"trace\": \"%s\", \"format\": \"%s\", \"requests\": %zu, "
               "\"block_tokens\": %u, \"results\": [",
               path, format, trace->num_requests, TRACE_BLOCK_TOKENS);
    }
    for (int i = 0; i < n; i++) {
        const replay_result_t *r = &res[i];
        double rate = r->total_blocks ? (double)r->hit_blocks / (double)r->total_blocks : 0;
        double speed = r->seconds > 0 ? (double)r->total_blocks / r->seconds : 0;
        if (json) {
            printf("%s\n  {\"policy\": \"%s\", \"capacity\": ", i ? "," : "", r->policy);
            print_capacity(stdout, r->capacity, true);
            printf(", \"hit_blocks\": %llu, \"total_blocks\": %llu, \"hit_rate\": %.6f, "
                   "\"evictions\": %llu, \"miss_evicted_blocks\": %llu, "
                   "\"miss_never_cached_blocks\": %llu, \"seconds\": %.4f, "
                   "\"blocks_per_second\": %.0f",
                   (unsigned long long)r->hit_blocks, (unsigned long long)r->total_blocks,
                   rate, (unsigned long long)r->evictions,
                   (unsigned long long)r->miss_evicted_blocks,
                   (unsigned long long)r->miss_never_cached_blocks, r->seconds, speed);
            if (r->tiers)
                printf(", \"hit_blocks_by_tier\": {\"gpu\": %llu, \"host\": %llu, "
                       "\"ssd\": %llu}",
                       (unsigned long long)r->hit_blocks_by_tier[0],
                       (unsigned long long)r->hit_blocks_by_tier[1],
                       (unsigned long long)r->hit_blocks_by_tier[2]);
            printf("}");
        } else {
            printf("%-9s ", r->policy);
            print_capacity(stdout, r->capacity, false);
            printf(" %11llu %12llu %8.4f %10llu %12llu %12llu %8.3f %11.0f\n",
                   (unsigned long long)r->hit_blocks, (unsigned long long)r->total_blocks,
                   rate, (unsigned long long)r->evictions,
                   (unsigned long long)r->miss_evicted_blocks,
                   (unsigned long long)r->miss_never_cached_blocks, r->seconds, speed);
            if (r->tiers)
                printf("%-9s hits by tier: gpu %llu, host %llu, ssd %llu\n", "",
                       (unsigned long long)r->hit_blocks_by_tier[0],
                       (unsigned long long)r->hit_blocks_by_tier[1],
                       (unsigned long long)r->hit_blocks_by_tier[2]);
        }
    }
    if (json)
        printf("\n], \"total_seconds\": %.4f}\n", total);
    else
        printf("total %.3f s\n", total);
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        {"trace", required_argument, NULL, 't'},  {"format", required_argument, NULL, 'f'},
        {"capacity", required_argument, NULL, 'c'}, {"policy", required_argument, NULL, 'p'},
        {"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
        {"host-capacity", required_argument, NULL, 'H'},
        {"ssd-capacity", required_argument, NULL, 'S'},
        {"ssd-dir", required_argument, NULL, 'D'},
        {NULL, 0, NULL, 0}};
    const char *path = KVRT_SHIPPED_TRACE;
    trace_format_t format = TRACE_FORMAT_AUTO;
    uint32_t caps[MAX_RUNS] = {UNBOUNDED, 100000, 50000, 30000, 10000, 1000};
    int num_caps = 6, num_policies = 1;
    size_t chosen[MAX_RUNS] = {0};
    bool json = false;
    replay_tiers_t tiers = {0};
    int c;
    while ((c = getopt_long(argc, argv, "t:f:c:p:jh", long_options, NULL)) != -1) {
        switch (c) {
        case 't': path = optarg; break;
        case 'f':
            if (trace_format_parse(optarg, &format) != 0) {
                fprintf(stderr, "kvrt-replay: unknown format '%s'\n", optarg);
                return 2;
            }
            break;
        case 'c':
            if (parse_capacities(optarg, caps, &num_caps) != 0) {
                fprintf(stderr, "kvrt-replay: --capacity wants up to %d of 'unbounded' or "
                                "1..2147483646, comma-separated; got '%s'\n", MAX_RUNS, optarg);
                return 2;
            }
            break;
        case 'p':
            if (parse_policies(optarg, chosen, &num_policies) != 0) {
                fprintf(stderr, "kvrt-replay: --policy wants lru, lfu, lfu-aged, lru-leaf, "
                                "adaptive, belady or all; got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'j': json = true; break;
        case 'H':
        case 'S': {
            char *end;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (*optarg == '-' || end == optarg || *end || v < 1 ||
                v > (c == 'H' ? (1ull << 24) : (1ull << 26))) {
                fprintf(stderr, "kvrt-replay: --%s wants 1..%u blocks, got '%s'\n",
                        c == 'H' ? "host-capacity" : "ssd-capacity",
                        c == 'H' ? 1u << 24 : 1u << 26, optarg);
                return 2;
            }
            *(c == 'H' ? &tiers.host_blocks : &tiers.ssd_blocks) = (uint32_t)v;
            break;
        }
        case 'D': tiers.ssd_dir = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    char error[512];
    trace_t trace;
    if (trace_load(path, format, &trace, error, sizeof(error)) != 0) {
        fprintf(stderr, "kvrt-replay: %s\n", error);
        return 1;
    }
    if (tiers.ssd_blocks && !tiers.host_blocks) {
        fprintf(stderr, "kvrt-replay: --ssd-capacity needs --host-capacity (blocks reach SSD "
                        "through host memory)\n");
        return 2;
    }
    replay_t r = {.tiers = tiers};
    for (size_t i = 0; i < trace.num_requests; i++)
        if (trace.requests[i].num_hash_ids > r.max_blocks)
            r.max_blocks = trace.requests[i].num_hash_ids;
    r.tokens = malloc(((size_t)r.max_blocks + 1) * TRACE_BLOCK_TOKENS * sizeof(int32_t));
    r.blocks = malloc(((size_t)r.max_blocks + 1) * sizeof(int32_t));
    r.hashes = malloc(((size_t)r.max_blocks + 1) * sizeof(kvrt_block_hash_t));
    replay_result_t results[MAX_RUNS * MAX_RUNS];
    int n = 0, rc = 0;
    double start = now_seconds();
    if (!r.tokens || !r.blocks || !r.hashes || kvrt_ctx_create(NULL, &r.ctx) != KVRT_OK) {
        fprintf(stderr, "kvrt-replay: out of memory\n");
        rc = 1;
    }
    for (int p = 0; p < num_policies && rc == 0; p++)
        for (int i = 0; i < num_caps && rc == 0; i++)
            rc = replay_one(&r, &trace, caps[i], chosen[p], &results[n++]) ? 1 : 0;
    double total = now_seconds() - start;
    if (rc == 0)
        print_results(&trace, path, results, n, total, json);
    kvrt_ctx_destroy(r.ctx);
    free(r.tokens);
    free(r.blocks);
    free(r.hashes);
    trace_free(&trace);
    return rc;
}
