"""Max-pooling kernels of the RoI family with integer bins: roi_pool and ps_roi_pool, forward
(with the argmax roi_pool's backward reads) and atomic backward. Split from kernels/roi/__init__.py, whose
docstring gives the layouts and the math; the launchers stay there.
"""

import triton
import triton.language as tl

from .device import _batch, _channel_bin_tile, _int_pool_bins, _tile_zeros

# ----------------------------------------------------------------------------------------------
# roi_pool / ps_roi_pool (integer bins)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _roi_pool_fwd_kernel(
    input_ptr,  # [N, C, H, W] features, any strides
    rois_ptr,  # [K, 5]
    out_ptr,  # [K, C, PH, PW] contiguous, input dtype
    argmax_ptr,  # [K, C, PH, PW] contiguous int32: h*W + w of the max, -1 if empty
    N,  # images
    C,  # channels
    H,  # height
    W,  # width
    stride_n,  # input strides, in elements
    stride_c,
    stride_h,
    stride_w,
    roi_stride,  # rois.stride(0)
    roi_stride_f,  # rois.stride(1)
    scale_hi,  # spatial_scale (float32 part)
    scale_lo,  # spatial_scale remainder: the bins are computed in float64
    PH,  # pooled height
    PW,  # pooled width
    C_FAST: tl.constexpr,  # channel stride is 1: channels on the coalesced tile axis
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    P, c, p = _channel_bin_tile(tl.program_id(1), PH, PW, BLOCK_C, BLOCK_P)
    cmask = c < C
    pmask = p < P
    b, ok, hs, he, ws, we = _int_pool_bins(
        rois_ptr, k, roi_stride, roi_stride_f, N, H, W, scale_hi, scale_lo, p, PH, PW, 1, DT
    )
    # the loop runs over the largest bin of the tile; smaller bins mask the excess
    max_h = tl.where(ok, tl.max(tl.where(pmask, he - hs, 0), axis=0), 0)
    max_w = tl.max(tl.where(pmask, we - ws, 0), axis=0)
    feat = input_ptr + b.to(tl.int64) * stride_n + tl.expand_dims(c * stride_c, 1 - C_FAST)
    cm2 = tl.expand_dims(cmask, 1 - C_FAST)
    best = _tile_zeros(BLOCK_C, BLOCK_P, C_FAST, DT) - float("inf")
    arg = _tile_zeros(BLOCK_C, BLOCK_P, C_FAST, tl.int32) - 1
    for dy in range(max_h):
        y = hs + dy
        ym = (y < he) & pmask
        for dx in range(max_w):
            x = ws + dx
            inside = tl.expand_dims(ym & (x < we), 0 + C_FAST) & cm2
            v = tl.load(
                feat + tl.expand_dims(y * stride_h + x * stride_w, 0 + C_FAST), mask=inside, other=float("-inf")
            ).to(DT)
            # strict '>' keeps the first max in row-major order (torchvision); the first element
            # always registers, so argmax is -1 only for an empty bin; NaN wins like torch.max
            take = inside & ((v > best) | (arg < 0) | ((v != v) & (best == best)))
            best = tl.where(take, v, best)
            arg = tl.where(take, tl.expand_dims(y * W + x, 0 + C_FAST), arg)
    best = tl.where(arg < 0, 0.0, best)
    off = k.to(tl.int64) * C * P + tl.expand_dims(c * P, 1 - C_FAST) + tl.expand_dims(p, 0 + C_FAST)
    m = cm2 & tl.expand_dims(pmask, 0 + C_FAST)
    tl.store(out_ptr + off, best, mask=m)
    tl.store(argmax_ptr + off, arg, mask=m)


