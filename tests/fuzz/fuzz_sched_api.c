/*
 * fuzz_sched_api.c - libFuzzer target that drives a scheduler through its
 * public API the way a careless or broken engine would: requests of any
 * shape (unknown field bits, bad keys, negative tokens, stop tokens the
 * commits then sample), steps at any time, commits honest or wrong (stale
 * step, wrong counts, negative tokens, accepted tokens that differ from
 * their drafts, too many next drafts), drafts one by one and in batches,
 * aborts of live, ended and made-up ids, arrivals of KV completed with any
 * count or left to expire, prefix-cache resets; with or without a prefix
 * cache, one or two plans in flight, one or two cache groups (the second
 * a sliding window of another block size).
 *
 * After every call it checks what sched_api_checks.h lists (pools and
 * caches verify, counts add up, refused calls change nothing and say why,
 * plans agree with their rows and write only their own blocks, preemption
 * takes the lowest running request, outputs stop and end where they
 * must). At the end every plan is committed, every request aborted and
 * drained and every arrival completed, or, in sessions that end abruptly,
 * the scheduler is destroyed as it stands: either way no block, table or
 * request may be left. A breach aborts, as does a sanitizer report.
 *
 * Input: 11 or 12 bytes of configuration (see open_world), then
 * operations, one byte each and their arguments (see run_op); a short
 * input ends with zeros, which are valid arguments. Choices that depend on
 * the scheduler's state come from a generator seeded by the input, so an
 * operation reads the same bytes whatever happened before it.
 * tests/fuzz/make_sched_seeds.py writes the seed corpus;
 * test_sched_careless_engine replays it in every build. Compiled with
 * -DFUZZ_TRACE, every judged call prints its status and the counts.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvrt/kvrt.h"
#include "sched_api_checks.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_OPS 400

typedef struct input {
    const uint8_t *p;
    size_t n;
} input_t;

/* The next `bytes` bytes as a little-endian number; 0 past the end. */
static uint32_t take(input_t *in, uint32_t bytes)
{
    uint32_t v = 0;
    for (uint32_t i = 0; i < bytes; i++) {
        uint32_t b = 0;
        if (in->n) {
            b = *in->p++;
            in->n--;
        }
        v |= b << (8 * i);
    }
    return v;
}

static uint32_t pick(input_t *in, uint32_t n) { return take(in, 1) % n; }

/* Choices that depend on what the scheduler did (a plan's entries, a
 * prompt's tokens) come from a generator seeded by one input byte, so that
 * every operation reads a fixed number of bytes and a mutation of one
 * operation does not shift the ones after it. */
typedef struct gen {
    uint32_t s;
} gen_t;

static gen_t gen_seed(input_t *in) { return (gen_t){0x9e3779b9u ^ (take(in, 1) * 0x01000193u)}; }

static uint32_t gen_pick(gen_t *g, uint32_t n)
{
    g->s ^= g->s << 13;
    g->s ^= g->s >> 17;
    g->s ^= g->s << 5;
    return g->s % n;
}

/* One byte: an id added earlier (live, ended or drained), or one made up. */
static kvrt_seq_id_t pick_id(const world_t *w, input_t *in)
{
    uint32_t b = take(in, 1);
    if (b == 255)
        return 0;
    if (w->num_ids == 0 || b >= 240)
        return (uint64_t)b * 0x9e3779b97f4a7c15ull; /* any index, any generation */
    return w->requests[b % w->num_ids].id;
}

static void remember(world_t *w, const request_t *r)
{
    w->requests[w->next_id] = *r;
    w->next_id = (w->next_id + 1) % MAX_IDS;
    if (w->num_ids < MAX_IDS)
        w->num_ids++;
}

