// MoE family: CUDA kernels of moe_align (pygen._cuda), over the bodies in moe.cuh.
//
// Five launches on the caller's stream, no host synchronisation, no allocation (the caller passes
// a zero-filled workspace), any number of experts (no per-block shared histogram, so no
// 1024-expert ceiling):
//   _moe_align_count_kernel    one block per kSlotBlock slots: atomicAdd into counts[b][e]
//                              (integer atomics: exact in any order); fills the sentinel too
//   _moe_align_offsets_kernel  one thread per expert: exclusive prefix over blocks, totals[e]
//   _moe_align_scan_kernel     one block: starts = exclusive scan of padded totals, in chunks
//   _moe_align_scatter_kernel  one block per slot block: the block's ids in shared memory, each
//                              thread counts the earlier equal ids (deterministic ascending order)
//   _moe_align_blocks_kernel   one thread per GEMM block: binary search of starts
#include <cuda_runtime.h>

#include <cstdint>

#include "moe.cuh"
#include "moe_launch.h"

namespace pygen {
namespace moe {
namespace {

constexpr int kThreads = 256;
constexpr int kScanThreads = 1024;

__global__ void __launch_bounds__(kThreads) _moe_align_count_kernel(AlignParams p) {
  const int64_t b = blockIdx.x;
  int32_t* row = p.workspace + b * p.E;
  const int64_t end = (b + 1) * kSlotBlock < p.S ? (b + 1) * kSlotBlock : p.S;
  for (int64_t s = b * kSlotBlock + threadIdx.x; s < end; s += blockDim.x) {
    const int32_t e = expert_of(p.ids, p.ids_int64, s, p.E);
    if (e >= 0) atomicAdd(row + e, 1);
  }
  // the sentinel fill rides along: grid-stride over cap
  for (int64_t i = b * blockDim.x + threadIdx.x; i < p.cap; i += int64_t(gridDim.x) * blockDim.x)
    p.sorted_ids[i] = static_cast<int32_t>(p.S);
}

__global__ void __launch_bounds__(kThreads) _moe_align_offsets_kernel(AlignParams p, int64_t NB) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= p.E) return;
  int32_t run = 0;
  for (int64_t b = 0; b < NB; ++b) {
    int32_t* c = p.workspace + b * p.E + e;
    const int32_t v = *c;
    *c = run;
    run += v;
  }
  p.workspace[NB * p.E + e] = run;
}

__global__ void __launch_bounds__(kScanThreads) _moe_align_scan_kernel(AlignParams p, int64_t NB) {
  __shared__ int32_t buf[kScanThreads];
  __shared__ int32_t carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  const int32_t* totals = p.workspace + NB * p.E;
  for (int64_t c = 0; c < p.E; c += kScanThreads) {
    const int64_t e = c + threadIdx.x;
    const int32_t v = e < p.E ? padded_count(totals[e], p.B) : 0;
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int off = 1; off < kScanThreads; off <<= 1) {  // Hillis-Steele inclusive scan
      const int32_t add = threadIdx.x >= off ? buf[threadIdx.x - off] : 0;
      __syncthreads();
      buf[threadIdx.x] += add;
      __syncthreads();
    }
    if (e < p.E) p.starts[e] = carry + buf[threadIdx.x] - v;
    __syncthreads();
    if (threadIdx.x == kScanThreads - 1) carry += buf[kScanThreads - 1];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    p.starts[p.E] = carry;
    p.ntpp[0] = carry;
  }
}

__global__ void __launch_bounds__(kThreads) _moe_align_scatter_kernel(AlignParams p) {
  __shared__ int32_t ids[kSlotBlock];
  const int64_t b = blockIdx.x;
  const int64_t base = b * kSlotBlock;
  const int64_t n = p.S - base < kSlotBlock ? p.S - base : kSlotBlock;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ids[i] = expert_of(p.ids, p.ids_int64, base + i, p.E);
  __syncthreads();
  const int32_t* row = p.workspace + b * p.E;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int32_t e = ids[i];
    if (e < 0) continue;
    int32_t rank = 0;
    for (int64_t j = 0; j < i; ++j) rank += ids[j] == e;
    p.sorted_ids[slot_position(p.starts, row, e, rank)] = static_cast<int32_t>(base + i);
  }
}

