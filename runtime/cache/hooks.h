/*
 * cache/hooks.h - where the subsystems above the prefix cache plug in: an
 * eviction sink (a lower tier takes a victim's bytes and names instead of
 * the block being dropped) and observers of stored / removed / cleared
 * events (what a KV-event stream, a cluster prefix directory and metrics
 * consume). Exported by runtime/cache to the subsystems above it (tier,
 * cluster, sched) and to kvrt-bench; not ABI, not installed.
 *
 * Cost: with nothing attached, insert pays one predictable branch and
 * eviction two; match and lookup pay nothing (docs/benchmarks.md).
 *
 * Threads and reentrancy, for sinks and observers alike: they are called
 * synchronously, on the thread that made the kvrt call that caused the
 * event (kvrt_pool_alloc, kvrt_table_append, kvrt_sched_step and
 * kvrt_sched_commit, kvrt_cache_insert, kvrt_cache_destroy...), in the
 * middle of that call. They must not call any kvrt function on the cache,
 * its pool, the pool's block tables or a scheduler built on them; pure
 * functions (kvrt_layout_*, kvrt_block_*) and kvrt_pool_page_address are
 * fine. They must not block: copy, or queue work for another thread, and
 * return. Attaching and detaching follow the pool's thread rule.
 */
#ifndef KVRT_CACHE_HOOKS_H
#define KVRT_CACHE_HOOKS_H

#include <stdbool.h>
#include <stdint.h>

#include "kvrt/cache.h"

/* Whether two block hashes (keys, content hashes, fingerprints) are equal. */
static inline bool kvrt_block_hash_equal(const kvrt_block_hash_t *a, const kvrt_block_hash_t *b)
{
    return a->lo == b->lo && a->hi == b->hi;
}

/* ---- building on a cache ------------------------------------------------- */

/* The pool a cache sits on, and holds that keep kvrt_cache_destroy() from
 * freeing a cache still in use (it answers KVRT_ERR_BUSY): a scheduler, a
 * tier or a cluster publisher takes one for as long as it uses the cache. */
kvrt_pool_t *kvrt_cache_pool(const kvrt_cache_t *cache);
void kvrt_cache_hold(kvrt_cache_t *cache);
void kvrt_cache_unhold(kvrt_cache_t *cache);
/* How many times kvrt_cache_reset has emptied the cache: a holder that
 * keeps K/V computed before a reset (a scheduler's running requests, a
 * tier's copies) compares it with the count it last saw. */
uint64_t kvrt_cache_resets(const kvrt_cache_t *cache);

/* ---- naming a cached block ------------------------------------------------ */

enum kvrt_cache_name_flags {
    /* parent_key holds the key of the previous block of the sequence. Never
     * set for depth 0 (the first block has no parent) nor when the block was
     * inserted by kvrt_cache_insert(), which is not told the parent. */
    KVRT_CACHE_NAME_HAS_PARENT = 1u << 0
};

/* Everything the cache knows about a cached block's identity. */
typedef struct kvrt_cache_block_name {
    kvrt_block_hash_t key;        /* the index key (content + salt/adapter) */
    kvrt_block_hash_t content;    /* the chained content hash */
    kvrt_block_hash_t parent_key; /* see KVRT_CACHE_NAME_HAS_PARENT */
    uint32_t depth;               /* position in its sequence, 0 for the first block */
    uint32_t flags;               /* enum kvrt_cache_name_flags */
} kvrt_cache_block_name_t;

/*
 * kvrt_cache_insert_chained - kvrt_cache_insert() told the parent's content
 * hash as well (NULL for the first block, depth 0), so that events carry the
 * parent's key. What schedulers call. Same errors as kvrt_cache_insert().
 */
kvrt_status_t kvrt_cache_insert_chained(kvrt_cache_t *cache, int32_t block,
                                        const kvrt_block_hash_t *content,
                                        const kvrt_block_hash_t *parent_content,
                                        const kvrt_hash_keys_t *keys, uint32_t block_index,
                                        int32_t *cached_out);

