"""TorchScript forms of the RoI modules: ``torch.jit.script`` of a pygen.nn RoI module (directly, or
inside a torchvision detector that pygen.patch.patch_torchvision changed) scripts the module its
``__prepare_scriptable__`` returns from here. Their forward is TorchScript: boxes to the kernels'
[K, 5] layout, then the registered op (``torch.ops.pygen.<op>_<backend>``: the kernel of the
tensor's device, cuda or cpu, or the module's ``backend``) with its autograd, through the dispatch
the scripted functional ops share (pygen/ops/_roi_script.py). The argument
validation of pygen.ops (Python) does not run in the scripted module; the ops' kernels still never
read out of bounds (out-of-range batch indices yield zeros).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from ..ops._roi_checks import to_rois
from ..ops._roi_script import align_op, multi_scale_op, pool_op, ps_align_op, ps_pool_op


def infer_scale(feature_h: int, image_h: int) -> float:
    """torchvision's rule for a level's scale: the power of two nearest to feature size / image
    size (first axis). The eager module (pygen/nn/roi.py) uses it too."""
    ratio = torch.tensor(float(feature_h) / float(image_h), dtype=torch.float64)
    return 2.0 ** float(torch.round(torch.log2(ratio)))


def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, int):
        return int(output_size), int(output_size)
    return int(output_size[0]), int(output_size[1])


def _kernel_backend(backend: str | None) -> str:
    if backend == "reference":
        raise ValueError(
            "torch.jit.script of a pygen RoI module runs pygen's kernel ops: backend='reference' has "
            "none (use backend=None, 'cpu', 'cuda' or 'triton')"
        )
    return backend or ""


class ScriptedRoIAlign(nn.Module):
    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool, backend: str | None):
        super().__init__()
        self.ph, self.pw = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.backend = _kernel_backend(backend)

    def forward(self, input: Tensor, rois: Union[Tensor, list[Tensor]]) -> Tensor:  # noqa: UP007
        r = to_rois(input, rois)
        return align_op(self.backend, input, r, self.ph, self.pw, self.spatial_scale, self.sampling_ratio, self.aligned)


class ScriptedPool(nn.Module):
    """roi_pool (``ps=False``) or ps_roi_pool (``ps=True``)."""

    def __init__(self, output_size, spatial_scale: float, backend: str | None, ps: bool):
        super().__init__()
        self.ph, self.pw = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.backend = _kernel_backend(backend)
        self.ps = ps

    def forward(self, input: Tensor, rois: Union[Tensor, list[Tensor]]) -> Tensor:  # noqa: UP007
        r = to_rois(input, rois)
        if self.ps:
            return ps_pool_op(self.backend, input, r, self.ph, self.pw, self.spatial_scale)
        return pool_op(self.backend, input, r, self.ph, self.pw, self.spatial_scale)


class ScriptedPSRoIAlign(nn.Module):
    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, backend: str | None):
        super().__init__()
        self.ph, self.pw = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.backend = _kernel_backend(backend)

    def forward(self, input: Tensor, rois: Union[Tensor, list[Tensor]]) -> Tensor:  # noqa: UP007
        r = to_rois(input, rois)
        return ps_align_op(self.backend, input, r, self.ph, self.pw, self.spatial_scale, self.sampling_ratio)


class ScriptedMultiScaleRoIAlign(nn.Module):
    def __init__(
        self,
        featmap_names: list[str],
        output_size,
        sampling_ratio: int,
        canonical_scale: float,
        canonical_level: float,
        backend: str | None,
    ):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.ph, self.pw = _pair(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_scale = float(canonical_scale)
        self.canonical_level = float(canonical_level)
        self.backend = _kernel_backend(backend)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features: list[Tensor] = []
        for k in self.featmap_names:
            features.append(x[k])
        max_h = 0
        for s in image_shapes:
            max_h = max(max_h, s[0])
        # torchvision's rule: the power of two nearest to feature size / image size (first axis)
        scales: list[float] = []
        for f in features:
            scales.append(infer_scale(f.shape[-2], max_h))
        r = to_rois(features[0], boxes)
        ph, pw, sr, cs, cl = self.ph, self.pw, self.sampling_ratio, self.canonical_scale, self.canonical_level
        return multi_scale_op(self.backend, features, r, ph, pw, scales, sr, cs, cl, False)
