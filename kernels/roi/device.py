"""Device helpers of the Triton RoI kernels (align.py, pool.py, gather.py): RoI decoding, the bilinear
and integer-bin geometry, the per-RoI sample loops shared by the forward and atomic backward
kernels, the RoI walk of the gathers, the FPN level selection and the rounding output store. Math
and layouts: kernels/roi/__init__.py's docstring.

What travels together goes as one Triton tuple, from the launcher on (a tuple kernel argument is
one Python tuple at the launch and specialises element by element, unit strides included):
    rois  = (rois_ptr, roi_stride, roi_stride_f)        the [K, 5] RoI table
    box   = (batch_index, x1, y1, x2, y2)                one RoI (or a vector of them), from _roi_row
    feat  = (ptr, N, C, H, W, stride_n, stride_c, stride_h, stride_w)   a feature map, C = out channels
    go    = (grad_out_ptr, s0, s1, s2, s3)               grad_out [K, C, PH, PW] and its strides
    am    = (argmax_ptr, s0, s1, s2, s3)                 roi_pool's argmax, likewise
    scale = (hi, lo)                                     spatial_scale (kernels/_args.py)
    fpn   = (a0, ..., a7)                                the FPN level area thresholds
    feats / grads, heights, widths, strides_*, scales    FPN: one value per level slot (8)
"""

import triton
import triton.language as tl

from .._args import join
from .._bf16 import cast
from .._device import interpreting

# The interpreter's fp32 -> bf16 store truncates; _bf16.cast rounds first when this is set. A module
# constant rather than a kernel argument keeps the kernels' signatures (and their compile specs) as
# they are; triton.jit reads the same variable once, at import, to pick the interpreter.
INTERPRETING = tl.constexpr(interpreting())


@triton.jit
def _store_out(ptr, v, mask):
    # every pooled output goes through here: rounded to nearest even as the GPU's cvt.rn rounds
    tl.store(ptr, cast(v, ptr.dtype.element_ty, INTERPRETING), mask=mask)


@triton.jit
def _tile_zeros(BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, C_FAST: tl.constexpr, DT: tl.constexpr):
    if C_FAST:
        z = tl.zeros([BLOCK_P, BLOCK_C], DT)
    else:
        z = tl.zeros([BLOCK_C, BLOCK_P], DT)
    return z


@triton.jit
def _roi_batch(rois, r, mask, DT: tl.constexpr):
    # the batch index alone (roi_pool's backward needs no box): -1 in masked lanes
    rois_ptr, roi_stride, _roi_stride_f = rois
    return tl.load(rois_ptr + r.to(tl.int64) * roi_stride, mask=mask, other=-1.0).to(DT)


@triton.jit
def _roi_row(rois, r, mask, DT: tl.constexpr):
    # works for a scalar RoI index or a vector of them (masked lanes read as batch -1)
    rois_ptr, roi_stride, roi_stride_f = rois
    base = rois_ptr + r.to(tl.int64) * roi_stride
    bf = _roi_batch(rois, r, mask, DT)
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
def _align_box(box, scale, ALIGNED: tl.constexpr):
    # same operation order as the oracle: x0 = x1*s - o, w = x2*s - o - x0
    _b, x1, y1, x2, y2 = box
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
def _align_geometry(box, ok, scale, sampling_ratio, PH, PW, ALIGNED: tl.constexpr, DT: tl.constexpr):
    """(x0, y0, rw, rh, gh, gw, count) of one RoI: its box, its sample grid gh x gw per bin and
    the divisor 1 / max(gh*gw, 1). A RoI that is not ``ok`` gets no samples (gh = 0)."""
    x0, y0, rw, rh = _align_box(box, scale, ALIGNED)
    gh = tl.where(ok, _grid(rh, PH, sampling_ratio), 0)
    gw = _grid(rw, PW, sampling_ratio)
    return x0, y0, rw, rh, gh, gw, tl.maximum(gh * gw, 1).to(DT)


@triton.jit
def _bin_steps(rh, rw, gh, gw, PH, PW):
    """(bin_h, bin_w, step_h, step_w): a bin's extent and the distance between its samples."""
    bin_h = rh / PH
    bin_w = rw / PW
    return bin_h, bin_w, bin_h / tl.maximum(gh, 1), bin_w / tl.maximum(gw, 1)


