/*
 * test_cache_hooks.c - the prefix cache's hooks as a tier and a cluster
 * directory see them (runtime/cache/hooks.h): every insert, eviction and
 * clear is observed, in order, with ids that only grow; an eviction sink
 * sees each victim's bytes intact, may drop it or keep it and free it
 * later, and never makes an allocation fail; no block leaks either way.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/hooks.h"
#include "test_helpers.h"

#define TPB 4
#define MAX_EVENTS 4096

static kvrt_ctx_t *ctx;
static kvrt_pool_t *pool;
static kvrt_cache_t *cache;

/* ---- a recording observer ------------------------------------------------- */

typedef struct recorder {
    kvrt_cache_event_t events[MAX_EVENTS];
    uint32_t count;
} recorder_t;

static recorder_t rec;

static void record(void *user_data, const kvrt_cache_event_t *event)
{
    recorder_t *r = user_data;
    cr_assert_lt(r->count, MAX_EVENTS, "more events than the test expects");
    r->events[r->count++] = *event;
}

/* ---- a sink that copies, keeps or drops ------------------------------------ */

typedef struct sink_state {
    uint32_t keep_budget; /* KEEP answered while > 0 (and counted down when kept) */
    bool always_keep;     /* answer KEEP even when may_keep is false */
    uint32_t offered;
    uint32_t refused_keep; /* offers with may_keep false */
    int32_t kept[256];
    kvrt_cache_block_name_t kept_names[256];
    uint32_t num_kept;
    uint32_t marker_mismatch; /* victims whose bytes were not what was written */
} sink_state_t;

static sink_state_t sink;

/* The first 4 bytes of the block's layer-0 K page hold its id, written by
 * the test when the block was filled: the sink checks they are intact. */
static uint32_t *marker_of(int32_t block)
{
    void *page = NULL;
    kvrt_status_t st = kvrt_pool_page_address(pool, block, 0, KVRT_K, &page);
    cr_assert_eq(st, KVRT_OK);
    return page;
}

static kvrt_cache_sink_verdict_t sink_fn(void *user_data, const kvrt_cache_victim_t *victim)
{
    sink_state_t *s = user_data;
    s->offered++;
    if (*marker_of(victim->block) != (uint32_t)victim->block)
        s->marker_mismatch++;
    if (!victim->may_keep)
        s->refused_keep++;
    if ((s->keep_budget > 0 && victim->may_keep) || s->always_keep) {
        if (victim->may_keep) {
            s->keep_budget--;
            s->kept[s->num_kept] = victim->block;
            s->kept_names[s->num_kept++] = victim->name;
        }
        return KVRT_CACHE_SINK_KEEP;
    }
    return KVRT_CACHE_SINK_DROP;
}

/* ---- fixture ---------------------------------------------------------------- */

static void setup(void)
{
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    memset(&rec, 0, sizeof(rec));
    memset(&sink, 0, sizeof(sink));
    pool = test_pool(ctx, 17, TPB); /* 16 usable blocks */
    /* Plain LRU: the tests below name victims in release order. */
    kvrt_cache_params_t cp = {.field_mask = KVRT_CACHE_PARAM_POLICY, .policy = KVRT_CACHE_LRU};
    ASSERT_OK(ctx, kvrt_cache_create(pool, &cp, &cache));
    ASSERT_OK(ctx, kvrt_cache_observe(cache, record, &rec));
}

static void teardown(void)
{
    if (cache) {
        test_expect_only_cache_holds(ctx, pool, cache);
        cr_assert_eq(kvrt_cache_destroy(cache), KVRT_OK);
    }
    cache = NULL;
    kvrt_ctx_destroy(ctx);
}

TestSuite(cache_hooks, .init = setup, .fini = teardown);

/* Fills a chain of n blocks of tokens seed, seed+1, ... and caches each one
 * as a scheduler does (with its parent); the caller's references are
 * dropped, so every block ends cached and evictable. */
static void cache_chain(uint32_t n, int32_t seed, const kvrt_hash_keys_t *keys,
                        int32_t *blocks_out, kvrt_block_hash_t *content_out)
{
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, n, blocks_out));
    kvrt_block_hash_t parent;
    ASSERT_OK(ctx, kvrt_cache_root(cache, &parent));
    for (uint32_t i = 0; i < n; i++) {
        int32_t tokens[TPB];
        for (uint32_t t = 0; t < TPB; t++)
            tokens[t] = seed + (int32_t)(i * TPB + t);
        ASSERT_OK(ctx, kvrt_block_hash(&parent, tokens, TPB, i * TPB, keys, &content_out[i]));
        *marker_of(blocks_out[i]) = (uint32_t)blocks_out[i];
        ASSERT_OK(ctx, kvrt_cache_insert_chained(cache, blocks_out[i], &content_out[i],
                                                 i ? &content_out[i - 1] : NULL, keys, i,
                                                 NULL));
        parent = content_out[i];
    }
    ASSERT_OK(ctx, kvrt_pool_free(pool, n, blocks_out));
}

