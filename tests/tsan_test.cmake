# ThreadSanitizer: the broker and a multi-threaded client, both instrumented,
# as plain executables (TSan cannot run under Criterion). A race reported in
# either process fails the test.
option(BB_TSAN_TEST "Build and run the ThreadSanitizer stress test" ON)
# ThreadSanitizer cannot share a process with the others (BB_SANITIZE).
if(BB_TSAN_TEST AND NOT BB_SANITIZE)
  add_executable(batchbroker_tsan ${PROJECT_SOURCE_DIR}/broker/main.c ${BB_BROKER_LIB_SOURCES})
  target_include_directories(batchbroker_tsan PRIVATE ${PROJECT_SOURCE_DIR}/broker)
  target_compile_definitions(batchbroker_tsan PRIVATE BB_PLUGIN_DIR="${BB_PLUGIN_DIR}")
  target_compile_options(batchbroker_tsan PRIVATE -fsanitize=thread -O1 -g -Wno-tsan)
  target_link_options(batchbroker_tsan PRIVATE -fsanitize=thread)
  target_link_libraries(batchbroker_tsan PRIVATE ${BB_BROKER_LIBS})
  add_dependencies(batchbroker_tsan bb_backend_echo)

  add_executable(tsan_stress ${CMAKE_CURRENT_LIST_DIR}/tsan_stress.c ${CMAKE_CURRENT_LIST_DIR}/harness.c
    ${PROJECT_SOURCE_DIR}/client/client.c ${PROJECT_SOURCE_DIR}/client/alloc.c
    ${PROJECT_SOURCE_DIR}/common/errors.c)
  target_include_directories(tsan_stress PRIVATE ${PROJECT_SOURCE_DIR}/tests ${PROJECT_SOURCE_DIR}/client)
  target_compile_definitions(tsan_stress PRIVATE
    BB_BROKER_BIN="$<TARGET_FILE:batchbroker_tsan>" BB_PLUGIN_DIR="${BB_PLUGIN_DIR}")
  target_compile_options(tsan_stress PRIVATE -fsanitize=thread -O1 -g -Wno-tsan)
  target_link_options(tsan_stress PRIVATE -fsanitize=thread)
  target_link_libraries(tsan_stress PRIVATE Threads::Threads)
  add_dependencies(tsan_stress batchbroker_tsan)
  # The asynchronous backend of version 2, instrumented too: batches complete
  # on the plugin's thread, segments are registered on the broker's
  # registration thread.
  add_library(bb_backend_asyncecho_tsan MODULE ${CMAKE_CURRENT_LIST_DIR}/plugins/asyncecho.c)
  set_target_properties(bb_backend_asyncecho_tsan PROPERTIES PREFIX "" C_VISIBILITY_PRESET hidden)
  target_compile_options(bb_backend_asyncecho_tsan PRIVATE -fsanitize=thread -O1 -g -Wno-tsan)
  target_link_options(bb_backend_asyncecho_tsan PRIVATE -fsanitize=thread)
  target_link_libraries(bb_backend_asyncecho_tsan PRIVATE Threads::Threads)
  add_dependencies(tsan_stress bb_backend_asyncecho_tsan)
  add_test(NAME tsan_stress COMMAND tsan_stress)
  # Echo under TSan takes more than the default 2 us a batch: a bound of 1 ms
  # has the dispatcher run batches itself whenever both executors idle, so
  # that path races the executors' here.
  set_tests_properties(tsan_stress PROPERTIES ENVIRONMENT "BBT_BROKER_OVERRIDES=model.echo.inline_max_us=1000")
  # The same with two workers: requests and completions cross the mailboxes.
  # Every batch on an executor there (inline_max_us = 0).
  add_test(NAME tsan_stress_2workers COMMAND tsan_stress)
  set_tests_properties(tsan_stress_2workers PROPERTIES
    ENVIRONMENT "BBT_BROKER_OVERRIDES=broker.workers=2 broker.numa_fake_nodes=2 model.echo.inline_max_us=0")
  # formation = per_worker: each worker's replica of the model forms its own
  # batches; statistics are read across the replicas.
  add_test(NAME tsan_stress_per_worker COMMAND tsan_stress)
  set_tests_properties(tsan_stress_per_worker PROPERTIES
    ENVIRONMENT "BBT_BROKER_OVERRIDES=broker.workers=2 broker.numa_fake_nodes=2 model.echo.formation=per_worker model.echo.inline_max_us=0")
  # One client of four lanes (bb_connect_lanes) over two workers, per_worker:
  # the client library's lanes under TSan too.
  add_test(NAME tsan_stress_lanes COMMAND tsan_stress)
  set_tests_properties(tsan_stress_lanes PROPERTIES
    ENVIRONMENT "TSAN_STRESS_LANES=4;BBT_BROKER_OVERRIDES=broker.workers=2 model.echo.formation=per_worker model.echo.inline_max_us=0")
  add_test(NAME tsan_stress_async COMMAND tsan_stress $<TARGET_FILE:bb_backend_asyncecho_tsan>)
  add_test(NAME tsan_stress_async_2workers COMMAND tsan_stress $<TARGET_FILE:bb_backend_asyncecho_tsan>)
  set_tests_properties(tsan_stress_async_2workers PROPERTIES
    ENVIRONMENT "BBT_BROKER_OVERRIDES=broker.workers=2 broker.numa_fake_nodes=2")
  set_tests_properties(tsan_stress tsan_stress_2workers tsan_stress_per_worker tsan_stress_lanes
    tsan_stress_async tsan_stress_async_2workers PROPERTIES TIMEOUT 300)

  # The statistics' single-writer contract on its own, with window copies
  # every few ms of a fake clock instead of every 5 s.
  add_executable(tsan_metrics ${CMAKE_CURRENT_LIST_DIR}/tsan_metrics.c ${PROJECT_SOURCE_DIR}/broker/metrics.c)
  target_include_directories(tsan_metrics PRIVATE ${PROJECT_SOURCE_DIR}/broker)
  target_compile_options(tsan_metrics PRIVATE -fsanitize=thread -O1 -g -Wno-tsan)
  target_link_options(tsan_metrics PRIVATE -fsanitize=thread)
  target_link_libraries(tsan_metrics PRIVATE Threads::Threads)
  add_test(NAME tsan_metrics COMMAND tsan_metrics)
  set_tests_properties(tsan_metrics PROPERTIES TIMEOUT 300 ENVIRONMENT "TSAN_OPTIONS=exitcode=66")
endif()
