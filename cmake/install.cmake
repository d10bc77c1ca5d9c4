# `cmake --install` produces a relocatable package that needs nothing of this build tree or its .venv:
#   - libfusednorm (the runtime, the hand-scheduled kernels, one Halide runtime; fmt compiled in), static by
#     default, shared with BUILD_SHARED_LIBS=ON; the components fusednorm_cuda, fusednorm_autoscheduled and (where
#     MPI was found) fusednorm_mpi;
#   - the public headers with fusednorm/version.h; lib/pkgconfig/fusednorm.pc; bin/fusednorm_bench;
#   - the component generator: the generator executable in libexec/fusednorm beside the Halide libraries it loads
#     (RPATH $ORIGIN), Halide's runtime headers for the kernels' headers, and fusednorm_add_kernel().
# A consumer:
#   find_package(FusedNorm CONFIG REQUIRED [COMPONENTS cuda autoscheduled mpi generator])
#   target_link_libraries(app PRIVATE FusedNorm::fusednorm)
#   fusednorm_add_kernel(my_kernel NORM group LAYOUT nhwc EPILOGUE silu DIRECTIONS forward_training backward ...)
include(CMakePackageConfigHelpers)

set(FUSEDNORM_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/FusedNorm")
set(FUSEDNORM_INSTALL_GENERATORDIR "${CMAKE_INSTALL_LIBEXECDIR}/fusednorm")

set(fusednorm_libraries fusednorm fusednorm_cuda)
if (TARGET fusednorm_autoscheduled)
  list(APPEND fusednorm_libraries fusednorm_autoscheduled)
endif ()
install(TARGETS ${fusednorm_libraries}
        EXPORT FusedNormTargets
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}")
install(DIRECTORY include/fusednorm DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}" PATTERN "*.in" EXCLUDE)
install(FILES "${PROJECT_BINARY_DIR}/include/fusednorm/version.h"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/fusednorm")
install(EXPORT FusedNormTargets NAMESPACE FusedNorm:: DESTINATION "${FUSEDNORM_INSTALL_CMAKEDIR}")
# The component mpi in an export set of its own: only a consumer that asks for it needs MPI's CMake package.
if (TARGET fusednorm_mpi)
  install(TARGETS fusednorm_mpi EXPORT FusedNormMpiTargets
          ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}")
  install(EXPORT FusedNormMpiTargets NAMESPACE FusedNorm:: DESTINATION "${FUSEDNORM_INSTALL_CMAKEDIR}")
endif ()
# The bench, to time the kernels and write tuning tables on the machine that deploys them (docs/TUNING.md);
# it loads Debian's oneDNN (libdnnl2) and GCC's OpenMP runtime (libgomp1).
if (TARGET fusednorm_bench)
  install(TARGETS fusednorm_bench RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")
endif ()

# The generator and the Halide it runs with: libHalide and the autoscheduler plugins fusednorm_add_kernel()'s
# SCHEDULE loads, copied beside it.
get_target_property(fusednorm_halide_library Halide::Halide LOCATION)
get_filename_component(fusednorm_halide_library_dir "${fusednorm_halide_library}" DIRECTORY)
set_target_properties(fusednorm_generators PROPERTIES INSTALL_RPATH "$ORIGIN")
install(TARGETS fusednorm_generators
        EXPORT FusedNormGeneratorTargets
        RUNTIME DESTINATION "${FUSEDNORM_INSTALL_GENERATORDIR}")
set(fusednorm_halide_plugins "")
foreach (autoscheduler IN ITEMS mullapudi2016 li2018 adams2019)
  list(APPEND fusednorm_halide_plugins "${fusednorm_halide_library_dir}/libautoschedule_${autoscheduler}.so")
endforeach ()
install(FILES "${fusednorm_halide_library}" ${fusednorm_halide_plugins}
        DESTINATION "${FUSEDNORM_INSTALL_GENERATORDIR}"
        PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)
get_target_property(fusednorm_halide_include Halide::Runtime HEADER_DIRS)  # FILE_SET HEADERS' base directory
file(GLOB fusednorm_halide_runtime_headers "${fusednorm_halide_include}/HalideRuntime*.h"
                                           "${fusednorm_halide_include}/HalideBuffer.h")
install(FILES ${fusednorm_halide_runtime_headers} DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/fusednorm/halide")
install(EXPORT FusedNormGeneratorTargets NAMESPACE FusedNorm:: DESTINATION "${FUSEDNORM_INSTALL_CMAKEDIR}")

configure_package_config_file(cmake/FusedNormConfig.cmake.in "${PROJECT_BINARY_DIR}/FusedNormConfig.cmake"
                              INSTALL_DESTINATION "${FUSEDNORM_INSTALL_CMAKEDIR}"
                              PATH_VARS FUSEDNORM_INSTALL_GENERATORDIR CMAKE_INSTALL_INCLUDEDIR)
write_basic_package_version_file("${PROJECT_BINARY_DIR}/FusedNormConfigVersion.cmake"
                                 COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/FusedNormConfig.cmake" "${PROJECT_BINARY_DIR}/FusedNormConfigVersion.cmake"
              cmake/FusedNormAddKernel.cmake cmake/FusedNormRegistration.cmake
        DESTINATION "${FUSEDNORM_INSTALL_CMAKEDIR}")

# pkg-config, for builds without CMake: prefix relative to the .pc file, so the prefix can move.
file(RELATIVE_PATH fusednorm_pc_to_prefix "/prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/prefix")
if (BUILD_SHARED_LIBS)
  set(FUSEDNORM_PC_LIBS "-L\${libdir} -lfusednorm")
  set(FUSEDNORM_PC_LIBS_PRIVATE "-lpthread -ldl")
else ()
  set(FUSEDNORM_PC_LIBS "-L\${libdir} -lfusednorm -lpthread -ldl")
  set(FUSEDNORM_PC_LIBS_PRIVATE "")
endif ()
configure_file(cmake/fusednorm.pc.in "${PROJECT_BINARY_DIR}/fusednorm.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/fusednorm.pc" DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
