"""pytest-benchmark view of the MLA benchmarks defined in bench/mla.py (the same cases
``pygen bench mla --mode fwd`` runs). Every implementation is checked against the reference
before it is timed. Quick shapes unless PYGEN_BENCH_FULL=1 (see bench/conftest.py for the other
knobs). The family has triton and reference backends only; decode is inference-only, so its
fwd+bwd rows are skipped. On a machine without a GPU, ``test_quick_cases_triton_interpreter``
also runs every quick case once through the Triton kernels under the interpreter (a check, not
a timing: the interpreter is never benchmarked).

    pytest bench/test_bench_mla.py --benchmark-json=out.json
"""

from __future__ import annotations

import pytest
import torch

# TRITON_INTERPRET (no GPU) is set in bench/conftest.py: here would be too late once another
# bench module collected before this one has imported triton.
from pygen.tools import harness as H

from . import _pytest_view as V, mla

BASELINES = V.baselines(*["reference", "flashmla", "vllm-triton", "sglang-triton"])
IMPLS = ["pygen:triton", "reference", "compile(reference)", "flashmla", "vllm-triton", "sglang-triton"]
test_mla = V.family_test(mla, IMPLS, BASELINES)


def test_quick_cases_triton_interpreter():
    """Every quick case through pygen's Triton kernels once, checked against the reference at
    the same dtype (float32), forward; the prefill case also backward."""
    from pygen import _backend

    ok, why = _backend.backend_status("triton", "cpu" if not torch.cuda.is_available() else "cuda")
    if not ok:
        pytest.skip(why)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for case in mla.cases(quick=True, device=dev):
        impl = H.Impl("pygen:triton", "pygen", lambda I, c=case: c.pygen(I, "triton"))
        inputs = case.make_inputs(dev, torch.float32)
        for mode in ("fwd", "fwd+bwd") if case.op == "mla_prefill" else ("fwd",):
            expected = H.run_once(H.reference_impl(case), inputs, mode)
            good, err = H.check(case, impl, inputs, mode, expected)
            assert good, f"{case.op} {case.label} {mode}: max abs err {err:.3g}"


def test_formulas():
    """The byte and FLOP models on hand-computed numbers."""
    assert mla.decode_flops([10], 1, 16) == 2 * 16 * 1088 * 10
    assert mla.decode_flops([10, 3], 2, 1) == 2 * 1088 * (9 + 10 + 2 + 3)
    assert mla.decode_bytes([10], 1, 16, 2, False, 2) == 10 * 1152 + 16 * 1088 * 2 + 4 * 16 + 4 * 3
    assert mla.decode_bytes([10], 1, 16, 2, True, 2) == 10 * 656 + 16 * 1088 * 2 + 4 * 16 + 4 * 3
    assert mla.prefill_flops([4], 1, "fwd") == 2 * 320 * 10
    assert mla.prefill_flops([4], 1, "fwd+bwd") == 7 * 320 * 10
    full = mla.cases(quick=False, device="cuda")  # the default (GPU) shapes
    dec = [c for c in full if c.op == "mla_decode"]
    assert len(dec) == 4 * 2 * 2 * 2 and {c.shape["batch"] for c in dec} == {1, 32, 64, 128}
    assert all(1024 <= c.shape["ctx_max"] <= 8192 for c in dec)
    pre = [c for c in full if c.op == "mla_prefill"]
    assert [(c.shape["seqs"], c.shape["tokens_per_seq"], c.shape["heads"]) for c in pre] == [(8, 4096, 128)]
    cpu = mla.cases(quick=False, device="cpu")  # same structure, CPU-sized
    dec = [c for c in cpu if c.op == "mla_decode"]
    assert len(dec) == 2 * 2 * 2 * 2 and {c.shape["h_q"] for c in dec} == {16, 128}
    assert all(c.label.startswith("cpu-") for c in cpu) and all(c.shape["ctx_max"] <= 2048 for c in dec)
    row = {"median_ms": 2.0, "mode": "fwd", "shape": {"gflop": 1000.0}}
    assert mla.tflops(row) == pytest.approx(500.0)
