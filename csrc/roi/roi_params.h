// Arguments of every RoI kernel, host and device alike: plain structs of pointers, sizes and
// strides (no torch types), passed to CUDA kernels by value.
#pragma once

#include <cstdint>

namespace pygen {
namespace roi {

// FPN pyramids in torchvision's MultiScaleRoIAlign have 4-5 levels; 8 leaves room and keeps the
// by-value kernel argument small (8 * 64 bytes).
constexpr int kMaxLevels = 8;

enum class Op : int { Align = 0, Pool = 1, PsAlign = 2, PsPool = 3 };

// One [N, C, H, W] feature map (forward: the input, read as storage type S) or its gradient
// buffer (backward: compute type T, written). Strides are in elements, any layout.
struct Plane {
  void* data;
  int64_t H, W;
  int64_t sN, sC, sH, sW;
  double scale;  // spatial_scale of this level
};

struct RoiParams {
  Plane lv[kMaxLevels];
  int num_levels;        // 1 except for multi_scale_roi_align
  // FPN level rule as area thresholds (pygen.ref.roi.fpn_level_thresholds, in T's precision):
  // a RoI's level index is the number of them its area reaches. Unused with one level.
  double level_area[kMaxLevels];
  int num_thresholds;
  int64_t N, C;          // batch and channels, shared by every level
  const void* rois;      // [K, 5] contiguous, compute type T
  int64_t K;
  void* pooled;          // forward: out (S, written); backward: grad_out (S, read)
  int64_t Cp, PH, PW;    // pooled shape [K, Cp, PH, PW]; Cp = C for align/pool, C/(PH*PW) for PS
  int64_t ps[4];         // strides of `pooled`, in elements
  int32_t* argmax;       // roi_pool only: [K, C, PH, PW] contiguous, h*W + w or -1
  int sampling_ratio;
  int aligned;
};

// Threads of the deterministic CUDA backward, one per grad column (level, image, channel, x):
// the sum over levels of N * C * W. Its kernels index them with 32 bits, so it must stay < 2^31
// (bindings_cuda.cpp refuses more with a ValueError before the launch).
inline int64_t grad_columns(const RoiParams& p) {
  int64_t cols = 0;
  for (int l = 0; l < p.num_levels; ++l) cols += p.N * p.C * p.lv[l].W;
  return cols;
}

}  // namespace roi
}  // namespace pygen
