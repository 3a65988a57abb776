/*
 * device.cu - device discovery and CUDA error mapping for the kernels.
 */
#include "cuda_common.cuh"

kvrt_status_t kv_cuda_ready(kvrt_ctx_t *ctx, const char *func)
{
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        /* A failed cudaGetDeviceCount is also recorded as the thread's last
         * CUDA error; clear it so the caller's next CUDA check does not
         * pick it up. */
        (void)cudaGetLastError();
        return kvrt_fail_(ctx, func, KVRT_ERR_NO_GPU, "no CUDA device: %s",
                          err != cudaSuccess ? cudaGetErrorString(err) : "count is 0");
    }
    return KVRT_OK;
}

kvrt_status_t kv_cuda_launched(kvrt_ctx_t *ctx, const char *func)
{
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return kvrt_fail_(ctx, func, KVRT_ERR_DEVICE, "kernel launch failed: %s",
                          cudaGetErrorString(err));
    return KVRT_OK;
}

extern "C" KVRT_EXPORT kvrt_status_t kvrt_cuda_device_count(int *count_out)
{
    if (!count_out)
        return KVRT_ERR_INVALID_ARG;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        return KVRT_ERR_NO_GPU;
    }
    *count_out = count;
    return KVRT_OK;
}
