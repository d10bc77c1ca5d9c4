// fusednorm_two_pass_probe: what the memory system allows a two-pass NCHW training forward, written by hand in C++
// with AVX-512 intrinsics and OpenMP, on the ResNet-50 batch-32 shapes. It is not a kernel: it computes only the
// per-channel mean and writes x - mean, which is all the memory traffic of the real thing (per-channel block of x
// read for the statistics, read again from cache, y written) and little of its arithmetic. It separates the cost
// of the traffic from the cost of the schedule, for docs/PERFORMANCE.md:
//   read         one pass reading x (no stores)
//   two_pass     per block of channels (1 MiB of x, all samples): statistics, then y = x - mean with regular stores
//                (every line of y is first read from memory: write-allocate)
//   two_pass_nt  the same with non-temporal stores (no write-allocate; Halide 21 cannot emit them)
//   in_place     the same with y written over x (the lines are in cache: no write-allocate)
//   copy, copy_nt  the copy ceilings, as in fusednorm_bench
// Each is the median of at least 9 runs, in fusednorm_bench's cache regime for the shape (hot: one buffer set;
// cold: rotating through enough sets that twice the last-level cache passes between two uses of one).
// Usage: fusednorm_two_pass_probe [--threads N] [--block-kib K] (--help says more)
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <immintrin.h>
#include <omp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "support/shapes.h"

namespace {

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename Run>
double median_ms(int sets, Run run) {
  for (int i = 0; i < 2 * sets; i++) run(i % sets);
  std::vector<double> times;
  for (int i = 0; i < std::max(9, 3 * sets); i++) {
    double start = seconds_now();
    run(i % sets);
    times.push_back((seconds_now() - start) * 1e3);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

struct Buffer {
  float* data;
  explicit Buffer(int64_t count) : data(static_cast<float*>(std::aligned_alloc(64, (count * 4 + 63) / 64 * 64))) {
    if (!data) {
      std::fprintf(stderr, "two_pass_probe: out of memory\n");
      std::exit(1);
    }
  }
};

enum class Store { regular, streaming };

// GCC 12's own _mm512_reduce_add_ps trips -W(maybe-)uninitialized inside its header (_mm256_undefined_pd).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
__attribute__((target("avx512f"))) inline float horizontal_sum(__m512 v) { return _mm512_reduce_add_ps(v); }
#pragma GCC diagnostic pop

template <Store kStore>
__attribute__((target("avx512f"))) inline void store(float* at, __m512 v) {
  if constexpr (kStore == Store::streaming) {
    _mm512_stream_ps(at, v);
  } else {
    _mm512_storeu_ps(at, v);
  }
}

// Per block of channels, all samples: sums, then y = x - mean, vectorised along each row with a masked remainder.
template <Store kStore>
__attribute__((target("avx512f"))) void two_pass(const float* x, float* y, int64_t n_count, int64_t c_count,
                                                 int64_t s_count, int64_t channels_per_block) {
  const int64_t blocks = (c_count + channels_per_block - 1) / channels_per_block;
#pragma omp parallel for schedule(static, 1)
  for (int64_t block = 0; block < blocks; block++) {
    const int64_t c0 = block * channels_per_block, c1 = std::min(c_count, c0 + channels_per_block);
    float mean[4096];
    for (int64_t c = c0; c < c1; c++) mean[c - c0] = 0;
    for (int64_t n = 0; n < n_count; n++) {
      for (int64_t c = c0; c < c1; c++) {
        const float* row = x + (n * c_count + c) * s_count;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        int64_t s = 0;
        for (; s + 32 <= s_count; s += 32) {
          a0 = _mm512_add_ps(a0, _mm512_loadu_ps(row + s));
          a1 = _mm512_add_ps(a1, _mm512_loadu_ps(row + s + 16));
        }
        if (s + 16 <= s_count) {
          a0 = _mm512_add_ps(a0, _mm512_loadu_ps(row + s));
          s += 16;
        }
        if (s < s_count) {
          a1 = _mm512_add_ps(a1, _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (s_count - s)) - 1), row + s));
        }
        float sum = horizontal_sum(_mm512_add_ps(a0, a1));
        mean[c - c0] += sum;
      }
    }
    for (int64_t c = c0; c < c1; c++) mean[c - c0] /= static_cast<float>(n_count * s_count);
    for (int64_t n = 0; n < n_count; n++) {
      for (int64_t c = c0; c < c1; c++) {
        const float* row = x + (n * c_count + c) * s_count;
        float* out = y + (n * c_count + c) * s_count;
        const __m512 m = _mm512_set1_ps(mean[c - c0]);
        int64_t s = 0;
        // Streaming stores need 64-byte alignment: scalars up to it (rows of 7x7 or 14x14 are not aligned).
        if constexpr (kStore == Store::streaming) {
          for (; s < s_count && reinterpret_cast<uintptr_t>(out + s) % 64 != 0; s++) out[s] = row[s] - mean[c - c0];
        }
        for (; s + 16 <= s_count; s += 16) store<kStore>(out + s, _mm512_sub_ps(_mm512_loadu_ps(row + s), m));
        if (s < s_count) {
          const __mmask16 rest = static_cast<__mmask16>((1u << (s_count - s)) - 1);
          _mm512_mask_storeu_ps(out + s, rest, _mm512_sub_ps(_mm512_maskz_loadu_ps(rest, row + s), m));
        }
      }
    }
  }
  if constexpr (kStore == Store::streaming) _mm_sfence();
}

