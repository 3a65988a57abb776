/*
 * test_kv_model.c - model-based test: long random sequences of pool and
 * table operations (alloc, free, ref, create, append, truncate, fork,
 * adopt, destroy), each also applied to a plain reference model; after every
 * step the pool must agree with the model exactly (refcounts, table
 * contents, free/used counts, slots) and kvrt_pool_verify must pass.
 * Failures of the real pool (exhaustion, limits) must leave it unchanged.
 */
#include <stdlib.h>
#include <string.h>

#include "test_helpers.h"

#define MAX_TABLES 24
#define MAX_HELD 64
#define MAX_BLOCKS_PER_TABLE 256

typedef struct model_table {
    bool live;
    kvrt_table_id_t id;
    uint32_t tokens;
    uint32_t num_blocks;
    int32_t blocks[MAX_BLOCKS_PER_TABLE];
} model_table_t;

typedef struct model {
    uint32_t num_blocks, tpb;
    uint32_t *refcount; /* expected, per block */
    model_table_t tables[MAX_TABLES];
    int32_t held[MAX_HELD]; /* references the test itself holds */
    uint32_t n_held;
} model_t;

static kvrt_ctx_t *ctx;
static kvrt_pool_t *pool;
static model_t m;

static uint32_t model_used(void)
{
    uint32_t used = 0;
    for (uint32_t b = 1; b < m.num_blocks; b++)
        used += m.refcount[b] > 0;
    return used;
}

static void check_against_model(int step)
{
    kvrt_status_t st = kvrt_pool_verify(pool);
    cr_assert_eq(st, KVRT_OK, "step %d: %s", step, kvrt_ctx_last_error(ctx));
    kvrt_pool_info_t info;
    kvrt_pool_info(pool, &info);
    cr_assert_eq(info.free_blocks + info.used_blocks + info.cached_blocks, m.num_blocks - 1);
    cr_assert_eq(info.used_blocks, model_used(), "step %d", step);
    for (uint32_t b = 1; b < m.num_blocks; b++) {
        uint32_t rc = 0;
        kvrt_pool_refcount(pool, (int32_t)b, &rc);
        cr_assert_eq(rc, m.refcount[b], "step %d block %u: refcount %u, model %u", step, b, rc,
                     m.refcount[b]);
    }
    uint32_t live = 0;
    for (int i = 0; i < MAX_TABLES; i++) {
        model_table_t *t = &m.tables[i];
        if (!t->live)
            continue;
        live++;
        const int32_t *blocks;
        uint32_t nb, tokens;
        cr_assert_eq(kvrt_table_view(pool, t->id, &blocks, &nb, &tokens), KVRT_OK, "step %d table %d id %llx: %s", step, i, (unsigned long long)t->id, kvrt_ctx_last_error(ctx));
        cr_assert_eq(tokens, t->tokens, "step %d table %d", step, i);
        cr_assert_eq(nb, t->num_blocks);
        cr_assert(nb == 0 || memcmp(blocks, t->blocks, nb * sizeof(int32_t)) == 0, "step %d table %d", step, i);
        if (tokens) {
            int64_t slots[MAX_BLOCKS_PER_TABLE * 8];
            uint32_t count = tokens < 64 ? tokens : 64;
            uint32_t first = tokens - count;
            cr_assert_eq(kvrt_table_slots(pool, t->id, first, count, slots), KVRT_OK);
            for (uint32_t k = 0; k < count; k++) {
                uint32_t pos = first + k;
                cr_assert_eq(slots[k], (int64_t)t->blocks[pos / m.tpb] * m.tpb + pos % m.tpb);
            }
        }
    }
    cr_assert_eq(info.live_tables, live);
}

static model_table_t *random_live(uint64_t *rng)
{
    uint32_t start = test_rand_below(rng, MAX_TABLES);
    for (uint32_t i = 0; i < MAX_TABLES; i++) {
        model_table_t *t = &m.tables[(start + i) % MAX_TABLES];
        if (t->live)
            return t;
    }
    return NULL;
}

static model_table_t *free_model_slot(void)
{
    for (int i = 0; i < MAX_TABLES; i++)
        if (!m.tables[i].live)
            return &m.tables[i];
    return NULL;
}

static uint32_t available(void) { return m.num_blocks - 1 - model_used(); }

