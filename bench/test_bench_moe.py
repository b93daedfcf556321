"""pytest-benchmark view of the MoE benchmarks defined in bench/moe.py (the same cases
``pygen bench moe`` runs). Every implementation is checked against the reference before it is
timed. Quick shapes unless PYGEN_BENCH_FULL=1 (see bench/conftest.py for the other knobs);
transformers and vLLM rows are skipped with the reason when those libraries are missing.

    pytest bench/test_bench_moe.py --benchmark-json=out.json
"""

from __future__ import annotations

import pytest

from . import _pytest_view as V, moe

THIRD_PARTY = [
    "torch.topk (transformers' math)",
    "transformers:eager",
    "transformers:grouped_mm",
    "vllm:fused_experts",
    "vllm:grouped_topk",
]
BASELINES = V.baselines("reference", *THIRD_PARTY)
IMPLS = ["pygen:cuda", "pygen:triton", "pygen:cpu", "reference", "compile(reference)", *THIRD_PARTY]
CASES = moe.cases(quick=not V.FULL, device=V.DEVICE)


@pytest.mark.parametrize("mode", V.MODES)
@pytest.mark.parametrize("impl_name", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=V.case_ids(CASES))
def test_moe(benchmark, case, impl_name, mode):
    V.check_then_time(benchmark, case, impl_name, mode, BASELINES)
