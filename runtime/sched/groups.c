/*
 * groups.c - hybrid models: one scheduler over several cache groups (full
 * attention and sliding-window layers, each kind with its own pool and
 * block size; kvrt_sched_create_groups). Every request holds one block
 * table per group; the plan carries one slot mapping and one set of rows
 * per group.
 *
 * The single-group paths of step.c and commit.c stay as they are (group 0
 * is mirrored in s->pool, s->rows, s->bufs, and a request's group-0 state
 * in its seq_t); a scheduler with several groups, or with a sliding window,
 * is `hybrid` and takes the paths here instead: an append inside every
 * group's tail block takes its slots from the rows and leaves the tables
 * to be told later (q->lag, for every group); any other goes through each
 * group's table, after blocks that left a window are released.
 *
 * Sliding windows: a block whose tokens all lie before computed - W + 1 is
 * released (kvrt_table_release_front: its table entry becomes the null
 * block) the next time the request is planned. `computed` is the committed
 * length, so a plan in flight, which reads from there, never loses a
 * block it reads.
 *
 * Prefix hits: H tokens count only when every group can serve them; a
 * full-attention group needs all blocks of [0, H), a sliding-window group
 * only those of the window the first recomputed token reads,
 * [H - W + 1, H). Full-attention hits are prefix-closed (any shorter H is
 * served too), window hits are not, so H is found as a fixed point: start
 * from the shortest full-attention hit and let each window group lower it
 * to the longest length it serves, until none lowers it.
 */
#include <stdlib.h>
#include <string.h>

#include "sched_internal.h"

/* ---- creation ----------------------------------------------------------------- */

kvrt_status_t sched_groups_read(kvrt_sched_t *s, uint32_t n,
                                const kvrt_sched_group_params_t *const *groups)
{
    const uint64_t known = KVRT_SCHED_GROUP_CACHE | KVRT_SCHED_GROUP_WINDOW;
    if (!groups || n == 0 || n > KVRT_SCHED_MAX_GROUPS)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "groups is NULL or %u groups (1..%u)", n, KVRT_SCHED_MAX_GROUPS);
    uint32_t with_cache = 0;
    bool windowed = false;
    s->hit_unit = 0;
    for (uint32_t g = 0; g < n; g++) {
        const kvrt_sched_group_params_t *p = groups[g];
        sched_group_t *gr = &s->groups[g];
        if (!p || !p->pool)
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "group %u: NULL params or pool", g);
        if (p->field_mask & ~known)
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                             "group %u: unknown field_mask bits 0x%llx", g,
                             (unsigned long long)(p->field_mask & ~known));
        if (kvrt_pool_ctx(p->pool) != s->ctx)
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                             "group %u: the pool belongs to another context", g);
        gr->owner = g;
        for (uint32_t h = 0; h < g && gr->owner == g; h++)
            if (s->groups[h].pool == p->pool)
                gr->owner = h; /* a shared pool: one memory, one eviction order */
        kvrt_cache_t *cache = (p->field_mask & KVRT_SCHED_GROUP_CACHE) ? p->cache : NULL;
        if (cache && kvrt_cache_pool(cache) != p->pool)
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                             "group %u: the cache is attached to another pool", g);
        if (cache && kvrt_cache_root(cache, &gr->root) != KVRT_OK)
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                             "group %u: cache is not a valid prefix cache", g);
        if (cache && gr->owner != g) {
            /* Its blocks hold other layers' K/V for the same tokens: their
             * chains start at a root of their own (docs/block-hash.md). */
            const int32_t marker = -1 - (int32_t)g;
            kvrt_block_hash_t root = gr->root;
            kvrt_block_hash(&root, &marker, 1, 0, NULL, &gr->root);
        }
        uint32_t window = (p->field_mask & KVRT_SCHED_GROUP_WINDOW) ? p->sliding_window : 0;
        if (window > KVRT_TABLE_MAX_TOKENS)
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                             "group %u: sliding_window %u above %u", g, window,
                             KVRT_TABLE_MAX_TOKENS);
        gr->pool = p->pool;
        gr->cache = cache;
        gr->window = window;
        gr->lookup = window || (cache && gr->owner != g);
        gr->tokens_per_block = kvrt_pool_tokens_per_block(p->pool);
        gr->block_shift = (uint32_t)__builtin_ctz(gr->tokens_per_block);
        /* Block sizes are powers of two: their lcm is the largest. */
        if (gr->tokens_per_block > s->hit_unit)
            s->hit_unit = gr->tokens_per_block;
        with_cache += cache != NULL;
        windowed = windowed || window;
    }
    for (uint32_t g = 0; g < n; g++) {
        sched_group_t *gr = &s->groups[g];
        gr->counts_lookups = gr->cache != NULL;
        for (uint32_t h = 0; h < n && gr->counts_lookups; h++)
            if (s->groups[h].cache == gr->cache && (!s->groups[h].lookup || h < g))
                gr->counts_lookups = false; /* a match counts it, or an earlier group */
    }
    if (with_cache && with_cache != n)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "%u of %u groups have a prefix cache: a hit needs every group, so "
                         "all or none",
                         with_cache, n);
    s->num_groups = n;
    s->hybrid = n > 1 || windowed;
    s->pool = s->groups[0].pool;
    s->cache = s->groups[0].cache;
    s->root = s->groups[0].root;
    return KVRT_OK;
}

