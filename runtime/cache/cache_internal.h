/*
 * cache_internal.h - the prefix cache's parts, shared by the files of
 * runtime/cache only: block hashing (block_hash.c), the open-addressing
 * index (index.c), the eviction policies behind an ops table (policy_*.c)
 * and the cache itself (cache.c).
 */
#ifndef KVRT_CACHE_INTERNAL_H
#define KVRT_CACHE_INTERNAL_H

#include "cache/hooks.h"
#include "core/core.h"
#include "kv/pool_internal.h"
#include "kvrt/cache.h"

#define KVRT_BLOCK_HASH_MAX_TOKENS 4096u

/* ---- hashing (block_hash.c) --------------------------------------------- */

bool kvrt_cache_keys_valid(const kvrt_hash_keys_t *keys);
/* No salt and adapter 0: the block key is the content hash itself. */
bool kvrt_cache_keys_empty(const kvrt_hash_keys_t *keys);
kvrt_block_hash_t kvrt_cache_keys_digest(const kvrt_hash_keys_t *keys);
kvrt_block_hash_t kvrt_cache_block_key(const kvrt_block_hash_t *content,
                                  const kvrt_block_hash_t *digest);
kvrt_block_hash_t kvrt_cache_hash_root(const kvrt_block_hash_t *fingerprint);
/* Unchecked kvrt_block_hash(): keys validated by the caller. */
kvrt_block_hash_t kvrt_cache_hash_block(const kvrt_block_hash_t *parent, const int32_t *tokens,
                                   uint32_t n, uint32_t first_token,
                                   const kvrt_hash_keys_t *keys);
/* Content hashes of num_blocks consecutive blocks of n tokens, chained from
 * parent: hashes_out[i] is block i's, equal to kvrt_cache_hash_block() of
 * each in turn, computed with the per-block overhead taken out. */
void kvrt_cache_hash_run(const kvrt_block_hash_t *parent, const int32_t *tokens, uint32_t n,
                         uint32_t num_blocks, uint32_t first_token,
                         const kvrt_hash_keys_t *keys, kvrt_block_hash_t *hashes_out);

/* ---- index (index.c) ------------------------------------------------------
 * Open addressing with linear probing keyed by the 128-bit block key; the
 * slot is picked from the key's low bits (the key is already a good hash).
 * Deletion shifts the following run back instead of leaving tombstones, so
 * probe lengths never degrade. Capacity is a power of two at least twice
 * the pool's block count (and at least INDEX_MIN_SLOTS), so the load
 * factor stays <= 0.5 and an insert always finds a slot. Block 0 (the null
 * block) marks an empty slot.
 *
 * Each slot also carries two entries of the cache's explain table, which
 * is indexed by content hash the way the index is by key (cache.c says
 * what it is for): for a block without salt or adapter (its key is its
 * content hash) the insert writes its index entry and its explain entry in
 * one cache line, where two arrays would cost two lines at random. Index
 * entries move between slots (backward shift); explain entries stay where
 * their hash put them.
 */
/* 64K explain entries at least, so a small cache's miss reasons survive
 * churn; 1 MiB, below the huge page size, so a small cache's index stays
 * on the heap (an array of 2 MiB and its header would map 4). */
#define INDEX_MIN_SLOTS (1u << 15)

typedef struct cache_slot {
    kvrt_block_hash_t key;
    int32_t block;
    /* Explain entries, chosen by bit 0 of content.hi: the keys tag (odd;
     * 0 when empty) and the content tag (content.hi >> 32) of the newest
     * block cached with a content hash homed here. */
    uint16_t explain_keys[2];
    uint32_t explain_content[2];
} cache_slot_t;
_Static_assert(sizeof(cache_slot_t) == 32, "two slots to a cache line");

typedef struct cache_index {
    cache_slot_t *slots;
    uint64_t mask;  /* slots - 1 */
    uint64_t count;
} cache_index_t;

/* The slot holding a content hash's explain entry: the one an index key
 * equal to it would start probing at. */
static inline cache_slot_t *kvrt_cache_explain_slot(const cache_index_t *index,
                                                    const kvrt_block_hash_t *content)
{
    return &index->slots[content->lo & index->mask];
}

/* Remembers that content was last cached under keys_tag (odd). */
static inline void kvrt_cache_explain_set(cache_index_t *index, const kvrt_block_hash_t *content,
                                          uint16_t keys_tag)
{
    cache_slot_t *s = kvrt_cache_explain_slot(index, content);
    s->explain_keys[content->hi & 1] = keys_tag;
    s->explain_content[content->hi & 1] = (uint32_t)(content->hi >> 32);
}

/* The keys tag content was last cached under, or 0 when the entry holds
 * nothing or another content's. */