static void op_append(uint64_t *rng)
{
    model_table_t *t = random_live(rng);
    if (!t)
        return;
    uint32_t n = 1 + test_rand_below(rng, test_rand_below(rng, 4) ? 3 : 3 * m.tpb);
    uint32_t new_blocks = (t->tokens + n + m.tpb - 1) / m.tpb;
    if (new_blocks > MAX_BLOCKS_PER_TABLE)
        return;
    bool partial = t->tokens % m.tpb != 0;
    bool cow = partial && m.refcount[t->blocks[t->num_blocks - 1]] > 1;
    uint32_t need = new_blocks - t->num_blocks + (cow ? 1 : 0);
    int64_t slots[MAX_BLOCKS_PER_TABLE * 8];
    kvrt_block_copy_t copy = {0};
    uint32_t n_copies = 9;
    kvrt_status_t st = kvrt_table_append(pool, t->id, n, slots, &copy, &n_copies);
    if (need > available()) {
        cr_assert_eq(st, KVRT_ERR_NO_BLOCKS);
        return;
    }
    cr_assert_eq(st, KVRT_OK, "%s", kvrt_ctx_last_error(ctx));
    const int32_t *blocks;
    uint32_t nb;
    kvrt_table_view(pool, t->id, &blocks, &nb, NULL);
    cr_assert_eq(n_copies, cow ? 1u : 0u);
    if (cow) {
        int32_t old = t->blocks[t->num_blocks - 1];
        cr_assert_eq(copy.src_block, old);
        cr_assert_eq(copy.dst_block, blocks[t->num_blocks - 1]);
        cr_assert_eq(m.refcount[copy.dst_block], 0, "CoW target was not free");
        m.refcount[old]--;
        m.refcount[copy.dst_block] = 1;
        t->blocks[t->num_blocks - 1] = copy.dst_block;
    }
    for (uint32_t k = t->num_blocks; k < nb; k++) {
        cr_assert_eq(m.refcount[blocks[k]], 0, "new block %d was not free", blocks[k]);
        m.refcount[blocks[k]] = 1;
        t->blocks[k] = blocks[k];
    }
    cr_assert_eq(nb, new_blocks);
    for (uint32_t k = 0; k < n; k++) {
        uint32_t pos = t->tokens + k;
        cr_assert_eq(slots[k], (int64_t)t->blocks[pos / m.tpb] * m.tpb + pos % m.tpb);
    }
    t->num_blocks = nb;
    t->tokens += n;
}

static void op_truncate(uint64_t *rng)
{
    model_table_t *t = random_live(rng);
    if (!t)
        return;
    uint32_t to = test_rand_below(rng, t->tokens + 1);
    cr_assert_eq(kvrt_table_truncate(pool, t->id, to), KVRT_OK);
    uint32_t keep = (to + m.tpb - 1) / m.tpb;
    for (uint32_t k = keep; k < t->num_blocks; k++)
        m.refcount[t->blocks[k]]--;
    t->num_blocks = keep;
    t->tokens = to;
}

static void op_fork(uint64_t *rng)
{
    model_table_t *parent = random_live(rng);
    if (!parent)
        return;
    uint32_t n = 1 + test_rand_below(rng, 3);
    model_table_t *slots[3];
    uint32_t reserved = 0;
    while (reserved < n && (slots[reserved] = free_model_slot()) != NULL)
        slots[reserved++]->live = true; /* reserve, so the next pick differs */
    for (uint32_t c = 0; c < reserved; c++)
        slots[c]->live = false;
    if (reserved < n)
        return;
    bool partial = parent->tokens % m.tpb != 0;
    kvrt_table_id_t ids[3];
    kvrt_block_copy_t copies[3];
    uint32_t n_copies = 0;
    kvrt_status_t st = kvrt_table_fork(pool, parent->id, n, ids, copies, &n_copies);
    if (partial && n > available()) {
        cr_assert_eq(st, KVRT_ERR_NO_BLOCKS);
        return;
    }
    cr_assert_eq(st, KVRT_OK, "%s", kvrt_ctx_last_error(ctx));
    cr_assert_eq(n_copies, partial ? n : 0);
    uint32_t shared = parent->num_blocks - (partial ? 1 : 0);
    for (uint32_t c = 0; c < n; c++) {
        model_table_t *child = slots[c];
        *child = *parent;
        child->id = ids[c];
        for (uint32_t k = 0; k < shared; k++)
            m.refcount[parent->blocks[k]]++;
        if (partial) {
            cr_assert_eq(copies[c].src_block, parent->blocks[shared]);
            cr_assert_eq(m.refcount[copies[c].dst_block], 0);
            m.refcount[copies[c].dst_block] = 1;
            child->blocks[shared] = copies[c].dst_block;
        }
    }
}

static void op_destroy(uint64_t *rng)
{
    model_table_t *t = random_live(rng);
    if (!t)
        return;
    cr_assert_eq(kvrt_table_destroy(pool, t->id), KVRT_OK);
    for (uint32_t k = 0; k < t->num_blocks; k++)
        m.refcount[t->blocks[k]]--;
    cr_assert_eq(kvrt_table_destroy(pool, t->id), KVRT_ERR_UNKNOWN_TABLE);
    t->live = false;
}

