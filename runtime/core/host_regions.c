/*
 * host_regions.c - host regions kvrt maps itself, and first-fit allocation
 * inside them.
 *
 * Why regions: KV pools and transfer staging buffers must be registered with
 * an RDMA NIC. Registering per block costs minutes on big pools; registering
 * a few large regions once costs milliseconds. Hugetlb pages cut TLB misses
 * and NIC translation entries; where none are reserved we fall back to
 * ordinary pages with transparent-hugepage advice.
 *
 * Why first fit over a sorted extent list: what lives here is few and large
 * (a pool's block array, staging buffers), allocated when an object is
 * created and freed when it is destroyed, never on the engine's step. A
 * list of a handful of extents per region is both the simplest structure
 * and fast enough; size classes and thread caches would buy nothing.
 */
#include "host_regions.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define KVRT_MAX_REGIONS 4096

static size_t round_up(size_t value, size_t align)
{
    return (value + align - 1) & ~(align - 1);
}

void *kvrt_map_aligned(size_t bytes)
{
    /* Over-map by one huge page, then trim to a 2 MiB aligned window. */
    size_t span = bytes + KVRT_HUGE_PAGE;
    char *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    char *aligned = (char *)round_up((uintptr_t)raw, KVRT_HUGE_PAGE);
    if (aligned > raw)
        munmap(raw, (size_t)(aligned - raw));
    char *end = aligned + bytes;
    if (raw + span > end)
        munmap(end, (size_t)(raw + span - end));
    return aligned;
}

/* Maps `bytes` (a multiple of 2 MiB) aligned to 2 MiB, prefaulted. */
static void *map_region(kvrt_region_set_t *set, size_t bytes, bool *hugetlb_out)
{
    if (set->mode != KVRT_HUGEPAGE_OFF) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB |
                           MAP_POPULATE,
                       -1, 0);
        if (p != MAP_FAILED) {
            *hugetlb_out = true;
            return p;
        }
        if (set->mode == KVRT_HUGEPAGE_REQUIRE) {
            kvrt_log(set->ctx, KVRT_LOG_ERROR,
                     "hugetlb mapping of %zu bytes failed (%s) and hugepages are "
                     "required",
                     bytes, strerror(errno));
            return NULL;
        }
        kvrt_log(set->ctx, KVRT_LOG_DEBUG,
                 "no hugetlb pages for %zu bytes (%s); using THP-advised pages", bytes,
                 strerror(errno));
    }
    char *aligned = kvrt_map_aligned(bytes);
    if (!aligned)
        return NULL;
    if (set->mode != KVRT_HUGEPAGE_OFF)
        (void)madvise(aligned, bytes, MADV_HUGEPAGE);
    /* Prefault now so the first engine step does not pay for page faults. */
    (void)madvise(aligned, bytes, MADV_POPULATE_WRITE);
    *hugetlb_out = false;
    return aligned;
}

void kvrt_region_set_init(kvrt_region_set_t *set, kvrt_ctx_t *ctx, size_t region_bytes,
                          kvrt_hugepage_mode_t mode)
{
    *set = (kvrt_region_set_t){.ctx = ctx,
                               .mode = mode,
                               .region_bytes = round_up(region_bytes, KVRT_HUGE_PAGE)};
}

void kvrt_region_set_release(kvrt_region_set_t *set)
{
    for (uint32_t i = 0; i < set->num_regions; i++) {
        munmap(set->regions[i].base, set->regions[i].bytes);
        free(set->regions[i].extents);
    }
    free(set->regions);
    set->regions = NULL;
    set->num_regions = set->region_capacity = 0;
    set->mapped_bytes = 0;
}

/* Makes room for one more element in a realloc'ed array (doubling, from
 * `initial`); false when out of memory, the array unchanged. */
static bool grow(void **array, uint32_t count, uint32_t *capacity, size_t element_bytes,
                 uint32_t initial)
{
    if (count < *capacity)
        return true;
    uint32_t wanted = *capacity ? *capacity * 2 : initial;
    void *grown = realloc(*array, (size_t)wanted * element_bytes);
    if (!grown)
        return false;
    *array = grown;
    *capacity = wanted;
    return true;
}

