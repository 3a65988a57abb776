# The Python package (python/kvrt) against this build's libkvrt.so: pytest
# runs python/tests with KVRT_LIBRARY and KVRT_ABI_DUMP set. abi_dump prints
# the C structs' sizes and offsets that the package's ctypes mirrors must
# match. Skipped under the sanitizers and TSan (an uninstrumented
# interpreter cannot load an instrumented library).
add_executable(kvrt_abi_dump ${PROJECT_SOURCE_DIR}/python/tests/abi_dump.c)
target_include_directories(kvrt_abi_dump PRIVATE ${PROJECT_SOURCE_DIR}/include)
if(NOT KVRT_SANITIZE AND NOT KVRT_TSAN)
  add_test(NAME python_tests
           COMMAND /usr/bin/python3 -m pytest -q -p no:cacheprovider
                   ${PROJECT_SOURCE_DIR}/python/tests
           WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}/python)
  set_tests_properties(python_tests PROPERTIES
    LABELS "integration;python" TIMEOUT 600
    ENVIRONMENT "KVRT_LIBRARY=$<TARGET_FILE:kvrt>;KVRT_ABI_DUMP=$<TARGET_FILE:kvrt_abi_dump>;PYTHONPATH=${PROJECT_SOURCE_DIR}/python;PYTHONDONTWRITEBYTECODE=1")
endif()
