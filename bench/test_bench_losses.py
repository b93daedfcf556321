"""pytest-benchmark view of the losses benchmarks defined in bench/losses.py (the same cases
``pygen bench losses`` runs). Every implementation is checked against the reference before it is
timed. Quick shapes unless PYGEN_BENCH_FULL=1 (see bench/conftest.py for the other knobs). The
family has triton and cpu (torch over vocabulary chunks) backends, no csrc.

    pytest bench/ --benchmark-json=out.json
"""

from __future__ import annotations

from . import _pytest_view as V, losses

BASELINES = V.baselines(*["reference", "eager"])
IMPLS = ["pygen:triton", "pygen:cpu", "reference", "eager", "compile(reference)"]
test_losses = V.family_test(losses, IMPLS, BASELINES)