/* A request from the input, valid more often than not. */
static void op_add(world_t *w, input_t *in)
{
    static int32_t prompt[MAX_PROMPT];
    int32_t stops[KVRT_SEQ_MAX_STOP_TOKENS + 2];
    uint8_t salt[KVRT_CACHE_SALT_MAX + 1];
    kvrt_mm_item_t items[3];
    uint32_t shape = take(in, 1);
    uint32_t len = 1 + take(in, 1) % MAX_PROMPT;
    uint32_t shared = take(in, 1) % (len + 1); /* a common prefix: 0, 1, 2, ... */
    gen_t g = gen_seed(in);
    for (uint32_t i = 0; i < len; i++)
        prompt[i] = (int32_t)(i < shared ? i % ALPHABET : gen_pick(&g, ALPHABET));
    if (shape & 1u)
        prompt[gen_pick(&g, len)] = -1 - (int32_t)gen_pick(&g, 256);
    /* One field at a time: the input is read in this order (initializers
     * of one struct are not sequenced). */
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = (shape & 2u) ? 0 : len,
                           .stop_tokens = stops, .user_tag = ++w->tag};
    p.field_mask = take(in, 1) | ((shape & 4u) ? 1u << 9 : 0); /* bit 9: unknown */
    p.max_new_tokens = take(in, 1) % 40;
    uint32_t num_stops = take(in, 1) % 4;
    p.num_stop_tokens = (shape & 8u) ? KVRT_SEQ_MAX_STOP_TOKENS + 1 : num_stops;
    p.priority = (int8_t)take(in, 1);
    p.deadline_ns = w->now + take(in, 1);
    p.cache_flags = take(in, 1) & 0xfu;
    p.min_tokens = take(in, 1) % 24;
    for (uint32_t i = 0; i < KVRT_SEQ_MAX_STOP_TOKENS + 2; i++)
        stops[i] = (int32_t)(i < 4 ? pick(in, ALPHABET) : i % ALPHABET);
    kvrt_hash_keys_t keys = {.salt = salt, .mm_items = items};
    keys.field_mask = take(in, 1) & 0xfu;
    keys.adapter_id = take(in, 1);
    keys.salt_bytes = take(in, 1) % (KVRT_CACHE_SALT_MAX + 2);
    keys.num_mm_items = take(in, 1) % 4;
    memset(salt, (int)take(in, 1), sizeof(salt));
    /* Items in order, apart, mostly inside the prompt (or not: refused). */
    for (uint32_t i = 0, at = 0; i < keys.num_mm_items && i < 3; i++) {
        items[i].content_hash = (kvrt_block_hash_t){take(in, 1), 1};
        at += take(in, 1) % 48;
        items[i].offset = at;
        items[i].length = take(in, 1) % 40;
        at += items[i].length;
    }
    p.keys = (shape & 16u) ? NULL : &keys;
    snapshot_t before;
    snap(w, &before);
    kvrt_seq_id_t id = 0;
    kvrt_status_t st = kvrt_seq_add(w->sched, &p, &id);
    judge(w, st, &before, "kvrt_seq_add");
    if (st == KVRT_OK) {
        request_t r = {.id = id, .limit = p.max_new_tokens, .order = w->tag};
        if (p.field_mask & KVRT_SEQ_PARAM_PRIORITY)
            r.priority = p.priority;
        if (len + r.limit > w->params.max_seq_tokens)
            r.limit = w->params.max_seq_tokens - len;
        if (p.field_mask & KVRT_SEQ_PARAM_MIN_TOKENS)
            r.min_tokens = p.min_tokens;
        for (uint32_t i = 0; (p.field_mask & KVRT_SEQ_PARAM_STOP) && i < p.num_stop_tokens; i++)
            r.stops |= 1u << stops[i];
        if ((p.field_mask & KVRT_SEQ_PARAM_KEYS) && (keys.field_mask & KVRT_HASH_KEY_MM)) {
            r.num_items = keys.num_mm_items;
            memcpy(r.items, items, r.num_items * sizeof(items[0]));
        }
        remember(w, &r);
    }
}

static void op_step(world_t *w, input_t *in)
{
    w->now += take(in, 1);
    snapshot_t before;
    snap(w, &before);
    const kvrt_batch_plan_t *plan = NULL;
    uint64_t ran = running_mask(w);
    kvrt_status_t st = kvrt_sched_step(w->sched, w->now, &plan);
    if (st == KVRT_OK) {
        verify(w, "kvrt_sched_step");
        check_preempted(w, plan, ran);
        if (plan->num_seqs > 0) {
            if (w->num_plans == KVRT_SCHED_MAX_PLANS_IN_FLIGHT)
                breach("a step beyond %u plans in flight was accepted", w->num_plans);
            check_plan(w, plan);
            check_plan_blocks(w, plan);
            check_chunks(w, plan);
            w->plans[w->num_plans++] = plan;
        }
        return;
    }
    if (w->num_plans < w->params.max_plans_in_flight)
        breach("step refused with %u of %u plans in flight: %s", w->num_plans,
               w->params.max_plans_in_flight, kvrt_ctx_last_error(w->ctx));
    judge(w, st, &before, "kvrt_sched_step");
}

