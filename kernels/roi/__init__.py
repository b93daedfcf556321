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
            - k_min (non-positive area -> first level), then roi_align on features[l_k]. The
            kernels get that rule as area thresholds (l_k = #{j : area_k >= t_j}, computed once on
            the host from the formula; pygen.ref.roi.fpn_level_thresholds): exact on the GPU.
Backward of the averaging ops scatters g/count * (wy*wx) to the 4 neighbours of every sample
(g/area to every pixel of the bin for ps_roi_pool, g to argmax for roi_pool).

Kernels and their grids
-----------------------
(files: this one, _roi_device.py helpers, _roi_pool.py the max-pooling kernels, _roi_gather.py)
forward, backward (atomic): one program per (RoI k, channel block, bin block); grid
    (K, cdiv(C, BLOCK_C) * cdiv(PH*PW, BLOCK_P)). The RoI's box, sample grid and bilinear
    weights are computed once per program as [BLOCK_P] vectors and reused by the whole
    [BLOCK_C, BLOCK_P] tile, so there is no per-element integer division. Channels go on the
    fast (coalesced) axis when the input's channel stride is 1. The sample loops run
    gh x gw times, a trip count read from the RoI (adaptive grid).
multi_scale_roi_align: the same per-RoI programs, one launch for all levels: each program
    computes its RoI's level and selects that level's pointer / sizes / strides / scale.
