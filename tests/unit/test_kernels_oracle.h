/*
 * test_kernels_oracle.h - naive oracles and fixtures shared by the kernel
 * tests. The oracles are written independently of the kernels: addresses
 * come from kvrt_layout_page_offset() per element, FP8 and BF16 rounding
 * from a brute-force search in double precision.
 */
#ifndef KVRT_TEST_KERNELS_ORACLE_H
#define KVRT_TEST_KERNELS_ORACLE_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvrt/kernels.h"
#include "test_helpers.h"


/* Uniform in [-1, 1). */
static inline float oracle_unit(uint64_t *state)
{
    return (float)((double)(test_rand(state) >> 11) / 4503599627370496.0 - 1.0);
}

static inline void oracle_fill_bytes(uint64_t *state, void *p, size_t n)
{
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)test_rand(state);
}

/* ---- numeric oracles --------------------------------------------------- */

static inline uint32_t oracle_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float oracle_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Exact value of an e4m3fn code (NaN for 0x7F/0xFF). */
static inline double oracle_e4m3_value(uint8_t code)
{
    int sign = code & 0x80, exp = (code >> 3) & 15, man = code & 7;
    if ((code & 0x7f) == 0x7f)
        return NAN;
    double v = exp == 0 ? ldexp(man / 8.0, -6) : ldexp(1.0 + man / 8.0, exp - 7);
    return sign ? -v : v;
}

/* Nearest e4m3fn code by exhaustive search, ties to the even code,
 * saturating at 448; NaN keeps its sign. */
static inline uint8_t oracle_e4m3_encode(float x)
{
    uint8_t sign = (oracle_f32_bits(x) >> 24) & 0x80;
    if (isnan(x))
        return (uint8_t)(sign | 0x7f);
    double a = fabs((double)x);
    if (a >= 448.0)
        return (uint8_t)(sign | 0x7e);
    uint8_t best = 0;
    double best_err = INFINITY;
    for (uint8_t c = 0; c <= 0x7e; c++) {
        double err = fabs(oracle_e4m3_value(c) - a);
        if (err < best_err || (err == best_err && (c & 1) == 0)) {
            best = c;
            best_err = err;
        }
    }
    return (uint8_t)(sign | best);
}

/* Nearest bf16 (ties to even) by comparing the two candidates in double. */
static inline uint16_t oracle_bf16_encode(float x)
{
    uint32_t u = oracle_f32_bits(x);
    if (isnan(x))
        return (uint16_t)((u >> 16) | 0x40);
    uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
    double dlo = fabs((double)oracle_bits_f32(lo) - x);
    double dhi = isinf(oracle_bits_f32(hi)) || (hi & 0x7f800000u) == 0x7f800000u
                     ? fabs(ldexp(1.0, 128) * (x < 0 ? -1 : 1) - x)
                     : fabs((double)oracle_bits_f32(hi) - x);
    if (dlo < dhi || (dlo == dhi && ((lo >> 16) & 1) == 0))
        return (uint16_t)(lo >> 16);
    return (uint16_t)(hi >> 16);
}

/* An element of a rows/cache buffer as double (FP8 codes raw). */
static inline double oracle_load(const void *p, kvrt_dtype_t dtype, size_t i)
{
    switch (dtype) {
    case KVRT_DTYPE_FP16: {
        _Float16 h;
        memcpy(&h, (const char *)p + 2 * i, 2);
        return (double)h;
    }
    case KVRT_DTYPE_BF16: {
        uint16_t b;
        memcpy(&b, (const char *)p + 2 * i, 2);
        return (double)oracle_bits_f32((uint32_t)b << 16);
    }
    case KVRT_DTYPE_FP8_E4M3:
        return oracle_e4m3_value(((const uint8_t *)p)[i]);
    default:
        return ((const float *)p)[i];
    }
}

/* Random values of dtype in [-range, range) written to p[0..n). */
static inline void oracle_fill_values(uint64_t *state, void *p, kvrt_dtype_t dtype, size_t n,
                                      float range)
{
    for (size_t i = 0; i < n; i++) {
        float v = oracle_unit(state) * range;
        if (dtype == KVRT_DTYPE_FP16) {
            _Float16 h = (_Float16)v;
            memcpy((char *)p + 2 * i, &h, 2);
        } else if (dtype == KVRT_DTYPE_BF16) {
            uint16_t b = oracle_bf16_encode(v);
            memcpy((char *)p + 2 * i, &b, 2);
        } else {
            ((float *)p)[i] = v;
        }
    }
}

/* ---- address oracle ---------------------------------------------------- */

/* Byte offset of element e of token row `row` of (block, layer, half). */
static inline uint64_t oracle_elem_offset(const kvrt_kv_layout_t *layout, uint32_t num_blocks,
                                          uint32_t block, uint32_t layer, int half,
                                          uint32_t row, uint32_t e)
{
    uint64_t page = 0;
    kvrt_layout_page_offset(layout, num_blocks, block, layer, (kvrt_kv_half_t)half, &page);
    uint32_t elem = kvrt_dtype_size((layout->field_mask & KVRT_LAYOUT_FIELD_DTYPE)
                                        ? layout->dtype
                                        : KVRT_DTYPE_FP16);
    return page + ((uint64_t)row * layout->num_kv_heads * layout->head_dim + e) * elem;
}

/* A random layout: every arrangement, the given dtype, head_dim from dims. */
static inline kvrt_kv_layout_t oracle_layout(uint64_t *state, kvrt_dtype_t dtype)
{
    static const uint32_t dims[] = {64, 80, 96, 128, 256};
    static const uint32_t tpbs[] = {16, 32, 64, 128, 256};
    kvrt_kv_layout_t l = {0};
    l.field_mask = KVRT_LAYOUT_FIELD_DTYPE | KVRT_LAYOUT_FIELD_FORMAT | KVRT_LAYOUT_FIELD_ORDER;
    l.dtype = dtype;
    l.format = (kvrt_kv_format_t)test_rand_below(state, 2);
    l.order = (kvrt_kv_order_t)test_rand_below(state, 2);
    l.num_layers = 1 + test_rand_below(state, 3);
    l.num_kv_heads = 1 + test_rand_below(state, 4);
    l.head_dim = dims[test_rand_below(state, 5)];
    l.tokens_per_block = tpbs[test_rand_below(state, 5)];
    return l;
}

static inline uint64_t oracle_cache_bytes(const kvrt_kv_layout_t *l, uint32_t num_blocks)
{
    uint64_t block_bytes = 0;
    kvrt_layout_block_bytes(l, &block_bytes);
    return block_bytes * num_blocks;
}

#endif /* KVRT_TEST_KERNELS_ORACLE_H */
