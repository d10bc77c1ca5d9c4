#pragma once
// Hand-written CUDA schedules, loops only: what is computed is fixed by norm_algorithm.h, the same algorithm the
// CPU schedules (schedule_cpu.h) run. Every Func that is not inlined runs on the GPU, so that tensors the caller
// wraps as device pointers (no host memory behind them) are never copied to the host.
//
// Statistics are split reductions with a fixed reduction tree, so results are bitwise repeatable (no atomics):
//   - along contiguous s (NCHW, LayerNorm/RMSNorm rows): a block per (channel, sample), kGpuReductionThreads
//     lanes each summing a strided slice of each chunk (coalesced), the lanes then summed in lane order;
//   - along s with c contiguous (NHWC): a thread per channel, a block per (sample, 64 channels);
//   - the float64 merges (channels and samples of a group) a thread per output.
// The work is split over channels x samples, not over channels alone, so few channels with a large batch still
// fill the GPU, unlike PyTorch's one-block-per-channel kernel (pytorch#12006, #57034); one block per (channel,
// sample) is still coarse for a small batch with huge H x W (a split of each chunk over blocks is owed).
// Elementwise passes: a thread per element, blocks of 32 consecutive elements x 4 rows.
// Not measured yet: no GPU was lent when these were written (docs/CUDA.md says what is owed).
#include <vector>

#include "Halide.h"
#include "norm_algorithm.h"