/* The results of the oldest plan in flight; honest unless `hostile`, in
 * which case one thing is wrong and the commit must be refused. */
static void op_commit(world_t *w, input_t *in, bool hostile)
{
    uint32_t choice = take(in, 1);
    gen_t g = gen_seed(in);
    if (w->num_plans == 0)
        return;
    const kvrt_batch_plan_t *p = w->plans[0];
    static int32_t tokens[MAX_SEQS * (1 + KVRT_SCHED_MAX_DRAFT) + 8];
    static int32_t next[MAX_SEQS * KVRT_SCHED_MAX_DRAFT + 8];
    uint32_t accepted[MAX_SEQS + 1] = {0}, num_next[MAX_SEQS + 1] = {0};
    uint32_t n = 0, total_next = 0, k = w->params.max_draft_tokens;
    bool drafts = k > 0 && (choice & 1u);
    int first_accepted = -1;
    for (uint32_t i = 0; i < p->num_seqs; i++) {
        const kvrt_plan_seq_t *q = &p->seqs[i];
        if (!q->sample)
            continue;
        accepted[i] = gen_pick(&g, q->num_drafts + 1);
        const int32_t *d = p->input_tokens + p->query_start_loc[i + 1] - q->num_drafts;
        for (uint32_t j = 0; j < accepted[i]; j++)
            tokens[n++] = d[j];
        if (accepted[i] && first_accepted < 0)
            first_accepted = (int)(n - 1);
        tokens[n++] = (int32_t)gen_pick(&g, ALPHABET);
        if (drafts) {
            num_next[i] = gen_pick(&g, k + 1);
            for (uint32_t j = 0; j < num_next[i]; j++)
                next[total_next++] = (int32_t)gen_pick(&g, ALPHABET);
        }
    }
    kvrt_commit_t c = {.field_mask = KVRT_COMMIT_ACCEPTED | (drafts ? KVRT_COMMIT_DRAFTS : 0),
                       .step = p->step,
                       .num_seqs = p->num_seqs,
                       .num_tokens = n,
                       .tokens = tokens,
                       .num_accepted = accepted,
                       .num_next_drafts = num_next,
                       .next_drafts = next};
    const char *what = "honest kvrt_sched_commit";
    if (hostile) {
        uint32_t wrong = (choice >> 1) % 6;
        if ((wrong == 4 && first_accepted < 0) || (wrong == 3 && n == 0))
            wrong = 0;
        switch (wrong) {
        case 0: c.step += 1 + gen_pick(&g, 3); what = "commit of another step"; break;
        case 1: c.num_seqs++; what = "commit with one sequence too many"; break;
        case 2: tokens[c.num_tokens++] = 1; what = "commit with one token too many"; break;
        case 3:
            tokens[gen_pick(&g, n)] = -1 - (int32_t)gen_pick(&g, 4);
            what = "commit with a negative token";
            break;
        case 4: tokens[first_accepted] ^= 1; what = "commit accepting a token not drafted"; break;
        default: c.field_mask |= 1u << 7; what = "commit with an unknown field bit"; break;
        }
    }
    snapshot_t before;
    snap(w, &before);
    kvrt_status_t st = kvrt_sched_commit(w->sched, &c);
    if (hostile && st == KVRT_OK)
        breach("%s was accepted", what);
    if (!hostile && st != KVRT_OK)
        breach("%s refused: %s", what, kvrt_ctx_last_error(w->ctx));
    judge(w, st, &before, what);
    if (st == KVRT_OK) {
        w->plans[0] = w->plans[1];
        w->num_plans--;
    }
}

