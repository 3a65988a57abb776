kvrt_add_test(integration test_xfer_agents DEPS xfer TIMEOUT 120)
kvrt_add_test(integration test_xfer_security DEPS xfer TIMEOUT 60)
kvrt_add_test(integration test_xfer_process DEPS xfer TIMEOUT 120)
kvrt_add_test(integration test_xfer_netns DEPS xfer TIMEOUT 60)
