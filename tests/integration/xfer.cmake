kvrt_add_test(integration test_xfer_agents DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_security DEPS xfer LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_mitm DEPS xfer LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_emfile DEPS xfer LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_limits DEPS xfer LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_process DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_netns DEPS xfer LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_lifetime DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_requests DEPS xfer LABELS threads TIMEOUT 120)
# Counts every allocation in the process by wrapping malloc, calloc and
# realloc at link time (the transfer engine's objects are linked statically).
kvrt_add_test(integration test_xfer_allocations DEPS xfer LABELS threads TIMEOUT 120)
if(TARGET test_xfer_allocations)
  target_link_options(test_xfer_allocations PRIVATE
                      -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc)
endif()
kvrt_add_test(integration test_xfer_backpressure DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_revoke DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_hashing DEPS xfer LABELS threads TIMEOUT 120)