bool sched_groups_alloc(kvrt_sched_t *s)
{
    s->groups[0].rows = s->rows;
    s->groups[0].row_stride = s->row_stride;
    s->groups[0].match_blocks = s->match_blocks;
    if (s->num_groups > 1) {
        s->xgroups = calloc((size_t)s->max_requests * (s->num_groups - 1), sizeof(seq_group_t));
        s->xarrivals =
            calloc((size_t)s->max_requests * (s->num_groups - 1), sizeof(arrival_group_t));
        if (!s->xgroups || !s->xarrivals)
            return false;
    }
    /* As in sched.c: plan buffers resident, rows faulted in as used. */
    for (uint32_t g = 1; g < s->num_groups; g++) {
        sched_group_t *gr = &s->groups[g];
        gr->rows = kvrt_calloc_large((size_t)s->max_seqs * gr->row_stride, sizeof(int32_t));
        gr->match_blocks = kvrt_calloc_large_resident(gr->row_stride, sizeof(int32_t));
        if (!gr->rows || !gr->match_blocks)
            return false;
        for (uint32_t k = 0; k < s->max_in_flight; k++) {
            gr->slot_mapping[k] = kvrt_calloc_large_resident(s->max_batch_tokens, sizeof(int64_t));
            gr->copies[k] = kvrt_calloc_large_resident(s->max_seqs, sizeof(kvrt_block_copy_t));
            gr->copy_owner[k] = kvrt_calloc_large_resident(s->max_seqs, sizeof(uint32_t));
            gr->csr_offsets[k] =
                kvrt_calloc_large_resident((size_t)s->max_seqs + 1, sizeof(int32_t));
            if (!gr->slot_mapping[k] || !gr->copies[k] || !gr->copy_owner[k] ||
                !gr->csr_offsets[k])
                return false;
        }
    }
    return true;
}

void sched_groups_free(kvrt_sched_t *s)
{
    for (uint32_t g = 1; g < s->num_groups; g++) {
        sched_group_t *gr = &s->groups[g];
        kvrt_free_large(gr->rows);
        kvrt_free_large(gr->match_blocks);
        for (uint32_t k = 0; k < KVRT_SCHED_MAX_PLANS_IN_FLIGHT; k++) {
            kvrt_free_large(gr->slot_mapping[k]);
            kvrt_free_large(gr->copies[k]);
            kvrt_free_large(gr->copy_owner[k]);
            kvrt_free_large(gr->csr_offsets[k]);
            free(gr->csr_ids[k]);
        }
    }
    free(s->xgroups);
    free(s->xarrivals);
}

void sched_groups_init_plans(kvrt_sched_t *s)
{
    for (uint32_t k = 0; k < s->max_in_flight; k++) {
        kvrt_plan_group_t *pg = s->plan_groups[k];
        for (uint32_t g = 0; g < s->num_groups; g++) {
            const sched_group_t *gr = &s->groups[g];
            pg[g] = (kvrt_plan_group_t){
                .tokens_per_block = gr->tokens_per_block,
                .sliding_window = gr->window,
                .slot_mapping = g ? gr->slot_mapping[k] : s->bufs[k].slot_mapping,
                .block_rows = gr->rows,
                .row_stride = gr->row_stride,
                .copies = g ? gr->copies[k] : s->bufs[k].copies,
            };
        }
        s->plans[k].num_groups = s->num_groups;
        s->plans[k].groups = pg;
    }
}

/* The plan slot being built or committed. */
static inline uint32_t plan_slot(const kvrt_sched_t *s)
{
    return (uint32_t)__builtin_ctz(s->plan_bit);
}

void sched_groups_publish(kvrt_sched_t *s)
{
    kvrt_batch_plan_t *p = s->plan;
    const uint32_t k = plan_slot(s);
    kvrt_plan_group_t *pg = s->plan_groups[k];
    pg[0].num_copies = p->num_copies;
    pg[0].block_table_offsets = p->block_table_offsets;
    pg[0].block_table_ids = p->block_table_ids;
    for (uint32_t g = 1; g < s->num_groups; g++) {
        pg[g].num_copies = s->groups[g].num_copies[k];
        if (!s->csr_tables || !p->block_table_offsets) {
            pg[g].block_table_offsets = NULL;
            pg[g].block_table_ids = NULL;
        }
    }
}

/* ---- requests ------------------------------------------------------------------- */

/* Group g's (g >= 1) record of request q. */
static inline seq_group_t *xgroup(const kvrt_sched_t *s, const seq_t *q, uint32_t g)
{
    return &s->xgroups[(size_t)sched_slot(s, q) * (s->num_groups - 1) + g - 1];
}

/* q's rows or tables of groups >= 1 changed: the cached tails are stale. */
static void forget_tails(kvrt_sched_t *s, const seq_t *q)
{
    for (uint32_t g = 1; g < s->num_groups; g++)
        xgroup(s, q, g)->tail_block = KVRT_NULL_BLOCK;
}

uint32_t sched_group_worst_blocks(const kvrt_sched_t *s, uint32_t g, uint32_t capacity,
                                  uint32_t longest_item)
{
    const sched_group_t *gr = &s->groups[g];
    /* Every token but the last has K/V; drafts and placeholders are
     * clamped below the length limit, so no slot lies past capacity - 2. */
    uint32_t all = sched_group_blocks_for(gr, capacity - 1);
    if (!gr->window)
        return all;
    /* The most tokens a step plans for one request: a prefill chunk
     * (prefill_chunk_tokens, or a multimodal item taken whole when the
     * budget holds it) or a decode with its drafts. */
    uint32_t step = s->chunk_tokens > longest_item ? s->chunk_tokens : longest_item;
    if (step < 1 + s->max_draft)
        step = 1 + s->max_draft;
    if (step > s->max_batch_tokens)
        step = s->max_batch_tokens;
    /* The window before the oldest uncommitted token, every plan in flight's
     * tokens after it, and a block each end for alignment. */
    uint64_t span = (uint64_t)gr->window + (uint64_t)s->max_in_flight * step;
    uint32_t windowed = sched_group_blocks_for(gr, span) + 1;
    return windowed < all ? windowed : all;
}

