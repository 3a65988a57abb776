/*
 * core.h - what every kvrt subsystem uses from the context: errors, logging,
 * the ctl registry, owned-object teardown and the host-memory arena.
 * Internal: nothing here is ABI.
 */
#ifndef KVRT_CORE_H
#define KVRT_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvrt/context.h"
#include "params.h"

#define KVRT_EXPORT __attribute__((visibility("default")))

/* 1 in builds under AddressSanitizer: kvrt's own allocators (arena.c,
 * large_alloc.c) then hand every array to the heap, where the sanitizer
 * sees its bounds. */
#if defined(__SANITIZE_ADDRESS__)
#define KVRT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVRT_ASAN 1
#endif
#endif
#ifndef KVRT_ASAN
#define KVRT_ASAN 0
#endif

#define KVRT_LIKELY(x) __builtin_expect(!!(x), 1)
#define KVRT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define KVRT_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define KVRT_ALWAYS_INLINE inline __attribute__((always_inline))

/*
 * Records a failure: formats the detail text into ctx's last-error buffer
 * (prefixed by the calling function's name), logs it at DEBUG, and returns
 * `status` so a caller can write `return kvrt_fail(ctx, ...)`.
 * ctx may be NULL (then only the status survives).
 */
kvrt_status_t kvrt_fail_(kvrt_ctx_t *ctx, const char *func, kvrt_status_t status,
                         const char *fmt, ...) KVRT_PRINTF(4, 5);
#define kvrt_fail(ctx, status, ...) kvrt_fail_((ctx), __func__, (status), __VA_ARGS__)

/* Logs through the context's callback when level is enabled. Thread-safe if
 * the callback is. */
void kvrt_log(kvrt_ctx_t *ctx, kvrt_log_level_t level, const char *fmt, ...)
    KVRT_PRINTF(3, 4);
bool kvrt_log_enabled(const kvrt_ctx_t *ctx, kvrt_log_level_t level);
const char *kvrt_ctx_name(const kvrt_ctx_t *ctx);

/*
 * Owned objects: every pool, cache, scheduler or agent registers itself with
 * its context so kvrt_ctx_destroy() can free what the caller left. Teardown
 * goes by rank, then newest first: transfer agents (rank 0, the default;
 * they may serve any pool) before schedulers, schedulers before caches,
 * caches before the pools under them. An object unregisters in its own
 * destroy.
 */
enum kvrt_teardown_rank {
    KVRT_TEARDOWN_FIRST = 0, /* transfer agents and anything unranked */
    KVRT_TEARDOWN_SCHED = 1,
    KVRT_TEARDOWN_CACHE = 2,
    KVRT_TEARDOWN_POOL = 3,
    KVRT_TEARDOWN_RANKS = 4
};

typedef struct kvrt_owned {
    struct kvrt_owned *prev, *next;
    void (*destroy)(struct kvrt_owned *self);
    uint32_t rank; /* enum kvrt_teardown_rank; set before kvrt_ctx_own() */
} kvrt_owned_t;

void kvrt_ctx_own(kvrt_ctx_t *ctx, kvrt_owned_t *obj,
                  void (*destroy)(kvrt_owned_t *self));
void kvrt_ctx_disown(kvrt_ctx_t *ctx, kvrt_owned_t *obj);

/* Next index for a numbered object kind ("pool", "cache"...): 0, 1, ...
 * A create that fails after taking one gives it back with
 * kvrt_ctx_release_index(), so ctl names stay dense. */
uint32_t kvrt_ctx_next_index(kvrt_ctx_t *ctx, const char *kind);
void kvrt_ctx_release_index(kvrt_ctx_t *ctx, const char *kind, uint32_t index);

/*
 * ctl registry. A subsystem registers a table of leaf nodes under a prefix
 * ("pool.0"); kvrt_ctl("pool.0.free") finds the leaf "free" and calls its
 * getter with `obj`. Values are u64, double or string.
 */
typedef enum kvrt_ctl_type {
    KVRT_CTL_U64 = 0,
    KVRT_CTL_DOUBLE = 1,
    KVRT_CTL_STRING = 2
} kvrt_ctl_type_t;

typedef union kvrt_ctl_value {
    uint64_t u64;
    double f64;
    const char *str;
} kvrt_ctl_value_t;

