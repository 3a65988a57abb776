/*
 * index.c - the prefix index: block key -> block id, open addressing with
 * linear probing and backward-shift deletion (no tombstones), sized once.
 *
 * Keys are XXH3-128 values, uniformly distributed, so the home slot is just
 * the low bits of key.lo; a lookup is one or two cache lines in the common
 * case and never allocates. The slots' explain entries belong to cache.c
 * and are never moved here.
 */
#include <stdlib.h>

#include "cache/cache_internal.h"

kvrt_status_t kvrt_cache_index_init(cache_index_t *index, uint32_t num_blocks)
{
    /* Every usable block indexed at once keeps the load factor <= 0.5. */
    uint64_t capacity = INDEX_MIN_SLOTS;
    while (capacity < 2ull * num_blocks)
        capacity <<= 1;
    index->slots = kvrt_calloc_large_resident(capacity, sizeof(*index->slots));
    if (!index->slots)
        return KVRT_ERR_NO_MEMORY;
    index->mask = capacity - 1;
    index->count = 0;
    return KVRT_OK;
}

void kvrt_cache_index_destroy(cache_index_t *index)
{
    kvrt_free_large(index->slots);
    index->slots = NULL;
}

int32_t kvrt_cache_index_find(const cache_index_t *index, const kvrt_block_hash_t *key)
{
    for (uint64_t i = key->lo & index->mask;; i = (i + 1) & index->mask) {
        const cache_slot_t *s = &index->slots[i];
        if (s->block == KVRT_NULL_BLOCK)
            return KVRT_NULL_BLOCK;
        if (kvrt_block_hash_equal(&s->key, key))
            return s->block;
    }
}

void kvrt_cache_index_add(cache_index_t *index, const kvrt_block_hash_t *key, int32_t block)
{
    uint64_t i = key->lo & index->mask;
    while (index->slots[i].block != KVRT_NULL_BLOCK)
        i = (i + 1) & index->mask;
    index->slots[i].key = *key;
    index->slots[i].block = block;
    index->count++;
}

bool kvrt_cache_index_remove(cache_index_t *index, const kvrt_block_hash_t *key)
{
    uint64_t mask = index->mask;
    uint64_t hole = key->lo & mask;
    for (;; hole = (hole + 1) & mask) {
        if (index->slots[hole].block == KVRT_NULL_BLOCK)
            return false;
        if (kvrt_block_hash_equal(&index->slots[hole].key, key))
            break;
    }
    /* Backward shift: walk the run after the hole; an entry moves into the
     * hole when its home slot is not cyclically inside (hole, here], i.e.
     * when the hole lies on its probe path. Explain entries stay. */
    for (uint64_t j = (hole + 1) & mask;; j = (j + 1) & mask) {
        const cache_slot_t *s = &index->slots[j];
        if (s->block == KVRT_NULL_BLOCK)
            break;
        uint64_t home = s->key.lo & mask;
        bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (!stays) {
            index->slots[hole].key = s->key;
            index->slots[hole].block = s->block;
            hole = j;
        }
    }
    index->slots[hole].block = KVRT_NULL_BLOCK;
    index->count--;
    return true;
}