backward, deterministic=True (``*_bwd_gather_kernel``, _roi_gather.py): a gather, no atomics.
    One program per (pixel tile, image n, channel block) owns its grad_input tile in registers,
    walks the RoIs of image n in index order and stores once: bitwise reproducible. Grid: one
    axis, tiles x N x channel blocks (all levels' tiles end to end for multi_scale).

Precision: everything in float32 (float64 when the input is float64, so gradcheck works);
f16/bf16 are upcast right after the load. Triton's fp32 '/' is approximate (div.full), so the
adaptive trip count ceil(h/PH) is corrected with exact products. The integer bins of roi_pool /
ps_roi_pool are computed in float64 as the oracle does: ceil(7 * (29/7)) is 30 in float64 but 29
in exact arithmetic, and float32 differs elsewhere (len 57), so only float64 reproduces the
oracle's bins (the division itself is done without div.rn.f64, see _roi_device._div_exact).
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from .._device import on_tensor_device
from .device import _align_bwd_program, _align_fwd_program, _fpn_level, _roi_row, _scale, _select_level
from .gather import (  # noqa: F401 (COMPILE_SPECS, launchers)
    _multi_scale_roi_align_bwd_gather_kernel,
    _ps_roi_align_bwd_gather_kernel,
    _ps_roi_pool_bwd_gather_kernel,
    _roi_align_bwd_gather_kernel,
    _roi_pool_bwd_gather_kernel,
)
from .pool import _ps_roi_pool_bwd_kernel, _ps_roi_pool_fwd_kernel, _roi_pool_bwd_kernel, _roi_pool_fwd_kernel  # noqa: F401 (COMPILE_SPECS, launchers)

# ----------------------------------------------------------------------------------------------
# roi_align
# ----------------------------------------------------------------------------------------------


@triton.jit
def _roi_align_fwd_kernel(
    input_ptr,  # [N, C, H, W] features, any strides
    rois_ptr,  # [K, 5] (batch_index, x1, y1, x2, y2)
    out_ptr,  # [K, C, PH, PW] contiguous, input dtype
    N,  # images; RoIs whose batch index is outside [0, N) give zeros
    C,  # channels
    H,  # feature map height
    W,  # feature map width
    stride_n,  # input strides, in elements
    stride_c,
    stride_h,
    stride_w,
    roi_stride,  # rois.stride(0)
    roi_stride_f,  # rois.stride(1)
    scale_hi,  # spatial_scale as float32 ...
    scale_lo,  # ... and the float32 remainder, used only for float64 math
    sampling_ratio,  # > 0: fixed samples per bin axis; <= 0: ceil(roi extent / pooled)
    PH,  # pooled height
    PW,  # pooled width
    ALIGNED: tl.constexpr,  # half-pixel offset, no minimum RoI size
    C_FAST: tl.constexpr,  # channel stride is 1: put channels on the coalesced tile axis
    DT: tl.constexpr,  # compute dtype (float32, or float64 for float64 input)
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program (power of two >= PH*PW, or a block of them)
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    _align_fwd_program(
        input_ptr,
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
        True,
        _scale(scale_hi, scale_lo, DT),
        sampling_ratio,
        out_ptr,
        k,
        tl.program_id(1),
        PH,
        PW,
        ALIGNED,
        False,
        C_FAST,
        DT,
        BLOCK_C,
        BLOCK_P,
    )


@triton.jit
def _roi_align_bwd_kernel(
    grad_out_ptr,  # [K, C, PH, PW] any strides
    rois_ptr,  # [K, 5]
    grad_in_ptr,  # [N, C, H, W] contiguous float32/64, zero-filled, accumulated atomically
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
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    _align_bwd_program(
        grad_out_ptr,
        go_s0,
        go_s1,
        go_s2,
        go_s3,
        grad_in_ptr,
        N,
        C,
        H,
        W,
        bf,
        x1,
        y1,
        x2,
        y2,
        True,
        _scale(scale_hi, scale_lo, DT),
        sampling_ratio,
        k,
        tl.program_id(1),
        PH,
        PW,
        ALIGNED,
        False,
        DT,
        BLOCK_C,
        BLOCK_P,
    )


# ----------------------------------------------------------------------------------------------
# ps_roi_align
# ----------------------------------------------------------------------------------------------


@triton.jit
def _ps_roi_align_fwd_kernel(
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
    scale_lo,  # spatial_scale remainder (float64 math only)
    sampling_ratio,  # see _roi_align_fwd_kernel
    PH,  # pooled height
    PW,  # pooled width
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # output channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    # PS-align is roi_align with aligned=True geometry; channel c_in = c*PH*PW + p is not
    # contiguous along either tile axis, so the bin-fast layout is kept
    _align_fwd_program(
        input_ptr,
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
        True,
        _scale(scale_hi, scale_lo, DT),
        sampling_ratio,
        out_ptr,
        k,
        tl.program_id(1),
        PH,
        PW,
        True,
        True,
        False,
        DT,
        BLOCK_C,
        BLOCK_P,
    )


@triton.jit
def _ps_roi_align_bwd_kernel(
    grad_out_ptr,  # [K, C, PH, PW] any strides
    rois_ptr,  # [K, 5]
    grad_in_ptr,  # [N, C*PH*PW, H, W] contiguous float32/64, zero-filled, atomics
    N,  # images
    C,  # output channels
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
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # output channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    _align_bwd_program(
        grad_out_ptr,
        go_s0,
        go_s1,
        go_s2,
        go_s3,
        grad_in_ptr,
        N,
        C,
        H,
        W,
        bf,
        x1,
        y1,
        x2,
        y2,
        True,
        _scale(scale_hi, scale_lo, DT),
        sampling_ratio,
        k,
        tl.program_id(1),
        PH,
        PW,
        True,
        True,
        DT,
        BLOCK_C,
        BLOCK_P,
    )


# ----------------------------------------------------------------------------------------------
# multi_scale_roi_align (FPN): one launch for all levels
# ----------------------------------------------------------------------------------------------
# Levels stay separate tensors (P2 alone is ~137 MB at 800x1333, too big to concatenate): the
# kernels take 8 level slots (unused ones repeat level 0) and pick one per RoI with scalar
# selects, so a single compiled body serves every level.


@triton.jit
def _multi_scale_roi_align_fwd_kernel(
    rois_ptr,  # [K, 5]
    out_ptr,  # [K, C, PH, PW] contiguous, feature dtype
    N,  # images
    C,  # channels (shared by all levels)
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
    a7,  # FPN level rule: area thresholds of level indices 1..8
    # (pygen.ref.roi.fpn_level_thresholds), NaN-padded
    f0,
    f1,
    f2,
    f3,
    f4,
    f5,
    f6,
    f7,  # level l features [N, C, H_l, W_l], any strides
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
    sn0,
    sn1,
    sn2,
    sn3,
    sn4,
    sn5,
    sn6,
    sn7,  # level strides over N, in elements
    sc0,
    sc1,
    sc2,
    sc3,
    sc4,
    sc5,
    sc6,
    sc7,  # ... over C
    sh0,
    sh1,
    sh2,
    sh3,
    sh4,
    sh5,
    sh6,
    sh7,  # ... over H
    sw0,
    sw1,
    sw2,
    sw3,
    sw4,
    sw5,
    sw6,
    sw7,  # ... over W
    s0,
    s1,
    s2,
    s3,
    s4,
    s5,
    s6,
    s7,  # level spatial scales
    NUM_LEVELS: tl.constexpr,  # 1..8 levels in use; the remaining slots repeat level 0
    ALIGNED: tl.constexpr,  # see _roi_align_fwd_kernel
    C_FAST: tl.constexpr,  # level 0's channel stride is 1
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    lvl = _fpn_level(x1, y1, x2, y2, a0, a1, a2, a3, a4, a5, a6, a7)
    fp, Hl, Wl, sn, sc, sh, sw, sl = _select_level(
        lvl,
        NUM_LEVELS,
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
    )
    # a level index past the levels given (scales that skip a level) leaves the row at zero,
    # as the oracle does; so does an empty level
    ok = (lvl >= 0) & (lvl < NUM_LEVELS) & (Hl > 0) & (Wl > 0)
    _align_fwd_program(
        fp,
        N,
        C,
        Hl,
        Wl,
        sn,
        sc,
        sh,
        sw,
        bf,
        x1,
        y1,
        x2,
        y2,
        ok,
        sl.to(DT),
        sampling_ratio,
        out_ptr,
        k,
        tl.program_id(1),
        PH,
        PW,
        ALIGNED,
        False,
        C_FAST,
        DT,
        BLOCK_C,
        BLOCK_P,
    )


@triton.jit
def _multi_scale_roi_align_bwd_kernel(
    grad_out_ptr,  # [K, C, PH, PW] any strides
    rois_ptr,  # [K, 5]
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
    a7,  # FPN level area thresholds (see the forward)
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
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    k = tl.program_id(0)
    bf, x1, y1, x2, y2 = _roi_row(rois_ptr, k, roi_stride, roi_stride_f, k >= 0, DT)
    lvl = _fpn_level(x1, y1, x2, y2, a0, a1, a2, a3, a4, a5, a6, a7)
    # the stride slots are unused for contiguous grads: H fills them
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
    ok = (lvl >= 0) & (lvl < NUM_LEVELS) & (Hl > 0) & (Wl > 0)
    _align_bwd_program(
        grad_out_ptr,
        go_s0,
        go_s1,
        go_s2,
        go_s3,
        gp,
        N,
        C,
        Hl,
        Wl,
        bf,
        x1,
        y1,
        x2,
        y2,
        ok,
        sl.to(DT),
        sampling_ratio,
        k,
        tl.program_id(1),
        PH,
        PW,
        ALIGNED,
        False,
        DT,
        BLOCK_C,
        BLOCK_P,
    )


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
        return {
            "BLOCK_C": min(4, triton.next_power_of_2(c)),
            "TILE_H": 16,
            "TILE_W": 16 if ps else 32,
            "ROI_BLOCK": 128,
        }
    return {
        "BLOCK_C": min(64, triton.next_power_of_2(c)),
        "TILE_H": min(32, triton.next_power_of_2(h)),
        "TILE_W": min(32, triton.next_power_of_2(w)),
        "ROI_BLOCK": 256,
    }


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
    with on_tensor_device(input):
        _roi_align_fwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            input,
            rois,
            out,
            n,
            c,
            h,
            w,
            *input.stride(),
            rois.stride(0),
            rois.stride(1),
            hi,
            lo,
            int(sampling_ratio),
            ph,
            pw,
            ALIGNED=bool(aligned),
            C_FAST=_c_fast(input),
            DT=_dt(input),
            BLOCK_C=bc,
            BLOCK_P=bp,
            **_launch_opts(input),
        )


def roi_align_bwd(grad_out, rois, grad_input, spatial_scale, sampling_ratio, aligned, deterministic):
    k, c, ph, pw = grad_out.shape
    n, _, h, w = grad_input.shape
    if grad_out.numel() == 0 or grad_input.numel() == 0:
        return
    hi, lo = _f32_parts(spatial_scale)
    with on_tensor_device(grad_out):
        if deterministic:
            cfg = _gather_blocks(c, h, w, grad_out.is_cuda)
            tiles = triton.cdiv(h, cfg["TILE_H"]) * triton.cdiv(w, cfg["TILE_W"])
            _roi_align_bwd_gather_kernel[(tiles * n * triton.cdiv(c, cfg["BLOCK_C"]),)](
                grad_out,
                rois,
                grad_input,
                k,
                n,
                c,
                h,
                w,
                *grad_out.stride(),
                rois.stride(0),
                rois.stride(1),
                hi,
                lo,
                int(sampling_ratio),
                ph,
                pw,
                ALIGNED=bool(aligned),
                DT=_dt(grad_input),
                **cfg,
                **_launch_opts(grad_out),
            )
            return
        bc, bp = _tile_blocks(c, ph * pw, grad_out.is_cuda)
        _roi_align_bwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            grad_out,
            rois,
            grad_input,
            n,
            c,
            h,
            w,
            *grad_out.stride(),
            rois.stride(0),
            rois.stride(1),
            hi,
            lo,
            int(sampling_ratio),
            ph,
            pw,
            ALIGNED=bool(aligned),
            DT=_dt(grad_input),
            BLOCK_C=bc,
            BLOCK_P=bp,
            **_launch_opts(grad_out),
        )


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
    with on_tensor_device(input):
        _ps_roi_align_fwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            input,
            rois,
            out,
            n,
            c,
            h,
            w,
            *input.stride(),
            rois.stride(0),
            rois.stride(1),
            hi,
            lo,
            int(sampling_ratio),
            ph,
            pw,
            DT=_dt(input),
            BLOCK_C=bc,
            BLOCK_P=bp,
            **_launch_opts(input),
        )


def ps_roi_align_bwd(grad_out, rois, grad_input, spatial_scale, sampling_ratio, deterministic):
    k, c, ph, pw = grad_out.shape
    n, c_in, h, w = grad_input.shape
    if grad_out.numel() == 0 or grad_input.numel() == 0:
        return
    hi, lo = _f32_parts(spatial_scale)
    with on_tensor_device(grad_out):
        if deterministic:
            cfg = _gather_blocks(c_in, h, w, grad_out.is_cuda, ps=True)
            tiles = triton.cdiv(h, cfg["TILE_H"]) * triton.cdiv(w, cfg["TILE_W"])
            _ps_roi_align_bwd_gather_kernel[(tiles * n * triton.cdiv(c_in, cfg["BLOCK_C"]),)](
                grad_out,
                rois,
                grad_input,
                k,
                n,
                c,
                c_in,
                h,
                w,
                *grad_out.stride(),
                rois.stride(0),
                rois.stride(1),
                hi,
                lo,
                int(sampling_ratio),
                ph,
                pw,
                DT=_dt(grad_input),
                **cfg,
                **_launch_opts(grad_out),
            )
            return
        bc, bp = _tile_blocks(c, ph * pw, grad_out.is_cuda)
        _ps_roi_align_bwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            grad_out,
            rois,
            grad_input,
            n,
            c,
            h,
            w,
            *grad_out.stride(),
            rois.stride(0),
            rois.stride(1),
            hi,
            lo,
            int(sampling_ratio),
            ph,
            pw,
            DT=_dt(grad_input),
            BLOCK_C=bc,
            BLOCK_P=bp,
            **_launch_opts(grad_out),
        )


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
    with on_tensor_device(input):
        _roi_pool_fwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            input,
            rois,
            out,
            argmax,
            n,
            c,
            h,
            w,
            *input.stride(),
            rois.stride(0),
            rois.stride(1),
            hi,
            lo,
            ph,
            pw,
            C_FAST=_c_fast(input),
            DT=_dt(input),
            BLOCK_C=bc,
            BLOCK_P=bp,
            **_launch_opts(input),
        )


def roi_pool_bwd(grad_out, argmax, rois, grad_input, deterministic):
    k, c, ph, pw = grad_out.shape
    n, _, h, w = grad_input.shape
    if grad_out.numel() == 0 or grad_input.numel() == 0:
        return
    with on_tensor_device(grad_out):
        if deterministic:
            gpu = grad_out.is_cuda
            chunk = 256 if gpu else min(4096, triton.next_power_of_2(h * w))
            bc = min(8 if gpu else 64, triton.next_power_of_2(c))
            bp = min(64 if gpu else 4096, triton.next_power_of_2(ph * pw))
            grid = (triton.cdiv(h * w, chunk) * n * triton.cdiv(c, bc),)
            _roi_pool_bwd_gather_kernel[grid](
                grad_out,
                argmax,
                rois,
                grad_input,
                k,
                n,
                c,
                h * w,
                *grad_out.stride(),
                *argmax.stride(),
                rois.stride(0),
                ph,
                pw,
                DT=_dt(grad_input),
                BLOCK_C=bc,
                BLOCK_P=bp,
                CHUNK=chunk,
                ROI_BLOCK=128 if gpu else 256,
                **_launch_opts(grad_out),
            )
            return
        bc, bp = _tile_blocks(c, ph * pw, grad_out.is_cuda)
        _roi_pool_bwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            grad_out,
            argmax,
            rois,
            grad_input,
            n,
            c,
            h,
            w,
            *grad_out.stride(),
            *argmax.stride(),
            rois.stride(0),
            ph,
            pw,
            DT=_dt(grad_input),
            BLOCK_C=bc,
            BLOCK_P=bp,
            **_launch_opts(grad_out),
        )


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
    with on_tensor_device(input):
        _ps_roi_pool_fwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            input,
            rois,
            out,
            n,
            c,
            h,
            w,
            *input.stride(),
            rois.stride(0),
            rois.stride(1),
            hi,
            lo,
            ph,
            pw,
            DT=_dt(input),
            BLOCK_C=bc,
            BLOCK_P=bp,
            **_launch_opts(input),
        )


