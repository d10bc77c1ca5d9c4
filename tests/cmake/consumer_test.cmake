# The downstream-project check (ctest package.consumer): installs this build into a staging prefix, moves the
# prefix elsewhere (the package must be relocatable), then configures, builds and runs examples/consumer
# against it. Arguments: -DBUILD_DIR= -DSOURCE_DIR= -DWORK_DIR= -DNINJA=
function(run step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if (NOT result EQUAL 0)
    message(FATAL_ERROR "consumer test: ${step} failed (${result}):\n${output}")
  endif ()
  message(STATUS "${step}: ok")
  set(last_output "${output}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
run("install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${WORK_DIR}/staging")
file(RENAME "${WORK_DIR}/staging" "${WORK_DIR}/prefix")
run("configure the consumer" "${CMAKE_COMMAND}" -S "${SOURCE_DIR}/examples/consumer" -B "${WORK_DIR}/build" -G Ninja
    "-DCMAKE_MAKE_PROGRAM=${NINJA}" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix")
run("build the consumer" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
set(arm64_library "${WORK_DIR}/build/unet_group_norm_silu_arm64_forward_training.a")  # Halide names it
if (NOT EXISTS "${arm64_library}")
  message(FATAL_ERROR "consumer test: the arm-64 kernel library ${arm64_library} was not built")
endif ()
run("run the consumer" "${WORK_DIR}/build/consumer")
message(STATUS "${last_output}")
file(REMOVE_RECURSE "${WORK_DIR}")
