/*
 * test_kernels_attention.c - the reference paged decode attention reads
 * what block tables describe: against an oracle that first gathers each
 * sequence's K/V into contiguous arrays (in double precision), on random
 * shapes with grouped-query heads, and against the K/V each sequence wrote
 * through real kvrt block tables (append, fork with copy-on-write, export).
 */
#include <criterion/criterion.h>

#include "kvrt/block_table.h"
#include "kvrt/kernels.h"
#include "kvrt/pool.h"
#include "test_kernels_oracle.h"

/* softmax(q K^T * scale) V for one head over contiguous K/V rows (double). */
static void oracle_attend(const double *q, const double *k, const double *v, uint32_t len,
                          uint32_t dim, double scale, double *out)
{
    double max_logit = -INFINITY;
    double *logits = malloc((len ? len : 1) * sizeof(double));
    for (uint32_t t = 0; t < len; t++) {
        double dot = 0;
        for (uint32_t e = 0; e < dim; e++)
            dot += q[e] * k[(size_t)t * dim + e];
        logits[t] = dot * scale;
        max_logit = fmax(max_logit, logits[t]);
    }
    double denom = 0;
    for (uint32_t t = 0; t < len; t++)
        denom += exp(logits[t] - max_logit);
    for (uint32_t e = 0; e < dim; e++) {
        double acc = 0;
        for (uint32_t t = 0; t < len; t++)
            acc += exp(logits[t] - max_logit) * v[(size_t)t * dim + e];
        out[e] = len ? acc / denom : 0.0;
    }
    free(logits);
}

/* Reads (dequantizing) head `head` of token t of a sequence, by its table. */
static double cache_elem(const kvrt_kv_cache_t *c, const int32_t *table, uint32_t t,
                         uint32_t layer, int half, uint32_t head, uint32_t e)
{
    const kvrt_kv_layout_t *l = &c->layout;
    uint32_t block = (uint32_t)table[t / l->tokens_per_block];
    uint64_t at = oracle_elem_offset(l, c->num_blocks, block, layer, half,
                                     t % l->tokens_per_block, head * l->head_dim + e);
    kvrt_dtype_t dtype = (l->field_mask & KVRT_LAYOUT_FIELD_DTYPE) ? l->dtype : KVRT_DTYPE_FP16;
    double v = oracle_load((const char *)c->base + at, dtype, 0);
    if (dtype == KVRT_DTYPE_FP8_E4M3) {
        const float *s = half ? c->v_scales : c->k_scales;
        v *= c->scale_mode == KVRT_SCALE_PER_HEAD ? s[layer * l->num_kv_heads + head]
                                                  : s[layer * c->num_blocks + block];
    }
    return v;
}

/* Gathers every sequence's K/V contiguously, runs the oracle, compares. */
static void check_against_gather_oracle(const kvrt_kv_cache_t *c,
                                        const kvrt_decode_attention_t *a, const float *out,
                                        double tolerance)
{
    const kvrt_kv_layout_t *l = &c->layout;
    uint32_t dim = l->head_dim, group = a->num_q_heads / l->num_kv_heads;
    double scale = (a->field_mask & KVRT_ATTN_FIELD_SCALE) ? a->softmax_scale
                                                           : 1.0 / sqrt((double)dim);
    double q[1024], want[1024];
    for (uint32_t s = 0; s < a->num_seqs; s++) {
        uint32_t len = (uint32_t)a->seq_lens[s];
        const int32_t *table = a->block_tables + (size_t)s * a->table_stride;
        double *k = malloc(((size_t)len + 1) * dim * sizeof(double));
        double *v = malloc(((size_t)len + 1) * dim * sizeof(double));
        for (uint32_t h = 0; h < a->num_q_heads; h++) {
            for (uint32_t t = 0; t < len; t++)
                for (uint32_t e = 0; e < dim; e++) {
                    k[(size_t)t * dim + e] = cache_elem(c, table, t, a->layer, 0, h / group, e);
                    v[(size_t)t * dim + e] = cache_elem(c, table, t, a->layer, 1, h / group, e);
                }
            size_t first = ((size_t)s * a->num_q_heads + h) * dim;
            for (uint32_t e = 0; e < dim; e++)
                q[e] = oracle_load(a->query, a->q_dtype, first + e);
            oracle_attend(q, k, v, len, dim, scale, want);
            for (uint32_t e = 0; e < dim; e++)
                cr_assert_leq(fabs(out[first + e] - want[e]), tolerance,
                              "seq %u head %u elem %u: %g vs %g (len %u)", s, h, e,
                              out[first + e], want[e], len);
        }
        free(k);
        free(v);
    }
}

