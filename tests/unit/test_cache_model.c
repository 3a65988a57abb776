/*
 * test_cache_model.c - the prefix index and each eviction policy against a
 * reference model written the slow, obvious way (linear scans over every
 * block). A random workload of prompts sharing prefixes is prefilled into
 * block tables, held for a while and released; after every step the hits
 * of each match, the evictions and the cached/evictable counts must be the
 * model's, and the cache and pool must pass their own verification.
 */
#include <string.h>

#include "test_helpers.h"

#define TPB 4
#define NUM_BLOCKS 24          /* 23 usable: evictions are constant */
#define MAX_PROMPT_BLOCKS 8
#define MAX_LIVE 4
#define STEPS 3000
#define HISTORY_SLOTS 65536u   /* the frequency policies' minimum (policy_freq.c) */

typedef struct model_block {
    bool cached;
    kvrt_block_hash_t key;
    uint32_t refs;             /* references of cached blocks only */
    uint32_t freq;
    uint32_t depth;
    bool idle;
    uint64_t idle_seq;         /* LRU: order of becoming idle */
    uint64_t priority, tick;   /* frequency policies, fixed when idled */
} model_block_t;

typedef struct model {
    kvrt_cache_policy_t policy;
    model_block_t b[NUM_BLOCKS];
    uint32_t used;             /* blocks with references, cached or not */
    uint32_t idle;
    uint64_t seq, tick, age, evictions;
    /* lru-leaf's open release run: its first block (0: none), the depth of
     * its last block and its tick; a deeper block of the run sorts just
     * before the run's first (idle_seq - 1), appends are 1024 apart. */
    int32_t run_first;
    uint32_t run_depth;
    uint64_t run_tick;
    uint64_t history[HISTORY_SLOTS];
} model_t;

static kvrt_ctx_t *ctx;
static kvrt_pool_t *pool;
static kvrt_cache_t *cache;
static model_t model;

static int32_t find_key(const kvrt_block_hash_t *k)
{
    for (int32_t i = 1; i < NUM_BLOCKS; i++)
        if (model.b[i].cached && model.b[i].key.lo == k->lo && model.b[i].key.hi == k->hi)
            return i;
    return 0;
}

/* The reference eviction rule, by exhaustive search. */
static int32_t model_victim(void)
{
    int32_t best = 0;
    for (int32_t i = 1; i < NUM_BLOCKS; i++) {
        const model_block_t *c = &model.b[i];
        if (!c->cached || !c->idle)
            continue;
        if (!best) {
            best = i;
            continue;
        }
        const model_block_t *w = &model.b[best];
        bool better;
        if (model.policy == KVRT_CACHE_LRU || model.policy == KVRT_CACHE_LRU_LEAF)
            better = c->idle_seq < w->idle_seq;
        else if (c->priority != w->priority)
            better = c->priority < w->priority;
        else if (c->tick != w->tick)
            better = c->tick < w->tick;
        else if (c->depth != w->depth)
            better = c->depth > w->depth;
        else
            better = false; /* lower block id wins: i > best here */
        if (better)
            best = i;
    }
    cr_assert_neq(best, 0, "model: nothing to evict");
    return best;
}

static void model_evict(uint32_t count)
{
    for (uint32_t n = 0; n < count; n++) {
        int32_t v = model_victim();
        model_block_t *c = &model.b[v];
        if (v == model.run_first)
            model.run_first = 0;
        if (model.policy == KVRT_CACHE_LFU_AGED)
            model.age = c->priority;
        if (model.policy != KVRT_CACHE_LRU)
            model.history[c->key.lo & (HISTORY_SLOTS - 1)] =
                (c->key.lo & 0xffffffff00000000ull) | c->freq;
        memset(c, 0, sizeof(*c));
        model.idle--;
        model.evictions++;
    }
}

static void model_alloc(uint32_t count)
{
    uint32_t free_blocks = NUM_BLOCKS - 1 - model.used - model.idle;
    if (free_blocks < count)
        model_evict(count - free_blocks);
    model.used += count;
}

