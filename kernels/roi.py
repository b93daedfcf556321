"""Triton backend of the RoI family: roi_align, roi_pool, ps_roi_align, ps_roi_pool and
multi_scale_roi_align (FPN), forward and backward. Semantics are exactly pygen.ref.roi's (the
float64 oracle, torchvision's math); the launcher contract is docs/ARCHITECTURE.md's.

Layouts
-------
input / features[l] : [N, C, H, W], any strides (NCHW and channels_last are read in place)
rois                : [K, 5] rows (batch_index, x1, y1, x2, y2), any strides
out                 : [K, C', PH, PW] contiguous, input dtype (C' = C, or C // (PH*PW) for PS)
argmax (roi_pool)   : [K, C, PH, PW] int32, flat index h*W + w of the max, -1 for an empty bin
grad_input          : [N, C, H, W] contiguous float32 (float64 for float64), zero-filled by the
                      caller; the kernels only add into it

Math (k a RoI, (i, j) a bin, n = trunc(batch_index); RoIs with n outside [0, N) give 0)
----
roi_align:  o = 0.5 if aligned else 0,  x0 = x1*s - o,  w = x2*s - o - x0  (w = max(w, 1)
            unless aligned), same for y;  bh, bw = h/PH, w/PW;
            gh = sampling_ratio if > 0 else ceil(h/PH)  (a per-RoI, data-dependent trip count)
            out[k,c,i,j] = 1/max(gh*gw, 1) * sum_{a<gh, b<gw} bilinear(in[n,c],
                               y0 + i*bh + (a+.5)*bh/gh,  x0 + j*bw + (b+.5)*bw/gw)
            bilinear(y, x): 0 if y < -1 or y > H or x < -1 or x > W; else y, x clamped to >= 0,
            low = floor, high = low + 1, both clamped to the last row/column, blended.
ps_roi_align: roi_align with o = 0.5, no minimum size, and bin (i, j) of output channel c reads
            input channel c_in = (c*PH + i)*PW + j = c*PH*PW + p   (p = i*PW + j).
roi_pool:   integer bins: x1' = round_half_away(x1*s) ...,  len = max(x2' - x1' + 1, 1),
            bin rows [floor(i*len/PH), ceil((i+1)*len/PH)) + y1' clipped to [0, H];
            out = max over the bin (0 if empty), argmax = first max in row-major order.
ps_roi_pool: as roi_pool with len = max(x2' - x1', 1), the PS channel map, and the mean.
multi_scale_roi_align: level l_k = clamp(floor(L0 + log2(sqrt(area_k)/S0) + 1e-6), k_min, k_max)
            - k_min (non-positive area -> first level), then roi_align on features[l_k].
Backward of the averaging ops scatters g/count * (wy*wx) to the 4 neighbours of every sample
(g/area to every pixel of the bin for ps_roi_pool, g to argmax for roi_pool).

Kernels and their grids
-----------------------
forward, backward (atomic): one program per (RoI k, channel block, bin block). The RoI's box,
    sample grid and bilinear weights are computed once per program as [BLOCK_P] vectors and
    reused by the whole [BLOCK_C, BLOCK_P] tile, so there is no per-element integer division.
    Channels go on the fast (coalesced) axis when the input's channel stride is 1.
backward, deterministic=True (``*_bwd_gather_kernel``): a gather, no atomics. One program per
    (pixel tile, image n, channel block) owns its grad_input tile in registers, walks the RoIs
    of image n in index order (blocks of ROI_BLOCK, keeping only those whose support reaches the
    tile), adds their contributions in a fixed order and stores once: bitwise reproducible.
    roi_align's gradient is separable: d out[k,c,i,j] / d in[n,c,y,x] = Wy[i,y] * Wx[j,x] / count
    with Wy[i,y] = sum_a (weight of row y from sample row (i, a)), which is how it is computed.

Precision: everything in float32 (float64 when the input is float64, so gradcheck works);
f16/bf16 are upcast right after the load. The integer bins of roi_pool / ps_roi_pool are computed
in float64 as the oracle does: ceil(7 * (29/7)) is 30 in float64 but 29 in exact arithmetic, and
float32 differs elsewhere (len 57), so only float64 reproduces the oracle's bins.
"""
from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------------
# shared device helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _c2(v, C_FAST: tl.constexpr):
    # per-channel vector -> operand of a [tile] (channels on axis 1 when C_FAST, else axis 0)
    if C_FAST:
        r = v[None, :]
    else:
        r = v[:, None]
    return r


@triton.jit
def _p2(v, C_FAST: tl.constexpr):
    # per-bin vector -> operand of a [tile]
    if C_FAST:
        r = v[:, None]
    else:
        r = v[None, :]
    return r


@triton.jit
def _tile_zeros(BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, C_FAST: tl.constexpr, DT: tl.constexpr):
    if C_FAST:
        z = tl.zeros([BLOCK_P, BLOCK_C], DT)
    else:
        z = tl.zeros([BLOCK_C, BLOCK_P], DT)
    return z


@triton.jit
def _roi_row(rois_ptr, r, roi_stride, roi_stride_f, mask, DT: tl.constexpr):
    # works for a scalar RoI index or a vector of them (masked lanes read as batch -1)
    base = rois_ptr + r.to(tl.int64) * roi_stride
    bf = tl.load(base, mask=mask, other=-1.0).to(DT)
    x1 = tl.load(base + roi_stride_f, mask=mask, other=0.0).to(DT)
    y1 = tl.load(base + 2 * roi_stride_f, mask=mask, other=0.0).to(DT)
    x2 = tl.load(base + 3 * roi_stride_f, mask=mask, other=0.0).to(DT)
    y2 = tl.load(base + 4 * roi_stride_f, mask=mask, other=0.0).to(DT)
    return bf, x1, y1, x2, y2


@triton.jit
def _batch(bf, N):
    # trunc(bf) in [0, N) <=> -1 < bf < N; test before the int cast so garbage never indexes
    ok = (bf > -1.0) & (bf < N)
    return tl.where(ok, bf, 0.0).to(tl.int32), ok


@triton.jit
def _scale(hi, lo, DT: tl.constexpr):
    # fp32 kernel arguments cannot carry a double; hi + lo restores it for float64 math
    if DT == tl.float64:
        s = tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)
    else:
        s = hi
    return s


@triton.jit
def _align_box(x1, y1, x2, y2, scale, ALIGNED: tl.constexpr):
    # same operation order as the oracle: x0 = x1*s - o, w = x2*s - o - x0
    if ALIGNED:
        x0 = x1 * scale - 0.5
        y0 = y1 * scale - 0.5
        rw = x2 * scale - 0.5 - x0
        rh = y2 * scale - 0.5 - y0
    else:
        x0 = x1 * scale
        y0 = y1 * scale
        rw = tl.maximum(x2 * scale - x0, 1.0)
        rh = tl.maximum(y2 * scale - y0, 1.0)
    return x0, y0, rw, rh


@triton.jit
def _grid(extent, pooled, sampling_ratio):
    # adaptive trip count ceil(extent / pooled). Triton's fp32 '/' is approximate (div.full),
    # so the quotient is corrected with exact products: 14 / 7 must give 2 samples, never 3.
    # A negative count means "no samples" like 0; the clamp keeps the int cast defined.
    q = tl.ceil(extent.to(tl.float32) / pooled).to(extent.dtype)
    q = tl.where((q - 1.0) * pooled >= extent, q - 1.0, q)
    q = tl.where(q * pooled < extent, q + 1.0, q)
    adaptive = tl.minimum(tl.maximum(q, 0.0), 16777216.0).to(tl.int32)
    return tl.where(sampling_ratio > 0, adaptive * 0 + sampling_ratio, adaptive)


@triton.jit
def _bilinear_axis(coord, size):
    # one axis of torchvision's bilinear_interpolate: indices, weights, in-range flag
    valid = (coord >= -1.0) & (coord <= size)
    c = tl.minimum(tl.maximum(coord, 0.0), size)
    low = tl.floor(c).to(tl.int32)
    edge = low >= size - 1
    low = tl.where(edge, size - 1, low)
    high = tl.where(edge, low, low + 1)
    c = tl.where(edge, low.to(c.dtype), c)
    frac = c - low.to(c.dtype)
    return low, high, tl.where(valid, 1.0 - frac, 0.0), tl.where(valid, frac, 0.0), valid


@triton.jit
def _overlaps(start, extent, t0, T: tl.constexpr):
    # conservative: does [start, start + extent] (either sign), widened by the bilinear
    # neighbour and rounding slack, reach the tile rows [t0, t0 + T)?
    lo = tl.minimum(start, start + extent)
    hi = tl.maximum(start, start + extent)
    return (hi + 2.0 >= t0) & (lo - 2.0 <= t0 + T)


@triton.jit
def _round_half_away(v):
    # the oracle's sign(v) * floor(|v| + 0.5), in float64
    r = tl.floor(tl.abs(v) + 0.5)
    return tl.where(v < 0, -r, r)


@triton.jit
def _int_box(lo_coord, hi_coord, scale64, PLUS_ONE: tl.constexpr):
    start = _round_half_away(lo_coord.to(tl.float64) * scale64)
    end = _round_half_away(hi_coord.to(tl.float64) * scale64)
    return start, tl.maximum(end - start + PLUS_ONE, 1.0)


@triton.jit
def _div_exact(a, b):
    """fl64(a / b), correctly rounded, for integer-valued float64 1 <= a < 2^53, 1 <= b < 2^26,
    with no division instruction: ptxas expands div.rn.f64 with a subroutine call whose register
    saves show up as spills. Newton's reciprocal gives q within an ulp or two; the exact residual
    a - q*b (one fma: it is representable) then picks the nearest of q and its two neighbours.
    Checked against numpy's a / b for b <= 129 and a < 2^22 (all pairs), larger b and a."""
    r = (1.0 / b.to(tl.float32)).to(tl.float64)
    r = r * (2.0 - b * r)
    r = r * (2.0 - b * r)
    q = a * r
    q = q + tl.fma(-q, b, a) * r
    qi = q.to(tl.int64, bitcast=True)
    qd = (qi - 1).to(tl.float64, bitcast=True)
    qu = (qi + 1).to(tl.float64, bitcast=True)
    rq = tl.abs(tl.fma(-q, b, a))
    rd = tl.abs(tl.fma(-qd, b, a))
    ru = tl.abs(tl.fma(-qu, b, a))
    best = tl.where(rd < rq, qd, q)
    return tl.where(ru < tl.minimum(rd, rq), qu, best)


@triton.jit
def _int_bins(idx, pooled, start, length, size):
    # bin [lo, hi) of an integer-bin pool along one axis, clipped to [0, size]; float64 like the
    # oracle (see the module docstring), clamped before the int cast
    bin_size = _div_exact(length, tl.cast(pooled, tl.float64))
    lo = tl.floor(idx.to(tl.float64) * bin_size) + start
    hi = tl.ceil((idx + 1).to(tl.float64) * bin_size) + start
    lo = tl.minimum(tl.maximum(lo, 0.0), size).to(tl.int32)
    hi = tl.minimum(tl.maximum(hi, 0.0), size).to(tl.int32)
    return lo, hi


