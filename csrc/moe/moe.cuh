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
//
// Routing (route_token, the CPU build of moe_route): DeepSeek-V3 semantics of pygen/ref/moe.py,
// for one token with E logits x:
//   s = sigmoid(x) | softmax(x);  b = s + bias;  gs[g] = top-2 sum of b in group g;
//   keep the topk_group best groups; ids = top_k experts by b inside kept groups, then (when top_k
//   exceeds their experts, as transformers' DeepseekV3 router allows) the lowest-id experts of the
//   other groups, whose b counts as -inf; w = s[ids] (/ (sum + 1e-20) when norm) * scale, s unmasked.
// Every selection keeps a small buffer sorted by (value descending, index ascending): a candidate
// is inserted only past the entries with value >= its own, so equal values keep the lower index
// first -- the tie rule of pygen.ref.moe (tie_break="index") and of the Triton kernel.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/dtype.h"
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

// ---- permutation bodies (one output element each; A = compute type, S = storage type) ----------
HOST_DEVICE bool slot_ok(int64_t slot, int64_t N) { return slot >= 0 && slot < N; }

// permuted[r, h] = x[slots[r] / K, h]  (0 for a slot outside [0, N))
template <typename S, typename A>
HOST_DEVICE void permute_elem(const PermuteParams& p, int64_t r, int64_t h) {
  const int64_t slot = p.slots[r];
  A v = A(0);
  if (slot_ok(slot, p.N)) v = load<A>(static_cast<const S*>(p.x) + (slot / p.K) * p.x_stride + h);
  store<A>(static_cast<S*>(p.out) + r * p.H + h, v);
}

// out[t, h] = sum_j w[t*K + j] * y[row_of_slot[t*K + j], h], ascending j
template <typename S, typename A>
HOST_DEVICE void unpermute_elem(const PermuteParams& p, int64_t t, int64_t h) {
  A acc = A(0);
  for (int64_t j = 0; j < p.K; ++j) {
    const int64_t slot = t * p.K + j;
    const int64_t row = p.row_of_slot[slot];
    if (row < 0 || row >= p.N) continue;
    A v = load<A>(static_cast<const S*>(p.x) + row * p.x_stride + h);
    if (p.w) v *= static_cast<const A*>(p.w)[slot];
    acc += v;
  }
  store<A>(static_cast<S*>(p.out) + t * p.H + h, acc);
}

// d_permuted[r, h] = w[slot] * grad[slot / K, h]
template <typename S, typename A>
HOST_DEVICE void unpermute_dy_elem(const PermuteParams& p, int64_t r, int64_t h) {
  const int64_t slot = p.slots[r];
  A v = A(0);
  if (slot_ok(slot, p.N)) {
    v = load<A>(static_cast<const S*>(p.grad) + (slot / p.K) * p.H + h);
    if (p.w) v *= static_cast<const A*>(p.w)[slot];
  }
  store<A>(static_cast<S*>(p.out) + r * p.H + h, v);
}

// Partial <grad[slot / K], y[r]> over h in [h0, h1) (the caller reduces and stores dw[slot]).
template <typename S, typename A>
HOST_DEVICE A unpermute_dw_partial(const PermuteParams& p, int64_t r, int64_t h0, int64_t h1, int64_t step) {
  const int64_t slot = p.slots[r];
  A acc = A(0);
  if (!slot_ok(slot, p.N)) return acc;
  const S* g = static_cast<const S*>(p.grad) + (slot / p.K) * p.H;
  const S* y = static_cast<const S*>(p.x) + r * p.x_stride;
  for (int64_t h = h0; h < h1; h += step) acc += load<A>(g + h) * load<A>(y + h);
  return acc;
}

// v strictly above u in the top-k order: NaN ranks below every number (a NaN-scored expert is
// never picked over a scored one, and a NaN in the buffer does not turn every later candidate
// away, which `v > NaN` being false did)
template <typename A>
HOST_DEVICE bool ranks_above(A v, A u) {
  return !(v != v) && ((u != u) || v > u);
}

