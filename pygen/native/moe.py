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


def _module(t: torch.Tensor):
    if t.device.type == "cuda":
        mod = _ext.cuda()
        if mod is None:
            raise RuntimeError(f"pygen._cuda is not available: {_ext.load_error('_cuda')}")
        return mod, [t.device.index if t.device.index is not None else torch.cuda.current_device(),
                     _ext.stream_of(t)]
    if t.device.type == "cpu":
        mod = _ext.host()
        if mod is None:
            raise RuntimeError(f"pygen._C is not available: {_ext.load_error('_C')}")
        return mod, [torch.get_num_threads()]
    raise RuntimeError(f"pygen native kernels run on cpu or cuda tensors, not {t.device.type}")


def _arg(t: torch.Tensor):
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))


def align_fwd(ids, num_experts, block_size, sorted_ids, expert_ids, ntpp, starts, workspace):
    """ids: flat contiguous int32/int64 [S]; outputs int32 contiguous (see pygen.ops.moe.moe_align)
    plus starts [E+1]; workspace int32 zero-filled [align_workspace_size(S, E)]."""
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"moe_align: ids must be int32 or int64, got {ids.dtype}")
    for name, t in (("sorted_ids", sorted_ids), ("expert_ids", expert_ids), ("ntpp", ntpp), ("starts", starts),
                    ("workspace", workspace)):
        if t.dtype != torch.int32:
            raise TypeError(f"moe_align: {name} must be int32, got {t.dtype}")
        if t.device != ids.device:
            raise ValueError(f"moe_align: {name} is on {t.device}, expected {ids.device}")
    mod, ctx = _module(ids)
    mod.moe_align(_arg(ids.reshape(-1)), ids.dtype == torch.int64, int(num_experts), int(block_size),
                  _arg(sorted_ids), _arg(expert_ids), _arg(ntpp), _arg(starts), _arg(workspace), ctx)
    return None
