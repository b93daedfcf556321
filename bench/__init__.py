"""Benchmark definitions, one module per op family, installed as ``pygen.bench`` (package_dir
mapping in setup.py). Each family module exposes ``FAMILY`` and ``cases(quick, device) -> list of
pygen.tools.harness.Case``, and may expose ``report(quick, device) -> list of lines`` (figures
that are not timings, printed under the family's table: the losses family's peak memory);
``pygen bench`` and the pytest-benchmark suite (test_bench_*.py) both read them from here.
``pygen bench`` appends its JSON lines outside the source tree by default
(``$PYGEN_RESULTS_DIR/<device>/``, else ``~/.cache/pygen/bench/<device>/``); ``results/<device>/<family>.jsonl``
here holds only deliberate, committed runs (``pygen bench --results-dir bench/results/<device>``).
"""

from __future__ import annotations

import importlib

FAMILIES = ("roi", "flows", "made", "mla", "moe", "fp8", "losses")


def load(family: str):
    """The definitions module of ``family`` (raises ValueError for an unknown name)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown benchmark family {family!r}; known: {', '.join(FAMILIES)}")
    return importlib.import_module(f"{__name__}.{family}")
