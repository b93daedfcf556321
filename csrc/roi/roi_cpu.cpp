// RoI pooling family: OpenMP CPU loops (pygen._C).
//
// Formulas and layouts: see roi.cuh. These loops call the same HOST_DEVICE pieces as the CUDA
// kernels (bilinear_tap, align_geom, pool_bin, bin_max, fpn_level) and add the arithmetic in the
// same order, so results agree with the per-element bodies to the last bit on the host.
//
// Why they are organised differently from the GPU kernels (and from torchvision's CPU kernels,
// which are single-threaded and recompute every bilinear weight for every channel):
//  * Sample positions and weights depend on the RoI only, not on the channel. They are computed
//    once per RoI into small per-axis tables (PH*gh rows, PW*gw columns, strides folded into the
//    offsets, samples outside the map dropped) and reused for all C channels.
//  * "Plane" loops: the work is split into (level, image, channel) planes and each task walks
//    every RoI of its image in RoI order. A plane (e.g. 200x336 floats = 269 KB) stays in L2 for
//    all RoIs, and in the backward every grad element has exactly one writer, so the CPU
//    backward is race-free and deterministic without atomics or per-thread buffers.
//  * Channels-last forward input (channel stride 1): one task per RoI, the channel loop is
//    innermost and contiguous (it vectorises), bins accumulate into a per-thread C-vector.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "roi.cuh"
#include "roi_launch.h"