size_t sched_groups_hash_bytes(const kvrt_sched_t *s, uint32_t capacity)
{
    size_t bytes = 0;
    for (uint32_t g = 1; g < s->num_groups; g++)
        if (s->groups[g].cache)
            bytes += (size_t)(capacity >> s->groups[g].block_shift) * sizeof(kvrt_block_hash_t);
    return bytes;
}

void sched_groups_init_seq(kvrt_sched_t *s, seq_t *q, char *memory, uint32_t capacity)
{
    for (uint32_t g = 1; g < s->num_groups; g++) {
        seq_group_t *x = xgroup(s, q, g);
        memset(x, 0, sizeof(*x));
        if (s->groups[g].cache) {
            x->hashes = (kvrt_block_hash_t *)memory;
            memory += (size_t)(capacity >> s->groups[g].block_shift) * sizeof(kvrt_block_hash_t);
        }
    }
}

/* After q's tables are gone (held[g]: the entries group g's table had, the
 * blocks its window released included), the blocks of q still cached
 * count as released now, deepest first, as full-size K/V would release
 * them. Else a window's early blocks, released while q ran, would be the
 * first evicted, and with them the hits on this prefix that the other
 * groups still hold. Groups sharing a cache release depth by depth,
 * interleaved: one group's whole chain, its root included, would
 * otherwise go before another's leaves, and a hit needs every group. */
static void touch_released(kvrt_sched_t *s, seq_t *q, const uint32_t *held)
{
    for (uint32_t o = 0; o < s->num_groups; o++) {
        const sched_group_t *first = &s->groups[o];
        if (first->owner != o || !first->cache)
            continue; /* a sharer, touched with its pool's first group */
        uint32_t limit[KVRT_SCHED_MAX_GROUPS] = {0}, deepest = 0, sharers = 0;
        for (uint32_t g = o; g < s->num_groups; g++) {
            if (s->groups[g].owner != o)
                continue;
            seq_gref_t r = sched_gref(s, q, g);
            limit[g] = held[g] < *r.num_hashed ? held[g] : *r.num_hashed;
            deepest = limit[g] > deepest ? limit[g] : deepest;
            sharers++;
        }
        if (sharers == 1) { /* the table released the rest in order already */
            seq_gref_t r = sched_gref(s, q, o);
            if (first->window)
                kvrt_cache_touch_idle(first->cache, r.hashes,
                                      *r.released < limit[o] ? *r.released : limit[o], &q->keys);
            continue;
        }
        for (uint32_t j = deepest; j-- > 0;)
            for (uint32_t g = o; g < s->num_groups; g++)
                if (s->groups[g].owner == o && j < limit[g])
                    kvrt_cache_touch_idle(first->cache, sched_gref(s, q, g).hashes + j, 1,
                                          &q->keys);
    }
}

void sched_groups_release(kvrt_sched_t *s, seq_t *q)
{
    forget_tails(s, q);
    uint32_t held[KVRT_SCHED_MAX_GROUPS];
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const sched_group_t *gr = &s->groups[g];
        seq_gref_t r = sched_gref(s, q, g);
        held[g] = 0;
        if (*r.table) {
            kvrt_table_view(gr->pool, *r.table, NULL, &held[g], NULL);
            /* Deepest first, as for one group (request.c, sched_release). */
            kvrt_table_destroy(gr->pool, *r.table);
            *r.table = 0;
        }
    }
    /* (An ended request drained while a plan held its blocks has no hashes
     * left: its blocks keep the order of their release.) */
    if (s->cache && q->allocation)
        touch_released(s, q, held);
    for (uint32_t g = 0; g < s->num_groups; g++) {
        seq_gref_t r = sched_gref(s, q, g);
        *r.released = 0;
        *r.num_inserted = 0;
    }
}

/* ---- appends -------------------------------------------------------------------- */

static bool pool_has(const kvrt_pool_t *pool, uint32_t need, bool watermark)
{
    if (watermark) {
        int ok = 0;
        kvrt_pool_above_watermark(pool, need, &ok);
        return ok;
    }
    return (uint64_t)kvrt_pool_free_count(pool) + kvrt_pool_cached_count(pool) >= need;
}

/* Releases q's blocks that every window has left behind (see the top). */
static KVRT_ALWAYS_INLINE void release_windows(kvrt_sched_t *s, seq_t *q)
{
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const sched_group_t *gr = &s->groups[g];
        if (!gr->window || q->computed < gr->window)
            continue;
        seq_gref_t r = sched_gref(s, q, g);
        uint32_t gone = (q->computed - gr->window + 1) >> gr->block_shift;
        if (gone <= *r.released)
            continue; /* most decodes: nothing new left the window */
        uint32_t nb = 0;
        kvrt_table_view(gr->pool, *r.table, NULL, &nb, NULL);
        if (gone >= nb) /* a window of one token: the last block stays */
            gone = nb ? nb - 1 : 0;
        if (gone <= *r.released)
            continue;
        kvrt_table_release_front(gr->pool, *r.table, gone);
        if (q->landed) /* (a queued head: its arrived blocks count as landed) */
            s->groups[g].landed_blocks -= gone - *r.released;
        if (q->row != SCHED_NONE) {
            int32_t *row = gr->rows + (size_t)q->row * gr->row_stride;
            uint32_t end = gone < *r.row_blocks ? gone : *r.row_blocks;
            for (uint32_t j = *r.released; j < end; j++)
                row[j] = KVRT_NULL_BLOCK;
            sched_row_changed(s, q->row);
        }
        *r.released = gone;
    }
}

