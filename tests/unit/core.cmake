kvrt_add_test(unit test_core_context DEPS kv)
# The public headers must compile as strict C99 and as C++.
add_library(test_abi_c99 OBJECT ${CMAKE_CURRENT_LIST_DIR}/abi_c99.c)
set_target_properties(test_abi_c99 PROPERTIES C_STANDARD 99 C_EXTENSIONS OFF)
target_compile_options(test_abi_c99 PRIVATE -pedantic -Werror -Wall -Wextra)
target_include_directories(test_abi_c99 PRIVATE ${PROJECT_SOURCE_DIR}/include)
add_executable(test_abi_cxx ${CMAKE_CURRENT_LIST_DIR}/abi_cxx.cpp)
set_target_properties(test_abi_cxx PROPERTIES CXX_STANDARD 11)
target_compile_options(test_abi_cxx PRIVATE -pedantic -Werror -Wall -Wextra)
target_link_libraries(test_abi_cxx PRIVATE kvrt)
add_test(NAME test_abi_cxx COMMAND test_abi_cxx)
kvrt_add_test(unit test_core_lifetimes DEPS sched)
kvrt_add_test(unit test_core_threads DEPS core LABELS threads)
kvrt_add_test(unit test_core_abi_growth DEPS cache TIMEOUT 30)
# The exported ABI equals the committed list, cmake/kvrt.map.
find_program(KVRT_READELF NAMES readelf REQUIRED)
add_test(NAME test_core_symbols
         COMMAND ${CMAKE_COMMAND} -DMAP=${PROJECT_SOURCE_DIR}/cmake/kvrt.map
                 -DSHARED=$<TARGET_FILE:kvrt> -DSTATIC=$<TARGET_FILE:kvrt_static>
                 -DNM=${CMAKE_NM} -DREADELF=${KVRT_READELF}
                 -P ${PROJECT_SOURCE_DIR}/cmake/check_symbols.cmake)
set_tests_properties(test_core_symbols PROPERTIES LABELS "unit" TIMEOUT 60)
kvrt_add_test(unit test_core_host_memory DEPS core)
kvrt_add_test(unit test_core_metrics DEPS sched)
kvrt_add_test(unit test_core_completion_queue DEPS core LABELS threads TIMEOUT 120)
