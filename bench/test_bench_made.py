"""pytest-benchmark view of the MADE benchmarks defined in bench/made.py (the same cases
``pygen bench made`` runs). Every implementation is checked against the reference before it is
timed. Quick shapes unless PYGEN_BENCH_FULL=1 (see bench/conftest.py for the other knobs). The
family has triton and reference backends only, so pygen:cuda / pygen:cpu are not listed.

    pytest bench/ --benchmark-json=out.json
"""

from __future__ import annotations

from . import _pytest_view as V, made

BASELINES = V.baselines(*["reference", "dense masked", "D passes (dense masked)", "step loop"])
IMPLS = ["pygen:triton", "reference", "compile(reference)", "dense masked", "D passes (dense masked)", "step loop"]
test_made = V.family_test(made, IMPLS, BASELINES)
