/*
 * cache.c - the prefix cache over one pool: match, lookup, insert, the
 * pool's eviction hooks, metrics and the ctl nodes "cache.<N>.*".
 *
 * State per cache, all sized at creation from the pool's block count:
 *   index        block key -> block (index.c)
 *   names        block -> its key, content hash, parent key and depth, so an
 *                evicted block leaves the index without rehashing and its
 *                events and eviction sink know what it was
 *   policy       the evictable set (policy_*.c)
 *   explain      a direct-mapped table, content hash -> (content tag, keys
 *                tag) of the last block inserted with that content, two
 *                entries in each index slot (cache_internal.h), so that an
 *                unsalted insert writes both in one line. It
 *                turns a miss into a reason: our keys there means the block
 *                was cached and evicted; other keys mean the same tokens are
 *                cached for another tenant or adapter; nothing means never
 *                cached. It is lossy by design (a slot remembers only the
 *                newest content that maps to it), so a long-gone block can
 *                read as "never cached"; it never makes a hit a miss.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache_internal.h"

struct kvrt_cache {
    kvrt_owned_t owned;
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    char name[32];
    uint32_t group_id;
    uint32_t num_blocks;
    uint32_t tokens_per_block;
    kvrt_cache_policy_t policy_kind;
    kvrt_block_hash_t root;
    cache_index_t index;
    cache_policy_t policy;
    cache_name_t *names; /* block -> its name (cache_internal.h) */
    kvrt_cache_stats_t stats;
    kvrt_pool_cache_ops_t pool_ops;
    uint32_t holders; /* schedulers built on this cache */
    uint64_t resets;  /* kvrt_cache_reset calls that emptied it */
    cache_hooks_t hooks;
};

kvrt_pool_t *kvrt_cache_pool(const kvrt_cache_t *cache) { return cache->pool; }

uint32_t kvrt_cache_peek_victims(const kvrt_cache_t *cache, int32_t *blocks_out,
                                 kvrt_cache_block_name_t *names_out, uint32_t max)
{
    uint32_t n = cache->policy.ops->peek(&cache->policy, blocks_out, max);
    for (uint32_t i = 0; i < n; i++)
        names_out[i] = cache->names[blocks_out[i]].name;
    return n;
}
cache_hooks_t *kvrt_cache_hooks(kvrt_cache_t *cache) { return &cache->hooks; }
void kvrt_cache_hold(kvrt_cache_t *cache) { cache->holders++; }
uint64_t kvrt_cache_resets(const kvrt_cache_t *cache) { return cache->resets; }
void kvrt_cache_count_reset(kvrt_cache_t *cache) { cache->resets++; }
void kvrt_cache_unhold(kvrt_cache_t *cache) { cache->holders--; }

static const cache_policy_ops_t *const policy_table[] = {
    [KVRT_CACHE_LRU] = &kvrt_cache_policy_lru,
    [KVRT_CACHE_LFU] = &kvrt_cache_policy_lfu,
    [KVRT_CACHE_LFU_AGED] = &kvrt_cache_policy_lfu_aged,
    [KVRT_CACHE_LRU_LEAF] = &kvrt_cache_policy_lru_leaf,
    [KVRT_CACHE_ADAPTIVE] = &kvrt_cache_policy_adaptive,
};
#define NUM_POLICIES (sizeof(policy_table) / sizeof(policy_table[0]))
#define MATCH_WINDOW 16u /* blocks hashed ahead of their lookups in a match */

/* ---- keys of one call ----------------------------------------------------- */

/* What a call needs from its keys: validated once, digested once. */
typedef struct call_keys {
    const kvrt_hash_keys_t *keys;
    bool empty;
    kvrt_block_hash_t digest;
    uint16_t tag; /* explain-table tag of these keys: odd, 1 for empty keys */
} call_keys_t;

static bool call_keys_init(call_keys_t *ck, const kvrt_hash_keys_t *keys)
{
    if (KVRT_LIKELY(!keys || keys->field_mask == 0)) {
        /* No keys at all (most requests): valid and empty, no call. */
        *ck = (call_keys_t){.keys = keys, .empty = true, .tag = 1u};
        return true;
    }
    if (!kvrt_cache_keys_valid(keys))
        return false;
    ck->keys = keys;
    ck->empty = kvrt_cache_keys_empty(keys);
    ck->digest = ck->empty ? (kvrt_block_hash_t){0, 0} : kvrt_cache_keys_digest(keys);
    ck->tag = ck->empty ? 1u : (uint16_t)(ck->digest.lo | 1u);
    return true;
}

static inline kvrt_block_hash_t key_of(const call_keys_t *ck, const kvrt_block_hash_t *content)
{
    return ck->empty ? *content : kvrt_cache_block_key(content, &ck->digest);
}

