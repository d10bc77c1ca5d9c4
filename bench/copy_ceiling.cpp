#include "bench/copy_ceiling.h"

#include <immintrin.h>
#include <omp.h>

#include <cstdint>

namespace fusednorm::bench {
namespace {

enum class Isa { avx512, avx, sse };

Isa best_isa() {
  static const Isa isa = __builtin_cpu_supports("avx512f") ? Isa::avx512
                         : __builtin_cpu_supports("avx")   ? Isa::avx
                                                           : Isa::sse;
  return isa;
}

// Each width copies scalars until the destination is aligned to the vector (streaming stores require it),
// then whole vectors, then the tail. kStream picks the store; the fence orders streaming stores before the
// threads' barrier, so the copy is complete when parallel_copy returns.
template <bool kStream>
__attribute__((target("avx512f"))) void copy_avx512(const float* src, float* dst, int64_t count) {
  int64_t i = 0;
  for (; i < count && reinterpret_cast<uintptr_t>(dst + i) % 64 != 0; i++) dst[i] = src[i];
  for (; i + 16 <= count; i += 16) {
    __m512 v = _mm512_loadu_ps(src + i);
    if constexpr (kStream) {
      _mm512_stream_ps(dst + i, v);
    } else {
      _mm512_store_ps(dst + i, v);
    }
  }
  for (; i < count; i++) dst[i] = src[i];
  if constexpr (kStream) _mm_sfence();
}

template <bool kStream>
__attribute__((target("avx"))) void copy_avx(const float* src, float* dst, int64_t count) {
  int64_t i = 0;
  for (; i < count && reinterpret_cast<uintptr_t>(dst + i) % 32 != 0; i++) dst[i] = src[i];
  for (; i + 8 <= count; i += 8) {
    __m256 v = _mm256_loadu_ps(src + i);
    if constexpr (kStream) {
      _mm256_stream_ps(dst + i, v);
    } else {
      _mm256_store_ps(dst + i, v);
    }
  }
  for (; i < count; i++) dst[i] = src[i];
  if constexpr (kStream) _mm_sfence();
}

template <bool kStream>
void copy_sse(const float* src, float* dst, int64_t count) {
  int64_t i = 0;
  for (; i < count && reinterpret_cast<uintptr_t>(dst + i) % 16 != 0; i++) dst[i] = src[i];
  for (; i + 4 <= count; i += 4) {
    __m128 v = _mm_loadu_ps(src + i);
    if constexpr (kStream) {
      _mm_stream_ps(dst + i, v);
    } else {
      _mm_store_ps(dst + i, v);
    }
  }
  for (; i < count; i++) dst[i] = src[i];
  if constexpr (kStream) _mm_sfence();
}

template <bool kStream>
void copy_part(const float* src, float* dst, int64_t count) {
  switch (best_isa()) {
    case Isa::avx512: return copy_avx512<kStream>(src, dst, count);
    case Isa::avx: return copy_avx<kStream>(src, dst, count);
    case Isa::sse: return copy_sse<kStream>(src, dst, count);
  }
}

}  // namespace

const char* impl_name(CopyStores stores) { return stores == CopyStores::regular ? "copy" : "copy_nt"; }

void parallel_copy(const float* source, float* destination, int64_t count, CopyStores stores) {
#pragma omp parallel
  {
    // Parts start on 64-byte boundaries (16 floats), so that threads never share a cache line.
    const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
    const int64_t lines = (count + 15) / 16;
    const int64_t begin = std::min(count, lines * thread / threads * 16);
    const int64_t end = std::min(count, lines * (thread + 1) / threads * 16);
    if (stores == CopyStores::regular) {
      copy_part<false>(source + begin, destination + begin, end - begin);
    } else {
      copy_part<true>(source + begin, destination + begin, end - begin);
    }
  }
}

std::string copy_isa() {
  switch (best_isa()) {
    case Isa::avx512: return "avx512";
    case Isa::avx: return "avx";
    case Isa::sse: return "sse";
  }
  return "?";
}

}  // namespace fusednorm::bench
