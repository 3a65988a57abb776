/*
 * test_core_threads.c - the parts of a context that kvrt's background
 * threads touch: failures recorded and last errors read from several
 * threads at once, and the log level changed while threads log. Run under
 * ThreadSanitizer in CI (label "threads").
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/core.h"
#include "test_helpers.h"

#define THREADS 4
#define ROUNDS 2000

static kvrt_ctx_t *ctx;
static int log_lines;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static void count_log(void *user, kvrt_log_level_t level, const char *message)
{
    (void)user, (void)level, (void)message;
    pthread_mutex_lock(&log_lock);
    log_lines++;
    pthread_mutex_unlock(&log_lock);
}

static void *fail_often(void *arg)
{
    int id = (int)(intptr_t)arg;
    for (int i = 0; i < ROUNDS; i++) {
        kvrt_status_t st = kvrt_fail(ctx, KVRT_ERR_TIMEOUT, "worker %d round %d", id, i);
        if (st != KVRT_ERR_TIMEOUT)
            return (void *)1;
        const char *text = kvrt_ctx_last_error(ctx);
        /* Whole messages only: never a mix of two writers. */
        int who = -1, round = -1;
        if (sscanf(text, "fail_often: worker %d round %d", &who, &round) != 2 || who < 0 ||
            who >= THREADS || round < 0 || round >= ROUNDS)
            return (void *)2;
        kvrt_log(ctx, KVRT_LOG_INFO, "worker %d", id);
    }
    return NULL;
}

Test(core_threads, failures_and_logging_from_many_threads)
{
    kvrt_ctx_params_t p = {.field_mask = KVRT_CTX_PARAM_LOG_FN | KVRT_CTX_PARAM_LOG_LEVEL,
                           .log_fn = count_log, .log_level = KVRT_LOG_INFO};
    cr_assert_eq(kvrt_ctx_create(&p, &ctx), KVRT_OK);
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++)
        cr_assert_eq(pthread_create(&threads[t], NULL, fail_often, (void *)(intptr_t)t), 0);
    /* Meanwhile: flip the log level back and forth through ctl. */
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t level = i % 2 ? KVRT_LOG_INFO : KVRT_LOG_ERROR;
        cr_assert_eq(kvrt_ctl(ctx, "ctx.log.level", NULL, NULL, &level, sizeof(level)), KVRT_OK);
    }
    for (int t = 0; t < THREADS; t++) {
        void *result = NULL;
        pthread_join(threads[t], &result);
        cr_assert_null(result, "thread %d saw a torn or foreign message (%p)", t, result);
    }
    pthread_mutex_lock(&log_lock);
    cr_assert_gt(log_lines, 0);
    pthread_mutex_unlock(&log_lock);
    kvrt_ctx_destroy(ctx);
}

/* Host allocations from several threads at once (transfer threads allocate
 * staging buffers while the engine creates pools): every buffer is private
 * to its thread, and the regions add up afterwards. */
static void *alloc_often(void *arg)
{
    unsigned char mark = (unsigned char)(intptr_t)arg;
    for (int i = 0; i < ROUNDS / 10; i++) {
        size_t bytes = 4096 + (size_t)(i % 5) * 50000;
        unsigned char *p = kvrt_host_alloc(ctx, bytes);
        if (!p)
            return (void *)1;
        memset(p, mark, bytes);
        for (size_t k = 0; k < bytes; k += 4096)
            if (p[k] != mark)
                return (void *)2; /* another thread wrote into this buffer */
        kvrt_host_free(ctx, p);
    }
    return NULL;
}

Test(core_threads, host_memory_from_many_threads)
{
    kvrt_ctx_params_t p = {.field_mask = KVRT_CTX_PARAM_HOST_REGION_BYTES |
                                         KVRT_CTX_PARAM_HUGEPAGES,
                           .host_region_bytes = 4u << 20, .hugepages = KVRT_HUGEPAGE_OFF};
    cr_assert_eq(kvrt_ctx_create(&p, &ctx), KVRT_OK);
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++)
        cr_assert_eq(pthread_create(&threads[t], NULL, alloc_often, (void *)(intptr_t)(t + 1)),
                     0);
    for (int t = 0; t < THREADS; t++) {
        void *result = NULL;
        pthread_join(threads[t], &result);
        cr_assert_null(result, "thread %d: allocation failed or overlapped (%p)", t, result);
    }
    uint64_t regions = 0;
    cr_assert_eq(kvrt_ctl_get_u64(ctx, "ctx.host.regions", &regions), KVRT_OK);
    cr_assert_geq(regions, 1);
    cr_assert_leq(regions, THREADS, "freed space is reused, not mapped anew");
    kvrt_ctx_destroy(ctx);
}
