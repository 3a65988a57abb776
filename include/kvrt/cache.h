/*
 * kvrt/cache.h - the prefix cache: block hashes, the prefix index over a
 * pool, eviction policies and the metrics that explain every hit and miss.
 *
 * Block hashes (the spec is docs/block-hash.md, version
 * KVRT_BLOCK_HASH_VERSION). Two 128-bit values describe a full block:
 *
 *   content hash  c[i] = H(c[i-1], the block's token ids, multimodal items
 *                 overlapping it); c[-1] is the *root*, derived from the
 *                 model+layout fingerprint. The chain a caller carries.
 *   block key     k[i] = c[i] when the sequence has neither cache salt nor
 *                 adapter, else H(c[i], digest(adapter id, salt)). What the
 *                 index is keyed by.
 *
 * So blocks of different models never meet (different roots), and blocks of
 * different tenants (salts) or adapters never share (different keys), while
 * the cache can still tell an operator that a miss was "the same tokens are
 * cached, under another salt or adapter". H is XXH3-128 over a canonical
 * little-endian encoding; any engine that follows the spec gets the same
 * values.
 *
 * The index maps block key -> block id of the cache's pool. A cached block
 * whose last reference goes stays indexed and becomes *evictable*; a hit on
 * it takes it back out of the evictable set in O(1) (LRU) or O(log n)
 * (frequency policies). Eviction happens only when an allocation from the
 * pool finds no free (never-cached) block. Partial blocks are never cached.
 *
 * Memory: everything is sized at kvrt_cache_create() from the pool's block
 * count; match, lookup, insert and eviction never allocate.
 * Threads: the pool's rule (one thread at a time for the pool and its
 * cache). The hash functions are pure and safe from any thread.
 */
#ifndef KVRT_CACHE_H
#define KVRT_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "kvrt/block_table.h"
#include "kvrt/context.h"
#include "kvrt/layout.h"
#include "kvrt/pool.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Version of the block-hash encoding (docs/block-hash.md). A change to any
 * byte of the encoding bumps it; it is hashed into every value. */
#define KVRT_BLOCK_HASH_VERSION 1

/* A 128-bit hash: XXH3-128's low and high 64-bit halves. Frozen: a value
 * type, embedded in other structs and arrays. */
typedef struct kvrt_block_hash {
    uint64_t lo;
    uint64_t hi;
} kvrt_block_hash_t;

/* Longest cache salt, in bytes. */
#define KVRT_CACHE_SALT_MAX 64

/* One multimodal item (image, audio clip) of a sequence: the hash of its
 * content (computed by the engine, e.g. of the decoded pixels) and the
 * tokens it occupies, [offset, offset + length) in the sequence. Frozen: an
 * array element, and the three fields are what the block-hash spec encodes. */
typedef struct kvrt_mm_item {
    kvrt_block_hash_t content_hash;
    uint32_t offset;
    uint32_t length;
} kvrt_mm_item_t;

enum kvrt_hash_keys_field {
    KVRT_HASH_KEY_ADAPTER = 1u << 0, /* adapter_id */
    KVRT_HASH_KEY_SALT = 1u << 1,    /* salt and salt_bytes */
    KVRT_HASH_KEY_MM = 1u << 2       /* mm_items and num_mm_items */
};

/*
 * The extra keys of one sequence. A zeroed struct (or NULL) means: base
 * model, no salt, text only. Nothing is retained after a call. It grows by
 * field_mask, so other structs refer to it by pointer, never embed it.
 */
typedef struct kvrt_hash_keys {
    uint64_t field_mask;
    uint64_t adapter_id;    /* LoRA/adapter id; 0 is the base model */
    const void *salt;       /* per-tenant cache salt, 1..KVRT_CACHE_SALT_MAX bytes */
    uint32_t salt_bytes;
    uint32_t num_mm_items;
    /* Sorted by offset, non-overlapping. */
    const kvrt_mm_item_t *mm_items;
} kvrt_hash_keys_t;

