"""MoE family launchers for the csrc builds (moe_align, moe_permute / moe_unpermute, and the
CPU-only moe_route; contract: docs/ARCHITECTURE.md and pygen/ops/moe.py). Each is one
``pygen._ext.call``: CPU tensors go to ``pygen._C`` (OpenMP, ``torch.get_num_threads()``
threads), CUDA tensors to ``pygen._cuda`` on the tensor's current stream. csrc/moe/moe_bind.h
checks ranks, sizes, dtypes and strides on every call; the kernels live in csrc/moe/ (moe.cuh
states the algorithm) and the math is pygen/ref/moe.py's.
"""

from __future__ import annotations

import torch

from .._ext import call, launcher

SLOT_BLOCK = 1024  # csrc/moe/moe_launch.h kSlotBlock


def align_workspace_size(num_slots: int, num_experts: int) -> int:
    """int32 elements of the zero-filled workspace align_fwd needs."""
    nb = max(1, -(-num_slots // SLOT_BLOCK))
    return nb * num_experts + num_experts


# (ids flat contiguous int32/int64 [S], num_experts, block_size, sorted_ids, expert_ids, ntpp,
#  starts [E+1], workspace int32 zero-filled [align_workspace_size(S, E)]); outputs int32
align_fwd = launcher("moe_align")
# CPU build only: (logits [T, E] unit column stride, bias [E] or None and weights [T, k] in the
# compute dtype (float64 for float64 logits, else float32), ids int32 [T, k], scoring, n_group,
# topk_group, norm, scale)
route_fwd = launcher("moe_route")
# (x [T, H] unit column stride, sorted_slots int32 [T*k], top_k, out [T*k, H] contiguous)
permute_fwd = launcher("moe_permute")


def _cdt(rows: torch.Tensor) -> torch.dtype:
    """The compute dtype of the C++ loops: float64 for float64 rows, else float32."""
    return torch.float64 if rows.dtype == torch.float64 else torch.float32


def _compute(w: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """``w`` as the contiguous flat compute-dtype vector the C++ loops read."""
    return None if w is None else w.reshape(-1).to(_cdt(like)).contiguous()


def unpermute_fwd(
    y: torch.Tensor, row_of_slot: torch.Tensor, weights: torch.Tensor | None, top_k: int, out: torch.Tensor
) -> None:
    """y [T*k, H] unit column stride; row_of_slot int32 [T*k] (-1: none); weights [T, k] or None;
    out [T, H] contiguous, y's dtype."""
    call("moe_unpermute", y, row_of_slot, _compute(weights, y), top_k, out)


def unpermute_bwd(
    grad: torch.Tensor,
    y: torch.Tensor,
    sorted_slots: torch.Tensor,
    weights: torch.Tensor | None,
    top_k: int,
    dy: torch.Tensor | None,
    dw: torch.Tensor | None,
) -> None:
    """grad [T, H] (cast to y's dtype); dy [T*k, H] contiguous or None; dw [T, k] or None (filled
    here: computed in the compute dtype, then cast into dw)."""
    dwc = None if dw is None else torch.zeros(dw.numel(), dtype=_cdt(y), device=dw.device)
    call("moe_unpermute_bwd", grad.to(y.dtype).contiguous(), y, sorted_slots, _compute(weights, y), top_k, dy, dwc)
    if dw is not None:
        dw.copy_(dwc.view(dw.shape))