def ps_roi_pool_bwd(grad_out, rois, grad_input, spatial_scale, deterministic):
    k, c, ph, pw = grad_out.shape
    n, c_in, h, w = grad_input.shape
    if grad_out.numel() == 0 or grad_input.numel() == 0:
        return
    hi, lo = _f32_parts(spatial_scale)
    with on_tensor_device(grad_out):
        if deterministic:
            cfg = _gather_blocks(c_in, h, w, grad_out.is_cuda, ps=True)
            tiles = triton.cdiv(h, cfg["TILE_H"]) * triton.cdiv(w, cfg["TILE_W"])
            _ps_roi_pool_bwd_gather_kernel[(tiles * n * triton.cdiv(c_in, cfg["BLOCK_C"]),)](
                grad_out,
                rois,
                grad_input,
                k,
                n,
                c,
                c_in,
                h,
                w,
                *grad_out.stride(),
                rois.stride(0),
                rois.stride(1),
                hi,
                lo,
                ph,
                pw,
                DT=_dt(grad_input),
                **cfg,
                **_launch_opts(grad_out),
            )
            return
        bc, bp = _tile_blocks(c, ph * pw, grad_out.is_cuda)
        _ps_roi_pool_bwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            grad_out,
            rois,
            grad_input,
            n,
            c,
            c_in,
            h,
            w,
            *grad_out.stride(),
            rois.stride(0),
            rois.stride(1),
            hi,
            lo,
            ph,
            pw,
            DT=_dt(grad_input),
            BLOCK_C=bc,
            BLOCK_P=bp,
            **_launch_opts(grad_out),
        )


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


