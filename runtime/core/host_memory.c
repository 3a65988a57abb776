/*
 * host_memory.c - the context's host memory: kvrt's own 2 MiB aligned
 * regions (host_regions.c) behind a lock, mapped on first use.
 *
 * Why no jemalloc here: Debian's libjemalloc.so.2 keeps its thread state in
 * static TLS (initial-exec), so a libkvrt.so that links it cannot be
 * dlopen()ed into a process that already runs, such as a Python interpreter
 * after `import numpy` ("cannot allocate memory in static TLS block"). What
 * kvrt allocates here is few and large (a pool's block array, transfer
 * staging buffers), made when an object is created and freed when it is
 * destroyed; jemalloc's size classes and thread caches serve none of it,
 * and its extent hooks only ever handed out our own regions anyway. The
 * host process remains free to run jemalloc as its malloc (LD_PRELOAD);
 * kvrt's calloc/malloc bookkeeping then uses it.
 *
 * Why lazy: an engine whose pools all live in GPU memory never asks for host
 * memory, so creating a context maps and prefaults nothing.
 */
#include "host_memory.h"

#include <pthread.h>
#include <stdlib.h>

#include "host_regions.h"

struct kvrt_host_arena {
    pthread_mutex_t lock; /* transfer threads may allocate staging buffers */
    kvrt_region_set_t regions;
};

kvrt_status_t kvrt_host_arena_create(kvrt_ctx_t *ctx, uint64_t region_bytes,
                                     kvrt_hugepage_mode_t mode,
                                     kvrt_host_arena_t **arena_out)
{
    kvrt_host_arena_t *arena = calloc(1, sizeof(*arena));
    if (!arena)
        return KVRT_ERR_NO_MEMORY;
    pthread_mutex_init(&arena->lock, NULL);
    kvrt_region_set_init(&arena->regions, ctx, (size_t)region_bytes, mode);
    *arena_out = arena;
    return KVRT_OK;
}

void kvrt_host_arena_destroy(kvrt_host_arena_t *arena)
{
    if (!arena)
        return;
    kvrt_region_set_release(&arena->regions);
    pthread_mutex_destroy(&arena->lock);
    free(arena);
}

void *kvrt_host_arena_alloc(kvrt_host_arena_t *arena, size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    /* Large buffers start on a huge page so one block never straddles two;
     * small ones on a cache line. */
    size_t alignment = bytes >= KVRT_HUGE_PAGE ? KVRT_HUGE_PAGE : 64;
    pthread_mutex_lock(&arena->lock);
    void *p = kvrt_region_set_alloc(&arena->regions, bytes, alignment);
    pthread_mutex_unlock(&arena->lock);
    return p;
}

void kvrt_host_arena_free(kvrt_host_arena_t *arena, void *ptr)
{
    if (!ptr)
        return;
    pthread_mutex_lock(&arena->lock);
    bool freed = kvrt_region_set_free(&arena->regions, ptr);
    pthread_mutex_unlock(&arena->lock);
    if (!freed) /* a pointer this arena never handed out: a kvrt bug */
        kvrt_log(arena->regions.ctx, KVRT_LOG_ERROR, "host free of %p: not an allocation",
                 ptr);
}

bool kvrt_host_arena_region_of(const kvrt_host_arena_t *arena, const void *ptr,
                               size_t bytes, kvrt_host_region_t *region_out)
{
    kvrt_host_arena_t *mutable_arena = (kvrt_host_arena_t *)arena;
    pthread_mutex_lock(&mutable_arena->lock);
    const kvrt_region_t *r = kvrt_region_set_find(&arena->regions, ptr, bytes);
    if (r && region_out)
        *region_out = (kvrt_host_region_t){.base = r->base, .bytes = r->bytes,
                                           .hugetlb = r->hugetlb};
    pthread_mutex_unlock(&mutable_arena->lock);
    return r != NULL;
}

void kvrt_host_arena_usage(const kvrt_host_arena_t *arena, uint32_t *regions_out,
                           uint64_t *bytes_out)
{
    kvrt_host_arena_t *mutable_arena = (kvrt_host_arena_t *)arena;
    pthread_mutex_lock(&mutable_arena->lock);
    if (regions_out)
        *regions_out = arena->regions.num_regions;
    if (bytes_out)
        *bytes_out = arena->regions.mapped_bytes;
    pthread_mutex_unlock(&mutable_arena->lock);
}
