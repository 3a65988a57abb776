# Kernel tests: CPU references against naive oracles, and the CUDA kernels
# against the CPU references (skipped with a reason when no GPU is present).
foreach(stem test_kernels_numeric test_kernels_layout test_kernels_move
             test_kernels_attention test_kernels_cuda test_kernels_cuda_edges)
  kvrt_add_test(unit ${stem} DEPS core kv kernels LIBS m)
  # The internal headers under kernels/ (kv_numeric.h, kv_args.h).
  target_include_directories(${stem} PRIVATE ${PROJECT_SOURCE_DIR})
endforeach()

# scripts/gpu-check's verdict from the files a GPU run leaves (python3).
kvrt_add_test(unit test_kernels_gpu_check DEPS core)
target_compile_definitions(test_kernels_gpu_check PRIVATE KVRT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
