// Host-callable entry points of the MoE family (moe_align), for the pybind11 bindings. No CUDA or
// torch header is needed to include this file: streams travel as void* (a cudaStream_t), errors
// as int (a cudaError_t value, 0 = success).
#pragma once

#include <cstdint>

namespace pygen {
namespace moe {

// Slots handled by one count/scatter block; the workspace holds one int32 counter row of E per
// block plus E totals (align_workspace_size in pygen/native/moe.py mirrors this).
constexpr int64_t kSlotBlock = 1024;

struct AlignParams {
  const void* ids;          // [S] int32 or int64 expert ids (flat topk_ids), contiguous
  bool ids_int64;
  int64_t S;                // number of slots T*k
  int64_t E;                // num_experts
  int64_t B;                // block_size
  int32_t* sorted_ids;      // [cap] out, cap = S + E*(B-1)
  int64_t cap;
  int32_t* expert_ids;      // [nblk] out, nblk = ceil(cap / B)
  int64_t nblk;
  int32_t* ntpp;            // [1] out
  int32_t* starts;          // [E+1] out: padded segment starts, starts[E] = total
  int32_t* workspace;       // [NB*E + E] zero-filled, NB = max(1, ceil(S / kSlotBlock))
};

// moe_route, CPU build only (the GPU runs the Triton kernel). logits [T, E] with row stride
// ld and unit column stride, dtype code (csrc/common/dtype.h); bias [E] in the compute type
// (float64 for float64 logits, else float32) or nullptr; ids int32 [T, k]; weights [T, k] in the
// compute type. Returns false for an unknown dtype code.
struct RouteParams {
  const void* logits;
  int dtype;
  int64_t T, ld;
  const void* bias;
  int32_t* ids;
  void* weights;
  int64_t E, k, n_group, topk_group;
  bool softmax, norm;
  double scale;
};

bool cpu_route(const RouteParams& p, int num_threads);  // moe_cpu.cpp

// moe_permute / moe_unpermute. Rows have unit column stride and a row stride (x_stride /
// y_stride); dtype code of x / y / out / dy (csrc/common/dtype.h); weights, dw and the compute
// type are float64 for float64 rows, else float32. A slot outside [0, N) (N = T*k) is ignored.
struct PermuteParams {
  int dtype;
  int64_t N, H, K, T;          // N = T*K rows / slots
  const void* x;               // permute: [T, H] source rows;   unpermute(_bwd): y [N, H]
  int64_t x_stride;
  const int32_t* slots;        // [N] sorted_slots (permute, unpermute_bwd)
  const int32_t* row_of_slot;  // [N] inverse permutation, -1 = no row (unpermute)
  const void* w;               // [N] routing weights or nullptr (= 1)
  const void* grad;            // [T, H] contiguous (unpermute_bwd)
  void* out;                   // permute: [N, H]; unpermute: [T, H]; unpermute_bwd: dy [N, H] or nullptr
  void* dw;                    // unpermute_bwd: [N] or nullptr (zero-filled by the caller)
};

enum class PermuteOp : int { Permute = 0, Unpermute = 1, UnpermuteBwd = 2 };

int cuda_permute(PermuteOp op, const PermuteParams& p, void* stream);  // moe.cu (kBadDtype: -1)
bool cpu_permute(PermuteOp op, const PermuteParams& p, int num_threads);  // moe_cpu.cpp

inline int64_t num_slot_blocks(int64_t S) { return S <= 0 ? 1 : (S + kSlotBlock - 1) / kSlotBlock; }

int cuda_align(const AlignParams& p, void* stream);     // moe.cu
void cpu_align(const AlignParams& p, int num_threads);  // moe_cpu.cpp

}  // namespace moe
}  // namespace pygen