/*
 * kvrt_cache_prefetch_insert - starts fetching what
 * kvrt_cache_insert_chained() of this block, content and keys will touch
 * (its index slot and explain entry, its name and pool metadata), so
 * that a batch of inserts overlaps those misses. Changes nothing; invalid
 * arguments are ignored.
 */
void kvrt_cache_prefetch_insert(const kvrt_cache_t *cache, int32_t block,
                                const kvrt_block_hash_t *content, const kvrt_hash_keys_t *keys);

/*
 * kvrt_cache_insert_named - caches `block` (used, held by the caller) under
 * a name known already, e.g. a block a tier has just brought back from host
 * memory or SSD: the tier keeps names, not salts. Otherwise as
 * kvrt_cache_insert(): a key already indexed changes nothing and
 * *cached_out names its block. name->flags may hold only known bits.
 * Errors: KVRT_ERR_INVALID_ARG (NULL cache/name, unknown flag bits),
 * KVRT_ERR_UNKNOWN_BLOCK, KVRT_ERR_BAD_STATE (as kvrt_cache_insert()).
 */
kvrt_status_t kvrt_cache_insert_named(kvrt_cache_t *cache, int32_t block,
                                      const kvrt_cache_block_name_t *name,
                                      int32_t *cached_out);

/*
 * kvrt_cache_forget_query - takes back the counts of one kvrt_cache_match
 * (num_tokens: the tokens it queried, those passed unless max_blocks capped
 * them; *match as it returned) whose hits the caller
 * gave back unused because it will match the same tokens again: a
 * scheduler that lets a request wait for blocks another is computing
 * counts its query once, when it is matched for admission. The eviction
 * policy still counts the match's use of the hits (recency; LFU frequency
 * once per match). The pool's thread, as kvrt_cache_match. No errors:
 * NULL arguments are ignored; a match it does not describe corrupts the
 * counts (the caller passes what kvrt_cache_match gave it).
 */
void kvrt_cache_forget_query(kvrt_cache_t *cache, uint32_t num_tokens,
                             const kvrt_cache_match_t *match);

/*
 * kvrt_cache_count_lookups - counts one query of num_tokens tokens, as
 * kvrt_cache_match would have, for a caller that found the hits with
 * kvrt_cache_contains and kvrt_cache_lookup instead (a scheduler whose
 * every group on this cache finds its hits block by block: a window
 * group's early blocks may be gone while later ones stay). The caller sets
 * match->num_blocks and num_tokens (the hit it settled on) and
 * partial_tokens (tokens past the hit that no miss explains: a partial
 * last block, or an incomplete unit of a larger block size); `missed` is
 * the content hash (under keys) of the block whose miss ended the hit, or
 * NULL when none did. Fills match->miss_reason from the cache's explain
 * table, as a match does, and advances the eviction policy's query tick
 * (a chain released within one tick is one run for leaf-first LRU). The
 * tokens past the hit that are not partial count under that reason. The
 * pool's thread, as kvrt_cache_match. No errors: NULL arguments or invalid
 * keys count nothing; a match whose counts exceed num_tokens corrupts the
 * statistics (the caller passes what it settled on).
 */
void kvrt_cache_count_lookups(kvrt_cache_t *cache, uint32_t num_tokens,
                              const kvrt_block_hash_t *missed, const kvrt_hash_keys_t *keys,
                              kvrt_cache_match_t *match);

/*
 * kvrt_cache_contains - whether a block is cached under content (a content
 * hash under keys; keys may be NULL). Takes no reference and counts no
 * hit: what a scheduler probes with before it takes the blocks it keeps
 * (kvrt_cache_lookup). False for NULL arguments or invalid keys. Any
 * thread that may read the cache.
 */
bool kvrt_cache_contains(const kvrt_cache_t *cache, const kvrt_block_hash_t *content,
                         const kvrt_hash_keys_t *keys);