Test(kernels_attention, matches_gather_oracle_on_random_shapes)
{
    static const kvrt_dtype_t dtypes[] = {KVRT_DTYPE_FP16, KVRT_DTYPE_BF16, KVRT_DTYPE_FP8_E4M3};
    for (uint64_t seed = 1; seed <= 24; seed++) {
        uint64_t rng = seed;
        kvrt_kv_layout_t l = oracle_layout(&rng, dtypes[seed % 3]);
        uint32_t num_blocks = 2 + test_rand_below(&rng, 10);
        uint64_t bytes = oracle_cache_bytes(&l, num_blocks);
        char *base = malloc(bytes);
        /* Values in the cache: random rows of the cache dtype (FP8 codes
         * drawn so that none is NaN). */
        if (l.dtype == KVRT_DTYPE_FP8_E4M3) {
            for (uint64_t i = 0; i < bytes; i++)
                base[i] = (char)(test_rand_below(&rng, 0x7e) | (test_rand_below(&rng, 2) << 7));
        } else {
            oracle_fill_values(&rng, base, l.dtype, bytes / 2, 1.0f);
        }
        float scales[2][64];
        for (int i = 0; i < 64; i++) {
            scales[0][i] = 0.01f + 0.02f * (oracle_unit(&rng) + 1);
            scales[1][i] = 0.01f + 0.02f * (oracle_unit(&rng) + 1);
        }
        kvrt_kv_cache_t cache = {.layout = l, .num_blocks = num_blocks, .base = base};
        if (l.dtype == KVRT_DTYPE_FP8_E4M3) {
            cache.field_mask = KVRT_KV_CACHE_FIELD_SCALES;
            cache.scale_mode = seed % 2 ? KVRT_SCALE_PER_BLOCK : KVRT_SCALE_PER_HEAD;
            cache.k_scales = scales[0];
            cache.v_scales = scales[1];
        }
        uint32_t group = 1u << test_rand_below(&rng, 4); /* 1, 2, 4, 8 query heads per KV head */
        uint32_t num_seqs = 1 + test_rand_below(&rng, 5), stride = 1 + test_rand_below(&rng, 4);
        uint32_t num_q_heads = l.num_kv_heads * group;
        int32_t *tables = malloc(num_seqs * stride * sizeof(int32_t));
        int32_t *lens = malloc(num_seqs * sizeof(int32_t));
        for (uint32_t s = 0; s < num_seqs; s++) {
            /* Lengths 0, partial blocks and full tables; block 0 may appear. */
            lens[s] = (int32_t)test_rand_below(&rng, stride * l.tokens_per_block + 1);
            if (s == 0)
                lens[s] = 0;
            for (uint32_t b = 0; b < stride; b++)
                tables[s * stride + b] = (int32_t)test_rand_below(&rng, num_blocks);
        }
        kvrt_dtype_t q_dtype = seed % 4 == 0 ? KVRT_DTYPE_FP32 : KVRT_DTYPE_FP16;
        size_t q_elems = (size_t)num_seqs * num_q_heads * l.head_dim;
        void *query = malloc(q_elems * 4);
        oracle_fill_values(&rng, query, q_dtype, q_elems, 1.0f);
        float *out = malloc(q_elems * sizeof(float));
        kvrt_decode_attention_t a = {.layer = test_rand_below(&rng, l.num_layers),
                                     .num_seqs = num_seqs, .num_q_heads = num_q_heads,
                                     .q_dtype = q_dtype, .query = query, .block_tables = tables,
                                     .table_stride = stride, .seq_lens = lens, .out = out};
        if (seed % 3 == 0) {
            a.field_mask = KVRT_ATTN_FIELD_SCALE;
            a.softmax_scale = 0.5f;
        }
        cr_assert_eq(kvrt_cpu_decode_attention(NULL, &cache, &a), KVRT_OK, "seed %llu",
                     (unsigned long long)seed);
        check_against_gather_oracle(&cache, &a, out, 2e-5);
        free(base);
        free(tables);
        free(lens);
        free(query);
        free(out);
    }
}

/*
 * End to end through kvrt's own tables: four sequences append tokens (one
 * forks another mid-block, so a copy-on-write block copy runs), each
 * writes its K/V through the slots kvrt_table_append returned, and the
 * attention output over kvrt_table_export rows must equal the oracle over
 * the K/V each sequence remembers writing (never read back from the cache).
 */