@triton.jit
def _fpn_level(x1, y1, x2, y2, canonical_scale, canonical_level, k_min, k_max):
    # pygen.ref.roi.fpn_levels, in float32 like the oracle with float32 rois; the 1e-6 also
    # absorbs the GPU's approximate log2 at exact powers of two
    x1 = x1.to(tl.float32)
    area = (x2.to(tl.float32) - x1) * (y2.to(tl.float32) - y1.to(tl.float32))
    pos = area > 0
    s = tl.sqrt_rn(tl.where(pos, area, 1.0))
    lvl = tl.floor(canonical_level + tl.log2(s / canonical_scale) + 1e-6)
    lvl = tl.where(pos, lvl, k_min)
    lvl = tl.minimum(tl.maximum(lvl, k_min), k_max)
    return (lvl - k_min).to(tl.int32)


# ----------------------------------------------------------------------------------------------
# bodies shared by the per-RoI kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _align_sum(feat_ptr, H, W, stride_c, stride_h, stride_w, y0, x0, rh, rw, gh, gw,
               c, cmask, p, pmask, PH, PW,
               PS: tl.constexpr, C_FAST: tl.constexpr, DT: tl.constexpr,
               BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Sum over the sample grid of the bilinear values, for a [channels x bins] tile."""
    i = p // PW
    j = p - i * PW
    bin_h = rh / PH
    bin_w = rw / PW
    ys = y0 + i.to(DT) * bin_h
    xs = x0 + j.to(DT) * bin_w
    if PS:
        chan = _c2(c * (PH * PW) * stride_c, C_FAST) + _p2(p * stride_c, C_FAST)
    else:
        chan = _c2(c * stride_c, C_FAST) + _p2(p * 0, C_FAST)
    live = _c2(cmask, C_FAST) & _p2(pmask, C_FAST)
    acc = _tile_zeros(BLOCK_C, BLOCK_P, C_FAST, DT)
    for sy in range(gh):
        y = ys + (sy + 0.5) * bin_h / gh
        yl, yh, wyl, wyh, vy = _bilinear_axis(y, H)
        row_l = yl * stride_h
        row_h = yh * stride_h
        for sx in range(gw):
            x = xs + (sx + 0.5) * bin_w / gw
            xl, xh, wxl, wxh, vx = _bilinear_axis(x, W)
            m = live & _p2(vy & vx, C_FAST)
            col_l = xl * stride_w
            col_h = xh * stride_w
            v = tl.load(feat_ptr + chan + _p2(row_l + col_l, C_FAST), mask=m, other=0.0).to(DT)
            acc += _p2(wyl * wxl, C_FAST) * v
            v = tl.load(feat_ptr + chan + _p2(row_l + col_h, C_FAST), mask=m, other=0.0).to(DT)
            acc += _p2(wyl * wxh, C_FAST) * v
            v = tl.load(feat_ptr + chan + _p2(row_h + col_l, C_FAST), mask=m, other=0.0).to(DT)
            acc += _p2(wyh * wxl, C_FAST) * v
            v = tl.load(feat_ptr + chan + _p2(row_h + col_h, C_FAST), mask=m, other=0.0).to(DT)
            acc += _p2(wyh * wxh, C_FAST) * v
    return acc


@triton.jit
def _align_scatter(grad_ptr, H, W, g, y0, x0, rh, rw, gh, gw, c, cmask, p, pmask, PH, PW,
                   PS: tl.constexpr, DT: tl.constexpr):
    """Atomic backward of _align_sum: g is the [BLOCK_C, BLOCK_P] tile of grad_out / count;
    grad_ptr points at image n of a contiguous NCHW buffer."""
    i = p // PW
    j = p - i * PW
    bin_h = rh / PH
    bin_w = rw / PW
    ys = y0 + i.to(DT) * bin_h
    xs = x0 + j.to(DT) * bin_w
    if PS:
        chan = (c * (PH * PW) * H * W)[:, None] + (p * H * W)[None, :]
    else:
        chan = (c * H * W)[:, None] + (p * 0)[None, :]
    live = cmask[:, None] & pmask[None, :]
    for sy in range(gh):
        y = ys + (sy + 0.5) * bin_h / gh
        yl, yh, wyl, wyh, vy = _bilinear_axis(y, H)
        for sx in range(gw):
            x = xs + (sx + 0.5) * bin_w / gw
            xl, xh, wxl, wxh, vx = _bilinear_axis(x, W)
            m = live & (vy & vx)[None, :]
            base = grad_ptr + chan
            tl.atomic_add(base + (yl * W + xl)[None, :], g * (wyl * wxl)[None, :], mask=m, sem="relaxed")
            tl.atomic_add(base + (yl * W + xh)[None, :], g * (wyl * wxh)[None, :], mask=m, sem="relaxed")
            tl.atomic_add(base + (yh * W + xl)[None, :], g * (wyh * wxl)[None, :], mask=m, sem="relaxed")
            tl.atomic_add(base + (yh * W + xh)[None, :], g * (wyh * wxh)[None, :], mask=m, sem="relaxed")


@triton.jit
def _align_fwd_program(feat_ptr, N, C, H, W, stride_n, stride_c, stride_h, stride_w,
                       bf, x1, y1, x2, y2, ok_extra, scale, sampling_ratio, out_ptr, k, pid1, PH, PW,
                       ALIGNED: tl.constexpr, PS: tl.constexpr, C_FAST: tl.constexpr,
                       DT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """One (RoI, channel block, bin block) program of roi_align / ps_roi_align; C = out channels."""
    P = PH * PW
    n_pb = tl.cdiv(P, BLOCK_P)
    cb = pid1 // n_pb
    pb = pid1 - cb * n_pb
    b, ok = _batch(bf, N)
    ok = ok & ok_extra
    x0, y0, rw, rh = _align_box(x1, y1, x2, y2, scale, ALIGNED)
    gh = tl.where(ok, _grid(rh, PH, sampling_ratio), 0)  # no samples -> zeros, nothing read
    gw = _grid(rw, PW, sampling_ratio)
    count = tl.maximum(gh * gw, 1).to(DT)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = c < C
    pmask = p < P
    acc = _align_sum(feat_ptr + b.to(tl.int64) * stride_n, H, W, stride_c, stride_h, stride_w,
                     y0, x0, rh, rw, gh, gw, c, cmask, p, pmask, PH, PW,
                     PS, C_FAST, DT, BLOCK_C, BLOCK_P)
    out_off = k.to(tl.int64) * C * P + _c2(c * P, C_FAST) + _p2(p, C_FAST)
    tl.store(out_ptr + out_off, acc / count, mask=_c2(cmask, C_FAST) & _p2(pmask, C_FAST))


@triton.jit
def _align_bwd_program(grad_out_ptr, go_s0, go_s1, go_s2, go_s3, grad_ptr, N, C, H, W,
                       bf, x1, y1, x2, y2, ok_extra, scale, sampling_ratio, k, pid1, PH, PW,
                       ALIGNED: tl.constexpr, PS: tl.constexpr, DT: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Atomic backward program; C = channels of grad_out; grad_ptr: contiguous NCHW, C_in = C*P
    for PS."""
    P = PH * PW
    n_pb = tl.cdiv(P, BLOCK_P)
    cb = pid1 // n_pb
    pb = pid1 - cb * n_pb
    b, ok = _batch(bf, N)
    ok = ok & ok_extra
    x0, y0, rw, rh = _align_box(x1, y1, x2, y2, scale, ALIGNED)
    gh = tl.where(ok, _grid(rh, PH, sampling_ratio), 0)
    gw = _grid(rw, PW, sampling_ratio)
    count = tl.maximum(gh * gw, 1).to(DT)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = c < C
    pmask = p < P
    i = p // PW
    j = p - i * PW
    g_off = k.to(tl.int64) * go_s0 + (c * go_s1)[:, None] + (i * go_s2 + j * go_s3)[None, :]
    g = tl.load(grad_out_ptr + g_off, mask=cmask[:, None] & pmask[None, :], other=0.0).to(DT) / count
    if PS:
        c_in = C * P
    else:
        c_in = C
    _align_scatter(grad_ptr + b.to(tl.int64) * c_in * H * W, H, W, g, y0, x0, rh, rw, gh, gw,
                   c, cmask, p, pmask, PH, PW, PS, DT)


# ----------------------------------------------------------------------------------------------
# bodies shared by the deterministic gather kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _align_gather_roi(acc, go_ptr, go_s1, go_s2, go_s3, c, cmask, rows, cols, ty0, tx0,
                      y0, x0, rh, rw, gh, gw, count, H, W, PH, PW,
                      DT: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Add RoI's roi_align gradient to the tile: acc[c, t] += sum_ij g[c,i,j] Wy[i,row] Wx[j,col]."""
    bin_h = rh / PH
    bin_w = rw / PW
    for i in range(PH):
        ya = y0 + i * bin_h
        if _overlaps(ya, bin_h, ty0, TILE_H):
            wy = tl.zeros([TILE_H * TILE_W], DT)
            for sy in range(gh):
                yl, yh, wl, wh, _v = _bilinear_axis(ya + (sy + 0.5) * bin_h / gh, H)
                wy += tl.where(rows == yl, wl, 0.0) + tl.where(rows == yh, wh, 0.0)
            for j in range(PW):
                xa = x0 + j * bin_w
                if _overlaps(xa, bin_w, tx0, TILE_W):
                    wx = tl.zeros([TILE_H * TILE_W], DT)
                    for sx in range(gw):
                        xl, xh, wl, wh, _v = _bilinear_axis(xa + (sx + 0.5) * bin_w / gw, W)
                        wx += tl.where(cols == xl, wl, 0.0) + tl.where(cols == xh, wh, 0.0)
                    g = tl.load(go_ptr + c * go_s1 + i * go_s2 + j * go_s3, mask=cmask, other=0.0)
                    acc += (g.to(DT) / count)[:, None] * (wy * wx)[None, :]
    return acc


@triton.jit
def _ps_align_gather_roi(acc, go_ptr, go_s1, go_s2, go_s3, co, ci, cj, cmask, rows, cols,
                         y0, x0, rh, rw, gh, gw, count, H, W, PH, PW, DT: tl.constexpr):
    """Same for ps_roi_align: input channel lane (co, ci, cj) only sees bin (ci, cj) of co."""
    bin_h = rh / PH
    bin_w = rw / PW
    ys = y0 + ci.to(DT) * bin_h
    xs = x0 + cj.to(DT) * bin_w
    wy = tl.zeros_like(acc)
    for sy in range(gh):
        yl, yh, wl, wh, _v = _bilinear_axis(ys + (sy + 0.5) * bin_h / gh, H)
        wy += tl.where(rows[None, :] == yl[:, None], wl[:, None], 0.0)
        wy += tl.where(rows[None, :] == yh[:, None], wh[:, None], 0.0)
    wx = tl.zeros_like(acc)
    for sx in range(gw):
        xl, xh, wl, wh, _v = _bilinear_axis(xs + (sx + 0.5) * bin_w / gw, W)
        wx += tl.where(cols[None, :] == xl[:, None], wl[:, None], 0.0)
        wx += tl.where(cols[None, :] == xh[:, None], wh[:, None], 0.0)
    g = tl.load(go_ptr + co * go_s1 + ci * go_s2 + cj * go_s3, mask=cmask, other=0.0)
    return acc + (g.to(DT) / count)[:, None] * wy * wx


