"""Argument validation for the masked autoregressive ops: every bad argument raises a
ValueError / TypeError naming it, before any kernel is launched.

Shape, dtype and device checks read no data. One check reads device values: an explicit
``mask`` must hold 0 / 1 values (one host synchronisation). It is skipped when value checks are
off (pygen.set_value_checks / PYGEN_VALUE_CHECKS), while torch.compile traces and under CUDA graph
capture (pygen/ops/_common_checks.py::checking_values); any nonzero entry then counts as 1.
made_sample also checks that its degrees make the network autoregressive, but on the host copy
of the degrees that it makes anyway to build its schedule (pygen/ops/_made_sample.py), so that
check costs no synchronisation of its own and always runs.
"""

from __future__ import annotations

import torch

from ..ref import made as ref
from ._common_checks import FLOAT_DTYPES, INDEX_DTYPES, checking_values, tensor

INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def floating(name: str, t: torch.Tensor, what: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: {what} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def activation(name: str, act) -> str:
    if act is None:
        return "none"
    if not isinstance(act, str) or act not in ref.ACTIVATIONS:
        raise ValueError(f"{name}: activation must be None or one of {ref.ACTIVATIONS}, got {act!r}")
    return act


def linear_args(name: str, x, weight, bias):
    """x [..., I], weight [O, I], bias [O] or None: same dtype and device."""
    tensor(name, x, "x")
    tensor(name, weight, "weight")
    floating(name, x, "x")
    if x.dim() < 1:
        raise ValueError(f"{name}: x must have at least 1 dimension [..., in_features], got a scalar")
    if weight.dim() != 2:
        raise ValueError(f"{name}: weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{name}: weight dtype {weight.dtype} must match x dtype {x.dtype}")
    if weight.device != x.device:
        raise ValueError(f"{name}: weight is on {weight.device} but x is on {x.device}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{name}: x has {x.shape[-1]} features in its last dimension but weight expects "
            f"in_features = {weight.shape[1]} (weight shape {tuple(weight.shape)})"
        )
    if bias is not None:
        tensor(name, bias, "bias")
        if bias.shape != (weight.shape[0],):
            raise ValueError(
                f"{name}: bias must have shape [{weight.shape[0]}] (out_features), got {tuple(bias.shape)}"
            )
        if bias.dtype != x.dtype:
            raise TypeError(f"{name}: bias dtype {bias.dtype} must match x dtype {x.dtype}")
        if bias.device != x.device:
            raise ValueError(f"{name}: bias is on {bias.device} but x is on {x.device}")


def degrees(name: str, d, size: int, what: str, device: torch.device) -> torch.Tensor:
    """A 1-D integer tensor of ``size`` entries on ``device``; returned contiguous (int32 / int64
    kept, narrower integer types widened to int64)."""
    tensor(name, d, what)
    if d.dtype not in INT_DTYPES:
        raise TypeError(f"{name}: {what} must be an integer tensor, got {d.dtype}")
    if d.dim() != 1 or d.shape[0] != size:
        raise ValueError(f"{name}: {what} must have shape [{size}], got {tuple(d.shape)}")
    if d.device != device:
        raise ValueError(f"{name}: {what} is on {d.device} but x is on {device}")
    if d.dtype not in INDEX_DTYPES:
        d = d.to(torch.int64)
    return d.contiguous()


def explicit_mask(name: str, mask, weight: torch.Tensor) -> torch.Tensor:
    """A [O, I] mask of 0 / 1 values (bool or numbers) on weight's device -> contiguous bool."""
    tensor(name, mask, "mask")
    if mask.shape != weight.shape:
        raise ValueError(f"{name}: mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    if mask.device != weight.device:
        raise ValueError(f"{name}: mask is on {mask.device} but weight is on {weight.device}")
    if mask.dtype == torch.bool:
        return mask.contiguous()
    if mask.is_complex():
        raise TypeError(f"{name}: mask must be bool or real 0/1 values, got {mask.dtype}")
    if mask.numel() and checking_values(mask):
        if bool(((mask != 0) & (mask != 1)).any()):  # one host synchronisation
            raise ValueError(f"{name}: mask must hold only 0 and 1 (a weight-scaling mask is not a mask)")
    return (mask != 0).contiguous()


def network(name: str, weights, biases, degrees_list, device, dtype):
    """made_sample's feedforward network: L weights [H_l, H_{l-1}], L biases (or None), L+1 degree
    vectors (input degrees first, output degrees last)."""
    if not isinstance(weights, (list, tuple)) or not weights:
        raise TypeError(f"{name}: weights must be a non-empty list of [out, in] tensors")
    if not isinstance(biases, (list, tuple)) or len(biases) != len(weights):
        raise ValueError(f"{name}: biases must be a list with one entry (tensor or None) per weight")
    if not isinstance(degrees_list, (list, tuple)) or len(degrees_list) != len(weights) + 1:
        raise ValueError(
            f"{name}: degrees must be a list of {len(weights) + 1} vectors (input degrees, "
            f"one per hidden layer, output degrees), got "
            f"{len(degrees_list) if isinstance(degrees_list, (list, tuple)) else type(degrees_list).__name__}"
        )
    out = []
    for l, w in enumerate(weights):
        tensor(name, w, f"weights[{l}]")
        if w.dim() != 2:
            raise ValueError(f"{name}: weights[{l}] must be 2-D, got shape {tuple(w.shape)}")
        if w.dtype != dtype or w.device != device:
            raise TypeError(f"{name}: weights[{l}] must be {dtype} on {device}, got {w.dtype} on {w.device}")
        if l and w.shape[1] != weights[l - 1].shape[0]:
            raise ValueError(
                f"{name}: weights[{l}] takes {w.shape[1]} inputs but weights[{l - 1}] gives "
                f"{weights[l - 1].shape[0]} outputs"
            )
        b = biases[l]
        if b is not None:
            tensor(name, b, f"biases[{l}]")
            if b.shape != (w.shape[0],) or b.dtype != dtype or b.device != device:
                raise ValueError(
                    f"{name}: biases[{l}] must be [{w.shape[0]}] {dtype} on {device}, got "
                    f"{tuple(b.shape)} {b.dtype} on {b.device}"
                )
        out.append(degrees(name, degrees_list[l], w.shape[1], f"degrees[{l}]", device))
    out.append(degrees(name, degrees_list[-1], weights[-1].shape[0], f"degrees[{len(weights)}]", device))
    return out
