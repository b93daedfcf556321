"""Deterministic backward of the RoI family (``deterministic=True``): gathers, no atomics.

One program per (pixel tile, image n, channel block) owns its grad_input tile in registers,
walks the RoIs of image n in index order (ROI_BLOCK at a time, keeping only those whose support
reaches the tile), adds their contributions in a fixed order and stores once, so the result is
bitwise reproducible run to run. roi_align's gradient is separable,
    d out[k,c,i,j] / d in[n,c,y,x] = Wy[i,y] * Wx[j,x] / count,
    Wy[i,y] = sum over the sample rows a of bin row i of the bilinear weight they give row y,
and is computed that way. Layouts and the forward math: kernels/roi/__init__.py's docstring.
"""

import triton
import triton.language as tl

from .device import (
    _align_box,
    _batch,
    _bilinear_axis,
    _fpn_level,
    _grid,
    _int_bins,
    _int_box,
    _level_of_tile,
    _overlaps,
    _roi_row,
    _scale,
    _select_level,
    _tile_coords,
)


@triton.jit
def _align_gather_roi(
    acc,
    go_ptr,
    go_s1,
    go_s2,
    go_s3,
    c,
    cmask,
    rows,
    cols,
    ty0,
    tx0,
    y0,
    x0,
    rh,
    rw,
    gh,
    gw,
    count,
    H,
    W,
    PH,
    PW,
    DT: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
):
    """Add RoI's roi_align gradient to the tile: acc[c, t] += sum_ij g[c,i,j] Wy[i,row] Wx[j,col]."""
    bin_h = rh / PH
    bin_w = rw / PW
    step_h = bin_h / tl.maximum(gh, 1)
    step_w = bin_w / tl.maximum(gw, 1)
    for i in range(PH):
        ya = y0 + i * bin_h
        if _overlaps(ya, bin_h, ty0, TILE_H):
            wy = tl.zeros([TILE_H * TILE_W], DT)
            for sy in range(gh):
                yl, yh, wl, wh, v = _bilinear_axis(ya + (sy + 0.5) * step_h, H)
                # (scalar selects: the interpreter cannot broadcast a scalar comparison result)
                wy += tl.where(rows == yl, tl.where(v, wl, 0.0), 0.0)
                wy += tl.where(rows == yh, tl.where(v, wh, 0.0), 0.0)
            for j in range(PW):
                xa = x0 + j * bin_w
                if _overlaps(xa, bin_w, tx0, TILE_W):
                    wx = tl.zeros([TILE_H * TILE_W], DT)
                    for sx in range(gw):
                        xl, xh, wl, wh, v = _bilinear_axis(xa + (sx + 0.5) * step_w, W)
                        wx += tl.where(cols == xl, tl.where(v, wl, 0.0), 0.0)
                        wx += tl.where(cols == xh, tl.where(v, wh, 0.0), 0.0)
                    g = tl.load(go_ptr + c * go_s1 + i * go_s2 + j * go_s3, mask=cmask, other=0.0)
                    acc += (g.to(DT) / count)[:, None] * (wy * wx)[None, :]
    return acc


@triton.jit
def _ps_align_gather_roi(
    acc,
    go_ptr,
    go_s1,
    go_s2,
    go_s3,
    co,
    ci,
    cj,
    cmask,
    rows,
    cols,
    y0,
    x0,
    rh,
    rw,
    gh,
    gw,
    count,
    H,
    W,
    PH,
    PW,
    DT: tl.constexpr,
):
    """Same for ps_roi_align: input channel lane (co, ci, cj) only sees bin (ci, cj) of co."""
    bin_h = rh / PH
    bin_w = rw / PW
    step_h = bin_h / tl.maximum(gh, 1)
    step_w = bin_w / tl.maximum(gw, 1)
    ys = y0 + ci.to(DT) * bin_h
    xs = x0 + cj.to(DT) * bin_w
    wy = tl.zeros_like(acc)
    for sy in range(gh):
        yl, yh, wl, wh, v = _bilinear_axis(ys + (sy + 0.5) * step_h, H)
        wl = tl.where(v, wl, 0.0)
        wh = tl.where(v, wh, 0.0)
        wy += tl.where(rows[None, :] == yl[:, None], wl[:, None], 0.0)
        wy += tl.where(rows[None, :] == yh[:, None], wh[:, None], 0.0)
    wx = tl.zeros_like(acc)
    for sx in range(gw):
        xl, xh, wl, wh, v = _bilinear_axis(xs + (sx + 0.5) * step_w, W)
        wl = tl.where(v, wl, 0.0)
        wh = tl.where(v, wh, 0.0)
        wx += tl.where(cols[None, :] == xl[:, None], wl[:, None], 0.0)
        wx += tl.where(cols[None, :] == xh[:, None], wh[:, None], 0.0)
    g = tl.load(go_ptr + co * go_s1 + ci * go_s2 + cj * go_s3, mask=cmask, other=0.0)
    return acc + (g.to(DT) / count)[:, None] * wy * wx


