"""Argument validation for the RoI ops: every bad argument raises a ValueError/TypeError that names
it, before any kernel is launched.

Value checks on the boxes (finite coordinates, integral in-range batch indices) read the data, so
on a GPU they cost one host synchronisation per call; they are skipped while torch.compile traces
(the kernels never read out of bounds either way: a RoI with an out-of-range batch index yields
zeros).
"""
from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MAX_LEVELS = 8


def check_input(name: str, x, what: str = "input") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: {what} must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: {what} must be float32, float64, float16 or bfloat16, got {x.dtype}")


def output_pair(name: str, output_size) -> tuple[int, int]:
    """torchvision's _pair: an int or a pair of ints, each > 0."""
    if isinstance(output_size, numbers.Integral) and not isinstance(output_size, bool):
        pair = (int(output_size), int(output_size))
    elif (isinstance(output_size, (tuple, list, torch.Size)) and len(output_size) == 2
          and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in output_size)):
        pair = (int(output_size[0]), int(output_size[1]))
    else:
        raise TypeError(f"{name}: output_size must be an int or a pair of ints, got {output_size!r}")
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{name}: output_size must be positive, got {output_size!r}")
    return pair


def positive_scale(name: str, value, what: str = "spatial_scale") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: {what} must be a positive float, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: {what} must be a positive finite float, got {value!r}")
    return v


def integer(name: str, value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: {what} must be an int, got {value!r}")
    return int(value)


def rois_from_boxes(name: str, boxes, input: torch.Tensor) -> torch.Tensor:
    """Tensor[K, 5] or a list of Tensor[L, 4] -> contiguous Tensor[K, 5] in the kernel dtype
    (float64 for float64 input, else float32), validated."""
    batch = input.shape[0]
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if not isinstance(b, torch.Tensor):
                raise TypeError(f"{name}: boxes[{i}] must be a Tensor[L, 4], got {type(b).__name__}")
            if b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"{name}: boxes[{i}] must have shape [L, 4], got {tuple(b.shape)}")
        if len(boxes) > batch:
            raise ValueError(f"{name}: boxes is a list of {len(boxes)} tensors but input has batch size {batch}")
        if len(boxes) == 0:
            rois = input.new_zeros((0, 5))
        else:
            rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1)
                              for i, b in enumerate(boxes)], dim=0)
    elif isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"{name}: boxes must be a Tensor[K, 5] (batch_index, x1, y1, x2, y2) "
                             f"or a list of Tensor[L, 4], got shape {tuple(boxes.shape)}")
        rois = boxes
    else:
        raise TypeError(f"{name}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    if not rois.is_floating_point():
        raise TypeError(f"{name}: boxes must be a floating-point tensor, got {rois.dtype}")
    if rois.device != input.device:
        raise ValueError(f"{name}: boxes must be on the input's device {input.device}, got {rois.device}")
    kdt = torch.float64 if input.dtype == torch.float64 else torch.float32
    rois = rois.detach().to(kdt).contiguous()
    if rois.shape[0] and not torch.compiler.is_compiling():
        _check_values(name, rois, batch)
    return rois


def _check_values(name: str, rois: torch.Tensor, batch: int) -> None:
    idx = rois[:, 0]
    stats = torch.stack([
        (~torch.isfinite(rois)).any().to(rois.dtype),
        (idx != torch.floor(idx)).any().to(rois.dtype),
        idx.min(), idx.max()])
    nonfinite, fractional, lo, hi = stats.tolist()  # one host synchronisation
    if nonfinite:
        raise ValueError(f"{name}: boxes contain NaN or infinite values")
    if fractional:
        raise ValueError(f"{name}: boxes[:, 0] (batch index) must hold integers")
    if lo < 0 or hi >= batch:
        raise ValueError(f"{name}: boxes[:, 0] (batch index) must lie in [0, {batch}), "
                         f"got values in [{lo:g}, {hi:g}]")


def ps_channels(name: str, channels: int, pooled: tuple[int, int]) -> int:
    bins = pooled[0] * pooled[1]
    if channels % bins:
        raise ValueError(f"{name}: input channels ({channels}) must be divisible by "
                         f"output_h * output_w ({pooled[0]}*{pooled[1]} = {bins})")
    return channels // bins


def check_features(name: str, features, spatial_scales) -> list[float]:
    if isinstance(features, torch.Tensor) or not isinstance(features, (list, tuple)):
        raise TypeError(f"{name}: features must be a list of Tensor[N, C, H_l, W_l]")
    if not 1 <= len(features) <= MAX_LEVELS:
        raise ValueError(f"{name}: features must hold 1 to {MAX_LEVELS} levels, got {len(features)}")
    for i, f in enumerate(features):
        check_input(name, f, f"features[{i}]")
    f0 = features[0]
    for i, f in enumerate(features[1:], 1):
        if f.shape[:2] != f0.shape[:2] or f.dtype != f0.dtype or f.device != f0.device:
            raise ValueError(f"{name}: features[{i}] must share N, C, dtype and device with features[0] "
                             f"({tuple(f0.shape[:2])}, {f0.dtype}, {f0.device}); got "
                             f"({tuple(f.shape[:2])}, {f.dtype}, {f.device})")
    if isinstance(spatial_scales, (int, float)) or not isinstance(spatial_scales, (list, tuple)):
        raise TypeError(f"{name}: spatial_scales must be a list of floats, one per level")
    if len(spatial_scales) != len(features):
        raise ValueError(f"{name}: spatial_scales has {len(spatial_scales)} entries but features has "
                         f"{len(features)} levels")
    return [positive_scale(name, s, f"spatial_scales[{i}]") for i, s in enumerate(spatial_scales)]
