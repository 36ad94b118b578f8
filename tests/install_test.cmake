# Install checks (tests/install/): the build installed into a fresh prefix
# under the build tree (the install_prefix fixture), then examples/hello.c
# built three ways against it, the layout, the man pages, the systemd unit and
# the container recipe. include()d from tests/CMakeLists.txt.
if(BB_INSTALL AND BB_BUILD_EXAMPLES)
  set(bb_prefix ${PROJECT_BINARY_DIR}/test-install)
  set(bb_dir ${CMAKE_CURRENT_LIST_DIR}/install)
  add_test(NAME install_prefix COMMAND bash ${bb_dir}/install.sh ${bb_prefix} ${PROJECT_BINARY_DIR})
  set_tests_properties(install_prefix PROPERTIES FIXTURES_SETUP bb_installed TIMEOUT 120)
  foreach(check consumers layout systemd pidns)
    add_test(NAME install_${check}
             COMMAND bash ${bb_dir}/check_${check}.sh ${bb_prefix} ${PROJECT_SOURCE_DIR}
                     ${PROJECT_BINARY_DIR})
    set_tests_properties(install_${check} PROPERTIES FIXTURES_REQUIRED bb_installed
                         TIMEOUT 300 SKIP_RETURN_CODE 77)
  endforeach()
endif()
if(BB_BUILD_EXAMPLES)
  add_test(NAME readme_commands COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/install/check_readme.sh
                                        ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  set_tests_properties(readme_commands PROPERTIES TIMEOUT 120)
endif()
add_test(NAME cmake_options COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/install/check_cmake_options.sh
                                    ${PROJECT_SOURCE_DIR})
set_tests_properties(cmake_options PROPERTIES TIMEOUT 300)
