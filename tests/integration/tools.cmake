# The command lines of kvrt-sim, kvrt-replay and kvrt-bench (needs the
# bench programs).
if(TARGET kvrt-sim AND TARGET kvrt-replay AND TARGET kvrt-bench)
  kvrt_add_test(integration test_tools_cli LIBS PkgConfig::CJSON TIMEOUT 120)
  add_dependencies(test_tools_cli kvrt-sim kvrt-replay kvrt-bench)
  target_compile_definitions(test_tools_cli PRIVATE
    KVRT_SIM_PATH="$<TARGET_FILE:kvrt-sim>"
    KVRT_REPLAY_PATH="$<TARGET_FILE:kvrt-replay>"
    KVRT_BENCH_PATH="$<TARGET_FILE:kvrt-bench>"
    KVRT_TRACE_DIR="${PROJECT_SOURCE_DIR}/bench/traces")
endif()
