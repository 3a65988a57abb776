# libFuzzer targets of the transfer engine. Built only with
# -DKVRT_BUILD_FUZZ=ON and clang (CC=clang). Run them briefly with their
# seed corpora, e.g.:
#   fuzz_xfer_wire -max_total_time=30 <copy of tests/fuzz/corpus/xfer_wire>
#   fuzz_xfer_session -max_total_time=35 <copy of tests/fuzz/corpus/xfer_session>
# fuzz_xfer_wire: the wire-header parser alone. fuzz_xfer_session: a whole
# hostile session against a real agent on loopback; the transfer engine and
# what it links are instrumented for coverage and built with ASan+UBSan
# here (in a fuzz build tree only, where nothing else is built).
if(KVRT_BUILD_FUZZ)
  if(CMAKE_C_COMPILER_ID MATCHES "Clang")
    set(KVRT_FUZZ_FLAGS -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
    add_executable(fuzz_xfer_wire ${CMAKE_CURRENT_LIST_DIR}/fuzz_xfer_wire.c
                   ${PROJECT_SOURCE_DIR}/runtime/xfer/tcp/wire.c)
    target_include_directories(fuzz_xfer_wire PRIVATE ${PROJECT_SOURCE_DIR}/include
                               ${PROJECT_SOURCE_DIR}/runtime)
    target_compile_options(fuzz_xfer_wire PRIVATE ${KVRT_FUZZ_FLAGS})
    target_link_options(fuzz_xfer_wire PRIVATE ${KVRT_FUZZ_FLAGS})

    foreach(lib kvrt_core kvrt_kv kvrt_xfer)
      target_compile_options(${lib} PRIVATE -fsanitize=fuzzer-no-link,address,undefined
                             -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
    endforeach()
    add_executable(fuzz_xfer_session ${CMAKE_CURRENT_LIST_DIR}/fuzz_xfer_session.c)
    target_link_libraries(fuzz_xfer_session PRIVATE kvrt_xfer)
    target_include_directories(fuzz_xfer_session PRIVATE
                               $<TARGET_PROPERTY:kvrt_xfer,KVRT_VIEW>)
    target_compile_options(fuzz_xfer_session PRIVATE ${KVRT_FUZZ_FLAGS})
    target_link_options(fuzz_xfer_session PRIVATE ${KVRT_FUZZ_FLAGS})
  else()
    message(WARNING "KVRT_BUILD_FUZZ needs clang (CC=clang); the fuzz targets are not built")
  endif()
endif()
