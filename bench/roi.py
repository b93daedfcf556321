"""RoI family benchmarks: the shapes of the detectors the ops come from, and the byte model.

Default shapes (``cases(quick=False)``)
---------------------------------------
Faster R-CNN + FPN (torchvision's fasterrcnn_resnet50_fpn at its 800x1333 input): pyramid levels
P2..P5 at strides 4, 8, 16, 32, i.e. ceil(800/s) x ceil(1333/s) = 200x334, 100x167, 50x84,
25x42, 256 channels, batch 2, 1000 proposals per image (2000 RoIs), 7x7 output, sampling_ratio 2.
    roi_align, roi_pool          on P2 (spatial_scale 1/4), all 2000 RoIs
    multi_scale_roi_align        over P2..P5 (FPN level rule, canonical 224 / level 4)
R-FCN (ResNet-101, stride 16, 800x1333 -> 50x84): 21 classes (20 + background) x 7x7
position-sensitive score maps, C = 21*49 = 1029 channels, batch 1, 300 RoIs.
    ps_roi_align (sampling_ratio 2), ps_roi_pool

Proposals are random but realistic (pygen.models.detection.random_proposals: sqrt(area)
log-uniform in [16, 1333] px, aspect ratio log-uniform in [1/2, 2], centres uniform, clipped to
the image, fixed seed). Boxes are rounded to
the benchmark dtype so that every implementation (torchvision needs boxes in the input dtype)
sees the same coordinates.

``cases(quick=True)`` keeps the structure at toy sizes (128x160 image, 8-16 channels, 16 RoIs per
image, R-FCN with 3 classes x 3x3) for smoke tests and CI.

Byte model (the GB/s column; a stated model of the traffic, not a hardware counter)
-----------------------------------------------------------------------------------
E = bytes per element of the dtype, P = PH*PW bins, S_k = samples per bin of RoI k
(sampling_ratio^2, or ceil(h_k/PH)*ceil(w_k/PW) when adaptive), A_k = the RoI's integer footprint
on the feature map (rounded corners, clipped to the map), C' = output channels (C, or C/P for the
position-sensitive ops), G = N*C*H*W elements of the feature map(s).

    roi_align / multi_scale fwd   out K*C*P*E + rois K*20 + gathers sum_k C*P*S_k*4*E
                                  (4 bilinear neighbours per sample, each counted as read)
    ps_roi_align fwd              the same with C' = C/P
    roi_pool fwd                  out K*C*P*E + argmax K*C*P*4 + rois + sum_k C*A_k*E
                                  (every element under the RoI read once per channel)
    ps_roi_pool fwd               out K*C'*P*E + rois + sum_k C'*A_k*E
    bwd (all)                     grad_out K*C'*P*E + rois + scattered fp32 adds (align: the
                                  gathers' count x 4 B; roi_pool: K*C*P*(4 argmax + 4 add);
                                  ps_roi_pool: sum_k C'*A_k*4) + grad buffer G*4 (zero fill)
                                  + G*(4+E) (cast to the dtype) when the dtype is not float32
    fwd+bwd                       fwd + bwd
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import pygen
import pygen.ops
import pygen.ref.roi as ref
from pygen.models.detection import random_proposals
from pygen.tools.harness import Case, Inputs

FAMILY = "roi"


@dataclass(frozen=True)
class FPNShape:
    image: tuple[int, int] = (800, 1333)
    strides: tuple[int, ...] = (4, 8, 16, 32)
    batch: int = 2
    channels: int = 256
    rois_per_image: int = 1000
    output: int = 7
    sampling_ratio: int = 2
    min_side: float = 16.0

    @property
    def levels(self) -> list[tuple[int, int]]:
        h, w = self.image
        return [(math.ceil(h / s), math.ceil(w / s)) for s in self.strides]


@dataclass(frozen=True)
class RFCNShape:
    image: tuple[int, int] = (800, 1333)
    stride: int = 16
    batch: int = 1
    classes: int = 21  # 20 VOC classes + background
    k: int = 7  # k x k position-sensitive bins
    rois: int = 300
    sampling_ratio: int = 2
    min_side: float = 16.0

    @property
    def feature(self) -> tuple[int, int]:
        return math.ceil(self.image[0] / self.stride), math.ceil(self.image[1] / self.stride)

    @property
    def channels(self) -> int:
        return self.classes * self.k * self.k


DEFAULT = {"fpn": FPNShape(), "rfcn": RFCNShape()}
QUICK = {
    "fpn": FPNShape(image=(128, 160), channels=16, rois_per_image=16, min_side=8.0),
    "rfcn": RFCNShape(image=(128, 160), classes=3, k=3, rois=16, min_side=8.0),
}


def _to_rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])


def _randn(shape, seed: int, device, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(device=device, dtype=dtype)


# ---- byte model --------------------------------------------------------------------------------
def _samples(rois: torch.Tensor, scale: float, ph: int, pw: int, sr: int, aligned_like: bool) -> torch.Tensor:
    """Samples per bin for every RoI (float64 [K])."""
    if sr > 0:
        return torch.full((rois.shape[0],), float(sr * sr), dtype=torch.float64)
    r = rois.double().cpu()
    w = (r[:, 3] - r[:, 1]) * scale
    h = (r[:, 4] - r[:, 2]) * scale
    if not aligned_like:
        w, h = w.clamp_min(1.0), h.clamp_min(1.0)
    return torch.ceil(h / ph) * torch.ceil(w / pw)


def _footprint(rois: torch.Tensor, scale: float, height: int, width: int) -> torch.Tensor:
    """Feature elements under each RoI (rounded corners, clipped to the map): float64 [K]."""
    r = rois.double().cpu() * torch.tensor([1.0, scale, scale, scale, scale], dtype=torch.float64)
    rnd = torch.sign(r) * torch.floor(r.abs() + 0.5)
    x1, x2 = rnd[:, 1].clamp(0, width), (rnd[:, 3] + 1).clamp(0, width)
    y1, y2 = rnd[:, 2].clamp(0, height), (rnd[:, 4] + 1).clamp(0, height)
    return (x2 - x1).clamp_min(0) * (y2 - y1).clamp_min(0)


def _grad_buffer(elems: int, e: int) -> int:
    return elems * 4 + (0 if e == 4 else elems * (4 + e))


def _with_bwd(fwd_bytes: int, bwd_bytes: int, mode: str) -> int:
    return {"fwd": fwd_bytes, "bwd": bwd_bytes, "fwd+bwd": fwd_bytes + bwd_bytes}[mode]


def _align_bytes(k, c_out, p, samples_sum, e, g_elems, mode):
    gathers = c_out * p * samples_sum * 4  # neighbour reads (fwd) / fp32 adds (bwd)
    fwd = k * c_out * p * e + k * 20 + gathers * e
    bwd = k * c_out * p * e + k * 20 + gathers * 4 + _grad_buffer(g_elems, e)
    return int(_with_bwd(fwd, bwd, mode))


# ---- cases ---------------------------------------------------------------------------------------
def _fpn_inputs(s: FPNShape, levels: int, seed: int):
    """Make-inputs function for the FPN cases: the first ``levels`` pyramid maps."""

    def make(device, dtype) -> Inputs:
        boxes = random_proposals(s.batch, s.rois_per_image, s.image, seed, s.min_side)
        boxes = [b.to(dtype) for b in boxes]
        rois = _to_rois(boxes)
        feats = [
            _randn((s.batch, s.channels, h, w), seed + 1 + i, device, dtype)
            for i, (h, w) in enumerate(s.levels[:levels])
        ]
        k = rois.shape[0]
        grad = _randn((k, s.channels, s.output, s.output), seed + 99, device, dtype)
        t = {
            "x": feats[0],
            "features": feats,
            "rois": rois.to(device),
            "boxes": [b.to(device) for b in boxes],
            "scales": [1.0 / st for st in s.strides[:levels]],
            "image_shapes": [tuple(s.image)] * s.batch,
        }
        return Inputs(t, feats, grad)

    return make


def _tv():
    import torchvision.ops  # noqa: F401  (ImportError -> the baseline is skipped with the reason)

    return torchvision.ops


def _tv_baseline(op: str, *args):
    """Baseline factory: torchvision.ops.<op>(x, rois, *args) on the case's inputs."""

    def factory():
        fn = getattr(_tv(), op)
        return lambda I: fn(I.x, I.rois, *args)

    return factory


