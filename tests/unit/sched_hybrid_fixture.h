/*
 * sched_hybrid_fixture.h - a scheduler over several cache groups for the
 * hybrid tests: pools and caches per group, a checked step (every group's
 * slots in its rows, windows read only real blocks), the engine's model,
 * and the end-of-test invariant (nothing leaked in any group).
 */
#ifndef KVRT_TEST_SCHED_HYBRID_FIXTURE_H
#define KVRT_TEST_SCHED_HYBRID_FIXTURE_H

#include <string.h>

#include "test_helpers.h"

#define MAX_GROUPS 3

typedef struct hybrid {
    kvrt_ctx_t *ctx;
    uint32_t num_groups;
    uint32_t owner[MAX_GROUPS]; /* the group whose pool (and cache) g uses */
    kvrt_pool_t *pool[MAX_GROUPS];
    kvrt_cache_t *cache[MAX_GROUPS];
    uint32_t tpb[MAX_GROUPS];
    uint32_t window[MAX_GROUPS];
    kvrt_sched_t *sched;
} hybrid_t;

/* Groups g: window[g] (0: full); group g uses the pool of group
 * owner[g] (owner NULL: every group its own), which owner[g] == g creates
 * with blocks[g] blocks of tpb[g] tokens, and a prefix cache made with
 * cache_params (NULL: no cache). */
static inline hybrid_t hybrid_open_cached(uint32_t n, const uint32_t *owner,
                                          const uint32_t *blocks, const uint32_t *tpb,
                                          const uint32_t *window,
                                          const kvrt_cache_params_t *cache_params,
                                          const kvrt_sched_params_t *sp)
{
    const bool cache = cache_params != NULL;
    hybrid_t h = {.num_groups = n};
    cr_assert_eq(kvrt_ctx_create(NULL, &h.ctx), KVRT_OK);
    kvrt_sched_group_params_t gp[MAX_GROUPS];
    const kvrt_sched_group_params_t *gpp[MAX_GROUPS];
    for (uint32_t g = 0; g < n; g++) {
        h.owner[g] = owner ? owner[g] : g;
        cr_assert_leq(h.owner[g], g);
        h.tpb[g] = tpb[h.owner[g]];
        h.window[g] = window[g];
        if (h.owner[g] != g) {
            h.pool[g] = h.pool[h.owner[g]];
            h.cache[g] = h.cache[h.owner[g]];
        } else {
            h.pool[g] = test_pool(h.ctx, blocks[g], tpb[g]);
            if (cache)
                ASSERT_OK(h.ctx, kvrt_cache_create(h.pool[g], cache_params, &h.cache[g]));
        }
        gp[g] = (kvrt_sched_group_params_t){
            .field_mask = (cache ? KVRT_SCHED_GROUP_CACHE : 0) |
                          (window[g] ? KVRT_SCHED_GROUP_WINDOW : 0),
            .pool = h.pool[g],
            .cache = h.cache[g],
            .sliding_window = window[g]};
        gpp[g] = &gp[g];
    }
    ASSERT_OK(h.ctx, kvrt_sched_create_groups(h.ctx, n, gpp, sp, &h.sched));
    return h;
}

/* With the default cache, or none. */
static inline hybrid_t hybrid_open_shared(uint32_t n, const uint32_t *owner,
                                          const uint32_t *blocks, const uint32_t *tpb,
                                          const uint32_t *window, bool cache,
                                          const kvrt_sched_params_t *sp)
{
    static const kvrt_cache_params_t defaults = {0};
    return hybrid_open_cached(n, owner, blocks, tpb, window, cache ? &defaults : NULL, sp);
}

/* Every group with a pool of its own. */
static inline hybrid_t hybrid_open(uint32_t n, const uint32_t *blocks, const uint32_t *tpb,
                                   const uint32_t *window, bool cache,
                                   const kvrt_sched_params_t *sp)
{
    return hybrid_open_shared(n, NULL, blocks, tpb, window, cache, sp);
}

