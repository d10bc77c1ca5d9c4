# fusednorm_extract_readme_snippet(<readme> <marker> <output>): writes the ```cpp block that follows the line
# <marker> in <readme> to <output>, with a #line directive so that compiler messages point into the README.
# <output> is rewritten only when the snippet changed (no rebuild otherwise). Fails the configuration, saying
# what is missing, when the marker or the block after it is not there.
function(fusednorm_extract_readme_snippet readme marker output)
  file(READ "${readme}" text)
  string(FIND "${text}" "${marker}" marker_at)
  if (marker_at LESS 0)
    message(FATAL_ERROR "${readme} has no line '${marker}': the README's layer example is compiled and run by "
                        "tests/readme_snippet_test, which finds it by that marker. Put the marker back on the line "
                        "before the example's ```cpp block.")
  endif ()
  string(LENGTH "${marker}" marker_length)
  math(EXPR after_marker "${marker_at} + ${marker_length}")
  string(SUBSTRING "${text}" ${after_marker} -1 rest)
  # Only blank space may stand between the marker and the fence.
  string(REGEX MATCH "^[ \t\r]*\n[ \t\r\n]*```cpp[ \t\r]*\n" fence "${rest}")
  if (fence STREQUAL "")
    message(FATAL_ERROR "${readme}: the line '${marker}' is not followed by a ```cpp block (tests/readme_snippet_test "
                        "compiles the block right after the marker).")
  endif ()
  string(LENGTH "${fence}" fence_length)
  string(SUBSTRING "${rest}" ${fence_length} -1 code_and_rest)
  string(FIND "${code_and_rest}" "\n```" code_end)
  if (code_end LESS 0)
    message(FATAL_ERROR "${readme}: the ```cpp block after '${marker}' is not closed with ```.")
  endif ()
  math(EXPR code_length "${code_end} + 1")
  string(SUBSTRING "${code_and_rest}" 0 ${code_length} code)

  # The README line the code starts on: the lines before the marker, the marker's, and the fence's.
  string(SUBSTRING "${text}" 0 ${after_marker} before)
  string(REGEX MATCHALL "\n" newlines "${before}${fence}")
  list(LENGTH newlines first_line)
  math(EXPR first_line "${first_line} + 1")

  file(WRITE "${output}.new" "// Generated from ${readme} by tests/cmake/readme_snippet.cmake; edit the README.\n"
                             "#line ${first_line} \"${readme}\"\n${code}")
  file(COPY_FILE "${output}.new" "${output}" ONLY_IF_DIFFERENT)
  file(REMOVE "${output}.new")
endfunction()
