/*
 * tier_worker.c - the tier stack's thread: executes block copies and SSD
 * I/O the engine thread hands it, and reports each job through the
 * completion queue (core/completion_queue.h) the engine thread polls.
 *
 * Copies (pool <-> host, in the staging order of kvrt_cpu_gather_blocks/
 * scatter_blocks) run at once; an SSD job is one io_uring operation of the
 * whole slot (header page and block bytes, contiguous in the host slot as
 * on disk), and up to queue_depth jobs stay in flight, a new one started
 * whenever one completes. With registered buffers (the host slab in chunks
 * of at most 1 GiB, each a whole number of slots) they are READ_FIXED /
 * WRITE_FIXED; if registration is refused (memlock limit) plain READ/WRITE,
 * logged once at start.
 *
 * The worker touches only what a job names: the pool block, the host slot
 * (its header page included) and the SSD slot the engine thread reserved
 * for that job. Every completion slot was reserved by the engine thread
 * before the job was handed over, so reporting never fails.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "tier/tier_internal.h"

#define MAX_CHUNK_BYTES (1ull << 30)

/* A host slot's header page; its block's bytes follow it. */
static uint8_t *host_slot(const tier_worker_t *w, int32_t slot)
{
    return w->host_base + (uint64_t)slot * w->host_stride;
}

static uint8_t *host_block(const tier_worker_t *w, int32_t slot)
{
    return host_slot(w, slot) + TIER_HEADER_BYTES;
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

/* Queues an SSD job's operation; false when it failed up front. */
static bool prepare_ssd(tier_worker_t *w, tier_job_t *job, uint32_t index)
{
    uint8_t *header = host_slot(w, job->host_slot);
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
                              tier_checksum(header + TIER_HEADER_BYTES, w->ssd->block_bytes),
                              header);
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->uring);
    prep_io(w, sqe, write, w->ssd->fd, header, (uint32_t)w->ssd->slot_bytes,
            (uint64_t)job->ssd_slot * w->ssd->slot_bytes, host_buffer_index(w, job->host_slot));
    io_uring_sqe_set_data64(sqe, index);
    return true;
}

/* A read's result: the header names the expected block and the bytes
 * match the checksum it carries. */
static void verify_read(tier_worker_t *w, tier_job_t *job)
{
    uint64_t checksum;
    if (!tier_ssd_header_check(w->ssd, host_slot(w, job->host_slot), &job->name, &checksum) ||
        tier_checksum(host_block(w, job->host_slot), w->ssd->block_bytes) != checksum)
        job->miss = KVRT_TIER_MISS_CHECKSUM;
}

/* A device pool's copy: enqueued on the engine's stream, then waited for,
 * so its completion is reported only once the bytes have moved. */
static void run_device_copy(tier_worker_t *w, tier_job_t *job)
{
    kvrt_status_t status =
        job->kind == JOB_DEMOTE
            ? kvrt_cuda_gather_blocks_to_host(NULL, &w->pool_view, &job->block, 1,
                                              host_block(w, job->host_slot), w->device.stream)
            : kvrt_cuda_scatter_blocks_from_host(NULL, &w->pool_view,
                                                 host_block(w, job->host_slot), &job->block, 1,
                                                 w->device.stream);
    /* Copies enqueued before a refusal may still run: wait for them too. */
    int sync_err = w->device.sync(w->device.user, w->device.stream);
    if (status != KVRT_OK || sync_err) {
        job->err = EIO;
        job->miss = KVRT_TIER_MISS_IO;
    }
    kvrt_cq_push_reserved(w->done, job);
}

/* One job's copy, done at once on this thread. */
static void run_copy(tier_worker_t *w, tier_job_t *job)
{
    if (w->has_device) {
        run_device_copy(w, job);
        return;
    }
    if (job->kind == JOB_DEMOTE)
        kvrt_cpu_gather_blocks(NULL, &w->pool_view, &job->block, 1,
                               host_block(w, job->host_slot));
    else
        kvrt_cpu_scatter_blocks(NULL, &w->pool_view, host_block(w, job->host_slot),
                                &job->block, 1);
    kvrt_cq_push_reserved(w->done, job);
}

/* SSD jobs in flight: each holds one of queue_depth entries until its
 * operation completed. */
typedef struct in_flight {
    tier_job_t *jobs;
    uint32_t *free_index;
    uint32_t free_count;
    uint32_t busy;
} in_flight_t;

static void finish_ssd(tier_worker_t *w, in_flight_t *f, uint32_t index)
{
    tier_job_t *job = &f->jobs[index];
    if (job->kind == JOB_READ && !job->err)
        verify_read(w, job);
    kvrt_cq_push_reserved(w->done, job);
    f->free_index[f->free_count++] = index;
    f->busy--;
}

