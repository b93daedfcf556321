"""RoI family launchers for the csrc builds (contract: docs/ARCHITECTURE.md, "RoI family").

CPU tensors go to ``pygen._C`` (OpenMP, ``torch.get_num_threads()`` threads), CUDA tensors to
``pygen._cuda`` on the tensor's current stream. Each tensor crosses as ``(data_ptr, sizes,
strides)``: inputs of any strides (NCHW, channels_last, views) are read in place. The math is
pygen/ref/roi.py's; the kernels live in csrc/roi/ (roi.cuh states the formulas and layouts).

Requirements the launchers check (the public op in pygen.ops has already validated values):
``rois`` [K, 5] contiguous in the compute dtype (float64 for float64 input, else float32), ``out`` /
``argmax`` / grad buffers contiguous, grad buffers float32 (float64 for float64) and zero-filled.
The CUDA build takes float32 / float16 / bfloat16 (float64 is a cpu-backend dtype).
"""

from __future__ import annotations

import torch

from .. import _ext
from ..ref.roi import fpn_level_thresholds

_module = _ext.native_module
_arg = _ext.native_arg


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(name: str, data: torch.Tensor, rois: torch.Tensor, *, contiguous=(), acc=(), same_device=()):
    if data.dtype not in _ext.DTYPE_CODE:
        raise TypeError(f"{name}: dtype {data.dtype} is not supported")
    cdt = _compute_dtype(data.dtype)
    if rois.dtype != cdt:
        raise TypeError(f"{name}: rois must be {cdt} for {data.dtype} data, got {rois.dtype}")
    for label, t in (("rois", rois), *contiguous):
        if not t.is_contiguous():
            raise ValueError(f"{name}: {label} must be contiguous")
    for label, t in acc:
        if t.dtype != cdt:
            raise TypeError(f"{name}: {label} must be a {cdt} accumulation buffer, got {t.dtype}")
    for label, t in (("rois", rois), *contiguous, *acc, *same_device):
        if t.device != data.device:
            raise ValueError(f"{name}: {label} is on {t.device}, expected {data.device}")


def _empty(*tensors: torch.Tensor) -> bool:
    return any(t.numel() == 0 for t in tensors)


def _check_cuda_columns(name: str, grads, deterministic: bool):
    """The deterministic CUDA backward runs one thread per grad column with 32-bit indices."""
    if deterministic and grads[0].is_cuda:
        cols = sum(g.shape[0] * g.shape[1] * g.shape[3] for g in grads)
        if cols >= 2**31:
            raise ValueError(f"{name}: deterministic CUDA backward supports N*C*W < 2^31 grad columns, got {cols}")


# ---- roi_align -------------------------------------------------------------------------------
def roi_align_fwd(input, rois, out, spatial_scale, sampling_ratio, aligned):
    _check("roi_align_fwd", input, rois, contiguous=[("out", out)], same_device=[("out", out)])
    if _empty(input, rois, out):
        return None
    mod, ctx = _module(input)
    mod.roi_align_fwd(
        _ext.dtype_code(input),
        _arg(input),
        _arg(rois),
        _arg(out),
        float(spatial_scale),
        int(sampling_ratio),
        bool(aligned),
        ctx,
    )
    return None


def roi_align_bwd(grad_out, rois, grad_input, spatial_scale, sampling_ratio, aligned, deterministic):
    _check("roi_align_bwd", grad_out, rois, acc=[("grad_input", grad_input)], contiguous=[("grad_input", grad_input)])
    if _empty(grad_out, rois, grad_input):
        return None
    _check_cuda_columns("roi_align_bwd", [grad_input], deterministic)
    mod, ctx = _module(grad_out)
    mod.roi_align_bwd(
        _ext.dtype_code(grad_out),
        _arg(grad_out),
        _arg(rois),
        _arg(grad_input),
        float(spatial_scale),
        int(sampling_ratio),
        bool(aligned),
        bool(deterministic),
        ctx,
    )
    return None


# ---- roi_pool --------------------------------------------------------------------------------
def roi_pool_fwd(input, rois, out, argmax, spatial_scale):
    _check("roi_pool_fwd", input, rois, contiguous=[("out", out), ("argmax", argmax)])
    if argmax.dtype != torch.int32:
        raise TypeError(f"roi_pool_fwd: argmax must be int32, got {argmax.dtype}")
    if _empty(input, rois, out):
        return None
    mod, ctx = _module(input)
    mod.roi_pool_fwd(
        _ext.dtype_code(input), _arg(input), _arg(rois), _arg(out), _arg(argmax), float(spatial_scale), ctx
    )
    return None


def roi_pool_bwd(grad_out, argmax, rois, grad_input, deterministic):
    _check(
        "roi_pool_bwd",
        grad_out,
        rois,
        acc=[("grad_input", grad_input)],
        contiguous=[("grad_input", grad_input), ("argmax", argmax)],
    )
    if argmax.dtype != torch.int32:
        raise TypeError(f"roi_pool_bwd: argmax must be int32, got {argmax.dtype}")
    if _empty(grad_out, rois, grad_input):
        return None
    _check_cuda_columns("roi_pool_bwd", [grad_input], deterministic)
    mod, ctx = _module(grad_out)
    mod.roi_pool_bwd(
        _ext.dtype_code(grad_out), _arg(grad_out), _arg(argmax), _arg(rois), _arg(grad_input), bool(deterministic), ctx
    )
    return None


