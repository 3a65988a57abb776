/*
 * test_kernels_move.c - the CPU reference kernels that move K/V (write and
 * read by slot, gather/scatter, copy blocks, FP8 quantization) against
 * naive oracles on random shapes in all four arrangements, plus the edge
 * cases: padding slots, block 0, partial blocks, the largest head dim,
 * strided rows, FP8 saturation and round-trip error, and bad input that
 * must be refused with nothing written.
 */
#include <criterion/criterion.h>

#include "kvrt/kernels.h"
#include "test_kernels_oracle.h"

typedef struct fixture {
    kvrt_kv_layout_t layout;
    uint32_t num_blocks;
    uint64_t bytes;
    char *cache;  /* what the kernel writes */
    char *expect; /* what the oracle writes */
    float *k_scales;
    float *v_scales;
    kvrt_kv_cache_t desc;
} fixture_t;

static void fixture_init(fixture_t *f, uint64_t *rng, const kvrt_kv_layout_t *layout,
                         uint32_t num_blocks, kvrt_scale_mode_t mode)
{
    memset(f, 0, sizeof *f);
    f->layout = *layout;
    f->num_blocks = num_blocks;
    f->bytes = oracle_cache_bytes(layout, num_blocks);
    f->cache = malloc(f->bytes);
    f->expect = malloc(f->bytes);
    cr_assert(f->cache && f->expect);
    oracle_fill_bytes(rng, f->cache, f->bytes);
    memcpy(f->expect, f->cache, f->bytes);
    f->desc.layout = *layout;
    f->desc.num_blocks = num_blocks;
    f->desc.base = f->cache;
    if (layout->dtype == KVRT_DTYPE_FP8_E4M3) {
        size_t n = (size_t)layout->num_layers *
                   (mode == KVRT_SCALE_PER_HEAD ? layout->num_kv_heads : num_blocks);
        f->k_scales = malloc(n * sizeof(float));
        f->v_scales = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            f->k_scales[i] = 0.25f + 2.0f * (oracle_unit(rng) + 1.0f);
            f->v_scales[i] = 0.25f + 2.0f * (oracle_unit(rng) + 1.0f);
        }
        f->desc.field_mask = KVRT_KV_CACHE_FIELD_SCALES;
        f->desc.scale_mode = mode;
        f->desc.k_scales = f->k_scales;
        f->desc.v_scales = f->v_scales;
    }
}

static void fixture_fini(fixture_t *f)
{
    free(f->cache);
    free(f->expect);
    free(f->k_scales);
    free(f->v_scales);
}

static uint32_t row_elems(const kvrt_kv_layout_t *l) { return l->num_kv_heads * l->head_dim; }

static float scale_of(const fixture_t *f, int half, uint32_t layer, uint32_t block, uint32_t head)
{
    const float *s = half ? f->v_scales : f->k_scales;
    return f->desc.scale_mode == KVRT_SCALE_PER_HEAD
               ? s[layer * f->layout.num_kv_heads + head]
               : s[layer * f->num_blocks + block];
}

/* Distinct random slots, about one in eight padding, slot 0 (block 0) and
 * the last slot always among them when there is room. */
static int64_t *random_slots(uint64_t *rng, uint64_t num_slots, uint32_t n)
{
    int64_t *all = malloc(num_slots * sizeof(int64_t));
    for (uint64_t i = 0; i < num_slots; i++)
        all[i] = (int64_t)i;
    for (uint64_t i = num_slots - 1; i > 0; i--) {
        uint64_t j = test_rand(rng) % (i + 1);
        int64_t t = all[i];
        all[i] = all[j];
        all[j] = t;
    }
    int64_t *slots = malloc(n * sizeof(int64_t));
    for (uint32_t i = 0; i < n; i++)
        slots[i] = test_rand_below(rng, 8) == 0 ? -1 - (int64_t)test_rand_below(rng, 3) : all[i];
    free(all);
    return slots;
}

/* Writes rows of random shape and dtype; the oracle copies element by
 * element to kvrt_layout_page_offset() addresses; whole caches compared. */
