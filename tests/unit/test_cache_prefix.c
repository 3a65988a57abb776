/*
 * test_cache_prefix.c - what a serving engine sees from the prefix cache:
 * shared prefixes share blocks, partial blocks never do, released blocks
 * stay cached until an allocation needs them, tenants with different salts
 * never share, and every missed token is explained in the metrics.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"

#define TPB 16

static kvrt_ctx_t *ctx;
static kvrt_pool_t *pool;
static kvrt_cache_t *cache;

static void make(uint32_t blocks, kvrt_cache_policy_t policy)
{
    pool = test_pool(ctx, blocks, TPB);
    kvrt_cache_params_t p = {.field_mask = KVRT_CACHE_PARAM_POLICY, .policy = policy};
    ASSERT_OK(ctx, kvrt_cache_create(pool, &p, &cache));
}

static void setup(void) { cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK); }

static void teardown(void)
{
    /* Every test ends with nothing but the cache holding blocks. */
    if (cache) {
        test_expect_only_cache_holds(ctx, pool, cache);
        cr_assert_eq(kvrt_cache_destroy(cache), KVRT_OK);
        kvrt_pool_info_t info;
        cr_assert_eq(kvrt_pool_info(pool, &info), KVRT_OK);
        cr_assert_eq(info.free_blocks, info.num_blocks - 1, "cache kept blocks after destroy");
    }
    cache = NULL;
    kvrt_ctx_destroy(ctx);
}

TestSuite(cache_prefix, .init = setup, .fini = teardown);

/* What a scheduler does for a new sequence: match, adopt the hits, append
 * the rest, cache every full block. Returns the table (caller destroys). */
static kvrt_table_id_t prefill(const int32_t *t, uint32_t n, const kvrt_hash_keys_t *keys,
                               kvrt_cache_match_t *m_out)
{
    int32_t hits[64];
    kvrt_block_hash_t hashes[64];
    kvrt_cache_match_t m;
    ASSERT_OK(ctx, kvrt_cache_match(cache, t, n, keys, 64, hits, hashes, &m));
    kvrt_table_id_t table;
    ASSERT_OK(ctx, kvrt_table_create(pool, &table));
    if (m.num_blocks)
        ASSERT_OK(ctx, kvrt_table_adopt(pool, table, m.num_blocks, hits));
    if (n > m.num_tokens) {
        kvrt_block_copy_t copy;
        uint32_t copies;
        ASSERT_OK(ctx, kvrt_table_append(pool, table, n - m.num_tokens, NULL, &copy, &copies));
    }
    const int32_t *blocks;
    uint32_t nb;
    ASSERT_OK(ctx, kvrt_table_view(pool, table, &blocks, &nb, NULL));
    kvrt_block_hash_t parent;
    if (m.num_blocks)
        parent = hashes[m.num_blocks - 1];
    else
        ASSERT_OK(ctx, kvrt_cache_root(cache, &parent));
    for (uint32_t i = m.num_blocks; i < n / TPB; i++) {
        kvrt_block_hash_t h;
        ASSERT_OK(ctx, kvrt_block_hash(&parent, t + i * TPB, TPB, i * TPB, keys, &h));
        ASSERT_OK(ctx, kvrt_cache_insert(cache, blocks[i], &h, keys, i, NULL));
        parent = h;
    }
    if (m_out)
        *m_out = m;
    return table;
}

static kvrt_cache_stats_t stats(void)
{
    kvrt_cache_stats_t s;
    ASSERT_OK(ctx, kvrt_cache_stats(cache, &s));
    cr_assert_eq(s.query_tokens, s.hit_tokens + s.miss_never_cached + s.miss_evicted +
                                     s.miss_key_mismatch + s.miss_partial,
                 "the miss reasons do not add up");
    return s;
}

