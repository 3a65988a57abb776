/*
 * commit.c - kvrt_sched_commit: the engine's sampled tokens for the current
 * plan (and, optionally, the engine's drafts for the next step). Checked
 * whole before anything changes; then per entry: the computed
 * prefix grows, rejected drafts are rolled back (their positions are planned
 * again; the blocks they took stay with the request), tokens are
 * appended with their stop conditions, newly full blocks are hashed once
 * and inserted into the prefix cache (in batches: full_blocks.c), and ended
 * requests free their blocks.
 */
#include <stdint.h>
#include <string.h>

#include "sched_internal.h"

/* Whether any of the four tokens from given[from], those before given[a]
 * (the accepted drafts), is negative or unlike its draft (drafts[from]..):
 * one vector test, lanes at or past a masked out. Reads four entries of
 * each array. */
static inline uint32_t accepted_differ(const int32_t *given, const int32_t *drafts, uint32_t a,
                                       uint32_t from)
{
    const sched_v4i32 lane = {(int32_t)from, (int32_t)from + 1, (int32_t)from + 2,
                              (int32_t)from + 3};
    const sched_v4i32 acc_v = {(int32_t)a, (int32_t)a, (int32_t)a, (int32_t)a};
    const sched_v4i32 sign = {INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN};
    sched_v4i32 g, d;
    memcpy(&g, given + from, sizeof(g));
    memcpy(&d, drafts + from, sizeof(d));
    /* A lane fails with its sign bit or any bit that differs. */
    const sched_v4i32 f = ((g & sign) | (g ^ d)) & (lane < acc_v);
    uint64_t half[2];
    memcpy(half, &f, sizeof(half));
    return (half[0] | half[1]) != 0;
}

/* Per-entry checks: counts, drafts, token ids. Nothing changes here. */
static kvrt_status_t validate(kvrt_sched_t *s, const kvrt_commit_t *c)
{
    const plan_buffers_t *const b = s->buf;
    const kvrt_batch_plan_t *p = s->plan;
    const uint32_t *acc = (c->field_mask & KVRT_COMMIT_ACCEPTED) ? c->num_accepted : NULL;
    uint32_t total = 0;
    for (uint32_t i = 0; i < p->num_seqs; i++) {
        const kvrt_plan_seq_t *e = &b->seqs[i];
        uint32_t a = acc ? acc[i] : 0;
        if (!e->sample) {
            if (a)
                return kvrt_fail(s->ctx, KVRT_ERR_TOKEN_COUNT,
                                 "entry %u is a prefill chunk that samples nothing, yet "
                                 "num_accepted is %u",
                                 i, a);
            continue;
        }
        if (a > e->num_drafts)
            return kvrt_fail(s->ctx, KVRT_ERR_TOKEN_COUNT,
                             "entry %u: %u drafts accepted of %u proposed", i, a,
                             e->num_drafts);
        if ((uint64_t)total + 1 + a > c->num_tokens)
            return kvrt_fail(s->ctx, KVRT_ERR_TOKEN_COUNT,
                             "tokens run out at entry %u: %u given, at least %llu needed", i,
                             c->num_tokens, (unsigned long long)total + 1 + a);
        const uint32_t at = (uint32_t)b->query_start_loc[i] + 1;
        const int32_t *drafts = b->input_tokens + at;
        const int32_t *given = c->tokens + total;
        /* One test for all: any sign bit, any accepted token unlike its
         * draft, over the drafts' count (which an engine keeps steady) with
         * those past the accepted ones masked, so that a random accepted
         * count costs no mispredicted loop exit. Up to 4 drafts go as one
         * vector, up to 8 as two, when both arrays have that many entries
         * to read; otherwise a loop reads no token past the commit's own. */
        uint32_t bad = (uint32_t)given[a] >> 31;
        if (e->num_drafts) { /* (without drafts, the one token's sign is all) */
            const uint32_t given_left = c->num_tokens - total;
            const uint32_t planned_left = s->max_batch_tokens - at;
            if (KVRT_LIKELY(e->num_drafts <= 4 && given_left >= 4 && planned_left >= 4)) {
                bad |= accepted_differ(given, drafts, a, 0);
            } else if (e->num_drafts <= 8 && given_left >= 8 && planned_left >= 8) {
                bad |= accepted_differ(given, drafts, a, 0) |
                       accepted_differ(given, drafts, a, 4);
            } else {
                uint32_t span = e->num_drafts < given_left ? e->num_drafts : given_left;
                int32_t any = 0;
                uint32_t differ = 0;
                for (uint32_t j = 0; j < span; j++) {
                    int32_t in = -(int32_t)(j < a);
                    any |= given[j] & in;
                    differ |= (uint32_t)((given[j] ^ drafts[j]) & in);
                }
                bad |= any < 0 || differ;
            }
        }
        if (KVRT_UNLIKELY(bad)) {
            for (uint32_t j = 0; j <= a; j++) {
                if (given[j] < 0)
                    return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                                     "entry %u: token %u is negative (%d)", i, j, given[j]);
                if (j < a && given[j] != drafts[j])
                    return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                                     "entry %u: accepted token %u is %d but the draft was %d",
                                     i, j, given[j], drafts[j]);
            }
        }
        total += 1 + a;
    }
    if (total != c->num_tokens)
        return kvrt_fail(s->ctx, KVRT_ERR_TOKEN_COUNT,
                         "the plan and accepted counts take %u tokens, %u given", total,
                         c->num_tokens);
    return KVRT_OK;
}

