/*
 * context.c - the context: versions, creation and teardown, last error,
 * logging, and the list of objects the context frees on destroy.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core.h"
#include "ctl_registry.h"
#include "host_memory.h"

#define KVRT_LAST_ERROR_BYTES 512
#define KVRT_DEFAULT_REGION_BYTES ((uint64_t)64 << 20)
#define KVRT_MAX_INDEX_KINDS 16

struct kvrt_ctx {
    char name[32];
    kvrt_log_fn log_fn;
    void *log_user_data;
    /* Read by background threads (transfer progress) on every log call. */
    _Atomic int log_level;
    /* Failures may be recorded from any thread that calls into the context
     * (the transfer engine's thread-safe calls), so last_error is written
     * and read under this lock. */
    pthread_mutex_t error_lock;
    kvrt_host_arena_t *arena;
    kvrt_owned_t owned; /* sentinel of a circular list, newest at owned.prev */
    kvrt_ctl_registry_t ctl;
    struct {
        const char *kind;
        uint32_t next;
    } indices[KVRT_MAX_INDEX_KINDS];
    char last_error[KVRT_LAST_ERROR_BYTES];
};

KVRT_EXPORT const char *kvrt_status_str(kvrt_status_t status)
{
    switch (status) {
#define KVRT_STATUS_CASE_(name, value, text)                                     \
    case name:                                                                   \
        return text;
        KVRT_STATUS_LIST(KVRT_STATUS_CASE_)
#undef KVRT_STATUS_CASE_
    }
    return "unknown status";
}

KVRT_EXPORT kvrt_status_t kvrt_version(uint32_t *version_out, const char **text_out)
{
#define KVRT_STR_(x) #x
#define KVRT_XSTR_(x) KVRT_STR_(x)
    static const char text[] = KVRT_XSTR_(KVRT_VERSION_MAJOR) "." KVRT_XSTR_(
        KVRT_VERSION_MINOR) "." KVRT_XSTR_(KVRT_VERSION_PATCH);
    if (version_out)
        *version_out = KVRT_VERSION;
    if (text_out)
        *text_out = text;
    return KVRT_OK;
}

uint64_t kvrt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint32_t kvrt_generation_start(void)
{
    uint32_t r;
    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r)) {
        uint64_t t = kvrt_now_ns();
        r = (uint32_t)t * 2654435761u ^ (uint32_t)(t >> 32);
    }
    return r & ~1u;
}

static void stderr_log(void *user_data, kvrt_log_level_t level, const char *message)
{
    static const char *const names[] = {"error", "warn", "info", "debug", "trace"};
    (void)user_data;
    fprintf(stderr, "%s: %s\n", names[level], message);
}

bool kvrt_log_enabled(const kvrt_ctx_t *ctx, kvrt_log_level_t level)
{
    return ctx && (int)level <= atomic_load_explicit(&ctx->log_level, memory_order_relaxed);
}

const char *kvrt_ctx_name(const kvrt_ctx_t *ctx) { return ctx ? ctx->name : "kvrt"; }

static void log_v(kvrt_ctx_t *ctx, kvrt_log_level_t level, const char *fmt, va_list ap)
{
    char message[1024];
    int n = snprintf(message, sizeof(message), "%s: ", ctx->name);
    if (n < 0 || (size_t)n >= sizeof(message))
        n = 0;
    vsnprintf(message + n, sizeof(message) - (size_t)n, fmt, ap);
    ctx->log_fn(ctx->log_user_data, level, message);
}

void kvrt_log(kvrt_ctx_t *ctx, kvrt_log_level_t level, const char *fmt, ...)
{
    if (!kvrt_log_enabled(ctx, level))
        return;
    va_list ap;
    va_start(ap, fmt);
    log_v(ctx, level, fmt, ap);
    va_end(ap);
}

kvrt_status_t kvrt_fail_(kvrt_ctx_t *ctx, const char *func, kvrt_status_t status,
                         const char *fmt, ...)
{
    if (!ctx)
        return status;
    char text[KVRT_LAST_ERROR_BYTES];
    int n = snprintf(text, sizeof(text), "%s: ", func);
    if (n < 0 || (size_t)n >= sizeof(text))
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + n, sizeof(text) - (size_t)n, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&ctx->error_lock);
    memcpy(ctx->last_error, text, sizeof(text));
    pthread_mutex_unlock(&ctx->error_lock);
    kvrt_log(ctx, KVRT_LOG_DEBUG, "%s (%s)", text, kvrt_status_str(status));
    return status;
}

KVRT_EXPORT const char *kvrt_ctx_last_error(const kvrt_ctx_t *ctx)
{
    /* A copy per calling thread: another thread's failure cannot rewrite
     * the text while the caller reads it. */
    static _Thread_local char copy[KVRT_LAST_ERROR_BYTES];
    if (!ctx)
        return "invalid context";
    kvrt_ctx_t *mutable_ctx = (kvrt_ctx_t *)ctx;
    pthread_mutex_lock(&mutable_ctx->error_lock);
    memcpy(copy, ctx->last_error, sizeof(copy));
    pthread_mutex_unlock(&mutable_ctx->error_lock);
    return copy;
}

