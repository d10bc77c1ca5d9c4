#pragma once
// Kernels made outside the runtime's own build: those fusednorm_add_kernel() generates in a downstream build and
// the autoscheduled comparison variants (the package's component `autoscheduled`). Once registered, the functional
// API, the layers, dispatch and variants() use them like the built-in kernels, with the same checks and errors.
// fusednorm_add_kernel() writes the registration; call register_kernels() yourself only for a kernel generated
// another way (FusedNorm's generator).
#include <cstddef>

struct halide_filter_metadata_t;

namespace fusednorm {

struct KernelRegistration {
  const char* name;       // unique in the process, e.g. "unet_group_norm_silu_forward_training"
  const char* norm;       // "batch", "instance", "group", "layer" or "rms": the generator's parameter norm
  const char* direction;  // "forward_training", "backward", or for batch only "forward_inference", "statistics",
                          // "backward_reduce", "backward_elementwise"
  const char* layout;     // "nchw" or "nhwc" ("nchw" for layer and rms)
  const char* epilogue;   // "none", "relu", "add_relu" or "silu"
  bool affine;
  const char* schedule;                           // "hand" or the autoscheduler's name
  int (*call_argv)(void** args);                  // the kernel's <function>_argv
  const halide_filter_metadata_t* (*metadata)();  // its <function>_metadata: the instruction set is its target's,
                                                  // the dtype x's element type (float32, bfloat16 or float16)
};

// Adds the kernels to dispatch, ahead of the built-in ones: where a registered kernel and a built-in one both fit a
// call (same norm, direction, layout, epilogue, affine and dtype, the same schedule, an instruction set the CPU runs), the
// registered one runs. Registering the same kernel (name and function) again does nothing.
// Throws fusednorm::Error, registering none of them, when a field is not one of the values above, a kernel's
// argument types are not x's storage type for z, y, dy, dx and dz and float32 for the others, a kernel is not for
// this runtime's architecture, a name belongs to another kernel, or dispatch has already run:
// the list of kernels is fixed at the first call that dispatches or lists variants, so register during static
// initialization (as fusednorm_add_kernel() does) or before the first call.
void register_kernels(const KernelRegistration* kernels, std::size_t count);

}  // namespace fusednorm