@triton.jit
def _sample_origins(geo, i, j, PH, PW, DT: tl.constexpr):
    """(ys, xs, step_h, step_w) of bins (i, j) of a RoI (geo: _align_geometry's tuple): where the
    samples of each bin start, and their spacing; sample (a, b) is at (ys + (a+.5)*step_h, ...)."""
    x0, y0, rw, rh, gh, gw, _count = geo
    bin_h, bin_w, step_h, step_w = _bin_steps(rh, rw, gh, gw, PH, PW)
    return y0 + i.to(DT) * bin_h, x0 + j.to(DT) * bin_w, step_h, step_w


@triton.jit
def _bilinear_axis(coord, size):
    """One axis of torchvision's bilinear_interpolate: (low, high, w_low, w_high, valid).
    The weights are NOT zeroed for invalid samples (|coord| outside [-1, size]): callers mask
    with `valid` (a masked load reads 0), which saves two selects per sample. Clamping to
    [0, size - 1] before the floor gives the reference's edge rule (low = high = size - 1 and
    frac = 0 from size - 1 on) with fewer operations."""
    valid = (coord >= -1.0) & (coord <= size)
    c = tl.minimum(tl.maximum(coord, 0.0), size - 1)
    low = tl.floor(c).to(tl.int32)
    frac = c - low.to(c.dtype)
    return low, tl.minimum(low + 1, size - 1), 1.0 - frac, frac, valid


@triton.jit
def _axis_weights(acc, idx, start, step, n, size):
    """acc[..., t] += the bilinear weight that the n samples start + (s + 0.5) * step give
    coordinate idx[t] along one axis (the separable factor of roi_align's gradient)."""
    for s in range(n):
        lo, hi, w_lo, w_hi, v = _bilinear_axis(start + (s + 0.5) * step, size)
        # (selects, not products: the interpreter cannot broadcast a scalar comparison result)
        acc += tl.where(idx == lo, tl.where(v, w_lo, 0.0), 0.0)
        acc += tl.where(idx == hi, tl.where(v, w_hi, 0.0), 0.0)
    return acc


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
def _fpn_level(box, fpn):
    # pygen.ref.roi.fpn_levels: the level index is the number of area thresholds the box's
    # float32 area reaches (pygen.ref.roi.fpn_level_thresholds, NaN-padded past the last). The
    # thresholds come from torchvision's log2 formula evaluated on the CPU, so the GPU's
    # approximate division and lg2 never move a box near a boundary to another level.
    _b, x1, y1, x2, y2 = box
    a0, a1, a2, a3, a4, a5, a6, a7 = fpn
    x1 = x1.to(tl.float32)
    area = (x2.to(tl.float32) - x1) * (y2.to(tl.float32) - y1.to(tl.float32))
    lvl = (area >= a0).to(tl.int32) + (area >= a1).to(tl.int32) + (area >= a2).to(tl.int32)
    lvl += (area >= a3).to(tl.int32) + (area >= a4).to(tl.int32) + (area >= a5).to(tl.int32)
    lvl += (area >= a6).to(tl.int32) + (area >= a7).to(tl.int32)
    return lvl


@triton.jit
def _pick(lvl, NUM_LEVELS: tl.constexpr, slots):
    """slots[lvl] of a tuple of 8 per-level values (pointers or scalars); slots[0] when lvl is
    out of range. A scalar branch, so pointers select portably too."""
    r = slots[0]
    for l in tl.static_range(1, NUM_LEVELS):
        if lvl == l:
            r = slots[l]
    return r


@triton.jit
def _select_level(lvl, NUM_LEVELS: tl.constexpr, ptrs, heights, widths, scales, DT: tl.constexpr):
    """(pointer, H, W, scale, ok) of level lvl; ok: the RoI has a level, and it is not empty (a
    level index past the levels given, as scales that skip a level make, pools to zeros like the
    oracle)."""
    Hl = _pick(lvl, NUM_LEVELS, heights)
    Wl = _pick(lvl, NUM_LEVELS, widths)
    ok = (lvl >= 0) & (lvl < NUM_LEVELS) & (Hl > 0) & (Wl > 0)
    return _pick(lvl, NUM_LEVELS, ptrs), Hl, Wl, _pick(lvl, NUM_LEVELS, scales).to(DT), ok


