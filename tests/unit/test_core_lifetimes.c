/*
 * test_core_lifetimes.c - objects built on others: a pool or cache cannot be
 * destroyed under a scheduler, a scheduler refuses a cache of another pool,
 * and kvrt_ctx_destroy() frees everything in a safe order whatever the
 * creation order was. Also pins failed calls that must change nothing.
 */
#include <string.h>

#include "kvrt/cache.h"
#include "kvrt/sched.h"
#include "test_helpers.h"

static kvrt_ctx_t *ctx;
static void setup(void) { cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK); }
static void teardown(void) { kvrt_ctx_destroy(ctx); }
TestSuite(core_lifetimes, .init = setup, .fini = teardown);

Test(core_lifetimes, pool_and_cache_refuse_destruction_under_a_scheduler)
{
    kvrt_pool_t *pool = test_pool(ctx, 64, 16);
    kvrt_cache_t *cache = NULL;
    ASSERT_OK(ctx, kvrt_cache_create(pool, NULL, &cache));
    kvrt_sched_t *sched = NULL;
    ASSERT_OK(ctx, kvrt_sched_create(ctx, pool, cache, NULL, &sched));
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_cache_destroy(cache));
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "scheduler"), "%s", kvrt_ctx_last_error(ctx));
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_pool_destroy(pool));
    /* Both still work after the refusals. */
    uint64_t blocks = 0;
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "pool.0.blocks", &blocks));
    cr_assert_eq(blocks, 64);
    ASSERT_OK(ctx, kvrt_sched_destroy(sched));
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_pool_destroy(pool)); /* the cache is attached */
    ASSERT_OK(ctx, kvrt_cache_destroy(cache));
    ASSERT_OK(ctx, kvrt_pool_destroy(pool));
}

Test(core_lifetimes, scheduler_refuses_a_cache_of_another_pool)
{
    kvrt_pool_t *a = test_pool(ctx, 64, 16);
    kvrt_pool_t *b = test_pool(ctx, 64, 16);
    kvrt_cache_t *cache_b = NULL;
    ASSERT_OK(ctx, kvrt_cache_create(b, NULL, &cache_b));
    kvrt_sched_t *sched = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create(ctx, a, cache_b, NULL, &sched));
    cr_assert_null(sched);
    kvrt_ctx_t *other = NULL;
    ASSERT_STATUS(KVRT_OK, kvrt_ctx_create(NULL, &other));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_sched_create(other, a, NULL, NULL, &sched));
    kvrt_ctx_destroy(other);
    /* A refused create leaves the numbering dense: the next is sched.0. */
    ASSERT_OK(ctx, kvrt_sched_create(ctx, b, cache_b, NULL, &sched));
    uint64_t steps = 99;
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "sched.0.steps", &steps));
    cr_assert_eq(steps, 0);
}

Test(core_lifetimes, context_teardown_frees_in_a_safe_order)
{
    /* Created in the "wrong" order: the scheduler's pool and cache are
     * newer than nothing else, and a second pool comes last. Under ASan,
     * a use-after-free or leak in teardown fails this test. */
    kvrt_pool_t *pool = test_pool(ctx, 128, 16);
    kvrt_cache_t *cache = NULL;
    ASSERT_OK(ctx, kvrt_cache_create(pool, NULL, &cache));
    kvrt_sched_t *sched = NULL;
    ASSERT_OK(ctx, kvrt_sched_create(ctx, pool, cache, NULL, &sched));
    int32_t prompt[40];
    for (int i = 0; i < 40; i++)
        prompt[i] = i;
    kvrt_seq_params_t sp = {.prompt = prompt, .prompt_len = 40, .max_new_tokens = 8};
    kvrt_seq_id_t id;
    ASSERT_OK(ctx, kvrt_seq_add(sched, &sp, &id));
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(ctx, kvrt_sched_step(sched, 1, &plan));
    test_pool(ctx, 32, 16);
    kvrt_ctx_destroy(ctx);
    ctx = NULL;
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK); /* for teardown */
}

Test(core_lifetimes, adopt_refuses_a_block_listed_more_often_than_held)
{
    kvrt_pool_t *pool = test_pool(ctx, 16, 4);
    int32_t b;
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 1, &b));
    kvrt_table_id_t t;
    ASSERT_OK(ctx, kvrt_table_create(pool, &t));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_table_adopt(pool, t, 2, (int32_t[]){b, b}));
    uint32_t rc = 0, tokens = 9;
    ASSERT_OK(ctx, kvrt_pool_refcount(pool, b, &rc));
    cr_assert_eq(rc, 1);
    ASSERT_OK(ctx, kvrt_table_view(pool, t, NULL, NULL, &tokens));
    cr_assert_eq(tokens, 0);
    /* Held twice, listed twice: fine. */
    ASSERT_OK(ctx, kvrt_pool_ref(pool, 1, &b));
    ASSERT_OK(ctx, kvrt_table_adopt(pool, t, 2, (int32_t[]){b, b}));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, t));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
    kvrt_pool_info_t info;
    kvrt_pool_info(pool, &info);
    cr_assert_eq(info.used_blocks, 0);
    /* The null id is a no-op to destroy, like destroy(NULL). */
    ASSERT_OK(ctx, kvrt_table_destroy(pool, 0));
}

Test(core_lifetimes, export_reports_the_width_it_needs)
{
    kvrt_pool_t *pool = test_pool(ctx, 16, 4);
    kvrt_table_id_t t;
    ASSERT_OK(ctx, kvrt_table_create(pool, &t));
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 9, NULL, NULL, NULL)); /* 3 blocks */
    int32_t row[8] = {0};
    uint32_t needed = 0;
    ASSERT_STATUS(KVRT_ERR_BUFFER_TOO_SMALL, kvrt_table_export(pool, t, row, 2, 0, &needed));
    cr_assert_eq(needed, 3);
    ASSERT_STATUS(KVRT_ERR_BUFFER_TOO_SMALL, kvrt_table_export(pool, t, row, 4, 6, &needed));
    cr_assert_eq(needed, 6);
    cr_assert_eq(row[0], 0, "blocks_out written on failure");
}

Test(core_lifetimes, a_refused_ctl_write_leaves_old_value_untouched)
{
    uint64_t old = 12345, level = 99;
    size_t len = sizeof(old);
    ASSERT_STATUS(KVRT_ERR_OVERFLOW, kvrt_ctl(ctx, "ctx.log.level", &old, &len, &level, sizeof(level)));
    cr_assert_eq(old, 12345);
    uint32_t small = 1;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_ctl(ctx, "ctx.log.level", NULL, NULL, &small, sizeof(small)));
    uint64_t value = 0;
    ASSERT_OK(ctx, kvrt_ctl_get_u64(ctx, "ctx.log.level", &value));
    cr_assert_eq(value, KVRT_LOG_WARN);
}

Test(core_lifetimes, layout_offsets_that_would_wrap_are_refused)
{
    kvrt_kv_layout_t big = {.num_layers = 1024, .num_kv_heads = 1024, .head_dim = 1024,
                            .tokens_per_block = 4096};
    uint64_t offset = 7;
    ASSERT_STATUS(KVRT_ERR_OVERFLOW,
                  kvrt_layout_page_offset(&big, 0x7fffffff, 0x7ffffffe, 1023, KVRT_V, &offset));
    cr_assert_eq(offset, 7);
    kvrt_extent_t ext[2048];
    uint32_t n = 0;
    ASSERT_STATUS(KVRT_ERR_OVERFLOW, kvrt_layout_block_extents(&big, 0x7fffffff, 5, ext, 2048, &n));
}
