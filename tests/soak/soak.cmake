# kvrt-soak end to end: a short soak with every available fault kind
# (bench/soak.cmake, docs/soak.md). Needs the program, so only when the
# bench programs are built.
if(TARGET kvrt-soak)
  kvrt_add_test(soak test_soak_faults LIBS PkgConfig::CJSON TIMEOUT 300)
  target_compile_definitions(test_soak_faults PRIVATE KVRT_SOAK_PATH="$<TARGET_FILE:kvrt-soak>")
  add_dependencies(test_soak_faults kvrt-soak)
endif()