static inline uint32_t used_blocks(const hybrid_t *h, uint32_t g)
{
    kvrt_pool_info_t info;
    ASSERT_OK(h->ctx, kvrt_pool_info(h->pool[g], &info));
    return info.used_blocks;
}

static inline void verify_all(const hybrid_t *h)
{
    for (uint32_t g = 0; g < h->num_groups; g++) {
        if (h->owner[g] != g)
            continue; /* its pool is an earlier group's */
        ASSERT_OK(h->ctx, kvrt_pool_verify(h->pool[g]));
        if (h->cache[g])
            ASSERT_OK(h->ctx, kvrt_cache_verify(h->cache[g]));
    }
}

/* Verifies, requires nothing used and no table in any group, destroys. */
static inline void hybrid_close(hybrid_t *h)
{
    verify_all(h);
    for (uint32_t g = 0; g < h->num_groups; g++) {
        if (h->owner[g] != g)
            continue;
        kvrt_pool_info_t info;
        ASSERT_OK(h->ctx, kvrt_pool_info(h->pool[g], &info));
        cr_assert_eq(info.used_blocks, 0, "group %u: %u blocks leaked", g, info.used_blocks);
        cr_assert_eq(info.live_tables, 0, "group %u: %u tables leaked", g, info.live_tables);
    }
    ASSERT_OK(h->ctx, kvrt_sched_destroy(h->sched));
    for (uint32_t g = 0; g < h->num_groups; g++)
        if (h->owner[g] == g)
            ASSERT_OK(h->ctx, kvrt_cache_destroy(h->cache[g]));
    kvrt_ctx_destroy(h->ctx);
}

/* The engine's model: the token after `prev`. */
static inline int32_t model(int32_t prev) { return (prev * 31 + 7) % 97; }

/* Commits the model's token for every sampling entry (no draft accepted). */
static inline void commit_model(hybrid_t *h, const kvrt_batch_plan_t *plan)
{
    int32_t tokens[512];
    uint32_t n = 0;
    for (uint32_t i = 0; i < plan->num_seqs; i++) {
        const kvrt_plan_seq_t *e = &plan->seqs[i];
        if (!e->sample)
            continue;
        int32_t last = plan->input_tokens[plan->query_start_loc[i + 1] - 1];
        tokens[n++] = model(last);
    }
    kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = n,
                       .tokens = tokens};
    ASSERT_OK(h->ctx, kvrt_sched_commit(h->sched, &c));
}

/*
 * Every planned token's slot, in every group, lies in its row at its
 * position; no slot is written twice in a pool (by one group or by two
 * sharing it); a row holds real blocks
 * for every block the window of the entry's queries reads and the null
 * block past its length. Returns nothing; asserts.
 */