namespace pygen {
namespace roi {
namespace {

std::atomic<int> g_impl{0};

// ---- RoIs bucketed by (level, image), RoI order kept inside a bucket ---------------------------
struct Buckets {
  int64_t count = 0;               // num_levels * N
  std::vector<int64_t> start;      // [count + 1]
  std::vector<int64_t> order;      // RoI indices
};

template <typename T>
Buckets bucket_rois(const RoiParams& p, bool by_level) {
  Buckets b;
  const int L = by_level ? p.num_levels : 1;
  b.count = L * p.N;
  std::vector<int64_t> key(p.K);
  b.start.assign(b.count + 1, 0);
  const T* rois = static_cast<const T*>(p.rois);
  for (int64_t k = 0; k < p.K; ++k) {
    int64_t n;
    const T* r = rois + 5 * k;
    const int l = by_level ? fpn_level(r, p) : 0;  // -1: a level with no map
    key[k] = roi_batch(r, p.N, &n) && l >= 0 ? l * p.N + n : -1;
    if (key[k] >= 0) ++b.start[key[k] + 1];
  }
  for (int64_t g = 0; g < b.count; ++g) b.start[g + 1] += b.start[g];
  b.order.resize(b.start[b.count]);
  std::vector<int64_t> fill(b.start.begin(), b.start.end() - 1);
  for (int64_t k = 0; k < p.K; ++k)
    if (key[k] >= 0) b.order[fill[key[k]]++] = k;
  return b;
}

// ---- per-RoI bilinear sample tables (align family) ------------------------------------------
template <typename T>
struct AxisSample {
  int64_t lo, hi;  // neighbour offsets, already multiplied by the row (column) stride
  T wlo, whi;
};

template <typename T>
struct AlignTables {
  std::vector<int64_t> ybase, xbase;   // per RoI: first entry in ys / xs
  std::vector<int64_t> gh, gw;         // per RoI: sample grid (slot size per bin)
  std::vector<T> count;                // per RoI: divisor max(gh*gw, 1)
  std::vector<int32_t> ny, nx;         // [K*PH], [K*PW]: samples kept per bin (packed first)
  std::vector<AxisSample<T>> ys, xs;
};

// One axis of one RoI: for each of its `bins` bins, the samples of its `grid` that fall on the map
// (`size` long, `stride` apart), packed at the front of the bin's `grid` slots; counts[bin] of them.
template <typename T>
void fill_axis(AxisSample<T>* slots, int32_t* counts, T start, T bin, int64_t bins, int64_t grid, int64_t size,
               int64_t stride) {
  for (int64_t i = 0; i < bins; ++i) {
    AxisSample<T>* slot = slots + i * grid;
    int32_t m = 0;
    for (int64_t a = 0; a < grid; ++a) {
      const Tap<T> tp = bilinear_tap(sample_coord(start, bin, i, a, grid), size);
      if (tp.valid) slot[m++] = {tp.lo * stride, tp.hi * stride, tp.wlo, tp.whi};
    }
    counts[i] = m;
  }
}

// Tables for every RoI against the planes in p.lv (the input in the forward, the grad buffer in
// the backward: offsets use that tensor's strides). RoIs with a bad batch index get no samples.
template <typename T>
void build_align_tables(const RoiParams& p, bool ps, int nt, AlignTables<T>& t) {
  const int64_t K = p.K, PH = p.PH, PW = p.PW;
  const T* rois = static_cast<const T*>(p.rois);
  t.ybase.resize(K); t.xbase.resize(K); t.gh.resize(K); t.gw.resize(K); t.count.resize(K);
  std::vector<AlignGeom<T>> geo(K);
  std::vector<int> lvl(K);
  int64_t ny_total = 0, nx_total = 0;
  for (int64_t k = 0; k < K; ++k) {
    const T* r = rois + 5 * k;
    int64_t n;
    lvl[k] = roi_batch(r, p.N, &n) ? (ps ? 0 : fpn_level(r, p)) : -1;
    const Plane& P = p.lv[lvl[k] < 0 ? 0 : lvl[k]];
    geo[k] = align_geom(r, static_cast<T>(P.scale), ps || p.aligned != 0, PH, PW, p.sampling_ratio);
    if (lvl[k] < 0 || P.H <= 0 || P.W <= 0) geo[k].gh = geo[k].gw = 0;
    t.gh[k] = geo[k].gh; t.gw[k] = geo[k].gw; t.count[k] = geo[k].count;
    t.ybase[k] = ny_total; t.xbase[k] = nx_total;
    ny_total += PH * geo[k].gh;
    nx_total += PW * geo[k].gw;
  }
  t.ys.resize(ny_total); t.xs.resize(nx_total);
  t.ny.assign(K * PH, 0); t.nx.assign(K * PW, 0);
#pragma omp parallel for schedule(dynamic, 16) num_threads(nt) if (ny_total + nx_total > 65536)
  for (int64_t k = 0; k < K; ++k) {
    if (geo[k].gh <= 0 || geo[k].gw <= 0) continue;
    const Plane& P = p.lv[lvl[k]];
    const AlignGeom<T>& g = geo[k];
    fill_axis(&t.ys[t.ybase[k]], &t.ny[k * PH], g.y0, g.bh, PH, g.gh, P.H, P.sH);
    fill_axis(&t.xs[t.xbase[k]], &t.nx[k * PW], g.x0, g.bw, PW, g.gw, P.W, P.sW);
  }
}

// One kept bilinear sample of a bin: the four neighbour weights (torchvision's order) and their
// offsets in the plane (strides already applied).
template <typename T>
struct Sample4 {
  T w1, w2, w3, w4;
  int64_t o1, o2, o3, o4;
};

// Calls f(Sample4) for every kept sample of bin (i, j) of RoI k, rows outer, in align_bin_sum's
// order (so sums agree with the device bodies to the last bit).
template <typename T, typename F>
inline void for_bin_samples(const AlignTables<T>& t, int64_t k, int64_t i, int64_t j, int64_t PH, int64_t PW,
                            F&& f) {
  const AxisSample<T>* ya = &t.ys[t.ybase[k] + i * t.gh[k]];
  const AxisSample<T>* xa = &t.xs[t.xbase[k] + j * t.gw[k]];
  const int32_t nya = t.ny[k * PH + i], nxb = t.nx[k * PW + j];
  for (int32_t a = 0; a < nya; ++a) {
    const AxisSample<T> Y = ya[a];
    for (int32_t b = 0; b < nxb; ++b) {
      const AxisSample<T> X = xa[b];
      f(Sample4<T>{Y.wlo * X.wlo, Y.wlo * X.whi, Y.whi * X.wlo, Y.whi * X.whi, Y.lo + X.lo, Y.lo + X.hi,
                   Y.hi + X.lo, Y.hi + X.hi});
    }
  }
}

// Channel blocking for the plane loops: a task owns kCB planes (4 x 267 KB for a P2 map, which
// fits in L2), and each sample's four weights and offsets are formed once and applied to all
// NC <= kCB channels, which roughly halves the instructions per gathered value. Per channel the
// arithmetic is the same whatever NC (bitwise identical results).
constexpr int kCB = 4;

// acc[c] = sum of the samples of bin (i, j) of RoI k read from planes[c], c < NC.
template <int NC, typename S, typename T>
inline void table_bin_sums_block(const S* const* planes, const AlignTables<T>& t, int64_t k,
                                 int64_t i, int64_t j, int64_t PH, int64_t PW, T* acc) {
  for (int c = 0; c < NC; ++c) acc[c] = T(0);
  for_bin_samples(t, k, i, j, PH, PW, [&](const Sample4<T>& q) {
    for (int c = 0; c < NC; ++c) {
      const S* pl = planes[c];
      acc[c] += q.w1 * load<T>(pl + q.o1) + q.w2 * load<T>(pl + q.o2) + q.w3 * load<T>(pl + q.o3) +
                q.w4 * load<T>(pl + q.o4);
    }
  });
}

// Adds g[c] times the weights of bin (i, j) of RoI k into planes[c] (the adjoint), c < NC.
template <int NC, typename T>
inline void table_bin_scatter_block(T* const* planes, const AlignTables<T>& t, int64_t k, int64_t i,
                                    int64_t j, int64_t PH, int64_t PW, const T* g) {
  for_bin_samples(t, k, i, j, PH, PW, [&](const Sample4<T>& q) {
    for (int c = 0; c < NC; ++c) {
      T* pl = planes[c];
      pl[q.o1] += q.w1 * g[c];
      pl[q.o2] += q.w2 * g[c];
      pl[q.o3] += q.w3 * g[c];
      pl[q.o4] += q.w4 * g[c];
    }
  });
}

template <typename S, typename T>
inline T table_bin_sum(const S* plane, const AlignTables<T>& t, int64_t k, int64_t i, int64_t j, int64_t PH,
                       int64_t PW) {
  T acc;
  table_bin_sums_block<1>(&plane, t, k, i, j, PH, PW, &acc);
  return acc;
}

template <typename T>
inline void table_bin_scatter(T* plane, const AlignTables<T>& t, int64_t k, int64_t i, int64_t j, int64_t PH,
                              int64_t PW, T g) {
  table_bin_scatter_block<1>(&plane, t, k, i, j, PH, PW, &g);
}

// ---- per-RoI integer bins (pool family) -------------------------------------------------------
struct PoolTables {
  std::vector<int64_t> hs, he, ws, we;  // [K*PH] rows, [K*PW] columns, clipped to the map
};

template <typename T>
PoolTables build_pool_tables(const RoiParams& p, int plus_one) {
  PoolTables t;
  const Plane& P = p.lv[0];
  t.hs.resize(p.K * p.PH); t.he.resize(p.K * p.PH);
  t.ws.resize(p.K * p.PW); t.we.resize(p.K * p.PW);
  const T* rois = static_cast<const T*>(p.rois);
  const T scale = static_cast<T>(P.scale);
  for (int64_t k = 0; k < p.K; ++k) {
    const T* r = rois + 5 * k;
    const int64_t x1 = round_half_away(r[1] * scale), y1 = round_half_away(r[2] * scale);
    const int64_t x2 = round_half_away(r[3] * scale), y2 = round_half_away(r[4] * scale);
    for (int64_t i = 0; i < p.PH; ++i)
      int_bin<T>(y1, y2, plus_one, p.PH, i, P.H, &t.hs[k * p.PH + i], &t.he[k * p.PH + i]);
    for (int64_t j = 0; j < p.PW; ++j)
      int_bin<T>(x1, x2, plus_one, p.PW, j, P.W, &t.ws[k * p.PW + j], &t.we[k * p.PW + j]);
  }
  return t;
}

template <typename S>
inline S* pooled_at(const RoiParams& p, int64_t k, int64_t c) {
  return static_cast<S*>(p.pooled) + k * p.ps[0] + c * p.ps[1];
}

template <typename S, typename T>
void zero_pooled_roi(const RoiParams& p, int64_t k) {
  for (int64_t c = 0; c < p.Cp; ++c) {
    S* o = pooled_at<S>(p, k, c);
    for (int64_t i = 0; i < p.PH; ++i)
      for (int64_t j = 0; j < p.PW; ++j) store(o + i * p.ps[2] + j * p.ps[3], T(0));
  }
}

// RoIs whose batch index is invalid produce zeros; the plane loops never visit them.
// Serial: usually there is nothing to write, and a parallel region costs a barrier (which on a
// loaded machine can mean a whole scheduler time slice).
template <typename S, typename T>
void zero_invalid_rois(const RoiParams& p) {
  const T* rois = static_cast<const T*>(p.rois);
  for (int64_t k = 0; k < p.K; ++k) {
    int64_t n;
    // an invalid batch index, or (multi-scale) a level with no map: fpn_level
    if (!roi_batch(rois + 5 * k, p.N, &n) || fpn_level(rois + 5 * k, p) < 0) {
      zero_pooled_roi<S, T>(p, k);
      if (p.argmax != nullptr)
        std::fill(p.argmax + k * p.Cp * p.PH * p.PW, p.argmax + (k + 1) * p.Cp * p.PH * p.PW, -1);
    }
  }
}

// The PS forwards' plane loop. Input channel ch feeds exactly one (c, i, j): task = (image n,
// ch) walks every RoI of the image, in RoI order, against one small plane (50x84 floats for
// R-FCN) instead of touching a different plane for every bin of every RoI, which is L3-latency
// bound. Calls f(plane, k, c, i, j).
template <typename S, typename T, typename F>
void ps_forward_planes(const RoiParams& p, int nt, F&& f) {
  const Buckets b = bucket_rois<T>(p, false);
  const Plane& P = p.lv[0];
  const int64_t tasks = p.N * p.C;
#pragma omp parallel for schedule(dynamic, 4) num_threads(nt)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t n = task / p.C, ch = task % p.C;
    const int64_t j = ch % p.PW, i = (ch / p.PW) % p.PH, c = ch / (p.PH * p.PW);
    if (c >= p.Cp || b.start[n] == b.start[n + 1]) continue;
    const S* plane = static_cast<const S*>(P.data) + n * P.sN + ch * P.sC;
    for (int64_t e = b.start[n]; e < b.start[n + 1]; ++e) f(plane, b.order[e], c, i, j);
  }
}

// The plane loop of roi_align and multi_scale_roi_align, forward and backward: task = (bucket
// g = (level, image), block of kCB channels from c0), every RoI k of the bucket in RoI order, so
// in the backward each grad plane has one writer. Calls f(planes, nc, c0, k) with planes[c] the
// (level, image, c0 + c) plane of p.lv for c < nc, typed X* (const S: inputs; T: grad buffers).
template <typename X, typename F>
void blocked_planes(const RoiParams& p, const Buckets& b, int nt, F&& f) {
  const int64_t nblk = (p.C + kCB - 1) / kCB;
  const int64_t tasks = b.count * nblk;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t g = task / nblk, c0 = (task % nblk) * kCB;
    if (b.start[g] == b.start[g + 1]) continue;
    const int nc = static_cast<int>(std::min<int64_t>(kCB, p.C - c0));
    const Plane& P = p.lv[g / p.N];
    X* planes[kCB];
    for (int c = 0; c < nc; ++c) planes[c] = static_cast<X*>(P.data) + (g % p.N) * P.sN + (c0 + c) * P.sC;
    for (int64_t e = b.start[g]; e < b.start[g + 1]; ++e) f(planes, nc, c0, b.order[e]);
  }
}

// ---- roi_align / multi_scale_roi_align / ps_roi_align -----------------------------------------
template <typename S, typename T>
void align_forward(const RoiParams& p, bool ps, int nt) {
  AlignTables<T> t;
  build_align_tables(p, ps, nt, t);
  const int64_t PH = p.PH, PW = p.PW;
  zero_invalid_rois<S, T>(p);
  if (ps) {
    ps_forward_planes<S, T>(p, nt, [&](const S* plane, int64_t k, int64_t c, int64_t i, int64_t j) {
      store(pooled_at<S>(p, k, c) + i * p.ps[2] + j * p.ps[3],
            table_bin_sum<S, T>(plane, t, k, i, j, PH, PW) / t.count[k]);
    });
    return;
  }
  const Buckets b = bucket_rois<T>(p, true);
  bool channels_last = p.C > 1;
  for (int l = 0; l < p.num_levels; ++l) channels_last = channels_last && p.lv[l].sC == 1;
  if (channels_last) {
    const T* rois = static_cast<const T*>(p.rois);
#pragma omp parallel num_threads(nt)
    {
      std::vector<T> acc(p.C);
#pragma omp for schedule(dynamic, 4)
      for (int64_t k = 0; k < p.K; ++k) {
        int64_t n;
        const T* r = rois + 5 * k;
        const int l = fpn_level(r, p);
        if (!roi_batch(r, p.N, &n) || l < 0) continue;  // zero_invalid_rois wrote its zeros
        const Plane& P = p.lv[l];
        const S* img = static_cast<const S*>(P.data) + n * P.sN;
        S* o = pooled_at<S>(p, k, 0);
        for (int64_t i = 0; i < PH; ++i) {
          for (int64_t j = 0; j < PW; ++j) {
            std::fill(acc.begin(), acc.end(), T(0));
            T* PYGEN_RESTRICT av = acc.data();
            for_bin_samples(t, k, i, j, PH, PW, [&](const Sample4<T>& q) {
              const S* PYGEN_RESTRICT p1 = img + q.o1;
              const S* PYGEN_RESTRICT p2 = img + q.o2;
              const S* PYGEN_RESTRICT p3 = img + q.o3;
              const S* PYGEN_RESTRICT p4 = img + q.o4;
              for (int64_t c = 0; c < p.C; ++c)
                av[c] += q.w1 * load<T>(p1 + c) + q.w2 * load<T>(p2 + c) + q.w3 * load<T>(p3 + c) +
                         q.w4 * load<T>(p4 + c);
            });
            const T cnt = t.count[k];
            for (int64_t c = 0; c < p.C; ++c) store(o + c * p.ps[1] + i * p.ps[2] + j * p.ps[3], av[c] / cnt);
          }
        }
      }
    }
    return;
  }
  blocked_planes<const S>(p, b, nt, [&](const S* const* planes, int nc, int64_t c0, int64_t k) {
    T acc[kCB];
    const T cnt = t.count[k];
    S* o = pooled_at<S>(p, k, c0);
    for (int64_t i = 0; i < PH; ++i)
      for (int64_t j = 0; j < PW; ++j) {
        if (nc == kCB) {
          table_bin_sums_block<kCB>(planes, t, k, i, j, PH, PW, acc);
        } else {
          for (int c = 0; c < nc; ++c) acc[c] = table_bin_sum<S, T>(planes[c], t, k, i, j, PH, PW);
        }
        for (int c = 0; c < nc; ++c) store(o + c * p.ps[1] + i * p.ps[2] + j * p.ps[3], acc[c] / cnt);
      }
  });
}

template <typename S, typename T>
void align_backward(const RoiParams& p, bool ps, int nt) {
  AlignTables<T> t;
  build_align_tables(p, ps, nt, t);  // p.lv are the grad buffers: offsets use their strides
  const Buckets b = bucket_rois<T>(p, !ps);
  const int64_t PH = p.PH, PW = p.PW;
  if (!ps) {
    blocked_planes<T>(p, b, nt, [&](T* const* planes, int nc, int64_t c0, int64_t k) {
      T gv[kCB];
      const S* go = static_cast<const S*>(p.pooled) + k * p.ps[0] + c0 * p.ps[1];
      for (int64_t i = 0; i < PH; ++i)
        for (int64_t j = 0; j < PW; ++j) {
          for (int c = 0; c < nc; ++c) gv[c] = load<T>(go + c * p.ps[1] + i * p.ps[2] + j * p.ps[3]) / t.count[k];
          if (nc == kCB) {
            table_bin_scatter_block<kCB>(planes, t, k, i, j, PH, PW, gv);
          } else {
            for (int c = 0; c < nc; ++c) table_bin_scatter<T>(planes[c], t, k, i, j, PH, PW, gv[c]);
          }
        }
    });
    return;
  }
  const int64_t tasks = b.count * p.C;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t g = task / p.C, ch = task % p.C;
    if (b.start[g] == b.start[g + 1]) continue;
    const Plane& P = p.lv[g / p.N];
    T* plane = static_cast<T*>(P.data) + (g % p.N) * P.sN + ch * P.sC;
    int64_t c = ch, i0 = 0, i1 = PH, j0 = 0, j1 = PW;
    if (ps) {  // input channel ch is fed by exactly one (c, i, j)
      j0 = ch % PW; i0 = (ch / PW) % PH; c = ch / (PH * PW);
      if (c >= p.Cp) continue;
      i1 = i0 + 1; j1 = j0 + 1;
    }
    for (int64_t e = b.start[g]; e < b.start[g + 1]; ++e) {
      const int64_t k = b.order[e];
      const S* go = static_cast<const S*>(p.pooled) + k * p.ps[0] + c * p.ps[1];
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j) {
          const T gv = load<T>(go + i * p.ps[2] + j * p.ps[3]) / t.count[k];
          table_bin_scatter<T>(plane, t, k, i, j, PH, PW, gv);
        }
    }
  }
}