static void check_write(uint64_t seed, kvrt_dtype_t cache_dtype, kvrt_dtype_t src_dtype,
                        kvrt_scale_mode_t mode, float range)
{
    uint64_t rng = seed;
    kvrt_kv_layout_t l = oracle_layout(&rng, cache_dtype);
    fixture_t f;
    fixture_init(&f, &rng, &l, 2 + test_rand_below(&rng, 6), mode);
    uint64_t num_slots = (uint64_t)f.num_blocks * l.tokens_per_block;
    uint32_t n = 1 + test_rand_below(&rng, (uint32_t)(num_slots < 300 ? num_slots : 300));
    int64_t *slots = random_slots(&rng, num_slots, n);
    uint64_t stride = row_elems(&l) + (test_rand_below(&rng, 2) ? 8 * test_rand_below(&rng, 4) : 0);
    size_t src_elem = src_dtype == KVRT_DTYPE_FP32 ? 4 : 2;
    void *key = malloc(n * stride * src_elem), *value = malloc(n * stride * src_elem);
    oracle_fill_values(&rng, key, src_dtype, n * stride, range);
    oracle_fill_values(&rng, value, src_dtype, n * stride, range);
    uint32_t layer = test_rand_below(&rng, l.num_layers);

    kvrt_kv_rows_t rows = {.field_mask = KVRT_KV_ROWS_FIELD_TOKEN_STRIDE, .layer = layer,
                           .num_tokens = n, .dtype = src_dtype, .token_stride = stride,
                           .slot_mapping = slots};
    cr_assert_eq(kvrt_cpu_write_kv(NULL, &f.desc, &rows, key, value), KVRT_OK);

    uint32_t elem = kvrt_dtype_size(cache_dtype);
    for (uint32_t t = 0; t < n; t++) {
        if (slots[t] < 0)
            continue;
        uint32_t block = (uint32_t)(slots[t] / l.tokens_per_block);
        uint32_t row = (uint32_t)(slots[t] % l.tokens_per_block);
        for (int half = 0; half < 2; half++) {
            const void *src = half ? value : key;
            for (uint32_t e = 0; e < row_elems(&l); e++) {
                uint64_t at = oracle_elem_offset(&l, f.num_blocks, block, layer, half, row, e);
                size_t si = t * stride + e;
                if (cache_dtype == KVRT_DTYPE_FP8_E4M3) {
                    float x = (float)oracle_load(src, src_dtype, si);
                    float q = x / scale_of(&f, half, layer, block, e / l.head_dim);
                    f.expect[at] = (char)oracle_e4m3_encode(q);
                } else {
                    memcpy(f.expect + at, (const char *)src + si * src_elem, elem);
                }
            }
        }
    }
    cr_assert_eq(memcmp(f.cache, f.expect, f.bytes), 0,
                 "seed %llu: cache differs from the oracle (format %d order %d dim %u tpb %u)",
                 (unsigned long long)seed, l.format, l.order, l.head_dim, l.tokens_per_block);

    /* Read back as FP32: same-dtype caches give the rows exactly, FP8 within
     * half a quantization step (or +-448 * scale when saturated). */
    float *k_out = malloc(n * stride * 4), *v_out = malloc(n * stride * 4);
    rows.dtype = KVRT_DTYPE_FP32;
    cr_assert_eq(kvrt_cpu_read_kv(NULL, &f.desc, &rows, k_out, v_out), KVRT_OK);
    for (uint32_t t = 0; t < n; t++) {
        uint32_t block = slots[t] < 0 ? 0 : (uint32_t)(slots[t] / l.tokens_per_block);
        for (int half = 0; half < 2; half++) {
            const void *src = half ? value : key;
            const float *out = half ? v_out : k_out;
            for (uint32_t e = 0; e < row_elems(&l); e++) {
                size_t si = t * stride + e;
                double x = oracle_load(src, src_dtype, si), y = out[si];
                if (slots[t] < 0) {
                    cr_assert_eq(y, 0.0, "padding reads as zero");
                } else if (cache_dtype != KVRT_DTYPE_FP8_E4M3) {
                    cr_assert_eq(y, x, "token %u elem %u", t, e);
                } else {
                    double s = scale_of(&f, half, layer, block, e / l.head_dim);
                    double a = fabs(x / s);
                    if (a >= 448.0 * (1 + 1e-6)) {
                        cr_assert_eq(fabs(y), (double)(448.0f * (float)s), "saturates");
                        continue;
                    }
                    double bound = s * (a >= ldexp(1.0, -6) ? a * 0.0625 : ldexp(1.0, -10));
                    cr_assert_leq(fabs(y - x), bound * (1 + 1e-5) + 1e-30,
                                  "token %u elem %u: x %g y %g scale %g", t, e, x, y, s);
                }
            }
        }
    }
    free(k_out);
    free(v_out);
    free(key);
    free(value);
    free(slots);
    fixture_fini(&f);
}

