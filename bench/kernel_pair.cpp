// fusednorm_kernel_pair (scripts/kernel_pair.sh builds and runs it; not part of the build): two builds of a norm's
// training forward and backward kernels, "base" and "head", linked into one process and called in
// alternation, each pair on its own buffers, so that this VM's phases (the same kernel's time moved 2x between
// processes) fall on both alike. Prints per direction the median time of each and the median over the pairs of
// head / base. Kernels' scratch memory comes from the runtime's allocator, as through the layer API.
//
//   fusednorm_kernel_pair LAYOUT DTYPE N C S [PAIRS]     LAYOUT nchw|nhwc, DTYPE float32|bfloat16|float16
//   Built with FUSEDNORM_PAIR_NORM 0 (BatchNorm), 1 (LayerNorm) or 2 (RMSNorm); for the last two, C is 1 and the
//   rows are N rows of S.
//   FUSEDNORM_PAIR_SETS=K: K buffer sets in rotation, made odd (default: enough for 256 MiB, so each call starts
//   in memory)
#include <HalideBuffer.h>
#include <HalideRuntime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

// The kernels' headers, written by scripts/kernel_pair.sh (the generator's c_header beside each object).
#include "backward_base.h"
#include "backward_head.h"
#include "forward_base.h"
#include "forward_head.h"

#ifndef FUSEDNORM_PAIR_NORM
#define FUSEDNORM_PAIR_NORM 0
#endif

namespace fusednorm::detail {
void install_kernel_memory();  // runtime/kernel_memory.cpp
}

namespace {

using Halide::Runtime::Buffer;

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "fusednorm_kernel_pair: %s\n", message.c_str());
  std::exit(2);
}

