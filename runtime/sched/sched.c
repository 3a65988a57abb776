/*
 * sched.c - creating and destroying a scheduler (every array the hot path
 * uses is sized here), its statistics and its ctl nodes "sched.<N>.*".
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sched/hooks.h"
#include "sched_internal.h"

/* Rows are max_seqs x row_stride int32: refuse shapes past 512 MiB. */
#define SCHED_MAX_ROW_ENTRIES (1ull << 27)

/* ---- statistics and ctl ------------------------------------------------------ */

/* Structs of the first release are KVRT_SCHED_STATS_SIZE_1_0 bytes; later
 * fields are appended (shared_prefill_waits, the first). */
_Static_assert(offsetof(kvrt_sched_stats_t, shared_prefill_waits) == KVRT_SCHED_STATS_SIZE_1_0,
               "kvrt_sched_stats_t's 1.0 fields changed: append fields, keep the 1.0 size");

static inline double ratio(uint64_t num, uint64_t den) { return den ? (double)num / den : 0; }

_Static_assert(KVRT_SCHED_DRAFT_POSITIONS == KVRT_SCHED_MAX_DRAFT,
               "every draft position is counted: the speculation totals are their sums");

static void fill_stats(const kvrt_sched_t *s, kvrt_sched_stats_t *out)
{
    *out = s->stats;
    /* The commit counts verifications by drafts and by accepted drafts
     * only (sched_internal.h). Position j was proposed (accepted) by those
     * with more than j; the totals are the sums over positions, and every
     * verification proposed position 0. */
    uint64_t at_proposed = 0, at_accepted = 0, proposed = 0, accepted = 0;
    for (uint32_t j = KVRT_SCHED_DRAFT_POSITIONS; j-- > 0;) {
        at_proposed += s->spec_by_drafts[j + 1];
        at_accepted += s->spec_by_accepted[j + 1];
        out->spec_proposed_at[j] = at_proposed;
        out->spec_accepted_at[j] = at_accepted;
        proposed += at_proposed;
        accepted += at_accepted;
    }
    const uint64_t verifications = out->spec_proposed_at[0];
    out->spec_verifications = verifications;
    out->spec_proposed = proposed;
    out->spec_accepted = accepted;
    out->waiting = s->heap_size;
    out->running = s->running_live - s->running_ended;
    out->ended_undrained = s->ended_count;
    out->awaiting_kv = s->num_awaiting;
    out->spec_acceptance = ratio(accepted, proposed);
    out->spec_mean_accepted = ratio(accepted, verifications);
    out->prefix_hit_rate = ratio(s->stats.prefix_hit_tokens, s->stats.prefix_query_tokens);
    out->prefix_hit_rate_window =
        ratio(s->stats.window_hit_tokens, s->stats.window_query_tokens);
}

KVRT_EXPORT kvrt_status_t kvrt_sched_stats_sized(const kvrt_sched_t *s,
                                                 kvrt_sched_stats_t *stats_out,
                                                 size_t stats_size)
{
    if (!s)
        return KVRT_ERR_INVALID_ARG;
    if (!stats_out || stats_size < KVRT_SCHED_STATS_SIZE_1_0)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "stats_out is NULL or its size %zu is below %u", stats_size,
                         KVRT_SCHED_STATS_SIZE_1_0);
    kvrt_sched_stats_t st;
    fill_stats(s, &st);
    memcpy(stats_out, &st, stats_size < sizeof(st) ? stats_size : sizeof(st));
    return KVRT_OK;
}

#define STAT_U64(field, kind, help)                                              \
    static void get_##field(void *obj, kvrt_ctl_value_t *v)                      \
    {                                                                            \
        kvrt_sched_stats_t st;                                                   \
        fill_stats(obj, &st);                                                    \
        v->u64 = st.field;                                                       \
    }
#define STAT_F64(field, kind, help)                                              \
    static void get_##field(void *obj, kvrt_ctl_value_t *v)                      \
    {                                                                            \
        kvrt_sched_stats_t st;                                                   \
        fill_stats(obj, &st);                                                    \
        v->f64 = st.field;                                                       \
    }