/*
 * kvrt_model_fingerprint - the 128-bit fingerprint of a model and its KV
 * layout: XXH3-128 of the model id string (e.g. "meta-llama/Llama-3.1-8B@
 * <revision>") and every layout field (docs/block-hash.md). Pure.
 * Errors: KVRT_ERR_INVALID_ARG (NULL argument, empty model id or longer than
 * 4096 bytes), KVRT_ERR_BAD_LAYOUT.
 */
kvrt_status_t kvrt_model_fingerprint(const char *model_id,
                                     const kvrt_kv_layout_t *layout,
                                     kvrt_block_hash_t *fingerprint_out);

/*
 * kvrt_block_hash_root - the root of every content chain under a model
 * fingerprint (c[-1]). Pure. Errors: KVRT_ERR_INVALID_ARG (NULL).
 */
kvrt_status_t kvrt_block_hash_root(const kvrt_block_hash_t *fingerprint,
                                   kvrt_block_hash_t *root_out);

/*
 * kvrt_block_hash - content hash of one full block: parent is the previous
 * block's content hash (or the root), tokens the block's num_tokens token
 * ids, first_token the position of tokens[0] in the sequence (used to pick
 * and place the multimodal items of keys that overlap the block; salt and
 * adapter are not part of the content hash). keys may be NULL. Pure.
 * Errors: KVRT_ERR_INVALID_ARG (NULL parent/tokens/hash_out, num_tokens 0 or
 * above 4096, unknown key bits, mm items unsorted or overlapping).
 */
kvrt_status_t kvrt_block_hash(const kvrt_block_hash_t *parent, const int32_t *tokens,
                              uint32_t num_tokens, uint32_t first_token,
                              const kvrt_hash_keys_t *keys,
                              kvrt_block_hash_t *hash_out);

/*
 * kvrt_block_key - the index key of a block from its content hash and the
 * sequence's keys (== content when keys has no salt and adapter id 0). Pure.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, unknown key bits, salt_bytes 0 or
 * above KVRT_CACHE_SALT_MAX with KVRT_HASH_KEY_SALT set).
 */
kvrt_status_t kvrt_block_key(const kvrt_block_hash_t *content,
                             const kvrt_hash_keys_t *keys, kvrt_block_hash_t *key_out);

/* ---- the cache ---------------------------------------------------------- */

typedef struct kvrt_cache kvrt_cache_t;

typedef enum kvrt_cache_policy {
    /* Least recently released first, in release order (the reference
     * semantics of kvrt-replay). */
    KVRT_CACHE_LRU = 0,
    /* Least frequently used first (hits since insertion). Ties go to the
     * block released before the older cache query: recency counts in
     * queries (kvrt_cache_match), so blocks released
     * between the same two queries tie, whatever their order, and among
     * those the deepest block of its sequence goes first (a chain loses
     * its leaves before its root; two chains released then lose their
     * blocks depth by depth, interleaved). No ageing: old hot blocks stay. */
    KVRT_CACHE_LFU = 1,
    /* LFU with dynamic ageing (LFU-DA): priority = frequency + the priority
     * of the last victim, so frequency earned long ago decays; ties as for
     * KVRT_CACHE_LFU (older query tick, then the deepest block). */
    KVRT_CACHE_LFU_AGED = 2,
    /* LRU that evicts a chain's leaves before its root: blocks of one
     * sequence released root first in one call or query (kvrt_pool_free of
     * a matched prefix) are ordered deepest-oldest, so the root, which
     * every deeper block needs to be matched, goes last. The default: it
     * matches or beats LRU on every trace and capacity measured
     * (docs/tiers.md). */
    KVRT_CACHE_LRU_LEAF = 3,
    /* Two leaf-first LRU lists, ARC-style: blocks used once (probation)
     * and blocks used again (protected: hit, or re-inserted after an
     * eviction), victims from probation while it exceeds a target that
     * adapts to which list's victims come back (docs/tiers.md). */
    KVRT_CACHE_ADAPTIVE = 4
} kvrt_cache_policy_t;

