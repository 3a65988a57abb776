/*
 * preempt.c - making room when a step runs out of blocks: what gives its
 * blocks back first, the preemption victim, and taking a request out of
 * the plan being built.
 *
 * The order (sched_relieve) is the one docs/scheduler.md tables: a pinned
 * waiting head's prefix hits, then the blocks rejected drafts left with
 * other running requests, then queued requests' arrived K/V, and only then
 * a running request, the lowest priority and latest arrival. Everything
 * here walks the running array or the plan: O(running) per call, on the
 * slow path only (a step that found no free block).
 */
#include <string.h>

#include "sched_internal.h"

/* The victim when a running request needs a block: the lowest priority
 * among all running requests (the one in need included, planned or not),
 * the latest arrival among equals. So no request is ever preempted for one
 * of lower priority, and among equals first come, first served. */
static seq_t *pick_victim(kvrt_sched_t *s)
{
    seq_t *best = NULL;
    for (uint32_t i = 0; i < s->num_running; i++) {
        seq_t *q;
        if (!sched_running_valid(s, i, &q))
            continue;
        if (!best || q->priority < best->priority ||
            (q->priority == best->priority && q->order > best->order))
            best = q;
    }
    return best;
}

/* Takes v's entry out of the plan built so far (v is about to be
 * preempted): later entries and their tokens move up, its tokens go back
 * to the budget, its block copies are dropped. O(plan); preemption only. */
void sched_unplan(kvrt_sched_t *s, seq_t *v, uint32_t *budget)
{
    plan_buffers_t *b = s->buf;
    kvrt_batch_plan_t *p = s->plan;
    const uint32_t slot = sched_slot(s, v);
    uint32_t i = 0;
    while (b->slot_of[i] != slot)
        i++;
    const kvrt_plan_seq_t e = b->seqs[i];
    const uint32_t n = e.num_new_tokens;
    const uint32_t t0 = (uint32_t)b->query_start_loc[i], tail = p->num_tokens - t0 - n;
    memmove(b->input_tokens + t0, b->input_tokens + t0 + n, (size_t)tail * sizeof(int32_t));
    memmove(b->positions + t0, b->positions + t0 + n, (size_t)tail * sizeof(int32_t));
    memmove(b->slot_mapping + t0, b->slot_mapping + t0 + n, (size_t)tail * sizeof(int64_t));
    if (s->num_groups > 1)
        sched_groups_unplan(s, slot, t0, n, tail);
    p->max_seq_len = 0;
    for (uint32_t j = 0; j + 1 < p->num_seqs; j++) {
        if (j >= i) {
            b->seqs[j] = b->seqs[j + 1];
            b->slot_of[j] = b->slot_of[j + 1];
            b->seq_lens[j] = b->seq_lens[j + 1];
            b->row_index[j] = b->row_index[j + 1];
            b->query_start_loc[j + 1] = b->query_start_loc[j + 2] - (int32_t)n;
        }
        if ((uint32_t)b->seq_lens[j] > p->max_seq_len)
            p->max_seq_len = (uint32_t)b->seq_lens[j];
    }
    p->num_seqs--;
    p->num_tokens -= n;
    if (e.kind == KVRT_PLAN_PREFILL) {
        p->num_prefill_seqs--;
        p->num_prefill_tokens -= n;
    } else {
        p->num_decode_seqs--;
        p->num_draft_tokens -= e.num_drafts;
    }
    uint32_t kept = 0;
    for (uint32_t c = 0; c < p->num_copies; c++)
        if (b->copy_owner[c] != slot) {
            b->copies[kept] = b->copies[c];
            b->copy_owner[kept++] = b->copy_owner[c];
        }
    p->num_copies = kept;
    v->in_plan &= (uint8_t)~sched_plan_bit(s);
    if (s->async) {
        v->ahead -= n;
        v->pending_samples -= e.sample;
        v->pending_spec = 0;
    }
    *budget += n;
}

static void preempt(kvrt_sched_t *s, seq_t *q, uint32_t *budget)
{
    if (q->in_plan)
        sched_unplan(s, q, budget);
    sched_release(s, q);
    q->state = KVRT_SEQ_PREEMPTED;
    q->in_prefill = 0;
    q->engine_drafts = 0;
    q->preemptions++;
    q->preempted_step = s->step_count;
    sched_heap_push(s, q);
    s->buf->preempted[s->plan->num_preempted++] = sched_id(s, q);
    s->stats.preemptions++;
}

/* Blocks that rejected drafts left with running requests other than
 * `except` go back to the pool: a table ahead of its plan (lag < 0) is cut
 * to the plan's length (committed tokens, those of plans in flight and
 * those planned this step, whose slots stay where they are), which frees
 * the blocks past it, and the row follows. Those blocks hold no token
 * anyone computed (never offered to the cache). Returns whether a block
 * came back. O(running): only when blocks ran out. */
static bool trim_kept_blocks(kvrt_sched_t *s, const seq_t *except)
{
    bool freed = false;
    for (uint32_t i = 0; i < s->num_running; i++) {
        seq_t *q;
        if (!sched_running_valid(s, i, &q) || q == except || q->lag >= 0)
            continue; /* (a hybrid scheduler's lag never goes negative) */
        uint32_t table_blocks, table_tokens;
        kvrt_table_view(s->pool, q->table, NULL, &table_blocks, &table_tokens);
        const uint32_t plan_tokens = table_tokens - (uint32_t)-q->lag;
        if (sched_blocks_for(s, plan_tokens) == table_blocks)
            continue; /* its kept positions are all in its tail block */
        if (kvrt_table_truncate(s->pool, q->table, plan_tokens) != KVRT_OK)
            continue; /* cannot fail on a live table it shortens */
        q->lag = 0;
        sched_row_sync(s, q, 0, false);
        freed = true;
    }
    return freed;
}

/* Blocks ran out for q: a pinned waiting head gives up its hits, then (for
 * a running request) the blocks rejected drafts left with others go back,
 * which hold nothing anyone computed, then queued arrived K/V (lost without
 * a prefix cache) is given up, then a victim is preempted (an admission,
 * `admitting`, preempts nobody but itself). Returns true to try again,
 * false when q is not to be planned this step: preempted, failed, or
 * waiting for arrivals or plans in flight to give blocks back. */
bool sched_relieve(kvrt_sched_t *s, seq_t *q, uint32_t *budget, bool admitting)
{
    if (s->pinned != SCHED_NONE) { /* a waiting head's hits go first */
        sched_unpin(s);
        return true;
    }
    if (!admitting && trim_kept_blocks(s, q)) /* then positions no one computed */
        return true;
    if (sched_release_landed(s, NULL)) /* then queued K/V that arrived */
        return true;
    seq_t *victim = admitting ? q : pick_victim(s);
    if (victim->in_plan & ~sched_plan_bit(s))
        return false; /* in flight (async): q waits for that plan's commit */
    if (victim == q) {
        /* Alone among requests that have not ended: an ended one still
         * running holds blocks that its plan's commit gives back. */
        const bool alone = s->running_live - s->running_ended == 1;
        if (alone && (s->num_awaiting || s->num_given_up || s->num_pending))
            return false; /* arrivals or plans in flight hold blocks */
        if (alone) {
            kvrt_fail(s->ctx, KVRT_ERR_NO_BLOCKS,
                      "request 0x%llx cannot grow even alone in the pool",
                      (unsigned long long)sched_id(s, q));
            sched_end(s, q, KVRT_END_FAILED, KVRT_ERR_NO_BLOCKS);
        } else {
            preempt(s, q, budget);
        }
        return false;
    }
    preempt(s, victim, budget);
    return true;
}
