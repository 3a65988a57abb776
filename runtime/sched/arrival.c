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
 * (deadline, abort), its tables move into the arrival record and each is
 * destroyed only when the caller reports that group's writes over.
 * Arrivals therefore have their own generational ids and outlive the
 * requests they served.
 *
 * Hybrid schedulers (several cache groups, sliding windows): the K/V
 * arrives into every group's table, each group's part reported on its own
 * (kvrt_arrival_group_complete); the request waits until every group has
 * reported and then computes from the longest prefix all groups hold
 * (groups.c: a sliding-window group needs only the window's blocks).
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

/* Group g's part of arrival a. */
static inline arrival_group_t *arrival_part(const kvrt_sched_t *s, arrival_t *a, uint32_t g)
{
    if (g == 0)
        return &a->group0;
    return &s->xarrivals[(size_t)(a - s->arrivals) * (s->num_groups - 1) + g - 1];
}

void sched_arrivals_init(kvrt_sched_t *s)
{
    for (uint32_t i = 0; i < s->max_requests; i++) {
        s->arrivals[i].next_free = i + 1 < s->max_requests ? i + 1 : SCHED_NONE;
        s->arrivals[i].generation = s->first_generation | SCHED_GEN_ARRIVAL; /* (ids) */
    }
    s->arrival_free = 0;
    s->next_deadline = UINT64_MAX;
}

/* Does the given-up arrival a still hold a table in some group? */
static bool arrival_holds_blocks(const kvrt_sched_t *s, arrival_t *a)
{
    for (uint32_t g = 0; g < s->num_groups; g++)
        if (arrival_part(s, a, g)->table)
            return true;
    return false;
}

static void arrival_free(kvrt_sched_t *s, arrival_t *a)
{
    a->generation = sched_next_generation(a->generation); /* odd -> even: dead */
    a->next_free = s->arrival_free;
    s->arrival_free = (uint32_t)(a - s->arrivals);
}

/* The caller's writes into group g of the given-up arrival a are over. */
static void release_given_up_part(kvrt_sched_t *s, arrival_t *a, uint32_t g)
{
    arrival_group_t *part = arrival_part(s, a, g);
    if (!part->table)
        return;
    kvrt_table_destroy(s->groups[g].pool, part->table);
    part->table = 0;
    if (!arrival_holds_blocks(s, a))
        s->num_given_up--;
}

void sched_free_arrivals(kvrt_sched_t *s)
{
    /* Groups 1 and up only once their records exist (creation may fail). */
    const uint32_t groups = s->xarrivals ? s->num_groups : 1;
    for (uint32_t i = 0; i < s->max_requests; i++)
        for (uint32_t g = 0; g < groups; g++) {
            arrival_group_t *part = arrival_part(s, &s->arrivals[i], g);
            if (part->table)
                kvrt_table_destroy(s->groups[g].pool, part->table);
        }
}

/* Takes q out of WAITING_KV; it keeps its tables unless the caller moves them. */
static void stop_awaiting(kvrt_sched_t *s, seq_t *q)
{
    q->arrival = SCHED_NONE;
    s->num_awaiting--;
}

void sched_abandon_arrival(kvrt_sched_t *s, seq_t *q)
{
    arrival_t *a = &s->arrivals[q->arrival];
    for (uint32_t g = 0; g < s->num_groups; g++) {
        arrival_group_t *part = arrival_part(s, a, g);
        kvrt_table_id_t *table = sched_gref(s, q, g).table;
        /* A group that reported is written no more: its blocks go with the
         * request's; the others wait for their report. */
        if (part->landed == ARRIVAL_UNREPORTED) {
            part->table = *table;
            *table = 0;
        }
    }
    a->seq = SCHED_NONE;
    if (arrival_holds_blocks(s, a))
        s->num_given_up++;
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

/* Gives q's tables the blocks of tokens [computed, end) (first[g], count[g]
 * per group). On error q holds what it held before (a pinned head keeps
 * its hits; hits found here are given back). The scheduler's counts do not
 * change either way: the query and its hit are counted at admission. The
 * cache itself has seen the lookup (its statistics, its recency order). */
static kvrt_status_t allocate_arrival(kvrt_sched_t *s, seq_t *q, uint32_t end, uint32_t *first,
                                      uint32_t *count)
{
    bool had_table = q->table != 0;
    kvrt_status_t st = KVRT_OK;
    if (!had_table)
        st = sched_match_prefix(s, q, s->match_blocks);
    if (st != KVRT_OK)
        return st;
    if (end <= q->computed) { /* the local cache holds it all */
        for (uint32_t g = 0; g < s->num_groups; g++) {
            first[g] = q->computed >> s->groups[g].block_shift;
            count[g] = 0;
        }
    } else {
        st = sched_groups_extend_for_arrival(s, q, end, first, count);
    }
    if (st != KVRT_OK && (!had_table || st != KVRT_ERR_NO_BLOCKS))
        sched_release(s, q);
    return st;
}

static kvrt_status_t await_kv(kvrt_sched_t *s, kvrt_seq_id_t id, const kvrt_arrival_params_t *p,
                              kvrt_arrival_id_t *arrival_out, uint32_t *first_out,
                              uint32_t *count_out)
{
    seq_t *q = sched_lookup(s, id);
    kvrt_status_t st = check_await(s, q, id, p);
    if (st != KVRT_OK)
        return st;
    /* A cache reset no step has seen yet is settled first: the K/V about
     * to be written is of the new weights, and only requests that held
     * K/V before the reset stop caching (sched_sync_cache_resets). */
    sched_sync_cache_resets(s);
    uint32_t first[KVRT_SCHED_MAX_GROUPS], count[KVRT_SCHED_MAX_GROUPS];
    st = allocate_arrival(s, q, p->num_tokens, first, count);
    if (st != KVRT_OK)
        return st;

    uint32_t index = s->arrival_free;
    arrival_t *a = &s->arrivals[index];
    s->arrival_free = a->next_free;
    a->generation = sched_next_generation(a->generation); /* even -> odd: live */
    a->seq = sched_slot(s, q);
    a->end_tokens = p->num_tokens > q->computed ? p->num_tokens : q->computed;
    a->groups_left = s->num_groups;
    for (uint32_t g = 0; g < s->num_groups; g++)
        *arrival_part(s, a, g) = (arrival_group_t){
            .first_block = first[g], .num_blocks = count[g], .landed = ARRIVAL_UNREPORTED};
    a->deadline_ns = (p->field_mask & KVRT_ARRIVAL_PARAM_DEADLINE) ? p->deadline_ns : UINT64_MAX;
    if (s->pinned == sched_slot(s, q))
        s->pinned = SCHED_NONE; /* its tables now serve the arrival */
    sched_heap_remove(s, q);
    q->state = KVRT_SEQ_WAITING_KV;
    q->share_id = 0; /* it waits for its K/V now, not for another's prefill */
    q->arrival = index;
    s->num_awaiting++;
    if (a->deadline_ns < s->next_deadline)
        s->next_deadline = a->deadline_ns;
    s->stats.arrivals++;
    *arrival_out = arrival_id(s, a);
    memcpy(first_out, first, s->num_groups * sizeof(*first));
    memcpy(count_out, count, s->num_groups * sizeof(*count));
    return KVRT_OK;
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
    if (s->num_groups > 1)
        return kvrt_fail(s->ctx, KVRT_ERR_UNSUPPORTED,
                         "kvrt_seq_await_kv gives one group's blocks to fill, and this "
                         "scheduler has %u cache groups: kvrt_seq_await_kv_groups names "
                         "each group's",
                         s->num_groups);
    return await_kv(s, id, p, arrival_out, first_block_out, num_blocks_out);
}

KVRT_EXPORT kvrt_status_t kvrt_seq_await_kv_groups(kvrt_sched_t *s, kvrt_seq_id_t id,
                                                   const kvrt_arrival_params_t *p,
                                                   uint32_t num_groups,
                                                   kvrt_arrival_id_t *arrival_out,
                                                   uint32_t *first_blocks_out,
                                                   uint32_t *num_blocks_out)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    if (!p || !arrival_out || !first_blocks_out || !num_blocks_out)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "params, arrival_out, first_blocks_out and num_blocks_out are "
                         "required");
    if (num_groups != s->num_groups)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "num_groups %u: the scheduler has %u cache groups", num_groups,
                         s->num_groups);
    return await_kv(s, id, p, arrival_out, first_blocks_out, num_blocks_out);
}