Test(cache_prefix, shared_prefix_shares_blocks_and_partial_blocks_never_do)
{
    make(64, KVRT_CACHE_LRU);
    int32_t a[100], b[100];
    test_prompt(a, 100, 0);
    test_prompt(b, 100, 0);
    b[70] = -1; /* b diverges inside block 4 */
    kvrt_cache_match_t m;
    kvrt_table_id_t ta = prefill(a, 100, NULL, &m);
    cr_assert_eq(m.num_blocks, 0);
    kvrt_table_id_t tb = prefill(b, 100, NULL, &m);
    cr_assert_eq(m.num_blocks, 4, "blocks 0-3 are shared, got %u", m.num_blocks);
    cr_assert_eq(m.num_tokens, 64);
    cr_assert_eq(m.partial_tokens, 4);
    const int32_t *ba, *bb;
    ASSERT_OK(ctx, kvrt_table_view(pool, ta, &ba, NULL, NULL));
    ASSERT_OK(ctx, kvrt_table_view(pool, tb, &bb, NULL, NULL));
    for (int i = 0; i < 4; i++)
        cr_assert_eq(ba[i], bb[i], "block %d not shared", i);
    cr_assert_neq(ba[4], bb[4]);
    cr_assert_neq(ba[6], bb[6], "the partial last block was shared");
    /* The same prompt again: all 6 full blocks, never the 4-token tail. */
    int32_t hits[8];
    ASSERT_OK(ctx, kvrt_cache_match(cache, a, 100, NULL, 8, hits, NULL, &m));
    cr_assert_eq(m.num_blocks, 6);
    cr_assert_eq(m.miss_reason, KVRT_CACHE_MISS_NONE);
    ASSERT_OK(ctx, kvrt_pool_free(pool, m.num_blocks, hits));
    kvrt_cache_stats_t s = stats();
    cr_assert_eq(s.queries, 3);
    cr_assert_eq(s.hit_tokens, 64 + 96);
    cr_assert_eq(s.miss_partial, 3 * 4);
    cr_assert_eq(s.inserts, 6 + 2);
    ASSERT_OK(ctx, kvrt_table_destroy(pool, ta));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, tb));
}

Test(cache_prefix, released_blocks_stay_cached_until_an_allocation_needs_them)
{
    make(9, KVRT_CACHE_LRU); /* 8 usable blocks */
    int32_t a[64], b[64];
    test_prompt(a, 64, 0);
    test_prompt(b, 64, 1000);
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(a, 64, NULL, NULL)));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.cached_blocks, 4);
    cr_assert_eq(info.free_blocks, 4);
    /* b needs 4 blocks: the never-cached free ones go first. */
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(b, 64, NULL, NULL)));
    cr_assert_eq(stats().evictions, 0, "evicted while free blocks remained");
    kvrt_cache_match_t m;
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(a, 64, NULL, &m)));
    cr_assert_eq(m.num_blocks, 4);
    /* Now a third prompt must evict; LRU takes b's blocks (a was used last). */
    int32_t c[32];
    test_prompt(c, 32, 5000);
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(c, 32, NULL, NULL)));
    cr_assert_eq(stats().evictions, 2);
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(a, 64, NULL, &m)));
    cr_assert_eq(m.num_blocks, 4, "LRU evicted the most recently used prompt");
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(b, 64, NULL, &m)));
    cr_assert_eq(m.num_blocks, 2, "the table released b leaf first, so its leaves went first "
                                  "and its first half still hits");
    cr_assert_eq(m.miss_reason, KVRT_CACHE_MISS_EVICTED);
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
}

/* The explain table remembers, per content hash, the keys of the newest
 * block cached with it, in an entry chosen by the hash (two per index
 * slot: the slot of the low bits, the entry of bit 0 of the high half),
 * whatever happens to the index around it. With the index half full,
 * evictions shift index entries back (backward-shift deletion) all the
 * time; a miss on an evicted block must still read "evicted" unless a
 * newer content took its entry, and then "never cached". */
