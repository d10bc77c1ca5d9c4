# fusednorm_add_kernel(<name>
#   [NORM batch_norm]                                    the normalization (BatchNorm for now)
#   DIRECTION forward_training|forward_inference|backward
#   LAYOUT nchw|nhwc
#   [AFFINE ON|OFF]                                      weight and bias (default ON)
#   [TARGETS <halide target>...]                         default: host; e.g. x86-64-linux-avx2-fma-large_buffers
#   [SCHEDULE hand|Mullapudi2016|Li2018|Adams2019])      default: hand
#
# Runs FusedNorm's installed generator at build time and makes <name>, a static library, with <name>.h
# declaring `int <name>(halide_buffer_t* ...)` (arguments as in the installed kernels; see the generated
# header). Each kernel gets its own Halide runtime unless the project passes one in with USE_RUNTIME.
# Autoscheduled kernels are planned for the generator's estimates (32x256x56x56) and may refuse smaller extents
# with a Halide bounds error (seen: Mullapudi2016 on C = 24); the hand schedule takes any shape.
function(fusednorm_add_kernel name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "NORM;DIRECTION;LAYOUT;AFFINE;SCHEDULE;USE_RUNTIME" "TARGETS")
  if (arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "fusednorm_add_kernel(${name}): unknown arguments ${arg_UNPARSED_ARGUMENTS}")
  endif ()
  if (NOT arg_NORM)
    set(arg_NORM batch_norm)
  endif ()
  if (NOT arg_NORM STREQUAL "batch_norm")
    message(FATAL_ERROR "fusednorm_add_kernel(${name}): NORM is '${arg_NORM}', expected batch_norm")
  endif ()
  if (NOT arg_DIRECTION MATCHES "^(forward_training|forward_inference|backward)$")
    message(FATAL_ERROR "fusednorm_add_kernel(${name}): DIRECTION is '${arg_DIRECTION}', expected "
                        "forward_training, forward_inference or backward")
  endif ()
  if (NOT arg_LAYOUT MATCHES "^(nchw|nhwc)$")
    message(FATAL_ERROR "fusednorm_add_kernel(${name}): LAYOUT is '${arg_LAYOUT}', expected nchw or nhwc")
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
  if (arg_SCHEDULE AND NOT arg_SCHEDULE STREQUAL "hand")
    if (NOT arg_SCHEDULE MATCHES "^(Mullapudi2016|Li2018|Adams2019)$")
      message(FATAL_ERROR "fusednorm_add_kernel(${name}): SCHEDULE is '${arg_SCHEDULE}', expected hand, "
                          "Mullapudi2016, Li2018 or Adams2019")
    endif ()
    set(schedule_args AUTOSCHEDULER Halide::${arg_SCHEDULE})
  endif ()
  set(runtime_args "")
  if (arg_USE_RUNTIME)
    set(runtime_args USE_RUNTIME ${arg_USE_RUNTIME})
  endif ()
  add_halide_library(${name}
    FROM FusedNorm::fusednorm_generators
    GENERATOR ${arg_NORM}_${arg_DIRECTION}
    FUNCTION_NAME ${name}
    TARGETS ${arg_TARGETS}
    PARAMS layout=${arg_LAYOUT} affine=${affine}
    ${schedule_args}
    ${runtime_args})
endfunction()
