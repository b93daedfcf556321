"""Argument validation for the flow ops: every bad argument raises a ValueError/TypeError naming
it, before any kernel is launched. Checks read shapes, dtypes and devices only, except the one
documented value check (a zero LU diagonal in inv_conv1x1_lu(reverse=True)), which costs one host
synchronisation and is skipped when value checks are off (pygen.set_value_checks /
PYGEN_VALUE_CHECKS), while torch.compile traces and under CUDA graph capture
(pygen/ops/_common_checks.py::checking_values); the inverse then holds inf / NaN.
"""

from __future__ import annotations

import torch

from ._common_checks import FLOAT_DTYPES, checking_values, flag as flag, positive_float, tensor  # flag: re-export


def like(name: str, t, what: str, ref: torch.Tensor, ref_what: str, shape=None) -> torch.Tensor:
    """``t`` is a tensor with ``ref``'s dtype and device and the given shape (default ref's)."""
    tensor(name, t, what, dtypes=FLOAT_DTYPES)
    want = tuple(ref.shape) if shape is None else tuple(shape)
    if tuple(t.shape) != want:
        raise ValueError(f"{name}: {what} must have shape {want} (from {ref_what}), got {tuple(t.shape)}")
    return dtype_and_device(name, t, what, ref, ref_what)


def dtype_and_device(name: str, t: torch.Tensor, what: str, ref: torch.Tensor, ref_what: str) -> torch.Tensor:
    """``t`` has ``ref``'s dtype (else TypeError) and device (else ValueError)."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: {what} must have {ref_what}'s dtype {ref.dtype}, got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name}: {what} must be on {ref_what}'s device {ref.device}, got {t.device}")
    return t


def clamp_value(name: str, v) -> float | None:
    return positive_float(name, v, "clamp", none_ok=True)


def channel_param(name: str, p, what: str, x: torch.Tensor) -> torch.Tensor:
    """A per-channel parameter of x [B, C, ...]: C values, shaped [C] or [1, C, 1, ...]."""
    tensor(name, p, what, dtypes=FLOAT_DTYPES)
    c = x.shape[1]
    ok_shapes = {(c,), (1, c), (1, c) + (1,) * (x.dim() - 2)}
    if tuple(p.shape) not in ok_shapes:
        raise ValueError(
            f"{name}: {what} must have shape ({c},) or (1, {c}{', 1' * (x.dim() - 2)}) "
            f"for x of shape {tuple(x.shape)}, got {tuple(p.shape)}"
        )
    return dtype_and_device(name, p, what, x, "x")


def square(name: str, w, what: str, c: int | None, ref: torch.Tensor | None = None) -> torch.Tensor:
    """A [C, C] matrix ([C, C, 1, 1] accepted for conv weights) -> the [C, C] view."""
    tensor(name, w, what, dtypes=FLOAT_DTYPES)
    if w.dim() == 4 and w.shape[2:] == (1, 1):
        w = w.reshape(w.shape[0], w.shape[1])
    if w.dim() != 2 or w.shape[0] != w.shape[1] or (c is not None and w.shape[0] != c):
        want = f"({c}, {c})" if c is not None else "square"
        raise ValueError(f"{name}: {what} must be a {want} matrix, got shape {tuple(w.shape)}")
    return w if ref is None else dtype_and_device(name, w, what, ref, "x")


def batch_or_shared(name: str, p, what: str, z: torch.Tensor, shared_shape: tuple) -> torch.Tensor:
    """A flow parameter that is either shared (``shared_shape``) or per sample ([B, *shared])."""
    tensor(name, p, what, dtypes=FLOAT_DTYPES)
    shapes = {tuple(shared_shape), (z.shape[0],) + tuple(shared_shape)}
    if shared_shape == ():
        shapes |= {(1,), (z.shape[0],)}
    if tuple(p.shape) not in shapes:
        raise ValueError(
            f"{name}: {what} must have shape {tuple(shared_shape)} or "
            f"{(z.shape[0],) + tuple(shared_shape)}, got {tuple(p.shape)}"
        )
    return dtype_and_device(name, p, what, z, "z")


def nonzero_diagonal(name: str, diag: torch.Tensor) -> None:
    """The LU inverse divides by the diagonal: a zero entry means W is singular."""
    if diag.numel() and checking_values(diag):
        if bool((diag == 0).any()):  # one host synchronisation
            raise ValueError(
                f"{name}: diag has a zero entry, so W = P L (U + diag(s)) is singular and "
                f"has no inverse (the forward direction gives logdet = -inf)"
            )
