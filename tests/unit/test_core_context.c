/*
 * test_core_context.c - versions, context creation, last error, logging,
 * the ctl namespace, status strings.
 */
#include <string.h>

#include "test_helpers.h"

Test(core_context, version_matches_header)
{
    uint32_t version = 0;
    const char *text = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_version(&version, &text));
    cr_assert_eq(version, KVRT_VERSION);
    cr_assert_str_eq(text, "1.0.0");
}

Test(core_context, status_strings_cover_every_code)
{
#define CHECK_TEXT_(name, value, text) cr_assert_str_eq(kvrt_status_str(name), text);
    KVRT_STATUS_LIST(CHECK_TEXT_)
#undef CHECK_TEXT_
    cr_assert_str_eq(kvrt_status_str((kvrt_status_t)-9999), "unknown status");
    cr_assert(kvrt_failed(KVRT_ERR_NO_BLOCKS));
    cr_assert(!kvrt_failed(KVRT_INPROGRESS));
}

Test(core_context, newer_or_other_major_header_is_refused)
{
    kvrt_ctx_t *ctx = (kvrt_ctx_t *)0x1;
    uint32_t newer_minor = (KVRT_VERSION_MAJOR << 16) | (KVRT_VERSION_MINOR + 1);
    uint32_t other_major = ((KVRT_VERSION_MAJOR + 1) << 16);
    ASSERT_STATUS(KVRT_ERR_VERSION_MISMATCH, kvrt_ctx_create_versioned(newer_minor, NULL, &ctx));
    ASSERT_STATUS(KVRT_ERR_VERSION_MISMATCH, kvrt_ctx_create_versioned(other_major, NULL, &ctx));
    cr_assert_eq(ctx, (kvrt_ctx_t *)0x1, "ctx_out must not be written on failure");
}

Test(core_context, bad_params_are_refused)
{
    kvrt_ctx_t *ctx = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_ctx_create(NULL, NULL));
    kvrt_ctx_params_t p = {.field_mask = 1ull << 40};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_ctx_create(&p, &ctx));
    p = (kvrt_ctx_params_t){.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = 9};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_ctx_create(&p, &ctx));
    p = (kvrt_ctx_params_t){.field_mask = KVRT_CTX_PARAM_HOST_REGION_BYTES};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_ctx_create(&p, &ctx));
    cr_assert_null(ctx);
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_destroy(NULL));
    cr_assert_str_eq(kvrt_ctx_last_error(NULL), "invalid context");
}

typedef struct log_capture {
    int count;
    kvrt_log_level_t level;
    char last[512];
} log_capture_t;

static void capture_log(void *user, kvrt_log_level_t level, const char *message)
{
    log_capture_t *c = user;
    c->count++;
    c->level = level;
    strncpy(c->last, message, sizeof(c->last) - 1);
}

Test(core_context, failures_set_last_error_and_log_at_debug)
{
    log_capture_t cap = {0};
    kvrt_ctx_params_t p = {.field_mask = KVRT_CTX_PARAM_LOG_FN | KVRT_CTX_PARAM_LOG_LEVEL |
                                         KVRT_CTX_PARAM_NAME,
                           .log_fn = capture_log, .log_user_data = &cap,
                           .log_level = KVRT_LOG_DEBUG, .name = "engine0"};
    kvrt_ctx_t *ctx = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(&p, &ctx));
    cr_assert_str_eq(kvrt_ctx_last_error(ctx), "");
    kvrt_pool_t *pool = test_pool(ctx, 4, 16);
    int32_t blocks[8];
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_pool_alloc(pool, 8, blocks));
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "8 blocks requested, 3 free"),
              "last error: %s", kvrt_ctx_last_error(ctx));
    cr_assert_gt(cap.count, 0);
    cr_assert(strstr(cap.last, "engine0: "), "log line: %s", cap.last);
    cr_assert(strstr(cap.last, "not enough free KV blocks"), "log line: %s", cap.last);
    /* Above the level, nothing is logged. */
    ASSERT_OK(ctx, kvrt_ctx_set_log(ctx, capture_log, &cap, KVRT_LOG_ERROR));
    int before = cap.count;
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_pool_alloc(pool, 8, blocks));
    cr_assert_eq(cap.count, before);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_ctx_set_log(ctx, NULL, NULL, (kvrt_log_level_t)7));
    kvrt_ctx_destroy(ctx);
}

