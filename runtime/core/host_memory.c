/*
 * host_memory.c - a dedicated jemalloc arena whose extents come from large,
 * 2 MiB aligned, prefaulted regions that kvrt maps itself.
 *
 * Why: KV pools and transfer staging buffers must be registered with an RDMA
 * NIC. Registering per block costs minutes on big pools; registering a few
 * large regions once costs milliseconds. jemalloc gives us a real allocator
 * (size classes, reuse, thread safety) while the extent hooks keep every byte
 * it hands out inside regions we know. Hugetlb pages cut TLB misses and NIC
 * translation entries; where none are reserved we fall back to ordinary
 * pages with transparent-hugepage advice.
 */
#include "host_memory.h"

#include <errno.h>
#include <jemalloc/jemalloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif

#define KVRT_HUGE_PAGE ((size_t)2 << 20)
#define KVRT_MAX_REGIONS 4096

typedef struct region {
    char *base;
    size_t bytes;
    size_t used;   /* bump pointer: jemalloc retains what it frees */
    bool hugetlb;
} region_t;

struct kvrt_host_arena {
    extent_hooks_t hooks; /* first: jemalloc hands this pointer back to us */
    kvrt_ctx_t *ctx;
    unsigned arena_index;
    bool arena_created;
    size_t region_bytes;
    kvrt_hugepage_mode_t mode;
    pthread_mutex_t lock; /* hooks run on whichever thread allocates */
    region_t regions[KVRT_MAX_REGIONS];
    uint32_t num_regions;
    uint64_t mapped_bytes;
};

static size_t round_up(size_t value, size_t align)
{
    return (value + align - 1) & ~(align - 1);
}

/* Maps `bytes` (a multiple of 2 MiB) aligned to 2 MiB, prefaulted. */
static void *map_region(kvrt_host_arena_t *arena, size_t bytes, bool *hugetlb_out)
{
    if (arena->mode != KVRT_HUGEPAGE_OFF) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB |
                           MAP_POPULATE,
                       -1, 0);
        if (p != MAP_FAILED) {
            *hugetlb_out = true;
            return p;
        }
        if (arena->mode == KVRT_HUGEPAGE_REQUIRE) {
            kvrt_log(arena->ctx, KVRT_LOG_ERROR,
                     "hugetlb mapping of %zu bytes failed (%s) and hugepages are "
                     "required",
                     bytes, strerror(errno));
            return NULL;
        }
        kvrt_log(arena->ctx, KVRT_LOG_DEBUG,
                 "no hugetlb pages for %zu bytes (%s); using THP-advised pages",
                 bytes, strerror(errno));
    }
    /* Over-map by one huge page, then trim to a 2 MiB aligned window. */
    size_t span = bytes + KVRT_HUGE_PAGE;
    char *raw = mmap(NULL, span, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    char *aligned = (char *)round_up((uintptr_t)raw, KVRT_HUGE_PAGE);
    if (aligned > raw)
        munmap(raw, (size_t)(aligned - raw));
    char *end = aligned + bytes;
    if (raw + span > end)
        munmap(end, (size_t)(raw + span - end));
    if (arena->mode != KVRT_HUGEPAGE_OFF)
        (void)madvise(aligned, bytes, MADV_HUGEPAGE);
    /* Prefault now so the first engine step does not pay for page faults. */
    (void)madvise(aligned, bytes, MADV_POPULATE_WRITE);
    *hugetlb_out = false;
    return aligned;
}

static void *hook_alloc(extent_hooks_t *hooks, void *new_addr, size_t size,
                        size_t alignment, bool *zero, bool *commit,
                        unsigned arena_index)
{
    (void)arena_index;
    kvrt_host_arena_t *arena = (kvrt_host_arena_t *)hooks;
    if (new_addr != NULL)
        return NULL; /* we never grow in place at a fixed address */
    void *result = NULL;
    pthread_mutex_lock(&arena->lock);
    for (uint32_t i = 0; i < arena->num_regions && !result; i++) {
        region_t *r = &arena->regions[i];
        size_t start = round_up(r->used, alignment);
        if (start + size <= r->bytes) {
            r->used = start + size;
            result = r->base + start;
        }
    }
    if (!result && arena->num_regions < KVRT_MAX_REGIONS) {
        size_t bytes = round_up(size > arena->region_bytes ? size : arena->region_bytes,
                                KVRT_HUGE_PAGE);
        bool hugetlb = false;
        char *base = alignment <= KVRT_HUGE_PAGE ? map_region(arena, bytes, &hugetlb)
                                                 : NULL;
        if (base) {
            region_t *r = &arena->regions[arena->num_regions++];
            *r = (region_t){.base = base, .bytes = bytes, .used = size, .hugetlb = hugetlb};
            arena->mapped_bytes += bytes;
            result = base;
        }
    }
    pthread_mutex_unlock(&arena->lock);
    if (result) {
        /* Fresh anonymous memory is zero; reused bump space may not be. */
        if (*zero)
            memset(result, 0, size);
        *commit = true;
    }
    return result;
}

