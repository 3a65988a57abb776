/*
 * arena.h - size-classed blocks carved from 2 MiB chunks on transparent
 * huge pages (arena.c), for many small arrays a hot path reaches at
 * random. Internal to kvrt: the scheduler's requests and the pool's table
 * block arrays. Not thread-safe: each arena has one owner, used by one
 * thread at a time.
 */
#ifndef KVRT_ARENA_H
#define KVRT_ARENA_H

#include <stddef.h>
#include <stdint.h>

#include "core.h"

/* One class for 64 bytes, then four per power of two up to 1 MiB. */
#define KVRT_ARENA_CLASSES 57u

/* Zero-initialise; nothing is mapped until the first allocation. */
typedef struct kvrt_arena {
    void *free_list[KVRT_ARENA_CLASSES];
    char *cursor;           /* where the current chunk is carved */
    size_t left;
    void **chunks;
    uint32_t num_chunks;
    uint32_t chunk_capacity;
} kvrt_arena_t;

/* A block of at least `bytes`, 16-byte aligned, not zeroed (above the
 * largest class, its own malloc); NULL without memory. */
void *kvrt_arena_alloc(kvrt_arena_t *a, size_t bytes);
/* Gives a block back to its class (NULL is a no-op). */
void kvrt_arena_free(kvrt_arena_t *a, void *memory);
/* Unmaps every chunk, whatever is still allocated in it (blocks above the
 * largest class must have been freed). */
void kvrt_arena_destroy(kvrt_arena_t *a);

#endif /* KVRT_ARENA_H */
