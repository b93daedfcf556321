"""Integer-bin pooling kernels of the RoI family: roi_pool (max, with the argmax its backward reads)
and ps_roi_pool (mean over the bin; roi_pool's forward kernel with PS=True), forward and atomic
backward. One program per (RoI k, channel block x bin block); the bins come from device.py's
_int_pool_bins. Layouts and math: kernels/roi/__init__.py's docstring; the deterministic backward:
gather.py.
"""

import triton
import triton.language as tl

from .device import (
    _batch,
    _bin_area,
    _channel_bin_tile,
    _int_pool_program,
    _load_bins,
    _roi_batch,
    _store_out,
    _tile_zeros,
)


@triton.jit
def _bin_pixel(hs, he, ws, we, pmask, dy, dx):
    """Pixel (y, x) = (hs + dy, ws + dx) of every bin and whether it lies inside its bin: the pixel
    loops run over the tile's largest bin."""
    y = hs + dy
    x = ws + dx
    return y, x, (y < he) & pmask & (x < we)


@triton.jit
def _max_step(best, arg, v, inside, idx):
    """One pixel of roi_pool's max: (best, arg) updated where the pixel v (flat index idx) is inside
    its bin and wins. As torchvision: best starts at -FLT_MAX and strict '>' keeps the first max in
    row-major order; NaN, -inf and -FLT_MAX never win, so argmax stays -1 (no gradient) for a bin
    of nothing else as for an empty one."""
    take = inside & (v > best)
    return tl.where(take, v, best), tl.where(take, idx, arg)


