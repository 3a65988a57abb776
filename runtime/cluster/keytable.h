/*
 * keytable.h - an open-addressing table from a 128-bit block key to one
 * 64-bit mask per tier: the directory's "which nodes hold this key" and a
 * publisher's "which tiers hold this key". Linear probing, at most half
 * full, a slot is occupied while any of its masks is non-zero. Internal.
 */
#ifndef KVRT_CLUSTER_KEYTABLE_H
#define KVRT_CLUSTER_KEYTABLE_H

#include <stdbool.h>
#include <stdint.h>

#include "kvrt/cluster.h"

typedef struct keytable_slot {
    uint64_t lo, hi;
    uint64_t mask[KVRT_KV_TIERS];
} keytable_slot_t;

typedef struct keytable {
    keytable_slot_t *slots;
    uint64_t capacity; /* a power of two */
    uint64_t count;    /* occupied slots */
    uint64_t seed_lo, seed_hi;
} keytable_t;

/* Sized for `expected` keys; seeds the slot hash from getrandom so a peer
 * cannot aim its keys at one probe chain. Returns false without memory. */
bool keytable_init(keytable_t *t, uint64_t expected);
void keytable_free(keytable_t *t);
/* Makes room for `more` new keys (grows by doubling). False without memory;
 * the table is unchanged then. */
bool keytable_reserve(keytable_t *t, uint64_t more);
keytable_slot_t *keytable_find(const keytable_t *t, const kvrt_block_hash_t *key);
/* Finds the key or claims a slot for it (masks zero): the caller must set a
 * mask bit before the next call, and must have reserved room. */
keytable_slot_t *keytable_claim(keytable_t *t, const kvrt_block_hash_t *key);
/* Frees a slot whose masks are all zero (backward-shift deletion). */
void keytable_erase(keytable_t *t, keytable_slot_t *slot);
/* Clears `bits` from every mask of every slot and frees the slots left
 * empty; O(capacity). Writes per tier how many slots lost a bit. */
void keytable_clear_bits(keytable_t *t, uint64_t bits, uint64_t cleared_out[KVRT_KV_TIERS]);
/* Starts loading the key's home slot into the cache (batched callers run
 * a few keys ahead, so table misses overlap instead of queueing). */
void keytable_prefetch(const keytable_t *t, const kvrt_block_hash_t *key);
/* Forgets every key. */
void keytable_reset(keytable_t *t);

static inline bool keytable_slot_used(const keytable_slot_t *s)
{
    uint64_t any = 0;
    for (int i = 0; i < KVRT_KV_TIERS; i++)
        any |= s->mask[i];
    return any != 0;
}

#endif /* KVRT_CLUSTER_KEYTABLE_H */