/* The next drafts (KVRT_COMMIT_DRAFTS): counts within max_draft, only on
 * sampling entries, no negative token. *total_out: their sum. Nothing
 * changes here. */
static kvrt_status_t validate_next_drafts(kvrt_sched_t *s, const kvrt_commit_t *c,
                                          uint32_t *total_out)
{
    const kvrt_plan_seq_t *entries = s->buf->seqs;
    const uint32_t *counts = c->num_next_drafts;
    uint64_t total = 0;
    for (uint32_t i = 0; i < c->num_seqs; i++) {
        if (KVRT_LIKELY(counts[i] <= s->max_draft && (entries[i].sample || !counts[i]))) {
            total += counts[i];
            continue;
        }
        if (s->max_draft == 0)
            return kvrt_fail(s->ctx, KVRT_ERR_UNSUPPORTED,
                             "entry %u: next drafts, but speculation is off "
                             "(max_draft_tokens 0)", i);
        if (!entries[i].sample)
            return kvrt_fail(s->ctx, KVRT_ERR_TOKEN_COUNT,
                             "entry %u: %u next drafts on a prefill chunk that samples "
                             "nothing", i, counts[i]);
        return kvrt_fail(s->ctx, KVRT_ERR_TOKEN_COUNT, "entry %u: %u next drafts (at most %u)",
                         i, counts[i], s->max_draft);
    }
    if (total && !c->next_drafts)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "next_drafts is NULL with %llu next drafts",
                         (unsigned long long)total);
    int32_t any = 0; /* the sign bit of any draft: one test for all */
    for (uint64_t k = 0; k < total; k++)
        any |= c->next_drafts[k];
    if (KVRT_UNLIKELY(any < 0)) {
        uint64_t k = 0;
        while (c->next_drafts[k] >= 0)
            k++;
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "next draft %llu is negative (%d)",
                         (unsigned long long)k, c->next_drafts[k]);
    }
    *total_out = (uint32_t)total;
    return KVRT_OK;
}

static inline bool is_stop(const int32_t *stops, uint32_t num_stop, int32_t token)
{
    for (uint32_t k = 0; k < num_stop; k++)
        if (stops[k] == token)
            return true;
    return false;
}

/* Learns the request's acceptance and sets its next draft length: the
 * longest j with p^j >= 1/4 (draft_threshold[j] = 0.25^(1/j)), p the
 * chance that a draft is accepted once the ones before it were. A
 * verification of d drafts accepting a tried a of them, and one more
 * when a < d (the first rejected); those after it tell nothing. Decaying
 * sums of both, divided, estimate p whatever the lengths verified: the
 * fraction a / d would not (a rejection at j hides d - j drafts, so it
 * reads p = 0.8 at d = 4 as 0.59 and the length swings). */
static __attribute__((noinline)) void adapt_draft(kvrt_sched_t *s, seq_t *q, uint32_t drafts,
                                                  uint32_t accepted)
{
    const uint32_t tried = accepted + (accepted < drafts); /* >= 1 */
    q->accept_hits = (uint16_t)((4u * q->accept_hits + accepted * SCHED_ACCEPT_ONE) / 5u);
    q->accept_tries = (uint16_t)((4u * q->accept_tries + tried * SCHED_ACCEPT_ONE) / 5u);
    const float p = (float)q->accept_hits / (float)q->accept_tries; /* tries > 0 */
    uint32_t len = 1;
    while (len < s->max_draft && p >= s->draft_threshold[len + 1])
        len++;
    q->draft_len = (uint8_t)len;
}

/* Appends sampled tokens (one, or for a speculative entry 1 + accepted);
 * returns the end reason (NONE to go on). */
