"""Device helpers of the Triton RoI kernels (kernels/roi/__init__.py): RoI loading, the bilinear and
integer-bin geometry, the per-RoI sample loops shared by the forward and atomic backward
kernels, and the FPN level selection. Math and layouts: kernels/roi/__init__.py's docstring."""

import triton
import triton.language as tl


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
def _fpn_level(x1, y1, x2, y2, a0, a1, a2, a3, a4, a5, a6, a7):
    # pygen.ref.roi.fpn_levels: the level index is the number of area thresholds the box's
    # float32 area reaches (pygen.ref.roi.fpn_level_thresholds, NaN-padded past the last). The
    # thresholds come from torchvision's log2 formula evaluated on the CPU, so the GPU's
    # approximate division and lg2 never move a box near a boundary to another level.
    x1 = x1.to(tl.float32)
    area = (x2.to(tl.float32) - x1) * (y2.to(tl.float32) - y1.to(tl.float32))
    lvl = (area >= a0).to(tl.int32) + (area >= a1).to(tl.int32) + (area >= a2).to(tl.int32)
    lvl += (area >= a3).to(tl.int32) + (area >= a4).to(tl.int32) + (area >= a5).to(tl.int32)
    lvl += (area >= a6).to(tl.int32) + (area >= a7).to(tl.int32)
    return lvl


@triton.jit
def _align_sum(
    feat_ptr,
    H,
    W,
    stride_c,
    stride_h,
    stride_w,
    y0,
    x0,
    rh,
    rw,
    gh,
    gw,
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
    on axis 1 - C_FAST, bins on axis C_FAST (expand_dims with those constexpr axes)."""
    i = p // PW
    j = p - i * PW
    bin_h = rh / PH
    bin_w = rw / PW
    ys = y0 + i.to(DT) * bin_h
    xs = x0 + j.to(DT) * bin_w
    # the pointer tile is loop-invariant; the sample loops only add per-bin offsets
    if PS:
        base = (
            feat_ptr + tl.expand_dims(c * (PH * PW) * stride_c, 1 - C_FAST) + tl.expand_dims(p * stride_c, 0 + C_FAST)
        )
    else:
        base = feat_ptr + tl.expand_dims(c * stride_c, 1 - C_FAST)
    live = tl.expand_dims(cmask, 1 - C_FAST) & tl.expand_dims(pmask, 0 + C_FAST)
    acc = _tile_zeros(BLOCK_C, BLOCK_P, C_FAST, DT)
    step_h = bin_h / tl.maximum(gh, 1)
    step_w = bin_w / tl.maximum(gw, 1)
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
def _align_scatter(
    grad_ptr, H, W, g, y0, x0, rh, rw, gh, gw, c, cmask, p, pmask, PH, PW, PS: tl.constexpr, DT: tl.constexpr
):
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
    step_h = bin_h / tl.maximum(gh, 1)
    step_w = bin_w / tl.maximum(gw, 1)
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
def _align_fwd_program(
    feat_ptr,
    N,
    C,
    H,
    W,
    stride_n,
    stride_c,
    stride_h,
    stride_w,
    bf,
    x1,
    y1,
    x2,
    y2,
    ok_extra,
    scale,
    sampling_ratio,
    out_ptr,
    k,
    pid1,
    PH,
    PW,
    ALIGNED: tl.constexpr,
    PS: tl.constexpr,
    C_FAST: tl.constexpr,
    DT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
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
    acc = _align_sum(
        feat_ptr + b.to(tl.int64) * stride_n,
        H,
        W,
        stride_c,
        stride_h,
        stride_w,
        y0,
        x0,
        rh,
        rw,
        gh,
        gw,
        c,
        cmask,
        p,
        pmask,
        PH,
        PW,
        PS,
        C_FAST,
        DT,
        BLOCK_C,
        BLOCK_P,
    )
    out_off = tl.expand_dims(c * P, 1 - C_FAST) + tl.expand_dims(p, 0 + C_FAST)
    m = tl.expand_dims(cmask, 1 - C_FAST) & tl.expand_dims(pmask, 0 + C_FAST)
    tl.store(out_ptr + k.to(tl.int64) * C * P + out_off, acc / count, mask=m)


@triton.jit
def _align_bwd_program(
    grad_out_ptr,
    go_s0,
    go_s1,
    go_s2,
    go_s3,
    grad_ptr,
    N,
    C,
    H,
    W,
    bf,
    x1,
    y1,
    x2,
    y2,
    ok_extra,
    scale,
    sampling_ratio,
    k,
    pid1,
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
    _align_scatter(
        grad_ptr + b.to(tl.int64) * c_in * H * W, H, W, g, y0, x0, rh, rw, gh, gw, c, cmask, p, pmask, PH, PW, PS, DT
    )


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
def _int_pool_bins(
    rois_ptr,
    k,
    roi_stride,
    roi_stride_f,
    N,
    H,
    W,
    scale_hi,
    scale_lo,
    p,
    PH,
    PW,
    PLUS_ONE: tl.constexpr,
    DT: tl.constexpr,
):
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
def _pick_level(lvl, l: tl.constexpr, f, H, W, sn, sc, sh, sw, s, cf, cH, cW, csn, csc, csh, csw, cs):
    if lvl == l:
        cf = f  # pointers cannot go through tl.where portably; a scalar branch selects them
    hit = lvl == l
    return (
        cf,
        tl.where(hit, H, cH),
        tl.where(hit, W, cW),
        tl.where(hit, sn, csn),
        tl.where(hit, sc, csc),
        tl.where(hit, sh, csh),
        tl.where(hit, sw, csw),
        tl.where(hit, s, cs),
    )


@triton.jit
def _select_level(
    lvl,
    NUM_LEVELS: tl.constexpr,
    f0,
    f1,
    f2,
    f3,
    f4,
    f5,
    f6,
    f7,
    H0,
    H1,
    H2,
    H3,
    H4,
    H5,
    H6,
    H7,
    W0,
    W1,
    W2,
    W3,
    W4,
    W5,
    W6,
    W7,
    sn0,
    sn1,
    sn2,
    sn3,
    sn4,
    sn5,
    sn6,
    sn7,
    sc0,
    sc1,
    sc2,
    sc3,
    sc4,
    sc5,
    sc6,
    sc7,
    sh0,
    sh1,
    sh2,
    sh3,
    sh4,
    sh5,
    sh6,
    sh7,
    sw0,
    sw1,
    sw2,
    sw3,
    sw4,
    sw5,
    sw6,
    sw7,
    s0,
    s1,
    s2,
    s3,
    s4,
    s5,
    s6,
    s7,
):
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
def _level_of_tile(
    tile,
    NUM_LEVELS: tl.constexpr,
    H0,
    H1,
    H2,
    H3,
    H4,
    H5,
    H6,
    H7,
    W0,
    W1,
    W2,
    W3,
    W4,
    W5,
    W6,
    W7,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
):
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
def _channel_bin_tile(pid1, PH, PW, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Axis-1 program id -> (bins P, channel offsets [BLOCK_C], bin offsets [BLOCK_P]) of the
    (RoI, channel block, bin block) grid shared by the integer-bin pooling kernels."""
    P = PH * PW
    n_pb = tl.cdiv(P, BLOCK_P)
    cb = pid1 // n_pb
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    p = (pid1 - cb * n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
    return P, c, p