static inline uint16_t kvrt_cache_explain_get(const cache_index_t *index,
                                              const kvrt_block_hash_t *content)
{
    const cache_slot_t *s = kvrt_cache_explain_slot(index, content);
    bool ours = s->explain_content[content->hi & 1] == (uint32_t)(content->hi >> 32);
    return ours ? s->explain_keys[content->hi & 1] : 0;
}

kvrt_status_t kvrt_cache_index_init(cache_index_t *index, uint32_t num_blocks);
void kvrt_cache_index_destroy(cache_index_t *index);
/* The block indexed under key, or KVRT_NULL_BLOCK. */
int32_t kvrt_cache_index_find(const cache_index_t *index, const kvrt_block_hash_t *key);
static inline void kvrt_cache_index_prefetch(const cache_index_t *index,
                                        const kvrt_block_hash_t *key)
{
    __builtin_prefetch(&index->slots[key->lo & index->mask]);
}
/* Adds key -> block; the key must not be present. */
void kvrt_cache_index_add(cache_index_t *index, const kvrt_block_hash_t *key, int32_t block);
/* Removes key; returns false when it was not present. */
bool kvrt_cache_index_remove(cache_index_t *index, const kvrt_block_hash_t *key);

/* ---- names -----------------------------------------------------------------
 * A cached block's name, one per block and one cache line each: an insert
 * writes it and an eviction reads it, at random in an array sized for the
 * whole pool. Unpadded (56 bytes) six names in eight would straddle two
 * lines, the second a miss nobody prefetched.
 */
typedef struct cache_name {
    _Alignas(64) kvrt_cache_block_name_t name;
} cache_name_t;
_Static_assert(sizeof(cache_name_t) == 64, "a name is one cache line");

/* ---- eviction policies (policy_lru.c, policy_freq.c) -----------------------
 * A policy keeps the *evictable* set: cached blocks with no reference. The
 * cache tells it when a block is indexed (inserted), gains a reference on a
 * hit (hit), drops into the set (idle) or leaves it (busy); victim() takes
 * the next block out of the set. No operation allocates. A cached block's
 * depth and key are read from the cache's names (written before inserted()
 * is called), not kept again: an insert then writes one line fewer at
 * random.
 */
typedef struct cache_policy cache_policy_t;

typedef struct cache_policy_ops {
    const char *name;
    kvrt_status_t (*init)(cache_policy_t *policy, uint32_t num_blocks);
    void (*destroy)(cache_policy_t *policy);
    /* key is the block's index key: frequency policies remember the counts
     * of evicted keys and restore them when the key comes back. */
    void (*inserted)(cache_policy_t *policy, int32_t block, uint32_t depth,
                     const kvrt_block_hash_t *key);
    void (*hit)(cache_policy_t *policy, int32_t block);
    void (*idle)(cache_policy_t *policy, int32_t block);
    void (*busy)(cache_policy_t *policy, int32_t block);
    /* Removes and returns the next victim; the set is not empty. */
    int32_t (*victim)(cache_policy_t *policy);
    /* Writes up to max blocks that are next in line for eviction, first
     * victim first (frequency policies: the heap's first entries, roughly
     * in order); returns how many. Changes nothing. */
    uint32_t (*peek)(const cache_policy_t *policy, int32_t *out, uint32_t max);
    bool (*contains)(const cache_policy_t *policy, int32_t block);
} cache_policy_ops_t;

/* A block's neighbours in an LRU list, side by side: unlinking a block
 * writes its own entry and its neighbours', one line each, and the next
 * victim's entry is the line an eviction reads to find it. */
typedef struct policy_link {
    int32_t prev;
    int32_t next;
} policy_link_t;

/* A heap entry of the frequency policies: lower evicts first. */
typedef struct policy_heap_entry {
    uint64_t priority;
    uint64_t tick;
    uint32_t depth;
    int32_t block;
} policy_heap_entry_t;

/* A release run: the block it began with (deeper blocks of the run are
 * linked in front of it), the depth of its last block and the query tick it
 * started at; first is 0 when no run is open. */
typedef struct policy_run {
    int32_t first;
    uint32_t depth;
    uint64_t tick;
} policy_run_t;

