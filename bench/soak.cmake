# kvrt-soak: a multi-node kvrt deployment on one machine (network
# namespaces), real traffic, seeded faults, invariants (docs/soak.md).
# The nodes use the public API only; the workload and cost model come from
# kvrt-sim's libraries (bench/sim.cmake).
include(${CMAKE_CURRENT_LIST_DIR}/sim.cmake)
if(KVRT_BUILD_BENCH)
  add_executable(kvrt-soak
    ${CMAKE_CURRENT_LIST_DIR}/soak_main.c
    ${CMAKE_CURRENT_LIST_DIR}/soak_cli.c
    ${CMAKE_CURRENT_LIST_DIR}/soak_cluster.c
    ${CMAKE_CURRENT_LIST_DIR}/soak_disk.c
    ${CMAKE_CURRENT_LIST_DIR}/soak_faults.c
    ${CMAKE_CURRENT_LIST_DIR}/soak_handoff.c
    ${CMAKE_CURRENT_LIST_DIR}/soak_netns.c
    ${CMAKE_CURRENT_LIST_DIR}/soak_node.c
    ${CMAKE_CURRENT_LIST_DIR}/soak_node_cluster.c
    ${CMAKE_CURRENT_LIST_DIR}/soak_node_tier.c
    ${CMAKE_CURRENT_LIST_DIR}/soak_report.c)
  target_link_libraries(kvrt-soak PRIVATE kvrt_sim_model kvrt_static m)
  target_compile_definitions(kvrt-soak PRIVATE
    KVRT_SOAK_PLOT_SCRIPT="${CMAKE_CURRENT_LIST_DIR}/soak_plot.py")
endif()
