# Scheduling suite (issue 4): priorities, deadlines, backpressure, fairness,
# dedup, memory limits, custom strategies, cancel. include()d at the end of
# tests/CMakeLists.txt. The plugins it needs are built here, into
# tests/plugins/ of the build tree, and their paths compiled into the test.
set(BB_SCHED_PLUGIN_DIR ${CMAKE_CURRENT_BINARY_DIR}/plugins)
function(bb_sched_plugin target src)
  add_library(${target} MODULE ${src})
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    OUTPUT_NAME ${target}
    C_VISIBILITY_PRESET hidden
    LIBRARY_OUTPUT_DIRECTORY ${BB_SCHED_PLUGIN_DIR})
  target_link_options(${target} PRIVATE LINKER:-z,defs)
endfunction()
bb_sched_plugin(bb_test_sched_recorder ${CMAKE_CURRENT_LIST_DIR}/plugins/sched_recorder.c)
bb_sched_plugin(bb_test_strategy_lowfirst ${CMAKE_CURRENT_LIST_DIR}/plugins/strategy_lowfirst.c)
bb_sched_plugin(bb_test_strategy_badabi ${CMAKE_CURRENT_LIST_DIR}/plugins/strategy_badabi.c)

bb_criterion_test(test_scheduling ${CMAKE_CURRENT_LIST_DIR}/test_scheduling.c
                  ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
target_compile_definitions(test_scheduling PRIVATE
  BB_SCHED_RECORDER="$<TARGET_FILE:bb_test_sched_recorder>"
  BB_STRATEGY_LOWFIRST="$<TARGET_FILE:bb_test_strategy_lowfirst>"
  BB_STRATEGY_BADABI="$<TARGET_FILE:bb_test_strategy_badabi>")
add_dependencies(test_scheduling bb_backend_synthetic bb_test_sched_recorder
                 bb_test_strategy_lowfirst bb_test_strategy_badabi)

# Dispatcher workers (issue 8): clients of two fake nodes on two workers, one
# model's batches across both.
bb_criterion_test(test_workers ${CMAKE_CURRENT_LIST_DIR}/test_workers.c
                  ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
target_compile_definitions(test_workers PRIVATE BB_SCHED_RECORDER="$<TARGET_FILE:bb_test_sched_recorder>")
add_dependencies(test_workers bb_test_sched_recorder)
