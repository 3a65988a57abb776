/*
 * arrival.c - "waiting for KV": a queued request whose prefix K/V is moved
 * into its blocks by the caller (a tier onload, a prefill/decode hand-off,
 * a peer pull) instead of being recomputed.
 *
 * The caller drives it: kvrt_seq_await_kv allocates the blocks and parks
 * the request (WAITING_KV, out of the waiting queue, never planned), and
 * kvrt_arrival_complete says how many blocks landed. The step only checks
 * deadlines, in O(1) until one has passed.
 *
 * The rule that shapes the code: blocks the caller may still be writing are
 * never handed to anyone else. When a request lets go of its arrival early
 * (deadline, abort), its table moves into the arrival record and is
 * destroyed only when the caller completes the arrival. Arrivals therefore
 * have their own generational ids and outlive the requests they served.
 */
#include <string.h>

#include "sched_internal.h"

static inline kvrt_arrival_id_t arrival_id(const kvrt_sched_t *s, const arrival_t *a)
{
    return ((uint64_t)a->generation << 32) | (uint64_t)(a - s->arrivals + 1);
}

static arrival_t *arrival_lookup(const kvrt_sched_t *s, kvrt_arrival_id_t id)
{
    uint32_t index = (uint32_t)id - 1;
    uint32_t generation = (uint32_t)(id >> 32);
    if (index >= s->max_requests || !(generation & 1))
        return NULL;
    arrival_t *a = &s->arrivals[index];
    return a->generation == generation ? a : NULL;
}

void sched_arrivals_init(kvrt_sched_t *s)
{
    for (uint32_t i = 0; i < s->max_requests; i++)
        s->arrivals[i].next_free = i + 1 < s->max_requests ? i + 1 : SCHED_NONE;
    s->arrival_free = 0;
    s->next_deadline = UINT64_MAX;
}

static void arrival_free(kvrt_sched_t *s, arrival_t *a)
{
    if (a->table) {
        kvrt_table_destroy(s->pool, a->table);
        s->num_given_up--;
    }
    a->table = 0;
    a->generation++; /* odd -> even: the id is dead */
    a->next_free = s->arrival_free;
    s->arrival_free = (uint32_t)(a - s->arrivals);
}

void sched_free_arrivals(kvrt_sched_t *s)
{
    for (uint32_t i = 0; i < s->max_requests; i++)
        if (s->arrivals[i].table)
            kvrt_table_destroy(s->pool, s->arrivals[i].table);
}

/* Takes q out of WAITING_KV; it keeps its table unless the caller moves it. */
static void stop_awaiting(kvrt_sched_t *s, seq_t *q)
{
    q->arrival = SCHED_NONE;
    s->num_awaiting--;
}

void sched_abandon_arrival(kvrt_sched_t *s, seq_t *q)
{
    arrival_t *a = &s->arrivals[q->arrival];
    a->table = q->table;
    a->seq = SCHED_NONE;
    if (a->table)
        s->num_given_up++;
    q->table = 0;
    stop_awaiting(s, q);
}

/* Back into the waiting queue with its original key. */
static void requeue(kvrt_sched_t *s, seq_t *q)
{
    q->state = q->preemptions ? KVRT_SEQ_PREEMPTED : KVRT_SEQ_WAITING;
    sched_heap_push(s, q);
}

void sched_expire_arrivals(kvrt_sched_t *s, uint64_t now_ns)
{
    if (KVRT_LIKELY(!s->num_awaiting || now_ns <= s->next_deadline))
        return;
    /* Rare (a deadline passed): one pass over the requests. */
    uint64_t next = UINT64_MAX;
    uint32_t left = s->num_awaiting;
    for (uint32_t i = 0; i < s->max_requests && left; i++) {
        seq_t *q = &s->seqs[i];
        if (q->state != KVRT_SEQ_WAITING_KV)
            continue;
        left--;
        uint64_t deadline = s->arrivals[q->arrival].deadline_ns;
        if (deadline >= now_ns) {
            if (deadline < next)
                next = deadline;
            continue;
        }
        sched_release(s, q); /* the arrival keeps its blocks */
        requeue(s, q);
        s->stats.arrivals_expired++;
    }
    s->next_deadline = next;
}

