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

from .._args import join
from .device import (
    _align_box,
    _align_geometry,
    _axis_weights,
    _batch,
    _bin_area,
    _bin_steps,
    _fpn_level,
    _int_bins,
    _int_box,
    _level_of_tile,
    _overlaps,
    _ps_lanes,
    _roi_batch,
    _roi_row,
    _sample_origins,
    _select_level,
    _tile_coords,
)


@triton.jit
def _gather_program(N, C, BLOCK_C: tl.constexpr):
    """(image n, channels c [BLOCK_C], pixel tile index) of this program of a (tile, image,
    channel block) grid: neighbouring programs share a tile (and its RoI hits)."""
    pid = tl.program_id(0)
    n_cb = tl.cdiv(C, BLOCK_C)
    nc = pid % (N * n_cb)
    n = nc // n_cb
    return n, (nc - n * n_cb) * BLOCK_C + tl.arange(0, BLOCK_C), pid // (N * n_cb)


@triton.jit
def _store_tile(ptr, n, C, H, W, c, cmask, rows, cols, pix, acc):
    """The program's [channels, pixels] tile of image n of a contiguous [N, C, H, W] buffer."""
    off = n.to(tl.int64) * C * H * W + (c * H * W)[:, None] + (rows * W + cols)[None, :]
    tl.store(ptr + off, acc, mask=cmask[:, None] & pix[None, :])


@triton.jit
def _image_rois(rois, kb, K, N, n, ROI_BLOCK: tl.constexpr, DT: tl.constexpr):
    """RoIs kb .. kb + ROI_BLOCK: (indices, boxes, which ones exist and belong to image n)."""
    kk = kb + tl.arange(0, ROI_BLOCK)
    km = kk < K
    box = _roi_row(rois, kk, km, DT)
    bi, ok = _batch(box[0], N)
    return kk, box, km & ok & (bi == n)


@triton.jit
def _next_hit(hit, kk, K):
    """The smallest RoI index still marked in ``hit``, and ``hit`` without it: visiting hits this way
    fixes the summation order."""
    r = tl.min(tl.where(hit, kk, K), axis=0)
    return r, hit & (kk != r)


@triton.jit
def _align_gather_roi(
    acc, row, c, cmask, ftile, geo, H, W, PH, PW, DT: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr
):
    """Add one RoI's roi_align gradient to the tile: acc[c, t] += sum_ij g[c,i,j] Wy[i,row] Wx[j,col];
    row = (grad_out[r] pointer, strides over C, PH, PW), geo = _align_geometry of the RoI."""
    go_ptr, go_s1, go_s2, go_s3 = row
    ty0, tx0, rows, cols = ftile
    x0, y0, rw, rh, gh, gw, count = geo
    bin_h, bin_w, step_h, step_w = _bin_steps(rh, rw, gh, gw, PH, PW)
    for i in range(PH):
        ya = y0 + i * bin_h
        if _overlaps(ya, bin_h, ty0, TILE_H):
            wy = _axis_weights(tl.zeros([TILE_H * TILE_W], DT), rows, ya, step_h, gh, H)
            for j in range(PW):
                xa = x0 + j * bin_w
                if _overlaps(xa, bin_w, tx0, TILE_W):
                    wx = _axis_weights(tl.zeros([TILE_H * TILE_W], DT), cols, xa, step_w, gw, W)
                    g = tl.load(go_ptr + c * go_s1 + i * go_s2 + j * go_s3, mask=cmask, other=0.0)
                    acc += (g.to(DT) / count)[:, None] * (wy * wx)[None, :]
    return acc


@triton.jit
def _ps_align_gather_roi(acc, row, lanes, cmask, rows, cols, geo, H, W, PH, PW, DT: tl.constexpr):
    """Same for ps_roi_align: input channel lane (co, ci, cj) only sees bin (ci, cj) of co."""
    go_ptr, go_s1, go_s2, go_s3 = row
    co, ci, cj = lanes
    x0, y0, rw, rh, gh, gw, count = geo
    ys, xs, step_h, step_w = _sample_origins(geo, ci, cj, PH, PW, DT)
    wy = _axis_weights(tl.zeros_like(acc), rows[None, :], ys[:, None], step_h, gh, H)
    wx = _axis_weights(tl.zeros_like(acc), cols[None, :], xs[:, None], step_w, gw, W)
    g = tl.load(go_ptr + co * go_s1 + ci * go_s2 + cj * go_s3, mask=cmask, other=0.0)
    return acc + (g.to(DT) / count)[:, None] * wy * wx