template <Store kStore>
__attribute__((target("avx512f"))) void copy(const float* x, float* y, int64_t count) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < count; i += 16) store<kStore>(y + i, _mm512_loadu_ps(x + i));
  if constexpr (kStore == Store::streaming) _mm_sfence();
}

__attribute__((target("avx512f"))) float read_all(const float* x, int64_t count) {
  float total = 0;
#pragma omp parallel reduction(+ : total)
  {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < count; i += 32) {
      a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x + i));
      a1 = _mm512_add_ps(a1, _mm512_loadu_ps(x + i + 16));
    }
    total += horizontal_sum(_mm512_add_ps(a0, a1));
  }
  return total;
}

int64_t last_level_cache_bytes() {
  long bytes = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return bytes > 0 ? bytes : 32 << 20;
}

constexpr const char* kUsage = R"(usage: fusednorm_two_pass_probe [options]

Times a two-pass NCHW training forward written by hand (AVX-512, OpenMP) on the ResNet-50 batch-32 shapes,
beside one read of x and the copies: what the memory system allows any kernel (docs/PERFORMANCE.md).

  --threads N      OpenMP threads (default: the online cores)
  --block-kib K    KiB of x per block of channels, all samples (default: 1024)
  --help           this text
)";

[[noreturn]] void usage_error(const std::string& message) {
  fmt::print(stderr, "fusednorm_two_pass_probe: {}\n\n{}", message, kUsage);
  std::exit(2);
}