static void op_abort(world_t *w, input_t *in)
{
    snapshot_t before;
    snap(w, &before);
    judge(w, kvrt_seq_abort(w->sched, pick_id(w, in)), &before, "kvrt_seq_abort");
}

static void op_drafts(world_t *w, input_t *in, bool batch)
{
    int32_t tokens[MAX_SEQS * (KVRT_SCHED_MAX_DRAFT + 1)];
    kvrt_seq_id_t ids[MAX_SEQS];
    uint32_t counts[MAX_SEQS], n = batch ? pick(in, MAX_SEQS) : 1, total = 0;
    gen_t g = gen_seed(in);
    for (uint32_t i = 0; i < n; i++) {
        ids[i] = pick_id(w, in);
        counts[i] = pick(in, w->params.max_draft_tokens + 2); /* one above the limit too */
        for (uint32_t j = 0; j < counts[i]; j++) {
            int32_t t = (int32_t)gen_pick(&g, ALPHABET + 1);
            tokens[total++] = t == ALPHABET ? -1 : t; /* a negative one at times */
        }
    }
    snapshot_t before;
    snap(w, &before);
    kvrt_status_t st = batch ? kvrt_sched_set_drafts(w->sched, n, ids, counts, tokens)
                             : kvrt_seq_set_draft(w->sched, ids[0], tokens, counts[0]);
    judge(w, st, &before, batch ? "kvrt_sched_set_drafts" : "kvrt_seq_set_draft");
}

static void op_drain(world_t *w, input_t *in)
{
    kvrt_seq_info_t events[8];
    uint32_t capacity = pick(in, 9), count = 0;
    size_t size = take(in, 1) == 255 ? 8 : sizeof(events[0]);
    snapshot_t before;
    snap(w, &before);
    kvrt_status_t st = kvrt_sched_drain_ended_sized(w->sched, events, size, capacity, &count);
    judge(w, st, &before, "kvrt_sched_drain_ended");
    for (uint32_t i = 0; st == KVRT_OK && i < count; i++) {
        if (events[i].state != KVRT_SEQ_ENDED || events[i].end_reason == KVRT_END_NONE ||
            (events[i].output_tokens && !events[i].output))
            breach("drained an event of state %d, end reason %d", events[i].state,
                   events[i].end_reason);
        check_output(w, &events[i]);
    }
}

/* Reads: a request's state and blocks, which must agree. */
static void op_look(world_t *w, input_t *in)
{
    kvrt_seq_id_t id = pick_id(w, in);
    uint32_t group = pick(in, MAX_GROUPS + 1);
    kvrt_seq_info_t info;
    const int32_t *blocks = NULL;
    uint32_t num_blocks = 0, num_tokens = 0;
    snapshot_t before;
    snap(w, &before);
    kvrt_status_t st = kvrt_seq_info(w->sched, id, &info);
    judge(w, st, &before, "kvrt_seq_info");
    kvrt_status_t sb =
        kvrt_seq_group_blocks(w->sched, id, group, &blocks, &num_blocks, &num_tokens);
    judge(w, sb, &before, "kvrt_seq_group_blocks");
    if (st == KVRT_OK && info.output_tokens > 0 && !info.output)
        breach("request with %u output tokens and no output", info.output_tokens);
    if (sb == KVRT_OK && group < w->num_groups) {
        kvrt_pool_info_t pi;
        kvrt_pool_info(w->pools[group], &pi);
        if ((uint64_t)num_blocks * pi.tokens_per_block < num_tokens)
            breach("%u blocks of %u tokens hold %u tokens", num_blocks, pi.tokens_per_block,
                   num_tokens);
        for (uint32_t i = 0; i < num_blocks; i++)
            if (blocks[i] < 0 || (uint32_t)blocks[i] >= pi.num_blocks)
                breach("block %d out of the pool", blocks[i]);
    }
}