KVRT_EXPORT kvrt_status_t kvrt_ctx_set_log(kvrt_ctx_t *ctx, kvrt_log_fn log_fn,
                                           void *user_data, kvrt_log_level_t level)
{
    if (!ctx)
        return KVRT_ERR_INVALID_ARG;
    if ((unsigned)level > KVRT_LOG_TRACE)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "log level %d out of range",
                         (int)level);
    kvrt_log_fn fn = log_fn ? log_fn : stderr_log;
    void *data = log_fn ? user_data : NULL;
    if (fn != ctx->log_fn || data != ctx->log_user_data) { /* see the header */
        ctx->log_fn = fn;
        ctx->log_user_data = data;
    }
    atomic_store_explicit(&ctx->log_level, (int)level, memory_order_relaxed);
    return KVRT_OK;
}

void kvrt_ctx_own(kvrt_ctx_t *ctx, kvrt_owned_t *obj, void (*destroy)(kvrt_owned_t *))
{
    obj->destroy = destroy;
    obj->next = &ctx->owned;
    obj->prev = ctx->owned.prev;
    ctx->owned.prev->next = obj;
    ctx->owned.prev = obj;
}

void kvrt_ctx_disown(kvrt_ctx_t *ctx, kvrt_owned_t *obj)
{
    (void)ctx;
    if (!obj->next)
        return;
    obj->prev->next = obj->next;
    obj->next->prev = obj->prev;
    obj->next = obj->prev = NULL;
}

void kvrt_ctx_release_index(kvrt_ctx_t *ctx, const char *kind, uint32_t index)
{
    for (int i = 0; i < KVRT_MAX_INDEX_KINDS && ctx->indices[i].kind; i++)
        if (strcmp(ctx->indices[i].kind, kind) == 0 && ctx->indices[i].next == index + 1)
            ctx->indices[i].next = index;
}

uint32_t kvrt_ctx_next_index(kvrt_ctx_t *ctx, const char *kind)
{
    for (int i = 0; i < KVRT_MAX_INDEX_KINDS; i++) {
        if (!ctx->indices[i].kind) {
            ctx->indices[i].kind = kind;
            ctx->indices[i].next = 1;
            return 0;
        }
        if (strcmp(ctx->indices[i].kind, kind) == 0)
            return ctx->indices[i].next++;
    }
    return UINT32_MAX;
}

void *kvrt_host_alloc(kvrt_ctx_t *ctx, size_t bytes)
{
    return kvrt_host_arena_alloc(ctx->arena, bytes);
}

void kvrt_host_free(kvrt_ctx_t *ctx, void *ptr) { kvrt_host_arena_free(ctx->arena, ptr); }

bool kvrt_host_region_of(const kvrt_ctx_t *ctx, const void *ptr, size_t bytes,
                         kvrt_host_region_t *region_out)
{
    return kvrt_host_arena_region_of(ctx->arena, ptr, bytes, region_out);
}

void kvrt_host_usage(const kvrt_ctx_t *ctx, uint32_t *regions_out, uint64_t *bytes_out)
{
    kvrt_host_arena_usage(ctx->arena, regions_out, bytes_out);
}

kvrt_ctl_registry_t *kvrt_ctx_ctl_registry(kvrt_ctx_t *ctx) { return &ctx->ctl; }

