"""TorchScript forms of the RoI modules: ``torch.jit.script`` of a pygen.nn RoI module (directly, or
inside a torchvision detector that pygen.patch.patch_torchvision changed) scripts the module its
``__prepare_scriptable__`` returns from here. Their forward is TorchScript: boxes to the kernels'
[K, 5] layout, then the registered op (``torch.ops.pygen.<op>_<backend>``: the kernel of the
tensor's device, cuda or cpu, or the module's ``backend``) with its autograd. The argument
validation of pygen.ops (Python) does not run in the scripted module; the ops' kernels still never
read out of bounds (out-of-range batch indices yield zeros).
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from ..ops._roi_checks import to_rois


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
        ph, pw, scale, sr, aligned = self.ph, self.pw, self.spatial_scale, self.sampling_ratio, self.aligned
        if self.backend == "triton":
            return torch.ops.pygen.roi_align_triton(input, r, ph, pw, scale, sr, aligned)
        if input.is_cuda:
            return torch.ops.pygen.roi_align_cuda(input, r, ph, pw, scale, sr, aligned)
        return torch.ops.pygen.roi_align_cpu(input, r, ph, pw, scale, sr, aligned)


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
        ph, pw, scale = self.ph, self.pw, self.spatial_scale
        if self.ps:
            if self.backend == "triton":
                return torch.ops.pygen.ps_roi_pool_triton(input, r, ph, pw, scale)
            if input.is_cuda:
                return torch.ops.pygen.ps_roi_pool_cuda(input, r, ph, pw, scale)
            return torch.ops.pygen.ps_roi_pool_cpu(input, r, ph, pw, scale)
        if self.backend == "triton":
            return torch.ops.pygen.roi_pool_triton(input, r, ph, pw, scale)[0]
        if input.is_cuda:
            return torch.ops.pygen.roi_pool_cuda(input, r, ph, pw, scale)[0]
        return torch.ops.pygen.roi_pool_cpu(input, r, ph, pw, scale)[0]


class ScriptedPSRoIAlign(nn.Module):
    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, backend: str | None):
        super().__init__()
        self.ph, self.pw = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.backend = _kernel_backend(backend)

    def forward(self, input: Tensor, rois: Union[Tensor, list[Tensor]]) -> Tensor:  # noqa: UP007
        r = to_rois(input, rois)
        ph, pw, scale, sr = self.ph, self.pw, self.spatial_scale, self.sampling_ratio
        if self.backend == "triton":
            return torch.ops.pygen.ps_roi_align_triton(input, r, ph, pw, scale, sr)
        if input.is_cuda:
            return torch.ops.pygen.ps_roi_align_cuda(input, r, ph, pw, scale, sr)
        return torch.ops.pygen.ps_roi_align_cpu(input, r, ph, pw, scale, sr)


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
        if self.backend == "triton":
            return torch.ops.pygen.multi_scale_roi_align_triton(features, r, ph, pw, scales, sr, cs, cl, False)
        if features[0].is_cuda:
            return torch.ops.pygen.multi_scale_roi_align_cuda(features, r, ph, pw, scales, sr, cs, cl, False)
        return torch.ops.pygen.multi_scale_roi_align_cpu(features, r, ph, pw, scales, sr, cs, cl, False)
