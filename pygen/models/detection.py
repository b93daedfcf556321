"""Detection heads that spend their time in RoI pooling, gpt-fast style: a config dataclass and
plain modules. Pooling goes through pygen.nn, so ``set_backend(model, b)`` switches every RoI op
of a model between pygen's kernels and the pure-PyTorch reference without touching weights.

Faster R-CNN box head (Ren et al. 2015, with FPN: Lin et al. 2017; torchvision's RoIHeads names)::

    x      = MultiScaleRoIAlign(P2..P5, proposals)        [K, 256, 7, 7]   (box_roi_pool)
    x      = relu(fc7(relu(fc6(flatten(x)))))             [K, 1024]        (box_head, TwoMLPHead)
    logits = cls_score(x)                                 [K, num_classes] (box_predictor)
    deltas = bbox_pred(x)                                 [K, num_classes * 4]

R-FCN head (Dai et al. 2016), on the stride-16 conv5 features of ResNet-101::

    f      = relu(conv_new_1(c5))                          1x1, 2048 -> 1024 (dimension reduction)
    s      = rfcn_cls(f)                                   1x1 -> k*k*(C+1) score maps
    b      = rfcn_bbox(f)                                  1x1 -> k*k*4 (class-agnostic boxes)
    logits = mean_{i,j} PSRoIPool_k(s, rois)[:, :, i, j]   [K, C+1]  (position-sensitive voting)
    deltas = mean_{i,j} PSRoIPool_k(b, rois)[:, :, i, j]   [K, 4]

Channel (c*k + i)*k + j of a score map holds class c's bin (i, j), the layout PSRoIPool reads.
``*.quick()`` configs keep the structure at toy sizes for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import nn as pnn


def random_proposals(
    n_images: int, per_image: int, image: tuple[int, int], seed: int, min_side: float = 16.0
) -> list[torch.Tensor]:
    """RPN-like proposals: per image a float32 Tensor[L, 4] of (x1, y1, x2, y2), sqrt(area)
    log-uniform in [min_side, max(H, W)], aspect ratio log-uniform in [1/2, 2], centres uniform,
    clipped to the image, at least 1 px wide and high. Deterministic in ``seed``."""
    g = torch.Generator().manual_seed(seed)
    h, w = image
    out = []
    for _ in range(n_images):
        u = torch.rand(per_image, 4, generator=g, dtype=torch.float64)
        lo, hi = math.log(min_side), math.log(max(h, w, min_side))
        side = torch.exp(lo + u[:, 0] * (hi - lo))
        ar = torch.exp(math.log(0.5) + u[:, 1] * (math.log(2.0) - math.log(0.5)))  # height / width
        bw, bh = side / ar.sqrt(), side * ar.sqrt()
        cx, cy = u[:, 2] * w, u[:, 3] * h
        x1, x2 = (cx - bw / 2).clamp(0, w - 1), (cx + bw / 2).clamp(1, w)
        y1, y2 = (cy - bh / 2).clamp(0, h - 1), (cy + bh / 2).clamp(1, h)
        x2, y2 = torch.maximum(x2, x1 + 1), torch.maximum(y2, y1 + 1)
        out.append(torch.stack([x1, y1, x2, y2], dim=1).float())
    return out


def _randn(shape, seed: int, device, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device=device, dtype=dtype)


def set_backend(model: nn.Module, backend: str | None) -> nn.Module:
    """Point every pygen.nn module inside ``model`` (any family) at ``backend`` (None: automatic
    choice); weights are untouched."""
    for m in model.modules():
        if type(m).__module__.startswith("pygen.nn") and hasattr(m, "backend"):
            m.backend = backend
    return model


# ---- Faster R-CNN (FPN) box head --------------------------------------------------------------
@dataclass(frozen=True)
class FasterRCNNHeadConfig:
    image: tuple[int, int] = (800, 1333)
    batch: int = 2
    proposals_per_image: int = 1000
    channels: int = 256  # FPN width
    strides: tuple[int, ...] = (4, 8, 16, 32)  # P2..P5
    output_size: int = 7
    sampling_ratio: int = 2
    representation: int = 1024  # TwoMLPHead width
    num_classes: int = 91  # COCO, background included (torchvision)
    min_side: float = 16.0

    @classmethod
    def quick(cls) -> FasterRCNNHeadConfig:
        return cls(image=(128, 160), proposals_per_image=8, channels=16, representation=64, num_classes=5, min_side=8.0)

    @property
    def levels(self) -> list[tuple[int, int]]:
        return [(math.ceil(self.image[0] / s), math.ceil(self.image[1] / s)) for s in self.strides]


class TwoMLPHead(nn.Module):
    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))


class FastRCNNPredictor(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class FasterRCNNRoIHead(nn.Module):
    """Box branch of torchvision's RoIHeads (no sampling / post-processing): features dict
    {"0": P2, ..., "3": P5}, proposals list[Tensor[L, 4]], image_shapes list[(H, W)] ->
    (class_logits [K, num_classes], box_regression [K, num_classes * 4])."""

    def __init__(self, cfg: FasterRCNNHeadConfig, backend: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        names = [str(i) for i in range(len(cfg.strides))]
        self.box_roi_pool = pnn.MultiScaleRoIAlign(names, cfg.output_size, cfg.sampling_ratio, backend=backend)
        self.box_head = TwoMLPHead(cfg.channels * cfg.output_size**2, cfg.representation)
        self.box_predictor = FastRCNNPredictor(cfg.representation, cfg.num_classes)

    def forward(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.box_roi_pool(features, proposals, image_shapes)
        return self.box_predictor(self.box_head(x))

    @staticmethod
    def example_inputs(
        cfg: FasterRCNNHeadConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], list[tuple[int, int]]]:
        feats = {
            str(i): _randn((cfg.batch, cfg.channels, h, w), seed + 1 + i, device, dtype)
            for i, (h, w) in enumerate(cfg.levels)
        }
        boxes = random_proposals(cfg.batch, cfg.proposals_per_image, cfg.image, seed, cfg.min_side)
        return feats, [b.to(device=device, dtype=dtype) for b in boxes], [tuple(cfg.image)] * cfg.batch


# ---- R-FCN head -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RFCNHeadConfig:
    image: tuple[int, int] = (800, 1333)
    stride: int = 16
    batch: int = 1
    rois_per_image: int = 300
    in_channels: int = 2048  # ResNet-101 conv5 (dilated to stride 16)
    reduce_channels: int = 1024  # conv_new_1
    num_classes: int = 21  # 20 VOC classes + background
    k: int = 7  # k x k position-sensitive bins
    pool: str = "pool"  # "pool" (PSRoIPool, the paper's) or "align" (PSRoIAlign)
    sampling_ratio: int = 2  # PSRoIAlign only
    min_side: float = 16.0

    @classmethod
    def quick(cls) -> RFCNHeadConfig:
        return cls(
            image=(128, 160), rois_per_image=8, in_channels=32, reduce_channels=16, num_classes=3, k=3, min_side=8.0
        )

    @property
    def feature(self) -> tuple[int, int]:
        return math.ceil(self.image[0] / self.stride), math.ceil(self.image[1] / self.stride)


class RFCNHead(nn.Module):
    """R-FCN detection head: c5 features [N, in_channels, H, W] and rois (Tensor[K, 5] or a
    list of Tensor[L, 4]) -> (cls_logits [K, num_classes], bbox_deltas [K, 4])."""

    def __init__(self, cfg: RFCNHeadConfig, backend: str | None = None) -> None:
        super().__init__()
        if cfg.pool not in ("pool", "align"):
            raise ValueError(f"RFCNHeadConfig.pool must be 'pool' or 'align', got {cfg.pool!r}")
        self.cfg = cfg
        kk = cfg.k * cfg.k
        self.conv_new_1 = nn.Conv2d(cfg.in_channels, cfg.reduce_channels, 1)
        self.rfcn_cls = nn.Conv2d(cfg.reduce_channels, kk * cfg.num_classes, 1)
        self.rfcn_bbox = nn.Conv2d(cfg.reduce_channels, kk * 4, 1)
        scale = 1.0 / cfg.stride
        if cfg.pool == "pool":
            self.psroi_cls = pnn.PSRoIPool(cfg.k, scale, backend=backend)
            self.psroi_bbox = pnn.PSRoIPool(cfg.k, scale, backend=backend)
        else:
            self.psroi_cls = pnn.PSRoIAlign(cfg.k, scale, cfg.sampling_ratio, backend=backend)
            self.psroi_bbox = pnn.PSRoIAlign(cfg.k, scale, cfg.sampling_ratio, backend=backend)

    def forward(self, c5: torch.Tensor, rois: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.relu(self.conv_new_1(c5))
        cls = self.psroi_cls(self.rfcn_cls(f), rois).mean(dim=(2, 3))  # average voting
        bbox = self.psroi_bbox(self.rfcn_bbox(f), rois).mean(dim=(2, 3))
        return cls, bbox

    @staticmethod
    def example_inputs(
        cfg: RFCNHeadConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = cfg.feature
        c5 = _randn((cfg.batch, cfg.in_channels, h, w), seed + 1, device, dtype)
        boxes = random_proposals(cfg.batch, cfg.rois_per_image, cfg.image, seed, cfg.min_side)
        return c5, [b.to(device=device, dtype=dtype) for b in boxes]


MODELS = {"faster_rcnn_roi_head": (FasterRCNNRoIHead, FasterRCNNHeadConfig), "rfcn_head": (RFCNHead, RFCNHeadConfig)}


def build(name: str, quick: bool = False, backend: str | None = None, **overrides: Any) -> tuple[nn.Module, Any]:
    """(model, config) of a named model; ``overrides`` replace config fields."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    cls, cfg_cls = MODELS[name]
    cfg = cfg_cls.quick() if quick else cfg_cls()
    if overrides:
        cfg = replace(cfg, **overrides)
    return cls(cfg, backend=backend), cfg