def _fpn_cases(s: FPNShape, tag: str) -> list[Case]:
    return _fpn_level_cases(s, tag) + [_fpn_multi_scale_case(s, tag)]


def _fpn_shape(s: FPNShape) -> dict:
    o, sr = (s.output, s.output), s.sampling_ratio
    scale = 1.0 / s.strides[0]
    h2, w2 = s.levels[0]
    return {
        "N": s.batch,
        "C": s.channels,
        "H": h2,
        "W": w2,
        "K": s.batch * s.rois_per_image,
        "PH": o[0],
        "PW": o[1],
        "sampling_ratio": sr,
        "spatial_scale": scale,
        "image": list(s.image),
    }


def _fpn_level_cases(s: FPNShape, tag: str) -> list[Case]:
    """roi_align and roi_pool on the finest level (P2)."""
    o, sr = (s.output, s.output), s.sampling_ratio
    scale = 1.0 / s.strides[0]
    h2, w2 = s.levels[0]
    shape = _fpn_shape(s)
    g_elems = s.batch * s.channels * h2 * w2

    def align_bytes(I, mode):
        e = I.x.element_size()
        samp = float(_samples(I.rois, scale, *o, sr, False).sum())
        return _align_bytes(I.rois.shape[0], s.channels, o[0] * o[1], samp, e, g_elems, mode)

    def pool_bytes(I, mode):
        e, k, p = I.x.element_size(), I.rois.shape[0], o[0] * o[1]
        area = float(_footprint(I.rois, scale, h2, w2).sum())
        fwd = k * s.channels * p * (e + 4) + k * 20 + s.channels * area * e
        bwd = k * s.channels * p * (e + 8) + k * 20 + _grad_buffer(g_elems, e)
        return int(_with_bwd(fwd, bwd, mode))

    return [
        Case(
            FAMILY,
            "roi_align",
            f"{tag}-p2",
            shape,
            _fpn_inputs(s, 1, 1000),
            lambda I, b: pygen.ops.roi_align(I.x, I.rois, o, scale, sr, False, backend=b),
            (ref.roi_align, lambda I: (I.x, I.rois, o, scale, sr, False)),
            align_bytes,
            "out K*C*P*E + rois K*20 + sum_k C*P*S_k*4*E (bwd: see bench/roi.py)",
            {"torchvision": _tv_baseline("roi_align", o, scale, sr, False)},
        ),
        Case(
            FAMILY,
            "roi_pool",
            f"{tag}-p2",
            {k: v for k, v in shape.items() if k != "sampling_ratio"},
            _fpn_inputs(s, 1, 1000),
            lambda I, b: pygen.ops.roi_pool(I.x, I.rois, o, scale, backend=b),
            (ref.roi_pool, lambda I: (I.x, I.rois, o, scale)),
            pool_bytes,
            "out K*C*P*(E+4) + rois K*20 + sum_k C*A_k*E (bwd: see bench/roi.py)",
            {"torchvision": _tv_baseline("roi_pool", o, scale)},
            grad_check="max-pool",
        ),
    ]


