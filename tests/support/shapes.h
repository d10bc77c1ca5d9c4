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
// n16_c3_15x20: BatchNorm's NCHW tail sums span samples (norm_algorithm.h, ChannelSums) in groups of 4096 / 300 = 13
// (float32) and 1024 / 300 = 3 (16-bit), the last group partial. The last spans several NCHW channel blocks
// (1 MiB each) with a partial last block.
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
          {"n16_c3_15x20", {16, 3, 15, 20}},
          {"n8_c17_64x64", {8, 17, 64, 64}}};
}

}  // namespace fusednorm::shapes

// ---------------------------------------------------------------------------------------------------------
// The rest of the family. LayerNorm and RMSNorm inputs say how many trailing dimensions are normalized,
// GroupNorm inputs how many groups; InstanceNorm takes the NamedShape lists above that have spatial extent.

namespace fusednorm::shapes {

struct GroupNormShape {
  std::string name;
  std::vector<int64_t> shape;  // (N, C, *spatial)
  int64_t groups;
};

struct RowsShape {
  std::string name;
  std::vector<int64_t> shape;   // (*rows, *normalized_shape)
  int64_t normalized_dims = 1;  // how many trailing dimensions form normalized_shape
};

// BatchNorm1d in an MLP: (batch, features).
inline std::vector<NamedShape> mlp_batch_norm_1d() { return {{"mlp.bn1d", {8192, 1024}}}; }

// The seed's BatchNorm1d(64) (examples/simple_bn_model: Linear(128, 64) -> BatchNorm1d(64) -> ReLU) on its batch
// of 32, and at batch 256: inputs of 8 and 64 KiB, where a call's fixed costs are most of its time.
inline std::vector<NamedShape> seed_batch_norm_1d() {
  return {{"seed.bn1d_32x64", {32, 64}}, {"seed.bn1d_256x64", {256, 64}}};
}

// LayerNorm (and RMSNorm) in a transformer: (tokens, hidden) rows, BERT-large / GPT-2-medium width and a
// 7B-class model's 4096.
inline std::vector<RowsShape> transformer_rows() {
  return {{"transformer.8192x1024", {8192, 1024}}, {"transformer.4096x4096", {4096, 4096}}};
}

// RMSNorm in a decoder-only LLM: a 7B-class model's prefill, 4096 tokens at hidden 4096 (transformer_rows' too),
// and a 70B-class model's decode step, 16 sequences of one token at hidden 8192.
inline std::vector<RowsShape> llm_rows() { return {{"llm.4096x4096", {4096, 4096}}, {"llm.16x8192", {16, 8192}}}; }

// InstanceNorm in a fast style-transfer network (Johnson et al., 2016): the second convolution's 64 channels at
// 128 x 128 for 256 x 256 images, batch 8.
inline std::vector<NamedShape> style_instance_norm() { return {{"style.n8_c64_128x128", {8, 64, 128, 128}}}; }

// GroupNorm in a Stable Diffusion U-Net's first resolution: 320 channels in 32 groups, 64x64 latents.
inline std::vector<GroupNormShape> unet_group_norm() { return {{"unet.n8_c320_64x64", {8, 320, 64, 64}, 32}}; }

// One small input per kind whose tensors all fit in a core's L2 (x of 256 KiB): the kernels' fixed costs
// (launch, the thread pool, the statistics pass) rather than memory bandwidth.
inline std::vector<NamedShape> cache_resident() { return {{"cache.n4_c64_16x16", {4, 64, 16, 16}}}; }
inline std::vector<GroupNormShape> cache_resident_group_norm() {
  return {{"cache.n4_c64_16x16_g8", {4, 64, 16, 16}, 8}};
}
inline std::vector<RowsShape> cache_resident_rows() { return {{"cache.256x256", {256, 256}}}; }

// The real networks' shapes at a size the tests can check against the float64 reference on every
// instruction set, layout and epilogue: the feature, channel and group extents kept (what the schedules'
// blocking depends on), the batch (and the U-Net's latents) made smaller.
inline std::vector<NamedShape> mlp_batch_norm_1d_small() { return {{"mlp.bn1d_batch64", {64, 1024}}}; }
inline std::vector<RowsShape> transformer_rows_small() {
  return {{"transformer.32x1024", {32, 1024}}, {"transformer.8x4096", {8, 4096}}};
}
inline std::vector<GroupNormShape> unet_group_norm_small() { return {{"unet.n1_c320_16x16", {1, 320, 16, 16}, 32}}; }
// The decode step is small already; the style network at batch 1.
inline std::vector<RowsShape> llm_rows_small() { return {{"llm.16x8192", {16, 8192}}}; }
inline std::vector<NamedShape> style_instance_norm_small() { return {{"style.n1_c64_128x128", {1, 64, 128, 128}}}; }

// Odd sizes for GroupNorm: C = 1, 3, 17 with groups 1 and C, and a middle divisor (C = 12 in 4 groups of
// 3 channels, C = 48 in 3 groups of 16); spatial 1x1 (with several channels per group, so each group has more
// than one value), 7x7, 13x17; every rank from (N, C) to (N, C, D, H, W).
inline std::vector<GroupNormShape> group_norm_odd_sizes() {
  return {{"n2_c6_g3", {2, 6}, 3},
          {"n2_c17_g1_l13", {2, 17, 13}, 1},
          {"n2_c1_g1_7x7", {2, 1, 7, 7}, 1},
          {"n3_c3_g3_13x17", {3, 3, 13, 17}, 3},
          {"n2_c3_g1_1x1", {2, 3, 1, 1}, 1},
          {"n2_c17_g17_7x7", {2, 17, 7, 7}, 17},
          {"n1_c17_g1_13x17", {1, 17, 13, 17}, 1},
          {"n2_c12_g4_7x7", {2, 12, 7, 7}, 4},
          {"n2_c48_g3_13x17", {2, 48, 13, 17}, 3},
          {"n2_c6_g2_3x7x7", {2, 6, 3, 7, 7}, 2}};
}

// Odd sizes for LayerNorm and RMSNorm: D = 1, 7, 1000 (not a multiple of any vector width), 1 row and many,
// and normalized_shape of two and three dimensions; rows over several of the CPU schedule's row blocks (about
// 2^16 elements each), the last one partial; D = 2500, a row of several thousand bytes whose tail is not whole
// vectors.
inline std::vector<RowsShape> rows_odd_sizes() {
  return {
      {"r3_d1", {3, 1}},      {"r17_d7", {17, 7}},         {"r1_d1000", {1, 1000}},        {"r5_d1000", {5, 1000}},
      {"r2x3_d7", {2, 3, 7}}, {"r6_d7x13", {6, 7, 13}, 2}, {"r2_d3x7x7", {2, 3, 7, 7}, 3},
      {"r300_d1000", {300, 1000}}, {"r4100_d31", {4100, 31}},   {"r37_d2500", {37, 2500}},
  };
}

}  // namespace fusednorm::shapes
