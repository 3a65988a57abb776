/*
 * completion_queue.h - a bounded queue of fixed-size completion entries
 * plus an eventfd, shared by the subsystems whose work finishes on kvrt's
 * own threads (the transfer engine today, tier I/O next) and is collected
 * by the engine thread. Internal: nothing here is ABI.
 *
 * Threads. Producers are kvrt's threads (backend progress threads, the
 * transfer control thread, a caller's thread that cancels); the consumer is
 * the engine thread, which either polls (kvrt_cq_poll) or waits on the
 * eventfd (kvrt_cq_fd in its own event loop, or kvrt_cq_wait). Every
 * function is safe from any thread: one mutex per queue guards it. That
 * mutex is a leaf: nothing else is locked while it is held, so callers may
 * hold their own locks around any call here.
 *
 * Bounds. A queue holds at most `capacity` entries. Work that must never
 * lose its completion reserves a slot when it starts (kvrt_cq_reserve) and
 * then pushes into it (kvrt_cq_push_reserved, which cannot fail), or gives
 * the slot back (kvrt_cq_unreserve) when it ends without an entry. Reserved
 * plus queued never exceeds capacity, so admission control is one call:
 * the overflow status is KVRT_ERR_REQUEST_LIMIT, returned by kvrt_cq_reserve
 * (and by kvrt_cq_push without a reservation) while reserved + queued ==
 * capacity. It clears as the consumer polls. A queue created with
 * KVRT_CQ_DROP_OLDEST instead makes room for an unreserved push by
 * dropping the oldest entry and counting it (for notifications, where the
 * newest matter most).
 *
 * The eventfd. Each push adds 1 to it, so it is readable once something
 * was queued since the consumer last read it. The consumer reads it to
 * reset it, then polls until the queue is empty (an entry pushed between
 * the two leaves the fd readable again, so nothing is missed). Several
 * queues may share one fd (signal_fd at create) when their consumer wants
 * one wakeup for all of them; then it drains all of them after each read.
 */
#ifndef KVRT_CORE_COMPLETION_QUEUE_H
#define KVRT_CORE_COMPLETION_QUEUE_H

#include <stdint.h>

#include "kvrt/context.h"

typedef struct kvrt_cq kvrt_cq_t;

enum kvrt_cq_flags {
    /* An unreserved push into a full queue drops the oldest entry. */
    KVRT_CQ_DROP_OLDEST = 1u << 0
};

/*
 * Creates a queue of `capacity` (1..2^24) entries of `entry_bytes` (1..4096)
 * bytes each. signal_fd < 0 makes the queue its own eventfd (non-blocking,
 * close-on-exec, closed by destroy); signal_fd >= 0 shares a caller's
 * eventfd, which must outlive the queue. Errors: KVRT_ERR_INVALID_ARG,
 * KVRT_ERR_NO_MEMORY, KVRT_ERR_IO (no eventfd). ctx (may be NULL) gets the
 * detail text.
 */
kvrt_status_t kvrt_cq_create(kvrt_ctx_t *ctx, uint32_t capacity, uint32_t entry_bytes,
                             uint32_t flags, int signal_fd, kvrt_cq_t **cq_out);
/* Frees the queue and any entries left in it. NULL is a no-op. */
void kvrt_cq_destroy(kvrt_cq_t *cq);

/* The eventfd the queue signals; valid until destroy. */
int kvrt_cq_fd(const kvrt_cq_t *cq);

/* Reserves one slot for a later kvrt_cq_push_reserved or kvrt_cq_unreserve.
 * KVRT_ERR_REQUEST_LIMIT when reserved + queued == capacity. */
kvrt_status_t kvrt_cq_reserve(kvrt_cq_t *cq);
/* Gives back a reservation that will produce no entry. */
void kvrt_cq_unreserve(kvrt_cq_t *cq);
/* Queues `entry` (entry_bytes, copied) into a slot reserved earlier and
 * signals the eventfd. Cannot fail. */
void kvrt_cq_push_reserved(kvrt_cq_t *cq, const void *entry);
/* Queues `entry` without a reservation. KVRT_ERR_REQUEST_LIMIT when the
 * queue is full, unless it drops its oldest entry (KVRT_CQ_DROP_OLDEST). */
kvrt_status_t kvrt_cq_push(kvrt_cq_t *cq, const void *entry);

/* Moves up to `capacity` entries, oldest first, into out (an array of
 * entry_bytes-sized entries); returns how many. Never blocks. */
uint32_t kvrt_cq_poll(kvrt_cq_t *cq, void *out, uint32_t capacity);
/* Blocks until the queue holds an entry or timeout_ms passes (0: do not
 * wait; UINT32_MAX: no limit). Reads (resets) the eventfd. Returns KVRT_OK,
 * KVRT_ERR_TIMEOUT or KVRT_ERR_IO. */
kvrt_status_t kvrt_cq_wait(kvrt_cq_t *cq, uint32_t timeout_ms);

typedef struct kvrt_cq_counts {
    uint32_t queued;   /* entries waiting for the consumer */
    uint32_t reserved; /* slots reserved, not yet pushed or given back */
    uint32_t capacity;
    uint64_t dropped;  /* entries dropped by KVRT_CQ_DROP_OLDEST */
} kvrt_cq_counts_t;
/* A consistent snapshot of the counters. */
kvrt_cq_counts_t kvrt_cq_counts(kvrt_cq_t *cq);

#endif /* KVRT_CORE_COMPLETION_QUEUE_H */
