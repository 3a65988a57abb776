/*
 * arena.c - many small arrays that hot paths reach at random, on
 * transparent huge pages: the scheduler's per-request memory (token array,
 * stop set, block hashes, multimodal items, n-gram index: one block per
 * request) and the pool's per-table block arrays.
 *
 * Why: every commit writes the output token into its request's token
 * array, and every block-boundary crossing reads and writes the end of its
 * table's block array. With one malloc each, tens of thousands of running
 * requests are tens of thousands of 4 KiB pages, and each access misses
 * the TLB (docs/benchmarks.md, Scheduler). Carved out of 2 MiB chunks
 * advised as huge pages, hundreds of arrays share a page.
 *
 * Blocks come in size classes, four per power of two from 64 bytes to
 * 1 MiB (at most a quarter wasted); freed blocks go on their class's list
 * and serve the next request of that class, so chunks are kept until the
 * owner is destroyed (memory peaks, it does not churn). A larger request
 * gets its own malloc, and so does every request in builds under
 * AddressSanitizer, which then checks each block's bounds. Each block
 * starts with a 16-byte header naming its class, so the payload keeps
 * 16-byte alignment.
 */
#include <stdlib.h>
#include <string.h>

#include "arena.h"

#define ARENA_CHUNK ((size_t)2 << 20)
#define ARENA_MIN_SHIFT 6u  /* 64 bytes */
#define ARENA_MAX_SHIFT 20u /* 1 MiB */
#define ARENA_HEADER 16u
#define ARENA_MALLOC 0xffu  /* header class of a block from malloc */

_Static_assert(KVRT_ARENA_CLASSES == 4 * (ARENA_MAX_SHIFT - ARENA_MIN_SHIFT) + 1,
               "one class for 64 bytes, then four per power of two up to 1 MiB");

/* The class of an n-byte block (header included) and its size; -1 above
 * the largest class. */
static int size_class(size_t n, size_t *class_bytes)
{
    if (n <= ((size_t)1 << ARENA_MIN_SHIFT)) {
        *class_bytes = (size_t)1 << ARENA_MIN_SHIFT;
        return 0;
    }
    if (n > ((size_t)1 << ARENA_MAX_SHIFT))
        return -1;
    uint32_t k = 63u - (uint32_t)__builtin_clzll((unsigned long long)(n - 1)); /* 2^k < n */
    size_t base = (size_t)1 << k, step = base / 4;
    uint32_t sub = (uint32_t)((n - 1 - base) / step); /* 0..3 */
    *class_bytes = base + (sub + 1) * step;
    return (int)((k - ARENA_MIN_SHIFT) * 4 + sub + 1);
}

static bool new_chunk(kvrt_arena_t *a)
{
    if (a->num_chunks == a->chunk_capacity) {
        uint32_t capacity = a->chunk_capacity ? 2 * a->chunk_capacity : 16;
        void **grown = realloc(a->chunks, capacity * sizeof(*grown));
        if (!grown)
            return false;
        a->chunks = grown;
        a->chunk_capacity = capacity;
    }
    /* One huge page where granted, its header included. */
    char *chunk = kvrt_calloc_large(ARENA_CHUNK - KVRT_LARGE_HEADER, 1);
    if (!chunk)
        return false;
    a->chunks[a->num_chunks++] = chunk;
    a->cursor = chunk;
    a->left = ARENA_CHUNK - KVRT_LARGE_HEADER;
    return true;
}

void *kvrt_arena_alloc(kvrt_arena_t *a, size_t bytes)
{
    size_t class_bytes = 0;
    int c = size_class(bytes + ARENA_HEADER, &class_bytes);
    uint8_t *block;
    if (c < 0 || KVRT_ASAN) { /* too large, or a sanitizer to show bounds to */
        block = malloc(bytes + ARENA_HEADER);
        if (!block)
            return NULL;
        block[0] = ARENA_MALLOC;
        return block + ARENA_HEADER;
    }
    if (a->free_list[c]) {
        block = a->free_list[c];
        memcpy(&a->free_list[c], block + ARENA_HEADER, sizeof(void *));
    } else {
        if (a->left < class_bytes && !new_chunk(a)) /* the rest of the chunk is left */
            return NULL;
        block = (uint8_t *)a->cursor;
        a->cursor += class_bytes;
        a->left -= class_bytes;
    }
    block[0] = (uint8_t)c;
    return block + ARENA_HEADER;
}

void kvrt_arena_free(kvrt_arena_t *a, void *memory)
{
    if (!memory)
        return;
    uint8_t *block = (uint8_t *)memory - ARENA_HEADER;
    if (block[0] == ARENA_MALLOC) {
        free(block);
        return;
    }
    /* The list link lives in the payload, which its owner no longer uses. */
    memcpy(memory, &a->free_list[block[0]], sizeof(void *));
    a->free_list[block[0]] = block;
}

void kvrt_arena_destroy(kvrt_arena_t *a)
{
    for (uint32_t i = 0; i < a->num_chunks; i++)
        kvrt_free_large(a->chunks[i]);
    free(a->chunks);
    memset(a, 0, sizeof(*a));
}
