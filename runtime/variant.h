#pragma once
// One kernel: what it computes, for which layout and instruction set, and how to call it. The build generates the
// table of the runtime's own variants (fusednorm_variant_table.h); generated code registers others
// (fusednorm/kernel_registry.h). The runtime never lists them by hand. docs/KERNELS.md lists each kernel's
// arguments.
#include <HalideRuntime.h>

#include <span>

#include "fusednorm/epilogue.h"
#include "fusednorm/tensor.h"

namespace fusednorm::detail {

enum class Norm { batch, instance, group, layer, rms };
enum class Direction { forward_training, forward_inference, backward };
// Instruction sets, best first within an architecture: x86-64's three, then arm-64's NEON. A build has the
// kernels of one architecture (generators/CMakeLists.txt).
enum class Isa { avx512, avx2, sse41, neon };

struct KernelVariant {
  Norm norm;
  Direction direction;
  Layout layout;  // nchw for layer and rms (rows)
  Epilogue epilogue;
  bool affine;
  Isa isa;
  const char* schedule;  // "hand", or the autoscheduler's name
  const char* name;
  int (*call_argv)(void** args);
  const halide_filter_metadata_t* (*metadata)();
};

// Every variant dispatch chooses from: the registered ones in the order they came, then the built-in ones. Fixed at
// the first call (registration closes then), so references into it stay valid.
std::span<const KernelVariant> all_variants();

const char* to_string(Norm norm);  // "batch_norm", "instance_norm", ...
const char* to_string(Direction direction);
const char* to_string(Isa isa);

}  // namespace fusednorm::detail
