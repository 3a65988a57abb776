/*
 * test_core_metrics.c - kvrt_metrics_render(): the sizing protocol, family
 * grouping across objects, counters, label escaping, and that a value read
 * through kvrt_ctl is the one rendered.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "test_helpers.h"

static char *render(kvrt_ctx_t *ctx)
{
    size_t length = 0;
    ASSERT_STATUS(KVRT_ERR_BUFFER_TOO_SMALL, kvrt_metrics_render(ctx, NULL, 0, &length));
    cr_assert_gt(length, 0);
    char *text = malloc(length + 1);
    size_t again = 0;
    ASSERT_OK(ctx, kvrt_metrics_render(ctx, text, length + 1, &again));
    cr_assert_eq(again, length);
    cr_assert_eq(strlen(text), length);
    return text;
}

static int count(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static kvrt_pool_t *named_pool(kvrt_ctx_t *ctx, const char *name, uint32_t blocks)
{
    kvrt_pool_params_t p = {.field_mask = KVRT_POOL_PARAM_NAME,
                            .layout = test_layout(16),
                            .num_blocks = blocks,
                            .name = name};
    kvrt_pool_t *pool = NULL;
    ASSERT_OK(ctx, kvrt_pool_create(ctx, &p, &pool));
    return pool;
}

Test(core_metrics, families_are_grouped_typed_and_match_ctl)
{
    kvrt_ctx_t *ctx = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(NULL, &ctx));
    kvrt_pool_t *a = named_pool(ctx, "gpu \"0\"\\x", 64);
    (void)named_pool(ctx, "gpu1", 32);
    kvrt_table_id_t t;
    ASSERT_OK(ctx, kvrt_table_create(a, &t));
    ASSERT_OK(ctx, kvrt_table_append(a, t, 40, NULL, NULL, NULL));
    char *text = render(ctx);
    /* One HELP and TYPE per family, both pools' samples under it. */
    cr_assert_eq(count(text, "# HELP kvrt_pool_free "), 1);
    cr_assert_eq(count(text, "# TYPE kvrt_pool_free gauge\n"), 1);
    uint64_t free_a = 0;
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "pool.0.free", &free_a));
    char line[128];
    snprintf(line, sizeof line, "\nkvrt_pool_free{pool=\"0\"} %llu\n",
             (unsigned long long)free_a);
    cr_assert(strstr(text, line), "%s missing from:\n%s", line, text);
    cr_assert(strstr(text, "\nkvrt_pool_free{pool=\"1\"} 31\n"));
    const char *first = strstr(text, "kvrt_pool_free{pool=\"0\"}");
    const char *second = strstr(text, "kvrt_pool_free{pool=\"1\"}");
    const char *next_family = strstr(first, "# HELP kvrt_pool_used ");
    cr_assert(first < second && second < next_family, "samples of one family are contiguous");
    /* Strings become _info gauges with escaped label values. */
    cr_assert(strstr(text, "kvrt_pool_name_info{pool=\"0\",value=\"gpu \\\"0\\\"\\\\x\"} 1\n"),
              "%s", text);
    cr_assert(strstr(text, "kvrt_ctx_version_info{value=\"1.0.0\"} 1\n"));
    /* Write-only and configuration nodes are hidden. */
    cr_assert_null(strstr(text, "log_level"));
    free(text);
    kvrt_ctx_destroy(ctx);
}

Test(core_metrics, counters_end_in_total_and_nanoseconds_become_seconds)
{
    kvrt_ctx_t *ctx = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(NULL, &ctx));
    kvrt_pool_t *pool = test_pool(ctx, 256, 16);
    kvrt_cache_t *cache = NULL;
    ASSERT_OK(ctx, kvrt_cache_create(pool, NULL, &cache));
    kvrt_sched_t *sched = NULL;
    ASSERT_OK(ctx, kvrt_sched_create(ctx, pool, cache, NULL, &sched));
    char *text = render(ctx);
    cr_assert(strstr(text, "# TYPE kvrt_cache_hit_tokens_total counter\n"), "%s", text);
    cr_assert(strstr(text, "# TYPE kvrt_cache_miss_evicted_total counter\n"));
    cr_assert(strstr(text, "# TYPE kvrt_sched_preemptions_total counter\n"));
    cr_assert(strstr(text, "# TYPE kvrt_sched_running gauge\n"));
    cr_assert(strstr(text, "# TYPE kvrt_sched_step_cpu_seconds_total counter\n"));
    cr_assert_null(strstr(text, "_ns"), "base units only");
    free(text);
    kvrt_ctx_destroy(ctx);
}

Test(core_metrics, bad_arguments_and_short_buffers_change_nothing)
{
    kvrt_ctx_t *ctx = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(NULL, &ctx));
    size_t length = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_metrics_render(NULL, NULL, 0, &length));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_metrics_render(ctx, NULL, 0, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_metrics_render(ctx, NULL, 10, &length));
    char small[16];
    memset(small, 'z', sizeof small);
    ASSERT_STATUS(KVRT_ERR_BUFFER_TOO_SMALL,
                  kvrt_metrics_render(ctx, small, sizeof small, &length));
    cr_assert_gt(length, sizeof small);
    cr_assert_eq(small[0], 'z', "a short buffer is left unchanged");
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "capacity 16"));
    kvrt_ctx_destroy(ctx);
}

static void get_widgets(void *obj, kvrt_ctl_value_t *v) { v->u64 = *(uint64_t *)obj; }
static void get_elapsed(void *obj, kvrt_ctl_value_t *v) { v->u64 = 2500000000u; }

/* What a subsystem registering nodes without metadata (or in nanoseconds)
 * gets: untyped families with a generic help line, seconds for _ns. */
static const kvrt_ctl_node_t bare_nodes[] = {
    {"widgets", KVRT_CTL_U64, get_widgets, NULL},
    {"elapsed_ns", KVRT_CTL_U64, get_elapsed, NULL, KVRT_CTL_METRIC_COUNTER, "Time."},
};

Test(core_metrics, nodes_without_metadata_are_exported_untyped)
{
    kvrt_ctx_t *ctx = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(NULL, &ctx));
    uint64_t widgets = 7;
    ASSERT_OK(ctx, kvrt_ctl_register(ctx, "tier.ssd.2", bare_nodes, 2, &widgets));
    char *text = render(ctx);
    cr_assert(strstr(text, "# HELP kvrt_tier_ssd_widgets kvrt_ctl node tier_ssd.<n>.widgets "
                           "(no description registered).\n"), "%s", text);
    cr_assert(strstr(text, "# TYPE kvrt_tier_ssd_widgets untyped\n"));
    cr_assert(strstr(text, "\nkvrt_tier_ssd_widgets{ssd=\"2\"} 7\n"));
    cr_assert(strstr(text, "\nkvrt_tier_ssd_elapsed_seconds_total{ssd=\"2\"} 2.500000000\n"),
              "%s", text);
    free(text);
    kvrt_ctl_unregister(ctx, &widgets);
    kvrt_ctx_destroy(ctx);
}
