/*
 * suite_memory.c - what a scattered read costs on this host: random
 * one-line reads over arrays of 16 MiB, 256 MiB and 2 GiB (the first two
 * with --quick), each with and without the reads fetched ahead, on
 * transparent huge pages against small pages in the same run.
 *
 * Why: the scheduler's figures at 32K running sequences, and the prefix
 * cache's at every size, are set by reads scattered over arrays of tens
 * to hundreds of megabytes (block metadata, the cache's index and block
 * names, requests' token lines), which kvrt fetches ahead and keeps on
 * transparent huge pages (core/large_alloc.c). How much either helps is
 * the host's: under some hypervisors a guest's huge page is still mapped
 * by small pages underneath, so its page walks are as long as on small
 * pages, and a fetch ahead that misses the TLB holds the core until the
 * walk ends. Each figure here is such a read on this host, so that the
 * scheduler's figures can be read against it (docs/benchmarks.md).
 *
 * The read loop: 4M reads at indices drawn beforehand (so the index
 * stream itself is sequential), about 10 ns of dependent arithmetic
 * between reads, the read 16 iterations ahead fetched with a prefetch
 * instruction in the fetched-ahead mode. Thread CPU time, best of three
 * passes (the first also warms the TLB's share of what fits).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bench.h"

#define MEMORY_READS (1u << 22)
#define MEMORY_AHEAD 16u
#define MEMORY_PASSES 3
#define HUGE_PAGE (2ul << 20)

typedef struct region {
    char *base;      /* aligned to a huge page */
    void *mapping;
    size_t mapped;
} region_t;

/* bytes of populated anonymous memory, huge-page aligned, advised as huge
 * pages or not; NULL base on failure. */
static region_t region_open(size_t bytes, bool huge)
{
    region_t r = {0};
    r.mapped = bytes + HUGE_PAGE;
    r.mapping = mmap(NULL, r.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r.mapping == MAP_FAILED) {
        r.mapping = NULL;
        return r;
    }
    char *base = (char *)(((uintptr_t)r.mapping + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    /* Advice before the first touch: it decides how the pages fault in. */
    madvise(base, bytes, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
    memset(base, 1, bytes);
    r.base = base;
    return r;
}

static void region_close(region_t *r)
{
    if (r->mapping)
        munmap(r->mapping, r->mapped);
    *r = (region_t){0};
}

/* Kilobytes of r's mapping the kernel backs with huge pages
 * (/proc/self/smaps' AnonHugePages of the mapping); -1 if unknown. */
static long huge_kb(const region_t *r)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return -1;
    char line[256];
    bool ours = false;
    long kb = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) { /* a mapping's first line */
            ours = lo <= (uintptr_t)r->base && (uintptr_t)r->base < hi;
            continue;
        }
        if (ours && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
            break;
    }
    fclose(f);
    return kb;
}

/* ns per read over r's first `bytes`, best of the passes. */
static double read_ns(const region_t *r, size_t bytes, const uint32_t *lines, bool ahead)
{
    const uint32_t mask = (uint32_t)(bytes / 64) - 1; /* bytes: a power of two */
    const char *p = r->base;
    uint64_t sum = 0;
    double best = 0;
    for (int pass = 0; pass < MEMORY_PASSES; pass++) {
        uint64_t start = bench_thread_cpu_ns();
        for (uint32_t i = 0; i < MEMORY_READS; i++) {
            if (ahead) {
                const uint32_t next = lines[(i + MEMORY_AHEAD) % MEMORY_READS] & mask;
                __builtin_prefetch(p + (size_t)next * 64);
            }
            sum += (unsigned char)p[(size_t)(lines[i] & mask) * 64];
            for (int k = 0; k < 10; k++) /* work between reads, as a loop has */
                sum = sum * 31 + (uint64_t)k;
        }
        double ns = (double)(bench_thread_cpu_ns() - start) / MEMORY_READS;
        if (pass == 0 || ns < best)
            best = ns;
    }
    bench_consume(&sum);
    return best;
}

static int run_memory(const bench_options_t *o)
{
    static const unsigned sizes_mib[] = {16, 256, 2048};
    const int count = o->quick ? 2 : 3;
    uint32_t *lines = malloc(MEMORY_READS * sizeof(uint32_t));
    if (!lines)
        return -1;
    uint64_t x = 0x9E3779B97F4A7C15ull; /* xorshift64: the same indices every run */
    for (uint32_t i = 0; i < MEMORY_READS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        lines[i] = (uint32_t)(x >> 32);
    }
    int rc = 0;
    for (int s = 0; s < count && rc == 0; s++) {
        const size_t bytes = (size_t)sizes_mib[s] << 20;
        double ns[2][2]; /* [huge][ahead] */
        long kb[2];
        for (int huge = 0; huge < 2 && rc == 0; huge++) {
            region_t r = region_open(bytes, huge);
            if (!r.base) {
                fprintf(stderr, "memory suite: cannot map %u MiB\n", sizes_mib[s]);
                rc = -1;
                break;
            }
            kb[huge] = huge_kb(&r);
            for (int ahead = 0; ahead < 2; ahead++)
                ns[huge][ahead] = read_ns(&r, bytes, lines, ahead);
            region_close(&r);
        }
        if (rc)
            break;
        for (int ahead = 0; ahead < 2; ahead++) {
            char small_name[64], huge_name[64], note[160];
            const char *mode = ahead ? "fetched_ahead" : "unfetched";
            snprintf(small_name, sizeof small_name, "memory.random_read.%umib.%s.small_pages",
                     sizes_mib[s], mode);
            snprintf(huge_name, sizeof huge_name, "memory.random_read.%umib.%s.huge_pages",
                     sizes_mib[s], mode);
            snprintf(note, sizeof note,
                     "AnonHugePages of the array: %ld kB advised huge, %ld kB advised small "
                     "(of %u MiB)",
                     kb[1], kb[0], sizes_mib[s]);
            bench_report(&(bench_figure_t){.name = small_name, .unit = "ns/read",
                                           .value = ns[0][ahead], .lower_is_better = true});
            bench_report(&(bench_figure_t){.name = huge_name, .unit = "ns/read",
                                           .value = ns[1][ahead], .baseline_name = small_name,
                                           .baseline_value = ns[0][ahead],
                                           .lower_is_better = true, .note = note});
        }
    }
    free(lines);
    return rc;
}

KVRT_BENCH_SUITE(memory,
                 "random reads over 16 MiB-2 GiB, fetched ahead or not, huge vs small pages",
                 run_memory, false)