Test(cache_prefix, an_evicted_block_reads_evicted_however_the_index_shifts)
{
    enum { BLOCKS = 32768, FIRST = 20000, SECOND = 20000, ASKED = 5000 };
    make(BLOCKS, KVRT_CACHE_LRU);
    const uint64_t mask = stats().index_capacity - 1;
    cr_assert_eq(mask + 1, 65536, "index sized for %u blocks", BLOCKS);
    int32_t *newest = calloc(2 * (mask + 1), sizeof(int32_t)); /* 1 + prompt, 0: none */
    cr_assert_not_null(newest);
    kvrt_block_hash_t root, h;
    ASSERT_OK(ctx, kvrt_cache_root(cache, &root));
    int32_t t[TPB];
    /* One-block prompts, released in order: the second set evicts most of
     * the first, oldest first. */
    for (int32_t i = 0; i < FIRST + SECOND; i++) {
        for (int32_t k = 0; k < TPB; k++)
            t[k] = i * TPB + k + 1;
        ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(t, TPB, NULL, NULL)));
        ASSERT_OK(ctx, kvrt_block_hash(&root, t, TPB, 0, NULL, &h));
        newest[(h.lo & mask) * 2 + (h.hi & 1)] = i + 1;
    }
    cr_assert_gt(stats().evictions, ASKED);
    uint32_t evicted = 0, overwritten = 0;
    for (int32_t i = 0; i < ASKED; i++) {
        for (int32_t k = 0; k < TPB; k++)
            t[k] = i * TPB + k + 1;
        int32_t hit;
        kvrt_cache_match_t m;
        ASSERT_OK(ctx, kvrt_cache_match(cache, t, TPB, NULL, 1, &hit, NULL, &m));
        cr_assert_eq(m.num_blocks, 0, "prompt %d outlived %llu evictions", i,
                     (unsigned long long)stats().evictions);
        ASSERT_OK(ctx, kvrt_block_hash(&root, t, TPB, 0, NULL, &h));
        bool own = newest[(h.lo & mask) * 2 + (h.hi & 1)] == i + 1;
        cr_assert_eq(m.miss_reason,
                     own ? KVRT_CACHE_MISS_EVICTED : KVRT_CACHE_MISS_NEVER_CACHED,
                     "prompt %d: reason %d, its explain entry %s", i, (int)m.miss_reason,
                     own ? "its own" : "taken by a newer prompt");
        evicted += own;
        overwritten += !own;
    }
    cr_assert_gt(evicted, ASKED / 2, "most entries are their own (%u)", evicted);
    cr_assert_gt(overwritten, 0, "some entries were taken over: the check can tell");
    free(newest);
    ASSERT_OK(ctx, kvrt_cache_verify(cache));
}

/* A reset forgets the reasons too: a block cached before it was not
 * evicted, and its miss must not say so. */
Test(cache_prefix, after_a_reset_a_miss_reads_never_cached)
{
    make(9, KVRT_CACHE_LRU);
    int32_t a[64], b[64], hits[4];
    test_prompt(a, 64, 0);
    test_prompt(b, 64, 1000);
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(a, 64, NULL, NULL)));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(b, 64, NULL, NULL)));
    int32_t c[64];
    test_prompt(c, 64, 5000);
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(c, 64, NULL, NULL)));
    kvrt_cache_match_t m;
    ASSERT_OK(ctx, kvrt_cache_match(cache, a, 64, NULL, 4, hits, NULL, &m));
    cr_assert_eq(m.num_blocks, 0);
    cr_assert_eq(m.miss_reason, KVRT_CACHE_MISS_EVICTED, "before the reset: evicted");
    ASSERT_OK(ctx, kvrt_cache_reset(cache, 0));
    for (int k = 0; k < 2; k++) {
        ASSERT_OK(ctx, kvrt_cache_match(cache, k ? b : a, 64, NULL, 4, hits, NULL, &m));
        cr_assert_eq(m.num_blocks, 0, "a block cached before the reset hit after it");
        cr_assert_eq(m.miss_reason, KVRT_CACHE_MISS_NEVER_CACHED, "prompt %d: reason %d", k,
                     (int)m.miss_reason);
    }
    ASSERT_OK(ctx, kvrt_cache_verify(cache));
}