// ---- roi_pool / ps_roi_pool ---------------------------------------------------------------
// (m[x], a[x]) := (src[x], idx) where src[x] > m[x] (strictly: the first maximum stays; NaN never
// replaces), x < n. Written with integer masks so that gcc vectorises it.
template <typename S, typename T>
inline void max_merge(const S* PYGEN_RESTRICT src, int64_t n, int32_t idx, T* PYGEN_RESTRICT m,
                      int32_t* PYGEN_RESTRICT a) {
  for (int64_t x = 0; x < n; ++x) {
    const T v = load<T>(src + x);
    const T mx = m[x];
    const int32_t ax = a[x];
    const int32_t gt = -static_cast<int32_t>(v > mx);
    m[x] = gt ? v : mx;
    a[x] = (idx & gt) | (ax & ~gt);
  }
}

// roi_pool, one row of bins of RoI k in one plane. torchvision scans every bin element by
// element with a data-dependent branch; here the band of rows [hs, he) is first reduced to
// per-column maxima (cm) with the first row reaching each (ca), a branch-free loop over
// contiguous columns that the compiler vectorises, then each bin takes the best column of its
// range. Smallest (row, column) among equal maxima = the first maximum in row-major order, the
// same element the element-wise scan (bin_max) picks; both start from -FLT_MAX (a column no
// value beats keeps row -1 and takes no part).
template <typename S, typename T>
void roi_pool_bin_row(const RoiParams& p, const S* plane, int64_t k, int64_t c, int64_t i,
                      const PoolTables& t, T* PYGEN_RESTRICT cm, int32_t* PYGEN_RESTRICT ca) {
  const Plane& P = p.lv[0];
  const int64_t PH = p.PH, PW = p.PW;
  S* o = pooled_at<S>(p, k, c) + i * p.ps[2];
  int32_t* am = p.argmax + ((k * p.Cp + c) * PH + i) * PW;
  const int64_t hs = t.hs[k * PH + i], he = t.he[k * PH + i];
  const int64_t* ws = &t.ws[k * PW];
  const int64_t* we = &t.we[k * PW];
  const int64_t x0 = ws[0], x1 = we[PW - 1];  // bins are ordered: their union is [x0, x1)
  if (he > hs && x1 > x0 && P.sW == 1) {
    const int64_t w = x1 - x0;
    std::fill(cm, cm + w, pool_max_start<T>());
    std::fill(ca, ca + w, -1);
    for (int64_t y = hs; y < he; ++y)
      max_merge<S, T>(plane + y * P.sH + x0, w, static_cast<int32_t>(y), cm, ca);
  }
  if (P.sW != 1) {
    for (int64_t j = 0; j < PW; ++j) {
      int32_t arg;
      store(o + j * p.ps[3], bin_max<S, T>(plane, P, hs, he, ws[j], we[j], &arg));
      am[j] = arg;
    }
    return;
  }
  const int64_t W = P.W;
  for (int64_t j = 0; j < PW; ++j) {
    if (he <= hs || we[j] <= ws[j]) {
      store(o + j * p.ps[3], T(0));
      am[j] = -1;
      continue;
    }
    T best = pool_max_start<T>();
    int64_t bkey = -1;
    for (int64_t x = ws[j]; x < we[j]; ++x) {
      if (ca[x - x0] < 0) continue;  // nothing in this column beat -FLT_MAX
      const T v = cm[x - x0];
      const int64_t key = ca[x - x0] * W + x;
      if (bkey < 0 || v > best || (v == best && key < bkey)) {
        best = v;
        bkey = key;
      }
    }
    store(o + j * p.ps[3], best);
    am[j] = static_cast<int32_t>(bkey);
  }
}

