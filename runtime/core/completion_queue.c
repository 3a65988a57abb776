/*
 * completion_queue.c - the bounded completion queue and its eventfd (see
 * completion_queue.h for the thread and bound rules).
 */
#include "core/completion_queue.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/core.h"

#define CQ_MAX_CAPACITY (1u << 24)
#define CQ_MAX_ENTRY_BYTES 4096u

struct kvrt_cq {
    pthread_mutex_t lock;
    uint8_t *ring;
    uint32_t capacity, entry_bytes, flags;
    uint32_t head, queued, reserved;
    uint64_t dropped;
    int fd;
    bool owns_fd;
};

kvrt_status_t kvrt_cq_create(kvrt_ctx_t *ctx, uint32_t capacity, uint32_t entry_bytes,
                             uint32_t flags, int signal_fd, kvrt_cq_t **cq_out)
{
    if (!cq_out || capacity == 0 || capacity > CQ_MAX_CAPACITY || entry_bytes == 0 ||
        entry_bytes > CQ_MAX_ENTRY_BYTES || (flags & ~(uint32_t)KVRT_CQ_DROP_OLDEST))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "capacity %u (1..%u), entry_bytes %u (1..%u), flags %#x", capacity,
                         CQ_MAX_CAPACITY, entry_bytes, CQ_MAX_ENTRY_BYTES, flags);
    kvrt_cq_t *q = calloc(1, sizeof(*q));
    if (q)
        q->ring = calloc(capacity, entry_bytes);
    if (!q || !q->ring) {
        if (q)
            free(q);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "%u entries of %u bytes", capacity,
                         entry_bytes);
    }
    q->capacity = capacity;
    q->entry_bytes = entry_bytes;
    q->flags = flags;
    q->fd = signal_fd;
    if (signal_fd < 0) {
        q->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        q->owns_fd = true;
        if (q->fd < 0) {
            int e = errno;
            free(q->ring);
            free(q);
            return kvrt_fail(ctx, KVRT_ERR_IO, "eventfd: %s", strerror(e));
        }
    }
    pthread_mutex_init(&q->lock, NULL);
    *cq_out = q;
    return KVRT_OK;
}

void kvrt_cq_destroy(kvrt_cq_t *q)
{
    if (!q)
        return;
    if (q->owns_fd)
        close(q->fd);
    pthread_mutex_destroy(&q->lock);
    free(q->ring);
    free(q);
}

int kvrt_cq_fd(const kvrt_cq_t *q)
{
    return q->fd;
}

static void signal_fd(const kvrt_cq_t *q)
{
    uint64_t one = 1;
    /* EAGAIN only when the counter is at its maximum: readable anyway. */
    (void)!write(q->fd, &one, sizeof(one));
}

/* Appends one entry (lock held, room checked). */
static void append(kvrt_cq_t *q, const void *entry)
{
    uint32_t at = (q->head + q->queued) % q->capacity;
    memcpy(q->ring + (size_t)at * q->entry_bytes, entry, q->entry_bytes);
    q->queued++;
}

kvrt_status_t kvrt_cq_reserve(kvrt_cq_t *q)
{
    pthread_mutex_lock(&q->lock);
    bool room = q->reserved + q->queued < q->capacity;
    if (room)
        q->reserved++;
    pthread_mutex_unlock(&q->lock);
    return room ? KVRT_OK : KVRT_ERR_REQUEST_LIMIT;
}

void kvrt_cq_unreserve(kvrt_cq_t *q)
{
    pthread_mutex_lock(&q->lock);
    if (q->reserved > 0)
        q->reserved--;
    pthread_mutex_unlock(&q->lock);
}

void kvrt_cq_push_reserved(kvrt_cq_t *q, const void *entry)
{
    pthread_mutex_lock(&q->lock);
    if (q->reserved > 0) /* a reservation guarantees the room */
        q->reserved--;
    append(q, entry);
    pthread_mutex_unlock(&q->lock);
    signal_fd(q);
}

kvrt_status_t kvrt_cq_push(kvrt_cq_t *q, const void *entry)
{
    pthread_mutex_lock(&q->lock);
    if (q->reserved + q->queued >= q->capacity) {
        if (!(q->flags & KVRT_CQ_DROP_OLDEST) || q->queued == 0) {
            pthread_mutex_unlock(&q->lock);
            return KVRT_ERR_REQUEST_LIMIT;
        }
        q->head = (q->head + 1) % q->capacity;
        q->queued--;
        q->dropped++;
    }
    append(q, entry);
    pthread_mutex_unlock(&q->lock);
    signal_fd(q);
    return KVRT_OK;
}

uint32_t kvrt_cq_poll(kvrt_cq_t *q, void *out, uint32_t capacity)
{
    pthread_mutex_lock(&q->lock);
    uint32_t n = capacity < q->queued ? capacity : q->queued;
    /* At most two runs: up to the ring's end, then from its start. */
    uint32_t first = q->capacity - q->head < n ? q->capacity - q->head : n;
    memcpy(out, q->ring + (size_t)q->head * q->entry_bytes, (size_t)first * q->entry_bytes);
    memcpy((uint8_t *)out + (size_t)first * q->entry_bytes, q->ring,
           (size_t)(n - first) * q->entry_bytes);
    q->head = (q->head + n) % q->capacity;
    q->queued -= n;
    pthread_mutex_unlock(&q->lock);
    return n;
}

kvrt_status_t kvrt_cq_wait(kvrt_cq_t *q, uint32_t timeout_ms)
{
    uint64_t deadline = kvrt_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        pthread_mutex_lock(&q->lock);
        uint32_t queued = q->queued;
        pthread_mutex_unlock(&q->lock);
        if (queued > 0)
            return KVRT_OK;
        int wait_ms = -1;
        if (timeout_ms != UINT32_MAX) {
            uint64_t now = kvrt_now_ns();
            if (now >= deadline)
                return KVRT_ERR_TIMEOUT;
            wait_ms = (int)((deadline - now + 999999) / 1000000);
        }
        struct pollfd p = {.fd = q->fd, .events = POLLIN};
        int rc = poll(&p, 1, wait_ms);
        if (rc < 0 && errno != EINTR)
            return KVRT_ERR_IO;
        if (rc > 0) {
            uint64_t v;
            (void)!read(q->fd, &v, sizeof(v));
        }
    }
}

kvrt_cq_counts_t kvrt_cq_counts(kvrt_cq_t *q)
{
    pthread_mutex_lock(&q->lock);
    kvrt_cq_counts_t c = {.queued = q->queued, .reserved = q->reserved,
                          .capacity = q->capacity, .dropped = q->dropped};
    pthread_mutex_unlock(&q->lock);
    return c;
}