/* The whole pool (16 blocks) cached as one chain, every block evictable. */
static int32_t chain[16];
static kvrt_block_hash_t chain_content[16];

static void cache_whole_pool(void) { cache_chain(16, 0, NULL, chain, chain_content); }

/* The keys of a tenant: its name (NUL included) as the cache salt. */
static kvrt_hash_keys_t tenant_keys(const char *tenant)
{
    return (kvrt_hash_keys_t){.field_mask = KVRT_HASH_KEY_SALT, .salt = tenant,
                              .salt_bytes = (uint32_t)strlen(tenant) + 1};
}

/* Allocates n blocks (evicting as needed) and frees them again. */
static void churn(uint32_t n)
{
    int32_t blocks[16];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, n, blocks));
    ASSERT_OK(ctx, kvrt_pool_free(pool, n, blocks));
}

static void give_back_kept(void)
{
    if (sink.num_kept)
        ASSERT_OK(ctx, kvrt_pool_free(pool, sink.num_kept, sink.kept));
    sink.num_kept = 0;
}

/* ---- observers ---------------------------------------------------------------- */

Test(cache_hooks, stored_events_name_each_block_and_its_parent)
{
    int32_t blocks[6];
    kvrt_block_hash_t content[6];
    cache_chain(6, 100, NULL, blocks, content);
    cr_assert_eq(rec.count, 6);
    for (uint32_t i = 0; i < 6; i++) {
        const kvrt_cache_event_t *e = &rec.events[i];
        cr_assert_eq(e->kind, KVRT_CACHE_EVENT_STORED);
        cr_assert_eq(e->id, i + 1, "ids count from 1 in order");
        cr_assert_eq(e->block, blocks[i]);
        cr_assert_eq(e->tokens_per_block, TPB);
        cr_assert_eq(e->name.depth, i);
        /* No salt: the key is the content hash. */
        cr_assert(e->name.key.lo == content[i].lo && e->name.key.hi == content[i].hi);
        cr_assert(e->name.content.lo == content[i].lo);
        if (i == 0) {
            cr_assert_eq(e->name.flags & KVRT_CACHE_NAME_HAS_PARENT, 0u);
        } else {
            cr_assert(e->name.flags & KVRT_CACHE_NAME_HAS_PARENT);
            cr_assert(e->name.parent_key.lo == rec.events[i - 1].name.key.lo &&
                      e->name.parent_key.hi == rec.events[i - 1].name.key.hi);
        }
    }
    uint64_t count = 0;
    ASSERT_OK(ctx, kvrt_cache_event_count(cache, &count));
    cr_assert_eq(count, 6);
}

Test(cache_hooks, salted_parent_keys_are_keys_not_contents)
{
    const kvrt_hash_keys_t keys = tenant_keys("tenant-a");
    int32_t blocks[3];
    kvrt_block_hash_t content[3];
    cache_chain(3, 7, &keys, blocks, content);
    cr_assert_eq(rec.count, 3);
    for (uint32_t i = 0; i < 3; i++) {
        kvrt_block_hash_t key;
        ASSERT_OK(ctx, kvrt_block_key(&content[i], &keys, &key));
        cr_assert(rec.events[i].name.key.lo == key.lo && rec.events[i].name.key.hi == key.hi);
        cr_assert(rec.events[i].name.key.lo != content[i].lo, "a salted key is not the content");
        if (i)
            cr_assert(rec.events[i].name.parent_key.lo == rec.events[i - 1].name.key.lo);
    }
}

Test(cache_hooks, duplicates_and_plain_inserts)
{
    int32_t blocks[2];
    kvrt_block_hash_t content[2];
    cache_chain(2, 0, NULL, blocks, content);
    /* The same content again, in another block: a duplicate, not an event. */
    int32_t other, cached = 0;
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 1, &other));
    ASSERT_OK(ctx, kvrt_cache_insert(cache, other, &content[1], NULL, 1, &cached));
    cr_assert_eq(cached, blocks[1]);
    cr_assert_eq(rec.count, 2);
    /* kvrt_cache_insert() is not told the parent, and says so. */
    kvrt_block_hash_t fresh = {0x1234, 0x5678};
    ASSERT_OK(ctx, kvrt_cache_insert(cache, other, &fresh, NULL, 5, NULL));
    cr_assert_eq(rec.count, 3);
    cr_assert_eq(rec.events[2].kind, KVRT_CACHE_EVENT_STORED);
    cr_assert_eq(rec.events[2].name.depth, 5);
    cr_assert_eq(rec.events[2].name.flags, 0u);
    ASSERT_OK(ctx, kvrt_pool_free(pool, 1, &other));
}

