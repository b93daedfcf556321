"""MoE family launchers for the csrc builds (moe_align only; contract: docs/ARCHITECTURE.md and
pygen/ops/moe.py). CPU tensors go to ``pygen._C`` (OpenMP, ``torch.get_num_threads()`` threads),
CUDA tensors to ``pygen._cuda`` on the tensor's current stream. The kernels live in csrc/moe/
(moe.cuh states the algorithm); the math is pygen/ref/moe.py's ``moe_align``.
"""

from __future__ import annotations

import torch

from .. import _ext

SLOT_BLOCK = 1024  # csrc/moe/moe_launch.h kSlotBlock


def align_workspace_size(num_slots: int, num_experts: int) -> int:
    """int32 elements of the zero-filled workspace align_fwd needs."""
    nb = max(1, -(-num_slots // SLOT_BLOCK))
    return nb * num_experts + num_experts


_module = _ext.native_module
_arg = _ext.native_arg


def align_fwd(ids, num_experts, block_size, sorted_ids, expert_ids, ntpp, starts, workspace):
    """ids: flat contiguous int32/int64 [S]; outputs int32 contiguous (see pygen.ops.moe.moe_align)
    plus starts [E+1]; workspace int32 zero-filled [align_workspace_size(S, E)]."""
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"moe_align: ids must be int32 or int64, got {ids.dtype}")
    for name, t in (
        ("sorted_ids", sorted_ids),
        ("expert_ids", expert_ids),
        ("ntpp", ntpp),
        ("starts", starts),
        ("workspace", workspace),
    ):
        if t.dtype != torch.int32:
            raise TypeError(f"moe_align: {name} must be int32, got {t.dtype}")
        if t.device != ids.device:
            raise ValueError(f"moe_align: {name} is on {t.device}, expected {ids.device}")
    mod, ctx = _module(ids)
    mod.moe_align(
        _arg(ids.reshape(-1)),
        ids.dtype == torch.int64,
        int(num_experts),
        int(block_size),
        _arg(sorted_ids),
        _arg(expert_ids),
        _arg(ntpp),
        _arg(starts),
        _arg(workspace),
        ctx,
    )
    return None


def route_fwd(logits, bias, ids, weights, scoring, n_group, topk_group, norm, scale):
    """CPU build only. logits [T, E] with unit column stride (any float dtype); bias [E] contiguous
    in the compute dtype (float64 for float64 logits, else float32) or None; ids int32 [T, k] and
    weights (compute dtype) [T, k] contiguous."""
    if logits.device.type != "cpu":
        raise RuntimeError("moe_route: the csrc build of moe_route is CPU-only (the GPU runs Triton)")
    cdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if weights.dtype != cdt or (bias is not None and bias.dtype != cdt):
        raise TypeError(f"moe_route: weights and bias must be {cdt} for {logits.dtype} logits")
    if ids.dtype != torch.int32 or not ids.is_contiguous() or not weights.is_contiguous():
        raise TypeError("moe_route: ids must be contiguous int32 and weights contiguous")
    mod, ctx = _module(logits)
    mod.moe_route(
        _ext.dtype_code(logits),
        _arg(logits),
        None if bias is None else _arg(bias),
        _arg(ids),
        _arg(weights),
        int(n_group),
        int(topk_group),
        scoring == "softmax",
        bool(norm),
        float(scale),
        ctx,
    )
    return None


def _rows_dtype_ok(name, *tensors):
    for t in tensors:
        if t is not None and t.dtype not in _ext.DTYPE_CODE:
            raise TypeError(f"{name}: dtype {t.dtype} is not supported")


def _weights(w, like):
    """Routing weights as the contiguous compute-dtype vector the C++ loops read (float64 rows:
    float64, else float32)."""
    if w is None:
        return None
    cdt = torch.float64 if like.dtype == torch.float64 else torch.float32
    return w.reshape(-1).to(cdt).contiguous()


def permute_fwd(x, sorted_slots, top_k, out):
    """x [T, H] unit column stride; sorted_slots int32 [T*k]; out [T*k, H] contiguous."""
    _rows_dtype_ok("moe_permute", x, out)
    mod, ctx = _module(x)
    mod.moe_permute(_ext.dtype_code(x), _arg(x), _arg(sorted_slots), int(top_k), _arg(out), ctx)
    return None


def unpermute_fwd(y, row_of_slot, weights, top_k, out):
    """y [T*k, H] unit column stride; row_of_slot int32 [T*k] (-1: none); weights [T, k] or None;
    out [T, H] contiguous, y's dtype."""
    _rows_dtype_ok("moe_unpermute", y, out)
    mod, ctx = _module(y)
    w = _weights(weights, y)
    mod.moe_unpermute(
        _ext.dtype_code(y), _arg(y), _arg(row_of_slot), None if w is None else _arg(w), int(top_k), _arg(out), ctx
    )
    return None


def unpermute_bwd(grad, y, sorted_slots, weights, top_k, dy, dw):
    """grad [T, H] contiguous (y's dtype); dy [T*k, H] contiguous or None; dw [T, k] or None
    (filled here: computed in the compute dtype, then cast into dw)."""
    _rows_dtype_ok("moe_unpermute", grad, y)
    mod, ctx = _module(y)
    w = _weights(weights, y)
    cdt = torch.float64 if y.dtype == torch.float64 else torch.float32
    dwc = None
    if dw is not None:
        dwc = torch.zeros(dw.numel(), dtype=cdt, device=dw.device)
    mod.moe_unpermute_bwd(
        _ext.dtype_code(y),
        _arg(grad.to(y.dtype).contiguous()),
        _arg(y),
        _arg(sorted_slots),
        None if w is None else _arg(w),
        int(top_k),
        None if dy is None else _arg(dy),
        None if dwc is None else _arg(dwc),
        ctx,
    )
    if dw is not None:
        dw.copy_(dwc.view(dw.shape))
    return None
