"""Drop-in replacements for torchvision.ops' RoI modules: same constructor arguments, same
attributes, same call signatures, no parameters or buffers (so the same empty state_dict).

    from pygen.nn import MultiScaleRoIAlign
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    box_features = pooler(features, proposals, images.image_sizes)   # [sum L_i, C, 7, 7]

Every module also takes ``backend=None`` (see pygen.ops.roi) as an extra keyword.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..ops._roi_checks import PoolSize
from ..ops._roi_script import Boxes, align_op, multi_scale_op, pool_op, ps_align_op, ps_pool_op
from . import _roi_script


class _Pooler(nn.Module):
    """What the one-level RoI modules share: the ``output_size``, ``spatial_scale`` and ``backend``
    attributes (torchvision's names) and the TorchScript hook (pygen/nn/_roi_script.py)."""

    def __init__(self, output_size: PoolSize, spatial_scale: float, *, backend: str | None = None) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.backend = backend

    def __prepare_scriptable__(self) -> nn.Module:
        return _roi_script.refuse_reference(self)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class RoIAlign(_Pooler):
    """See pygen.ops.roi_align (torchvision.ops.RoIAlign)."""

    def __init__(
        self,
        output_size: PoolSize,
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__(output_size, spatial_scale, backend=backend)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois: Boxes) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch alone (pygen/nn/_roi_script.py)
            b, r, ph, pw = _roi_script.kernel_args(self.output_size, self.backend, input, rois)
            return align_op(
                b, input, r, ph, pw, float(self.spatial_scale), int(self.sampling_ratio), bool(self.aligned)
            )
        return ops.roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"


class _IntegerPool(_Pooler):
    """RoIPool and PSRoIPool (``_ps``): the same arguments, the op of each."""

    _ps: bool
    __constants__ = ["_ps"]  # TorchScript reads the subclass's flag as a constant

    def forward(self, input: torch.Tensor, rois: Boxes) -> torch.Tensor:
        if torch.jit.is_scripting():
            b, r, ph, pw = _roi_script.kernel_args(self.output_size, self.backend, input, rois)
            if self._ps:
                return ps_pool_op(b, input, r, ph, pw, float(self.spatial_scale))
            return pool_op(b, input, r, ph, pw, float(self.spatial_scale))
        pool = ops.ps_roi_pool if self._ps else ops.roi_pool
        return pool(input, rois, self.output_size, self.spatial_scale, backend=self.backend)


class RoIPool(_IntegerPool):
    """See pygen.ops.roi_pool (torchvision.ops.RoIPool)."""

    _ps = False


class PSRoIAlign(_Pooler):
    """See pygen.ops.ps_roi_align (torchvision.ops.PSRoIAlign)."""

    def __init__(
        self, output_size: PoolSize, spatial_scale: float, sampling_ratio: int, *, backend: str | None = None
    ) -> None:
        super().__init__(output_size, spatial_scale, backend=backend)
        self.sampling_ratio = sampling_ratio

    def forward(self, input: torch.Tensor, rois: Boxes) -> torch.Tensor:
        if torch.jit.is_scripting():
            b, r, ph, pw = _roi_script.kernel_args(self.output_size, self.backend, input, rois)
            return ps_align_op(b, input, r, ph, pw, float(self.spatial_scale), int(self.sampling_ratio))
        return ops.ps_roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, backend=self.backend
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sampling_ratio={self.sampling_ratio}"


class PSRoIPool(_IntegerPool):
    """See pygen.ops.ps_roi_pool (torchvision.ops.PSRoIPool)."""

    _ps = True


class MultiScaleRoIAlign(nn.Module):
    """FPN RoIAlign over several feature maps (torchvision.ops.MultiScaleRoIAlign), all levels in
    one kernel launch (pygen.ops.multi_scale_roi_align).

    forward(x: dict[str, Tensor], boxes: list[Tensor[L_i, 4]], image_shapes: list[(H, W)])
    returns [sum L_i, C, PH, PW]. Level scales are inferred from the feature and image sizes on
    the first call and kept in ``self.scales`` (as torchvision does).
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: PoolSize,
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.scales: list[float] | None = None
        self.map_levels = None
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.backend = backend

    def forward(
        self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        if torch.jit.is_scripting():
            feats = _roi_script.filter_maps(x, self.featmap_names)
            b, r, ph, pw = _roi_script.kernel_args(self.output_size, self.backend, feats[0], boxes)
            scales = _roi_script.scales_of(feats, image_shapes)
            sr, cs, cl = int(self.sampling_ratio), float(self.canonical_scale), float(self.canonical_level)
            return multi_scale_op(b, feats, r, ph, pw, scales, sr, cs, cl, False)
        features = _filter_input(x, self.featmap_names)
        # torchvision re-infers the scales on every call too (batches may change size)
        self.scales = _setup_scales(features, image_shapes)
        return _multi_scale_roi_align(
            features,
            boxes,
            self.output_size,
            self.scales,
            self.sampling_ratio,
            self.canonical_scale,
            self.canonical_level,
            self.backend,
        )

    def __prepare_scriptable__(self) -> nn.Module:
        return _roi_script.refuse_reference(self)

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, sampling_ratio={self.sampling_ratio}"
        )


# ---- FX leaf functions --------------------------------------------------------------------------
# torch.fx.symbolic_trace (torchvision's feature extraction, FX quantization) records each of these
# as one call node instead of tracing into code that reads values a Proxy does not have. The
# one-level modules need none: the functional ops are FX leaves themselves (pygen/ops/_fx.py), so
# their node is named after the op, as torchvision's is; MultiScaleRoIAlign's three nodes carry
# the names of torchvision's poolers.py functions.
def _filter_input(x: dict, featmap_names: list[str]) -> list[torch.Tensor]:
    """The maps of x named in featmap_names, in x's order (torchvision's rule: names listed out of
    order or twice change nothing); a name x lacks is an error (torchvision skips it silently)."""
    missing = [k for k in featmap_names if k not in x]
    if missing:
        raise ValueError(f"MultiScaleRoIAlign: x has no feature map named {missing}")
    return _roi_script.filter_maps(x, featmap_names)


def _setup_scales(features: list[torch.Tensor], image_shapes) -> list[float]:
    if not image_shapes:
        raise ValueError("MultiScaleRoIAlign: image_shapes must hold at least one (H, W)")
    return _roi_script.scales_of(features, image_shapes)  # the scripted branch's rule too


def _multi_scale_roi_align(
    features, boxes, output_size, scales, sampling_ratio, canonical_scale, canonical_level, backend
):
    return ops.multi_scale_roi_align(
        features, boxes, output_size, scales, sampling_ratio, canonical_scale, canonical_level, backend=backend
    )


for _leaf in ("_filter_input", "_setup_scales", "_multi_scale_roi_align"):
    torch.fx.wrap(_leaf)