Test(core_context, ctl_reads_writes_and_checks_sizes)
{
    kvrt_ctx_t *ctx = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(NULL, &ctx));
    kvrt_pool_t *pool = test_pool(ctx, 10, 16);
    int32_t b[2];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 2, b));

    uint64_t value = 0;
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "pool.0.free", &value));
    cr_assert_eq(value, 7);
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "pool.0.used", &value));
    cr_assert_eq(value, 2);

    const char *version = NULL;
    size_t len = sizeof(version);
    ASSERT_OK(ctx, kvrt_ctl(ctx, "ctx.version", &version, &len, NULL, 0));
    cr_assert_str_eq(version, "1.0.0");

    /* Wrong size: refused, and the size needed is reported. */
    uint32_t small = 0;
    len = sizeof(small);
    ASSERT_STATUS(KVRT_ERR_BUFFER_TOO_SMALL, kvrt_ctl(ctx, "pool.0.free", &small, &len, NULL, 0));
    cr_assert_eq(len, sizeof(uint64_t));

    /* Read-write node: log level; read-only node refuses writes. */
    uint64_t level = KVRT_LOG_INFO, old = 99;
    len = sizeof(old);
    ASSERT_OK(ctx, kvrt_ctl(ctx, "ctx.log.level", &old, &len, &level, sizeof(level)));
    cr_assert_eq(old, KVRT_LOG_WARN);
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "ctx.log.level", &value));
    cr_assert_eq(value, KVRT_LOG_INFO);
    uint64_t too_high = 17;
    ASSERT_STATUS(KVRT_ERR_OVERFLOW, kvrt_ctl(ctx, "ctx.log.level", NULL, NULL, &too_high, sizeof(too_high)));
    ASSERT_STATUS(KVRT_ERR_UNSUPPORTED, kvrt_ctl(ctx, "pool.0.free", NULL, NULL, &level, sizeof(level)));
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND, kvrt_ctl_get_u64(ctx, "pool.7.free", &value));
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND, kvrt_ctl_get_u64(ctx, "pool.0", &value));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_ctl(ctx, NULL, NULL, NULL, NULL, 0));

    /* Watermark is writable and range-checked. */
    uint64_t wm = 3;
    ASSERT_OK(ctx, kvrt_ctl(ctx, "pool.0.watermark", NULL, NULL, &wm, sizeof(wm)));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.watermark_blocks, 3);
    wm = 10;
    ASSERT_STATUS(KVRT_ERR_OVERFLOW, kvrt_ctl(ctx, "pool.0.watermark", NULL, NULL, &wm, sizeof(wm)));

    const char *names = NULL;
    len = sizeof(names);
    ASSERT_OK(ctx, kvrt_ctl(ctx, "ctl.names", &names, &len, NULL, 0));
    cr_assert(strstr(names, "pool.0.free u64 ro\n"), "%s", names);
    cr_assert(strstr(names, "ctx.log.level u64 rw\n"), "%s", names);

    /* A destroyed pool's nodes disappear. */
    ASSERT_OK(ctx, kvrt_pool_free(pool, 2, b));
    ASSERT_OK(ctx, kvrt_pool_destroy(pool));
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND, kvrt_ctl_get_u64(ctx, "pool.0.free", &value));
    kvrt_ctx_destroy(ctx);
}

Test(core_context, destroy_frees_objects_left_behind)
{
    /* Under ASan/LSan this test fails if anything leaks. */
    kvrt_ctx_t *ctx = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(NULL, &ctx));
    kvrt_pool_t *a = test_pool(ctx, 64, 16);
    kvrt_pool_t *b = test_pool(ctx, 64, 32);
    kvrt_table_id_t t;
    ASSERT_OK(ctx, kvrt_table_create(a, &t));
    ASSERT_OK(ctx, kvrt_table_append(a, t, 100, NULL, NULL, NULL));
    ASSERT_OK(ctx, kvrt_table_create(b, &t));
    uint64_t regions = 0;
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "ctx.host.regions", &regions));
    cr_assert_geq(regions, 1);
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_destroy(ctx));
}