def _fpn_multi_scale_case(s: FPNShape, tag: str) -> Case:
    """multi_scale_roi_align over P2-P5, each RoI on its FPN level."""
    o, sr = (s.output, s.output), s.sampling_ratio
    shape = _fpn_shape(s)
    ms_levels = len(s.strides)
    ms_shape = {
        **shape,
        "levels": [list(hw) for hw in s.levels],
        "spatial_scales": [1 / st for st in s.strides],
        "canonical_scale": 224,
        "canonical_level": 4,
    }
    ms_shape.pop("H"), ms_shape.pop("W"), ms_shape.pop("spatial_scale")
    ms_elems = sum(s.batch * s.channels * h * w for h, w in s.levels)

    def ms_bytes(I, mode):
        e = I.x.element_size()
        lv = ref.fpn_levels(I.rois, I.scales)
        samp = 0.0
        for li, sc in enumerate(I.scales):
            samp += float(_samples(I.rois[lv == li], sc, *o, sr, False).sum())
        return _align_bytes(I.rois.shape[0], s.channels, o[0] * o[1], samp, e, ms_elems, mode)

    def tv_ms():
        tv = _tv()
        names = [f"p{i + 2}" for i in range(ms_levels)]
        pooler = tv.MultiScaleRoIAlign(names, s.output, sr)
        return lambda I: pooler(dict(zip(names, I.features)), I.boxes, I.image_shapes)

    return Case(
        FAMILY,
        "multi_scale_roi_align",
        f"{tag}-p2p5",
        ms_shape,
        _fpn_inputs(s, ms_levels, 1000),
        lambda I, b: pygen.ops.multi_scale_roi_align(I.features, I.rois, o, I.scales, sr, backend=b),
        (ref.multi_scale_roi_align, lambda I: (I.features, I.rois, o, I.scales, sr, 224, 4, False)),
        ms_bytes,
        "roi_align's model with each RoI's level (bwd: see bench/roi.py)",
        {"torchvision": tv_ms},
    )


