#pragma once
// The epilogue a kernel fuses after the affine step (fusednorm/kinds.h says what each computes).
#include "fusednorm/kinds.h"

namespace fusednorm {

const char* to_string(Epilogue epilogue);

}  // namespace fusednorm
