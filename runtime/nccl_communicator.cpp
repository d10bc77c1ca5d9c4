// NcclCommunicator: NCCL loaded with dlopen (as the CUDA driver is, runtime/cuda_driver.cpp), so that neither the
// build nor a program that never makes one needs NCCL. The host's doubles go through two device buffers of the
// calling thread's scratch pool: SyncBatchNorm's statistics are a few kilobytes.
#include "fusednorm/nccl.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <cstring>
#include <string>

#include "fusednorm/error.h"
#include "runtime/cuda_driver.h"

namespace fusednorm {

namespace {

// nccl.h's types and the prototypes used here (NCCL 2.x; ABI stable across 2.x).
using ncclResult_t = int;
using ncclComm_t = void*;
struct ncclUniqueId {
  char internal[128];
};
constexpr ncclResult_t kNcclSuccess = 0;
constexpr int kNcclFloat64 = 8;  // ncclDataType_t

struct Nccl {
  ncclResult_t (*ncclGetUniqueId)(ncclUniqueId*) = nullptr;
  ncclResult_t (*ncclCommInitRank)(ncclComm_t*, int, ncclUniqueId, int) = nullptr;
  ncclResult_t (*ncclCommDestroy)(ncclComm_t) = nullptr;
  ncclResult_t (*ncclAllGather)(const void*, void*, size_t, int, ncclComm_t, void*) = nullptr;
  const char* (*ncclGetErrorString)(ncclResult_t) = nullptr;
  std::string failure;  // empty when loaded and every call above resolved
};

template <typename F>
bool resolve(void* library, const char* name, F& function) {
  function = reinterpret_cast<F>(dlsym(library, name));
  return function != nullptr;
}

const Nccl& nccl(const char* function) {
  static const Nccl loaded = [] {
    Nccl n;
    void* library = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!library) {
      const char* why = dlerror();
      n.failure = fmt::format("libnccl.so.2 (NCCL 2) does not load: {}", why ? why : "no reason given");
      return n;
    }
    if (!(resolve(library, "ncclGetUniqueId", n.ncclGetUniqueId) &&
          resolve(library, "ncclCommInitRank", n.ncclCommInitRank) &&
          resolve(library, "ncclCommDestroy", n.ncclCommDestroy) &&
          resolve(library, "ncclAllGather", n.ncclAllGather) &&
          resolve(library, "ncclGetErrorString", n.ncclGetErrorString))) {
      n.failure = "libnccl.so.2 lacks an NCCL 2 function FusedNorm uses";
    }
    return n;
  }();
  if (!loaded.failure.empty()) throw Error(fmt::format("{}: {}", function, loaded.failure), Error::Kind::device);
  return loaded;
}

void check(const char* function, const char* call, ncclResult_t result) {
  if (result != kNcclSuccess) {
    const char* text = nccl(function).ncclGetErrorString(result);
    throw Error(fmt::format("{}: {} failed: {} (ncclResult_t {})", function, call, text ? text : "no description",
                            result),
                Error::Kind::device);
  }
}

}  // namespace

NcclUniqueId nccl_unique_id() {
  constexpr const char* function = "nccl_unique_id";
  detail::cuda::CallScope scope(function, nullptr);
  const Nccl& n = nccl(function);
  ncclUniqueId id{};
  check(function, "ncclGetUniqueId", n.ncclGetUniqueId(&id));
  NcclUniqueId out{};
  std::memcpy(out.data(), id.internal, out.size());
  return out;
}

NcclCommunicator::NcclCommunicator(const NcclUniqueId& id, int rank, int size, void* stream)
    : stream_(stream), rank_(rank), size_(size) {
  constexpr const char* function = "NcclCommunicator";
  if (size < 1) throw Error(fmt::format("{}: size is {}, expected at least 1", function, size));
  if (rank < 0 || rank >= size) {
    throw Error(fmt::format("{}: rank is {}, expected 0 to size - 1 = {}", function, rank, size - 1));
  }
  detail::cuda::CallScope scope(function, stream);
  const Nccl& n = nccl(function);
  ncclUniqueId unique{};
  std::memcpy(unique.internal, id.data(), id.size());
  detail::cuda::ContextGuard current(function);
  ncclComm_t comm = nullptr;
  check(function, "ncclCommInitRank", n.ncclCommInitRank(&comm, size, unique, rank));
  comm_ = comm;
}

NcclCommunicator::~NcclCommunicator() {
  // Only a constructed communicator exists, so the driver and NCCL loaded; a failure here has no one to tell.
  try {
    detail::cuda::CallScope scope("~NcclCommunicator", stream_);
    detail::cuda::ContextGuard current("~NcclCommunicator");
    nccl("~NcclCommunicator").ncclCommDestroy(comm_);
  } catch (const Error&) {
  }
}

void NcclCommunicator::allgather(std::span<const double> values, std::span<double> gathered) {
  constexpr const char* function = "NcclCommunicator::allgather";
  const size_t count = values.size();
  if (gathered.size() != count * static_cast<size_t>(size_)) {
    throw Error(fmt::format("{}: gathered holds {} values, expected size() x values = {} x {}", function,
                            gathered.size(), size_, count));
  }
  if (count == 0) return;
  detail::cuda::CallScope scope(function, stream_);
  const Nccl& n = nccl(function);
  detail::cuda::DeviceScratch scratch(scope);
  // Doubles in the float pool: two floats each (cuMemAlloc aligns every buffer to at least 256 bytes).
  const detail::cuda::DevicePtr send = scratch.take(static_cast<int64_t>(count) * 2);
  const detail::cuda::DevicePtr receive = scratch.take(static_cast<int64_t>(gathered.size()) * 2);
  detail::cuda::copy_to_device(scope, send, values.data(), count * sizeof(double));
  {
    detail::cuda::ContextGuard current(function);
    check(function, "ncclAllGather",
          n.ncclAllGather(reinterpret_cast<const void*>(send), reinterpret_cast<void*>(receive), count,
                          kNcclFloat64, comm_, stream_));
  }
  detail::cuda::copy_to_host(scope, gathered.data(), receive, gathered.size() * sizeof(double));
  detail::cuda::synchronize(function, stream_);
}

}  // namespace fusednorm
