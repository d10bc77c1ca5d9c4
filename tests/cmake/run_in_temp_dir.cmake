# cmake -DPROGRAM=<executable> -DWORK_DIR=<directory> [-DEMULATOR=<qemu-aarch64 ...>] -P run_in_temp_dir.cmake
# Runs PROGRAM (through EMULATOR when cross-compiled) in WORK_DIR, created empty first and removed afterwards
# (so files it writes, such as model.safetensors, neither stay behind nor come from an earlier run). Fails when
# PROGRAM does.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
execute_process(COMMAND ${EMULATOR} "${PROGRAM}" WORKING_DIRECTORY "${WORK_DIR}" RESULT_VARIABLE result)
file(REMOVE_RECURSE "${WORK_DIR}")
if (NOT result EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} failed: ${result}")
endif ()
