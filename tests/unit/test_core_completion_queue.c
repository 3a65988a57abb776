/*
 * test_core_completion_queue.c - the completion queue shared by transfers
 * and tier I/O: FIFO order across the ring's wrap, the reservation bound and
 * its overflow status, drop-oldest mode, the eventfd's readiness, and
 * several producer threads feeding one consumer that waits on the eventfd
 * (run under ThreadSanitizer in CI, label "threads").
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

#include "core/completion_queue.h"
#include "core/core.h"
#include "test_helpers.h"

typedef struct entry {
    uint32_t producer;
    uint32_t seq;
} entry_t;

static bool fd_readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 0) == 1;
}

static void drain_fd(int fd)
{
    uint64_t v;
    (void)!read(fd, &v, sizeof(v));
}

Test(core_cq, entries_come_out_oldest_first_across_the_wrap)
{
    kvrt_cq_t *q = NULL;
    cr_assert_eq(kvrt_cq_create(NULL, 5, sizeof(entry_t), 0, -1, &q), KVRT_OK);
    uint32_t next_in = 0, next_out = 0;
    entry_t out[5];
    /* Push and poll in uneven steps so head and tail pass the ring's end. */
    for (int round = 0; round < 40; round++) {
        uint32_t push = 1 + (uint32_t)round % 5;
        for (uint32_t i = 0; i < push; i++) {
            entry_t e = {.producer = 0, .seq = next_in};
            if (kvrt_cq_push(q, &e) != KVRT_OK)
                break;
            next_in++;
        }
        uint32_t n = kvrt_cq_poll(q, out, 1 + (uint32_t)round % 3);
        for (uint32_t i = 0; i < n; i++)
            cr_assert_eq(out[i].seq, next_out++, "round %d", round);
    }
    uint32_t n;
    while ((n = kvrt_cq_poll(q, out, 5)) > 0)
        for (uint32_t i = 0; i < n; i++)
            cr_assert_eq(out[i].seq, next_out++);
    cr_assert_eq(next_out, next_in);
    cr_assert_gt(next_in, 40u);
    kvrt_cq_destroy(q);
}

Test(core_cq, reservations_bound_the_queue_and_overflow_is_request_limit)
{
    kvrt_cq_t *q = NULL;
    cr_assert_eq(kvrt_cq_create(NULL, 4, sizeof(entry_t), 0, -1, &q), KVRT_OK);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(kvrt_cq_reserve(q), KVRT_OK);
    cr_assert_eq(kvrt_cq_reserve(q), KVRT_ERR_REQUEST_LIMIT);
    entry_t e = {.seq = 7};
    cr_assert_eq(kvrt_cq_push(q, &e), KVRT_ERR_REQUEST_LIMIT, "reserved slots are not free");
    /* Pushing into reservations keeps the total; only polling frees room. */
    kvrt_cq_push_reserved(q, &e);
    kvrt_cq_push_reserved(q, &e);
    kvrt_cq_counts_t c = kvrt_cq_counts(q);
    cr_assert_eq(c.queued, 2u);
    cr_assert_eq(c.reserved, 2u);
    cr_assert_eq(kvrt_cq_reserve(q), KVRT_ERR_REQUEST_LIMIT);
    kvrt_cq_unreserve(q);
    cr_assert_eq(kvrt_cq_reserve(q), KVRT_OK, "a slot given back is free again");
    entry_t out[4];
    cr_assert_eq(kvrt_cq_poll(q, out, 4), 2u);
    cr_assert_eq(out[1].seq, 7u);
    cr_assert_eq(kvrt_cq_reserve(q), KVRT_OK);
    cr_assert_eq(kvrt_cq_reserve(q), KVRT_OK);
    cr_assert_eq(kvrt_cq_reserve(q), KVRT_ERR_REQUEST_LIMIT);
    c = kvrt_cq_counts(q);
    cr_assert_eq(c.reserved, 4u);
    cr_assert_eq(c.queued, 0u);
    cr_assert_eq(c.capacity, 4u);
    kvrt_cq_destroy(q);
}

Test(core_cq, drop_oldest_keeps_the_newest_and_counts_the_rest)
{
    kvrt_cq_t *q = NULL;
    cr_assert_eq(kvrt_cq_create(NULL, 3, sizeof(entry_t), KVRT_CQ_DROP_OLDEST, -1, &q),
                 KVRT_OK);
    for (uint32_t i = 0; i < 10; i++) {
        entry_t e = {.seq = i};
        cr_assert_eq(kvrt_cq_push(q, &e), KVRT_OK);
    }
    cr_assert_eq(kvrt_cq_counts(q).dropped, 7u);
    entry_t out[8];
    cr_assert_eq(kvrt_cq_poll(q, out, 8), 3u);
    cr_assert_eq(out[0].seq, 7u);
    cr_assert_eq(out[2].seq, 9u);
    kvrt_cq_destroy(q);
}

