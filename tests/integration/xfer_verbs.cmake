# The verbs backend's tests, built with the backend (-DKVRT_VERBS=ON). The
# software RDMA device and the seam that installs it are test-only: they
# are built here from tests/support/, never into libkvrt.
if(KVRT_VERBS)
  add_library(kvrt_soft_verbs STATIC
    ${PROJECT_SOURCE_DIR}/tests/support/soft_verbs.c
    ${PROJECT_SOURCE_DIR}/tests/support/soft_verbs_exec.c
    ${PROJECT_SOURCE_DIR}/tests/support/verbs_seam.c)
  target_include_directories(kvrt_soft_verbs PUBLIC ${PROJECT_SOURCE_DIR}/tests
                             $<TARGET_PROPERTY:kvrt_xfer,KVRT_VIEW>)
  target_link_libraries(kvrt_soft_verbs PUBLIC kvrt_xfer)

  kvrt_add_test(unit test_xfer_verbs_soft DEPS xfer LIBS kvrt_soft_verbs
                LABELS threads TIMEOUT 60)
  kvrt_add_test(integration test_xfer_verbs_agents DEPS xfer LIBS kvrt_soft_verbs
                LABELS threads TIMEOUT 180)
  kvrt_add_test(integration test_xfer_verbs_qp_auth DEPS xfer LIBS kvrt_soft_verbs
                LABELS threads TIMEOUT 120)
  kvrt_add_test(integration test_xfer_verbs_accept DEPS xfer LIBS kvrt_soft_verbs
                LABELS threads TIMEOUT 120)
endif()
