"""torch.library registration shared by every op family.

Each (op, backend) pair becomes one ``torch.library.custom_op`` named ``pygen::<op>_<backend>``
with a fake implementation (shape/dtype only, sharing the allocation helper with the real one)
and, when the op is differentiable, ``register_autograd`` wiring a backward op
``pygen::<op>_backward_<backend>``. Triton ops are custom ops too (docs/ARCHITECTURE.md says
why triton_op is not used).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_OPS: dict[str, object] = {}


def define(name: str, schema: str, impl: Callable, fake: Callable):
    """Register ``pygen::<name>`` with an explicit schema; returns the op's Python callable."""
    op = torch.library.custom_op(f"pygen::{name}", impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    _OPS[name] = op
    return op


def get(name: str):
    """The registered op ``pygen::<name>`` (KeyError when it was never defined)."""
    return _OPS[name]


def registered() -> list[str]:
    return sorted(_OPS)