static void model_release(int32_t block)
{
    model_block_t *c = &model.b[block];
    if (!c->cached) {
        model.used--;
        return;
    }
    if (--c->refs > 0)
        return;
    model.used--;
    model.idle++;
    c->idle = true;
    c->idle_seq = model.seq += 1024;
    if (model.policy == KVRT_CACHE_LRU_LEAF) {
        if (model.run_first && model.run_tick == model.tick && c->depth == model.run_depth + 1) {
            c->idle_seq = model.b[model.run_first].idle_seq - 1;
        } else {
            model.run_tick = model.tick;
        }
        model.run_first = block;
        model.run_depth = c->depth;
    }
    c->priority = c->freq + (model.policy == KVRT_CACHE_LFU_AGED ? model.age : 0);
    c->tick = model.tick;
}

static void model_hit(int32_t block)
{
    model_block_t *c = &model.b[block];
    if (c->idle) {
        if (block == model.run_first)
            model.run_first = 0;
        c->idle = false;
        model.idle--;
        model.used++;
    }
    c->refs++;
    c->freq++;
}

static void model_insert(int32_t block, const kvrt_block_hash_t *key, uint32_t depth)
{
    model_block_t *c = &model.b[block];
    uint64_t e = model.history[key->lo & (HISTORY_SLOTS - 1)];
    uint32_t remembered = 0;
    if (model.policy != KVRT_CACHE_LRU && e &&
        (e & 0xffffffff00000000ull) == (key->lo & 0xffffffff00000000ull))
        remembered = (uint32_t)e;
    *c = (model_block_t){.cached = true, .key = *key, .refs = 1, .freq = remembered + 1,
                         .depth = depth};
}

/* ---- the workload ----------------------------------------------------------- */

typedef struct live {
    kvrt_table_id_t table;
} live_t;

static void make_prompt(uint64_t *rng, int32_t *t, uint32_t *n_out)
{
    uint32_t n = 1 + test_rand_below(rng, MAX_PROMPT_BLOCKS * TPB);
    uint32_t family = test_rand_below(rng, 3);
    uint32_t shared = test_rand_below(rng, MAX_PROMPT_BLOCKS * TPB + 1);
    int32_t branch = (int32_t)test_rand_below(rng, 4);
    for (uint32_t i = 0; i < n; i++)
        t[i] = i < shared ? (int32_t)(family * 1000 + i) : (int32_t)(50000 + branch * 100 + i);
    *n_out = n;
}

static void step_prefill(uint64_t *rng, live_t *live, int *num_live)
{
    int32_t t[MAX_PROMPT_BLOCKS * TPB], hits[MAX_PROMPT_BLOCKS];
    kvrt_block_hash_t keys[MAX_PROMPT_BLOCKS], root;
    uint32_t n;
    make_prompt(rng, t, &n);
    uint32_t full = n / TPB;
    ASSERT_OK(ctx, kvrt_cache_root(cache, &root));
    for (uint32_t i = 0; i < full; i++)
        ASSERT_OK(ctx, kvrt_block_hash(i ? &keys[i - 1] : &root, t + i * TPB, TPB, i * TPB,
                                       NULL, &keys[i]));
    uint32_t want = 0;
    while (want < full && find_key(&keys[want]))
        want++;
    kvrt_cache_match_t m;
    ASSERT_OK(ctx, kvrt_cache_match(cache, t, n, NULL, MAX_PROMPT_BLOCKS, hits, NULL, &m));
    cr_assert_eq(m.num_blocks, want, "hits %u, model %u", m.num_blocks, want);
    for (uint32_t i = 0; i < want; i++) {
        cr_assert_eq(hits[i], find_key(&keys[i]), "hit %u is another block", i);
        model_hit(hits[i]);
    }
    model.tick++;

    uint32_t grow = (n - m.num_tokens + TPB - 1) / TPB;
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    if (grow > info.free_blocks + info.cached_blocks || *num_live == MAX_LIVE) {
        /* Cannot (or may not) hold it: give the hits back. */
        if (m.num_blocks)
            ASSERT_OK(ctx, kvrt_pool_free(pool, m.num_blocks, hits));
        for (uint32_t i = 0; i < m.num_blocks; i++)
            model_release(hits[i]);
        return;
    }
    kvrt_table_id_t table;
    ASSERT_OK(ctx, kvrt_table_create(pool, &table));
    if (m.num_blocks)
        ASSERT_OK(ctx, kvrt_table_adopt(pool, table, m.num_blocks, hits));
    if (grow) {
        kvrt_block_copy_t copy;
        uint32_t copies;
        ASSERT_OK(ctx, kvrt_table_append(pool, table, n - m.num_tokens, NULL, &copy, &copies));
        model_alloc(grow);
    }
    const int32_t *blocks;
    ASSERT_OK(ctx, kvrt_table_view(pool, table, &blocks, NULL, NULL));
    for (uint32_t i = m.num_blocks; i < full; i++) {
        int32_t cached;
        ASSERT_OK(ctx, kvrt_cache_insert(cache, blocks[i], &keys[i], NULL, i, &cached));
        int32_t expect = find_key(&keys[i]);
        if (expect) {
            cr_assert_eq(cached, expect, "duplicate names the wrong block");
        } else {
            cr_assert_eq(cached, blocks[i]);
            model_insert(blocks[i], &keys[i], i); /* its one reference: the table's */
        }
    }
    live[(*num_live)++].table = table;
}