static void op_await(world_t *w, input_t *in)
{
    kvrt_arrival_params_t ap = {.field_mask = take(in, 1) & 3u};
    ap.num_tokens = take(in, 1);
    ap.deadline_ns = w->now + take(in, 1);
    kvrt_seq_id_t id = pick_id(w, in);
    kvrt_arrival_id_t arrival = 0;
    uint32_t first[MAX_GROUPS + 1], count[MAX_GROUPS + 1];
    snapshot_t before;
    snap(w, &before);
    kvrt_status_t st;
    if (w->num_groups == 1 && !(ap.field_mask & 2u)) {
        st = kvrt_seq_await_kv(w->sched, id, &ap, &arrival, first, count);
    } else {
        ap.field_mask &= 1u;
        uint32_t groups = w->num_groups + (take(in, 1) == 255);
        st = kvrt_seq_await_kv_groups(w->sched, id, &ap, groups, &arrival, first, count);
    }
    judge(w, st, &before, "kvrt_seq_await_kv");
    if (st != KVRT_OK)
        return;
    if (w->num_arrivals == MAX_ARRIVALS) { /* no room to remember it */
        kvrt_arrival_complete(w->sched, arrival, 0);
        return;
    }
    arrival_t *a = &w->arrivals[w->num_arrivals++];
    a->id = arrival;
    a->open_groups = (1u << w->num_groups) - 1;
    for (uint32_t g = 0; g < w->num_groups; g++) {
        const int32_t *blocks = NULL;
        uint32_t nb = 0;
        if (kvrt_seq_group_blocks(w->sched, id, g, &blocks, &nb, NULL) != KVRT_OK ||
            first[g] + count[g] > nb || count[g] > MAX_ARRIVAL_BLOCKS)
            breach("arrival of blocks [%u, %u) in group %u, its request lists %u", first[g],
                   first[g] + count[g], g, nb);
        a->count[g] = count[g];
        memcpy(a->blocks[g], blocks + first[g], count[g] * sizeof(int32_t));
    }
}

static void op_complete(world_t *w, input_t *in)
{
    uint32_t which = take(in, 1);
    uint32_t landed = pick(in, 12);
    uint32_t group = pick(in, MAX_GROUPS + 1);
    bool per_group = (take(in, 1) & 1u) && w->num_groups > 1;
    if (w->num_arrivals == 0)
        return;
    uint32_t i = which % w->num_arrivals;
    snapshot_t before;
    snap(w, &before);
    arrival_t *a = &w->arrivals[i];
    kvrt_status_t st = per_group ? kvrt_arrival_group_complete(w->sched, a->id, group, landed)
                                 : kvrt_arrival_complete(w->sched, a->id, landed);
    judge(w, st, &before, "kvrt_arrival_complete");
    if (st == KVRT_OK)
        a->open_groups &= per_group ? ~(1u << group) : 0u;
    /* Completed arrivals stay listed: completing one again must be refused,
     * and the end completes every one that is not. */
}

static void op_reset(world_t *w, input_t *in)
{
    uint32_t b = take(in, 1), g = b % w->num_groups;
    if (!w->caches[g] || (b & 0x80u)) /* at times only */
        return;
    uint32_t flags = (b >> 1) % 3 == 2 ? 1u << 3 : (b >> 3) & KVRT_CACHE_RESET_FORGET_BUSY;
    snapshot_t before;
    snap(w, &before);
    judge(w, kvrt_cache_reset(w->caches[g], flags), &before, "kvrt_cache_reset");
}

static void run_op(world_t *w, input_t *in)
{
    switch (pick(in, 12)) {
    case 0: case 1: op_add(w, in); break;
    case 2: case 3: op_step(w, in); break;
    case 4: case 5: op_commit(w, in, false); break;
    case 6: op_commit(w, in, true); break;
    case 7: op_abort(w, in); break;
    case 8: op_drafts(w, in, take(in, 1) & 1u); break;
    case 9: op_drain(w, in); break;
    case 10: op_look(w, in); op_reset(w, in); break;
    default: pick(in, 2) ? op_await(w, in) : op_complete(w, in); break;
    }
}

/* Configuration bytes: flags (bit 0 two cache groups, 1 prefix caches,
 * 2 speculation, 3 two plans in flight, 4 an abrupt end, 5-7 the cache
 * policy), block sizes and scheduler switches, pool blocks, tables per
 * pool, drafts (with speculation), batch tokens, sequences, requests, tokens per request,
 * prefill chunk, then each group's sliding window (group 1 only uses it).
 * Two groups of one block size share group 0's pool and cache when bit 2
 * of the pool blocks is set. */