namespace fusednorm {

constexpr int kGpuReductionThreads = 64;  // lanes of one along-s reduction block
constexpr int kGpuSmallThreads = 128;     // threads per block of the per-channel and per-group kernels
constexpr int kGpuElementwiseLanes = 32;  // elementwise blocks: 32 consecutive elements ...
constexpr int kGpuElementwiseRows = 4;    // ... of 4 rows

// Every stage of f one thread per element of its pure domain: the pure variables fused (`inner` first, the one
// consecutive threads should follow) and split into blocks; an update's reduction runs in order inside each
// thread. For the small per-channel and per-group Funcs. pure_only: the first stage only (the caller schedules the
// updates).
inline void schedule_gpu_flat(Halide::Func f, Halide::Var inner = Halide::Var(), bool pure_only = false) {
  using namespace Halide;
  std::vector<Var> order;
  for (const Var& v : f.args()) {
    if (v.name() == inner.name())
      order.insert(order.begin(), v);
    else
      order.push_back(v);
  }
  f.compute_root();
  const int last_stage = pure_only ? 0 : f.num_update_definitions();
  for (int stage = -1; stage < last_stage; stage++) {
    Stage st = stage < 0 ? Stage(f) : f.update(stage);
    Var fused = order[0];
    if (order.size() > 1) {
      std::vector<VarOrRVar> vars(order.begin(), order.end());
      st.reorder(vars);
      for (size_t i = 1; i < order.size(); i++) {
        Var next(fused.name() + "_" + order[i].name());
        st.fuse(fused, order[i], next);
        fused = next;
      }
    }
    Var block("block"), thread("thread");
    st.split(fused, block, thread, kGpuSmallThreads, TailStrategy::GuardWithIf).gpu_blocks(block).gpu_threads(thread);
  }
}

// An elementwise output over (s, c, n) in storage order: a thread per element, blocks of 32 consecutive elements
// of the innermost axis (a warp reads 128 contiguous bytes) times 4 of the next axis (c or s; n for rows, whose
// middle axis is 1), the grid over the next axis's blocks (x, up to 2^31 - 1), the innermost axis's tiles (y) and
// the outer axis (z), so no index is divided per element. A 32-wide tile keeps a 7 x 7 row 77% busy, where a
// 128-wide one (the first version) kept it 38% busy. The grid's y and z axes take at most 65535 blocks: the runtime
// checks N (channel norms) and the innermost extent / 32.
// (A flat index over all three axes was tried first: splitting it back into (s, c, n) costs two integer divisions
// per element, and its vectors were gathers, not 16-byte loads: no ld.global.v4 in the PTX.)
inline void schedule_gpu_elementwise(Halide::Func f, bool rows) {
  using namespace Halide;
  std::vector<Var> args = f.args();
  Var inner = args[0], middle = args[1], outer = args[2];
  Var tile("tile"), lane("lane"), across_block("across_block"), across_lane("across_lane");
  Var across = rows ? outer : middle, last = rows ? middle : outer;
  f.split(inner, tile, lane, kGpuElementwiseLanes, TailStrategy::GuardWithIf)
      .split(across, across_block, across_lane, kGpuElementwiseRows, TailStrategy::GuardWithIf)
      .reorder(lane, across_lane, across_block, tile, last)
      .gpu_threads(lane, across_lane)
      .gpu_blocks(across_block, tile, last);
}

// A ChannelSums reduction (chunk or tail) inside a block: computed at `at` (or, with own_kernel, as its own
// kernels: the zeros, then a block per (channel, sample) or per (sample, 64 channels) summing). Along contiguous s
// (NCHW, rows): kGpuReductionThreads lanes each sum every kGpuReductionThreads-th element (a warp reads
// consecutive floats), then the lanes are summed in lane order. Across contiguous c (NHWC): a thread per channel
// sums its strided column in order.
inline void schedule_gpu_partial_sums(Halide::Func f, Halide::RDom r, Layout layout, const Axes& a, bool own_kernel,
                                      const Halide::LoopLevel& at = Halide::LoopLevel::root()) {
  using namespace Halide;
  Var rows("rows"), co("co"), ci("ci");
  if (own_kernel) {
    schedule_gpu_flat(f, a.c, /*pure_only=*/true);
  } else {
    f.compute_at(at);
  }
  if (layout == Layout::nhwc) {
    if (own_kernel) {
      f.update()
          .split(a.c, co, ci, kGpuReductionThreads, TailStrategy::GuardWithIf)
          .reorder(ci, a.n, co)
          .gpu_threads(ci)
          .gpu_blocks(a.n, co);
    } else {
      f.gpu_threads(a.c);
      f.update().gpu_threads(a.c);
    }
    return;
  }
  RVar ro("ro"), ri("ri");
  Var lane("lane");
  Func lanes = f.update().split(r.x, ro, ri, kGpuReductionThreads).rfactor(ri, lane);
  LoopLevel lanes_at = at;
  if (own_kernel) {
    f.update().fuse(a.c, a.n, rows).gpu_blocks(rows);
    lanes_at = LoopLevel(f, rows);
  }
  lanes.compute_at(lanes_at).gpu_threads(lane);
  lanes.update().gpu_threads(lane);
}

// ChannelSums on the GPU, four kernels: the tail sums (zeros, then a block per row of them), the float64 totals
// from them (a thread each), and the chunks added to the totals, a block per (channel, sample) (NCHW, rows) or
// per (sample, 64 channels) (NHWC) looping over the chunks, each chunk summed inside the loop. So no buffer has a
// zero extent when S is shorter than a chunk (Halide's CUDA runtime aborts on a zero-byte device allocation) and
// no kernel has zero blocks (its launch would fail). (A stage-specific compute_at, which would put the tail sums
// in the totals' first kernel, is refused by Halide 21's legality check, which only knows a Func's last stage.)
inline void schedule_gpu_channel_sums(ChannelSums& sums, Layout layout, const Axes& a) {
  using namespace Halide;
  Func total = sums.total;
  RVar rk = sums.over_chunks.x;
  schedule_gpu_partial_sums(sums.tail, sums.over_tail, layout, a, true);
  Stage add_chunks = total.update();
  if (layout == Layout::nchw) {
    Var rows("rows");
    add_chunks.fuse(a.c, a.n, rows).gpu_blocks(rows);
  } else {
    Var co("co"), ci("ci");
    add_chunks.split(a.c, co, ci, kGpuReductionThreads, TailStrategy::GuardWithIf)
        .reorder(ci, rk, a.n, co)
        .gpu_threads(ci)
        .gpu_blocks(a.n, co);
  }
  schedule_gpu_flat(total, a.c, /*pure_only=*/true);  // the totals from the tails, a thread each
  schedule_gpu_partial_sums(sums.chunk, sums.over_chunk, layout, a, false, LoopLevel(total, rk));
}

// Column sums over the rows (LayerNorm's and RMSNorm's parameter gradients): partial sums over blocks of
// kGpuSmallThreads rows, a thread per (column, row block), then the partials in order, a thread per column.
inline void schedule_gpu_column_sums(Halide::Func sums, Halide::RDom rows, const Axes& a) {
  using namespace Halide;
  RVar ro("ro"), ri("ri");
  Var row_block("row_block");
  Func partial = sums.update().split(rows.x, ro, ri, kGpuSmallThreads).rfactor(ro, row_block);
  schedule_gpu_flat(partial, a.s);
  schedule_gpu_flat(sums, a.s);
}

}  // namespace fusednorm