// roi_pool, bin (i, j) of RoI k for all channels of a channels-last image: the same strict
// "greater than" scan from -FLT_MAX as bin_max, run over contiguous channel vectors (vectorised).
template <typename S, typename T>
void roi_pool_bin_channels_last(const RoiParams& p, const S* img, int64_t k, int64_t i, int64_t j,
                                int64_t hs, int64_t he, int64_t ws, int64_t we, T* PYGEN_RESTRICT m,
                                int32_t* PYGEN_RESTRICT a) {
  const Plane& P = p.lv[0];
  const int64_t C = p.C;
  S* o = pooled_at<S>(p, k, 0) + i * p.ps[2] + j * p.ps[3];
  int32_t* am = p.argmax + (k * p.Cp * p.PH + i) * p.PW + j;
  const int64_t am_c = p.PH * p.PW;
  if (he <= hs || we <= ws) {
    for (int64_t c = 0; c < C; ++c) {
      store(o + c * p.ps[1], T(0));
      am[c * am_c] = -1;
    }
    return;
  }
  std::fill(m, m + C, pool_max_start<T>());
  std::fill(a, a + C, -1);
  for (int64_t y = hs; y < he; ++y)
    for (int64_t x = ws; x < we; ++x)
      max_merge<S, T>(img + y * P.sH + x * P.sW, C, static_cast<int32_t>(y * P.W + x), m, a);
  for (int64_t c = 0; c < C; ++c) {
    store(o + c * p.ps[1], m[c]);
    am[c * am_c] = a[c];
  }
}

