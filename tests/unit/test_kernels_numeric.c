/*
 * test_kernels_numeric.c - FP8 e4m3fn and BF16 conversions against
 * double-precision oracles: every code, every rounding tie, saturation,
 * NaN and infinity, and the round-trip error bound FP8 quantization
 * promises.
 */
#include <criterion/criterion.h>
#include <float.h>
#include <math.h>

#include "kernels/kv_numeric.h"
#include "test_kernels_oracle.h"

Test(kernels_numeric, e4m3_decodes_every_code_exactly)
{
    for (int c = 0; c < 256; c++) {
        double want = oracle_e4m3_value((uint8_t)c);
        float got = kv_e4m3_to_f32((uint8_t)c);
        if (isnan(want))
            cr_assert(isnan(got), "code 0x%02x must decode to NaN", c);
        else
            cr_assert_eq((double)got, want, "code 0x%02x: %g != %g", c, got, want);
    }
    cr_assert_eq(kv_e4m3_to_f32(0x7e), 448.0f);
    cr_assert_eq(kv_e4m3_to_f32(0x01), ldexpf(1.0f, -9));
}

Test(kernels_numeric, e4m3_encode_matches_oracle_on_codes_ties_and_neighbours)
{
    /* Each representable value, the midpoints between neighbours (ties go
     * to the even code) and one float ulp either side of each midpoint. */
    for (int c = 0; c < 0x7e; c++) {
        double lo = oracle_e4m3_value((uint8_t)c), hi = oracle_e4m3_value((uint8_t)(c + 1));
        float mid = (float)((lo + hi) / 2);
        float probes[] = {(float)lo, (float)hi, mid, nextafterf(mid, 0.0f),
                          nextafterf(mid, 1000.0f)};
        for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
            for (int sign = 0; sign < 2; sign++) {
                float x = sign ? -probes[i] : probes[i];
                cr_assert_eq(kv_f32_to_e4m3(x), oracle_e4m3_encode(x),
                             "x = %a: got 0x%02x want 0x%02x", (double)x, kv_f32_to_e4m3(x),
                             oracle_e4m3_encode(x));
            }
        }
    }
}

Test(kernels_numeric, e4m3_encode_matches_oracle_on_random_floats)
{
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 200000; i++) {
        /* Magnitudes from 2^-12 to 2^10: subnormals, normals, saturation. */
        float x = ldexpf(oracle_unit(&rng), (int)test_rand_below(&rng, 23) - 12);
        cr_assert_eq(kv_f32_to_e4m3(x), oracle_e4m3_encode(x), "x = %a", (double)x);
    }
}

Test(kernels_numeric, e4m3_saturates_and_keeps_nan)
{
    cr_assert_eq(kv_f32_to_e4m3(448.0f), 0x7e);
    cr_assert_eq(kv_f32_to_e4m3(464.0f), 0x7e, "above max saturates, never NaN");
    cr_assert_eq(kv_f32_to_e4m3(1e30f), 0x7e);
    cr_assert_eq(kv_f32_to_e4m3(INFINITY), 0x7e, "no infinities: +inf saturates");
    cr_assert_eq(kv_f32_to_e4m3(-INFINITY), 0xfe);
    cr_assert_eq(kv_f32_to_e4m3(-1e30f), 0xfe);
    cr_assert_eq(kv_f32_to_e4m3(NAN) & 0x7f, 0x7f);
    cr_assert(isnan(kv_e4m3_to_f32(kv_f32_to_e4m3(NAN))));
    cr_assert_eq(kv_f32_to_e4m3(0.0f), 0x00);
    cr_assert_eq(kv_f32_to_e4m3(-0.0f), 0x80);
    cr_assert_eq(kv_f32_to_e4m3(ldexpf(1.0f, -11)), 0x00, "below half the least subnormal");
    cr_assert_eq(kv_f32_to_e4m3(ldexpf(1.0f, -10)), 0x00, "tie at half: to even (zero)");
    cr_assert_eq(kv_f32_to_e4m3(ldexpf(3.0f, -11)), 0x01);
}

Test(kernels_numeric, e4m3_round_trip_error_is_within_half_a_step)
{
    uint64_t rng = 7;
    for (int i = 0; i < 200000; i++) {
        float x = ldexpf(oracle_unit(&rng), (int)test_rand_below(&rng, 18) - 9);
        float y = kv_e4m3_to_f32(kv_f32_to_e4m3(x));
        double ax = fabs((double)x);
        /* Normals keep 3 mantissa bits: error <= 2^-4 relative. Subnormals
         * step by 2^-9: error <= 2^-10 absolute. */
        double bound = ax >= ldexp(1.0, -6) ? ax * ldexp(1.0, -4) : ldexp(1.0, -10);
        cr_assert_leq(fabs((double)y - (double)x), bound, "x = %a y = %a", (double)x,
                      (double)y);
    }
}

Test(kernels_numeric, bf16_rounds_to_nearest_even)
{
    uint64_t rng = 11;
    for (int i = 0; i < 200000; i++) {
        float x = ldexpf(oracle_unit(&rng), (int)test_rand_below(&rng, 200) - 100);
        cr_assert_eq(kv_f32_to_bf16(x), oracle_bf16_encode(x), "x = %a", (double)x);
    }
    /* Ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 and goes to even. */
    cr_assert_eq(kv_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80);
    cr_assert_eq(kv_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)), 0x3f82);
    cr_assert_eq(kv_f32_to_bf16(FLT_MAX), 0x7f80, "max float rounds to +inf");
    cr_assert_eq(kv_f32_to_bf16(INFINITY), 0x7f80);
    uint16_t nan = kv_f32_to_bf16(oracle_bits_f32(0x7f800001u)); /* signalling, low payload */
    cr_assert(isnan(kv_bf16_to_f32(nan)), "a NaN whose payload is below bit 16 stays NaN");
    cr_assert_eq(kv_bf16_to_f32(0x3f80), 1.0f);
}

Test(kernels_numeric, fp16_round_trips_and_rounds_to_nearest)
{
    cr_assert_eq(kv_f16_to_f32(0x3c00), 1.0f);
    cr_assert_eq(kv_f32_to_f16(65504.0f), 0x7bff);
    cr_assert_eq(kv_f32_to_f16(1e6f), 0x7c00, "fp16 overflows to inf");
    cr_assert_eq(kv_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00, "tie to even");
    for (uint32_t h = 0; h < 0x7c00; h++)
        cr_assert_eq(kv_f32_to_f16(kv_f16_to_f32((uint16_t)h)), h, "code 0x%04x", h);
}
