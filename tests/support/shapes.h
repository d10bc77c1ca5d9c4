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

}  // namespace fusednorm::shapes