static kvrt_cache_miss_reason_t explain_miss(const kvrt_cache_t *cache,
                                             const kvrt_block_hash_t *content,
                                             const call_keys_t *ck)
{
    uint16_t tag = kvrt_cache_explain_get(&cache->index, content);
    if (tag == 0)
        return KVRT_CACHE_MISS_NEVER_CACHED;
    return tag == ck->tag ? KVRT_CACHE_MISS_EVICTED : KVRT_CACHE_MISS_KEY_MISMATCH;
}

/* ---- pool hooks ----------------------------------------------------------- */

static void hook_idle(void *obj, int32_t block)
{
    kvrt_cache_t *cache = obj;
    cache->policy.ops->idle(&cache->policy, block);
}

static void hook_busy(void *obj, int32_t block)
{
    kvrt_cache_t *cache = obj;
    cache->policy.ops->busy(&cache->policy, block);
}

/* Offers a victim, already out of the index, to the eviction sink; true
 * when the sink keeps it. `needed` counts the blocks the allocation still
 * needs freed, this one included. */
static bool sink_keeps(kvrt_cache_t *cache, int32_t block, uint32_t needed)
{
    kvrt_cache_victim_t victim = {
        .block = block,
        /* Keeping this one leaves policy.evictable others for the rest. */
        .may_keep = cache->policy.evictable >= needed,
        .name = cache->names[block].name,
    };
    kvrt_cache_sink_verdict_t verdict = cache->hooks.sink(cache->hooks.sink_data, &victim);
    return verdict == KVRT_CACHE_SINK_KEEP && victim.may_keep;
}

static void hook_evict(void *obj, uint32_t count)
{
    kvrt_cache_t *cache = obj;
    uint32_t freed = 0;
    while (freed < count) {
        int32_t block = cache->policy.ops->victim(&cache->policy);
        const kvrt_cache_block_name_t *name = &cache->names[block].name;
        kvrt_cache_index_remove(&cache->index, &name->key);
        cache->stats.evictions++;
        bool kept = KVRT_UNLIKELY(cache->hooks.sink != NULL) &&
                    sink_keeps(cache, block, count - freed);
        if (kept) {
            kvrt_pool_uncache_held(cache->pool, block);
        } else {
            kvrt_pool_uncache(cache->pool, block);
            freed++;
        }
        kvrt_cache_emit(&cache->hooks, KVRT_CACHE_EVENT_REMOVED,
                        kept ? KVRT_CACHE_EVENT_KEPT : 0, block, name);
    }
}

/* ---- ctl nodes -------------------------------------------------------------- */

static void refresh_gauges(const kvrt_cache_t *cache, kvrt_cache_stats_t *s)
{
    *s = cache->stats;
    s->cached_blocks = cache->index.count;
    s->evictable_blocks = cache->policy.evictable;
    s->index_capacity = cache->index.mask + 1;
    s->load_factor = (double)s->cached_blocks / (double)s->index_capacity;
}

#define CACHE_GETTER(field)                                                      \
    static void get_##field(void *obj, kvrt_ctl_value_t *v)                      \
    {                                                                            \
        kvrt_cache_stats_t s;                                                    \
        refresh_gauges(obj, &s);                                                 \
        v->u64 = s.field;                                                        \
    }
CACHE_GETTER(queries)
CACHE_GETTER(query_tokens)
CACHE_GETTER(hit_tokens)
CACHE_GETTER(miss_never_cached)
CACHE_GETTER(miss_evicted)
CACHE_GETTER(miss_key_mismatch)
CACHE_GETTER(miss_partial)
CACHE_GETTER(inserts)
CACHE_GETTER(insert_duplicates)
CACHE_GETTER(evictions)
CACHE_GETTER(cached_blocks)
CACHE_GETTER(evictable_blocks)
CACHE_GETTER(index_capacity)

static void get_load_factor(void *obj, kvrt_ctl_value_t *v)
{
    kvrt_cache_stats_t s;
    refresh_gauges(obj, &s);
    v->f64 = s.load_factor;
}

static void get_policy(void *obj, kvrt_ctl_value_t *v)
{
    v->str = ((kvrt_cache_t *)obj)->policy.ops->name;
}

static void get_name(void *obj, kvrt_ctl_value_t *v) { v->str = ((kvrt_cache_t *)obj)->name; }
static void get_reset(void *obj, kvrt_ctl_value_t *v) { v->u64 = 0; }

static kvrt_status_t set_reset(void *obj, const kvrt_ctl_value_t *v)
{
    return kvrt_cache_reset_stats(obj);
}