Test(cache_prefix, a_held_block_is_never_evicted)
{
    make(5, KVRT_CACHE_LRU); /* 4 usable */
    int32_t a[32], b[64];
    test_prompt(a, 32, 0);
    test_prompt(b, 64, 777);
    kvrt_table_id_t ta = prefill(a, 32, NULL, NULL); /* holds 2 blocks */
    kvrt_table_id_t tb;
    ASSERT_OK(ctx, kvrt_table_create(pool, &tb));
    kvrt_block_copy_t copy;
    uint32_t copies;
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_table_append(pool, tb, 64, NULL, &copy, &copies));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, tb));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, ta));
    /* Released, a's blocks are evictable: now b fits. */
    kvrt_table_id_t t2 = prefill(b, 64, NULL, NULL);
    cr_assert_eq(stats().evictions, 2);
    ASSERT_OK(ctx, kvrt_table_destroy(pool, t2));
}

Test(cache_prefix, tenants_with_different_salts_never_share)
{
    make(64, KVRT_CACHE_LRU);
    int32_t t[80];
    test_prompt(t, 80, 42);
    kvrt_hash_keys_t alice = {.field_mask = KVRT_HASH_KEY_SALT, .salt = "alice", .salt_bytes = 5};
    kvrt_hash_keys_t bob = {.field_mask = KVRT_HASH_KEY_SALT, .salt = "bob", .salt_bytes = 3};
    kvrt_hash_keys_t alice2 = {.field_mask = KVRT_HASH_KEY_SALT, .salt = "alice", .salt_bytes = 5};
    kvrt_cache_match_t m;
    kvrt_table_id_t ta = prefill(t, 80, &alice, &m);
    kvrt_table_id_t tb = prefill(t, 80, &bob, &m);
    cr_assert_eq(m.num_blocks, 0, "bob hit alice's blocks");
    cr_assert_eq(m.miss_reason, KVRT_CACHE_MISS_KEY_MISMATCH);
    const int32_t *ba, *bb;
    ASSERT_OK(ctx, kvrt_table_view(pool, ta, &ba, NULL, NULL));
    ASSERT_OK(ctx, kvrt_table_view(pool, tb, &bb, NULL, NULL));
    for (int i = 0; i < 5; i++)
        cr_assert_neq(ba[i], bb[i], "block %d shared across tenants", i);
    /* No salt is a tenant of its own too. */
    kvrt_table_id_t tn = prefill(t, 80, NULL, &m);
    cr_assert_eq(m.num_blocks, 0);
    /* The same salt (another buffer, same bytes) shares everything. */
    kvrt_table_id_t ta2 = prefill(t, 80, &alice2, &m);
    cr_assert_eq(m.num_blocks, 5);
    const int32_t *ba2;
    ASSERT_OK(ctx, kvrt_table_view(pool, ta2, &ba2, NULL, NULL));
    for (int i = 0; i < 5; i++)
        cr_assert_eq(ba[i], ba2[i]);
    /* An adapter separates like a salt does. */
    kvrt_hash_keys_t lora = {.field_mask = KVRT_HASH_KEY_ADAPTER | KVRT_HASH_KEY_SALT,
                             .adapter_id = 3, .salt = "alice", .salt_bytes = 5};
    kvrt_table_id_t tl = prefill(t, 80, &lora, &m);
    cr_assert_eq(m.num_blocks, 0);
    cr_assert_eq(m.miss_reason, KVRT_CACHE_MISS_KEY_MISMATCH);
    kvrt_cache_stats_t s = stats();
    cr_assert_eq(s.miss_key_mismatch, 3 * 80, "bob, no-salt and the adapter missed on keys");
    cr_assert_eq(s.miss_never_cached, 80);
    cr_assert_eq(s.hit_tokens, 80);
    kvrt_table_id_t all[] = {ta, tb, tn, ta2, tl};
    for (int i = 0; i < 5; i++)
        ASSERT_OK(ctx, kvrt_table_destroy(pool, all[i]));
}