def _level_thresholds(spatial_scales, canonical_scale, canonical_level) -> list[float]:
    """The 8 area-threshold arguments of the multi-level kernels (float32 areas), NaN-padded."""
    from pygen.ref.roi import fpn_level_thresholds  # the rule lives once, in the oracle

    t = list(fpn_level_thresholds(spatial_scales, canonical_scale, canonical_level, torch.float32))[:8]
    return t + [float("nan")] * (8 - len(t))


def multi_scale_roi_align_fwd(
    features, rois, out, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level
):
    k, c, ph, pw = out.shape
    if out.numel() == 0:
        return
    f0 = features[0]
    if f0.shape[0] == 0:
        out.zero_()
        return
    thresholds = _level_thresholds(spatial_scales, canonical_scale, canonical_level)
    bc, bp = _tile_blocks(c, ph * pw, f0.is_cuda)
    with on_tensor_device(f0):
        _multi_scale_roi_align_fwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            rois,
            out,
            f0.shape[0],
            c,
            rois.stride(0),
            rois.stride(1),
            int(sampling_ratio),
            ph,
            pw,
            *thresholds,
            *_level_args(features, spatial_scales, True),
            NUM_LEVELS=len(features),
            ALIGNED=bool(aligned),
            C_FAST=_c_fast(f0),
            DT=_dt(f0),
            BLOCK_C=bc,
            BLOCK_P=bp,
            **_launch_opts(f0),
        )


