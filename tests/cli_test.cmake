# The command-line checks (tests/cli/, pytest): batchbroker, bbctl and
# bb-bench as a newcomer uses them. Same interpreter and environment as the
# Python client's tests (python/CMakeLists.txt), which they use to hold
# connections. include()d from tests/CMakeLists.txt.
if(BB_PY_TEST_ENV)
  add_test(NAME cli_tools
           COMMAND ${BB_PYTEST_PYTHON} -m pytest -q -rs -p no:cacheprovider ${CMAKE_CURRENT_LIST_DIR}/cli)
  set_tests_properties(cli_tools PROPERTIES TIMEOUT 600 ENVIRONMENT "${BB_PY_TEST_ENV}")
endif()
