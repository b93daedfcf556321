// RoI pooling family: per-element bodies shared by the CUDA kernels (roi.cu) and the OpenMP CPU
// loops (roi_cpu.cpp). Every function here is HOST_DEVICE and the semantics are exactly those of
// pygen/ref/roi.py (the float64 oracle); the formulas are restated where they are implemented.
//
// Layouts (strides in elements, any layout unless stated):
//   input / grad_input  [N, C, H, W]           Plane (roi_params.h); grad buffers are float32
//                                              (float64 for float64 input) and zero-filled
//   rois                [K, 5] contiguous      (batch_index, x1, y1, x2, y2), compute type T
//   out / grad_out      [K, Cp, PH, PW]        Cp = C (align/pool), C / (PH*PW) (PS variants)
//   argmax              [K, C, PH, PW] int32   h*W + w of the max; -1: empty bin, or none above -FLT_MAX
//
// roi_align, bin (i, j) of RoI k, o = 0.5 if aligned else 0:
//   x0 = x1*s - o,  rw = x2*s - o - x0  (rw = max(rw, 1) unless aligned), same for y
//   bw = rw / PW,  gw = sampling_ratio > 0 ? sampling_ratio : ceil(rw / PW)
//   out = 1/max(gh*gw, 1) * sum_{a<gh, b<gw} bilinear(y0 + i*bh + (a+.5)*bh/gh,
//                                                      x0 + j*bw + (b+.5)*bw/gw)
// bilinear(y, x): 0 unless -1 <= y <= H and -1 <= x <= W; else y, x clamped to >= 0, the low
// neighbour clamped to the last row/column, and the four neighbours blended with
// w1 = hy*hx, w2 = hy*lx, w3 = ly*hx, w4 = ly*lx (torchvision's order, kept for rounding).
// roi_pool: start = round_half_away(x1*s), len = max(round(x2*s) - start + 1, 1), bin j covers
//   [floor(j*len/PW), ceil((j+1)*len/PW)) + start clipped to [0, W]; out = max (0 if empty).
// ps_roi_pool: len = max(round(x2*s) - start, 1), mean over the bin; ps_roi_align: o = 0.5, no
//   minimum size. PS bin (i, j) of output channel c reads input channel (c*PH + i)*PW + j.
// multi_scale: RoI k uses level clamp(floor(lvl0 + log2(sqrt(area)/s0) + 1e-6), k_min, k_max)
//   - k_min (area <= 0 -> first level), then roi_align on that level; the rule arrives as area
//   thresholds computed on the host (fpn_level below), so no sqrt or log2 runs here.
#pragma once

#include <cmath>
#include <cstdint>

#include "../common/dtype.h"
#include "../common/macros.h"
#include "roi_params.h"

