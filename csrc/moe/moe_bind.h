// pybind11 definition of moe_align, shared by bindings_cpu.cpp (pygen._C) and bindings_cuda.cpp
// (pygen._cuda). Backend supplies align(const AlignParams&, ctx). Tensors cross as
// (data_ptr, sizes, strides) tuples built by pygen/native/moe.py; the checks here (ranks, sizes,
// contiguity, dtypes of the id tensor) are the last line of defence against out-of-bounds access;
// friendly argument validation is pygen.ops.moe's job.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "moe_launch.h"

namespace pygen {
namespace moe {
namespace bind {

namespace py = pybind11;
using TensorArg = std::tuple<int64_t, std::vector<int64_t>, std::vector<int64_t>>;
using Ctx = std::vector<int64_t>;

[[noreturn]] inline void fail(const std::string& msg) { throw py::value_error("moe_align: " + msg); }

// A contiguous 1-D tensor of exactly n elements.
inline void* vec(const TensorArg& t, int64_t n, const char* name) {
  const auto& z = std::get<1>(t);
  const auto& s = std::get<2>(t);
  if (z.size() != 1) fail(std::string(name) + " must be 1-D");
  if (z[0] != n) fail(std::string(name) + " must have " + std::to_string(n) + " elements, got " + std::to_string(z[0]));
  if (n > 1 && s[0] != 1) fail(std::string(name) + " must be contiguous");
  return reinterpret_cast<void*>(std::get<0>(t));
}

// Rows of a 2-D tensor [rows, cols] with unit column stride; returns (ptr, row stride).
inline std::pair<void*, int64_t> rows2d(const TensorArg& t, int64_t rows, int64_t cols, const char* name,
                                        bool contiguous) {
  const auto& z = std::get<1>(t);
  const auto& s = std::get<2>(t);
  const std::string n(name);
  if (z.size() != 2 || z[0] != rows || z[1] != cols)
    throw py::value_error("moe: " + n + " must have shape [" + std::to_string(rows) + ", " + std::to_string(cols) + "]");
  if (cols > 1 && s[1] != 1) throw py::value_error("moe: " + n + " must have unit column stride");
  if (contiguous && rows > 1 && s[0] != cols) throw py::value_error("moe: " + n + " must be contiguous");
  return {reinterpret_cast<void*>(std::get<0>(t)), s[0]};
}

inline const int32_t* ivec(const TensorArg& t, int64_t n, const char* name) {
  const auto& z = std::get<1>(t);
  if (z.size() != 1 || z[0] != n || (n > 1 && std::get<2>(t)[0] != 1))
    throw py::value_error(std::string("moe: ") + name + " must be a contiguous [" + std::to_string(n) + "] tensor");
  return reinterpret_cast<const int32_t*>(std::get<0>(t));
}

inline const void* wvec(const std::optional<TensorArg>& t, int64_t n) {
  return t ? static_cast<const void*>(ivec(*t, n, "topk_weights")) : nullptr;
}

template <typename Backend>
void def_permute(py::module_& m) {
  m.def("moe_permute", [](int dtype, const TensorArg& x, const TensorArg& slots, int64_t top_k, const TensorArg& out,
                          const Ctx& ctx) {
    PermuteParams p{};
    p.dtype = dtype;
    const auto& z = std::get<1>(x);
    if (z.size() != 2 || top_k < 1) throw py::value_error("moe_permute: x must be [T, H], top_k >= 1");
    p.T = z[0];
    p.H = z[1];
    p.K = top_k;
    p.N = p.T * p.K;
    auto xr = rows2d(x, p.T, p.H, "x", false);
    p.x = xr.first;
    p.x_stride = xr.second;
    p.slots = ivec(slots, p.N, "sorted_slots");
    p.out = rows2d(out, p.N, p.H, "out", true).first;
    Backend::permute(PermuteOp::Permute, p, ctx);
  });
  m.def("moe_unpermute", [](int dtype, const TensorArg& y, const TensorArg& row_of_slot,
                            std::optional<TensorArg> w, int64_t top_k, const TensorArg& out, const Ctx& ctx) {
    PermuteParams p{};
    p.dtype = dtype;
    const auto& z = std::get<1>(out);
    if (z.size() != 2 || top_k < 1) throw py::value_error("moe_unpermute: out must be [T, H], top_k >= 1");
    p.T = z[0];
    p.H = z[1];
    p.K = top_k;
    p.N = p.T * p.K;
    p.out = rows2d(out, p.T, p.H, "out", true).first;
    auto yr = rows2d(y, p.N, p.H, "permuted", false);
    p.x = yr.first;
    p.x_stride = yr.second;
    p.row_of_slot = ivec(row_of_slot, p.N, "row_of_slot");
    p.w = wvec(w, p.N);
    Backend::permute(PermuteOp::Unpermute, p, ctx);
  });
  m.def("moe_unpermute_bwd", [](int dtype, const TensorArg& grad, const TensorArg& y, const TensorArg& slots,
                                std::optional<TensorArg> w, int64_t top_k, std::optional<TensorArg> dy,
                                std::optional<TensorArg> dw, const Ctx& ctx) {
    PermuteParams p{};
    p.dtype = dtype;
    const auto& z = std::get<1>(grad);
    if (z.size() != 2 || top_k < 1) throw py::value_error("moe_unpermute_bwd: grad must be [T, H], top_k >= 1");
    p.T = z[0];
    p.H = z[1];
    p.K = top_k;
    p.N = p.T * p.K;
    p.grad = rows2d(grad, p.T, p.H, "grad", true).first;
    auto yr = rows2d(y, p.N, p.H, "permuted", false);
    p.x = yr.first;
    p.x_stride = yr.second;
    p.slots = ivec(slots, p.N, "sorted_slots");
    p.w = wvec(w, p.N);
    p.out = dy ? rows2d(*dy, p.N, p.H, "d_permuted", true).first : nullptr;
    p.dw = dw ? const_cast<void*>(static_cast<const void*>(ivec(*dw, p.N, "d_weights"))) : nullptr;
    Backend::permute(PermuteOp::UnpermuteBwd, p, ctx);
  });
}

template <typename Backend>
void def_moe(py::module_& m) {
  def_permute<Backend>(m);
  m.def("moe_align", [](const TensorArg& ids, bool ids_int64, int64_t num_experts, int64_t block_size,
                        const TensorArg& sorted_ids, const TensorArg& expert_ids, const TensorArg& ntpp,
                        const TensorArg& starts, const TensorArg& workspace, const Ctx& ctx) {
    if (num_experts < 1 || num_experts > (int64_t(1) << 16)) fail("num_experts must be in [1, 65536]");
    if (block_size < 1 || block_size > 4096) fail("block_size must be in [1, 4096]");
    AlignParams p{};
    const auto& z = std::get<1>(ids);
    if (z.size() != 1) fail("ids must be flat (1-D)");
    p.S = z[0];
    p.E = num_experts;
    p.B = block_size;
    p.cap = p.S + p.E * (p.B - 1);
    if (p.cap >= (int64_t(1) << 31)) fail("S + E*(block_size-1) must be < 2^31");
    p.nblk = (p.cap + p.B - 1) / p.B;
    p.ids = vec(ids, p.S, "ids");
    p.ids_int64 = ids_int64;
    p.sorted_ids = static_cast<int32_t*>(vec(sorted_ids, p.cap, "sorted_ids"));
    p.expert_ids = static_cast<int32_t*>(vec(expert_ids, p.nblk, "expert_ids"));
    p.ntpp = static_cast<int32_t*>(vec(ntpp, 1, "num_tokens_post_padded"));
    p.starts = static_cast<int32_t*>(vec(starts, p.E + 1, "starts"));
    p.workspace = static_cast<int32_t*>(vec(workspace, num_slot_blocks(p.S) * p.E + p.E, "workspace"));
    Backend::align(p, ctx);
  }, py::arg("ids"), py::arg("ids_int64"), py::arg("num_experts"), py::arg("block_size"), py::arg("sorted_ids"),
     py::arg("expert_ids"), py::arg("ntpp"), py::arg("starts"), py::arg("workspace"), py::arg("ctx"));
}

// moe_route (CPU module only): logits [T, E] unit column stride, bias [E] contiguous (compute type)
// or None, ids int32 [T, k] and weights [T, k] (compute type) contiguous.
template <typename Backend>
void def_moe_route(py::module_& m) {
  m.def("moe_route", [](int dtype, const TensorArg& logits, std::optional<TensorArg> bias, const TensorArg& ids,
                        const TensorArg& weights, int64_t n_group, int64_t topk_group, bool softmax, bool norm,
                        double scale, const Ctx& ctx) {
    const auto& z = std::get<1>(logits);
    const auto& st = std::get<2>(logits);
    if (z.size() != 2) throw py::value_error("moe_route: logits must be 2-D");
    RouteParams p{};
    p.T = z[0];
    p.E = z[1];
    if (p.E < 1) throw py::value_error("moe_route: need at least one expert");
    if (p.E > 1 && st[1] != 1) throw py::value_error("moe_route: logits must have unit column stride");
    p.ld = st[0];
    const auto& iz = std::get<1>(ids);
    if (iz.size() != 2 || iz[0] != p.T) throw py::value_error("moe_route: ids must be [T, k]");
    p.k = iz[1];
    if (p.k < 1 || p.k > p.E) throw py::value_error("moe_route: need 1 <= k <= E");
    if (n_group < 1 || p.E % n_group || topk_group < 1 || topk_group > n_group)
      throw py::value_error("moe_route: bad n_group / topk_group");
    const int64_t eligible = topk_group < n_group ? topk_group * (p.E / n_group) : p.E;
    if (p.k > eligible) throw py::value_error("moe_route: k exceeds the experts of the kept groups");
    p.logits = reinterpret_cast<const void*>(std::get<0>(logits));
    p.dtype = dtype;
    p.bias = bias ? vec(*bias, p.E, "bias") : nullptr;
    p.ids = static_cast<int32_t*>(vec(std::make_tuple(std::get<0>(ids), std::vector<int64_t>{p.T * p.k},
                                                      std::vector<int64_t>{1}), p.T * p.k, "ids"));
    p.weights = vec(std::make_tuple(std::get<0>(weights), std::vector<int64_t>{p.T * p.k}, std::vector<int64_t>{1}),
                    p.T * p.k, "weights");
    p.n_group = n_group;
    p.topk_group = topk_group;
    p.softmax = softmax;
    p.norm = norm;
    p.scale = scale;
    Backend::route(p, ctx);
  });
}

}  // namespace bind
}  // namespace moe
}  // namespace pygen