/*
 * kvrt_cache_touch_idle - the idle blocks cached under contents[0, n)
 * (content hashes under keys; keys may be NULL) count as released now, as
 * if their last holder had just let go: the policy moves each to where a
 * release puts it, contents[n - 1] first (deepest first, as a table's
 * release). No hit is counted; blocks in use or not cached are skipped. A
 * scheduler touches the blocks a sliding window released early when their
 * request lets go of the rest, so that eviction weighs them as it weighs
 * that request's other blocks. The pool's thread. Returns the blocks
 * touched; 0 for NULL arguments or invalid keys.
 */
uint32_t kvrt_cache_touch_idle(kvrt_cache_t *cache, const kvrt_block_hash_t *contents,
                               uint32_t n, const kvrt_hash_keys_t *keys);

/* ---- what is next in line for eviction -----------------------------------
 *
 * kvrt_cache_peek_victims - up to max evictable blocks in the order the
 * policy would evict them (frequency policies: roughly), with their names;
 * returns how many. Changes nothing. A lower tier copies these ahead, so
 * that when they are evicted nothing has to wait or be dropped. Pool thread.
 */
uint32_t kvrt_cache_peek_victims(const kvrt_cache_t *cache, int32_t *blocks_out,
                                 kvrt_cache_block_name_t *names_out, uint32_t max);

/* ---- eviction sink ---------------------------------------------------------
 *
 * Eviction happens inside allocation: when an allocation of N blocks finds
 * fewer free blocks than N, the cache takes victims from its policy until
 * enough are free. With a sink attached, each victim is first offered to it,
 * already out of the index (a lookup no longer finds it) but with its bytes
 * intact in the pool. The sink answers:
 *
 *   KVRT_CACHE_SINK_DROP  the block goes to the free list now. The sink has
 *                         copied what it wanted synchronously, or queued
 *                         nothing because it is busy or full. A tier that
 *                         cannot keep up answers DROP: an allocation never
 *                         waits for a tier.
 *   KVRT_CACHE_SINK_KEEP  the sink takes the block: it leaves the cache as a
 *                         used block with one reference, owned by the sink,
 *                         which copies it asynchronously and then gives it
 *                         back with kvrt_pool_free() (on the pool's thread,
 *                         e.g. when it polls its completion queue). The
 *                         allocation takes another victim instead.
 *
 * victim->may_keep is false when the allocation needs this very block (no
 * other evictable block is left for it); KEEP is then read as DROP, so an
 * allocation that was possible when it started never fails because of a
 * sink. A block kept by a sink counts as used (kvrt_pool_info) until freed.
 *
 * kvrt_cache_reset offers every block it unindexes too, with
 * victim->discard set: its K/V is of before the reset and must not be kept
 * below. The sink answers KEEP only to finish a copy already reading the
 * block (which must then publish nothing), so that the block is not reused
 * under it; it takes one reference of its own (beside the holders' of a
 * referenced block) and frees it as for an eviction.
 * One sink per cache; the tier under it chains further tiers itself.
 */
typedef enum kvrt_cache_sink_verdict {
    KVRT_CACHE_SINK_DROP = 0,
    KVRT_CACHE_SINK_KEEP = 1
} kvrt_cache_sink_verdict_t;

typedef struct kvrt_cache_victim {
    int32_t block;                /* in the cache's pool; bytes intact */
    bool may_keep;
    bool discard;                 /* a reset: not to be kept below (above) */
    kvrt_cache_block_name_t name;
} kvrt_cache_victim_t;

/* victim is valid only during the call. */
typedef kvrt_cache_sink_verdict_t (*kvrt_cache_sink_fn)(void *user_data,
                                                        const kvrt_cache_victim_t *victim);

/*
 * kvrt_cache_set_sink - attaches the eviction sink (fn non-NULL) or detaches
 * it (fn NULL; blocks it kept stay its own to free). user_data is passed to
 * every call and must outlive the attachment.
 * Errors: KVRT_ERR_INVALID_ARG (NULL cache), KVRT_ERR_BUSY (another sink is
 * attached; detach it first).
 */