namespace pygen {
namespace roi {

// ---- scalar helpers: overloads instead of std:: so one spelling compiles for host and device --
HOST_DEVICE float floor_(float v) { return floorf(v); }
HOST_DEVICE double floor_(double v) { return ::floor(v); }
HOST_DEVICE float ceil_(float v) { return ceilf(v); }
HOST_DEVICE double ceil_(double v) { return ::ceil(v); }
HOST_DEVICE double div_(double a, double b) { return a / b; }

// float32 division, correctly rounded. On the device this is the fast path
// that nvcc emits for `/` (MUFU approximation + FMA refinement), without the call to
// the slow-path subroutine that handles denormal, infinite or overflowing operands: that call
// makes ptxas save live registers to local memory (spills) in every kernel that divides. The
// operands here never need the slow path: divisors are bin counts, pooled sizes, sample
// counts or areas (>= 1), and dividends are finite box coordinates below
// 2^40. (A denormal dividend — a box thinner than 1e-38 px — may round differently; the
// result is ~0 either way.)
HOST_DEVICE float div_(float a, float b) {
#if PYGEN_DEVICE_PASS
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(b));
  y = __fmaf_rn(y, __fmaf_rn(-b, y, 1.0f), y);  // one Newton step on 1/b
  const float q = __fmul_rn(a, y);
  return __fmaf_rn(y, __fmaf_rn(-b, q, a), q);  // one residual correction: rounds correctly
#else
  return a / b;
#endif
}

HOST_DEVICE float fabs_(float v) { return fabsf(v); }
HOST_DEVICE double fabs_(double v) { return ::fabs(v); }
template <typename X> HOST_DEVICE X min_(X a, X b) { return b < a ? b : a; }
template <typename X> HOST_DEVICE X max_(X a, X b) { return a < b ? b : a; }

// Largest sampling grid per bin axis. Only guards the float->int conversion against undefined
// behaviour for absurd boxes; realistic boxes never come near it.
constexpr int64_t kMaxGrid = int64_t(1) << 30;
// Box coordinates are clamped to +-2^40 before rounding to an integer, for the same reason.
constexpr double kMaxCoord = 1099511627776.0;

// Batch index of a RoI row: its truncation, as torchvision and the reference (.long()) do, so
// -1 < b < N is image trunc(b) (a b in (-1, 0) is image 0); false (no output, no gradient)
// otherwise or NaN.
template <typename T>
HOST_DEVICE bool roi_batch(const T* r, int64_t N, int64_t* n) {
  const T b = r[0];
  if (!(b > T(-1) && b < static_cast<T>(N))) return false;
  *n = static_cast<int64_t>(b);
  return true;
}

// Row k of the rois and its batch index *n; nullptr (no output, no gradient) for an invalid index.
template <typename T>
HOST_DEVICE const T* roi_row(const RoiParams& p, int64_t k, int64_t* n) {
  const T* r = static_cast<const T*>(p.rois) + 5 * k;
  return roi_batch(r, p.N, n) ? r : nullptr;
}

// FPN level of a RoI as an index into p.lv (pygen.ref.roi.fpn_levels): the box area, computed in
// T like the reference (float32 boxes -> float32 math), counted against the level thresholds. The
// thresholds hold torchvision's log2 formula evaluated once on the host, so the device's sqrt, div
// and log2 rounding cannot move a box near a boundary to another level; a NaN area reaches none
// (level 0). A level past the maps given (the scales' range k_min..k_max wider than the maps, as
// with torchvision's featmap_names ['0', '2']) is -1: the RoI pools nothing (zeros, no gradient),
// as torchvision's LevelMapper leaves it, and nothing indexes outside p.lv.
template <typename T>
HOST_DEVICE int fpn_level(const T* r, const RoiParams& p) {
  if (p.num_levels <= 1) return 0;
  const double area = static_cast<double>((r[3] - r[1]) * (r[4] - r[2]));
  int l = 0;
  for (int j = 0; j < p.num_thresholds; ++j) l += area >= p.level_area[j] ? 1 : 0;
  return l < p.num_levels ? l : -1;
}

// ---- roi_align geometry -----------------------------------------------------------------------
template <typename T>
struct AlignGeom {
  T x0, y0;      // box start on the feature map
  T bw, bh;      // bin size
  int64_t gw, gh;  // samples per bin along x / y (0 when the adaptive grid is empty)
  T count;       // divisor: max(gh*gw, 1)
};

template <typename T>
HOST_DEVICE int64_t grid_size(T bin, int sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  const T g = ceil_(bin);                    // the reference's ceil(roi_size / pooled)
  if (!(g > T(0))) return 0;                 // empty (or negative) grid: no samples
  return g >= T(kMaxGrid) ? kMaxGrid : static_cast<int64_t>(g);
}

// aligned=true: half-pixel offset and no minimum size (also PS-align); false: offset 0 and the
// box forced to at least 1x1 (Mask R-CNN's legacy behaviour).
template <typename T>
HOST_DEVICE AlignGeom<T> align_geom(const T* r, T scale, bool aligned, int64_t PH, int64_t PW,
                                    int sampling_ratio) {
  const T o = aligned ? T(0.5) : T(0);
  AlignGeom<T> g;
  g.x0 = r[1] * scale - o;
  g.y0 = r[2] * scale - o;
  T rw = r[3] * scale - o - g.x0;
  T rh = r[4] * scale - o - g.y0;
  if (!aligned) {
    rw = max_(rw, T(1));
    rh = max_(rh, T(1));
  }
  g.bw = div_(rw, static_cast<T>(PW));
  g.bh = div_(rh, static_cast<T>(PH));
  g.gw = grid_size(g.bw, sampling_ratio);
  g.gh = grid_size(g.bh, sampling_ratio);
  const int64_t cnt = g.gw * g.gh;
  g.count = static_cast<T>(cnt > 1 ? cnt : 1);
  return g;
}

// Coordinate of sample s (of `grid`) in bin p: start + p*bin + (s + .5)*bin/grid, evaluated in
// the reference's order so float64 results agree to the last bit.
template <typename T>
HOST_DEVICE T sample_coord(T start, T bin, int64_t p, int64_t s, int64_t grid) {
  return start + static_cast<T>(p) * bin + div_((static_cast<T>(s) + T(0.5)) * bin, static_cast<T>(grid));
}

// One axis of torchvision's bilinear_interpolate: neighbour indices and weights.
template <typename T>
struct Tap {
  int64_t lo, hi;
  T wlo, whi;
  bool valid;
};

template <typename T>
HOST_DEVICE Tap<T> bilinear_tap(T c, int64_t size) {
  Tap<T> t;
  t.lo = t.hi = 0;
  t.wlo = t.whi = T(0);
  t.valid = c >= T(-1) && c <= static_cast<T>(size);  // false for NaN as well
  if (!t.valid) return t;
  if (c < T(0)) c = T(0);
  int64_t lo = static_cast<int64_t>(c);  // c in [0, size]: truncation is floor
  if (lo >= size - 1) {
    lo = size - 1;
    t.hi = lo;
    c = static_cast<T>(lo);
  } else {
    t.hi = lo + 1;
  }
  t.lo = lo;
  const T frac = c - static_cast<T>(lo);
  t.wlo = T(1) - frac;
  t.whi = frac;
  return t;
}

// Sum of the bilinear samples of bin (i, j) (not yet divided by count). Samples outside the
// map are skipped without reading memory, as torchvision does.
template <typename S, typename T>
HOST_DEVICE T align_bin_sum(const S* plane, const Plane& P, const AlignGeom<T>& g, int64_t i,
                            int64_t j) {
  T acc = T(0);
  for (int64_t a = 0; a < g.gh; ++a) {
    const Tap<T> ty = bilinear_tap(sample_coord(g.y0, g.bh, i, a, g.gh), P.H);
    if (!ty.valid) continue;
    const S* row_lo = plane + ty.lo * P.sH;
    const S* row_hi = plane + ty.hi * P.sH;
    for (int64_t b = 0; b < g.gw; ++b) {
      const Tap<T> tx = bilinear_tap(sample_coord(g.x0, g.bw, j, b, g.gw), P.W);
      if (!tx.valid) continue;
      const T w1 = ty.wlo * tx.wlo, w2 = ty.wlo * tx.whi, w3 = ty.whi * tx.wlo, w4 = ty.whi * tx.whi;
      acc += w1 * load<T>(row_lo + tx.lo * P.sW) + w2 * load<T>(row_lo + tx.hi * P.sW) +
             w3 * load<T>(row_hi + tx.lo * P.sW) + w4 * load<T>(row_hi + tx.hi * P.sW);
    }
  }
  return acc;
}

// ---- roi_pool / ps_roi_pool geometry --------------------------------------------------------
template <typename T>
HOST_DEVICE int64_t round_half_away(T v) {
  v = min_(max_(v, T(-kMaxCoord)), T(kMaxCoord));
  const T r = floor_(fabs_(v) + T(0.5));  // the reference's sign(v) * floor(|v| + 0.5)
  return static_cast<int64_t>(v < T(0) ? -r : r);
}

// [lo, hi) of integer bin p of `pooled` over [start, end], clipped to [0, size].
template <typename T>
HOST_DEVICE void int_bin(int64_t start, int64_t end, int plus_one, int64_t pooled, int64_t p,
                         int64_t size, int64_t* lo, int64_t* hi) {
  int64_t len = end - start + plus_one;
  if (len < 1) len = 1;
  const T bin = div_(static_cast<T>(len), static_cast<T>(pooled));
  const int64_t l = static_cast<int64_t>(floor_(static_cast<T>(p) * bin)) + start;
  const int64_t h = static_cast<int64_t>(ceil_(static_cast<T>(p + 1) * bin)) + start;
  *lo = min_(max_(l, int64_t(0)), size);
  *hi = min_(max_(h, int64_t(0)), size);
}

// Bin (i, j) of a RoI: rows [*hs, *he), columns [*ws, *we). plus_one: 1 for roi_pool, 0 for PS.
template <typename T>
HOST_DEVICE void pool_bin(const T* r, T scale, int plus_one, int64_t PH, int64_t PW, int64_t i,
                          int64_t j, int64_t H, int64_t W, int64_t* hs, int64_t* he, int64_t* ws,
                          int64_t* we) {
  const int64_t x1 = round_half_away(r[1] * scale), y1 = round_half_away(r[2] * scale);
  const int64_t x2 = round_half_away(r[3] * scale), y2 = round_half_away(r[4] * scale);
  int_bin<T>(y1, y2, plus_one, PH, i, H, hs, he);
  int_bin<T>(x1, x2, plus_one, PW, j, W, ws, we);
}

// roi_pool's max starts from -FLT_MAX, torchvision's start (in T: also for double).
template <typename T>
HOST_DEVICE constexpr T pool_max_start() {
  return T(-3.40282346638528859811704183484516925e+38f);
}

// Max over a bin as torchvision's roi_pool takes it: from -FLT_MAX, a value replaces the running
// max only when strictly greater, so the first maximum in row-major order wins and NaN, -inf (and
// -FLT_MAX itself) never do; a bin with no such value gives -FLT_MAX and arg = -1 (no gradient).
// Returns 0 and arg = -1 for an empty bin.
template <typename S, typename T>
HOST_DEVICE T bin_max(const S* plane, const Plane& P, int64_t hs, int64_t he, int64_t ws,
                      int64_t we, int32_t* arg) {
  T m = pool_max_start<T>();
  int64_t best = -1;
  for (int64_t y = hs; y < he; ++y) {
    for (int64_t x = ws; x < we; ++x) {
      const T v = load<T>(plane + y * P.sH + x * P.sW);
      if (v > m) {
        m = v;
        best = y * P.W + x;
      }
    }
  }
  *arg = static_cast<int32_t>(best);
  return he > hs && we > ws ? m : T(0);
}

// What the align elements of bin (c, i, j) of RoI k use: the RoI's level plane, its geometry and
// the offset of the (image, channel) plane the bin reads; valid = false (no output, no gradient)
// for an invalid batch index or an empty level.
template <typename T>
struct AlignBin {
  int level;  // an index, not a pointer: a pointer into the by-value kernel parameters would
              // move them to local memory
  AlignGeom<T> g;
  int64_t offset;
  bool valid;
};

template <typename T>
HOST_DEVICE AlignBin<T> align_bin(const RoiParams& p, bool ps, int64_t k, int64_t c, int64_t i, int64_t j) {
  AlignBin<T> b;
  b.valid = false;
  int64_t n;
  const T* r = roi_row<T>(p, k, &n);
  if (r == nullptr) return b;
  b.level = ps ? 0 : fpn_level(r, p);
  if (b.level < 0) return b;
  const Plane& P = p.lv[b.level];
  if (P.H <= 0 || P.W <= 0) return b;
  b.g = align_geom(r, static_cast<T>(P.scale), ps || p.aligned != 0, p.PH, p.PW, p.sampling_ratio);
  b.offset = n * P.sN + (ps ? (c * p.PH + i) * p.PW + j : c) * P.sC;
  b.valid = true;
  return b;
}

// ---- per output element: forward ------------------------------------------------------------
// Both return the value of out[k, c, i, j] (c indexes the pooled channels Cp).
template <typename S, typename T>
HOST_DEVICE T align_fwd_element(const RoiParams& p, bool ps, int64_t k, int64_t c, int64_t i,
                                int64_t j) {
  const AlignBin<T> b = align_bin<T>(p, ps, k, c, i, j);
  if (!b.valid) return T(0);
  const Plane& P = p.lv[b.level];
  return div_(align_bin_sum<S, T>(static_cast<const S*>(P.data) + b.offset, P, b.g, i, j), b.g.count);
}

template <typename S, typename T>
HOST_DEVICE T pool_fwd_element(const RoiParams& p, bool ps, int64_t k, int64_t c, int64_t i,
                               int64_t j, int32_t* arg) {
  *arg = -1;
  int64_t n;
  const T* r = roi_row<T>(p, k, &n);
  if (r == nullptr) return T(0);
  const Plane& P = p.lv[0];
  int64_t hs, he, ws, we;
  pool_bin<T>(r, static_cast<T>(P.scale), ps ? 0 : 1, p.PH, p.PW, i, j, P.H, P.W, &hs, &he, &ws, &we);
  const int64_t ch = ps ? (c * p.PH + i) * p.PW + j : c;
  const S* plane = static_cast<const S*>(P.data) + n * P.sN + ch * P.sC;
  if (!ps) return bin_max<S, T>(plane, P, hs, he, ws, we, arg);
  if (he <= hs || we <= ws) return T(0);
  T sum = T(0);
  for (int64_t y = hs; y < he; ++y)
    for (int64_t x = ws; x < we; ++x) sum += load<T>(plane + y * P.sH + x * P.sW);
  return div_(sum, static_cast<T>((he - hs) * (we - ws)));
}

// ---- per grad_out element: backward with atomics (the default CUDA path) ---------------------
template <typename T>
HOST_DEVICE void accumulate(T* dst, T v) {
#if PYGEN_DEVICE_PASS
  atomicAdd(dst, v);
#else
  *dst += v;  // host: only ever called from a serial loop (verification of the device bodies)
#endif
}

template <typename S, typename T>
HOST_DEVICE T grad_at(const RoiParams& p, int64_t k, int64_t c, int64_t i, int64_t j) {
  return load<T>(static_cast<const S*>(p.pooled) + k * p.ps[0] + c * p.ps[1] + i * p.ps[2] +
                 j * p.ps[3]);
}

template <typename S, typename T>
HOST_DEVICE void align_bwd_element(const RoiParams& p, bool ps, int64_t k, int64_t c, int64_t i,
                                   int64_t j) {
  const AlignBin<T> bin = align_bin<T>(p, ps, k, c, i, j);
  if (!bin.valid) return;
  const Plane& P = p.lv[bin.level];
  const AlignGeom<T>& g = bin.g;
  T* plane = static_cast<T*>(P.data) + bin.offset;
  const T gv = div_(grad_at<S, T>(p, k, c, i, j), g.count);
  for (int64_t a = 0; a < g.gh; ++a) {
    const Tap<T> ty = bilinear_tap(sample_coord(g.y0, g.bh, i, a, g.gh), P.H);
    if (!ty.valid) continue;
    for (int64_t b = 0; b < g.gw; ++b) {
      const Tap<T> tx = bilinear_tap(sample_coord(g.x0, g.bw, j, b, g.gw), P.W);
      if (!tx.valid) continue;
      accumulate(plane + ty.lo * P.sH + tx.lo * P.sW, (ty.wlo * tx.wlo) * gv);
      accumulate(plane + ty.lo * P.sH + tx.hi * P.sW, (ty.wlo * tx.whi) * gv);
      accumulate(plane + ty.hi * P.sH + tx.lo * P.sW, (ty.whi * tx.wlo) * gv);
      accumulate(plane + ty.hi * P.sH + tx.hi * P.sW, (ty.whi * tx.whi) * gv);
    }
  }
}

template <typename S, typename T>
HOST_DEVICE void pool_bwd_element(const RoiParams& p, bool ps, int64_t k, int64_t c, int64_t i,
                                  int64_t j) {
  int64_t n;
  const T* r = roi_row<T>(p, k, &n);
  if (r == nullptr) return;
  const Plane& P = p.lv[0];
  if (!ps) {
    // H*W < 2^31 (argmax is int32): 32-bit division, which the device inlines (a 64-bit one
    // is a called subroutine that makes ptxas spill).
    const int32_t a = p.argmax[((k * p.Cp + c) * p.PH + i) * p.PW + j];
    if (a < 0 || a >= P.H * P.W) return;  // empty bin, or an argmax from elsewhere
    const int32_t W32 = static_cast<int32_t>(P.W);
    T* plane = static_cast<T*>(P.data) + n * P.sN + c * P.sC;
    accumulate(plane + int64_t(a / W32) * P.sH + int64_t(a % W32) * P.sW, grad_at<S, T>(p, k, c, i, j));
    return;
  }
  int64_t hs, he, ws, we;
  pool_bin<T>(r, static_cast<T>(P.scale), 0, p.PH, p.PW, i, j, P.H, P.W, &hs, &he, &ws, &we);
  if (he <= hs || we <= ws) return;
  T* plane = static_cast<T*>(P.data) + n * P.sN + ((c * p.PH + i) * p.PW + j) * P.sC;
  const T gv = div_(grad_at<S, T>(p, k, c, i, j), static_cast<T>((he - hs) * (we - ws)));
  for (int64_t y = hs; y < he; ++y)
    for (int64_t x = ws; x < we; ++x) accumulate(plane + y * P.sH + x * P.sW, gv);
}

// ---- per grad_input column: deterministic backward (no atomics) ------------------------------
// One caller owns column x of plane (level l, image n, channel ch) and adds every contribution
// to it in a fixed order (RoI index, then bin, then sample), so results are bitwise identical run
// to run. Each RoI is first rejected cheaply by batch, level and horizontal extent.

// Columns that the samples of bins [j0, j1) can touch, with one column of slack for rounding.
template <typename T>
HOST_DEVICE bool align_column_hit(const AlignGeom<T>& g, int64_t j0, int64_t j1, int64_t W,
                                  int64_t x) {
  const T xa = g.x0 + static_cast<T>(j0) * g.bw, xb = g.x0 + static_cast<T>(j1) * g.bw;
  const T lo = min_(xa, xb), hi = max_(xa, xb);
  if (hi < T(-2) || lo > static_cast<T>(W + 1)) return false;
  const T first = min_(floor_(max_(lo, T(0))), static_cast<T>(W - 1)) - T(1);
  const T last = min_(floor_(max_(hi, T(0))) + T(1), static_cast<T>(W - 1)) + T(1);
  const T xf = static_cast<T>(x);
  return xf >= first && xf <= last;
}

template <typename S, typename T>
HOST_DEVICE void align_bwd_column(const RoiParams& p, bool ps, int l, int64_t n, int64_t ch,
                                  int64_t x) {
  const Plane& P = p.lv[l];
  if (P.H <= 0 || P.W <= 0) return;
  T* col = static_cast<T*>(P.data) + n * P.sN + ch * P.sC + x * P.sW;
  int64_t c = ch, i0 = 0, i1 = p.PH, j0 = 0, j1 = p.PW;
  if (ps) {  // input channel ch receives gradient from exactly one (c, i, j); sizes < 2^31
    const int32_t ch32 = static_cast<int32_t>(ch), PW32 = static_cast<int32_t>(p.PW);
    const int32_t PH32 = static_cast<int32_t>(p.PH);
    j0 = ch32 % PW32;
    i0 = (ch32 / PW32) % PH32;
    c = ch32 / (PH32 * PW32);
    if (c >= p.Cp) return;
    i1 = i0 + 1;
    j1 = j0 + 1;
  }
  const T* rois = static_cast<const T*>(p.rois);
  for (int64_t k = 0; k < p.K; ++k) {
    const T* r = rois + 5 * k;
    int64_t nk;
    if (!roi_batch(r, p.N, &nk) || nk != n) continue;
    if (!ps && fpn_level(r, p) != l) continue;
    const AlignGeom<T> g =
        align_geom(r, static_cast<T>(P.scale), ps || p.aligned != 0, p.PH, p.PW, p.sampling_ratio);
    if (g.gh <= 0 || g.gw <= 0 || !align_column_hit(g, j0, j1, P.W, x)) continue;
    for (int64_t j = j0; j < j1; ++j) {
      for (int64_t b = 0; b < g.gw; ++b) {
        const Tap<T> tx = bilinear_tap(sample_coord(g.x0, g.bw, j, b, g.gw), P.W);
        if (!tx.valid) continue;
        for (int side = 0; side < 2; ++side) {  // low neighbour first, as the atomic path adds
          if ((side ? tx.hi : tx.lo) != x) continue;
          const T wx = side ? tx.whi : tx.wlo;
          for (int64_t i = i0; i < i1; ++i) {
            const T gv = div_(grad_at<S, T>(p, k, c, i, j), g.count);
            for (int64_t a = 0; a < g.gh; ++a) {
              const Tap<T> ty = bilinear_tap(sample_coord(g.y0, g.bh, i, a, g.gh), P.H);
              if (!ty.valid) continue;
              col[ty.lo * P.sH] += (ty.wlo * wx) * gv;
              col[ty.hi * P.sH] += (ty.whi * wx) * gv;
            }
          }
        }
      }
    }
  }
}

// roi_pool: the bin geometry is not an argument of the backward (no spatial_scale), so the
// column owner scans the argmax of every bin of the RoIs of its image.
template <typename S, typename T>
HOST_DEVICE void pool_bwd_column(const RoiParams& p, int64_t n, int64_t c, int64_t x) {
  const Plane& P = p.lv[0];
  T* col = static_cast<T*>(P.data) + n * P.sN + c * P.sC + x * P.sW;
  const T* rois = static_cast<const T*>(p.rois);
  const int64_t HW = P.H * P.W;
  const int32_t W32 = static_cast<int32_t>(P.W), x32 = static_cast<int32_t>(x);
  for (int64_t k = 0; k < p.K; ++k) {
    int64_t nk;
    if (!roi_batch(rois + 5 * k, p.N, &nk) || nk != n) continue;
    const int32_t* am = p.argmax + (k * p.Cp + c) * p.PH * p.PW;
    const int32_t* a_ij = am;  // walked in step with (i, j): no index division anywhere
    for (int64_t i = 0; i < p.PH; ++i) {
      for (int64_t j = 0; j < p.PW; ++j) {
        const int32_t a = *a_ij++;
        if (a < 0 || a >= HW || a % W32 != x32) continue;
        col[int64_t(a / W32) * P.sH] += grad_at<S, T>(p, k, c, i, j);
      }
    }
  }
}

template <typename S, typename T>
HOST_DEVICE void ps_pool_bwd_column(const RoiParams& p, int64_t n, int64_t ch, int64_t x) {
  const Plane& P = p.lv[0];
  const int32_t ch32 = static_cast<int32_t>(ch), PW32 = static_cast<int32_t>(p.PW);
  const int32_t PH32 = static_cast<int32_t>(p.PH);
  const int64_t j = ch32 % PW32, i = (ch32 / PW32) % PH32, c = ch32 / (PH32 * PW32);
  if (c >= p.Cp) return;
  T* col = static_cast<T*>(P.data) + n * P.sN + ch * P.sC + x * P.sW;
  const T* rois = static_cast<const T*>(p.rois);
  for (int64_t k = 0; k < p.K; ++k) {
    const T* r = rois + 5 * k;
    int64_t nk;
    if (!roi_batch(r, p.N, &nk) || nk != n) continue;
    int64_t hs, he, ws, we;
    pool_bin<T>(r, static_cast<T>(P.scale), 0, p.PH, p.PW, i, j, P.H, P.W, &hs, &he, &ws, &we);
    if (x < ws || x >= we || he <= hs) continue;
    const T gv = div_(grad_at<S, T>(p, k, c, i, j), static_cast<T>((he - hs) * (we - ws)));
    for (int64_t y = hs; y < he; ++y) col[y * P.sH] += gv;
  }
}

}  // namespace roi
}  // namespace pygen
