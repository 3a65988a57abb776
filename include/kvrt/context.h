/*
 * kvrt/context.h - versions, the context, logging and introspection.
 *
 * A context (kvrt_ctx_t) owns everything kvrt allocates for one engine:
 * its host memory (mapped on first use, never at creation), its block
 * pools, caches and schedulers. Threads:
 * a context and every object made from it is used by one thread at a time
 * unless a function says otherwise; kvrt takes no lock on that path.
 */
#ifndef KVRT_CONTEXT_H
#define KVRT_CONTEXT_H

#include <stddef.h>
#include <stdint.h>

#include "kvrt/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVRT_VERSION_MAJOR 1
#define KVRT_VERSION_MINOR 0
#define KVRT_VERSION_PATCH 0
/* Encoded as major * 10000 + minor * 100 + patch. */
#define KVRT_VERSION                                                             \
    (KVRT_VERSION_MAJOR * 10000 + KVRT_VERSION_MINOR * 100 + KVRT_VERSION_PATCH)
/*
 * The API version this header describes. kvrt_ctx_create() passes it to the
 * library, which refuses a header whose major differs or whose minor is newer
 * than the library's.
 */
#define KVRT_API_VERSION ((KVRT_VERSION_MAJOR << 16) | KVRT_VERSION_MINOR)

/*
 * kvrt_version - the library's version, encoded like KVRT_VERSION.
 * Writes the dotted string ("1.0.0", static storage) to *text_out when
 * text_out is non-NULL. Safe from any thread. Errors: none.
 */
kvrt_status_t kvrt_version(uint32_t *version_out, const char **text_out);

typedef struct kvrt_ctx kvrt_ctx_t;

typedef enum kvrt_log_level {
    KVRT_LOG_ERROR = 0,
    KVRT_LOG_WARN = 1,
    KVRT_LOG_INFO = 2,
    KVRT_LOG_DEBUG = 3,
    KVRT_LOG_TRACE = 4
} kvrt_log_level_t;

/*
 * Log callback. message is NUL-terminated and valid only during the call.
 * It may be called from kvrt's background threads (transfer progress, I/O);
 * the callback must be thread-safe when those subsystems are used.
 */
typedef void (*kvrt_log_fn)(void *user_data, kvrt_log_level_t level,
                            const char *message);

typedef enum kvrt_hugepage_mode {
    KVRT_HUGEPAGE_AUTO = 0,    /* try 2 MiB hugetlb pages, then THP, then 4 KiB */
    KVRT_HUGEPAGE_OFF = 1,     /* ordinary pages (still 2 MiB aligned) */
    KVRT_HUGEPAGE_REQUIRE = 2  /* hugetlb or nothing: host-memory pool creation
                                  fails with KVRT_ERR_NO_MEMORY without it */
} kvrt_hugepage_mode_t;

enum kvrt_ctx_params_field {
    KVRT_CTX_PARAM_LOG_FN = 1u << 0,            /* log_fn and log_user_data */
    KVRT_CTX_PARAM_LOG_LEVEL = 1u << 1,
    KVRT_CTX_PARAM_HOST_REGION_BYTES = 1u << 2,
    KVRT_CTX_PARAM_HUGEPAGES = 1u << 3,
    KVRT_CTX_PARAM_NAME = 1u << 4
};

/*
 * Context parameters. A field is read only when its bit is set in
 * field_mask; a zeroed struct (or NULL) means all defaults.
 */
typedef struct kvrt_ctx_params {
    uint64_t field_mask;
    kvrt_log_fn log_fn;         /* default: messages at WARN and above to stderr */
    void *log_user_data;        /* must outlive the context (or the callback) */
    kvrt_log_level_t log_level; /* default KVRT_LOG_WARN */
    /* Size of each host region the arena maps (rounded up to 2 MiB); a
     * larger request gets a region of its own. Default 64 MiB. */
    uint64_t host_region_bytes;
    kvrt_hugepage_mode_t hugepages; /* default KVRT_HUGEPAGE_AUTO */
    const char *name;           /* copied; prefixes log lines. Default "kvrt" */
} kvrt_ctx_params_t;

