"""RoI pooling ops (Fast/Faster R-CNN, Mask R-CNN, R-FCN, FPN) with torchvision.ops' signatures.

    out = pygen.ops.roi_align(features, boxes, output_size=7, spatial_scale=1/16, sampling_ratio=2)

``boxes`` is a Tensor[K, 5] of ``(batch_index, x1, y1, x2, y2)`` rows or a list of Tensor[L, 4]
(one per image). Outputs are [K, C, PH, PW] (PS variants: [K, C/(PH*PW), PH, PW]); every op is
differentiable with respect to the feature maps. The math is stated in pygen/ref/roi.py.

Backends (``backend=`` argument, else ``PYGEN_BACKEND``, else the fastest available):
``cuda`` (csrc/roi, GPU), ``triton`` (kernels/roi.py), ``cpu`` (csrc/roi host build, OpenMP) and
``reference`` (pure PyTorch). Backward is deterministic (no floating-point atomics) when
``torch.are_deterministic_algorithms_enabled()``.
"""

from __future__ import annotations

import importlib

import torch

from .. import _backend
from ..ref import roi as ref
from . import _registry
from ._roi_checks import check_features, check_input, integer, output_pair, positive_scale, ps_channels, rois_from_boxes

__all__ = ["roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool", "multi_scale_roi_align"]

_KERNEL_BACKENDS = ("cuda", "triton", "cpu")
_LAUNCHER_MODULE = {"cpu": "pygen.native.roi", "cuda": "pygen.native.roi", "triton": "pygen.kernels.roi"}


def _launcher(backend: str):
    return importlib.import_module(_LAUNCHER_MODULE[backend])


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _new_out(input: torch.Tensor, rois: torch.Tensor, channels: int, ph: int, pw: int):
    """Output allocation shared by the real and the fake implementations."""
    return input.new_zeros((rois.shape[0], channels, ph, pw))


def _new_grad(grad: torch.Tensor, n: int, c: int, h: int, w: int, acc: bool):
    dt = _acc_dtype(grad.dtype) if acc else grad.dtype
    return grad.new_zeros((n, c, h, w), dtype=dt)


def _deterministic() -> bool:
    return torch.are_deterministic_algorithms_enabled()


