# The SSD tier on a real file system: restart, faults, a full disk.
kvrt_add_test(integration test_tier_ssd DEPS tier LABELS threads TIMEOUT 120)
# Onload through the scheduler: waiting for KV, failures, deadlines.
kvrt_add_test(integration test_tier_admit DEPS tier sched LABELS threads TIMEOUT 60)
# kvrt-sim's tiers below the GPU (bench/sim_tier.c) over the real scheduler.
include(${PROJECT_SOURCE_DIR}/bench/sim.cmake)
kvrt_add_test(integration test_tier_sim LIBS kvrt_sim_engine TIMEOUT 120)