static inline void check_plan_groups(const hybrid_t *h, const kvrt_batch_plan_t *plan)
{
    cr_assert_eq(plan->num_groups, h->num_groups);
    cr_assert_eq(plan->groups[0].slot_mapping, plan->slot_mapping);
    cr_assert_eq(plan->groups[0].block_rows, plan->block_rows);
    cr_assert_eq(plan->groups[0].row_stride, plan->row_stride);
    cr_assert_eq(plan->groups[0].tokens_per_block, plan->tokens_per_block);
    static int64_t seen[MAX_GROUPS][4096];
    uint32_t num_seen[MAX_GROUPS] = {0};
    for (uint32_t g = 0; g < h->num_groups; g++) {
        const kvrt_plan_group_t *pg = &plan->groups[g];
        const uint32_t o = h->owner[g];
        cr_assert_eq(pg->tokens_per_block, h->tpb[g]);
        cr_assert_eq(pg->sliding_window, h->window[g]);
        cr_assert_eq(pg->num_copies, 0);
        for (uint32_t i = 0; i < plan->num_seqs; i++) {
            const kvrt_plan_seq_t *e = &plan->seqs[i];
            const int32_t *row = pg->block_rows + (size_t)e->row * pg->row_stride;
            uint32_t c = e->num_computed_tokens, end = c + e->num_new_tokens;
            uint32_t blocks = (end + h->tpb[g] - 1) / h->tpb[g];
            uint32_t read_from = h->window[g] && c + 1 > h->window[g] ? c + 1 - h->window[g] : 0;
            for (uint32_t b = read_from / h->tpb[g]; b < blocks; b++)
                cr_assert_gt(row[b], 0, "group %u row %u entry %u (tokens %u..%u) is null", g,
                             e->row, b, read_from, end);
            for (uint32_t b = blocks; b < pg->row_stride; b++)
                cr_assert_eq(row[b], 0, "group %u row %u not padded at %u", g, e->row, b);
            for (uint32_t k = 0; k < e->num_new_tokens; k++) {
                uint32_t tok = (uint32_t)plan->query_start_loc[i] + k, pos = c + k;
                int64_t slot = pg->slot_mapping[tok];
                cr_assert_eq(slot, (int64_t)row[pos / h->tpb[g]] * h->tpb[g] + pos % h->tpb[g],
                             "group %u token %u", g, tok);
                for (uint32_t j = 0; j < num_seen[o]; j++)
                    cr_assert_neq(seen[o][j], slot, "group %u slot %lld twice in its pool", g,
                                  (long long)slot);
                cr_assert_lt(num_seen[o], 4096);
                seen[o][num_seen[o]++] = slot;
            }
        }
    }
}

static inline kvrt_seq_id_t add_prompt(hybrid_t *h, const int32_t *prompt, uint32_t len,
                                uint32_t max_new)
{
    kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = len, .max_new_tokens = max_new};
    kvrt_seq_id_t id;
    ASSERT_OK(h->ctx, kvrt_seq_add(h->sched, &p, &id));
    return id;
}

/* One step, checked in every group, committed and verified; false when
 * the plan was empty. */
static inline bool checked_step(hybrid_t *h, uint64_t now)
{
    const kvrt_batch_plan_t *plan;
    ASSERT_OK(h->ctx, kvrt_sched_step(h->sched, now, &plan));
    if (!plan->num_seqs)
        return false;
    check_plan_groups(h, plan);
    commit_model(h, plan);
    verify_all(h);
    return true;
}

/* Steps until nothing is left (bounded), checking every plan. */
static inline void run_to_end(hybrid_t *h, uint32_t max_steps)
{
    for (uint32_t step = 0; step < max_steps; step++) {
        bool ran = checked_step(h, step);
        kvrt_sched_stats_t st;
        ASSERT_OK(h->ctx, kvrt_sched_stats(h->sched, &st));
        if (!ran && !st.running && !st.waiting)
            return;
    }
    cr_assert_fail("still running after %u steps", max_steps);
}

static inline void drain_all(hybrid_t *h)
{
    kvrt_seq_info_t ev[16];
    uint32_t n;
    do
        ASSERT_OK(h->ctx, kvrt_sched_drain_ended(h->sched, ev, 16, &n));
    while (n == 16);
}

/* The output of a request that ended by length follows the model. */
static inline void expect_model_output(hybrid_t *h, kvrt_seq_id_t id, const int32_t *prompt,
                                       uint32_t len, uint32_t max_new)
{
    kvrt_seq_info_t ev[4];
    uint32_t n;
    ASSERT_OK(h->ctx, kvrt_sched_drain_ended(h->sched, ev, 4, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(ev[0].id, id);
    cr_assert_eq(ev[0].end_reason, KVRT_END_LENGTH);
    cr_assert_eq(ev[0].output_tokens, max_new);
    int32_t prev = prompt[len - 1];
    for (uint32_t i = 0; i < max_new; i++) {
        cr_assert_eq(ev[0].output[i], model(prev));
        prev = ev[0].output[i];
    }
}

#endif /* KVRT_TEST_SCHED_HYBRID_FIXTURE_H */
