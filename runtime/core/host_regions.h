/*
 * host_regions.h - large 2 MiB aligned, prefaulted host regions that kvrt
 * maps itself, and a first-fit allocator over them. Internal to
 * runtime/core: host_memory.c is the only user (large_alloc.c maps with
 * kvrt_map_aligned()). Not thread-safe; the caller
 * holds its lock.
 */
#ifndef KVRT_HOST_REGIONS_H
#define KVRT_HOST_REGIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

#define KVRT_HUGE_PAGE ((size_t)2 << 20)

/* Anonymous memory of `bytes` (a multiple of 2 MiB) at a 2 MiB aligned
 * address, zero, not yet faulted in; munmap() releases it. NULL when
 * mmap fails. */
void *kvrt_map_aligned(size_t bytes);

/* One live allocation inside a region, as an offset from its base. */
typedef struct kvrt_region_extent {
    size_t offset;
    size_t bytes;
} kvrt_region_extent_t;

typedef struct kvrt_region {
    char *base;
    size_t bytes;
    bool hugetlb;
    kvrt_region_extent_t *extents; /* sorted by offset, non-overlapping */
    uint32_t num_extents;
    uint32_t extent_capacity;
} kvrt_region_t;

typedef struct kvrt_region_set {
    kvrt_ctx_t *ctx; /* for log lines only */
    kvrt_hugepage_mode_t mode;
    size_t region_bytes; /* size of an ordinary region, a multiple of 2 MiB */
    kvrt_region_t *regions;
    uint32_t num_regions;
    uint32_t region_capacity;
    uint64_t mapped_bytes;
} kvrt_region_set_t;

void kvrt_region_set_init(kvrt_region_set_t *set, kvrt_ctx_t *ctx, size_t region_bytes,
                          kvrt_hugepage_mode_t mode);
/* Unmaps every region, whatever is still allocated in it. */
void kvrt_region_set_release(kvrt_region_set_t *set);

/*
 * First fit over the mapped regions at `alignment` (a power of two, at most
 * 2 MiB); maps a new region when none has room: an ordinary one, or one of
 * its own for a request larger than that. NULL when mapping fails.
 */
void *kvrt_region_set_alloc(kvrt_region_set_t *set, size_t bytes, size_t alignment);
/*
 * Frees an allocation that kvrt_region_set_alloc() returned. A region mapped
 * for one large allocation is unmapped with it; ordinary regions stay for
 * reuse. False when ptr is not the start of a live allocation.
 */
bool kvrt_region_set_free(kvrt_region_set_t *set, void *ptr);

/* The region holding [ptr, ptr + bytes), or NULL. */
const kvrt_region_t *kvrt_region_set_find(const kvrt_region_set_t *set, const void *ptr,
                                          size_t bytes);

#endif /* KVRT_HOST_REGIONS_H */