/* Inserts [offset, offset + bytes) at position `at` of the sorted list. */
static bool insert_extent(kvrt_region_t *r, uint32_t at, size_t offset, size_t bytes)
{
    if (!grow((void **)&r->extents, r->num_extents, &r->extent_capacity,
              sizeof(r->extents[0]), 8))
        return false;
    memmove(&r->extents[at + 1], &r->extents[at],
            (r->num_extents - at) * sizeof(r->extents[0]));
    r->extents[at] = (kvrt_region_extent_t){.offset = offset, .bytes = bytes};
    r->num_extents++;
    return true;
}

/* First gap in r that holds `bytes` at `alignment`. */
static void *fit_in_region(kvrt_region_t *r, size_t bytes, size_t alignment)
{
    size_t gap_start = 0;
    for (uint32_t i = 0; i <= r->num_extents; i++) {
        size_t gap_end = i < r->num_extents ? r->extents[i].offset : r->bytes;
        size_t start = round_up(gap_start, alignment);
        if (start <= gap_end && gap_end - start >= bytes)
            return insert_extent(r, i, start, bytes) ? r->base + start : NULL;
        if (i < r->num_extents)
            gap_start = r->extents[i].offset + r->extents[i].bytes;
    }
    return NULL;
}

static kvrt_region_t *map_new_region(kvrt_region_set_t *set, size_t bytes)
{
    if (set->num_regions == KVRT_MAX_REGIONS)
        return NULL;
    if (!grow((void **)&set->regions, set->num_regions, &set->region_capacity,
              sizeof(set->regions[0]), 4))
        return NULL;
    bool hugetlb = false;
    char *base = map_region(set, bytes, &hugetlb);
    if (!base)
        return NULL;
    kvrt_region_t *r = &set->regions[set->num_regions++];
    *r = (kvrt_region_t){.base = base, .bytes = bytes, .hugetlb = hugetlb};
    set->mapped_bytes += bytes;
    return r;
}

static void unmap_region(kvrt_region_set_t *set, uint32_t index)
{
    kvrt_region_t *r = &set->regions[index];
    munmap(r->base, r->bytes);
    free(r->extents);
    set->mapped_bytes -= r->bytes;
    set->regions[index] = set->regions[--set->num_regions];
}

void *kvrt_region_set_alloc(kvrt_region_set_t *set, size_t bytes, size_t alignment)
{
    if (bytes == 0 || alignment == 0 || alignment > KVRT_HUGE_PAGE ||
        (alignment & (alignment - 1)) || bytes > SIZE_MAX / 2)
        return NULL;
    for (uint32_t i = 0; i < set->num_regions; i++) {
        void *p = fit_in_region(&set->regions[i], bytes, alignment);
        if (p)
            return p;
    }
    size_t region = round_up(bytes > set->region_bytes ? bytes : set->region_bytes,
                             KVRT_HUGE_PAGE);
    kvrt_region_t *r = map_new_region(set, region);
    if (!r)
        return NULL;
    void *p = fit_in_region(r, bytes, alignment);
    if (!p)
        unmap_region(set, set->num_regions - 1);
    return p;
}

bool kvrt_region_set_free(kvrt_region_set_t *set, void *ptr)
{
    const char *p = ptr;
    for (uint32_t i = 0; i < set->num_regions; i++) {
        kvrt_region_t *r = &set->regions[i];
        if (p < r->base || p >= r->base + r->bytes)
            continue;
        size_t offset = (size_t)(p - r->base);
        uint32_t lo = 0, hi = r->num_extents;
        while (lo < hi) { /* first extent at or after offset */
            uint32_t mid = lo + (hi - lo) / 2;
            if (r->extents[mid].offset < offset)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == r->num_extents || r->extents[lo].offset != offset)
            return false;
        memmove(&r->extents[lo], &r->extents[lo + 1],
                (r->num_extents - lo - 1) * sizeof(r->extents[0]));
        r->num_extents--;
        if (r->num_extents == 0 && r->bytes > set->region_bytes)
            unmap_region(set, i);
        return true;
    }
    return false;
}

const kvrt_region_t *kvrt_region_set_find(const kvrt_region_set_t *set, const void *ptr,
                                          size_t bytes)
{
    const char *p = ptr;
    for (uint32_t i = 0; i < set->num_regions; i++) {
        const kvrt_region_t *r = &set->regions[i];
        if (p >= r->base && p <= r->base + r->bytes &&
            bytes <= (size_t)(r->base + r->bytes - p))
            return r;
    }
    return NULL;
}