template <typename S, typename T>
void pool_forward(const RoiParams& p, bool ps, int nt) {
  const PoolTables t = build_pool_tables<T>(p, ps ? 0 : 1);
  const Plane& P = p.lv[0];
  const int64_t PH = p.PH, PW = p.PW;
  zero_invalid_rois<S, T>(p);
  if (ps) {
    ps_forward_planes<S, T>(p, nt, [&](const S* plane, int64_t k, int64_t c, int64_t i, int64_t j) {
      const int64_t hs = t.hs[k * PH + i], he = t.he[k * PH + i];
      const int64_t ws = t.ws[k * PW + j], we = t.we[k * PW + j];
      T v = T(0);
      if (he > hs && we > ws) {
        for (int64_t y = hs; y < he; ++y)
          for (int64_t x = ws; x < we; ++x) v += load<T>(plane + y * P.sH + x * P.sW);
        v = v / static_cast<T>((he - hs) * (we - ws));
      }
      store(pooled_at<S>(p, k, c) + i * p.ps[2] + j * p.ps[3], v);
    });
    return;
  }
  const T* rois = static_cast<const T*>(p.rois);
  if (P.sC == 1 && p.C > 1) {  // channels last: one task per RoI, channels innermost
#pragma omp parallel num_threads(nt)
    {
      std::vector<T> m(p.C);
      std::vector<int32_t> a(p.C);
#pragma omp for schedule(dynamic, 4)
      for (int64_t k = 0; k < p.K; ++k) {
        int64_t n;
        if (!roi_batch(rois + 5 * k, p.N, &n)) continue;
        const S* img = static_cast<const S*>(P.data) + n * P.sN;
        for (int64_t i = 0; i < PH; ++i)
          for (int64_t j = 0; j < PW; ++j)
            roi_pool_bin_channels_last<S, T>(p, img, k, i, j, t.hs[k * PH + i], t.he[k * PH + i],
                                             t.ws[k * PW + j], t.we[k * PW + j], m.data(), a.data());
      }
    }
    return;
  }
  // Plane loop: task = (image, channel), every RoI of the image against one L2-resident plane.
  const Buckets b = bucket_rois<T>(p, false);
  const int64_t tasks = b.count * p.C;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> cm(P.W + 1);
    std::vector<int32_t> ca(P.W + 1);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t n = task / p.C, c = task % p.C;
      const S* plane = static_cast<const S*>(P.data) + n * P.sN + c * P.sC;
      for (int64_t e = b.start[n]; e < b.start[n + 1]; ++e) {
        const int64_t k = b.order[e];
        for (int64_t i = 0; i < PH; ++i)
          roi_pool_bin_row<S, T>(p, plane, k, c, i, t, cm.data(), ca.data());
      }
    }
  }
}

