# `cmake --install` produces a relocatable package: the runtime and its kernels (static), the public headers,
# and the generator executable with fusednorm_add_kernel(), so that a downstream project can
#   find_package(FusedNorm CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE FusedNorm::fusednorm)
#   fusednorm_add_kernel(my_kernel NORM group LAYOUT nhwc EPILOGUE silu DIRECTIONS forward_training backward ...)
# Halide itself is a dependency the consumer finds (its CMake package), as this build does.
include(CMakePackageConfigHelpers)

set(FUSEDNORM_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/FusedNorm")

# The generator loads libHalide at run time from where this build found it.
get_target_property(fusednorm_halide_library Halide::Halide LOCATION)
get_filename_component(fusednorm_halide_library_dir "${fusednorm_halide_library}" DIRECTORY)
set_target_properties(fusednorm_generators PROPERTIES INSTALL_RPATH "${fusednorm_halide_library_dir}")

install(TARGETS fusednorm fusednorm_kernels ${FUSEDNORM_KERNEL_TARGETS} fusednorm_halide_runtime
        EXPORT FusedNormTargets
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
        FILE_SET HEADERS DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}/fusednorm/kernels")
install(TARGETS fusednorm_generators
        EXPORT FusedNormTargets
        RUNTIME DESTINATION "${CMAKE_INSTALL_LIBEXECDIR}/fusednorm")
install(DIRECTORY include/fusednorm DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(EXPORT FusedNormTargets NAMESPACE FusedNorm:: DESTINATION "${FUSEDNORM_INSTALL_CMAKEDIR}")

configure_package_config_file(cmake/FusedNormConfig.cmake.in "${PROJECT_BINARY_DIR}/FusedNormConfig.cmake"
                              INSTALL_DESTINATION "${FUSEDNORM_INSTALL_CMAKEDIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/FusedNormConfigVersion.cmake"
                                 COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/FusedNormConfig.cmake" "${PROJECT_BINARY_DIR}/FusedNormConfigVersion.cmake"
              cmake/FusedNormAddKernel.cmake
        DESTINATION "${FUSEDNORM_INSTALL_CMAKEDIR}")