/* Every pool has what its groups need together (need[g]: group g's). */
static bool pools_have(const kvrt_sched_t *s, const uint64_t *need, bool watermark)
{
    uint64_t total[KVRT_SCHED_MAX_GROUPS];
    sched_pool_sums(s, need, total);
    for (uint32_t g = 0; g < s->num_groups; g++)
        if (total[g] && (total[g] > UINT32_MAX ||
                         !pool_has(s->groups[g].pool, (uint32_t)total[g], watermark)))
            return false;
    return true;
}

bool sched_groups_fit(kvrt_sched_t *s, seq_t *q, uint32_t n, bool watermark)
{
    /* The blocks the windows have left go first, as the append would
     * release them: counted as held, a long prefill in a small pool would
     * read as not fitting even alone. */
    release_windows(s, q);
    const uint32_t c = q->computed + q->ahead;
    uint64_t need[KVRT_SCHED_MAX_GROUPS];
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const sched_group_t *gr = &s->groups[g];
        need[g] = sched_group_blocks_for(gr, (uint64_t)c + n) - sched_group_blocks_for(gr, c);
    }
    return pools_have(s, need, watermark);
}

/* Most decodes: every group's n new tokens stay inside its tail block,
 * which is partly written and private (a cache holds full blocks only). The
 * slots come from each group's tail block, and the tables are told later: q->lag
 * counts the tokens no group's table has been told of (the groups hold the
 * same tokens, so one count serves them all), as step.c does for one group.
 * False when some group needs a block. */
static KVRT_ALWAYS_INLINE bool append_in_tails(kvrt_sched_t *s, seq_t *q, uint32_t n)
{
    const uint32_t c = q->computed + q->ahead, t0 = s->plan->num_tokens;
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const uint32_t off = c & (s->groups[g].tokens_per_block - 1);
        if (!off || off + n > s->groups[g].tokens_per_block)
            return false;
    }
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const sched_group_t *gr = &s->groups[g];
        /* The tail block from the request's own records: group 0's in its
         * first line, the others' in their group record (read from the
         * row once per block), sparing a row line per group. */
        int32_t tail = q->tail_block;
        if (g) {
            seq_group_t *x = xgroup(s, q, g);
            if (x->tail_block == KVRT_NULL_BLOCK)
                x->tail_block = gr->rows[(size_t)q->row * gr->row_stride + x->row_blocks - 1];
            tail = x->tail_block;
        }
        const int64_t base = ((int64_t)tail << gr->block_shift) | (c & (gr->tokens_per_block - 1));
        sched_iota64(sched_group_slots(s, g) + t0, s->max_batch_tokens - t0, base, n);
    }
    q->lag += n;
    return true;
}

bool sched_groups_take_in_tails(kvrt_sched_t *s, seq_t *q, uint32_t n)
{
    release_windows(s, q);
    return append_in_tails(s, q, n);
}

kvrt_status_t sched_groups_append(kvrt_sched_t *s, seq_t *q, uint32_t n)
{
    kvrt_batch_plan_t *p = s->plan;
    const uint32_t c = q->computed + q->ahead, t0 = p->num_tokens, k = plan_slot(s);
    uint32_t copied[KVRT_SCHED_MAX_GROUPS];
    if (sched_groups_take_in_tails(s, q, n))
        return KVRT_OK;
    /* Each table is told the tokens planned inside its tail block since
     * (q->lag, written there while the block was the request's own: no
     * copy for them, even if the block filled and is shared by now), then
     * takes the n new ones. */
    const uint32_t told = c - (uint32_t)q->lag;
    for (uint32_t g = 0; g < s->num_groups; g++) {
        sched_group_t *gr = &s->groups[g];
        seq_gref_t r = sched_gref(s, q, g);
        kvrt_block_copy_t copy;
        copied[g] = 0;
        kvrt_status_t st =
            kvrt_table_append_filled(gr->pool, *r.table, (uint32_t)q->lag, n,
                                     sched_group_slots(s, g) + t0, &copy, &copied[g]);
        if (st != KVRT_OK) {
            /* All groups or none: the groups before give back what they were
             * told, the lag included (it stays owed). A tail one of them
             * copied stays copied (the copy is in the plan): its row takes
             * the copy. */
            for (uint32_t h = 0; h < g; h++) {
                kvrt_table_truncate(s->groups[h].pool, *sched_gref(s, q, h).table, told);
                if (copied[h])
                    sched_row_sync(s, q, h, true);
            }
            forget_tails(s, q);
            return st;
        }
        if (copied[g]) {
            /* Never in practice (a scheduler's partial tail block is private),
             * but a copy reported is a copy the engine must run. */
            if (g == 0) {
                s->buf->copy_owner[p->num_copies] = sched_slot(s, q);
                s->buf->copies[p->num_copies++] = copy;
            } else {
                gr->copy_owner[k][gr->num_copies[k]] = sched_slot(s, q);
                gr->copies[k][gr->num_copies[k]++] = copy;
            }
        }
    }
    q->lag = 0;
    for (uint32_t g = 0; g < s->num_groups; g++) {
        seq_gref_t r = sched_gref(s, q, g);
        if (sched_group_blocks_for(&s->groups[g], (uint64_t)c + n) != *r.row_blocks || copied[g])
            sched_row_sync(s, q, g, copied[g] != 0);
    }
    forget_tails(s, q);
    return KVRT_OK;
}

