# CUDA kernels (docs/CUDA.md): the same generators with the cuda feature, which selects the schedules of
# schedule_gpu.h. Halide emits PTX for cuda_capability_86 (the newest Halide 21 names); the driver compiles it at
# the first call for the GPU at hand (sm_90 on an H100). No CUDA toolkit or GPU is needed to build them; the
# runtime loads libcuda.so.1 when a CUDA function is first called. Affine only: a call without weight and bias
# runs them with 1 and 0 (docs/CUDA.md). Included from generators/CMakeLists.txt, whose
# fusednorm_write_variant_table() writes their table, fusednorm_cuda_variant_table.h.
set(fusednorm_isa_target_cuda x86-64-linux-sse41-large_buffers-cuda-cuda_capability_86)
# Generator parameters for every CUDA kernel's schedule, for schedule experiments (scripts/gpu_bundle.sh builds
# such variants side by side), e.g. "gpu_row_lanes=16". Empty: the schedules' defaults.
set(FUSEDNORM_CUDA_SCHEDULE_PARAMS "" CACHE STRING "Extra generator parameters of the CUDA kernels")
# (norm epilogues directions layouts)
set(fusednorm_cuda_kernels
  "batch none,relu,add_relu forward_training,forward_inference,backward nchw,nhwc"
  "group none forward_training,backward nchw,nhwc"
  "layer none forward_training,backward nchw"
  "rms none forward_training,backward nchw")
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
        fusednorm_variant(NORM ${norm} DIRECTION ${direction} LAYOUT ${layout} EPILOGUE ${epilogue} AFFINE true
                          ISA cuda PARAMS ${FUSEDNORM_CUDA_SCHEDULE_PARAMS})
      endforeach ()
    endforeach ()
  endforeach ()
endforeach ()
# SyncBatchNorm's split kernels (fusednorm/kinds.h), as generators/CMakeLists.txt makes them for the CPU: the
# statistics of x alone (plain), backward_reduce and backward_elementwise per epilogue (affine).
foreach (layout IN ITEMS nchw nhwc)
  fusednorm_variant(NORM batch DIRECTION statistics LAYOUT ${layout} EPILOGUE none AFFINE false ISA cuda
                    PARAMS ${FUSEDNORM_CUDA_SCHEDULE_PARAMS})
  foreach (epilogue IN ITEMS none relu add_relu)
    foreach (direction IN ITEMS backward_reduce backward_elementwise)
      fusednorm_variant(NORM batch DIRECTION ${direction} LAYOUT ${layout} EPILOGUE ${epilogue} AFFINE true ISA cuda
                        PARAMS ${FUSEDNORM_CUDA_SCHEDULE_PARAMS})
    endforeach ()
  endforeach ()
endforeach ()
