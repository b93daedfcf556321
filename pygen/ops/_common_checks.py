"""Argument checks shared by every family's validation (pygen/ops/_<family>_checks.py).

Meta tensors (``device="meta"``) carry shapes but no data. pygen's public ops read argument
values (box coordinates, expert ids, page tables) and launch kernels on real memory, so a meta
argument is refused up front with an error naming it, instead of failing deep inside a value
check with torch's "Cannot copy out of meta tensor". Shape-only tracing is served by
torch.compile: its fake tensors report a real device, skip the value checks and run the ops' fake
implementations.
"""
from __future__ import annotations

import torch


def not_meta(name: str, t, what: str) -> None:
    """Raise a ValueError naming ``what`` when ``t`` is a tensor on the meta device."""
    if isinstance(t, torch.Tensor) and t.device.type == "meta":
        raise ValueError(f"{name}: {what} is on the meta device, which holds no data; pygen ops take "
                         f"CPU or CUDA tensors (torch.compile traces them with fake tensors)")