@triton.jit
def _align_gather(
    go,
    rois,
    grad,
    K,
    n,
    c,
    c_live,
    tile,
    scale,
    sampling_ratio,
    PH,
    PW,
    lvl,
    fpn,
    ALIGNED: tl.constexpr,
    PS: tl.constexpr,
    MULTI_LEVEL: tl.constexpr,
    DT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TILE_H: tl.constexpr,
    TILE_W: tl.constexpr,
    ROI_BLOCK: tl.constexpr,
):
    """One program of the roi_align / ps_roi_align / multi_scale_roi_align gathers: pixel tile
    ``tile`` of image n, channels c, of the contiguous map grad = (pointer, N, C, H, W) (the level
    lvl's, for multi_scale). Walk the RoIs in index order; for each one of image n (and level lvl)
    whose support reaches the tile, add its contribution to the channels c < c_live (the map's
    other channels get zeros); store once. The walk is vectorised ROI_BLOCK at a time and then
    visits only the hits, smallest index first, so the summation order is fixed."""
    grad_ptr, N, C, H, W = grad
    grad_out_ptr, go_s0, go_s1, go_s2, go_s3 = go
    ty0, tx0, rows, cols, pix = _tile_coords(tile, H, W, TILE_H, TILE_W)
    ty0f = ty0.to(DT)
    tx0f = tx0.to(DT)
    ftile = (ty0f, tx0f, rows, cols)
    cmask = c < c_live
    if PS:
        lanes = _ps_lanes(c, PH, PW)
    acc = tl.zeros([BLOCK_C, TILE_H * TILE_W], DT)
    for kb in range(0, K, ROI_BLOCK):
        kk, box, hit = _image_rois(rois, kb, K, N, n, ROI_BLOCK, DT)
        if MULTI_LEVEL:
            hit = hit & (_fpn_level(box, fpn) == lvl)
        x0, y0, rw, rh = _align_box(box, scale, ALIGNED)
        hit = hit & _overlaps(y0, rh, ty0f, TILE_H) & _overlaps(x0, rw, tx0f, TILE_W)
        n_hit = tl.sum(hit.to(tl.int32), axis=0)
        for _t in range(n_hit):
            r, hit = _next_hit(hit, kk, K)
            geo = _align_geometry(_roi_row(rois, r, r >= 0, DT), True, scale, sampling_ratio, PH, PW, ALIGNED, DT)
            row = (grad_out_ptr + r.to(tl.int64) * go_s0, go_s1, go_s2, go_s3)  # grad_out[r]
            if PS:
                acc = _ps_align_gather_roi(acc, row, lanes, cmask, rows, cols, geo, H, W, PH, PW, DT)
            else:
                acc = _align_gather_roi(acc, row, c, cmask, ftile, geo, H, W, PH, PW, DT, TILE_H, TILE_W)
    _store_tile(grad_ptr, n, C, H, W, c, c < C, rows, cols, pix, acc)