def multi_scale_roi_align_bwd(
    grad_out,
    rois,
    grad_features,
    spatial_scales,
    sampling_ratio,
    aligned,
    canonical_scale,
    canonical_level,
    deterministic,
):
    k, c, ph, pw = grad_out.shape
    g0 = grad_features[0]
    if grad_out.numel() == 0 or g0.shape[0] == 0 or c == 0:
        return
    common = (
        int(sampling_ratio),
        ph,
        pw,
        *_level_thresholds(spatial_scales, canonical_scale, canonical_level),
        *_level_args(grad_features, spatial_scales, False),
    )
    with on_tensor_device(grad_out):
        if deterministic:
            cfg = _gather_blocks(
                c, max(g.shape[2] for g in grad_features), max(g.shape[3] for g in grad_features), grad_out.is_cuda
            )
            tiles = sum(
                triton.cdiv(g.shape[2], cfg["TILE_H"]) * triton.cdiv(g.shape[3], cfg["TILE_W"]) for g in grad_features
            )
            if tiles == 0:
                return
            _multi_scale_roi_align_bwd_gather_kernel[(tiles * g0.shape[0] * triton.cdiv(c, cfg["BLOCK_C"]),)](
                grad_out,
                rois,
                k,
                g0.shape[0],
                c,
                *grad_out.stride(),
                rois.stride(0),
                rois.stride(1),
                *common,
                NUM_LEVELS=len(grad_features),
                ALIGNED=bool(aligned),
                DT=_dt(g0),
                **cfg,
                **_launch_opts(grad_out),
            )
            return
        bc, bp = _tile_blocks(c, ph * pw, grad_out.is_cuda)
        _multi_scale_roi_align_bwd_kernel[_per_roi_grid(k, c, ph * pw, bc, bp)](
            grad_out,
            rois,
            g0.shape[0],
            c,
            *grad_out.stride(),
            rois.stride(0),
            rois.stride(1),
            *common,
            NUM_LEVELS=len(grad_features),
            ALIGNED=bool(aligned),
            DT=_dt(g0),
            BLOCK_C=bc,
            BLOCK_P=bp,
            **_launch_opts(grad_out),
        )


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