#define STAT_AT(field, j)                                                        \
    static void get_##field##_##j(void *obj, kvrt_ctl_value_t *v)                \
    {                                                                            \
        kvrt_sched_stats_t st;                                                   \
        fill_stats(obj, &st);                                                    \
        v->u64 = st.field[j];                                                    \
    }
#define POSITIONS(X, field)                                                      \
    X(field, 0) X(field, 1) X(field, 2) X(field, 3) X(field, 4) X(field, 5)      \
    X(field, 6) X(field, 7) X(field, 8) X(field, 9) X(field, 10) X(field, 11)    \
    X(field, 12) X(field, 13) X(field, 14) X(field, 15)
_Static_assert(KVRT_SCHED_DRAFT_POSITIONS == 16, "POSITIONS lists 16 draft positions");
/* Every statistic with its metrics kind (C counter, G gauge) and help. */
#define STAT_LIST(U, F)                                                          \
    U(steps, C, "Non-empty plans the scheduler produced.")                      \
    U(scheduled_tokens, C, "Query tokens scheduled, all plans.")                \
    U(prefill_tokens, C, "Prefill tokens scheduled.")                           \
    U(decode_tokens, C, "Decode tokens scheduled, drafts included.")            \
    U(preemptions, C, "Requests preempted for lack of blocks.")                 \
    U(added, C, "Requests added.")                                              \
    U(finished_length, C, "Requests finished at their length limit.")          \
    U(finished_stop, C, "Requests finished at a stop token.")                   \
    U(aborted, C, "Requests aborted.")                                          \
    U(failed, C, "Requests that failed.")                                       \
    U(waiting, G, "Requests waiting or preempted.")                             \
    U(running, G, "Requests running.")                                          \
    U(ended_undrained, G, "Ended requests not yet drained.")                    \
    U(output_tokens, C, "Output tokens committed.")                             \
    U(prompt_tokens, C, "Prompt tokens of admitted requests.")                  \
    U(prefix_hit_tokens, C, "Prompt tokens adopted from the prefix cache.")     \
    U(prefix_query_tokens, C, "Prompt tokens offered to the prefix cache.")     \
    U(deadline_misses, C, "First tokens produced after their deadline.")        \
    U(budget_bound_steps, C, "Steps that left work for lack of token budget.")  \
    U(spec_proposed, C, "Speculative draft tokens verified.")                   \
    U(spec_accepted, C, "Speculative draft tokens accepted.")                   \
    U(spec_verifications, C, "Speculative verification entries committed.")    \
    U(spec_backoff_tokens, C, "Draft tokens dropped to fit the budget.")        \
    U(step_cpu_ns, C, "Nanoseconds spent inside kvrt_sched_step.")              \
    U(commit_cpu_ns, C, "Nanoseconds spent inside kvrt_sched_commit.")          \
    U(awaiting_kv, G, "Requests waiting for KV to arrive from a tier or a peer.") \
    U(arrivals, C, "KV arrivals started (kvrt_seq_await_kv).")                  \
    U(arrived_tokens, C, "Prompt tokens whose KV arrived instead of being computed.") \
    U(arrivals_failed, C, "KV arrivals that failed; their tokens were recomputed.") \
    U(arrivals_expired, C, "KV arrivals past their deadline; recomputed.")        \
    U(window_hit_tokens, G, "Prefix-cache hit tokens over the recent window.")    \
    U(window_query_tokens, G, "Prompt tokens offered to the cache over the recent window.") \
    U(shared_prefill_waits, C, "Admissions put off a step for blocks another request computes.") \
    F(spec_acceptance, G, "Accepted / proposed draft tokens.")                  \
    F(spec_mean_accepted, G, "Accepted draft tokens per verification.")         \
    F(prefix_hit_rate, G, "Prefix-cache hit tokens / prompt tokens offered, all time.") \
    F(prefix_hit_rate_window, G, "Prefix-cache hit rate over the recent window.")

STAT_LIST(STAT_U64, STAT_F64)
POSITIONS(STAT_AT, spec_proposed_at)
POSITIONS(STAT_AT, spec_accepted_at)