Test(cache_hooks, evictions_are_removed_events_in_policy_order)
{
    cache_whole_pool(); /* the pool is now all cached */
    churn(5);           /* LRU: the 5 oldest go */
    cr_assert_eq(rec.count, 16 + 5);
    for (uint32_t i = 0; i < 5; i++) {
        const kvrt_cache_event_t *e = &rec.events[16 + i];
        cr_assert_eq(e->kind, KVRT_CACHE_EVENT_REMOVED);
        cr_assert_eq(e->id, 17 + i);
        cr_assert_eq(e->block, chain[i]);
        cr_assert_eq(e->flags, 0u, "dropped, not kept");
        cr_assert(e->name.key.lo == chain_content[i].lo);
        cr_assert_eq(e->name.depth, i);
    }
    kvrt_cache_stats_t stats;
    ASSERT_OK(ctx, kvrt_cache_stats(cache, &stats));
    cr_assert_eq(stats.evictions, 5);
    cr_assert_eq(stats.cached_blocks, 11);
}

Test(cache_hooks, destroy_clears_once_and_observers_come_off)
{
    int32_t blocks[4];
    kvrt_block_hash_t content[4];
    cache_chain(4, 0, NULL, blocks, content);
    recorder_t *second = calloc(1, sizeof(*second));
    cr_assert_not_null(second);
    ASSERT_OK(ctx, kvrt_cache_observe(cache, record, second));
    churn(16); /* everything evicted: both observers see all 4, in order */
    cr_assert_eq(second->count, 4);
    for (uint32_t i = 0; i < 4; i++)
        cr_assert_eq(second->events[i].id, rec.events[4 + i].id);
    ASSERT_OK(ctx, kvrt_cache_unobserve(cache, record, second));
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND, kvrt_cache_unobserve(cache, record, second));
    cache_chain(1, 1000, NULL, blocks, content);
    cr_assert_eq(second->count, 4, "an observer taken off sees nothing more");
    free(second);

    ASSERT_OK(ctx, kvrt_cache_verify(cache));
    ASSERT_OK(ctx, kvrt_cache_destroy(cache));
    cache = NULL;
    const kvrt_cache_event_t *last = &rec.events[rec.count - 1];
    cr_assert_eq(last->kind, KVRT_CACHE_EVENT_CLEARED);
    cr_assert_eq(last->block, KVRT_NULL_BLOCK);
    cr_assert_eq(last->id, 4 + 4 + 1 + 1);
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.free_blocks, 16);
}

Test(cache_hooks, attach_errors)
{
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_observe(cache, record, &rec));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_observe(cache, NULL, &rec));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_observe(NULL, record, &rec));
    recorder_t extra[KVRT_CACHE_MAX_OBSERVERS];
    for (uint32_t i = 1; i < KVRT_CACHE_MAX_OBSERVERS; i++)
        ASSERT_OK(ctx, kvrt_cache_observe(cache, record, &extra[i]));
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_cache_observe(cache, record, &extra[0]));
    for (uint32_t i = 1; i < KVRT_CACHE_MAX_OBSERVERS; i++)
        ASSERT_OK(ctx, kvrt_cache_unobserve(cache, record, &extra[i]));

    ASSERT_OK(ctx, kvrt_cache_set_sink(cache, sink_fn, &sink));
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_cache_set_sink(cache, sink_fn, &sink));
    ASSERT_OK(ctx, kvrt_cache_set_sink(cache, NULL, NULL));
    ASSERT_OK(ctx, kvrt_cache_set_sink(cache, sink_fn, &sink));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_set_sink(NULL, sink_fn, &sink));

    kvrt_cache_block_name_t bad = {.key = {1, 2}, .content = {1, 2}, .flags = 1u << 7};
    int32_t block;
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 1, &block));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_insert_named(cache, block, &bad, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_insert_named(cache, block, NULL, NULL));
    ASSERT_OK(ctx, kvrt_pool_free(pool, 1, &block));
    bad.flags = 0;
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_cache_insert_named(cache, block, &bad, NULL));
    cr_assert_eq(rec.count, 0, "refused calls raise no event");
}

