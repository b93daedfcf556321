// pybind11 definitions of the RoI functions, shared by bindings_cpu.cpp (pygen._C) and
// bindings_cuda.cpp (pygen._cuda). Backend supplies forward/backward(op, dtype, params, ctx).
//
// Every tensor crosses as a TensorArg tuple (data_ptr, sizes, strides), built by
// pygen/native/roi.py from a torch tensor; no torch type or header is involved, so one build
// works with any torch. ctx is backend specific: [num_threads] for the CPU module,
// [device_index, stream_handle] for the CUDA module.
//
// The checks here are the last line of defence against out-of-bounds access (ranks, matching
// shapes, the contiguity the kernels assume, level count); argument validation with friendly
// messages is pygen.ops' job.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "roi_params.h"

namespace pygen {
namespace roi {
namespace bind {

namespace py = pybind11;
using TensorArg = std::tuple<int64_t, std::vector<int64_t>, std::vector<int64_t>>;
using Ctx = std::vector<int64_t>;

[[noreturn]] inline void fail(const std::string& msg) { throw py::value_error(msg); }

inline const std::vector<int64_t>& sizes(const TensorArg& t) { return std::get<1>(t); }
inline const std::vector<int64_t>& strides(const TensorArg& t) { return std::get<2>(t); }

inline void check_rank(const TensorArg& t, size_t rank, const char* name) {
  if (sizes(t).size() != rank || strides(t).size() != rank)
    fail(std::string(name) + ": expected a " + std::to_string(rank) + "-d tensor");
  for (int64_t s : sizes(t))
    if (s < 0 || s >= (int64_t(1) << 31)) fail(std::string(name) + ": sizes must be in [0, 2^31)");
}

inline bool contiguous(const TensorArg& t) {
  for (int64_t s : sizes(t))
    if (s == 0) return true;  // no element to address
  int64_t expect = 1;
  for (size_t d = sizes(t).size(); d-- > 0;) {
    if (sizes(t)[d] != 1 && strides(t)[d] != expect) return false;
    expect *= sizes(t)[d];
  }
  return true;
}

inline Plane plane_of(const TensorArg& t, double scale, const char* name) {
  check_rank(t, 4, name);
  const auto& z = sizes(t);
  const auto& s = strides(t);
  return Plane{reinterpret_cast<void*>(std::get<0>(t)), z[2], z[3], s[0], s[1], s[2], s[3], scale};
}

// rois and the pooled tensor (out in the forward, grad_out in the backward).
inline RoiParams base_params(const TensorArg& rois, const TensorArg& pooled, const char* pooled_name) {
  RoiParams p{};
  check_rank(rois, 2, "rois");
  if (sizes(rois)[1] != 5) fail("rois: expected shape [K, 5]");
  if (!contiguous(rois)) fail("rois: must be contiguous");
  p.rois = reinterpret_cast<const void*>(std::get<0>(rois));
  p.K = sizes(rois)[0];
  check_rank(pooled, 4, pooled_name);
  if (sizes(pooled)[0] != p.K) fail(std::string(pooled_name) + ": first dimension must equal K");
  p.pooled = reinterpret_cast<void*>(std::get<0>(pooled));
  p.Cp = sizes(pooled)[1];
  p.PH = sizes(pooled)[2];
  p.PW = sizes(pooled)[3];
  for (int d = 0; d < 4; ++d) p.ps[d] = strides(pooled)[d];
  p.num_levels = 1;
  return p;
}

// The feature map(s) or grad buffer(s); all levels share N and C.
inline void set_levels(RoiParams& p, const std::vector<TensorArg>& maps, const std::vector<double>& scales,
                       const char* name) {
  if (maps.empty() || maps.size() > static_cast<size_t>(kMaxLevels))
    fail(std::string(name) + ": expected 1 to " + std::to_string(kMaxLevels) + " levels");
  if (scales.size() != maps.size()) fail("spatial_scales: one scale per level expected");
  p.num_levels = static_cast<int>(maps.size());
  for (size_t l = 0; l < maps.size(); ++l) {
    p.lv[l] = plane_of(maps[l], scales[l], name);
    if (sizes(maps[l])[0] != sizes(maps[0])[0] || sizes(maps[l])[1] != sizes(maps[0])[1])
      fail(std::string(name) + ": every level must have the same N and C");
  }
  p.N = sizes(maps[0])[0];
  p.C = sizes(maps[0])[1];
}

// The FPN level thresholds; past kMaxLevels they cannot matter (fpn_level clamps to the levels).
inline void set_thresholds(RoiParams& p, const std::vector<double>& thresholds) {
  p.num_thresholds = static_cast<int>(std::min(thresholds.size(), static_cast<size_t>(kMaxLevels)));
  for (int j = 0; j < p.num_thresholds; ++j) p.level_area[j] = thresholds[j];
}

inline void check_channels(const RoiParams& p, bool ps) {
  if (ps ? p.Cp * p.PH * p.PW > p.C : p.Cp != p.C)
    fail(ps ? "input channels must be at least out channels * PH * PW"
            : "input and pooled tensors must have the same number of channels");
}

inline void check_grad_buffers(const std::vector<TensorArg>& grads) {
  for (const auto& g : grads)
    if (!contiguous(g)) fail("grad_input: must be contiguous (a zero-filled float32/float64 buffer)");
}

inline void check_argmax(const RoiParams& p, const TensorArg& argmax) {
  check_rank(argmax, 4, "argmax");
  for (int d = 0; d < 4; ++d)
    if (sizes(argmax)[d] != (d == 0 ? p.K : d == 1 ? p.Cp : d == 2 ? p.PH : p.PW))
      fail("argmax: must have the shape of the pooled output");
  if (!contiguous(argmax)) fail("argmax: must be contiguous");
  if (p.lv[0].H * p.lv[0].W >= (int64_t(1) << 31)) fail("roi_pool: H*W must be below 2^31 (int32 argmax)");
}

template <class Backend>
void def_roi(py::module_& m) {
  using V = std::vector<TensorArg>;
  using D = std::vector<double>;

  m.def("roi_align_fwd", [](int dtype, const TensorArg& input, const TensorArg& rois, const TensorArg& out,
                            double scale, int sampling_ratio, bool aligned, const Ctx& ctx) {
    RoiParams p = base_params(rois, out, "out");
    set_levels(p, V{input}, D{scale}, "input");
    check_channels(p, false);
    p.sampling_ratio = sampling_ratio;
    p.aligned = aligned;
    Backend::forward(Op::Align, dtype, p, ctx);
  });
  m.def("roi_align_bwd", [](int dtype, const TensorArg& grad_out, const TensorArg& rois, const TensorArg& grad_input,
                            double scale, int sampling_ratio, bool aligned, bool deterministic, const Ctx& ctx) {
    RoiParams p = base_params(rois, grad_out, "grad_out");
    set_levels(p, V{grad_input}, D{scale}, "grad_input");
    check_grad_buffers(V{grad_input});
    check_channels(p, false);
    p.sampling_ratio = sampling_ratio;
    p.aligned = aligned;
    Backend::backward(Op::Align, dtype, p, deterministic, ctx);
  });
  m.def("ps_roi_align_fwd", [](int dtype, const TensorArg& input, const TensorArg& rois, const TensorArg& out,
                               double scale, int sampling_ratio, const Ctx& ctx) {
    RoiParams p = base_params(rois, out, "out");
    set_levels(p, V{input}, D{scale}, "input");
    check_channels(p, true);
    p.sampling_ratio = sampling_ratio;
    p.aligned = 1;
    Backend::forward(Op::PsAlign, dtype, p, ctx);
  });
  m.def("ps_roi_align_bwd", [](int dtype, const TensorArg& grad_out, const TensorArg& rois,
                               const TensorArg& grad_input, double scale, int sampling_ratio, bool deterministic,
                               const Ctx& ctx) {
    RoiParams p = base_params(rois, grad_out, "grad_out");
    set_levels(p, V{grad_input}, D{scale}, "grad_input");
    check_grad_buffers(V{grad_input});
    check_channels(p, true);
    p.sampling_ratio = sampling_ratio;
    p.aligned = 1;
    Backend::backward(Op::PsAlign, dtype, p, deterministic, ctx);
  });
  m.def("roi_pool_fwd", [](int dtype, const TensorArg& input, const TensorArg& rois, const TensorArg& out,
                           const TensorArg& argmax, double scale, const Ctx& ctx) {
    RoiParams p = base_params(rois, out, "out");
    set_levels(p, V{input}, D{scale}, "input");
    check_channels(p, false);
    check_argmax(p, argmax);
    p.argmax = reinterpret_cast<int32_t*>(std::get<0>(argmax));
    Backend::forward(Op::Pool, dtype, p, ctx);
  });
  m.def("roi_pool_bwd", [](int dtype, const TensorArg& grad_out, const TensorArg& argmax, const TensorArg& rois,
                           const TensorArg& grad_input, bool deterministic, const Ctx& ctx) {
    RoiParams p = base_params(rois, grad_out, "grad_out");
    set_levels(p, V{grad_input}, D{1.0}, "grad_input");
    check_grad_buffers(V{grad_input});
    check_channels(p, false);
    check_argmax(p, argmax);
    p.argmax = reinterpret_cast<int32_t*>(std::get<0>(argmax));
    Backend::backward(Op::Pool, dtype, p, deterministic, ctx);
  });
  m.def("ps_roi_pool_fwd", [](int dtype, const TensorArg& input, const TensorArg& rois, const TensorArg& out,
                              double scale, const Ctx& ctx) {
    RoiParams p = base_params(rois, out, "out");
    set_levels(p, V{input}, D{scale}, "input");
    check_channels(p, true);
    Backend::forward(Op::PsPool, dtype, p, ctx);
  });
  m.def("ps_roi_pool_bwd", [](int dtype, const TensorArg& grad_out, const TensorArg& rois,
                              const TensorArg& grad_input, double scale, bool deterministic, const Ctx& ctx) {
    RoiParams p = base_params(rois, grad_out, "grad_out");
    set_levels(p, V{grad_input}, D{scale}, "grad_input");
    check_grad_buffers(V{grad_input});
    check_channels(p, true);
    Backend::backward(Op::PsPool, dtype, p, deterministic, ctx);
  });
  // thresholds: pygen.ref.roi.fpn_level_thresholds(spatial_scales, ...) for the compute type,
  // computed by the Python launcher.
  m.def("multi_scale_roi_align_fwd", [](int dtype, const V& features, const TensorArg& rois, const TensorArg& out,
                                        const D& scales, int sampling_ratio, bool aligned, const D& thresholds,
                                        const Ctx& ctx) {
    RoiParams p = base_params(rois, out, "out");
    set_levels(p, features, scales, "features");
    check_channels(p, false);
    p.sampling_ratio = sampling_ratio;
    p.aligned = aligned;
    set_thresholds(p, thresholds);
    Backend::forward(Op::Align, dtype, p, ctx);
  });
  m.def("multi_scale_roi_align_bwd", [](int dtype, const TensorArg& grad_out, const TensorArg& rois,
                                        const V& grad_features, const D& scales, int sampling_ratio, bool aligned,
                                        const D& thresholds, bool deterministic, const Ctx& ctx) {
    RoiParams p = base_params(rois, grad_out, "grad_out");
    set_levels(p, grad_features, scales, "grad_features");
    check_grad_buffers(grad_features);
    check_channels(p, false);
    p.sampling_ratio = sampling_ratio;
    p.aligned = aligned;
    set_thresholds(p, thresholds);
    Backend::backward(Op::Align, dtype, p, deterministic, ctx);
  });
}

}  // namespace bind
}  // namespace roi
}  // namespace pygen
