"""pytest-benchmark view of the FP8 benchmarks defined in bench/fp8.py (the same cases
``pygen bench fp8`` runs). Every implementation is checked against the reference before it is
timed (the unquantised baselines are timed and flagged, not failed). Quick shapes unless
PYGEN_BENCH_FULL=1 (see bench/conftest.py for the other knobs). The family has triton and
reference backends only, so pygen:cuda / pygen:cpu are not listed.

    pytest bench/test_bench_fp8.py --benchmark-json=out.json
"""

from __future__ import annotations

import pytest

from . import _pytest_view as V, fp8

BASELINES = V.baselines("reference", "torch.matmul", "torch._scaled_mm", "matmul loop (dequantised W)")
IMPLS = [
    "pygen:triton",
    "reference",
    "torch.matmul",
    "torch._scaled_mm",
    "matmul loop (dequantised W)",
    "compile(reference)",
]
test_fp8 = V.family_test(fp8, IMPLS, BASELINES, modes=["fwd"])


def test_tflops_and_error_columns():
    """The extra columns of ``python -m pygen.bench.fp8``: TFLOP/s against the 1979 peak, the
    floors, and the error against the unquantised product (about 3-4% for Gaussian data)."""
    case = fp8.cases(quick=True, device="cpu")[0]
    rows = fp8.add_metrics([{"op": case.op, "shape_label": case.label, "mode": "fwd", "median_ms": 1.0}], [case], "cpu")
    r = rows[0]
    assert r["tflops"] == pytest.approx(case.shape["flops"] / 1e-3 / 1e12)
    assert r["fp8_peak_fraction"] == pytest.approx(r["tflops"] / 1979.0)
    assert 0.005 < r["rel_err_vs_unquantised_bf16"] < 0.1
    f = fp8.floors(4096, 7168, 2048)
    assert f["compute_floor_us"] == pytest.approx(2 * 4096 * 7168 * 2048 / 1979e12 * 1e6)
