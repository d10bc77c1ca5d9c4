#pragma once
// Hand-written CPU schedules (x86-64 now, arm-64 later), loops only: what is computed is fixed by the
// algorithm files. The vector width comes from the target, so one schedule serves SSE4.1, AVX2 and AVX-512.
#include <vector>

#include "Halide.h"
#include "batch_norm_algorithm.h"

namespace fusednorm {

// Bytes of one channel block in the NCHW schedules: the statistics pass and the elementwise pass touch the
// same block one after the other, so it must stay in the core's L2 (2 MiB per core on the machines we
// measured; half of it leaves room for the output lines being written).
constexpr int kChannelBlockBytes = 1 << 20;
// Elements per parallel task in elementwise passes: enough that the thread pool's cost per task is noise.
constexpr int kElementsPerTask = 1 << 16;

struct CpuScheduleContext {
  const Axes& axes;
  Halide::Expr spatial, channels, batch;
  int vector_width;
  int tensors_reread = 1;  // tensors the statistics read and the elementwise pass reads again
};

// Chunk and tail sums along contiguous s, vectorised by an rfactor into vector lanes: each is then a
// horizontal add of `vector_width` float32 partials. That add is a scalar loop, about half the time of the 7x7
// training forward (perf record, docs/PERFORMANCE.md): short rows need another schedule.
inline void schedule_sums_over_contiguous_s(ChannelSums& sums, Halide::Func consumer, Halide::Var at,
                                            const CpuScheduleContext& cx) {
  using namespace Halide;
  for (auto [f, r] : {std::pair{sums.chunk, sums.over_chunk}, std::pair{sums.tail, sums.over_tail}}) {
    RVar rso("rso"), rsi("rsi");
    Var lane("lane");
    f.compute_at(consumer, at);
    Func lanes = f.update().split(r.x, rso, rsi, cx.vector_width).rfactor(rsi, lane);
    lanes.compute_at(f, cx.axes.c).vectorize(lane);
    lanes.update().vectorize(lane);
  }
}

// An elementwise pass over rows of the innermost axis (s in NCHW, c in NHWC), vectorised along the row, in
// parallel tasks of about kElementsPerTask elements. With a fixed 8 rows per task, 7x7 NCHW inference spent
// more time in the thread pool than in the loop (0.24x a naive loop on 32x2048x7x7).
inline void schedule_rows(Halide::Func elementwise, Layout layout, const CpuScheduleContext& cx) {
  using namespace Halide;
  const Axes& a = cx.axes;
  Var row("row"), task("task");
  Var inner = layout == Layout::nchw ? a.s : a.c;
  Var outer = layout == Layout::nchw ? a.c : a.s;
  Expr row_length = layout == Layout::nchw ? cx.spatial : cx.channels;
  Expr rows_per_task = max(1, kElementsPerTask / max(row_length, 1));
  elementwise.fuse(outer, a.n, row)
      .vectorize(inner, cx.vector_width, TailStrategy::GuardWithIf)
      .split(row, task, row, rows_per_task, TailStrategy::GuardWithIf)
      .parallel(task);
}

// NCHW with the statistics over (s, n) of each channel: a parallel loop over blocks of channels; in each,
// the per-channel reductions, then the elementwise output over the same block while it is still in L2, and
// the per-channel outputs in the same loop (compute_with). One read of x from memory instead of two.
// Measured 2026-11-26 (2-core AVX-512 Xeon, ResNet-50 batch 32): forward training at 0.37-0.47 of the
// non-temporal copy out of place, bound by write-allocate on y (no streaming stores in Halide 21), 0.51-0.77 in
// place; docs/PERFORMANCE.md.
inline void schedule_nchw_channel_blocked(Halide::Func elementwise, const std::vector<Halide::Func>& per_channel_outputs,
                                          ChannelSums& sums, const std::vector<Halide::Func>& per_channel_funcs,
                                          const CpuScheduleContext& cx) {
  using namespace Halide;
  const Axes& a = cx.axes;
  Var co("co"), ci("ci");
  // Every tensor the statistics read stays for the elementwise pass: x, and dy too in the backward.
  Expr channel_bytes = cast<int64_t>(cx.spatial) * cx.batch * 4 * cx.tensors_reread;
  Expr block = cast<int>(clamp(cast<int64_t>(kChannelBlockBytes) / max(channel_bytes, 1), 1, cx.channels));

  elementwise.split(a.c, co, ci, block, TailStrategy::GuardWithIf)
      .reorder(a.s, a.n, ci, co)
      .vectorize(a.s, cx.vector_width, TailStrategy::GuardWithIf)
      .parallel(co);
  for (Func f : per_channel_outputs) {
    f.split(a.c, co, ci, block, TailStrategy::GuardWithIf).parallel(co).compute_with(elementwise, co);
  }
  for (Func f : per_channel_funcs) f.compute_at(elementwise, co);
  sums.total.compute_at(elementwise, co);
  schedule_sums_over_contiguous_s(sums, elementwise, co, cx);
}

// NHWC: channels are innermost, so a block of channels is strided across all of x and cannot stay in cache.
// Two passes: chunk and tail sums, parallel over samples and vectorised over c, merged per
// channel, then the elementwise pass, parallel over rows and vectorised over c.
inline void schedule_nhwc_two_pass(Halide::Func elementwise, const std::vector<Halide::Func>& per_channel_outputs,
                                   ChannelSums& sums, const std::vector<Halide::Func>& per_channel_funcs,
                                   const CpuScheduleContext& cx) {
  using namespace Halide;
  const Axes& a = cx.axes;
  const int vec = cx.vector_width;
  // Parallel over samples, not over (chunk, sample) fused: a fused loop is given at least one iteration, and
  // with S < kSumChunk there are no full chunks, so that iteration would read past x.
  Var k = sums.chunk.args()[1];
  sums.chunk.compute_root().vectorize(a.c, vec, TailStrategy::GuardWithIf).parallel(a.n);
  sums.chunk.update().reorder(a.c, sums.over_chunk.x, k, a.n).vectorize(a.c, vec, TailStrategy::GuardWithIf)
      .parallel(a.n);
  sums.tail.compute_root().vectorize(a.c, vec, TailStrategy::GuardWithIf).parallel(a.n);
  sums.tail.update().reorder(a.c, sums.over_tail.x, a.n).vectorize(a.c, vec, TailStrategy::GuardWithIf).parallel(a.n);
  sums.total.compute_root().vectorize(a.c, vec, TailStrategy::GuardWithIf);
  for (int stage = 0; stage < 2; stage++) sums.total.update(stage).vectorize(a.c, vec, TailStrategy::GuardWithIf);
  for (Func f : per_channel_funcs) f.compute_root();
  for (Func f : per_channel_outputs) f.compute_root();

  schedule_rows(elementwise, Layout::nhwc, cx);
}

// Elementwise only (inference).
inline void schedule_elementwise(Halide::Func elementwise, Layout layout, const std::vector<Halide::Func>& per_channel_funcs,
                                 const CpuScheduleContext& cx) {
  for (Halide::Func f : per_channel_funcs) f.compute_root();
  schedule_rows(elementwise, layout, cx);
}

}  // namespace fusednorm
