/*
 * step.c - kvrt_sched_step: one batch under the token budget, in the order
 * the header documents (running decodes, running prefill chunks, waiting
 * requests), and the persistent block-table rows the plan hands to
 * attention kernels. When blocks run out, preempt.c makes room.
 *
 * Cost: O(1) per running decode (a few plan writes; inside the tail block
 * no table call at all, and a crossing into a new block one table append
 * and a row entry, run with the step's other crossings as one batch:
 * crossing.c); O(blocks) only at admission, preemption and end. Nothing
 * here allocates once the CSR buffer (when asked for) has grown to its
 * working size.
 */
#include <stdlib.h>
#include <string.h>

#include "sched_internal.h"

/* ---- rows ------------------------------------------------------------------ */

void sched_row_changed(kvrt_sched_t *s, uint32_t row)
{
    row_changes_t *rc = &s->rc;
    if (rc->row_mark[row] == rc->epoch)
        return;
    rc->row_mark[row] = rc->epoch;
    rc->changed[rc->accumulating][rc->num_changed[rc->accumulating]++] = (int32_t)row;
}

void sched_row_sync(kvrt_sched_t *s, seq_t *q, uint32_t g, bool last_replaced)
{
    const sched_group_t *gr = &s->groups[g];
    seq_gref_t r = sched_gref(s, q, g);
    const int32_t *blocks;
    uint32_t nb;
    kvrt_table_view(gr->pool, *r.table, &blocks, &nb, NULL);
    int32_t *row = gr->rows + (size_t)q->row * gr->row_stride;
    uint32_t from = *r.row_blocks;
    if (last_replaced && from > 0)
        from--; /* copy-on-write swapped the tail block */
    if (nb > from)
        memcpy(row + from, blocks + from, (size_t)(nb - from) * sizeof(int32_t));
    else if (nb < *r.row_blocks)
        memset(row + nb, 0, (size_t)(*r.row_blocks - nb) * sizeof(int32_t));
    else if (!last_replaced)
        return;
    *r.row_blocks = nb;
    if (g == 0)
        sched_tail_update(s, q);
    sched_row_changed(s, q->row);
}

void sched_row_release(kvrt_sched_t *s, seq_t *q)
{
    if (q->row == SCHED_NONE)
        return;
    bool changed = false;
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const sched_group_t *gr = &s->groups[g];
        uint32_t *row_blocks = sched_gref(s, q, g).row_blocks;
        memset(gr->rows + (size_t)q->row * gr->row_stride, 0,
               (size_t)*row_blocks * sizeof(int32_t));
        changed = changed || *row_blocks;
        *row_blocks = 0;
    }
    if (changed)
        sched_row_changed(s, q->row);
    s->free_rows[s->num_free_rows++] = q->row;
    q->row = SCHED_NONE;
}

/* Compacting writes the position of every request after the first hole
 * into that request's second line (running_pos): a walk over nearly every
 * running request, and with tens of thousands running some request ends
 * in nearly every commit. Every walk over the array skips holes (a
 * test on a dense array), so compaction waits until they are an eighth of
 * it; its cost is then spread over the steps that made them. Forced when
 * the array is full and a request is to be admitted. */
void sched_compact_running(kvrt_sched_t *s, bool force)
{
    if (s->running_holes == 0 || (!force && s->running_holes < s->num_running / 8))
        return;
    uint32_t kept = 0;
    for (uint32_t i = 0; i < s->num_running; i++) {
        if (i + SCHED_PREFETCH < s->num_running) {
            const uint32_t ahead = s->running[i + SCHED_PREFETCH];
            if (ahead != SCHED_NONE)
                __builtin_prefetch(&s->seqs[ahead].running_pos, 1);
        }
        /* Entries released are marked; one that ended while a plan holds
         * it stays until that commit releases it. */
        const uint32_t slot = s->running[i];
        if (slot == SCHED_NONE)
            continue;
        if (kept != i) /* (before the first hole nothing moves) */
            s->seqs[slot].running_pos = kept;
        s->running[kept++] = slot;
    }
    s->num_running = kept;
    s->running_holes = 0;
}

/* Appends n slots to q's table, written at the plan's end; when blocks run
 * out, sched_relieve() makes room. Returns false when q is not to be
 * planned this step. */
static __attribute__((noinline)) bool grow_slow(kvrt_sched_t *s, seq_t *q, uint32_t n,
                                                uint32_t *budget, bool admitting);

/* Whether n tokens from position c fit in the tail block. fast_tail is 0
 * with several groups or a window: every append goes the slow way. */
static KVRT_ALWAYS_INLINE bool fits_tail(const kvrt_sched_t *s, uint32_t c, uint32_t n)
{
    const uint32_t off = c & (s->tokens_per_block - 1);
    return off != 0 && off + n <= s->fast_tail;
}

/* Most decodes: the tokens fit in the tail block, which is private (a
 * partial block is never shared: the cache holds full blocks and the
 * scheduler forks nothing). The slots come from q's row, and the pool's
 * table is told later (lag), so a decode touches neither the table nor
 * the pool. */
