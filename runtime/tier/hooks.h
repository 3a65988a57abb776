/*
 * tier/hooks.h - where the subsystems above the tier stack plug in: an
 * observer of the blocks that enter and leave its host and SSD levels
 * (what a node's KV-event stream publishes as HOST and DISK events, so
 * that a cluster directory knows which peer holds a prefix below its
 * pool). Exported by runtime/tier to the cluster layer; not ABI, not
 * installed.
 *
 * Threads and reentrancy: the observer is called on the engine thread (the
 * pool's), inside kvrt_tier_* calls and the cache's eviction sink; it must
 * not call any kvrt function on the tier, its cache or pool, and must not
 * block.
 */
#ifndef KVRT_TIER_HOOKS_H
#define KVRT_TIER_HOOKS_H

#include <stdbool.h>

#include "cache/hooks.h"
#include "kvrt/tier.h"

typedef enum kvrt_tier_level {
    KVRT_TIER_LEVEL_HOST = 0,
    KVRT_TIER_LEVEL_SSD = 1
} kvrt_tier_level_t;

/*
 * stored: the block `name` is now indexed at `level` (readable by an
 * onload); !stored: it is not any more. name == NULL (stored false): the
 * level is being torn down (kvrt_tier_destroy) and everything it held is
 * gone; no call follows for that level. name is valid during the call only.
 */
typedef void (*kvrt_tier_observer_fn)(void *user_data, kvrt_tier_level_t level, bool stored,
                                      const kvrt_cache_block_name_t *name);

/*
 * kvrt_tier_observe - attaches the tier's one observer and, before
 * returning, calls it once (stored) for every block each level indexes
 * now, so that it starts from the tier's whole content (an SSD rebuilt at
 * create included). Errors: KVRT_ERR_INVALID_ARG (NULL), KVRT_ERR_BUSY (an
 * observer is attached).
 */
kvrt_status_t kvrt_tier_observe(kvrt_tier_t *tier, kvrt_tier_observer_fn fn, void *user_data);

/* kvrt_tier_unobserve - detaches (fn, user_data). Errors:
 * KVRT_ERR_INVALID_ARG, KVRT_ERR_NOT_FOUND (not the attached observer). */
kvrt_status_t kvrt_tier_unobserve(kvrt_tier_t *tier, kvrt_tier_observer_fn fn, void *user_data);

#endif /* KVRT_TIER_HOOKS_H */
