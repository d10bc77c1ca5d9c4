#pragma once
// One built kernel: what it computes, for which layout and instruction set, and how to call it. The build
// generates the table of every variant (fusednorm_variant_table.h); the runtime never lists them by hand.
// docs/KERNELS.md lists each kernel's arguments.
#include <HalideRuntime.h>

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

const char* to_string(Norm norm);  // "batch_norm", "instance_norm", ...
const char* to_string(Direction direction);
const char* to_string(Isa isa);

}  // namespace fusednorm::detail
