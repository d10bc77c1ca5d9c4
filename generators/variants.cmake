# One kernel variant of the main build, declared once: its name, its add_halide_library() and its row in the
# generated table it belongs to. The hand-scheduled CPU kernels and the autoscheduled ones
# (generators/CMakeLists.txt) and the CUDA kernels (generators/cuda.cmake) all go through fusednorm_variant(), so
# their names and rows cannot drift apart. Included from generators/CMakeLists.txt.
include("${PROJECT_SOURCE_DIR}/cmake/FusedNormRegistration.cmake")

set(fusednorm_variant_one_value_keywords NORM DIRECTION LAYOUT EPILOGUE AFFINE DTYPE ISA AUTOSCHEDULER)

# fusednorm_variant_name(<variable> NORM <norm> DIRECTION <direction> LAYOUT <layout> EPILOGUE <epilogue>
#                        AFFINE <bool> [DTYPE <dtype>] ISA <isa> [AUTOSCHEDULER <autoscheduler>] [PARAMS ...])
# Sets <variable> to the variant's name, the kernel's function and target:
#   <norm>_norm[_<epilogue>]_<direction>[_<layout>]_<affine|plain>[_<dtype>]_<isa>[_<autoscheduler, lowercase>]
# with no epilogue token for none, no layout token for layer and rms (their rows are always nchw) and no dtype token
# for float32 (the default). PARAMS is
# accepted and ignored, so that a caller can pass the same arguments as to fusednorm_variant().
function(fusednorm_variant_name variable)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "${fusednorm_variant_one_value_keywords}" "PARAMS")
  if (arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "fusednorm_variant: unknown arguments ${arg_UNPARSED_ARGUMENTS}")
  endif ()
  foreach (keyword IN ITEMS NORM DIRECTION LAYOUT EPILOGUE AFFINE ISA)
    if ("${arg_${keyword}}" STREQUAL "")
      message(FATAL_ERROR "fusednorm_variant: ${keyword} is missing")
    endif ()
  endforeach ()
  set(name ${arg_NORM}_norm)
  if (NOT arg_EPILOGUE STREQUAL "none")
    string(APPEND name _${arg_EPILOGUE})
  endif ()
  string(APPEND name _${arg_DIRECTION})
  if (NOT arg_NORM MATCHES "^(layer|rms)$")
    string(APPEND name _${arg_LAYOUT})
  endif ()
  if (arg_AFFINE)
    string(APPEND name _affine)
  else ()
    string(APPEND name _plain)
  endif ()
  if (arg_DTYPE AND NOT arg_DTYPE STREQUAL "float32")
    string(APPEND name _${arg_DTYPE})
  endif ()
  string(APPEND name _${arg_ISA})
  if (arg_AUTOSCHEDULER)
    string(TOLOWER "${arg_AUTOSCHEDULER}" suffix)
    string(APPEND name _${suffix})
  endif ()
  set(${variable} ${name} PARENT_SCOPE)
endfunction()

