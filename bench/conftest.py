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

import pytest

try:
    import pytest_benchmark  # noqa: F401
    HAVE_PYTEST_BENCHMARK = True
except ImportError:
    HAVE_PYTEST_BENCHMARK = False


if not HAVE_PYTEST_BENCHMARK:
    class _OneShot:
        def __init__(self):
            self.extra_info = {}

        def pedantic(self, target, args=(), kwargs=None, setup=None, rounds=1, warmup_rounds=0,
                     iterations=1):
            if setup is not None:
                setup()
            return target(*args, **(kwargs or {}))

        def __call__(self, target, *args, **kwargs):
            return target(*args, **kwargs)

    @pytest.fixture
    def benchmark():
        return _OneShot()