/*
 * kvrt_ctx_create_versioned - do not call directly; use kvrt_ctx_create().
 * Creates a context. params may be NULL (all defaults); it is not retained.
 * *ctx_out is written only on success; destroy it with kvrt_ctx_destroy().
 * Safe from any thread (each call makes an independent context).
 * Errors: KVRT_ERR_VERSION_MISMATCH (header/library mismatch),
 * KVRT_ERR_INVALID_ARG (ctx_out NULL, unknown field bits, bad values),
 * KVRT_ERR_NO_MEMORY (the context's own bookkeeping could not be allocated;
 * creation maps no host memory).
 * Failures before a context exists have no last-error text; the status says
 * all there is.
 */
kvrt_status_t kvrt_ctx_create_versioned(uint32_t api_version,
                                        const kvrt_ctx_params_t *params,
                                        kvrt_ctx_t **ctx_out);

/* Creates a context, checking this header against the library. */
static inline kvrt_status_t kvrt_ctx_create(const kvrt_ctx_params_t *params,
                                            kvrt_ctx_t **ctx_out)
{
    return kvrt_ctx_create_versioned(KVRT_API_VERSION, params, ctx_out);
}

/*
 * kvrt_ctx_destroy - frees the context and everything still made from it
 * (pools, tables, caches, schedulers) that the caller did not destroy, and
 * returns its host memory. kvrt_ctx_destroy(NULL) is a no-op. No other call
 * on the context may run concurrently or follow. Errors: none.
 */
kvrt_status_t kvrt_ctx_destroy(kvrt_ctx_t *ctx);

/*
 * kvrt_ctx_last_error - detail text of the last failed call on this context
 * (or one of its objects), from whichever thread made it, e.g.
 * "kvrt_pool_alloc: 12 blocks requested, 3 free". "" when nothing failed
 * yet, "invalid context" for NULL. The string is a copy owned by the calling
 * thread, valid until that thread's next kvrt_ctx_last_error() call. Safe
 * from any thread.
 */
const char *kvrt_ctx_last_error(const kvrt_ctx_t *ctx);

/*
 * kvrt_ctx_set_log - replaces the log callback and level at run time.
 * log_fn NULL restores the stderr default. user_data must stay valid until
 * the callback is replaced again or the context is destroyed. Replacing the
 * callback is not safe while kvrt's background threads may log (while a
 * transfer agent exists); changing only the level (same log_fn and
 * user_data, or the "ctx.log.level" ctl node) is safe at any time.
 * Errors: KVRT_ERR_INVALID_ARG (ctx NULL, level out of range).
 */
kvrt_status_t kvrt_ctx_set_log(kvrt_ctx_t *ctx, kvrt_log_fn log_fn,
                               void *user_data, kvrt_log_level_t level);

/*
 * kvrt_ctl - the one introspection and tuning entry point, in the manner of
 * jemalloc's mallctl: name is a dotted path ("pool.0.free", "cache.0.hit_tokens",
 * "ctx.log.level"); see docs/abi.md for the namespace, the type of every
 * node and whether it is read-only.
 *
 * To read, pass old_value and *old_len equal to the node's size exactly; the
 * value is copied out. To write, pass new_value and new_len equal to the
 * node's size. Both may be done in one call (read happens first). Strings
 * read as `const char *` pointing into the context, valid until the next
 * kvrt call on it. "ctl.names" reads a `const char *` with every node name,
 * one per line.
 *
 * Errors: KVRT_ERR_INVALID_ARG (NULL name, missing length, new_len not the
 * node's size), KVRT_ERR_NOT_FOUND (no such node), KVRT_ERR_BUFFER_TOO_SMALL
 * (*old_len is not the node's size; *old_len is set to the size needed),
 * KVRT_ERR_UNSUPPORTED (write to a read-only node), KVRT_ERR_OVERFLOW
 * (written value out of range), KVRT_ERR_NO_MEMORY (building "ctl.names").
 * Nothing is changed on failure, old_value included.
 * Threads: the context's rule; reads of counters that background threads
 * update (transfer statistics) are safe at any time.
 */
kvrt_status_t kvrt_ctl(kvrt_ctx_t *ctx, const char *name, void *old_value,
                       size_t *old_len, const void *new_value, size_t new_len);

/* Convenience: read an unsigned 64-bit node. Same errors as kvrt_ctl(). */
kvrt_status_t kvrt_ctl_get_u64(kvrt_ctx_t *ctx, const char *name,
                               uint64_t *value_out);

/* Convenience: read a double node. Same errors as kvrt_ctl(). */
kvrt_status_t kvrt_ctl_get_double(kvrt_ctx_t *ctx, const char *name,
                                  double *value_out);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_CONTEXT_H */
