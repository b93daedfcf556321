// pybind11 definitions of the RoI functions, shared by bindings_cpu.cpp (pygen._C) and
// bindings_cuda.cpp (pygen._cuda). Backend supplies forward(const Launch&, ctx) and
// backward(const Launch&, deterministic, ctx).
//
// Tensors arrive as TensorArgs from pygen/_ext.py::call (csrc/common/tensor_arg.h). The checks
// here are the memory-safety ones, run on every call since the registered ops can be called
// without pygen.ops' validation: ranks, sizes below 2^31, matching shapes, the dtypes and the
// contiguity the kernels assume, the level count. Out-of-range batch indices are not an error
// (the kernels give those RoIs zeros).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "../common/tensor_arg.h"
#include "roi_params.h"

namespace pygen {
namespace roi {
namespace bind {

using namespace pygen::bind;  // NOLINT: TensorArg, Ctx and the shared checks
using V = std::vector<TensorArg>;
using D = std::vector<double>;

// One checked launch: the function name (for errors), the op, the storage dtype code, the params.
struct Launch {
  const char* fn;
  Op op;
  int dtype;
  RoiParams p;
};

// rois [K, 5] contiguous in the compute type; `pooled` (out in the forward, grad_out in the
// backward) [K, Cp, PH, PW] in the storage type, any strides; the levels `maps` [N, C, H_l, W_l]
// sharing N and C (forward: the inputs, storage type, any strides; backward: the grad buffers,
// contiguous, compute type); Cp, PH, PW against C as `op` requires.
inline Launch prepare(const char* fn, Op op, bool backward, const V& maps, const char* maps_name,
                      const TensorArg& rois, const TensorArg& pooled, const D& scales) {
  const char* pooled_name = backward ? "grad_out" : "out";
  Launch l{fn, op, float_dtype(fn, pooled, pooled_name), RoiParams{}};
  RoiParams& p = l.p;
  const int cdt = compute_code(l.dtype);
  check_rank(fn, rois, 2, "rois");
  if (sizes(rois)[1] != 5) fail(fn, "rois: expected shape [K, 5]");
  check_dtype(fn, rois, cdt, "rois");
  if (!contiguous(rois)) fail(fn, "rois: must be contiguous");
  p.rois = data(rois);
  p.K = sizes(rois)[0];
  check_rank(fn, pooled, 4, pooled_name);
  if (sizes(pooled)[0] != p.K) fail(fn, std::string(pooled_name) + ": first dimension must equal K");
  p.pooled = data(pooled);
  p.Cp = sizes(pooled)[1];
  p.PH = sizes(pooled)[2];
  p.PW = sizes(pooled)[3];
  std::copy(strides(pooled).begin(), strides(pooled).end(), p.ps);
  if (maps.empty() || maps.size() > static_cast<size_t>(kMaxLevels))
    fail(fn, std::string(maps_name) + ": expected 1 to " + std::to_string(kMaxLevels) + " levels");
  if (scales.size() != maps.size()) fail(fn, "spatial_scales: one scale per level expected");
  p.num_levels = static_cast<int>(maps.size());
  for (size_t i = 0; i < maps.size(); ++i) {
    const TensorArg& t = maps[i];
    check_rank(fn, t, 4, maps_name);
    check_dtype(fn, t, backward ? cdt : l.dtype, maps_name);
    if (backward && !contiguous(t)) fail(fn, std::string(maps_name) + ": must be contiguous (a zero-filled buffer)");
    if (sizes(t)[0] != sizes(maps[0])[0] || sizes(t)[1] != sizes(maps[0])[1])
      fail(fn, std::string(maps_name) + ": every level must have the same N and C");
    const auto& z = sizes(t);
    const auto& s = strides(t);
    p.lv[i] = Plane{data(t), z[2], z[3], s[0], s[1], s[2], s[3], scales[i]};
  }
  p.N = sizes(maps[0])[0];
  p.C = sizes(maps[0])[1];
  const bool ps = op == Op::PsAlign || op == Op::PsPool;
  if (ps ? p.Cp * p.PH * p.PW > p.C : p.Cp != p.C)
    fail(fn, ps ? "input channels must be at least out channels * PH * PW"
                : "input and pooled tensors must have the same number of channels");
  return l;
}

inline Launch align(Launch l, int sampling_ratio, bool aligned, const D& thresholds = {}) {
  l.p.sampling_ratio = sampling_ratio;
  l.p.aligned = aligned;
  // FPN level thresholds (pygen.ref.roi.fpn_level_thresholds); past kMaxLevels they cannot
  // matter (a level past the maps pools nothing: fpn_level).
  l.p.num_thresholds = static_cast<int>(std::min(thresholds.size(), static_cast<size_t>(kMaxLevels)));
  for (int j = 0; j < l.p.num_thresholds; ++j) l.p.level_area[j] = thresholds[j];
  return l;
}

// roi_pool's argmax: int32, contiguous, the pooled shape; H*W must fit the int32 index.
inline Launch with_argmax(Launch l, const TensorArg& argmax) {
  const RoiParams& p = l.p;
  l.p.argmax = static_cast<int32_t*>(tensor(l.fn, argmax, {p.K, p.Cp, p.PH, p.PW}, kInt32, "argmax"));
  if (p.lv[0].H * p.lv[0].W >= (int64_t(1) << 31)) fail(l.fn, "H*W must be below 2^31 (int32 argmax)");
  return l;
}

// Forward arguments: (input, rois, out, [argmax,] scale, [sampling_ratio, [aligned,]] ctx);
// backward: (grad_out, [argmax,] rois, grad_input, [scale, [sampling_ratio, [aligned,]]]
// deterministic, ctx). multi_scale takes lists of levels and scales, and the FPN thresholds.
template <class Backend>
void def_roi(py::module_& m) {
  using Arg = const TensorArg&;
  m.def("roi_align_fwd", [](Arg input, Arg rois, Arg out, double scale, int sr, bool aligned, const Ctx& ctx) {
    Backend::forward(align(prepare("roi_align_fwd", Op::Align, false, V{input}, "input", rois, out, D{scale}), sr,
                           aligned), ctx);
  });
  m.def("roi_align_bwd", [](Arg grad, Arg rois, Arg grad_input, double scale, int sr, bool aligned, bool det,
                            const Ctx& ctx) {
    Backend::backward(align(prepare("roi_align_bwd", Op::Align, true, V{grad_input}, "grad_input", rois, grad,
                                    D{scale}), sr, aligned), det, ctx);
  });
  m.def("ps_roi_align_fwd", [](Arg input, Arg rois, Arg out, double scale, int sr, const Ctx& ctx) {
    Backend::forward(align(prepare("ps_roi_align_fwd", Op::PsAlign, false, V{input}, "input", rois, out, D{scale}),
                           sr, true), ctx);
  });
  m.def("ps_roi_align_bwd", [](Arg grad, Arg rois, Arg grad_input, double scale, int sr, bool det, const Ctx& ctx) {
    Backend::backward(align(prepare("ps_roi_align_bwd", Op::PsAlign, true, V{grad_input}, "grad_input", rois, grad,
                                    D{scale}), sr, true), det, ctx);
  });
  m.def("roi_pool_fwd", [](Arg input, Arg rois, Arg out, Arg argmax, double scale, const Ctx& ctx) {
    Backend::forward(with_argmax(prepare("roi_pool_fwd", Op::Pool, false, V{input}, "input", rois, out, D{scale}),
                                 argmax), ctx);
  });
  m.def("roi_pool_bwd", [](Arg grad, Arg argmax, Arg rois, Arg grad_input, bool det, const Ctx& ctx) {
    Backend::backward(with_argmax(prepare("roi_pool_bwd", Op::Pool, true, V{grad_input}, "grad_input", rois, grad,
                                          D{1.0}), argmax), det, ctx);
  });
  m.def("ps_roi_pool_fwd", [](Arg input, Arg rois, Arg out, double scale, const Ctx& ctx) {
    Backend::forward(prepare("ps_roi_pool_fwd", Op::PsPool, false, V{input}, "input", rois, out, D{scale}), ctx);
  });
  m.def("ps_roi_pool_bwd", [](Arg grad, Arg rois, Arg grad_input, double scale, bool det, const Ctx& ctx) {
    Backend::backward(prepare("ps_roi_pool_bwd", Op::PsPool, true, V{grad_input}, "grad_input", rois, grad, D{scale}),
                      det, ctx);
  });
  m.def("multi_scale_roi_align_fwd", [](const V& features, Arg rois, Arg out, const D& scales, int sr, bool aligned,
                                        const D& thresholds, const Ctx& ctx) {
    Backend::forward(align(prepare("multi_scale_roi_align_fwd", Op::Align, false, features, "features", rois, out,
                                   scales), sr, aligned, thresholds), ctx);
  });
  m.def("multi_scale_roi_align_bwd", [](Arg grad, Arg rois, const V& grad_features, const D& scales, int sr,
                                        bool aligned, const D& thresholds, bool det, const Ctx& ctx) {
    Backend::backward(align(prepare("multi_scale_roi_align_bwd", Op::Align, true, grad_features, "grad_features",
                                    rois, grad, scales), sr, aligned, thresholds), det, ctx);
  });
}

}  // namespace bind
}  // namespace roi
}  // namespace pygen
