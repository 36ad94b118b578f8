# Scheduling suites (issue 4): priorities, starvation, deadlines, backpressure,
# fairness, dedup, batch byte limits, custom strategies, cancel, the default
# batching. include()d at
# the end of tests/CMakeLists.txt. The plugins it needs are built here, into
# tests/plugins/ of the build tree, and their paths compiled into the test.
set(BB_SCHED_PLUGIN_DIR ${CMAKE_CURRENT_BINARY_DIR}/plugins)
function(bb_sched_plugin target src)
  add_library(${target} MODULE ${src})
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    OUTPUT_NAME ${target}
    C_VISIBILITY_PRESET hidden
    LIBRARY_OUTPUT_DIRECTORY ${BB_SCHED_PLUGIN_DIR})
  target_link_options(${target} PRIVATE ${BB_PLUGIN_LINK_OPTIONS})
endfunction()
bb_sched_plugin(bb_test_sched_recorder ${CMAKE_CURRENT_LIST_DIR}/plugins/sched_recorder.c)
bb_sched_plugin(bb_test_strategy_lowfirst ${CMAKE_CURRENT_LIST_DIR}/plugins/strategy_lowfirst.c)
bb_sched_plugin(bb_test_strategy_badabi ${CMAKE_CURRENT_LIST_DIR}/plugins/strategy_badabi.c)
bb_sched_plugin(bb_test_strategy_takenone ${CMAKE_CURRENT_LIST_DIR}/plugins/strategy_takenone.c)
bb_sched_plugin(bb_test_strategy_rogue ${CMAKE_CURRENT_LIST_DIR}/plugins/strategy_rogue.c)

# One suite per subsystem, with the helpers they share (sched_util.c).
set(BB_SCHED_SUITES priority starvation deadline backpressure fairness dedup batch_bytes strategy
    cancel default)
foreach(suite ${BB_SCHED_SUITES})
  set(t test_sched_${suite})
  bb_criterion_test(${t} ${CMAKE_CURRENT_LIST_DIR}/${t}.c ${CMAKE_CURRENT_LIST_DIR}/sched_util.c
                    ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
  target_compile_definitions(${t} PRIVATE
    BB_SCHED_RECORDER="$<TARGET_FILE:bb_test_sched_recorder>"
    BB_STRATEGY_LOWFIRST="$<TARGET_FILE:bb_test_strategy_lowfirst>"
    BB_STRATEGY_BADABI="$<TARGET_FILE:bb_test_strategy_badabi>"
    BB_STRATEGY_TAKENONE="$<TARGET_FILE:bb_test_strategy_takenone>"
    BB_STRATEGY_ROGUE="$<TARGET_FILE:bb_test_strategy_rogue>")
  add_dependencies(${t} bb_backend_synthetic bb_test_sched_recorder bb_test_strategy_lowfirst
                   bb_test_strategy_badabi bb_test_strategy_takenone bb_test_strategy_rogue)
endforeach()

# Dispatcher workers (issue 8): clients of two fake nodes on two workers, one
# model's batches across both.
bb_criterion_test(test_workers ${CMAKE_CURRENT_LIST_DIR}/test_workers.c
                  ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
target_compile_definitions(test_workers PRIVATE BB_SCHED_RECORDER="$<TARGET_FILE:bb_test_sched_recorder>")
add_dependencies(test_workers bb_test_sched_recorder bb_backend_v1echo)
