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


def test_layer_byte_model_counts_no_weight_gradients():
    """The moe_layer case's weights are frozen (x is the only leaf): its backward reads the
    weights once and writes no dW, and its FLOPs are 1x the forward's (dX only). The model counted
    dW of the experts, the shared expert and the gate (GB/s 1.5x too high at DeepSeek-V3, T = 64)."""
    import torch

    case = next(c for c in moe.cases(quick=True, device=torch.device("cpu")) if c.op == "moe_layer")
    inputs = case.make_inputs(torch.device("cpu"), torch.float32)
    assert not any(p.requires_grad for p in inputs.layer.parameters())
    s, t, eb = moe.QUICK, case.shape["T"], 4
    active = int(torch.unique(inputs.layer.gate(inputs.x)[2]).numel())
    w_experts = active * 3 * s.inter * s.hidden * eb
    w_extra = eb * 3 * s.inter * s.n_shared * s.hidden + 4 * s.experts * s.hidden
    slots = t * s.top_k
    want_bwd = (eb * (3 * t * s.hidden + 3 * slots * s.inter) + w_experts + 12 * slots) + w_extra + 8 * t * s.experts
    assert case.bytes_model(inputs, "bwd") == want_bwd
    row = {"op": "moe_layer", "mode": "fwd+bwd", "median_ms": 1.0, "shape": {"gflop_fwd": 3.0}}
    assert moe.tflops(row) == 6.0 and moe.tflops({**row, "op": "fused_moe"}) == 9.0