static KVRT_ALWAYS_INLINE void take_in_tail(kvrt_sched_t *s, seq_t *q, uint32_t c, uint32_t n)
{
    const uint32_t t0 = s->plan->num_tokens; /* where the caller put its inputs */
    int64_t base = ((int64_t)q->tail_block << s->block_shift) | (c & (s->tokens_per_block - 1));
    sched_iota64(s->buf->slot_mapping + t0, s->max_batch_tokens - t0, base, n);
    q->lag += (int32_t)n;
}

static KVRT_ALWAYS_INLINE bool grow(kvrt_sched_t *s, seq_t *q, uint32_t n, uint32_t *budget,
                                   bool admitting)
{
    const uint32_t c = q->computed + q->ahead; /* where this plan starts for q */
    if (KVRT_LIKELY(fits_tail(s, c, n))) {
        take_in_tail(s, q, c, n);
        return true;
    }
    return grow_slow(s, q, n, budget, admitting);
}

/* Tokens past the tail block that the request's row holds already: blocks
 * a rolled-back draft left (commit.c). Their slots come from the row and
 * the table is told later, as inside the tail block. */
static void take_in_row(kvrt_sched_t *s, seq_t *q, uint32_t c, uint32_t n)
{
    const uint32_t t0 = s->plan->num_tokens;
    const int32_t *row = s->rows + (size_t)q->row * s->row_stride;
    sched_row_slots(s, row, c, s->buf->slot_mapping + t0, s->max_batch_tokens - t0, n, false);
    q->tail_block = row[(c + n - 1) >> s->block_shift];
    q->lag += (int32_t)n;
}

/* grow() for a running decode: a crossing into a new block joins the batch
 * that runs at the end of the decode pass (crossing.c). On a hybrid
 * scheduler, tokens inside every group's tail block need no group's pool
 * checked (grow_slow's sched_groups_fit): they take their slots here. */
static KVRT_ALWAYS_INLINE bool grow_decode(kvrt_sched_t *s, seq_t *q, uint32_t n,
                                          uint32_t *budget)
{
    const uint32_t c = q->computed + q->ahead;
    if (KVRT_LIKELY(fits_tail(s, c, n))) {
        take_in_tail(s, q, c, n);
        return true;
    }
    if (s->fast_tail) {
        /* Only a table ahead of the plan holds blocks past c's (and only
         * then is the row's length, on the second line, read). */
        if (q->lag < 0 && (uint64_t)c + n <= (uint64_t)q->row_blocks << s->block_shift) {
            take_in_row(s, q, c, n);
            return true;
        }
        if (sched_crossing_defer(s, q, c, n))
            return true;
    } else if (sched_groups_take_in_tails(s, q, n)) {
        return true; /* hybrid: inside every group's tail block */
    }
    return grow_slow(s, q, n, budget, false);
}

/* grow() past the tail block, or with several groups or a window (every
 * group appends, or none: groups.c). */
static bool grow_slow(kvrt_sched_t *s, seq_t *q, uint32_t n, uint32_t *budget, bool admitting)
{
    kvrt_batch_plan_t *const p = s->plan;
    const uint32_t t0 = p->num_tokens;
    /* Deferred crossings first, so blocks are taken in plan order (a
     * failed one may take its entry out of the plan: t0 moves, below). */
    sched_crossings_flush(s, budget);
    for (;;) {
        kvrt_status_t st;
        if (!s->hybrid)
            st = sched_append_tail(s, q, q->computed + q->ahead,
                                   s->buf->slot_mapping + p->num_tokens,
                                   s->max_batch_tokens - p->num_tokens, n, false);
        else if (sched_groups_fit(s, q, n, false))
            st = sched_groups_append(s, q, n);
        else
            st = KVRT_ERR_NO_BLOCKS;
        if (KVRT_LIKELY(st == KVRT_OK)) {
            if (KVRT_UNLIKELY(p->num_tokens != t0)) /* a victim left the plan */
                memmove(s->buf->input_tokens + p->num_tokens, s->buf->input_tokens + t0,
                        (size_t)n * sizeof(int32_t));
            return true;
        }
        if (st != KVRT_ERR_NO_BLOCKS) {
            sched_end(s, q, KVRT_END_FAILED, st);
            return false;
        }
        if (!sched_relieve(s, q, budget, admitting))
            return false;
    }
}

/* ---- the plan ---------------------------------------------------------------- */