Test(cache_prefix, insert_of_a_known_key_is_a_no_op_that_says_so)
{
    make(16, KVRT_CACHE_LRU);
    int32_t t[16];
    test_prompt(t, 16, 9);
    kvrt_block_hash_t root, h;
    ASSERT_OK(ctx, kvrt_cache_root(cache, &root));
    ASSERT_OK(ctx, kvrt_block_hash(&root, t, TPB, 0, NULL, &h));
    int32_t b[2], cached = 0;
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 2, b));
    ASSERT_OK(ctx, kvrt_cache_insert(cache, b[0], &h, NULL, 0, &cached));
    cr_assert_eq(cached, b[0]);
    ASSERT_OK(ctx, kvrt_cache_insert(cache, b[1], &h, NULL, 0, &cached));
    cr_assert_eq(cached, b[0], "the duplicate must name the block holding the key");
    ASSERT_OK(ctx, kvrt_cache_insert(cache, b[0], &h, NULL, 0, &cached));
    cr_assert_eq(cached, b[0]);
    kvrt_block_hash_t other = {h.lo + 1, h.hi};
    ASSERT_STATUS(KVRT_ERR_BAD_STATE, kvrt_cache_insert(cache, b[0], &other, NULL, 0, NULL));
    kvrt_cache_stats_t s = stats();
    cr_assert_eq(s.inserts, 1);
    cr_assert_eq(s.insert_duplicates, 2);
    cr_assert_eq(s.cached_blocks, 1);
    ASSERT_OK(ctx, kvrt_pool_free(pool, 2, b));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.cached_blocks, 1);
    cr_assert_eq(stats().evictable_blocks, 1);
    /* lookup takes it back out of the evictable set. */
    int32_t got;
    ASSERT_OK(ctx, kvrt_cache_lookup(cache, &h, NULL, &got));
    cr_assert_eq(got, b[0]);
    cr_assert_eq(stats().evictable_blocks, 0);
    ASSERT_OK(ctx, kvrt_cache_lookup(cache, &other, NULL, &got));
    cr_assert_eq(got, KVRT_NULL_BLOCK);
    ASSERT_OK(ctx, kvrt_pool_free(pool, 1, &b[0]));
}

Test(cache_prefix, metrics_are_readable_through_ctl)
{
    make(32, KVRT_CACHE_LFU_AGED);
    int32_t t[40];
    test_prompt(t, 40, 0);
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(t, 40, NULL, NULL)));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(t, 40, NULL, NULL)));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    char name[64];
    uint64_t v;
    snprintf(name, sizeof(name), "cache.%u.hit_tokens", info.group_id);
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, name, &v));
    cr_assert_eq(v, 32);
    snprintf(name, sizeof(name), "cache.%u.miss_partial", info.group_id);
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, name, &v));
    cr_assert_eq(v, 16);
    snprintf(name, sizeof(name), "cache.%u.miss_never_cached", info.group_id);
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, name, &v));
    cr_assert_eq(v, 32);
    snprintf(name, sizeof(name), "cache.%u.cached_blocks", info.group_id);
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, name, &v));
    cr_assert_eq(v, 2);
    double load;
    snprintf(name, sizeof(name), "cache.%u.load_factor", info.group_id);
    ASSERT_OK(ctx, kvrt_ctl_get_double(ctx, name, &load));
    cr_assert(load > 0 && load <= 0.5, "load factor %f", load);
    const char *policy = NULL;
    size_t len = sizeof(policy);
    snprintf(name, sizeof(name), "cache.%u.policy", info.group_id);
    ASSERT_OK(ctx, kvrt_ctl(ctx, name, &policy, &len, NULL, 0));
    cr_assert_str_eq(policy, "lfu-aged");
    uint64_t zero = 0;
    snprintf(name, sizeof(name), "cache.%u.reset", info.group_id);
    ASSERT_OK(ctx, kvrt_ctl(ctx, name, NULL, NULL, &zero, sizeof(zero)));
    cr_assert_eq(stats().queries, 0);
    cr_assert_eq(stats().cached_blocks, 2, "reset must not touch the gauges");
    snprintf(name, sizeof(name), "cache.%u.queries", info.group_id);
    ASSERT_STATUS(KVRT_ERR_UNSUPPORTED, kvrt_ctl(ctx, name, NULL, NULL, &zero, sizeof(zero)));
}