#define METRIC_C KVRT_CTL_METRIC_COUNTER
#define METRIC_G KVRT_CTL_METRIC_GAUGE
#define NODE_U64(field, kind, help) {#field, KVRT_CTL_U64, get_##field, NULL, METRIC_##kind, help},
#define NODE_F64(field, kind, help) {#field, KVRT_CTL_DOUBLE, get_##field, NULL, METRIC_##kind, help},
#define NODE_AT(field, j)                                                        \
    {#field "." #j, KVRT_CTL_U64, get_##field##_##j, NULL, METRIC_C,                \
     "Draft tokens at this draft position (0 = first): proposed for spec_proposed_at, " \
     "accepted for spec_accepted_at."},
static const kvrt_ctl_node_t sched_nodes[] = {
    STAT_LIST(NODE_U64, NODE_F64) POSITIONS(NODE_AT, spec_proposed_at)
        POSITIONS(NODE_AT, spec_accepted_at)};

/* ---- create / destroy -------------------------------------------------------- */

/* Schedulers created in this process: six bits of the count tag each one's
 * ids (sched_internal.h, ids). */
static uint32_t schedulers_created;

static kvrt_status_t read_params(kvrt_sched_t *s, const kvrt_sched_params_t *p)
{
    const uint64_t known =
        KVRT_SCHED_PARAM_MAX_BATCH_TOKENS | KVRT_SCHED_PARAM_MAX_SEQS |
        KVRT_SCHED_PARAM_CHUNK | KVRT_SCHED_PARAM_WATERMARK | KVRT_SCHED_PARAM_MAX_REQUESTS |
        KVRT_SCHED_PARAM_MAX_SEQ_TOKENS | KVRT_SCHED_PARAM_DRAFT | KVRT_SCHED_PARAM_NGRAM |
        KVRT_SCHED_PARAM_ADAPTIVE_DRAFT | KVRT_SCHED_PARAM_CSR_TABLES |
        KVRT_SCHED_PARAM_PLANS_IN_FLIGHT | KVRT_SCHED_PARAM_SHARED_PREFILL;
    kvrt_sched_params_t zero = {0};
    if (!p)
        p = &zero;
    uint64_t m = p->field_mask;
    if (m & ~known)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "unknown field_mask bits 0x%llx",
                         (unsigned long long)(m & ~known));
    /* Switches are 0 or 1: another value is more likely a field mixed up
     * with its neighbour than a wish. */
    const struct { uint64_t bit; int value; const char *name; } flags[] = {
        {KVRT_SCHED_PARAM_WATERMARK, p->use_watermark, "use_watermark"},
        {KVRT_SCHED_PARAM_ADAPTIVE_DRAFT, p->adaptive_draft, "adaptive_draft"},
        {KVRT_SCHED_PARAM_CSR_TABLES, p->csr_block_tables, "csr_block_tables"}};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        if ((m & flags[i].bit) && (flags[i].value & ~1))
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "%s %d is not 0 or 1",
                             flags[i].name, flags[i].value);
    s->max_batch_tokens = (m & KVRT_SCHED_PARAM_MAX_BATCH_TOKENS) ? p->max_batch_tokens : 8192;
    s->max_seqs = (m & KVRT_SCHED_PARAM_MAX_SEQS) ? p->max_seqs : 256;
    s->chunk_tokens = (m & KVRT_SCHED_PARAM_CHUNK) ? p->prefill_chunk_tokens : s->max_batch_tokens;
    s->use_watermark = (m & KVRT_SCHED_PARAM_WATERMARK) ? p->use_watermark != 0 : true;
    s->max_requests = (m & KVRT_SCHED_PARAM_MAX_REQUESTS) ? p->max_requests : 65536;
    s->max_seq_tokens = (m & KVRT_SCHED_PARAM_MAX_SEQ_TOKENS) ? p->max_seq_tokens : 131072;
    s->max_draft = (m & KVRT_SCHED_PARAM_DRAFT) ? p->max_draft_tokens : 0;
    s->adaptive_draft = (m & KVRT_SCHED_PARAM_ADAPTIVE_DRAFT) ? p->adaptive_draft != 0 : true;
    s->csr_tables = (m & KVRT_SCHED_PARAM_CSR_TABLES) ? p->csr_block_tables != 0 : false;
    s->max_in_flight = (m & KVRT_SCHED_PARAM_PLANS_IN_FLIGHT) ? p->max_plans_in_flight : 1;
    s->async = s->max_in_flight > 1;
    /* In tokens until the block size is known (kvrt_sched_create_groups). */
    s->share_blocks = (m & KVRT_SCHED_PARAM_SHARED_PREFILL) ? p->shared_prefill_min_tokens : 256;
    if (s->max_in_flight == 0 || s->max_in_flight > KVRT_SCHED_MAX_PLANS_IN_FLIGHT)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "max_plans_in_flight %u out of 1..%u",
                         s->max_in_flight, KVRT_SCHED_MAX_PLANS_IN_FLIGHT);
    if (s->max_batch_tokens == 0 || s->max_batch_tokens > (1u << 24))
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "max_batch_tokens %u out of 1..2^24",
                         s->max_batch_tokens);
    if (s->max_seqs == 0 || s->max_seqs > 65536)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "max_seqs %u out of 1..65536",
                         s->max_seqs);
    if (s->chunk_tokens == 0 || s->chunk_tokens > s->max_batch_tokens)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                         "prefill_chunk_tokens %u out of 1..max_batch_tokens (%u)",
                         s->chunk_tokens, s->max_batch_tokens);
    if (s->max_requests == 0 || s->max_requests > (1u << 24))
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "max_requests %u out of 1..2^24",
                         s->max_requests);
    if (s->max_seq_tokens < 2 || s->max_seq_tokens > KVRT_TABLE_MAX_TOKENS)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "max_seq_tokens %u out of 2..2^30",
                         s->max_seq_tokens);
    if (s->max_draft > KVRT_SCHED_MAX_DRAFT)
        return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG, "max_draft_tokens %u above %u",
                         s->max_draft, KVRT_SCHED_MAX_DRAFT);
    if (m & KVRT_SCHED_PARAM_NGRAM) {
        if (!s->max_draft || p->ngram_min == 0 || p->ngram_min > p->ngram_max ||
            p->ngram_max > KVRT_SCHED_MAX_NGRAM)
            return kvrt_fail(s->ctx, KVRT_ERR_INVALID_ARG,
                             "n-gram %u..%u: needs max_draft_tokens > 0 and 1 <= min <= "
                             "max <= %u",
                             p->ngram_min, p->ngram_max, KVRT_SCHED_MAX_NGRAM);
        s->ngram_min = p->ngram_min;
        s->ngram_max = p->ngram_max;
    }
    return KVRT_OK;
}

