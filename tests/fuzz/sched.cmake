# libFuzzer target of the scheduler's public API (fuzz_sched_api.c): a
# careless engine's calls against a scheduler, its pools and caches.
# Built only with -DKVRT_BUILD_FUZZ=ON and clang (CC=clang), like the
# transfer engine's targets (xfer.cmake); run it briefly with its seed
# corpus, e.g.:
#   fuzz_sched_api -max_total_time=30 <copy of tests/fuzz/corpus/sched_api>
# The scheduler and what it links are instrumented for coverage and built
# with ASan+UBSan here (in a fuzz build tree only).
if(KVRT_BUILD_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang")
  foreach(lib kvrt_core kvrt_kv kvrt_cache kvrt_sched)
    target_compile_options(${lib} PRIVATE -fsanitize=fuzzer-no-link,address,undefined
                           -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  endforeach()
  set(KVRT_SCHED_FUZZ_FLAGS -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  add_executable(fuzz_sched_api ${CMAKE_CURRENT_LIST_DIR}/fuzz_sched_api.c)
  target_link_libraries(fuzz_sched_api PRIVATE kvrt_sched)
  target_compile_options(fuzz_sched_api PRIVATE ${KVRT_SCHED_FUZZ_FLAGS})
  target_link_options(fuzz_sched_api PRIVATE ${KVRT_SCHED_FUZZ_FLAGS})
endif()