/* ---- the eviction sink ---------------------------------------------------------- */

Test(cache_hooks, sink_sees_intact_bytes_and_drop_frees_now)
{
    cache_whole_pool();
    ASSERT_OK(ctx, kvrt_cache_set_sink(cache, sink_fn, &sink));
    churn(6);
    cr_assert_eq(sink.offered, 6);
    cr_assert_eq(sink.marker_mismatch, 0, "a victim's bytes were touched before the sink");
    cr_assert_eq(sink.num_kept, 0);
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.free_blocks, 6);
    cr_assert_eq(info.cached_blocks, 10);
}

Test(cache_hooks, sink_keeps_and_frees_later_allocation_still_served)
{
    cache_whole_pool();
    ASSERT_OK(ctx, kvrt_cache_set_sink(cache, sink_fn, &sink));
    sink.keep_budget = 3;
    int32_t got[4];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 4, got));
    /* 3 kept by the sink, then 4 dropped for the allocation. */
    cr_assert_eq(sink.offered, 7);
    cr_assert_eq(sink.num_kept, 3);
    for (uint32_t i = 0; i < 3; i++) {
        cr_assert_eq(sink.kept[i], chain[i], "LRU order");
        uint32_t refs = 0;
        ASSERT_OK(ctx, kvrt_pool_refcount(pool, sink.kept[i], &refs));
        cr_assert_eq(refs, 1, "a kept block is the sink's, with one reference");
        int32_t found = -1;
        ASSERT_OK(ctx, kvrt_cache_lookup(cache, &chain_content[i], NULL, &found));
        cr_assert_eq(found, KVRT_NULL_BLOCK, "a kept block is out of the index");
        cr_assert_eq(rec.events[16 + i].kind, KVRT_CACHE_EVENT_REMOVED);
        cr_assert_eq(rec.events[16 + i].flags, KVRT_CACHE_EVENT_KEPT);
    }
    cr_assert_eq(rec.events[19].flags, 0u);
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.used_blocks, 4 + 3);
    cr_assert_eq(info.cached_blocks, 16 - 7);
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    ASSERT_OK(ctx, kvrt_cache_verify(cache));
    /* The asynchronous copy is done: the sink gives the blocks back. */
    give_back_kept();
    ASSERT_OK(ctx, kvrt_pool_free(pool, 4, got));
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.free_blocks, 7);
}

Test(cache_hooks, sink_cannot_keep_what_the_allocation_needs)
{
    cache_whole_pool();
    ASSERT_OK(ctx, kvrt_cache_set_sink(cache, sink_fn, &sink));
    sink.always_keep = true;
    /* 16 evictable, 14 needed: two may be kept, then every victim is needed. */
    int32_t got[14];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 14, got));
    cr_assert_eq(sink.num_kept, 2);
    cr_assert_eq(sink.offered, 16);
    cr_assert_eq(sink.refused_keep, 14);
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    ASSERT_OK(ctx, kvrt_cache_verify(cache));
    /* The pool is now all used: nothing more to evict or allocate. */
    int32_t one;
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_pool_alloc(pool, 1, &one));
    give_back_kept();
    ASSERT_OK(ctx, kvrt_pool_free(pool, 14, got));
}

Test(cache_hooks, kept_block_comes_back_by_name)
{
    const kvrt_hash_keys_t keys = tenant_keys("tenant-b");
    int32_t blocks[16];
    kvrt_block_hash_t content[16];
    int32_t tokens[16 * TPB];
    for (uint32_t t = 0; t < 16 * TPB; t++)
        tokens[t] = 500 + (int32_t)t;
    cache_chain(16, 500, &keys, blocks, content);
    ASSERT_OK(ctx, kvrt_cache_set_sink(cache, sink_fn, &sink));
    sink.keep_budget = 1;
    churn(1); /* block 0 of the chain goes to the "tier", block 1 is dropped */
    cr_assert_eq(sink.num_kept, 1);
    cr_assert_eq(sink.kept[0], blocks[0]);
    kvrt_cache_match_t m;
    int32_t hits[16];
    ASSERT_OK(ctx, kvrt_cache_match(cache, tokens, 16 * TPB, &keys, 16, hits, NULL, &m));
    cr_assert_eq(m.num_blocks, 0, "the chain's first block is gone");
    cr_assert_eq(m.miss_reason, KVRT_CACHE_MISS_EVICTED);

    /* The tier brings it back into a fresh block under the name it kept. */
    int32_t fresh, cached = 0;
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 1, &fresh));
    ASSERT_OK(ctx, kvrt_cache_insert_named(cache, fresh, &sink.kept_names[0], &cached));
    cr_assert_eq(cached, fresh);
    const kvrt_cache_event_t *e = &rec.events[rec.count - 1];
    cr_assert_eq(e->kind, KVRT_CACHE_EVENT_STORED);
    cr_assert_eq(e->block, fresh);
    cr_assert(e->name.key.lo == sink.kept_names[0].key.lo);
    ASSERT_OK(ctx, kvrt_pool_free(pool, 1, &fresh));
    give_back_kept();
    ASSERT_OK(ctx, kvrt_cache_match(cache, tokens, 16 * TPB, &keys, 16, hits, NULL, &m));
    cr_assert_eq(m.num_blocks, 1, "the block brought back hits, the dropped one does not");
    cr_assert_eq(m.miss_reason, KVRT_CACHE_MISS_EVICTED);
    ASSERT_OK(ctx, kvrt_pool_free(pool, m.num_blocks, hits));
}

