"""pytest-benchmark view of the flow benchmarks defined in bench/flows.py (the same cases
``pygen bench flows`` runs). Every implementation is checked against the reference before it is
timed. Quick shapes unless PYGEN_BENCH_FULL=1 (see bench/conftest.py for the other knobs). The
family has triton and reference backends only, so pygen:cuda / pygen:cpu are not listed.

    pytest bench/ --benchmark-json=out.json
"""

from __future__ import annotations

import pytest

from . import _pytest_view as V, flows

BASELINES = V.baselines(*["reference"])
IMPLS = ["pygen:triton", "reference", "compile(reference)"]
CASES = flows.cases(quick=not V.FULL, device=V.DEVICE)


@pytest.mark.parametrize("mode", V.MODES)
@pytest.mark.parametrize("impl_name", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=V.case_ids(CASES))
def test_flows(benchmark, case, impl_name, mode):
    V.check_then_time(benchmark, case, impl_name, mode, BASELINES)
