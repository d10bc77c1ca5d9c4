#pragma once
// What a normalization is, apart from how it is computed (the algorithm files) and how it runs (the
// schedule files). BatchNorm is the first member; the family issue adds the others as further specs.
#include <map>
#include <string>

namespace fusednorm {

// Memory order of the channel axis; the kernels see x as three dimensions, storage order innermost first:
//   nchw: (s, c, n) where s is all spatial dimensions flattened (dense, so they collapse into one);
//   nhwc: (c, s, n).
enum class Layout { nchw, nhwc };

inline const std::map<std::string, Layout> layout_names = {{"nchw", Layout::nchw}, {"nhwc", Layout::nhwc}};

struct NormSpec {
  Layout layout = Layout::nchw;
  bool affine = true;  // per-channel weight (gamma) and bias (beta)
};

}  // namespace fusednorm