/* Every group of a's request has reported: the tokens every group holds
 * become computed and the request is queued again. */
static void land(kvrt_sched_t *s, arrival_t *a)
{
    sched_sync_cache_resets(s);
    seq_t *q = &s->seqs[a->seq];
    stop_awaiting(s, q);
    uint32_t first[KVRT_SCHED_MAX_GROUPS], count[KVRT_SCHED_MAX_GROUPS],
        landed[KVRT_SCHED_MAX_GROUPS];
    bool failed = false, none_to_land = true;
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const arrival_group_t *part = arrival_part(s, a, g);
        first[g] = part->first_block;
        count[g] = part->num_blocks;
        landed[g] = part->landed;
        failed = failed || landed[g] < count[g];
        none_to_land = none_to_land && count[g] == 0;
    }
    if (failed)
        s->stats.arrivals_failed++;
    uint32_t end = sched_groups_arrival_served(s, q, a->end_tokens, first, count, landed);
    /* An arrival of no blocks (the local cache held the whole prefix)
     * keeps the hits it found, as one whose blocks all landed would. */
    if (end < q->computed || (end == q->computed && !(none_to_land && end))) {
        /* Nothing usable: matched again at admission, like any request. */
        sched_release(s, q);
    } else {
        for (uint32_t g = 0; g < s->num_groups; g++) {
            kvrt_table_truncate(s->groups[g].pool, *sched_gref(s, q, g).table, end);
            s->groups[g].landed_blocks += sched_group_held_blocks(s, q, g);
        }
        s->stats.arrived_tokens += end - q->computed;
        q->computed = end;
        q->landed = true;
        q->landed_pos = s->num_landed;
        s->landed_slots[s->num_landed++] = sched_slot(s, q);
        /* Cached now, so that giving the blocks up under pressure
         * (sched_release_landed) keeps them findable. */
        if (s->cache)
            sched_cache_full_blocks(s, q);
    }
    a->seq = SCHED_NONE;
    arrival_free(s, a);
    requeue(s, q);
}

