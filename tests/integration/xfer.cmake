kvrt_add_test(integration test_xfer_agents DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_security DEPS xfer LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_process DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_netns DEPS xfer LABELS threads TIMEOUT 60)
