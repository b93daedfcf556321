"""Regression tests for issue 10: with no GPU, the Triton kernels of the bench suite run under the
interpreter, which needs TRITON_INTERPRET=1 set before triton is first imported (see
bench/conftest.py). bench/test_bench_mla.py used to set it in its own module body, too late once
bench/test_bench_made.py had been collected first (bench/made.py imports triton through
torch._dynamo), and test_quick_cases_triton_interpreter then failed at tl.cdiv with "Cannot call
@triton.jit'd outside of the scope of a kernel"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="with a GPU, Triton compiles: no interpreter involved"
)


def test_triton_language_is_interpreted():
    """Whatever bench module was collected first, triton.language's own @jit helpers are
    interpreter functions in this session, so interpreted kernels can call them."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert isinstance(tl.cdiv, InterpretedFunction), type(tl.cdiv)


def test_made_then_mla_in_one_process():
    """The issue's sequence: test_bench_made.py collected before test_bench_mla.py in one pytest
    process, then the MLA interpreter check (in a child whose environment lacks TRITON_INTERPRET,
    as a fresh shell's would: this session's value would otherwise hide the bug)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "bench/test_bench_made.py",
        "bench/test_bench_mla.py",
        "-k",
        "test_quick_cases_triton_interpreter",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = (res.stdout + res.stderr)[-3000:]
    assert res.returncode == 0 and "1 passed" in res.stdout, tail
