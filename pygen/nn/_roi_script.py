"""What the RoI modules' TorchScript branch needs (pygen/nn/roi.py).

``torch.jit.script`` of a pygen.nn RoI module (directly, or inside a torchvision detector that
pygen.patch.patch_torchvision changed) compiles the module itself: its ``forward`` starts with an
``if torch.jit.is_scripting():`` branch, which TorchScript compiles alone (the eager code after it,
validation and FX leaf calls, is never compiled), and which converts the boxes to the kernels'
[K, 5] layout and calls the registered op (``torch.ops.pygen.<op>_<backend>``: the kernel of the
tensor's device, cuda or cpu, or the module's ``backend``) through the dispatch the scripted
functional ops share (pygen/ops/_roi_script.py). The argument validation of pygen.ops (Python) does
not run in the scripted module; the ops' kernels still never read out of bounds (out-of-range batch
indices yield zeros).

Why not ``__prepare_scriptable__`` returning a separate scripted module: torch.jit.script writes
what that hook returns back into the parent's ``_modules``, so scripting a detector replaced the
pooler of the eager model too (its validation and FX leaves gone). The hook now only refuses
``backend='reference'`` (no kernel op to call) and returns the module itself.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from ..ops._roi_checks import to_rois
from ..ops._roi_script import Boxes


def infer_scale(feature_h: int, image_h: int) -> float:
    """torchvision's rule for a level's scale: the power of two nearest to feature size / image
    size (first axis). The eager module (pygen/nn/roi.py) uses it too. The log2 runs in torch's
    default dtype (float32) as torchvision's ``torch.tensor(approx_scale).log2()`` does: a ratio
    within float32 rounding of a half power of two (e.g. 2378 / 3363) rounds as torchvision's."""
    ratio = torch.tensor(float(feature_h) / float(image_h))
    return 2.0 ** float(torch.round(torch.log2(ratio)))


def hw(output_size: Union[int, tuple[int, int], list[int]]) -> tuple[int, int]:  # noqa: UP007 (TorchScript)
    """(PH, PW) of an int or pair ``output_size`` attribute."""
    if isinstance(output_size, int):
        return output_size, output_size
    if isinstance(output_size, list):
        return output_size[0], output_size[1]
    return output_size


def script_backend(backend: Optional[str]) -> str:  # noqa: UP045 (TorchScript)
    """The kernel the scripted branch calls: "triton" when asked for, else "" (the device's)."""
    if backend is not None and backend == "triton":
        return "triton"
    return ""


def kernel_args(
    output_size: Union[int, tuple[int, int], list[int]],  # noqa: UP007 (TorchScript)
    backend: Optional[str],  # noqa: UP045 (TorchScript)
    input: Tensor,
    boxes: Boxes,
) -> tuple[str, Tensor, int, int]:
    """What a scripted branch passes its kernel op: the kernel (``script_backend``), the boxes as
    [K, 5] rois of ``input`` (``to_rois``) and (PH, PW) (``hw``)."""
    ph, pw = hw(output_size)
    return script_backend(backend), to_rois(input, boxes), ph, pw


def refuse_reference(module: nn.Module) -> nn.Module:
    """``__prepare_scriptable__``: the module itself, unless it asks for the reference backend."""
    if getattr(module, "backend", None) == "reference":
        raise ValueError(
            "torch.jit.script of a pygen RoI module runs pygen's kernel ops: backend='reference' has "
            "none (use backend=None, 'cpu', 'cuda' or 'triton')"
        )
    return module


def filter_maps(x: dict[str, Tensor], names: list[str]) -> list[Tensor]:
    """The maps of x named in ``names``, in x's order: torchvision's _filter_input (names listed
    out of order or twice change nothing), in TorchScript (no comprehension ifs there)."""
    maps: list[Tensor] = []
    for k, v in x.items():
        if k in names:
            maps.append(v)
    return maps


def scales_of(features: list[Tensor], image_shapes: list[tuple[int, int]]) -> list[float]:
    """torchvision's level scales (from the first axis of the largest image), in TorchScript; the
    eager module's rule too (pygen/nn/roi.py::_setup_scales)."""
    max_h = 0
    for s in image_shapes:
        max_h = max(max_h, s[0])
    scales: list[float] = []
    for f in features:
        scales.append(infer_scale(f.shape[-2], max_h))
    return scales
