#pragma once
// Hand-written CUDA schedules, loops only: what is computed is fixed by norm_algorithm.h, the same algorithm the
// CPU schedules (schedule_cpu.h) run. Every Func that is not inlined runs on the GPU, so that tensors the caller
// wraps as device pointers (no host memory behind them) are never copied to the host.
//
// Statistics are split reductions with a fixed reduction tree, so results are bitwise repeatable (no atomics):
//   - along contiguous s (NCHW; LayerNorm/RMSNorm backward rows): a block per 256 / lanes rows (channel, sample),
//     `lanes` (16) per row each summing a strided slice of each chunk in a register, the lanes then summed in order;
//   - along s with c contiguous (NHWC): a thread per channel, a block per (sample, 64 channels);
//   - the float64 merges (channels and samples of a group) a thread per output.
// The work is split over channels x samples, not over channels alone, so few channels with a large batch still
// fill the GPU, unlike PyTorch's one-block-per-channel kernel (pytorch#12006, #57034); one block per (channel,
// sample) is still coarse for a small batch with huge H x W (a split of each chunk over blocks is owed).
// Elementwise passes: blocks of 32 consecutive elements x 8 threads, 4 rows per thread (8 for inference).
// LayerNorm's and RMSNorm's forward: one kernel, a block per row (schedule_gpu_rows_forward).
// Measured on an H200: docs/PERFORMANCE.md ("CUDA on an H200"), docs/CUDA.md.
#include <vector>

#include "Halide.h"
#include "norm_algorithm.h"