static void sched_free(kvrt_sched_t *s)
{
    if (s->seqs)
        sched_free_requests(s);
    kvrt_arena_destroy(&s->arena);
    kvrt_free_large(s->seqs);
    kvrt_free_large(s->heap);
    kvrt_free_large(s->running);
    kvrt_free_large(s->drafts_published);
    if (s->arrivals)
        sched_free_arrivals(s);
    kvrt_free_large(s->window);
    kvrt_free_large(s->arrivals);
    kvrt_free_large(s->landed_slots);
    kvrt_free_large(s->ended);
    kvrt_free_large(s->drained_memory);
    kvrt_free_large(s->rows);
    kvrt_free_large(s->free_rows);
    for (uint32_t k = 0; k < SCHED_PLAN_SLOTS; k++) {
        plan_buffers_t *b = &s->bufs[k];
        kvrt_free_large(b->seqs);
        kvrt_free_large(b->slot_of);
        kvrt_free_large(b->query_start_loc);
        kvrt_free_large(b->seq_lens);
        kvrt_free_large(b->row_index);
        kvrt_free_large(b->input_tokens);
        kvrt_free_large(b->positions);
        kvrt_free_large(b->slot_mapping);
        kvrt_free_large(b->copies);
        kvrt_free_large(b->copy_owner);
        kvrt_free_large(b->preempted);
        kvrt_free_large(b->csr_offsets);
        free(b->csr_ids);
    }
    for (uint32_t k = 0; k <= SCHED_PLAN_SLOTS; k++)
        kvrt_free_large(s->rc.changed[k]);
    kvrt_free_large(s->rc.row_mark);
    kvrt_free_large(s->match_blocks);
    sched_shared_free(s);
    sched_groups_free(s);
    free(s);
}