template <typename S, typename T>
void pool_backward(const RoiParams& p, bool ps, int nt) {
  const Plane& P = p.lv[0];
  const int64_t PH = p.PH, PW = p.PW, HW = P.H * P.W;
  const Buckets b = bucket_rois<T>(p, false);
  PoolTables t;
  if (ps) t = build_pool_tables<T>(p, 0);
  const bool dense = P.sH == P.W * P.sW;  // argmax h*W + w is then a plain offset
  const int64_t tasks = b.count * p.C;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t n = task / p.C, ch = task % p.C;
    T* plane = static_cast<T*>(P.data) + n * P.sN + ch * P.sC;
    if (!ps) {
      for (int64_t e = b.start[n]; e < b.start[n + 1]; ++e) {
        const int64_t k = b.order[e];
        const S* go = static_cast<const S*>(p.pooled) + k * p.ps[0] + ch * p.ps[1];
        const int32_t* am = p.argmax + (k * p.Cp + ch) * PH * PW;
        for (int64_t i = 0; i < PH; ++i)
          for (int64_t j = 0; j < PW; ++j) {
            const int64_t a = am[i * PW + j];
            if (a < 0 || a >= HW) continue;
            const int64_t off = dense ? a * P.sW : (a / P.W) * P.sH + (a % P.W) * P.sW;
            plane[off] += load<T>(go + i * p.ps[2] + j * p.ps[3]);
          }
      }
      continue;
    }
    const int64_t j = ch % PW, i = (ch / PW) % PH, c = ch / (PH * PW);
    if (c >= p.Cp) continue;
    for (int64_t e = b.start[n]; e < b.start[n + 1]; ++e) {
      const int64_t k = b.order[e];
      const int64_t hs = t.hs[k * PH + i], he = t.he[k * PH + i];
      const int64_t ws = t.ws[k * PW + j], we = t.we[k * PW + j];
      if (he <= hs || we <= ws) continue;
      const S* go = static_cast<const S*>(p.pooled) + k * p.ps[0] + c * p.ps[1];
      const T gv = load<T>(go + i * p.ps[2] + j * p.ps[3]) / static_cast<T>((he - hs) * (we - ws));
      for (int64_t y = hs; y < he; ++y)
        for (int64_t x = ws; x < we; ++x) plane[y * P.sH + x * P.sW] += gv;
    }
  }
}

