"""roi_align, ps_roi_align and multi_scale_roi_align (FPN): the per-RoI forward kernels and their
atomic backward (ps_roi_align is roi_align's kernels with PS=True). One program per (RoI k, channel
block x bin block); the sample loops are device.py's _align_sum / _align_scatter, shared by all
three ops. Layouts, math and grids:
kernels/roi/__init__.py's docstring; the deterministic backward: gather.py.
"""

import triton
import triton.language as tl

from .._args import join
from .device import _align_bwd_program, _align_fwd_program, _fpn_level, _pick, _roi_row, _select_level

# ----------------------------------------------------------------------------------------------
# roi_align and ps_roi_align (PS=True)
# ----------------------------------------------------------------------------------------------


@triton.jit
def _roi_align_fwd_kernel(
    feat,  # (input_ptr, N, C, H, W, stride_n, stride_c, stride_h, stride_w): [N, C, H, W] features,
    # any strides, C the output channels (PS: the input has C * PH * PW); RoIs whose batch index is
    # outside [0, N) give zeros
    rois,  # (rois_ptr, stride 0, stride 1): [K, 5] rows (batch_index, x1, y1, x2, y2)
    out_ptr,  # [K, C, PH, PW] contiguous, input dtype
    scale,  # spatial_scale as (float32, float32 remainder): the remainder only for float64 math
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
    box = _roi_row(rois, tl.program_id(0), tl.program_id(0) >= 0, DT)
    s = join(scale, DT)
    _align_fwd_program(feat, box, True, s, sampling_ratio, out_ptr, PH, PW, ALIGNED, PS, C_FAST, DT, BLOCK_C, BLOCK_P)


@triton.jit
def _roi_align_bwd_kernel(
    go,  # (grad_out_ptr, 4 strides): grad_out [K, C, PH, PW], any strides
    rois,  # (rois_ptr, stride 0, stride 1): [K, 5]
    grad_in_ptr,  # [N, C, H, W] contiguous float32/64, zero-filled, accumulated atomically
    # (PS: [N, C*PH*PW, H, W])
    N,  # images
    C,  # channels (PS: output channels)
    H,  # height
    W,  # width
    scale,  # spatial_scale (float32, remainder), see _roi_align_fwd_kernel
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
    box = _roi_row(rois, tl.program_id(0), tl.program_id(0) >= 0, DT)
    s = join(scale, DT)
    _align_bwd_program(
        go, grad_in_ptr, N, C, H, W, box, True, s, sampling_ratio, PH, PW, ALIGNED, PS, DT, BLOCK_C, BLOCK_P
    )


# ----------------------------------------------------------------------------------------------
# multi_scale_roi_align (FPN): one launch for all levels
# ----------------------------------------------------------------------------------------------
# Levels stay separate tensors (P2 alone is ~137 MB at 800x1333, too big to concatenate): the
# kernels take 8 level slots (tuples of 8; unused slots repeat level 0) and pick one per RoI with
# scalar selects, so a single compiled body serves every level.


@triton.jit
def _multi_scale_roi_align_fwd_kernel(
    rois,  # (rois_ptr, stride 0, stride 1): [K, 5]
    out_ptr,  # [K, C, PH, PW] contiguous, feature dtype
    N,  # images
    C,  # channels (shared by all levels)
    sampling_ratio,  # see _roi_align_fwd_kernel
    PH,  # pooled height
    PW,  # pooled width
    fpn,  # FPN level rule: the 8 area thresholds of level indices 1..8
    # (pygen.ref.roi.fpn_level_thresholds), NaN-padded
    feats,  # the 8 level feature pointers [N, C, H_l, W_l], any strides
    heights,  # the 8 level heights
    widths,  # the 8 level widths
    strides_n,  # the 8 levels' strides over N, in elements
    strides_c,  # ... over C
    strides_h,  # ... over H
    strides_w,  # ... over W
    scales,  # the 8 level spatial scales
    NUM_LEVELS: tl.constexpr,  # 1..8 levels in use; the remaining slots repeat level 0
    ALIGNED: tl.constexpr,  # see _roi_align_fwd_kernel
    C_FAST: tl.constexpr,  # level 0's channel stride is 1
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    box = _roi_row(rois, tl.program_id(0), tl.program_id(0) >= 0, DT)
    lvl = _fpn_level(box, fpn)
    fp, Hl, Wl, sl, ok = _select_level(lvl, NUM_LEVELS, feats, heights, widths, scales, DT)
    sn = _pick(lvl, NUM_LEVELS, strides_n)
    sc = _pick(lvl, NUM_LEVELS, strides_c)
    sh = _pick(lvl, NUM_LEVELS, strides_h)
    sw = _pick(lvl, NUM_LEVELS, strides_w)
    feat = (fp, N, C, Hl, Wl, sn, sc, sh, sw)
    _align_fwd_program(feat, box, ok, sl, sampling_ratio, out_ptr, PH, PW, ALIGNED, False, C_FAST, DT, BLOCK_C, BLOCK_P)


@triton.jit
def _multi_scale_roi_align_bwd_kernel(
    go,  # (grad_out_ptr, 4 strides): grad_out [K, C, PH, PW], any strides
    rois,  # (rois_ptr, stride 0, stride 1): [K, 5]
    N,  # images
    C,  # channels
    sampling_ratio,  # see _roi_align_fwd_kernel
    PH,  # pooled height
    PW,  # pooled width
    fpn,  # the 8 FPN level area thresholds (see the forward)
    grads,  # the 8 level grad buffers [N, C, H_l, W_l], contiguous fp32/64
    heights,  # the 8 level heights
    widths,  # the 8 level widths
    scales,  # the 8 level spatial scales
    NUM_LEVELS: tl.constexpr,  # levels in use
    ALIGNED: tl.constexpr,  # see _roi_align_fwd_kernel
    DT: tl.constexpr,  # compute dtype
    BLOCK_C: tl.constexpr,  # channels per program
    BLOCK_P: tl.constexpr,  # bins per program
):
    box = _roi_row(rois, tl.program_id(0), tl.program_id(0) >= 0, DT)
    lvl = _fpn_level(box, fpn)
    gp, Hl, Wl, sl, ok = _select_level(lvl, NUM_LEVELS, grads, heights, widths, scales, DT)
    _align_bwd_program(go, gp, N, C, Hl, Wl, box, ok, sl, sampling_ratio, PH, PW, ALIGNED, False, DT, BLOCK_C, BLOCK_P)
