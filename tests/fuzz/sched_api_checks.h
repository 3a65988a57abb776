/*
 * sched_api_checks.h - what fuzz_sched_api.c knows of the scheduler it
 * drives (the requests and arrivals it started, the plans in flight) and
 * the invariants it checks after every call: pools and caches verify,
 * request counts add up, refused calls change nothing and say why, plans
 * agree with their rows, write only their own blocks and end no chunk
 * inside a multimodal item, preemption takes the lowest running request,
 * outputs stop and end where they must.
 * Included by fuzz_sched_api.c only.
 */
#ifndef KVRT_FUZZ_SCHED_API_CHECKS_H
#define KVRT_FUZZ_SCHED_API_CHECKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvrt/kvrt.h"

#define MAX_IDS 48
#define MAX_ARRIVALS 16
#define MAX_SEQS 32
#define MAX_PROMPT 160
#define MAX_GROUPS 2
#define ALPHABET 8 /* token ids 0..7: prompts share prefixes, commits hit stops */
#define MAX_POOL_BLOCKS 260    /* 4 + 255, the most open_world makes */
#define MAX_ARRIVAL_BLOCKS 256 /* an arrival of up to 255 tokens */

#define breach(...)                                                                          \
    do {                                                                                     \
        fprintf(stderr, "fuzz_sched_api: " __VA_ARGS__);                                     \
        fputc('\n', stderr);                                                                 \
        abort();                                                                             \
    } while (0)

/* What the harness knows of a request it added: enough to check its end. */
typedef struct request {
    kvrt_seq_id_t id;
    uint32_t limit;      /* output tokens it may produce: max_new_tokens, or
                            fewer under max_seq_tokens */
    uint32_t min_tokens; /* outputs before a stop token counts */
    uint32_t stops;      /* bit t: token t ends it */
    int32_t priority;
    uint64_t order;      /* kvrt_seq_add order */
    uint32_t num_items;  /* multimodal items */
    kvrt_mm_item_t items[3];
} request_t;

/* An arrival the harness started: per group, the blocks its caller may be
 * writing until that group reports. */
typedef struct arrival {
    kvrt_arrival_id_t id;
    uint32_t open_groups; /* bit g: group g has not reported */
    uint32_t count[MAX_GROUPS];
    int32_t blocks[MAX_GROUPS][MAX_ARRIVAL_BLOCKS];
} arrival_t;

typedef struct world {
    kvrt_ctx_t *ctx;
    uint32_t num_groups;
    kvrt_pool_t *pools[MAX_GROUPS];
    kvrt_cache_t *caches[MAX_GROUPS];
    kvrt_sched_t *sched;
    kvrt_sched_params_t params;
    uint64_t now;
    uint64_t tag;
    request_t requests[MAX_IDS]; /* every request added, live or not (ring) */
    uint32_t num_ids, next_id;
    arrival_t arrivals[MAX_ARRIVALS];
    uint32_t num_arrivals;
    const kvrt_batch_plan_t *plans[KVRT_SCHED_MAX_PLANS_IN_FLIGHT]; /* oldest first */
    uint32_t num_plans;
    bool abrupt_end; /* destroy the scheduler as it is, plans and arrivals open */
} world_t;

/* What an engine can see of the scheduler and its pools. */
typedef struct snapshot {
    kvrt_sched_stats_t stats;
    kvrt_pool_info_t pools[MAX_GROUPS];
} snapshot_t;

static void snap(const world_t *w, snapshot_t *s)
{
    memset(s, 0, sizeof(*s));
    if (kvrt_sched_stats(w->sched, &s->stats) != KVRT_OK)
        breach("stats refused: %s", kvrt_ctx_last_error(w->ctx));
    s->stats.step_cpu_ns = s->stats.commit_cpu_ns = 0;
    for (uint32_t g = 0; g < w->num_groups; g++)
        if (kvrt_pool_info(w->pools[g], &s->pools[g]) != KVRT_OK)
            breach("pool info refused");
}

static void verify(const world_t *w, const char *what)
{
    for (uint32_t g = 0; g < w->num_groups; g++) {
        if (kvrt_pool_verify(w->pools[g]) != KVRT_OK)
            breach("after %s: pool %u: %s", what, g, kvrt_ctx_last_error(w->ctx));
        if (w->caches[g] && kvrt_cache_verify(w->caches[g]) != KVRT_OK)
            breach("after %s: cache %u: %s", what, g, kvrt_ctx_last_error(w->ctx));
    }
    snapshot_t s;
    snap(w, &s);
    const kvrt_sched_stats_t *t = &s.stats;
    uint64_t ended = t->finished_length + t->finished_stop + t->aborted + t->failed;
    if (t->added != ended + t->waiting + t->running + t->awaiting_kv)
        breach("after %s: %llu added but %llu ended, %llu waiting, %llu running, %llu awaiting KV",
               what, (unsigned long long)t->added, (unsigned long long)ended,
               (unsigned long long)t->waiting, (unsigned long long)t->running,
               (unsigned long long)t->awaiting_kv);
    if (t->running > w->params.max_seqs)
        breach("after %s: %llu running, max_seqs %u", what, (unsigned long long)t->running,
               w->params.max_seqs);
}