@triton.jit
def _roi_pool_bwd_kernel(
    grad_out_ptr,  # [K, C, PH, PW] any strides
    argmax_ptr,  # [K, C, PH, PW] int32 from the forward, any strides
    rois_ptr,  # [K, 5] (only the batch index is used)
    grad_in_ptr,  # [N, C, H, W] contiguous float32/64, zero-filled, atomics
    N,  # images
    C,  # channels
    H,  # height
    W,  # width
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
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    P, c, p = _channel_bin_tile(tl.program_id(1), PH, PW, BLOCK_C, BLOCK_P)
    i = p // PW
    j = p - i * PW
    b, ok = _batch(tl.load(rois_ptr + k.to(tl.int64) * roi_stride).to(DT), N)
    # (a scalar bool is folded into the channel bound: the interpreter cannot broadcast one)
    m = (c < tl.where(ok, C, 0))[:, None] & (p < P)[None, :]
    am = tl.load(
        argmax_ptr + k.to(tl.int64) * am_s0 + (c * am_s1)[:, None] + (i * am_s2 + j * am_s3)[None, :], mask=m, other=-1
    )
    g = tl.load(
        grad_out_ptr + k.to(tl.int64) * go_s0 + (c * go_s1)[:, None] + (i * go_s2 + j * go_s3)[None, :],
        mask=m,
        other=0.0,
    ).to(DT)
    m = m & (am >= 0) & (am < H * W)  # never trust an index enough to write out of bounds
    base = grad_in_ptr + b.to(tl.int64) * C * H * W + (c * H * W)[:, None]
    tl.atomic_add(base + am, g, mask=m, sem="relaxed")


@triton.jit
def _ps_roi_pool_fwd_kernel(
    input_ptr,  # [N, C_in, H, W] features, any strides, C_in = C * PH * PW
    rois_ptr,  # [K, 5]
    out_ptr,  # [K, C, PH, PW] contiguous, input dtype
    N,  # images
    C,  # output channels
    H,  # height
    W,  # width
    stride_n,  # input strides, in elements
    stride_c,
    stride_h,
    stride_w,
    roi_stride,  # rois.stride(0)
    roi_stride_f,  # rois.stride(1)
    scale_hi,  # spatial_scale (float32 part)
    scale_lo,  # spatial_scale remainder: the bins are computed in float64
    PH,  # pooled height
    PW,  # pooled width
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # output channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    P, c, p = _channel_bin_tile(tl.program_id(1), PH, PW, BLOCK_C, BLOCK_P)
    cmask = c < C
    pmask = p < P
    b, ok, hs, he, ws, we = _int_pool_bins(
        rois_ptr, k, roi_stride, roi_stride_f, N, H, W, scale_hi, scale_lo, p, PH, PW, 0, DT
    )
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
    grad_out_ptr,  # [K, C, PH, PW] any strides
    rois_ptr,  # [K, 5]
    grad_in_ptr,  # [N, C_in, H, W] contiguous float32/64, zero-filled, atomics
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
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # output channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    P, c, p = _channel_bin_tile(tl.program_id(1), PH, PW, BLOCK_C, BLOCK_P)
    cmask = c < C
    pmask = p < P
    b, ok, hs, he, ws, we = _int_pool_bins(
        rois_ptr, k, roi_stride, roi_stride_f, N, H, W, scale_hi, scale_lo, p, PH, PW, 0, DT
    )
    max_h = tl.where(ok, tl.max(tl.where(pmask, he - hs, 0), axis=0), 0)
    max_w = tl.max(tl.where(pmask, we - ws, 0), axis=0)
    i = p // PW
    j = p - i * PW
    area = tl.maximum((he - hs) * (we - ws), 1).to(DT)
    g = (
        tl.load(
            grad_out_ptr + k.to(tl.int64) * go_s0 + (c * go_s1)[:, None] + (i * go_s2 + j * go_s3)[None, :],
            mask=cmask[:, None] & pmask[None, :],
            other=0.0,
        ).to(DT)
        / area[None, :]
    )
    base = grad_in_ptr + b.to(tl.int64) * C_in * H * W + (c * P * H * W)[:, None] + (p * H * W)[None, :]
    for dy in range(max_h):
        y = hs + dy
        ym = (y < he) & pmask
        for dx in range(max_w):
            x = ws + dx
            inside = cmask[:, None] & (ym & (x < we))[None, :]
            tl.atomic_add(base + (y * W + x)[None, :], g, mask=inside, sem="relaxed")