int positive(const char* text, const char* what) {
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (*end != '\0' || value <= 0 || value > (1L << 30))
    fail(std::string(what) + " '" + text + "': expected a positive integer");
  return static_cast<int>(value);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6 || argc > 7) fail("usage: fusednorm_kernel_pair nchw|nhwc float32|bfloat16|float16 N C S [PAIRS]");
  const std::string layout = argv[1], dtype = argv[2];
  if (layout != "nchw" && layout != "nhwc") fail("layout '" + layout + "': expected nchw or nhwc");
  halide_type_t type;
  if (dtype == "float32") {
    type = halide_type_t(halide_type_float, 32);
  } else if (dtype == "bfloat16") {
    type = halide_type_t(halide_type_bfloat, 16);
  } else if (dtype == "float16") {
    type = halide_type_t(halide_type_float, 16);
  } else {
    fail("dtype '" + dtype + "': expected float32, bfloat16 or float16");
  }
  const int n = positive(argv[3], "N"), c = positive(argv[4], "C"), s = positive(argv[5], "S");
  const int pairs = argc == 7 ? positive(argv[6], "PAIRS") : 40;
  fusednorm::detail::install_kernel_memory();

  const size_t elements = size_t(n) * c * s, bytes = elements * type.bytes();
  const char* sets_text = std::getenv("FUSEDNORM_PAIR_SETS");
  // An odd count: pair i takes sets 2i and 2i + 1 and the head goes first in odd pairs, so with an even count of 4
  // or more each kernel would keep to half of the sets (base 0 and 3 of 4), and a slower set would count as a
  // slower kernel (the same kernel on both sides of [32, 512, 28, 28] read 0.94 and 1.08 that way).
  const int sets = (sets_text ? positive(sets_text, "FUSEDNORM_PAIR_SETS")
                              : static_cast<int>(std::max<size_t>(2, (size_t{256} << 20) / (3 * bytes) + 1))) |
                   1;
  const int d0 = layout == "nchw" ? s : c, d1 = layout == "nchw" ? c : s;
  std::mt19937 rng(20261208);
  std::normal_distribution<float> values(0.5f, 2.0f);
  struct Set {
    Buffer<void> x, dy, out;
  };
  std::vector<Set> set;
  for (int i = 0; i < sets; i++) {
    Set e{Buffer<void>(type, d0, d1, n), Buffer<void>(type, d0, d1, n), Buffer<void>(type, d0, d1, n)};
    for (Buffer<void>* b : {&e.x, &e.dy}) {
      for (size_t k = 0; k < elements; k++) {
        const float f = values(rng);
        if (type.bits == 32) {
          static_cast<float*>(b->data())[k] = f;
        } else if (type.code == halide_type_bfloat) {
          uint32_t u;
          std::memcpy(&u, &f, 4);
          static_cast<uint16_t*>(b->data())[k] = static_cast<uint16_t>(u >> 16);
        } else {
          const _Float16 h = static_cast<_Float16>(f);
          std::memcpy(static_cast<uint16_t*>(b->data()) + k, &h, 2);
        }
      }
    }
    std::memset(e.out.data(), 0, bytes);
    set.push_back(std::move(e));
  }
  // Per channel (BatchNorm) or per element of a row (LayerNorm, RMSNorm): the parameters and their gradients;
  // per channel or per row: the saved statistics.
  const bool rows = FUSEDNORM_PAIR_NORM != 0;
  if (rows && c != 1) fail("C " + std::to_string(c) + ": expected 1 for a norm over rows");
  const int parameters = rows ? s : c;
  Buffer<float> running_mean(c), running_var(c), running0(c), running1(c);
  Buffer<float> weight(parameters), bias(parameters), grad0(parameters), grad1(parameters);
  Buffer<float> mean(c, rows ? n : 1), invstd(c, rows ? n : 1);
  running_mean.fill(0.0f);
  running_var.fill(1.0f);
  weight.fill(1.5f);
  bias.fill(0.25f);

  auto call = [&](bool head, bool forward, Set& e) {
    const auto start = std::chrono::steady_clock::now();
#if FUSEDNORM_PAIR_NORM == 0
    const int result =
        forward ? (head ? forward_head : forward_base)(e.x, running_mean, running_var, 0.1f, 1.0f, 1e-5f, weight, bias,
                                                       e.out, mean, invstd, running0, running1)
                : (head ? backward_head : backward_base)(e.x, e.dy, mean, invstd, true, weight, e.out, grad0, grad1);
#elif FUSEDNORM_PAIR_NORM == 1
    const int result =
        forward ? (head ? forward_head : forward_base)(e.x, 1e-5f, weight, bias, e.out, mean, invstd)
                : (head ? backward_head : backward_base)(e.x, e.dy, mean, invstd, weight, e.out, grad0, grad1);
#else
    const int result = forward ? (head ? forward_head : forward_base)(e.x, 1e-5f, weight, e.out, invstd)
                               : (head ? backward_head : backward_base)(e.x, e.dy, invstd, weight, e.out, grad0);
#endif
    const auto end = std::chrono::steady_clock::now();
    if (result != 0)
      fail(std::string(head ? "head" : "base") + (forward ? " forward" : " backward") +
           " failed: " + std::to_string(result));
    return std::chrono::duration<double, std::milli>(end - start).count();
  };
  constexpr int kWarmup = 5;
  for (int forward = 1; forward >= 0; forward--) {
    std::vector<double> base, head, ratio;
    for (int i = 0; i < pairs + kWarmup; i++) {
      const bool head_first = i % 2 == 1;
      const double first = call(head_first, forward, set[(2 * i) % sets]);
      const double second = call(!head_first, forward, set[(2 * i + 1) % sets]);
      if (i < kWarmup) continue;
      base.push_back(head_first ? second : first);
      head.push_back(head_first ? first : second);
      ratio.push_back(head.back() / base.back());
    }
    std::printf(
        "%-8s %s %s [%d, %d, %d] %d sets, %d pairs: base %.3f ms (fastest %.3f), head %.3f ms (fastest %.3f), "
        "head / base %.3f\n",
        forward ? "forward" : "backward", layout.c_str(), dtype.c_str(), n, c, s, sets, pairs, median(base),
        *std::min_element(base.begin(), base.end()), median(head), *std::min_element(head.begin(), head.end()),
        median(ratio));
  }
  return 0;
}