def _register(backend: str) -> None:
    """Define the forward and backward ops of every RoI function for one kernel backend."""
    b = backend
    launch = lambda: _launcher(b)  # imported lazily: a backend may be missing

    def finish(acc, grad):
        return acc if acc.dtype == grad.dtype else acc.to(grad.dtype)

    # ---- roi_align -----------------------------------------------------------------------
    def roi_align_fwd(input, rois, ph, pw, scale, sampling_ratio, aligned):
        out = _new_out(input, rois, input.shape[1], ph, pw)
        if out.numel() and input.numel():
            launch().roi_align_fwd(input, rois, out, scale, sampling_ratio, aligned)
        return out

    def roi_align_bwd(grad, rois, n, c, h, w, scale, sampling_ratio, aligned, deterministic):
        acc = _new_grad(grad, n, c, h, w, acc=True)
        if grad.numel() and acc.numel():
            launch().roi_align_bwd(grad.contiguous(), rois, acc, scale, sampling_ratio, aligned, deterministic)
        return finish(acc, grad)

    fwd = _registry.define(
        f"roi_align_{b}",
        "(Tensor input, Tensor rois, int pooled_height, int pooled_width, float spatial_scale, "
        "int sampling_ratio, bool aligned) -> Tensor",
        roi_align_fwd,
        lambda input, rois, ph, pw, *a: _new_out(input, rois, input.shape[1], ph, pw),
    )
    bwd = _registry.define(
        f"roi_align_backward_{b}",
        "(Tensor grad, Tensor rois, int batch, int channels, int height, int width, "
        "float spatial_scale, int sampling_ratio, bool aligned, bool deterministic) -> Tensor",
        roi_align_bwd,
        lambda grad, rois, n, c, h, w, *a: _new_grad(grad, n, c, h, w, acc=False),
    )

    def roi_align_setup(ctx, inputs, output):
        input, rois, _, _, scale, sampling_ratio, aligned = inputs
        ctx.save_for_backward(rois)
        ctx.args = (*input.shape, scale, sampling_ratio, aligned)

    def roi_align_grad(ctx, grad, _bwd=bwd):
        (rois,) = ctx.saved_tensors
        return _bwd(grad, rois, *ctx.args, _deterministic()), None, None, None, None, None, None

    fwd.register_autograd(roi_align_grad, setup_context=roi_align_setup)

    # ---- roi_pool --------------------------------------------------------------------------
    def roi_pool_fwd(input, rois, ph, pw, scale):
        out = _new_out(input, rois, input.shape[1], ph, pw)
        argmax = torch.full(out.shape, -1, dtype=torch.int32, device=input.device)
        if out.numel() and input.numel():
            launch().roi_pool_fwd(input, rois, out, argmax, scale)
        return out, argmax

    def roi_pool_fake(input, rois, ph, pw, scale):
        out = _new_out(input, rois, input.shape[1], ph, pw)
        return out, torch.empty(out.shape, dtype=torch.int32, device=input.device)

    def roi_pool_bwd(grad, argmax, rois, n, c, h, w, deterministic):
        acc = _new_grad(grad, n, c, h, w, acc=True)
        if grad.numel() and acc.numel():
            launch().roi_pool_bwd(grad.contiguous(), argmax, rois, acc, deterministic)
        return finish(acc, grad)

    fwd = _registry.define(
        f"roi_pool_{b}",
        "(Tensor input, Tensor rois, int pooled_height, int pooled_width, float spatial_scale) -> (Tensor, Tensor)",
        roi_pool_fwd,
        roi_pool_fake,
    )
    bwd = _registry.define(
        f"roi_pool_backward_{b}",
        "(Tensor grad, Tensor argmax, Tensor rois, int batch, int channels, int height, int width, "
        "bool deterministic) -> Tensor",
        roi_pool_bwd,
        lambda grad, argmax, rois, n, c, h, w, *a: _new_grad(grad, n, c, h, w, acc=False),
    )

    def roi_pool_setup(ctx, inputs, output):
        input, rois = inputs[0], inputs[1]
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1], rois)
        ctx.args = tuple(input.shape)

    def roi_pool_grad(ctx, grad, _grad_argmax, _bwd=bwd):
        argmax, rois = ctx.saved_tensors
        return _bwd(grad, argmax, rois, *ctx.args, _deterministic()), None, None, None, None

    fwd.register_autograd(roi_pool_grad, setup_context=roi_pool_setup)

    # ---- ps_roi_align ------------------------------------------------------------------------
    def ps_roi_align_fwd(input, rois, ph, pw, scale, sampling_ratio):
        out = _new_out(input, rois, input.shape[1] // (ph * pw), ph, pw)
        if out.numel() and input.numel():
            launch().ps_roi_align_fwd(input, rois, out, scale, sampling_ratio)
        return out

    def ps_roi_align_bwd(grad, rois, n, c, h, w, scale, sampling_ratio, deterministic):
        acc = _new_grad(grad, n, c, h, w, acc=True)
        if grad.numel() and acc.numel():
            launch().ps_roi_align_bwd(grad.contiguous(), rois, acc, scale, sampling_ratio, deterministic)
        return finish(acc, grad)

    fwd = _registry.define(
        f"ps_roi_align_{b}",
        "(Tensor input, Tensor rois, int pooled_height, int pooled_width, float spatial_scale, "
        "int sampling_ratio) -> Tensor",
        ps_roi_align_fwd,
        lambda input, rois, ph, pw, *a: _new_out(input, rois, input.shape[1] // (ph * pw), ph, pw),
    )
    bwd = _registry.define(
        f"ps_roi_align_backward_{b}",
        "(Tensor grad, Tensor rois, int batch, int channels, int height, int width, "
        "float spatial_scale, int sampling_ratio, bool deterministic) -> Tensor",
        ps_roi_align_bwd,
        lambda grad, rois, n, c, h, w, *a: _new_grad(grad, n, c, h, w, acc=False),
    )

    def ps_roi_align_setup(ctx, inputs, output):
        input, rois, _, _, scale, sampling_ratio = inputs
        ctx.save_for_backward(rois)
        ctx.args = (*input.shape, scale, sampling_ratio)

    def ps_roi_align_grad(ctx, grad, _bwd=bwd):
        (rois,) = ctx.saved_tensors
        return _bwd(grad, rois, *ctx.args, _deterministic()), None, None, None, None, None

    fwd.register_autograd(ps_roi_align_grad, setup_context=ps_roi_align_setup)

    # ---- ps_roi_pool -------------------------------------------------------------------------
    def ps_roi_pool_fwd(input, rois, ph, pw, scale):
        out = _new_out(input, rois, input.shape[1] // (ph * pw), ph, pw)
        if out.numel() and input.numel():
            launch().ps_roi_pool_fwd(input, rois, out, scale)
        return out

    def ps_roi_pool_bwd(grad, rois, n, c, h, w, scale, deterministic):
        acc = _new_grad(grad, n, c, h, w, acc=True)
        if grad.numel() and acc.numel():
            launch().ps_roi_pool_bwd(grad.contiguous(), rois, acc, scale, deterministic)
        return finish(acc, grad)

    fwd = _registry.define(
        f"ps_roi_pool_{b}",
        "(Tensor input, Tensor rois, int pooled_height, int pooled_width, float spatial_scale) -> Tensor",
        ps_roi_pool_fwd,
        lambda input, rois, ph, pw, *a: _new_out(input, rois, input.shape[1] // (ph * pw), ph, pw),
    )
    bwd = _registry.define(
        f"ps_roi_pool_backward_{b}",
        "(Tensor grad, Tensor rois, int batch, int channels, int height, int width, "
        "float spatial_scale, bool deterministic) -> Tensor",
        ps_roi_pool_bwd,
        lambda grad, rois, n, c, h, w, *a: _new_grad(grad, n, c, h, w, acc=False),
    )

    def ps_roi_pool_setup(ctx, inputs, output):
        input, rois, _, _, scale = inputs
        ctx.save_for_backward(rois)
        ctx.args = (*input.shape, scale)

    def ps_roi_pool_grad(ctx, grad, _bwd=bwd):
        (rois,) = ctx.saved_tensors
        return _bwd(grad, rois, *ctx.args, _deterministic()), None, None, None, None

    fwd.register_autograd(ps_roi_pool_grad, setup_context=ps_roi_pool_setup)

    # ---- multi_scale_roi_align ---------------------------------------------------------------
    def ms_fwd(features, rois, ph, pw, scales, sampling_ratio, canonical_scale, canonical_level, aligned):
        out = _new_out(features[0], rois, features[0].shape[1], ph, pw)
        if out.numel() and any(f.numel() for f in features):
            launch().multi_scale_roi_align_fwd(
                list(features), rois, out, list(scales), sampling_ratio, aligned, canonical_scale, canonical_level
            )
        return out

    def ms_bwd(
        grad,
        rois,
        batch,
        channels,
        heights,
        widths,
        scales,
        sampling_ratio,
        canonical_scale,
        canonical_level,
        aligned,
        deterministic,
    ):
        accs = [_new_grad(grad, batch, channels, h, w, acc=True) for h, w in zip(heights, widths)]
        if grad.numel() and any(a.numel() for a in accs):
            launch().multi_scale_roi_align_bwd(
                grad.contiguous(),
                rois,
                accs,
                list(scales),
                sampling_ratio,
                aligned,
                canonical_scale,
                canonical_level,
                deterministic,
            )
        return [finish(a, grad) for a in accs]

    def ms_bwd_fake(grad, rois, batch, channels, heights, widths, *a):
        return [_new_grad(grad, batch, channels, h, w, acc=False) for h, w in zip(heights, widths)]

    fwd = _registry.define(
        f"multi_scale_roi_align_{b}",
        "(Tensor[] features, Tensor rois, int pooled_height, int pooled_width, float[] spatial_scales, "
        "int sampling_ratio, float canonical_scale, float canonical_level, bool aligned) -> Tensor",
        ms_fwd,
        lambda features, rois, ph, pw, *a: _new_out(features[0], rois, features[0].shape[1], ph, pw),
    )
    bwd = _registry.define(
        f"multi_scale_roi_align_backward_{b}",
        "(Tensor grad, Tensor rois, int batch, int channels, int[] heights, int[] widths, "
        "float[] spatial_scales, int sampling_ratio, float canonical_scale, float canonical_level, "
        "bool aligned, bool deterministic) -> Tensor[]",
        ms_bwd,
        ms_bwd_fake,
    )

    def ms_setup(ctx, inputs, output):
        features, rois, _, _, scales, sampling_ratio, canonical_scale, canonical_level, aligned = inputs
        ctx.save_for_backward(rois)
        ctx.args = (
            features[0].shape[0],
            features[0].shape[1],
            [f.shape[2] for f in features],
            [f.shape[3] for f in features],
            scales,
            sampling_ratio,
            canonical_scale,
            canonical_level,
            aligned,
        )

    def ms_grad(ctx, grad, _bwd=bwd):
        (rois,) = ctx.saved_tensors
        grads = _bwd(grad, rois, *ctx.args, _deterministic())
        return list(grads), None, None, None, None, None, None, None, None

    fwd.register_autograd(ms_grad, setup_context=ms_setup)


for _b in _KERNEL_BACKENDS:
    _register(_b)


def _pick(name: str, input: torch.Tensor, backend: str | None) -> str:
    return _backend.choose_for(name, input, backend, _backend.BACKENDS, ("cpu", "reference"))


def roi_align(
    input: torch.Tensor,
    boxes,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """RoIAlign (Mask R-CNN): bilinear samples averaged over each of the PH x PW bins of every box.

    Same arguments and results as ``torchvision.ops.roi_align``; returns [K, C, PH, PW].
    """
    name = "roi_align"
    check_input(name, input)
    pooled = output_pair(name, output_size)
    scale = positive_scale(name, spatial_scale)
    sr = integer(name, sampling_ratio, "sampling_ratio")
    rois = rois_from_boxes(name, boxes, input)
    b = _pick(name, input, backend)
    if b == "reference":
        return ref.roi_align(input, rois, pooled, scale, sr, bool(aligned))
    return _registry.get(f"roi_align_{b}")(input, rois, *pooled, scale, sr, bool(aligned))


def roi_pool(
    input: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0, *, backend: str | None = None
) -> torch.Tensor:
    """RoIPool (Fast R-CNN): max over integer bins. Same as ``torchvision.ops.roi_pool``."""
    name = "roi_pool"
    check_input(name, input)
    pooled = output_pair(name, output_size)
    scale = positive_scale(name, spatial_scale)
    rois = rois_from_boxes(name, boxes, input)
    b = _pick(name, input, backend)
    if b == "reference":
        return ref.roi_pool(input, rois, pooled, scale)
    return _registry.get(f"roi_pool_{b}")(input, rois, *pooled, scale)[0]


def ps_roi_align(
    input: torch.Tensor,
    boxes,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Position-sensitive RoIAlign (R-FCN): bin (i, j) of output channel c averages bilinear samples
    of input channel (c*PH + i)*PW + j. Same as ``torchvision.ops.ps_roi_align``;
    returns [K, C/(PH*PW), PH, PW]."""
    name = "ps_roi_align"
    check_input(name, input)
    pooled = output_pair(name, output_size)
    ps_channels(name, input.shape[1], pooled)
    scale = positive_scale(name, spatial_scale)
    sr = integer(name, sampling_ratio, "sampling_ratio")
    rois = rois_from_boxes(name, boxes, input)
    b = _pick(name, input, backend)
    if b == "reference":
        return ref.ps_roi_align(input, rois, pooled, scale, sr)
    return _registry.get(f"ps_roi_align_{b}")(input, rois, *pooled, scale, sr)


def ps_roi_pool(
    input: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0, *, backend: str | None = None
) -> torch.Tensor:
    """Position-sensitive RoIPool (R-FCN): average over integer bins, channel (c*PH + i)*PW + j
    for bin (i, j). Same as ``torchvision.ops.ps_roi_pool``; returns [K, C/(PH*PW), PH, PW]."""
    name = "ps_roi_pool"
    check_input(name, input)
    pooled = output_pair(name, output_size)
    ps_channels(name, input.shape[1], pooled)
    scale = positive_scale(name, spatial_scale)
    rois = rois_from_boxes(name, boxes, input)
    b = _pick(name, input, backend)
    if b == "reference":
        return ref.ps_roi_pool(input, rois, pooled, scale)
    return _registry.get(f"ps_roi_pool_{b}")(input, rois, *pooled, scale)


def multi_scale_roi_align(
    features,
    boxes,
    output_size,
    spatial_scales,
    sampling_ratio: int = -1,
    canonical_scale: float = 224,
    canonical_level: float = 4,
    aligned: bool = False,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """FPN multi-scale RoIAlign: each box is pooled from level
    ``clamp(floor(canonical_level + log2(sqrt(area)/canonical_scale) + 1e-6), k_min, k_max)``
    (Feature Pyramid Networks, eq. 1; torchvision's LevelMapper), all levels in one kernel launch.

    ``features``: list of [N, C, H_l, W_l] maps, finest first; ``spatial_scales``: one per level
    (e.g. [1/4, 1/8, 1/16, 1/32]). Returns [K, C, PH, PW] in box order.
    """
    name = "multi_scale_roi_align"
    scales = check_features(name, features, spatial_scales)
    pooled = output_pair(name, output_size)
    sr = integer(name, sampling_ratio, "sampling_ratio")
    cs = positive_scale(name, canonical_scale, "canonical_scale")
    if isinstance(canonical_level, bool) or not isinstance(canonical_level, (int, float)):
        raise TypeError(f"{name}: canonical_level must be a number, got {canonical_level!r}")
    rois = rois_from_boxes(name, boxes, features[0])
    b = _pick(name, features[0], backend)
    if b == "reference":
        return ref.multi_scale_roi_align(
            list(features), rois, pooled, scales, sr, cs, float(canonical_level), bool(aligned)
        )
    return _registry.get(f"multi_scale_roi_align_{b}")(
        list(features), rois, *pooled, scales, sr, cs, float(canonical_level), bool(aligned)
    )