@triton.jit
def _align_gather(acc, grad_out_ptr, go_s0, go_s1, go_s2, go_s3, rois_ptr, roi_stride, roi_stride_f,
                  K, N, n, c, cmask, rows, cols, ty0, tx0, H, W, scale, sampling_ratio, PH, PW,
                  lvl, canonical_scale, canonical_level, k_min, k_max,
                  ALIGNED: tl.constexpr, PS: tl.constexpr, MULTI_LEVEL: tl.constexpr,
                  DT: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                  ROI_BLOCK: tl.constexpr):
    """Walk the RoIs in index order; for each one of image n (and level lvl) whose support
    reaches the tile, add its contribution. The walk is vectorised ROI_BLOCK at a time and then
    visits only the hits, smallest index first, so the summation order is fixed."""
    ty0f = ty0.to(DT)
    tx0f = tx0.to(DT)
    if PS:
        co = c // (PH * PW)
        rem = c - co * (PH * PW)
        ci = rem // PW
        cj = rem - ci * PW
    for kb in range(0, K, ROI_BLOCK):
        kk = kb + tl.arange(0, ROI_BLOCK)
        km = kk < K
        bf, x1, y1, x2, y2 = _roi_row(rois_ptr, kk, roi_stride, roi_stride_f, km, DT)
        bi, ok = _batch(bf, N)
        hit = km & ok & (bi == n)
        if MULTI_LEVEL:
            hit = hit & (_fpn_level(x1, y1, x2, y2, canonical_scale, canonical_level, k_min, k_max) == lvl)
        x0, y0, rw, rh = _align_box(x1, y1, x2, y2, scale, ALIGNED)
        hit = hit & _overlaps(y0, rh, ty0f, TILE_H) & _overlaps(x0, rw, tx0f, TILE_W)
        n_hit = tl.sum(hit.to(tl.int32), axis=0)
        for _t in range(n_hit):
            r = tl.min(tl.where(hit, kk, K), axis=0)
            hit = hit & (kk != r)
            _b, sx1, sy1, sx2, sy2 = _roi_row(rois_ptr, r, roi_stride, roi_stride_f, r >= 0, DT)
            sx0, sy0, srw, srh = _align_box(sx1, sy1, sx2, sy2, scale, ALIGNED)
            gh = _grid(srh, PH, sampling_ratio)
            gw = _grid(srw, PW, sampling_ratio)
            count = tl.maximum(gh * gw, 1).to(DT)
            go_ptr = grad_out_ptr + r.to(tl.int64) * go_s0
            if PS:
                acc = _ps_align_gather_roi(acc, go_ptr, go_s1, go_s2, go_s3, co, ci, cj, cmask,
                                           rows, cols, sy0, sx0, srh, srw, gh, gw, count, H, W,
                                           PH, PW, DT)
            else:
                acc = _align_gather_roi(acc, go_ptr, go_s1, go_s2, go_s3, c, cmask, rows, cols,
                                        ty0f, tx0f, sy0, sx0, srh, srw, gh, gw, count, H, W,
                                        PH, PW, DT, TILE_H, TILE_W)
    return acc


