"""Loading of the compiled modules and the glue that hands tensors to them.

The C++/CUDA modules take raw integer data pointers, sizes, strides and a stream handle; they
include no torch headers, so one build works with any torch. Either module may be missing (not
built, or built for another platform): importing pygen still works and the reason is kept for
``pygen info``.
"""

from __future__ import annotations

import importlib

import torch

_modules: dict[str, object] = {}
_errors: dict[str, str] = {}


def load(name: str):
    """Return the compiled module ``pygen.<name>`` or None; the import error is remembered."""
    if name not in _modules and name not in _errors:
        try:
            _modules[name] = importlib.import_module(f"pygen.{name}")
        except Exception as exc:  # ImportError, or an undefined symbol in a stale build
            _errors[name] = f"{type(exc).__name__}: {exc}"
    return _modules.get(name)


def load_error(name: str) -> str | None:
    load(name)
    return _errors.get(name)


def host():
    """pygen._C, the host (CPU, OpenMP) build of csrc/, or None."""
    return load("_C")


def cuda():
    """pygen._cuda, the CUDA build of csrc/, or None."""
    return load("_cuda")


# dtype codes understood by csrc/common/dtype.h
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODE[t.dtype]


def stream_of(t: torch.Tensor) -> int:
    """The current CUDA stream handle for t's device (0 for CPU tensors)."""
    if t.is_cuda:
        return torch.cuda.current_stream(t.device).cuda_stream
    return 0


def native_module(t: torch.Tensor):
    """(module, ctx) for a csrc launcher on t's device: pygen._cuda with [device index, stream] or
    pygen._C with [torch's thread count] (so both OpenMP pools agree); RuntimeError when missing."""
    if t.device.type == "cuda":
        mod = cuda()
        if mod is None:
            raise RuntimeError(f"pygen._cuda is not available: {load_error('_cuda')}")
        return mod, [t.device.index if t.device.index is not None else torch.cuda.current_device(), stream_of(t)]
    if t.device.type == "cpu":
        mod = host()
        if mod is None:
            raise RuntimeError(f"pygen._C is not available: {load_error('_C')}")
        return mod, [torch.get_num_threads()]
    raise RuntimeError(f"pygen native kernels run on cpu or cuda tensors, not {t.device.type}")


def native_arg(t: torch.Tensor):
    """A tensor as the bindings take it: (data pointer, sizes, strides)."""
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
