/*
 * tier_worker.c - the tier stack's thread: executes block copies and SSD
 * I/O the engine thread hands it, and reports each job through the
 * completion queue (core/completion_queue.h) the engine thread polls.
 *
 * It takes up to queue_depth jobs at a time. Copies (pool <-> host, in the
 * staging order of kvrt_cpu_gather_blocks/scatter_blocks) run at once; SSD
 * jobs become two io_uring operations each (header page, block bytes),
 * submitted together and reaped together, so the device sees up to
 * 2 x queue_depth requests at once. With registered buffers (the host slab
 * in chunks of at most 1 GiB, and the header pages) they are READ_FIXED /
 * WRITE_FIXED; if registration is refused (memlock limit) plain READ/WRITE,
 * logged once at start.
 *
 * The worker touches only what a job names: the pool block, the host slot
 * and the SSD slot the engine thread reserved for that job, and its own
 * header page (one per job of a batch). Every completion slot was reserved
 * by the engine thread before the job was handed over, so reporting never
 * fails.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "tier/tier_internal.h"

#define MAX_CHUNK_BYTES (1ull << 30)

static uint8_t *host_slot(const tier_worker_t *w, int32_t slot)
{
    return w->host_base + (uint64_t)slot * w->host_stride;
}

/* Registered buffer index and address checks for a host slot. */
static int host_buffer_index(const tier_worker_t *w, int32_t slot)
{
    return (int)(((uint64_t)slot * w->host_stride) / w->chunk_bytes);
}

static void prep_io(tier_worker_t *w, struct io_uring_sqe *sqe, bool write, int fd, void *buf,
                    uint32_t len, uint64_t offset, int buf_index)
{
    if (w->fixed_buffers && write)
        io_uring_prep_write_fixed(sqe, fd, buf, len, offset, buf_index);
    else if (w->fixed_buffers)
        io_uring_prep_read_fixed(sqe, fd, buf, len, offset, buf_index);
    else if (write)
        io_uring_prep_write(sqe, fd, buf, len, offset);
    else
        io_uring_prep_read(sqe, fd, buf, len, offset);
}

static uint32_t payload_len(const tier_worker_t *w)
{
    return (uint32_t)(w->ssd->slot_bytes - TIER_HEADER_BYTES);
}

/* Queues the two operations of an SSD job; false when it failed up front. */
static bool prepare_ssd(tier_worker_t *w, tier_job_t *job, uint32_t index)
{
    uint8_t *header = w->headers + (uint64_t)index * TIER_HEADER_BYTES;
    uint8_t *payload = host_slot(w, job->host_slot);
    bool write = job->kind == JOB_WRITE;
    if (w->fault) {
        int err = w->fault(w->fault_user, job->kind, job->ssd_slot);
        if (err) {
            job->err = err;
            job->miss = KVRT_TIER_MISS_IO;
            return false;
        }
    }
    if (write)
        tier_ssd_header_write(w->ssd, &job->name,
                              tier_checksum(payload, w->ssd->block_bytes), header);
    uint64_t offset = (uint64_t)job->ssd_slot * w->ssd->slot_bytes;
    struct io_uring_sqe *a = io_uring_get_sqe(&w->uring);
    struct io_uring_sqe *b = io_uring_get_sqe(&w->uring);
    prep_io(w, a, write, w->ssd->fd, header, TIER_HEADER_BYTES, offset, (int)w->host_buffers);
    prep_io(w, b, write, w->ssd->fd, payload, payload_len(w), offset + TIER_HEADER_BYTES,
            host_buffer_index(w, job->host_slot));
    io_uring_sqe_set_data64(a, (uint64_t)index << 1);
    io_uring_sqe_set_data64(b, ((uint64_t)index << 1) | 1);
    return true;
}

/* A read's result: the header names the expected block and the bytes
 * match the checksum it carries. */
static void verify_read(tier_worker_t *w, tier_job_t *job, uint32_t index)
{
    uint64_t checksum;
    const uint8_t *header = w->headers + (uint64_t)index * TIER_HEADER_BYTES;
    if (!tier_ssd_header_check(w->ssd, header, &job->name, &checksum) ||
        tier_checksum(host_slot(w, job->host_slot), w->ssd->block_bytes) != checksum)
        job->miss = KVRT_TIER_MISS_CHECKSUM;
}

static void run_batch(tier_worker_t *w, tier_job_t *jobs, uint32_t n)
{
    uint32_t ops = 0;
    for (uint32_t i = 0; i < n; i++) {
        tier_job_t *job = &jobs[i];
        switch (job->kind) {
        case JOB_DEMOTE:
            kvrt_cpu_gather_blocks(NULL, &w->pool_view, &job->block, 1,
                                   host_slot(w, job->host_slot));
            break;
        case JOB_LAND:
            kvrt_cpu_scatter_blocks(NULL, &w->pool_view, host_slot(w, job->host_slot),
                                    &job->block, 1);
            break;
        case JOB_WRITE:
        case JOB_READ:
            if (prepare_ssd(w, job, i))
                ops += 2;
            break;
        }
    }
    if (ops) {
        int submitted = io_uring_submit_and_wait(&w->uring, ops);
        if (submitted < 0) { /* nothing went out: fail every SSD job of the batch */
            for (uint32_t i = 0; i < n; i++)
                if ((jobs[i].kind == JOB_WRITE || jobs[i].kind == JOB_READ) && !jobs[i].err) {
                    jobs[i].err = -submitted;
                    jobs[i].miss = KVRT_TIER_MISS_IO;
                }
            ops = 0;
        }
    }
    for (uint32_t reaped = 0; reaped < ops; reaped++) {
        struct io_uring_cqe *cqe;
        if (io_uring_wait_cqe(&w->uring, &cqe) != 0)
            break;
        uint64_t data = io_uring_cqe_get_data64(cqe);
        tier_job_t *job = &jobs[data >> 1];
        uint32_t want = (data & 1) ? payload_len(w) : TIER_HEADER_BYTES;
        if (cqe->res < 0 && !job->err) {
            job->err = -cqe->res;
            job->miss = KVRT_TIER_MISS_IO;
        } else if ((uint32_t)cqe->res < want && !job->err) {
            /* A short read: the file ends inside the slot. */
            job->err = job->kind == JOB_WRITE ? ENOSPC : ENODATA;
            job->miss = job->kind == JOB_WRITE ? KVRT_TIER_MISS_IO : KVRT_TIER_MISS_TRUNCATED;
        }
        io_uring_cqe_seen(&w->uring, cqe);
    }
    for (uint32_t i = 0; i < n; i++) {
        if (jobs[i].kind == JOB_READ && !jobs[i].err)
            verify_read(w, &jobs[i], i);
        kvrt_cq_push_reserved(w->done, &jobs[i]);
    }
}