/*
 * How kvrt_metrics_render() exposes a node. UNTYPED (the zero value) keeps a
 * node without metadata visible as a Prometheus "untyped" sample; NONE
 * hides it (write-only triggers, configuration echoes).
 */
typedef enum kvrt_ctl_metric {
    KVRT_CTL_METRIC_UNTYPED = 0,
    KVRT_CTL_METRIC_COUNTER = 1, /* only grows (until a stats reset) */
    KVRT_CTL_METRIC_GAUGE = 2,   /* a level: may go up and down */
    KVRT_CTL_METRIC_NONE = 3
} kvrt_ctl_metric_t;

typedef struct kvrt_ctl_node {
    const char *name;
    kvrt_ctl_type_t type;
    void (*get)(void *obj, kvrt_ctl_value_t *value_out);
    /* NULL for read-only nodes. Returns a status; may kvrt_fail(). */
    kvrt_status_t (*set)(void *obj, const kvrt_ctl_value_t *value);
    /* Metrics metadata, optional (a table may leave both zero): */
    kvrt_ctl_metric_t metric;
    const char *help; /* one line, the Prometheus HELP text */
} kvrt_ctl_node_t;

/* The prefix is copied; nodes and obj must outlive the registration.
 * Returns KVRT_ERR_NO_MEMORY when the registry cannot grow. */
kvrt_status_t kvrt_ctl_register(kvrt_ctx_t *ctx, const char *prefix,
                                const kvrt_ctl_node_t *nodes, size_t count,
                                void *obj);
/* Removes every registration of obj. */
void kvrt_ctl_unregister(kvrt_ctx_t *ctx, void *obj);

/*
 * Host memory from the context's own regions: 2 MiB aligned extents
 * carved from large prefaulted regions (hugetlb when possible, else THP
 * advised). Used for data kvrt may later register for RDMA (pools, staging
 * buffers). Small bookkeeping structures use plain calloc so sanitizers see
 * them.
 */
void *kvrt_host_alloc(kvrt_ctx_t *ctx, size_t bytes);
void kvrt_host_free(kvrt_ctx_t *ctx, void *ptr);

/*
 * kvrt_calloc_large - a zeroed bookkeeping array of count * size bytes,
 * 64-byte aligned. From 2 MiB up it is mapped 2 MiB aligned and advised as
 * transparent huge pages, so arrays that hot paths index at random (block
 * metadata, block-table rows, requests) cost one TLB entry per 2 MiB, not
 * per 4 KiB; pages are faulted in when first touched, as with calloc.
 * kvrt_calloc_large_resident is the same with every page faulted in
 * before it returns: for arrays indexed by block id or hash, which are
 * used whole once a pool has cycled, so that no step takes their page
 * faults (large_alloc.c). kvrt_free_large releases either (NULL: no-op).
 * NULL on overflow or no memory.
 */
void *kvrt_calloc_large(size_t count, size_t size);
void *kvrt_calloc_large_resident(size_t count, size_t size);
void kvrt_free_large(void *ptr);
/* Bytes kvrt_calloc_large keeps before each array: an array of
 * 2 MiB - KVRT_LARGE_HEADER bytes takes exactly one huge page. */
#define KVRT_LARGE_HEADER 64u

typedef struct kvrt_host_region {
    void *base;
    size_t bytes;
    bool hugetlb;
} kvrt_host_region_t;

/* Finds the arena region holding [ptr, ptr+bytes); false when none does. */
bool kvrt_host_region_of(const kvrt_ctx_t *ctx, const void *ptr, size_t bytes,
                         kvrt_host_region_t *region_out);
/* Number of regions mapped and their total bytes. */
void kvrt_host_usage(const kvrt_ctx_t *ctx, uint32_t *regions_out,
                     uint64_t *bytes_out);

/* Monotonic clock in nanoseconds. */
uint64_t kvrt_now_ns(void);

/* A random even 32-bit value: where a new object starts the generation
 * counts of its generational ids (odd while an id is live), so that an id
 * of another object of the same kind, live or destroyed (another pool's
 * table, a recreated scheduler's request), matches one of this object's
 * slots only by chance. Not a secret: the clock stands in when the kernel
 * has no randomness to give yet. Any thread. */
uint32_t kvrt_generation_start(void);

#endif /* KVRT_CORE_H */
