# Core issue suites: rings, layout, client, robustness, broker CLI.
# Included at the end of tests/CMakeLists.txt.
bb_criterion_test(test_ring ${CMAKE_CURRENT_LIST_DIR}/test_ring.c)
bb_criterion_test(test_layout ${CMAKE_CURRENT_LIST_DIR}/test_layout.c)
bb_criterion_test(test_client ${CMAKE_CURRENT_LIST_DIR}/test_client.c ${CMAKE_CURRENT_LIST_DIR}/harness.c
                  ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
bb_criterion_test(test_robustness ${CMAKE_CURRENT_LIST_DIR}/test_robustness.c ${CMAKE_CURRENT_LIST_DIR}/harness.c
                  ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
bb_criterion_test(test_broker_cli ${CMAKE_CURRENT_LIST_DIR}/test_broker_cli.c ${CMAKE_CURRENT_LIST_DIR}/harness.c
                  ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
foreach(t test_client test_robustness test_broker_cli)
  add_dependencies(${t} bb_backend_echo bb_backend_synthetic bb_backend_badabi)
endforeach()

# The broker's module map: no call circle among broker/*.c (nm over its objects).
find_package(Python3 COMPONENTS Interpreter REQUIRED)
add_test(NAME broker_callgraph
         COMMAND ${Python3_EXECUTABLE} ${PROJECT_SOURCE_DIR}/scripts/check-callgraph.py
                 "$<FILTER:$<TARGET_OBJECTS:batchbroker>,EXCLUDE,/__/>"
         COMMAND_EXPAND_LISTS)
bb_criterion_test(test_validation ${CMAKE_CURRENT_LIST_DIR}/test_validation.c
                  ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
add_dependencies(test_validation bb_backend_echo bb_backend_synthetic)
bb_criterion_test(test_admission ${CMAKE_CURRENT_LIST_DIR}/test_admission.c
                  ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
add_dependencies(test_admission bb_backend_echo bb_backend_synthetic)
bb_criterion_test(test_daemon ${CMAKE_CURRENT_LIST_DIR}/test_daemon.c
                  ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
add_dependencies(test_daemon bb_backend_echo bbt_hold)
# Holds the broker in one call, for the tests of races on the socket path.
add_library(bbt_hold MODULE ${CMAKE_CURRENT_LIST_DIR}/hold_shim.c)
target_link_libraries(bbt_hold PRIVATE ${CMAKE_DL_LIBS})
target_compile_definitions(test_daemon PRIVATE BBT_HOLD_SO="$<TARGET_FILE:bbt_hold>")
bb_criterion_test(test_hostile ${CMAKE_CURRENT_LIST_DIR}/test_hostile.c
                  ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
add_dependencies(test_hostile bb_backend_echo)

# Unit suites: one broker or client file each, no broker process.
bb_criterion_test(test_queue ${CMAKE_CURRENT_LIST_DIR}/test_queue.c ${PROJECT_SOURCE_DIR}/broker/queue.c
                  ${PROJECT_SOURCE_DIR}/broker/log.c)
bb_criterion_test(test_alloc ${CMAKE_CURRENT_LIST_DIR}/test_alloc.c ${PROJECT_SOURCE_DIR}/client/alloc.c)
bb_criterion_test(test_dedup ${CMAKE_CURRENT_LIST_DIR}/test_dedup.c ${PROJECT_SOURCE_DIR}/broker/dedup.c
                  ${PROJECT_SOURCE_DIR}/broker/queue.c ${PROJECT_SOURCE_DIR}/broker/completion.c
                  ${PROJECT_SOURCE_DIR}/broker/mailbox.c ${PROJECT_SOURCE_DIR}/broker/metrics.c
                  ${PROJECT_SOURCE_DIR}/broker/uring.c ${PROJECT_SOURCE_DIR}/broker/log.c)
target_link_libraries(test_dedup PRIVATE PkgConfig::XXHASH PkgConfig::URING)

# Observability: the metrics endpoint, bb_model_stats' phases, bbctl profile.
bb_criterion_test(test_metrics ${CMAKE_CURRENT_LIST_DIR}/test_metrics.c ${CMAKE_CURRENT_LIST_DIR}/harness.c
                  ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
target_compile_definitions(test_metrics PRIVATE BBCTL_BIN="$<TARGET_FILE:bbctl>")
target_link_libraries(test_metrics PRIVATE m)
add_dependencies(test_metrics bbctl bb_backend_echo)
# broker/metrics.c on its own: buckets, Prometheus exactness, window, stride.
bb_criterion_test(test_histograms ${CMAKE_CURRENT_LIST_DIR}/test_histograms.c
                  ${PROJECT_SOURCE_DIR}/broker/metrics.c)
