# Which optional backends this build has (BB_BUILD_BLAS/TORCH/CUDA = AUTO, ON
# or OFF, top-level CMakeLists.txt). Each sets BB_HAVE_<NAME> and prints one
# line saying what it found or why the backend is not built. Included at the
# top level: enable_language(CUDA) belongs there.

# blas: OpenBLAS itself (libopenblas.so.0 has openblas_set_num_threads, which
# the generic libblas.so.3 interface lacks). Debian: libopenblas-dev.
set(BB_HAVE_BLAS OFF)
if(NOT BB_BUILD_BLAS STREQUAL "OFF")
  pkg_check_modules(OPENBLAS IMPORTED_TARGET openblas)
  if(OPENBLAS_FOUND)
    set(BB_HAVE_BLAS ON)
    message(STATUS "blas backend: built (OpenBLAS ${OPENBLAS_VERSION})")
  elseif(BB_BUILD_BLAS STREQUAL "ON")
    message(FATAL_ERROR "BB_BUILD_BLAS=ON but pkg-config finds no openblas "
                        "(Debian: apt-get install libopenblas-dev)")
  else()
    message(STATUS "blas backend: not built: pkg-config finds no openblas "
                   "(Debian: libopenblas-dev)")
  endif()
else()
  message(STATUS "blas backend: not built (BB_BUILD_BLAS=OFF)")
endif()

# torch: libtorch's CMake package (Debian: libtorch-dev). Its CMake files
# print a lot; QUIET keeps a missing one to our own line.
set(BB_HAVE_TORCH OFF)
if(NOT BB_BUILD_TORCH STREQUAL "OFF")
  find_package(Torch QUIET)
  if(Torch_FOUND OR TORCH_FOUND)
    set(BB_HAVE_TORCH ON)
    message(STATUS "torch backend: built (libtorch in ${TORCH_INSTALL_PREFIX})")
  elseif(BB_BUILD_TORCH STREQUAL "ON")
    message(FATAL_ERROR "BB_BUILD_TORCH=ON but CMake finds no Torch package "
                        "(Debian: apt-get install libtorch-dev libopenblas0; or set Torch_DIR)")
  else()
    message(STATUS "torch backend: not built: CMake finds no Torch package "
                   "(Debian: libtorch-dev; or set Torch_DIR)")
  endif()
else()
  message(STATUS "torch backend: not built (BB_BUILD_TORCH=OFF)")
endif()

# cuda: a CUDA compiler and cuBLAS. nvcc is looked for on PATH, then in
# /usr/local/cuda/bin, where the toolkit installs itself.
set(BB_HAVE_CUDA OFF)
set(BB_CUDA_ARCHITECTURES "90" CACHE STRING
    "GPU architectures of the cuda backend (CMAKE_CUDA_ARCHITECTURES syntax: 90 = H100)")
if(NOT BB_BUILD_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS /usr/local/cuda/bin/nvcc)
    find_program(bb_nvcc nvcc)
    if(NOT bb_nvcc)
      set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_ARCHITECTURES ${BB_CUDA_ARCHITECTURES})
    enable_language(CUDA)
    # The runtime and cuBLAS of the toolkit nvcc belongs to. Not through
    # FindCUDAToolkit: the one of Debian 12's CMake 3.25 stops configuring
    # with CUDA 13, which no longer ships nvToolsExt.
    get_filename_component(bb_cuda_root "${CMAKE_CUDA_COMPILER}" DIRECTORY)
    get_filename_component(bb_cuda_root "${bb_cuda_root}" DIRECTORY)
    set(bb_cuda_libdirs ${CMAKE_CUDA_IMPLICIT_LINK_DIRECTORIES} ${bb_cuda_root}/lib64
        ${bb_cuda_root}/targets/x86_64-linux/lib ${bb_cuda_root}/lib)
    find_library(BB_CUDART_LIBRARY cudart HINTS ${bb_cuda_libdirs} NO_DEFAULT_PATH)
    find_library(BB_CUBLAS_LIBRARY cublas HINTS ${bb_cuda_libdirs} NO_DEFAULT_PATH)
    find_path(BB_CUDA_INCLUDE_DIR cuda_runtime_api.h
              HINTS ${CMAKE_CUDA_TOOLKIT_INCLUDE_DIRECTORIES} ${bb_cuda_root}/include
                    ${bb_cuda_root}/targets/x86_64-linux/include NO_DEFAULT_PATH)
    if(BB_CUDART_LIBRARY AND BB_CUBLAS_LIBRARY AND BB_CUDA_INCLUDE_DIR)
      add_library(bb_cudart INTERFACE IMPORTED GLOBAL)
      target_include_directories(bb_cudart INTERFACE ${BB_CUDA_INCLUDE_DIR})
      target_link_libraries(bb_cudart INTERFACE ${BB_CUDART_LIBRARY})
      add_library(bb_cublas INTERFACE IMPORTED GLOBAL)
      target_link_libraries(bb_cublas INTERFACE ${BB_CUBLAS_LIBRARY} bb_cudart)
    endif()
  endif()
  if(CMAKE_CUDA_COMPILER AND TARGET bb_cublas)
    set(BB_HAVE_CUDA ON)
    # nvcc's own warnings, and the gcc set for the host code it hands on
    # (through -Xcompiler: nvcc itself rejects -Wall and friends).
    set(BB_CUDA_WARNINGS "-Xcompiler=-Wall,-Wextra,-Wshadow,-Wno-unused-parameter")
    if(BB_WERROR)
      list(APPEND BB_CUDA_WARNINGS -Werror=all-warnings "-Xcompiler=-Werror")
    endif()
    message(STATUS "cuda backend: built (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
                   "architectures ${CMAKE_CUDA_ARCHITECTURES})")
  elseif(BB_BUILD_CUDA STREQUAL "ON")
    message(FATAL_ERROR "BB_BUILD_CUDA=ON but no CUDA compiler with cuBLAS was found "
                        "(put nvcc on PATH or set CMAKE_CUDA_COMPILER)")
  else()
    message(STATUS "cuda backend: not built: no CUDA compiler with cuBLAS "
                   "(nvcc on PATH or in /usr/local/cuda/bin)")
  endif()
else()
  message(STATUS "cuda backend: not built (BB_BUILD_CUDA=OFF)")
endif()
