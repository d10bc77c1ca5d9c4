# Cross-compiling for 64-bit ARM Linux with Debian's cross toolchain (g++-aarch64-linux-gnu), used by the
# CMake preset aarch64. The target's fmt and GoogleTest are Debian's arm64 packages (multiarch, under
# /usr/lib/aarch64-linux-gnu, with the arm64 C library in /lib/aarch64-linux-gnu); scripts/bootstrap.sh
# installs them. The Halide generator is the host build's (see generators/CMakeLists.txt).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# Packages and libraries come from this architecture's multiarch directories (lib/aarch64-linux-gnu).
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# Test discovery (gtest_discover_tests) and ctest run the aarch64 binaries through user-mode emulation; their
# loader and shared libraries are Debian's arm64 ones, in the multiarch paths the binaries name.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