Test(kernels_move, write_fp16_bf16_matches_oracle_on_random_shapes)
{
    for (uint64_t seed = 1; seed <= 60; seed++)
        check_write(seed, seed % 2 ? KVRT_DTYPE_FP16 : KVRT_DTYPE_BF16,
                    seed % 2 ? KVRT_DTYPE_FP16 : KVRT_DTYPE_BF16, KVRT_SCALE_PER_HEAD, 4.0f);
}

Test(kernels_move, write_fp8_quantizes_like_the_oracle_and_round_trips)
{
    static const float ranges[] = {0.01f, 1.0f, 50.0f, 2000.0f};
    for (uint64_t seed = 100; seed < 148; seed++)
        check_write(seed, KVRT_DTYPE_FP8_E4M3, seed % 2 ? KVRT_DTYPE_FP16 : KVRT_DTYPE_BF16,
                    (seed / 2) % 2 ? KVRT_SCALE_PER_BLOCK : KVRT_SCALE_PER_HEAD,
                    ranges[(seed / 4) % 4]);
}

Test(kernels_move, largest_head_dim_and_single_block_edge)
{
    uint64_t rng = 5;
    kvrt_kv_layout_t l = {.num_layers = 1, .num_kv_heads = 1, .head_dim = 1024,
                          .tokens_per_block = 16};
    fixture_t f;
    fixture_init(&f, &rng, &l, 1, KVRT_SCALE_PER_HEAD);
    /* Block 0 is the only block: slots 0 and 15 (first and last row). */
    int64_t slots[2] = {15, 0};
    static uint16_t key[2][1024], value[2][1024];
    oracle_fill_bytes(&rng, key, sizeof key);
    oracle_fill_bytes(&rng, value, sizeof value);
    kvrt_kv_rows_t rows = {.num_tokens = 2, .dtype = KVRT_DTYPE_FP16, .slot_mapping = slots};
    cr_assert_eq(kvrt_cpu_write_kv(NULL, &f.desc, &rows, key, value), KVRT_OK);
    cr_assert_eq(memcmp(f.cache + 15 * 2048, key[0], 2048), 0);
    cr_assert_eq(memcmp(f.cache, key[1], 2048), 0);
    cr_assert_eq(memcmp(f.cache + 16 * 2048 + 15 * 2048, value[0], 2048), 0);
    cr_assert_eq(memcmp(f.cache + 1 * 2048, f.expect + 2048, 14 * 2048), 0,
                 "rows between stay untouched");
    fixture_fini(&f);
}

Test(kernels_move, gather_and_scatter_match_the_oracle)
{
    for (uint64_t seed = 200; seed < 240; seed++) {
        uint64_t rng = seed;
        static const kvrt_dtype_t dtypes[] = {KVRT_DTYPE_FP16, KVRT_DTYPE_BF16,
                                              KVRT_DTYPE_FP8_E4M3};
        kvrt_kv_layout_t l = oracle_layout(&rng, dtypes[seed % 3]);
        fixture_t f;
        fixture_init(&f, &rng, &l, 2 + test_rand_below(&rng, 7), KVRT_SCALE_PER_HEAD);
        uint64_t page = 0, block_bytes = 0;
        kvrt_layout_page_bytes(&l, &page);
        kvrt_layout_block_bytes(&l, &block_bytes);

        /* Gather: repeats allowed, block 0 included. */
        uint32_t count = 1 + test_rand_below(&rng, 2 * f.num_blocks);
        uint32_t room = count > f.num_blocks ? count : f.num_blocks;
        int32_t *blocks = malloc(room * sizeof(int32_t));
        for (uint32_t i = 0; i < count; i++)
            blocks[i] = i == 0 ? 0 : (int32_t)test_rand_below(&rng, f.num_blocks);
        char *staging = malloc(room * block_bytes), *want = malloc(room * block_bytes);
        cr_assert_eq(kvrt_cpu_gather_blocks(NULL, &f.desc, blocks, count, staging), KVRT_OK);
        for (uint32_t i = 0; i < count; i++)
            for (uint32_t layer = 0; layer < l.num_layers; layer++)
                for (int half = 0; half < 2; half++)
                    memcpy(want + ((i * l.num_layers + layer) * 2 + half) * page,
                           f.cache + oracle_elem_offset(&l, f.num_blocks, (uint32_t)blocks[i],
                                                        layer, half, 0, 0),
                           page);
        cr_assert_eq(memcmp(staging, want, count * block_bytes), 0, "seed %llu gather",
                     (unsigned long long)seed);
        cr_assert_eq(memcmp(f.cache, f.expect, f.bytes), 0, "gather never writes the cache");

        /* Scatter fresh bytes into distinct blocks. */
        uint32_t n = 1 + test_rand_below(&rng, f.num_blocks);
        for (uint32_t i = 0; i < n; i++)
            blocks[i] = (int32_t)((i * 7 + seed) % f.num_blocks);
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t j = 0; j < i; j++)
                if (blocks[j] == blocks[i])
                    n = i < n ? i : n;
        oracle_fill_bytes(&rng, staging, n * block_bytes);
        cr_assert_eq(kvrt_cpu_scatter_blocks(NULL, &f.desc, staging, blocks, n), KVRT_OK);
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t layer = 0; layer < l.num_layers; layer++)
                for (int half = 0; half < 2; half++)
                    memcpy(f.expect + oracle_elem_offset(&l, f.num_blocks, (uint32_t)blocks[i],
                                                         layer, half, 0, 0),
                           staging + ((i * l.num_layers + layer) * 2 + half) * page, page);
        cr_assert_eq(memcmp(f.cache, f.expect, f.bytes), 0, "seed %llu scatter",
                     (unsigned long long)seed);
        free(blocks);
        free(staging);
        free(want);
        fixture_fini(&f);
    }
}