static void sched_destroy_owned(kvrt_owned_t *owned)
{
    kvrt_sched_t *s = (kvrt_sched_t *)owned;
    kvrt_ctl_unregister(s->ctx, s);
    for (uint32_t g = 0; g < s->num_groups; g++) {
        if (s->groups[g].cache)
            kvrt_cache_unhold(s->groups[g].cache);
        kvrt_pool_unhold(s->groups[g].pool);
    }
    sched_free(s);
}

static bool alloc_plan_buffers(plan_buffers_t *b, size_t seqs, size_t toks)
{
    b->seqs = kvrt_calloc_large_resident(seqs, sizeof(*b->seqs));
    b->slot_of = kvrt_calloc_large_resident(seqs, sizeof(*b->slot_of));
    b->query_start_loc = kvrt_calloc_large_resident(seqs + 1, sizeof(int32_t));
    b->seq_lens = kvrt_calloc_large_resident(seqs, sizeof(int32_t));
    b->row_index = kvrt_calloc_large_resident(seqs, sizeof(int32_t));
    b->input_tokens = kvrt_calloc_large_resident(toks, sizeof(int32_t));
    b->positions = kvrt_calloc_large_resident(toks, sizeof(int32_t));
    b->slot_mapping = kvrt_calloc_large_resident(toks, sizeof(int64_t));
    b->copies = kvrt_calloc_large_resident(seqs, sizeof(*b->copies));
    b->copy_owner = kvrt_calloc_large_resident(seqs, sizeof(*b->copy_owner));
    b->preempted = kvrt_calloc_large_resident(seqs, sizeof(*b->preempted));
    b->csr_offsets = kvrt_calloc_large_resident(seqs + 1, sizeof(int32_t));
    return b->seqs && b->slot_of && b->query_start_loc && b->seq_lens && b->row_index &&
           b->input_tokens && b->positions && b->slot_mapping && b->copies && b->copy_owner &&
           b->preempted && b->csr_offsets;
}

static bool alloc_arrays(kvrt_sched_t *s)
{
    size_t seqs = s->max_seqs, toks = s->max_batch_tokens, reqs = s->max_requests;
    /* 64-byte aligned, so each request's hot fields are one cache line;
     * on huge pages from 2 MiB up (kvrt_calloc_large), since every decode
     * reads one scattered line of it. */
    s->seqs = kvrt_calloc_large(reqs, sizeof(*s->seqs));
    /* The rest is resident from the start: plan buffers and rings that
     * advance one entry per request would otherwise fault a page in at its
     * first touch, long after warm-up. Block-table rows are the exception:
     * sized for the longest request in every row, they fault in as requests
     * first grow into them. Request slots are first touched by
     * kvrt_seq_add, never by a step. */
    s->heap = kvrt_calloc_large_resident(reqs, sizeof(*s->heap));
    s->ended = kvrt_calloc_large_resident(reqs, sizeof(*s->ended));
    s->arrivals = kvrt_calloc_large_resident(reqs, sizeof(*s->arrivals));
    s->landed_slots = kvrt_calloc_large_resident(reqs, sizeof(*s->landed_slots));
    s->window = kvrt_calloc_large_resident(KVRT_SCHED_HIT_WINDOW, sizeof(*s->window));
    s->drained_memory = kvrt_calloc_large_resident(reqs, sizeof(*s->drained_memory));
    s->running = kvrt_calloc_large_resident(seqs, sizeof(*s->running));
    s->drafts_published = kvrt_calloc_large_resident(seqs, sizeof(*s->drafts_published));
    s->rows = kvrt_calloc_large(seqs * s->row_stride, sizeof(*s->rows));
    s->free_rows = kvrt_calloc_large_resident(seqs, sizeof(*s->free_rows));
    bool ok = true;
    /* Synchronous steps use one plan slot; asynchronous ones all. */
    for (uint32_t k = 0; k < s->max_in_flight; k++)
        ok = alloc_plan_buffers(&s->bufs[k], seqs, toks) && ok;
    for (uint32_t k = 0; k <= SCHED_PLAN_SLOTS; k++) {
        s->rc.changed[k] = kvrt_calloc_large_resident(seqs, sizeof(int32_t));
        ok = ok && s->rc.changed[k];
    }
    s->rc.row_mark = kvrt_calloc_large_resident(seqs, sizeof(uint64_t));
    s->match_blocks = kvrt_calloc_large_resident(s->row_stride, sizeof(int32_t));
    return ok && s->seqs && s->heap && s->ended && s->arrivals && s->landed_slots && s->window &&
           s->drained_memory && s->running && s->drafts_published && s->rows && s->free_rows &&
           s->rc.row_mark && s->match_blocks && sched_groups_alloc(s) && sched_shared_alloc(s);
}

