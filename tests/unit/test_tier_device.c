/*
 * test_tier_device.c - a tier over a pool of engine (device) memory: the
 * engine hands over its stream, a sync and the pinning of the host slots;
 * create checks them, pins once and unpins at destroy; every copy is
 * waited for on the engine's stream before it counts; a copy the device
 * refuses is dropped and counted, the block never leaks and the engine
 * keeps running. The pool here is engine memory the CUDA movers refuse
 * (host memory, or no CUDA in this build), so what runs is the failure
 * path; the copies themselves need a GPU and are not exercised here.
 */
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"

#include "../tier_helpers.h"

static void *engine_memory;

typedef struct fake_device {
    int syncs, pins, unpins, fail_pin;
    void *pinned;
    uint64_t pinned_bytes;
} fake_device_t;

static fake_device_t dev;

static int dev_sync(void *user, kvrt_cuda_stream_t *stream)
{
    (void)stream;
    __atomic_add_fetch(&((fake_device_t *)user)->syncs, 1, __ATOMIC_RELAXED);
    return 0;
}

static int dev_pin(void *user, void *addr, uint64_t bytes)
{
    fake_device_t *d = user;
    d->pins++;
    if (d->fail_pin)
        return 1;
    d->pinned = addr;
    d->pinned_bytes = bytes;
    return 0;
}

static void dev_unpin(void *user, void *addr)
{
    fake_device_t *d = user;
    cr_assert_eq(addr, d->pinned, "unpinned another address than was pinned");
    d->unpins++;
}

static const kvrt_tier_device_t device = {
    .stream = NULL, .sync = dev_sync, .pin = dev_pin, .unpin = dev_unpin, .user = &dev};

static void device_setup(void)
{
    setup();
    memset(&dev, 0, sizeof(dev));
    kvrt_kv_layout_t layout = test_layout(TPB);
    uint64_t block_bytes;
    ASSERT_OK(ctx, kvrt_layout_block_bytes(&layout, &block_bytes));
    cr_assert_eq(posix_memalign(&engine_memory, 4096, 17 * block_bytes), 0);
    kvrt_pool_params_t p = {.field_mask = KVRT_POOL_PARAM_BASE | KVRT_POOL_PARAM_WATERMARK,
                            .layout = layout,
                            .num_blocks = 17,
                            .base = engine_memory,
                            .base_bytes = 17 * block_bytes,
                            .watermark_blocks = 0};
    ASSERT_OK(ctx, kvrt_pool_create(ctx, &p, &pool));
    ASSERT_OK(ctx, kvrt_cache_create(pool, NULL, &cache));
}

static void device_teardown(void)
{
    teardown();
    free(engine_memory);
}

TestSuite(tier_device, .init = device_setup, .fini = device_teardown);

static kvrt_tier_params_t params(const kvrt_tier_device_t *d)
{
    return (kvrt_tier_params_t){
        .field_mask = KVRT_TIER_PARAM_HOST_BLOCKS | KVRT_TIER_PARAM_QUEUE_DEPTH |
                      (d ? KVRT_TIER_PARAM_DEVICE : 0),
        .host_blocks = 32,
        .queue_depth = 4,
        .device = d};
}

Test(tier_device, engine_memory_needs_a_device_or_the_host_pool_flag)
{
    kvrt_tier_params_t p = params(NULL);
    cr_assert_eq(kvrt_tier_create(cache, &p, &tier), KVRT_ERR_UNSUPPORTED);
    kvrt_tier_device_t no_sync = device;
    no_sync.sync = NULL;
    p = params(&no_sync);
    cr_assert_eq(kvrt_tier_create(cache, &p, &tier), KVRT_ERR_INVALID_ARG);
    p = params(&device);
    p.device = NULL;
    cr_assert_eq(kvrt_tier_create(cache, &p, &tier), KVRT_ERR_INVALID_ARG);
    cr_assert_eq(dev.pins, 0);
    tier = NULL;
}

Test(tier_device, a_device_for_a_host_pool_is_refused)
{
    kvrt_pool_t *host_pool = test_pool(ctx, 9, TPB);
    kvrt_cache_t *host_cache;
    ASSERT_OK(ctx, kvrt_cache_create(host_pool, NULL, &host_cache));
    kvrt_tier_params_t p = params(&device);
    kvrt_tier_t *t = NULL;
    cr_assert_eq(kvrt_tier_create(host_cache, &p, &t), KVRT_ERR_INVALID_ARG);
    ASSERT_OK(ctx, kvrt_cache_destroy(host_cache));
    ASSERT_OK(ctx, kvrt_pool_destroy(host_pool));
}

Test(tier_device, a_failed_pin_fails_the_create_and_leaves_the_cache_free)
{
    dev.fail_pin = 1;
    kvrt_tier_params_t p = params(&device);
    cr_assert_eq(kvrt_tier_create(cache, &p, &tier), KVRT_ERR_DEVICE);
    cr_assert_eq(dev.unpins, 0);
    tier = NULL;
    dev.fail_pin = 0;
    /* The failed create left no sink behind. */
    ASSERT_OK(ctx, kvrt_tier_create(cache, &p, &tier));
}

Test(tier_device, the_host_slots_are_pinned_once_and_unpinned_at_destroy)
{
    kvrt_tier_params_t p = params(&device);
    ASSERT_OK(ctx, kvrt_tier_create(cache, &p, &tier));
    cr_assert_eq(dev.pins, 1);
    cr_assert_not_null(dev.pinned);
    cr_assert_eq((uintptr_t)dev.pinned % (2u << 20), 0, "the slots are not 2 MiB aligned");
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_geq(dev.pinned_bytes, 32 * info.block_bytes);
    ASSERT_OK(ctx, kvrt_tier_destroy(tier));
    tier = NULL;
    cr_assert_eq(dev.unpins, 1);
}

Test(tier_device, a_copy_the_device_refuses_is_waited_for_dropped_and_counted)
{
    kvrt_tier_params_t p = params(&device);
    ASSERT_OK(ctx, kvrt_tier_create(cache, &p, &tier));
    prefill(100, 4);
    prefill(200, 4);
    settle();
    squeeze_past_free(4);
    kvrt_tier_stats_t s;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    cr_assert_gt(s.host.errors, 0, "no copy was attempted");
    cr_assert_eq(s.host.offloads, 0, "a refused copy counted as an offload");
    cr_assert_geq(s.host.drops, s.host.errors);
    cr_assert_eq(s.host.used_blocks, 0, "a refused copy kept its host slot");
    cr_assert_geq(__atomic_load_n(&dev.syncs, __ATOMIC_RELAXED), (int)s.host.errors,
                  "a copy was reported before its stream was synchronized");
    /* Nothing below: the prompt is recomputed, the engine goes on. */
    kvrt_tier_match_t m;
    cr_assert_eq(bring_back(100, 4, &m, NULL), 0);
    cr_assert_eq(m.host_blocks, 0);
    squeeze_past_free(0);
}
