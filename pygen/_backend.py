"""Backend choice: ``cuda`` (csrc on GPU), ``triton`` (kernels/), ``cpu`` (csrc host build) and
``reference`` (pygen.ref).

Order of choice (docs/ARCHITECTURE.md): the op's ``backend=`` argument, then the
``PYGEN_BACKEND`` environment variable, then the per-op default table keyed by device type and
dtype. An explicit request (argument) for a backend that cannot run raises with the reason;
``PYGEN_BACKEND`` and the default table fall back to the next available backend, and a fallback
from ``PYGEN_BACKEND`` warns once per (op, device, backend used) (``pygen info`` lists the ops a
set PYGEN_BACKEND has no kernel for).
"""

from __future__ import annotations

import os
import warnings
from functools import cache

import torch

from . import _ext
from .kernels._device import interpreting as triton_interpreting

# Load the compiled modules now (well under a millisecond; a missing one only records why):
# torch.compile cannot trace importlib, so a process whose first pygen call is a compiled one
# failed in the backend choice's probe.
_ext.load("_C")
_ext.load("_cuda")

BACKENDS = ("cuda", "triton", "cpu", "reference")


# The oldest Triton every family's kernels compile with offline and pass their interpreter tests
# under (3.2 and 3.3 were checked too: 3.2 has no tuple kernel arguments, as the RoI kernels take, and
# aborts compiling two specs; 3.3's interpreter fails the flows kernels and it has no tensor
# descriptors). pyproject.toml does not ask pip for it (torch's CUDA wheels pin their own Triton, and
# asking would upgrade torch): an older Triton turns this backend off, with this reason.
TRITON_MIN = (3, 4)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:2] if p.isdigit())


@cache
def _triton_error() -> str | None:
    try:
        import triton
        import triton.language  # noqa: F401 (probe: is triton.language importable)
    except Exception as exc:
        return f"triton not importable ({type(exc).__name__}: {exc})"
    if _version(triton.__version__) < TRITON_MIN:
        need = ".".join(map(str, TRITON_MIN))
        return f"triton {triton.__version__} is older than {need}, the oldest release pygen's Triton kernels run on"
    return None


