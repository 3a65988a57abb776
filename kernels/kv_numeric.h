/*
 * kv_numeric.h - element conversions shared by the CPU reference kernels
 * (compiled as C) and the CUDA kernels (compiled by nvcc as device code).
 *
 * One source for both is the point: BF16 and FP8 e4m3 rounding are written
 * once, in integer arithmetic, so the CPU reference and the GPU produce the
 * same bits and the CUDA tests can compare them exactly. FP16 uses the
 * platform's round-to-nearest-even conversion on each side (_Float16 on the
 * host, __half on the device), which agree bit for bit.
 *
 * Internal: nothing here is ABI.
 */
#ifndef KVRT_KV_NUMERIC_H
#define KVRT_KV_NUMERIC_H

#include <stdint.h>

#include "kvrt/layout.h"

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define KV_FN static __device__ __forceinline__
#else
#include <math.h>
#include <string.h>
#define KV_FN static inline
#endif

/* FP8 e4m3fn (OCP): bias 7, 3 mantissa bits, max 448 (0x7E), NaN 0x7F. */
#define KV_E4M3_MAX 448.0f
#define KV_E4M3_MAX_CODE 0x7Eu
#define KV_E4M3_NAN_CODE 0x7Fu

KV_FN uint32_t kv_f32_bits(float f)
{
#ifdef __CUDACC__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

KV_FN float kv_bits_f32(uint32_t u)
{
#ifdef __CUDACC__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

KV_FN float kv_f16_to_f32(uint16_t h)
{
#ifdef __CUDACC__
    return __half2float(__ushort_as_half(h));
#else
    _Float16 v;
    memcpy(&v, &h, sizeof v);
    return (float)v;
#endif
}

KV_FN uint16_t kv_f32_to_f16(float f)
{
#ifdef __CUDACC__
    return __half_as_ushort(__float2half_rn(f));
#else
    _Float16 v = (_Float16)f;
    uint16_t h;
    memcpy(&h, &v, sizeof h);
    return h;
#endif
}

KV_FN float kv_bf16_to_f32(uint16_t b) { return kv_bits_f32((uint32_t)b << 16); }

/* Round to nearest even on the 16 dropped bits; NaN stays a quiet NaN of
 * the same sign (plain rounding could carry a NaN payload into infinity). */
KV_FN uint16_t kv_f32_to_bf16(float f)
{
    uint32_t u = kv_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/*
 * float -> e4m3fn, round to nearest even, saturating: anything at or above
 * 448 in magnitude (infinity included) becomes +-448, NaN becomes 0x7F with
 * the input's sign. Normal results come from rounding the float's own
 * exponent+mantissa field to 3 mantissa bits (a carry correctly bumps the
 * exponent); below 2^-6 the result is a subnormal multiple of 2^-9.
 */
KV_FN uint8_t kv_f32_to_e4m3(float f)
{
    uint32_t u = kv_f32_bits(f);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint8_t)(sign | KV_E4M3_NAN_CODE);
    if (a >= 0x43e00000u) /* 448.0f */
        return (uint8_t)(sign | KV_E4M3_MAX_CODE);
    if (a < 0x3c800000u) { /* below 2^-6: subnormal, step 2^-9 */
        float q = rintf(kv_bits_f32(a) * 512.0f); /* 0..8; 8 is 2^-6, code 0x08 */
        return (uint8_t)(sign | (uint8_t)q);
    }
    a += 0x7ffffu + ((a >> 20) & 1u);
    uint32_t code = (a >> 20) - ((127u - 7u) << 3);
    if (code > KV_E4M3_MAX_CODE)
        code = KV_E4M3_MAX_CODE;
    return (uint8_t)(sign | code);
}

KV_FN float kv_e4m3_to_f32(uint8_t q)
{
    uint32_t sign = (uint32_t)(q & 0x80u) << 24;
    uint32_t exp = (q >> 3) & 0xfu;
    uint32_t man = q & 7u;
    if ((q & 0x7fu) == KV_E4M3_NAN_CODE)
        return kv_bits_f32(sign | 0x7fc00000u);
    if (exp == 0)
        return kv_bits_f32(sign | kv_f32_bits((float)man * (1.0f / 512.0f)));
    return kv_bits_f32(sign | ((exp + 120u) << 23) | (man << 20));
}

/* Element i of an array of dtype, as float (FP32 for any other dtype). */
KV_FN float kv_load_elem(const void *p, kvrt_dtype_t dtype, uint64_t i)
{
    switch (dtype) {
    case KVRT_DTYPE_FP16:
        return kv_f16_to_f32(((const uint16_t *)p)[i]);
    case KVRT_DTYPE_BF16:
        return kv_bf16_to_f32(((const uint16_t *)p)[i]);
    case KVRT_DTYPE_FP8_E4M3:
        return kv_e4m3_to_f32(((const uint8_t *)p)[i]);
    default:
        return ((const float *)p)[i];
    }
}

/* Stores v as element i of an array of dtype, rounding as above. */
KV_FN void kv_store_elem(void *p, kvrt_dtype_t dtype, uint64_t i, float v)
{
    switch (dtype) {
    case KVRT_DTYPE_FP16:
        ((uint16_t *)p)[i] = kv_f32_to_f16(v);
        break;
    case KVRT_DTYPE_BF16:
        ((uint16_t *)p)[i] = kv_f32_to_bf16(v);
        break;
    case KVRT_DTYPE_FP8_E4M3:
        ((uint8_t *)p)[i] = kv_f32_to_e4m3(v);
        break;
    default:
        ((float *)p)[i] = v;
        break;
    }
}

#endif /* KVRT_KV_NUMERIC_H */
