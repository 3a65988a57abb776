kvrt_add_test(unit test_xfer_wire DEPS xfer TIMEOUT 30)
kvrt_add_test(unit test_xfer_frame_auth DEPS xfer TIMEOUT 30)
