"""pytest-benchmark view of the RoI benchmarks defined in bench/roi.py (the same cases
``pygen bench roi`` runs). Every implementation is checked against the reference before it is
timed. Quick shapes unless PYGEN_BENCH_FULL=1 (see bench/conftest.py for the other knobs).

    pytest bench/ --benchmark-json=out.json
"""

from __future__ import annotations

from . import _pytest_view as V, roi

BASELINES = V.baselines(*["reference", "torchvision"])
IMPLS = ["pygen:cuda", "pygen:triton", "pygen:cpu", "reference", "compile(reference)", "torchvision"]
test_roi = V.family_test(roi, IMPLS, BASELINES)
