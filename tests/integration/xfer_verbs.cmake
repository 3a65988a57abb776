# The verbs backend's tests. The software RDMA device is test-only: it is
# built here, not into libkvrt, and injected through the verbs ops seam.
add_library(kvrt_soft_verbs STATIC
  ${PROJECT_SOURCE_DIR}/runtime/xfer/soft_verbs.c
  ${PROJECT_SOURCE_DIR}/runtime/xfer/soft_verbs_exec.c)
target_link_libraries(kvrt_soft_verbs PUBLIC kvrt_xfer)

kvrt_add_test(unit test_xfer_verbs_soft DEPS xfer LIBS kvrt_soft_verbs
              LABELS threads TIMEOUT 60)
kvrt_add_test(integration test_xfer_verbs_agents DEPS xfer LIBS kvrt_soft_verbs
              LABELS threads TIMEOUT 180)