static kvrt_status_t check_params(const kvrt_ctx_params_t *p)
{
    const uint64_t known = KVRT_CTX_PARAM_LOG_FN | KVRT_CTX_PARAM_LOG_LEVEL |
                           KVRT_CTX_PARAM_HOST_REGION_BYTES | KVRT_CTX_PARAM_HUGEPAGES |
                           KVRT_CTX_PARAM_NAME;
    if (p->field_mask & ~known)
        return KVRT_ERR_INVALID_ARG;
    if ((p->field_mask & KVRT_CTX_PARAM_LOG_LEVEL) && (unsigned)p->log_level > KVRT_LOG_TRACE)
        return KVRT_ERR_INVALID_ARG;
    if ((p->field_mask & KVRT_CTX_PARAM_HUGEPAGES) &&
        (unsigned)p->hugepages > KVRT_HUGEPAGE_REQUIRE)
        return KVRT_ERR_INVALID_ARG;
    if ((p->field_mask & KVRT_CTX_PARAM_HOST_REGION_BYTES) &&
        (p->host_region_bytes == 0 || p->host_region_bytes > ((uint64_t)1 << 40)))
        return KVRT_ERR_INVALID_ARG;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_ctx_create_versioned(uint32_t api_version,
                                                    const kvrt_ctx_params_t *params,
                                                    kvrt_ctx_t **ctx_out)
{
    if ((api_version >> 16) != KVRT_VERSION_MAJOR ||
        (api_version & 0xffffu) > KVRT_VERSION_MINOR)
        return KVRT_ERR_VERSION_MISMATCH;
    if (!ctx_out)
        return KVRT_ERR_INVALID_ARG;
    kvrt_ctx_params_t defaults = {0};
    const kvrt_ctx_params_t *p = params ? params : &defaults;
    kvrt_status_t status = check_params(p);
    if (status != KVRT_OK)
        return status;

    kvrt_ctx_t *ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return KVRT_ERR_NO_MEMORY;
    uint64_t m = p->field_mask;
    snprintf(ctx->name, sizeof(ctx->name), "%s",
             (m & KVRT_CTX_PARAM_NAME) && p->name ? p->name : "kvrt");
    ctx->log_fn = (m & KVRT_CTX_PARAM_LOG_FN) && p->log_fn ? p->log_fn : stderr_log;
    ctx->log_user_data = (m & KVRT_CTX_PARAM_LOG_FN) ? p->log_user_data : NULL;
    atomic_init(&ctx->log_level,
                (int)((m & KVRT_CTX_PARAM_LOG_LEVEL) ? p->log_level : KVRT_LOG_WARN));
    pthread_mutex_init(&ctx->error_lock, NULL);
    ctx->owned.next = ctx->owned.prev = &ctx->owned;
    uint64_t region_bytes = (m & KVRT_CTX_PARAM_HOST_REGION_BYTES)
                                ? p->host_region_bytes
                                : KVRT_DEFAULT_REGION_BYTES;
    kvrt_hugepage_mode_t mode = (m & KVRT_CTX_PARAM_HUGEPAGES) ? p->hugepages
                                                               : KVRT_HUGEPAGE_AUTO;
    status = kvrt_host_arena_create(ctx, region_bytes, mode, &ctx->arena);
    if (status == KVRT_OK)
        status = kvrt_ctx_register_core_ctl(ctx);
    if (status != KVRT_OK) {
        kvrt_ctl_registry_free(&ctx->ctl);
        kvrt_host_arena_destroy(ctx->arena);
        pthread_mutex_destroy(&ctx->error_lock);
        free(ctx);
        return status;
    }
    *ctx_out = ctx;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_ctx_destroy(kvrt_ctx_t *ctx)
{
    if (!ctx)
        return KVRT_OK;
    /* By rank, newest first within a rank: agents, schedulers, caches, then
     * the pools under them. Destroying one object never destroys another. */
    for (uint32_t rank = 0; rank < KVRT_TEARDOWN_RANKS; rank++) {
        kvrt_owned_t *obj = ctx->owned.prev;
        while (obj != &ctx->owned) {
            kvrt_owned_t *older = obj->prev;
            if (obj->rank == rank) {
                kvrt_ctx_disown(ctx, obj);
                obj->destroy(obj);
            }
            obj = older;
        }
    }
    kvrt_ctl_registry_free(&ctx->ctl);
    kvrt_host_arena_destroy(ctx->arena);
    pthread_mutex_destroy(&ctx->error_lock);
    free(ctx);
    return KVRT_OK;
}

/* ctl nodes of the context itself. */

static void get_log_level(void *obj, kvrt_ctl_value_t *v)
{
    v->u64 = (uint64_t)atomic_load_explicit(&((kvrt_ctx_t *)obj)->log_level,
                                            memory_order_relaxed);
}

static kvrt_status_t set_log_level(void *obj, const kvrt_ctl_value_t *v)
{
    kvrt_ctx_t *ctx = obj;
    if (v->u64 > KVRT_LOG_TRACE)
        return kvrt_fail(ctx, KVRT_ERR_OVERFLOW, "log.level %llu out of range 0..4",
                         (unsigned long long)v->u64);
    atomic_store_explicit(&ctx->log_level, (int)v->u64, memory_order_relaxed);
    return KVRT_OK;
}

static void get_version(void *obj, kvrt_ctl_value_t *v)
{
    (void)obj;
    kvrt_version(NULL, &v->str);
}

static void get_host_regions(void *obj, kvrt_ctl_value_t *v)
{
    uint32_t regions = 0;
    kvrt_host_usage(obj, &regions, NULL);
    v->u64 = regions;
}

static void get_host_bytes(void *obj, kvrt_ctl_value_t *v)
{
    kvrt_host_usage(obj, NULL, &v->u64);
}

static const kvrt_ctl_node_t core_nodes[] = {
    {"log.level", KVRT_CTL_U64, get_log_level, set_log_level, KVRT_CTL_METRIC_NONE},
    {"version", KVRT_CTL_STRING, get_version, NULL, KVRT_CTL_METRIC_GAUGE,
     "Library version."},
    {"host.regions", KVRT_CTL_U64, get_host_regions, NULL, KVRT_CTL_METRIC_GAUGE,
     "Host memory regions kvrt has mapped."},
    {"host.mapped_bytes", KVRT_CTL_U64, get_host_bytes, NULL, KVRT_CTL_METRIC_GAUGE,
     "Bytes of host memory regions kvrt has mapped."},
};

kvrt_status_t kvrt_ctx_register_core_ctl(kvrt_ctx_t *ctx)
{
    return kvrt_ctl_register(ctx, "ctx", core_nodes,
                             sizeof(core_nodes) / sizeof(core_nodes[0]), ctx);
}
