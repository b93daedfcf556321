"""``fx_leaf``: a public op that torch.fx records as one call node.

``torch.fx.symbolic_trace`` runs a module's forward with Proxy arguments. pygen's ops validate
their arguments by value first (shapes, dtypes, devices a Proxy does not have) and would raise
"input must be a torch.Tensor, got Proxy"; torchvision's RoI functions trace because they are leaf
functions to FX. An op wrapped here sees a Proxy among its arguments (top level, or inside a list,
tuple or dict one level down: boxes and feature lists) and returns the tracer's call node for
itself instead; with real tensors it is the op. The node's target is the wrapped op, so the traced
GraphModule calls it (validation and backend choice included) when it runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch.fx
from torch.fx import _symbolic_trace

F = TypeVar("F", bound=Callable)


def _first_proxy(values) -> torch.fx.Proxy | None:
    for v in values:
        if isinstance(v, torch.fx.Proxy):
            return v
        if isinstance(v, (list, tuple)):
            for w in v:
                if isinstance(w, torch.fx.Proxy):
                    return w
        elif isinstance(v, dict):
            for w in v.values():
                if isinstance(w, torch.fx.Proxy):
                    return w
    return None


def _tracing() -> bool:
    """torch.fx's "a symbolic trace is running" flag (set by symbolic_trace, torch.export too), read
    as an attribute: the scan below costs ~1 µs a call, the flag ~0.05 µs, and the ops are µs-scale
    on small CPU problems. A torch without the attribute gets the scan on every call."""
    return getattr(_symbolic_trace, "_is_fx_tracing_flag", True)


def fx_leaf(fn: F) -> F:
    @functools.wraps(fn)
    def op(*args, **kwargs):
        if not _tracing():
            return fn(*args, **kwargs)
        proxy = _first_proxy(args)
        if proxy is None:  # (not ``or``: a Proxy has no truth value)
            proxy = _first_proxy(kwargs.values())
        if proxy is not None:
            return proxy.tracer.create_proxy("call_function", op, args, kwargs)
        return fn(*args, **kwargs)

    return op  # type: ignore[return-value]