@triton.jit
def _channel_bin_tile(pid1, PH, PW, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Axis-1 program id -> (bins P, channel offsets [BLOCK_C], bin offsets [BLOCK_P]) of the
    (RoI, channel block, bin block) grid of the per-RoI kernels."""
    P = PH * PW
    n_pb = tl.cdiv(P, BLOCK_P)
    cb = pid1 // n_pb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = (pid1 - cb * n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
    return P, c, p


@triton.jit
def _load_bins(go, k, c, p, PW, mask, other):
    """The [BLOCK_C, BLOCK_P] tile (channels c, bins p) of RoI k of a [K, C, PH, PW] tensor
    given as (pointer, 4 strides): grad_out, or roi_pool's argmax."""
    ptr, s0, s1, s2, s3 = go
    i = p // PW
    j = p - i * PW
    return tl.load(ptr + k.to(tl.int64) * s0 + (c * s1)[:, None] + (i * s2 + j * s3)[None, :], mask=mask, other=other)


@triton.jit
def _align_sum(
    feat,
    geo,
    c,
    cmask,
    p,
    pmask,
    PH,
    PW,
    PS: tl.constexpr,
    C_FAST: tl.constexpr,
    DT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Sum over the sample grid of the bilinear values, for a tile of channels x bins: channels
    on axis 1 - C_FAST, bins on axis C_FAST (expand_dims with those constexpr axes). feat: (image
    pointer, H, W, strides over C, H, W); geo: _align_geometry's tuple."""
    feat_ptr, H, W, stride_c, stride_h, stride_w = feat
    i = p // PW
    ys, xs, step_h, step_w = _sample_origins(geo, i, p - i * PW, PH, PW, DT)
    gh, gw = geo[4], geo[5]
    # the pointer tile is loop-invariant; the sample loops only add per-bin offsets
    if PS:
        base = (
            feat_ptr + tl.expand_dims(c * (PH * PW) * stride_c, 1 - C_FAST) + tl.expand_dims(p * stride_c, 0 + C_FAST)
        )
    else:
        base = feat_ptr + tl.expand_dims(c * stride_c, 1 - C_FAST)
    live = tl.expand_dims(cmask, 1 - C_FAST) & tl.expand_dims(pmask, 0 + C_FAST)
    acc = _tile_zeros(BLOCK_C, BLOCK_P, C_FAST, DT)
    for sy in range(gh):
        yl, yh, wyl, wyh, vy = _bilinear_axis(ys + (sy + 0.5) * step_h, H)
        # per sample row: row pointers, row weights and row validity expanded once
        base_l = base + tl.expand_dims(yl * stride_h, 0 + C_FAST)
        base_h = base + tl.expand_dims(yh * stride_h, 0 + C_FAST)
        wyl = tl.expand_dims(wyl, 0 + C_FAST)
        wyh = tl.expand_dims(wyh, 0 + C_FAST)
        live_y = live & tl.expand_dims(vy, 0 + C_FAST)
        for sx in range(gw):
            xl, xh, wxl, wxh, vx = _bilinear_axis(xs + (sx + 0.5) * step_w, W)
            m = live_y & tl.expand_dims(vx, 0 + C_FAST)
            col_l = tl.expand_dims(xl * stride_w, 0 + C_FAST)
            col_h = tl.expand_dims(xh * stride_w, 0 + C_FAST)
            wxl = tl.expand_dims(wxl, 0 + C_FAST)
            wxh = tl.expand_dims(wxh, 0 + C_FAST)
            # invalid samples load 0 (masked), so their unzeroed weights add nothing
            acc += (wyl * wxl) * tl.load(base_l + col_l, mask=m, other=0.0).to(DT)
            acc += (wyl * wxh) * tl.load(base_l + col_h, mask=m, other=0.0).to(DT)
            acc += (wyh * wxl) * tl.load(base_h + col_l, mask=m, other=0.0).to(DT)
            acc += (wyh * wxh) * tl.load(base_h + col_h, mask=m, other=0.0).to(DT)
    return acc


@triton.jit
def _align_scatter(grad_ptr, H, W, g, geo, c, cmask, p, pmask, PH, PW, PS: tl.constexpr, DT: tl.constexpr):
    """Atomic backward of _align_sum: g is the [BLOCK_C, BLOCK_P] tile of grad_out / count;
    grad_ptr points at image n of a contiguous NCHW buffer."""
    i = p // PW
    ys, xs, step_h, step_w = _sample_origins(geo, i, p - i * PW, PH, PW, DT)
    gh, gw = geo[4], geo[5]
    if PS:
        chan = (c * (PH * PW) * H * W)[:, None] + (p * H * W)[None, :]
    else:
        chan = (c * H * W)[:, None] + (p * 0)[None, :]
    live = cmask[:, None] & pmask[None, :]
    for sy in range(gh):
        yl, yh, wyl, wyh, vy = _bilinear_axis(ys + (sy + 0.5) * step_h, H)
        base_l = grad_ptr + chan + (yl * W)[None, :]
        base_h = grad_ptr + chan + (yh * W)[None, :]
        gl = g * wyl[None, :]
        gh_ = g * wyh[None, :]
        live_y = live & vy[None, :]
        for sx in range(gw):
            xl, xh, wxl, wxh, vx = _bilinear_axis(xs + (sx + 0.5) * step_w, W)
            m = live_y & vx[None, :]  # invalid samples add nothing (their weights are not zeroed)
            tl.atomic_add(base_l + xl[None, :], gl * wxl[None, :], mask=m, sem="relaxed")
            tl.atomic_add(base_l + xh[None, :], gl * wxh[None, :], mask=m, sem="relaxed")
            tl.atomic_add(base_h + xl[None, :], gh_ * wxl[None, :], mask=m, sem="relaxed")
            tl.atomic_add(base_h + xh[None, :], gh_ * wxh[None, :], mask=m, sem="relaxed")


@triton.jit
def _align_program(
    box, ok, N, scale, sampling_ratio, PH, PW, ALIGNED, DT, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr
):
    """What a (RoI, channel block, bin block) program of roi_align / ps_roi_align knows before its
    sample loops: (image b, _align_geometry's tuple, bins P, channels c, bins p)."""
    P, c, p = _channel_bin_tile(tl.program_id(1), PH, PW, BLOCK_C, BLOCK_P)
    b, in_range = _batch(box[0], N)
    return b, _align_geometry(box, in_range & ok, scale, sampling_ratio, PH, PW, ALIGNED, DT), P, c, p


@triton.jit
def _align_fwd_program(
    feat,
    box,
    ok_extra,
    scale,
    sampling_ratio,
    out_ptr,
    PH,
    PW,
    ALIGNED: tl.constexpr,
    PS: tl.constexpr,
    C_FAST: tl.constexpr,
    DT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """One (RoI k = program 0, channel block x bin block = program 1) program of roi_align /
    ps_roi_align / multi_scale_roi_align: out[k, c, p] for a tile of channels c and bins p."""
    feat_ptr, N, C, H, W, stride_n, stride_c, stride_h, stride_w = feat
    k = tl.program_id(0)
    b, geo, P, c, p = _align_program(box, ok_extra, N, scale, sampling_ratio, PH, PW, ALIGNED, DT, BLOCK_C, BLOCK_P)
    cmask = c < C
    pmask = p < P
    image = (feat_ptr + b.to(tl.int64) * stride_n, H, W, stride_c, stride_h, stride_w)
    acc = _align_sum(image, geo, c, cmask, p, pmask, PH, PW, PS, C_FAST, DT, BLOCK_C, BLOCK_P)
    out_off = tl.expand_dims(c * P, 1 - C_FAST) + tl.expand_dims(p, 0 + C_FAST)
    m = tl.expand_dims(cmask, 1 - C_FAST) & tl.expand_dims(pmask, 0 + C_FAST)
    _store_out(out_ptr + k.to(tl.int64) * C * P + out_off, acc / geo[6], m)


@triton.jit
def _align_bwd_program(
    go,
    grad_ptr,
    N,
    C,
    H,
    W,
    box,
    ok_extra,
    scale,
    sampling_ratio,
    PH,
    PW,
    ALIGNED: tl.constexpr,
    PS: tl.constexpr,
    DT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Atomic backward program; C = channels of grad_out; grad_ptr: contiguous NCHW, C_in = C*P
    for PS."""
    k = tl.program_id(0)
    b, geo, P, c, p = _align_program(box, ok_extra, N, scale, sampling_ratio, PH, PW, ALIGNED, DT, BLOCK_C, BLOCK_P)
    cmask = c < C
    pmask = p < P
    g = _load_bins(go, k, c, p, PW, cmask[:, None] & pmask[None, :], 0.0).to(DT) / geo[6]
    if PS:
        c_in = C * P
    else:
        c_in = C
    _align_scatter(grad_ptr + b.to(tl.int64) * c_in * H * W, H, W, g, geo, c, cmask, p, pmask, PH, PW, PS, DT)


@triton.jit
def _int_pool_bins(rois, k, N, H, W, scale, p, pmask, PH, PW, PLUS_ONE: tl.constexpr, DT: tl.constexpr):
    """Image b, validity, the clipped integer bins [hs, he) x [ws, we) of bins p of RoI k, and the
    largest bin extent (max_h, max_w) over the live bins: the pixel loops run that far, smaller
    bins mask the excess (a RoI of no valid image gets no rows)."""
    bf, x1, y1, x2, y2 = _roi_row(rois, k, k >= 0, DT)
    b, ok = _batch(bf, N)
    scale64 = join(scale, tl.float64)
    w_start, w_len = _int_box(x1, x2, scale64, PLUS_ONE)
    h_start, h_len = _int_box(y1, y2, scale64, PLUS_ONE)
    i = p // PW
    j = p - i * PW
    hs, he = _int_bins(i, PH, h_start, h_len, H)
    ws, we = _int_bins(j, PW, w_start, w_len, W)
    max_h = tl.where(ok, tl.max(tl.where(pmask, he - hs, 0), axis=0), 0)
    max_w = tl.max(tl.where(pmask, we - ws, 0), axis=0)
    return b, hs, he, ws, we, max_h, max_w


@triton.jit
def _int_pool_program(rois, N, H, W, scale, PH, PW, PLUS_ONE, DT, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """What a (RoI k = program 0, channel block x bin block = program 1) program of roi_pool /
    ps_roi_pool knows before its pixel loops: (k, bins P, channels c, bins p, p < P,
    _int_pool_bins' tuple)."""
    k = tl.program_id(0)
    P, c, p = _channel_bin_tile(tl.program_id(1), PH, PW, BLOCK_C, BLOCK_P)
    pmask = p < P
    return k, P, c, p, pmask, _int_pool_bins(rois, k, N, H, W, scale, p, pmask, PH, PW, PLUS_ONE, DT)


@triton.jit
def _bin_area(hs, he, ws, we, DT: tl.constexpr):
    # ps_roi_pool's divisor: the pixels of bin [hs, he) x [ws, we), an empty bin counting 1
    return tl.maximum((he - hs) * (we - ws), 1).to(DT)


@triton.jit
def _ps_lanes(c, PH, PW):
    """Input channel c of a position-sensitive op -> (output channel, bin row, bin column)."""
    co = c // (PH * PW)
    rem = c - co * (PH * PW)
    ci = rem // PW
    return co, ci, rem - ci * PW


@triton.jit
def _tile_coords(tile, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    n_tw = tl.cdiv(W, TILE_W)
    ty = tile // n_tw
    tx = tile - ty * n_tw
    t = tl.arange(0, TILE_H * TILE_W)
    rows = ty * TILE_H + t // TILE_W  # TILE_W is a power of two: a shift
    cols = tx * TILE_W + t % TILE_W
    return ty * TILE_H, tx * TILE_W, rows, cols, (rows < H) & (cols < W)


@triton.jit
def _advance_level(lvl, rem, l: tl.constexpr, n_prev):
    mv = (lvl == l - 1) & (rem >= n_prev)
    return tl.where(mv, l, lvl), tl.where(mv, rem - n_prev, rem)


@triton.jit
def _level_of_tile(tile, NUM_LEVELS: tl.constexpr, heights, widths, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Global tile index (levels laid end to end, finest first) -> (level, tile within level)."""
    lvl = tile * 0
    rem = tile
    for l in tl.static_range(1, NUM_LEVELS):
        lvl, rem = _advance_level(lvl, rem, l, tl.cdiv(heights[l - 1], TILE_H) * tl.cdiv(widths[l - 1], TILE_W))
    return lvl, rem
