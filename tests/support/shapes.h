#pragma once
// Shapes from real networks, one list shared by the tests and the benchmark.
#include <cstdint>
#include <string>
#include <vector>

namespace fusednorm::shapes {

struct NamedShape {
  std::string name;
  std::vector<int64_t> shape;  // (N, C, *spatial)
};

// ResNet-50's BatchNorm inputs at batch 32 (one per stage resolution).
inline std::vector<NamedShape> resnet50_batch32() {
  return {{"resnet50.conv1", {32, 64, 112, 112}},
          {"resnet50.stage1", {32, 256, 56, 56}},
          {"resnet50.stage2", {32, 512, 28, 28}},
          {"resnet50.stage3", {32, 1024, 14, 14}},
          {"resnet50.stage4", {32, 2048, 7, 7}}};
}

// The same layers at batch 2: the real network's channel and spatial extents (what the schedules' blocking
// depends on) at a size the tests can check against the float64 reference on every instruction set.
inline std::vector<NamedShape> resnet50_batch2() {
  std::vector<NamedShape> layers = resnet50_batch32();
  for (NamedShape& layer : layers) layer.shape[0] = 2;
  return layers;
}

// Small shapes with odd sizes, for correctness: every rank from (N, C) to (N, C, D, H, W); C = 1, 3, 17;
// spatial 1x1, 7x7, 13x17 (not a multiple of any vector width, nor of the NHWC schedule's 64-row tasks);
// N = 1 with spatial > 1. Every shape has more than one value per channel, so each is valid in training.
// The last spans several NCHW channel blocks (1 MiB each) with a partial last block.
inline std::vector<NamedShape> odd_sizes() {
  return {{"n8_c3", {8, 3}},
          {"n5_c17", {5, 17}},
          {"n2_c17_l13", {2, 17, 13}},
          {"n3_c1_l7", {3, 1, 7}},
          {"n2_c3_7x7", {2, 3, 7, 7}},
          {"n3_c1_7x7", {3, 1, 7, 7}},
          {"n4_c17_1x1", {4, 17, 1, 1}},
          {"n2_c17_13x17", {2, 17, 13, 17}},
          {"n1_c3_13x17", {1, 3, 13, 17}},
          {"n2_c3_3x7x7", {2, 3, 3, 7, 7}},
          {"n1_c17_2x13x17", {1, 17, 2, 13, 17}},
          {"n8_c17_64x64", {8, 17, 64, 64}}};
}

}  // namespace fusednorm::shapes