static const kvrt_ctl_node_t cache_nodes[] = {
    {"name", KVRT_CTL_STRING, get_name, NULL, KVRT_CTL_METRIC_GAUGE,
     "The cache's name."},
    {"policy", KVRT_CTL_STRING, get_policy, NULL, KVRT_CTL_METRIC_GAUGE,
     "Eviction policy."},
    {"queries", KVRT_CTL_U64, get_queries, NULL, KVRT_CTL_METRIC_COUNTER,
     "Prefix lookups."},
    {"query_tokens", KVRT_CTL_U64, get_query_tokens, NULL, KVRT_CTL_METRIC_COUNTER,
     "Tokens offered to prefix lookups."},
    {"hit_tokens", KVRT_CTL_U64, get_hit_tokens, NULL, KVRT_CTL_METRIC_COUNTER,
     "Tokens found in the prefix cache."},
    {"miss_never_cached", KVRT_CTL_U64, get_miss_never_cached, NULL, KVRT_CTL_METRIC_COUNTER,
     "Missed tokens whose block was never cached."},
    {"miss_evicted", KVRT_CTL_U64, get_miss_evicted, NULL, KVRT_CTL_METRIC_COUNTER,
     "Missed tokens whose block was cached and evicted."},
    {"miss_key_mismatch", KVRT_CTL_U64, get_miss_key_mismatch, NULL, KVRT_CTL_METRIC_COUNTER,
     "Missed tokens whose content matched under another cache key (model, adapter, salt)."},
    {"miss_partial", KVRT_CTL_U64, get_miss_partial, NULL, KVRT_CTL_METRIC_COUNTER,
     "Missed tokens in a trailing partial block (never cacheable)."},
    {"inserts", KVRT_CTL_U64, get_inserts, NULL, KVRT_CTL_METRIC_COUNTER,
     "Blocks inserted into the prefix index."},
    {"insert_duplicates", KVRT_CTL_U64, get_insert_duplicates, NULL, KVRT_CTL_METRIC_COUNTER,
     "Inserts of a block already in the index."},
    {"evictions", KVRT_CTL_U64, get_evictions, NULL, KVRT_CTL_METRIC_COUNTER,
     "Cached blocks evicted for reuse."},
    {"cached_blocks", KVRT_CTL_U64, get_cached_blocks, NULL, KVRT_CTL_METRIC_GAUGE,
     "Blocks in the prefix index."},
    {"evictable_blocks", KVRT_CTL_U64, get_evictable_blocks, NULL, KVRT_CTL_METRIC_GAUGE,
     "Indexed blocks no request references."},
    {"index_capacity", KVRT_CTL_U64, get_index_capacity, NULL, KVRT_CTL_METRIC_GAUGE,
     "Slots of the prefix index hash table."},
    {"load_factor", KVRT_CTL_DOUBLE, get_load_factor, NULL, KVRT_CTL_METRIC_GAUGE,
     "Prefix index occupancy (entries / slots)."},
    {"reset", KVRT_CTL_U64, get_reset, set_reset, KVRT_CTL_METRIC_NONE},
};

/* ---- create / destroy ------------------------------------------------------- */

static void cache_free(kvrt_cache_t *cache)
{
    if (cache->policy.ops)
        cache->policy.ops->destroy(&cache->policy);
    kvrt_cache_index_destroy(&cache->index);
    kvrt_free_large(cache->names);
    free(cache);
}

static void cache_destroy_owned(kvrt_owned_t *owned)
{
    kvrt_cache_t *cache = (kvrt_cache_t *)owned;
    kvrt_ctl_unregister(cache->ctx, cache);
    kvrt_cache_emit_cleared(cache);
    kvrt_pool_detach_cache(cache->pool);
    cache_free(cache);
}

static kvrt_status_t check_cache_params(kvrt_ctx_t *ctx, const kvrt_cache_params_t *p)
{
    const uint64_t known =
        KVRT_CACHE_PARAM_POLICY | KVRT_CACHE_PARAM_FINGERPRINT | KVRT_CACHE_PARAM_NAME;
    if (p->field_mask & ~known)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(p->field_mask & ~known));
    if ((p->field_mask & KVRT_CACHE_PARAM_POLICY) && (unsigned)p->policy >= NUM_POLICIES)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "unknown policy %d", (int)p->policy);
    return KVRT_OK;
}

