"""RoI family launchers for the csrc builds (contract: docs/ARCHITECTURE.md, "RoI family").

Each launcher is one ``pygen._ext.call``: CPU tensors go to ``pygen._C`` (OpenMP,
``torch.get_num_threads()`` threads), CUDA tensors to ``pygen._cuda`` on the tensor's current
stream, every tensor as ``(data_ptr, sizes, strides, dtype)`` and read in place through its strides
(NCHW, channels_last, views). The math is pygen/ref/roi.py's; the kernels live in csrc/roi/
(roi.cuh states the formulas and layouts).

What the kernels need, checked by csrc/roi/roi_bind.h on every call (pygen.ops validated the
arguments before the registered op ran): ``rois`` [K, 5] contiguous in the compute dtype (float64
for float64 input, else float32), ``out`` in the input's dtype, ``argmax`` int32 contiguous, grad
buffers contiguous, zero-filled and in the compute dtype. The CUDA build takes float32 / float16 /
bfloat16 (float64 is a cpu-backend dtype).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._ext import call, launcher
from ..ref.roi import fpn_level_thresholds

roi_align_fwd = launcher("roi_align_fwd")  # (input, rois, out, spatial_scale, sampling_ratio, aligned)
roi_align_bwd = launcher("roi_align_bwd")  # (grad_out, rois, grad_input, scale, sampling_ratio, aligned, deterministic)
roi_pool_fwd = launcher("roi_pool_fwd")  # (input, rois, out, argmax, spatial_scale)
roi_pool_bwd = launcher("roi_pool_bwd")  # (grad_out, argmax, rois, grad_input, deterministic)
ps_roi_align_fwd = launcher("ps_roi_align_fwd")  # (input, rois, out, spatial_scale, sampling_ratio)
ps_roi_align_bwd = launcher("ps_roi_align_bwd")  # (grad_out, rois, grad_input, scale, sampling_ratio, deterministic)
ps_roi_pool_fwd = launcher("ps_roi_pool_fwd")  # (input, rois, out, spatial_scale)
ps_roi_pool_bwd = launcher("ps_roi_pool_bwd")  # (grad_out, rois, grad_input, spatial_scale, deterministic)


# multi_scale_roi_align: the FPN level rule (canonical scale s0 and level k0) crosses as the area
# thresholds of pygen.ref.roi.fpn_level_thresholds, computed here in the rois' dtype.
def multi_scale_roi_align_fwd(
    features: Sequence[torch.Tensor],
    rois: torch.Tensor,
    out: torch.Tensor,
    scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool,
    s0: float,
    k0: float,
) -> None:
    levels = fpn_level_thresholds(scales, s0, k0, rois.dtype)
    call("multi_scale_roi_align_fwd", features, rois, out, scales, sampling_ratio, aligned, levels)


def multi_scale_roi_align_bwd(
    grad_out: torch.Tensor,
    rois: torch.Tensor,
    grad_features: Sequence[torch.Tensor],
    scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool,
    s0: float,
    k0: float,
    determ: bool,
) -> None:
    levels = fpn_level_thresholds(scales, s0, k0, rois.dtype)
    call("multi_scale_roi_align_bwd", grad_out, rois, grad_features, scales, sampling_ratio, aligned, levels, determ)
