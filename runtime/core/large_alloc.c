/*
 * large_alloc.c - kvrt_calloc_large: bookkeeping arrays that hot loops
 * index at random, on transparent huge pages where the host grants them.
 *
 * Why: with tens of thousands of running requests, a scheduler step reads
 * one scattered entry in each of several arrays of tens of megabytes (block
 * metadata, block-table rows, requests). On 4 KiB pages nearly every such
 * read also misses the TLB, and a page walk (under virtualization a
 * two-dimensional one) adds to the cache miss it precedes.
 * madvise(MADV_HUGEPAGE) is only a hint: with THP off the memory works the
 * same on small pages.
 *
 * Why mmap and not aligned_alloc + memset: zeroing would fault in every
 * page at creation, and block-table rows are sized for the longest request
 * in every row; mapped memory is zero and faulted in as it is used, like
 * the calloc it replaces. Under AddressSanitizer everything goes through
 * calloc, so the sanitizer still sees every array.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core.h"
#include "host_regions.h"

#if defined(__SANITIZE_ADDRESS__)
#define LARGE_ALLOC_MAPS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LARGE_ALLOC_MAPS 0
#endif
#endif
#ifndef LARGE_ALLOC_MAPS
#define LARGE_ALLOC_MAPS 1
#endif

/* The mapped size of a large array; 0 for one that calloc serves. */
static size_t mapped_bytes(size_t count, size_t size)
{
    size_t bytes = count * size;
    if (!LARGE_ALLOC_MAPS || bytes < KVRT_HUGE_PAGE)
        return 0;
    return (bytes + KVRT_HUGE_PAGE - 1) & ~(KVRT_HUGE_PAGE - 1);
}

void *kvrt_calloc_large(size_t count, size_t size)
{
    if (size && count > (SIZE_MAX - KVRT_HUGE_PAGE) / size)
        return NULL;
    size_t bytes = mapped_bytes(count, size);
    if (!bytes) { /* heap memory, 64-byte aligned (calloc gives 16) */
        size_t padded = (count * size + 63) & ~(size_t)63;
        void *p = aligned_alloc(64, padded ? padded : 64);
        if (p)
            memset(p, 0, padded);
        return p;
    }
    void *p = kvrt_map_aligned(bytes);
    if (p)
        (void)madvise(p, bytes, MADV_HUGEPAGE); /* before the first touch */
    return p;
}

void kvrt_free_large(void *ptr, size_t count, size_t size)
{
    if (!ptr)
        return;
    size_t bytes = mapped_bytes(count, size);
    if (bytes)
        munmap(ptr, bytes);
    else
        free(ptr);
}