static KVRT_ALWAYS_INLINE kvrt_seq_end_reason_t append_sampled(kvrt_sched_t *s, seq_t *q,
                                                                const int32_t *tokens,
                                                                uint32_t count,
                                                                size_t readable, bool spec)
{
    /* Fields in locals: the token stores below may alias them (int32_t),
     * which would make the compiler load each again. */
    const uint32_t num = q->num_tokens, max = q->max_tokens;
    kvrt_seq_end_reason_t reason = KVRT_END_NONE;
    uint32_t room = max - num; /* >= 1 while it runs */
    uint32_t n = count < room ? count : room;
    if (q->num_stop) {
        /* Token j counts once num + j + 1 reaches the area's from; a
         * shared set's count from the first output. */
        const int32_t *stops;
        uint32_t j = 0;
        if (KVRT_LIKELY(q->stop_set)) {
            stops = s->stop_sets[q->stop_set - 1].tokens;
        } else {
            const stop_area_t *area = sched_stop_area(q);
            stops = area->tokens;
            j = area->from > num + 1 ? area->from - num - 1 : 0;
        }
        for (; j < n; j++)
            if (is_stop(stops, q->num_stop, tokens[j])) {
                n = j + 1; /* the stop token is kept, nothing after it */
                reason = KVRT_END_STOP;
                break;
            }
    }
    /* Into the request's own line of recent tokens; a line of the token
     * array is written once its 16 tokens are known (seq_t.recent). */
    const uint32_t in_line = num & (SCHED_RECENT - 1);
    if (KVRT_LIKELY(!spec)) { /* one token: a decode's or a prefill's */
        q->recent[in_line] = tokens[0];
        if (KVRT_UNLIKELY(in_line == SCHED_RECENT - 1))
            memcpy(q->token_array + (num - in_line), q->recent, sizeof(q->recent));
    } else if (in_line + n < SCHED_RECENT) {
        sched_copy32(q->recent + in_line, SCHED_RECENT - in_line, tokens, readable, n);
    } else {
        /* The line completes: it goes to the token array whole (its
         * entries from num on are stale), then the tokens, from num
         * (replacing those), and recent takes the tokens past the line's
         * end. Up to 8 tokens move as two vectors (sched_copy32), with no
         * call: anything written past the tokens, in recent or in the
         * array's room, lies past num_tokens. */
        const uint32_t to_end = SCHED_RECENT - in_line;
        memcpy(q->token_array + (num - in_line), q->recent, sizeof(q->recent));
        sched_copy32(q->token_array + num, room, tokens, readable, n);
        sched_copy32(q->recent, SCHED_RECENT, tokens + to_end, readable - to_end, n - to_end);
    }
    q->num_tokens = num + n;
    q->last_token = tokens[n - 1];
    if (reason == KVRT_END_NONE && num + n >= max)
        reason = KVRT_END_LENGTH;
    s->stats.output_tokens += n;
    /* The first output: only in a prefill (which spares a decode the line
     * of prompt_len). */
    if (q->in_prefill && num == q->prompt_len) {
        q->first_token_ns = s->plan->now_ns;
        if (q->deadline_ns != UINT64_MAX && s->plan->now_ns > q->deadline_ns) {
            q->deadline_missed = true;
            s->stats.deadline_misses++;
        }
    }
    return reason;
}

/* The block of position pos, one of plan entry i's (e), from the plan's
 * slots: a stream at hand, where the row is a line no one has fetched.
 * Out of line: a rollback needs it about once in eight, and inlined it
 * lengthened every entry's loop. */
static __attribute__((noinline)) int32_t block_of_entry_position(const kvrt_sched_t *s,
                                                                 const kvrt_plan_seq_t *e,
                                                                 uint32_t i, uint32_t pos,
                                                                 uint32_t row)
{
    const uint32_t k = pos - e->num_computed_tokens;
    if (KVRT_LIKELY(k < e->num_new_tokens))
        return (int32_t)(s->buf->slot_mapping[s->buf->query_start_loc[i] + k] >>
                         s->block_shift);
    return s->rows[(size_t)row * s->row_stride + (pos >> s->block_shift)];
}

/* Applies the plan's entries in order (the commit, once checked).
 * with_next: the commit carries the next drafts, stored for each request
 * still running as its entry is applied, while its lines are at hand; a
 * constant at both calls, so that the loop without them carries no trace
 * of them. */
