# kvrt-sim's metrics against the real Prometheus tools (Debian package
# prometheus): promtool validates --metrics-out; a Prometheus server on
# loopback scrapes --metrics-port; the endpoint cuts off bad clients.
# Exit 77 = skipped, with the reason.
if(TARGET kvrt-sim AND NOT KVRT_TSAN)
  foreach(mode promtool scrape http)
    add_test(NAME sim_metrics_${mode}
             COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/sim_prometheus.py
                     $<TARGET_FILE:kvrt-sim> ${mode})
    set_tests_properties(sim_metrics_${mode} PROPERTIES
      LABELS "integration;prometheus" TIMEOUT 180 SKIP_RETURN_CODE 77)
  endforeach()
endif()
