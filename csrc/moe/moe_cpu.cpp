// MoE family: OpenMP CPU build of moe_align (pygen._C), over the bodies in moe.cuh.
//
// moe_align walks the same slot blocks as the CUDA kernels; each block's counter row doubles as the
// running in-block rank (ascending slot order inside each expert, the order the CUDA kernel computes
// by comparisons), so no atomics are needed. It runs serially (see cpu_align). Routing and the
// permutation open a parallel region only for large inputs (docs/ARCHITECTURE.md, "CPU threading").
#include <omp.h>

#include <cstdint>
#include <vector>

#include "../common/dtype.h"
#include "moe.cuh"
#include "moe_launch.h"

namespace pygen {
namespace moe {

void cpu_align(const AlignParams& p, int num_threads) {
  const int64_t S = p.S, E = p.E, B = p.B;
  const int64_t NB = num_slot_blocks(S);
  int32_t* counts = p.workspace;          // [NB][E], zero-filled by the caller
  int32_t* totals = p.workspace + NB * E;  // [E]
  // Serial on purpose: the whole alignment is O(S + E*NB) integer work (0.2 ms for 16,384 slots
  // measured here), while each OpenMP region cost ~8 ms of wake-up on the shared 2-core machines
  // (two OpenMP runtimes, docs/ARCHITECTURE.md "CPU threading"): 40 ms with 2 threads vs 0.2 ms.
  (void)num_threads;

  for (int64_t b = 0; b < NB; ++b) {
    int32_t* row = counts + b * E;
    const int64_t end = (b + 1) * kSlotBlock < S ? (b + 1) * kSlotBlock : S;
    for (int64_t s = b * kSlotBlock; s < end; ++s) {
      const int32_t e = expert_of(p.ids, p.ids_int64, s, E);
      if (e >= 0) ++row[e];
    }
  }
  for (int64_t e = 0; e < E; ++e) {
    int32_t run = 0;
    for (int64_t b = 0; b < NB; ++b) {
      const int32_t c = counts[b * E + e];
      counts[b * E + e] = run;
      run += c;
    }
    totals[e] = run;
  }
  int32_t acc = 0;
  for (int64_t e = 0; e < E; ++e) {
    p.starts[e] = acc;
    acc += padded_count(totals[e], B);
  }
  p.starts[E] = acc;
  p.ntpp[0] = acc;
  for (int64_t i = 0; i < p.cap; ++i) p.sorted_ids[i] = static_cast<int32_t>(S);
  for (int64_t b = 0; b < NB; ++b) {
    int32_t* row = counts + b * E;  // becomes this block's running position per expert
    const int64_t end = (b + 1) * kSlotBlock < S ? (b + 1) * kSlotBlock : S;
    for (int64_t s = b * kSlotBlock; s < end; ++s) {
      const int32_t e = expert_of(p.ids, p.ids_int64, s, E);
      if (e < 0) continue;
      p.sorted_ids[slot_position(p.starts, row, e, 0)] = static_cast<int32_t>(s);
      ++row[e];
    }
  }
  for (int64_t j = 0; j < p.nblk; ++j) p.expert_ids[j] = block_expert(p.starts, E, j, B);
}

namespace {

template <typename S, typename A>
void route_rows(const RouteParams& p, int num_threads) {
  const RouteArgs r{p.E, p.k, p.n_group, p.topk_group, p.softmax, p.norm, p.scale};
  const S* logits = static_cast<const S*>(p.logits);
  const A* bias = static_cast<const A*>(p.bias);
  A* weights = static_cast<A*>(p.weights);
  // Threads only for large batches: measured on the shared 2-core machine, 8192 x 256 logits took
  // 20-27 ms on one thread and 25-36 ms on two (region wake-up under load).
  const bool par = p.T * p.E >= (int64_t(1) << 23) && num_threads > 1;
#pragma omp parallel num_threads(num_threads > 0 ? num_threads : 1) if (par)
  {
    // per-thread scratch: logits row (compute type), scores, biased scores, selection buffers
    std::vector<A> x(p.E), s(p.E), b(p.E), gvals(p.n_group + 1), kvals(p.k);
    std::vector<int32_t> gidx(p.n_group + 1);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < p.T; ++t) {
      const S* row = logits + t * p.ld;
      for (int64_t e = 0; e < p.E; ++e) x[e] = load<A>(row + e);
      route_token<A>(x.data(), bias, r, s.data(), b.data(), gvals.data(), gidx.data(), kvals.data(),
                     p.ids + t * p.k, weights + t * p.k);
    }
  }
}

template <typename S, typename A>
void permute_rows(PermuteOp op, const PermuteParams& p, int num_threads) {
  const int64_t rows = op == PermuteOp::Unpermute ? p.T : p.N;
  // Memory-bound copies: threads only for very large tensors (2048*8 rows x 1024 floats: 35 ms on
  // one thread, 80 ms on two on the shared 2-core machine).
  const bool par = rows * p.H >= (int64_t(1) << 26) && num_threads > 1;
#pragma omp parallel for num_threads(num_threads > 0 ? num_threads : 1) if (par) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    switch (op) {
      case PermuteOp::Permute:
        for (int64_t h = 0; h < p.H; ++h) permute_elem<S, A>(p, r, h);
        break;
      case PermuteOp::Unpermute:
        for (int64_t h = 0; h < p.H; ++h) unpermute_elem<S, A>(p, r, h);
        break;
      case PermuteOp::UnpermuteBwd:
        if (p.out)
          for (int64_t h = 0; h < p.H; ++h) unpermute_dy_elem<S, A>(p, r, h);
        if (p.dw && slot_ok(p.slots[r], p.N))
          static_cast<A*>(p.dw)[p.slots[r]] = unpermute_dw_partial<S, A>(p, r, 0, p.H, 1);
        break;
    }
  }
}

}  // namespace

bool cpu_permute(PermuteOp op, const PermuteParams& p, int num_threads) {
  return dispatch_dtype<true>(p.dtype, [&](auto s_tag, auto t_tag) {
    using S = typename decltype(s_tag)::type;
    using A = typename decltype(t_tag)::type;
    permute_rows<S, A>(op, p, num_threads);
  });
}

bool cpu_route(const RouteParams& p, int num_threads) {
  return dispatch_dtype<true>(p.dtype, [&](auto s_tag, auto t_tag) {
    using S = typename decltype(s_tag)::type;
    using A = typename decltype(t_tag)::type;
    route_rows<S, A>(p, num_threads);
  });
}

}  // namespace moe
}  // namespace pygen
