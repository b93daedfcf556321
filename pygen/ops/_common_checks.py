"""Argument checks shared by every family's validation (pygen/ops/_<family>_checks.py).

Meta tensors (``device="meta"``) carry shapes but no data. pygen's public ops read argument
values (box coordinates, expert ids, page tables) and launch kernels on real memory, so a meta
argument is refused up front with an error naming it, instead of failing deep inside a value
check with torch's "Cannot copy out of meta tensor". Shape-only tracing is served by
torch.compile: its fake tensors report a real device, skip the value checks and run the ops' fake
implementations.

Value checks (those that read tensor values on the host, one synchronisation each on a GPU) run
only where :func:`checking_values` says so: the library-wide switch (pygen.set_value_checks /
pygen.value_checks / PYGEN_VALUE_CHECKS, pygen/_value_checks.py) is on, and nothing is being
traced (torch.compile), captured (CUDA graph) or faked. Every family asks this one predicate.
"""

from __future__ import annotations

import torch

from .._value_checks import value_checks_enabled


def not_meta(name: str, t, what: str) -> None:
    """Raise a ValueError naming ``what`` when ``t`` is a tensor on the meta device."""
    if isinstance(t, torch.Tensor) and t.device.type == "meta":
        raise ValueError(
            f"{name}: {what} is on the meta device, which holds no data; pygen ops take "
            f"CPU or CUDA tensors (torch.compile traces them with fake tensors)"
        )


def _fake(t) -> bool:
    if isinstance(t, (list, tuple)):
        return any(_fake(x) for x in t)
    return isinstance(t, torch._subclasses.FakeTensor)


def tracing(*tensors) -> bool:
    """True while torch.compile traces, while the current CUDA stream captures a graph, or when one
    of ``tensors`` (tensors or lists of them) is a fake tensor: tensor values cannot be read on
    the host then (a read would break the graph, fail the capture, or has no data)."""
    if torch.compiler.is_compiling():
        return True
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return True
    return _fake(tensors)


def checking_values(*tensors) -> bool:
    """Whether value checks on ``tensors`` run now: the switch is on and :func:`tracing` is false."""
    if torch.compiler.is_compiling():  # first, so that dynamo traces no global read
        return False
    return value_checks_enabled() and not tracing(*tensors)