static inline void plan_add(kvrt_sched_t *s, seq_t *q, kvrt_plan_kind_t kind, uint32_t n,
                     uint32_t drafts, bool sample)
{
    kvrt_batch_plan_t *p = s->plan;
    plan_buffers_t *const b = s->buf;
    const uint32_t c = q->computed + q->ahead; /* after its entries in flight */
    uint32_t i = p->num_seqs++;
    b->seqs[i] = (kvrt_plan_seq_t){
        .id = sched_id(s, q),
        .user_tag = q->user_tag,
        .kind = kind,
        .num_new_tokens = n,
        .num_computed_tokens = c,
        .num_drafts = drafts,
        .sample = sample,
        .row = q->row,
    };
    b->slot_of[i] = sched_slot(s, q);
    uint32_t len = c + n;
    b->seq_lens[i] = (int32_t)len;
    b->row_index[i] = (int32_t)q->row;
    if (len > p->max_seq_len)
        p->max_seq_len = len;
    uint32_t t0 = p->num_tokens;
    sched_iota32(b->positions + t0, s->max_batch_tokens - t0, (int32_t)c, n);
    p->num_tokens += n;
    b->query_start_loc[i + 1] = (int32_t)p->num_tokens;
    q->in_plan |= sched_plan_bit(s);
    if (s->async) { /* what the next plan, built before this commit, starts from */
        q->ahead += n;
        q->pending_samples += sample;
        q->pending_spec = kind == KVRT_PLAN_SPEC;
    }
    if (kind == KVRT_PLAN_PREFILL) {
        p->num_prefill_seqs++;
        p->num_prefill_tokens += n;
    } else {
        p->num_decode_seqs++;
        p->num_draft_tokens += drafts;
    }
}

/* Prefill work that could run this step, an upper bound: drafts use only
 * what is left after it. Requests that waited for another's prompt blocks
 * in the last step are left out: they most likely wait in this one too
 * (when one does not, its first chunk is smaller for one step). */
static uint64_t prefill_demand(const kvrt_sched_t *s)
{
    uint64_t demand = (uint64_t)s->running_prefill * s->chunk_tokens;
    uint32_t free_seqs = s->max_seqs - s->running_live;
    if (free_seqs && s->heap_size) {
        uint64_t admissible = (uint64_t)free_seqs * s->chunk_tokens;
        uint64_t waiting = s->waiting_tokens > s->share_waited_tokens
                               ? s->waiting_tokens - s->share_waited_tokens
                               : 0; /* ended since */
        demand += waiting < admissible ? waiting : admissible;
    }
    return demand;
}

static inline uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

typedef struct step_state {
    uint32_t budget;
    bool budget_bound;
    /* Budget held for item_owner (hold_for_item) until its chunk is
     * planned: the decodes and the other prefills see budget - held. */
    uint32_t held;
    const seq_t *item_owner;
} step_state_t;

/* Pass 1: every running decode, with its drafts when speculating.
 * fetch_rows: fetch ahead the lines a request with rejected drafts' blocks
 * reads (SCHED_DEEP_RUNNING); a constant at both calls, so that the loop
 * without it carries no trace of it. */
