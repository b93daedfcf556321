"""RoI pooling ops (Fast/Faster R-CNN, Mask R-CNN, R-FCN, FPN) with torchvision.ops' signatures.

    out = pygen.ops.roi_align(features, boxes, output_size=7, spatial_scale=1/16, sampling_ratio=2)

``boxes`` is a Tensor[K, 5] of ``(batch_index, x1, y1, x2, y2)`` rows or a list of Tensor[L, 4]
(one per image). Outputs are [K, C, PH, PW] (PS variants: [K, C/(PH*PW), PH, PW]); every op is
differentiable with respect to the feature maps. The math is stated in pygen/ref/roi.py.

Backends (``backend=`` argument, else ``PYGEN_BACKEND``, else the fastest available):
``cuda`` (csrc/roi, GPU), ``triton`` (kernels/roi/__init__.py), ``cpu`` (csrc/roi host build, OpenMP) and
``reference`` (pure PyTorch). Backward is deterministic (no floating-point atomics) when
``torch.are_deterministic_algorithms_enabled()``.
"""

from __future__ import annotations

import importlib

import torch

from .. import _backend
from ..ref import roi as ref
from . import _common_checks as cc, _registry, _roi_script
from ._fx import fx_leaf
from ._registry import Backward, OpSpec, register
from ._roi_checks import (
    PoolSize,
    check_features,
    check_input,
    integer,
    output_pair,
    positive_scale,
    ps_channels,
    rois_from_boxes,
)
from ._roi_script import Boxes

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


def _strided_grad(grad: torch.Tensor) -> torch.Tensor:
    """grad_out as the backward kernels get it: read through its strides, so an expanded gradient
    (what ``out.sum().backward()`` sends) is not copied, unless one RoI's [C, PH, PW] block spans
    more than _common_checks.MAX_SPAN elements (the Triton kernels' offsets within a RoI are
    32-bit; the C++ ones are 64-bit throughout)."""
    return grad if cc.span(grad, (1, 2, 3)) <= cc.MAX_SPAN else grad.contiguous()


