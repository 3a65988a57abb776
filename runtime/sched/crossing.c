/*
 * crossing.c - appends past a request's tail block: one at a time
 * (sched_append_tail, from the step's slow path), or, for running decodes,
 * gathered during the step and run as one batch.
 *
 * Why batch: inside its tail block a decode touches only its request's
 * first line and the plan (step.c, take_in_tail). The append that crosses
 * into a new block walks a chain of lines that depend on each other: the
 * request's second line (its table id), the pool's table slot, the end of
 * the table's block array, the tail block's and the new block's
 * bookkeeping, the block-table row and its change mark. One crossing at a
 * time, every link of that chain is a cache miss once tens of thousands of
 * requests are running, and the step waits for each in turn. Gathered,
 * the links of many crossings are fetched in stages (software pipelining,
 * as a hash join probes a batch of keys), so the misses overlap instead of
 * adding up.
 *
 * A crossing is deferred only when the blocks it can need are certainly
 * there (counted against the free blocks seen when the batch opened, and
 * the reclaimable ones unless an eviction sink may keep victims), and the
 * batch is run before anything else in the step can take blocks or
 * reorder the plan (a slow-path append, preemption, the end of the decode
 * pass). So the batch takes the same blocks, in the same order, as the
 * appends would have one at a time: the plan, the rows and every
 * request's table are the same either way. When the free blocks fall
 * short, the blocks the batch takes are evicted for the whole batch
 * before its appends (kvrt_pool_reclaim hands them out in the order
 * appends one at a time would have evicted them).
 */
#include <string.h>

#include "sched_internal.h"

/* Records between two stages of the batch: each stage's fetches have the
 * time of SCHED_CROSS_DISTANCE records' work to land. */
#define SCHED_CROSS_DISTANCE 4u

/* sched_append_tail's body, inlined into the batch (sched_crossings_flush)
 * as well. */
static KVRT_ALWAYS_INLINE kvrt_status_t append_tail(kvrt_sched_t *s, seq_t *q, uint32_t c,
                                                   int64_t *slots, size_t room, uint32_t n,
                                                   bool keep_rest)
{
    plan_buffers_t *const b = s->buf;
    kvrt_batch_plan_t *const p = s->plan;
    /* The pool's table holds c - lag tokens: one append tells it the lazy
     * ones (written in its tail block while the block was q's own, so no
     * copy for them even if the block filled and is shared by now) and
     * takes the new ones. It writes no slots; they come from the row
     * below, which costs the pool's table no second call. A table ahead of
     * the plan (rejected drafts' positions) is told nothing until the plan
     * passes it. */
    kvrt_block_copy_t copy;
    uint32_t num_copies = 0;
    const int32_t owed = q->lag + (int32_t)n;
    if (KVRT_LIKELY(owed > 0)) {
        const bool behind = q->lag >= 0;
        kvrt_status_t st = kvrt_table_append_filled(
            s->pool, q->table, behind ? (uint32_t)q->lag : 0, behind ? n : (uint32_t)owed, NULL,
            &copy, &num_copies);
        if (KVRT_UNLIKELY(st != KVRT_OK))
            return st; /* nothing changed: the lag is still owed */
        q->lag = 0;
    } else {
        q->lag = owed;
    }
    uint32_t nb = sched_blocks_for(s, (uint64_t)c + n);
    int32_t *row = s->rows + (size_t)q->row * s->row_stride;
    if (KVRT_UNLIKELY(num_copies)) {
        b->copy_owner[p->num_copies] = sched_slot(s, q);
        b->copies[p->num_copies++] = copy;
        sched_row_sync(s, q, 0, true);
    } else if (nb > q->row_blocks) {
        const int32_t *blocks;
        kvrt_table_view(s->pool, q->table, &blocks, NULL, NULL);
        memcpy(row + q->row_blocks, blocks + q->row_blocks,
               (size_t)(nb - q->row_blocks) * sizeof(int32_t));
        q->row_blocks = nb;
        sched_row_changed(s, q->row);
    }
    q->tail_block = row[nb - 1]; /* not the row's last entry when the table is ahead */
    sched_row_slots(s, row, c, slots, room, n, keep_rest);
    return KVRT_OK;
}