/* Opt out of unmapping: jemalloc keeps the extent for reuse. */
static bool hook_dalloc(extent_hooks_t *hooks, void *addr, size_t size,
                        bool committed, unsigned arena_index)
{
    (void)hooks, (void)addr, (void)size, (void)committed, (void)arena_index;
    return true;
}

static void hook_destroy(extent_hooks_t *hooks, void *addr, size_t size,
                         bool committed, unsigned arena_index)
{
    /* Regions are unmapped whole in kvrt_host_arena_destroy(). */
    (void)hooks, (void)addr, (void)size, (void)committed, (void)arena_index;
}

static bool hook_split(extent_hooks_t *hooks, void *addr, size_t size,
                       size_t size_a, size_t size_b, bool committed,
                       unsigned arena_index)
{
    (void)hooks, (void)addr, (void)size, (void)size_a, (void)size_b;
    (void)committed, (void)arena_index;
    return false; /* splitting inside one region is always fine */
}

static const region_t *find_region(const kvrt_host_arena_t *arena, const void *ptr,
                                   size_t bytes)
{
    const char *p = ptr;
    for (uint32_t i = 0; i < arena->num_regions; i++) {
        const region_t *r = &arena->regions[i];
        if (p >= r->base && p <= r->base + r->bytes &&
            bytes <= (size_t)(r->base + r->bytes - p))
            return r;
    }
    return NULL;
}

/* Merging across regions would make an extent no single registration
 * covers; refuse it (true = refused). */
static bool hook_merge(extent_hooks_t *hooks, void *addr_a, size_t size_a,
                       void *addr_b, size_t size_b, bool committed,
                       unsigned arena_index)
{
    (void)size_b, (void)committed, (void)arena_index;
    kvrt_host_arena_t *arena = (kvrt_host_arena_t *)hooks;
    pthread_mutex_lock(&arena->lock);
    const region_t *ra = find_region(arena, addr_a, size_a);
    const region_t *rb = find_region(arena, addr_b, size_b);
    pthread_mutex_unlock(&arena->lock);
    return ra == NULL || ra != rb;
}

kvrt_status_t kvrt_host_arena_create(kvrt_ctx_t *ctx, uint64_t region_bytes,
                                     kvrt_hugepage_mode_t mode,
                                     kvrt_host_arena_t **arena_out)
{
    kvrt_host_arena_t *arena = calloc(1, sizeof(*arena));
    if (!arena)
        return KVRT_ERR_NO_MEMORY;
    arena->ctx = ctx;
    arena->mode = mode;
    arena->region_bytes = round_up((size_t)region_bytes, KVRT_HUGE_PAGE);
    pthread_mutex_init(&arena->lock, NULL);
    arena->hooks = (extent_hooks_t){
        .alloc = hook_alloc,
        .dalloc = hook_dalloc,
        .destroy = hook_destroy,
        .split = hook_split,
        .merge = hook_merge,
    };
    extent_hooks_t *hooks = &arena->hooks;
    size_t len = sizeof(arena->arena_index);
    int err = mallctl("arenas.create", &arena->arena_index, &len, &hooks,
                      sizeof(hooks));
    if (err != 0) {
        kvrt_log(ctx, KVRT_LOG_ERROR, "jemalloc arenas.create failed: %s",
                 strerror(err));
        kvrt_host_arena_destroy(arena);
        return KVRT_ERR_NO_MEMORY;
    }
    arena->arena_created = true;
    *arena_out = arena;
    return KVRT_OK;
}

void kvrt_host_arena_destroy(kvrt_host_arena_t *arena)
{
    if (!arena)
        return;
    if (arena->arena_created) {
        char name[64];
        snprintf(name, sizeof(name), "arena.%u.destroy", arena->arena_index);
        (void)mallctl(name, NULL, NULL, NULL, 0);
    }
    for (uint32_t i = 0; i < arena->num_regions; i++)
        munmap(arena->regions[i].base, arena->regions[i].bytes);
    pthread_mutex_destroy(&arena->lock);
    free(arena);
}

void *kvrt_host_arena_alloc(kvrt_host_arena_t *arena, size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    int flags = MALLOCX_ARENA(arena->arena_index) | MALLOCX_TCACHE_NONE;
    /* Large buffers start on a huge page so one block never straddles two. */
    if (bytes >= KVRT_HUGE_PAGE)
        flags |= MALLOCX_ALIGN(KVRT_HUGE_PAGE);
    else
        flags |= MALLOCX_ALIGN(64);
    return mallocx(bytes, flags);
}

void kvrt_host_arena_free(kvrt_host_arena_t *arena, void *ptr)
{
    (void)arena;
    if (ptr)
        dallocx(ptr, MALLOCX_TCACHE_NONE);
}

bool kvrt_host_arena_region_of(const kvrt_host_arena_t *arena, const void *ptr,
                               size_t bytes, kvrt_host_region_t *region_out)
{
    kvrt_host_arena_t *mutable_arena = (kvrt_host_arena_t *)arena;
    pthread_mutex_lock(&mutable_arena->lock);
    const region_t *r = find_region(arena, ptr, bytes);
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
        *regions_out = arena->num_regions;
    if (bytes_out)
        *bytes_out = arena->mapped_bytes;
    pthread_mutex_unlock(&mutable_arena->lock);
}
