"""Argument validation for the MoE ops: every bad argument raises a ValueError/TypeError naming it,
before any kernel is launched. Shape/dtype/device checks are free; the one value check (expert
ids inside [0, num_experts)) reads the ids, which costs a host synchronisation on a GPU: it runs
when ``check_ids=True`` (the default) and value checks are on (pygen.set_value_checks /
PYGEN_VALUE_CHECKS), and is skipped while torch.compile traces or a CUDA graph is being captured
(pygen/ops/_common_checks.py::checking_values). The kernels never read or write out of bounds
whatever the ids are: an id outside [0, E) routes its slot nowhere (moe_align / moe_permute) and
contributes nothing (fused_moe).
"""

from __future__ import annotations

import torch

from ._common_checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    checking_values,
    choice,
    flag,
    has_data,
    integer,
    real,
    same_device,
    tensor,
)

MAX_EXPERTS = 1 << 16


def ids_in_range(name: str, ids: torch.Tensor, num_experts: int, check: bool) -> None:
    """Raise when an expert id is outside [0, num_experts) (one host sync; see module docstring)."""
    has_data(name, ids, "topk_ids")
    if not check or ids.numel() == 0 or not checking_values(ids):
        return
    lo, hi = torch.stack(torch.aminmax(ids)).tolist()  # one reduction, one host sync
    if lo < 0 or hi >= num_experts:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name}: topk_ids holds expert id {bad}, outside [0, {num_experts}) (num_experts={num_experts})"
        )


def topk_ids(name: str, ids, tokens: int | None = None) -> torch.Tensor:
    tensor(name, ids, "topk_ids", dim=2, dtypes=INDEX_DTYPES)
    if tokens is not None and ids.shape[0] != tokens:
        raise ValueError(f"{name}: topk_ids must have {tokens} rows (one per token), got {tuple(ids.shape)}")
    if ids.numel() >= 2**31 - 2**20:
        raise ValueError(f"{name}: topk_ids has {ids.numel()} slots; at most 2^31 - 2^20 are supported")
    return ids


def route(logits, top_k, scoring, bias, n_group, topk_group, norm, scale):
    name = "moe_route"
    tensor(name, logits, "router_logits", dim=2, dtypes=FLOAT_DTYPES)
    e = logits.shape[1]
    if e < 1:
        raise ValueError(f"{name}: router_logits must have at least one expert column, got {tuple(logits.shape)}")
    if e > MAX_EXPERTS:
        raise ValueError(f"{name}: at most {MAX_EXPERTS} experts are supported, got {e}")
    choice(name, scoring, "scoring", ("sigmoid", "softmax"))
    n_group = integer(name, n_group, "n_group", 1)
    if e % n_group:
        raise ValueError(f"{name}: the {e} experts cannot be divided into n_group={n_group} equal groups")
    # 0 (every expert masked) and top_k = 0 (no routed expert) are degenerate, but transformers
    # runs them, so they are accepted
    topk_group = integer(name, topk_group, "topk_group", 0)
    if topk_group > n_group:
        raise ValueError(f"{name}: topk_group={topk_group} must be <= n_group={n_group}")
    top_k = integer(name, top_k, "top_k", 0)
    # top_k may exceed the experts of the kept groups (transformers accepts it: the rest are
    # taken from the masked experts, see pygen/ref/moe.py); only more than E is impossible
    if top_k > e:
        raise ValueError(f"{name}: top_k={top_k} must be <= num_experts={e}")
    if bias is not None:
        tensor(name, bias, "e_score_correction_bias", dim=1, dtypes=FLOAT_DTYPES)
        if bias.shape[0] != e:
            raise ValueError(f"{name}: e_score_correction_bias must have shape ({e},), got {tuple(bias.shape)}")
        same_device(name, "e_score_correction_bias", bias, "router_logits", logits)
    flag(name, norm, "norm_topk_prob")
    scale = real(name, scale, "routed_scaling_factor")
    return top_k, n_group, topk_group, scale


def align(ids, num_experts, block_size):
    name = "moe_align"
    topk_ids(name, ids)
    e = integer(name, num_experts, "num_experts", 1, MAX_EXPERTS)
    b = integer(name, block_size, "block_size", 1, 1 << 12)
    if ids.numel() + e * (b - 1) >= 2**31:
        raise ValueError(f"{name}: T*k + num_experts*(block_size-1) must be < 2^31")
    return e, b


def fused(x, w1, w2, weights, ids, act, activations):
    name = "fused_moe"
    tensor(name, x, "hidden_states", dim=2, dtypes=FLOAT_DTYPES)
    t, h = x.shape
    tensor(name, w1, "w1", dim=3, dtypes=FLOAT_DTYPES)
    tensor(name, w2, "w2", dim=3, dtypes=FLOAT_DTYPES)
    e, two_i, h1 = w1.shape
    if h1 != h:
        raise ValueError(f"{name}: w1 must be [E, 2*I, H] with H={h} (hidden_states' last dim), got {tuple(w1.shape)}")
    if two_i % 2 or two_i == 0:
        raise ValueError(f"{name}: w1's second dim must be 2*I (gate rows, then up rows), got {two_i}")
    inter = two_i // 2
    if tuple(w2.shape) != (e, h, inter):
        raise ValueError(
            f"{name}: w2 must have shape {(e, h, inter)} ([E, H, I] from w1 {tuple(w1.shape)}), got {tuple(w2.shape)}"
        )
    if e < 1:
        raise ValueError(f"{name}: w1 must hold at least one expert")
    for what, w in (("w1", w1), ("w2", w2)):
        if w.dtype != x.dtype:
            raise TypeError(f"{name}: {what} must have hidden_states' dtype {x.dtype}, got {w.dtype}")
        same_device(name, what, w, "hidden_states", x)
    topk_ids(name, ids, tokens=t)
    tensor(name, weights, "topk_weights", dim=2, dtypes=FLOAT_DTYPES)
    if tuple(weights.shape) != tuple(ids.shape):
        raise ValueError(
            f"{name}: topk_weights must have topk_ids' shape {tuple(ids.shape)}, got {tuple(weights.shape)}"
        )
    same_device(name, "topk_ids", ids, "hidden_states", x)
    same_device(name, "topk_weights", weights, "hidden_states", x)
    choice(name, act, "activation", activations)
    s = ids.numel()
    # the kernels address rows with 32-bit offsets from 64-bit bases
    for what, v in (("T*H", t * h), ("T*k*H", s * h), ("T*k*2I", s * two_i), ("2I*H", two_i * h)):
        if v >= 2**31:
            raise ValueError(f"{name}: {what} = {v} must be < 2^31 (split hidden_states into chunks)")
    return e, inter