static void op_create(void)
{
    model_table_t *t = free_model_slot();
    if (!t)
        return;
    *t = (model_table_t){.live = true};
    cr_assert_eq(kvrt_table_create(pool, &t->id), KVRT_OK);
}

static void op_raw(uint64_t *rng)
{
    switch (test_rand_below(rng, 4)) {
    case 0: { /* alloc */
        uint32_t n = 1 + test_rand_below(rng, 4);
        if (m.n_held + n > MAX_HELD)
            return;
        int32_t out[4];
        kvrt_status_t st = kvrt_pool_alloc(pool, n, out);
        if (n > available()) {
            cr_assert_eq(st, KVRT_ERR_NO_BLOCKS);
            return;
        }
        cr_assert_eq(st, KVRT_OK);
        for (uint32_t i = 0; i < n; i++) {
            cr_assert_eq(m.refcount[out[i]], 0);
            m.refcount[out[i]] = 1;
            m.held[m.n_held++] = out[i];
        }
        return;
    }
    case 1: { /* free one held reference */
        if (!m.n_held)
            return;
        uint32_t i = test_rand_below(rng, m.n_held);
        cr_assert_eq(kvrt_pool_free(pool, 1, &m.held[i]), KVRT_OK);
        m.refcount[m.held[i]]--;
        m.held[i] = m.held[--m.n_held];
        return;
    }
    case 2: { /* take an extra reference on some table's block */
        model_table_t *t = random_live(rng);
        if (!t || !t->num_blocks || m.n_held == MAX_HELD)
            return;
        int32_t b = t->blocks[test_rand_below(rng, t->num_blocks)];
        cr_assert_eq(kvrt_pool_ref(pool, 1, &b), KVRT_OK);
        m.refcount[b]++;
        m.held[m.n_held++] = b;
        return;
    }
    default: { /* adopt held blocks into an aligned table */
        model_table_t *t = random_live(rng);
        if (!t || !m.n_held || t->tokens % m.tpb || t->num_blocks == MAX_BLOCKS_PER_TABLE)
            return;
        int32_t b = m.held[m.n_held - 1];
        cr_assert_eq(kvrt_table_adopt(pool, t->id, 1, &b), KVRT_OK);
        m.n_held--;
        t->blocks[t->num_blocks++] = b;
        t->tokens += m.tpb;
        return;
    }
    }
}

static void run_model(uint64_t seed, uint32_t num_blocks, uint32_t tpb, int steps)
{
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    pool = test_pool(ctx, num_blocks, tpb);
    memset(&m, 0, sizeof(m));
    m.num_blocks = num_blocks;
    m.tpb = tpb;
    m.refcount = calloc(num_blocks, sizeof(uint32_t));
    uint64_t rng = seed;
    for (int step = 0; step < steps; step++) {
        uint32_t dice = test_rand_below(&rng, 100);
        if (dice < 12)
            op_create();
        else if (dice < 50)
            op_append(&rng);
        else if (dice < 62)
            op_truncate(&rng);
        else if (dice < 72)
            op_fork(&rng);
        else if (dice < 84)
            op_destroy(&rng);
        else
            op_raw(&rng);
        check_against_model(step);
    }
    /* Tear everything down: nothing may be left allocated. */
    for (int i = 0; i < MAX_TABLES; i++)
        if (m.tables[i].live)
            cr_assert_eq(kvrt_table_destroy(pool, m.tables[i].id), KVRT_OK);
    if (m.n_held)
        cr_assert_eq(kvrt_pool_free(pool, m.n_held, m.held), KVRT_OK);
    kvrt_pool_info_t info;
    kvrt_pool_info(pool, &info);
    cr_assert_eq(info.used_blocks, 0, "leaked blocks");
    cr_assert_eq(info.free_blocks, num_blocks - 1);
    cr_assert_eq(kvrt_pool_verify(pool), KVRT_OK);
    free(m.refcount);
    kvrt_ctx_destroy(ctx);
}

/* Tight pools hit exhaustion often; roomy ones build long shared chains. */
Test(kv_model, tight_pool_small_blocks) { run_model(1, 40, 4, 4000); }
Test(kv_model, roomy_pool_16_token_blocks) { run_model(2, 600, 16, 4000); }
Test(kv_model, single_token_blocks) { run_model(3, 100, 1, 3000); }
Test(kv_model, many_seeds)
{
    for (uint64_t seed = 10; seed < 40; seed++)
        run_model(seed * 7919, 24 + (uint32_t)(seed % 5) * 20, 1u << (seed % 6), 600);
}
