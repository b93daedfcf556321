"""CUDA-graph capture and replay of every public op with a kernel behind it (issue 11), with value
checks off (pygen.value_checks(False): the checks that read values on the host are what would
break a capture; docs/ARCHITECTURE.md, "Value checks and host synchronisation").

For each case of tests/common/gpu_cases.py and each kernel backend it has on CUDA: warm up on a side
stream (Triton compiles and autotunes, lazy caches fill), capture one call into a
torch.cuda.CUDAGraph, copy new input values into the captured tensors, replay, and compare with
an eager call on the new values; then refill the first values and replay again. The new values
must change the result (else the replay check would be empty). GPU only: skipped without CUDA.

The CPU tests at the end check the case list itself (every public op covered, the two seeds'
inputs interchangeable, the outputs different), so that the GPU run, which happens only when a
GPU is lent (bench/device_run.sh), does not find a broken case first.
"""

from __future__ import annotations

import os

import gpu_cases as C
import pytest
import torch
from helpers import public_ops

import pygen
from pygen import _backend

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PARAMS = [pytest.param(c, b, id=i) for (c, b), i in C.params()]


def _skip_unavailable(backend):
    if backend is not None:
        ok, why = _backend.backend_status(backend, "cuda")
        if not ok:
            pytest.skip(f"{backend} on cuda: {why}")


def _warm_up(call, n: int = 2) -> None:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(n):
            call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


@requires_cuda
@pytest.mark.parametrize("case,backend", PARAMS)
def test_capture_and_replay_matches_eager(case, backend):
    _skip_unavailable(backend)
    what = f"{case.name} ({backend})"
    first = C.to_device(case.make(0), "cuda")
    second = C.to_device(case.make(1), "cuda")
    with pygen.value_checks(False):
        want_first = case.call(C.clone(first), backend)  # eager, on copies: some ops write an input
        want_second = case.call(C.clone(second), backend)
        static = C.clone(first)  # the tensors the graph reads and writes
        _warm_up(lambda: case.call(static, backend))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = case.call(static, backend)
        C.copy_into(static, second)
        graph.replay()
        torch.cuda.synchronize()
        C.assert_same_result(out, want_second, f"{what} replayed on new values")
        C.copy_into(static, first)
        graph.replay()
        torch.cuda.synchronize()
        C.assert_same_result(out, want_first, f"{what} replayed on the first values")
    assert C.differs(want_first, want_second), f"{what}: the two input sets give the same output"


@requires_cuda
def test_capture_with_checks_on_skips_them():
    """Under capture the value checks are skipped whatever the switch (they would synchronise):
    a capture with checks ON still succeeds for an op that has them (roi_align)."""
    case = next(c for c in C.CASES if c.name == "roi_align")
    static = C.to_device(case.make(0), "cuda")
    with pygen.value_checks(True):
        _warm_up(lambda: case.call(static, "triton"))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = case.call(static, "triton")
        graph.replay()
        torch.cuda.synchronize()
        C.assert_same_result(out, case.call(static, "triton"), "roi_align captured with checks on")


# ---- CPU: the case list is sound --------------------------------------------------------------------
def test_cases_cover_every_public_op():
    public = public_ops()
    covered = {c.op for c in C.CASES}
    assert covered <= public, covered - public
    assert public - covered == C.NOT_COVERED, public - covered
    ids = [i for _, i in C.params()]
    assert len(ids) == len(set(ids))
    assert {i.split("-")[0] for i in ids} == {"roi", "flows", "made", "mla", "fp8", "moe", "losses"}


def _cpu_backend(case) -> str | None:
    return None if case.backends == (None,) else "reference"


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.family}-{c.name}") for c in C.CASES])
def test_case_inputs_refill_and_change_the_result(case):
    """The two seeds give interchangeable inputs (same shapes, dtypes, strides and Python
    arguments) and different outputs; an op that writes into its inputs leaves the copies alone."""
    first, second = case.make(0), case.make(1)
    assert C.same_layout(first, second), case.name
    assert C.same_layout(first, case.make(0)) and not C.differs(C.tensors(first), C.tensors(case.make(0)))
    b = _cpu_backend(case)
    pristine = C.clone(first)
    out1 = case.call(C.clone(first), b)
    out2 = case.call(C.clone(second), b)
    assert C.tensors(out1), f"{case.name}: no output tensor"
    assert C.differs(out1, out2), f"{case.name}: the two input sets give the same output"
    assert not C.differs(C.tensors(pristine), C.tensors(first))
    C.assert_same_result(case.call(C.clone(first), b), out1, case.name)  # deterministic here
    static = C.clone(first)
    C.copy_into(static, second)
    C.assert_same_result(case.call(static, b), out2, f"{case.name} after copy_into")


TRITON_OK, TRITON_WHY = _backend.backend_status("triton", "cpu")


@pytest.mark.skipif(not TRITON_OK, reason=f"triton on cpu: {TRITON_WHY}")
@pytest.mark.skipif(
    os.environ.get("PYGEN_SLOW_CASE_CHECK") != "1",
    reason="the Triton-interpreter run of every case takes minutes on 2 cores: "
    "PYGEN_SLOW_CASE_CHECK=1 (test_host_sync.py runs the same ops there)",
)
@pytest.mark.parametrize(
    "case", [pytest.param(c, id=f"{c.family}-{c.name}") for c in C.CASES if "triton" in c.backends]
)
def test_case_runs_on_the_triton_backend_with_checks_off(case):
    """Each case as the GPU test calls it (Triton backend, checks off), here through the Triton
    interpreter, against the reference."""
    first = case.make(0)
    with pygen.value_checks(False):
        got = case.call(C.clone(first), "triton")
    want = case.call(C.clone(first), "reference")
    g, w = C.tensors(got), C.tensors(want)
    assert len(g) == len(w)
    for a, b in zip(g, w):
        assert a.shape == b.shape, case.name
        if a.dtype.is_floating_point and a.dtype.itemsize > 1:
            torch.testing.assert_close(a.double(), b.double(), rtol=2e-2, atol=2e-2, equal_nan=True)