struct cache_policy {
    const cache_policy_ops_t *ops;
    uint32_t num_blocks;
    uint32_t evictable;
    uint64_t tick;       /* advanced by the cache once per query */
    const cache_name_t *names; /* the cache's, block -> name; set before init */
    /* LRU: an intrusive list threaded through block ids, block 0 (never
     * cached) as the sentinel; links[0].next is the least recently used. */
    policy_link_t *links;
    /* Leaf-first lists (lru-leaf, adaptive): the open release run of each
     * list (policy_lru.c); leaf_first tells lru-leaf from plain LRU. */
    bool leaf_first;
    policy_run_t run[2];
    /* Adaptive: blocks per list (0 probation, 1 protected), the target
     * length of probation, and each block's list. */
    uint32_t list_count[2];
    uint32_t target;
    uint8_t *protected;
    /* Frequency policies: a binary min-heap of evictable blocks. */
    policy_heap_entry_t *heap;
    uint32_t *heap_pos;  /* 1-based position in heap, 0 when absent */
    uint32_t *freq;      /* uses since the block was indexed */
    uint64_t age;        /* LFU-DA: priority of the last victim */
    /* Frequency history of evicted keys, direct-mapped by key: (32-bit tag
     * << 32) | count; 0 when empty. Lossy by design. */
    uint64_t *history;
    uint64_t history_mask;
    bool aged;
};

/* Warms what a hit on `block` will touch in any policy's arrays. */
static inline void kvrt_cache_policy_prefetch(const cache_policy_t *p, int32_t block)
{
    if (p->links)
        __builtin_prefetch(&p->links[block], 1);
    if (p->heap_pos) {
        __builtin_prefetch(&p->heap_pos[block], 1);
        __builtin_prefetch(&p->freq[block], 1);
    }
}

/* ---- hooks (hooks.c; the contract is cache/hooks.h) ------------------------ */

typedef struct cache_observer {
    kvrt_cache_observer_fn fn;
    void *user_data;
} cache_observer_t;

typedef struct cache_hooks {
    kvrt_ctx_t *ctx;
    uint32_t group_id;
    uint32_t tokens_per_block;
    uint64_t events; /* event ids handed out */
    kvrt_cache_sink_fn sink;
    void *sink_data;
    uint32_t num_observers;
    cache_observer_t observers[KVRT_CACHE_MAX_OBSERVERS];
} cache_hooks_t;

cache_hooks_t *kvrt_cache_hooks(kvrt_cache_t *cache);
/* Calls every observer with one event (id already taken). */
void kvrt_cache_hooks_notify(const cache_hooks_t *hooks, const kvrt_cache_event_t *event);

/* Takes the next event id and, when observers are attached, tells them.
 * name NULL for CLEARED. The one branch the hot path pays. */
static inline void kvrt_cache_emit(cache_hooks_t *hooks, kvrt_cache_event_kind_t kind,
                                   uint32_t flags, int32_t block,
                                   const kvrt_cache_block_name_t *name)
{
    uint64_t id = ++hooks->events;
    if (KVRT_LIKELY(hooks->num_observers == 0))
        return;
    kvrt_cache_event_t event = {.kind = kind, .flags = flags, .id = id,
                                .group_id = hooks->group_id,
                                .tokens_per_block = hooks->tokens_per_block,
                                .block = block};
    if (name)
        event.name = *name;
    kvrt_cache_hooks_notify(hooks, &event);
}

/* For kvrt_cache_reset(): every block left the index at once. */
static inline void kvrt_cache_emit_cleared(kvrt_cache_t *cache)
{
    kvrt_cache_emit(kvrt_cache_hooks(cache), KVRT_CACHE_EVENT_CLEARED, 0, KVRT_NULL_BLOCK, NULL);
}

/* For whole-cache operations in their own files (reset.c): the cache's
 * parts, borrowed for the duration of one call. */
typedef struct cache_parts {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    const char *name;
    uint32_t num_blocks;
    cache_index_t *index;
    cache_policy_t *policy;
    const cache_name_t *names;
    kvrt_cache_sink_fn sink; /* NULL: none */
    void *sink_data;
} cache_parts_t;
void kvrt_cache_parts(kvrt_cache_t *cache, cache_parts_t *parts_out);
/* Counts a completed reset (kvrt_cache_resets). */
void kvrt_cache_count_reset(kvrt_cache_t *cache);

extern const cache_policy_ops_t kvrt_cache_policy_lru;
extern const cache_policy_ops_t kvrt_cache_policy_lfu;
extern const cache_policy_ops_t kvrt_cache_policy_lfu_aged;
extern const cache_policy_ops_t kvrt_cache_policy_lru_leaf;
extern const cache_policy_ops_t kvrt_cache_policy_adaptive;

/* Leaf-first list primitives shared by lru-leaf and adaptive
 * (policy_lru.c): links block into the list ending at `sentinel` under the
 * run rule; unlinks it and closes the run it anchored. */
void kvrt_policy_list_idle(cache_policy_t *p, policy_run_t *run, int32_t sentinel,
                           int32_t block);
void kvrt_policy_list_unlink(cache_policy_t *p, policy_run_t *run, int32_t block);
uint32_t kvrt_policy_list_peek(const cache_policy_t *p, int32_t sentinel, int32_t *out,
                               uint32_t max);

#endif /* KVRT_CACHE_INTERNAL_H */
