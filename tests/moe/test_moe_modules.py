"""pygen.nn.MoE (DeepSeekMoE layer) without transformers: state_dict layout, forward and backward
against the float64 composition of pygen.ref.moe (routing, expert loop) plus the shared MLP,
gradcheck, the triton backend, bad configurations, and the aux-loss-free balancing helpers.
The comparison with transformers' DeepseekV3MoE itself is in tests/moe/test_moe_transformers.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import GROUPED_ROUTING, assert_close_to_ref, moe_routing, requires_triton, route_kwargs

from pygen.nn.moe import MoE, bias_update, expert_load, load_balance_stats
from pygen.ref import moe as ref

FIELDS = dict(hidden_size=24, moe_intermediate_size=8, **GROUPED_ROUTING, n_shared_experts=2, routed_scaling_factor=2.5)

KERNEL_BACKENDS = [pytest.param("triton", marks=requires_triton)]


def _layer(seed=0, dtype=torch.float64, **kw) -> MoE:
    torch.manual_seed(seed)
    fields = {**FIELDS, **kw}
    m = MoE(**fields).to(dtype)
    with torch.no_grad():  # a non-zero balancing bias, so that it takes part in the selection
        m.gate.e_score_correction_bias.copy_(torch.randn(fields["n_routed_experts"]) * 0.05)
    return m


def _ref_forward(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """The layer's math from pygen.ref.moe pieces, in x's dtype (float64 for the oracle)."""
    g = m.gate
    xf = x.reshape(-1, m.hidden_size)
    logits = xf @ g.weight.to(xf.dtype).t()
    bias, norm, scale = g.e_score_correction_bias, g.norm_topk_prob, g.routed_scaling_factor
    ids, w = ref.moe_route(
        logits, g.top_k, **route_kwargs(g.num_group, g.topk_group, g.scoring_func, bias, norm, scale)
    )
    y = ref.fused_moe(xf, m.experts.gate_up_proj, m.experts.down_proj, w, ids, "silu")
    se = m.shared_experts
    if se is not None:
        y = y + F.linear(
            F.silu(F.linear(xf, se.gate_proj.weight)) * F.linear(xf, se.up_proj.weight), se.down_proj.weight
        )
    return y.reshape(x.shape)


def test_state_dict_layout():
    m = MoE(**FIELDS)
    e, h, i, s = 8, 24, 8, 2
    want = {
        "gate.weight": ((e, h), torch.float32),
        "gate.e_score_correction_bias": ((e,), torch.float32),
        "experts.gate_up_proj": ((e, 2 * i, h), torch.float32),
        "experts.down_proj": ((e, h, i), torch.float32),
        "shared_experts.gate_proj.weight": ((i * s, h), torch.float32),
        "shared_experts.up_proj.weight": ((i * s, h), torch.float32),
        "shared_experts.down_proj.weight": ((h, i * s), torch.float32),
    }
    got = {k: (tuple(v.shape), v.dtype) for k, v in m.state_dict().items()}
    assert got == want
    assert "tokens_per_expert" not in got  # the balancing counter is not part of the checkpoint
    m0 = MoE(**{**FIELDS, "n_shared_experts": 0})
    assert m0.shared_experts is None and not any(k.startswith("shared") for k in m0.state_dict())


@pytest.mark.parametrize("shape", [(2, 5), (7,), (1,)])
def test_reference_matches_ref_composition_float64(shape):
    m = _layer()
    m.backend = "reference"
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, FIELDS["hidden_size"], generator=g, dtype=torch.float64, requires_grad=True)
    out = m(x)
    assert out.shape == x.shape
    gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(out, [x, *m.parameters()], gout)
    xr = x.detach().clone().requires_grad_()
    exp = _ref_forward(m, xr)
    exp_grads = torch.autograd.grad(exp, [xr, *m.parameters()], gout)
    assert_close_to_ref(out, exp, what="out")
    for (name, _), a, b in zip([("x", None), *m.named_parameters()], grads, exp_grads):
        assert_close_to_ref(a, b, what=f"d {name}")
    assert any(gr.abs().max() > 0 for gr in grads[1:])  # the test exercises real gradients


def test_gradcheck_float64():
    routing = moe_routing(experts=4, top_k=2, n_group=2, topk_group=1)
    m = _layer(hidden_size=6, moe_intermediate_size=3, **routing, n_shared_experts=1)
    m.backend = "reference"
    params = dict(m.named_parameters())
    names = list(params)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    # gradients w.r.t. the input and every parameter, the gate included (through the weights)
    assert torch.autograd.gradcheck(
        f, (x, *[p.detach().clone().requires_grad_() for p in params.values()]), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("backend", KERNEL_BACKENDS + [None])
def test_kernel_backend_float32(backend):
    """float32 through the kernels vs the float64 oracle; |k - ref64| <= 2 |ref32 - ref64| + atol."""
    m64 = _layer()
    m = _layer(dtype=torch.float32)
    m.backend = backend
    g = torch.Generator().manual_seed(3)
    x64 = torch.randn(2, 9, FIELDS["hidden_size"], generator=g, dtype=torch.float64)
    gout = torch.randn(x64.shape, generator=g, dtype=torch.float64)

    def run(mod, x, backend_):
        mod.backend = backend_
        x = x.clone().requires_grad_()
        out = mod(x)
        grads = torch.autograd.grad(out, [x, *mod.parameters()], gout.to(x.dtype))
        return out, grads

    out, grads = run(m, x64.float(), backend)
    out32, grads32 = run(m, x64.float(), "reference")
    out64, grads64 = run(m64, x64, "reference")
    assert_close_to_ref(out, out64, out32, atol=1e-5, what="out")
    for (name, _), a, b, c in zip([("x", None), *m.named_parameters()], grads, grads64, grads32):
        assert_close_to_ref(a, b, c, atol=1e-5, what=f"d {name}")


def test_backend_attribute_propagates():
    m = MoE(**FIELDS, backend="reference")
    assert m.backend == m.gate.backend == m.experts.backend == "reference"
    m.backend = None
    assert m.gate.backend is None and m.experts.backend is None


def test_zero_tokens():
    m = _layer()
    x = torch.zeros(0, FIELDS["hidden_size"], dtype=torch.float64, requires_grad=True)
    out = m(x)
    assert out.shape == (0, FIELDS["hidden_size"])
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_routed_experts=10, n_group=4), "divisible by n_group"),
        (dict(topk_group=5), "topk_group"),
        (dict(num_experts_per_tok=9), "num_experts_per_tok"),  # more than the 8 experts (7 is fine)
        (dict(num_experts_per_tok=-1), "num_experts_per_tok must be an int >= 0"),  # 0: transformers runs it
        (dict(hidden_act="relu"), "hidden_act"),
        (dict(scoring_func="softplus"), "scoring_func"),
        (dict(n_shared_experts=-1), "n_shared_experts"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        MoE(**{**FIELDS, **kw})


def test_bad_config_missing_and_unknown():
    with pytest.raises(ValueError, match="MoE needs moe_intermediate_size"):
        MoE(hidden_size=8, n_routed_experts=4, num_experts_per_tok=2)
    with pytest.raises(TypeError, match="unexpected keyword"):
        MoE(**FIELDS, n_experts=4)


def test_bad_input_hidden_size():
    m = MoE(**FIELDS)
    with pytest.raises(ValueError, match="hidden_size=24"):
        m(torch.randn(3, 23))


def test_config_object_and_keyword_override():
    class Cfg:  # any object with DeepseekV3Config's field names
        hidden_size, moe_intermediate_size, num_local_experts, num_experts_per_tok = 16, 4, 6, 2
        n_group, topk_group, n_shared_experts, routed_scaling_factor, norm_topk_prob = 3, 2, 1, 1.5, False
        hidden_act = "silu"

    m = MoE(Cfg(), num_experts_per_tok=3)
    assert m.n_routed_experts == 6 and m.num_experts_per_tok == 3 and m.gate.top_k == 3
    assert m.gate.num_group == 3 and m.gate.topk_group == 2 and m.gate.norm_topk_prob is False
    assert m.config is not None


# ---- aux-loss-free load balancing ---------------------------------------------------------------
def test_expert_load_counts():
    ids = torch.tensor([[0, 3], [3, 1], [3, 0]], dtype=torch.int32)
    assert expert_load(ids, 5).tolist() == [2, 1, 0, 3, 0]
    assert expert_load(torch.tensor([[-1, 5, 2]]), 5).tolist() == [0, 0, 1, 0, 0]  # out of range ignored


def test_bias_update_rule():
    bias = torch.zeros(4)
    step = bias_update(bias, torch.tensor([1, 4, 2, 5]), gamma=0.1)  # mean 3
    assert torch.equal(step, torch.tensor([0.1, -0.1, 0.1, -0.1]))
    assert torch.equal(bias, step)
    bias_update(bias, torch.tensor([3, 3, 3, 3]), gamma=0.1)  # balanced: unchanged
    assert torch.equal(bias, step)
    with pytest.raises(ValueError, match="shape"):
        bias_update(bias, torch.ones(3), 0.1)
    with pytest.raises(ValueError, match="gamma"):
        bias_update(bias, torch.ones(4), -1.0)


def test_load_balance_stats():
    s = load_balance_stats(torch.tensor([2, 2, 2, 6]))
    assert s["max_violation"] == pytest.approx(1.0) and s["mean"] == 3 and s["max"] == 6
    assert s["cv"] == pytest.approx(3**0.5 / 3)
    assert load_balance_stats(torch.zeros(3))["max_violation"] == 0.0


def test_counter_only_in_training_and_update_resets():
    m = _layer()
    x = torch.randn(11, FIELDS["hidden_size"], dtype=torch.float64)
    m.eval()
    m(x)
    assert int(m.tokens_per_expert.sum()) == 0
    m.train()
    m(x)
    m(x[:4])
    assert int(m.tokens_per_expert.sum()) == 15 * FIELDS["num_experts_per_tok"]
    _, _, ids = m.gate(x)
    expected = expert_load(ids, 8) + expert_load(ids[:4], 8)
    assert torch.equal(m.tokens_per_expert, expected)
    before = m.gate.e_score_correction_bias.clone()
    load = m.update_bias(0.01)
    assert torch.equal(load, expected)
    assert torch.allclose(
        m.gate.e_score_correction_bias - before, 0.01 * torch.sign(expected.double().mean() - expected.double())
    )
    assert int(m.tokens_per_expert.sum()) == 0


def test_bias_updates_balance_a_skewed_router():
    """The rule's purpose: a router whose logits favour a few experts gets balanced by the bias
    alone (routing only, no expert compute)."""
    torch.manual_seed(0)
    routing = moe_routing(experts=16, top_k=2, n_group=4, topk_group=2)
    m = MoE(hidden_size=16, moe_intermediate_size=4, **routing, backend="reference")
    with torch.no_grad():
        m.gate.weight.normal_(0, 0.3)
    skew = torch.linspace(2.0, -2.0, 16)  # expert 0 strongly preferred, expert 15 avoided
    x = torch.randn(512, 16)
    logits = x @ m.gate.weight.t() + skew
    first = None
    for _ in range(150):
        ids, _ = m.gate.route(logits)
        load = expert_load(ids, 16)
        first = load_balance_stats(load) if first is None else first
        bias_update(m.gate.e_score_correction_bias, load, gamma=0.01)
    last = load_balance_stats(expert_load(m.gate.route(logits)[0], 16))
    assert first["max_violation"] > 1.5
    assert last["max_violation"] < 0.35 * first["max_violation"]


@requires_triton
def test_compile_fullgraph_training():
    """The layer traces into one graph (no host synchronisation: the router's ids skip
    fused_moe's range check, the balancing counter is a scatter_add), forward and backward."""
    m = _layer(dtype=torch.float32, hidden_size=16, moe_intermediate_size=8, n_shared_experts=1)
    m.backend = "triton"
    m.train()
    x = torch.randn(5, 16, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    dx, dw1 = x.grad.clone(), m.experts.gate_up_proj.grad.clone()
    x.grad = None
    m.zero_grad()
    ref_out = m(x)
    ref_out.sum().backward()
    assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(dx, x.grad, atol=1e-6)
    assert torch.allclose(dw1, m.experts.gate_up_proj.grad, atol=1e-6)
    assert int(m.tokens_per_expert.sum()) == 2 * 5 * FIELDS["num_experts_per_tok"]  # both calls counted