static KVRT_ALWAYS_INLINE void decode_pass(kvrt_sched_t *s, step_state_t *st, bool fetch_rows)
{
    kvrt_batch_plan_t *const p = s->plan;
    plan_buffers_t *const b = s->buf;
    uint32_t decodes = s->running_live - s->running_prefill;
    if (!decodes && !s->num_pending) /* in flight, a last chunk makes a decode */
        return;
    uint32_t draft_cap = 0;
    /* Budget for 1 + max_draft tokens of every running request (async
     * steps may plan a decode for one still in prefill), after the prefill
     * demand: then neither the share nor the reserve below can bind, and
     * no request needs them. */
    bool ample = false;
    if (s->max_draft && decodes) {
        uint64_t prefill = prefill_demand(s), demand = decodes + prefill;
        uint64_t slack = st->budget > demand ? st->budget - demand : 0;
        uint64_t share = slack / decodes;
        draft_cap = share < s->max_draft ? (uint32_t)share : s->max_draft;
        ample = st->budget >= (uint64_t)s->running_live * (1 + s->max_draft) + prefill;
    }
    uint32_t decodes_left = decodes;
    const bool async = s->async;
    for (uint32_t i = 0; i < s->num_running; i++) {
        /* Requests are scattered in the slot array: fetch ahead. A decode
         * reads only the request's first line (its last token and tail
         * block are copied there) and, when speculating, the line of its
         * drafts; the rest of the step is streams. */
        if (i + SCHED_PREFETCH < s->num_running) {
            const uint32_t ahead = s->running[i + SCHED_PREFETCH];
            if (ahead != SCHED_NONE) {
                __builtin_prefetch(&s->seqs[ahead]);
                if (s->max_draft) /* the engine's drafts, its third line */
                    __builtin_prefetch(s->seqs[ahead].draft);
            }
        }
        /* A request whose table holds rejected drafts' blocks (lag < 0)
         * plans its next tokens into them from its row, after reading the
         * row's length on its second line (grow_decode): with their first
         * line in by now, those two lines are fetched too. */
        if (fetch_rows && i + SCHED_PREFETCH / 2 < s->num_running) {
            const uint32_t ahead = s->running[i + SCHED_PREFETCH / 2];
            if (ahead != SCHED_NONE && s->seqs[ahead].lag < 0) { /* (it has a row) */
                const seq_t *a = &s->seqs[ahead];
                __builtin_prefetch((const char *)a + 64);
                __builtin_prefetch(s->rows + (size_t)a->row * s->row_stride +
                                   ((a->computed + a->ahead) >> s->block_shift));
            }
        }
        seq_t *q;
        if (!sched_running_valid(s, i, &q) || (q->in_prefill && !q->pending_samples))
            continue;
        /* In an uncommitted plan (async): a decode after its placeholder
         * token, unless drafts are being verified (length unknown) or that
         * token reaches the length limit. */
        if (async && KVRT_UNLIKELY(q->in_plan) &&
            (q->pending_spec || q->num_tokens + q->pending_samples >= q->max_tokens))
            continue;
        if (decodes_left)
            decodes_left--;
        if (st->budget == 0 || p->num_seqs == s->max_seqs) {
            st->budget_bound = true;
            break;
        }
        uint32_t t0 = p->num_tokens;
        int32_t *input = b->input_tokens + t0;
        uint32_t drafts = 0;
        if (s->max_draft && !q->in_plan) {
            uint32_t room = q->max_tokens - q->num_tokens - 1; /* outputs after the bonus */
            uint32_t want = min_u32(s->adaptive_draft ? q->draft_len : s->max_draft, room);
            uint32_t limit = want;
            if (!ample) { /* its share, and a token kept for each decode after it */
                uint32_t reserve = decodes_left < st->budget - 1 ? decodes_left : st->budget - 1;
                limit = min_u32(min_u32(want, draft_cap), st->budget - 1 - reserve);
            }
            if (q->engine_drafts) {
                drafts = min_u32(q->engine_drafts, limit);
                sched_copy32(input + 1, s->max_batch_tokens - t0 - 1, q->draft,
                             KVRT_SCHED_MAX_DRAFT, drafts);
                if (q->engine_drafts > limit && limit < want)
                    s->stats.spec_backoff_tokens += min_u32(q->engine_drafts, want) - limit;
                if (!drafts)
                    q->engine_drafts = 0; /* all cut: dropped, as counted */
            } else if (s->ngram_min) {
                if (limit)
                    drafts = ngram_propose(s, &q->ngram,
                                           sched_seq_tokens(q, q->num_tokens),
                                           q->num_tokens, limit, input + 1);
                if (limit < want)
                    s->stats.spec_backoff_tokens += want - limit;
            }
        }
        uint32_t n = 1 + drafts;
        /* Left out of this step, a request that still runs (it waits for
         * blocks a plan in flight or an arrival holds) keeps the engine's
         * drafts for the next; a preempted or failed one lost them with
         * its release. Planned, it has consumed them (with n-gram drafts
         * it had none). */
        if (!grow_decode(s, q, n, &st->budget))
            continue;
        if (drafts)
            q->engine_drafts = 0;
        b->input_tokens[p->num_tokens] =
            async && KVRT_UNLIKELY(q->pending_samples) ? KVRT_TOKEN_PLACEHOLDER : q->last_token;
        plan_add(s, q, drafts ? KVRT_PLAN_SPEC : KVRT_PLAN_DECODE, n, drafts, true);
        st->budget -= n;
    }
    sched_crossings_flush(s, &st->budget);
}

static void schedule_decodes(kvrt_sched_t *s, step_state_t *st)
{
    if (s->max_draft && s->num_running >= SCHED_DEEP_RUNNING)
        decode_pass(s, st, true);
    else
        decode_pass(s, st, false);
}

/* The first of q's multimodal items (sorted, disjoint) that ends after
 * position p; num_mm_items when none does. */