@triton.jit
def _tile_coords(tile, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    n_tw = tl.cdiv(W, TILE_W)
    ty = tile // n_tw
    tx = tile - ty * n_tw
    t = tl.arange(0, TILE_H * TILE_W)
    rows = ty * TILE_H + t // TILE_W  # TILE_W is a power of two: a shift
    cols = tx * TILE_W + t % TILE_W
    return ty * TILE_H, tx * TILE_W, rows, cols, (rows < H) & (cols < W)


# ----------------------------------------------------------------------------------------------
# roi_align
# ----------------------------------------------------------------------------------------------


@triton.jit
def _roi_align_fwd_kernel(
    input_ptr,        # [N, C, H, W] features, any strides
    rois_ptr,         # [K, 5] (batch_index, x1, y1, x2, y2)
    out_ptr,          # [K, C, PH, PW] contiguous, input dtype
    N,                # images; RoIs whose batch index is outside [0, N) give zeros
    C,                # channels
    H,                # feature map height
    W,                # feature map width
    stride_n,         # input strides, in elements
    stride_c,
    stride_h,
    stride_w,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    scale_hi,         # spatial_scale as float32 ...
    scale_lo,         # ... and the float32 remainder, used only for float64 math
    sampling_ratio,   # > 0: fixed samples per bin axis; <= 0: ceil(roi extent / pooled)
    PH,               # pooled height
    PW,               # pooled width
    ALIGNED: tl.constexpr,  # half-pixel offset, no minimum RoI size
    C_FAST: tl.constexpr,   # channel stride is 1: put channels on the coalesced tile axis
    DT: tl.constexpr,       # compute dtype (float32, or float64 for float64 input)
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program (power of two >= PH*PW, or a block of them)
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    _align_fwd_program(input_ptr, N, C, H, W, stride_n, stride_c, stride_h, stride_w,
                       bf, x1, y1, x2, y2, True, _scale(scale_hi, scale_lo, DT), sampling_ratio,
                       out_ptr, k, tl.program_id(1), PH, PW,
                       ALIGNED, False, C_FAST, DT, BLOCK_C, BLOCK_P)


@triton.jit
def _roi_align_bwd_kernel(
    grad_out_ptr,     # [K, C, PH, PW] any strides
    rois_ptr,         # [K, 5]
    grad_in_ptr,      # [N, C, H, W] contiguous float32/64, zero-filled, accumulated atomically
    N,                # images
    C,                # channels
    H,                # height
    W,                # width
    go_s0,            # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    scale_hi,         # spatial_scale (float32 part)
    scale_lo,         # spatial_scale remainder (float64 math only)
    sampling_ratio,   # see _roi_align_fwd_kernel
    PH,               # pooled height
    PW,               # pooled width
    ALIGNED: tl.constexpr,  # see _roi_align_fwd_kernel
    DT: tl.constexpr,       # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    _align_bwd_program(grad_out_ptr, go_s0, go_s1, go_s2, go_s3, grad_in_ptr, N, C, H, W,
                       bf, x1, y1, x2, y2, True, _scale(scale_hi, scale_lo, DT), sampling_ratio,
                       k, tl.program_id(1), PH, PW, ALIGNED, False, DT, BLOCK_C, BLOCK_P)


@triton.jit
def _roi_align_bwd_gather_kernel(
    grad_out_ptr,     # [K, C, PH, PW] any strides
    rois_ptr,         # [K, 5]
    grad_in_ptr,      # [N, C, H, W] contiguous float32/64; every element is written once
    K,                # number of RoIs
    N,                # images
    C,                # channels
    H,                # height
    W,                # width
    go_s0,            # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    scale_hi,         # spatial_scale (float32 part)
    scale_lo,         # spatial_scale remainder (float64 math only)
    sampling_ratio,   # see _roi_align_fwd_kernel
    PH,               # pooled height
    PW,               # pooled width
    ALIGNED: tl.constexpr,    # see _roi_align_fwd_kernel
    DT: tl.constexpr,         # compute / accumulation dtype
    BLOCK_C: tl.constexpr,    # channels per program
    TILE_H: tl.constexpr,     # pixel tile owned by one program (powers of two)
    TILE_W: tl.constexpr,
    ROI_BLOCK: tl.constexpr,  # RoIs tested per step of the walk
):
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    nc = pid % (N * n_cb)     # neighbouring programs share a tile (and its RoI hits)
    n = nc // n_cb
    c = (nc - n * n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    ty0, tx0, rows, cols, pix = _tile_coords(pid // (N * n_cb), H, W, TILE_H, TILE_W)
    acc = tl.zeros([BLOCK_C, TILE_H * TILE_W], DT)
    acc = _align_gather(acc, grad_out_ptr, go_s0, go_s1, go_s2, go_s3, rois_ptr, roi_stride,
                        roi_stride_f, K, N, n, c, cmask, rows, cols, ty0, tx0, H, W,
                        _scale(scale_hi, scale_lo, DT), sampling_ratio, PH, PW,
                        0, 1.0, 0, 0, 0, ALIGNED, False, False, DT, TILE_H, TILE_W, ROI_BLOCK)
    off = n.to(tl.int64) * C * H * W + (c * H * W)[:, None] + (rows * W + cols)[None, :]
    tl.store(grad_in_ptr + off, acc, mask=cmask[:, None] & pix[None, :])


# ----------------------------------------------------------------------------------------------
# ps_roi_align
# ----------------------------------------------------------------------------------------------


@triton.jit
def _ps_roi_align_fwd_kernel(
    input_ptr,        # [N, C_in, H, W] features, any strides, C_in = C * PH * PW
    rois_ptr,         # [K, 5]
    out_ptr,          # [K, C, PH, PW] contiguous, input dtype
    N,                # images
    C,                # output channels
    H,                # height
    W,                # width
    stride_n,         # input strides, in elements
    stride_c,
    stride_h,
    stride_w,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    scale_hi,         # spatial_scale (float32 part)
    scale_lo,         # spatial_scale remainder (float64 math only)
    sampling_ratio,   # see _roi_align_fwd_kernel
    PH,               # pooled height
    PW,               # pooled width
    DT: tl.constexpr,       # compute dtype
    BLOCK_C: tl.constexpr,  # output channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    # PS-align is roi_align with aligned=True geometry; channel c_in = c*PH*PW + p is not
    # contiguous along either tile axis, so the bin-fast layout is kept
    _align_fwd_program(input_ptr, N, C, H, W, stride_n, stride_c, stride_h, stride_w,
                       bf, x1, y1, x2, y2, True, _scale(scale_hi, scale_lo, DT), sampling_ratio,
                       out_ptr, k, tl.program_id(1), PH, PW,
                       True, True, False, DT, BLOCK_C, BLOCK_P)


@triton.jit
def _ps_roi_align_bwd_kernel(
    grad_out_ptr,     # [K, C, PH, PW] any strides
    rois_ptr,         # [K, 5]
    grad_in_ptr,      # [N, C*PH*PW, H, W] contiguous float32/64, zero-filled, atomics
    N,                # images
    C,                # output channels
    H,                # height
    W,                # width
    go_s0,            # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    scale_hi,         # spatial_scale (float32 part)
    scale_lo,         # spatial_scale remainder (float64 math only)
    sampling_ratio,   # see _roi_align_fwd_kernel
    PH,               # pooled height
    PW,               # pooled width
    DT: tl.constexpr,       # compute dtype
    BLOCK_C: tl.constexpr,  # output channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    _align_bwd_program(grad_out_ptr, go_s0, go_s1, go_s2, go_s3, grad_in_ptr, N, C, H, W,
                       bf, x1, y1, x2, y2, True, _scale(scale_hi, scale_lo, DT), sampling_ratio,
                       k, tl.program_id(1), PH, PW, True, True, DT, BLOCK_C, BLOCK_P)


@triton.jit
def _ps_roi_align_bwd_gather_kernel(
    grad_out_ptr,     # [K, C, PH, PW] any strides
    rois_ptr,         # [K, 5]
    grad_in_ptr,      # [N, C_in, H, W] contiguous float32/64; every element is written once
    K,                # number of RoIs
    N,                # images
    C,                # output channels
    C_in,             # input channels (>= C*PH*PW; the rest get no gradient)
    H,                # height
    W,                # width
    go_s0,            # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    scale_hi,         # spatial_scale (float32 part)
    scale_lo,         # spatial_scale remainder (float64 math only)
    sampling_ratio,   # see _roi_align_fwd_kernel
    PH,               # pooled height
    PW,               # pooled width
    DT: tl.constexpr,         # compute / accumulation dtype
    BLOCK_C: tl.constexpr,    # input channels per program
    TILE_H: tl.constexpr,     # pixel tile owned by one program (powers of two)
    TILE_W: tl.constexpr,
    ROI_BLOCK: tl.constexpr,  # RoIs tested per step of the walk
):
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C_in, BLOCK_C)
    nc = pid % (N * n_cb)
    n = nc // n_cb
    c = (nc - n * n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    ty0, tx0, rows, cols, pix = _tile_coords(pid // (N * n_cb), H, W, TILE_H, TILE_W)
    acc = tl.zeros([BLOCK_C, TILE_H * TILE_W], DT)
    acc = _align_gather(acc, grad_out_ptr, go_s0, go_s1, go_s2, go_s3, rois_ptr, roi_stride,
                        roi_stride_f, K, N, n, c, c < C * PH * PW, rows, cols, ty0, tx0, H, W,
                        _scale(scale_hi, scale_lo, DT), sampling_ratio, PH, PW,
                        0, 1.0, 0, 0, 0, True, True, False, DT, TILE_H, TILE_W, ROI_BLOCK)
    off = n.to(tl.int64) * C_in * H * W + (c * H * W)[:, None] + (rows * W + cols)[None, :]
    tl.store(grad_in_ptr + off, acc, mask=(c < C_in)[:, None] & pix[None, :])


# ----------------------------------------------------------------------------------------------
# roi_pool / ps_roi_pool (integer bins)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _int_pool_bins(rois_ptr, k, roi_stride, roi_stride_f, N, H, W, scale_hi, scale_lo, p, PH, PW,
                   PLUS_ONE: tl.constexpr, DT: tl.constexpr):
    """Batch index and the clipped integer bins [hs, he) x [ws, we) of bins p of RoI k."""
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    b, ok = _batch(bf, N)
    scale64 = tl.cast(scale_hi, tl.float64) + tl.cast(scale_lo, tl.float64)
    w_start, w_len = _int_box(x1, x2, scale64, PLUS_ONE)
    h_start, h_len = _int_box(y1, y2, scale64, PLUS_ONE)
    i = p // PW
    j = p - i * PW
    hs, he = _int_bins(i, PH, h_start, h_len, H)
    ws, we = _int_bins(j, PW, w_start, w_len, W)
    return b, ok, hs, he, ws, we


@triton.jit
def _roi_pool_fwd_kernel(
    input_ptr,        # [N, C, H, W] features, any strides
    rois_ptr,         # [K, 5]
    out_ptr,          # [K, C, PH, PW] contiguous, input dtype
    argmax_ptr,       # [K, C, PH, PW] contiguous int32: h*W + w of the max, -1 if empty
    N,                # images
    C,                # channels
    H,                # height
    W,                # width
    stride_n,         # input strides, in elements
    stride_c,
    stride_h,
    stride_w,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    scale_hi,         # spatial_scale (float32 part)
    scale_lo,         # spatial_scale remainder: the bins are computed in float64
    PH,               # pooled height
    PW,               # pooled width
    C_FAST: tl.constexpr,   # channel stride is 1: channels on the coalesced tile axis
    DT: tl.constexpr,       # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    pid1 = tl.program_id(1)
    P = PH * PW
    n_pb = tl.cdiv(P, BLOCK_P)
    cb = pid1 // n_pb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = (pid1 - cb * n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = c < C
    pmask = p < P
    b, ok, hs, he, ws, we = _int_pool_bins(rois_ptr, k, roi_stride, roi_stride_f, N, H, W,
                                           scale_hi, scale_lo, p, PH, PW, 1, DT)
    # the loop runs over the largest bin of the tile; smaller bins mask the excess
    max_h = tl.where(ok, tl.max(tl.where(pmask, he - hs, 0), axis=0), 0)
    max_w = tl.max(tl.where(pmask, we - ws, 0), axis=0)
    feat = input_ptr + b.to(tl.int64) * stride_n + _c2(c * stride_c, C_FAST)
    best = _tile_zeros(BLOCK_C, BLOCK_P, C_FAST, DT) - float("inf")
    arg = _tile_zeros(BLOCK_C, BLOCK_P, C_FAST, tl.int32) - 1
    for dy in range(max_h):
        y = hs + dy
        ym = (y < he) & pmask
        for dx in range(max_w):
            x = ws + dx
            inside = _p2(ym & (x < we), C_FAST) & _c2(cmask, C_FAST)
            v = tl.load(feat + _p2(y * stride_h + x * stride_w, C_FAST), mask=inside,
                        other=float("-inf")).to(DT)
            # strict '>' keeps the first max in row-major order (torchvision); the first element
            # always registers, so argmax is -1 only for an empty bin; NaN wins like torch.max
            take = inside & ((v > best) | (arg < 0) | ((v != v) & (best == best)))
            best = tl.where(take, v, best)
            arg = tl.where(take, _p2(y * W + x, C_FAST), arg)
    best = tl.where(arg < 0, 0.0, best)
    off = k.to(tl.int64) * C * P + _c2(c * P, C_FAST) + _p2(p, C_FAST)
    m = _c2(cmask, C_FAST) & _p2(pmask, C_FAST)
    tl.store(out_ptr + off, best, mask=m)
    tl.store(argmax_ptr + off, arg, mask=m)


@triton.jit
def _roi_pool_bwd_kernel(
    grad_out_ptr,     # [K, C, PH, PW] any strides
    argmax_ptr,       # [K, C, PH, PW] int32 from the forward, any strides
    rois_ptr,         # [K, 5] (only the batch index is used)
    grad_in_ptr,      # [N, C, H, W] contiguous float32/64, zero-filled, atomics
    N,                # images
    C,                # channels
    H,                # height
    W,                # width
    go_s0,            # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    am_s0,            # argmax strides, in elements
    am_s1,
    am_s2,
    am_s3,
    roi_stride,       # rois.stride(0)
    PH,               # pooled height
    PW,               # pooled width
    DT: tl.constexpr,       # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    pid1 = tl.program_id(1)
    P = PH * PW
    n_pb = tl.cdiv(P, BLOCK_P)
    cb = pid1 // n_pb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = (pid1 - cb * n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
    i = p // PW
    j = p - i * PW
    b, ok = _batch(tl.load(rois_ptr + k.to(tl.int64) * roi_stride).to(DT), N)
    # (a scalar bool is folded into the channel bound: the interpreter cannot broadcast one)
    m = (c < tl.where(ok, C, 0))[:, None] & (p < P)[None, :]
    am = tl.load(argmax_ptr + k.to(tl.int64) * am_s0 + (c * am_s1)[:, None] + (i * am_s2 + j * am_s3)[None, :],
                 mask=m, other=-1)
    g = tl.load(grad_out_ptr + k.to(tl.int64) * go_s0 + (c * go_s1)[:, None] + (i * go_s2 + j * go_s3)[None, :],
                mask=m, other=0.0).to(DT)
    m = m & (am >= 0) & (am < H * W)  # never trust an index enough to write out of bounds
    base = grad_in_ptr + b.to(tl.int64) * C * H * W + (c * H * W)[:, None]
    tl.atomic_add(base + am, g, mask=m, sem="relaxed")


@triton.jit
def _roi_pool_bwd_gather_kernel(
    grad_out_ptr,     # [K, C, PH, PW] any strides
    argmax_ptr,       # [K, C, PH, PW] int32, any strides
    rois_ptr,         # [K, 5] (only the batch index is used)
    grad_in_ptr,      # [N, C, H, W] contiguous float32/64; every element is written once
    K,                # number of RoIs
    N,                # images
    C,                # channels
    HW,               # H * W: pixels of one plane
    go_s0,            # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    am_s0,            # argmax strides, in elements
    am_s1,
    am_s2,
    am_s3,
    roi_stride,       # rois.stride(0)
    PH,               # pooled height
    PW,               # pooled width
    DT: tl.constexpr,         # accumulation dtype
    BLOCK_C: tl.constexpr,    # channels per program
    BLOCK_P: tl.constexpr,    # bins looked at per step
    CHUNK: tl.constexpr,      # pixels (of the flattened plane) owned by one program
    ROI_BLOCK: tl.constexpr,  # RoIs tested per step of the walk
):
    # The plane is cut into flat pixel chunks (argmax is a flat index, so "argmax in my chunk"
    # is one range test and needs no division). RoIs of image n are visited in index order, bins
    # in index order, and only bins with an argmax in the chunk do the one-hot accumulation.
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    nc = pid % (N * n_cb)
    n = nc // n_cb
    c = (nc - n * n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    t0 = (pid // (N * n_cb)) * CHUNK
    pix = t0 + tl.arange(0, CHUNK)
    P = PH * PW
    acc = tl.zeros([BLOCK_C, CHUNK], DT)
    for kb in range(0, K, ROI_BLOCK):
        kk = kb + tl.arange(0, ROI_BLOCK)
        km = kk < K
        bi, ok = _batch(tl.load(rois_ptr + kk.to(tl.int64) * roi_stride, mask=km, other=-1.0).to(DT), N)
        hit = km & ok & (bi == n)
        for _t in range(tl.sum(hit.to(tl.int32), axis=0)):
            r = tl.min(tl.where(hit, kk, K), axis=0)
            hit = hit & (kk != r)
            am_r = argmax_ptr + r.to(tl.int64) * am_s0 + c * am_s1
            go_r = grad_out_ptr + r.to(tl.int64) * go_s0 + c * go_s1
            for pb in range(0, P, BLOCK_P):
                p = pb + tl.arange(0, BLOCK_P)
                i = p // PW
                j = p - i * PW
                am = tl.load(am_r[:, None] + (i * am_s2 + j * am_s3)[None, :],
                             mask=cmask[:, None] & (p < P)[None, :], other=-1)
                in_chunk = (am >= t0) & (am < t0 + CHUNK)
                bin_hit = tl.max(in_chunk.to(tl.int32), axis=0) > 0
                for _u in range(tl.sum(bin_hit.to(tl.int32), axis=0)):
                    q = tl.min(tl.where(bin_hit, p, P), axis=0)
                    bin_hit = bin_hit & (p != q)
                    qi = q // PW
                    qj = q - qi * PW
                    am_q = tl.load(am_r + qi * am_s2 + qj * am_s3, mask=cmask, other=-1)
                    g_q = tl.load(go_r + qi * go_s2 + qj * go_s3, mask=cmask, other=0.0).to(DT)
                    acc += tl.where(am_q[:, None] == pix[None, :], g_q[:, None], 0.0)
    off = n.to(tl.int64) * C * HW + (c * HW)[:, None] + pix[None, :]
    tl.store(grad_in_ptr + off, acc, mask=cmask[:, None] & (pix < HW)[None, :])


@triton.jit
def _ps_roi_pool_fwd_kernel(
    input_ptr,        # [N, C_in, H, W] features, any strides, C_in = C * PH * PW
    rois_ptr,         # [K, 5]
    out_ptr,          # [K, C, PH, PW] contiguous, input dtype
    N,                # images
    C,                # output channels
    H,                # height
    W,                # width
    stride_n,         # input strides, in elements
    stride_c,
    stride_h,
    stride_w,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    scale_hi,         # spatial_scale (float32 part)
    scale_lo,         # spatial_scale remainder: the bins are computed in float64
    PH,               # pooled height
    PW,               # pooled width
    DT: tl.constexpr,       # compute dtype
    BLOCK_C: tl.constexpr,  # output channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    pid1 = tl.program_id(1)
    P = PH * PW
    n_pb = tl.cdiv(P, BLOCK_P)
    cb = pid1 // n_pb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = (pid1 - cb * n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = c < C
    pmask = p < P
    b, ok, hs, he, ws, we = _int_pool_bins(rois_ptr, k, roi_stride, roi_stride_f, N, H, W,
                                           scale_hi, scale_lo, p, PH, PW, 0, DT)
    max_h = tl.where(ok, tl.max(tl.where(pmask, he - hs, 0), axis=0), 0)
    max_w = tl.max(tl.where(pmask, we - ws, 0), axis=0)
    feat = input_ptr + b.to(tl.int64) * stride_n + (c * P * stride_c)[:, None] + (p * stride_c)[None, :]
    acc = tl.zeros([BLOCK_C, BLOCK_P], DT)
    for dy in range(max_h):
        y = hs + dy
        ym = (y < he) & pmask
        for dx in range(max_w):
            x = ws + dx
            inside = cmask[:, None] & (ym & (x < we))[None, :]
            acc += tl.load(feat + (y * stride_h + x * stride_w)[None, :], mask=inside, other=0.0).to(DT)
    area = tl.maximum((he - hs) * (we - ws), 1).to(DT)
    off = k.to(tl.int64) * C * P + (c * P)[:, None] + p[None, :]
    tl.store(out_ptr + off, acc / area[None, :], mask=cmask[:, None] & pmask[None, :])


@triton.jit
def _ps_roi_pool_bwd_kernel(
    grad_out_ptr,     # [K, C, PH, PW] any strides
    rois_ptr,         # [K, 5]
    grad_in_ptr,      # [N, C_in, H, W] contiguous float32/64, zero-filled, atomics
    N,                # images
    C,                # output channels
    C_in,             # input channels
    H,                # height
    W,                # width
    go_s0,            # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    scale_hi,         # spatial_scale (float32 part)
    scale_lo,         # spatial_scale remainder: the bins are computed in float64
    PH,               # pooled height
    PW,               # pooled width
    DT: tl.constexpr,       # compute dtype
    BLOCK_C: tl.constexpr,  # output channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    pid1 = tl.program_id(1)
    P = PH * PW
    n_pb = tl.cdiv(P, BLOCK_P)
    cb = pid1 // n_pb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = (pid1 - cb * n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
    cmask = c < C
    pmask = p < P
    b, ok, hs, he, ws, we = _int_pool_bins(rois_ptr, k, roi_stride, roi_stride_f, N, H, W,
                                           scale_hi, scale_lo, p, PH, PW, 0, DT)
    max_h = tl.where(ok, tl.max(tl.where(pmask, he - hs, 0), axis=0), 0)
    max_w = tl.max(tl.where(pmask, we - ws, 0), axis=0)
    i = p // PW
    j = p - i * PW
    area = tl.maximum((he - hs) * (we - ws), 1).to(DT)
    g = tl.load(grad_out_ptr + k.to(tl.int64) * go_s0 + (c * go_s1)[:, None] + (i * go_s2 + j * go_s3)[None, :],
                mask=cmask[:, None] & pmask[None, :], other=0.0).to(DT) / area[None, :]
    base = grad_in_ptr + b.to(tl.int64) * C_in * H * W + (c * P * H * W)[:, None] + (p * H * W)[None, :]
    for dy in range(max_h):
        y = hs + dy
        ym = (y < he) & pmask
        for dx in range(max_w):
            x = ws + dx
            inside = cmask[:, None] & (ym & (x < we))[None, :]
            tl.atomic_add(base + (y * W + x)[None, :], g, mask=inside, sem="relaxed")


@triton.jit
def _ps_roi_pool_bwd_gather_kernel(
    grad_out_ptr,     # [K, C, PH, PW] any strides
    rois_ptr,         # [K, 5]
    grad_in_ptr,      # [N, C_in, H, W] contiguous float32/64; every element is written once
    K,                # number of RoIs
    N,                # images
    C,                # output channels
    C_in,             # input channels
    H,                # height
    W,                # width
    go_s0,            # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    scale_hi,         # spatial_scale (float32 part)
    scale_lo,         # spatial_scale remainder: the bins are computed in float64
    PH,               # pooled height
    PW,               # pooled width
    DT: tl.constexpr,         # accumulation dtype
    BLOCK_C: tl.constexpr,    # input channels per program
    TILE_H: tl.constexpr,     # pixel tile owned by one program (powers of two)
    TILE_W: tl.constexpr,
    ROI_BLOCK: tl.constexpr,  # RoIs tested per step of the walk
):
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C_in, BLOCK_C)
    nc = pid % (N * n_cb)
    n = nc // n_cb
    c = (nc - n * n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    P = PH * PW
    co = c // P           # lane -> (output channel, bin row, bin column), once per program
    ci = (c - co * P) // PW
    cj = c - co * P - ci * PW
    cmask = c < C * P
    ty0, tx0, rows, cols, pix = _tile_coords(pid // (N * n_cb), H, W, TILE_H, TILE_W)
    scale64 = tl.cast(scale_hi, tl.float64) + tl.cast(scale_lo, tl.float64)
    acc = tl.zeros([BLOCK_C, TILE_H * TILE_W], DT)
    for kb in range(0, K, ROI_BLOCK):
        kk = kb + tl.arange(0, ROI_BLOCK)
        km = kk < K
        bf, x1, y1, x2, y2 = _roi_row(rois_ptr, kk, roi_stride, roi_stride_f, km, DT)
        bi, ok = _batch(bf, N)
        w_start, w_len = _int_box(x1, x2, scale64, 0)
        h_start, h_len = _int_box(y1, y2, scale64, 0)
        hit = km & ok & (bi == n) & _overlaps(h_start, h_len, ty0.to(tl.float64), TILE_H)
        hit = hit & _overlaps(w_start, w_len, tx0.to(tl.float64), TILE_W)
        for _t in range(tl.sum(hit.to(tl.int32), axis=0)):
            r = tl.min(tl.where(hit, kk, K), axis=0)
            hit = hit & (kk != r)
            _b, sx1, sy1, sx2, sy2 = _roi_row(rois_ptr, r, roi_stride, roi_stride_f, r >= 0, DT)
            sw0, swl = _int_box(sx1, sx2, scale64, 0)
            sh0, shl = _int_box(sy1, sy2, scale64, 0)
            hs, he = _int_bins(ci, PH, sh0, shl, H)  # every lane has its own bin (ci, cj)
            ws, we = _int_bins(cj, PW, sw0, swl, W)
            area = tl.maximum((he - hs) * (we - ws), 1).to(DT)
            g = tl.load(grad_out_ptr + r.to(tl.int64) * go_s0 + co * go_s1 + ci * go_s2 + cj * go_s3,
                        mask=cmask, other=0.0).to(DT) / area
            inside = ((rows[None, :] >= hs[:, None]) & (rows[None, :] < he[:, None])
                      & (cols[None, :] >= ws[:, None]) & (cols[None, :] < we[:, None]))
            acc += tl.where(inside, g[:, None], 0.0)
    off = n.to(tl.int64) * C_in * H * W + (c * H * W)[:, None] + (rows * W + cols)[None, :]
    tl.store(grad_in_ptr + off, acc, mask=(c < C_in)[:, None] & pix[None, :])


# ----------------------------------------------------------------------------------------------
# multi_scale_roi_align (FPN): one launch for all levels
# ----------------------------------------------------------------------------------------------
# Levels stay separate tensors (P2 alone is ~137 MB at 800x1333, too big to concatenate): the
# kernels take 8 level slots (unused ones repeat level 0) and pick one per RoI with scalar
# selects, so a single compiled body serves every level.


@triton.jit
def _pick_level(lvl, l: tl.constexpr, f, H, W, sn, sc, sh, sw, s,
                cf, cH, cW, csn, csc, csh, csw, cs):
    if lvl == l:
        cf = f  # pointers cannot go through tl.where portably; a scalar branch selects them
    hit = lvl == l
    return (cf, tl.where(hit, H, cH), tl.where(hit, W, cW), tl.where(hit, sn, csn),
            tl.where(hit, sc, csc), tl.where(hit, sh, csh), tl.where(hit, sw, csw),
            tl.where(hit, s, cs))


@triton.jit
def _select_level(lvl, NUM_LEVELS: tl.constexpr,
                  f0, f1, f2, f3, f4, f5, f6, f7, H0, H1, H2, H3, H4, H5, H6, H7,
                  W0, W1, W2, W3, W4, W5, W6, W7, sn0, sn1, sn2, sn3, sn4, sn5, sn6, sn7,
                  sc0, sc1, sc2, sc3, sc4, sc5, sc6, sc7, sh0, sh1, sh2, sh3, sh4, sh5, sh6, sh7,
                  sw0, sw1, sw2, sw3, sw4, sw5, sw6, sw7, s0, s1, s2, s3, s4, s5, s6, s7):
    """(pointer, H, W, 4 strides, scale) of level lvl (level 0's if lvl is out of range)."""
    r = (f0, H0 + 0 * lvl, W0 + 0 * lvl, sn0 + 0 * lvl, sc0 + 0 * lvl, sh0 + 0 * lvl, sw0 + 0 * lvl, s0 + 0.0 * lvl)
    if NUM_LEVELS > 1:
        r = _pick_level(lvl, 1, f1, H1, W1, sn1, sc1, sh1, sw1, s1, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
    if NUM_LEVELS > 2:
        r = _pick_level(lvl, 2, f2, H2, W2, sn2, sc2, sh2, sw2, s2, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
    if NUM_LEVELS > 3:
        r = _pick_level(lvl, 3, f3, H3, W3, sn3, sc3, sh3, sw3, s3, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
    if NUM_LEVELS > 4:
        r = _pick_level(lvl, 4, f4, H4, W4, sn4, sc4, sh4, sw4, s4, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
    if NUM_LEVELS > 5:
        r = _pick_level(lvl, 5, f5, H5, W5, sn5, sc5, sh5, sw5, s5, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
    if NUM_LEVELS > 6:
        r = _pick_level(lvl, 6, f6, H6, W6, sn6, sc6, sh6, sw6, s6, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
    if NUM_LEVELS > 7:
        r = _pick_level(lvl, 7, f7, H7, W7, sn7, sc7, sh7, sw7, s7, r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
    return r


@triton.jit
def _advance_level(lvl, rem, l: tl.constexpr, n_prev):
    mv = (lvl == l - 1) & (rem >= n_prev)
    return tl.where(mv, l, lvl), tl.where(mv, rem - n_prev, rem)


@triton.jit
def _level_of_tile(tile, NUM_LEVELS: tl.constexpr, H0, H1, H2, H3, H4, H5, H6, H7,
                   W0, W1, W2, W3, W4, W5, W6, W7, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Global tile index (levels laid end to end, finest first) -> (level, tile within level)."""
    lvl = tile * 0
    rem = tile
    nt = tl.cdiv(H0, TILE_H) * tl.cdiv(W0, TILE_W)
    if NUM_LEVELS > 1:
        lvl, rem = _advance_level(lvl, rem, 1, nt)
        nt = tl.cdiv(H1, TILE_H) * tl.cdiv(W1, TILE_W)
    if NUM_LEVELS > 2:
        lvl, rem = _advance_level(lvl, rem, 2, nt)
        nt = tl.cdiv(H2, TILE_H) * tl.cdiv(W2, TILE_W)
    if NUM_LEVELS > 3:
        lvl, rem = _advance_level(lvl, rem, 3, nt)
        nt = tl.cdiv(H3, TILE_H) * tl.cdiv(W3, TILE_W)
    if NUM_LEVELS > 4:
        lvl, rem = _advance_level(lvl, rem, 4, nt)
        nt = tl.cdiv(H4, TILE_H) * tl.cdiv(W4, TILE_W)
    if NUM_LEVELS > 5:
        lvl, rem = _advance_level(lvl, rem, 5, nt)
        nt = tl.cdiv(H5, TILE_H) * tl.cdiv(W5, TILE_W)
    if NUM_LEVELS > 6:
        lvl, rem = _advance_level(lvl, rem, 6, nt)
        nt = tl.cdiv(H6, TILE_H) * tl.cdiv(W6, TILE_W)
    if NUM_LEVELS > 7:
        lvl, rem = _advance_level(lvl, rem, 7, nt)
    return lvl, rem


@triton.jit
def _multi_scale_roi_align_fwd_kernel(
    rois_ptr,         # [K, 5]
    out_ptr,          # [K, C, PH, PW] contiguous, feature dtype
    N,                # images
    C,                # channels (shared by all levels)
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    sampling_ratio,   # see _roi_align_fwd_kernel
    PH,               # pooled height
    PW,               # pooled width
    canonical_scale,  # FPN level rule: canonical box size ...
    canonical_level,  # ... and its level
    k_min,            # round(-log2(scale of level 0))
    k_max,            # round(-log2(scale of the last level))
    f0, f1, f2, f3, f4, f5, f6, f7,          # level l features [N, C, H_l, W_l], any strides
    H0, H1, H2, H3, H4, H5, H6, H7,          # level heights
    W0, W1, W2, W3, W4, W5, W6, W7,          # level widths
    sn0, sn1, sn2, sn3, sn4, sn5, sn6, sn7,  # level strides over N, in elements
    sc0, sc1, sc2, sc3, sc4, sc5, sc6, sc7,  # ... over C
    sh0, sh1, sh2, sh3, sh4, sh5, sh6, sh7,  # ... over H
    sw0, sw1, sw2, sw3, sw4, sw5, sw6, sw7,  # ... over W
    s0, s1, s2, s3, s4, s5, s6, s7,          # level spatial scales
    NUM_LEVELS: tl.constexpr,  # 1..8 levels in use; the remaining slots repeat level 0
    ALIGNED: tl.constexpr,     # see _roi_align_fwd_kernel
    C_FAST: tl.constexpr,      # level 0's channel stride is 1
    DT: tl.constexpr,          # compute dtype
    BLOCK_C: tl.constexpr,     # channels per program
    BLOCK_P: tl.constexpr,     # bins per program
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    lvl = _fpn_level(x1, y1, x2, y2, canonical_scale, canonical_level, k_min, k_max)
    fp, Hl, Wl, sn, sc, sh, sw, sl = _select_level(
        lvl, NUM_LEVELS, f0, f1, f2, f3, f4, f5, f6, f7, H0, H1, H2, H3, H4, H5, H6, H7,
        W0, W1, W2, W3, W4, W5, W6, W7, sn0, sn1, sn2, sn3, sn4, sn5, sn6, sn7,
        sc0, sc1, sc2, sc3, sc4, sc5, sc6, sc7, sh0, sh1, sh2, sh3, sh4, sh5, sh6, sh7,
        sw0, sw1, sw2, sw3, sw4, sw5, sw6, sw7, s0, s1, s2, s3, s4, s5, s6, s7)
    # a level index past the levels given (scales that skip a level) leaves the row at zero,
    # as the oracle does; so does an empty level
    ok = (lvl >= 0) & (lvl < NUM_LEVELS) & (Hl > 0) & (Wl > 0)
    _align_fwd_program(fp, N, C, Hl, Wl, sn, sc, sh, sw, bf, x1, y1, x2, y2, ok, sl.to(DT),
                       sampling_ratio, out_ptr, k, tl.program_id(1), PH, PW,
                       ALIGNED, False, C_FAST, DT, BLOCK_C, BLOCK_P)


@triton.jit
def _multi_scale_roi_align_bwd_kernel(
    grad_out_ptr,     # [K, C, PH, PW] any strides
    rois_ptr,         # [K, 5]
    N,                # images
    C,                # channels
    go_s0,            # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    sampling_ratio,   # see _roi_align_fwd_kernel
    PH,               # pooled height
    PW,               # pooled width
    canonical_scale,  # FPN level rule (see the forward)
    canonical_level,
    k_min,
    k_max,
    g0, g1, g2, g3, g4, g5, g6, g7,  # level grad buffers [N, C, H_l, W_l] contiguous fp32/64
    H0, H1, H2, H3, H4, H5, H6, H7,  # level heights
    W0, W1, W2, W3, W4, W5, W6, W7,  # level widths
    s0, s1, s2, s3, s4, s5, s6, s7,  # level spatial scales
    NUM_LEVELS: tl.constexpr,  # levels in use
    ALIGNED: tl.constexpr,     # see _roi_align_fwd_kernel
    DT: tl.constexpr,          # compute dtype
    BLOCK_C: tl.constexpr,     # channels per program
    BLOCK_P: tl.constexpr,     # bins per program
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    lvl = _fpn_level(x1, y1, x2, y2, canonical_scale, canonical_level, k_min, k_max)
    # the stride slots are unused for contiguous grads: H fills them
    gp, Hl, Wl, _a, _b, _c, _d, sl = _select_level(
        lvl, NUM_LEVELS, g0, g1, g2, g3, g4, g5, g6, g7, H0, H1, H2, H3, H4, H5, H6, H7,
        W0, W1, W2, W3, W4, W5, W6, W7, H0, H1, H2, H3, H4, H5, H6, H7,
        H0, H1, H2, H3, H4, H5, H6, H7, H0, H1, H2, H3, H4, H5, H6, H7,
        H0, H1, H2, H3, H4, H5, H6, H7, s0, s1, s2, s3, s4, s5, s6, s7)
    ok = (lvl >= 0) & (lvl < NUM_LEVELS) & (Hl > 0) & (Wl > 0)
    _align_bwd_program(grad_out_ptr, go_s0, go_s1, go_s2, go_s3, gp, N, C, Hl, Wl,
                       bf, x1, y1, x2, y2, ok, sl.to(DT), sampling_ratio,
                       k, tl.program_id(1), PH, PW, ALIGNED, False, DT, BLOCK_C, BLOCK_P)


@triton.jit
def _multi_scale_roi_align_bwd_gather_kernel(
    grad_out_ptr,     # [K, C, PH, PW] any strides
    rois_ptr,         # [K, 5]
    K,                # number of RoIs
    N,                # images
    C,                # channels
    go_s0,            # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,       # rois.stride(0)
    roi_stride_f,     # rois.stride(1)
    sampling_ratio,   # see _roi_align_fwd_kernel
    PH,               # pooled height
    PW,               # pooled width
    canonical_scale,  # FPN level rule (see the forward)
    canonical_level,
    k_min,
    k_max,
    g0, g1, g2, g3, g4, g5, g6, g7,  # level grad buffers [N, C, H_l, W_l] contiguous fp32/64
    H0, H1, H2, H3, H4, H5, H6, H7,  # level heights
    W0, W1, W2, W3, W4, W5, W6, W7,  # level widths
    s0, s1, s2, s3, s4, s5, s6, s7,  # level spatial scales
    NUM_LEVELS: tl.constexpr,  # levels in use
    ALIGNED: tl.constexpr,     # see _roi_align_fwd_kernel
    DT: tl.constexpr,          # accumulation dtype
    BLOCK_C: tl.constexpr,     # channels per program
    TILE_H: tl.constexpr,      # pixel tile owned by one program (powers of two)
    TILE_W: tl.constexpr,
    ROI_BLOCK: tl.constexpr,   # RoIs tested per step of the walk
):
    # the tiles of all levels are laid end to end along the grid; each program finds its level,
    # then gathers like _roi_align_bwd_gather_kernel from the RoIs assigned to that level
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    nc = pid % (N * n_cb)
    n = nc // n_cb
    c = (nc - n * n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    lvl, tile = _level_of_tile(pid // (N * n_cb), NUM_LEVELS, H0, H1, H2, H3, H4, H5, H6, H7,
                               W0, W1, W2, W3, W4, W5, W6, W7, TILE_H, TILE_W)
    gp, Hl, Wl, _a, _b, _c, _d, sl = _select_level(
        lvl, NUM_LEVELS, g0, g1, g2, g3, g4, g5, g6, g7, H0, H1, H2, H3, H4, H5, H6, H7,
        W0, W1, W2, W3, W4, W5, W6, W7, H0, H1, H2, H3, H4, H5, H6, H7,
        H0, H1, H2, H3, H4, H5, H6, H7, H0, H1, H2, H3, H4, H5, H6, H7,
        H0, H1, H2, H3, H4, H5, H6, H7, s0, s1, s2, s3, s4, s5, s6, s7)
    ty0, tx0, rows, cols, pix = _tile_coords(tile, Hl, Wl, TILE_H, TILE_W)
    acc = tl.zeros([BLOCK_C, TILE_H * TILE_W], DT)
    acc = _align_gather(acc, grad_out_ptr, go_s0, go_s1, go_s2, go_s3, rois_ptr, roi_stride,
                        roi_stride_f, K, N, n, c, cmask, rows, cols, ty0, tx0, Hl, Wl,
                        sl.to(DT), sampling_ratio, PH, PW,
                        lvl, canonical_scale, canonical_level, k_min, k_max,
                        ALIGNED, False, True, DT, TILE_H, TILE_W, ROI_BLOCK)
    off = n.to(tl.int64) * C * Hl * Wl + (c * Hl * Wl)[:, None] + (rows * Wl + cols)[None, :]
    tl.store(gp + off, acc, mask=cmask[:, None] & pix[None, :])


# ----------------------------------------------------------------------------------------------
# launchers (docs/ARCHITECTURE.md, "Launcher contract"): tensors in, nothing allocated, None out
# ----------------------------------------------------------------------------------------------

_NUM_WARPS = 4


def _f32_parts(x: float) -> tuple[float, float]:
    """x as float32 plus the float32 remainder (hi + lo carries ~48 bits of x)."""
    hi = struct.unpack("f", struct.pack("f", float(x)))[0]
    return hi, struct.unpack("f", struct.pack("f", float(x) - hi))[0]


def _dt(t: torch.Tensor):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _c_fast(t: torch.Tensor) -> bool:
    return t.shape[1] > 1 and t.stride(1) == 1


def _launch_opts(t: torch.Tensor) -> dict:
    return {"num_warps": _NUM_WARPS} if t.is_cuda else {}


def _device(t: torch.Tensor):
    # Triton launches on the current device; make it the tensor's
    return torch.cuda.device(t.device) if t.is_cuda else _NullCtx()


class _NullCtx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _tile_blocks(c: int, p: int, gpu: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of the per-RoI kernels. GPU: 512-element tiles (4 values a thread at
    4 warps) and at most 256 bins a program: at sm_90 that is 40-90 registers with either
    Triton's ptxas (3.6 and 3.9), where 1024-element tiles took up to 186 and 2048 spilled.
    Interpreter: few, large programs (each costs ~0.4 ms)."""
    if gpu:
        bp = min(triton.next_power_of_2(p), 256)
        return max(1, min(triton.next_power_of_2(c), 512 // bp)), bp
    bp = min(triton.next_power_of_2(p), 4096)
    return max(1, min(triton.next_power_of_2(c), 16384 // bp)), bp


def _gather_blocks(c: int, h: int, w: int, gpu: bool, ps: bool = False) -> dict:
    """Blocks of the deterministic gather kernels. GPU: 4 channels x a 16x32 pixel tile (16x16
    for the PS variants). Triton lays the tile out with every channel of the block in each
    thread, so per-channel work is replicated and wide channel blocks cost registers (16
    channels: 228-254 registers); these sizes stay spill-free with the ptxas of Triton 3.6 and
    3.9. Interpreter: larger tiles, fewer programs."""
    if gpu:
        return {"BLOCK_C": min(4, triton.next_power_of_2(c)), "TILE_H": 16,
                "TILE_W": 16 if ps else 32, "ROI_BLOCK": 128}
    return {"BLOCK_C": min(64, triton.next_power_of_2(c)), "TILE_H": min(32, triton.next_power_of_2(h)),
            "TILE_W": min(32, triton.next_power_of_2(w)), "ROI_BLOCK": 256}


def _per_roi_grid(k: int, c: int, p: int, bc: int, bp: int) -> tuple[int, int]:
    return (k, triton.cdiv(c, bc) * triton.cdiv(p, bp))


def roi_align_fwd(input, rois, out, spatial_scale, sampling_ratio, aligned):
    k, c, ph, pw = out.shape
    n, _, h, w = input.shape
    if out.numel() == 0:
        return
    if input.numel() == 0:  # the oracle's output for an empty map
        out.zero_()
        return
    bc, bp = _tile_blocks(c, ph * pw, input.is_cuda)
    hi, lo = _f32_parts(spatial_scale)
    with _device(input):
        _roi_align_fwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            input, rois, out, n, c, h, w, *input.stride(), rois.stride(0), rois.stride(1),
            hi, lo, int(sampling_ratio), ph, pw,
            ALIGNED=bool(aligned), C_FAST=_c_fast(input), DT=_dt(input), BLOCK_C=bc, BLOCK_P=bp,
            **_launch_opts(input))


def roi_align_bwd(grad_out, rois, grad_input, spatial_scale, sampling_ratio, aligned, deterministic):
    k, c, ph, pw = grad_out.shape
    n, _, h, w = grad_input.shape
    if grad_out.numel() == 0 or grad_input.numel() == 0:
        return
    hi, lo = _f32_parts(spatial_scale)
    with _device(grad_out):
        if deterministic:
            cfg = _gather_blocks(c, h, w, grad_out.is_cuda)
            tiles = triton.cdiv(h, cfg["TILE_H"]) * triton.cdiv(w, cfg["TILE_W"])
            _roi_align_bwd_gather_kernel[(tiles * n * triton.cdiv(c, cfg["BLOCK_C"]),)](
                grad_out, rois, grad_input, k, n, c, h, w, *grad_out.stride(),
                rois.stride(0), rois.stride(1), hi, lo, int(sampling_ratio), ph, pw,
                ALIGNED=bool(aligned), DT=_dt(grad_input), **cfg, **_launch_opts(grad_out))
            return
        bc, bp = _tile_blocks(c, ph * pw, grad_out.is_cuda)
        _roi_align_bwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            grad_out, rois, grad_input, n, c, h, w, *grad_out.stride(),
            rois.stride(0), rois.stride(1), hi, lo, int(sampling_ratio), ph, pw,
            ALIGNED=bool(aligned), DT=_dt(grad_input), BLOCK_C=bc, BLOCK_P=bp,
            **_launch_opts(grad_out))


def ps_roi_align_fwd(input, rois, out, spatial_scale, sampling_ratio):
    k, c, ph, pw = out.shape
    n, _, h, w = input.shape
    if out.numel() == 0:
        return
    if input.numel() == 0:
        out.zero_()
        return
    bc, bp = _tile_blocks(c, ph * pw, input.is_cuda)
    hi, lo = _f32_parts(spatial_scale)
    with _device(input):
        _ps_roi_align_fwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            input, rois, out, n, c, h, w, *input.stride(), rois.stride(0), rois.stride(1),
            hi, lo, int(sampling_ratio), ph, pw, DT=_dt(input), BLOCK_C=bc, BLOCK_P=bp,
            **_launch_opts(input))


def ps_roi_align_bwd(grad_out, rois, grad_input, spatial_scale, sampling_ratio, deterministic):
    k, c, ph, pw = grad_out.shape
    n, c_in, h, w = grad_input.shape
    if grad_out.numel() == 0 or grad_input.numel() == 0:
        return
    hi, lo = _f32_parts(spatial_scale)
    with _device(grad_out):
        if deterministic:
            cfg = _gather_blocks(c_in, h, w, grad_out.is_cuda, ps=True)
            tiles = triton.cdiv(h, cfg["TILE_H"]) * triton.cdiv(w, cfg["TILE_W"])
            _ps_roi_align_bwd_gather_kernel[(tiles * n * triton.cdiv(c_in, cfg["BLOCK_C"]),)](
                grad_out, rois, grad_input, k, n, c, c_in, h, w, *grad_out.stride(),
                rois.stride(0), rois.stride(1), hi, lo, int(sampling_ratio), ph, pw,
                DT=_dt(grad_input), **cfg, **_launch_opts(grad_out))
            return
        bc, bp = _tile_blocks(c, ph * pw, grad_out.is_cuda)
        _ps_roi_align_bwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            grad_out, rois, grad_input, n, c, h, w, *grad_out.stride(),
            rois.stride(0), rois.stride(1), hi, lo, int(sampling_ratio), ph, pw,
            DT=_dt(grad_input), BLOCK_C=bc, BLOCK_P=bp, **_launch_opts(grad_out))


def roi_pool_fwd(input, rois, out, argmax, spatial_scale):
    k, c, ph, pw = out.shape
    n, _, h, w = input.shape
    if out.numel() == 0:
        return
    if input.numel() == 0:  # every bin is empty
        out.zero_()
        argmax.fill_(-1)
        return
    bc, bp = _tile_blocks(c, ph * pw, input.is_cuda)
    hi, lo = _f32_parts(spatial_scale)
    with _device(input):
        _roi_pool_fwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            input, rois, out, argmax, n, c, h, w, *input.stride(), rois.stride(0), rois.stride(1),
            hi, lo, ph, pw, C_FAST=_c_fast(input), DT=_dt(input), BLOCK_C=bc, BLOCK_P=bp,
            **_launch_opts(input))


def roi_pool_bwd(grad_out, argmax, rois, grad_input, deterministic):
    k, c, ph, pw = grad_out.shape
    n, _, h, w = grad_input.shape
    if grad_out.numel() == 0 or grad_input.numel() == 0:
        return
    with _device(grad_out):
        if deterministic:
            gpu = grad_out.is_cuda
            chunk = 256 if gpu else min(4096, triton.next_power_of_2(h * w))
            bc = min(8 if gpu else 64, triton.next_power_of_2(c))
            bp = min(64 if gpu else 4096, triton.next_power_of_2(ph * pw))
            grid = (triton.cdiv(h * w, chunk) * n * triton.cdiv(c, bc),)
            _roi_pool_bwd_gather_kernel[grid](
                grad_out, argmax, rois, grad_input, k, n, c, h * w, *grad_out.stride(),
                *argmax.stride(), rois.stride(0), ph, pw, DT=_dt(grad_input), BLOCK_C=bc,
                BLOCK_P=bp, CHUNK=chunk, ROI_BLOCK=128 if gpu else 256, **_launch_opts(grad_out))
            return
        bc, bp = _tile_blocks(c, ph * pw, grad_out.is_cuda)
        _roi_pool_bwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            grad_out, argmax, rois, grad_input, n, c, h, w, *grad_out.stride(), *argmax.stride(),
            rois.stride(0), ph, pw, DT=_dt(grad_input), BLOCK_C=bc, BLOCK_P=bp,
            **_launch_opts(grad_out))


def ps_roi_pool_fwd(input, rois, out, spatial_scale):
    k, c, ph, pw = out.shape
    n, _, h, w = input.shape
    if out.numel() == 0:
        return
    if input.numel() == 0:
        out.zero_()
        return
    bc, bp = _tile_blocks(c, ph * pw, input.is_cuda)
    hi, lo = _f32_parts(spatial_scale)
    with _device(input):
        _ps_roi_pool_fwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            input, rois, out, n, c, h, w, *input.stride(), rois.stride(0), rois.stride(1),
            hi, lo, ph, pw, DT=_dt(input), BLOCK_C=bc, BLOCK_P=bp, **_launch_opts(input))


def ps_roi_pool_bwd(grad_out, rois, grad_input, spatial_scale, deterministic):
    k, c, ph, pw = grad_out.shape
    n, c_in, h, w = grad_input.shape
    if grad_out.numel() == 0 or grad_input.numel() == 0:
        return
    hi, lo = _f32_parts(spatial_scale)
    with _device(grad_out):
        if deterministic:
            cfg = _gather_blocks(c_in, h, w, grad_out.is_cuda, ps=True)
            tiles = triton.cdiv(h, cfg["TILE_H"]) * triton.cdiv(w, cfg["TILE_W"])
            _ps_roi_pool_bwd_gather_kernel[(tiles * n * triton.cdiv(c_in, cfg["BLOCK_C"]),)](
                grad_out, rois, grad_input, k, n, c, c_in, h, w, *grad_out.stride(),
                rois.stride(0), rois.stride(1), hi, lo, ph, pw,
                DT=_dt(grad_input), **cfg, **_launch_opts(grad_out))
            return
        bc, bp = _tile_blocks(c, ph * pw, grad_out.is_cuda)
        _ps_roi_pool_bwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            grad_out, rois, grad_input, n, c, c_in, h, w, *grad_out.stride(),
            rois.stride(0), rois.stride(1), hi, lo, ph, pw,
            DT=_dt(grad_input), BLOCK_C=bc, BLOCK_P=bp, **_launch_opts(grad_out))


_MAX_LEVELS = 8


def _level_args(tensors, spatial_scales, with_strides: bool) -> list:
    """Per-level kernel arguments, grouped by kind, each group padded to 8 with level 0."""
    pad = list(range(len(tensors))) + [0] * (_MAX_LEVELS - len(tensors))
    args = [tensors[i] for i in pad]
    args += [tensors[i].shape[2] for i in pad] + [tensors[i].shape[3] for i in pad]
    if with_strides:
        for d in range(4):
            args += [tensors[i].stride(d) for i in pad]
    return args + [float(spatial_scales[i]) for i in pad]


def _level_range(spatial_scales) -> tuple[int, int]:
    from pygen.ref.roi import level_range  # the rule lives once, in the oracle
    return level_range(spatial_scales)


def multi_scale_roi_align_fwd(features, rois, out, spatial_scales, sampling_ratio, aligned,
                              canonical_scale, canonical_level):
    k, c, ph, pw = out.shape
    if out.numel() == 0:
        return
    f0 = features[0]
    if f0.shape[0] == 0:
        out.zero_()
        return
    k_min, k_max = _level_range(spatial_scales)
    bc, bp = _tile_blocks(c, ph * pw, f0.is_cuda)
    with _device(f0):
        _multi_scale_roi_align_fwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            rois, out, f0.shape[0], c, rois.stride(0), rois.stride(1), int(sampling_ratio), ph, pw,
            float(canonical_scale), int(canonical_level), int(k_min), int(k_max),
            *_level_args(features, spatial_scales, True),
            NUM_LEVELS=len(features), ALIGNED=bool(aligned), C_FAST=_c_fast(f0), DT=_dt(f0),
            BLOCK_C=bc, BLOCK_P=bp, **_launch_opts(f0))


def multi_scale_roi_align_bwd(grad_out, rois, grad_features, spatial_scales, sampling_ratio,
                              aligned, canonical_scale, canonical_level, deterministic):
    k, c, ph, pw = grad_out.shape
    g0 = grad_features[0]
    if grad_out.numel() == 0 or g0.shape[0] == 0 or c == 0:
        return
    k_min, k_max = _level_range(spatial_scales)
    common = (int(sampling_ratio), ph, pw, float(canonical_scale), int(canonical_level),
              int(k_min), int(k_max), *_level_args(grad_features, spatial_scales, False))
    with _device(grad_out):
        if deterministic:
            cfg = _gather_blocks(c, max(g.shape[2] for g in grad_features),
                                 max(g.shape[3] for g in grad_features), grad_out.is_cuda)
            tiles = sum(triton.cdiv(g.shape[2], cfg["TILE_H"]) * triton.cdiv(g.shape[3], cfg["TILE_W"])
                        for g in grad_features)
            if tiles == 0:
                return
            _multi_scale_roi_align_bwd_gather_kernel[(tiles * g0.shape[0] * triton.cdiv(c, cfg["BLOCK_C"]),)](
                grad_out, rois, k, g0.shape[0], c, *grad_out.stride(), rois.stride(0), rois.stride(1),
                *common, NUM_LEVELS=len(grad_features), ALIGNED=bool(aligned), DT=_dt(g0),
                **cfg, **_launch_opts(grad_out))
            return
        bc, bp = _tile_blocks(c, ph * pw, grad_out.is_cuda)
        _multi_scale_roi_align_bwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            grad_out, rois, g0.shape[0], c, *grad_out.stride(), rois.stride(0), rois.stride(1),
            *common, NUM_LEVELS=len(grad_features), ALIGNED=bool(aligned), DT=_dt(g0),
            BLOCK_C=bc, BLOCK_P=bp, **_launch_opts(grad_out))


# ----------------------------------------------------------------------------------------------
# COMPILE_SPECS: representative offline compiles for `pygen inspect` and the compile tests
# ----------------------------------------------------------------------------------------------
# A list of dicts, one per (kernel, representative configuration):
#   "name":       kernel name (str)
#   "fn":         the @triton.jit function
#   "signature":  {argument name: Triton type} for EVERY argument in order: "*fp32", "*bf16",
#                 "*i32" (pointers), "i32", "fp32", or "constexpr"
#   "constexprs": {argument name: value} for every "constexpr" argument. As at a real launch,
#                 integer arguments equal to 1 (unit strides) are constexprs too: Triton's JIT
#                 specialises them.
#   "num_warps":  warps per program (the launchers use the same)
#   "what":       the shape it stands for (FPN / Mask R-CNN / R-FCN heads at 800x1333)
# Compile offline, no GPU needed:
#   src = triton.compiler.ASTSource(fn=s["fn"], signature=s["signature"], constexprs=s["constexprs"])
#   triton.compile(src, target=triton.backends.compiler.GPUTarget("cuda", 90, 32),
#                  options={"num_warps": s["num_warps"]})

_FLOAT_ARGS = {"scale_hi", "scale_lo", "canonical_scale"} | {f"s{i}" for i in range(8)}


def _spec(fn, what: str, constexprs: dict, ptr: str = "*fp32", types: dict | None = None) -> dict:
    types = dict(types or {})
    sig = {}
    for a in fn.arg_names:
        if a in constexprs:
            sig[a] = "constexpr"
        elif a in types:
            sig[a] = types[a]
        elif a.endswith("_ptr") or (len(a) == 2 and a[0] in "fg" and a[1].isdigit()):
            sig[a] = "*fp32" if a.startswith(("grad_in", "g")) and a != "grad_out_ptr" else ptr
        elif a in _FLOAT_ARGS:
            sig[a] = "fp32"
        else:
            sig[a] = "i32"
    name = getattr(fn, "__name__", None) or fn.fn.__name__
    return {"name": name, "fn": fn, "signature": sig, "constexprs": dict(constexprs),
            "num_warps": _NUM_WARPS, "what": what}


def _compile_specs() -> list:
    f32 = tl.float32
    nchw = {"stride_w": 1, "roi_stride_f": 1}           # NCHW input: unit W stride
    cl = {"stride_c": 1, "roi_stride_f": 1}             # channels_last input: unit C stride
    go = {"go_s3": 1, "roi_stride_f": 1}                # contiguous grad_out
    gather = {"BLOCK_C": 4, "TILE_H": 16, "TILE_W": 32, "ROI_BLOCK": 128}
    ps_gather = {**gather, "TILE_W": 16}
    fpn = {"NUM_LEVELS": 4, "ALIGNED": False, "DT": f32}
    ms_fwd = {**{f"sw{i}": 1 for i in range(8)}, "roi_stride_f": 1}
    return [
        _spec(_roi_align_fwd_kernel, "FPN box head: C=256, 7x7, NCHW fp32",
              {**nchw, "ALIGNED": False, "C_FAST": False, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64}),
        _spec(_roi_align_fwd_kernel, "channels_last bf16, C=256, 7x7, aligned",
              {**cl, "ALIGNED": True, "C_FAST": True, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64},
              ptr="*bf16"),
        _spec(_roi_align_fwd_kernel, "Mask R-CNN mask head: C=256, 14x14, NCHW fp32",
              {**nchw, "ALIGNED": True, "C_FAST": False, "DT": f32, "BLOCK_C": 2, "BLOCK_P": 256}),
        _spec(_roi_align_bwd_kernel, "C=256, 7x7, atomics",
              {**go, "ALIGNED": False, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64}),
        _spec(_roi_align_bwd_gather_kernel, "C=256, 7x7, deterministic gather",
              {**go, "ALIGNED": False, "DT": f32, **gather}),
        _spec(_ps_roi_align_fwd_kernel, "R-FCN: C_out=21, 7x7 (C_in=1029), NCHW fp32",
              {**nchw, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64}),
        _spec(_ps_roi_align_bwd_kernel, "R-FCN: C_out=21, 7x7, atomics",
              {**go, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64}),
        _spec(_ps_roi_align_bwd_gather_kernel, "R-FCN: C_out=21, 7x7, deterministic gather",
              {**go, "DT": f32, **ps_gather}),
        _spec(_roi_pool_fwd_kernel, "Fast R-CNN: C=512, 7x7, NCHW fp32",
              {**nchw, "C_FAST": False, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64},
              types={"argmax_ptr": "*i32"}),
        _spec(_roi_pool_bwd_kernel, "Fast R-CNN: C=512, 7x7, atomics",
              {"go_s3": 1, "am_s3": 1, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64},
              types={"argmax_ptr": "*i32"}),
        _spec(_roi_pool_bwd_gather_kernel, "Fast R-CNN: C=512, 7x7, deterministic gather",
              {"go_s3": 1, "am_s3": 1, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64, "CHUNK": 256,
               "ROI_BLOCK": 128}, types={"argmax_ptr": "*i32"}),
        _spec(_ps_roi_pool_fwd_kernel, "R-FCN: C_out=21, 7x7, NCHW fp32",
              {**nchw, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64}),
        _spec(_ps_roi_pool_bwd_kernel, "R-FCN: C_out=21, 7x7, atomics",
              {**go, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64}),
        _spec(_ps_roi_pool_bwd_gather_kernel, "R-FCN: C_out=21, 7x7, deterministic gather",
              {**go, "DT": f32, **ps_gather}),
        _spec(_multi_scale_roi_align_fwd_kernel, "FPN P2-P5: C=256, 7x7, NCHW fp32",
              {**ms_fwd, **fpn, "C_FAST": False, "BLOCK_C": 8, "BLOCK_P": 64}),
        _spec(_multi_scale_roi_align_bwd_kernel, "FPN P2-P5: C=256, 7x7, atomics",
              {**go, **fpn, "BLOCK_C": 8, "BLOCK_P": 64}),
        _spec(_multi_scale_roi_align_bwd_gather_kernel, "FPN P2-P5: C=256, 7x7, deterministic gather",
              {**go, **fpn, **gather}),
    ]


COMPILE_SPECS = _compile_specs()