static void init_plan(kvrt_sched_t *s)
{
    for (uint32_t k = 0; k < s->max_in_flight; k++) {
        plan_buffers_t *b = &s->bufs[k];
        kvrt_batch_plan_t *p = &s->plans[k];
        p->tokens_per_block = s->tokens_per_block;
        p->seqs = b->seqs;
        p->query_start_loc = b->query_start_loc;
        p->seq_lens = b->seq_lens;
        p->input_tokens = b->input_tokens;
        p->positions = b->positions;
        p->slot_mapping = b->slot_mapping;
        p->row_index = b->row_index;
        p->block_rows = s->rows;
        p->row_stride = s->row_stride;
        p->num_rows = s->max_seqs;
        p->rows_changed = s->rc.changed[0];
        p->copies = b->copies;
        p->preempted = b->preempted;
    }
    sched_groups_init_plans(s);
    sched_use_slot(s, 0);
    s->rc.epoch = 1;
}

KVRT_EXPORT kvrt_status_t kvrt_sched_create(kvrt_ctx_t *ctx, kvrt_pool_t *pool,
                                            kvrt_cache_t *cache,
                                            const kvrt_sched_params_t *params,
                                            kvrt_sched_t **sched_out)
{
    if (!ctx)
        return KVRT_ERR_INVALID_ARG;
    if (!pool || !sched_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "pool and sched_out are required");
    if (kvrt_pool_ctx(pool) != ctx)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "the pool belongs to another context");
    if (cache && kvrt_cache_pool(cache) != pool)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "the cache is attached to another pool than the scheduler's");
    const kvrt_sched_group_params_t group = {
        .field_mask = cache ? KVRT_SCHED_GROUP_CACHE : 0, .pool = pool, .cache = cache};
    const kvrt_sched_group_params_t *groups[1] = {&group};
    return kvrt_sched_create_groups(ctx, 1, groups, params, sched_out);
}