static uint32_t item_ending_after(const seq_t *q, uint32_t p)
{
    const kvrt_mm_item_t *items = q->keys.mm_items;
    uint32_t lo = 0, hi = q->keys.num_mm_items;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (items[mid].offset + items[mid].length <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/*
 * The next prefill chunk of q: at most min(its uncomputed tokens,
 * prefill_chunk_tokens, budget) tokens, cut so that it never ends inside a
 * multimodal item (the engine consumes an item's encoder output whole):
 * a chunk that starts at (or, after a prefix hit, inside) an item takes the
 * rest of that item whole, past prefill_chunk_tokens if need be; a chunk
 * whose end would fall inside an item (that one or a later one) ends
 * before it instead. 0 when the budget is 0, or when the item it starts in
 * does not fit in the budget: then *item_need is the chunk that item needs
 * (else 0), which the next step holds for q (hold_for_item).
 */
static uint32_t prefill_chunk(const kvrt_sched_t *s, const seq_t *q, uint32_t budget,
                              uint32_t *item_need)
{
    const uint32_t c = q->computed + q->ahead;
    uint32_t n = min_u32(min_u32(q->num_tokens - c, s->chunk_tokens), budget);
    const uint32_t num_items = q->keys.num_mm_items;
    *item_need = 0;
    if (KVRT_LIKELY(num_items == 0))
        return n;
    const kvrt_mm_item_t *items = q->keys.mm_items;
    uint32_t k = item_ending_after(q, c);
    if (k < num_items && items[k].offset <= c) { /* c is in item k */
        uint32_t rest = min_u32(items[k].offset + items[k].length, q->num_tokens) - c;
        if (n < rest) {
            if (rest <= budget)
                return rest;
            *item_need = rest;
            return 0;
        }
    }
    uint32_t j = item_ending_after(q, c + n);
    if (j < num_items && items[j].offset < c + n) /* the end falls inside item j */
        return items[j].offset - c; /* > 0: item j starts after c (see above) */
    return n;
}

/*
 * A multimodal item is never split, so a chunk that starts in one waits
 * for a step whose budget left holds the rest of the item; with requests
 * decoding every step, the budget they leave may never be enough. So the
 * first request in a step that waited so (note_item_wait) has its chunk
 * held for it in the next step: the decodes and the other prefills plan
 * in what is left, and it is planned in the rest (in its place: a running
 * prefill in the prefill pass, a queued head at admission). An item waits
 * one step per item waiting before it, at most; the decodes that do not
 * fit in that step wait one step.
 */
static void note_item_wait(kvrt_sched_t *s, const seq_t *q, uint32_t need)
{
    if (!s->item_waiting) {
        s->item_waiting = sched_id(s, q);
        s->item_need = need;
    }
}

static void hold_for_item(kvrt_sched_t *s, step_state_t *st)
{
    if (KVRT_LIKELY(!s->item_waiting))
        return;
    const seq_t *q = sched_lookup(s, s->item_waiting);
    s->item_waiting = 0;
    if (!q)
        return; /* it ended or was aborted */
    /* Queued (for the first time, or again after a preemption) or in its
     * prefill: not once it has started decoding. */
    const bool waits = q->state == KVRT_SEQ_WAITING || q->state == KVRT_SEQ_PREEMPTED ||
                       (q->state == KVRT_SEQ_RUNNING && q->in_prefill);
    if (!waits)
        return;
    st->held = min_u32(s->item_need, st->budget);
    st->item_owner = q;
}

/* The hold ends: its owner was planned, or the passes it applies to are over. */
static void release_hold(step_state_t *st)
{
    st->held = 0;
    st->item_owner = NULL;
}

/* Pass 2: the next chunk of every running request still in prefill. */
static void schedule_prefills(kvrt_sched_t *s, step_state_t *st)
{
    if (!s->running_prefill)
        return;
    const bool note = s->share_blocks && s->heap_size; /* (sched_shared_note) */
    for (uint32_t i = 0; i < s->num_running; i++) {
        seq_t *q;
        if (!sched_running_valid(s, i, &q) || !q->in_prefill)
            continue;
        if (note) /* computing its next block: now, in flight, or when there is room */
            sched_shared_note_slow(s, q);
        if (q->pending_samples || (q->in_plan & sched_plan_bit(s)))
            continue;
        if (st->budget == 0 || s->plan->num_seqs == s->max_seqs) {
            st->budget_bound = true;
            break;
        }
        const bool owner = q == st->item_owner;
        const uint32_t budget = owner ? st->budget : st->budget - st->held;
        const uint32_t c = q->computed + q->ahead; /* after chunks in flight */
        uint32_t remaining = q->num_tokens - c, need;
        uint32_t n = prefill_chunk(s, q, budget, &need);
        if (n < remaining && n == budget)
            st->budget_bound = true;
        if (n == 0) { /* budget held for another, or an item that needs more */
            st->budget_bound = true;
            if (need)
                note_item_wait(s, q, need);
            continue;
        }
        if (owner)
            release_hold(st);
        if (!grow(s, q, n, &st->budget, false))
            continue;
        memcpy(s->buf->input_tokens + s->plan->num_tokens, sched_seq_tokens(q, c + n) + c,
               (size_t)n * sizeof(int32_t));
        plan_add(s, q, KVRT_PLAN_PREFILL, n, 0, c + n == q->num_tokens);
        st->budget -= n;
    }
}

/* Enough blocks for `need` more, above the watermark when it is in use. */
bool sched_blocks_available(const kvrt_sched_t *s, uint32_t need)
{
    int ok = 0;
    if (s->use_watermark) {
        kvrt_pool_above_watermark(s->pool, need, &ok);
        return ok;
    }
    kvrt_pool_info_t info;
    kvrt_pool_info(s->pool, &info);
    return (uint64_t)info.free_blocks + info.cached_blocks >= need;
}

/*
 * The head of the waiting queue is matched against the prefix cache once:
 * its hits go into its own block table, which it keeps while it waits for
 * room ("pinned"). Retries then cost no hashing, the cache counts one query
 * per request, and the prefix it is about to use cannot be evicted from
 * under it. At most one waiting request is pinned; a running sequence that
 * runs out of blocks unpins it before anyone is preempted.
 */
void sched_unpin(kvrt_sched_t *s)
{
    if (s->pinned == SCHED_NONE)
        return;
    seq_t *q = &s->seqs[s->pinned];
    s->pinned = SCHED_NONE;
    sched_release(s, q);
}

/* Counts q's query of the cache and its hit (match_tokens) at q's
 * admission: totals and the recent window, both from the same admissions,
 * so the two rates compare. A head matched again after giving up its hits
 * counts once; a preempted request, readmitted, counts again (its hits
 * are adopted again). */
static void count_match(kvrt_sched_t *s, const seq_t *q)
{
    if (!s->cache || (q->cache_flags & KVRT_SEQ_CACHE_SKIP_READ))
        return;
    uint32_t hit = q->match_tokens, offered = q->num_tokens - 1;
    s->stats.prefix_hit_tokens += hit;
    s->stats.prefix_query_tokens += offered;
    /* The recent window: the oldest admission's tokens leave it. */
    uint32_t w = s->window_next;
    s->window_next = (w + 1) % KVRT_SCHED_HIT_WINDOW;
    s->stats.window_hit_tokens -= s->window[w].hit; /* (64-bit: never below zero) */
    s->stats.window_hit_tokens += hit;
    s->stats.window_query_tokens -= s->window[w].offered;
    s->stats.window_query_tokens += offered;
    s->window[w].hit = hit;
    s->window[w].offered = offered;
}

/* Gives q (which has no table) a table holding its prefix hits. On error q
 * holds no table and nothing else changed. Counts nothing: admission
 * counts the query and its hit (count_match). */
kvrt_status_t sched_match_prefix(kvrt_sched_t *s, seq_t *q, int32_t *hit_blocks)
{
    q->match_tokens = 0;
    if (s->hybrid) {
        uint32_t hit = 0;
        kvrt_status_t rc = sched_groups_match(s, q, &hit);
        if (rc == KVRT_OK && s->cache && !(q->cache_flags & KVRT_SEQ_CACHE_SKIP_READ))
            q->match_tokens = hit;
        return rc;
    }
    kvrt_table_id_t table = 0;
    kvrt_status_t rc = kvrt_table_create(s->pool, &table);
    if (rc != KVRT_OK)
        return rc;
    /* Room for the longest request, so no append of its life reallocates
     * (tables keep their arrays when reused: this allocates only the first
     * time a table slot serves this scheduler). */
    rc = kvrt_table_reserve(s->pool, table, s->row_stride);
    if (rc != KVRT_OK) {
        kvrt_table_destroy(s->pool, table);
        return rc;
    }
    q->table = table;
    if (!s->cache || (q->cache_flags & KVRT_SEQ_CACHE_SKIP_READ))
        return KVRT_OK;
    /* All but the last token: it is recomputed for its logits. */
    uint32_t offered = q->num_tokens - 1;
    kvrt_cache_match_t m;
    rc = kvrt_cache_match(s->cache, sched_seq_tokens(q, offered), offered, &q->keys,
                          offered >> s->block_shift, hit_blocks, q->hashes, &m);
    if (rc != KVRT_OK) {
        kvrt_table_destroy(s->pool, table);
        q->table = 0;
        return rc;
    }
    s->groups[0].admit_match = m; /* as counted, for a request that then waits */
    if (m.num_blocks > q->num_hashed)
        q->num_hashed = m.num_blocks; /* the hash of a dropped hit stays known */
    if (m.num_blocks && (q->cache_flags & KVRT_SEQ_CACHE_DROP_LAST_HIT)) {
        /* EAGLE/MTP: the last hit block is recomputed for its hidden states. */
        m.num_blocks--;
        kvrt_pool_free(s->pool, 1, &hit_blocks[m.num_blocks]);
    }
    if (m.num_blocks)
        kvrt_table_adopt(s->pool, table, m.num_blocks, hit_blocks);
    q->computed = m.num_blocks << s->block_shift;
    q->match_tokens = q->computed;
    q->num_inserted = m.num_blocks;
    return KVRT_OK;
}

/* The blocks of q's first chunk of n tokens, in every group, leave the
 * pool above its watermark (when in use). */
static bool head_fits(kvrt_sched_t *s, seq_t *q, uint32_t n)
{
    if (s->hybrid)
        return sched_groups_fit(s, q, n, s->use_watermark);
    uint32_t need = sched_blocks_for(s, (uint64_t)q->computed + n) -
                    sched_blocks_for(s, q->computed);
    return sched_blocks_available(s, need);
}

/*
 * The head q does not fit: blocks that requests behind it hold while
 * queued never keep it waiting (or the queue could stall for good: with
 * nothing running, nobody else would ever give them back). A request
 * behind q that pinned its hits as an earlier head (q then waited for KV)
 * gives them up; then queued requests holding arrived K/V give it up, the
 * one the admission order reaches last first, until q fits, but only when
 * all of theirs and what is available could make it fit (else q waits for
 * running requests, and the arrived K/V is kept). With a prefix cache their
 * blocks stay cached and idle, likely hits at their own admission. Blocks
 * of arrivals still outstanding are never touched: they may be written.
 */
static bool make_room_for_head(kvrt_sched_t *s, seq_t *q, uint32_t n)
{
    if (s->pinned != SCHED_NONE && s->pinned != sched_slot(s, q)) {
        sched_unpin(s);
        if (head_fits(s, q, n))
            return true;
    }
    if (s->num_landed <= q->landed || !sched_landed_could_fit(s, q, n))
        return false;
    while (sched_release_landed(s, q))
        if (head_fits(s, q, n))
            return true;
    return false;
}

/* Admits the head of the waiting queue with its first chunk. Returns false
 * when admission must stop (the head does not fit). */
static bool admit(kvrt_sched_t *s, seq_t *q, step_state_t *st, int32_t *hit_blocks)
{
    if (!q->table) {
        if (sched_shared_still_waits(s, q))
            return true; /* out of the heap for this step, unmatched */
        kvrt_status_t rc = sched_match_prefix(s, q, hit_blocks);
        if ((rc == KVRT_ERR_NO_TABLES || rc == KVRT_ERR_NO_MEMORY) && s->pinned != SCHED_NONE) {
            sched_unpin(s); /* its table may be the one q needs */
            rc = sched_match_prefix(s, q, hit_blocks);
        }
        /* With nothing running, and no request that ended in a plan in
         * flight (its commit gives its table back), no table would ever
         * come back: requests queued behind q with arrived K/V give theirs
         * up (the one the admission order reaches last first). */
        while (rc == KVRT_ERR_NO_TABLES && s->running_live == 0 && sched_release_landed(s, q))
            rc = sched_match_prefix(s, q, hit_blocks);
        if (rc == KVRT_ERR_NO_TABLES || rc == KVRT_ERR_NO_MEMORY)
            return false; /* wait for a table */
        if (rc != KVRT_OK) {
            sched_end(s, q, KVRT_END_FAILED, rc);
            return true; /* a failed head is skipped */
        }
        /* A request that waits keeps nothing: the one pinned keeps its
         * hits (matched again, the cache would count its query twice). */
        if (sched_shared_wait(s, q, q->num_tokens - 1))
            return true; /* out of the heap for this step: the next one comes up */
        sched_unpin(s); /* q becomes the one holding its hits */
    }
    /* computed: prefix-cache hits, plus K/V that arrived (arrival.c). */
    uint32_t hit_tokens = q->match_tokens;
    uint32_t remaining = q->num_tokens - q->computed;
    uint32_t need;
    uint32_t n = prefill_chunk(s, q, st->budget, &need);
    if (n == 0 || !(head_fits(s, q, n) || make_room_for_head(s, q, n))) {
        if (n == 0)
            st->budget_bound = true;
        if (need)
            note_item_wait(s, q, need);
        if (!q->landed) /* arrived K/V is never given up for a retry */
            s->pinned = sched_slot(s, q);
        return false;
    }
    if (s->pinned == sched_slot(s, q))
        s->pinned = SCHED_NONE;
    sched_heap_remove(s, q);
    sched_unland(s, q); /* no longer queued: its K/V is its running prefix */
    q->state = KVRT_SEQ_RUNNING;
    q->in_prefill = 1;
    q->row = s->free_rows[--s->num_free_rows];
    if (q->computed) /* hits or arrived K/V: the row starts with them */
        for (uint32_t g = 0; g < s->num_groups; g++)
            sched_row_sync(s, q, g, false);
    if (KVRT_UNLIKELY(s->num_running == s->max_seqs))
        sched_compact_running(s, true); /* running_live < max_seqs: a hole */
    q->running_pos = s->num_running;
    s->running[s->num_running++] = sched_slot(s, q);
    s->running_live++;
    s->running_prefill++;
    q->cached_tokens += hit_tokens;
    count_match(s, q);
    if (!q->counted_prompt) {
        q->counted_prompt = true;
        s->stats.prompt_tokens += q->prompt_len;
        q->admitted_ns = s->plan->now_ns;
    }
    if (n < remaining && n == st->budget)
        st->budget_bound = true;
    if (!grow(s, q, n, &st->budget, true))
        return true;
    memcpy(s->buf->input_tokens + s->plan->num_tokens,
           sched_seq_tokens(q, q->computed + n) + q->computed, (size_t)n * sizeof(int32_t));
    plan_add(s, q, KVRT_PLAN_PREFILL, n, 0, q->computed + n == q->num_tokens);
    st->budget -= n;
    sched_shared_note(s, q);
    return true;
}

/* Pass 3: waiting requests in admission order while they fit. */
static void schedule_admissions(kvrt_sched_t *s, step_state_t *st, int32_t *hit_blocks)
{
    sched_compact_running(s, false);
    seq_t *q;
    /* At most max_batch_tokens running: each gets a token every step. */
    const uint32_t max_running = min_u32(s->max_seqs, s->max_batch_tokens);
    while ((q = sched_heap_top(s)) && s->plan->num_seqs < s->max_seqs &&
           s->running_live < max_running && s->num_share_waiting < s->max_seqs) {
        if (st->budget == 0) {
            st->budget_bound = true;
            break;
        }
        /* Not back in the step that just preempted it. */
        if (q->preemptions && q->preempted_step == s->step_count)
            break;
        if (!admit(s, q, st, hit_blocks))
            break;
    }
    if (s->num_share_waiting || s->share_waited_tokens)
        sched_shared_requeue(s);
}

/* Entry i's blocks in the CSR tables: those of its tokens, not the blocks
 * its row holds past them (left by rolled-back drafts: commit.c). */
static uint32_t csr_blocks(const kvrt_sched_t *s, uint32_t i)
{
    const uint32_t own = sched_blocks_for(s, (uint32_t)s->buf->seq_lens[i]);
    const uint32_t held = s->seqs[s->buf->slot_of[i]].row_blocks;
    return own < held ? own : held;
}

static void build_csr(kvrt_sched_t *s)
{
    plan_buffers_t *b = s->buf;
    uint32_t total = 0;
    for (uint32_t i = 0; i < s->plan->num_seqs; i++)
        total += csr_blocks(s, i);
    if (total > b->csr_capacity) {
        uint32_t capacity = b->csr_capacity ? b->csr_capacity : 1024;
        while (capacity < total)
            capacity *= 2;
        int32_t *grown = realloc(b->csr_ids, (size_t)capacity * sizeof(int32_t));
        if (!grown) {
            /* Leave the CSR view out of this plan rather than fail the step:
             * the padded rows carry the same information. */
            kvrt_log(s->ctx, KVRT_LOG_WARN, "sched: CSR block tables of %u ids: no memory",
                     total);
            s->plan->block_table_offsets = NULL;
            s->plan->block_table_ids = NULL;
            return;
        }
        b->csr_ids = grown;
        b->csr_capacity = capacity;
    }
    uint32_t at = 0;
    b->csr_offsets[0] = 0;
    for (uint32_t i = 0; i < s->plan->num_seqs; i++) {
        const seq_t *q = &s->seqs[b->slot_of[i]];
        const uint32_t nb = csr_blocks(s, i);
        memcpy(b->csr_ids + at, s->rows + (size_t)q->row * s->row_stride,
               (size_t)nb * sizeof(int32_t));
        at += nb;
        b->csr_offsets[i + 1] = (int32_t)at;
    }
    s->plan->block_table_offsets = b->csr_offsets;
    s->plan->block_table_ids = b->csr_ids;
}

/* Publishes the rows changed since the last plan and, after a plan that
 * goes in flight, starts a new set. An empty plan is not in flight: its
 * set goes on growing into the next plan's (which lists its rows again),
 * so that the buffers of plans in flight are never reached by the
 * rotation however many empty steps come between. */
static void publish_rows_changed(kvrt_sched_t *s)
{
    row_changes_t *rc = &s->rc;
    s->plan->rows_changed = rc->changed[rc->accumulating];
    s->plan->num_rows_changed = rc->num_changed[rc->accumulating];
    if (!s->plan->num_seqs)
        return;
    /* The next buffer: the lists of plans still in flight are older. */
    rc->accumulating = (rc->accumulating + 1) % (SCHED_PLAN_SLOTS + 1);
    rc->num_changed[rc->accumulating] = 0;
    rc->epoch++;
}

KVRT_EXPORT kvrt_status_t kvrt_sched_step(kvrt_sched_t *s, uint64_t now_ns,
                                          const kvrt_batch_plan_t **plan_out)
{
    if (KVRT_UNLIKELY(!s))
        return KVRT_ERR_INVALID_ARG;
    if (KVRT_UNLIKELY(!plan_out))
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "plan_out is NULL");
    if (KVRT_UNLIKELY(s->num_pending >= s->max_in_flight))
        return kvrt_fail(s->ctx, KVRT_ERR_BAD_STATE,
                         "plan %llu is not committed yet (%u plans in flight at most)",
                         (unsigned long long)s->plans[s->pending_head].step,
                         s->max_in_flight);
    uint64_t t_start = kvrt_now_ns();
    sched_sync_cache_resets(s);
    const uint32_t slot = (s->pending_head + s->num_pending) % s->max_in_flight;
    sched_use_slot(s, slot);
    sched_compact_running(s, false);
    kvrt_batch_plan_t *p = s->plan;
    p->step = ++s->step_count;
    p->now_ns = now_ns;
    p->num_seqs = p->num_tokens = 0;
    p->num_prefill_seqs = p->num_decode_seqs = 0;
    p->num_prefill_tokens = p->num_draft_tokens = 0;
    p->max_seq_len = 0;
    p->num_copies = 0;
    p->num_preempted = 0;
    p->block_table_offsets = NULL;
    p->block_table_ids = NULL;
    if (s->num_groups > 1)
        sched_groups_begin_step(s);

    sched_expire_arrivals(s, now_ns);
    step_state_t st = {.budget = s->max_batch_tokens, .budget_bound = false};
    hold_for_item(s, &st);
    st.budget -= st.held; /* the decodes plan in what is left */
    schedule_decodes(s, &st);
    st.budget += st.held;
    schedule_prefills(s, &st);
    release_hold(&st); /* a queued head, the owner or not, takes what is left */
    schedule_admissions(s, &st, s->match_blocks);
    sched_compact_running(s, false);

    if (s->csr_tables) {
        build_csr(s);
        if (s->num_groups > 1)
            sched_groups_csr(s);
    }
    publish_rows_changed(s);
    sched_groups_publish(s);
    if (p->num_seqs) {
        s->num_pending++;
        s->stats.steps++;
        s->stats.scheduled_tokens += p->num_tokens;
        s->stats.prefill_tokens += p->num_prefill_tokens;
        s->stats.decode_tokens += p->num_tokens - p->num_prefill_tokens;
    }
    if (st.budget_bound)
        s->stats.budget_bound_steps++;
    s->stats.step_cpu_ns += kvrt_now_ns() - t_start;
    *plan_out = p;
    return KVRT_OK;
}