namespace fusednorm {

constexpr int kGpuReductionThreads = 64;  // channels of one NHWC reduction block
constexpr int kGpuLanes = 16;             // lanes of one along-s row reduction, by default (measured: docs/CUDA.md)
constexpr int kGpuReductionBlock = 256;   // threads of an along-s reduction block: kGpuReductionBlock / lanes rows
constexpr int kGpuSmallThreads = 128;     // threads per block of the per-channel and per-group kernels
constexpr int kGpuElementwiseLanes = 32;  // elementwise blocks: 32 consecutive elements ...
constexpr int kGpuElementwiseRows = 8;    // ... of 8 rows of threads ...
constexpr int kGpuElementwiseRowsPerThread = 4;  // ... each doing 4 rows (y of the training forward, dx) ...
// ... or 8 (the inference forward, which computes no statistics: 0.80 of the copy against 0.71 with 4 on the H200;
// the training forward lost 5 to 9% with 8, the backward moved within the noise between runs)
constexpr int kGpuInferenceRowsPerThread = 8;
constexpr int kGpuMergeGroup = 16;   // lanes a thread merges at a time (more lanes per row: merged in groups)
constexpr int kGpuFusedLanes = 128;  // threads of a LayerNorm / RMSNorm forward block (a row: one row per block keeps
                                     // every region exact; with 2 rows Halide bounded the threads by all rows)

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

// An elementwise output over (s, c, n) in storage order: blocks of 32 consecutive elements of the innermost axis (a
// warp reads 128 contiguous bytes) times 8 x rows_per_thread of the next axis (c or s; n for rows, whose middle
// axis is 1), each thread doing rows_per_thread of those rows, unrolled, so that as many independent loads are in
// flight per thread. The grid runs over
// the next axis's blocks (x, up to 2^31 - 1), the innermost axis's tiles (y) and the outer axis (z), so no index is
// divided per element. The grid's y and z axes take at most 65535 blocks: the runtime checks N (channel norms) and
// the innermost extent / 32.
// Measured on an H200 (2026-12-04, docs/PERFORMANCE.md): one element per thread in blocks of 32 x 4 moved 1.3 to
// 1.7 TB/s against a 4.1 TB/s copy: too few loads in flight. (A flat index over all three axes was tried before
// that: two integer divisions per element, and its vectors were gathers, not 16-byte loads.)
inline void schedule_gpu_elementwise(Halide::Func f, bool rows,
                                     int rows_per_thread = kGpuElementwiseRowsPerThread) {
  using namespace Halide;
  std::vector<Var> args = f.args();
  Var inner = args[0], middle = args[1], outer = args[2];
  Var tile("tile"), lane("lane"), across_block("across_block"), across_in("across_in"), across_lane("across_lane"),
      unrolled("unrolled");
  Var across = rows ? outer : middle, last = rows ? middle : outer;
  f.split(inner, tile, lane, kGpuElementwiseLanes, TailStrategy::GuardWithIf)
      .split(across, across_block, across_in, kGpuElementwiseRows * rows_per_thread, TailStrategy::GuardWithIf)
      .split(across_in, unrolled, across_lane, kGpuElementwiseRows)
      .reorder(unrolled, lane, across_lane, across_block, tile, last)
      .unroll(unrolled)
      .gpu_threads(lane, across_lane)
      .gpu_blocks(across_block, tile, last);
}

// A ChannelSums reduction (chunk or tail) inside a block: computed at `at` (or, with own_kernel, as its own
// kernels: the zeros, then the sums). Along contiguous s (NCHW, rows): a block sums 256 / lanes_per_row rows at
// once (rows of consecutive channels; of consecutive samples for LayerNorm's and RMSNorm's rows, whose channel
// axis has extent 1), lanes_per_row lanes per row each summing every lanes_per_row-th element (consecutive lanes
// read consecutive floats), 4 loads unrolled; then a thread per row sums its lanes in lane order. Across
// contiguous c (NHWC): a thread per channel sums its strided column in order.
// Measured on an H200 (2026-12-04): a block per row with its 64 lanes merged by one thread took 3.2 ms for the
// 103 MB of ResNet-50's 7 x 7 layer at batch 256 (524288 blocks of 49 elements).
inline void schedule_gpu_partial_sums(Halide::Func f, Halide::RDom r, Layout layout, const Axes& a, bool rows,
                                      int lanes_per_row, bool own_kernel,
                                      const Halide::LoopLevel& at = Halide::LoopLevel::root()) {
  using namespace Halide;
  Var co("co"), ci("ci");
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
  const Var tiled = rows ? a.n : a.c, other = rows ? a.c : a.n;
  RVar ro("ro"), ri("ri"), ro_outer("ro_outer"), ro_inner("ro_inner");
  Var lane("lane"), tile("tile"), row("row");
  Func lanes = f.update().split(r.x, ro, ri, lanes_per_row).rfactor(ri, lane);
  // More lanes than a merge group: the lanes are merged in groups of kGpuMergeGroup, a thread per (row, group), then
  // the groups by a thread per row, instead of one thread per row reading every lane (128 lanes in a row: 256 serial
  // loads from shared memory per block).
  Func groups;
  RVar rgroup("rgroup"), rlane("rlane");
  Var group("group");
  RVar merged = ri;
  if (lanes_per_row > kGpuMergeGroup) {
    groups = f.update().split(ri, rgroup, rlane, kGpuMergeGroup).rfactor(rgroup, group);
    merged = rgroup;
  }
  // Each lane's sum accumulates inside its thread (a register); the wrapper, one value per (row, lane) in shared
  // memory, is what the per-row merge reads. (Computed at the block, the accumulator itself lived in shared memory:
  // a load and a store per element, 1 TB/s on an H200.)
  Func lane_sums = lanes.in(groups.defined() ? groups : f);
  LoopLevel lane_sums_at = at;
  if (own_kernel) {
    f.update()
        .split(tiled, tile, row, kGpuReductionBlock / lanes_per_row, TailStrategy::GuardWithIf)
        .reorder(merged, row, tile, other)
        .gpu_blocks(tile, other)
        .gpu_threads(row);
    lane_sums_at = LoopLevel(f, tile);
  } else {
    std::vector<VarOrRVar> pure_order = {tiled}, update_order = {merged, tiled};
    for (const Var& v : f.args()) {
      if (v.name() != tiled.name()) {
        pure_order.push_back(v);
        update_order.push_back(v);
      }
    }
    f.reorder(pure_order).gpu_threads(tiled);
    f.update().reorder(update_order).gpu_threads(tiled);
  }
  // The thread loops (lane, row) outermost in the block, every other loop of the block's region (extent 1) inside.
  std::vector<VarOrRVar> order = {lane, tiled};
  for (const Var& v : lane_sums.args()) {
    if (v.name() != lane.name() && v.name() != tiled.name()) order.push_back(v);
  }
  lane_sums.compute_at(lane_sums_at).reorder(order).gpu_threads(lane, tiled);
  lanes.compute_at(lane_sums, lane);
  lanes.update().split(ro, ro_outer, ro_inner, 4).unroll(ro_inner);
  if (groups.defined()) {
    std::vector<VarOrRVar> pure_order = {group, tiled}, update_order = {rlane, group, tiled};
    for (const Var& v : groups.args()) {
      if (v.name() != group.name() && v.name() != tiled.name()) {
        pure_order.push_back(v);
        update_order.push_back(v);
      }
    }
    groups.compute_at(lane_sums_at).reorder(pure_order).gpu_threads(group, tiled);
    groups.update().reorder(update_order).gpu_threads(group, tiled);
  }
}

// ChannelSums on the GPU, four kernels: the tail sums (zeros, then a block per row of them), the float64 totals
// from them (a thread each), and the chunks added to the totals, a block per (channel, sample) (NCHW, rows) or
// per (sample, 64 channels) (NHWC) looping over the chunks, each chunk summed inside the loop. So no buffer has a
// zero extent when S is shorter than a chunk (Halide's CUDA runtime aborts on a zero-byte device allocation) and
// no kernel has zero blocks (its launch would fail). (A stage-specific compute_at, which would put the tail sums
// in the totals' first kernel, is refused by Halide 21's legality check, which only knows a Func's last stage.)
inline void schedule_gpu_channel_sums(ChannelSums& sums, Layout layout, const Axes& a, bool rows,
                                      int lanes_per_row = kGpuLanes) {
  using namespace Halide;
  Func total = sums.total;
  RVar rk = sums.over_chunks.x;
  schedule_gpu_partial_sums(sums.tail, sums.over_tail, layout, a, rows, lanes_per_row, true);
  Stage add_chunks = total.update();
  if (layout == Layout::nchw) {
    const Var tiled = rows ? a.n : a.c, other = rows ? a.c : a.n;
    Var tile("tile"), row("row");
    add_chunks.split(tiled, tile, row, kGpuReductionBlock / lanes_per_row, TailStrategy::GuardWithIf)
        .reorder(row, rk, tile, other)
        .gpu_blocks(tile, other)
        .gpu_threads(row);
  } else {
    Var co("co"), ci("ci");
    add_chunks.split(a.c, co, ci, kGpuReductionThreads, TailStrategy::GuardWithIf)
        .reorder(ci, rk, a.n, co)
        .gpu_threads(ci)
        .gpu_blocks(a.n, co);
  }
  schedule_gpu_flat(total, a.c, /*pure_only=*/true);  // the totals from the tails, a thread each
  schedule_gpu_partial_sums(sums.chunk, sums.over_chunk, layout, a, rows, lanes_per_row, false, LoopLevel(total, rk));
}

// ChannelSums of rows (LayerNorm, RMSNorm) inside the block `at` of a consumer: the tail's lanes, then the float64
// totals, a thread per row, looping over the chunks, each summed by the block's lanes inside that loop.
inline void schedule_gpu_channel_sums_at(ChannelSums& sums, const Axes& a, int lanes_per_row,
                                         const Halide::LoopLevel& at) {
  using namespace Halide;
  Func total = sums.total;
  RVar rk = sums.over_chunks.x;
  schedule_gpu_partial_sums(sums.tail, sums.over_tail, Layout::nchw, a, /*rows=*/true, lanes_per_row, false, at);
  total.compute_at(at).reorder(a.n, a.c).gpu_threads(a.n);
  total.update().reorder(a.n, rk, a.c).gpu_threads(a.n);
  schedule_gpu_partial_sums(sums.chunk, sums.over_chunk, Layout::nchw, a, true, lanes_per_row, false,
                            LoopLevel(total, rk));
}

// LayerNorm's and RMSNorm's forward in one kernel: a block per row, kGpuFusedLanes threads;
// the rows' sums (lanes in registers, as above), their statistics and coefficients computed in the block, then y,
// whose second read of x hits L1/L2 (a row of 4096 floats is 16 KB), and the saved statistics fused into the same
// loop over blocks (compute_with). per_row: the Funcs of (g or c, b) between the sums and y.
// Measured on an H200 (2026-12-04): as separate kernels (sums, then about ten per-row kernels, then y), 8192 x 4096
// took 0.235 ms against torch.compile's 0.113, x read twice from HBM and a launch per kernel.
inline void schedule_gpu_rows_forward(Halide::Func y, Halide::Func saved, ChannelSums& sums,
                                      const std::vector<Halide::Func>& per_row, const Axes& a) {
  using namespace Halide;
  Var so("so"), si("si"), so_outer("so_outer"), so_inner("so_inner");
  // Each thread's elements of the row 4 at a time, unrolled: 4 loads in flight (the row is in L1/L2 by then).
  y.split(a.s, so, si, kGpuFusedLanes, TailStrategy::GuardWithIf)
      .split(so, so_outer, so_inner, 4, TailStrategy::GuardWithIf)
      .reorder(so_inner, so_outer, si, a.c, a.n)
      .unroll(so_inner)
      .gpu_threads(si)
      .gpu_blocks(a.n);
  const LoopLevel block(y, a.n);
  schedule_gpu_channel_sums_at(sums, a, kGpuFusedLanes, block);
  for (Func f : per_row) {
    f.compute_at(block).gpu_threads(a.b);
    for (int i = 0; i < f.num_update_definitions(); i++) f.update(i).gpu_threads(a.b);
  }
  // compute_with pairs loops by their full names: the saved statistics' loop over rows is n too.
  saved.rename(a.b, a.n).reorder(a.g, a.n).gpu_blocks(a.n).compute_with(y, a.n);
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