static arrival_t *find_arrival(kvrt_sched_t *s, kvrt_arrival_id_t id)
{
    arrival_t *a = arrival_lookup(s, id);
    if (!a)
        kvrt_fail(s->ctx, KVRT_ERR_UNKNOWN_REQUEST, "arrival 0x%llx is unknown or already completed",
                  (unsigned long long)id);
    return a;
}

/* Group g of a (live or given up) reports `landed` blocks, checked. */
static void report(kvrt_sched_t *s, arrival_t *a, uint32_t g, uint32_t landed)
{
    arrival_part(s, a, g)->landed = landed;
    a->groups_left--;
    if (a->seq == SCHED_NONE) { /* given up: only the blocks are left */
        release_given_up_part(s, a, g);
        if (!a->groups_left)
            arrival_free(s, a);
    } else if (!a->groups_left) {
        land(s, a);
    }
}

KVRT_EXPORT kvrt_status_t kvrt_arrival_group_complete(kvrt_sched_t *s, kvrt_arrival_id_t id,
                                                      uint32_t group, uint32_t landed_blocks)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    arrival_t *a = find_arrival(s, id);
    if (!a)
        return KVRT_ERR_UNKNOWN_REQUEST;
    if (group >= s->num_groups)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "group %u of %u", group,
                         s->num_groups);
    arrival_group_t *part = arrival_part(s, a, group);
    if (part->landed != ARRIVAL_UNREPORTED)
        return kvrt_fail(s->ctx, KVRT_ERR_BAD_STATE,
                         "group %u of arrival 0x%llx has already reported", group,
                         (unsigned long long)id);
    if (landed_blocks > part->num_blocks) /* (given up or not: the caller's count) */
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "group %u: %u blocks landed of an arrival of %u", group, landed_blocks,
                         part->num_blocks);
    report(s, a, group, landed_blocks);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_arrival_complete(kvrt_sched_t *s, kvrt_arrival_id_t id,
                                                uint32_t landed_blocks)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    arrival_t *a = find_arrival(s, id);
    if (!a)
        return KVRT_ERR_UNKNOWN_REQUEST;
    /* Checked whether the request gave the arrival up or not: a count
     * the arrival cannot have is the caller's mistake either way. */
    if (s->num_groups > 1 && landed_blocks)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "with %u cache groups landed blocks are counted per group "
                         "(kvrt_arrival_group_complete); kvrt_arrival_complete ends the "
                         "rest with 0",
                         s->num_groups);
    if (landed_blocks > a->group0.num_blocks)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "%u blocks landed of an arrival of %u", landed_blocks,
                         a->group0.num_blocks);
    /* Every group that has not reported, in one go: the last report lands. */
    for (uint32_t g = 0; g < s->num_groups; g++)
        if (arrival_part(s, a, g)->landed == ARRIVAL_UNREPORTED)
            report(s, a, g, landed_blocks);
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
    for (uint32_t g = 0; g < s->num_groups; g++)
        s->groups[g].landed_blocks -= sched_group_held_blocks(s, q, g);
}

bool sched_landed_could_fit(const kvrt_sched_t *s, seq_t *q, uint32_t n)
{
    const uint32_t c = q->computed;
    uint64_t behind[KVRT_SCHED_MAX_GROUPS], need[KVRT_SCHED_MAX_GROUPS];
    for (uint32_t g = 0; g < s->num_groups; g++) {
        const sched_group_t *gr = &s->groups[g];
        behind[g] = gr->landed_blocks - (q->landed ? sched_group_held_blocks(s, q, g) : 0);
        need[g] = sched_group_blocks_for(gr, (uint64_t)c + n) - sched_group_blocks_for(gr, c);
    }
    uint64_t pool_behind[KVRT_SCHED_MAX_GROUPS], pool_need[KVRT_SCHED_MAX_GROUPS];
    sched_pool_sums(s, behind, pool_behind); /* groups sharing a pool, together */
    sched_pool_sums(s, need, pool_need);
    for (uint32_t g = 0; g < s->num_groups; g++) {
        if (s->groups[g].owner != g)
            continue;
        kvrt_pool_info_t info;
        kvrt_pool_info(s->groups[g].pool, &info);
        if ((uint64_t)info.free_blocks + info.cached_blocks + pool_behind[g] <
            pool_need[g] + (s->use_watermark ? info.watermark_blocks : 0))
            return false;
    }
    return true;
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
