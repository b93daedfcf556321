"""Argument validation for the FP8 ops: every bad argument raises a ValueError/TypeError naming it,
before any kernel is launched. Checks read shapes, dtypes, strides and devices only (no host
synchronisation), except ``m_indices`` values, which are not read (the kernel treats any entry
< 0 or >= E as padding, so a bad index cannot read out of bounds).
"""

from __future__ import annotations

import torch

from ..ref.fp8 import BLOCK, SCALE_FORMATS
from ._common_checks import dtype_names, flag as flag, same_device, tensor  # flag: re-export

HIGH_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
FP8 = torch.float8_e4m3fn


def k_multiple(name: str, k: int, what: str) -> None:
    if k % BLOCK:
        raise ValueError(
            f"{name}: {what} must be a multiple of {BLOCK} (one scale per 128 elements "
            f"along K); got {k}. Pad K with zeros to {-(-k // BLOCK) * BLOCK}."
        )


def scale_format(name: str, v) -> bool:
    """-> True for UE8M0."""
    if v not in SCALE_FORMATS:
        raise ValueError(f"{name}: scale_format must be one of {SCALE_FORMATS}, got {v!r}")
    return v == "ue8m0"


def out_dtype(name: str, v) -> torch.dtype:
    if v not in OUT_DTYPES:
        raise TypeError(f"{name}: out_dtype must be one of {dtype_names(OUT_DTYPES)}, got {v!r}")
    return v


def scales(name: str, s, what: str, shape: tuple, ref: torch.Tensor, layout: str) -> torch.Tensor:
    """float32 scales of exactly ``shape`` on ref's device, with positive strides that do not
    overlap (row-major, column-major or padded views are all fine; broadcast views are not)."""
    tensor(name, s, what, dtypes=(torch.float32,))
    if tuple(s.shape) != tuple(shape):
        raise ValueError(
            f"{name}: {what} must have shape {tuple(shape)} ({layout}), got {tuple(s.shape)}"
            + (" -- transposed? pass the [rows, K/128] view" if tuple(s.shape) == tuple(shape)[::-1] else "")
        )
    same_device(name, what, s, "the fp8 operand", ref)
    if s.dim() == 2 and s.numel() > 1:
        st = s.stride()
        r, c = s.shape
        row_major = st[1] == 1 and (r == 1 or st[0] >= c)
        col_major = st[0] == 1 and (c == 1 or st[1] >= r)
        if not (row_major or col_major):
            raise ValueError(
                f"{name}: {what} must be row-major or column-major (a view with unit stride "
                f"along one dim and no overlap), got strides {st}"
            )
    if s.dim() == 3 and s.numel() > 1 and (min(s.stride()) < 1 and s.shape[0] > 1):
        raise ValueError(f"{name}: {what} must not be a broadcast view, got strides {s.stride()}")
    return s


def operand(name: str, t, what: str, dim: int = 2) -> torch.Tensor:
    tensor(name, t, what, dtypes=(FP8,), dim=dim)
    if t.shape[-1] > 1 and t.stride(-1) != 1 and t.stride(-2) != 1:
        raise ValueError(f"{name}: {what} needs a unit stride along one of its last two dims, got strides {t.stride()}")
    return t


def bias(name: str, b, n: int, ref: torch.Tensor):
    if b is None:
        return None
    tensor(name, b, "bias", dtypes=HIGH_DTYPES, dim=1)
    if b.shape[0] != n:
        raise ValueError(f"{name}: bias must have shape ({n},) (N of b), got {tuple(b.shape)}")
    same_device(name, "bias", b, "a", ref)
    return b