static kvrt_status_t cache_setup(kvrt_cache_t *cache, const kvrt_cache_params_t *p)
{
    kvrt_block_hash_t fingerprint;
    if (p->field_mask & KVRT_CACHE_PARAM_FINGERPRINT) {
        fingerprint = p->model_fingerprint;
    } else {
        kvrt_kv_layout_t layout;
        kvrt_pool_layout(cache->pool, &layout);
        kvrt_model_fingerprint("unnamed", &layout, &fingerprint);
    }
    cache->root = kvrt_cache_hash_root(&fingerprint);
    cache->policy_kind = KVRT_PARAM_OR(p, KVRT_CACHE_PARAM_POLICY, policy, KVRT_CACHE_LRU_LEAF);
    cache->policy.ops = policy_table[cache->policy_kind];
    cache->policy.num_blocks = cache->num_blocks;
    cache->names = kvrt_calloc_large_resident(cache->num_blocks, sizeof(*cache->names));
    cache->policy.names = cache->names;
    if (!cache->names || cache->policy.ops->init(&cache->policy, cache->num_blocks) != KVRT_OK ||
        kvrt_cache_index_init(&cache->index, cache->num_blocks) != KVRT_OK)
        return KVRT_ERR_NO_MEMORY;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cache_create(kvrt_pool_t *pool, const kvrt_cache_params_t *params,
                                            kvrt_cache_t **cache_out)
{
    if (!pool)
        return KVRT_ERR_INVALID_ARG;
    kvrt_ctx_t *ctx = kvrt_pool_ctx(pool);
    if (!cache_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "cache_out is required");
    const kvrt_cache_params_t defaults = {0};
    const kvrt_cache_params_t *p = params ? params : &defaults;
    kvrt_status_t status = check_cache_params(ctx, p);
    if (status != KVRT_OK)
        return status;
    kvrt_pool_info_t info;
    kvrt_pool_info(pool, &info);

    kvrt_cache_t *cache = calloc(1, sizeof(*cache));
    if (!cache)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "cache struct");
    cache->ctx = ctx;
    cache->pool = pool;
    cache->group_id = info.group_id;
    cache->num_blocks = info.num_blocks;
    cache->tokens_per_block = info.tokens_per_block;
    cache->hooks.ctx = ctx;
    cache->hooks.group_id = info.group_id;
    cache->hooks.tokens_per_block = info.tokens_per_block;
    if (cache_setup(cache, p) != KVRT_OK) {
        cache_free(cache);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "index and policy for %u blocks",
                         info.num_blocks);
    }
    if ((p->field_mask & KVRT_CACHE_PARAM_NAME) && p->name)
        snprintf(cache->name, sizeof(cache->name), "%s", p->name);
    else
        snprintf(cache->name, sizeof(cache->name), "cache%u", cache->group_id);
    cache->pool_ops = (kvrt_pool_cache_ops_t){hook_idle, hook_busy, hook_evict};
    status = kvrt_pool_attach_cache(pool, &cache->pool_ops, cache);
    if (status != KVRT_OK) {
        cache_free(cache);
        return status; /* kvrt_pool_attach_cache() said why */
    }
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "cache.%u", cache->group_id);
    if (kvrt_ctl_register(ctx, prefix, cache_nodes, sizeof(cache_nodes) / sizeof(cache_nodes[0]),
                          cache) != KVRT_OK) {
        kvrt_pool_detach_cache(pool);
        cache_free(cache);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "ctl registration");
    }
    cache->owned.rank = KVRT_TEARDOWN_CACHE;
    kvrt_ctx_own(ctx, &cache->owned, cache_destroy_owned);
    kvrt_log(ctx, KVRT_LOG_INFO, "cache %s on pool %u: policy %s, index of %llu slots",
             cache->name, cache->group_id, cache->policy.ops->name,
             (unsigned long long)(cache->index.mask + 1));
    *cache_out = cache;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cache_destroy(kvrt_cache_t *cache)
{
    if (!cache)
        return KVRT_OK;
    if (cache->holders)
        return kvrt_fail(cache->ctx, KVRT_ERR_BUSY,
                         "cache %s is used by %u scheduler(s) or tier(s); destroy them first",
                         cache->name, cache->holders);
    kvrt_ctx_disown(cache->ctx, &cache->owned);
    cache_destroy_owned(&cache->owned);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cache_root(const kvrt_cache_t *cache, kvrt_block_hash_t *root_out)
{
    if (!cache || !root_out)
        return cache ? kvrt_fail(cache->ctx, KVRT_ERR_INVALID_ARG, "root_out is required")
                     : KVRT_ERR_INVALID_ARG;
    *root_out = cache->root;
    return KVRT_OK;
}

/* ---- match, lookup, insert (the hot path) --------------------------------- */

static void count_query(kvrt_cache_t *cache, uint32_t queried_tokens, uint32_t hit_tokens,
                        uint32_t partial_tokens, kvrt_cache_miss_reason_t reason)
{
    kvrt_cache_stats_t *s = &cache->stats;
    s->queries++;
    s->query_tokens += queried_tokens;
    s->hit_tokens += hit_tokens;
    s->miss_partial += partial_tokens;
    uint64_t missed = queried_tokens - hit_tokens - partial_tokens;
    if (reason == KVRT_CACHE_MISS_EVICTED)
        s->miss_evicted += missed;
    else if (reason == KVRT_CACHE_MISS_KEY_MISMATCH)
        s->miss_key_mismatch += missed;
    else
        s->miss_never_cached += missed;
}

void kvrt_cache_forget_query(kvrt_cache_t *cache, uint32_t num_tokens,
                             const kvrt_cache_match_t *match)
{
    if (!cache || !match)
        return;
    kvrt_cache_stats_t *s = &cache->stats;
    s->queries--;
    s->query_tokens -= num_tokens;
    s->hit_tokens -= match->num_tokens;
    s->miss_partial -= match->partial_tokens;
    uint64_t missed = num_tokens - match->num_tokens - match->partial_tokens;
    if (match->miss_reason == KVRT_CACHE_MISS_EVICTED)
        s->miss_evicted -= missed;
    else if (match->miss_reason == KVRT_CACHE_MISS_KEY_MISMATCH)
        s->miss_key_mismatch -= missed;
    else
        s->miss_never_cached -= missed;
}

void kvrt_cache_count_lookups(kvrt_cache_t *cache, uint32_t num_tokens,
                              const kvrt_block_hash_t *missed, const kvrt_hash_keys_t *keys,
                              kvrt_cache_match_t *match)
{
    call_keys_t ck;
    if (!cache || !match || !call_keys_init(&ck, keys))
        return;
    match->miss_reason = missed ? explain_miss(cache, missed, &ck) : KVRT_CACHE_MISS_NONE;
    cache->policy.tick++;
    count_query(cache, num_tokens, match->num_tokens, match->partial_tokens, match->miss_reason);
}

KVRT_EXPORT kvrt_status_t kvrt_cache_match(kvrt_cache_t *cache, const int32_t *tokens,
                                           uint32_t num_tokens, const kvrt_hash_keys_t *keys,
                                           uint32_t max_blocks, int32_t *blocks_out,
                                           kvrt_block_hash_t *hashes_out,
                                           kvrt_cache_match_t *match_out)
{
    if (KVRT_UNLIKELY(!cache))
        return KVRT_ERR_INVALID_ARG;
    if (KVRT_UNLIKELY(!match_out || (!tokens && num_tokens) || (!blocks_out && max_blocks)))
        return kvrt_fail(cache->ctx, KVRT_ERR_INVALID_ARG,
                         "match_out, tokens (when num_tokens > 0) and blocks_out (when "
                         "max_blocks > 0) are required");
    call_keys_t ck;
    if (KVRT_UNLIKELY(!call_keys_init(&ck, keys)))
        return kvrt_fail(cache->ctx, KVRT_ERR_INVALID_ARG,
                         "bad keys: unknown field bits, salt of 0 or more than %u bytes, "
                         "or multimodal items empty, unsorted or overlapping",
                         KVRT_CACHE_SALT_MAX);
    const uint32_t bs = cache->tokens_per_block;
    uint32_t full = num_tokens / bs;
    uint32_t limit = full < max_blocks ? full : max_blocks;
    kvrt_cache_miss_reason_t reason = KVRT_CACHE_MISS_NONE;
    /* In windows of MATCH_WINDOW blocks, three passes, so that the cache
     * misses of one pass overlap the work of the one before: hash the
     * window's blocks (a serial chain, in one call so the hash inlines) and
     * prefetch their index slots; find them, stopping at the first miss,
     * while prefetching the pool's and the policy's entries of each hit;
     * then take the references. On a miss at most MATCH_WINDOW - 1 blocks
     * were hashed for nothing. */
    kvrt_block_hash_t parent = cache->root;
    kvrt_block_hash_t contents[MATCH_WINDOW], keys_w[MATCH_WINDOW];
    int32_t found[MATCH_WINDOW];
    uint32_t hits = 0;
    while (hits < limit && reason == KVRT_CACHE_MISS_NONE) {
        uint32_t n = limit - hits < MATCH_WINDOW ? limit - hits : MATCH_WINDOW;
        kvrt_cache_hash_run(&parent, tokens + hits * bs, bs, n, hits * bs, ck.keys, contents);
        parent = contents[n - 1];
        for (uint32_t i = 0; i < n; i++) {
            keys_w[i] = key_of(&ck, &contents[i]);
            kvrt_cache_index_prefetch(&cache->index, &keys_w[i]);
        }
        uint32_t got = 0;
        for (; got < n; got++) {
            found[got] = kvrt_cache_index_find(&cache->index, &keys_w[got]);
            if (found[got] == KVRT_NULL_BLOCK) {
                reason = explain_miss(cache, &contents[got], &ck);
                break;
            }
            kvrt_pool_prefetch_block(cache->pool, found[got]);
            kvrt_cache_policy_prefetch(&cache->policy, found[got]);
        }
        for (uint32_t i = 0; i < got; i++) {
            int32_t block = found[i];
            if (KVRT_UNLIKELY(!kvrt_pool_ref_cached(cache->pool, block))) {
                /* 2^31-1 references: give back what this call took. */
                kvrt_pool_free(cache->pool, hits, blocks_out);
                return kvrt_fail(cache->ctx, KVRT_ERR_OVERFLOW,
                                 "cache %s: block %d reference count at its limit",
                                 cache->name, block);
            }
            cache->policy.ops->hit(&cache->policy, block);
            blocks_out[hits] = block;
            if (hashes_out)
                hashes_out[hits] = contents[i];
            hits++;
        }
    }
    cache->policy.tick++;
    /* A match capped by max_blocks only queried what it looked at. */
    bool whole = limit == full;
    uint32_t partial = whole ? num_tokens - full * bs : 0;
    count_query(cache, whole ? num_tokens : limit * bs, hits * bs, partial, reason);
    *match_out = (kvrt_cache_match_t){
        .num_blocks = hits,
        .num_tokens = hits * bs,
        .miss_reason = reason,
        .partial_tokens = partial,
    };
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cache_lookup(kvrt_cache_t *cache, const kvrt_block_hash_t *content,
                                            const kvrt_hash_keys_t *keys, int32_t *block_out)
{
    if (KVRT_UNLIKELY(!cache))
        return KVRT_ERR_INVALID_ARG;
    call_keys_t ck;
    if (KVRT_UNLIKELY(!content || !block_out || !call_keys_init(&ck, keys)))
        return kvrt_fail(cache->ctx, KVRT_ERR_INVALID_ARG,
                         "content and block_out are required and keys must be valid");
    kvrt_block_hash_t key = key_of(&ck, content);
    int32_t block = kvrt_cache_index_find(&cache->index, &key);
    if (block != KVRT_NULL_BLOCK) {
        if (KVRT_UNLIKELY(!kvrt_pool_ref_cached(cache->pool, block)))
            return kvrt_fail(cache->ctx, KVRT_ERR_OVERFLOW,
                             "cache %s: block %d reference count at its limit", cache->name,
                             block);
        cache->policy.ops->hit(&cache->policy, block);
    }
    *block_out = block;
    return KVRT_OK;
}

bool kvrt_cache_contains(const kvrt_cache_t *cache, const kvrt_block_hash_t *content,
                         const kvrt_hash_keys_t *keys)
{
    call_keys_t ck;
    if (!cache || !content || !call_keys_init(&ck, keys))
        return false;
    kvrt_block_hash_t key = key_of(&ck, content);
    return kvrt_cache_index_find(&cache->index, &key) != KVRT_NULL_BLOCK;
}

uint32_t kvrt_cache_touch_idle(kvrt_cache_t *cache, const kvrt_block_hash_t *contents,
                               uint32_t n, const kvrt_hash_keys_t *keys)
{
    call_keys_t ck;
    if (!cache || !contents || !call_keys_init(&ck, keys))
        return 0;
    uint32_t touched = 0;
    for (uint32_t j = n; j-- > 0;) {
        kvrt_block_hash_t key = key_of(&ck, &contents[j]);
        int32_t block = kvrt_cache_index_find(&cache->index, &key);
        uint32_t refs = 1;
        if (block == KVRT_NULL_BLOCK || kvrt_pool_refcount(cache->pool, block, &refs) != KVRT_OK ||
            refs != 0)
            continue;
        /* What the pool's hooks see when a holder takes an idle block and
         * lets it go again. */
        cache->policy.ops->busy(&cache->policy, block);
        cache->policy.ops->idle(&cache->policy, block);
        touched++;
    }
    return touched;
}

/* Indexes block under its name unless the key is indexed already; the
 * name's parts come separately (parent_key NULL when unknown) so that they
 * are written once, into names[block]. keys_tag is the explain-table tag
 * of the caller's keys, or 0 when the keys are unknown
 * (kvrt_cache_insert_named). */
static KVRT_ALWAYS_INLINE kvrt_status_t insert_name(kvrt_cache_t *cache, int32_t block,
                                                    const kvrt_block_hash_t *key,
                                                    const kvrt_block_hash_t *content,
                                                    const kvrt_block_hash_t *parent_key,
                                                    uint32_t depth, uint16_t keys_tag,
                                                    int32_t *cached_out)
{
    uint32_t refs = 0;
    if (KVRT_UNLIKELY(kvrt_pool_refcount(cache->pool, block, &refs) != KVRT_OK || refs == 0))
        return kvrt_fail(cache->ctx, KVRT_ERR_UNKNOWN_BLOCK,
                         "cache %s: block %d is not in use in its pool", cache->name, block);
    int32_t existing = kvrt_cache_index_find(&cache->index, key);
    if (KVRT_UNLIKELY(kvrt_pool_is_cached(cache->pool, block) && existing != block))
        return kvrt_fail(cache->ctx, KVRT_ERR_BAD_STATE,
                         "cache %s: block %d is already cached under another key", cache->name,
                         block);
    if (existing != KVRT_NULL_BLOCK) {
        cache->stats.insert_duplicates++;
    } else {
        existing = block;
        kvrt_cache_index_add(&cache->index, key, block);
        kvrt_cache_block_name_t *name = &cache->names[block].name;
        name->key = *key;
        name->content = *content;
        name->parent_key = parent_key ? *parent_key : (kvrt_block_hash_t){0, 0};
        name->depth = depth;
        name->flags = parent_key ? KVRT_CACHE_NAME_HAS_PARENT : 0;
        kvrt_pool_mark_cached(cache->pool, block);
        cache->policy.ops->inserted(&cache->policy, block, depth, key);
        if (keys_tag)
            kvrt_cache_explain_set(&cache->index, content, keys_tag);
        cache->stats.inserts++;
        kvrt_cache_emit(&cache->hooks, KVRT_CACHE_EVENT_STORED, 0, block, name);
    }
    if (cached_out)
        *cached_out = existing;
    return KVRT_OK;
}

/* kvrt_cache_insert_chained(), inlined into both entry points. */
static KVRT_ALWAYS_INLINE kvrt_status_t insert_chained(kvrt_cache_t *cache, int32_t block,
                                                       const kvrt_block_hash_t *content,
                                                       const kvrt_block_hash_t *parent_content,
                                                       const kvrt_hash_keys_t *keys,
                                                       uint32_t block_index, int32_t *cached_out)
{
    if (KVRT_UNLIKELY(!cache))
        return KVRT_ERR_INVALID_ARG;
    call_keys_t ck;
    if (KVRT_UNLIKELY(!content || !call_keys_init(&ck, keys)))
        return kvrt_fail(cache->ctx, KVRT_ERR_INVALID_ARG,
                         "content is required and keys must be valid");
    kvrt_block_hash_t key = key_of(&ck, content), parent_key;
    bool has_parent = parent_content && block_index > 0;
    if (has_parent)
        parent_key = key_of(&ck, parent_content);
    return insert_name(cache, block, &key, content, has_parent ? &parent_key : NULL,
                       block_index, ck.tag, cached_out);
}

kvrt_status_t kvrt_cache_insert_chained(kvrt_cache_t *cache, int32_t block,
                                        const kvrt_block_hash_t *content,
                                        const kvrt_block_hash_t *parent_content,
                                        const kvrt_hash_keys_t *keys, uint32_t block_index,
                                        int32_t *cached_out)
{
    return insert_chained(cache, block, content, parent_content, keys, block_index,
                          cached_out);
}

void kvrt_cache_prefetch_insert(const kvrt_cache_t *cache, int32_t block,
                                const kvrt_block_hash_t *content, const kvrt_hash_keys_t *keys)
{
    call_keys_t ck;
    if (!cache || !content || block <= 0 || (uint32_t)block >= cache->num_blocks ||
        !call_keys_init(&ck, keys))
        return;
    kvrt_block_hash_t key = key_of(&ck, content);
    __builtin_prefetch(&cache->index.slots[key.lo & cache->index.mask], 1);
    __builtin_prefetch(&cache->names[block], 1);
    __builtin_prefetch(kvrt_cache_explain_slot(&cache->index, content), 1); /* same unsalted */
    kvrt_pool_prefetch_block(cache->pool, block);
}

KVRT_EXPORT kvrt_status_t kvrt_cache_insert(kvrt_cache_t *cache, int32_t block,
                                            const kvrt_block_hash_t *content,
                                            const kvrt_hash_keys_t *keys, uint32_t block_index,
                                            int32_t *cached_out)
{
    return insert_chained(cache, block, content, NULL, keys, block_index, cached_out);
}

kvrt_status_t kvrt_cache_insert_named(kvrt_cache_t *cache, int32_t block,
                                      const kvrt_cache_block_name_t *name,
                                      int32_t *cached_out)
{
    if (KVRT_UNLIKELY(!cache))
        return KVRT_ERR_INVALID_ARG;
    if (KVRT_UNLIKELY(!name || (name->flags & ~(uint32_t)KVRT_CACHE_NAME_HAS_PARENT)))
        return kvrt_fail(cache->ctx, KVRT_ERR_INVALID_ARG,
                         "name is required and may hold only known flags");
    /* Without the keys only an unsalted block's explain entry is known:
     * its key is its content, its keys tag 1. */
    uint16_t keys_tag = kvrt_block_hash_equal(&name->key, &name->content) ? 1u : 0u;
    bool has_parent = name->flags & KVRT_CACHE_NAME_HAS_PARENT;
    return insert_name(cache, block, &name->key, &name->content,
                       has_parent ? &name->parent_key : NULL, name->depth, keys_tag, cached_out);
}

/* ---- stats and verification -------------------------------------------------- */

KVRT_EXPORT kvrt_status_t kvrt_cache_stats_sized(const kvrt_cache_t *cache, size_t stats_size,
                                                 kvrt_cache_stats_t *stats_out)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARG;
    const size_t min_size = KVRT_OUTPUT_SIZE_1_0(kvrt_cache_stats_t, load_factor);
    if (!stats_out || stats_size < min_size)
        return kvrt_fail(cache->ctx, KVRT_ERR_INVALID_ARG,
                         "stats_out is required and stats_size (%zu) at least %zu", stats_size,
                         min_size);
    kvrt_cache_stats_t stats;
    refresh_gauges(cache, &stats);
    kvrt_output_copy(stats_out, stats_size, &stats, sizeof(stats));
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cache_reset_stats(kvrt_cache_t *cache)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARG;
    memset(&cache->stats, 0, sizeof(cache->stats));
    return KVRT_OK;
}

#define broken(cache, ...) kvrt_fail((cache)->ctx, KVRT_ERR_INTERNAL, __VA_ARGS__)

KVRT_EXPORT kvrt_status_t kvrt_cache_verify(const kvrt_cache_t *cache)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARG;
    uint64_t indexed = 0;
    for (uint64_t i = 0; i <= cache->index.mask; i++) {
        const cache_slot_t *s = &cache->index.slots[i];
        if (s->block == KVRT_NULL_BLOCK)
            continue;
        indexed++;
        if (!kvrt_pool_is_cached(cache->pool, s->block))
            return broken(cache, "cache %s: indexed block %d is not cached in the pool",
                          cache->name, s->block);
        if (!kvrt_block_hash_equal(&cache->names[s->block].name.key, &s->key))
            return broken(cache, "cache %s: block %d indexed under a key it does not hold",
                          cache->name, s->block);
        if (kvrt_cache_index_find(&cache->index, &s->key) != s->block)
            return broken(cache, "cache %s: block %d unreachable by its key", cache->name,
                          s->block);
    }
    if (indexed != cache->index.count)
        return broken(cache, "cache %s: %llu slots used, count says %llu", cache->name,
                      (unsigned long long)indexed, (unsigned long long)cache->index.count);
    uint64_t cached = 0, evictable = 0;
    for (uint32_t b = 1; b < cache->num_blocks; b++) {
        bool in_set = cache->policy.ops->contains(&cache->policy, (int32_t)b);
        if (!kvrt_pool_is_cached(cache->pool, (int32_t)b)) {
            if (in_set)
                return broken(cache, "cache %s: uncached block %u is evictable", cache->name, b);
            continue;
        }
        cached++;
        uint32_t refs = 0;
        kvrt_pool_refcount(cache->pool, (int32_t)b, &refs);
        if ((refs == 0) != in_set)
            return broken(cache, "cache %s: block %u has %u references but is %sevictable",
                          cache->name, b, refs, in_set ? "" : "not ");
        evictable += in_set;
    }
    if (cached != indexed)
        return broken(cache, "cache %s: %llu blocks cached in the pool, %llu indexed",
                      cache->name, (unsigned long long)cached, (unsigned long long)indexed);
    if (evictable != cache->policy.evictable || evictable != kvrt_pool_cached_count(cache->pool))
        return broken(cache, "cache %s: %llu evictable blocks, policy says %u, pool says %u",
                      cache->name, (unsigned long long)evictable, cache->policy.evictable,
                      kvrt_pool_cached_count(cache->pool));
    const kvrt_cache_stats_t *st = &cache->stats;
    const uint64_t accounted = st->hit_tokens + st->miss_never_cached + st->miss_evicted +
                               st->miss_key_mismatch + st->miss_partial;
    if (accounted != st->query_tokens)
        return broken(cache, "cache %s: %llu tokens queried, %llu hit or missed", cache->name,
                      (unsigned long long)st->query_tokens, (unsigned long long)accounted);
    return KVRT_OK;
}

void kvrt_cache_parts(kvrt_cache_t *cache, cache_parts_t *parts_out)
{
    *parts_out = (cache_parts_t){cache->ctx,          cache->pool,   cache->name,
                                 cache->num_blocks,   &cache->index, &cache->policy,
                                 cache->names,        cache->hooks.sink, cache->hooks.sink_data};
}
