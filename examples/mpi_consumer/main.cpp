// SyncBatchNorm over MPI from the installed package: each process normalizes its own 3 samples with the statistics of
// all processes' samples, then checks that every process holds the same running statistics.
#include <fusednorm/layers.h>
#include <fusednorm/mpi.h>
#include <mpi.h>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int same = 0;
  {
    fusednorm::MpiCommunicator world(MPI_COMM_WORLD);
    const std::vector<int64_t> shape{3, 4, 5, 5};
    std::vector<float> x(3 * 4 * 5 * 5), y(x.size()), dy(x.size(), 1.0f), dx(x.size());
    for (size_t i = 0; i < x.size(); i++) x[i] = static_cast<float>((i * 7 + 13 * world.rank()) % 11) - 5.0f;

    fusednorm::SyncBatchNorm bn(4, world);
    bn.forward(fusednorm::TensorView(x.data(), shape), fusednorm::TensorView(y.data(), shape));
    bn.backward(fusednorm::TensorView(dy.data(), shape), fusednorm::TensorView(dx.data(), shape));

    std::vector<float> all(bn.running_mean().size() * static_cast<size_t>(world.size()));
    MPI_Allgather(bn.running_mean().data(), 4, MPI_FLOAT, all.data(), 4, MPI_FLOAT, MPI_COMM_WORLD);
    same = 1;
    for (size_t i = 0; i < all.size(); i++) same &= all[i] == all[i % 4] ? 1 : 0;
    if (world.rank() == 0) {
      std::printf("mpi_consumer: %d processes, running_mean[0] %.6f, the same on every process: %s\n", world.size(),
                  bn.running_mean()[0], same ? "yes" : "no");
    }
  }
  MPI_Finalize();
  return same ? 0 : 1;
}