def _finish(acc: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return acc if acc.dtype == grad.dtype else acc.to(grad.dtype)


# ---- implementations: (L = the backend's launcher module, *schema arguments) -------------------
def _roi_align_fwd(L, input, rois, ph, pw, scale, sampling_ratio, aligned):
    out = _new_out(input, rois, input.shape[1], ph, pw)
    if out.numel() and input.numel():
        L.roi_align_fwd(input, rois, out, scale, sampling_ratio, aligned)
    return out


def _roi_align_bwd(L, grad, rois, n, c, h, w, scale, sampling_ratio, aligned, deterministic):
    acc = _new_grad(grad, n, c, h, w, acc=True)
    if grad.numel() and acc.numel():
        L.roi_align_bwd(_strided_grad(grad), rois, acc, scale, sampling_ratio, aligned, deterministic)
    return _finish(acc, grad)


def _roi_pool_fwd(L, input, rois, ph, pw, scale):
    out = _new_out(input, rois, input.shape[1], ph, pw)
    argmax = torch.full(out.shape, -1, dtype=torch.int32, device=input.device)
    if out.numel() and input.numel():
        L.roi_pool_fwd(input, rois, out, argmax, scale)
    return out, argmax


def _roi_pool_fake(input, rois, ph, pw, scale):
    out = _new_out(input, rois, input.shape[1], ph, pw)
    return out, torch.empty(out.shape, dtype=torch.int32, device=input.device)


def _roi_pool_bwd(L, grad, argmax, rois, n, c, h, w, deterministic):
    acc = _new_grad(grad, n, c, h, w, acc=True)
    if grad.numel() and acc.numel():
        L.roi_pool_bwd(_strided_grad(grad), argmax, rois, acc, deterministic)
    return _finish(acc, grad)


def _ps_out(input, rois, ph, pw):
    return _new_out(input, rois, input.shape[1] // (ph * pw), ph, pw)


def _ps_roi_align_fwd(L, input, rois, ph, pw, scale, sampling_ratio):
    out = _ps_out(input, rois, ph, pw)
    if out.numel() and input.numel():
        L.ps_roi_align_fwd(input, rois, out, scale, sampling_ratio)
    return out


def _ps_roi_align_bwd(L, grad, rois, n, c, h, w, scale, sampling_ratio, deterministic):
    acc = _new_grad(grad, n, c, h, w, acc=True)
    if grad.numel() and acc.numel():
        L.ps_roi_align_bwd(_strided_grad(grad), rois, acc, scale, sampling_ratio, deterministic)
    return _finish(acc, grad)


def _ps_roi_pool_fwd(L, input, rois, ph, pw, scale):
    out = _ps_out(input, rois, ph, pw)
    if out.numel() and input.numel():
        L.ps_roi_pool_fwd(input, rois, out, scale)
    return out


def _ps_roi_pool_bwd(L, grad, rois, n, c, h, w, scale, deterministic):
    acc = _new_grad(grad, n, c, h, w, acc=True)
    if grad.numel() and acc.numel():
        L.ps_roi_pool_bwd(_strided_grad(grad), rois, acc, scale, deterministic)
    return _finish(acc, grad)


def _ms_fwd(L, features, rois, ph, pw, scales, sampling_ratio, canonical_scale, canonical_level, aligned):
    out = _new_out(features[0], rois, features[0].shape[1], ph, pw)
    if out.numel() and any(f.numel() for f in features):
        L.multi_scale_roi_align_fwd(
            list(features), rois, out, list(scales), sampling_ratio, aligned, canonical_scale, canonical_level
        )
    return out


def _ms_bwd(
    L,
    grad,
    rois,
    n,
    c,
    heights,
    widths,
    scales,
    sampling_ratio,
    canonical_scale,
    canonical_level,
    aligned,
    deterministic,
):
    accs = [_new_grad(grad, n, c, h, w, acc=True) for h, w in zip(heights, widths)]
    if grad.numel() and any(a.numel() for a in accs):
        L.multi_scale_roi_align_bwd(
            _strided_grad(grad),
            rois,
            accs,
            list(scales),
            sampling_ratio,
            aligned,
            canonical_scale,
            canonical_level,
            deterministic,
        )
    return [_finish(a, grad) for a in accs]


def _grad_out(grad, rois, n, c, h, w, *_):
    return _new_grad(grad, n, c, h, w, acc=False)


# ---- the ops ----------------------------------------------------------------------------------
# Backward arguments after the saved tensors: the input's shape, then the forward's scalars;
# ``deterministic`` is read when the backward runs (torch.use_deterministic_algorithms).
# SymInt: the input's sizes stay symbolic under torch.compile (int pinned each batch size to a graph)
_GRAD_DIMS = "SymInt batch, SymInt channels, SymInt height, SymInt width"
SPECS = (
    OpSpec(
        "roi_align",
        "(Tensor input, Tensor rois, int pooled_height, int pooled_width, float spatial_scale, "
        "int sampling_ratio, bool aligned) -> Tensor",
        _roi_align_fwd,
        lambda input, rois, ph, pw, *_: _new_out(input, rois, input.shape[1], ph, pw),
        Backward(
            f"(Tensor grad, Tensor rois, {_GRAD_DIMS}, float spatial_scale, int sampling_ratio, bool aligned, "
            "bool deterministic) -> Tensor",
            _roi_align_bwd,
            _grad_out,
            save=lambda i, out: ((i.rois,), (*i.input.shape, i.spatial_scale, i.sampling_ratio, i.aligned)),
            grads=lambda c, grad: {"input": c.bwd(grad, *c.saved, *c.args, _deterministic())},
        ),
    ),
    OpSpec(
        "roi_pool",
        "(Tensor input, Tensor rois, int pooled_height, int pooled_width, float spatial_scale) -> (Tensor, Tensor)",
        _roi_pool_fwd,
        _roi_pool_fake,
        Backward(
            f"(Tensor grad, Tensor argmax, Tensor rois, {_GRAD_DIMS}, bool deterministic) -> Tensor",
            _roi_pool_bwd,
            lambda grad, argmax, rois, n, c, h, w, *_: _new_grad(grad, n, c, h, w, acc=False),
            save=lambda i, out: ((out[1], i.rois), tuple(i.input.shape)),
            grads=lambda c, grad, _grad_argmax: {"input": c.bwd(grad, *c.saved, *c.args, _deterministic())},
        ),
        non_differentiable=(1,),
    ),
    OpSpec(
        "ps_roi_align",
        "(Tensor input, Tensor rois, int pooled_height, int pooled_width, float spatial_scale, "
        "int sampling_ratio) -> Tensor",
        _ps_roi_align_fwd,
        lambda input, rois, ph, pw, *_: _ps_out(input, rois, ph, pw),
        Backward(
            f"(Tensor grad, Tensor rois, {_GRAD_DIMS}, float spatial_scale, int sampling_ratio, "
            "bool deterministic) -> Tensor",
            _ps_roi_align_bwd,
            _grad_out,
            save=lambda i, out: ((i.rois,), (*i.input.shape, i.spatial_scale, i.sampling_ratio)),
            grads=lambda c, grad: {"input": c.bwd(grad, *c.saved, *c.args, _deterministic())},
        ),
    ),
    OpSpec(
        "ps_roi_pool",
        "(Tensor input, Tensor rois, int pooled_height, int pooled_width, float spatial_scale) -> Tensor",
        _ps_roi_pool_fwd,
        lambda input, rois, ph, pw, *_: _ps_out(input, rois, ph, pw),
        Backward(
            f"(Tensor grad, Tensor rois, {_GRAD_DIMS}, float spatial_scale, bool deterministic) -> Tensor",
            _ps_roi_pool_bwd,
            _grad_out,
            save=lambda i, out: ((i.rois,), (*i.input.shape, i.spatial_scale)),
            grads=lambda c, grad: {"input": c.bwd(grad, *c.saved, *c.args, _deterministic())},
        ),
    ),
    OpSpec(
        "multi_scale_roi_align",
        "(Tensor[] features, Tensor rois, int pooled_height, int pooled_width, float[] spatial_scales, "
        "int sampling_ratio, float canonical_scale, float canonical_level, bool aligned) -> Tensor",
        _ms_fwd,
        lambda features, rois, ph, pw, *_: _new_out(features[0], rois, features[0].shape[1], ph, pw),
        Backward(
            "(Tensor grad, Tensor rois, SymInt batch, SymInt channels, SymInt[] heights, SymInt[] widths, "
            "float[] spatial_scales, int sampling_ratio, float canonical_scale, float canonical_level, "
            "bool aligned, bool deterministic) -> Tensor[]",
            _ms_bwd,
            lambda grad, rois, n, c, heights, widths, *_: [
                _new_grad(grad, n, c, h, w, acc=False) for h, w in zip(heights, widths)
            ],
            save=lambda i, out: (
                (i.rois,),
                (
                    *i.features[0].shape[:2],
                    [f.shape[2] for f in i.features],
                    [f.shape[3] for f in i.features],
                    i.spatial_scales,
                    i.sampling_ratio,
                    i.canonical_scale,
                    i.canonical_level,
                    i.aligned,
                ),
            ),
            grads=lambda c, grad: {"features": list(c.bwd(grad, *c.saved, *c.args, _deterministic()))},
        ),
    ),
)

for _b in _KERNEL_BACKENDS:
    for _spec in SPECS:
        register(_spec, _b, lambda _b=_b: _launcher(_b))


def _pick(name: str, input: torch.Tensor, backend: str | None) -> str:
    return _backend.choose_for(name, input, backend, _backend.BACKENDS, ("cpu", "reference"))


@fx_leaf
def roi_align(
    input: torch.Tensor,
    boxes: Boxes,
    output_size: PoolSize,
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
    if isinstance(input, torch.Tensor) and input.is_quantized:
        return _quantized_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, backend)
    check_input(name, input)
    pooled = output_pair(name, output_size)
    scale = positive_scale(name, spatial_scale)
    sr = integer(name, sampling_ratio, "sampling_ratio")
    rois = rois_from_boxes(name, boxes, input)
    b = _pick(name, input, backend)
    if b == "reference":
        return ref.roi_align(input, rois, pooled, scale, sr, bool(aligned))
    return _registry.get(f"roi_align_{b}")(input, rois, *pooled, scale, sr, bool(aligned))


QUANTIZED_DTYPES = (torch.quint8, torch.qint8, torch.qint32)


def _quantized_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, backend):
    """torchvision's quantized roi_align (CPU): the input (and quantized boxes) dequantised, pooled
    in float32, the output quantised per tensor with the input's scale and zero point."""
    name = "roi_align"
    if input.dtype not in QUANTIZED_DTYPES or input.qscheme() not in (
        torch.per_tensor_affine,
        torch.per_tensor_symmetric,
    ):
        raise TypeError(f"{name}: a quantized input must be per-tensor quint8, qint8 or qint32, got {input.dtype}")
    if backend not in (None, "cpu", "reference"):
        raise ValueError(f"{name}: a quantized input runs on the cpu or reference backend, not {backend!r}")

    def deq(b):
        return b.dequantize() if isinstance(b, torch.Tensor) and b.is_quantized else b

    fboxes = [deq(b) for b in boxes] if isinstance(boxes, (list, tuple)) else deq(boxes)
    out = roi_align(input.dequantize(), fboxes, output_size, spatial_scale, sampling_ratio, aligned, backend=backend)
    return torch.quantize_per_tensor(out, input.q_scale(), input.q_zero_point(), input.dtype)


@fx_leaf
def roi_pool(
    input: torch.Tensor, boxes: Boxes, output_size: PoolSize, spatial_scale: float = 1.0, *, backend: str | None = None
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


@fx_leaf
def ps_roi_align(
    input: torch.Tensor,
    boxes: Boxes,
    output_size: PoolSize,
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


@fx_leaf
def ps_roi_pool(
    input: torch.Tensor, boxes: Boxes, output_size: PoolSize, spatial_scale: float = 1.0, *, backend: str | None = None
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


@fx_leaf
def multi_scale_roi_align(
    features: list[torch.Tensor],
    boxes: Boxes,
    output_size: PoolSize,
    spatial_scales: list[float],
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
    level = cc.real(name, canonical_level, "canonical_level")  # a finite number (NaN / inf were taken)
    rois = rois_from_boxes(name, boxes, features[0])
    b = _pick(name, features[0], backend)
    if b == "reference":
        return ref.multi_scale_roi_align(list(features), rois, pooled, scales, sr, cs, level, bool(aligned))
    return _registry.get(f"multi_scale_roi_align_{b}")(
        list(features), rois, *pooled, scales, sr, cs, level, bool(aligned)
    )


# torch.jit.script(roi_align) (and a scripted caller of any of these) compiles their TorchScript
# forms: the keyword-only ``backend`` and the Python validation are not TorchScript (_roi_script.py).
_roi_script.bind_script_forms(globals())
