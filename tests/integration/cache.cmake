# kvrt-replay end to end (needs the bench programs).
if(TARGET kvrt-replay)
  kvrt_add_test(integration test_cache_replay DEPS core LIBS PkgConfig::CJSON TIMEOUT 180)
  add_dependencies(test_cache_replay kvrt-replay)
  target_compile_definitions(test_cache_replay PRIVATE
    KVRT_REPLAY_PATH="$<TARGET_FILE:kvrt-replay>"
    KVRT_TRACE_DIR="${PROJECT_SOURCE_DIR}/bench/traces")
endif()
