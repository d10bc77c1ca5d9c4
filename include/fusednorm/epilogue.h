#pragma once
// What a kernel applies to the normalized value v = xhat * weight + bias before it stores y, in the same pass.
namespace fusednorm {

//   none:     y = v
//   relu:     y = max(v, 0)
//   add_relu: y = max(v + z, 0), z the residual of the same shape as x (the ResNet block's add and ReLU)
//   silu:     y = v * sigmoid(v) (diffusion U-Nets after GroupNorm)
// The backward of relu and add_relu takes the forward's y (the mask is y > 0) and, for add_relu, writes dz;
// silu's backward recomputes v from x and the saved statistics in the same pass.
enum class Epilogue { none, relu, add_relu, silu };

const char* to_string(Epilogue epilogue);

}  // namespace fusednorm
