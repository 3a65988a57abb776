# libFuzzer target for the transfer engine's wire-header parser. Built only
# with -DKVRT_BUILD_FUZZ=ON and clang (CC=clang). Run it briefly with the
# seed corpus, e.g.:
#   fuzz_xfer_wire -max_total_time=30 <copy of tests/fuzz/corpus/xfer_wire>
if(KVRT_BUILD_FUZZ)
  if(CMAKE_C_COMPILER_ID MATCHES "Clang")
    add_executable(fuzz_xfer_wire ${CMAKE_CURRENT_LIST_DIR}/fuzz_xfer_wire.c
                   ${PROJECT_SOURCE_DIR}/runtime/xfer/tcp/wire.c)
    target_include_directories(fuzz_xfer_wire PRIVATE ${PROJECT_SOURCE_DIR}/include
                               ${PROJECT_SOURCE_DIR}/runtime)
    target_compile_options(fuzz_xfer_wire PRIVATE -fsanitize=fuzzer,address,undefined)
    target_link_options(fuzz_xfer_wire PRIVATE -fsanitize=fuzzer,address,undefined)
  else()
    message(WARNING "KVRT_BUILD_FUZZ needs clang (CC=clang); fuzz_xfer_wire not built")
  endif()
endif()
