# fusednorm_add_kernel(<name>
#   NORM batch|instance|group|layer|rms
#   DIRECTIONS <forward_training|forward_inference|backward>...   forward_inference: NORM batch only
#   [LAYOUT nchw|nhwc]                      default nchw; layer and rms take rows and need nchw
#   [EPILOGUE none|relu|add_relu|silu]      default none
#   [AFFINE ON|OFF]                         weight and bias (RMSNorm: weight); default ON
#   [DTYPE float32|float16|bfloat16]        storage of x, z, y, dy, dx, dz; statistics stay float32; default float32
#   [TARGETS <halide target>...]            default host; e.g. x86-64-linux-avx2-fma-large_buffers, arm-64-linux
#   [SCHEDULE hand|Mullapudi2016|Li2018|Adams2019]   default hand
#   [USE_RUNTIME <halide runtime target>])
#
# Runs FusedNorm's installed generators at build time. For each direction it makes a static library
# <name>_<direction> whose header <name>_<direction>.h declares `int <name>_<direction>(halide_buffer_t* ...)`,
# with the arguments docs/KERNELS.md lists (in that order); <name> is an INTERFACE library linking them all.
# The kernels share one Halide runtime per set of targets unless the project passes its own with USE_RUNTIME.
# Autoscheduled kernels are planned for the generator's estimates (32x256x56x56, or 8192 rows of 1024) and may
# refuse smaller extents with a Halide bounds error (seen: Mullapudi2016 on C = 24); the hand schedule takes any
# shape.
function(fusednorm_add_kernel name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "NORM;LAYOUT;EPILOGUE;AFFINE;DTYPE;SCHEDULE;USE_RUNTIME"
                        "DIRECTIONS;TARGETS")
  set(where "fusednorm_add_kernel(${name})")
  if (arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "${where}: unknown arguments ${arg_UNPARSED_ARGUMENTS}")
  endif ()
  # _fusednorm_choose(<variable> <argument name> <default or ""> <allowed>...): the argument's value, checked.
  macro(_fusednorm_choose variable argument default)
    set(allowed_values ${ARGN})  # a macro's ARGN is text, not a variable IN_LIST can read
    set(${variable} "${arg_${argument}}")
    if (${variable} STREQUAL "")
      if ("${default}" STREQUAL "")
        message(FATAL_ERROR "${where}: ${argument} is missing, expected one of: ${ARGN}")
      endif ()
      set(${variable} "${default}")
    endif ()
    if (NOT ${variable} IN_LIST allowed_values)
      list(JOIN allowed_values ", " allowed)
      message(FATAL_ERROR "${where}: ${argument} is '${${variable}}', expected one of: ${allowed}")
    endif ()
  endmacro()
  _fusednorm_choose(norm NORM "" batch instance group layer rms)
  _fusednorm_choose(layout LAYOUT nchw nchw nhwc)
  _fusednorm_choose(epilogue EPILOGUE none none relu add_relu silu)
  _fusednorm_choose(dtype DTYPE float32 float32 float16 bfloat16)
  _fusednorm_choose(schedule SCHEDULE hand hand Mullapudi2016 Li2018 Adams2019)
  if (NOT arg_DIRECTIONS)
    message(FATAL_ERROR "${where}: DIRECTIONS is missing, expected one or more of: forward_training, "
                        "forward_inference, backward")
  endif ()
  foreach (direction IN LISTS arg_DIRECTIONS)
    if (NOT direction MATCHES "^(forward_training|forward_inference|backward)$")
      message(FATAL_ERROR "${where}: DIRECTIONS has '${direction}', expected forward_training, forward_inference "
                          "or backward")
    endif ()
    if (direction STREQUAL "forward_inference" AND NOT norm STREQUAL "batch")
      message(FATAL_ERROR "${where}: DIRECTIONS has forward_inference with NORM ${norm}; only batch has an "
                          "inference kernel (the others always normalize with their own statistics)")
    endif ()
  endforeach ()
  if (norm MATCHES "^(layer|rms)$" AND NOT layout STREQUAL "nchw")
    message(FATAL_ERROR "${where}: LAYOUT is '${layout}' with NORM ${norm}, expected nchw: ${norm} norm takes "
                        "rows (D, 1, R)")
  endif ()
  if (NOT DEFINED arg_AFFINE OR arg_AFFINE)
    set(affine true)
  else ()
    set(affine false)
  endif ()
  if (NOT arg_TARGETS)
    set(arg_TARGETS host)
  endif ()
  set(schedule_args "")
  if (NOT schedule STREQUAL "hand")
    set(schedule_args AUTOSCHEDULER Halide::${schedule})
  endif ()
  set(runtime_args "")
  if (arg_USE_RUNTIME)
    set(runtime_args USE_RUNTIME ${arg_USE_RUNTIME})
  endif ()

  add_library(${name} INTERFACE)
  foreach (direction IN LISTS arg_DIRECTIONS)
    add_halide_library(${name}_${direction}
      FROM FusedNorm::fusednorm_generators
      GENERATOR normalization_${direction}
      FUNCTION_NAME ${name}_${direction}
      TARGETS ${arg_TARGETS}
      PARAMS norm=${norm} layout=${layout} epilogue=${epilogue} affine=${affine} dtype=${dtype}
      ${schedule_args}
      ${runtime_args})
    target_link_libraries(${name} INTERFACE ${name}_${direction})
  endforeach ()
endfunction()