Test(cache_prefix, every_public_function_refuses_bad_input)
{
    make(8, KVRT_CACHE_LRU);
    kvrt_cache_t *other = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_create(NULL, NULL, &other));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_create(pool, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_cache_create(pool, NULL, &other));
    kvrt_pool_t *p2 = test_pool(ctx, 8, TPB);
    kvrt_cache_params_t bad = {.field_mask = 1u << 7};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_create(p2, &bad, &other));
    kvrt_cache_params_t bad_policy = {.field_mask = KVRT_CACHE_PARAM_POLICY, .policy = 99};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_create(p2, &bad_policy, &other));
    cr_assert_null(other);
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_pool_destroy(pool));
    ASSERT_OK(ctx, kvrt_pool_destroy(p2));

    int32_t t[32] = {0}, blocks[2];
    kvrt_cache_match_t m = {.num_blocks = 77};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_match(NULL, t, 32, NULL, 2, blocks, NULL, &m));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_match(cache, NULL, 32, NULL, 2, blocks, NULL, &m));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_match(cache, t, 32, NULL, 2, NULL, NULL, &m));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_match(cache, t, 32, NULL, 2, blocks, NULL, NULL));
    kvrt_hash_keys_t badkeys = {.field_mask = KVRT_HASH_KEY_SALT, .salt = "x", .salt_bytes = 0};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_cache_match(cache, t, 32, &badkeys, 2, blocks, NULL, &m));
    cr_assert_eq(m.num_blocks, 77, "match_out written on failure");
    cr_assert_neq(kvrt_ctx_last_error(ctx)[0], '\0');

    kvrt_block_hash_t h = {1, 2};
    int32_t got = 55;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_lookup(NULL, &h, NULL, &got));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_lookup(cache, NULL, NULL, &got));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_lookup(cache, &h, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_lookup(cache, &h, &badkeys, &got));
    cr_assert_eq(got, 55);

    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_insert(NULL, 1, &h, NULL, 0, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_insert(cache, 1, NULL, NULL, 0, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_insert(cache, 1, &h, &badkeys, 0, NULL));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_cache_insert(cache, 1, &h, NULL, 0, NULL));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_cache_insert(cache, 0, &h, NULL, 0, NULL));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_cache_insert(cache, 999, &h, NULL, 0, NULL));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_cache_insert(cache, -4, &h, NULL, 0, NULL));

    kvrt_cache_stats_t s;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_stats(NULL, &s));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_stats(cache, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_reset_stats(NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_verify(NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_root(NULL, &h));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cache_root(cache, NULL));
    ASSERT_OK(ctx, kvrt_cache_destroy(NULL));
    cr_assert_eq(stats().queries, 0, "a refused call was counted");
}

Test(cache_prefix, context_destroy_frees_a_cache_left_behind)
{
    make(8, KVRT_CACHE_LFU);
    int32_t t[32];
    test_prompt(t, 32, 3);
    ASSERT_OK(ctx, kvrt_table_destroy(pool, prefill(t, 32, NULL, NULL)));
    /* teardown would destroy it; leave it to the context instead. */
    cache = NULL;
}