// Insert (v, i) into the sorted buffer (vals/idx, n used of cap); returns the new n.
template <typename A>
HOST_DEVICE int topk_insert(A* vals, int32_t* idx, int n, int cap, A v, int32_t i) {
  if (n == cap && !ranks_above(v, vals[n - 1])) return n;  // not better than the last: ties keep it
  int p = n < cap ? n : cap - 1;
  while (p > 0 && ranks_above(v, vals[p - 1])) {           // strictly better moves up: ties stay behind
    vals[p] = vals[p - 1];
    idx[p] = idx[p - 1];
    --p;
  }
  vals[p] = v;
  idx[p] = i;
  return n < cap ? n + 1 : n;
}

struct RouteArgs {
  int64_t E, k, n_group, topk_group;
  bool softmax, norm;
  double scale;
};

// One token. x: E logits (compute type A already), bias: E values or nullptr. Scratch: s, b of E;
// gvals of n_group (+ gidx), kvals of k. Outputs ids[k], w[k] (compute type).
template <typename A>
HOST_DEVICE void route_token(const A* x, const A* bias, const RouteArgs& r, A* s, A* b, A* gvals, int32_t* gidx,
                             A* kvals, int32_t* ids, A* w) {
  const int64_t E = r.E;
  if (r.softmax) {
    A mx = x[0];
    for (int64_t e = 1; e < E; ++e) mx = x[e] > mx ? x[e] : mx;
    A sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      s[e] = std::exp(x[e] - mx);
      sum += s[e];
    }
    for (int64_t e = 0; e < E; ++e) s[e] /= sum;
  } else {
    for (int64_t e = 0; e < E; ++e) s[e] = A(1) / (A(1) + std::exp(-x[e]));
  }
  for (int64_t e = 0; e < E; ++e) b[e] = bias ? s[e] + bias[e] : s[e];
  const int64_t G = r.n_group, per = E / G;
  const bool grouped = r.topk_group < G;  // topk_group = 0 masks every expert
  int ng = 0;
  if (grouped && r.topk_group > 0) {  // (topk_insert needs a buffer of at least one)
    for (int64_t g = 0; g < G; ++g) {
      A t1 = b[g * per], t2 = -INFINITY;  // top-2 values of the group (ties: both count)
      for (int64_t e = g * per + 1; e < (g + 1) * per; ++e) {
        const A v = b[e];
        if (ranks_above(v, t1)) { t2 = t1; t1 = v; } else if (ranks_above(v, t2)) { t2 = v; }
      }
      ng = topk_insert(gvals, gidx, ng, static_cast<int>(r.topk_group), per > 1 ? t1 + t2 : t1,
                       static_cast<int32_t>(g));
    }
  }
  int nk = 0;
  const int kk = static_cast<int>(r.k);
  if (grouped) {
    // every expert in ascending id order, masked ones as -inf: they fill the slots the kept groups
    // cannot (lowest ids first) and are turned away as soon as the buffer is full
    for (int64_t g = 0; g < G; ++g) {
      bool kept = false;
      for (int q = 0; q < ng; ++q) kept = kept || gidx[q] == g;
      for (int64_t e = g * per; e < (g + 1) * per; ++e)
        nk = topk_insert(kvals, ids, nk, kk, kept ? b[e] : A(-INFINITY), static_cast<int32_t>(e));
    }
  } else {
    for (int64_t e = 0; e < E; ++e) nk = topk_insert(kvals, ids, nk, kk, b[e], static_cast<int32_t>(e));
  }
  // a slot left with only NaN-scored experts (kvals NaN) takes id j and weight NaN, as the Triton
  // kernel fills it (docs/moe.md): ids stay in [0, E), the token's output is NaN, and the other
  // slots' weights are normalised over the scored ones
  A sum = 0;
  for (int j = 0; j < kk; ++j) {
    const bool unscored = kvals[j] != kvals[j];
    if (unscored) ids[j] = j;
    w[j] = unscored ? kvals[j] : s[ids[j]];
    if (!unscored) sum += w[j];
  }
  const A den = r.norm ? sum + A(1e-20) : A(1);
  for (int j = 0; j < kk; ++j) w[j] = r.norm ? w[j] / den * A(r.scale) : w[j] * A(r.scale);
}

}  // namespace moe
}  // namespace pygen