static kvrt_status_t check_await(kvrt_sched_t *s, const seq_t *q, kvrt_seq_id_t id,
                                 const kvrt_arrival_params_t *p)
{
    if (p->field_mask & ~(uint64_t)KVRT_ARRIVAL_PARAM_DEADLINE)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(p->field_mask &
                                              ~(uint64_t)KVRT_ARRIVAL_PARAM_DEADLINE));
    if (!q)
        return kvrt_fail(s->ctx, KVRT_ERR_UNKNOWN_REQUEST,
                         "request 0x%llx is unknown or already drained",
                         (unsigned long long)id);
    if (q->heap_pos == SCHED_NONE || q->landed)
        return kvrt_fail(s->ctx, KVRT_ERR_BAD_STATE,
                         "request 0x%llx is not queued without arrived KV (state %d)",
                         (unsigned long long)id, (int)q->state);
    if (p->num_tokens == 0 || p->num_tokens >= q->num_tokens)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "an arrival of %u tokens: needs 1 .. %u (the last token is "
                         "recomputed)",
                         p->num_tokens, q->num_tokens - 1);
    if (s->arrival_free == SCHED_NONE)
        return kvrt_fail(s->ctx, KVRT_ERR_REQUEST_LIMIT,
                         "all %u arrivals are outstanding", s->max_requests);
    return KVRT_OK;
}

/* Gives q's table the blocks of tokens [computed, end). Unchanged on error
 * (a table made here for the call is released). */
static kvrt_status_t allocate_arrival(kvrt_sched_t *s, seq_t *q, uint32_t end)
{
    bool had_table = q->table != 0;
    kvrt_status_t st = KVRT_OK;
    if (!had_table)
        st = sched_match_prefix(s, q, s->match_blocks);
    if (st == KVRT_OK && end > q->computed) {
        uint32_t need = sched_blocks_for(s, end) - sched_blocks_for(s, q->computed);
        if (!sched_blocks_available(s, need)) {
            st = kvrt_fail(s->ctx, KVRT_ERR_NO_BLOCKS,
                           "an arrival of %u blocks would leave the pool below its "
                           "watermark",
                           need);
        } else {
            kvrt_block_copy_t copy;
            uint32_t copies = 0;
            /* The table ends on a block boundary (hits are whole blocks):
             * nothing shared is written, so no copy can be asked for. */
            st = kvrt_table_append(s->pool, q->table, end - q->computed, NULL, &copy,
                                   &copies);
        }
    }
    if (st != KVRT_OK && !had_table && q->table) {
        sched_release(s, q);
    }
    return st;
}