__global__ void __launch_bounds__(kThreads) _moe_align_blocks_kernel(AlignParams p) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < p.nblk) p.expert_ids[j] = block_expert(p.starts, p.E, j, p.B);
}

// One thread per (row, h) element of `rows` rows: permute and unpermute_bwd's dy walk the N
// permuted rows, unpermute the T token rows.
template <typename S, typename A, PermuteOp op>
__global__ void __launch_bounds__(kThreads) _moe_permute_rows_kernel(const PermuteParams p, int64_t rows) {
  const int64_t total = rows * p.H;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    if constexpr (op == PermuteOp::Permute) {
      permute_elem<S, A>(p, i / p.H, i % p.H);
    } else if constexpr (op == PermuteOp::Unpermute) {
      unpermute_elem<S, A>(p, i / p.H, i % p.H);
    } else {
      unpermute_dy_elem<S, A>(p, i / p.H, i % p.H);
    }
  }
}

// One warp per row: lanes stride over h, then a shuffle reduction (fixed order: deterministic).
template <typename S, typename A>
__global__ void __launch_bounds__(kThreads) _moe_unpermute_bwd_dw_kernel(const PermuteParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; r < p.N; r += warps) {
    A acc = unpermute_dw_partial<S, A>(p, r, lane, p.H, 32);
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    const int64_t slot = p.slots[r];
    if (lane == 0 && slot_ok(slot, p.N)) static_cast<A*>(p.dw)[slot] = acc;
  }
}

unsigned grid_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < (int64_t(1) << 20) ? (blocks > 0 ? blocks : 1) : (int64_t(1) << 20));
}

template <typename S, typename A, PermuteOp op>
void launch_rows(const PermuteParams& p, int64_t rows, cudaStream_t stream) {
  if (rows * p.H > 0) _moe_permute_rows_kernel<S, A, op><<<grid_for(rows * p.H), kThreads, 0, stream>>>(p, rows);
}

}  // namespace

int cuda_permute(PermuteOp op, const PermuteParams& p, void* stream_handle) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  cudaError_t err = cudaSuccess;
  const bool ok = dispatch_dtype<false>(p.dtype, [&](auto s_tag, auto t_tag) {
    using S = typename decltype(s_tag)::type;
    using A = typename decltype(t_tag)::type;
    switch (op) {
      case PermuteOp::Permute: launch_rows<S, A, PermuteOp::Permute>(p, p.N, stream); break;
      case PermuteOp::Unpermute: launch_rows<S, A, PermuteOp::Unpermute>(p, p.T, stream); break;
      case PermuteOp::UnpermuteBwd:
        if (p.out) launch_rows<S, A, PermuteOp::UnpermuteBwd>(p, p.N, stream);
        if (p.dw && p.N > 0) _moe_unpermute_bwd_dw_kernel<S, A><<<grid_for(p.N * 32), kThreads, 0, stream>>>(p);
        break;
    }
    err = cudaGetLastError();
  });
  return ok ? static_cast<int>(err) : -1;
}

int cuda_align(const AlignParams& p, void* stream_handle) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  const int64_t NB = num_slot_blocks(p.S);
  if (NB > (int64_t(1) << 31) - 1) return static_cast<int>(cudaErrorInvalidValue);
  _moe_align_count_kernel<<<static_cast<unsigned>(NB), kThreads, 0, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return static_cast<int>(err);
  _moe_align_offsets_kernel<<<static_cast<unsigned>((p.E + kThreads - 1) / kThreads), kThreads, 0, stream>>>(p, NB);
  if ((err = cudaGetLastError()) != cudaSuccess) return static_cast<int>(err);
  _moe_align_scan_kernel<<<1, kScanThreads, 0, stream>>>(p, NB);
  if ((err = cudaGetLastError()) != cudaSuccess) return static_cast<int>(err);
  if (p.S > 0) {
    _moe_align_scatter_kernel<<<static_cast<unsigned>(NB), kThreads, 0, stream>>>(p);
    if ((err = cudaGetLastError()) != cudaSuccess) return static_cast<int>(err);
  }
  if (p.nblk > 0) {
    _moe_align_blocks_kernel<<<static_cast<unsigned>((p.nblk + kThreads - 1) / kThreads), kThreads, 0, stream>>>(p);
    err = cudaGetLastError();
  }
  return static_cast<int>(err);
}

}  // namespace moe
}  // namespace pygen