enum kvrt_cache_params_field {
    KVRT_CACHE_PARAM_POLICY = 1u << 0,      /* policy */
    KVRT_CACHE_PARAM_FINGERPRINT = 1u << 1, /* model_fingerprint */
    KVRT_CACHE_PARAM_NAME = 1u << 2         /* name */
};

typedef struct kvrt_cache_params {
    uint64_t field_mask;
    kvrt_cache_policy_t policy;          /* default KVRT_CACHE_LRU_LEAF */
    /* Roots the content chains of this cache. Default:
     * kvrt_model_fingerprint("unnamed", the pool's layout); engines that
     * share blocks across processes must set the real one. */
    kvrt_block_hash_t model_fingerprint;
    const char *name;                    /* copied; default "cache<N>" */
} kvrt_cache_params_t;

/*
 * kvrt_cache_create - attaches a prefix cache to pool (at most one per
 * pool). params may be NULL (defaults). Registers ctl nodes "cache.<N>.*"
 * (N = the pool's group id; see kvrt_cache_stats_t for the list).
 * Destroy with kvrt_cache_destroy() before the pool, or with the context.
 * Its index (with the explain entries), block names and policy arrays are
 * sized from the pool's block count and made resident here (136-200 bytes
 * a block with the default policy, as the index rounds up to a power of
 * two; the index at least 1 MiB), so that no insert or lookup faults in a
 * page.
 * Errors: KVRT_ERR_INVALID_ARG (NULL pool/cache_out, unknown field bits,
 * unknown policy), KVRT_ERR_BUSY (the pool already has a cache),
 * KVRT_ERR_NO_MEMORY (including memory that could not be made resident).
 */
kvrt_status_t kvrt_cache_create(kvrt_pool_t *pool, const kvrt_cache_params_t *params,
                                kvrt_cache_t **cache_out);

/*
 * kvrt_cache_destroy - forgets every cached block (idle ones become free,
 * blocks still referenced stay with their holders as ordinary used blocks),
 * detaches from the pool and frees the cache. NULL is a no-op.
 * Errors: KVRT_ERR_BUSY (a scheduler still uses the cache; nothing changes).
 */
kvrt_status_t kvrt_cache_destroy(kvrt_cache_t *cache);

/*
 * kvrt_cache_root - the root content hash of this cache (the parent of
 * every sequence's first block). Errors: KVRT_ERR_INVALID_ARG.
 */
kvrt_status_t kvrt_cache_root(const kvrt_cache_t *cache, kvrt_block_hash_t *root_out);

/* Why a match stopped (or why tokens were not served from the cache). */
typedef enum kvrt_cache_miss_reason {
    KVRT_CACHE_MISS_NONE = 0,         /* every full block hit */
    KVRT_CACHE_MISS_NEVER_CACHED = 1, /* no block with this content was cached */
    KVRT_CACHE_MISS_EVICTED = 2,      /* it was cached under these keys, then evicted */
    KVRT_CACHE_MISS_KEY_MISMATCH = 3, /* same content cached under another salt/adapter */
    KVRT_CACHE_MISS_PARTIAL = 4       /* a partial last block: never shared */
} kvrt_cache_miss_reason_t;

/* The outcome of one match. Frozen (the answer of the hot path, complete
 * as it is): more about a match would come from a new function. */
typedef struct kvrt_cache_match {
    uint32_t num_blocks;  /* leading full blocks found, references taken */
    uint32_t num_tokens;  /* num_blocks * tokens_per_block */
    /* Why block num_blocks was not served: NONE when every full block hit
     * (then PARTIAL describes nothing: see partial_tokens). */
    kvrt_cache_miss_reason_t miss_reason;
    uint32_t partial_tokens; /* tokens past the last full block */
} kvrt_cache_match_t;