def _triton_imported_uninterpreted() -> bool:
    """True when triton.language was imported before TRITON_INTERPRET was set: its own @jit
    helpers (tl.cdiv, ...) are then compiled-mode JITFunctions, which every interpreted kernel
    calling them fails on ("Cannot call @triton.jit'd outside of the scope of a kernel")."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    return isinstance(getattr(tl, "cdiv", None), JITFunction)


# families whose cpu backend is PyTorch code (pygen/ops/_<family>_cpu.py), not pygen._C: it runs
# wherever torch does, so a failed native build must not send them to the reference backend
TORCH_CPU_FAMILIES = frozenset({"losses"})


def backend_status(backend: str, device: torch.device | str, family: str | None = None) -> tuple[bool, str]:
    """(available, reason) for running ``backend`` on tensors of ``device`` (for an op of
    ``family``, when given: see TORCH_CPU_FAMILIES)."""
    dev = torch.device(device).type
    if backend == "reference":
        if dev == "cuda" and not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, "pure PyTorch"
    if backend == "cpu":
        if dev != "cpu":
            return False, f"the cpu backend runs on CPU tensors, not {dev}"
        if family in TORCH_CPU_FAMILIES:
            return True, "PyTorch (chunked; no pygen._C needed)"
        err = _ext.load_error("_C")
        return (False, f"pygen._C not built: {err}") if err else (True, "pygen._C (g++ -O3 -fopenmp)")
    if backend == "cuda":
        if dev != "cuda":
            return False, f"the cuda backend runs on CUDA tensors, not {dev}"
        err = _ext.load_error("_cuda")
        if err:
            return False, f"pygen._cuda not built: {err}"
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, "pygen._cuda (nvcc)"
    if backend == "triton":
        err = _triton_error()
        if err:
            return False, err
        if dev == "cuda":
            if not torch.cuda.is_available():
                return False, "no CUDA device"
            return True, "Triton on GPU"
        if dev == "cpu" and triton_interpreting():
            if _triton_imported_uninterpreted():
                return False, (
                    "triton was imported before TRITON_INTERPRET=1 was set (its tl.* "
                    "@jit helpers are not interpretable): set it before importing "
                    "triton or torch._dynamo"
                )
            return True, "Triton interpreter (TRITON_INTERPRET=1; slow, for tests)"
        return False, f"Triton needs a CUDA device (or TRITON_INTERPRET=1 on CPU), got {dev}"
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def available_backends(device: torch.device | str) -> list[str]:
    return [b for b in BACKENDS if backend_status(b, device)[0]]


# Fastest measured backend first; see docs/roi.md for the numbers behind each row.
_DEFAULT_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


def choose(
    op: str,
    device: torch.device,
    dtype: torch.dtype,
    backend: str | None = None,
    supported: tuple[str, ...] = BACKENDS,
    family: str | None = None,
) -> str:
    """Pick the backend for ``op`` (of ``family``) on ``device``/``dtype`` (module docstring)."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        if backend not in supported:
            raise ValueError(f"{op}: backend {backend!r} is not implemented (have {supported})")
        ok, why = backend_status(backend, device, family)
        if not ok:
            raise RuntimeError(f"{op}: backend {backend!r} is unavailable: {why}")
        return backend
    env = os.environ.get("PYGEN_BACKEND", "").strip()
    candidates = list(_DEFAULT_ORDER.get(torch.device(device).type, ("reference",)))
    if env:
        if env not in BACKENDS:
            raise ValueError(f"PYGEN_BACKEND must be one of {BACKENDS}, got {env!r}")
        candidates.insert(0, env)
    for b in candidates:
        if b in supported and backend_status(b, device, family)[0]:
            if dtype == torch.float64 and b == "triton":
                continue  # Triton kernels accumulate in float32; float64 goes to cpu/reference
            break
    else:
        b = "reference"
    if env and b != env:
        _warn_fallback(op, env, b, device, dtype, supported)
    return b


_WARNED: set[tuple[str, str, str, str]] = set()


def _warn_fallback(op: str, env: str, used: str, device, dtype, supported) -> None:
    """The PYGEN_BACKEND preference does not apply to this call: say so once per (op, device,
    preference, backend used)."""
    dev = torch.device(device).type
    key = (op, dev, env, used)
    if key in _WARNED:
        return
    _WARNED.add(key)
    if env not in supported:
        why = f"{op} has no {env} kernel (its backends: {', '.join(supported)})"
    elif env == "triton" and dtype == torch.float64:
        why = "the triton kernels do not take float64"
    else:
        why = backend_status(env, device)[1]
    warnings.warn(
        f"{op}: PYGEN_BACKEND={env} does not apply on {dev} ({why}); running the {used} backend",
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """warnings' stacklevel of the first frame outside the pygen package (the user's call)."""
    import sys

    frame, level = sys._getframe(2), 2  # frame k of this function is warnings.warn's stacklevel k
    while frame is not None and (frame.f_globals.get("__name__") or "").startswith("pygen"):
        frame, level = frame.f_back, level + 1
    return level


def choose_for(
    op: str,
    t: torch.Tensor,
    backend: str | None,
    supported: tuple[str, ...],
    float64_backends: tuple[str, ...] = ("reference",),
    family: str | None = None,
) -> str:
    """``choose`` for an op whose kernels accumulate in float32: float64 tensors may only use
    ``float64_backends`` (an explicit other backend is a TypeError naming the dtype)."""
    if t.dtype == torch.float64:
        f64 = tuple(b for b in supported if b in float64_backends)
        if backend is not None and backend in BACKENDS and backend not in f64:
            runs = " and ".join(f64) if f64 else "no"
            raise TypeError(
                f"{op}: backend {backend!r} does not support float64 "
                f"(float64 runs on the {runs} backend{'s' if len(f64) > 1 else ''})"
            )
        supported = f64
    return choose(op, t.device, t.dtype, backend, supported, family)