@triton.jit
def _roi_pool_fwd_kernel(
    feat,  # (input_ptr, N, C, H, W, 4 strides): [N, C, H, W] features, any strides, C the output
    # channels (PS: the input has C_in = C * PH * PW)
    rois,  # (rois_ptr, stride 0, stride 1): [K, 5]
    out_ptr,  # [K, C, PH, PW] contiguous, input dtype
    argmax_ptr,  # [K, C, PH, PW] contiguous int32: h*W + w of the max, -1 if empty (PS: None)
    scale,  # spatial_scale (float32, remainder): the bins are computed in float64
    PH,  # pooled height
    PW,  # pooled width
    PS: tl.constexpr,  # ps_roi_pool: bins of length x2' - x1', input channel c*PH*PW + p, the mean
    C_FAST: tl.constexpr,  # channel stride is 1: channels on the coalesced tile axis (not with PS)
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    # ps channels c*PH*PW + p are not contiguous along either tile axis: the bin-fast layout
    tl.static_assert(not PS or not C_FAST, "PS needs C_FAST=False")
    input_ptr, N, C, H, W, stride_n, stride_c, stride_h, stride_w = feat
    # roi_pool's RoI length is x2' - x1' + 1, ps_roi_pool's x2' - x1'
    k, P, c, p, pmask, bins = _int_pool_program(rois, N, H, W, scale, PH, PW, 1 - PS, DT, BLOCK_C, BLOCK_P)
    b, hs, he, ws, we, max_h, max_w = bins
    cmask = c < C
    feat = input_ptr + b.to(tl.int64) * stride_n
    if PS:  # bin p of output channel c reads input channel c*P + p
        feat = feat + (c * P * stride_c)[:, None] + (p * stride_c)[None, :]
        area = _bin_area(hs, he, ws, we, DT)
        acc = _tile_zeros(BLOCK_C, BLOCK_P, C_FAST, DT)  # the bin's sum
    else:
        feat = feat + tl.expand_dims(c * stride_c, 1 - C_FAST)
        acc = _tile_zeros(BLOCK_C, BLOCK_P, C_FAST, DT) - 3.4028234663852886e38  # the bin's max from -FLT_MAX ...
        arg = _tile_zeros(BLOCK_C, BLOCK_P, C_FAST, tl.int32) - 1  # ... and where it is
    cm2 = tl.expand_dims(cmask, 1 - C_FAST)
    for dy in range(max_h):
        for dx in range(max_w):
            y, x, in_bin = _bin_pixel(hs, he, ws, we, pmask, dy, dx)
            inside = tl.expand_dims(in_bin, 0 + C_FAST) & cm2
            pix = feat + tl.expand_dims(y * stride_h + x * stride_w, 0 + C_FAST)
            if PS:
                acc += tl.load(pix, mask=inside, other=0.0).to(DT)
            else:
                v = tl.load(pix, mask=inside, other=float("-inf")).to(DT)
                acc, arg = _max_step(acc, arg, v, inside, tl.expand_dims(y * W + x, 0 + C_FAST))
    if PS:
        acc = acc / area[None, :]
    else:  # an empty bin is 0 (a non-empty one nothing beat keeps -FLT_MAX)
        # (max_h is 0 for a RoI of no valid image: its bins read nothing and are 0 too)
        acc = tl.where(tl.expand_dims((max_h > 0) & (he > hs) & (we > ws), 0 + C_FAST), acc, 0.0)
    off = k.to(tl.int64) * C * P + tl.expand_dims(c * P, 1 - C_FAST) + tl.expand_dims(p, 0 + C_FAST)
    m = cm2 & tl.expand_dims(pmask, 0 + C_FAST)
    _store_out(out_ptr + off, acc, m)
    if not PS:
        tl.store(argmax_ptr + off, arg, mask=m)


@triton.jit
def _roi_pool_bwd_kernel(
    go,  # (grad_out_ptr, 4 strides): grad_out [K, C, PH, PW], any strides
    am,  # (argmax_ptr, 4 strides): the forward's int32 argmax [K, C, PH, PW], any strides
    rois,  # (rois_ptr, stride 0, stride 1): [K, 5] (only the batch index is used)
    grad_in_ptr,  # [N, C, H, W] contiguous float32/64, zero-filled, atomics
    N,  # images
    C,  # channels
    H,  # height
    W,  # width
    PH,  # pooled height
    PW,  # pooled width
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    P, c, p = _channel_bin_tile(tl.program_id(1), PH, PW, BLOCK_C, BLOCK_P)
    b, ok = _batch(_roi_batch(rois, k, k >= 0, DT), N)
    # (a scalar bool is folded into the channel bound: the interpreter cannot broadcast one)
    m = (c < tl.where(ok, C, 0))[:, None] & (p < P)[None, :]
    idx = _load_bins(am, k, c, p, PW, m, -1)
    g = _load_bins(go, k, c, p, PW, m, 0.0).to(DT)
    m = m & (idx >= 0) & (idx < H * W)  # never trust an index enough to write out of bounds
    base = grad_in_ptr + b.to(tl.int64) * C * H * W + (c * H * W)[:, None]
    tl.atomic_add(base + idx, g, mask=m, sem="relaxed")


@triton.jit
def _ps_roi_pool_bwd_kernel(
    go,  # (grad_out_ptr, 4 strides): grad_out [K, C, PH, PW], any strides
    rois,  # (rois_ptr, stride 0, stride 1): [K, 5]
    grad_in_ptr,  # [N, C_in, H, W] contiguous float32/64, zero-filled, atomics
    N,  # images
    C,  # output channels
    C_in,  # input channels
    H,  # height
    W,  # width
    scale,  # spatial_scale (float32, remainder): the bins are computed in float64
    PH,  # pooled height
    PW,  # pooled width
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # output channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k, P, c, p, pmask, bins = _int_pool_program(rois, N, H, W, scale, PH, PW, 0, DT, BLOCK_C, BLOCK_P)
    b, hs, he, ws, we, max_h, max_w = bins
    cmask = c < C
    area = _bin_area(hs, he, ws, we, DT)
    g = _load_bins(go, k, c, p, PW, cmask[:, None] & pmask[None, :], 0.0).to(DT) / area[None, :]
    base = grad_in_ptr + b.to(tl.int64) * C_in * H * W + (c * P * H * W)[:, None] + (p * H * W)[None, :]
    for dy in range(max_h):
        for dx in range(max_w):
            y, x, in_bin = _bin_pixel(hs, he, ws, we, pmask, dy, dx)
            tl.atomic_add(base + (y * W + x)[None, :], g, mask=cmask[:, None] & in_bin[None, :], sem="relaxed")