Test(kernels_move, copy_blocks_matches_the_oracle_with_per_block_scales)
{
    for (uint64_t seed = 300; seed < 330; seed++) {
        uint64_t rng = seed;
        kvrt_kv_layout_t l = oracle_layout(&rng, seed % 2 ? KVRT_DTYPE_FP8_E4M3 : KVRT_DTYPE_BF16);
        fixture_t f;
        fixture_init(&f, &rng, &l, 4 + test_rand_below(&rng, 8), KVRT_SCALE_PER_BLOCK);
        uint64_t page = 0;
        kvrt_layout_page_bytes(&l, &page);
        /* Sources from the first half, destinations from the second, and a
         * src == dst no-op. */
        uint32_t half_n = f.num_blocks / 2, n = 1 + test_rand_below(&rng, half_n);
        kvrt_block_copy_t copies[16];
        for (uint32_t i = 0; i < n; i++)
            copies[i] = (kvrt_block_copy_t){.src_block = (int32_t)test_rand_below(&rng, half_n),
                                            .dst_block = (int32_t)(half_n + i)};
        copies[n] = (kvrt_block_copy_t){.src_block = 0, .dst_block = 0};
        size_t scales_n = (size_t)l.num_layers * f.num_blocks;
        float *k_want = NULL, *v_want = NULL;
        if (f.k_scales) {
            k_want = malloc(scales_n * sizeof(float));
            v_want = malloc(scales_n * sizeof(float));
            memcpy(k_want, f.k_scales, scales_n * sizeof(float));
            memcpy(v_want, f.v_scales, scales_n * sizeof(float));
        }
        cr_assert_eq(kvrt_cpu_copy_blocks(NULL, &f.desc, copies, n + 1), KVRT_OK);
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t layer = 0; layer < l.num_layers; layer++) {
                for (int half = 0; half < 2; half++)
                    memcpy(f.expect + oracle_elem_offset(&l, f.num_blocks,
                                                         (uint32_t)copies[i].dst_block, layer,
                                                         half, 0, 0),
                           f.expect + oracle_elem_offset(&l, f.num_blocks,
                                                         (uint32_t)copies[i].src_block, layer,
                                                         half, 0, 0),
                           page);
                if (k_want) {
                    k_want[layer * f.num_blocks + copies[i].dst_block] =
                        k_want[layer * f.num_blocks + copies[i].src_block];
                    v_want[layer * f.num_blocks + copies[i].dst_block] =
                        v_want[layer * f.num_blocks + copies[i].src_block];
                }
            }
        cr_assert_eq(memcmp(f.cache, f.expect, f.bytes), 0, "seed %llu",
                     (unsigned long long)seed);
        if (k_want) {
            cr_assert_eq(memcmp(f.k_scales, k_want, scales_n * sizeof(float)), 0);
            cr_assert_eq(memcmp(f.v_scales, v_want, scales_n * sizeof(float)), 0);
        }
        free(k_want);
        free(v_want);
        fixture_fini(&f);
    }
}

