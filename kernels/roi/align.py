"""roi_align, ps_roi_align and multi_scale_roi_align (FPN): the per-RoI forward kernels and their
atomic backward (ps_roi_align is roi_align's kernels with PS=True). One program per (RoI k, channel
block x bin block); the sample loops are device.py's _align_sum / _align_scatter, shared by all
three ops. Layouts, math and grids:
kernels/roi/__init__.py's docstring; the deterministic backward: gather.py.
"""

import triton
import triton.language as tl

from .device import _align_bwd_program, _align_fwd_program, _fpn_level, _pick, _roi_row, _scale, _select_level

# ----------------------------------------------------------------------------------------------
# roi_align and ps_roi_align (PS=True)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _roi_align_fwd_kernel(
    input_ptr,  # [N, C, H, W] features, any strides (PS: [N, C_in, H, W], C_in = C * PH * PW)
    rois_ptr,  # [K, 5] (batch_index, x1, y1, x2, y2)
    out_ptr,  # [K, C, PH, PW] contiguous, input dtype
    N,  # images; RoIs whose batch index is outside [0, N) give zeros
    C,  # channels (PS: output channels)
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
    PS: tl.constexpr,  # ps_roi_align: bin p of output channel c reads input channel c*PH*PW + p
    C_FAST: tl.constexpr,  # channel stride is 1: put channels on the coalesced tile axis
    DT: tl.constexpr,  # compute dtype (float32, or float64 for float64 input)
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program (power of two >= PH*PW, or a block of them)
):
    # PS-align is roi_align with aligned=True geometry; channel c_in = c*PH*PW + p is not
    # contiguous along either tile axis, so the bin-fast layout is kept
    tl.static_assert(not PS or (ALIGNED and not C_FAST), "PS needs ALIGNED=True, C_FAST=False")
    box = _roi_row((rois_ptr, roi_stride, roi_stride_f), tl.program_id(0), tl.program_id(0) >= 0, DT)
    feat = (input_ptr, N, C, H, W, stride_n, stride_c, stride_h, stride_w)
    scale = _scale(scale_hi, scale_lo, DT)
    _align_fwd_program(
        feat, box, True, scale, sampling_ratio, out_ptr, PH, PW, ALIGNED, PS, C_FAST, DT, BLOCK_C, BLOCK_P
    )


@triton.jit
def _roi_align_bwd_kernel(
    grad_out_ptr,  # [K, C, PH, PW] any strides
    rois_ptr,  # [K, 5]
    grad_in_ptr,  # [N, C, H, W] contiguous float32/64, zero-filled, accumulated atomically
    # (PS: [N, C*PH*PW, H, W])
    N,  # images
    C,  # channels (PS: output channels)
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
    PS: tl.constexpr,  # ps_roi_align (needs ALIGNED=True), see _roi_align_fwd_kernel
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    tl.static_assert(not PS or ALIGNED, "PS needs ALIGNED=True")
    box = _roi_row((rois_ptr, roi_stride, roi_stride_f), tl.program_id(0), tl.program_id(0) >= 0, DT)
    go = (grad_out_ptr, go_s0, go_s1, go_s2, go_s3)
    scale = _scale(scale_hi, scale_lo, DT)
    _align_bwd_program(
        go, grad_in_ptr, N, C, H, W, box, True, scale, sampling_ratio, PH, PW, ALIGNED, PS, DT, BLOCK_C, BLOCK_P
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
    box = _roi_row((rois_ptr, roi_stride, roi_stride_f), tl.program_id(0), tl.program_id(0) >= 0, DT)
    lvl = _fpn_level(box, (a0, a1, a2, a3, a4, a5, a6, a7))
    heights, widths = (H0, H1, H2, H3, H4, H5, H6, H7), (W0, W1, W2, W3, W4, W5, W6, W7)
    scales = (s0, s1, s2, s3, s4, s5, s6, s7)
    fp, Hl, Wl, sl, ok = _select_level(lvl, NUM_LEVELS, (f0, f1, f2, f3, f4, f5, f6, f7), heights, widths, scales, DT)
    sn = _pick(lvl, NUM_LEVELS, (sn0, sn1, sn2, sn3, sn4, sn5, sn6, sn7))
    sc = _pick(lvl, NUM_LEVELS, (sc0, sc1, sc2, sc3, sc4, sc5, sc6, sc7))
    sh = _pick(lvl, NUM_LEVELS, (sh0, sh1, sh2, sh3, sh4, sh5, sh6, sh7))
    sw = _pick(lvl, NUM_LEVELS, (sw0, sw1, sw2, sw3, sw4, sw5, sw6, sw7))
    feat = (fp, N, C, Hl, Wl, sn, sc, sh, sw)
    _align_fwd_program(feat, box, ok, sl, sampling_ratio, out_ptr, PH, PW, ALIGNED, False, C_FAST, DT, BLOCK_C, BLOCK_P)


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
    box = _roi_row((rois_ptr, roi_stride, roi_stride_f), tl.program_id(0), tl.program_id(0) >= 0, DT)
    go = (grad_out_ptr, go_s0, go_s1, go_s2, go_s3)
    lvl = _fpn_level(box, (a0, a1, a2, a3, a4, a5, a6, a7))
    heights, widths = (H0, H1, H2, H3, H4, H5, H6, H7), (W0, W1, W2, W3, W4, W5, W6, W7)
    scales = (s0, s1, s2, s3, s4, s5, s6, s7)
    gp, Hl, Wl, sl, ok = _select_level(lvl, NUM_LEVELS, (g0, g1, g2, g3, g4, g5, g6, g7), heights, widths, scales, DT)
    _align_bwd_program(go, gp, N, C, Hl, Wl, box, ok, sl, sampling_ratio, PH, PW, ALIGNED, False, DT, BLOCK_C, BLOCK_P)
