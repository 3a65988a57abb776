kvrt_add_test(soak test_sched_random DEPS sched TIMEOUT 600)
