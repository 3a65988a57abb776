/*
 * keytable.c - the key -> per-tier mask table behind the directory and the
 * publishers (keytable.h).
 *
 * Keys are content hashes already, but they come from peers, so the slot is
 * not taken from the key's bits directly: both halves are mixed with seeds
 * drawn per table, and a peer that floods one probe chain would have to
 * guess them.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "cluster/keytable.h"

#define MIN_CAPACITY 64u

static inline uint64_t slot_of(const keytable_t *t, uint64_t lo, uint64_t hi)
{
    uint64_t h = (lo ^ t->seed_lo) * 0x9E3779B97F4A7C15ull;
    h ^= (hi ^ t->seed_hi) * 0xC2B2AE3D27D4EB4Full;
    h ^= h >> 29;
    return h & (t->capacity - 1);
}

static uint64_t capacity_for(uint64_t keys)
{
    uint64_t cap = MIN_CAPACITY;
    while (cap < keys * 2)
        cap <<= 1;
    return cap;
}

bool keytable_init(keytable_t *t, uint64_t expected)
{
    memset(t, 0, sizeof(*t));
    uint64_t seeds[2] = {0x243F6A8885A308D3ull, 0x13198A2E03707344ull};
    if (getrandom(seeds, sizeof(seeds), GRND_NONBLOCK) != (ssize_t)sizeof(seeds)) {
        /* Without entropy the table still works; only the flood defence
         * weakens. Mix in the table's address so tables differ. */
        seeds[0] ^= (uint64_t)(uintptr_t)t;
    }
    t->seed_lo = seeds[0];
    t->seed_hi = seeds[1];
    t->capacity = capacity_for(expected);
    t->slots = calloc(t->capacity, sizeof(*t->slots));
    return t->slots != NULL;
}

void keytable_free(keytable_t *t)
{
    free(t->slots);
    t->slots = NULL;
    t->capacity = t->count = 0;
}

static void place(keytable_t *t, const keytable_slot_t *s)
{
    uint64_t i = slot_of(t, s->lo, s->hi);
    while (keytable_slot_used(&t->slots[i]))
        i = (i + 1) & (t->capacity - 1);
    t->slots[i] = *s;
}

bool keytable_reserve(keytable_t *t, uint64_t more)
{
    if ((t->count + more) * 2 <= t->capacity)
        return true;
    uint64_t cap = capacity_for(t->count + more);
    keytable_slot_t *fresh = calloc(cap, sizeof(*fresh));
    if (!fresh)
        return false;
    keytable_slot_t *old = t->slots;
    uint64_t old_cap = t->capacity;
    t->slots = fresh;
    t->capacity = cap;
    for (uint64_t i = 0; i < old_cap; i++)
        if (keytable_slot_used(&old[i]))
            place(t, &old[i]);
    free(old);
    return true;
}

keytable_slot_t *keytable_find(const keytable_t *t, const kvrt_block_hash_t *key)
{
    uint64_t i = slot_of(t, key->lo, key->hi);
    for (;;) {
        keytable_slot_t *s = &t->slots[i];
        if (!keytable_slot_used(s))
            return NULL;
        if (s->lo == key->lo && s->hi == key->hi)
            return s;
        i = (i + 1) & (t->capacity - 1);
    }
}

keytable_slot_t *keytable_claim(keytable_t *t, const kvrt_block_hash_t *key)
{
    uint64_t i = slot_of(t, key->lo, key->hi);
    for (;;) {
        keytable_slot_t *s = &t->slots[i];
        if (!keytable_slot_used(s)) {
            memset(s, 0, sizeof(*s));
            s->lo = key->lo;
            s->hi = key->hi;
            t->count++;
            return s;
        }
        if (s->lo == key->lo && s->hi == key->hi)
            return s;
        i = (i + 1) & (t->capacity - 1);
    }
}

void keytable_erase(keytable_t *t, keytable_slot_t *slot)
{
    uint64_t mask = t->capacity - 1;
    uint64_t hole = (uint64_t)(slot - t->slots);
    uint64_t i = hole;
    t->count--;
    /* Backward shift: pull later members of the chain into the hole when
     * their home slot is not between the hole and them. */
    for (;;) {
        i = (i + 1) & mask;
        keytable_slot_t *s = &t->slots[i];
        if (!keytable_slot_used(s))
            break;
        uint64_t home = slot_of(t, s->lo, s->hi);
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            t->slots[hole] = *s;
            hole = i;
        }
    }
    memset(&t->slots[hole], 0, sizeof(t->slots[hole]));
}

void keytable_clear_bits(keytable_t *t, uint64_t bits, uint64_t cleared_out[KVRT_KV_TIERS])
{
    for (int k = 0; k < KVRT_KV_TIERS; k++)
        cleared_out[k] = 0;
    uint64_t first_empty = t->capacity;
    for (uint64_t i = 0; i < t->capacity; i++) {
        keytable_slot_t *s = &t->slots[i];
        if (!keytable_slot_used(s)) {
            if (first_empty == t->capacity)
                first_empty = i;
            continue;
        }
        for (int k = 0; k < KVRT_KV_TIERS; k++) {
            cleared_out[k] += (s->mask[k] & bits) != 0;
            s->mask[k] &= ~bits;
        }
        if (!keytable_slot_used(s))
            t->count--;
    }
    if (first_empty == t->capacity)
        return; /* cannot happen below half load; nothing to compact */
    /* Slots emptied above may cut probe chains. Walking from a slot that was
     * already empty, in probe order, and re-placing every member closes
     * them: each member finds its chain already compacted before it. */
    uint64_t mask = t->capacity - 1;
    for (uint64_t n = 1; n <= t->capacity; n++) {
        uint64_t i = (first_empty + n) & mask;
        keytable_slot_t s = t->slots[i];
        if (!keytable_slot_used(&s))
            continue;
        memset(&t->slots[i], 0, sizeof(t->slots[i]));
        place(t, &s);
    }
}

void keytable_prefetch(const keytable_t *t, const kvrt_block_hash_t *key)
{
    __builtin_prefetch(&t->slots[slot_of(t, key->lo, key->hi)], 1, 1);
}

void keytable_reset(keytable_t *t)
{
    memset(t->slots, 0, t->capacity * sizeof(*t->slots));
    t->count = 0;
}
