/*
 * large_alloc.c - kvrt_calloc_large and kvrt_calloc_large_resident:
 * bookkeeping arrays that hot loops index at random, on transparent huge
 * pages where the host grants them.
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
 * the calloc it replaces. Under AddressSanitizer every array is heap
 * memory (aligned_alloc, zeroed, so resident from the start in those
 * builds), so the sanitizer still checks its bounds.
 *
 * Why some arrays are resident from the start: an array indexed by block
 * id or by hash (block metadata, the prefix cache's index with its
 * explain entries, names and policy state) is in use page by page once the
 * pool has cycled through its blocks, so faulting it in lazily saves
 * nothing for long. It only moves the kernel's work into the step that
 * first touches a page: zeroing 2 MiB, and, when huge pages are
 * fragmented, compaction, which took milliseconds per fault on a
 * 32K-request scheduler with a cache.
 * Those arrays are populated at creation instead (MADV_POPULATE_WRITE,
 * Linux 5.14; a write per page where the kernel lacks it).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core.h"
#include "host_regions.h"

/* Every array is preceded by this header (one cache line, so the array
 * keeps 64-byte alignment): how its memory was obtained. */
typedef struct large_header {
    size_t mapped; /* bytes mapped from the header on; 0: from the heap */
} large_header_t;
#define LARGE_HEADER KVRT_LARGE_HEADER
_Static_assert(sizeof(large_header_t) <= LARGE_HEADER && LARGE_HEADER % 64 == 0,
               "the header fits whole lines");

/* Faults in every page of [base, base + bytes) for writing; false when
 * the memory is not there (the array is refused at creation rather than
 * failing a step later). */
static bool populate(char *base, size_t bytes)
{
#ifdef MADV_POPULATE_WRITE
    if (madvise(base, bytes, MADV_POPULATE_WRITE) == 0)
        return true;
    if (errno != EINVAL) /* EINVAL: a kernel before 5.14 */
        return false;
#endif
    /* A write, not a read: a read would map the shared zero page. */
    for (size_t off = 0; off < bytes; off += 4096)
        ((volatile char *)base)[off] = 0;
    return true;
}

static void *calloc_large(size_t count, size_t size, bool resident)
{
    if (size && count > (SIZE_MAX - 2 * KVRT_HUGE_PAGE) / size)
        return NULL;
    size_t bytes = LARGE_HEADER + count * size;
    char *base;
    size_t mapped = 0;
    if (KVRT_ASAN || bytes < KVRT_HUGE_PAGE) { /* the heap, 64-byte aligned */
        bytes = (bytes + 63) & ~(size_t)63;
        base = aligned_alloc(64, bytes);
        if (base)
            memset(base, 0, bytes);
    } else {
        mapped = (bytes + KVRT_HUGE_PAGE - 1) & ~(KVRT_HUGE_PAGE - 1);
        base = kvrt_map_aligned(mapped);
        if (base)
            (void)madvise(base, mapped, MADV_HUGEPAGE); /* before the first touch */
        if (base && resident && !populate(base, mapped)) {
            munmap(base, mapped);
            base = NULL;
        }
    }
    if (!base)
        return NULL;
    ((large_header_t *)base)->mapped = mapped;
    return base + LARGE_HEADER;
}

void *kvrt_calloc_large(size_t count, size_t size) { return calloc_large(count, size, false); }

void *kvrt_calloc_large_resident(size_t count, size_t size)
{
    return calloc_large(count, size, true);
}

void kvrt_free_large(void *ptr)
{
    if (!ptr)
        return;
    char *base = (char *)ptr - LARGE_HEADER;
    size_t mapped = ((const large_header_t *)base)->mapped;
    if (mapped)
        munmap(base, mapped);
    else
        free(base);
}
