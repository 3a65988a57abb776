/*
 * context.c - the context: versions, creation and teardown, last error,
 * logging, and the list of objects the context frees on destroy.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    kvrt_log_level_t log_level;
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

static void stderr_log(void *user_data, kvrt_log_level_t level, const char *message)
{
    static const char *const names[] = {"error", "warn", "info", "debug", "trace"};
    (void)user_data;
    fprintf(stderr, "%s: %s\n", names[level], message);
}

bool kvrt_log_enabled(const kvrt_ctx_t *ctx, kvrt_log_level_t level)
{
    return ctx && level <= ctx->log_level;
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
    int n = snprintf(ctx->last_error, sizeof(ctx->last_error), "%s: ", func);
    if (n < 0 || (size_t)n >= sizeof(ctx->last_error))
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->last_error + n, sizeof(ctx->last_error) - (size_t)n, fmt, ap);
    va_end(ap);
    kvrt_log(ctx, KVRT_LOG_DEBUG, "%s (%s)", ctx->last_error, kvrt_status_str(status));
    return status;
}

KVRT_EXPORT const char *kvrt_ctx_last_error(const kvrt_ctx_t *ctx)
{
    return ctx ? ctx->last_error : "invalid context";
}

KVRT_EXPORT kvrt_status_t kvrt_ctx_set_log(kvrt_ctx_t *ctx, kvrt_log_fn log_fn,
                                           void *user_data, kvrt_log_level_t level)
{
    if (!ctx)
        return KVRT_ERR_INVALID_ARG;
    if ((unsigned)level > KVRT_LOG_TRACE)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "log level %d out of range",
                         (int)level);
    ctx->log_fn = log_fn ? log_fn : stderr_log;
    ctx->log_user_data = log_fn ? user_data : NULL;
    ctx->log_level = level;
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
    ctx->log_level = (m & KVRT_CTX_PARAM_LOG_LEVEL) ? p->log_level : KVRT_LOG_WARN;
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
    /* Newest first: caches and schedulers before the pools under them. */
    while (ctx->owned.prev != &ctx->owned) {
        kvrt_owned_t *obj = ctx->owned.prev;
        kvrt_ctx_disown(ctx, obj);
        obj->destroy(obj);
    }
    kvrt_ctl_registry_free(&ctx->ctl);
    kvrt_host_arena_destroy(ctx->arena);
    free(ctx);
    return KVRT_OK;
}

/* ctl nodes of the context itself. */

static void get_log_level(void *obj, kvrt_ctl_value_t *v)
{
    v->u64 = (uint64_t)((kvrt_ctx_t *)obj)->log_level;
}

static kvrt_status_t set_log_level(void *obj, const kvrt_ctl_value_t *v)
{
    kvrt_ctx_t *ctx = obj;
    if (v->u64 > KVRT_LOG_TRACE)
        return kvrt_fail(ctx, KVRT_ERR_OVERFLOW, "log.level %llu out of range 0..4",
                         (unsigned long long)v->u64);
    ctx->log_level = (kvrt_log_level_t)v->u64;
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
    {"log.level", KVRT_CTL_U64, get_log_level, set_log_level},
    {"version", KVRT_CTL_STRING, get_version, NULL},
    {"host.regions", KVRT_CTL_U64, get_host_regions, NULL},
    {"host.mapped_bytes", KVRT_CTL_U64, get_host_bytes, NULL},
};

kvrt_status_t kvrt_ctx_register_core_ctl(kvrt_ctx_t *ctx)
{
    return kvrt_ctl_register(ctx, "ctx", core_nodes,
                             sizeof(core_nodes) / sizeof(core_nodes[0]), ctx);
}