# fusednorm_variant(NORM batch|instance|group|layer|rms
#                   DIRECTION forward_training|forward_inference|backward|statistics|backward_reduce|
#                             backward_elementwise
#                   LAYOUT nchw|nhwc  EPILOGUE none|relu|add_relu|silu  AFFINE <bool>
#                   [DTYPE float32|bfloat16|float16]  ISA avx512|avx2|sse41|neon|cuda
#                   [AUTOSCHEDULER Mullapudi2016|Li2018|Adams2019]
#                   [PARAMS <generator parameter>=<value>...])
# Builds the kernel <name> (fusednorm_variant_name()) for the Halide target ${fusednorm_isa_target_<isa>} of the
# calling scope, on the one Halide runtime fusednorm_halide_runtime, with its lowered STMT beside it (and the PTX
# assembly of a CUDA kernel, the schedule of an autoscheduled one), and adds it to its table:
#   cuda           ISA cuda: fusednorm_cuda_variant_table.h (KernelVariant rows, Backend::cuda, schedule "hand");
#   autoscheduled  AUTOSCHEDULER given: fusednorm_autoscheduled_registration.cpp (KernelRegistration rows);
#   builtin        otherwise: fusednorm_variant_table.h (KernelVariant rows, Backend::cpu, schedule "hand").
# fusednorm_write_variant_table() writes a table once all its variants are declared.
function(fusednorm_variant)
  cmake_parse_arguments(PARSE_ARGV 0 arg "" "${fusednorm_variant_one_value_keywords}" "PARAMS")
  fusednorm_variant_name(name ${ARGN})
  if (arg_AFFINE)
    set(affine true)
  else ()
    set(affine false)
  endif ()
  set(dtype float32)
  if (arg_DTYPE)
    set(dtype ${arg_DTYPE})
  endif ()
  if (NOT dtype MATCHES "^(float32|bfloat16|float16)$")
    message(FATAL_ERROR "fusednorm_variant(${name}): DTYPE is '${dtype}', expected float32, bfloat16 or float16")
  endif ()
  if (arg_AUTOSCHEDULER AND NOT dtype STREQUAL "float32")
    message(FATAL_ERROR "fusednorm_variant(${name}): the autoscheduled variants are float32 only")
  endif ()
  if (NOT arg_ISA MATCHES "^(avx512|avx2|sse41|neon|cuda)$")
    message(FATAL_ERROR "fusednorm_variant(${name}): ISA is '${arg_ISA}', expected avx512, avx2, sse41, neon or "
                        "cuda")
  endif ()
  set(target "${fusednorm_isa_target_${arg_ISA}}")
  if (target STREQUAL "")
    message(FATAL_ERROR "fusednorm_variant(${name}): no Halide target for ISA ${arg_ISA} in this build "
                        "(fusednorm_isa_target_${arg_ISA} is not set)")
  endif ()

  set(outputs "")
  if (FUSEDNORM_EMIT_STMT)
    list(APPEND outputs STMT stmt_${name})
  endif ()
  if (arg_ISA STREQUAL "cuda")
    if (arg_AUTOSCHEDULER)
      message(FATAL_ERROR "fusednorm_variant(${name}): the CUDA kernels have hand schedules only")
    endif ()
    set(table cuda)
    list(APPEND outputs ASSEMBLY assembly_${name})
  elseif (arg_AUTOSCHEDULER)
    set(table autoscheduled)
    list(APPEND outputs AUTOSCHEDULER Halide::${arg_AUTOSCHEDULER} SCHEDULE schedule_${name})
  else ()
    set(table builtin)
  endif ()
  if (FUSEDNORM_KERNELS_FROM AND table STREQUAL "builtin")
    _fusednorm_import_variant(${name})
  else ()
    add_halide_library(${name}
      FROM FusedNorm::halide_generators::fusednorm_generators
      GENERATOR normalization_${arg_DIRECTION}
      FUNCTION_NAME ${name}
      USE_RUNTIME fusednorm_halide_runtime
      TARGETS ${target}
      PARAMS norm=${arg_NORM} layout=${arg_LAYOUT} epilogue=${arg_EPILOGUE} affine=${affine} dtype=${dtype}
             ${arg_PARAMS}
      ${outputs})
  endif ()

  if (table STREQUAL "autoscheduled")
    # Public registration rows: the component autoscheduled registers them like any downstream kernel.
    _fusednorm_registration_row(row ${name} ${arg_NORM} ${arg_DIRECTION} ${arg_LAYOUT} ${arg_EPILOGUE} ${affine}
                                ${arg_AUTOSCHEDULER})
  else ()
    if (table STREQUAL "cuda")
      set(backend cuda)
    else ()
      set(backend cpu)
    endif ()
    string(CONCAT row "    {Norm::${arg_NORM}, Direction::${arg_DIRECTION}, Layout::${arg_LAYOUT}, "
                      "Epilogue::${arg_EPILOGUE}, ${affine}, DType::${dtype}, Backend::${backend}, Isa::${arg_ISA}, "
                      "\"hand\", \"${name}\", &${name}_argv, &${name}_metadata},\n")
  endif ()
  set_property(GLOBAL APPEND PROPERTY FUSEDNORM_${table}_VARIANT_TARGETS ${name})
  set_property(GLOBAL APPEND_STRING PROPERTY FUSEDNORM_${table}_VARIANT_INCLUDES "#include \"${name}.h\"\n")
  set_property(GLOBAL APPEND_STRING PROPERTY FUSEDNORM_${table}_VARIANT_ROWS "${row}")
endfunction()

# _fusednorm_import_variant(<name>): the kernel <name> as the build FUSEDNORM_KERNELS_FROM names made it, its object
# and header, in place of generating it here (an imported object library, which fusednorm_embed_kernels() links).
function(_fusednorm_import_variant name)
  set(object "${FUSEDNORM_KERNELS_FROM}/${name}${CMAKE_CXX_OUTPUT_EXTENSION}")
  if (NOT EXISTS "${object}" OR NOT EXISTS "${FUSEDNORM_KERNELS_FROM}/${name}.h")
    message(FATAL_ERROR "fusednorm_variant(${name}): FUSEDNORM_KERNELS_FROM is '${FUSEDNORM_KERNELS_FROM}', which "
                        "has no ${name}${CMAKE_CXX_OUTPUT_EXTENSION} and ${name}.h: build that build's kernels first "
                        "(make test builds the preset release before the sanitizer presets)")
  endif ()
  add_library(${name} OBJECT IMPORTED GLOBAL)
  # After this build's own generators folder on the include path (a target's own directories come first), so
  # that this build's variant table is the one included.
  set_target_properties(${name} PROPERTIES IMPORTED_OBJECTS "${object}"
                                           INTERFACE_INCLUDE_DIRECTORIES "${FUSEDNORM_KERNELS_FROM}")
endfunction()

# fusednorm_write_variant_table(<table> <template> <output> <targets variable>): sets <targets variable> to the
# targets of the table's variants (builtin, cuda or autoscheduled) in the order they were declared and, where
# there are any, writes <output> in the current binary folder from <template>, whose @includes@ and @rows@ are
# their include lines and rows.
function(fusednorm_write_variant_table table template output targets_variable)
  get_property(targets GLOBAL PROPERTY FUSEDNORM_${table}_VARIANT_TARGETS)
  if (targets)
    get_property(includes GLOBAL PROPERTY FUSEDNORM_${table}_VARIANT_INCLUDES)
    get_property(rows GLOBAL PROPERTY FUSEDNORM_${table}_VARIANT_ROWS)
    configure_file("${template}" "${CMAKE_CURRENT_BINARY_DIR}/${output}" @ONLY)
  endif ()
  set(${targets_variable} ${targets} PARENT_SCOPE)
endfunction()
