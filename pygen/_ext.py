"""Loading of the compiled modules and the glue that hands tensors to them.

The C++/CUDA modules take raw integer data pointers, sizes, strides and a stream handle; they
include no torch headers, so one build works with any torch. Either module may be missing (not
built, or built for another platform): importing pygen still works and the reason is kept for
``pygen info``.
"""

from __future__ import annotations

import functools
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


# dtype codes of csrc/common/dtype.h (DtypeCode); any other dtype crosses as -1 (refused there)
DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3, torch.int32: 4, torch.int64: 5}


# (function name, device type) -> the pybind11 function: looked up once (a launch is µs-scale on
# small CPU problems, where a module lookup and getattr per call showed in `pygen bench --quick`)
_KERNELS: dict[tuple[str, str], object] = {}


def _find_kernel(fn: str, device_type: str):
    if device_type not in ("cpu", "cuda"):
        raise RuntimeError(f"{fn}: pygen's native kernels run on cpu or cuda tensors, not {device_type}")
    name = "_C" if device_type == "cpu" else "_cuda"
    mod = load(name)
    if mod is None:
        raise RuntimeError(f"pygen.{name} is not available: {load_error(name)}")
    kernel = getattr(mod, fn, None)
    if kernel is None:
        raise RuntimeError(f"{fn}: pygen.{name} has no such kernel (not built for {device_type} tensors)")
    return kernel


def _module_and_ctx(fn: str, device: torch.device):
    """``fn`` of the compiled module for ``device`` and the ctx it takes last: pygen._cuda's with
    [device index, current stream], or pygen._C's with [torch's thread count] (so both OpenMP
    pools agree). RuntimeError when the module is missing or has no ``fn``."""
    kernel = _KERNELS.get((fn, device.type))
    if kernel is None:
        kernel = _KERNELS[fn, device.type] = _find_kernel(fn, device.type)
    if device.type == "cpu":
        return kernel, [torch.get_num_threads()]
    index = device.index if device.index is not None else torch.cuda.current_device()
    return kernel, [index, torch.cuda.current_stream(index).cuda_stream]


_PLAIN = frozenset({int, float, bool, str, type(None)})


def _wrong_device(fn: str, i: int, t: torch.Tensor, device: torch.device):
    raise ValueError(f"{fn}: argument {i} is on {t.device}, expected {device} (the first tensor's)")


def call(fn: str, *args):
    """The one path into the compiled modules: ``pygen.<_C | _cuda>.<fn>(*args, ctx)``, the
    module chosen by the device of the first tensor argument.

    Each tensor (also inside a list or tuple) crosses as ``(data_ptr, sizes, strides, dtype code)``
    and must be on that same device (a ValueError otherwise: a pointer of another device would be
    read as this one's); None and Python scalars cross as they are. The bindings check the rest of
    what memory safety needs (csrc/common/tensor_arg.h). Argument validation with friendly
    messages is pygen.ops' job, before the registered op runs.
    """
    device = None
    crossed = []
    # one flat loop, torch.Size / stride tuples handed over as they are (pybind11 takes any
    # sequence): µs-scale CPU ops pay this on every call (`pygen bench --quick`'s pygen:cpu rows)
    for i, a in enumerate(args):
        if type(a) in _PLAIN:  # most arguments are sizes and flags: one set lookup
            crossed.append(a)
        elif isinstance(a, torch.Tensor):
            if device is None:
                device = a.device
            elif a.device != device:
                _wrong_device(fn, i, a, device)
            crossed.append((a.data_ptr(), a.shape, a.stride(), DTYPE_CODE.get(a.dtype, -1)))
        elif isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            if device is None:
                device = a[0].device
            for t in a:
                if t.device != device:
                    _wrong_device(fn, i, t, device)
            crossed.append([(t.data_ptr(), t.shape, t.stride(), DTYPE_CODE.get(t.dtype, -1)) for t in a])
        else:
            crossed.append(a)
    if device is None:
        raise ValueError(f"{fn}: no tensor argument")
    kernel, ctx = _module_and_ctx(fn, device)
    return kernel(*crossed, ctx)


def launcher(fn: str):
    """``call`` bound to one function name: a launcher of a family's pygen/native module."""
    return functools.partial(call, fn)
