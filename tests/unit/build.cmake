# The build itself: boundaries between subsystems (cmake/check_boundaries.cmake).
add_test(NAME test_build_boundaries
         COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR}
                 -DBINARY_DIR=${PROJECT_BINARY_DIR} -DC_COMPILER=${CMAKE_C_COMPILER}
                 -P ${PROJECT_SOURCE_DIR}/cmake/check_boundaries.cmake)
set_tests_properties(test_build_boundaries PROPERTIES LABELS "unit" TIMEOUT 60)
