kvrt_add_test(unit test_sched_requests DEPS sched)