KVRT_EXPORT kvrt_status_t kvrt_seq_await_kv(kvrt_sched_t *s, kvrt_seq_id_t id,
                                            const kvrt_arrival_params_t *p,
                                            kvrt_arrival_id_t *arrival_out,
                                            uint32_t *first_block_out,
                                            uint32_t *num_blocks_out)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    if (!p || !arrival_out || !first_block_out || !num_blocks_out)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "params, arrival_out, first_block_out and num_blocks_out are "
                         "required");
    if (s->hybrid)
        return kvrt_fail(s->ctx, KVRT_ERR_UNSUPPORTED,
                         "waiting for KV names one group's blocks: not with several cache "
                         "groups or a sliding window");
    seq_t *q = sched_lookup(s, id);
    kvrt_status_t st = check_await(s, q, id, p);
    if (st != KVRT_OK)
        return st;
    st = allocate_arrival(s, q, p->num_tokens);
    if (st != KVRT_OK)
        return st;

    uint32_t index = s->arrival_free;
    arrival_t *a = &s->arrivals[index];
    s->arrival_free = a->next_free;
    a->generation++; /* even -> odd: live */
    a->seq = sched_slot(s, q);
    a->first_block = q->computed >> s->block_shift;
    a->end_tokens = p->num_tokens > q->computed ? p->num_tokens : q->computed;
    a->num_blocks = sched_blocks_for(s, a->end_tokens) - a->first_block;
    a->table = 0;
    a->deadline_ns = (p->field_mask & KVRT_ARRIVAL_PARAM_DEADLINE) ? p->deadline_ns : UINT64_MAX;
    if (s->pinned == sched_slot(s, q))
        s->pinned = SCHED_NONE; /* its table now serves the arrival */
    sched_heap_remove(s, q);
    q->state = KVRT_SEQ_WAITING_KV;
    q->arrival = index;
    s->num_awaiting++;
    if (a->deadline_ns < s->next_deadline)
        s->next_deadline = a->deadline_ns;
    s->stats.arrivals++;
    *arrival_out = arrival_id(s, a);
    *first_block_out = a->first_block;
    *num_blocks_out = a->num_blocks;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_arrival_complete(kvrt_sched_t *s, kvrt_arrival_id_t id,
                                                uint32_t landed_blocks)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    arrival_t *a = arrival_lookup(s, id);
    if (!a)
        return kvrt_fail(s->ctx, KVRT_ERR_UNKNOWN_REQUEST,
                         "arrival 0x%llx is unknown or already completed",
                         (unsigned long long)id);
    if (a->seq == SCHED_NONE) { /* given up: only the blocks are left */
        arrival_free(s, a);
        return KVRT_OK;
    }
    if (landed_blocks > a->num_blocks)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "%u blocks landed of an arrival of %u", landed_blocks,
                         a->num_blocks);
    seq_t *q = &s->seqs[a->seq];
    stop_awaiting(s, q);
    uint32_t end = (a->first_block + landed_blocks) << s->block_shift;
    if (end > a->end_tokens)
        end = a->end_tokens;
    if (landed_blocks < a->num_blocks)
        s->stats.arrivals_failed++;
    if (landed_blocks == 0) {
        /* Nothing usable: matched again at admission, like any request. */
        sched_release(s, q);
    } else {
        kvrt_table_truncate(s->pool, q->table, end);
        s->stats.arrived_tokens += end - q->computed;
        q->computed = end;
        q->landed = true;
        q->landed_pos = s->num_landed;
        s->landed_slots[s->num_landed++] = sched_slot(s, q);
        s->landed_blocks += sched_blocks_for(s, end);
        /* Cached now, so that giving the blocks up under pressure
         * (sched_release_landed) keeps them findable. */
        if (s->cache)
            sched_cache_full_blocks(s, q);
    }
    a->seq = SCHED_NONE;
    arrival_free(s, a);
    requeue(s, q);
    return KVRT_OK;
}

void sched_unland(kvrt_sched_t *s, seq_t *q)
{
    if (!q->landed)
        return;
    q->landed = false;
    uint32_t last = s->landed_slots[--s->num_landed];
    s->landed_slots[q->landed_pos] = last;
    s->seqs[last].landed_pos = q->landed_pos;
    s->landed_blocks -= sched_blocks_for(s, q->computed);
}

bool sched_release_landed(kvrt_sched_t *s, const seq_t *keep)
{
    /* The one the admission order reaches last: lowest priority, latest
     * deadline (none is latest), latest arrival. O(landed requests). */
    seq_t *worst = NULL;
    for (uint32_t i = 0; i < s->num_landed; i++) {
        seq_t *q = &s->seqs[s->landed_slots[i]];
        if (q == keep)
            continue;
        if (!worst || q->priority < worst->priority ||
            (q->priority == worst->priority &&
             (q->deadline_ns > worst->deadline_ns ||
              (q->deadline_ns == worst->deadline_ns && q->order > worst->order))))
            worst = q;
    }
    if (!worst)
        return false;
    sched_release(s, worst);
    return true;
}