def _rfcn_cases(s: RFCNShape, tag: str) -> list[Case]:
    o, sr, p = (s.k, s.k), s.sampling_ratio, s.k * s.k
    scale = 1.0 / s.stride
    h, w = s.feature
    shape = {
        "N": s.batch,
        "C": s.channels,
        "H": h,
        "W": w,
        "K": s.rois,
        "PH": s.k,
        "PW": s.k,
        "classes": s.classes,
        "sampling_ratio": sr,
        "spatial_scale": scale,
        "image": list(s.image),
    }
    g_elems = s.batch * s.channels * h * w

    def make(device, dtype) -> Inputs:
        boxes = [b.to(dtype) for b in random_proposals(s.batch, s.rois // s.batch, s.image, 2000, s.min_side)]
        rois = _to_rois(boxes)
        x = _randn((s.batch, s.channels, h, w), 2001, device, dtype)
        grad = _randn((rois.shape[0], s.classes, s.k, s.k), 2099, device, dtype)
        return Inputs({"x": x, "rois": rois.to(device)}, [x], grad)

    def align_bytes(I, mode):
        samp = float(_samples(I.rois, scale, *o, sr, True).sum())
        return _align_bytes(I.rois.shape[0], s.classes, p, samp, I.x.element_size(), g_elems, mode)

    def pool_bytes(I, mode):
        e, k = I.x.element_size(), I.rois.shape[0]
        area = float(_footprint(I.rois, scale, h, w).sum())
        fwd = k * s.classes * p * e + k * 20 + s.classes * area * e
        bwd = k * s.classes * p * e + k * 20 + s.classes * area * 4 + _grad_buffer(g_elems, e)
        return int(_with_bwd(fwd, bwd, mode))

    return [
        Case(
            FAMILY,
            "ps_roi_align",
            tag,
            shape,
            make,
            lambda I, b: pygen.ops.ps_roi_align(I.x, I.rois, o, scale, sr, backend=b),
            (ref.ps_roi_align, lambda I: (I.x, I.rois, o, scale, sr)),
            align_bytes,
            "out K*C'*P*E + rois K*20 + sum_k C'*P*S_k*4*E (bwd: see bench/roi.py)",
            {"torchvision": _tv_baseline("ps_roi_align", o, scale, sr)},
        ),
        Case(
            FAMILY,
            "ps_roi_pool",
            tag,
            {k: v for k, v in shape.items() if k != "sampling_ratio"},
            make,
            lambda I, b: pygen.ops.ps_roi_pool(I.x, I.rois, o, scale, backend=b),
            (ref.ps_roi_pool, lambda I: (I.x, I.rois, o, scale)),
            pool_bytes,
            "out K*C'*P*E + rois K*20 + sum_k C'*A_k*E (bwd: see bench/roi.py)",
            {"torchvision": _tv_baseline("ps_roi_pool", o, scale)},
            # a legitimate baseline that clips bins one row / column short (docs/roi.md): timed, (!)
            approximate={"torchvision": "its forward clips bins to H-1 / W-1, dropping the last row and column"},
        ),
    ]


def cases(quick: bool = False, device: str | torch.device | None = None) -> list[Case]:
    """The RoI cases (the same shapes on every device; ``device`` is accepted like every family's)."""
    shapes = QUICK if quick else DEFAULT
    pre = "quick-" if quick else ""
    return _fpn_cases(shapes["fpn"], pre + "fpn") + _rfcn_cases(shapes["rfcn"], pre + "rfcn")