/* ---- refusals: a status, a message, and nothing written ---------------- */

typedef struct refusal_env {
    kvrt_ctx_t *ctx;
    fixture_t f;
    int64_t slots[4];
    uint16_t key[4][128], value[4][128];
    kvrt_kv_rows_t rows;
} refusal_env_t;

static void refusal_init(refusal_env_t *e)
{
    uint64_t rng = 77;
    cr_assert_eq(kvrt_ctx_create(NULL, &e->ctx), KVRT_OK);
    kvrt_kv_layout_t l = {.num_layers = 2, .num_kv_heads = 2, .head_dim = 64,
                          .tokens_per_block = 16};
    fixture_init(&e->f, &rng, &l, 4, KVRT_SCALE_PER_HEAD);
    int64_t slots[4] = {0, 17, -1, 63};
    memcpy(e->slots, slots, sizeof slots);
    oracle_fill_bytes(&rng, e->key, sizeof e->key);
    oracle_fill_bytes(&rng, e->value, sizeof e->value);
    e->rows = (kvrt_kv_rows_t){.layer = 1, .num_tokens = 4, .dtype = KVRT_DTYPE_FP16,
                               .slot_mapping = e->slots};
}

static void refusal_expect(refusal_env_t *e, kvrt_status_t got, kvrt_status_t want,
                           const char *what)
{
    cr_assert_eq(got, want, "%s: got %d (%s)", what, got, kvrt_ctx_last_error(e->ctx));
    cr_assert_neq(kvrt_ctx_last_error(e->ctx)[0], '\0', "%s: a message is recorded", what);
    cr_assert_eq(memcmp(e->f.cache, e->f.expect, e->f.bytes), 0, "%s: nothing written", what);
}

Test(kernels_move, bad_input_is_refused_with_nothing_written)
{
    refusal_env_t e;
    refusal_init(&e);
    kvrt_kv_rows_t rows = e.rows;

    e.slots[3] = 64; /* one past the last slot; earlier slots are valid */
    refusal_expect(&e, kvrt_cpu_write_kv(e.ctx, &e.f.desc, &rows, e.key, e.value),
                   KVRT_ERR_INVALID_ARG, "slot out of range");
    cr_assert(strstr(kvrt_ctx_last_error(e.ctx), "slot_mapping[3]"));
    e.slots[3] = 63;

    rows.layer = 2;
    refusal_expect(&e, kvrt_cpu_write_kv(e.ctx, &e.f.desc, &rows, e.key, e.value),
                   KVRT_ERR_INVALID_ARG, "layer out of range");
    rows = e.rows;
    rows.field_mask = 1u << 7;
    refusal_expect(&e, kvrt_cpu_write_kv(e.ctx, &e.f.desc, &rows, e.key, e.value),
                   KVRT_ERR_INVALID_ARG, "unknown rows bits");
    rows = e.rows;
    rows.field_mask = KVRT_KV_ROWS_FIELD_TOKEN_STRIDE;
    rows.token_stride = 100; /* below one row of 128 */
    refusal_expect(&e, kvrt_cpu_write_kv(e.ctx, &e.f.desc, &rows, e.key, e.value),
                   KVRT_ERR_INVALID_ARG, "stride below a row");
    rows = e.rows;
    rows.dtype = KVRT_DTYPE_FP32;
    refusal_expect(&e, kvrt_cpu_write_kv(e.ctx, &e.f.desc, &rows, e.key, e.value),
                   KVRT_ERR_UNSUPPORTED, "fp32 rows into an fp16 cache");
    rows = e.rows;
    refusal_expect(&e, kvrt_cpu_write_kv(e.ctx, &e.f.desc, &rows, NULL, e.value),
                   KVRT_ERR_INVALID_ARG, "NULL key");
    refusal_expect(&e, kvrt_cpu_write_kv(e.ctx, NULL, &rows, e.key, e.value),
                   KVRT_ERR_INVALID_ARG, "NULL cache");

    kvrt_kv_cache_t bad = e.f.desc;
    bad.layout.tokens_per_block = 12;
    refusal_expect(&e, kvrt_cpu_write_kv(e.ctx, &bad, &rows, e.key, e.value),
                   KVRT_ERR_BAD_LAYOUT, "tokens_per_block not a power of two");
    bad = e.f.desc;
    bad.layout.field_mask = KVRT_LAYOUT_FIELD_DTYPE;
    bad.layout.dtype = KVRT_DTYPE_FP8_E4M3;
    refusal_expect(&e, kvrt_cpu_write_kv(e.ctx, &bad, &rows, e.key, e.value),
                   KVRT_ERR_INVALID_ARG, "fp8 cache without scales");
    float zero_scales[4] = {1, 1, 1, 0}, ok_scales[4] = {1, 1, 1, 1}; /* layer 1 head 1 */
    bad.field_mask = KVRT_KV_CACHE_FIELD_SCALES;
    bad.k_scales = ok_scales;
    bad.v_scales = zero_scales;
    refusal_expect(&e, kvrt_cpu_write_kv(e.ctx, &bad, &rows, e.key, e.value),
                   KVRT_ERR_INVALID_ARG, "a zero scale");

    int32_t blocks[2] = {1, 4};
    char staging[1];
    refusal_expect(&e, kvrt_cpu_scatter_blocks(e.ctx, &e.f.desc, staging, blocks, 2),
                   KVRT_ERR_INVALID_ARG, "scatter to a block past the pool");
    blocks[1] = -1;
    refusal_expect(&e, kvrt_cpu_gather_blocks(e.ctx, &e.f.desc, blocks, 2, staging),
                   KVRT_ERR_INVALID_ARG, "gather a negative block");

    kvrt_block_copy_t chained[2] = {{.src_block = 1, .dst_block = 2},
                                    {.src_block = 2, .dst_block = 3}};
    refusal_expect(&e, kvrt_cpu_copy_blocks(e.ctx, &e.f.desc, chained, 2),
                   KVRT_ERR_INVALID_ARG, "a destination that is also a source");
    kvrt_block_copy_t twice[2] = {{.src_block = 1, .dst_block = 3},
                                  {.src_block = 2, .dst_block = 3}};
    refusal_expect(&e, kvrt_cpu_copy_blocks(e.ctx, &e.f.desc, twice, 2),
                   KVRT_ERR_INVALID_ARG, "two copies into one block");

    /* Empty work is fine and writes nothing. */
    rows.num_tokens = 0;
    cr_assert_eq(kvrt_cpu_write_kv(e.ctx, &e.f.desc, &rows, NULL, NULL), KVRT_OK);
    cr_assert_eq(kvrt_cpu_copy_blocks(e.ctx, &e.f.desc, NULL, 0), KVRT_OK);
    cr_assert_eq(memcmp(e.f.cache, e.f.expect, e.f.bytes), 0);
    fixture_fini(&e.f);
    kvrt_ctx_destroy(e.ctx);
}