static bool open_world(world_t *w, input_t *in)
{
    static const uint32_t tpbs[] = {1, 2, 4, 16};
    uint32_t flags = take(in, 1), sizes = take(in, 1);
    memset(w, 0, sizeof(*w));
    w->num_groups = (flags & 1u) ? 2 : 1;
    w->abrupt_end = (flags & 0x10u) != 0;
    if (kvrt_ctx_create(NULL, &w->ctx) != KVRT_OK)
        breach("no context");
    uint32_t blocks = 4 + take(in, 1);
    /* Tables: at times fewer than requests, so that admissions and
     * arrivals meet KVRT_ERR_NO_TABLES. */
    uint32_t tables = 2 + take(in, 1) % 63;
    const bool shared = w->num_groups == 2 && (sizes & 3u) == ((sizes >> 2) & 3u) &&
                        (blocks & 4u);
    for (uint32_t g = 0; g < w->num_groups; g++) {
        if (g && shared) {
            w->pools[g] = w->pools[0];
            w->caches[g] = w->caches[0];
            continue;
        }
        kvrt_kv_layout_t layout = {.num_layers = 1, .num_kv_heads = 1, .head_dim = 8,
                                   .tokens_per_block = tpbs[(sizes >> (2 * g)) & 3u]};
        uint64_t block_bytes = 0;
        kvrt_layout_block_bytes(&layout, &block_bytes);
        /* Bookkeeping only: nothing reads or writes the blocks' memory. */
        kvrt_pool_params_t pp = {.field_mask = KVRT_POOL_PARAM_BASE | KVRT_POOL_PARAM_MAX_TABLES,
                                 .layout = layout,
                                 .max_tables = tables,
                                 .num_blocks = blocks,
                                 .base = (void *)(uintptr_t)0x100000000ull,
                                 .base_bytes = block_bytes * blocks};
        if (kvrt_pool_create(w->ctx, &pp, &w->pools[g]) != KVRT_OK)
            breach("pool: %s", kvrt_ctx_last_error(w->ctx));
        kvrt_cache_params_t cp = {.field_mask = KVRT_CACHE_PARAM_POLICY,
                                  .policy = (kvrt_cache_policy_t)((flags >> 5) % 5)};
        if ((flags & 2u) && kvrt_cache_create(w->pools[g], &cp, &w->caches[g]) != KVRT_OK)
            breach("cache: %s", kvrt_ctx_last_error(w->ctx));
    }
    uint32_t k = (flags & 4u) ? 1 + pick(in, 4) : 0;
    kvrt_sched_params_t *sp = &w->params;
    sp->field_mask = KVRT_SCHED_PARAM_MAX_BATCH_TOKENS | KVRT_SCHED_PARAM_MAX_SEQS |
                     KVRT_SCHED_PARAM_MAX_REQUESTS | KVRT_SCHED_PARAM_MAX_SEQ_TOKENS |
                     KVRT_SCHED_PARAM_PLANS_IN_FLIGHT | KVRT_SCHED_PARAM_DRAFT |
                     KVRT_SCHED_PARAM_WATERMARK | KVRT_SCHED_PARAM_CSR_TABLES |
                     KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_SHARED_PREFILL |
                     (k && (sizes & 0x10u) ? KVRT_SCHED_PARAM_NGRAM : 0);
    sp->max_batch_tokens = 1 + take(in, 1);
    sp->max_seqs = 1 + pick(in, MAX_SEQS);
    sp->max_requests = 1 + pick(in, 40);
    sp->max_seq_tokens = 2 + take(in, 1) * 2;
    sp->prefill_chunk_tokens = 1 + take(in, 1);
    sp->max_plans_in_flight = (flags & 8u) ? 2 : 1;
    sp->max_draft_tokens = k;
    sp->use_watermark = (sizes >> 5) & 1u;
    sp->csr_block_tables = (sizes >> 6) & 1u;
    sp->ngram_min = 1;
    sp->ngram_max = 1 + (sizes >> 7) * 3;
    /* From bytes taken already (the corpus keeps its meaning): mostly a
     * few tokens, so that short prompts sharing a prefix wait; at times 0. */
    sp->shared_prefill_min_tokens = (blocks & 3u) ? 1 + tables % 40 : 0;
    if (w->params.prefill_chunk_tokens > w->params.max_batch_tokens)
        w->params.prefill_chunk_tokens = w->params.max_batch_tokens;
    kvrt_sched_group_params_t groups[MAX_GROUPS];
    const kvrt_sched_group_params_t *group_ptrs[MAX_GROUPS];
    for (uint32_t g = 0; g < w->num_groups; g++) {
        uint32_t window = 1 + take(in, 1) % 48;
        groups[g] = (kvrt_sched_group_params_t){
            .field_mask = (w->caches[g] ? KVRT_SCHED_GROUP_CACHE : 0) |
                          (g ? KVRT_SCHED_GROUP_WINDOW : 0),
            .pool = w->pools[g],
            .cache = w->caches[g],
            .sliding_window = window};
        group_ptrs[g] = &groups[g];
    }
    kvrt_status_t st = kvrt_sched_create_groups(w->ctx, w->num_groups, group_ptrs, &w->params,
                                                &w->sched);
    if (st != KVRT_OK) {
        const char *msg = kvrt_ctx_last_error(w->ctx);
        if (!msg || !*msg)
            breach("kvrt_sched_create refused without a message");
        kvrt_ctx_destroy(w->ctx);
        return false;
    }
    return true;
}

