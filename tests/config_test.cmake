# Configuration table (broker/config.c), compiled straight into the test so it
# needs nothing else from the broker. Included by tests/CMakeLists.txt.
bb_criterion_test(test_config test_config.c ${PROJECT_SOURCE_DIR}/broker/config.c
                  ${PROJECT_SOURCE_DIR}/broker/log.c)
target_link_libraries(test_config PRIVATE PkgConfig::INIH)