Test(core_cq, the_eventfd_says_when_something_was_queued)
{
    kvrt_cq_t *a = NULL, *b = NULL;
    cr_assert_eq(kvrt_cq_create(NULL, 8, sizeof(entry_t), 0, -1, &a), KVRT_OK);
    cr_assert_eq(kvrt_cq_create(NULL, 8, sizeof(entry_t), 0, kvrt_cq_fd(a), &b), KVRT_OK);
    cr_assert_eq(kvrt_cq_fd(a), kvrt_cq_fd(b), "a shared fd is used as given");
    cr_assert(!fd_readable(kvrt_cq_fd(a)));
    cr_assert_eq(kvrt_cq_wait(a, 0), KVRT_ERR_TIMEOUT);
    cr_assert_eq(kvrt_cq_wait(a, 20), KVRT_ERR_TIMEOUT);
    entry_t e = {.seq = 1};
    cr_assert_eq(kvrt_cq_push(b, &e), KVRT_OK);
    cr_assert(fd_readable(kvrt_cq_fd(a)), "a push into b wakes a's consumer too");
    drain_fd(kvrt_cq_fd(a));
    cr_assert(!fd_readable(kvrt_cq_fd(a)));
    cr_assert_eq(kvrt_cq_reserve(a), KVRT_OK);
    kvrt_cq_push_reserved(a, &e);
    cr_assert(fd_readable(kvrt_cq_fd(a)));
    cr_assert_eq(kvrt_cq_wait(a, 0), KVRT_OK, "an entry is queued: no wait");
    entry_t out;
    cr_assert_eq(kvrt_cq_poll(a, &out, 1), 1u);
    cr_assert_eq(kvrt_cq_poll(b, &out, 1), 1u);
    kvrt_cq_destroy(b); /* does not close a's fd */
    cr_assert_geq(fcntl(kvrt_cq_fd(a), F_GETFD), 0, "a's fd is still open");
    kvrt_cq_destroy(a);
    kvrt_cq_destroy(NULL);
}

Test(core_cq, bad_arguments_are_refused_with_a_message)
{
    kvrt_ctx_t *ctx = NULL;
    kvrt_ctx_params_t cp = {0};
    cr_assert_eq(kvrt_ctx_create(&cp, &ctx), KVRT_OK);
    kvrt_cq_t *q = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cq_create(ctx, 0, 8, 0, -1, &q));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cq_create(ctx, 8, 0, 0, -1, &q));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cq_create(ctx, 8, 8, 0x80, -1, &q));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cq_create(ctx, (1u << 24) + 1, 8, 0, -1, &q));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cq_create(ctx, 8, 8, 0, -1, NULL));
    cr_assert_null(q);
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "capacity") != NULL);
    kvrt_ctx_destroy(ctx);
}

/* ---- several producers, one consumer ------------------------------------ */

#define PRODUCERS 4
#define PER_PRODUCER 20000u
#define CAPACITY 64u

static kvrt_cq_t *shared_q;

static void *produce(void *arg)
{
    uint32_t id = (uint32_t)(uintptr_t)arg;
    for (uint32_t seq = 0; seq < PER_PRODUCER; seq++) {
        /* Bounded: the consumer frees room; give up after ~10 s. */
        uint64_t spins = 0;
        while (kvrt_cq_reserve(shared_q) != KVRT_OK) {
            if (++spins > 10000000ull)
                return (void *)1;
            sched_yield();
        }
        entry_t e = {.producer = id, .seq = seq};
        if (seq % 7 == 3) { /* some work ends without an entry */
            kvrt_cq_unreserve(shared_q);
            continue;
        }
        kvrt_cq_push_reserved(shared_q, &e);
    }
    return NULL;
}

static uint32_t expected_entries(void)
{
    uint32_t skipped = 0;
    for (uint32_t seq = 0; seq < PER_PRODUCER; seq++)
        skipped += seq % 7 == 3;
    return PRODUCERS * (PER_PRODUCER - skipped);
}

Test(core_cq, producer_threads_feed_one_consumer_without_loss_or_reordering)
{
    cr_assert_eq(kvrt_cq_create(NULL, CAPACITY, sizeof(entry_t), 0, -1, &shared_q), KVRT_OK);
    pthread_t threads[PRODUCERS];
    for (uintptr_t i = 0; i < PRODUCERS; i++)
        cr_assert_eq(pthread_create(&threads[i], NULL, produce, (void *)i), 0);
    uint32_t next[PRODUCERS] = {0}, total = 0, want = expected_entries();
    entry_t out[16];
    uint64_t deadline = kvrt_now_ns() + 60000000000ull;
    while (total < want && kvrt_now_ns() < deadline) {
        kvrt_status_t st = kvrt_cq_wait(shared_q, 100);
        cr_assert(st == KVRT_OK || st == KVRT_ERR_TIMEOUT);
        uint32_t n;
        while ((n = kvrt_cq_poll(shared_q, out, 16)) > 0) {
            for (uint32_t i = 0; i < n; i++) {
                uint32_t p = out[i].producer;
                cr_assert_lt(p, PRODUCERS);
                if (next[p] % 7 == 3)
                    next[p]++;
                cr_assert_eq(out[i].seq, next[p], "producer %u out of order", p);
                next[p]++;
            }
            total += n;
        }
    }
    for (int i = 0; i < PRODUCERS; i++) {
        void *rc;
        pthread_join(threads[i], &rc);
        cr_assert_null(rc, "producer %d gave up waiting for room", i);
    }
    cr_assert_eq(total, want);
    kvrt_cq_counts_t c = kvrt_cq_counts(shared_q);
    cr_assert_eq(c.queued, 0u);
    cr_assert_eq(c.reserved, 0u, "every reservation was pushed or given back");
    kvrt_cq_destroy(shared_q);
}