kvrt_status_t sched_append_tail(kvrt_sched_t *s, seq_t *q, uint32_t c, int64_t *slots,
                                size_t room, uint32_t n, bool keep_rest)
{
    return append_tail(s, q, c, slots, room, n, keep_rest);
}

/* Not vectorized (GCC): for the few slots of a decode, setting up vector
 * lanes costs more than the slots. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("no-tree-vectorize")))
#endif
void sched_row_slots(const kvrt_sched_t *s, const int32_t *row, uint32_t c, int64_t *slots,
                     size_t room, uint32_t n, bool keep_rest)
{
    const uint32_t tpb = s->tokens_per_block, off = c & (tpb - 1);
    if (n == 1) { /* a plain decode's crossing */
        slots[0] = ((int64_t)row[c >> s->block_shift] << s->block_shift) | off;
        return;
    }
    if (KVRT_LIKELY(n <= tpb)) {
        /* Two blocks at most: slot k is first + k for k < split (c's
         * block), second + k after. One select per slot, no branch on
         * where the boundary falls (at random, after a rollback); the loop
         * runs n times, a count an engine keeps steady. Exactly n slots:
         * nothing past them changes, keep_rest or not. */
        const uint32_t split = tpb - off;
        const int64_t first = ((int64_t)row[c >> s->block_shift] << s->block_shift) | off;
        const int64_t second =
            ((int64_t)row[(c + n - 1) >> s->block_shift] << s->block_shift) - split;
        const int64_t gap = first - second;
        for (uint32_t k = 0; k < n; k++) /* a mask, not a branch the compiler could split on */
            slots[k] = second + k + (gap & -(int64_t)(k < split));
        return;
    }
    for (uint32_t done = 0; done < n;) { /* one run per block */
        uint32_t pos = c + done, at = pos & (tpb - 1);
        uint32_t run = n - done < tpb - at ? n - done : tpb - at;
        sched_iota64(slots + done, keep_rest ? run : room - done,
                     ((int64_t)row[pos >> s->block_shift] << s->block_shift) | at, run);
        done += run;
    }
}

/* Blocks an append of n tokens at c takes: those past the row's. The row
 * holds c's block, and more only when the table is ahead of the plan
 * (lag < 0): otherwise its length is known from the first line. */
static inline uint32_t new_blocks(const kvrt_sched_t *s, const seq_t *q, uint32_t c, uint32_t n)
{
    const uint32_t nb = sched_blocks_for(s, (uint64_t)c + n);
    const uint32_t held = KVRT_LIKELY(q->lag >= 0) ? sched_blocks_for(s, c) : q->row_blocks;
    return nb > held ? nb - held : 0;
}

bool sched_crossing_defer(kvrt_sched_t *s, seq_t *q, uint32_t c, uint32_t n)
{
    if (s->num_crossings == SCHED_CROSSINGS)
        return false;
    if (s->num_crossings == 0) { /* a new batch: what the pool can certainly give */
        s->crossing_room = kvrt_pool_free_count(s->pool);
        s->crossing_idle_counted = false;
    }
    /* New blocks (past those the row holds), plus one when the table's own
     * tail is partial (lazy tokens in it, or c inside a block): a
     * copy-on-write would take one if that tail were shared. */
    const uint32_t took = new_blocks(s, q, c, n);
    const uint32_t need = took + (q->lag != 0 || (c & (s->tokens_per_block - 1)) != 0);
    if (s->crossing_blocks + need > s->crossing_room && !s->crossing_idle_counted) {
        /* Idle cached blocks count one for one only without an eviction
         * sink, which may keep several victims for each block taken. */
        s->crossing_idle_counted = true;
        if (!kvrt_cache_has_sink(s->cache))
            s->crossing_room += kvrt_pool_cached_count(s->pool);
    }
    if (s->crossing_blocks + need > s->crossing_room)
        return false; /* the slow path decides, after the batch has run */
    s->crossings[s->num_crossings++] =
        (sched_crossing_t){.slot = sched_slot(s, q), .t0 = s->plan->num_tokens, .c = c,
                           .n = (uint16_t)n, .took = (uint16_t)took};
    s->crossing_blocks += need;
    return true;
}


