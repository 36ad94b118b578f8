bb_criterion_test(test_adaptive ${CMAKE_CURRENT_LIST_DIR}/test_adaptive.c
  ${PROJECT_SOURCE_DIR}/broker/adaptive.c)
target_link_libraries(test_adaptive PRIVATE m)