void sched_groups_truncate(kvrt_sched_t *s, seq_t *q)
{
    /* The rollback reaches below what the tables were told (the commit
     * drops rejected drafts inside the lag without a truncate), so the
     * lagging tokens go with it. */
    q->lag = 0;
    forget_tails(s, q);
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const sched_group_t *gr = &s->groups[g];
        seq_gref_t r = sched_gref(s, q, g);
        kvrt_table_truncate(gr->pool, *r.table, q->computed);
        if (sched_group_blocks_for(gr, q->computed) != *r.row_blocks)
            sched_row_sync(s, q, g, false);
    }
}

void sched_groups_unplan(kvrt_sched_t *s, uint32_t slot, uint32_t t0, uint32_t n,
                         uint32_t tail)
{
    const uint32_t k = plan_slot(s);
    for (uint32_t g = 1; g < s->num_groups; g++) {
        sched_group_t *gr = &s->groups[g];
        int64_t *slots = gr->slot_mapping[k];
        memmove(slots + t0, slots + t0 + n, (size_t)tail * sizeof(int64_t));
        uint32_t kept = 0;
        for (uint32_t i = 0; i < gr->num_copies[k]; i++)
            if (gr->copy_owner[k][i] != slot) {
                gr->copies[k][kept] = gr->copies[k][i];
                gr->copy_owner[k][kept++] = gr->copy_owner[k][i];
            }
        gr->num_copies[k] = kept;
    }
}

void sched_groups_begin_step(kvrt_sched_t *s)
{
    const uint32_t k = plan_slot(s);
    for (uint32_t g = 1; g < s->num_groups; g++)
        s->groups[g].num_copies[k] = 0;
}

void sched_groups_csr(kvrt_sched_t *s)
{
    const uint32_t k = plan_slot(s);
    const plan_buffers_t *b = s->buf;
    kvrt_plan_group_t *pg = s->plan_groups[k];
    for (uint32_t g = 1; g < s->num_groups; g++) {
        sched_group_t *gr = &s->groups[g];
        uint32_t total = 0;
        for (uint32_t i = 0; i < s->plan->num_seqs; i++)
            total += *sched_gref(s, &s->seqs[b->slot_of[i]], g).row_blocks;
        if (total > gr->csr_capacity[k]) {
            uint32_t capacity = gr->csr_capacity[k] ? gr->csr_capacity[k] : 1024;
            while (capacity < total)
                capacity *= 2;
            int32_t *grown = realloc(gr->csr_ids[k], (size_t)capacity * sizeof(int32_t));
            if (!grown) { /* as for group 0 (step.c): rows carry the same */
                pg[g].block_table_offsets = NULL;
                pg[g].block_table_ids = NULL;
                continue;
            }
            gr->csr_ids[k] = grown;
            gr->csr_capacity[k] = capacity;
        }
        uint32_t at = 0;
        gr->csr_offsets[k][0] = 0;
        for (uint32_t i = 0; i < s->plan->num_seqs; i++) {
            seq_t *q = &s->seqs[b->slot_of[i]];
            uint32_t nb = *sched_gref(s, q, g).row_blocks;
            memcpy(gr->csr_ids[k] + at, gr->rows + (size_t)q->row * gr->row_stride,
                   (size_t)nb * sizeof(int32_t));
            at += nb;
            gr->csr_offsets[k][i + 1] = (int32_t)at;
        }
        pg[g].block_table_offsets = gr->csr_offsets[k];
        pg[g].block_table_ids = gr->csr_ids[k];
    }
}

/* ---- prefix hits ------------------------------------------------------------------ */

/* First block of the window the token at position h reads (group g):
 * tokens [h - W + 1, h), at least the block of token h - 1. */
static uint32_t window_first_block(const sched_group_t *gr, uint32_t h)
{
    if (!gr->window)
        return 0; /* a full-attention group found by lookups reads them all */
    uint32_t start = h + 1 > gr->window ? h + 1 - gr->window : 0;
    uint32_t first = start >> gr->block_shift, last = sched_group_blocks_for(gr, h) - 1;
    return first < last ? first : last;
}

/* Is block j of q (content hash known) in group g's cache? A probe: no
 * reference, no hit counted (the blocks kept are taken once, below), no
 * change to the eviction order. */
static bool cached(const sched_group_t *gr, const seq_t *q, const kvrt_block_hash_t *hash)
{
    return kvrt_cache_contains(gr->cache, hash, &q->keys);
}

/* A block whose miss lowered a hit: group g's block j (g = UINT32_MAX: none). */
typedef struct hit_miss {
    uint32_t g, j;
} hit_miss_t;

/* The longest hit of at most h tokens (a multiple of the hit unit) whose
 * window a sliding-window group holds (a full-attention group found by
 * lookups: all of [0, h)); *miss gets the block whose miss lowered it
 * last, if one did. */
static uint32_t window_servable(const kvrt_sched_t *s, uint32_t g, const seq_t *q,
                                const kvrt_block_hash_t *hashes, uint32_t h, hit_miss_t *miss)
{
    const sched_group_t *gr = &s->groups[g];
    while (h > 0) {
        uint32_t first = window_first_block(gr, h), j = h >> gr->block_shift;
        while (j > first && cached(gr, q, &hashes[j - 1]))
            j--;
        if (j == first)
            return h;
        *miss = (hit_miss_t){g, j - 1};
        h = sched_round_down((j - 1) << gr->block_shift, s->hit_unit); /* below the miss */
    }
    return 0;
}