/* Stage 1 read the request's lines; this one what they point at. */
static inline void warm_links(kvrt_sched_t *s, const seq_t *q, uint32_t depth)
{
    kvrt_table_prefetch(s->pool, q->table);
    kvrt_pool_prefetch_block(s->pool, q->tail_block); /* the append checks it */
    kvrt_pool_prefetch_free(s->pool, depth);           /* the block it will take */
    __builtin_prefetch(s->rows + (size_t)q->row * s->row_stride + q->row_blocks, 1);
    __builtin_prefetch(&s->rc.row_mark[q->row], 1);
}

/* The blocks the m records' appends take, evicted now, all at once
 * (kvrt_pool_reclaim), rather than one by one inside the appends. Each
 * eviction is a chain of misses (the policy's links, the victim's name,
 * its index slot); inside an append, the append waited for it, and the
 * stage before had warmed no block to take (the free list was empty). The
 * appends then take the same blocks in the same order (unless one fails
 * for a table limit: the blocks evicted for it stay free). Out of line:
 * most batches find the blocks free. The deferral counted them: never
 * more than the free and idle blocks. */
static __attribute__((noinline)) void reclaim_for(kvrt_sched_t *s, const sched_crossing_t *x,
                                                  uint32_t m)
{
    uint32_t taking = 0;
    for (uint32_t i = 0; i < m; i++)
        taking += x[i].took;
    kvrt_pool_reclaim(s->pool, taking);
}

void sched_crossings_flush(kvrt_sched_t *s, uint32_t *budget)
{
    const uint32_t m = s->num_crossings;
    if (m == 0)
        return;
    s->num_crossings = 0;
    s->crossing_blocks = 0;
    const sched_crossing_t *x = s->crossings;
    /* Too few to overlap: no stages, one append after the other. */
    const uint32_t d = m >= SCHED_STAGE_MIN ? SCHED_CROSS_DISTANCE : 0;
    if (s->crossing_idle_counted) /* free blocks fell short at deferral */
        reclaim_for(s, x, m);
    /* Blocks the records before stage 2's take, and those appended so far
     * took: the difference is how deep in the free list its block lies. */
    uint32_t ahead = 0, taken = 0;
    uint32_t removed = 0; /* plan tokens taken out by failed appends */
    /* Record i is at stage 1 in round i, stage 2 in round i + d, stage 3
     * in round i + 2d and is appended in round i + 3d. */
    for (uint32_t r = 0; r < m + 3 * d; r++) {
        if (d && r < m) {
            const seq_t *q = &s->seqs[x[r].slot];
            __builtin_prefetch(q, 1);
            __builtin_prefetch((const char *)q + 64, 1);
        }
        if (d && r >= d && r - d < m) {
            const sched_crossing_t *e = &x[r - d];
            const seq_t *q = &s->seqs[e->slot];
            warm_links(s, q, ahead - taken);
            ahead += e->took;
        }
        if (d && r >= 2 * d && r - 2 * d < m)
            kvrt_table_prefetch_end(s->pool, s->seqs[x[r - 2 * d].slot].table);
        if (r >= 3 * d) {
            const sched_crossing_t *e = &x[r - 3 * d];
            seq_t *q = &s->seqs[e->slot];
            /* The entries after its n slots are planned already: kept. */
            const uint32_t t0 = e->t0 - removed;
            kvrt_status_t st = append_tail(s, q, e->c, s->buf->slot_mapping + t0,
                                           s->max_batch_tokens - t0, e->n, true);
            if (KVRT_LIKELY(st == KVRT_OK)) {
                taken += e->took;
            } else {
                /* Not for want of blocks (those that certainly exist were
                 * counted at deferral): a table limit. As on the slow path,
                 * the request fails; its entry leaves the plan and later
                 * entries move up. */
                sched_unplan(s, q, budget);
                removed += e->n;
                sched_end(s, q, KVRT_END_FAILED, st);
            }
        }
    }
}
