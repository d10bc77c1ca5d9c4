#pragma once
// Hand-written CPU schedules for x86-64 and arm-64, loops only: what is computed is fixed by norm_algorithm.h.
// Two parameters differ per architecture, both taken from the target: the vector width (natural_vector_size: 4
// float32 lanes with SSE4.1 and NEON, 8 with AVX2, 16 with AVX-512) and the block size (block_bytes_for). The
// loops, the task size and the chunked sums are the same everywhere.
#include <algorithm>
#include <vector>

#include "Halide.h"
#include "norm_algorithm.h"

namespace fusednorm {

// Bytes of one block in the blocked schedules: the statistics pass and the elementwise pass touch the same
// block one after the other, so it must stay in the core's L2; half of it leaves room for the output lines being
// written. x86-64: 2 MiB of L2 per core on the machines we measured. arm-64: 1 MiB per core on Neoverse N1 and V1
// (Graviton2 and 3, Ampere Altra), 256-512 KiB on Cortex-A76/A78; not measured (no arm-64 machine here, and qemu
// models no caches).
inline int block_bytes_for(const Halide::Target& target) {
  return target.arch == Halide::Target::ARM ? 1 << 19 : 1 << 20;
}
// Elements per parallel task in elementwise passes: enough that the thread pool's cost per task is noise.
constexpr int kElementsPerTask = 1 << 16;

struct CpuScheduleContext {
  const Axes& axes;
  const Problem& problem;
  int vector_width;
  int block_bytes;         // block_bytes_for(target)
  int tensors_reread = 1;  // tensors the statistics read and the elementwise pass reads again
  bool column_sums = false;  // rows with schedule_column_sums (LayerNorm's and RMSNorm's parameter gradients)
};

// What the blocked schedules compute per block, besides the elementwise output.
struct BlockedFuncs {
  std::vector<Halide::Func> elementwise_outputs;  // more outputs over (s, c, n), e.g. dz: same loops
  std::vector<Halide::Func> channel_outputs;      // outputs over (c) (or (s) for rows): one block's worth each
  std::vector<Halide::Func> group_outputs;        // outputs over (g, b)
  std::vector<Halide::Func> per_block;            // intermediate Funcs the block's elementwise pass reads
  // Of those, the ones whose update sums a (channel, sample) intermediate over the samples (its last RVar): the
  // statistics' group sums when they reduce the batch, the backward's per-channel parameter sums.
  std::vector<Halide::Func> sample_sums;
};

inline std::vector<Halide::Func> with_more(Halide::Func first, const std::vector<Halide::Func>& more) {
  std::vector<Halide::Func> all{first};
  all.insert(all.end(), more.begin(), more.end());
  return all;
}

// Chunk and tail sums along contiguous s, vectorised by an rfactor into vector lanes: each is then a
// horizontal add of its lanes' float32 partials, a scalar loop. A row of S elements in L lanes costs about S / L
// dependent vector adds and then L dependent scalar adds, so 16 lanes lose to 8 below S = 16 x 8: a tail under 128
// elements is summed in 8 lanes where vectors are wider (AVX-512): the 7 x 7 NCHW training forward (tails of 49)
// took 0.75-0.86x the time, the backward 0.79-0.89x (old and new kernels paired in one process); 8 lanes for every
// row made [32, 512, 28, 28] slower, 3.0 -> 3.7 ms (docs/PERFORMANCE.md, 2026-12-08).
inline void schedule_sums_over_contiguous_s(ChannelSums& sums, Halide::Func consumer, Halide::Var at,
                                            const CpuScheduleContext& cx) {
  using namespace Halide;
  constexpr int kShortRowLanes = 8;
  const Var k = sums.chunk.args()[1];
  // Names of its own per use: two rfactors of one Func that share split names got each other's lane counts.
  auto sum_in_lanes = [&](Func f, Stage update, RVar r, int width, const std::string& name) {
    RVar rso("rso" + name), rsi("rsi" + name);
    Var lane("lane" + name);
    Func lanes = update.split(r, rso, rsi, width).rfactor(rsi, lane);
    if (f.name() == sums.tail.name() && sums.over_tail.dimensions() == 2) {
      // Tails that span samples (ChannelSums): the lanes of all the block's channels per group of samples, the
      // samples outside the channels, so that a sample's rows of the block are still read as one run. 7 x 7
      // 0.93-0.95x the time in float32, 0.79-0.86x (forward) and 0.87-0.94x (backward) in bfloat16; 14 x 14
      // 0.92-0.98x (paired, avx512). The lanes per channel with its samples inside, reading the rows a channel at
      // a time: 7 x 7 1.14x and 1.41x (docs/PERFORMANCE.md).
      lanes.compute_at(f, cx.axes.n).reorder_storage(lane, cx.axes.c).vectorize(lane);
      lanes.update().reorder(lane, rso, cx.axes.c, sums.over_tail.y, cx.axes.n).vectorize(lane);
      return;
    }
    lanes.compute_at(f, f.name() == sums.chunk.name() ? k : cx.axes.c).vectorize(lane);
    lanes.update().vectorize(lane);
  };
  // A row's chunks one after the other, then the next row's: with the channels inside the chunks, the block's
  // rows were read a chunk of each at a time; bfloat16 [32, 256, 56, 56] (3 chunks a row) took 1.1-1.3x the time.
  // Only where there are chunks: rows shorter than a chunk would run the (row, chunk) loops empty, k innermost.
  Expr has_chunks = sums.over_chunks.x.extent() > 0;
  sums.chunk.specialize(has_chunks).reorder(k, cx.axes.c, cx.axes.n);
  sums.chunk.compute_at(consumer, at);
  sum_in_lanes(sums.chunk, sums.chunk.update().specialize(has_chunks).reorder(k, cx.axes.c, cx.axes.n),
               sums.over_chunk.x, cx.vector_width, "");
  // The tail's extent is S mod the chunk length.
  sums.tail.compute_at(consumer, at);
  if (cx.vector_width > kShortRowLanes) {
    sum_in_lanes(sums.tail, sums.tail.update().specialize(sums.over_tail.x.extent() < kShortRowLanes * 16),
                 sums.over_tail.x, kShortRowLanes, "_short");
  }
  sum_in_lanes(sums.tail, sums.tail.update(), sums.over_tail.x, cx.vector_width, "");
  sums.total.compute_at(consumer, at);
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
  Expr row_length = layout == Layout::nchw ? cx.problem.spatial : cx.problem.channels;
  Expr rows_per_task = max(1, kElementsPerTask / max(row_length, 1));
  if (layout == Layout::nhwc) {
    // One sample (BatchNorm's N x S rows, runtime/norm_kernels.cpp): the rows are s alone, with no division of
    // the fused row index per row (an idiv and 30 instructions per row of 4 vectors: the evaluation forward of
    // BatchNorm1d [256, 64] ran at 0.3 of a copy).
    Var s_task("s_task"), s_of_task("s_of_task");
    elementwise.specialize(cx.problem.batch == 1)
        .vectorize(inner, cx.vector_width, TailStrategy::GuardWithIf)
        .split(outer, s_task, s_of_task, rows_per_task, TailStrategy::GuardWithIf)
        .parallel(s_task);
  }
  if (layout == Layout::nchw) {
    // Samples of at least a task's rows: each task is rows of one sample, with no division of a fused (channel,
    // sample) row index per row (Mullapudi2016's inference schedule, parallel over samples, was ahead of the fused
    // one on the ResNet-50 shapes, docs/PERFORMANCE.md).
    Var c_task("c_task"), c_of_task("c_of_task"), sample_task("sample_task");
    elementwise.specialize(cx.problem.channels >= rows_per_task)
        .vectorize(inner, cx.vector_width, TailStrategy::GuardWithIf)
        .split(outer, c_task, c_of_task, rows_per_task, TailStrategy::GuardWithIf)
        .fuse(c_task, a.n, sample_task)
        .parallel(sample_task);
  }
  elementwise.fuse(outer, a.n, row)
      .vectorize(inner, cx.vector_width, TailStrategy::GuardWithIf)
      .split(row, task, row, rows_per_task, TailStrategy::GuardWithIf)
      .parallel(task);
}

// NCHW, statistics per channel or group of channels (BatchNorm, InstanceNorm, GroupNorm): a parallel loop
// over blocks of whole groups of channels, all samples inside; in each, the reductions, then the elementwise
// output over the same block while it is still in L2, and the block's per-channel and per-group outputs in
// the same loop (compute_with). One read of x from memory instead of two.
// Measured 2026-11-26 (2-core AVX-512 Xeon, ResNet-50 batch 32): BatchNorm forward training at 0.37-0.47 of the
// non-temporal copy out of place, bound by write-allocate on y (no streaming stores in Halide 21), 0.51-0.77 in
// place; docs/PERFORMANCE.md.
inline void schedule_nchw_channel_blocked(Halide::Func elementwise, ChannelSums& sums, const BlockedFuncs& funcs,
                                          const CpuScheduleContext& cx) {
  using namespace Halide;
  const Axes& a = cx.axes;
  const Problem& p = cx.problem;
  Var co("co"), ci("ci");
  // Every tensor the statistics read stays for the elementwise pass: x, and dy (and y) in the backward. Counted in
  // the tensors' own bytes: 16-bit blocks sized as if float32, half as many elements, took 1.05-1.25x the time on
  // [32, 512, 28, 28] and [32, 1024, 14, 14] (scripts/kernel_pair.sh, docs/PERFORMANCE.md 2026-12-08).
  Expr group_bytes =
      cast<int64_t>(p.spatial) * p.batch * p.group_size * p.spec.storage_type().bytes() * cx.tensors_reread;
  Expr groups = p.channels / p.group_size;
  Expr groups_per_block = cast<int>(clamp(cast<int64_t>(cx.block_bytes) / max(group_bytes, 1), 1, groups));
  Expr block = groups_per_block * p.group_size;

  // Samples outside the block's channels: the rows of one sample are adjacent in memory, so the output pass writes
  // one run of the block's channels per sample instead of a row of each sample in turn (at 7 x 7, rows of 196 bytes
  // 400 KB apart): the 7 x 7 forward and backward 0.85x the time, the larger shapes level or faster.
  for (Func f : with_more(elementwise, funcs.elementwise_outputs)) {
    f.split(a.c, co, ci, block, TailStrategy::GuardWithIf)
        .reorder(a.s, ci, a.n, co)
        .vectorize(a.s, cx.vector_width, TailStrategy::GuardWithIf)
        .parallel(co);
  }
  for (Func f : funcs.elementwise_outputs) f.compute_with(elementwise, co);
  for (Func f : funcs.channel_outputs) {
    f.split(a.c, co, ci, block, TailStrategy::GuardWithIf).parallel(co).compute_with(elementwise, co);
  }
  // compute_with needs the same loop names: g is renamed c before it is split into blocks.
  for (Func f : funcs.group_outputs) {
    f.rename(a.g, a.c)
        .split(a.c, co, ci, groups_per_block, TailStrategy::GuardWithIf)
        .reorder(ci, a.b, co)
        .parallel(co)
        .compute_with(elementwise, co);
  }
  for (Func f : funcs.per_block) f.compute_at(elementwise, co);
  schedule_sums_over_contiguous_s(sums, elementwise, co, cx);
}

// The other outputs of a parallel loop `no` over blocks of `per_block` samples (or rows) of the elementwise output:
// its other elementwise outputs in the same loop, and its outputs over (g, b), b renamed n so that compute_with
// finds the loop of the same name.
inline void fuse_block_outputs(Halide::Func elementwise, const BlockedFuncs& funcs, const Axes& a, Halide::Var no,
                               Halide::Var ni, Halide::Expr per_block) {
  using namespace Halide;
  for (Func f : funcs.elementwise_outputs) f.compute_with(elementwise, no);
  for (Func f : funcs.group_outputs) {
    f.rename(a.b, a.n)
        .split(a.n, no, ni, per_block, TailStrategy::GuardWithIf)
        .reorder(a.g, ni, no)
        .parallel(no)
        .compute_with(elementwise, no);
  }
}

// Rows per block of schedule_row_blocked: about kElementsPerTask elements, but at least two blocks where there are
// two rows (one block is one thread: a cache-resident [256, 256] LayerNorm backward took 0.07-0.10 ms in one block,
// 0.05 in two; eight blocks were slower on [16, 8192]). With column sums, also at least a
// kColumnSumBlocks-th of the rows: each block adds its rows into a float64 partial of every column, allocated per
// call, and at 256 blocks of 4096 columns (16 MiB of partials) LayerNorm backward [4096, 4096] took 32 ms against
// 16 ms with 32 blocks (2-core AMD EPYC VM, 2026-12-07, docs/PERFORMANCE.md). The cost: at most 32 parallel tasks.
constexpr int kColumnSumBlocks = 32;
inline Halide::Expr rows_per_row_block(const CpuScheduleContext& cx) {
  using Halide::max;
  const Problem& p = cx.problem;
  Halide::Expr rows = max(1, min(kElementsPerTask / max(p.spatial, 1), (p.batch + 1) / 2));
  return cx.column_sums ? max(rows, (p.batch + kColumnSumBlocks - 1) / kColumnSumBlocks) : rows;
}

// LayerNorm and RMSNorm rows, (s, 1, n): a parallel loop over blocks of rows, each block's statistics and then
// its elementwise output while it is in L2, and its per-row outputs in the same loop.
inline void schedule_row_blocked(Halide::Func elementwise, ChannelSums& sums, const BlockedFuncs& funcs,
                                 const CpuScheduleContext& cx) {
  using namespace Halide;
  const Axes& a = cx.axes;
  Var no("no"), ni("ni");
  Expr rows_per_block = rows_per_row_block(cx);
  for (Func f : with_more(elementwise, funcs.elementwise_outputs)) {
    f.split(a.n, no, ni, rows_per_block, TailStrategy::GuardWithIf)
        .reorder(a.s, a.c, ni, no)
        .vectorize(a.s, cx.vector_width, TailStrategy::GuardWithIf)
        .parallel(no);
  }
  fuse_block_outputs(elementwise, funcs, a, no, ni, rows_per_block);
  for (Func f : funcs.per_block) f.compute_at(elementwise, no);
  schedule_sums_over_contiguous_s(sums, elementwise, no, cx);
}

// Column sums over the rows (LayerNorm's and RMSNorm's parameter gradients), in two stages: each block of rows of
// schedule_row_blocked sums its own rows inside the row pass, while the block is still in L2 (an rfactor over the
// blocks, fused with the elementwise loop), then the blocks' sums are added in order, vectorised along s and
// parallel over strips of s. Deterministic whatever the threads, and x and dy are read from memory once: as a
// separate pass over all rows, LayerNorm backward [8192, 1024] took 7.3 ms against oneDNN's 4.2.
inline void schedule_column_sums(Halide::Func sums, Halide::RDom rows, Halide::Func elementwise,
                                 const CpuScheduleContext& cx) {
  using namespace Halide;
  const Axes& a = cx.axes;
  const int vec = cx.vector_width;
  RVar rblock("rblock"), rrow("rrow_of_block");
  Var no("no"), ni("ni");
  // The blocks' axis is n, as in the elementwise loop: compute_with fuses loops of the same names.
  Func per_block = sums.update()
                       .split(rows.x, rblock, rrow, rows_per_row_block(cx), TailStrategy::GuardWithIf)
                       .rfactor(rblock, a.n);
  per_block.compute_root().vectorize(a.s, vec, TailStrategy::GuardWithIf);
  per_block.update()
      .split(a.n, no, ni, 1)
      .reorder(a.s, rrow, ni, no)
      .vectorize(a.s, vec, TailStrategy::GuardWithIf)
      .parallel(no)
      .compute_with(elementwise, no);
  Var so("so"), si("si");
  sums.compute_root().vectorize(a.s, vec, TailStrategy::GuardWithIf);
  sums.update()
      .split(a.s, so, si, vec, TailStrategy::GuardWithIf)
      .reorder(si, rblock, so)
      .vectorize(si)
      .parallel(so);
}

// A Func computed at root over channels (or groups first), vectorised along its first argument.
inline void vectorize_first_axis(Halide::Func f, int vector_width) {
  f.vectorize(f.args()[0], vector_width, Halide::TailStrategy::GuardWithIf);
}

// NHWC's reductions: chunk and tail sums, parallel over samples and vectorised over c, merged per channel and per
// group (schedule_nhwc_two_pass's first pass).
inline void schedule_nhwc_sums(ChannelSums& sums, const BlockedFuncs& funcs, const CpuScheduleContext& cx) {
  using namespace Halide;
  const Axes& a = cx.axes;
  const int vec = cx.vector_width;
  // Parallel over samples, not over (chunk, sample) fused: a fused loop is given at least one iteration, and
  // with S shorter than a chunk there are no full chunks, so that iteration would read past x.
  Var k = sums.chunk.args()[1];
  // Samples per parallel task: one, unless a sample is short (BatchNorm1d's (N, C) rows are one element each).
  Expr samples_per_task = max(1, kElementsPerTask / max(cx.problem.channels * cx.problem.spatial, 1));
  Var task("task");
  sums.total.compute_root()
      .split(a.n, task, a.n, samples_per_task, TailStrategy::GuardWithIf)
      .vectorize(a.c, vec, TailStrategy::GuardWithIf)
      .parallel(task);
  sums.total.update()
      .reorder(a.c, sums.over_chunks.x, a.n)
      .split(a.n, task, a.n, samples_per_task, TailStrategy::GuardWithIf)
      .vectorize(a.c, vec, TailStrategy::GuardWithIf)
      .parallel(task);
  // Stored per task and computed per sample: one allocation per task, folded over the task's samples, rather
  // than one per sample (BatchNorm1d's [32, 64]: 256 of 284 allocations in a training step).
  sums.chunk.store_at(sums.total, task).compute_at(sums.total, a.n).vectorize(a.c, vec, TailStrategy::GuardWithIf);
  Stage chunk_update =
      sums.chunk.update().reorder(a.c, sums.over_chunk.x, k, a.n).vectorize(a.c, vec, TailStrategy::GuardWithIf);
  // One sample (BatchNorm: the runtime passes its N x S rows as one sample, runtime/norm_kernels.cpp): parallel
  // over that sample's chunks instead.
  Var chunk_task("chunk_task");
  Expr chunks_per_task = max(1, kElementsPerTask / max(cx.problem.channels * sum_chunk_length(cx.problem), 1));
  chunk_update.specialize(cx.problem.batch == 1)
      .split(k, chunk_task, k, chunks_per_task, TailStrategy::GuardWithIf)
      .parallel(chunk_task);
  sums.tail.store_at(sums.total, task).compute_at(sums.total, a.n).vectorize(a.c, vec, TailStrategy::GuardWithIf);
  sums.tail.update().reorder(a.c, sums.over_tail.x, a.n).vectorize(a.c, vec, TailStrategy::GuardWithIf);
  // Per channel (or group): vectorised too. Scalar, the float64 divisions of the statistics were a third of the
  // kernel's own time in BatchNorm1d [32, 64] (perf annotate).
  for (Func f : funcs.per_block) {
    const bool sums_samples = std::any_of(funcs.sample_sums.begin(), funcs.sample_sums.end(),
                                          [&](const Func& g) { return g.name() == f.name(); });
    f.compute_root();
    if (!sums_samples) vectorize_first_axis(f, vec);
  }
  for (Func f : funcs.channel_outputs) vectorize_first_axis(f, vec);
  for (Func f : funcs.group_outputs) vectorize_first_axis(f, vec);
  // The (channel, sample) sums are stored channels innermost: summed over samples one channel at a time, each
  // access would be a cache line of its own (BatchNorm1d, 8192 x 1024: 245 ms for a 34 MB tensor). Samples
  // outermost, vectors across channels. Not for GroupNorm's group sums, whose channels in a group are the inner
  // reduction (and whose samples are not summed).
  for (Func f : funcs.sample_sums) {
    const std::vector<Internal::ReductionVariable>& rvars = f.update().get_schedule().rvars();
    const bool sums_groups_of_channels = rvars.size() > 1;
    if (sums_groups_of_channels && !cx.problem.spec.reduces_batch()) continue;
    Var inner = f.args()[0];
    std::vector<VarOrRVar> order;
    for (size_t i = 0; i + 1 < rvars.size(); i++) order.emplace_back(RVar(rvars[i].var));
    order.emplace_back(inner);
    order.emplace_back(RVar(rvars.back().var));
    f.vectorize(inner, vec, TailStrategy::GuardWithIf);
    f.update().reorder(order).vectorize(inner, vec, TailStrategy::GuardWithIf);
  }
}

// NHWC: channels are innermost, so a block of channels is strided across all of x and cannot stay in cache.
// Two passes: the sums (schedule_nhwc_sums), then the elementwise pass, parallel over rows and vectorised over c.
inline void schedule_nhwc_two_pass(Halide::Func elementwise, ChannelSums& sums, const BlockedFuncs& funcs,
                                   const CpuScheduleContext& cx) {
  schedule_nhwc_sums(sums, funcs, cx);
  for (Halide::Func f : with_more(elementwise, funcs.elementwise_outputs)) schedule_rows(f, Layout::nhwc, cx);
}

// NHWC, statistics per sample and no sums over samples (GroupNorm's forward; InstanceNorm's running statistics and
// the backwards' parameter gradients sum over the samples, and keep the two passes): a parallel loop
// over blocks of whole samples, each block's sums and then its elementwise pass while the block is in cache, and
// the block's per-group outputs in the same loop. Inside a block, the sums are parallel over chunks of rows and the
// elementwise pass over tasks of rows, so that one block (a batch of one) still uses every thread. A sample larger
// than the block is one block, and stays in the last-level cache between the two passes (the U-Net GroupNorm's,
// 5 MiB): two passes over all samples read x from memory twice, 0.6x PyTorch's channels-last GroupNorm, which
// works a sample at a time.
inline void schedule_nhwc_sample_blocked(Halide::Func elementwise, ChannelSums& sums, const BlockedFuncs& funcs,
                                         const CpuScheduleContext& cx) {
  using namespace Halide;
  const Axes& a = cx.axes;
  const Problem& p = cx.problem;
  const int vec = cx.vector_width;
  Var no("no"), ni("ni");
  Expr sample_bytes = cast<int64_t>(p.spatial) * p.channels * 4 * cx.tensors_reread;
  Expr samples_per_block = cast<int>(clamp(cast<int64_t>(cx.block_bytes) / max(sample_bytes, 1), 1, p.batch));
  Expr rows_per_task = max(1, kElementsPerTask / max(p.channels, 1));
  for (Func f : with_more(elementwise, funcs.elementwise_outputs)) {
    Var s_task("s_task"), s_of_task("s_of_task");
    f.split(a.n, no, ni, samples_per_block, TailStrategy::GuardWithIf)
        .split(a.s, s_task, s_of_task, rows_per_task, TailStrategy::GuardWithIf)
        .reorder(a.c, s_of_task, s_task, ni, no)
        .vectorize(a.c, vec, TailStrategy::GuardWithIf)
        .parallel(s_task)
        .parallel(no);
  }
  fuse_block_outputs(elementwise, funcs, a, no, ni, samples_per_block);
  for (Func f : funcs.per_block) {
    const bool sums_channels = std::any_of(funcs.sample_sums.begin(), funcs.sample_sums.end(),
                                           [&](const Func& g) { return g.name() == f.name(); });
    f.compute_at(elementwise, no);
    if (!sums_channels) vectorize_first_axis(f, vec);
  }
  // The block's chunk sums, parallel over chunks of its rows; then merged per channel, vectorised over c.
  Var k = sums.chunk.args()[1];
  Var chunk_task("chunk_task");
  Expr chunks_per_task = max(1, kElementsPerTask / max(p.channels * sum_chunk_length(p), 1));
  sums.total.compute_at(elementwise, no).vectorize(a.c, vec, TailStrategy::GuardWithIf);
  sums.total.update().reorder(a.c, sums.over_chunks.x, a.n).vectorize(a.c, vec, TailStrategy::GuardWithIf);
  sums.chunk.compute_at(elementwise, no).vectorize(a.c, vec, TailStrategy::GuardWithIf);
  sums.chunk.update()
      .reorder(a.c, sums.over_chunk.x, k, a.n)
      .vectorize(a.c, vec, TailStrategy::GuardWithIf)
      .split(k, chunk_task, k, chunks_per_task, TailStrategy::GuardWithIf)
      .parallel(chunk_task);
  sums.tail.compute_at(elementwise, no).vectorize(a.c, vec, TailStrategy::GuardWithIf);
  sums.tail.update().reorder(a.c, sums.over_tail.x, a.n).vectorize(a.c, vec, TailStrategy::GuardWithIf);
}

// Reductions alone, into per-channel outputs (SyncBatchNorm's statistics and backward_reduce kernels): NCHW in
// parallel blocks of channels of about kElementsPerTask elements, each channel's sums along contiguous s; NHWC as
// the two-pass schedule's first pass.
inline void schedule_channel_reductions(Layout layout, Halide::Func output, ChannelSums& sums,
                                        const BlockedFuncs& funcs, const CpuScheduleContext& cx) {
  using namespace Halide;
  const Axes& a = cx.axes;
  const Problem& p = cx.problem;
  if (layout == Layout::nhwc) {
    schedule_nhwc_sums(sums, funcs, cx);
    vectorize_first_axis(output, cx.vector_width);
    return;
  }
  Var co("co"), ci("ci");
  Expr channel_elements = max(cast<int64_t>(p.spatial) * p.batch, 1);
  Expr block = cast<int>(clamp(cast<int64_t>(kElementsPerTask) / channel_elements, 1, p.channels));
  output.split(a.c, co, ci, block, TailStrategy::GuardWithIf).parallel(co);
  for (Func f : funcs.per_block) f.compute_at(output, co);
  schedule_sums_over_contiguous_s(sums, output, co, cx);
}

// The schedule of a kernel that reduces and then writes elementwise: rows for parameters that follow s,
// channel blocks in NCHW, two passes in NHWC.
inline void schedule_statistics_then_elementwise(const NormSpec& spec, Halide::Func elementwise, ChannelSums& sums,
                                                 const BlockedFuncs& funcs, const CpuScheduleContext& cx) {
  if (spec.affine_per_element()) {
    schedule_row_blocked(elementwise, sums, funcs, cx);
  } else if (spec.layout == Layout::nchw) {
    schedule_nchw_channel_blocked(elementwise, sums, funcs, cx);
  } else if (!spec.reduces_batch() && funcs.channel_outputs.empty()) {
    schedule_nhwc_sample_blocked(elementwise, sums, funcs, cx);
  } else {
    schedule_nhwc_two_pass(elementwise, sums, funcs, cx);
  }
}

// Elementwise only (inference).
inline void schedule_elementwise(Halide::Func elementwise, Layout layout, const std::vector<Halide::Func>& per_channel,
                                 const CpuScheduleContext& cx) {
  for (Halide::Func f : per_channel) {
    f.compute_root();
    vectorize_first_axis(f, cx.vector_width);
  }
  schedule_rows(elementwise, layout, cx);
}

}  // namespace fusednorm
