#pragma once
// One kernel: what it computes, for which backend, layout and instruction set, and how to call it. The build
// generates the tables of the runtime's own variants (fusednorm_variant_table.h, and the components'
// fusednorm_cuda_variant_table.h and autoscheduled registration) from one CMake function
// (generators/variants.cmake); generated code registers others (fusednorm/kernel_registry.h). The runtime never
// lists them by hand. docs/KERNELS.md lists each kernel's arguments.
#include <HalideRuntime.h>

#include <span>

#include "fusednorm/epilogue.h"
#include "fusednorm/kinds.h"
#include "fusednorm/tensor.h"

namespace fusednorm::detail {

// Instruction sets, best first within an architecture: x86-64's three, then arm-64's NEON; cuda is a CUDA
// kernel's (its host code is x86-64 sse41). A build has the CPU kernels of one architecture.
enum class Isa { avx512, avx2, sse41, neon, cuda };

struct KernelVariant {
  Norm norm;
  Direction direction;
  Layout layout;  // nchw for layer and rms (rows)
  Epilogue epilogue;
  bool affine;
  DType dtype;  // of x and the tensors like it
  Backend backend;
  Isa isa;
  const char* schedule;  // "hand", or the autoscheduler's name
  const char* name;
  int (*call_argv)(void** args);
  const halide_filter_metadata_t* (*metadata)();
};

// Every variant dispatch chooses from: the registered ones in the order they came, then the built-in ones, then
// the CUDA ones (where the component cuda is linked). Fixed at the first call (registration closes then), so
// references into it stay valid.
std::span<const KernelVariant> all_variants();

const char* to_string(Norm norm);  // "batch_norm", "instance_norm", ...
const char* to_string(Direction direction);
const char* to_string(Isa isa);

}  // namespace fusednorm::detail