Test(kernels_attention, reads_what_kvrt_block_tables_describe)
{
    enum { SEQS = 4, HEADS = 2, DIM = 64, Q_HEADS = 8, MAX_TOKENS = 80, PAD = 8 };
    kvrt_ctx_t *ctx;
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    kvrt_pool_params_t params = {0};
    params.layout = (kvrt_kv_layout_t){.field_mask = KVRT_LAYOUT_FIELD_FORMAT,
                                       .num_layers = 2, .num_kv_heads = HEADS,
                                       .head_dim = DIM, .tokens_per_block = 16,
                                       .format = KVRT_KV_FUSED};
    params.num_blocks = 64;
    kvrt_pool_t *pool;
    cr_assert_eq(kvrt_pool_create(ctx, &params, &pool), KVRT_OK);
    kvrt_pool_info_t info;
    kvrt_pool_info(pool, &info);
    kvrt_kv_cache_t cache = {.layout = params.layout, .num_blocks = info.num_blocks,
                             .base = info.base};

    static float keys[SEQS][MAX_TOKENS][HEADS * DIM], values[SEQS][MAX_TOKENS][HEADS * DIM];
    static _Float16 k16[MAX_TOKENS][HEADS * DIM], v16[MAX_TOKENS][HEADS * DIM];
    uint32_t lens[SEQS] = {0};
    kvrt_table_id_t tables[SEQS];
    uint64_t rng = 99;
    /* Appends n tokens of fresh K/V to sequence s and writes them, layer 1. */
#define APPEND(s, n)                                                                       \
    do {                                                                                   \
        int64_t slots[MAX_TOKENS];                                                         \
        kvrt_block_copy_t copy;                                                            \
        uint32_t copies = 0;                                                               \
        cr_assert_eq(kvrt_table_append(pool, tables[s], n, slots, &copy, &copies), KVRT_OK); \
        if (copies)                                                                        \
            cr_assert_eq(kvrt_cpu_copy_blocks(ctx, &cache, &copy, 1), KVRT_OK);            \
        for (uint32_t t = 0; t < (n); t++)                                                 \
            for (uint32_t e = 0; e < HEADS * DIM; e++) {                                   \
                k16[t][e] = (_Float16)oracle_unit(&rng);                                   \
                v16[t][e] = (_Float16)oracle_unit(&rng);                                   \
                keys[s][lens[s] + t][e] = (float)k16[t][e];                                \
                values[s][lens[s] + t][e] = (float)v16[t][e];                              \
            }                                                                              \
        kvrt_kv_rows_t rows = {.layer = 1, .num_tokens = (n), .dtype = KVRT_DTYPE_FP16,    \
                               .slot_mapping = slots};                                     \
        cr_assert_eq(kvrt_cpu_write_kv(ctx, &cache, &rows, k16, v16), KVRT_OK);            \
        lens[s] += (n);                                                                    \
    } while (0)

    cr_assert_eq(kvrt_table_create(pool, &tables[0]), KVRT_OK);
    cr_assert_eq(kvrt_table_create(pool, &tables[1]), KVRT_OK);
    APPEND(0, 21);
    APPEND(1, 16);
    APPEND(0, 11);
    /* Fork sequence 0 at 32 tokens... */
    kvrt_block_copy_t fork_copies[1];
    uint32_t fork_n = 0;
    cr_assert_eq(kvrt_table_fork(pool, tables[0], 1, &tables[2], fork_copies, &fork_n), KVRT_OK);
    cr_assert_eq(fork_n, 0, "32 tokens end on a block boundary: nothing to copy");
    lens[2] = lens[0];
    memcpy(keys[2], keys[0], sizeof keys[0]);
    memcpy(values[2], values[0], sizeof values[0]);
    APPEND(0, 5);
    /* ...and sequence 2 diverges mid-block after a shared partial block. */
    APPEND(2, 3);
    cr_assert_eq(kvrt_table_fork(pool, tables[2], 1, &tables[3], fork_copies, &fork_n), KVRT_OK);
    cr_assert_eq(fork_n, 1, "35 tokens: the partial block is copied");
    cr_assert_eq(kvrt_cpu_copy_blocks(ctx, &cache, fork_copies, fork_n), KVRT_OK);
    lens[3] = lens[2];
    memcpy(keys[3], keys[2], sizeof keys[2]);
    memcpy(values[3], values[2], sizeof values[2]);
    APPEND(3, 7);
    APPEND(2, 1);
#undef APPEND

    int32_t block_tables[SEQS][PAD], seq_lens[SEQS];
    for (uint32_t s = 0; s < SEQS; s++) {
        uint32_t count;
        cr_assert_eq(kvrt_table_export(pool, tables[s], block_tables[s], PAD, PAD, &count),
                     KVRT_OK);
        seq_lens[s] = (int32_t)lens[s];
    }
    static float query[SEQS][Q_HEADS][DIM], out[SEQS][Q_HEADS][DIM];
    oracle_fill_values(&rng, query, KVRT_DTYPE_FP32, sizeof query / sizeof(float), 1.0f);
    kvrt_decode_attention_t a = {.layer = 1, .num_seqs = SEQS, .num_q_heads = Q_HEADS,
                                 .q_dtype = KVRT_DTYPE_FP32, .query = query,
                                 .block_tables = &block_tables[0][0], .table_stride = PAD,
                                 .seq_lens = seq_lens, .out = out};
    cr_assert_eq(kvrt_cpu_decode_attention(ctx, &cache, &a), KVRT_OK);

    double q[DIM], want[DIM];
    double *k = malloc(MAX_TOKENS * DIM * sizeof(double));
    double *v = malloc(MAX_TOKENS * DIM * sizeof(double));
    for (uint32_t s = 0; s < SEQS; s++)
        for (uint32_t h = 0; h < Q_HEADS; h++) {
            uint32_t kvh = h / (Q_HEADS / HEADS);
            for (uint32_t t = 0; t < lens[s]; t++)
                for (uint32_t e = 0; e < DIM; e++) {
                    k[t * DIM + e] = keys[s][t][kvh * DIM + e];
                    v[t * DIM + e] = values[s][t][kvh * DIM + e];
                }
            for (uint32_t e = 0; e < DIM; e++)
                q[e] = query[s][h][e];
            oracle_attend(q, k, v, lens[s], DIM, 1.0 / 8.0, want);
            for (uint32_t e = 0; e < DIM; e++)
                cr_assert_leq(fabs(out[s][h][e] - want[e]), 2e-5, "seq %u head %u elem %u", s,
                              h, e);
        }
    free(k);
    free(v);

    for (uint32_t s = 0; s < SEQS; s++)
        cr_assert_eq(kvrt_table_destroy(pool, tables[s]), KVRT_OK);
    cr_assert_eq(kvrt_pool_verify(pool), KVRT_OK);
    kvrt_pool_info(pool, &info);
    cr_assert_eq(info.used_blocks, 0, "no block leaked");
    kvrt_ctx_destroy(ctx);
}

