// single_read_probe.cu: a standalone probe (not part of the FusedNorm build) that measures whether a BatchNorm2d
// training pass over NCHW float32 that reads its inputs from HBM exactly once can beat torch.compile on an H200.
// scripts/build_single_read_probe.sh builds it (by default into build/gpu-bundle/libsingle_read_probe.so) and
// scripts/gpu_probe.py drives it with ctypes, passing torch tensors' data_ptr() and the current stream.
//
// The design. One persistent cooperative kernel (every block co-resident). Each channel's N*S elements (flattened
// j = n*S + s, element address n*C*S + c*S + s) are split into P parts of at most E*kBlock elements, so that a
// block holds a whole part in registers: E elements per thread. Items (c, part) are numbered channel-major,
// i = c*P + part, and block b takes items b, b+G, b+2G, ... For each item a block loads its part, reduces two
// shifted sums, publishes the block's partial, and the last block of the channel to arrive combines the P
// partials and publishes the channel's statistics; every block then normalizes the registers it still holds and
// stores them. The input is read from HBM once and the output written once.
//
// Why it cannot deadlock (P <= G, all blocks resident): take the smallest unfinished item i. Its block has finished
// every earlier item, so it is at i. Every other part i' of i's channel lies within P-1 < G of i, so the block
// owning i' has finished all its items before i' (they are i'-G, i'-2G, ... < i) and has therefore arrived at i'
// (a block arrives before it waits). So the channel's P partials all arrive, the last of them publishes, and i
// finishes. The spin is bounded anyway (a timeout sets an error flag, which probe_last_error reports), so a bug
// or a broken assumption produces a wrong result and a message, never a hang.
//
// Across calls: arrive[c] is reset to 0 by the last block before it publishes ready[c] = generation, and the
// generation differs on every call, so no memset is needed between launches.
//
// The pipelined forward (bn_forward_pipelined, variants "pE<E>" and "pdE<E>"). In bn_kernel a block issues an
// item's loads only after it has stored the previous item, so HBM idles while the block waits for its channel's
// statistics (publish, the last block's combine, publish, wake: several microseconds a round). The pipelined
// kernel holds two items in registers: after it has reduced item i and published its partial, it issues the loads
// of its next item i+G into the other register set, and only then waits for i's statistics, normalizes and stores
// i; the loads stay in flight meanwhile (a load blocks only the instruction that reads its register). Items
// alternate between two arrays A and B, two items per loop trip, so that every index is a compile-time constant
// and both stay in registers (2E floats a thread). The next loads come after the publication, not before it: a
// device-scope release or acq_rel may wait for the thread's outstanding loads. Two ways to get the statistics:
//   pE (Sync::last_block): as bn_kernel (arrive counter, the last block combines and publishes ready[c]); the
//     last block writes save_mean/running stats after publishing, off the others' critical path.
//   pdE (Sync::direct): each block publishes partial[item] and then flag[item] = generation (release); every
//     block of the channel waits for all P flags (thread q polls part q) and sums the P partials itself, in the
//     same fixed order with the same code, so all P blocks get bit-identical statistics (deterministic) and one
//     hop (the last block's combine and second publication) leaves the critical path. Part 0's block writes the
//     per-channel outputs. flag[] needs no reset: it holds the generation of the call that wrote it.
// Deadlock freedom is unchanged: the order in which a block arrives at (publishes) its items is the same as in
// bn_kernel, it publishes an item before it waits for anything for that item, and what it does between finishing
// item i-G and publishing item i (reduce registers whose loads are in flight, block-local barriers) waits on no
// other block. The argument above applies word for word (in direct mode "the last of them publishes" becomes
// "every block of the channel sees all P partials").
//   nosyncE<E> (Sync::none) is a DIAGNOSTIC with WRONG RESULTS: each block normalizes with its own part's
// statistics and waits for nobody (and writes no per-channel outputs); timed only, as an upper bound on what the
// barrier costs. Never chosen automatically; scripts/gpu_probe.py never checks or reports it as a result.
//
// Precision: per-thread (E terms) and per-warp sums in float, the block's and the channel's in double; the forward
// sums x-K with K = x[0,c,0] so that the variance does not come from the difference of two large sums.
//
// Only one stream at a time may use the probe: the workspace is shared by all calls.
#include <cuda/atomic>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

