#pragma once
// Picks the kernel variant for a call, best instruction set first, and can say why it passed over others.
#include "runtime/variant.h"

namespace fusednorm::detail {

struct VariantRequest {
  const char* function;  // for messages, e.g. "instance_norm" (which may run the batch kernels)
  Direction direction;
  Layout layout;
  bool affine;
  Norm norm = Norm::batch;  // the kernels' norm: candidates are the variants of this norm and direction
  Epilogue epilogue = Epilogue::none;
};

// The variant to run; throws fusednorm::Error when none fits (saying which epilogues were built when none has the
// one asked for). With FUSEDNORM_VERBOSE=1 it prints, on stderr, the chosen variant and each candidate passed
// over with the reason.
const KernelVariant& select_variant(const VariantRequest& request);

}  // namespace fusednorm::detail