/* Everything back: plans committed, requests aborted and drained, arrivals
 * completed; then nothing may hold a block or a table. */
static void close_world(world_t *w)
{
    if (w->abrupt_end) {
        /* kvrt_sched_destroy frees every block it holds, those of plans in
         * flight and of open arrivals included; the cache keeps its own. */
        kvrt_sched_destroy(w->sched);
        for (uint32_t g = 0; g < w->num_groups; g++) {
            kvrt_pool_info_t info;
            kvrt_pool_info(w->pools[g], &info);
            if (kvrt_pool_verify(w->pools[g]) != KVRT_OK || info.used_blocks || info.live_tables)
                breach("after kvrt_sched_destroy, pool %u: %u blocks and %u tables in use (%s)", g,
                       info.used_blocks, info.live_tables, kvrt_ctx_last_error(w->ctx));
        }
        kvrt_ctx_destroy(w->ctx);
        return;
    }
    input_t none = {0};
    for (uint32_t guard = 0; w->num_plans && guard < 4; guard++)
        op_commit(w, &none, false);
    for (uint32_t i = 0; i < w->num_ids; i++)
        kvrt_seq_abort(w->sched, w->requests[i].id);
    for (uint32_t i = 0; i < w->num_arrivals; i++)
        kvrt_arrival_complete(w->sched, w->arrivals[i].id, 0);
    verify(w, "the end's aborts");
    kvrt_seq_info_t events[16];
    uint32_t count = 1;
    for (uint32_t guard = 0; count && guard < 1000; guard++) {
        if (kvrt_sched_drain_ended(w->sched, events, 16, &count) != KVRT_OK)
            breach("drain refused: %s", kvrt_ctx_last_error(w->ctx));
        for (uint32_t i = 0; i < count; i++)
            check_output(w, &events[i]);
    }
    snapshot_t s;
    snap(w, &s);
    if (s.stats.running || s.stats.waiting || s.stats.awaiting_kv || s.stats.ended_undrained)
        breach("left: %llu running, %llu waiting, %llu awaiting KV, %llu undrained",
               (unsigned long long)s.stats.running, (unsigned long long)s.stats.waiting,
               (unsigned long long)s.stats.awaiting_kv,
               (unsigned long long)s.stats.ended_undrained);
    for (uint32_t g = 0; g < w->num_groups; g++)
        if (s.pools[g].used_blocks || s.pools[g].live_tables)
            breach("pool %u: %u blocks and %u tables left in use", g, s.pools[g].used_blocks,
                   s.pools[g].live_tables);
    kvrt_sched_destroy(w->sched);
    kvrt_ctx_destroy(w->ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input_t in = {data, size};
    world_t w;
    if (!open_world(&w, &in))
        return 0;
    for (uint32_t op = 0; op < MAX_OPS && in.n; op++)
        run_op(&w, &in);
    close_world(&w);
    return 0;
}