KVRT_EXPORT kvrt_status_t kvrt_sched_create_groups(
    kvrt_ctx_t *ctx, uint32_t num_groups, const kvrt_sched_group_params_t *const *groups,
    const kvrt_sched_params_t *params, kvrt_sched_t **sched_out)
{
    if (!ctx)
        return KVRT_ERR_INVALID_ARG;
    if (!sched_out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "sched_out is required");
    /* Aligned as the struct asks (its shared stop sets start cache lines);
     * the size of a 64-byte aligned struct is a multiple of 64. */
    kvrt_sched_t *s = aligned_alloc(_Alignof(kvrt_sched_t), sizeof(*s));
    if (!s)
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "scheduler struct");
    memset(s, 0, sizeof(*s));
    s->ctx = ctx;
    const uint32_t tag = __atomic_fetch_add(&schedulers_created, 1, __ATOMIC_RELAXED) & 63u;
    s->first_generation = (tag << SCHED_GEN_TAG_SHIFT) |
                          (kvrt_generation_start() & SCHED_GEN_COUNT); /* (ids) */
    kvrt_status_t status = read_params(s, params);
    if (status == KVRT_OK)
        status = sched_groups_read(s, num_groups, groups);
    if (status != KVRT_OK) {
        free(s);
        return status;
    }
    kvrt_pool_info_t info;
    kvrt_pool_info(s->pool, &info);
    s->tokens_per_block = info.tokens_per_block;
    s->block_shift = (uint32_t)__builtin_ctz(info.tokens_per_block);
    s->fast_tail = s->hybrid ? 0 : s->tokens_per_block;
    s->pool_blocks = info.num_blocks - 1;
    s->share_blocks = (uint32_t)(((uint64_t)s->share_blocks + s->tokens_per_block - 1) >>
                                 s->block_shift);
    for (uint32_t g = 0; g < s->num_groups; g++) {
        sched_group_t *gr = &s->groups[g];
        gr->row_stride = sched_group_blocks_for(gr, (uint64_t)s->max_seq_tokens + s->max_draft);
        if ((uint64_t)gr->row_stride * s->max_seqs > SCHED_MAX_ROW_ENTRIES) {
            kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                      "block-table rows of %u sequences x %u blocks (group %u) exceed %llu "
                      "entries; lower max_seqs or max_seq_tokens",
                      s->max_seqs, gr->row_stride, g, SCHED_MAX_ROW_ENTRIES);
            free(s);
            return KVRT_ERR_INVALID_ARG;
        }
    }
    s->row_stride = s->groups[0].row_stride;
    for (uint32_t j = 1; j <= KVRT_SCHED_MAX_DRAFT; j++)
        s->draft_threshold[j] = (float)pow(0.25, 1.0 / j);
    if (!alloc_arrays(s)) {
        sched_free(s);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "scheduler arrays (%u sequences, %u "
                         "requests, %u tokens)", s->max_seqs, s->max_requests,
                         s->max_batch_tokens);
    }
    for (uint32_t i = 0; i < s->max_requests; i++) {
        s->seqs[i].next_free = i + 1 < s->max_requests ? i + 1 : SCHED_NONE;
        s->seqs[i].generation = s->first_generation; /* (ids in sched_internal.h) */
    }
    s->free_head = 0;
    s->pinned = SCHED_NONE;
    sched_arrivals_init(s);
    for (uint32_t r = 0; r < s->max_seqs; r++)
        s->free_rows[r] = s->max_seqs - 1 - r; /* row 0 is handed out first */
    s->num_free_rows = s->max_seqs;
    init_plan(s);
    s->cache_resets = sched_cache_resets(s);

    s->index = kvrt_ctx_next_index(ctx, "sched");
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "sched.%u", s->index);
    if (kvrt_ctl_register(ctx, prefix, sched_nodes, sizeof(sched_nodes) / sizeof(sched_nodes[0]),
                          s) != KVRT_OK) {
        kvrt_ctx_release_index(ctx, "sched", s->index);
        sched_free(s);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "ctl registration");
    }
    for (uint32_t g = 0; g < s->num_groups; g++) {
        kvrt_pool_hold(s->groups[g].pool);
        if (s->groups[g].cache)
            kvrt_cache_hold(s->groups[g].cache);
    }
    s->owned.rank = KVRT_TEARDOWN_SCHED;
    kvrt_ctx_own(ctx, &s->owned, sched_destroy_owned);
    kvrt_log(ctx, KVRT_LOG_INFO,
             "sched %u: budget %u tokens, %u sequences, chunk %u, drafts %u%s%s, %u cache "
             "group(s)",
             s->index, s->max_batch_tokens, s->max_seqs, s->chunk_tokens, s->max_draft,
             s->ngram_min ? " (n-gram)" : "", s->cache ? ", prefix cache" : "",
             s->num_groups);
    *sched_out = s;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_sched_destroy(kvrt_sched_t *s)
{
    if (!s)
        return KVRT_OK;
    kvrt_ctx_disown(s->ctx, &s->owned);
    sched_destroy_owned(&s->owned);
    return KVRT_OK;
}

uint32_t kvrt_sched_num_groups(const kvrt_sched_t *s) { return s->num_groups; }

kvrt_pool_t *kvrt_sched_group_pool(const kvrt_sched_t *s, uint32_t g)
{
    return g < s->num_groups ? s->groups[g].pool : NULL;
}

kvrt_cache_t *kvrt_sched_group_cache(const kvrt_sched_t *s, uint32_t g)
{
    return g < s->num_groups ? s->groups[g].cache : NULL;
}
