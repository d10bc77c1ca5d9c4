#pragma once
// Memory for the benchmark: page-aligned float arrays, filled with reproducible random values.
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "support/batch_norm_reference.h"

namespace fusednorm::bench {

// Page-aligned so that non-temporal stores (which need aligned destinations) and the kernels see memory
// placed alike. The pages are written at construction: timing never pays for first-touch page faults, and
// never reads the shared zero page (which would be cache-hot whatever its size).
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(int64_t count);

  float* data() const { return data_.get(); }
  int64_t size() const { return size_; }
  int64_t bytes() const { return size_ * static_cast<int64_t>(sizeof(float)); }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float[], Free> data_;
  int64_t size_ = 0;
};

// Uniform in [low, high), a function of (seed, index) only: the same on any thread count.
void fill_uniform(float* data, int64_t count, float low, float high, uint64_t seed);

// Activations as a convolution leaves them: each channel with its own mean (within [-2, 2]) and spread
// (within [0.5, 2]), so that a kernel which skipped the mean or mixed up channels fails verification.
void fill_activations(float* data, const reference::Dims& dims, uint64_t seed);

}  // namespace fusednorm::bench
