/*
 * cuda_common.cuh - what the CUDA launchers share: the C headers they need
 * (kvrt's internal headers are C, so they are included with C linkage),
 * the device check every entry point runs first and launch-error mapping.
 * Internal: nothing here is ABI.
 */
#ifndef KVRT_CUDA_COMMON_CUH
#define KVRT_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "core/core.h"
}
#include "kv_args.h"
#include "kv_numeric.h"
#include "kvrt/kernels.h"

/* Grids are capped and kernels loop (grid-stride), so no count overflows a
 * grid dimension. */
#define KV_MAX_GRID 65535u

/*
 * KVRT_ERR_NO_GPU when no device can be used (no driver, none present);
 * called before any argument is touched on the device.
 */
kvrt_status_t kv_cuda_ready(kvrt_ctx_t *ctx, const char *func);

/* KVRT_OK, or KVRT_ERR_DEVICE with the CUDA error text after a launch. */
kvrt_status_t kv_cuda_launched(kvrt_ctx_t *ctx, const char *func);

static inline cudaStream_t kv_stream(kvrt_cuda_stream_t *stream)
{
    return reinterpret_cast<cudaStream_t>(stream);
}

static inline unsigned kv_grid(uint64_t items)
{
    return items < KV_MAX_GRID ? (unsigned)(items ? items : 1) : KV_MAX_GRID;
}

/* Largest power-of-two access width (16 down to 1 bytes) that every address
 * and length here is a multiple of. */
static inline unsigned kv_vector_bytes(uintptr_t bits)
{
    for (unsigned w = 16; w > 1; w /= 2)
        if ((bits & (w - 1)) == 0)
            return w;
    return 1;
}

#endif /* KVRT_CUDA_COMMON_CUH */
