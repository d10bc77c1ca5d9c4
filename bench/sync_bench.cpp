// SyncBatchNorm's cost over MPI (make bench runs it under mpirun -np 2 and -np 4): ResNet-50's BatchNorm layers at
// batch 32 with the batch split over the processes, each process timing, in the same run and on the same per-process
// shape, the synchronized forward (training) and backward against the local BatchNorm's, and the allgather of the
// same size alone. A call's time is the slowest process's (a barrier before each run); the row is the median over
// the runs after a warm-up. Each process runs the kernels on (cores / processes) threads, at least one.
//
//   mpirun -np 4 build/release/bench/fusednorm_sync_bench [--reps N] [--layout nchw|nhwc]
#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "fusednorm/batch_norm.h"
#include "fusednorm/mpi.h"
#include "fusednorm/threads.h"
#include "support/shapes.h"

namespace {

using namespace fusednorm;

// The median over `reps` runs (after `warmup`) of the slowest process's time for one call, in ms.
double time_call(const std::function<void()>& call, int warmup, int reps) {
  for (int i = 0; i < warmup; i++) call();
  std::vector<double> times;
  for (int i = 0; i < reps; i++) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto start = std::chrono::steady_clock::now();
    call();
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    MPI_Allreduce(MPI_IN_PLACE, &ms, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    times.push_back(ms);
  }
  std::nth_element(times.begin(), times.begin() + reps / 2, times.end());
  return times[static_cast<size_t>(reps / 2)];
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  {
    MpiCommunicator world(MPI_COMM_WORLD);
    int reps = 20;
    std::vector<Layout> layouts{Layout::nchw, Layout::nhwc};
    for (int i = 1; i + 1 < argc; i++) {
      if (std::strcmp(argv[i], "--reps") == 0) reps = std::max(1, std::stoi(argv[i + 1]));
      if (std::strcmp(argv[i], "--layout") == 0) {
        layouts = {std::strcmp(argv[i + 1], "nhwc") == 0 ? Layout::nhwc : Layout::nchw};
      }
    }
    const int processes = world.size();
    const int threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / processes);
    set_num_threads(threads);
    if (world.rank() == 0) {
      fmt::print("## SyncBatchNorm over {} processes ({} kernel threads each), ResNet-50 at batch 32 split evenly\n\n",
                 processes, threads);
      fmt::print("| layer, layout | per process | forward: sync / local ms | backward: sync / local ms | allgather "
                 "forward / backward: bytes gathered, ms |\n|---|---|---|---|---|\n");
    }
    for (const shapes::NamedShape& layer : shapes::resnet50_batch32()) {
      for (Layout layout : layouts) {
        std::vector<int64_t> shape = layer.shape;
        shape[0] /= processes;
        const int64_t channels = shape[1];
        int64_t numel = 1;
        for (int64_t extent : shape) numel *= extent;
        std::vector<float> x(static_cast<size_t>(numel)), y(x.size()), dy(x.size()), dx(x.size());
        for (size_t i = 0; i < x.size(); i++) {
          x[i] = static_cast<float>(static_cast<double>(i * 2654435761u % 1000) / 500.0 - 1.0);
          dy[i] = static_cast<float>(static_cast<double>(i * 40503u % 1000) / 500.0 - 1.0);
        }
        std::vector<float> weight(static_cast<size_t>(channels), 1.5f), bias(weight.size(), 0.25f);
        std::vector<float> running_mean(weight.size(), 0.0f), running_var(weight.size(), 1.0f);
        std::vector<float> mean(weight.size()), invstd(weight.size()), grad_weight(weight.size()),
            grad_bias(weight.size());
        auto like_x = [&](std::vector<float>& t) { return TensorView::with_layout(t.data(), shape, layout); };
        auto channel = [&](std::vector<float>& t) { return TensorView(t.data(), {channels}); };
        const BatchNormForwardTensors forward{.input = like_x(x), .output = like_x(y), .weight = channel(weight),
                                              .bias = channel(bias), .running_mean = channel(running_mean),
                                              .running_var = channel(running_var), .save_mean = channel(mean),
                                              .save_invstd = channel(invstd)};
        const BatchNormBackwardTensors backward{.grad_output = like_x(dy), .input = like_x(x), .grad_input = like_x(dx),
                                                .weight = channel(weight), .save_mean = channel(mean),
                                                .save_invstd = channel(invstd), .grad_weight = channel(grad_weight),
                                                .grad_bias = channel(grad_bias)};
        const int warmup = 3;
        const double sync_forward = time_call([&] { sync_batch_norm_forward(forward, world); }, warmup, reps);
        const double local_forward = time_call([&] { batch_norm_forward(forward); }, warmup, reps);
        const double sync_backward = time_call([&] { sync_batch_norm_backward(backward, world); }, warmup, reps);
        const double local_backward = time_call([&] { batch_norm_backward(backward); }, warmup, reps);
        const size_t forward_values = 1 + 3 * static_cast<size_t>(channels);
        const size_t backward_values = 1 + 2 * static_cast<size_t>(channels);
        std::vector<double> send(forward_values), gathered(forward_values * static_cast<size_t>(processes));
        const double gather_forward = time_call(
            [&] { world.allgather({send.data(), forward_values}, {gathered.data(), forward_values * processes}); },
            warmup, reps);
        const double gather_backward = time_call(
            [&] { world.allgather({send.data(), backward_values}, {gathered.data(), backward_values * processes}); },
            warmup, reps);
        if (world.rank() == 0) {
          fmt::print("| {} {} | {} | {:.3f} / {:.3f} ({:+.1f}%) | {:.3f} / {:.3f} ({:+.1f}%) | {} B, {:.3f} / {} B, "
                     "{:.3f} |\n",
                     layer.name, to_string(layout), fmt::join(shape, "x"), sync_forward, local_forward,
                     100.0 * (sync_forward / local_forward - 1.0), sync_backward, local_backward,
                     100.0 * (sync_backward / local_backward - 1.0), forward_values * processes * sizeof(double),
                     gather_forward, backward_values * processes * sizeof(double), gather_backward);
        }
      }
    }
  }
  MPI_Finalize();
  return 0;
}
