/*
 * full_blocks.c - a request's newly full blocks, hashed once in its life
 * and offered to the prefix cache: one request at a time
 * (sched_cache_full_blocks, after arrivals and on hybrid schedulers), or,
 * during a commit, gathered and run as one batch.
 *
 * Why batch: an insert touches a handful of lines that nothing else near it
 * does (the cache's index slot, the block's name, its policy entry, the
 * explain entry, the block's metadata), each at random in arrays sized for
 * the whole pool, after hashing the block's tokens and reading its parent's
 * hash. One at a time, the commit waits for each miss in turn; gathered,
 * they are fetched in stages a few requests apart (as crossing.c does for
 * appends), so the misses overlap.
 *
 * Same order as one at a time: the batch runs before the commit ends or
 * releases a request (a rollback's truncation releases only blocks past
 * the computed tokens, never offered), and inserts in plan order. Hashes are computed in the batch
 * too, from tokens the commit has already written.
 */
#include "sched_internal.h"

/* Requests between two stages of the batch. */
#define SCHED_INSERT_DISTANCE 4u

void sched_hash_blocks(kvrt_sched_t *s, seq_t *q, uint32_t full)
{
    if (full <= q->num_hashed)
        return;
    const uint32_t tpb = s->tokens_per_block;
    const int32_t *tokens = sched_seq_tokens(q, full * tpb);
    for (uint32_t j = q->num_hashed; j < full; j++) {
        const kvrt_block_hash_t *parent = j ? &q->hashes[j - 1] : &s->root;
        kvrt_block_hash(parent, tokens + (size_t)j * tpb, tpb, j * tpb, sched_seq_keys(q),
                        &q->hashes[j]);
    }
    q->num_hashed = full;
}

/* Inserts q's hashed blocks [num_inserted, full). A key cached already
 * under another block is not an error: that block simply stays private. */
static void insert_blocks(kvrt_sched_t *s, seq_t *q, const int32_t *blocks, uint32_t full)
{
    if (full <= q->num_inserted) /* deferred with nothing new (see the defer) */
        return;
    const kvrt_hash_keys_t *keys = sched_seq_keys(q);
    for (uint32_t j = q->num_inserted; j < full; j++)
        kvrt_cache_insert_chained(s->cache, blocks[j], &q->hashes[j],
                                  j ? &q->hashes[j - 1] : NULL, keys, j, NULL);
    q->num_inserted = full;
}

void sched_cache_full_blocks(kvrt_sched_t *s, seq_t *q)
{
    if (KVRT_UNLIKELY(s->hybrid)) {
        sched_groups_cache_full(s, q);
        return;
    }
    if (q->cache_flags & SCHED_CACHE_NO_WRITE)
        return;
    uint32_t full = sched_full_blocks(s, q);
    if (full <= q->num_inserted)
        return;
    const int32_t *blocks;
    kvrt_table_view(s->pool, q->table, &blocks, NULL, NULL);
    sched_hash_blocks(s, q, full);
    insert_blocks(s, q, blocks, full);
}

void sched_insert_defer(kvrt_sched_t *s, seq_t *q)
{
    if (KVRT_UNLIKELY(s->hybrid || q->row == SCHED_NONE) || s->num_inserts == SCHED_INSERTS) {
        sched_inserts_flush(s);
        sched_cache_full_blocks(s, q);
        return;
    }
    /* Whether it has a block not yet offered is left to the batch, which
     * fetches the second line (num_inserted) a stage ahead. Read here, that
     * line is a miss the commit waits for, once per block filled, with
     * thousands of requests running. */
    if (!(q->cache_flags & SCHED_CACHE_NO_WRITE))
        s->inserts[s->num_inserts++] = sched_slot(s, q);
}

void sched_inserts_flush(kvrt_sched_t *s)
{
    const uint32_t m = s->num_inserts;
    if (m == 0)
        return;
    s->num_inserts = 0;
    const uint32_t *x = s->inserts;
    /* Too few to overlap: no stages, one insert after the other. */
    const uint32_t d = m >= SCHED_STAGE_MIN ? SCHED_INSERT_DISTANCE : 0;
    /* Request i: its second line (and its keys' line, if it has keys) in
     * round i, its tokens, parent hash and row in round i + d, hashed and
     * its insert's lines fetched in round i + 2d, inserted in round i + 3d.
     * Its first line was read by the commit just before. */
    for (uint32_t r = 0; r < m + 3 * d; r++) {
        if (d && r < m) {
            const seq_t *q = &s->seqs[x[r]];
            __builtin_prefetch((const char *)q + 64);
            if (!(q->cache_flags & SCHED_CACHE_NO_KEYS))
                __builtin_prefetch(&q->keys);
        }
        if (d && r >= d && r - d < m) {
            const seq_t *q = &s->seqs[x[r - d]];
            uint32_t j = q->num_hashed;
            __builtin_prefetch(q->token_array + (size_t)j * s->tokens_per_block);
            if (j)
                __builtin_prefetch(&q->hashes[j - 1], 1);
            __builtin_prefetch(s->rows + (size_t)q->row * s->row_stride + q->num_inserted);
        }
        if (d && r >= 2 * d && r - 2 * d < m) {
            seq_t *q = &s->seqs[x[r - 2 * d]];
            uint32_t full = sched_full_blocks(s, q);
            sched_hash_blocks(s, q, full);
            const int32_t *row = s->rows + (size_t)q->row * s->row_stride;
            const kvrt_hash_keys_t *keys = sched_seq_keys(q);
            for (uint32_t j = q->num_inserted; j < full; j++)
                kvrt_cache_prefetch_insert(s->cache, row[j], &q->hashes[j], keys);
        }
        if (r >= 3 * d) {
            seq_t *q = &s->seqs[x[r - 3 * d]];
            uint32_t full = sched_full_blocks(s, q);
            sched_hash_blocks(s, q, full); /* done in the stage before, unless unstaged */
            insert_blocks(s, q, s->rows + (size_t)q->row * s->row_stride, full);
        }
    }
}

uint64_t sched_cache_resets(const kvrt_sched_t *s)
{
    uint64_t n = 0;
    for (uint32_t g = 0; g < s->num_groups; g++)
        if (s->groups[g].cache)
            n += kvrt_cache_resets(s->groups[g].cache);
    return n;
}

void sched_sync_cache_resets(kvrt_sched_t *s)
{
    const uint64_t resets = sched_cache_resets(s);
    if (KVRT_LIKELY(resets == s->cache_resets))
        return;
    s->cache_resets = resets;
    /* Whatever a request holds was computed (or landed) before the reset:
     * running ones, a pinned head's hits, arrived or arriving K/V, and
     * ended requests whose plan in flight still holds their blocks. */
    for (uint32_t i = 0; i < s->max_requests; i++) {
        seq_t *q = &s->seqs[i];
        if (q->table || q->computed || q->arrival != SCHED_NONE)
            q->cache_flags |= SCHED_CACHE_STALE;
    }
}