/* Lowers h until every group found by lookups on `cache` (NULL: on any
 * cache) serves it; *miss gets the block whose miss lowered it last
 * (g = UINT32_MAX when none did). */
static uint32_t servable_by(const kvrt_sched_t *s, seq_t *q, uint32_t h,
                            const kvrt_cache_t *cache, hit_miss_t *miss)
{
    *miss = (hit_miss_t){UINT32_MAX, 0};
    bool lowered = true;
    while (lowered && h > 0) {
        lowered = false;
        for (uint32_t g = 0; g < s->num_groups; g++) {
            const sched_group_t *gr = &s->groups[g];
            if (!gr->lookup || (cache && gr->cache != cache))
                continue;
            uint32_t served = window_servable(s, g, q, sched_gref(s, q, g).hashes, h, miss);
            if (served < h) {
                h = served;
                lowered = true;
            }
        }
    }
    return h;
}

/* Counts, in each cache whose every group finds its hits by lookups, the
 * query kvrt_cache_match would have counted: the hit those groups serve
 * of `start` tokens (offered, rounded down to the hit unit), whatever
 * other caches serve and before DROP_LAST_HIT, as a match counts its own
 * blocks. `all` is the hit every group serves and `miss` what lowered
 * it: the same thing when every group is on this cache. */
static void count_lookups(kvrt_sched_t *s, seq_t *q, uint32_t offered, uint32_t start,
                          uint32_t all, hit_miss_t all_miss)
{
    for (uint32_t g = 0; g < s->num_groups; g++) {
        sched_group_t *gr = &s->groups[g];
        if (!gr->counts_lookups)
            continue;
        bool alone = true; /* every group is on this cache */
        for (uint32_t o = 0; o < s->num_groups && alone; o++)
            alone = s->groups[o].cache == gr->cache;
        hit_miss_t miss = all_miss;
        const uint32_t h = alone ? all : servable_by(s, q, start, gr->cache, &miss);
        const uint32_t full = sched_round_down(offered, gr->tokens_per_block);
        const kvrt_block_hash_t *missed =
            miss.g == UINT32_MAX ? NULL : &sched_gref(s, q, miss.g).hashes[miss.j];
        /* With no miss, what lies past h is a partial block or an
         * incomplete unit of a larger block size. */
        gr->admit_match = (kvrt_cache_match_t){
            .num_blocks = h >> gr->block_shift,
            .num_tokens = h,
            .partial_tokens = offered - (missed ? full : h),
        };
        kvrt_cache_count_lookups(gr->cache, offered, missed, &q->keys, &gr->admit_match);
    }
}

/* Gives back what each group holds in match_blocks[0, held[g]). */
static void give_back(kvrt_sched_t *s, const uint32_t *held)
{
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const sched_group_t *gr = &s->groups[g];
        for (uint32_t j = 0; j < held[g]; j++)
            if (gr->match_blocks[j] != KVRT_NULL_BLOCK)
                kvrt_pool_free(gr->pool, 1, &gr->match_blocks[j]);
    }
}

/* Matches every group and settles the hit h; on success each group holds
 * its hit blocks of [0, h) in match_blocks (holes before a window as the
 * null block) and *hit_out = h. */
static kvrt_status_t match_all(kvrt_sched_t *s, seq_t *q, uint32_t *hit_out)
{
    const uint32_t offered = q->num_tokens - 1; /* the last token is recomputed */
    const int32_t *tokens = sched_seq_tokens(q, offered);
    uint32_t held[KVRT_SCHED_MAX_GROUPS] = {0};
    uint32_t h = sched_round_down(offered, s->hit_unit);
    for (uint32_t g = 0; g < s->num_groups; g++) {
        sched_group_t *gr = &s->groups[g];
        seq_gref_t r = sched_gref(s, q, g);
        const uint32_t blocks = offered >> gr->block_shift;
        if (!gr->lookup) {
            kvrt_cache_match_t m;
            kvrt_status_t rc = kvrt_cache_match(gr->cache, tokens, offered, &q->keys, blocks,
                                                gr->match_blocks, r.hashes, &m);
            if (rc != KVRT_OK) {
                give_back(s, held);
                return rc;
            }
            held[g] = m.num_blocks;
            gr->admit_match = m; /* as counted, for a request that then waits */
            if (m.num_blocks > *r.num_hashed)
                *r.num_hashed = m.num_blocks;
            uint32_t served = sched_round_down(m.num_blocks << gr->block_shift, s->hit_unit);
            if (served < h)
                h = served;
            continue;
        }
        /* A group found by lookups needs every block's hash. */
        for (uint32_t j = *r.num_hashed; j < blocks; j++)
            kvrt_block_hash(j ? &r.hashes[j - 1] : &gr->root,
                            tokens + ((size_t)j << gr->block_shift), gr->tokens_per_block,
                            j << gr->block_shift, &q->keys, &r.hashes[j]);
        if (blocks > *r.num_hashed)
            *r.num_hashed = blocks;
    }
    hit_miss_t miss;
    const uint32_t start = sched_round_down(offered, s->hit_unit);
    h = servable_by(s, q, h, NULL, &miss);
    count_lookups(s, q, offered, start, h, miss);
    if (h && (q->cache_flags & KVRT_SEQ_CACHE_DROP_LAST_HIT))
        h = servable_by(s, q, h - s->hit_unit, NULL, &miss); /* EAGLE/MTP: recompute the last */
    /* Keep exactly what serves h. */
    for (uint32_t g = 0; g < s->num_groups; g++) {
        sched_group_t *gr = &s->groups[g];
        const uint32_t keep = h >> gr->block_shift;
        if (!gr->lookup) {
            if (held[g] > keep)
                kvrt_pool_free(gr->pool, held[g] - keep, gr->match_blocks + keep);
            held[g] = keep;
            continue;
        }
        if (!keep)
            continue;
        const kvrt_block_hash_t *hashes = sched_gref(s, q, g).hashes;
        const uint32_t first = window_first_block(gr, h);
        for (uint32_t j = 0; j < first; j++)
            gr->match_blocks[j] = KVRT_NULL_BLOCK;
        held[g] = first;
        for (uint32_t j = first; j < keep; j++) {
            int32_t block = KVRT_NULL_BLOCK;
            kvrt_status_t rc = kvrt_cache_lookup(gr->cache, &hashes[j], &q->keys, &block);
            if (rc != KVRT_OK || block == KVRT_NULL_BLOCK) {
                /* Nothing is evicted between the probe and here (no block
                 * is allocated), so this is a broken invariant. */
                give_back(s, held);
                return rc != KVRT_OK ? rc
                                     : kvrt_fail(s->ctx, KVRT_ERR_INTERNAL,
                                                 "group %u: block %u left the cache "
                                                 "during a match",
                                                 g, j);
            }
            gr->match_blocks[j] = block;
            held[g] = j + 1;
        }
    }
    *hit_out = h;
    return KVRT_OK;
}