// ---- the device bodies, run on the host (verification hook, see set_cpu_impl) ------------------
template <typename S, typename T>
void device_bodies_forward(Op op, const RoiParams& p, int nt) {
  const int64_t total = p.K * p.Cp * p.PH * p.PW;
  const bool ps = op == Op::PsAlign || op == Op::PsPool;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t idx = 0; idx < total; ++idx) {
    const int64_t j = idx % p.PW, i = (idx / p.PW) % p.PH, c = (idx / (p.PW * p.PH)) % p.Cp;
    const int64_t k = idx / (p.PW * p.PH * p.Cp);
    S* o = pooled_at<S>(p, k, c) + i * p.ps[2] + j * p.ps[3];
    if (op == Op::Align || op == Op::PsAlign) {
      store(o, align_fwd_element<S, T>(p, ps, k, c, i, j));
    } else {
      int32_t arg;
      store(o, pool_fwd_element<S, T>(p, ps, k, c, i, j, &arg));
      if (!ps) p.argmax[idx] = arg;
    }
  }
}

template <typename S, typename T>
void device_bodies_backward(Op op, const RoiParams& p, bool columns, int nt) {
  const bool ps = op == Op::PsAlign || op == Op::PsPool;
  if (!columns) {  // the atomic kernels' bodies; host accumulate() is a plain add: serial
    const int64_t total = p.K * p.Cp * p.PH * p.PW;
    for (int64_t idx = 0; idx < total; ++idx) {
      const int64_t j = idx % p.PW, i = (idx / p.PW) % p.PH, c = (idx / (p.PW * p.PH)) % p.Cp;
      const int64_t k = idx / (p.PW * p.PH * p.Cp);
      if (op == Op::Align || op == Op::PsAlign) align_bwd_element<S, T>(p, ps, k, c, i, j);
      else pool_bwd_element<S, T>(p, ps, k, c, i, j);
    }
    return;
  }
  const int L = ps || op == Op::Pool || op == Op::PsPool ? 1 : p.num_levels;
  for (int l = 0; l < L; ++l) {
    const int64_t cols = p.N * p.C * p.lv[l].W;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t idx = 0; idx < cols; ++idx) {
      const int64_t x = idx % p.lv[l].W, ch = (idx / p.lv[l].W) % p.C, n = idx / (p.lv[l].W * p.C);
      if (op == Op::Align || op == Op::PsAlign) align_bwd_column<S, T>(p, ps, l, n, ch, x);
      else if (op == Op::Pool) pool_bwd_column<S, T>(p, n, ch, x);
      else ps_pool_bwd_column<S, T>(p, n, ch, x);
    }
  }
}