@triton.jit
def _align_gather(
    acc,
    grad_out_ptr,
    go_s0,
    go_s1,
    go_s2,
    go_s3,
    rois_ptr,
    roi_stride,
    roi_stride_f,
    K,
    N,
    n,
    c,
    cmask,
    rows,
    cols,
    ty0,
    tx0,
    H,
    W,
    scale,
    sampling_ratio,
    PH,
    PW,
    lvl,
    a0,
    a1,
    a2,
    a3,
    a4,
    a5,
    a6,
    a7,
    ALIGNED: tl.constexpr,
    PS: tl.constexpr,
    MULTI_LEVEL: tl.constexpr,
    DT: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    ROI_BLOCK: tl.constexpr,
):
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
            hit = hit & (_fpn_level(x1, y1, x2, y2, a0, a1, a2, a3, a4, a5, a6, a7) == lvl)
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
                acc = _ps_align_gather_roi(
                    acc,
                    go_ptr,
                    go_s1,
                    go_s2,
                    go_s3,
                    co,
                    ci,
                    cj,
                    cmask,
                    rows,
                    cols,
                    sy0,
                    sx0,
                    srh,
                    srw,
                    gh,
                    gw,
                    count,
                    H,
                    W,
                    PH,
                    PW,
                    DT,
                )
            else:
                acc = _align_gather_roi(
                    acc,
                    go_ptr,
                    go_s1,
                    go_s2,
                    go_s3,
                    c,
                    cmask,
                    rows,
                    cols,
                    ty0f,
                    tx0f,
                    sy0,
                    sx0,
                    srh,
                    srw,
                    gh,
                    gw,
                    count,
                    H,
                    W,
                    PH,
                    PW,
                    DT,
                    TILE_H,
                    TILE_W,
                )
    return acc


