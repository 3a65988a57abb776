kvrt_add_test(integration test_xfer_agents DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_security DEPS xfer LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_suites DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_mitm DEPS xfer LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_emfile DEPS xfer LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_limits DEPS xfer LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_preauth DEPS xfer LABELS threads TIMEOUT 240)
kvrt_add_test(integration test_xfer_process DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_netns DEPS xfer LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_lifetime DEPS xfer LABELS threads TIMEOUT 120)
# A program test_xfer_lifetime starts: agents destroyed by an exit handler,
# in a process whose start-up (unlike a Criterion one) leaves libcrypto alone.
add_executable(xfer_exit_child ${CMAKE_CURRENT_LIST_DIR}/xfer_exit_child.c)
target_link_libraries(xfer_exit_child PRIVATE kvrt_xfer)
target_include_directories(xfer_exit_child PRIVATE $<TARGET_PROPERTY:kvrt_xfer,KVRT_VIEW>)
if(TARGET test_xfer_lifetime)
  target_compile_definitions(test_xfer_lifetime PRIVATE
                             KVRT_XFER_EXIT_CHILD="$<TARGET_FILE:xfer_exit_child>")
  add_dependencies(test_xfer_lifetime xfer_exit_child)
endif()
kvrt_add_test(integration test_xfer_requests DEPS xfer LABELS threads TIMEOUT 120)
# Counts every allocation in the process by wrapping malloc, calloc and
# realloc at link time (the transfer engine's objects are linked statically).
kvrt_add_test(integration test_xfer_allocations DEPS xfer LABELS threads TIMEOUT 120)
if(TARGET test_xfer_allocations)
  target_link_options(test_xfer_allocations PRIVATE
                      -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc)
endif()
kvrt_add_test(integration test_xfer_backpressure DEPS xfer LABELS threads TIMEOUT 400)
kvrt_add_test(integration test_xfer_revoke DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_reconnect DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_restart DEPS xfer LABELS threads TIMEOUT 120)
kvrt_add_test(integration test_xfer_hashing DEPS xfer LABELS threads TIMEOUT 120)
