# The registration rows are written by the helper the main build's autoscheduled variants use too.
include("${CMAKE_CURRENT_LIST_DIR}/FusedNormRegistration.cmake")

# fusednorm_add_kernel(<name>
#   NORM batch|instance|group|layer|rms
#   DIRECTIONS <forward_training|forward_inference|backward>...   forward_inference: NORM batch only
#   [LAYOUT nchw|nhwc]                      default nchw; layer and rms take rows and need nchw
#   [EPILOGUE none|relu|add_relu|silu]      default none
#   [AFFINE ON|OFF]                         weight and bias (RMSNorm: weight); default ON
#   [DTYPE float32|float16|bfloat16]        storage of x, z, y, dy, dx, dz; statistics stay float32; default float32
#   [TARGETS <halide target>...]            default host; e.g. x86-64-linux-avx2-fma-large_buffers, arm-64-linux
#   [SCHEDULE hand|Mullapudi2016|Li2018|Adams2019])   default hand
#
# The package's component generator (find_package(FusedNorm COMPONENTS generator)): runs FusedNorm's installed
# generator at build time; no Halide installation is needed. For each direction it makes a static library
# <name>_<direction> whose header <name>_<direction>.h declares `int <name>_<direction>(halide_buffer_t* ...)`,
# with the arguments docs/KERNELS.md lists (in that order); <name> is an INTERFACE library linking them all.
#
# Kernels for the package's own architecture (TARGETS host, or x86-64-... in an x86-64 package) use
# libfusednorm's Halide runtime and register with its dispatch (fusednorm/kernel_registry.h), in every DTYPE:
# linking <name> is enough for the functional API and the layers to run them on tensors of that dtype, ahead of the
# built-in kernels, with the same checks, and fusednorm::Error for every failure. Calling <name>_<direction>()
# directly is the raw escape hatch: no checks, and Halide's default error handler (which aborts) until the first
# call through the API installs FusedNorm's. Kernels for another architecture
# (arm-64-linux from an x86-64 package) carry their own Halide runtime, for that architecture's build to link.
# Autoscheduled kernels are planned for the generator's estimates (32x256x56x56, or 8192 rows of 1024) and may
# refuse smaller extents with a Halide bounds error (seen: Mullapudi2016 on C = 24); the hand schedule takes any
# shape. `host` targets the CPU of the machine that builds.
function(fusednorm_add_kernel name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "NORM;LAYOUT;EPILOGUE;AFFINE;DTYPE;SCHEDULE" "DIRECTIONS;TARGETS")
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
  # Targets of the package's architecture run on libfusednorm's Halide runtime (no_runtime); Halide requires one
  # architecture per library.
  set(native "")
  foreach (target IN LISTS arg_TARGETS)
    if (target MATCHES "^host(-|$)" OR target MATCHES "^${FusedNorm_ARCH}-")
      set(this_native TRUE)
    else ()
      set(this_native FALSE)
    endif ()
    if (NOT native STREQUAL "" AND NOT native STREQUAL this_native)
      message(FATAL_ERROR "${where}: TARGETS mixes ${FusedNorm_ARCH} (or host) with other architectures; make one "
                          "kernel per architecture")
    endif ()
    set(native ${this_native})
  endforeach ()
  set(targets ${arg_TARGETS})
  if (native)
    list(TRANSFORM targets APPEND "-no_runtime")
  endif ()
  list(JOIN targets "," targets)

  set(schedule_args "")
  if (NOT schedule STREQUAL "hand")
    string(TOLOWER "${schedule}" plugin)
    set(schedule_args -p "${FusedNorm_GENERATOR_DIR}/libautoschedule_${plugin}.so" "autoscheduler=${schedule}")
  endif ()

  set(directory "${CMAKE_CURRENT_BINARY_DIR}/${name}.fusednorm")
  file(MAKE_DIRECTORY "${directory}")
  add_library(${name} INTERFACE)
  set(registration_rows "")
  set(registration_declarations "")
  foreach (direction IN LISTS arg_DIRECTIONS)
    set(function ${name}_${direction})
    add_custom_command(
      OUTPUT "${directory}/${function}.a" "${directory}/${function}.h"
      COMMAND FusedNorm::fusednorm_generators -g normalization_${direction} -f ${function} -n ${function}
              -e static_library,c_header -o "${directory}" ${schedule_args} "target=${targets}"
              norm=${norm} layout=${layout} epilogue=${epilogue} affine=${affine} dtype=${dtype}
      DEPENDS FusedNorm::fusednorm_generators
      COMMENT "FusedNorm: generating ${function} (${norm} ${direction} ${layout} ${epilogue}, ${targets})"
      VERBATIM)
    add_custom_target(${function}.generate DEPENDS "${directory}/${function}.a" "${directory}/${function}.h")
    add_library(${function} STATIC IMPORTED GLOBAL)
    set_target_properties(${function} PROPERTIES IMPORTED_LOCATION "${directory}/${function}.a")
    target_include_directories(${function} INTERFACE "${directory}" "${FusedNorm_HALIDE_INCLUDE_DIR}")
    add_dependencies(${function} ${function}.generate)
    if (native)
      target_link_libraries(${function} INTERFACE FusedNorm::fusednorm)
    endif ()
    target_link_libraries(${name} INTERFACE ${function})
    _fusednorm_registration_row(row ${function} ${norm} ${direction} ${layout} ${epilogue} ${affine} ${schedule})
    string(APPEND registration_rows "${row}")
    string(APPEND registration_declarations "extern \"C\" int ${function}_argv(void** args);\n"
                                            "extern \"C\" const halide_filter_metadata_t* ${function}_metadata();\n")
  endforeach ()

  # The registration, compiled into each target that links <name>: an object of the program itself, so it is
  # always linked (registering twice is harmless).
  if (native)
    file(CONFIGURE OUTPUT "${directory}/${name}_registration.cpp" @ONLY CONTENT [=[
// Generated by fusednorm_add_kernel(@name@): registers its kernels with FusedNorm's dispatch. Do not edit.
#include <fusednorm/kernel_registry.h>

#include <iterator>

@registration_declarations@
namespace {
const fusednorm::KernelRegistration kKernels[] = {
@registration_rows@};
[[maybe_unused]] const int registered = (fusednorm::register_kernels(kKernels, std::size(kKernels)), 0);
}  // namespace
]=])
    target_sources(${name} INTERFACE "${directory}/${name}_registration.cpp")
  endif ()
endfunction()
