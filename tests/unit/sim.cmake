# kvrt-sim's parts (bench/sim.cmake defines the libraries).
include(${PROJECT_SOURCE_DIR}/bench/sim.cmake)
kvrt_add_test(unit test_sim_cost_model LIBS kvrt_sim_model TIMEOUT 60)
kvrt_add_test(unit test_sim_stats LIBS kvrt_sim_model TIMEOUT 60)
kvrt_add_test(unit test_sim_workload LIBS kvrt_sim_model TIMEOUT 60)
