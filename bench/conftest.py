"""pytest configuration of the benchmark suite (``pytest bench/ --benchmark-json=out.json``).

Environment:
    PYGEN_BENCH_FULL=1       the default (full) shapes instead of the quick ones
    PYGEN_BENCH_DEVICE       cpu or cuda (default: cuda when available)
    PYGEN_BENCH_DTYPE        float32 (default), bfloat16, float16
    PYGEN_BENCH_COMPILE=1    also time torch.compile of the reference (compiles take ~15 s each
                             on a 2-core CPU, so they are off unless asked for or FULL is set)

Without pytest-benchmark installed a stand-in ``benchmark`` fixture runs each target once, so
the suite still checks every implementation against the reference.
"""

from __future__ import annotations

import os

import pytest
import torch

# Triton runs under its interpreter when no GPU is present. This must happen here, before pytest
# imports any bench/test_bench_*.py: TRITON_INTERPRET is read when each @triton.jit decorator
# runs, including those of triton.language's own helpers (tl.cdiv, tl.sigmoid, ...) at
# ``import triton``, and bench modules import triton as a side effect while being collected
# (bench/made.py's module-level torch.compiler.disable imports torch._dynamo, which imports
# triton). Set later, the kernels become InterpretedFunctions but tl.cdiv & co. stay
# compiled-mode JITFunctions, which the interpreter cannot call ("Cannot call @triton.jit'd
# outside of the scope of a kernel"). See bench/test_bench_interpreter_env.py.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import pytest_benchmark  # noqa: F401 (probe: the pytest view needs pytest-benchmark)

    HAVE_PYTEST_BENCHMARK = True
except ImportError:
    HAVE_PYTEST_BENCHMARK = False


if not HAVE_PYTEST_BENCHMARK:

    class _OneShot:
        def __init__(self):
            self.extra_info = {}

        def pedantic(self, target, args=(), kwargs=None, setup=None, rounds=1, warmup_rounds=0, iterations=1):
            if setup is not None:
                setup()
            return target(*args, **(kwargs or {}))

        def __call__(self, target, *args, **kwargs):
            return target(*args, **kwargs)

    @pytest.fixture
    def benchmark():
        return _OneShot()
