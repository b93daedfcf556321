"""pytest-benchmark view of the MADE benchmarks defined in bench/made.py (the same cases
``pygen bench made`` runs). Every implementation is checked against the reference before it is
timed. Quick shapes unless PYGEN_BENCH_FULL=1 (see bench/conftest.py for the other knobs). The
family has triton and reference backends only, so pygen:cuda / pygen:cpu are not listed.

    pytest bench/ --benchmark-json=out.json
"""
from __future__ import annotations

import os

import pytest
import torch

from pygen import bench_harness as H

from . import made

FULL = os.environ.get("PYGEN_BENCH_FULL", "") not in ("", "0")
COMPILE = FULL or os.environ.get("PYGEN_BENCH_COMPILE", "") not in ("", "0")
DEVICE = H.resolve_device(os.environ.get("PYGEN_BENCH_DEVICE") or None)
DTYPE = H.DTYPES[os.environ.get("PYGEN_BENCH_DTYPE", "float32")]
BASELINES = ["reference", "dense masked", "D passes (dense masked)"] + (["compile"] if COMPILE else [])
IMPLS = ["pygen:triton", "reference", "compile(reference)", "dense masked", "D passes (dense masked)"]
CASES = made.cases(quick=not FULL, device=DEVICE)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl_name", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}-{c.label}" for c in CASES])
def test_made(benchmark, case, impl_name, mode):
    impls = {i.name: i for i in H.build_impls(case, DEVICE, backends=case.backends, baselines=BASELINES)}
    impl = impls.get(impl_name)
    if impl is None:
        pytest.skip(f"{impl_name} does not apply to {case.op} on {DEVICE.type}"
                    + ("" if COMPILE or impl_name != "compile(reference)" else " (set PYGEN_BENCH_COMPILE=1)"))
    if impl.fn is None:
        pytest.skip(impl.skip)
    inputs = case.make_inputs(DEVICE, DTYPE)
    expected = H.run_once(H.reference_impl(case), inputs, mode)
    ok, err = H.check(case, impl, inputs, mode, expected)
    if impl.kind == "pygen":
        assert ok, f"{impl_name} differs from the reference: max abs err {err:.3g}"
    fn, reset = H.timed_callable(impl, inputs, mode)
    if DEVICE.type == "cuda":
        def target():
            fn()
            torch.cuda.synchronize()
    else:
        target = fn
    benchmark.extra_info.update(op=case.op, shape=case.label, backend=impl_name, mode=mode,
                                dtype=str(DTYPE), bytes=int(case.bytes_model(inputs, mode)),
                                matches_reference=ok, max_abs_err=err)
    benchmark.pedantic(target, setup=reset, rounds=5 if FULL else 3, warmup_rounds=0, iterations=1)