# ---- ps_roi_align ----------------------------------------------------------------------------
def ps_roi_align_fwd(input, rois, out, spatial_scale, sampling_ratio):
    _check("ps_roi_align_fwd", input, rois, contiguous=[("out", out)])
    if _empty(input, rois, out):
        return None
    mod, ctx = _module(input)
    mod.ps_roi_align_fwd(
        _ext.dtype_code(input), _arg(input), _arg(rois), _arg(out), float(spatial_scale), int(sampling_ratio), ctx
    )
    return None


def ps_roi_align_bwd(grad_out, rois, grad_input, spatial_scale, sampling_ratio, deterministic):
    _check(
        "ps_roi_align_bwd", grad_out, rois, acc=[("grad_input", grad_input)], contiguous=[("grad_input", grad_input)]
    )
    if _empty(grad_out, rois, grad_input):
        return None
    _check_cuda_columns("ps_roi_align_bwd", [grad_input], deterministic)
    mod, ctx = _module(grad_out)
    mod.ps_roi_align_bwd(
        _ext.dtype_code(grad_out),
        _arg(grad_out),
        _arg(rois),
        _arg(grad_input),
        float(spatial_scale),
        int(sampling_ratio),
        bool(deterministic),
        ctx,
    )
    return None


# ---- ps_roi_pool -----------------------------------------------------------------------------
def ps_roi_pool_fwd(input, rois, out, spatial_scale):
    _check("ps_roi_pool_fwd", input, rois, contiguous=[("out", out)])
    if _empty(input, rois, out):
        return None
    mod, ctx = _module(input)
    mod.ps_roi_pool_fwd(_ext.dtype_code(input), _arg(input), _arg(rois), _arg(out), float(spatial_scale), ctx)
    return None


def ps_roi_pool_bwd(grad_out, rois, grad_input, spatial_scale, deterministic):
    _check("ps_roi_pool_bwd", grad_out, rois, acc=[("grad_input", grad_input)], contiguous=[("grad_input", grad_input)])
    if _empty(grad_out, rois, grad_input):
        return None
    _check_cuda_columns("ps_roi_pool_bwd", [grad_input], deterministic)
    mod, ctx = _module(grad_out)
    mod.ps_roi_pool_bwd(
        _ext.dtype_code(grad_out),
        _arg(grad_out),
        _arg(rois),
        _arg(grad_input),
        float(spatial_scale),
        bool(deterministic),
        ctx,
    )
    return None


# ---- multi_scale_roi_align -------------------------------------------------------------------
def _check_levels(name: str, maps, spatial_scales):
    if not 1 <= len(maps) <= 8:
        raise ValueError(f"{name}: expected 1 to 8 levels, got {len(maps)}")
    if len(spatial_scales) != len(maps):
        raise ValueError(f"{name}: {len(maps)} levels but {len(spatial_scales)} spatial_scales")


def multi_scale_roi_align_fwd(
    features, rois, out, spatial_scales, sampling_ratio, aligned, canonical_scale, canonical_level
):
    features = list(features)
    _check_levels("multi_scale_roi_align_fwd", features, spatial_scales)
    f0 = features[0]
    _check(
        "multi_scale_roi_align_fwd",
        f0,
        rois,
        contiguous=[("out", out)],
        same_device=[(f"features[{i}]", f) for i, f in enumerate(features)],
    )
    if any(f.dtype != f0.dtype for f in features):
        raise TypeError("multi_scale_roi_align_fwd: every level must have the same dtype")
    if _empty(rois, out) or all(f.numel() == 0 for f in features):
        return None
    thresholds = fpn_level_thresholds(spatial_scales, canonical_scale, canonical_level, rois.dtype)
    mod, ctx = _module(f0)
    mod.multi_scale_roi_align_fwd(
        _ext.dtype_code(f0),
        [_arg(f) for f in features],
        _arg(rois),
        _arg(out),
        [float(s) for s in spatial_scales],
        int(sampling_ratio),
        bool(aligned),
        list(thresholds),
        ctx,
    )
    return None


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
    grad_features = list(grad_features)
    _check_levels("multi_scale_roi_align_bwd", grad_features, spatial_scales)
    _check(
        "multi_scale_roi_align_bwd",
        grad_out,
        rois,
        acc=[(f"grad_features[{i}]", g) for i, g in enumerate(grad_features)],
        contiguous=[(f"grad_features[{i}]", g) for i, g in enumerate(grad_features)],
    )
    if _empty(grad_out, rois) or all(g.numel() == 0 for g in grad_features):
        return None
    _check_cuda_columns("multi_scale_roi_align_bwd", grad_features, deterministic)
    thresholds = fpn_level_thresholds(spatial_scales, canonical_scale, canonical_level, rois.dtype)
    mod, ctx = _module(grad_out)
    mod.multi_scale_roi_align_bwd(
        _ext.dtype_code(grad_out),
        _arg(grad_out),
        _arg(rois),
        [_arg(g) for g in grad_features],
        [float(s) for s in spatial_scales],
        int(sampling_ratio),
        bool(aligned),
        list(thresholds),
        bool(deterministic),
        ctx,
    )
    return None