/*
 * kvrt_cache_match - finds the longest cached prefix of a new sequence.
 * Hashes its full blocks in order (num_tokens / tokens_per_block of them,
 * at most max_blocks), stops at the first block whose key is not indexed,
 * takes one reference on every hit block (kvrt_table_adopt() moves them into
 * a block table; kvrt_pool_free() gives them back), writes the hit block ids
 * to blocks_out[0..num_blocks) and their *content* hashes to
 * hashes_out[0..num_blocks) (hashes_out may be NULL), so the caller goes on
 * hashing from hashes_out[num_blocks - 1] (or the root) without rehashing.
 * An engine that needs the logits of the last prompt token passes
 * num_tokens - 1. Counts one query in the metrics, with hit tokens and miss
 * tokens by reason: the full blocks after the first miss take its reason,
 * the tokens of a trailing partial block count as partial (never cacheable).
 * Errors: KVRT_ERR_INVALID_ARG (NULL cache/match_out, NULL tokens with
 * num_tokens > 0, NULL blocks_out with max_blocks > 0, bad keys; see
 * kvrt_block_hash), KVRT_ERR_OVERFLOW (a hit block's reference count is at
 * its limit: the references this call took are given back, which counts as
 * a use of those blocks for the eviction policy). On error *match_out is
 * not written and no reference is held (blocks_out and hashes_out may have
 * been written).
 */
kvrt_status_t kvrt_cache_match(kvrt_cache_t *cache, const int32_t *tokens,
                               uint32_t num_tokens, const kvrt_hash_keys_t *keys,
                               uint32_t max_blocks, int32_t *blocks_out,
                               kvrt_block_hash_t *hashes_out,
                               kvrt_cache_match_t *match_out);

/*
 * kvrt_cache_lookup - one block by its content hash under keys: when
 * indexed, takes a reference and writes its id to *block_out, else writes
 * KVRT_NULL_BLOCK. Not counted as a query (for callers that already did
 * their match, e.g. trace replay touching the rest of a request).
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_OVERFLOW (reference limit).
 */
kvrt_status_t kvrt_cache_lookup(kvrt_cache_t *cache, const kvrt_block_hash_t *content,
                                const kvrt_hash_keys_t *keys, int32_t *block_out);

/*
 * kvrt_cache_insert - caches a block that just became full: `block` (used,
 * held by the caller) holds the tokens whose content hash is `content`
 * under `keys`; block_index is its position in the sequence (0 for the
 * first block), which the eviction policies use. When the key is already
 * indexed (under this or another block) nothing changes and *cached_out
 * names the block that holds it; else `block` is indexed and *cached_out ==
 * block. The caller keeps its reference either way; when the last reference
 * goes the block stays cached (evictable). cached_out may be NULL.
 * Errors: KVRT_ERR_INVALID_ARG (NULL cache/content, bad keys),
 * KVRT_ERR_UNKNOWN_BLOCK (block not in use in the pool),
 * KVRT_ERR_BAD_STATE (block already cached under another key).
 */
kvrt_status_t kvrt_cache_insert(kvrt_cache_t *cache, int32_t block,
                                const kvrt_block_hash_t *content,
                                const kvrt_hash_keys_t *keys, uint32_t block_index,
                                int32_t *cached_out);

enum kvrt_cache_reset_flags {
    /* Blocks still referenced leave the index too (their holders keep them
     * as ordinary used blocks, freed when released) instead of refusing. */
    KVRT_CACHE_RESET_FORGET_BUSY = 1u << 0
};

