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

import math
import numbers

import torch

from .._value_checks import value_checks_enabled


def dtype_names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def tensor(name: str, t, what: str, *, dim: int | None = None, min_dim: int | None = None, dtypes=None) -> torch.Tensor:
    """The one tensor validator: a torch.Tensor, not on the meta device, of one of ``dtypes``
    (when given), with exactly ``dim`` / at least ``min_dim`` dimensions (when given). Errors name
    ``what``; returns ``t``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(t).__name__}")
    has_data(name, t, what)
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: {what} must have dtype {dtype_names(dtypes)}; got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name}: {what} must be {dim}-D, got shape {tuple(t.shape)}")
    if min_dim is not None and t.dim() < min_dim:
        raise ValueError(f"{name}: {what} must have at least {min_dim} dims, got shape {tuple(t.shape)}")
    return t


def same_device(name: str, what: str, t, ref_what: str, ref: torch.Tensor) -> None:
    """ValueError when ``t`` (None is accepted) is not on ``ref``'s device."""
    if t is not None and t.device != ref.device:
        raise ValueError(f"{name}: {what} is on {t.device}, expected {ref_what}'s device {ref.device}")


def flag(name: str, value, what: str) -> bool:
    """``value`` is a bool (TypeError naming ``what`` otherwise)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: {what} must be a bool, got {value!r}")
    return value


def _as_float(v) -> float:
    """float(v), but inf for an int past float's range (10**400) instead of an OverflowError."""
    try:
        return float(v)
    except OverflowError:
        return math.inf


def positive_float(name: str, value, what: str, *, none_ok: bool = False) -> float | None:
    """``value`` is a positive finite real (not a bool), returned as a float; ``none_ok``: or None."""
    if value is None and none_ok:
        return None
    or_none = " or None" if none_ok else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: {what} must be a positive float{or_none}, got {value!r}")
    v = _as_float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: {what} must be a positive finite float{or_none}, got {value!r}")
    return v


FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def integer(name: str, v, what: str, lo: int, hi: int | None = None) -> int:
    """``v`` is an int (not a bool) in [lo, hi] (``hi`` None: >= lo)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: {what} must be an int, got {v!r}")
    v = int(v)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: {what} must be {rng}, got {v}")
    return v


def real(name: str, v, what: str) -> float:
    """``v`` is a finite real (not a bool), returned as a float."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: {what} must be a float, got {v!r}")
    f = _as_float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name}: {what} must be finite, got {v!r}")
    return f


def choice(name: str, v, what: str, options) -> str:
    """``v`` is one of the strings ``options``."""
    if not isinstance(v, str) or v not in options:
        raise ValueError(f"{name}: {what} must be one of {tuple(options)}, got {v!r}")
    return v


def has_data(name: str, t, what: str) -> None:
    """Raise a ValueError naming ``what`` when ``t`` is a tensor whose data the kernels cannot
    read: on the meta device, or not strided (sparse, mkldnn: torch's own errors named none)."""
    if not isinstance(t, torch.Tensor):
        return
    if t.device.type == "meta":
        raise ValueError(
            f"{name}: {what} is on the meta device, which holds no data; pygen ops take "
            f"CPU or CUDA tensors (torch.compile traces them with fake tensors)"
        )
    # not while dynamo traces: its strict mode (autograd backward) bans reading .layout, and a
    # traced tensor is a dense fake
    if not torch.compiler.is_compiling() and t.layout != torch.strided:
        raise ValueError(f"{name}: {what} must be a dense (strided) tensor, got layout {t.layout}: call .to_dense()")


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


# Element offsets a 32-bit index reaches. The RoI, MADE and flow kernels compute offsets within
# one image / one sample / one weight in int32 (64-bit bases per image, row or RoI; half the
# registers of 64-bit pointer tiles): the ops refuse operands whose part spans more than this
# (tests lower it to exercise the refusals; tests/common/test_index_overflow.py lists the products).
MAX_SPAN = 2**31 - 1


def span(t: torch.Tensor, dims=None) -> int:
    """Elements from the first to the last element ``t`` addresses along ``dims`` (all by
    default), i.e. 1 + sum (size - 1) * |stride|; 0 for an empty tensor."""
    if t.numel() == 0:
        return 0
    dims = range(t.dim()) if dims is None else dims
    return 1 + sum((t.shape[d] - 1) * abs(t.stride(d)) for d in dims)


def fits_32bit(name: str, t: torch.Tensor, what: str, dims=None, part: str = "") -> None:
    """ValueError naming ``what`` when its elements along ``dims`` span more than MAX_SPAN."""
    n = span(t, dims)
    if n > MAX_SPAN:
        raise ValueError(
            f"{name}: {what}{part} spans {n} elements; the kernels index it with 32-bit offsets, "
            f"at most {MAX_SPAN} (2^31 - 1): split the call"
        )