static void start_ssd(tier_worker_t *w, in_flight_t *f, const tier_job_t *job)
{
    uint32_t index = f->free_index[--f->free_count];
    f->jobs[index] = *job;
    f->busy++;
    if (!prepare_ssd(w, &f->jobs[index], index))
        finish_ssd(w, f, index);
}

static void reap(tier_worker_t *w, in_flight_t *f, bool block)
{
    struct io_uring_cqe *cqe;
    if (block ? io_uring_wait_cqe(&w->uring, &cqe) != 0 : io_uring_peek_cqe(&w->uring, &cqe) != 0)
        return;
    do {
        uint32_t index = (uint32_t)io_uring_cqe_get_data64(cqe);
        tier_job_t *job = &f->jobs[index];
        uint32_t want = (uint32_t)w->ssd->slot_bytes;
        if (cqe->res < 0 && !job->err) {
            job->err = -cqe->res;
            job->miss = KVRT_TIER_MISS_IO;
        } else if ((uint32_t)cqe->res < want && !job->err) {
            /* Short: the file ends inside the slot (read), or is full (write). */
            job->err = job->kind == JOB_WRITE ? ENOSPC : ENODATA;
            job->miss = job->kind == JOB_WRITE ? KVRT_TIER_MISS_IO : KVRT_TIER_MISS_TRUNCATED;
        }
        io_uring_cqe_seen(&w->uring, cqe);
        finish_ssd(w, f, index);
    } while (io_uring_peek_cqe(&w->uring, &cqe) == 0);
}

/* Keeps up to queue_depth SSD jobs in flight all the time: new jobs are
 * started as soon as earlier ones complete, not batch after batch. */
static void *worker_main(void *arg)
{
    tier_worker_t *w = arg;
    in_flight_t f = {
        .jobs = calloc(w->queue_depth, sizeof(*f.jobs)),
        .free_index = calloc(w->queue_depth, sizeof(*f.free_index)),
        .free_count = w->queue_depth,
    };
    for (uint32_t i = 0; i < w->queue_depth && f.free_index; i++)
        f.free_index[i] = w->queue_depth - 1 - i;
    bool ok = f.jobs && f.free_index;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->count && !f.busy && !w->stop)
            pthread_cond_wait(&w->wake, &w->lock);
        if (!w->count && !f.busy && w->stop)
            break;
        uint32_t started = 0;
        while (ok && w->count && f.free_count) {
            tier_job_t job = w->ring[w->head];
            w->head = (w->head + 1) % w->ring_capacity;
            w->count--;
            pthread_mutex_unlock(&w->lock);
            if (job.kind == JOB_WRITE || job.kind == JOB_READ) {
                start_ssd(w, &f, &job);
                /* Out at once: the device works while the next block's
                 * checksum is computed. A refused submit (-EBUSY) leaves
                 * the operations queued; they go with the next one. */
                io_uring_submit(&w->uring);
                started++;
            } else {
                run_copy(w, &job);
            }
            pthread_mutex_lock(&w->lock);
        }
        pthread_mutex_unlock(&w->lock);
        bool unsent = w->uring_ready && io_uring_sq_ready(&w->uring) > 0;
        if (unsent)
            io_uring_submit(&w->uring);
        if (f.busy)
            reap(w, &f, started == 0 && !unsent);
        pthread_mutex_lock(&w->lock);
    }
    pthread_mutex_unlock(&w->lock);
    free(f.jobs);
    free(f.free_index);
    return NULL;
}

static void register_buffers(kvrt_ctx_t *ctx, tier_worker_t *w, uint32_t host_slots)
{
    uint64_t per_chunk = MAX_CHUNK_BYTES / w->host_stride;
    w->chunk_bytes = per_chunk * w->host_stride;
    uint32_t chunks = (uint32_t)((host_slots + per_chunk - 1) / per_chunk);
    struct iovec *iov = calloc(chunks, sizeof(*iov));
    if (!iov)
        return;
    uint64_t total = (uint64_t)host_slots * w->host_stride;
    for (uint32_t c = 0; c < chunks; c++) {
        uint64_t start = (uint64_t)c * w->chunk_bytes;
        iov[c].iov_base = w->host_base + start;
        iov[c].iov_len = total - start < w->chunk_bytes ? total - start : w->chunk_bytes;
    }
    int rc = io_uring_register_buffers(&w->uring, iov, chunks);
    free(iov);
    if (rc == 0) {
        w->fixed_buffers = true;
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
    if (!w->ring)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "tier: job ring");
    kvrt_status_t status = kvrt_cq_create(ctx, w->ring_capacity, sizeof(tier_job_t), 0, -1,
                                          &w->done);
    if (status != KVRT_OK)
        return status;
    if (w->ssd) {
        int rc = io_uring_queue_init(w->queue_depth, &w->uring, 0);
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
    w->ring = NULL;
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
