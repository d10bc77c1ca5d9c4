// SyncBatchNorm over MPI (fusednorm/mpi.h): `mpirun -np 2` and `-np 4` run this (tests/CMakeLists.txt), each process a
// member of MPI_COMM_WORLD holding its slice of one batch (the same random batch in every process), and the checks of
// tests/support/sync_batch.h over the whole batch after every process's results are gathered. Both layouts, every
// epilogue BatchNorm has, uneven splits with an empty member, the hard numerics.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "fusednorm/mpi.h"
#include "support/sync_batch.h"

namespace fusednorm {
namespace {

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}
int world_size() {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

// Every member's copy of a per-channel vector, from the member that computed it.
void share(std::vector<float>& own, std::vector<std::vector<float>*> all) {
  std::vector<float> gathered(own.size() * all.size());
  MPI_Allgather(own.data(), static_cast<int>(own.size()), MPI_FLOAT, gathered.data(), static_cast<int>(own.size()),
                MPI_FLOAT, MPI_COMM_WORLD);
  for (size_t r = 0; r < all.size(); r++) {
    all[r]->assign(gathered.begin() + static_cast<std::ptrdiff_t>(r * own.size()),
                   gathered.begin() + static_cast<std::ptrdiff_t>((r + 1) * own.size()));
  }
}

// This process's member runs `call`; then every process gets every member's slices of y, dx, dz and its state.
void on_processes(test::Batch& b, const test::MemberCall& call) {
  ASSERT_EQ(static_cast<int>(b.split.size()), world_size());
  MpiCommunicator world(MPI_COMM_WORLD);
  call(world);
  const int rank = world.rank();
  const int64_t sample = b.d.c * b.d.s;
  std::vector<int> counts, offsets;
  int64_t first = 0;
  for (int64_t n : b.split) {
    counts.push_back(static_cast<int>(n * sample));
    offsets.push_back(static_cast<int>(first * sample));
    first += n;
  }
  for (std::vector<float>* t : {&b.y, &b.dx, &b.dz}) {
    const std::vector<float> own(t->begin() + offsets[static_cast<size_t>(rank)],
                                 t->begin() + offsets[static_cast<size_t>(rank)] + counts[static_cast<size_t>(rank)]);
    MPI_Allgatherv(own.data(), counts[static_cast<size_t>(rank)], MPI_FLOAT, t->data(), counts.data(), offsets.data(),
                   MPI_FLOAT, MPI_COMM_WORLD);
  }
  using Member = test::Batch::Member;
  for (std::vector<float> Member::*field : {&Member::running_mean, &Member::running_var, &Member::save_mean,
                                            &Member::save_invstd, &Member::grad_weight, &Member::grad_bias}) {
    std::vector<std::vector<float>*> all;
    for (Member& m : b.members) all.push_back(&(m.*field));
    std::vector<float> own = b.members[static_cast<size_t>(rank)].*field;
    share(own, all);
  }
  std::vector<int64_t> tracked(b.members.size());
  MPI_Allgather(&b.members[static_cast<size_t>(rank)].num_batches_tracked, 1, MPI_INT64_T, tracked.data(), 1,
                MPI_INT64_T, MPI_COMM_WORLD);
  for (size_t r = 0; r < tracked.size(); r++) b.members[r].num_batches_tracked = tracked[r];
}

class SyncBatchNormMpiTest : public ::testing::TestWithParam<std::tuple<Layout, Epilogue>> {
 protected:
  // The same seed in every process: each makes the same batch.
  test::Random rng_{test::seed_for_current_test()};
};

TEST_P(SyncBatchNormMpiTest, MatchesOneProcessOverTheWholeBatch) {
  const auto [layout, epilogue] = GetParam();
  for (const test::Split& split : test::splits(world_size())) {
    SCOPED_TRACE("shape " + ::testing::PrintToString(split.shape) + " split " +
                 ::testing::PrintToString(split.members));
    test::Batch b(split.shape, layout, split.members, epilogue, rng_);
    test::expect_matches_whole_batch(b, test::options_for(epilogue), test::kFloat32Tolerance, on_processes);
  }
}

TEST_P(SyncBatchNormMpiTest, MeanTenThousandTimesTheStandardDeviation) {
  const auto [layout, epilogue] = GetParam();
  test::Batch b({4 * world_size() + 1, 11, 13, 7}, layout, test::uneven_split(4 * world_size() + 1, world_size()),
                epilogue, rng_);
  test::make_hard(b, rng_);
  test::expect_matches_whole_batch(b, test::hard_options(epilogue), test::kHardStatisticTolerance, on_processes);
}

INSTANTIATE_TEST_SUITE_P(LayoutsAndEpilogues, SyncBatchNormMpiTest,
                         ::testing::Combine(::testing::Values(Layout::nchw, Layout::nhwc),
                                            ::testing::Values(Epilogue::none, Epilogue::relu, Epilogue::add_relu)),
                         [](const auto& param) {
                           return std::string(to_string(std::get<0>(param.param))) + "_" +
                                  to_string(std::get<1>(param.param));
                         });

// A failure on a rank other than 0, whose report is not printed.
class FailurePrinter final : public ::testing::EmptyTestEventListener {
 public:
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::printf("rank %d: %s:%d: Failure\n%s\n", world_rank(), result.file_name() ? result.file_name() : "?",
                result.line_number(), result.message());
  }
};

}  // namespace
}  // namespace fusednorm

// MPI around GoogleTest; the job fails where any process's tests failed.
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (fusednorm::world_rank() != 0) {
    // One report, rank 0's; the others print their failures only.
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new fusednorm::FailurePrinter);
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any_failed = 0;
  MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any_failed;
}