_FLOAT_ARGS = {"scale_hi", "scale_lo"} | {f"s{i}" for i in range(8)} | {f"a{i}" for i in range(8)}


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
    return {
        "name": name,
        "fn": fn,
        "signature": sig,
        "constexprs": dict(constexprs),
        "num_warps": _NUM_WARPS,
        "what": what,
    }


def _compile_specs() -> list:
    f32 = tl.float32
    nchw = {"stride_w": 1, "roi_stride_f": 1}  # NCHW input: unit W stride
    cl = {"stride_c": 1, "roi_stride_f": 1}  # channels_last input: unit C stride
    go = {"go_s3": 1, "roi_stride_f": 1}  # contiguous grad_out
    gather = {"BLOCK_C": 4, "TILE_H": 16, "TILE_W": 32, "ROI_BLOCK": 128}
    ps_gather = {**gather, "TILE_W": 16}
    fpn = {"NUM_LEVELS": 4, "ALIGNED": False, "DT": f32}
    ms_fwd = {**{f"sw{i}": 1 for i in range(8)}, "roi_stride_f": 1}
    return [
        _spec(
            _roi_align_fwd_kernel,
            "FPN box head: C=256, 7x7, NCHW fp32",
            {**nchw, "ALIGNED": False, "C_FAST": False, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64},
        ),
        _spec(
            _roi_align_fwd_kernel,
            "channels_last bf16, C=256, 7x7, aligned",
            {**cl, "ALIGNED": True, "C_FAST": True, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64},
            ptr="*bf16",
        ),
        _spec(
            _roi_align_fwd_kernel,
            "Mask R-CNN mask head: C=256, 14x14, NCHW fp32",
            {**nchw, "ALIGNED": True, "C_FAST": False, "DT": f32, "BLOCK_C": 2, "BLOCK_P": 256},
        ),
        _spec(
            _roi_align_bwd_kernel,
            "C=256, 7x7, atomics",
            {**go, "ALIGNED": False, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64},
        ),
        _spec(
            _roi_align_bwd_gather_kernel,
            "C=256, 7x7, deterministic gather",
            {**go, "ALIGNED": False, "DT": f32, **gather},
        ),
        _spec(
            _ps_roi_align_fwd_kernel,
            "R-FCN: C_out=21, 7x7 (C_in=1029), NCHW fp32",
            {**nchw, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64},
        ),
        _spec(
            _ps_roi_align_bwd_kernel, "R-FCN: C_out=21, 7x7, atomics", {**go, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64}
        ),
        _spec(
            _ps_roi_align_bwd_gather_kernel,
            "R-FCN: C_out=21, 7x7, deterministic gather",
            {**go, "DT": f32, **ps_gather},
        ),
        _spec(
            _roi_pool_fwd_kernel,
            "Fast R-CNN: C=512, 7x7, NCHW fp32",
            {**nchw, "C_FAST": False, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64},
            types={"argmax_ptr": "*i32"},
        ),
        _spec(
            _roi_pool_bwd_kernel,
            "Fast R-CNN: C=512, 7x7, atomics",
            {"go_s3": 1, "am_s3": 1, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64},
            types={"argmax_ptr": "*i32"},
        ),
        _spec(
            _roi_pool_bwd_gather_kernel,
            "Fast R-CNN: C=512, 7x7, deterministic gather",
            {"go_s3": 1, "am_s3": 1, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64, "CHUNK": 256, "ROI_BLOCK": 128},
            types={"argmax_ptr": "*i32"},
        ),
        _spec(
            _ps_roi_pool_fwd_kernel, "R-FCN: C_out=21, 7x7, NCHW fp32", {**nchw, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64}
        ),
        _spec(_ps_roi_pool_bwd_kernel, "R-FCN: C_out=21, 7x7, atomics", {**go, "DT": f32, "BLOCK_C": 8, "BLOCK_P": 64}),
        _spec(
            _ps_roi_pool_bwd_gather_kernel, "R-FCN: C_out=21, 7x7, deterministic gather", {**go, "DT": f32, **ps_gather}
        ),
        _spec(
            _multi_scale_roi_align_fwd_kernel,
            "FPN P2-P5: C=256, 7x7, NCHW fp32",
            {**ms_fwd, **fpn, "C_FAST": False, "BLOCK_C": 8, "BLOCK_P": 64},
        ),
        _spec(
            _multi_scale_roi_align_bwd_kernel,
            "FPN P2-P5: C=256, 7x7, atomics",
            {**go, **fpn, "BLOCK_C": 8, "BLOCK_P": 64},
        ),
        _spec(
            _multi_scale_roi_align_bwd_gather_kernel,
            "FPN P2-P5: C=256, 7x7, deterministic gather",
            {**go, **fpn, **gather},
        ),
    ]


COMPILE_SPECS = _compile_specs()
