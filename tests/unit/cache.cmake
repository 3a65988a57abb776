# Prefix cache: hashing spec, prefix index and policies, trace loader.
kvrt_add_test(unit test_cache_hash DEPS cache LIBS PkgConfig::XXHASH TIMEOUT 60)
kvrt_add_test(unit test_cache_prefix DEPS cache TIMEOUT 60)
kvrt_add_test(unit test_cache_model DEPS cache TIMEOUT 120)
kvrt_add_test(unit test_cache_policy DEPS cache TIMEOUT 60)
kvrt_add_test(unit test_cache_trace DEPS core LIBS PkgConfig::CJSON m TIMEOUT 60)
target_sources(test_cache_trace PRIVATE ${PROJECT_SOURCE_DIR}/bench/trace.c)
target_include_directories(test_cache_trace PRIVATE ${PROJECT_SOURCE_DIR}/bench)
target_compile_definitions(test_cache_trace PRIVATE
  KVRT_TRACE_DIR="${PROJECT_SOURCE_DIR}/bench/traces")
kvrt_add_test(unit test_cache_hooks DEPS cache TIMEOUT 60)
