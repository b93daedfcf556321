// RoI pooling family: CUDA kernels and their launchers (pygen._cuda).
//
// Formulas and layouts: see roi.cuh, whose per-element bodies these kernels run (the CPU build
// runs the same bodies, so the host test suite exercises the exact device arithmetic).
//
//   forward   one thread per output element out[k, c, i, j] (contiguous index order, so writes
//             coalesce); the RoI's FPN level is computed per thread, all levels in one launch.
//   backward  default: one thread per grad_out element, atomicAdd into the float32 grad buffer.
//             deterministic: one thread per grad_input column (level, n, c, x) that adds every
//             contribution in RoI order, with no atomics (bitwise reproducible).
//
// Every kernel takes RoiParams by value (pointers, sizes, strides; about 700 bytes, far below
// the 4 KB kernel-parameter limit) and grid-strides over int64 indices. Dtypes: float32,
// float16, bfloat16 storage with float32 math (float64 is a cpu-backend dtype only).
#include <cuda_runtime.h>

#include <type_traits>

#include "roi.cuh"
#include "roi_launch.h"

namespace pygen {
namespace roi {
namespace {

constexpr int kThreads = 256;

// Flat indices stay below 2^31 so that every index split is a 32-bit division, which the device
// inlines; a 64-bit division is a called subroutine that forces register spills around the call.
// The launchers split the RoIs into chunks to keep each launch below this bound.
constexpr int64_t kMaxIndex = (int64_t(1) << 31) - 1;

__device__ __forceinline__ uint32_t thread_index() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ uint32_t thread_stride() { return gridDim.x * blockDim.x; }

// Splits a contiguous [K, Cp, PH, PW] index.
struct Pos { int64_t k, c, i, j; };
__device__ __forceinline__ Pos split_pooled(const RoiParams& p, uint32_t idx) {
  const uint32_t PW = static_cast<uint32_t>(p.PW), PH = static_cast<uint32_t>(p.PH);
  const uint32_t Cp = static_cast<uint32_t>(p.Cp);
  Pos q;
  q.j = idx % PW;
  idx /= PW;
  q.i = idx % PH;
  idx /= PH;
  q.c = idx % Cp;
  q.k = idx / Cp;
  return q;
}

__device__ __forceinline__ int64_t pooled_offset(const RoiParams& p, const Pos& q) {
  return q.k * p.ps[0] + q.c * p.ps[1] + q.i * p.ps[2] + q.j * p.ps[3];
}

__host__ __device__ constexpr bool is_ps(Op op) { return op == Op::PsAlign || op == Op::PsPool; }

// ---- forward: one thread per pooled element ------------------------------------------------------
template <typename S, typename T, Op op>
__global__ void __launch_bounds__(kThreads) _roi_fwd_kernel(const RoiParams p, uint32_t total) {
  for (uint32_t idx = thread_index(); idx < total; idx += thread_stride()) {
    const Pos q = split_pooled(p, idx);
    int32_t arg;  // the value first, then its address: fewer live registers across the body
    const T v = op == Op::Align || op == Op::PsAlign ? align_fwd_element<S, T>(p, is_ps(op), q.k, q.c, q.i, q.j)
                                                     : pool_fwd_element<S, T>(p, is_ps(op), q.k, q.c, q.i, q.j, &arg);
    store(static_cast<S*>(p.pooled) + pooled_offset(p, q), v);
    if constexpr (op == Op::Pool) p.argmax[idx] = arg;  // argmax is contiguous [K, C, PH, PW]
  }
}

// ---- backward, atomics: one thread per grad_out element -------------------------------------------
template <typename S, typename T, Op op>
__global__ void __launch_bounds__(kThreads) _roi_bwd_kernel(const RoiParams p, uint32_t total) {
  for (uint32_t idx = thread_index(); idx < total; idx += thread_stride()) {
    const Pos q = split_pooled(p, idx);
    if constexpr (op == Op::Align || op == Op::PsAlign) {
      align_bwd_element<S, T>(p, is_ps(op), q.k, q.c, q.i, q.j);
    } else {
      pool_bwd_element<S, T>(p, is_ps(op), q.k, q.c, q.i, q.j);
    }
  }
}

// ---- backward, deterministic (one thread per grad_input column) ---------------------------------
// Column index: levels one after another, each [N, C, W_l] with x fastest, so neighbouring
// threads own neighbouring columns of one plane.
struct Column { int l; int64_t n, ch, x; };
__device__ __forceinline__ Column split_column(const RoiParams& p, uint32_t idx) {
  const uint32_t C = static_cast<uint32_t>(p.C);
  Column q;
  q.l = 0;
  for (int l = 0; l < p.num_levels - 1; ++l) {
    const uint32_t cols = static_cast<uint32_t>(p.N * p.C * p.lv[l].W);
    if (idx < cols) break;
    idx -= cols;
    q.l = l + 1;
  }
  const uint32_t W = static_cast<uint32_t>(p.lv[q.l].W);
  q.x = idx % W;
  idx /= W;
  q.ch = idx % C;
  q.n = idx / C;
  return q;
}

// Minimum blocks per SM: 2 lets ptxas use up to 128 registers; its default budget here (64)
// spills on sm_80 (align) and sm_100a (pool). PS pool needs no hint.
__host__ __device__ constexpr int det_min_blocks(Op op) { return op == Op::PsPool ? 1 : 2; }

template <typename S, typename T, Op op>
__global__ void __launch_bounds__(kThreads, det_min_blocks(op)) _roi_bwd_det_kernel(const RoiParams p,
                                                                                   uint32_t total) {
  for (uint32_t idx = thread_index(); idx < total; idx += thread_stride()) {
    const Column q = split_column(p, idx);
    if constexpr (op == Op::Align || op == Op::PsAlign) {
      align_bwd_column<S, T>(p, is_ps(op), is_ps(op) ? 0 : q.l, q.n, q.ch, q.x);
    } else if constexpr (op == Op::Pool) {
      pool_bwd_column<S, T>(p, q.n, q.ch, q.x);
    } else {
      ps_pool_bwd_column<S, T>(p, q.n, q.ch, q.x);
    }
  }
}

// ---- launch helpers -----------------------------------------------------------------------------
template <typename Kernel>
cudaError_t launch(Kernel kernel, const RoiParams& p, int64_t total, cudaStream_t stream) {
  if (total <= 0) return cudaSuccess;
  if (total > kMaxIndex) return cudaErrorInvalidValue;
  // Grid-stride loops make any grid correct; 2^20 blocks of 256 already saturate any GPU.
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20));
  kernel<<<grid, kThreads, 0, stream>>>(p, static_cast<uint32_t>(total));
  return cudaGetLastError();
}

// One thread per pooled element, in launches of at most kMaxIndex elements (whole RoIs each).
template <typename S, typename T, typename Kernel>
cudaError_t launch_pooled(Kernel kernel, const RoiParams& p, cudaStream_t stream) {
  const int64_t per_roi = p.Cp * p.PH * p.PW;
  if (per_roi <= 0 || p.K <= 0) return cudaSuccess;
  if (per_roi > kMaxIndex) return cudaErrorInvalidValue;
  const int64_t chunk = kMaxIndex / per_roi;
  for (int64_t k0 = 0; k0 < p.K; k0 += chunk) {
    RoiParams q = p;
    q.K = p.K - k0 < chunk ? p.K - k0 : chunk;
    q.rois = static_cast<const T*>(p.rois) + 5 * k0;
    q.pooled = static_cast<S*>(p.pooled) + k0 * p.ps[0];
    if (p.argmax != nullptr) q.argmax = p.argmax + k0 * per_roi;
    const cudaError_t err = launch(kernel, q, q.K * per_roi, stream);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// Calls f(std::integral_constant<Op, op>{}) for the runtime op, so each op gets its own kernel.
template <typename F>
void with_op(Op op, F&& f) {
  switch (op) {
    case Op::Align: f(std::integral_constant<Op, Op::Align>{}); break;
    case Op::PsAlign: f(std::integral_constant<Op, Op::PsAlign>{}); break;
    case Op::Pool: f(std::integral_constant<Op, Op::Pool>{}); break;
    case Op::PsPool: f(std::integral_constant<Op, Op::PsPool>{}); break;
  }
}

}  // namespace

int cuda_forward(Op op, int dtype, const RoiParams& p, void* stream_handle) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  cudaError_t err = cudaSuccess;
  const bool ok = dispatch_dtype<false>(dtype, [&](auto s_tag, auto t_tag) {
    using S = typename decltype(s_tag)::type;
    using T = typename decltype(t_tag)::type;
    with_op(op, [&](auto o) { err = launch_pooled<S, T>(_roi_fwd_kernel<S, T, decltype(o)::value>, p, stream); });
  });
  return ok ? static_cast<int>(err) : kBadDtype;
}

int cuda_backward(Op op, int dtype, const RoiParams& p, bool deterministic, void* stream_handle) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  cudaError_t err = cudaSuccess;
  const int64_t cols = grad_columns(p);
  const bool ok = dispatch_dtype<false>(dtype, [&](auto s_tag, auto t_tag) {
    using S = typename decltype(s_tag)::type;
    using T = typename decltype(t_tag)::type;
    with_op(op, [&](auto o) {
      err = deterministic ? launch(_roi_bwd_det_kernel<S, T, decltype(o)::value>, p, cols, stream)
                          : launch_pooled<S, T>(_roi_bwd_kernel<S, T, decltype(o)::value>, p, stream);
    });
  });
  return ok ? static_cast<int>(err) : kBadDtype;
}

}  // namespace roi
}  // namespace pygen
