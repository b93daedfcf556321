"""TorchScript forms of the RoI ops: what ``torch.jit.script`` compiles for ``pygen.ops.roi_align``,
``roi_pool``, ``ps_roi_align``, ``ps_roi_pool`` and ``multi_scale_roi_align`` (directly, or when a
scripted function or module calls them), and the kernel dispatch the scripted RoI modules
(pygen/nn/_roi_script.py) share.

The eager functions validate in Python and choose a backend (``backend=`` keyword, PYGEN_BACKEND, the
per-device table): neither is TorchScript. Their scripted forms keep torchvision.ops' signatures
(no ``backend``), convert the boxes to the kernels' [K, 5] layout and call the registered op of the
tensor's device: ``torch.ops.pygen.<op>_cuda`` on a GPU, ``<op>_cpu`` on the CPU (the host build),
with its autograd. Python's argument validation does not run in a scripted graph; the kernels still
never read out of bounds (an out-of-range batch index yields zeros), as with the scripted modules.

``bind_script_forms`` puts each compiled form in TorchScript's function cache under the eager
function, which is how ``torch.jit.script(pygen.ops.roi_align)`` and a scripted caller find it. The
eager function itself is untouched: eager calls, FX and torch.compile (dynamo) still run it.
"""

from __future__ import annotations

import warnings
from typing import Union

import torch
from torch import Tensor
from torch.jit.annotations import BroadcastingList2

from ._roi_checks import to_rois

# boxes of torchvision's RoI ops: Tensor[K, 5] (batch index, x1, y1, x2, y2) or one Tensor[L_i, 4] per
# image. TorchScript reads these annotations at compile time: Union and List spellings it understands
# (``X | Y`` is not TorchScript before torch 2.6).
Boxes = Union[Tensor, list[Tensor]]  # noqa: UP007 (TorchScript, see above)


def align_op(backend: str, input: Tensor, r: Tensor, ph: int, pw: int, scale: float, sr: int, aligned: bool) -> Tensor:
    """roi_align's kernel op: ``backend`` "triton", else the device's (cuda or cpu)."""
    if backend == "triton":
        return torch.ops.pygen.roi_align_triton(input, r, ph, pw, scale, sr, aligned)
    if input.is_cuda:
        return torch.ops.pygen.roi_align_cuda(input, r, ph, pw, scale, sr, aligned)
    return torch.ops.pygen.roi_align_cpu(input, r, ph, pw, scale, sr, aligned)


def pool_op(backend: str, input: Tensor, r: Tensor, ph: int, pw: int, scale: float) -> Tensor:
    if backend == "triton":
        return torch.ops.pygen.roi_pool_triton(input, r, ph, pw, scale)[0]
    if input.is_cuda:
        return torch.ops.pygen.roi_pool_cuda(input, r, ph, pw, scale)[0]
    return torch.ops.pygen.roi_pool_cpu(input, r, ph, pw, scale)[0]


def ps_align_op(backend: str, input: Tensor, r: Tensor, ph: int, pw: int, scale: float, sr: int) -> Tensor:
    if backend == "triton":
        return torch.ops.pygen.ps_roi_align_triton(input, r, ph, pw, scale, sr)
    if input.is_cuda:
        return torch.ops.pygen.ps_roi_align_cuda(input, r, ph, pw, scale, sr)
    return torch.ops.pygen.ps_roi_align_cpu(input, r, ph, pw, scale, sr)


def ps_pool_op(backend: str, input: Tensor, r: Tensor, ph: int, pw: int, scale: float) -> Tensor:
    if backend == "triton":
        return torch.ops.pygen.ps_roi_pool_triton(input, r, ph, pw, scale)
    if input.is_cuda:
        return torch.ops.pygen.ps_roi_pool_cuda(input, r, ph, pw, scale)
    return torch.ops.pygen.ps_roi_pool_cpu(input, r, ph, pw, scale)


def multi_scale_op(
    backend: str,
    features: list[Tensor],
    r: Tensor,
    ph: int,
    pw: int,
    scales: list[float],
    sr: int,
    cs: float,
    cl: float,
    aligned: bool,
) -> Tensor:
    if backend == "triton":
        return torch.ops.pygen.multi_scale_roi_align_triton(features, r, ph, pw, scales, sr, cs, cl, aligned)
    if features[0].is_cuda:
        return torch.ops.pygen.multi_scale_roi_align_cuda(features, r, ph, pw, scales, sr, cs, cl, aligned)
    return torch.ops.pygen.multi_scale_roi_align_cpu(features, r, ph, pw, scales, sr, cs, cl, aligned)


def roi_align(
    input: Tensor,
    boxes: Boxes,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    r = to_rois(input, boxes)
    return align_op("", input, r, output_size[0], output_size[1], spatial_scale, sampling_ratio, aligned)


def roi_pool(input: Tensor, boxes: Boxes, output_size: BroadcastingList2[int], spatial_scale: float = 1.0) -> Tensor:
    return pool_op("", input, to_rois(input, boxes), output_size[0], output_size[1], spatial_scale)


def ps_roi_align(
    input: Tensor,
    boxes: Boxes,
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    r = to_rois(input, boxes)
    return ps_align_op("", input, r, output_size[0], output_size[1], spatial_scale, sampling_ratio)


def ps_roi_pool(input: Tensor, boxes: Boxes, output_size: BroadcastingList2[int], spatial_scale: float = 1.0) -> Tensor:
    return ps_pool_op("", input, to_rois(input, boxes), output_size[0], output_size[1], spatial_scale)


def multi_scale_roi_align(
    features: list[Tensor],
    boxes: Boxes,
    output_size: BroadcastingList2[int],
    spatial_scales: list[float],
    sampling_ratio: int = -1,
    canonical_scale: float = 224.0,
    canonical_level: float = 4.0,
    aligned: bool = False,
) -> Tensor:
    r = to_rois(features[0], boxes)
    ph, pw = output_size[0], output_size[1]
    return multi_scale_op(
        "", features, r, ph, pw, spatial_scales, sampling_ratio, canonical_scale, canonical_level, aligned
    )


FORMS = {
    "roi_align": roi_align,
    "roi_pool": roi_pool,
    "ps_roi_align": ps_roi_align,
    "ps_roi_pool": ps_roi_pool,
    "multi_scale_roi_align": multi_scale_roi_align,
}


def bind_script_forms(eager: dict) -> None:
    """Compile each form and file it in TorchScript's function cache under the eager function of the
    same name (``torch.jit.script(fn)`` looks there first). About 10 ms per op at import.

    torch 2.13 deprecates torch.jit.script (a DeprecationWarning per call): pygen's own compile at
    import must not warn (``-W error`` would fail ``import pygen``). A torch whose TorchScript
    cannot compile these forms leaves the ops unscriptable, with TorchScript's own error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DeprecationWarning in torch 2.13, FutureWarning in 2.14
        try:
            compiled = {name: torch.jit.script(form) for name, form in FORMS.items()}
        except (RuntimeError, AttributeError, OSError):  # no TorchScript, or no source (zipped install)
            return
    for name, fn in compiled.items():
        torch.jit._state._set_jit_function_cache(eager[name], fn)
