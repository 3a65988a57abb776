kvrt_add_test(unit test_sched_requests DEPS sched)
kvrt_add_test(unit test_sched_spec DEPS sched)
kvrt_add_test(unit test_sched_cache DEPS sched)
kvrt_add_test(unit test_sched_arrival DEPS sched)