kvrt_status_t sched_groups_match(kvrt_sched_t *s, seq_t *q, uint32_t *hit_tokens_out)
{
    forget_tails(s, q);
    kvrt_status_t rc = KVRT_OK;
    uint32_t g = 0;
    for (; g < s->num_groups && rc == KVRT_OK; g++) {
        sched_group_t *gr = &s->groups[g];
        kvrt_table_id_t *table = sched_gref(s, q, g).table;
        rc = kvrt_table_create(gr->pool, table);
        if (rc == KVRT_OK) {
            /* Sized for the longest request, so appends never reallocate. */
            rc = kvrt_table_reserve(gr->pool, *table, gr->row_stride);
            if (rc != KVRT_OK) {
                kvrt_table_destroy(gr->pool, *table);
                *table = 0;
            }
        }
    }
    uint32_t h = 0;
    if (rc == KVRT_OK && s->cache && !(q->cache_flags & KVRT_SEQ_CACHE_SKIP_READ))
        rc = match_all(s, q, &h);
    if (rc != KVRT_OK) {
        sched_groups_release(s, q);
        return rc;
    }
    for (g = 0; g < s->num_groups && h; g++) {
        sched_group_t *gr = &s->groups[g];
        seq_gref_t r = sched_gref(s, q, g);
        const uint32_t keep = h >> gr->block_shift;
        kvrt_table_adopt(gr->pool, *r.table, keep, gr->match_blocks);
        *r.num_inserted = keep;
        *r.released = gr->window ? window_first_block(gr, h) : 0;
    }
    q->computed = h;
    *hit_tokens_out = h;
    return KVRT_OK;
}

void sched_groups_cache_full(kvrt_sched_t *s, seq_t *q)
{
    if (q->cache_flags & SCHED_CACHE_NO_WRITE)
        return;
    const uint32_t valid = q->computed < q->num_tokens ? q->computed : q->num_tokens;
    const int32_t *tokens = NULL; /* taken when a block is hashed: most commits hash none */
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const sched_group_t *gr = &s->groups[g];
        seq_gref_t r = sched_gref(s, q, g);
        const uint32_t full = valid >> gr->block_shift;
        if (full <= *r.num_inserted)
            continue;
        const int32_t *blocks;
        kvrt_table_view(gr->pool, *r.table, &blocks, NULL, NULL);
        for (uint32_t j = *r.num_inserted; j < full; j++) {
            if (j >= *r.num_hashed) {
                if (!tokens)
                    tokens = sched_seq_tokens(q, valid);
                kvrt_block_hash(j ? &r.hashes[j - 1] : &gr->root,
                                tokens + ((size_t)j << gr->block_shift),
                                gr->tokens_per_block, j << gr->block_shift, &q->keys,
                                &r.hashes[j]);
                *r.num_hashed = j + 1;
            }
            if (blocks[j] != KVRT_NULL_BLOCK)
                kvrt_cache_insert_chained(gr->cache, blocks[j], &r.hashes[j],
                                          j ? &r.hashes[j - 1] : NULL, &q->keys, j, NULL);
        }
        *r.num_inserted = full;
    }
}

/* ---- arrivals (arrival.c) ------------------------------------------------------- */

uint32_t sched_group_held_blocks(const kvrt_sched_t *s, seq_t *q, uint32_t g)
{
    seq_gref_t r = sched_gref(s, q, g);
    uint32_t nb = 0;
    if (*r.table)
        kvrt_table_view(s->groups[g].pool, *r.table, NULL, &nb, NULL);
    return nb > *r.released ? nb - *r.released : 0;
}

/* First block of group g an arrival of tokens [computed, end) fills: a
 * sliding-window group skips what the window of the token at `end` does
 * not read. */
static uint32_t arrival_first_block(const sched_group_t *gr, uint32_t computed, uint32_t end)
{
    uint32_t first = computed >> gr->block_shift;
    if (gr->window) {
        uint32_t window = window_first_block(gr, end);
        if (window > first)
            first = window;
    }
    return first;
}

/* Blocks [from, to) of table t that only their table references: let go,
 * they become idle (cached hits) or free, so they count as available. */