namespace {

constexpr int kBlock = 512;
constexpr int kWarps = kBlock / 32;
// The largest E compiled; bounds M so that j = begin + t + k*kBlock never overflows int.
constexpr int kMaxElems = 48;

enum class Pass { forward, backward };

// Registers per thread allowed by the launch bounds: 65536 / (kBlock * min blocks). The forward variants hold E
// floats, the backward ones 2E (dy and x); the targets leave ~20 registers for indices, sums and addresses.
template <Pass kPass, int E>
constexpr int min_blocks_per_sm() {
  if (kPass == Pass::forward) return E <= 16 ? 3 : 2;  // <= 40, 64 registers
  return E <= 8 ? 3 : 2;                               // <= 40, 64 registers
}

struct Params {
  // forward: x -> y; save_mean, save_invstd, running stats are written (the running ones updated in place)
  // backward: dy, x, save_mean, save_invstd, w -> dx, dweight, dbias
  const float* x;
  float* y;
  const float* w;  // null: weight 1
  const float* b;  // null: bias 0
  float* running_mean;  // null: not tracked
  float* running_var;
  float* save_mean;  // forward output (may be null), backward input
  float* save_invstd;
  const float* dy;
  float* dx;
  float* dweight;  // may be null
  float* dbias;
  int C, S, M;  // M = N*S, the elements per channel
  long long CS;  // C*S, the distance between images in elements
  int step_s;            // kBlock % S
  long long step_bytes;  // 4*((kBlock / S)*C*S + kBlock % S): one slot further, before the carry
  long long wrap_bytes;  // 4*(C*S - S): the carry, from s = S to s = 0 of the next image
  long long dy_from_x;   // bytes from x to dy (backward)
  long long out_from_x;  // bytes from x to y (forward) or dx (backward)
  int P, part_len;
  int items;  // C*P
  int relu;
  double eps, momentum;
  double inv_m;            // 1/M
  double unbiased_factor;  // M/(M-1), or 1 when M == 1
  unsigned generation;
  unsigned timeout_ns;  // < 2^32
};

struct Workspace {
  double2* partial;  // [C*P]: the blocks' (sum a, sum b), indexed by item
  float2* stats;     // [C]: what the normalization needs, published by the channel's last block
  unsigned* arrive;  // [C]: blocks that have written their partial in this call
  unsigned* ready;   // [C]: the generation of the call whose stats[c] is published
  unsigned* flag;    // [C*P]: the generation of the call whose partial[item] is published (Sync::direct)
  int* error;        // [4]: code (1 = spin timeout), channel, block, generation
};

using device_uint = cuda::atomic_ref<unsigned, cuda::thread_scope_device>;
using device_int = cuda::atomic_ref<int, cuda::thread_scope_device>;

// The low 32 bits of the global nanosecond timer: differences are exact (unsigned wrap-around) up to 4.29 s,
// beyond any timeout the host allows, and keep the spin loop to 32-bit registers.
__device__ __forceinline__ unsigned global_timer_ns() {
  unsigned t;
  asm volatile("mov.u32 %0, %%globaltimer_lo;" : "=r"(t));
  return t;
}

// Sums the threads' a and b over the block, in an order fixed by thread index (deterministic), into double; the
// result is valid in thread 0. Threads pass T = float (a sum of E terms: the warp's 32*E terms are still far more
// precise than the 1e-5 the outputs need, and float shuffles take half the registers, which are what limits E)
// or T = double (the channel's partials). Ends with a barrier so that `red` may be reused at once.
template <typename T>
__device__ __forceinline__ void block_sum2(T a, T b, double& out_a, double& out_b, double (&red)[2][kWarps]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
  if (lane == 0) {
    red[0][warp] = a;
    red[1][warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    double da = lane < kWarps ? red[0][lane] : 0.0;
    double db = lane < kWarps ? red[1][lane] : 0.0;
#pragma unroll
    for (int o = kWarps / 2; o > 0; o >>= 1) {
      da += __shfl_down_sync(0xffffffffu, da, o);
      db += __shfl_down_sync(0xffffffffu, db, o);
    }
    out_a = da;
    out_b = db;
  }
  __syncthreads();
}

// Waits (the calling thread) until *flag == generation, with acquire semantics. Gives up, setting the error flag
// (reporting channel c), after timeout_ns or 2^24 polls; gives up at once when another block has already set it,
// so that a failure costs one timeout, not one per item. Returns false when it gave up.
__device__ bool wait_flag(const Workspace& ws, unsigned* flag, int c, unsigned generation, unsigned timeout_ns) {
  device_uint ready(*flag);
  device_int error(ws.error[0]);
  unsigned sleep_ns = 32;
  unsigned start = 0;
  for (unsigned poll = 0; ready.load(cuda::memory_order_acquire) != generation; ++poll) {
    if ((poll & 63) == 0) {
      if (error.load(cuda::memory_order_relaxed) != 0) return false;
      const unsigned now = global_timer_ns();
      if (poll == 0) {
        start = now;
      } else if (now - start > timeout_ns || poll >= (1u << 24)) {
        int expected = 0;
        if (error.compare_exchange_strong(expected, 1, cuda::memory_order_relaxed)) {
          ws.error[1] = c;
          ws.error[2] = static_cast<int>(blockIdx.x);
          ws.error[3] = static_cast<int>(generation);
        }
        return false;
      }
    }
    __nanosleep(sleep_ns);
    if (sleep_ns < 256) sleep_ns *= 2;
  }
  return true;
}

// Waits (one thread) until ready[c] == generation (see wait_flag).
__device__ bool wait_ready(const Workspace& ws, int c, unsigned generation, unsigned timeout_ns) {
  return wait_flag(ws, &ws.ready[c], c, generation, timeout_ns);
}

// A thread's walk over its slots: slot k is the channel's element j = j0 + k*kBlock, (n, s) = (j / S, j % S), at
// x + n*C*S + c*S + s. It holds a byte pointer and s, and divides once, when it starts, so that a slot costs one
// 64-bit add (two with the carry) and no multiply: registers are what limits E.
struct SlotWalk {
  const char* at;
  int s;
  __device__ __forceinline__ SlotWalk(const Params& p, int c, int j0) {
    const int n = j0 / p.S;
    s = j0 - n * p.S;
    at = reinterpret_cast<const char*>(p.x + (n * p.CS + static_cast<long long>(c) * p.S + s));
  }
  __device__ __forceinline__ void next(const Params& p) {
    s += p.step_s;
    at += p.step_bytes;
    if (s >= p.S) {
      s -= p.S;
      at += p.wrap_bytes;
    }
  }
};

// The channel's statistics from the totals, by the one thread of the last block: writes the per-channel outputs
// and returns what every block needs to normalize.
//   forward:  a = sum(x-K), b = sum((x-K)^2)  ->  (mean, invstd)
//   backward: a = sum(dy), b = sum(dy*(x-mean))  ->  (sum_dy/M, sum_dy_xmu/M * invstd^2)
template <Pass kPass>
__device__ float2 finalize(const Params& p, int c, double a, double b, float shift) {
  // No double division or square root: their slow paths need registers, and this code runs while the part's
  // E (or 2E) registers are live. 1/M comes from the host; rsqrtf's 2 ulp are far below the float outputs' needs.
  if constexpr (kPass == Pass::forward) {
    const double centered = a * p.inv_m;
    const double mean = static_cast<double>(shift) + centered;
    // The shift K = x[0,c,0] is one sample of the channel, so |mean-K| is a few standard deviations at most and
    // the subtraction keeps its precision.
    const double var = fmax(b * p.inv_m - centered * centered, 0.0);
    const double invstd = rsqrtf(static_cast<float>(var + p.eps));
    if (p.save_mean) p.save_mean[c] = static_cast<float>(mean);
    if (p.save_invstd) p.save_invstd[c] = static_cast<float>(invstd);
    // PyTorch: running = (1-momentum)*running + momentum*batch, running_var from the unbiased variance.
    if (p.running_mean)
      p.running_mean[c] = static_cast<float>((1.0 - p.momentum) * p.running_mean[c] + p.momentum * mean);
    if (p.running_var) {
      const double unbiased = var * p.unbiased_factor;
      p.running_var[c] = static_cast<float>((1.0 - p.momentum) * p.running_var[c] + p.momentum * unbiased);
    }
    return make_float2(static_cast<float>(mean), static_cast<float>(invstd));
  } else {
    (void)shift;
    const double invstd = p.save_invstd[c];
    if (p.dbias) p.dbias[c] = static_cast<float>(a);
    if (p.dweight) p.dweight[c] = static_cast<float>(b * invstd);
    return make_float2(static_cast<float>(a * p.inv_m), static_cast<float>(b * p.inv_m * invstd * invstd));
  }
}

template <Pass kPass, int E>
__global__ void __launch_bounds__(kBlock, min_blocks_per_sm<kPass, E>()) bn_kernel(const Params p,
                                                                                      const Workspace ws) {
  constexpr bool kBackward = kPass == Pass::backward;
  __shared__ double red[2][kWarps];
  __shared__ float2 channel_stats;
  __shared__ int is_last;

  // Registers are the scarce resource here (the part lives in them), so the loop keeps few values live and
  // reads the shape from Params (constant memory) where it is used.
  const int t = threadIdx.x;

  for (int item = blockIdx.x; item < p.items; item += gridDim.x) {
    const int c = item / p.P;
    const int part = item - c * p.P;
    const int begin = part * p.part_len;
    const int end = min(begin + p.part_len, p.M);  // the last part of a channel may be shorter
    const int j0 = begin + t;
    const int remaining = end - j0;  // slot k is in the part when k*kBlock < remaining

    // Forward: the shift K = x[0,c,0], the same for every block of the channel. Backward: the saved mean.
    const float shift = kBackward ? __ldg(p.save_mean + c) : __ldg(p.x + static_cast<long long>(c) * p.S);

    float xr[E];
    float dyr[E];  // backward only; unused (and removed by the compiler) in the forward
    {
      SlotWalk walk(p, c, j0);
#pragma unroll
      for (int k = 0; k < E; ++k) {
        if (k * kBlock < remaining) {
          xr[k] = __ldg(reinterpret_cast<const float*>(walk.at));
          if (kBackward) dyr[k] = __ldg(reinterpret_cast<const float*>(walk.at + p.dy_from_x));
        } else {
          // Slots past the part's end hold values that add nothing to either sum: x = K (forward), dy = 0 and
          // x = mean (backward). They are never stored.
          xr[k] = shift;
          if (kBackward) dyr[k] = 0.0f;
        }
        walk.next(p);
      }
    }

    // Per-thread sums in float (E terms each), then the block's in double.
    double a = 0.0, b = 0.0;
    {
      float fa = 0.0f, fb = 0.0f;
#pragma unroll
      for (int k = 0; k < E; ++k) {
        if (kBackward) {
          fa += dyr[k];
          fb = fmaf(dyr[k], xr[k] - shift, fb);
        } else {
          const float d = xr[k] - shift;
          fa += d;
          fb = fmaf(d, d, fb);
        }
      }
      block_sum2(fa, fb, a, b, red);
    }

    if (p.P == 1) {
      if (t == 0) channel_stats = finalize<kPass>(p, c, a, b, shift);
      __syncthreads();
    } else {
      if (t == 0) {
        __stcg(&ws.partial[item], make_double2(a, b));
        // acq_rel: the release publishes our partial before the count; the acquire, in the block that arrives
        // last, makes every other block's partial visible to it (and, through the barrier below, to its threads).
        const unsigned before = device_uint(ws.arrive[c]).fetch_add(1u, cuda::memory_order_acq_rel);
        is_last = before == static_cast<unsigned>(p.P - 1);
      }
      __syncthreads();
      if (is_last) {
        // Combine the P partials with the whole block (P may be hundreds: one thread loading them one after the
        // other would take longer than the part itself), in a fixed order: the result does not depend on which
        // block came last.
        double ta = 0.0, tb = 0.0;
        for (int q = t; q < p.P; q += kBlock) {
          const double2 v = __ldcg(&ws.partial[static_cast<long long>(c) * p.P + q]);
          ta += v.x;
          tb += v.y;
        }
        block_sum2(ta, tb, ta, tb, red);
        if (t == 0) {
          const float2 st = finalize<kPass>(p, c, ta, tb, shift);
          __stcg(&ws.stats[c], st);
          // All P blocks have counted, so nobody else touches arrive[c] in this call: reset it for the next call
          // before publishing (the release below orders both stores).
          device_uint(ws.arrive[c]).store(0u, cuda::memory_order_relaxed);
          device_uint(ws.ready[c]).store(p.generation, cuda::memory_order_release);
          channel_stats = st;
        }
      } else if (t == 0) {
        wait_ready(ws, c, p.generation, p.timeout_ns);  // on a timeout the stats are garbage; the flag says so
        channel_stats = __ldcg(&ws.stats[c]);
      }
      __syncthreads();
    }
    // channel_stats and is_last are rewritten only after the next item's block_sum2 barriers, which every thread
    // reaches after reading them here.
    const float2 st = channel_stats;

    {
      const float w = p.w ? __ldg(p.w + c) : 1.0f;
      float scale, bias;
      if (kBackward) {
        scale = __ldg(p.save_invstd + c) * w;
        bias = 0.0f;
      } else {
        scale = st.y * w;
        bias = p.b ? __ldg(p.b + c) : 0.0f;
      }
      // The compiler would otherwise notice that this walk repeats the load's and keep its E pointers alive
      // across the reduction, which costs more registers than the data. The asm hides j0 from it.
      int j = j0;
      asm volatile("mov.b32 %0, %0;" : "+r"(j));
      SlotWalk walk(p, c, j);
      const int left = end - j;
#pragma unroll
      for (int k = 0; k < E; ++k) {
        if (k * kBlock < left) {
          float* out = reinterpret_cast<float*>(const_cast<char*>(walk.at) + p.out_from_x);
          if (kBackward) {
            // dx = invstd*w*(dy - sum_dy/M - (x-mean)*invstd^2*sum_dy_xmu/M)
            *out = (dyr[k] - st.x - (xr[k] - shift) * st.y) * scale;
          } else {
            float v = fmaf(xr[k] - st.x, scale, bias);
            if (p.relu) v = fmaxf(v, 0.0f);
            *out = v;
          }
        }
        walk.next(p);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The pipelined forward (see the header): a block holds two items, the one it is finishing (`cur`) and the next
// one (`nxt`, item + G), whose loads it issues while it waits for the current item's channel statistics.

enum class Sync {
  last_block,  // the channel's last block combines the partials and publishes (mean, invstd) (as bn_kernel)
  direct,      // every block of the channel waits for all P partials and combines them itself (same fixed order)
  none,        // DIAGNOSTIC, WRONG RESULTS: each block normalizes with its own part's statistics; no waiting
};

// Registers per thread for 2E floats plus ~20 for indices, sums and addresses: <= 40 (3 blocks of 512 per SM),
// <= 64 (2), else 1 block per SM (<= 128).
template <int E>
constexpr int pipelined_min_blocks_per_sm() {
  return 2 * E + 20 <= 40 ? 3 : 2 * E + 20 <= 64 ? 2 : 1;
}

struct PipeShared {
  double red[2][kWarps];
  float2 channel_stats;
  int is_last;
};

// Where thread threadIdx.x's slots of `item` lie: channel c, part, and remaining = end - j0 (slot k is in the part
// when k*kBlock < remaining).
__device__ __forceinline__ void locate(const Params& p, int item, int& c, int& part, int& j0, int& remaining) {
  c = item / p.P;
  part = item - c * p.P;
  const int begin = part * p.part_len;
  const int end = min(begin + p.part_len, p.M);  // the last part of a channel may be shorter
  j0 = begin + static_cast<int>(threadIdx.x);
  remaining = end - j0;
}

// Issues the loads of `item`'s slots into xr and returns the shift K = x[0,c,0]. Nothing here waits for them:
// a global load blocks only the instruction that first reads its register. Slots past the part's end are set to
// 0 (not to K, which would make this wait for K's load); the sums mask them instead. When !active (there is no
// such item) nothing is loaded and xr is zeroed: xr is then written on every path, so the compiler sees that its
// previous contents are dead (a conditional call would keep them live: spills).
template <int E>
__device__ __forceinline__ float issue_loads(const Params& p, int item, bool active, float (&xr)[E]) {
  int c, part, j0, remaining;
  locate(p, item, c, part, j0, remaining);
  if (!active) remaining = 0;
  const float shift = active ? __ldg(p.x + static_cast<long long>(c) * p.S) : 0.0f;
  SlotWalk walk(p, c, j0);
#pragma unroll
  for (int k = 0; k < E; ++k) {
    xr[k] = k * kBlock < remaining ? __ldg(reinterpret_cast<const float*>(walk.at)) : 0.0f;
    walk.next(p);
  }
  return shift;
}

// Forward statistics from the channel's totals a = sum(x-K), b = sum((x-K)^2) over `count` elements (inv_count
// = 1/count): (mean, invstd) and the double mean and biased variance.
__device__ __forceinline__ float2 forward_stats(const Params& p, double a, double b, double inv_count, float shift,
                                                double& mean, double& var) {
  const double centered = a * inv_count;
  mean = static_cast<double>(shift) + centered;
  var = fmax(b * inv_count - centered * centered, 0.0);
  const float invstd = rsqrtf(static_cast<float>(var + p.eps));
  return make_float2(static_cast<float>(mean), invstd);
}

// save_mean, save_invstd and the running statistics of channel c: written by exactly one block per channel.
__device__ __forceinline__ void forward_outputs(const Params& p, int c, double mean, double var, float invstd) {
  if (p.save_mean) p.save_mean[c] = static_cast<float>(mean);
  if (p.save_invstd) p.save_invstd[c] = invstd;
  if (p.running_mean)
    p.running_mean[c] = static_cast<float>((1.0 - p.momentum) * p.running_mean[c] + p.momentum * mean);
  if (p.running_var)
    p.running_var[c] =
        static_cast<float>((1.0 - p.momentum) * p.running_var[c] + p.momentum * (var * p.unbiased_factor));
}

// One item: reduce `cur` (already loaded), publish, issue the loads of the next item into `nxt` (when has_next),
// wait for the channel's statistics, normalize `cur` and store it.
template <int E, Sync kSync>
__device__ __forceinline__ void pipelined_item(const Params& p, const Workspace& ws, PipeShared& sh, int item,
                                               const float (&cur)[E], float cur_shift, float (&nxt)[E],
                                               float& nxt_shift, bool has_next) {
  const int t = threadIdx.x;
  {
    int c, part, j0, remaining;
    locate(p, item, c, part, j0, remaining);
    (void)j0;
    float fa = 0.0f, fb = 0.0f;
#pragma unroll
    for (int k = 0; k < E; ++k) {
      const float d = k * kBlock < remaining ? cur[k] - cur_shift : 0.0f;
      fa += d;
      fb = fmaf(d, d, fb);
    }
    double a = 0.0, b = 0.0;
    block_sum2(fa, fb, a, b, sh.red);  // a, b valid in thread 0; ends with a barrier

    if constexpr (kSync == Sync::none) {
      // DIAGNOSTIC: the part's own statistics, nothing published, nothing awaited, no per-channel outputs.
      if (t == 0) {
        const int begin = part * p.part_len;
        const int count = min(p.part_len, p.M - begin);
        double mean, var;
        sh.channel_stats = forward_stats(p, a, b, static_cast<double>(1.0f / static_cast<float>(count)), cur_shift,
                                         mean, var);
      }
      nxt_shift = issue_loads(p, item + static_cast<int>(gridDim.x), has_next, nxt);
      __syncthreads();
    } else if (p.P == 1) {
      if (t == 0) {
        double mean, var;
        const float2 st = forward_stats(p, a, b, p.inv_m, cur_shift, mean, var);
        sh.channel_stats = st;
        forward_outputs(p, c, mean, var, st.y);
      }
      nxt_shift = issue_loads(p, item + static_cast<int>(gridDim.x), has_next, nxt);
      __syncthreads();
    } else if constexpr (kSync == Sync::last_block) {
      if (t == 0) {
        __stcg(&ws.partial[item], make_double2(a, b));
        // acq_rel: see bn_kernel. (The next item's loads are issued after this: a device-scope fence may wait
        // for the thread's outstanding loads, and those would then delay the publication.)
        const unsigned before = device_uint(ws.arrive[c]).fetch_add(1u, cuda::memory_order_acq_rel);
        sh.is_last = before == static_cast<unsigned>(p.P - 1);
      }
      __syncthreads();
      const bool last = sh.is_last;
      if (last) {
        double ta = 0.0, tb = 0.0;
        for (int q = t; q < p.P; q += kBlock) {
          const double2 v = __ldcg(&ws.partial[static_cast<long long>(c) * p.P + q]);
          ta += v.x;
          tb += v.y;
        }
        block_sum2(ta, tb, ta, tb, sh.red);
        if (t == 0) {
          double mean, var;
          const float2 st = forward_stats(p, ta, tb, p.inv_m, cur_shift, mean, var);
          __stcg(&ws.stats[c], st);
          device_uint(ws.arrive[c]).store(0u, cuda::memory_order_relaxed);  // for the next call (see bn_kernel)
          device_uint(ws.ready[c]).store(p.generation, cuda::memory_order_release);
          sh.channel_stats = st;
          forward_outputs(p, c, mean, var, st.y);  // after publishing: off the other blocks' critical path
        }
      }
      nxt_shift = issue_loads(p, item + static_cast<int>(gridDim.x), has_next, nxt);
      if (!last && t == 0) {
        wait_flag(ws, &ws.ready[c], c, p.generation, p.timeout_ns);  // on a timeout the stats are garbage
        sh.channel_stats = __ldcg(&ws.stats[c]);
      }
      __syncthreads();
    } else {  // Sync::direct
      const long long first = static_cast<long long>(c) * p.P;
      if (t == 0) {
        __stcg(&ws.partial[item], make_double2(a, b));
        device_uint(ws.flag[item]).store(p.generation, cuda::memory_order_release);
      }
      nxt_shift = issue_loads(p, item + static_cast<int>(gridDim.x), has_next, nxt);
      // Every block sums the same P partials in the same order with the same code, so every block of the
      // channel gets bit-identical statistics, whichever arrived last.
      double ta = 0.0, tb = 0.0;
      for (int q = t; q < p.P; q += kBlock) {
        wait_flag(ws, &ws.flag[first + q], c, p.generation, p.timeout_ns);  // acquire: partial[first+q] is seen
        const double2 v = __ldcg(&ws.partial[first + q]);
        ta += v.x;
        tb += v.y;
      }
      block_sum2(ta, tb, ta, tb, sh.red);
      if (t == 0) {
        double mean, var;
        const float2 st = forward_stats(p, ta, tb, p.inv_m, cur_shift, mean, var);
        sh.channel_stats = st;
        if (part == 0) forward_outputs(p, c, mean, var, st.y);  // one block per channel
      }
      __syncthreads();
    }
  }
  // sh.channel_stats and sh.is_last are rewritten only after the next item's block_sum2 barriers, which every
  // thread reaches after reading them here.
  const float2 st = sh.channel_stats;
  // Recompute the indices instead of keeping them live across the wait (registers hold two items' data); the
  // asm hides `item` from the compiler so that it cannot reuse the values computed above.
  int it = item;
  asm volatile("mov.b32 %0, %0;" : "+r"(it));
  int c, part, j0, left;
  locate(p, it, c, part, j0, left);
  (void)part;
  const float w = p.w ? __ldg(p.w + c) : 1.0f;
  const float scale = st.y * w;
  const float bias = p.b ? __ldg(p.b + c) : 0.0f;
  SlotWalk walk(p, c, j0);
#pragma unroll
  for (int k = 0; k < E; ++k) {
    if (k * kBlock < left) {
      float v = fmaf(cur[k] - st.x, scale, bias);
      if (p.relu) v = fmaxf(v, 0.0f);
      *reinterpret_cast<float*>(const_cast<char*>(walk.at) + p.out_from_x) = v;
    }
    walk.next(p);
  }
}

// The ping-pong: items i, i+G, i+2G, ... alternate between the register arrays A and B (two calls per trip, so
// that every index into A and B is a compile-time constant and both stay in registers).
template <int E, Sync kSync>
__global__ void __launch_bounds__(kBlock, pipelined_min_blocks_per_sm<E>()) bn_forward_pipelined(
    const Params p, const Workspace ws) {
  __shared__ PipeShared sh;
  const int G = gridDim.x;
  int item = blockIdx.x;
  if (item >= p.items) return;  // never: the grid is at most the item count
  float A[E], B[E];
  float shift_a = issue_loads(p, item, true, A), shift_b = 0.0f;
  for (;;) {
    const bool more = item + G < p.items;  // items + G fits in int (plan_for)
    pipelined_item<E, kSync>(p, ws, sh, item, A, shift_a, B, shift_b, more);
    if (!more) break;
    item += G;
    const bool more2 = item + G < p.items;
    pipelined_item<E, kSync>(p, ws, sh, item, B, shift_b, A, shift_a, more2);
    if (!more2) break;
    item += G;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side

enum class Kind { classic, pipelined, pipelined_direct, nosync };

struct Variant {
  Pass pass;
  const char* name;  // what probe_set_variant takes: "E32", "pE16", "pdE16", "nosyncE16"
  Kind kind;
  int elems;
  int min_blocks;  // the launch bounds' minimum blocks per SM (what the registers allow)
  const void* fn;
  bool probed = false;
  cudaError_t probe_error = cudaSuccess;
  int blocks_per_sm = 0;
  cudaFuncAttributes attr{};
};

// The variants compiled: spill-free under their launch bounds (ptxas's choices are erratic: classic forward E=12
// and 16 spill a register at 40 registers where 8 and 14 do not; backward 8 and 16 spill where 6 and 12 do not).
template <Pass kPass, int E>
Variant classic(const char* name) {
  return {kPass, name, Kind::classic, E, min_blocks_per_sm<kPass, E>(),
          reinterpret_cast<const void*>(&bn_kernel<kPass, E>)};
}
template <Kind kKind, int E>
Variant pipelined(const char* name) {
  constexpr Sync kSync = kKind == Kind::pipelined ? Sync::last_block
                         : kKind == Kind::pipelined_direct ? Sync::direct
                                                           : Sync::none;
  return {Pass::forward, name, kKind, E, pipelined_min_blocks_per_sm<E>(),
          reinterpret_cast<const void*>(&bn_forward_pipelined<E, kSync>)};
}
Variant g_variants[] = {
    classic<Pass::forward, 8>("E8"),
    classic<Pass::forward, 14>("E14"),
    classic<Pass::forward, 24>("E24"),
    classic<Pass::forward, 32>("E32"),
    pipelined<Kind::pipelined, 16>("pE16"),
    pipelined<Kind::pipelined, 48>("pE48"),
    pipelined<Kind::pipelined_direct, 16>("pdE16"),
    pipelined<Kind::pipelined_direct, 18>("pdE18"),
    pipelined<Kind::pipelined_direct, 48>("pdE48"),
    // DIAGNOSTIC (timing only, wrong results): never chosen automatically, never a result.
    pipelined<Kind::nosync, 16>("nosyncE16"),
    pipelined<Kind::nosync, 48>("nosyncE48"),
    classic<Pass::backward, 6>("E6"),
    classic<Pass::backward, 12>("E12"),
};

struct DeviceState {
  bool initialized = false;
  int device = -1;
  int sms = 0;
  int cooperative = 0;
  int l2_bytes = 0;
  char name[256] = {};
};
DeviceState g_dev;

struct WorkspaceState {
  void* base = nullptr;
  long long item_capacity = 0;
  long long channel_capacity = 0;
  Workspace ws{};
};
WorkspaceState g_ws;

unsigned g_generation = 0;
const Variant* g_forced = nullptr;  // null: choose automatically (never a nosync variant)
unsigned g_timeout_ns = 1000u * 1000 * 1000;
std::string g_pending_error;  // a device error flag read while the workspace was being replaced

int fail(char* error, int error_len, const char* fmt, ...) {
  if (error && error_len > 0) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(error, static_cast<size_t>(error_len), fmt, args);
    va_end(args);
  }
  return 1;
}

#define PROBE_CUDA(call)                                                                                    \
  do {                                                                                                      \
    const cudaError_t status_ = (call);                                                                     \
    if (status_ != cudaSuccess)                                                                             \
      return fail(error, error_len, "%s failed: %s (%s)", #call, cudaGetErrorString(status_),               \
                  cudaGetErrorName(status_));                                                               \
  } while (0)

int init_device(char* error, int error_len) {
  if (g_dev.initialized) return 0;
  PROBE_CUDA(cudaGetDevice(&g_dev.device));
  PROBE_CUDA(cudaDeviceGetAttribute(&g_dev.sms, cudaDevAttrMultiProcessorCount, g_dev.device));
  PROBE_CUDA(cudaDeviceGetAttribute(&g_dev.cooperative, cudaDevAttrCooperativeLaunch, g_dev.device));
  PROBE_CUDA(cudaDeviceGetAttribute(&g_dev.l2_bytes, cudaDevAttrL2CacheSize, g_dev.device));
  cudaDeviceProp prop{};
  PROBE_CUDA(cudaGetDeviceProperties(&prop, g_dev.device));
  snprintf(g_dev.name, sizeof g_dev.name, "%s (sm_%d%d)", prop.name, prop.major, prop.minor);
  if (!g_dev.cooperative) return fail(error, error_len, "device %s does not support cooperative launch", g_dev.name);
  g_dev.initialized = true;
  return 0;
}

void probe_variant(Variant& v) {
  if (v.probed) return;
  v.probed = true;
  v.probe_error = cudaFuncGetAttributes(&v.attr, v.fn);
  if (v.probe_error == cudaSuccess)
    v.probe_error = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v.blocks_per_sm, v.fn, kBlock, 0);
}

struct Plan {
  Variant* variant = nullptr;
  int grid = 0;  // blocks launched: min(resident blocks, items)
  int resident = 0;
  int P = 0, part_len = 0;
  long long items = 0;
  bool fits = false;  // P <= resident blocks
};

Plan plan_for(Variant& v, long long M, long long C) {
  probe_variant(v);
  Plan plan;
  plan.variant = &v;
  if (v.probe_error != cudaSuccess) return plan;
  plan.resident = v.blocks_per_sm * g_dev.sms;
  const long long capacity = static_cast<long long>(v.elems) * kBlock;
  const long long P = (M + capacity - 1) / capacity;
  plan.P = static_cast<int>(std::min<long long>(P, INT_MAX));
  plan.part_len = static_cast<int>((M + P - 1) / P);
  plan.items = C * P;
  plan.grid = static_cast<int>(std::min<long long>(plan.resident, plan.items));
  // items + grid must not overflow the kernel's int item loop.
  plan.fits = plan.resident > 0 && P <= plan.resident && plan.items <= INT_MAX - (1 << 20);
  return plan;
}

// The forced variant, or the one whose blocks take the fewest items each (fewest rounds of load, wait, store),
// preferring larger E (fewer partials per channel) on a tie.
int choose_plan(Pass pass, long long M, long long C, Plan& out, char* error, int error_len) {
  bool any = false;
  std::string tried;
  for (Variant& v : g_variants) {
    if (v.pass != pass) continue;
    if (g_forced ? &v != g_forced : v.kind == Kind::nosync) continue;
    const Plan plan = plan_for(v, M, C);
    char line[160];
    snprintf(line, sizeof line, " [%s: %s, %d resident blocks, P=%d]", v.name,
             v.probe_error != cudaSuccess ? cudaGetErrorString(v.probe_error) : plan.fits ? "fits" : "P > blocks",
             plan.resident, plan.P);
    tried += line;
    if (!plan.fits) continue;
    const long long rounds = (plan.items + plan.resident - 1) / plan.resident;
    if (!any) {
      out = plan;
      any = true;
      continue;
    }
    const long long best_rounds = (out.items + out.resident - 1) / out.resident;
    if (rounds < best_rounds || (rounds == best_rounds && v.elems > out.variant->elems)) out = plan;
  }
  if (!any)
    return fail(error, error_len,
                "no %s variant fits this shape (shape too large for the probe, or %s is not of this pass):%s",
                pass == Pass::forward ? "forward" : "backward", g_forced ? g_forced->name : "auto", tried.c_str());
  return 0;
}

size_t align16(size_t n) { return (n + 15) & ~static_cast<size_t>(15); }

// Grows the workspace (never shrinks it). New memory is zeroed: arrive = 0, ready = flag = 0 (no generation is 0).
int ensure_workspace(long long items, long long channels, char* error, int error_len) {
  if (g_ws.base && items <= g_ws.item_capacity && channels <= g_ws.channel_capacity) return 0;
  if (g_ws.base) {
    // cudaFree waits for the device anyway; read the error flag first so that a pending failure is not lost.
    PROBE_CUDA(cudaDeviceSynchronize());
    int flag[4] = {};
    PROBE_CUDA(cudaMemcpy(flag, g_ws.ws.error, sizeof flag, cudaMemcpyDeviceToHost));
    if (flag[0] != 0 && g_pending_error.empty()) {
      char text[200];
      snprintf(text, sizeof text,
               "spin timeout (found while growing the workspace): channel %d, block %d, generation %u",
               flag[1], flag[2], static_cast<unsigned>(flag[3]));
      g_pending_error = text;
    }
    PROBE_CUDA(cudaFree(g_ws.base));
    g_ws = WorkspaceState{};
  }
  const long long item_capacity = std::max<long long>(items * 2, 4096);
  const long long channel_capacity = std::max<long long>(channels * 2, 4096);
  const size_t partial_bytes = align16(sizeof(double2) * item_capacity);
  const size_t stats_bytes = align16(sizeof(float2) * channel_capacity);
  const size_t counter_bytes = align16(sizeof(unsigned) * channel_capacity);
  const size_t flag_bytes = align16(sizeof(unsigned) * item_capacity);
  // The error flag comes last: probe_last_error zeroes everything up to it.
  const size_t total = partial_bytes + stats_bytes + 2 * counter_bytes + flag_bytes + 16;
  void* base = nullptr;
  PROBE_CUDA(cudaMalloc(&base, total));
  const cudaError_t status = cudaMemset(base, 0, total);
  const cudaError_t synced = status == cudaSuccess ? cudaDeviceSynchronize() : status;
  if (synced != cudaSuccess) {
    cudaFree(base);
    return fail(error, error_len, "zeroing the workspace failed: %s", cudaGetErrorString(synced));
  }
  char* p = static_cast<char*>(base);
  g_ws.base = base;
  g_ws.item_capacity = item_capacity;
  g_ws.channel_capacity = channel_capacity;
  g_ws.ws.partial = reinterpret_cast<double2*>(p);
  g_ws.ws.stats = reinterpret_cast<float2*>(p + partial_bytes);
  g_ws.ws.arrive = reinterpret_cast<unsigned*>(p + partial_bytes + stats_bytes);
  g_ws.ws.ready = reinterpret_cast<unsigned*>(p + partial_bytes + stats_bytes + counter_bytes);
  g_ws.ws.flag = reinterpret_cast<unsigned*>(p + partial_bytes + stats_bytes + 2 * counter_bytes);
  g_ws.ws.error = reinterpret_cast<int*>(p + partial_bytes + stats_bytes + 2 * counter_bytes + flag_bytes);
  return 0;
}

int check_shape(long long N, long long C, long long S, char* error, int error_len) {
  if (N <= 0 || C <= 0 || S <= 0) return fail(error, error_len, "bad shape N=%lld C=%lld S=%lld", N, C, S);
  // j = begin + t + k*kBlock must fit in int, and so must C and S.
  if (C > INT_MAX || S > INT_MAX || N > INT_MAX || N * S > static_cast<long long>(INT_MAX) - kMaxElems * kBlock)
    return fail(error, error_len, "shape N=%lld C=%lld S=%lld: N*S, C or S too large for 32-bit indices", N, C, S);
  return 0;
}

int launch(Pass pass, Params& params, long long N, long long C, long long S, void* stream, char* error,
           int error_len) {
  if (int rc = check_shape(N, C, S, error, error_len)) return rc;
  if (int rc = init_device(error, error_len)) return rc;
  const long long M = N * S;
  Plan plan;
  if (int rc = choose_plan(pass, M, C, plan, error, error_len)) return rc;
  if (int rc = ensure_workspace(plan.items, C, error, error_len)) return rc;
  if (++g_generation == 0) ++g_generation;  // 0 is what a zeroed ready[] holds
  params.C = static_cast<int>(C);
  params.S = static_cast<int>(S);
  params.M = static_cast<int>(M);
  params.inv_m = 1.0 / static_cast<double>(M);
  params.unbiased_factor = M > 1 ? static_cast<double>(M) / static_cast<double>(M - 1) : 1.0;
  params.CS = C * S;
  params.step_s = static_cast<int>(kBlock % S);
  params.step_bytes = 4 * ((kBlock / S) * C * S + kBlock % S);
  params.wrap_bytes = 4 * (C * S - S);
  const auto address = [](const void* q) { return static_cast<long long>(reinterpret_cast<intptr_t>(q)); };
  const float* out = pass == Pass::forward ? params.y : params.dx;
  params.out_from_x = address(out) - address(params.x);
  params.dy_from_x = params.dy ? address(params.dy) - address(params.x) : 0;
  params.items = static_cast<int>(plan.items);
  params.P = plan.P;
  params.part_len = plan.part_len;
  params.generation = g_generation;
  params.timeout_ns = g_timeout_ns;
  Workspace ws = g_ws.ws;
  void* args[] = {&params, &ws};
  const cudaError_t status = cudaLaunchCooperativeKernel(plan.variant->fn, dim3(plan.grid), dim3(kBlock), args, 0,
                                                         static_cast<cudaStream_t>(stream));
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear it: a failed launch leaves the context usable
    return fail(error, error_len, "cooperative launch (%s, grid %d x %d, P=%d) failed: %s (%s)",
                plan.variant->name, plan.grid, kBlock, plan.P, cudaGetErrorString(status), cudaGetErrorName(status));
  }
  return 0;
}

}  // namespace

extern "C" {

// BatchNorm2d training forward over x [N][C][S] (NCHW, S = H*W), float32: y = relu?((x-mean)*invstd*w + b);
// save_mean/save_invstd written, running_mean/running_var updated in place (PyTorch semantics). w, b, the running
// stats and the saved stats may be null. Asynchronous on `stream` (a cudaStream_t; null: the default stream).
// Returns 0, or 1 with a NUL-terminated message in `error`. A spin timeout is reported by probe_last_error.
int probe_bn_forward(const float* x, float* y, const float* w, const float* b, float* running_mean,
                     float* running_var, float* save_mean, float* save_invstd, long long N, long long C, long long S,
                     int relu, double eps, double momentum, void* stream, char* error, int error_len) {
  if (!x || !y) return fail(error, error_len, "probe_bn_forward: x and y are required");
  Params p{};
  p.x = x;
  p.y = y;
  p.w = w;
  p.b = b;
  p.running_mean = running_mean;
  p.running_var = running_var;
  p.save_mean = save_mean;
  p.save_invstd = save_invstd;
  p.relu = relu != 0;
  p.eps = eps;
  p.momentum = momentum;
  return launch(Pass::forward, p, N, C, S, stream, error, error_len);
}

// BatchNorm2d training backward (no ReLU): from dy, x and the forward's save_mean/save_invstd, writes
// dx = invstd*w*(dy - sum(dy)/M - (x-mean)*invstd^2*sum(dy*(x-mean))/M), dweight = invstd*sum(dy*(x-mean)),
// dbias = sum(dy). w, dweight, dbias may be null. Same conventions as probe_bn_forward.
int probe_bn_backward(const float* dy, const float* x, const float* save_mean, const float* save_invstd,
                      const float* w, float* dx, float* dweight, float* dbias, long long N, long long C, long long S,
                      void* stream, char* error, int error_len) {
  if (!dy || !x || !save_mean || !save_invstd || !dx)
    return fail(error, error_len, "probe_bn_backward: dy, x, save_mean, save_invstd and dx are required");
  Params p{};
  p.dy = dy;
  p.x = x;
  p.save_mean = const_cast<float*>(save_mean);  // read only in the backward
  p.save_invstd = const_cast<float*>(save_invstd);
  p.w = w;
  p.dx = dx;
  p.dweight = dweight;
  p.dbias = dbias;
  return launch(Pass::backward, p, N, C, S, stream, error, error_len);
}

// Synchronizes the device and reports (1 and a message) an asynchronous CUDA error or a spin timeout flagged by
// any call since the last check; a flagged workspace is zeroed so that later calls start clean.
int probe_last_error(char* error, int error_len) {
  if (error && error_len > 0) error[0] = '\0';
  PROBE_CUDA(cudaDeviceSynchronize());
  if (!g_pending_error.empty()) {
    const std::string text = g_pending_error;
    g_pending_error.clear();
    return fail(error, error_len, "%s", text.c_str());
  }
  if (!g_ws.base) return 0;
  int flag[4] = {};
  PROBE_CUDA(cudaMemcpy(flag, g_ws.ws.error, sizeof flag, cudaMemcpyDeviceToHost));
  if (flag[0] == 0) return 0;
  // A timed-out call leaves arrive[] counts behind; zero everything (ready = 0 matches no generation).
  const size_t total = reinterpret_cast<char*>(g_ws.ws.error) + 16 - static_cast<char*>(g_ws.base);
  PROBE_CUDA(cudaMemset(g_ws.base, 0, total));
  PROBE_CUDA(cudaDeviceSynchronize());
  return fail(error, error_len,
              "SPIN TIMEOUT: block %d waited more than %.0f ms for channel %d (generation %u); results of that call "
              "are wrong",
              flag[2], g_timeout_ns / 1e6, flag[1], static_cast<unsigned>(flag[3]));
}

// Forces a variant by name ("E32", "pE16", "pdE16", "nosyncE16", ...; see probe_variants) for later calls of its
// pass; null or "" restores the automatic choice (which never picks a nosync variant). Returns 1 for an unknown name.
int probe_set_variant(const char* name) {
  if (!name || !*name) {
    g_forced = nullptr;
    return 0;
  }
  for (const Variant& v : g_variants)
    if (strcmp(v.name, name) == 0) {
      g_forced = &v;
      return 0;
    }
  return 1;
}

// The compiled variants, one per line: "<forward|backward> <name> <E> <kind> <min blocks per SM>", kind one of
// classic, pipelined, pipelined_direct, nosync (DIAGNOSTIC: timing only, wrong results). Needs no GPU.
// Returns 0, or 1 when `out` is too small.
int probe_variants(char* out, int len) {
  static const char* const kinds[] = {"classic", "pipelined", "pipelined_direct", "nosync"};
  std::string text;
  char line[160];
  for (const Variant& v : g_variants) {
    snprintf(line, sizeof line, "%s %s %d %s %d\n", v.pass == Pass::forward ? "forward" : "backward", v.name,
             v.elems, kinds[static_cast<int>(v.kind)], v.min_blocks);
    text += line;
  }
  if (!out || len <= static_cast<int>(text.size())) return 1;
  memcpy(out, text.c_str(), text.size() + 1);
  return 0;
}

// The spin timeout, 1 to 4000 ms (default 1000).
void probe_set_timeout_ms(int ms) { g_timeout_ns = static_cast<unsigned>(std::min(std::max(ms, 1), 4000)) * 1000000u; }

// What a call with this shape would launch, under the current probe_set_variant: out[0..5] = E, grid, blocks per
// SM, P, registers per thread, local (spill) bytes per thread. Returns 0, or 1 with a message.
int probe_plan(int backward, long long N, long long C, long long S, long long* out, char* error, int error_len) {
  if (int rc = check_shape(N, C, S, error, error_len)) return rc;
  if (int rc = init_device(error, error_len)) return rc;
  Plan plan;
  if (int rc = choose_plan(backward ? Pass::backward : Pass::forward, N * S, C, plan, error, error_len)) return rc;
  out[0] = plan.variant->elems;
  out[1] = plan.grid;
  out[2] = plan.variant->blocks_per_sm;
  out[3] = plan.P;
  out[4] = plan.variant->attr.numRegs;
  out[5] = static_cast<long long>(plan.variant->attr.localSizeBytes);
  return 0;
}

// A readable description of the device and of every compiled variant (and, when N > 0, its plan for the shape).
int probe_info(long long N, long long C, long long S, char* out, int len) {
  char* error = out;
  const int error_len = len;
  if (int rc = init_device(error, error_len)) return rc;
  std::string text;
  char line[400];
  snprintf(line, sizeof line, "device %s: %d SMs, L2 %d KiB, block %d threads\n", g_dev.name, g_dev.sms,
           g_dev.l2_bytes / 1024, kBlock);
  text += line;
  for (Variant& v : g_variants) {
    probe_variant(v);
    snprintf(line, sizeof line, "  %s %-9s: %s, %d registers, %zu local bytes, %d blocks/SM",
             v.pass == Pass::forward ? "forward " : "backward", v.name,
             v.probe_error == cudaSuccess ? "ok" : cudaGetErrorString(v.probe_error), v.attr.numRegs,
             static_cast<size_t>(v.attr.localSizeBytes), v.blocks_per_sm);
    text += line;
    if (N > 0 && C > 0 && S > 0) {
      const Plan plan = plan_for(v, N * S, C);
      snprintf(line, sizeof line, ", grid %d, P=%d, items %lld, %s", plan.grid, plan.P, plan.items,
               plan.fits ? "fits" : "DOES NOT FIT (P > resident blocks)");
      text += line;
    }
    text += "\n";
  }
  snprintf(out, static_cast<size_t>(len), "%s", text.c_str());
  return 0;
}

}  // extern "C"
