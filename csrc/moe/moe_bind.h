// pybind11 definitions of the MoE functions, shared by bindings_cpu.cpp (pygen._C) and
// bindings_cuda.cpp (pygen._cuda). Backend supplies align(const AlignParams&, ctx) and
// permute(PermuteOp, const PermuteParams&, ctx); the CPU module also route(const RouteParams&, ctx).
//
// Tensors arrive as TensorArgs from pygen/_ext.py::call (csrc/common/tensor_arg.h). The checks
// here are the memory-safety ones (ranks, sizes, the dtypes and the strides the kernels assume),
// run on every call since the registered ops can be called without pygen.ops.moe's validation.
// Ids outside [0, E) and slots outside [0, T*k) are not an error: the kernels skip them.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "../common/tensor_arg.h"
#include "moe_launch.h"

namespace pygen {
namespace moe {
namespace bind {

using namespace pygen::bind;  // NOLINT: TensorArg, Ctx and the shared checks
using Arg = const TensorArg&;

// A contiguous 1-D tensor of exactly n elements of dtype `code`.
inline void* vec(const char* fn, Arg t, int64_t n, int code, const char* name) {
  return tensor(fn, t, {n}, code, name);
}

inline void* opt_vec(const char* fn, const OptTensorArg& t, int64_t n, int code, const char* name) {
  return t ? vec(fn, *t, n, code, name) : nullptr;
}

// [rows, cols] of dtype `code` with unit column stride (and contiguous when asked): (data, row stride).
inline std::pair<void*, int64_t> rows(const char* fn, Arg t, int64_t r, int64_t c, int code, const char* name,
                                      bool need_contiguous) {
  void* d = tensor(fn, t, {r, c}, code, name, need_contiguous);
  if (c > 1 && strides(t)[1] != 1) fail(fn, std::string(name) + " must have unit column stride");
  return {d, strides(t)[0]};
}

// T, H (from the [T, H] token-side tensor `tok`: x, out or grad), K = top_k, N = T*K, the dtype.
inline PermuteParams permute_params(const char* fn, Arg tok, const char* name, int64_t top_k) {
  PermuteParams p{};
  p.dtype = float_dtype(fn, tok, name);
  if (sizes(tok).size() != 2 || top_k < 1) fail(fn, std::string(name) + " must be [T, H], top_k >= 1");
  p.T = sizes(tok)[0];
  p.H = sizes(tok)[1];
  p.K = top_k;
  p.N = p.T * p.K;
  return p;
}

// The permuted side of unpermute (and its backward): rows y [N, H] (unit column stride, p's dtype)
// into p.x / p.x_stride, the weights w [N] (compute type) or None into p.w; returns the int32 [N]
// slot vector `idx` (row_of_slot or sorted_slots).
inline const int32_t* permuted_side(const char* fn, PermuteParams& p, Arg y, Arg idx, const char* idx_name,
                                    const OptTensorArg& w) {
  const auto r = rows(fn, y, p.N, p.H, p.dtype, "permuted", false);
  p.x = r.first;
  p.x_stride = r.second;
  p.w = opt_vec(fn, w, p.N, compute_code(p.dtype), "topk_weights");
  return static_cast<const int32_t*>(vec(fn, idx, p.N, kInt32, idx_name));
}

template <typename Backend>
void def_permute(py::module_& m) {
  m.def("moe_permute", [](Arg x, Arg slots, int64_t top_k, Arg out, const Ctx& ctx) {
    const char* fn = "moe_permute";
    PermuteParams p = permute_params(fn, x, "x", top_k);
    const auto xr = rows(fn, x, p.T, p.H, p.dtype, "x", false);
    p.x = xr.first;
    p.x_stride = xr.second;
    p.slots = static_cast<const int32_t*>(vec(fn, slots, p.N, kInt32, "sorted_slots"));
    p.out = rows(fn, out, p.N, p.H, p.dtype, "out", true).first;
    Backend::permute(PermuteOp::Permute, p, ctx);
  });
  // w: the routing weights as a contiguous [N] vector of the compute type, or None (= 1).
  m.def("moe_unpermute", [](Arg y, Arg row_of_slot, const OptTensorArg& w, int64_t top_k, Arg out, const Ctx& ctx) {
    const char* fn = "moe_unpermute";
    PermuteParams p = permute_params(fn, out, "out", top_k);
    p.out = rows(fn, out, p.T, p.H, p.dtype, "out", true).first;
    p.row_of_slot = permuted_side(fn, p, y, row_of_slot, "row_of_slot", w);
    Backend::permute(PermuteOp::Unpermute, p, ctx);
  });
  // dy [N, H] (y's dtype, contiguous) and dw [N] (compute type, zero-filled) are each optional.
  m.def("moe_unpermute_bwd", [](Arg grad, Arg y, Arg slots, const OptTensorArg& w, int64_t top_k,
                                const OptTensorArg& dy, const OptTensorArg& dw, const Ctx& ctx) {
    const char* fn = "moe_unpermute_bwd";
    PermuteParams p = permute_params(fn, grad, "grad", top_k);
    p.grad = rows(fn, grad, p.T, p.H, p.dtype, "grad", true).first;
    p.slots = permuted_side(fn, p, y, slots, "sorted_slots", w);
    p.out = dy ? rows(fn, *dy, p.N, p.H, p.dtype, "d_permuted", true).first : nullptr;
    p.dw = opt_vec(fn, dw, p.N, compute_code(p.dtype), "d_weights");
    Backend::permute(PermuteOp::UnpermuteBwd, p, ctx);
  });
}

template <typename Backend>
void def_moe(py::module_& m) {
  def_permute<Backend>(m);
  // ids: flat [S] int32 or int64; outputs int32; workspace zero-filled (num_slot_blocks(S)*E + E).
  m.def("moe_align", [](Arg ids, int64_t num_experts, int64_t block_size, Arg sorted_ids, Arg expert_ids, Arg ntpp,
                        Arg starts, Arg workspace, const Ctx& ctx) {
    const char* fn = "moe_align";
    if (num_experts < 1 || num_experts > (int64_t(1) << 16)) fail(fn, "num_experts must be in [1, 65536]");
    if (block_size < 1 || block_size > 4096) fail(fn, "block_size must be in [1, 4096]");
    if (sizes(ids).size() != 1) fail(fn, "ids must be flat (1-D)");
    if (dtype(ids) != kInt32 && dtype(ids) != kInt64)
      throw py::type_error(std::string(fn) + ": ids must be int32 or int64, got " + dtype_name(dtype(ids)));
    AlignParams p{};
    p.S = sizes(ids)[0];
    p.E = num_experts;
    p.B = block_size;
    p.cap = p.S + p.E * (p.B - 1);
    if (p.cap >= (int64_t(1) << 31)) fail(fn, "S + E*(block_size-1) must be < 2^31");
    p.nblk = (p.cap + p.B - 1) / p.B;
    p.ids = vec(fn, ids, p.S, dtype(ids), "ids");
    p.ids_int64 = dtype(ids) == kInt64;
    p.sorted_ids = static_cast<int32_t*>(vec(fn, sorted_ids, p.cap, kInt32, "sorted_ids"));
    p.expert_ids = static_cast<int32_t*>(vec(fn, expert_ids, p.nblk, kInt32, "expert_ids"));
    p.ntpp = static_cast<int32_t*>(vec(fn, ntpp, 1, kInt32, "num_tokens_post_padded"));
    p.starts = static_cast<int32_t*>(vec(fn, starts, p.E + 1, kInt32, "starts"));
    p.workspace = static_cast<int32_t*>(vec(fn, workspace, num_slot_blocks(p.S) * p.E + p.E, kInt32, "workspace"));
    Backend::align(p, ctx);
  });
}

// moe_route (CPU module only): logits [T, E] unit column stride (any float dtype), bias [E] or
// None and weights [T, k] contiguous in the compute type, ids int32 [T, k] contiguous.
template <typename Backend>
void def_moe_route(py::module_& m) {
  m.def("moe_route", [](Arg logits, const OptTensorArg& bias, Arg ids, Arg weights, const std::string& scoring,
                        int64_t n_group, int64_t topk_group, bool norm, double scale, const Ctx& ctx) {
    const char* fn = "moe_route";
    RouteParams p{};
    p.dtype = float_dtype(fn, logits, "logits");
    if (sizes(logits).size() != 2 || sizes(ids).size() != 2) fail(fn, "logits and ids must be 2-D");
    p.T = sizes(logits)[0];
    p.E = sizes(logits)[1];
    p.k = sizes(ids)[1];
    if (p.E < 1) fail(fn, "need at least one expert");
    if (p.k < 1 || p.k > p.E) fail(fn, "need 1 <= k <= E");
    if (n_group < 1 || p.E % n_group || topk_group < 0 || topk_group > n_group) fail(fn, "bad n_group / topk_group");
    if (scoring != "sigmoid" && scoring != "softmax") fail(fn, "scoring must be 'sigmoid' or 'softmax'");
    const auto lr = rows(fn, logits, p.T, p.E, p.dtype, "logits", false);
    p.logits = lr.first;
    p.ld = lr.second;
    const int cdt = compute_code(p.dtype);
    p.bias = opt_vec(fn, bias, p.E, cdt, "bias");
    p.ids = static_cast<int32_t*>(tensor(fn, ids, {p.T, p.k}, kInt32, "ids"));
    p.weights = tensor(fn, weights, {p.T, p.k}, cdt, "weights");
    p.n_group = n_group;
    p.topk_group = topk_group;
    p.softmax = scoring == "softmax";
    p.norm = norm;
    p.scale = scale;
    Backend::route(p, ctx);
  });
}

}  // namespace bind
}  // namespace moe
}  // namespace pygen