static KVRT_ALWAYS_INLINE void apply_entries(kvrt_sched_t *s, const kvrt_commit_t *c,
                                             uint8_t bit, uint32_t next_total, bool with_next)
{
    const uint32_t *const acc = (c->field_mask & KVRT_COMMIT_ACCEPTED) ? c->num_accepted : NULL;
    uint32_t off = 0;
    /* Loop invariants in locals: stores through the requests' byte fields
     * would otherwise make the compiler reload them every entry. */
    const uint32_t num_seqs = s->plan->num_seqs;
    const kvrt_plan_seq_t *const entries = s->buf->seqs;
    const uint32_t *const slot_of = s->buf->slot_of;
    seq_t *const seqs = s->seqs;
    const bool async = s->async;
    const bool hybrid = s->hybrid;
    const bool caching = s->cache != NULL;
    const uint32_t block_mask = s->tokens_per_block - 1;
    /* Speculation's counters; a prefill chunk's cache check reads it too,
     * without a prefetch (prefill entries are few). */
    const bool second_line = s->max_draft != 0;
    const uint32_t *const next_counts = c->num_next_drafts;
    uint32_t next_at = 0; /* the entry's first next draft */
    for (uint32_t i = 0; i < num_seqs; i++) {
        if (i + SCHED_PREFETCH < num_seqs) {
            const char *ahead = (const char *)&seqs[slot_of[i + SCHED_PREFETCH]];
            __builtin_prefetch(ahead, 1);
            __builtin_prefetch(ahead + offsetof(seq_t, recent), 1);
            if (second_line)
                __builtin_prefetch(ahead + 64, 1);
            if (with_next)
                __builtin_prefetch(ahead + offsetof(seq_t, draft), 1);
        }
        if (i + SCHED_PREFETCH / 2 < num_seqs) {
            const seq_t *ahead = &seqs[slot_of[i + SCHED_PREFETCH / 2]];
            if (ahead->num_stop && !ahead->stop_set) /* its own stop area */
                __builtin_prefetch(sched_stop_area(ahead));
        }
        const kvrt_plan_seq_t *e = &entries[i];
        seq_t *q = &seqs[slot_of[i]];
        uint32_t a = acc ? acc[i] : 0;
        uint32_t given = e->sample ? 1 + a : 0;
        const uint32_t next_n = with_next ? next_counts[i] : 0;
        q->in_plan &= (uint8_t)~bit;
        if (async) {
            q->ahead -= e->num_new_tokens;
            q->pending_samples -= e->sample;
            if (e->kind == KVRT_PLAN_SPEC)
                q->pending_spec = 0;
        }
        if (q->release_at_commit) {
            /* Ended while the engine ran it: its blocks are free once the
             * last plan holding it is committed. */
            if (q->in_plan) {
                off += given;
                next_at += next_n;
                continue;
            }
            q->release_at_commit = 0;
            if (q->running_pos != SCHED_NONE)
                s->running_ended--;
            sched_inserts_flush(s); /* blocks are offered before any leave */
            sched_release(s, q);
            if (!(q->generation & 1))
                sched_slot_free(s, q); /* already drained */
            off += given;
            next_at += next_n;
            continue;
        }
        uint32_t rejected = e->num_drafts - a;
        const uint32_t advanced = e->num_new_tokens - rejected;
        q->computed += advanced;
        /* Rollback: the rejected drafts' positions are planned again. The
         * blocks the step gave them stay with the request for its next
         * tokens (the pool's table runs ahead of the plan: a negative lag),
         * so a rollback frees nothing and the next step takes nothing; only
         * the tail block moves back when the last token is in an earlier
         * block. No draft rejected: a subtraction of 0 and no move. */
        if (e->num_drafts == 0) {
            /* nothing to roll back */
        } else if (KVRT_LIKELY(!hybrid)) {
            q->lag -= (int32_t)rejected;
            const uint32_t end = q->computed + q->ahead; /* >= 1: it sampled */
            if (KVRT_UNLIKELY(((end - 1) ^ (end + rejected - 1)) >> s->block_shift))
                q->tail_block = block_of_entry_position(s, e, i, end - 1, q->row);
        } else if ((int32_t)rejected <= q->lag) {
            q->lag -= (int32_t)rejected; /* only drafts the tables were not told of */
        } else {
            sched_groups_truncate(s, q); /* every group; drops the lag */
        }
        kvrt_seq_end_reason_t reason = KVRT_END_NONE;
        if (e->sample) {
            if (e->kind == KVRT_PLAN_SPEC) {
                q->spec_proposed += e->num_drafts;
                q->spec_accepted += a;
                /* The totals and per-position counts are derived from
                 * these two when read (sched.c). */
                s->spec_by_drafts[e->num_drafts]++;
                s->spec_by_accepted[a]++;
                if (s->adaptive_draft)
                    adapt_draft(s, q, e->num_drafts, a);
            }
            reason = append_sampled(s, q, c->tokens + off, given, c->num_tokens - off,
                                    e->kind == KVRT_PLAN_SPEC);
            if (q->in_prefill) {
                q->in_prefill = 0;
                s->running_prefill--;
            }
        }
        off += given;
        /* Whether the entry may have filled a block to offer (the batch
         * checks on the second line). A decoding request has offered every
         * full block already (each commit's batch inserts them all), so
         * only a computed count that passed a block boundary can, which
         * the first line tells. A prefill chunk is always checked (prefix
         * hits and arrived K/V count as offered). Groups of other block
         * sizes fill blocks at other boundaries: hybrid schedulers let
         * every group decide (groups.c). */
        if (caching && (hybrid || e->kind == KVRT_PLAN_PREFILL ||
                        (q->computed & block_mask) < advanced))
            sched_insert_defer(s, q);
        if (reason != KVRT_END_NONE) {
            sched_inserts_flush(s); /* its own blocks included */
            sched_end(s, q, reason, KVRT_OK);
        } else if (with_next) { /* as kvrt_sched_set_drafts would set them */
            if (next_n)
                sched_copy32(q->draft, KVRT_SCHED_MAX_DRAFT, c->next_drafts + next_at,
                             next_total - next_at, next_n);
            q->engine_drafts = (uint8_t)next_n;
        }
        next_at += next_n;
    }
}

