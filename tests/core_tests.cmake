# Core issue suites: rings, layout, client, robustness, broker CLI.
# Included at the end of tests/CMakeLists.txt.
bb_criterion_test(test_ring ${CMAKE_CURRENT_LIST_DIR}/test_ring.c)
bb_criterion_test(test_layout ${CMAKE_CURRENT_LIST_DIR}/test_layout.c)
bb_criterion_test(test_client ${CMAKE_CURRENT_LIST_DIR}/test_client.c ${CMAKE_CURRENT_LIST_DIR}/harness.c
                  ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
bb_criterion_test(test_robustness ${CMAKE_CURRENT_LIST_DIR}/test_robustness.c ${CMAKE_CURRENT_LIST_DIR}/harness.c
                  ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
bb_criterion_test(test_broker_cli ${CMAKE_CURRENT_LIST_DIR}/test_broker_cli.c ${CMAKE_CURRENT_LIST_DIR}/harness.c)
foreach(t test_client test_robustness test_broker_cli)
  add_dependencies(${t} bb_backend_echo bb_backend_synthetic bb_backend_badabi)
endforeach()

# The broker's module map: no call circle among broker/*.c (nm over its objects).
find_package(Python3 COMPONENTS Interpreter REQUIRED)
add_test(NAME broker_callgraph
         COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/scripts/check-callgraph.py
                 "$<FILTER:$<TARGET_OBJECTS:batchbroker>,EXCLUDE,/__/>"
         COMMAND_EXPAND_LISTS)

# Observability: the metrics endpoint, bb_model_stats' phases, bbctl profile.
bb_criterion_test(test_metrics ${CMAKE_CURRENT_LIST_DIR}/test_metrics.c ${CMAKE_CURRENT_LIST_DIR}/harness.c
                  ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
target_compile_definitions(test_metrics PRIVATE BBCTL_BIN="$<TARGET_FILE:bbctl>")
target_link_libraries(test_metrics PRIVATE m)
add_dependencies(test_metrics bbctl bb_backend_echo)
# broker/metrics.c on its own: buckets, Prometheus exactness, window, stride.
bb_criterion_test(test_histograms ${CMAKE_CURRENT_LIST_DIR}/test_histograms.c
                  ${PROJECT_SOURCE_DIR}/broker/metrics.c)
