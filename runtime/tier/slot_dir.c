/*
 * slot_dir.c - the slot directory of one tier (host or SSD): which block
 * name each slot holds, a key -> slot index, the free slots, and the LRU
 * order of the slots that may be evicted. Everything is sized at init;
 * nothing here allocates afterwards. Engine thread only.
 *
 * A slot is evictable when it is indexed (READY), no copy reads it
 * (pins == 0) and it was not already chosen as a victim: only those are
 * linked in the LRU list, so the least recently used victim is the list's
 * head in O(1).
 */
#include <stdlib.h>
#include <string.h>

#include "tier/tier_internal.h"

#define UNLINKED (-1)

kvrt_status_t tier_dir_init(slot_dir_t *d, uint32_t n)
{
    memset(d, 0, sizeof(*d));
    d->num_slots = n;
    uint64_t cap = 16;
    while (cap < 2ull * n)
        cap <<= 1;
    d->index_mask = cap - 1;
    d->state = calloc(n, sizeof(*d->state));
    d->pins = calloc(n, sizeof(*d->pins));
    d->evicting = calloc(n, sizeof(*d->evicting));
    d->names = calloc(n, sizeof(*d->names));
    d->prev = malloc(((size_t)n + 1) * sizeof(*d->prev));
    d->next = malloc(((size_t)n + 1) * sizeof(*d->next));
    d->free_stack = malloc((size_t)n * sizeof(*d->free_stack));
    d->index = calloc(cap, sizeof(*d->index));
    if (!d->state || !d->pins || !d->evicting || !d->names || !d->prev || !d->next ||
        !d->free_stack || !d->index) {
        tier_dir_destroy(d);
        return KVRT_ERR_NO_MEMORY;
    }
    for (uint32_t i = 0; i <= n; i++)
        d->prev[i] = d->next[i] = UNLINKED;
    d->prev[n] = d->next[n] = (int32_t)n;
    for (uint32_t i = 0; i < n; i++)
        d->free_stack[i] = (int32_t)(n - 1 - i); /* slot 0 is taken first */
    d->free_count = n;
    return KVRT_OK;
}

void tier_dir_destroy(slot_dir_t *d)
{
    if (d->observe)
        d->observe(d->observe_user, d->level, false, NULL);
    free(d->state);
    free(d->pins);
    free(d->evicting);
    free(d->names);
    free(d->prev);
    free(d->next);
    free(d->free_stack);
    free(d->index);
    memset(d, 0, sizeof(*d));
}

int32_t tier_dir_find(const slot_dir_t *d, const kvrt_block_hash_t *key)
{
    for (uint64_t i = key->lo & d->index_mask;; i = (i + 1) & d->index_mask) {
        int32_t s = d->index[i];
        if (!s)
            return -1;
        if (kvrt_block_hash_equal(&d->names[s - 1].key, key))
            return s - 1;
    }
}

static void index_add(slot_dir_t *d, int32_t slot)
{
    uint64_t i = d->names[slot].key.lo & d->index_mask;
    while (d->index[i])
        i = (i + 1) & d->index_mask;
    d->index[i] = slot + 1;
    if (d->observe)
        d->observe(d->observe_user, d->level, true, &d->names[slot]);
}

/* Backward-shift deletion: no tombstones, probe runs stay short. */
static void index_remove(slot_dir_t *d, int32_t slot)
{
    if (d->observe)
        d->observe(d->observe_user, d->level, false, &d->names[slot]);
    uint64_t i = d->names[slot].key.lo & d->index_mask;
    while (d->index[i] != slot + 1)
        i = (i + 1) & d->index_mask;
    for (uint64_t j = (i + 1) & d->index_mask; d->index[j]; j = (j + 1) & d->index_mask) {
        uint64_t home = d->names[d->index[j] - 1].key.lo & d->index_mask;
        /* j's entry may move into the hole at i unless its home lies in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            d->index[i] = d->index[j];
            i = j;
        }
    }
    d->index[i] = 0;
}

static void lru_link(slot_dir_t *d, int32_t slot)
{
    int32_t s = (int32_t)d->num_slots, last = d->prev[s];
    d->prev[slot] = last;
    d->next[slot] = s;
    d->next[last] = slot;
    d->prev[s] = slot;
}

static void lru_unlink(slot_dir_t *d, int32_t slot)
{
    if (d->next[slot] == UNLINKED)
        return;
    d->next[d->prev[slot]] = d->next[slot];
    d->prev[d->next[slot]] = d->prev[slot];
    d->prev[slot] = d->next[slot] = UNLINKED;
}

int32_t tier_dir_take(slot_dir_t *d)
{
    if (!d->free_count)
        return -1;
    int32_t slot = d->free_stack[--d->free_count];
    d->state[slot] = SLOT_FILLING;
    d->used++;
    return slot;
}

int32_t tier_dir_publish(slot_dir_t *d, int32_t slot, const kvrt_cache_block_name_t *name)
{
    int32_t old = tier_dir_find(d, &name->key);
    if (old >= 0 && old != slot && d->pins[old]) {
        tier_dir_release(d, slot);
        return old;
    }
    if (old >= 0 && old != slot)
        tier_dir_release(d, old);
    d->names[slot] = *name;
    d->state[slot] = SLOT_READY;
    d->evicting[slot] = 0;
    if (old != slot)
        index_add(d, slot);
    lru_unlink(d, slot);
    if (!d->pins[slot])
        lru_link(d, slot);
    return slot;
}

void tier_dir_touch(slot_dir_t *d, int32_t slot)
{
    if (d->next[slot] != UNLINKED) {
        lru_unlink(d, slot);
        lru_link(d, slot);
    }
}

int32_t tier_dir_lru(const slot_dir_t *d)
{
    int32_t head = d->next[d->num_slots];
    return head == (int32_t)d->num_slots ? -1 : head;
}

void tier_dir_pin(slot_dir_t *d, int32_t slot)
{
    d->pins[slot]++;
    lru_unlink(d, slot);
}

void tier_dir_unpin(slot_dir_t *d, int32_t slot)
{
    if (--d->pins[slot])
        return;
    if (d->state[slot] == SLOT_READY && !d->evicting[slot])
        lru_link(d, slot);
    else if (d->state[slot] == SLOT_STALE)
        tier_dir_release(d, slot);
}

void tier_dir_forget(slot_dir_t *d, int32_t slot)
{
    if (d->state[slot] != SLOT_READY)
        return;
    if (!d->pins[slot]) {
        tier_dir_release(d, slot);
        return;
    }
    index_remove(d, slot);
    lru_unlink(d, slot);
    d->state[slot] = SLOT_STALE;
}

void tier_dir_release(slot_dir_t *d, int32_t slot)
{
    if (d->state[slot] == SLOT_FREE)
        return;
    if (d->state[slot] == SLOT_READY)
        index_remove(d, slot);
    lru_unlink(d, slot);
    d->state[slot] = SLOT_FREE;
    d->pins[slot] = 0;
    d->evicting[slot] = 0;
    d->free_stack[d->free_count++] = slot;
    d->used--;
}
