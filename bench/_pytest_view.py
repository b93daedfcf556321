"""What the pytest-benchmark files (bench/test_bench_<family>.py) share: the environment knobs
documented in bench/conftest.py and the one routine that checks an implementation against the
reference and then times it, and the parametrized test built on it (:func:`family_test`). Each
family's test file only lists its baselines and the implementation names it expects."""

from __future__ import annotations

import os

import pytest
import torch

from pygen.tools import harness as H

FULL = os.environ.get("PYGEN_BENCH_FULL", "") not in ("", "0")
COMPILE = FULL or os.environ.get("PYGEN_BENCH_COMPILE", "") not in ("", "0")
DEVICE = H.resolve_device(os.environ.get("PYGEN_BENCH_DEVICE") or None)
DTYPE = H.DTYPES[os.environ.get("PYGEN_BENCH_DTYPE", "float32")]
MODES = ["fwd", "fwd+bwd"]


def baselines(*names: str) -> list[str]:
    """The named baselines, plus torch.compile of the reference when asked for."""
    return list(names) + (["compile"] if COMPILE else [])


def case_ids(cases) -> list[str]:
    return [f"{c.op}-{c.label}" for c in cases]


def family_test(family, impls: list[str], baseline_names: list[str], modes: list[str] = MODES):
    """The pytest-benchmark test of one family module (bench/<family>.py): every case of
    ``family.cases`` (quick unless PYGEN_BENCH_FULL=1) x implementation x mode through
    :func:`check_then_time`. A family's test file binds it to a ``test_<family>`` name."""
    cases = family.cases(quick=not FULL, device=DEVICE)

    @pytest.mark.parametrize("mode", modes)
    @pytest.mark.parametrize("impl_name", impls)
    @pytest.mark.parametrize("case", cases, ids=case_ids(cases))
    def test(benchmark, case, impl_name: str, mode: str) -> None:
        check_then_time(benchmark, case, impl_name, mode, baseline_names)

    return test


def check_then_time(benchmark, case, impl_name: str, mode: str, baseline_names: list[str]) -> None:
    """Check ``impl_name`` against the reference on ``case`` (a pygen backend must match), then
    time it with pytest-benchmark; skips with the reason when the implementation does not apply."""
    backends = getattr(case, "backends", None)
    kwargs = {"backends": backends} if backends is not None else {}
    impls = {i.name: i for i in H.build_impls(case, DEVICE, baselines=baseline_names, **kwargs)}
    impl = impls.get(impl_name)
    if impl is None:
        pytest.skip(
            f"{impl_name} does not apply to {case.op} on {DEVICE.type}"
            + ("" if COMPILE or impl_name != "compile(reference)" else " (set PYGEN_BENCH_COMPILE=1)")
        )
    if impl.fn is None:
        pytest.skip(impl.skip)
    if getattr(case, "modes", None) is not None and mode not in case.modes:
        pytest.skip(f"{case.op} has no {mode} (forward-only)")
    inputs = case.make_inputs(DEVICE, DTYPE)
    expected = H.run_once(H.reference_impl(case), inputs, mode)
    try:
        ok, err = H.check(case, impl, inputs, mode, expected)
    except H.NoBackward as exc:
        pytest.skip(str(exc))
    if impl.kind == "pygen":
        assert ok, f"{impl_name} differs from the reference: max abs err {err:.3g}"
    elif not ok and impl_name not in getattr(case, "approximate", {}):
        # as in pygen bench: a baseline that computes something else is not the same work
        pytest.skip(
            f"{impl_name} differs from the reference (max abs err {err:.3g}): not the same computation, not timed"
        )
    fn, reset = H.timed_callable(impl, inputs, mode)
    if DEVICE.type == "cuda":

        def target():
            fn()
            torch.cuda.synchronize()
    else:
        target = fn
    benchmark.extra_info.update(
        op=case.op,
        shape=case.label,
        backend=impl_name,
        mode=mode,
        dtype=str(DTYPE),
        bytes=int(case.bytes_model(inputs, mode)),
        matches_reference=ok,
        max_abs_err=err,
    )
    benchmark.pedantic(target, setup=reset, rounds=5 if FULL else 3, warmup_rounds=0, iterations=1)
