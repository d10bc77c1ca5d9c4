#pragma once
// A group of threads of this process as SyncBatchNorm's Communicator (fusednorm/sync_batch_norm.h), for the suites
// that run a group inside one process: tests/sync_batch_norm_test.cpp (CPU) and tests/cuda_test.cpp (device tensors).
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

#include "fusednorm/sync_batch_norm.h"
#include "support/sync_batch.h"

namespace fusednorm::test {

// The members of a group are threads; allgather waits for all of them. A round's result stays until every member
// has copied it: the next round cannot complete before the slowest member has arrived at it.
class ThreadGroup {
 public:
  explicit ThreadGroup(int size) : size_(size), slots_(static_cast<size_t>(size)) {}
  int size() const { return size_; }

  void allgather(int rank, std::span<const double> values, std::span<double> gathered) {
    std::unique_lock lock(mutex_);
    slots_[static_cast<size_t>(rank)].assign(values.begin(), values.end());
    const uint64_t round = round_;
    if (++arrived_ == size_) {
      result_.clear();
      for (const std::vector<double>& slot : slots_) result_.insert(result_.end(), slot.begin(), slot.end());
      arrived_ = 0;
      round_++;
      done_.notify_all();
    } else {
      done_.wait(lock, [&] { return round_ != round; });
    }
    if (result_.size() != gathered.size()) throw std::logic_error("allgather: the members gave different counts");
    std::copy(result_.begin(), result_.end(), gathered.begin());
  }

 private:
  int size_;
  std::mutex mutex_;
  std::condition_variable done_;
  std::vector<std::vector<double>> slots_;
  std::vector<double> result_;
  int arrived_ = 0;
  uint64_t round_ = 0;
};

class ThreadMember final : public Communicator {
 public:
  ThreadMember(ThreadGroup& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_.size(); }
  void allgather(std::span<const double> values, std::span<double> gathered) override {
    group_.allgather(rank_, values, gathered);
  }

 private:
  ThreadGroup& group_;
  int rank_;
};

// Runs f(member) on a thread per member of `group`, and rethrows the first member's exception, if any.
template <typename F>
inline void on_members(ThreadGroup& group, const F& f) {
  std::vector<std::exception_ptr> errors(static_cast<size_t>(group.size()));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < group.size(); rank++) {
    threads.emplace_back([&, rank] {
      ThreadMember member(group, rank);
      try {
        f(member);
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// The thread group as a Runner of tests/support/sync_batch.h.
inline void on_threads(Batch& b, const MemberCall& call) {
  ThreadGroup group(static_cast<int>(b.split.size()));
  on_members(group, call);
}

}  // namespace fusednorm::test