/* A call's outcome: refused calls change nothing and say why. */
static void judge(const world_t *w, kvrt_status_t st, const snapshot_t *before,
                  const char *what)
{
#ifdef FUZZ_TRACE
    snapshot_t t;
    snap(w, &t);
    fprintf(stderr, "%s: %s; running %llu waiting %llu awaiting %llu; used %u cached %u free %u\n",
            what, kvrt_status_str(st), (unsigned long long)t.stats.running,
            (unsigned long long)t.stats.waiting, (unsigned long long)t.stats.awaiting_kv,
            t.pools[0].used_blocks, t.pools[0].cached_blocks, t.pools[0].free_blocks);
#endif
    if (st != KVRT_OK) {
        snapshot_t after;
        snap(w, &after);
        if (memcmp(&after, before, sizeof(after)) != 0) {
            /* Name every count that moved: the stats' u64 fields, then each
             * pool's u32 fields. */
            const uint64_t *a = (const uint64_t *)&after.stats;
            const uint64_t *b = (const uint64_t *)&before->stats;
            for (size_t i = 0; i < offsetof(kvrt_sched_stats_t, spec_acceptance) / 8; i++)
                if (a[i] != b[i])
                    fprintf(stderr, "stats word %zu: %llu -> %llu\n", i,
                            (unsigned long long)b[i], (unsigned long long)a[i]);
            for (uint32_t g = 0; g < MAX_GROUPS; g++) {
                const uint32_t *x = (const uint32_t *)&after.pools[g],
                               *y = (const uint32_t *)&before->pools[g];
                for (size_t i = 0; i < offsetof(kvrt_pool_info_t, block_bytes) / 4; i++)
                    if (x[i] != y[i])
                        fprintf(stderr, "pool %u word %zu: %u -> %u\n", g, i, y[i], x[i]);
            }
            breach("%s refused (%s) but changed the scheduler's or a pool's counts", what,
                   kvrt_status_str(st));
        }
        const char *msg = kvrt_ctx_last_error(w->ctx);
        if (!msg || !*msg)
            breach("%s refused (%s) without a message", what, kvrt_status_str(st));
    }
    verify(w, what);
}

