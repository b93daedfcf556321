"""pytest-benchmark view of the MoE benchmarks defined in bench/moe.py (the same cases
``pygen bench moe`` runs). Every implementation is checked against the reference before it is
timed. Quick shapes unless PYGEN_BENCH_FULL=1 (see bench/conftest.py for the other knobs);
transformers and vLLM rows are skipped with the reason when those libraries are missing.

    pytest bench/test_bench_moe.py --benchmark-json=out.json
"""

from __future__ import annotations

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
test_moe = V.family_test(moe, IMPLS, BASELINES)
