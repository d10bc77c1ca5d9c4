#include "bench/buffers.h"

#include <fmt/format.h>

#include <cstring>
#include <new>

namespace fusednorm::bench {
namespace {

constexpr size_t kPageBytes = 4096;

// SplitMix64's finalizer: a good 64-bit mix, cheap enough to call per element.
uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) from the top 24 bits: every value exactly representable in float.
float unit_float(uint64_t seed, uint64_t index) {
  return static_cast<float>(mix(seed * 0x9e3779b97f4a7c15ULL + index) >> 40) * 0x1.0p-24f;
}

}  // namespace

AlignedBuffer::AlignedBuffer(int64_t count) : size_(count) {
  size_t bytes = (static_cast<size_t>(count) * sizeof(float) + kPageBytes - 1) / kPageBytes * kPageBytes;
  data_.reset(static_cast<float*>(std::aligned_alloc(kPageBytes, std::max(bytes, kPageBytes))));
  if (!data_) throw std::bad_alloc();
  std::memset(data_.get(), 0xff, bytes);  // NaN everywhere: an output a kernel forgot to write shows up.
}

void fill_uniform(float* data, int64_t count, float low, float high, uint64_t seed) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; i++) {
    data[i] = low + (high - low) * unit_float(seed, static_cast<uint64_t>(i));
  }
}

void fill_activations(float* data, const reference::Dims& dims, uint64_t seed) {
  const uint64_t channel_seed = mix(seed + 1);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < dims.numel(); i++) {
    const int64_t c = dims.layout == Layout::nchw ? i / dims.s % dims.c : i % dims.c;
    const float mean = -2.0f + 4.0f * unit_float(channel_seed, static_cast<uint64_t>(2 * c));
    const float spread = 0.5f + 1.5f * unit_float(channel_seed, static_cast<uint64_t>(2 * c + 1));
    data[i] = mean + spread * (2.0f * unit_float(seed, static_cast<uint64_t>(i)) - 1.0f);
  }
}

}  // namespace fusednorm::bench