static int cmp_slot(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

#define MAX_PLAN_TOKENS (1u << 12) /* above any budget open_world makes */

/* Group g's slots of plan p, sorted, into out[MAX_PLAN_TOKENS]. */
static void sorted_slots(const kvrt_batch_plan_t *p, uint32_t g, int64_t *out)
{
    if (p->num_tokens > MAX_PLAN_TOKENS)
        breach("a plan of %u tokens, over its budget", p->num_tokens);
    memcpy(out, p->groups[g].slot_mapping, p->num_tokens * sizeof(int64_t));
    qsort(out, p->num_tokens, sizeof(int64_t), cmp_slot);
}

/* A plan's arrays agree with each other and with the rows, group by group. */
static void check_plan(const world_t *w, const kvrt_batch_plan_t *p)
{
    if (p->num_seqs > w->params.max_seqs || p->num_tokens > w->params.max_batch_tokens)
        breach("plan of %u sequences, %u tokens over its limits", p->num_seqs, p->num_tokens);
    if (p->num_groups != w->num_groups || p->query_start_loc[0] != 0 ||
        (uint32_t)p->query_start_loc[p->num_seqs] != p->num_tokens)
        breach("plan: groups or query offsets wrong");
    for (uint32_t i = 0; i < p->num_seqs; i++) {
        const kvrt_plan_seq_t *q = &p->seqs[i];
        uint32_t first = (uint32_t)p->query_start_loc[i];
        uint32_t n = (uint32_t)p->query_start_loc[i + 1] - first;
        if (n == 0 || n != q->num_new_tokens ||
            (uint32_t)p->seq_lens[i] != q->num_computed_tokens + n || q->row >= p->num_rows ||
            (uint32_t)p->row_index[i] != q->row)
            breach("plan entry %u: lengths or row wrong", i);
        if (q->kind == KVRT_PLAN_SPEC ? q->num_drafts == 0 || n != 1 + q->num_drafts
                                      : q->num_drafts != 0)
            breach("plan entry %u: kind %u with %u drafts", i, q->kind, q->num_drafts);
        for (uint32_t t = first; t < first + n; t++) {
            uint32_t pos = q->num_computed_tokens + (t - first);
            if ((uint32_t)p->positions[t] != pos)
                breach("plan entry %u: token %u at position %d, not %u", i, t,
                       p->positions[t], pos);
            if (p->input_tokens[t] < 0 && p->input_tokens[t] != KVRT_TOKEN_PLACEHOLDER)
                breach("plan entry %u: input token %d", i, p->input_tokens[t]);
            for (uint32_t g = 0; g < p->num_groups; g++) {
                const kvrt_plan_group_t *gr = &p->groups[g];
                int64_t slot = gr->slot_mapping[t];
                int32_t block = (int32_t)(slot / gr->tokens_per_block);
                int32_t in_row = gr->block_rows[(size_t)q->row * gr->row_stride +
                                                pos / gr->tokens_per_block];
                if (slot < 0 || block == KVRT_NULL_BLOCK || block != in_row ||
                    (uint32_t)(slot % gr->tokens_per_block) != pos % gr->tokens_per_block)
                    breach("plan entry %u, group %u: token at %u has slot %lld, its row "
                           "holds block %d there",
                           i, g, pos, (long long)slot, in_row);
            }
        }
    }
    static int64_t slots[MAX_PLAN_TOKENS];
    for (uint32_t g = 0; g < p->num_groups; g++) {
        sorted_slots(p, g, slots);
        for (uint32_t t = 1; t < p->num_tokens; t++)
            if (slots[t] == slots[t - 1])
                breach("plan: two tokens write slot %lld of group %u", (long long)slots[t], g);
    }
}

/* The blocks a plan writes belong to the request writing them alone: no
 * other request's table lists one (a block another request reads is never
 * written), no arrival whose group has not reported holds one (its caller
 * may still be writing it), and no other plan in flight writes one. */
static void check_plan_blocks(const world_t *w, const kvrt_batch_plan_t *p)
{
    static uint8_t holders[MAX_GROUPS][MAX_POOL_BLOCKS];
    static uint32_t own[MAX_GROUPS][MAX_POOL_BLOCKS]; /* entry + 1 whose table lists it */
    memset(holders, 0, sizeof(holders));
    memset(own, 0, sizeof(own));
    for (uint32_t g = 0; g < w->num_groups; g++) {
        for (uint32_t r = 0; r < w->num_ids; r++) {
            const int32_t *blocks;
            uint32_t nb = 0;
            if (kvrt_seq_group_blocks(w->sched, w->requests[r].id, g, &blocks, &nb, NULL) != KVRT_OK)
                continue; /* drained */
            for (uint32_t j = 0; j < nb; j++)
                if (blocks[j] != KVRT_NULL_BLOCK)
                    holders[g][blocks[j]]++;
        }
        for (uint32_t i = 0; i < p->num_seqs; i++) {
            const int32_t *blocks;
            uint32_t nb = 0;
            if (kvrt_seq_group_blocks(w->sched, p->seqs[i].id, g, &blocks, &nb, NULL) != KVRT_OK)
                breach("planned request 0x%llx is unknown", (unsigned long long)p->seqs[i].id);
            for (uint32_t j = 0; j < nb; j++)
                if (blocks[j] != KVRT_NULL_BLOCK)
                    own[g][blocks[j]] = i + 1;
        }
    }
    for (uint32_t i = 0; i < p->num_seqs; i++) {
        for (int32_t t = p->query_start_loc[i]; t < p->query_start_loc[i + 1]; t++) {
            for (uint32_t g = 0; g < p->num_groups; g++) {
                int32_t b = (int32_t)(p->groups[g].slot_mapping[t] /
                                      p->groups[g].tokens_per_block);
                uint32_t others = holders[g][b] - (own[g][b] == i + 1);
                if (others)
                    breach("plan entry %u writes block %d of group %u, which %u other "
                           "request(s) hold", i, b, g, others);
                for (uint32_t a = 0; a < w->num_arrivals; a++)
                    for (uint32_t j = 0; (w->arrivals[a].open_groups >> g & 1u) &&
                                         j < w->arrivals[a].count[g]; j++)
                        if (w->arrivals[a].blocks[g][j] == b)
                            breach("plan entry %u writes block %d of group %u, which an "
                                   "arrival not yet reported holds", i, b, g);
            }
        }
    }
    static int64_t mine[MAX_PLAN_TOKENS], theirs[MAX_PLAN_TOKENS];
    for (uint32_t k = 0; k < w->num_plans; k++) { /* the plans in flight before p */
        const kvrt_batch_plan_t *o = w->plans[k];
        for (uint32_t g = 0; g < p->num_groups; g++) {
            sorted_slots(p, g, mine);
            sorted_slots(o, g, theirs);
            for (uint32_t x = 0, y = 0; x < p->num_tokens && y < o->num_tokens;) {
                if (mine[x] == theirs[y])
                    breach("two plans in flight write slot %lld of group %u",
                           (long long)mine[x], g);
                if (mine[x] < theirs[y])
                    x++;
                else
                    y++;
            }
        }
    }
}

static const request_t *find_request(const world_t *w, kvrt_seq_id_t id)
{
    for (uint32_t i = 0; i < w->num_ids; i++)
        if (w->requests[i].id == id)
            return &w->requests[i];
    return NULL;
}

/* A prefill chunk never ends inside a multimodal item of its request
 * (the encoder's output is consumed whole). */
static void check_chunks(const world_t *w, const kvrt_batch_plan_t *p)
{
    for (uint32_t i = 0; i < p->num_seqs; i++) {
        const request_t *r = find_request(w, p->seqs[i].id);
        if (!r || p->seqs[i].kind != KVRT_PLAN_PREFILL)
            continue;
        uint32_t end = p->seqs[i].num_computed_tokens + p->seqs[i].num_new_tokens;
        for (uint32_t k = 0; k < r->num_items; k++)
            if (r->items[k].offset < end && end < r->items[k].offset + r->items[k].length)
                breach("a chunk of request 0x%llx ends at %u, inside its item [%u, %u)",
                       (unsigned long long)r->id, end, r->items[k].offset,
                       r->items[k].offset + r->items[k].length);
    }
}

/* Bit r: requests[r] is running. */
static uint64_t running_mask(const world_t *w)
{
    uint64_t mask = 0;
    for (uint32_t r = 0; r < w->num_ids; r++) {
        kvrt_seq_info_t info;
        if (kvrt_seq_info(w->sched, w->requests[r].id, &info) == KVRT_OK &&
            info.state == KVRT_SEQ_RUNNING)
            mask |= 1ull << r;
    }
    return mask;
}

/* A request preempted by a step was the lowest of the running ones: every
 * request that ran before the step and still runs has a higher priority,
 * or the same priority and an earlier arrival. (One admitted by the same
 * step may come later: admission orders by deadline before arrival.) `ran`
 * is the running set before the step. */
static void check_preempted(const world_t *w, const kvrt_batch_plan_t *p, uint64_t ran)
{
    const uint64_t ran_before = ran;
    ran &= running_mask(w);
    for (uint32_t i = 0; i < p->num_preempted; i++) {
        const request_t *v = find_request(w, p->preempted[i]);
        /* (one the step admitted and sent back, its first blocks gone
         * after all, was no victim: it did not run before the step) */
        if (!v || !(ran_before >> (v - w->requests) & 1u))
            continue;
        for (uint32_t r = 0; r < w->num_ids; r++) {
            const request_t *o = &w->requests[r];
            if (!(ran >> r & 1u))
                continue;
            if (o->priority < v->priority ||
                (o->priority == v->priority && o->order > v->order))
                breach("preempted request 0x%llx (priority %d, arrival %llu) while 0x%llx "
                       "(priority %d, arrival %llu) runs",
                       (unsigned long long)v->id, v->priority, (unsigned long long)v->order,
                       (unsigned long long)o->id, o->priority, (unsigned long long)o->order);
        }
    }
}

/* An ended request's output against what it was asked: commits sample
 * tokens of the alphabet only; it stops at the first stop token past
 * min_tokens outputs, and ends by length exactly at its limit. */
static void check_output(const world_t *w, const kvrt_seq_info_t *e)
{
    const request_t *r = find_request(w, e->id);
    if (!r) /* its record was overwritten */
        return;
    uint32_t n = e->output_tokens;
    if (n > r->limit)
        breach("request 0x%llx: %u output tokens, its limit %u", (unsigned long long)e->id, n,
               r->limit);
    for (uint32_t i = 0; i < n; i++) {
        if (e->output[i] < 0 || e->output[i] >= (int32_t)ALPHABET)
            breach("request 0x%llx: output token %d never sampled", (unsigned long long)e->id,
                   e->output[i]);
        bool stops = (r->stops >> e->output[i]) & 1u && i >= r->min_tokens;
        if (stops && i + 1 < n)
            breach("request 0x%llx: went on past stop token %d at output %u of %u",
                   (unsigned long long)e->id, e->output[i], i, n);
        if (i + 1 == n && e->end_reason == KVRT_END_STOP && !stops)
            breach("request 0x%llx: ended by stop on token %d at output %u (min_tokens %u)",
                   (unsigned long long)e->id, e->output[i], i, r->min_tokens);
    }
    if (e->end_reason == KVRT_END_LENGTH && n != r->limit)
        breach("request 0x%llx: ended by length after %u of %u tokens", (unsigned long long)e->id,
               n, r->limit);
}

#endif /* KVRT_FUZZ_SCHED_API_CHECKS_H */