/* Gathers of 1 MiB and more stream past the cache (non-temporal stores,
 * four pages at a time where the CPU has wide stores): same bytes as the
 * oracle with a page that is no multiple of the store width and a staging
 * buffer that is not aligned to it. */
Test(kernels_move, large_gather_streams_the_same_bytes)
{
    uint64_t rng = 77;
    kvrt_kv_layout_t l = {.num_layers = 3, .num_kv_heads = 5, .head_dim = 72,
                          .tokens_per_block = 64}; /* pages of 46,080 bytes */
    fixture_t f;
    fixture_init(&f, &rng, &l, 9, KVRT_SCALE_PER_HEAD);
    uint64_t page = 0, block_bytes = 0;
    kvrt_layout_page_bytes(&l, &page);
    kvrt_layout_block_bytes(&l, &block_bytes);
    int32_t blocks[8] = {8, 0, 3, 3, 5, 1, 7, 2};
    cr_assert_geq(8 * block_bytes, 1u << 20, "large enough to stream");
    char *raw = malloc(8 * block_bytes + 64), *want = malloc(8 * block_bytes);
    char *staging = raw + 8; /* 8-byte aligned only */
    cr_assert_eq(kvrt_cpu_gather_blocks(NULL, &f.desc, blocks, 8, staging), KVRT_OK);
    for (uint32_t i = 0; i < 8; i++)
        for (uint32_t layer = 0; layer < l.num_layers; layer++)
            for (int half = 0; half < 2; half++)
                memcpy(want + ((i * l.num_layers + layer) * 2 + half) * page,
                       f.cache + oracle_elem_offset(&l, f.num_blocks, (uint32_t)blocks[i],
                                                    layer, half, 0, 0),
                       page);
    cr_assert_eq(memcmp(staging, want, 8 * block_bytes), 0);
    free(raw);
    free(want);
    fixture_fini(&f);
}
