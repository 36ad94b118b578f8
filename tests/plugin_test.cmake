# Plugin loader and built-in backends (include()d from tests/CMakeLists.txt).
bb_criterion_test(test_plugin ${CMAKE_CURRENT_LIST_DIR}/test_plugin.c ${PROJECT_SOURCE_DIR}/broker/plugin.c
                  ${PROJECT_SOURCE_DIR}/common/install_dir.c
                  ${PROJECT_SOURCE_DIR}/broker/log.c)
target_link_libraries(test_plugin PRIVATE ${CMAKE_DL_LIBS})
add_dependencies(test_plugin bb_backend_echo bb_backend_synthetic bb_backend_badabi
                 bb_backend_noentry bb_backend_v1echo bb_backend_asyncecho ${BB_BADTABLE_PLUGINS})

# The backend ABI served by a broker: version-1 and asynchronous version-2
# test plugins (tests/plugins/v1echo.c, asyncecho.c).
bb_criterion_test(test_backend_abi ${CMAKE_CURRENT_LIST_DIR}/test_backend_abi.c
                  ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/test_util.c)
add_dependencies(test_backend_abi bb_backend_v1echo bb_backend_asyncecho)
