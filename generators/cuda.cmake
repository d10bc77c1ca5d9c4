# CUDA kernels (docs/CUDA.md): the same generators with the cuda feature, which selects the schedules of
# schedule_gpu.h. Halide emits PTX for cuda_capability_86 (the newest Halide 21 names); the driver compiles it at
# the first call for the GPU at hand (sm_90 on an H100). No CUDA toolkit or GPU is needed to build them; the
# runtime loads libcuda.so.1 when a CUDA function is first called. Affine only: the CUDA entry points take weight
# and bias (docs/CUDA.md). Included from generators/CMakeLists.txt; appends to cuda_kernel_targets and writes
# fusednorm_cuda_variant_table.h.
set(fusednorm_cuda_target x86-64-linux-sse41-large_buffers-cuda-cuda_capability_86)
# Generator parameters for every CUDA kernel's schedule, for schedule experiments (scripts/gpu_bundle.sh builds
# such variants side by side), e.g. "gpu_row_lanes=16". Empty: the schedules' defaults.
set(FUSEDNORM_CUDA_SCHEDULE_PARAMS "" CACHE STRING "Extra generator parameters of the CUDA kernels")
# (norm epilogues directions layouts)
set(fusednorm_cuda_kernels
  "batch none,relu,add_relu forward_training,forward_inference,backward nchw,nhwc"
  "group none forward_training,backward nchw,nhwc"
  "layer none forward_training,backward nchw"
  "rms none forward_training,backward nchw")
set(cuda_includes "")
set(cuda_rows "")
foreach (kernel IN LISTS fusednorm_cuda_kernels)
  string(REPLACE " " ";" kernel "${kernel}")
  list(GET kernel 0 norm)
  list(GET kernel 1 epilogues)
  list(GET kernel 2 directions)
  list(GET kernel 3 layouts)
  string(REPLACE "," ";" epilogues "${epilogues}")
  string(REPLACE "," ";" directions "${directions}")
  string(REPLACE "," ";" layouts "${layouts}")
  foreach (epilogue IN LISTS epilogues)
    foreach (direction IN LISTS directions)
      foreach (layout IN LISTS layouts)
        set(name ${norm}_norm)
        if (NOT epilogue STREQUAL "none")
          string(APPEND name _${epilogue})
        endif ()
        string(APPEND name _${direction})
        if (NOT (norm STREQUAL "layer" OR norm STREQUAL "rms"))
          string(APPEND name _${layout})
        endif ()
        string(APPEND name _affine_cuda)
        add_halide_library(${name}
          FROM FusedNorm::halide_generators::fusednorm_generators
          GENERATOR normalization_${direction}
          FUNCTION_NAME ${name}
          USE_RUNTIME fusednorm_halide_runtime
          TARGETS ${fusednorm_cuda_target}
          PARAMS norm=${norm} layout=${layout} epilogue=${epilogue} affine=true ${FUSEDNORM_CUDA_SCHEDULE_PARAMS}
          STMT stmt_${name}
          ASSEMBLY assembly_${name})
        list(APPEND cuda_kernel_targets ${name})
        string(APPEND cuda_includes "#include \"${name}.h\"\n")
        string(APPEND cuda_rows
          "    {Norm::${norm}, Direction::${direction}, Layout::${layout}, Epilogue::${epilogue}, true, DType::float32, Backend::cuda, "
          "Isa::cuda, \"hand\", \"${name}\", &${name}_argv, &${name}_metadata},\n")
      endforeach ()
    endforeach ()
  endforeach ()
endforeach ()
set(FUSEDNORM_CUDA_VARIANT_INCLUDES "${cuda_includes}")
set(FUSEDNORM_CUDA_VARIANT_ROWS "${cuda_rows}")
configure_file(cuda_variant_table.h.in "${CMAKE_CURRENT_BINARY_DIR}/fusednorm_cuda_variant_table.h" @ONLY)