/* ---- a random model: the observed index equals the real one ------------------- */

typedef struct shadow {
    kvrt_block_hash_t keys[64];
    uint32_t count;
} shadow_t;

static void shadow_apply(void *user_data, const kvrt_cache_event_t *e)
{
    shadow_t *s = user_data;
    if (e->kind == KVRT_CACHE_EVENT_CLEARED) {
        s->count = 0;
        return;
    }
    uint32_t at = 0;
    while (at < s->count && !(s->keys[at].lo == e->name.key.lo && s->keys[at].hi == e->name.key.hi))
        at++;
    if (e->kind == KVRT_CACHE_EVENT_STORED) {
        cr_assert_eq(at, s->count, "stored twice without a removal");
        cr_assert_lt(s->count, 64u);
        s->keys[s->count++] = e->name.key;
    } else {
        cr_assert_lt(at, s->count, "removed a key never stored");
        s->keys[at] = s->keys[--s->count];
    }
}

Test(cache_hooks, random_operations_every_change_observed)
{
    shadow_t *shadow = calloc(1, sizeof(*shadow));
    cr_assert_not_null(shadow);
    ASSERT_OK(ctx, kvrt_cache_observe(cache, shadow_apply, shadow));
    ASSERT_OK(ctx, kvrt_cache_set_sink(cache, sink_fn, &sink));
    uint64_t rng = 42;
    int32_t held[16];
    uint32_t num_held = 0;
    uint64_t last_id = 0;
    for (uint32_t step = 0; step < 3000; step++) {
        uint32_t op = test_rand_below(&rng, 4);
        if (op == 0 && num_held < 16) {
            /* Allocate and cache a block under a random key (evicts). */
            int32_t b;
            if (kvrt_pool_alloc(pool, 1, &b) != KVRT_OK)
                continue;
            kvrt_block_hash_t content = {test_rand_below(&rng, 40) + 1, 9};
            *marker_of(b) = (uint32_t)b;
            ASSERT_OK(ctx, kvrt_cache_insert(cache, b, &content, NULL, 0, NULL));
            held[num_held++] = b;
        } else if (op == 1 && num_held) {
            uint32_t i = test_rand_below(&rng, num_held);
            ASSERT_OK(ctx, kvrt_pool_free(pool, 1, &held[i]));
            held[i] = held[--num_held];
        } else if (op == 2) {
            sink.keep_budget = test_rand_below(&rng, 3);
            uint32_t n = 1 + test_rand_below(&rng, 4);
            int32_t got[4];
            if (kvrt_pool_alloc(pool, n, got) == KVRT_OK)
                ASSERT_OK(ctx, kvrt_pool_free(pool, n, got));
        } else if (sink.num_kept) {
            give_back_kept();
        }
        kvrt_cache_stats_t stats;
        ASSERT_OK(ctx, kvrt_cache_stats(cache, &stats));
        cr_assert_eq(shadow->count, stats.cached_blocks, "step %u: observed index drifted", step);
        uint64_t id = 0;
        ASSERT_OK(ctx, kvrt_cache_event_count(cache, &id));
        cr_assert_geq(id, last_id);
        last_id = id;
    }
    cr_assert_eq(sink.marker_mismatch, 0);
    cr_assert_gt(sink.offered, 100, "the run evicted too little to mean anything");
    give_back_kept();
    ASSERT_OK(ctx, kvrt_pool_free(pool, num_held, held));
    ASSERT_OK(ctx, kvrt_cache_unobserve(cache, shadow_apply, shadow));
    free(shadow);
}
