# Backend suites (include()d from tests/CMakeLists.txt): one per backend that
# this build has. classify.c is the Fashion-MNIST machinery they share; the
# model files come from the build (cmake/fmnist.cmake), the dataset from
# BB_FMNIST_DIR. A suite whose model or dataset is missing skips its
# Fashion-MNIST tests with the reason.
function(bb_backend_test name backend)
  bb_criterion_test(${name} ${ARGN} ${CMAKE_CURRENT_LIST_DIR}/classify.c
                    ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/netfile.c
                    ${PROJECT_SOURCE_DIR}/backends/bbdense.c)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/backends)
  target_compile_definitions(${name} PRIVATE BB_MODEL_DIR="${BB_MODEL_DIR}")
  target_link_libraries(${name} PRIVATE bbfmnist ZLIB::ZLIB ${CMAKE_DL_LIBS} m)
  add_dependencies(${name} bb_backend_${backend})
  if(TARGET bb_fmnist_model)
    add_dependencies(${name} bb_fmnist_model)
  endif()
endfunction()

if(BB_HAVE_BLAS)
  bb_backend_test(test_backend_blas blas ${CMAKE_CURRENT_LIST_DIR}/test_backend_blas.c)
  # The demo (examples/classify.c) runs in two of its tests, which skip
  # without it (BB_BUILD_EXAMPLES=OFF).
  if(TARGET bb-classify)
    target_compile_definitions(test_backend_blas PRIVATE BB_CLASSIFY_BIN="$<TARGET_FILE:bb-classify>")
    add_dependencies(test_backend_blas bb-classify)
  else()
    target_compile_definitions(test_backend_blas PRIVATE BB_CLASSIFY_BIN="")
  endif()
endif()

if(BB_HAVE_TORCH)
  bb_backend_test(test_backend_torch torch ${CMAKE_CURRENT_LIST_DIR}/test_backend_torch.c)
  if(BB_PYTHON_TORCH)
    add_custom_command(
      OUTPUT ${BB_MODEL_DIR}/raises.pt ${BB_MODEL_DIR}/tuple.pt
             ${BB_MODEL_DIR}/mutates.pt ${BB_MODEL_DIR}/batch1.pt
      COMMAND "${BB_PYTHON_TORCH}" ${CMAKE_CURRENT_LIST_DIR}/make_torch_fixtures.py ${BB_MODEL_DIR}
      DEPENDS ${CMAKE_CURRENT_LIST_DIR}/make_torch_fixtures.py
      COMMENT "TorchScript fixtures of test_backend_torch"
      VERBATIM)
    add_custom_target(bb_torch_fixtures DEPENDS ${BB_MODEL_DIR}/raises.pt ${BB_MODEL_DIR}/tuple.pt
                                                ${BB_MODEL_DIR}/mutates.pt ${BB_MODEL_DIR}/batch1.pt)
    add_dependencies(test_backend_torch bb_torch_fixtures)
  endif()
endif()

# The public headers a C++ program includes compile cleanly as C++ (a
# compile-only check, part of the default build).
add_library(bb_cxx_headers OBJECT ${CMAKE_CURRENT_LIST_DIR}/cxx_headers.cpp)
target_compile_options(bb_cxx_headers PRIVATE -pedantic)

if(BB_HAVE_CUDA)
  bb_backend_test(test_backend_cuda cuda ${CMAKE_CURRENT_LIST_DIR}/test_backend_cuda.c)
  target_link_libraries(test_backend_cuda PRIVATE bb_cudart)
  add_executable(cuda_probe ${CMAKE_CURRENT_LIST_DIR}/cuda_probe.c)
  target_link_libraries(cuda_probe PRIVATE bb_cudart)
  add_test(NAME cuda_device COMMAND cuda_probe)
  set_tests_properties(cuda_device PROPERTIES SKIP_RETURN_CODE 77)
else()
  # Visible in ctest's summary as skipped, with the reason in its output.
  add_test(NAME test_backend_cuda
           COMMAND sh -c "echo 'SKIPPED: the cuda backend is not built (the configure output says why)'; exit 77")
  set_tests_properties(test_backend_cuda PROPERTIES SKIP_RETURN_CODE 77)
endif()