static uint32_t sole_blocks(const sched_group_t *gr, kvrt_table_id_t t, uint32_t from,
                            uint32_t to)
{
    const int32_t *blocks = NULL;
    uint32_t nb = 0, n = 0;
    kvrt_table_view(gr->pool, t, &blocks, &nb, NULL);
    for (uint32_t j = from; j < to && j < nb; j++) {
        uint32_t refs = 0;
        if (blocks[j] != KVRT_NULL_BLOCK &&
            kvrt_pool_refcount(gr->pool, blocks[j], &refs) == KVRT_OK && refs == 1)
            n++;
    }
    return n;
}

kvrt_status_t sched_groups_extend_for_arrival(kvrt_sched_t *s, seq_t *q, uint32_t end,
                                              uint32_t *first, uint32_t *count)
{
    const uint32_t c = q->computed;
    forget_tails(s, q);
    /* A window group lets go of the hits that no token from `end` on reads
     * (all of them when the arrival's window starts past them: holes), so
     * a queued request holds no more than the window of `end` and the
     * arrival (kvrt_seq_add's limit), and those hits count as available. */
    uint32_t keep_from[KVRT_SCHED_MAX_GROUPS];
    uint64_t want[KVRT_SCHED_MAX_GROUPS], freed[KVRT_SCHED_MAX_GROUPS];
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const sched_group_t *gr = &s->groups[g];
        first[g] = arrival_first_block(gr, c, end);
        count[g] = sched_group_blocks_for(gr, end) - first[g];
        keep_from[g] = 0;
        want[g] = count[g];
        freed[g] = 0;
        if (gr->window) {
            seq_gref_t r = sched_gref(s, q, g);
            uint32_t keep = window_first_block(gr, end);
            /* (table_release_front keeps a block: letting go of every hit
             * takes the holes path) */
            keep_from[g] = keep >= (c >> gr->block_shift) ? UINT32_MAX : keep;
            freed[g] = sole_blocks(gr, *r.table, *r.released, keep_from[g]);
        }
    }
    uint64_t pool_want[KVRT_SCHED_MAX_GROUPS], pool_freed[KVRT_SCHED_MAX_GROUPS];
    sched_pool_sums(s, want, pool_want);
    sched_pool_sums(s, freed, pool_freed);
    for (uint32_t g = 0; g < s->num_groups; g++) {
        uint64_t short_of = pool_want[g] > pool_freed[g] ? pool_want[g] - pool_freed[g] : 0;
        if (short_of && (short_of > UINT32_MAX ||
                         !pool_has(s->groups[g].pool, (uint32_t)short_of, s->use_watermark)))
            return kvrt_fail(s->ctx, KVRT_ERR_NO_BLOCKS,
                             "group %u: an arrival of %llu blocks would leave the pool below "
                             "its watermark",
                             g, (unsigned long long)short_of);
    }
    /* Every group lets go first: groups sharing a pool count on each
     * other's hits let go. */
    uint32_t from[KVRT_SCHED_MAX_GROUPS];
    for (uint32_t g = 0; g < s->num_groups; g++) {
        sched_group_t *gr = &s->groups[g];
        seq_gref_t r = sched_gref(s, q, g);
        from[g] = c >> gr->block_shift;
        if (keep_from[g] == UINT32_MAX) { /* first[g] >= from */
            /* Holes up to the window: its hits (the window of `computed`)
             * are read by no token after `end`, and go idle in the cache. */
            kvrt_table_truncate(gr->pool, *r.table, 0);
            from[g] = 0;
            *r.released = first[g];
        } else if (keep_from[g] > *r.released) {
            kvrt_table_release_front(gr->pool, *r.table, keep_from[g]);
            *r.released = keep_from[g];
        }
    }
    for (uint32_t g = 0; g < s->num_groups; g++) {
        sched_group_t *gr = &s->groups[g];
        seq_gref_t r = sched_gref(s, q, g);
        int32_t *ids = gr->match_blocks; /* scratch: row_stride entries */
        for (uint32_t j = from[g]; j < first[g]; j++)
            ids[j - from[g]] = KVRT_NULL_BLOCK;
        /* Counted above, so only a broken count fails here; hits may be
         * gone then, so the caller gives the request's table up (not
         * KVRT_ERR_NO_BLOCKS, on which a pinned head keeps its hits). */
        kvrt_status_t st = kvrt_pool_alloc(gr->pool, count[g], ids + (first[g] - from[g]));
        if (st != KVRT_OK)
            return st == KVRT_ERR_NO_BLOCKS ? KVRT_ERR_INTERNAL : st;
        st = kvrt_table_adopt(gr->pool, *r.table, first[g] + count[g] - from[g], ids);
        if (st != KVRT_OK) {
            kvrt_pool_free(gr->pool, count[g], ids + (first[g] - from[g]));
            return st;
        }
        kvrt_table_truncate(gr->pool, *r.table, end); /* the last block may be partial */
    }
    return KVRT_OK;
}

uint32_t sched_groups_arrival_served(const kvrt_sched_t *s, seq_t *q, uint32_t end,
                                     const uint32_t *first, const uint32_t *count,
                                     const uint32_t *landed)
{
    uint32_t t = end;
    for (uint32_t g = 0; g < s->num_groups; g++)
        if (landed[g] < count[g]) {
            uint32_t served = (first[g] + landed[g]) << s->groups[g].block_shift;
            if (served < t)
                t = served;
        }
    if (t <= q->computed)
        return q->computed;
    /* A window group holds blocks from `released` on: t is served only if
     * its window starts there (a shorter t reads blocks never allocated). */
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const sched_group_t *gr = &s->groups[g];
        if (gr->window && window_first_block(gr, t) < *sched_gref(s, q, g).released)
            return q->computed;
    }
    return t;
}