// A positive decimal integer no larger than `max`, or CLI::ValidationError naming the option, the value and what
// was expected (as fusednorm_bench's options: no sign, no base prefix, nothing after the digits).
int64_t positive_integer(std::string_view flag, const std::string& text, int64_t max) {
  int64_t value = 0;
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value < 1 || value > max) {
    throw CLI::ValidationError(fmt::format("{} is '{}', expected a positive integer up to {}", flag, text, max));
  }
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  int64_t block_bytes = 1 << 20;
  CLI::App app("", "fusednorm_two_pass_probe");
  // --help prints kUsage rather than CLI11's generated text; an unknown option or argument is refused (CLI11's
  // default). Given twice, an option keeps its last value.
  app.set_help_flag("-h,--help");
  const auto set_threads = [&](const std::string& text) {
    threads = static_cast<int>(positive_integer("--threads", text, std::numeric_limits<int>::max()));
  };
  const auto set_block = [&](const std::string& text) {
    block_bytes = positive_integer("--block-kib", text, std::numeric_limits<int64_t>::max() / 1024) * 1024;
  };
  app.add_option_function<std::string>("--threads", set_threads)->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option_function<std::string>("--block-kib", set_block)->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    fmt::print("{}", kUsage);
    return 0;
  } catch (const CLI::ParseError& e) {
    usage_error(e.what());
  }
  if (!__builtin_cpu_supports("avx512f")) {
    std::fprintf(stderr, "two_pass_probe: needs AVX-512 (it is a measurement of one machine, not a portable tool)\n");
    return 2;
  }
  omp_set_num_threads(threads);
  std::printf("two-pass NCHW forward probe: %d threads, blocks of %lld KiB of x, last-level cache %lld MiB\n", threads,
              static_cast<long long>(block_bytes >> 10), static_cast<long long>(last_level_cache_bytes() >> 20));
  std::printf("GB/s count x read + y written; x copy_nt = the row's GB/s over copy_nt's\n");
  std::printf("%-16s %-20s %9s %9s %9s %9s %9s %9s\n", "shape", "", "copy", "copy_nt", "read", "two_pass", "2pass_nt",
              "in_place");
  volatile float sink = 0;
  for (const auto& named : fusednorm::shapes::resnet50_batch32()) {
    const int64_t n = named.shape[0], c = named.shape[1], s = named.shape[2] * named.shape[3];
    const int64_t count = n * c * s;
    const int64_t pair_bytes = 2 * count * 4;
    // fusednorm_bench's regimes: hot (one buffer set) when the backward's working set, 3 tensors, fits the
    // last-level cache, else enough sets that twice the cache passes between two uses of one.
    const bool hot = 3 * count * 4 <= last_level_cache_bytes();
    const int sets = hot ? 1 : static_cast<int>(2 * last_level_cache_bytes() / pair_bytes + 1);
    std::vector<Buffer> xs, ys;
    for (int i = 0; i < sets; i++) {
      xs.emplace_back(count);
      ys.emplace_back(count);
      for (int64_t j = 0; j < count; j++) {
        xs.back().data[j] = 1.0f + static_cast<float>(j % 13);
        ys.back().data[j] = 0.5f;
      }
    }
    const int64_t per_block = std::clamp<int64_t>(block_bytes / (n * s * 4), 1, 4096);
    double t_copy = median_ms(sets, [&](int i) { copy<Store::regular>(xs[i].data, ys[i].data, count); });
    double t_copy_nt = median_ms(sets, [&](int i) { copy<Store::streaming>(xs[i].data, ys[i].data, count); });
    double t_read = median_ms(sets, [&](int i) { sink = read_all(xs[i].data, count); });
    double t_two =
        median_ms(sets, [&](int i) { two_pass<Store::regular>(xs[i].data, ys[i].data, n, c, s, per_block); });
    double t_two_nt =
        median_ms(sets, [&](int i) { two_pass<Store::streaming>(xs[i].data, ys[i].data, n, c, s, per_block); });
    // In place: the output of one run is the next run's input (x - mean has mean 0: the values stay finite).
    double t_in_place =
        median_ms(sets, [&](int i) { two_pass<Store::regular>(ys[i].data, ys[i].data, n, c, s, per_block); });
    auto ratio = [&](double ms) { return t_copy_nt / ms; };
    std::printf("%-16s %-20s %7.3fms %7.3fms %7.3fms %7.3fms %7.3fms %7.3fms\n", named.name.c_str(),
                fmt::format("[{}]", fmt::join(named.shape, ",")).c_str(), t_copy, t_copy_nt, t_read, t_two, t_two_nt,
                t_in_place);
    std::printf("%-16s %-20s %9.2f %9.2f %9s %9.2f %9.2f %9.2f\n", "", "x copy_nt", ratio(t_copy), 1.0, "-",
                ratio(t_two), ratio(t_two_nt), ratio(t_in_place));
    for (int i = 0; i < sets; i++) {
      std::free(xs[i].data);
      std::free(ys[i].data);
    }
  }
  return sink == 12345.0f ? 1 : 0;
}