static void *worker_main(void *arg)
{
    tier_worker_t *w = arg;
    tier_job_t *batch = calloc(w->queue_depth, sizeof(*batch));
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->count && !w->stop)
            pthread_cond_wait(&w->wake, &w->lock);
        if (!w->count && w->stop)
            break;
        uint32_t n = 0;
        while (w->count && n < w->queue_depth && batch) {
            batch[n++] = w->ring[w->head];
            w->head = (w->head + 1) % w->ring_capacity;
            w->count--;
        }
        pthread_mutex_unlock(&w->lock);
        run_batch(w, batch, n);
        pthread_mutex_lock(&w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    free(batch);
    return NULL;
}

static void register_buffers(kvrt_ctx_t *ctx, tier_worker_t *w, uint32_t host_slots)
{
    uint64_t per_chunk = MAX_CHUNK_BYTES / w->host_stride;
    w->chunk_bytes = per_chunk * w->host_stride;
    uint32_t chunks = (uint32_t)((host_slots + per_chunk - 1) / per_chunk);
    struct iovec *iov = calloc((size_t)chunks + 1, sizeof(*iov));
    if (!iov)
        return;
    uint64_t total = (uint64_t)host_slots * w->host_stride;
    for (uint32_t c = 0; c < chunks; c++) {
        uint64_t start = (uint64_t)c * w->chunk_bytes;
        iov[c].iov_base = w->host_base + start;
        iov[c].iov_len = total - start < w->chunk_bytes ? total - start : w->chunk_bytes;
    }
    iov[chunks].iov_base = w->headers;
    iov[chunks].iov_len = (size_t)w->queue_depth * TIER_HEADER_BYTES;
    int rc = io_uring_register_buffers(&w->uring, iov, chunks + 1);
    free(iov);
    if (rc == 0) {
        w->fixed_buffers = true;
        w->host_buffers = chunks;
    } else {
        kvrt_log(ctx, KVRT_LOG_WARN, "tier: io_uring refused to register %llu bytes of "
                 "buffers (%s); SSD I/O goes unregistered",
                 (unsigned long long)total, strerror(-rc));
    }
}

kvrt_status_t tier_worker_start(kvrt_ctx_t *ctx, tier_worker_t *w, uint32_t host_slots)
{
    w->ring_capacity = 4 * w->queue_depth;
    w->ring = calloc(w->ring_capacity, sizeof(*w->ring));
    if (!w->ring || posix_memalign((void **)&w->headers, TIER_ALIGN,
                                   (size_t)w->queue_depth * TIER_HEADER_BYTES) != 0)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "tier: job ring");
    kvrt_status_t status = kvrt_cq_create(ctx, w->ring_capacity, sizeof(tier_job_t), 0, -1,
                                          &w->done);
    if (status != KVRT_OK)
        return status;
    if (w->ssd) {
        int rc = io_uring_queue_init(2 * w->queue_depth, &w->uring, 0);
        if (rc < 0)
            return kvrt_fail(ctx, KVRT_ERR_IO, "tier: io_uring_queue_init: %s", strerror(-rc));
        w->uring_ready = true;
        register_buffers(ctx, w, host_slots);
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->wake);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "tier: cannot start its thread");
    }
    w->started = true;
    return KVRT_OK;
}

void tier_worker_stop(tier_worker_t *w)
{
    if (w->started) {
        pthread_mutex_lock(&w->lock);
        w->stop = true;
        pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->lock);
        pthread_join(w->thread, NULL);
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->wake);
        w->started = false;
    }
    if (w->uring_ready)
        io_uring_queue_exit(&w->uring);
    w->uring_ready = false;
    kvrt_cq_destroy(w->done);
    w->done = NULL;
    free(w->ring);
    free(w->headers);
    w->ring = NULL;
    w->headers = NULL;
}

bool tier_worker_submit(tier_worker_t *w, const tier_job_t *job)
{
    if (kvrt_cq_reserve(w->done) != KVRT_OK)
        return false;
    pthread_mutex_lock(&w->lock);
    bool ok = w->count < w->ring_capacity;
    if (ok) {
        w->ring[(w->head + w->count) % w->ring_capacity] = *job;
        w->count++;
        pthread_cond_signal(&w->wake);
    }
    pthread_mutex_unlock(&w->lock);
    if (!ok)
        kvrt_cq_unreserve(w->done);
    return ok;
}
