"""Argument validation for the losses family: every bad argument raises a ValueError/TypeError
naming it, before any kernel is launched. Shape/dtype/device checks are free; the one value check
(targets inside [0, V) unless equal to ignore_index) reads the targets, one host synchronisation on
a GPU, and runs only where pygen/ops/_common_checks.py::checking_values says so (value checks on,
nothing traced or captured). With it off, the kernels treat an out-of-range target as ignored (its
row contributes nothing; no out-of-bounds read: the target column is found by comparison, never
gathered).
"""

from __future__ import annotations

import math
import numbers

import torch

from ..ref.losses import GRPO_LOSS_TYPES
from ._common_checks import FLOAT_DTYPES, INDEX_DTYPES, checking_values, choice, integer, real, same_device, tensor


def head(name: str, hidden, weight, bias=None) -> tuple[int, int]:
    """hidden [*, H], weight [V, H] (V >= 1), bias [V] or None, one dtype and device; returns (V, H)."""
    tensor(name, hidden, "hidden", min_dim=2, dtypes=FLOAT_DTYPES)
    tensor(name, weight, "weight", dim=2, dtypes=FLOAT_DTYPES)
    v, h = weight.shape
    if hidden.shape[-1] != h:
        raise ValueError(
            f"{name}: hidden's last dim ({hidden.shape[-1]}) must equal weight's H = weight.shape[1] ({h}); "
            f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)}"
        )
    if v == 0:
        raise ValueError(f"{name}: weight must have at least one vocabulary row, got shape {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"{name}: weight must have hidden's dtype {hidden.dtype}, got {weight.dtype}")
    same_device(name, "weight", weight, "hidden", hidden)
    if bias is not None:
        tensor(name, bias, "bias", dim=1, dtypes=FLOAT_DTYPES)
        if bias.shape[0] != v:
            raise ValueError(f"{name}: bias must have shape ({v},) (weight's V), got {tuple(bias.shape)}")
        if bias.dtype != hidden.dtype:
            raise TypeError(f"{name}: bias must have hidden's dtype {hidden.dtype}, got {bias.dtype}")
        same_device(name, "bias", bias, "hidden", hidden)
    return v, h


def labels(name: str, t, what: str, hidden: torch.Tensor, vocab: int, ignore_index: int | None) -> torch.Tensor:
    """Integer labels shaped like hidden's leading dims, on its device; their values are checked
    (one host read, see the module docstring) to lie in [0, vocab) or equal ``ignore_index``."""
    tensor(name, t, what, dtypes=INDEX_DTYPES)
    if tuple(t.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"{name}: {what} must have shape {tuple(hidden.shape[:-1])} (hidden's leading dims), got {tuple(t.shape)}"
        )
    same_device(name, what, t, "hidden", hidden)
    if t.numel() and checking_values(t):
        bad = (t < 0) | (t >= vocab)
        if ignore_index is not None:
            bad &= t != ignore_index
        if bool(bad.any()):
            v = int(t[bad].reshape(-1)[0])
            also = "" if ignore_index is None else f" and is not ignore_index ({ignore_index})"
            raise ValueError(f"{name}: {what} holds {v}, outside [0, {vocab}) (weight's V){also}")
    return t


def in_range(name: str, v, what: str, lo: float, hi: float | None = None) -> float:
    """A finite real in [lo, hi] (``hi`` None: >= lo; a positive one is positive_float)."""
    f = real(name, v, what)
    if f < lo or (hi is not None and f > hi):
        raise ValueError(f"{name}: {what} must be in [{lo}, {'inf)' if hi is None else f'{hi}]'}, got {v!r}")
    return f


def float_dtype(name: str, v, what: str) -> torch.dtype | None:
    """None, or a floating torch.dtype (an output dtype)."""
    if v is None:
        return None
    if not isinstance(v, torch.dtype) or not v.is_floating_point:
        raise TypeError(f"{name}: {what} must be None or a floating torch.dtype, got {v!r}")
    return v


def filter_eps_value(name: str, v, dtype: torch.dtype) -> float:
    """The gradient filter's threshold: "auto" (cut-cross-entropy's rule, finfo(dtype).eps / 32),
    a float >= 0, or None / 0 (off)."""
    if v is None:
        return 0.0
    if isinstance(v, str):
        if v != "auto":
            raise ValueError(f"{name}: filter_eps must be 'auto', a float >= 0 or None, got {v!r}")
        return torch.finfo(dtype).eps / 32
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(float(v)) and v >= 0):
        raise ValueError(f"{name}: filter_eps must be 'auto', a float >= 0 or None, got {v!r}")
    return float(v)


# ---- GRPO (no value checks: nothing is indexed by the values) -----------------------------------
MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, *FLOAT_DTYPES)
SCALE_REWARDS = (True, False, "group", "batch", "none")


def _tokens(name: str, t, what: str, shape, device, dtypes, optional: bool = False):
    if t is None and optional:
        return None
    tensor(name, t, what, dtypes=dtypes)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: {what} must have shape {tuple(shape)} (log-probs [B, T]), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: {what} is on {t.device}, expected the log-probs' device {device}")
    return t


def grpo(name: str, shape, device, old, ref, advantages, mask, eps_low, eps_high, beta, loss_type, t_max, items):
    """The GRPO loss's arguments for log-probs of ``shape`` [B, T] on ``device``: old / ref
    log-probs [B, T] float or None (ref None only with beta 0), advantages [B] float, mask [B, T]
    bool / integer / float; returns (eps_low, eps_high, beta, loss_type, T_max, num_items)."""
    _tokens(name, old, "old_log_probs", shape, device, FLOAT_DTYPES, optional=True)
    _tokens(name, ref, "ref_log_probs", shape, device, FLOAT_DTYPES, optional=True)
    _tokens(name, advantages, "advantages", shape[:1], device, FLOAT_DTYPES)
    _tokens(name, mask, "mask", shape, device, MASK_DTYPES)
    el = in_range(name, eps_low, "epsilon_low", 0.0, 1.0)
    eh = in_range(name, eps_high, "epsilon_high", 0.0)
    b = in_range(name, beta, "beta", 0.0)
    if ref is None and b != 0.0:
        raise ValueError(f"{name}: ref_log_probs is None but beta = {beta!r}: pass the reference log-probs or beta=0")
    lt = choice(name, loss_type, "loss_type", GRPO_LOSS_TYPES)
    t_max = shape[1] if t_max is None else integer(name, t_max, "max_completion_length", 1)
    if items is not None:
        if isinstance(items, torch.Tensor):
            tensor(name, items, "num_items_in_batch", dim=0)  # a device scalar is used as is (no sync)
        else:
            items = in_range(name, items, "num_items_in_batch", 0.0)  # 0 (all masked) is clamped to 1
    return el, eh, b, lt, t_max, items


def rewards(name: str, r, group_size, scale_rewards) -> int:
    """rewards [B] float, group_size an int >= 1 dividing B, scale_rewards one of SCALE_REWARDS."""
    tensor(name, r, "rewards", dim=1, dtypes=FLOAT_DTYPES)
    g = integer(name, group_size, "group_size", 1)
    if r.shape[0] % g:
        raise ValueError(f"{name}: group_size ({g}) must divide the batch (rewards.shape[0] = {r.shape[0]})")
    if not any(scale_rewards is s if isinstance(s, bool) else scale_rewards == s for s in SCALE_REWARDS):
        raise ValueError(f"{name}: scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    return g
