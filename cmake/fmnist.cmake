# The demo model: scripts/train_fmnist.py trains a 784-256-10 network on
# Debian's Fashion-MNIST (dataset-fashion-mnist) at build time, in seconds,
# into BB_MODEL_DIR (fmnist.bbdense for blas/cuda, fmnist.pt for torch).
# Needs a Python that imports torch (Debian: python3-torch, seen by
# /usr/bin/python3 only) and the dataset; without them the model is not
# trained, and the tests and demo that need it say so and skip.
set(BB_FMNIST_DIR "/usr/share/datasets/fashion-mnist" CACHE PATH
    "Directory of the Fashion-MNIST IDX files (*-idx?-ubyte.gz)")
set(BB_PYTHON "" CACHE FILEPATH
    "Python with PyTorch that trains the demo model (default: /usr/bin/python3, then python3)")

set(BB_HAVE_FMNIST_DATA OFF)
set(BB_PYTHON_TORCH "")   # the Python found with torch, for other generated files
set(BB_HAVE_FMNIST_MODEL OFF)
set(bb_fmnist_files t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz
    train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz)
set(bb_fmnist_missing)
foreach(f ${bb_fmnist_files})
  if(NOT EXISTS "${BB_FMNIST_DIR}/${f}")
    list(APPEND bb_fmnist_missing ${f})
  endif()
endforeach()

set(bb_python_ok "")
if(BB_PYTHON)
  set(bb_python_candidates "${BB_PYTHON}")
else()
  set(bb_python_candidates /usr/bin/python3)
  find_program(bb_path_python3 python3)
  if(bb_path_python3)
    list(APPEND bb_python_candidates "${bb_path_python3}")
  endif()
endif()
foreach(py ${bb_python_candidates})
  if(NOT bb_python_ok AND EXISTS "${py}")
    execute_process(COMMAND "${py}" -c "import torch" RESULT_VARIABLE rc
                    OUTPUT_QUIET ERROR_QUIET TIMEOUT 120)
    if(rc EQUAL 0)
      set(bb_python_ok "${py}")
    endif()
  endif()
endforeach()

if(bb_fmnist_missing)
  message(STATUS "Fashion-MNIST: not found in ${BB_FMNIST_DIR} (no ${bb_fmnist_missing}); "
                 "install dataset-fashion-mnist or set BB_FMNIST_DIR: the model is not trained, "
                 "its tests skip")
elseif(NOT bb_python_ok)
  set(BB_HAVE_FMNIST_DATA ON)
  message(STATUS "Fashion-MNIST model: no Python with PyTorch (tried ${bb_python_candidates}; "
                 "Debian: python3-torch, or set BB_PYTHON): the model is not trained, its tests skip")
else()
  set(BB_HAVE_FMNIST_DATA ON)
  set(BB_HAVE_FMNIST_MODEL ON)
  set(BB_PYTHON_TORCH "${bb_python_ok}")
  message(STATUS "Fashion-MNIST model: trained at build time by ${bb_python_ok} into ${BB_MODEL_DIR}")
  add_custom_command(
    OUTPUT ${BB_MODEL_DIR}/fmnist.bbdense ${BB_MODEL_DIR}/fmnist.pt
    COMMAND "${bb_python_ok}" ${PROJECT_SOURCE_DIR}/scripts/train_fmnist.py
            --data "${BB_FMNIST_DIR}" --out ${BB_MODEL_DIR}
    DEPENDS ${PROJECT_SOURCE_DIR}/scripts/train_fmnist.py
    COMMENT "Training the Fashion-MNIST demo model (a few seconds)"
    VERBATIM)
  add_custom_target(bb_fmnist_model ALL
    DEPENDS ${BB_MODEL_DIR}/fmnist.bbdense ${BB_MODEL_DIR}/fmnist.pt)
endif()