@triton.jit
def _roi_align_bwd_gather_kernel(
    go,  # (grad_out_ptr, 4 strides): grad_out [K, C, PH, PW], any strides
    rois,  # (rois_ptr, stride 0, stride 1): [K, 5]
    grad_in_ptr,  # [N, C_in, H, W] contiguous float32/64; every element is written once
    K,  # number of RoIs
    N,  # images
    C,  # channels (PS: output channels)
    C_in,  # input channels (PS only, >= C*PH*PW: the rest get no gradient; else C_in = C)
    H,  # height
    W,  # width
    scale,  # spatial_scale (float32, remainder), see _roi_align_fwd_kernel
    sampling_ratio,  # see _roi_align_fwd_kernel
    PH,  # pooled height
    PW,  # pooled width
    ALIGNED: tl.constexpr,  # see _roi_align_fwd_kernel
    PS: tl.constexpr,  # ps_roi_align (needs ALIGNED=True): input channel c*PH*PW + p feeds bin p of c
    DT: tl.constexpr,  # compute / accumulation dtype
    BLOCK_C: tl.constexpr,  # input channels per program
    TILE_H: tl.constexpr,  # pixel tile owned by one program (powers of two)
    TILE_W: tl.constexpr,
    ROI_BLOCK: tl.constexpr,  # RoIs tested per step of the walk
):
    tl.static_assert(not PS or ALIGNED, "PS needs ALIGNED=True")
    # the grid covers grad_in's C_in channels (PS: only the first C*PH*PW of them get gradient)
    n, c, tile = _gather_program(N, C_in, BLOCK_C)
    _align_gather(
        go,
        rois,
        (grad_in_ptr, N, C_in, H, W),
        K,
        n,
        c,
        C * PH * PW if PS else C,
        tile,
        join(scale, DT),
        sampling_ratio,
        PH,
        PW,
        0,
        None,
        ALIGNED,
        PS,
        False,
        DT,
        BLOCK_C,
        TILE_H,
        TILE_W,
        ROI_BLOCK,
    )