KVRT_EXPORT kvrt_status_t kvrt_sched_commit(kvrt_sched_t *s, const kvrt_commit_t *c)
{
    if (KVRT_UNLIKELY(!s))
        return KVRT_ERR_INVALID_ARG;
    if (KVRT_UNLIKELY(!c))
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "commit is NULL");
    const uint64_t known = KVRT_COMMIT_ACCEPTED | KVRT_COMMIT_DRAFTS;
    if (KVRT_UNLIKELY(c->field_mask & ~known))
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(c->field_mask & ~known));
    const kvrt_batch_plan_t *oldest = &s->plans[s->pending_head];
    if (KVRT_UNLIKELY(!s->num_pending || c->step != oldest->step))
        return kvrt_fail(s->ctx, KVRT_ERR_NO_STEP,
                         s->num_pending ? "commit names step %llu; the plan to commit is "
                                          "step %llu"
                                        : "commit of step %llu, but no plan awaits one "
                                          "(last step %llu)",
                         (unsigned long long)c->step,
                         (unsigned long long)(s->num_pending ? oldest->step : s->plan->step));
    if (KVRT_UNLIKELY(c->num_seqs != oldest->num_seqs))
        return kvrt_fail(s->ctx, KVRT_ERR_TOKEN_COUNT, "commit of %u sequences, plan has %u",
                         c->num_seqs, oldest->num_seqs);
    if (KVRT_UNLIKELY((c->num_tokens && !c->tokens) ||
                      ((c->field_mask & KVRT_COMMIT_ACCEPTED) && !c->num_accepted) ||
                      ((c->field_mask & KVRT_COMMIT_DRAFTS) && !c->num_next_drafts)))
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "tokens (num_tokens > 0), num_accepted and num_next_drafts (when "
                         "flagged) are required");
    /* The commit works on the oldest plan's slot, then points back at the
     * last plan built (its now_ns dates ends between steps). */
    const uint32_t last_slot = (uint32_t)(s->plan - s->plans);
    sched_use_slot(s, s->pending_head);
    const uint32_t *next_counts =
        (c->field_mask & KVRT_COMMIT_DRAFTS) ? c->num_next_drafts : NULL;
    uint32_t next_total = 0;
    kvrt_status_t status = validate(s, c);
    if (status == KVRT_OK && next_counts)
        status = validate_next_drafts(s, c, &next_total);
    if (status != KVRT_OK) {
        sched_use_slot(s, last_slot);
        return status;
    }
    const uint8_t bit = sched_plan_bit(s);

    uint64_t t_start = kvrt_now_ns();
    sched_sync_cache_resets(s);
    if (next_counts)
        apply_entries(s, c, bit, next_total, true);
    else
        apply_entries(s, c, bit, 0, false);
    sched_inserts_flush(s);
    sched_compact_running(s, false);
    s->num_pending--;
    s->pending_head = (s->pending_head + 1) % s->max_in_flight;
    sched_use_slot(s, last_slot);
    s->stats.commit_cpu_ns += kvrt_now_ns() - t_start;
    return KVRT_OK;
}
