// MoE family: per-element bodies of moe_align shared by the CUDA kernels (moe.cu) and the OpenMP
// CPU loops (moe_cpu.cpp). Semantics: pygen/ref/moe.py's moe_align (the oracle):
//
//   count[e]  = slots s with ids[s] == e (ids outside [0, E) are routed nowhere)
//   padded[e] = ceil(count[e] / B) * B,   starts[e] = sum_{e' < e} padded[e'],   starts[E] = total
//   sorted_ids[starts[e] + r] = the r-th slot of expert e in ascending slot order; sentinel S
//                               everywhere else (cap = S + E*(B-1) entries)
//   expert_ids[j] = the expert whose padded segment holds position j*B, -1 when j*B >= total
//
// Both builds use the same decomposition: slots are cut into blocks of kSlotBlock; per-block
// counts[b][e]; an exclusive prefix over blocks per expert (counts[b][e] becomes the number of
// e-slots in earlier blocks); a scan over experts; then slot s of block b goes to
// starts[e] + counts[b][e] + (e-slots before s inside block b).
#pragma once

#include <cstdint>

#include "../common/macros.h"
#include "moe_launch.h"

namespace pygen {
namespace moe {

// The expert of slot s, or -1 when the id is outside [0, E) (compared in the id's own width, so
// an int64 id never wraps into range).
HOST_DEVICE int32_t expert_of(const void* ids, bool ids_int64, int64_t s, int64_t E) {
  const int64_t e = ids_int64 ? static_cast<const int64_t*>(ids)[s] : static_cast<const int32_t*>(ids)[s];
  return (e >= 0 && e < E) ? static_cast<int32_t>(e) : -1;
}

HOST_DEVICE int32_t padded_count(int32_t count, int64_t B) {
  return static_cast<int32_t>((count + B - 1) / B * B);
}

// Output position of a slot of expert e: segment start + earlier blocks + rank inside the block.
HOST_DEVICE int64_t slot_position(const int32_t* starts, const int32_t* block_row, int32_t e, int32_t rank) {
  return static_cast<int64_t>(starts[e]) + block_row[e] + rank;
}

// Expert of GEMM block j (position j*B): the largest e < E with starts[e] <= j*B (binary search;
// empty experts share their start with the next one, so the largest is the non-empty owner).
HOST_DEVICE int32_t block_expert(const int32_t* starts, int64_t E, int64_t j, int64_t B) {
  const int64_t pos = j * B;
  if (pos >= starts[E]) return -1;
  int64_t lo = 0, hi = E - 1;  // invariant: starts[lo] <= pos
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (starts[mid] <= pos) lo = mid; else hi = mid - 1;
  }
  return static_cast<int32_t>(lo);
}

}  // namespace moe
}  // namespace pygen
