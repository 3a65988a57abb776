kvrt_add_test(unit test_xfer_wire DEPS xfer TIMEOUT 30)