kvrt_status_t kvrt_cache_set_sink(kvrt_cache_t *cache, kvrt_cache_sink_fn fn, void *user_data);

/*
 * kvrt_cache_has_sink - whether an eviction sink is attached. Without one,
 * every idle block reclaimed is one block freed; with one, an allocation
 * may use up several idle blocks for each it takes (those the sink keeps
 * stay used), so only free blocks can be counted on. NULL: false.
 */
bool kvrt_cache_has_sink(const kvrt_cache_t *cache);

/* ---- observers -------------------------------------------------------------
 *
 * STORED   a block was newly indexed (duplicates of a key already indexed
 *          are not events).
 * REMOVED  a block left the index: evicted (KVRT_CACHE_EVENT_KEPT set when
 *          the sink kept it). Emitted after the sink's verdict.
 * CLEARED  every block left the index at once (the cache was reset or is
 *          being destroyed); no REMOVED event per block.
 *
 * Every event of a cache carries the next id of one per-cache counter
 * (1, 2, 3...; never reset, also counting events no observer saw), so
 * several consumers of one cache share one order and an observer attached
 * late knows where it joined. Node identity and restarts (an epoch) belong
 * to the cluster layer, which knows the node; the cache does not.
 * An observer attached to a cache that already holds blocks sees only what
 * happens after; consumers attach right after kvrt_cache_create().
 */
typedef enum kvrt_cache_event_kind {
    KVRT_CACHE_EVENT_STORED = 1,
    KVRT_CACHE_EVENT_REMOVED = 2,
    KVRT_CACHE_EVENT_CLEARED = 3
} kvrt_cache_event_kind_t;

enum kvrt_cache_event_flags {
    KVRT_CACHE_EVENT_KEPT = 1u << 0 /* REMOVED: the eviction sink kept the block */
};

typedef struct kvrt_cache_event {
    kvrt_cache_event_kind_t kind;
    uint32_t flags;            /* enum kvrt_cache_event_flags */
    uint64_t id;               /* per-cache event number, from 1 */
    uint32_t group_id;         /* the pool's group id (cache.<N>) */
    uint32_t tokens_per_block;
    int32_t block;             /* KVRT_NULL_BLOCK for CLEARED */
    uint32_t unused;
    kvrt_cache_block_name_t name; /* zeroed for CLEARED */
} kvrt_cache_event_t;

/* event is valid only during the call. */
typedef void (*kvrt_cache_observer_fn)(void *user_data, const kvrt_cache_event_t *event);

/* Observers one cache holds at most. */
#define KVRT_CACHE_MAX_OBSERVERS 4

/*
 * kvrt_cache_observe - adds an observer; observers are called in the order
 * they were added. The same (fn, user_data) pair may not be added twice.
 * Errors: KVRT_ERR_INVALID_ARG (NULL cache or fn, pair already added),
 * KVRT_ERR_BUSY (KVRT_CACHE_MAX_OBSERVERS attached).
 */
kvrt_status_t kvrt_cache_observe(kvrt_cache_t *cache, kvrt_cache_observer_fn fn,
                                 void *user_data);

/* kvrt_cache_unobserve - removes the observer added with (fn, user_data).
 * Errors: KVRT_ERR_INVALID_ARG (NULL cache), KVRT_ERR_NOT_FOUND. */
kvrt_status_t kvrt_cache_unobserve(kvrt_cache_t *cache, kvrt_cache_observer_fn fn,
                                   void *user_data);

/*
 * kvrt_cache_event_count - ids handed out so far (the id of the last event,
 * 0 before the first). Errors: KVRT_ERR_INVALID_ARG.
 */
kvrt_status_t kvrt_cache_event_count(const kvrt_cache_t *cache, uint64_t *count_out);

#endif /* KVRT_CACHE_HOOKS_H */
