# kvrt-sim: a simulated serving engine driving the real scheduler, prefix
# cache and speculation through a workload (docs/simulator.md).
#
# Its parts are libraries the tests link too. This file is included from
# bench/ and from tests/ (which also build with KVRT_BUILD_BENCH=OFF, as in
# the sanitizer runs); the guard makes the second include a no-op.
include_guard(GLOBAL)
set(KVRT_SIM_DIR ${CMAKE_CURRENT_LIST_DIR})

# Workloads (synthetic and trace), the cost model and the statistics: plain
# C with no kvrt dependency.
add_library(kvrt_sim_model STATIC
  ${KVRT_SIM_DIR}/sim_cost_model.c
  ${KVRT_SIM_DIR}/sim_stats.c
  ${KVRT_SIM_DIR}/sim_workload.c
  ${KVRT_SIM_DIR}/sim_workload_synthetic.c
  ${KVRT_SIM_DIR}/sim_workload_trace.c
  ${KVRT_SIM_DIR}/trace.c)
target_include_directories(kvrt_sim_model PUBLIC ${KVRT_SIM_DIR})
target_link_libraries(kvrt_sim_model PUBLIC PkgConfig::CJSON m)

# The engine loop and the report, over the real scheduler, cache and pool.
add_library(kvrt_sim_engine STATIC
  ${KVRT_SIM_DIR}/sim_engine.c
  ${KVRT_SIM_DIR}/sim_kv.c
  ${KVRT_SIM_DIR}/sim_tier.c
  ${KVRT_SIM_DIR}/sim_report.c
  ${KVRT_SIM_DIR}/sim_cluster.c
  ${KVRT_SIM_DIR}/sim_cluster_report.c)
target_link_libraries(kvrt_sim_engine PUBLIC kvrt_sim_model kvrt_static)
# The tier model keeps its blocks in the tier's own slot directories under
# the cache's eviction sink: it alone sees the tier's view.
set_property(SOURCE ${KVRT_SIM_DIR}/sim_tier.c APPEND PROPERTY
             INCLUDE_DIRECTORIES $<TARGET_PROPERTY:kvrt_tier,KVRT_VIEW>)

if(KVRT_BUILD_BENCH)
  add_executable(kvrt-sim ${KVRT_SIM_DIR}/sim_main.c ${KVRT_SIM_DIR}/sim_metrics.c
                 ${KVRT_SIM_DIR}/metrics_http.c ${KVRT_SIM_DIR}/tool_cli.c)
  target_link_libraries(kvrt-sim PRIVATE kvrt_sim_engine)
endif()
