// The kernels' scratch memory (Halide's halide_malloc / halide_free): blocks up to 1 MiB are kept per thread once
// freed and handed out again, so that a small call does not pay malloc and free for each of its intermediates
// (they were a quarter of BatchNorm1d [32, 64] forward + backward: glibc's free of blocks above its thread cache
// consolidates). A thread keeps at most kPerClass blocks of each power-of-two size and kMaxBytes in all; the rest
// goes back to malloc, and a thread's blocks go back when it ends.
#include <HalideRuntime.h>

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "runtime/bind.h"

namespace fusednorm::detail {

namespace {

// Before each block: a header as large as the alignment Halide wants (64 bytes on x86, 32 on arm; 128 covers
// both), so the pointer handed out keeps the alignment of the one malloc gave. Its last 8 bytes, which Halide
// guarantees readable before any of its blocks, hold a tag: kTag and the size class. A block without the tag
// came from halide_default_malloc before this allocator was installed (the default stores a heap address there,
// which is below 2^48), and goes back to it.
constexpr size_t kHeader = 128;
constexpr uint64_t kTag = uint64_t{0xFEED} << 48;
constexpr int kMinClass = 8, kMaxClass = 20;  // 256 bytes to 1 MiB
constexpr int kClasses = kMaxClass - kMinClass + 1;
constexpr int kPerClass = 4;
constexpr size_t kMaxBytes = size_t{4} << 20;

struct Cache {
  std::array<std::array<void*, kPerClass>, kClasses> blocks{};  // the allocation of halide_default_malloc
  std::array<int, kClasses> count{};
  size_t bytes = 0;
  bool draining = false;  // the Drain below is registered for this thread
  bool ended = false;     // the thread is ending: nothing more is kept
};

// Trivially destructible: it outlives the Drain below, which empties it when the thread ends.
thread_local Cache cache;

struct Drain {
  ~Drain() {
    cache.ended = true;
    for (int c = 0; c < kClasses; c++) {
      for (int i = 0; i < cache.count[static_cast<size_t>(c)]; i++) {
        halide_default_free(nullptr, cache.blocks[static_cast<size_t>(c)][static_cast<size_t>(i)]);
      }
      cache.count[static_cast<size_t>(c)] = 0;
    }
    cache.bytes = 0;
  }
};
thread_local Drain drain;

void* tagged(uint8_t* block, int c) {
  *reinterpret_cast<uint64_t*>(block + kHeader - 8) = kTag | static_cast<uint64_t>(c);
  return block + kHeader;
}

int size_class(size_t size) {
  const int c = static_cast<int>(std::bit_width(size > 1 ? size - 1 : 1));
  return c < kMinClass ? kMinClass : c;
}

void* cached_malloc(void* user_context, size_t size) {
  const int c = size_class(size);
  if (c > kMaxClass) {
    auto* block = static_cast<uint8_t*>(halide_default_malloc(user_context, size + kHeader));
    if (!block) return nullptr;
    return tagged(block, c);
  }
  const auto k = static_cast<size_t>(c - kMinClass);
  uint8_t* block = nullptr;
  if (cache.count[k] > 0) {
    block = static_cast<uint8_t*>(cache.blocks[k][static_cast<size_t>(--cache.count[k])]);
    cache.bytes -= size_t{1} << c;
  } else {
    block = static_cast<uint8_t*>(halide_default_malloc(user_context, (size_t{1} << c) + kHeader));
    if (!block) return nullptr;
  }
  return tagged(block, c);
}

void cached_free(void* user_context, void* pointer) {
  if (!pointer) return;
  const uint64_t tag = *(reinterpret_cast<const uint64_t*>(pointer) - 1);
  if ((tag & ~uint64_t{0xFF}) != kTag) return halide_default_free(user_context, pointer);
  uint8_t* block = static_cast<uint8_t*>(pointer) - kHeader;
  const int c = static_cast<int>(tag & 0xFF);
  if (c <= kMaxClass && !cache.ended) {
    const auto k = static_cast<size_t>(c - kMinClass);
    const size_t bytes = size_t{1} << c;
    if (cache.count[k] < kPerClass && cache.bytes + bytes <= kMaxBytes) {
      if (!cache.draining) {
        (void)&drain;  // constructs it, so that the thread's end empties the cache
        cache.draining = true;
      }
      cache.blocks[k][static_cast<size_t>(cache.count[k]++)] = block;
      cache.bytes += bytes;
      return;
    }
  }
  halide_default_free(user_context, block);
}

}  // namespace

void install_kernel_memory() {
  halide_set_custom_malloc(cached_malloc);
  halide_set_custom_free(cached_free);
}

namespace {
// At load, before any kernel can run (Binder::try_call calls it again, which links this file in).
const bool installed_at_load = (install_kernel_memory(), true);
}  // namespace

}  // namespace fusednorm::detail