// The loops of `op` for the storage/compute pair of `dtype`: the optimised ones, or the device
// bodies in the verification modes (set_cpu_impl); nothing for an empty output.
template <bool backward>
bool cpu_run(Op op, int dtype, const RoiParams& p, int num_threads) {
  const int nt = std::max(1, num_threads);
  const int mode = g_impl.load();
  return dispatch_dtype(dtype, [&](auto s_tag, auto t_tag) {
    using S = typename decltype(s_tag)::type;
    using T = typename decltype(t_tag)::type;
    if (p.K <= 0 || p.Cp <= 0 || p.PH <= 0 || p.PW <= 0) return;
    const bool ps = op == Op::PsAlign || op == Op::PsPool;
    const bool align = op == Op::Align || op == Op::PsAlign;
    if constexpr (backward) {
      if (mode != 0) return device_bodies_backward<S, T>(op, p, mode == 2, nt);
      return align ? align_backward<S, T>(p, ps, nt) : pool_backward<S, T>(p, ps, nt);
    } else {
      if (mode != 0) return device_bodies_forward<S, T>(op, p, nt);
      return align ? align_forward<S, T>(p, ps, nt) : pool_forward<S, T>(p, ps, nt);
    }
  });
}

}  // namespace

void set_cpu_impl(int mode) { g_impl.store(mode); }
int cpu_impl() { return g_impl.load(); }

bool cpu_forward(Op op, int dtype, const RoiParams& p, int num_threads) {
  return cpu_run<false>(op, dtype, p, num_threads);
}

bool cpu_backward(Op op, int dtype, const RoiParams& p, int num_threads) {
  return cpu_run<true>(op, dtype, p, num_threads);
}

}  // namespace roi
}  // namespace pygen
