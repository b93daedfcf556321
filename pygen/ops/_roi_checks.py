"""Argument validation for the RoI ops: every bad argument raises a ValueError/TypeError that names
it, before any kernel is launched.

Validation never copies the boxes: shapes, dtypes and devices are read from the tensor's metadata,
and the value checks (finite coordinates, integral in-range batch indices) reduce over the distinct
elements only (a broadcast ``boxes.expand(K, 5)`` is read as its one stored row) in chunks of
``CHECK_ROWS`` rows, so their temporary memory is bounded whatever K is. On a GPU they cost one host
synchronisation per call; they are skipped when value checks are off (pygen.set_value_checks /
PYGEN_VALUE_CHECKS), while torch.compile traces, under CUDA graph capture and for fake tensors
(pygen/ops/_common_checks.py::checking_values). The kernels never read out of bounds either way:
a RoI whose batch index truncates to outside [0, N) yields zeros, and non-finite coordinates
cannot make an index (their outputs are unspecified). Only boxes that pass are converted to the
kernels' [K, 5] contiguous float32 (float64) layout, which is a copy when the dtype or layout
differs.

Sizes the kernels cannot index are refused: K up to ``MAX_ROIS`` (2^31 - 1: the RoI index is the
Triton grid's first axis, an int32 program id, and csrc/roi takes sizes below 2^31), feature
dimensions below 2^31, and one image's feature map spanning at most 2^31 - 1 elements (offsets
within an image are 32-bit; pygen/ops/_common_checks.py::MAX_SPAN). Meta tensors are refused with
an error naming the argument (pygen/ops/_common_checks.py).
"""

from __future__ import annotations

import numbers
from typing import Union

import torch

from ._common_checks import (
    FLOAT_DTYPES,
    MAX_SPAN,
    checking_values,
    fits_32bit,
    has_data,
    integer as bounded_int,
    positive_float,
)

MAX_LEVELS = 8
MAX_ROIS = 2**31 - 1  # RoIs one call can index (see the module docstring)
MAX_DIM = 2**31 - 1  # largest N, C, H or W of a feature map (csrc/roi/roi_bind.h)
CHECK_ROWS = 1 << 18  # rows per chunk of the box value checks (<= 10 MB of temporaries)

# output_size of torchvision's RoI ops: PH = PW or (PH, PW) (boxes: pygen/ops/_roi_script.py's Boxes,
# spelled so that TorchScript reads it).
PoolSize = int | tuple[int, int]


class BoxesShapeError(ValueError, AssertionError):
    """A ``boxes`` argument of the wrong shape. Also an AssertionError: torchvision.ops asserts the
    box shapes (``torch._assert``), so code written against torchvision catches that type."""


class BoxesTypeError(TypeError, AssertionError):
    """``boxes`` neither a Tensor[K, 5] nor a list of Tensor[L, 4] (an AssertionError in
    torchvision, as BoxesShapeError)."""


class ChannelsError(ValueError, RuntimeError):
    """Position-sensitive pooling with input channels not divisible by the output bins. Also a
    RuntimeError: torchvision's C++ check (TORCH_CHECK) raises that type."""


def check_input(name: str, x, what: str = "input") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name}: {what} must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: {what} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    has_data(name, x, what)
    if max(x.shape) > MAX_DIM:
        raise ValueError(f"{name}: {what} sizes must each be at most {MAX_DIM} (2^31 - 1), got shape {tuple(x.shape)}")
    # offsets within one image are 32-bit in the kernels (the image base is 64-bit); the backward
    # writes a contiguous gradient of C x H x W per image, whatever the input's strides (a view
    # expanded along C spans little but its gradient does not)
    fits_32bit(name, x, what, dims=(1, 2, 3), part=" (one image: C x H x W)")
    if x.shape[1] * x.shape[2] * x.shape[3] > MAX_SPAN:
        raise ValueError(
            f"{name}: {what} has C x H x W = {x.shape[1] * x.shape[2] * x.shape[3]} elements per image; the kernels "
            f"index one image's gradient with 32-bit offsets, at most {MAX_SPAN} (2^31 - 1): split the channels"
        )