Test(kernels_attention, refuses_bad_tables_and_heads)
{
    kvrt_ctx_t *ctx;
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    static uint16_t base[4 * 2 * 16 * 64];
    kvrt_kv_cache_t cache = {.layout = {.num_layers = 1, .num_kv_heads = 1, .head_dim = 64,
                                        .tokens_per_block = 16},
                             .num_blocks = 4, .base = base};
    float query[3][64] = {{0}}, out[3][64];
    int32_t table[2] = {1, 4}, len = 20;
    kvrt_decode_attention_t a = {.num_seqs = 1, .num_q_heads = 3, .q_dtype = KVRT_DTYPE_FP32,
                                 .query = query, .block_tables = table, .table_stride = 2,
                                 .seq_lens = &len, .out = out};
    cr_assert_eq(kvrt_cpu_decode_attention(ctx, &cache, &a), KVRT_ERR_INVALID_ARG,
                 "block 4 of a 4-block cache");
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "block_tables[0][1]"));
    table[1] = 2;
    len = 33;
    cr_assert_eq(kvrt_cpu_decode_attention(ctx, &cache, &a), KVRT_ERR_INVALID_ARG,
                 "33 tokens in a 2-block row");
    len = 20;
    cache.layout.num_kv_heads = 2;
    cache.layout.head_dim = 32;
    cr_assert_eq(kvrt_cpu_decode_attention(ctx, &cache, &a), KVRT_ERR_INVALID_ARG,
                 "3 query heads over 2 KV heads");
    cache.layout.num_kv_heads = 1;
    cache.layout.head_dim = 64;
    a.field_mask = KVRT_ATTN_FIELD_OUT_DTYPE;
    a.out_dtype = KVRT_DTYPE_BF16;
    cr_assert_eq(kvrt_cpu_decode_attention(ctx, &cache, &a), KVRT_ERR_UNSUPPORTED,
                 "bf16 output of fp32 queries");
    a.field_mask = 0;
    cr_assert_eq(kvrt_cpu_decode_attention(ctx, &cache, &a), KVRT_OK);
    kvrt_ctx_destroy(ctx);
}
