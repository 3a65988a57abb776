/*
 * test_kernels_cuda_twin.h - fixtures the CUDA kernel tests share: a cache
 * held twice, in host memory for the CPU reference and in device memory
 * for the CUDA kernel, with identical contents; device buffers; the
 * attention tolerance against the CPU reference.
 */
#ifndef KVRT_TEST_KERNELS_CUDA_TWIN_H
#define KVRT_TEST_KERNELS_CUDA_TWIN_H

#include <criterion/criterion.h>

#include "kvrt/kernels.h"
#include "test_kernels_oracle.h"

#if KVRT_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

static inline bool gpu_present(void)
{
    int count = 0;
    return kvrt_cuda_device_count(&count) == KVRT_OK && count > 0;
}

#if KVRT_HAVE_CUDA

/* Device memory of `bytes` bytes holding a copy of host[0..bytes), or
 * zeros when host is NULL (an output buffer). */
static inline void *to_device(const void *host, size_t bytes)
{
    void *dev = NULL;
    size_t size = bytes ? bytes : 1;
    cr_assert_eq(cudaMalloc(&dev, size), cudaSuccess);
    if (host)
        cr_assert_eq(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    else
        cr_assert_eq(cudaMemset(dev, 0, size), cudaSuccess);
    return dev;
}

static inline void from_device(void *host, const void *dev, size_t bytes)
{
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cr_assert_eq(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
}

/* A cache in both places with identical contents and scales. */
typedef struct twin {
    kvrt_kv_cache_t host, dev;
    uint64_t bytes;
    size_t scales;
} twin_t;

static inline void twin_init(twin_t *t, uint64_t *rng, const kvrt_kv_layout_t *l,
                             uint32_t num_blocks, kvrt_scale_mode_t mode)
{
    memset(t, 0, sizeof *t);
    t->bytes = oracle_cache_bytes(l, num_blocks);
    t->host = (kvrt_kv_cache_t){.layout = *l, .num_blocks = num_blocks,
                                .base = malloc(t->bytes)};
    oracle_fill_bytes(rng, t->host.base, t->bytes);
    if (l->dtype == KVRT_DTYPE_FP8_E4M3) {
        /* Random bytes may hold NaN codes; attention and reads would then
         * compare NaN with NaN, so clear them. */
        for (uint64_t i = 0; i < t->bytes; i++)
            if ((((uint8_t *)t->host.base)[i] & 0x7f) == 0x7f)
                ((uint8_t *)t->host.base)[i] = 0;
        t->scales = (size_t)l->num_layers *
                    (mode == KVRT_SCALE_PER_HEAD ? l->num_kv_heads : num_blocks);
        t->host.field_mask = KVRT_KV_CACHE_FIELD_SCALES;
        t->host.scale_mode = mode;
        t->host.k_scales = malloc(t->scales * sizeof(float));
        t->host.v_scales = malloc(t->scales * sizeof(float));
        for (size_t i = 0; i < t->scales; i++) {
            t->host.k_scales[i] = 0.02f + 0.5f * (oracle_unit(rng) + 1);
            t->host.v_scales[i] = 0.02f + 0.5f * (oracle_unit(rng) + 1);
        }
    }
    t->dev = t->host;
    t->dev.base = to_device(t->host.base, t->bytes);
    if (t->scales) {
        t->dev.k_scales = to_device(t->host.k_scales, t->scales * sizeof(float));
        t->dev.v_scales = to_device(t->host.v_scales, t->scales * sizeof(float));
    }
}

static inline void twin_compare(twin_t *t, const char *what)
{
    char *back = malloc(t->bytes);
    from_device(back, t->dev.base, t->bytes);
    cr_assert_eq(memcmp(back, t->host.base, t->bytes), 0, "%s: GPU cache differs", what);
    free(back);
    if (t->scales) {
        float *s = malloc(t->scales * sizeof(float));
        from_device(s, t->dev.k_scales, t->scales * sizeof(float));
        cr_assert_eq(memcmp(s, t->host.k_scales, t->scales * sizeof(float)), 0, "%s", what);
        free(s);
    }
}

/* Bounded values (|x| <= ~1.3), not random bit patterns, on both sides,
 * so attention logits stay where float summation order hardly matters. */
static inline void twin_bound_values(twin_t *t, uint64_t *rng)
{
    kvrt_dtype_t dtype = t->host.layout.dtype;
    if (dtype != KVRT_DTYPE_FP8_E4M3) {
        oracle_fill_values(rng, t->host.base, dtype, t->bytes / 2, 1.0f);
        cudaMemcpy(t->dev.base, t->host.base, t->bytes, cudaMemcpyHostToDevice);
        return;
    }
    for (size_t i = 0; i < t->scales; i++) {
        t->host.k_scales[i] = 0.001f + 0.001f * (oracle_unit(rng) + 1);
        t->host.v_scales[i] = 0.001f + 0.001f * (oracle_unit(rng) + 1);
    }
    cudaMemcpy(t->dev.k_scales, t->host.k_scales, t->scales * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(t->dev.v_scales, t->host.v_scales, t->scales * 4, cudaMemcpyHostToDevice);
}

static inline void twin_fini(twin_t *t)
{
    cudaFree(t->dev.base);
    cudaFree(t->dev.k_scales);
    cudaFree(t->dev.v_scales);
    free(t->host.base);
    free(t->host.k_scales);
    free(t->host.v_scales);
}

static inline double kv_ref_f16(uint16_t h)
{
    _Float16 v;
    memcpy(&v, &h, sizeof v);
    return (double)v;
}

/* Frees NULL-terminated lists of device and host buffers. */
static inline void free_buffers(void *const *dev, void *const *host)
{
    for (; *dev; dev++)
        cudaFree(*dev);
    for (; *host; host++)
        free(*host);
}

/* GPU attention agrees with the CPU reference to 1e-4 relative. */
static inline void assert_close(const float *cpu, const float *gpu, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        cr_assert_leq(fabs((double)cpu[i] - gpu[i]), 1e-4 * (1 + fabs((double)cpu[i])),
                      "seed %llu elem %zu: cpu %g gpu %g", (unsigned long long)seed, i,
                      (double)cpu[i], (double)gpu[i]);
}

/* Gives a the workspace kvrt asks for (none when it would not split);
 * returns it for cudaFree. */
static inline void *attach_workspace(const kvrt_kv_cache_t *dev, kvrt_decode_attention_t *a)
{
    uint64_t bytes = 0;
    cr_assert_eq(kvrt_cuda_decode_attention_workspace(NULL, dev, a, &bytes), KVRT_OK);
    void *ws = NULL;
    if (bytes) {
        cr_assert_eq(cudaMalloc(&ws, bytes), cudaSuccess);
        a->field_mask |= KVRT_ATTN_FIELD_WORKSPACE;
        a->workspace = ws;
        a->workspace_bytes = bytes;
    }
    return ws;
}

#endif /* KVRT_HAVE_CUDA */

#endif /* KVRT_TEST_KERNELS_CUDA_TWIN_H */