/*
 * kvrt_cache_reset - empties the cache (after new weights are loaded, in RL
 * loops): every idle cached block becomes free, the index is cleared, and
 * no block cached before the call is matched after it. Allowed while
 * schedulers are built on the cache. With flags 0 it refuses while any
 * cached block is still referenced (a running request, a waiting request
 * holding its hits or arrived K/V); with KVRT_CACHE_RESET_FORGET_BUSY those
 * blocks leave the index at once and stay with their holders as ordinary
 * used blocks. A scheduler built on the cache then offers none of the
 * blocks of a request that held K/V at the reset, those it fills later
 * included, until it recomputes (docs/scheduler.md). Counters are not
 * reset (kvrt_cache_reset_stats); misses of blocks cached before read as
 * never cached. O(pool blocks).
 * Errors: KVRT_ERR_INVALID_ARG (NULL cache, unknown flag bits),
 * KVRT_ERR_BUSY (flags 0 and referenced blocks; nothing changes).
 */
kvrt_status_t kvrt_cache_reset(kvrt_cache_t *cache, uint32_t flags);

/*
 * Grows at its end in later minor versions: kvrt_cache_stats() passes the
 * caller's sizeof (docs/abi.md, "Output structs").
 * Counters since creation (or the last reset), all readable as ctl nodes
 * "cache.<N>.<field>" (u64, read-only; load_factor is a double):
 * queries, query_tokens, hit_tokens, miss_never_cached, miss_evicted,
 * miss_key_mismatch, miss_partial, inserts, insert_duplicates, evictions,
 * cached_blocks, evictable_blocks, index_capacity, load_factor, policy
 * (string), and "cache.<N>.reset" (write any u64 to zero the counters).
 * query_tokens == hit_tokens + the four miss counters.
 */
typedef struct kvrt_cache_stats {
    uint64_t queries;
    uint64_t query_tokens;
    uint64_t hit_tokens;
    uint64_t miss_never_cached;  /* tokens */
    uint64_t miss_evicted;       /* tokens */
    uint64_t miss_key_mismatch;  /* tokens */
    uint64_t miss_partial;       /* tokens */
    uint64_t inserts;            /* blocks newly indexed */
    uint64_t insert_duplicates;  /* inserts of a key already indexed */
    uint64_t evictions;          /* blocks */
    uint64_t cached_blocks;      /* indexed now, used or evictable */
    uint64_t evictable_blocks;   /* indexed with no reference */
    uint64_t index_capacity;     /* slots of the open-addressing index */
    double load_factor;          /* cached_blocks / index_capacity */
} kvrt_cache_stats_t;

/*
 * kvrt_cache_stats_sized - do not call directly from C; use
 * kvrt_cache_stats(). Writes the counters to the stats_size bytes at
 * stats_out, as kvrt_pool_info_sized() does.
 * Errors: KVRT_ERR_INVALID_ARG (NULL, stats_size below the 1.0 struct).
 */
kvrt_status_t kvrt_cache_stats_sized(const kvrt_cache_t *cache, size_t stats_size,
                                     kvrt_cache_stats_t *stats_out);

/* kvrt_cache_stats - a copy of the counters. Errors: KVRT_ERR_INVALID_ARG. */
static inline kvrt_status_t kvrt_cache_stats(const kvrt_cache_t *cache,
                                             kvrt_cache_stats_t *stats_out)
{
    return kvrt_cache_stats_sized(cache, sizeof(*stats_out), stats_out);
}

/* kvrt_cache_reset_stats - zeroes the counters (not the cached_blocks,
 * evictable_blocks, index_capacity gauges). Errors: KVRT_ERR_INVALID_ARG. */
kvrt_status_t kvrt_cache_reset_stats(kvrt_cache_t *cache);

/*
 * kvrt_cache_verify - checks the index against the pool and the policy:
 * every indexed block is cached in the pool under exactly one key, the
 * evictable set is exactly the idle cached blocks, counters add up (every
 * token queried is a hit or a miss of one reason). O(n).
 * Errors: KVRT_ERR_INVALID_ARG, KVRT_ERR_INTERNAL (first broken invariant in
 * kvrt_ctx_last_error()).
 */
kvrt_status_t kvrt_cache_verify(const kvrt_cache_t *cache);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_CACHE_H */