@triton.jit
def _roi_pool_bwd_gather_kernel(
    go,  # (grad_out_ptr, 4 strides): grad_out [K, C, PH, PW], any strides
    am,  # (argmax_ptr, 4 strides): the forward's int32 argmax [K, C, PH, PW], any strides
    rois,  # (rois_ptr, stride 0, stride 1): [K, 5] (only the batch index is used)
    grad_in_ptr,  # [N, C, H, W] contiguous float32/64; every element is written once
    K,  # number of RoIs
    N,  # images
    C,  # channels
    HW,  # H * W: pixels of one plane
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
    grad_out_ptr, go_s0, go_s1, go_s2, go_s3 = go
    argmax_ptr, am_s0, am_s1, am_s2, am_s3 = am
    n, c, chunk = _gather_program(N, C, BLOCK_C)
    cmask = c < C
    t0 = chunk * CHUNK
    pix = t0 + tl.arange(0, CHUNK)
    P = PH * PW
    acc = tl.zeros([BLOCK_C, CHUNK], DT)
    for kb in range(0, K, ROI_BLOCK):
        kk = kb + tl.arange(0, ROI_BLOCK)
        km = kk < K
        bi, ok = _batch(_roi_batch(rois, kk, km, DT), N)
        hit = km & ok & (bi == n)
        for _t in range(tl.sum(hit.to(tl.int32), axis=0)):
            r, hit = _next_hit(hit, kk, K)
            am_r = argmax_ptr + r.to(tl.int64) * am_s0 + c * am_s1
            go_r = grad_out_ptr + r.to(tl.int64) * go_s0 + c * go_s1
            for pb in range(0, P, BLOCK_P):
                p = pb + tl.arange(0, BLOCK_P)
                i = p // PW
                j = p - i * PW
                idx = tl.load(
                    am_r[:, None] + (i * am_s2 + j * am_s3)[None, :], mask=cmask[:, None] & (p < P)[None, :], other=-1
                )
                in_chunk = (idx >= t0) & (idx < t0 + CHUNK)
                bin_hit = tl.max(in_chunk.to(tl.int32), axis=0) > 0
                for _u in range(tl.sum(bin_hit.to(tl.int32), axis=0)):
                    q, bin_hit = _next_hit(bin_hit, p, P)
                    qi = q // PW
                    qj = q - qi * PW
                    am_q = tl.load(am_r + qi * am_s2 + qj * am_s3, mask=cmask, other=-1)
                    g_q = tl.load(go_r + qi * go_s2 + qj * go_s3, mask=cmask, other=0.0).to(DT)
                    acc += tl.where(am_q[:, None] == pix[None, :], g_q[:, None], 0.0)
    off = n.to(tl.int64) * C * HW + (c * HW)[:, None] + pix[None, :]
    tl.store(grad_in_ptr + off, acc, mask=cmask[:, None] & (pix < HW)[None, :])


@triton.jit
def _ps_roi_pool_bwd_gather_kernel(
    go,  # (grad_out_ptr, 4 strides): grad_out [K, C, PH, PW], any strides
    rois,  # (rois_ptr, stride 0, stride 1): [K, 5]
    grad_in_ptr,  # [N, C_in, H, W] contiguous float32/64; every element is written once
    K,  # number of RoIs
    N,  # images
    C,  # output channels
    C_in,  # input channels
    H,  # height
    W,  # width
    scale,  # spatial_scale (float32, remainder): the bins are computed in float64
    PH,  # pooled height
    PW,  # pooled width
    DT: tl.constexpr,  # accumulation dtype
    BLOCK_C: tl.constexpr,  # input channels per program
    TILE_H: tl.constexpr,  # pixel tile owned by one program (powers of two)
    TILE_W: tl.constexpr,
    ROI_BLOCK: tl.constexpr,  # RoIs tested per step of the walk
):
    n, c, tile = _gather_program(N, C_in, BLOCK_C)
    co, ci, cj = _ps_lanes(c, PH, PW)  # once per program
    cmask = c < C * PH * PW
    ty0, tx0, rows, cols, pix = _tile_coords(tile, H, W, TILE_H, TILE_W)
    scale64 = join(scale, tl.float64)
    grad_out_ptr, go_s0, go_s1, go_s2, go_s3 = go
    acc = tl.zeros([BLOCK_C, TILE_H * TILE_W], DT)
    for kb in range(0, K, ROI_BLOCK):
        kk, box, hit = _image_rois(rois, kb, K, N, n, ROI_BLOCK, DT)
        _bf, x1, y1, x2, y2 = box
        w_start, w_len = _int_box(x1, x2, scale64, 0)
        h_start, h_len = _int_box(y1, y2, scale64, 0)
        hit = hit & _overlaps(h_start, h_len, ty0.to(tl.float64), TILE_H)
        hit = hit & _overlaps(w_start, w_len, tx0.to(tl.float64), TILE_W)
        for _t in range(tl.sum(hit.to(tl.int32), axis=0)):
            r, hit = _next_hit(hit, kk, K)
            _b, sx1, sy1, sx2, sy2 = _roi_row(rois, r, r >= 0, DT)
            sw0, swl = _int_box(sx1, sx2, scale64, 0)
            sh0, shl = _int_box(sy1, sy2, scale64, 0)
            hs, he = _int_bins(ci, PH, sh0, shl, H)  # every lane has its own bin (ci, cj)
            ws, we = _int_bins(cj, PW, sw0, swl, W)
            area = _bin_area(hs, he, ws, we, DT)
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
    _store_tile(grad_in_ptr, n, C_in, H, W, c, c < C_in, rows, cols, pix, acc)


@triton.jit
def _multi_scale_roi_align_bwd_gather_kernel(
    go,  # (grad_out_ptr, 4 strides): grad_out [K, C, PH, PW], any strides
    rois,  # (rois_ptr, stride 0, stride 1): [K, 5]
    K,  # number of RoIs
    N,  # images
    C,  # channels
    sampling_ratio,  # see _roi_align_fwd_kernel
    PH,  # pooled height
    PW,  # pooled width
    fpn,  # the 8 FPN level area thresholds (kernels/roi/align.py's forward)
    grads,  # the 8 level grad buffers [N, C, H_l, W_l], contiguous fp32/64
    heights,  # the 8 level heights
    widths,  # the 8 level widths
    scales,  # the 8 level spatial scales
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
    n, c, tile = _gather_program(N, C, BLOCK_C)
    lvl, tile = _level_of_tile(tile, NUM_LEVELS, heights, widths, TILE_H, TILE_W)
    gp, Hl, Wl, sl, _ok = _select_level(lvl, NUM_LEVELS, grads, heights, widths, scales, DT)
    _align_gather(
        go,
        rois,
        (gp, N, C, Hl, Wl),
        K,
        n,
        c,
        C,
        tile,
        sl,
        sampling_ratio,
        PH,
        PW,
        lvl,
        fpn,
        ALIGNED,
        False,
        True,
        DT,
        BLOCK_C,
        TILE_H,
        TILE_W,
        ROI_BLOCK,
    )
