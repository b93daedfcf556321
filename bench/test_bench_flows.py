"""pytest-benchmark view of the flow benchmarks defined in bench/flows.py (the same cases
``pygen bench flows`` runs). Every implementation is checked against the reference before it is
timed. Quick shapes unless PYGEN_BENCH_FULL=1 (see bench/conftest.py for the other knobs). The
family has triton and reference backends only, so pygen:cuda / pygen:cpu are not listed.

    pytest bench/ --benchmark-json=out.json
"""

from __future__ import annotations

from . import _pytest_view as V, flows

BASELINES = V.baselines(*["reference"])
IMPLS = ["pygen:triton", "reference", "compile(reference)"]
test_flows = V.family_test(flows, IMPLS, BASELINES)
