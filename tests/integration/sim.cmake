# kvrt-sim's engine over the real scheduler, cache and pool, and (when the
# programs are built) its command line.
include(${PROJECT_SOURCE_DIR}/bench/sim.cmake)
kvrt_add_test(integration test_sim_engine LIBS kvrt_sim_engine TIMEOUT 120)
if(TARGET kvrt-sim)
  kvrt_add_test(integration test_sim_cli LIBS PkgConfig::CJSON TIMEOUT 120)
  target_compile_definitions(test_sim_cli PRIVATE KVRT_SIM_PATH="$<TARGET_FILE:kvrt-sim>")
  add_dependencies(test_sim_cli kvrt-sim)
endif()
# Several nodes: routing, directory, pulls and hand-offs (bench/sim_cluster.c).
kvrt_add_test(integration test_sim_cluster LIBS kvrt_sim_engine TIMEOUT 300)