@triton.jit
def _roi_align_bwd_gather_kernel(
    grad_out_ptr,  # [K, C, PH, PW] any strides
    rois_ptr,  # [K, 5]
    grad_in_ptr,  # [N, C, H, W] contiguous float32/64; every element is written once
    K,  # number of RoIs
    N,  # images
    C,  # channels
    H,  # height
    W,  # width
    go_s0,  # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,  # rois.stride(0)
    roi_stride_f,  # rois.stride(1)
    scale_hi,  # spatial_scale (float32 part)
    scale_lo,  # spatial_scale remainder (float64 math only)
    sampling_ratio,  # see _roi_align_fwd_kernel
    PH,  # pooled height
    PW,  # pooled width
    ALIGNED: tl.constexpr,  # see _roi_align_fwd_kernel
    DT: tl.constexpr,  # compute / accumulation dtype
    BLOCK_C: tl.constexpr,  # channels per program
    TILE_H: tl.constexpr,  # pixel tile owned by one program (powers of two)
    TILE_W: tl.constexpr,
    ROI_BLOCK: tl.constexpr,  # RoIs tested per step of the walk
):
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    nc = pid % (N * n_cb)  # neighbouring programs share a tile (and its RoI hits)
    n = nc // n_cb
    c = (nc - n * n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    ty0, tx0, rows, cols, pix = _tile_coords(pid // (N * n_cb), H, W, TILE_H, TILE_W)
    acc = tl.zeros([BLOCK_C, TILE_H * TILE_W], DT)
    acc = _align_gather(
        acc,
        grad_out_ptr,
        go_s0,
        go_s1,
        go_s2,
        go_s3,
        rois_ptr,
        roi_stride,
        roi_stride_f,
        K,
        N,
        n,
        c,
        cmask,
        rows,
        cols,
        ty0,
        tx0,
        H,
        W,
        _scale(scale_hi, scale_lo, DT),
        sampling_ratio,
        PH,
        PW,
        0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        ALIGNED,
        False,
        False,
        DT,
        TILE_H,
        TILE_W,
        ROI_BLOCK,
    )
    off = n.to(tl.int64) * C * H * W + (c * H * W)[:, None] + (rows * W + cols)[None, :]
    tl.store(grad_in_ptr + off, acc, mask=cmask[:, None] & pix[None, :])


@triton.jit
def _ps_roi_align_bwd_gather_kernel(
    grad_out_ptr,  # [K, C, PH, PW] any strides
    rois_ptr,  # [K, 5]
    grad_in_ptr,  # [N, C_in, H, W] contiguous float32/64; every element is written once
    K,  # number of RoIs
    N,  # images
    C,  # output channels
    C_in,  # input channels (>= C*PH*PW; the rest get no gradient)
    H,  # height
    W,  # width
    go_s0,  # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,  # rois.stride(0)
    roi_stride_f,  # rois.stride(1)
    scale_hi,  # spatial_scale (float32 part)
    scale_lo,  # spatial_scale remainder (float64 math only)
    sampling_ratio,  # see _roi_align_fwd_kernel
    PH,  # pooled height
    PW,  # pooled width
    DT: tl.constexpr,  # compute / accumulation dtype
    BLOCK_C: tl.constexpr,  # input channels per program
    TILE_H: tl.constexpr,  # pixel tile owned by one program (powers of two)
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
    acc = _align_gather(
        acc,
        grad_out_ptr,
        go_s0,
        go_s1,
        go_s2,
        go_s3,
        rois_ptr,
        roi_stride,
        roi_stride_f,
        K,
        N,
        n,
        c,
        c < C * PH * PW,
        rows,
        cols,
        ty0,
        tx0,
        H,
        W,
        _scale(scale_hi, scale_lo, DT),
        sampling_ratio,
        PH,
        PW,
        0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        True,
        True,
        False,
        DT,
        TILE_H,
        TILE_W,
        ROI_BLOCK,
    )
    off = n.to(tl.int64) * C_in * H * W + (c * H * W)[:, None] + (rows * W + cols)[None, :]
    tl.store(grad_in_ptr + off, acc, mask=(c < C_in)[:, None] & pix[None, :])


@triton.jit
def _roi_pool_bwd_gather_kernel(
    grad_out_ptr,  # [K, C, PH, PW] any strides
    argmax_ptr,  # [K, C, PH, PW] int32, any strides
    rois_ptr,  # [K, 5] (only the batch index is used)
    grad_in_ptr,  # [N, C, H, W] contiguous float32/64; every element is written once
    K,  # number of RoIs
    N,  # images
    C,  # channels
    HW,  # H * W: pixels of one plane
    go_s0,  # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    am_s0,  # argmax strides, in elements
    am_s1,
    am_s2,
    am_s3,
    roi_stride,  # rois.stride(0)
    PH,  # pooled height
    PW,  # pooled width
    DT: tl.constexpr,  # accumulation dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins looked at per step
    CHUNK: tl.constexpr,  # pixels (of the flattened plane) owned by one program
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
                am = tl.load(
                    am_r[:, None] + (i * am_s2 + j * am_s3)[None, :], mask=cmask[:, None] & (p < P)[None, :], other=-1
                )
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
def _ps_roi_pool_bwd_gather_kernel(
    grad_out_ptr,  # [K, C, PH, PW] any strides
    rois_ptr,  # [K, 5]
    grad_in_ptr,  # [N, C_in, H, W] contiguous float32/64; every element is written once
    K,  # number of RoIs
    N,  # images
    C,  # output channels
    C_in,  # input channels
    H,  # height
    W,  # width
    go_s0,  # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,  # rois.stride(0)
    roi_stride_f,  # rois.stride(1)
    scale_hi,  # spatial_scale (float32 part)
    scale_lo,  # spatial_scale remainder: the bins are computed in float64
    PH,  # pooled height
    PW,  # pooled width
    DT: tl.constexpr,  # accumulation dtype
    BLOCK_C: tl.constexpr,  # input channels per program
    TILE_H: tl.constexpr,  # pixel tile owned by one program (powers of two)
    TILE_W: tl.constexpr,
    ROI_BLOCK: tl.constexpr,  # RoIs tested per step of the walk
):
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C_in, BLOCK_C)
    nc = pid % (N * n_cb)
    n = nc // n_cb
    c = (nc - n * n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    P = PH * PW
    co = c // P  # lane -> (output channel, bin row, bin column), once per program
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
            g = (
                tl.load(
                    grad_out_ptr + r.to(tl.int64) * go_s0 + co * go_s1 + ci * go_s2 + cj * go_s3, mask=cmask, other=0.0
                ).to(DT)
                / area
            )
            inside = (
                (rows[None, :] >= hs[:, None])
                & (rows[None, :] < he[:, None])
                & (cols[None, :] >= ws[:, None])
                & (cols[None, :] < we[:, None])
            )
            acc += tl.where(inside, g[:, None], 0.0)
    off = n.to(tl.int64) * C_in * H * W + (c * H * W)[:, None] + (rows * W + cols)[None, :]
    tl.store(grad_in_ptr + off, acc, mask=(c < C_in)[:, None] & pix[None, :])


@triton.jit
def _multi_scale_roi_align_bwd_gather_kernel(
    grad_out_ptr,  # [K, C, PH, PW] any strides
    rois_ptr,  # [K, 5]
    K,  # number of RoIs
    N,  # images
    C,  # channels
    go_s0,  # grad_out strides, in elements
    go_s1,
    go_s2,
    go_s3,
    roi_stride,  # rois.stride(0)
    roi_stride_f,  # rois.stride(1)
    sampling_ratio,  # see _roi_align_fwd_kernel
    PH,  # pooled height
    PW,  # pooled width
    a0,
    a1,
    a2,
    a3,
    a4,
    a5,
    a6,
    a7,  # FPN level area thresholds (kernels/roi/__init__.py's forward)
    g0,
    g1,
    g2,
    g3,
    g4,
    g5,
    g6,
    g7,  # level grad buffers [N, C, H_l, W_l] contiguous fp32/64
    H0,
    H1,
    H2,
    H3,
    H4,
    H5,
    H6,
    H7,  # level heights
    W0,
    W1,
    W2,
    W3,
    W4,
    W5,
    W6,
    W7,  # level widths
    s0,
    s1,
    s2,
    s3,
    s4,
    s5,
    s6,
    s7,  # level spatial scales
    NUM_LEVELS: tl.constexpr,  # levels in use
    ALIGNED: tl.constexpr,  # see _roi_align_fwd_kernel
    DT: tl.constexpr,  # accumulation dtype
    BLOCK_C: tl.constexpr,  # channels per program
    TILE_H: tl.constexpr,  # pixel tile owned by one program (powers of two)
    TILE_W: tl.constexpr,
    ROI_BLOCK: tl.constexpr,  # RoIs tested per step of the walk
):
    # the tiles of all levels are laid end to end along the grid; each program finds its level,
    # then gathers like _roi_align_bwd_gather_kernel from the RoIs assigned to that level
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    nc = pid % (N * n_cb)
    n = nc // n_cb
    c = (nc - n * n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    lvl, tile = _level_of_tile(
        pid // (N * n_cb), NUM_LEVELS, H0, H1, H2, H3, H4, H5, H6, H7, W0, W1, W2, W3, W4, W5, W6, W7, TILE_H, TILE_W
    )
    gp, Hl, Wl, _a, _b, _c, _d, sl = _select_level(
        lvl,
        NUM_LEVELS,
        g0,
        g1,
        g2,
        g3,
        g4,
        g5,
        g6,
        g7,
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
        H0,
        H1,
        H2,
        H3,
        H4,
        H5,
        H6,
        H7,
        H0,
        H1,
        H2,
        H3,
        H4,
        H5,
        H6,
        H7,
        H0,
        H1,
        H2,
        H3,
        H4,
        H5,
        H6,
        H7,
        H0,
        H1,
        H2,
        H3,
        H4,
        H5,
        H6,
        H7,
        s0,
        s1,
        s2,
        s3,
        s4,
        s5,
        s6,
        s7,
    )
    ty0, tx0, rows, cols, pix = _tile_coords(tile, Hl, Wl, TILE_H, TILE_W)
    acc = tl.zeros([BLOCK_C, TILE_H * TILE_W], DT)
    acc = _align_gather(
        acc,
        grad_out_ptr,
        go_s0,
        go_s1,
        go_s2,
        go_s3,
        rois_ptr,
        roi_stride,
        roi_stride_f,
        K,
        N,
        n,
        c,
        cmask,
        rows,
        cols,
        ty0,
        tx0,
        Hl,
        Wl,
        sl.to(DT),
        sampling_ratio,
        PH,
        PW,
        lvl,
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        a6,
        a7,
        ALIGNED,
        False,
        True,
        DT,
        TILE_H,
        TILE_W,
        ROI_BLOCK,
    )
    off = n.to(tl.int64) * C * Hl * Wl + (c * Hl * Wl)[:, None] + (rows * Wl + cols)[None, :]
    tl.store(gp + off, acc, mask=cmask[:, None] & pix[None, :])
