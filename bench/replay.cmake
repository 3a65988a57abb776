# kvrt-replay: trace replay through the real prefix cache (bench/replay.c).
add_executable(kvrt-replay ${CMAKE_CURRENT_SOURCE_DIR}/replay.c
               ${CMAKE_CURRENT_SOURCE_DIR}/replay_belady.c ${CMAKE_CURRENT_SOURCE_DIR}/replay_tier.c
               ${CMAKE_CURRENT_SOURCE_DIR}/trace.c)
target_include_directories(kvrt-replay PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_compile_definitions(kvrt-replay PRIVATE
  KVRT_SHIPPED_TRACE="${CMAKE_CURRENT_SOURCE_DIR}/traces/conversation_trace.jsonl")
target_link_libraries(kvrt-replay PRIVATE kvrt_static PkgConfig::CJSON m)

# The cache suite of kvrt-bench times a full replay through this program.
target_compile_definitions(kvrt-bench PRIVATE KVRT_REPLAY_PATH="$<TARGET_FILE:kvrt-replay>")
add_dependencies(kvrt-bench kvrt-replay)
