#pragma once
// What the fuzz targets share: the bytes a target is given, read as choices, and a file of given bytes in memory
// (the loaders take paths). Every target is a libFuzzer entry point, LLVMFuzzerTestOneInput; built without
// libFuzzer (GCC, the sanitizer presets), replay_main.cpp runs it over a corpus instead.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace fusednorm::fuzz {

// A property the target checks failed: print it and abort, which libFuzzer (and the replay) reports as a crash
// with the input that caused it.
[[noreturn]] inline void violated(const std::string& what) {
  std::fprintf(stderr, "fuzz property violated: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// The input as a stream of choices; past its end every choice is the first option.
class Choices {
 public:
  Choices(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  bool flag() { return byte() & 1; }
  // An index below n (n > 0).
  size_t below(size_t n) { return byte() % n; }
  template <typename T>
  const T& pick(const std::vector<T>& options) {
    return options[below(options.size())];
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// An anonymous in-memory file (memfd) with the given bytes, named by path() (/proc/self/fd/N).
class MemoryFile {
 public:
  explicit MemoryFile(const uint8_t* data = nullptr, size_t size = 0) : fd_(memfd_create("fusednorm-fuzz", 0)) {
    if (fd_ < 0) violated("memfd_create failed");
    for (size_t done = 0; done < size;) {
      const ssize_t n = write(fd_, data + done, size - done);
      if (n <= 0) violated("writing the memfd failed");
      done += static_cast<size_t>(n);
    }
  }
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;
  ~MemoryFile() { close(fd_); }
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_;
};

}  // namespace fusednorm::fuzz