static void step_release(uint64_t *rng, live_t *live, int *num_live)
{
    int k = (int)test_rand_below(rng, (uint32_t)*num_live);
    const int32_t *blocks;
    uint32_t nb;
    ASSERT_OK(ctx, kvrt_table_view(pool, live[k].table, &blocks, &nb, NULL));
    int32_t copy[MAX_PROMPT_BLOCKS];
    memcpy(copy, blocks, nb * sizeof(int32_t));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, live[k].table));
    for (uint32_t i = nb; i-- > 0;) /* the table releases its deepest block first */
        model_release(copy[i]);
    live[k] = live[--*num_live];
}

static void check_counts(void)
{
    kvrt_cache_stats_t s;
    ASSERT_OK(ctx, kvrt_cache_stats(cache, &s));
    cr_assert_eq(s.evictions, model.evictions, "evictions %llu, model %llu",
                 (unsigned long long)s.evictions, (unsigned long long)model.evictions);
    cr_assert_eq(s.evictable_blocks, model.idle);
    uint32_t cached = 0;
    for (int i = 1; i < NUM_BLOCKS; i++)
        cached += model.b[i].cached;
    cr_assert_eq(s.cached_blocks, cached);
    ASSERT_OK(ctx, kvrt_cache_verify(cache));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
}

static void run(kvrt_cache_policy_t policy, uint64_t seed)
{
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    pool = test_pool(ctx, NUM_BLOCKS, TPB);
    kvrt_cache_params_t p = {.field_mask = KVRT_CACHE_PARAM_POLICY, .policy = policy};
    ASSERT_OK(ctx, kvrt_cache_create(pool, &p, &cache));
    memset(&model, 0, sizeof(model));
    model.policy = policy;
    live_t live[MAX_LIVE];
    int num_live = 0;
    uint64_t rng = seed;
    for (int step = 0; step < STEPS; step++) {
        if (num_live == 0 || test_rand_below(&rng, 10) < 6)
            step_prefill(&rng, live, &num_live);
        else
            step_release(&rng, live, &num_live);
        check_counts();
    }
    while (num_live)
        step_release(&rng, live, &num_live);
    check_counts();
    cr_assert(model.evictions > 100, "the workload never stressed eviction");
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.used_blocks, 0);
    ASSERT_OK(ctx, kvrt_cache_destroy(cache));
    ASSERT_OK(ctx, kvrt_pool_destroy(pool));
    kvrt_ctx_destroy(ctx);
}

Test(cache_model, lru_matches_the_reference) { run(KVRT_CACHE_LRU, 0x1234567ull); }
Test(cache_model, lfu_matches_the_reference) { run(KVRT_CACHE_LFU, 0xabcdefull); }
Test(cache_model, lfu_aged_matches_the_reference) { run(KVRT_CACHE_LFU_AGED, 0x5eed5ull); }
Test(cache_model, lru_leaf_matches_the_reference) { run(KVRT_CACHE_LRU_LEAF, 0x1eafull); }
