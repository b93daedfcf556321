"""Where a Triton launch runs: the one device guard of every launch, and the one interpreter check.

Triton launches on the *current* CUDA device, which on a multi-GPU machine need not be the device
of the tensors (cuda:1 tensors with cuda:0 current read through cuda:0's address space: an illegal
address, or silently wrong data). Every launcher runs under ``on_tensor_device(t)`` — directly, or
through the ``launches_on_device`` decorator on the launcher or on the op implementation that calls
it. Imports only torch, so pygen's op layer uses it without importing Triton.

``interpreting()``: Triton runs kernels on the CPU interpreter (TRITON_INTERPRET set and not "0");
the kernels then use the interpreter's small tiles and upcasts (its bf16 arithmetic and stores
differ from the GPU's). Triton itself reads the variable once, when it is imported (tests set it
first), so callers may take it once at import too.

``depth()``: how many guards are active on this thread's call stack (tests patch the launch and
assert every launch happens inside a guard, without needing a second GPU).
"""

from __future__ import annotations

import functools
import os
import threading

import torch

_local = threading.local()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def depth() -> int:
    return getattr(_local, "depth", 0)


class on_tensor_device:  # noqa: N801 (used as a context manager, named like one)
    """Context manager making ``t``'s CUDA device current (only counted for CPU tensors)."""

    __slots__ = ("_cuda",)

    def __init__(self, t: torch.Tensor):
        self._cuda = torch.cuda.device(t.device) if t.is_cuda else None

    def __enter__(self):
        if self._cuda is not None:
            self._cuda.__enter__()
        _local.depth = depth() + 1
        return self

    def __exit__(self, *exc):
        _local.depth = depth() - 1
        if self._cuda is not None:
            return self._cuda.__exit__(*exc)
        return False


def launches_on_device(fn):
    """Decorator: run ``fn`` with the device of its first tensor argument current."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if first is None:
            return fn(*args, **kwargs)
        with on_tensor_device(first):
            return fn(*args, **kwargs)

    return run