def output_pair(name: str, output_size) -> tuple[int, int]:
    """torchvision's _pair: an int or a pair of ints, each > 0."""
    if isinstance(output_size, numbers.Integral) and not isinstance(output_size, bool):
        pair = (int(output_size), int(output_size))
    elif (
        isinstance(output_size, (tuple, list, torch.Size))
        and len(output_size) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in output_size)
    ):
        pair = (int(output_size[0]), int(output_size[1]))
    else:
        raise TypeError(f"{name}: output_size must be an int or a pair of ints, got {output_size!r}")
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"{name}: output_size must be positive, got {output_size!r}")
    if pair[0] * pair[1] > MAX_SPAN:  # the kernels index the bins of one RoI with 32-bit offsets
        raise ValueError(f"{name}: output_size must have at most 2^31 - 1 bins, got {output_size!r}")
    return pair


def positive_scale(name: str, value, what: str = "spatial_scale") -> float:
    return positive_float(name, value, what)


def integer(name: str, value, what: str) -> int:
    """An int the kernels take as a C int (sampling_ratio; <= 0 means adaptive, as in torchvision)."""
    return bounded_int(name, value, what, -(2**31), 2**31 - 1)


def kernel_dtype(input: torch.Tensor) -> torch.dtype:
    """The dtype of the rois the kernels read: float64 for float64 input, else float32."""
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def check_boxes(name: str, boxes, input: torch.Tensor) -> int:
    """Validate ``boxes`` (Tensor[K, 5] or a list of Tensor[L, 4]) against ``input`` without
    copying them; returns K."""
    batch = input.shape[0]
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            _box_tensor(name, b, f"boxes[{i}]", 4, "[L, 4]", input)
        if len(boxes) > batch:
            raise ValueError(f"{name}: boxes is a list of {len(boxes)} tensors but input has batch size {batch}")
        k = sum(b.shape[0] for b in boxes)
    elif isinstance(boxes, torch.Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise BoxesShapeError(
                f"{name}: boxes must be a Tensor[K, 5] (batch_index, x1, y1, x2, y2) "
                f"or a list of Tensor[L, 4], got shape {tuple(boxes.shape)}"
            )
        _box_tensor(name, boxes, "boxes", 5, "[K, 5]", input)
        k = boxes.shape[0]
    else:
        raise BoxesTypeError(
            f"{name}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )
    if k > MAX_ROIS:
        raise ValueError(
            f"{name}: boxes holds {k} RoIs; one call indexes at most {MAX_ROIS} (2^31 - 1), "
            f"split the boxes into several calls"
        )
    if k and checking_values(input, boxes):
        if isinstance(boxes, torch.Tensor):
            _check_values(name, boxes, kernel_dtype(input), batch)
        else:
            _check_list_values(name, boxes, kernel_dtype(input))
    return k


def rois_from_boxes(name: str, boxes, input: torch.Tensor) -> torch.Tensor:
    """Tensor[K, 5] or a list of Tensor[L, 4] -> contiguous Tensor[K, 5] in the kernel dtype
    (float64 for float64 input, else float32), validated (check_boxes) before anything is copied."""
    check_boxes(name, boxes, input)
    return to_rois(input, boxes)


def to_rois(input: torch.Tensor, boxes: Union[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:  # noqa: UP007 (TorchScript compiles it: no X | Y before torch 2.6)
    """The conversion alone (TorchScript: the scripted RoI modules call it, pygen/nn/_roi_script.py)."""
    kdt = torch.float64 if input.dtype == torch.float64 else torch.float32
    if isinstance(boxes, torch.Tensor):
        return boxes.detach().to(kdt).contiguous()
    if len(boxes) == 0:
        return torch.zeros((0, 5), dtype=kdt, device=input.device)
    # the batch column is made in the kernel dtype: a bf16 column would round index 257 to 256
    parts: list[torch.Tensor] = []
    for i, b in enumerate(boxes):
        idx = torch.full((b.shape[0], 1), float(i), dtype=kdt, device=b.device)
        parts.append(torch.cat([idx, b.detach().to(kdt)], 1))
    return torch.cat(parts, 0)


def _box_tensor(name: str, b, what: str, cols: int, shape: str, input: torch.Tensor) -> None:
    if not isinstance(b, torch.Tensor):
        raise BoxesTypeError(f"{name}: {what} must be a Tensor{shape}, got {type(b).__name__}")
    if b.dim() != 2 or b.shape[1] != cols:
        raise BoxesShapeError(f"{name}: {what} must have shape {shape}, got {tuple(b.shape)}")
    if not b.is_floating_point():
        raise TypeError(f"{name}: {what} must be a floating-point tensor, got {b.dtype}")
    has_data(name, b, what)
    if b.device != input.device:
        raise ValueError(f"{name}: {what} must be on the input's device {input.device}, got {b.device}")


def _distinct(t: torch.Tensor) -> torch.Tensor:
    """A view of ``t`` without its broadcast (stride-0) repeats: the same set of values, each stored
    element read once (``x.expand(10**9, 5)`` becomes x's one row). Column 0 stays column 0."""
    for d in range(t.dim()):
        if t.stride(d) == 0 and t.shape[d] > 1:
            t = t.narrow(d, 0, 1)
    return t


def _value_stats(boxes: torch.Tensor, kdt: torch.dtype, index: bool) -> torch.Tensor:
    """[any non-finite, any fractional index, min index, max index] (the first entry only when
    ``index`` is false) of ``boxes`` in the kernel dtype (a float64 1e300 is inf in float32), as a
    device tensor: reduced over the distinct elements, CHECK_ROWS rows at a time."""
    rows = _distinct(boxes.detach())
    parts = []
    for r0 in range(0, rows.shape[0], CHECK_ROWS):
        chunk = rows[r0 : r0 + CHECK_ROWS].to(kdt)
        p = [(~torch.isfinite(chunk)).any().to(kdt)]
        if index:
            idx = chunk[:, 0]
            p += [(idx != torch.floor(idx)).any().to(kdt), idx.min(), idx.max()]
        parts.append(torch.stack(p))
    if len(parts) == 1:  # the usual case: no second reduction (fewer launches)
        return parts[0] if index else parts[0][0]
    s = torch.stack(parts)
    if not index:
        return s[:, 0].max()
    return torch.stack([s[:, 0].max(), s[:, 1].max(), s[:, 2].min(), s[:, 3].max()])


def _nonfinite(name: str, what: str, boxes: torch.Tensor, kdt: torch.dtype) -> ValueError:
    as_kdt = "" if kdt == boxes.dtype else f" (as {str(kdt).removeprefix('torch.')})"
    return ValueError(f"{name}: {what} contain NaN or infinite values{as_kdt}")


def _check_values(name: str, boxes: torch.Tensor, kdt: torch.dtype, batch: int) -> None:
    """Tensor[K > 0, 5]: finite values, integral batch indices in [0, batch). One host synchronisation."""
    nonfinite, fractional, lo, hi = _value_stats(boxes, kdt, index=True).tolist()
    if nonfinite:
        raise _nonfinite(name, "boxes", boxes, kdt)
    if fractional:
        raise ValueError(f"{name}: boxes[:, 0] (batch index) must hold integers")
    if lo < 0 or hi >= batch:
        raise ValueError(f"{name}: boxes[:, 0] (batch index) must lie in [0, {batch}), got values in [{lo:g}, {hi:g}]")


def _check_list_values(name: str, boxes, kdt: torch.dtype) -> None:
    """A list of Tensor[L, 4] (some non-empty): finite values. One host synchronisation."""
    used = [i for i, b in enumerate(boxes) if b.shape[0]]
    flags = torch.stack([_value_stats(boxes[i], kdt, index=False) for i in used]).tolist()
    for i, bad in zip(used, flags):
        if bad:
            raise _nonfinite(name, f"boxes[{i}]", boxes[i], kdt)


def ps_channels(name: str, channels: int, pooled: tuple[int, int]) -> int:
    bins = pooled[0] * pooled[1]
    if channels % bins:
        raise ChannelsError(
            f"{name}: input channels ({channels}) must be divisible by "
            f"output_h * output_w ({pooled[0]}*{pooled[1]} = {bins})"
        )
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
            raise ValueError(
                f"{name}: features[{i}] must share N, C, dtype and device with features[0] "
                f"({tuple(f0.shape[:2])}, {f0.dtype}, {f0.device}); got "
                f"({tuple(f.shape[:2])}, {f.dtype}, {f.device})"
            )
    if isinstance(spatial_scales, (int, float)) or not isinstance(spatial_scales, (list, tuple)):
        raise TypeError(f"{name}: spatial_scales must be a list of floats, one per level")
    if len(spatial_scales) != len(features):
        raise ValueError(
            f"{name}: spatial_scales has {len(spatial_scales)} entries but features has {len(features)} levels"
        )
    return [positive_scale(name, s, f"spatial_scales[{i}]") for i, s in enumerate(spatial_scales)]
