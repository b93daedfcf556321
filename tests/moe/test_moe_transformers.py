"""pygen's MoE against Hugging Face transformers' DeepseekV3 (optional dependency: skipped when
transformers is not installed): pygen.nn.MoE loads a DeepseekV3MoE state_dict and gives the same
output and gradients; the "pygen" experts implementation and patch_deepseek_moe give the eager
model's logits and gradients on a tiny random DeepseekV3ForCausalLM."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch

transformers = pytest.importorskip("transformers")
hf_ds = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")
pytest.importorskip("transformers.integrations.moe")

from helpers import (  # noqa: E402 (after importorskip)
    GROUPED_ROUTING,
    TRANSFORMERS_TEST_ROUTING,
    assert_close_to_ref,
    requires_triton,
    topk_ties_to_lower_index,
)

from pygen.integrations import transformers_moe as tm  # noqa: E402 (after importorskip)
from pygen.nn.moe import MoE  # noqa: E402 (after importorskip)

# The tiny causal LM every model of this file is built on (DeepseekV3 and the other MoE families).
_TINY_LM = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def _config(**kw):
    base = dict(
        _TINY_LM,
        moe_intermediate_size=16,
        **GROUPED_ROUTING,
        n_shared_experts=1,
        routed_scaling_factor=2.5,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=None,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
    )
    base.update(kw)
    return transformers.DeepseekV3Config(**base)


def _count_fused_moe(monkeypatch) -> list:
    """Count pygen.ops.moe.fused_moe calls (one entry each) in the returned list."""
    import pygen.ops.moe as ops_moe

    calls = []
    real = ops_moe.fused_moe
    monkeypatch.setattr(ops_moe, "fused_moe", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _hf_moe(cfg, dtype, seed=0):
    """A DeepseekV3MoE with random weights (the standalone module is created uninitialised) and a
    non-zero correction bias."""
    torch.manual_seed(seed)
    m = hf_ds.DeepseekV3MoE(cfg)
    m.config._experts_implementation = "eager"
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
        m.gate.e_score_correction_bias.normal_(0, 0.05)
    return m.to(dtype)


def _grads(module, x, gout):
    x = x.clone().requires_grad_()
    out = module(x)
    names, params = zip(*module.named_parameters())
    # (zeros for parameters out of the graph: with no routed expert, the router and the experts)
    gs = torch.autograd.grad(out, [x, *params], gout, allow_unused=True, materialize_grads=True)
    return out, dict(zip(("x",) + names, gs))


# top_k above the kept groups' experts: transformers routes the rest to masked experts, all of
# them (its own tests' config) or some (then which ones is torch.topk's tie rule); and the
# degenerate configs transformers also runs: no kept group, no routed expert
ROUTINGS = [
    GROUPED_ROUTING,
    TRANSFORMERS_TEST_ROUTING,
    dict(GROUPED_ROUTING, num_experts_per_tok=5, topk_group=1),
    dict(GROUPED_ROUTING, topk_group=0),
    dict(GROUPED_ROUTING, num_experts_per_tok=0),
]
ROUTING_IDS = ["grouped", "transformers-tests", "some-masked", "no-kept-group", "no-routed-expert"]


def _gpu_topk(routing):
    """torch.topk with the CUDA kernel's tie rule when transformers picks some of the tied masked
    experts (CPU torch.topk breaks that tie in no fixed way; pygen follows the CUDA rule)."""
    e, k = routing["n_routed_experts"], routing["num_experts_per_tok"]
    if routing["topk_group"] * e // routing["n_group"] < k < e:
        return mock.patch.object(torch, "topk", topk_ties_to_lower_index)
    return contextlib.nullcontext()


@pytest.mark.parametrize("routing", ROUTINGS, ids=ROUTING_IDS)
@pytest.mark.parametrize(
    "backend, dtype",
    [
        ("reference", torch.float64),
        ("reference", torch.float32),
        pytest.param("triton", torch.float32, marks=requires_triton),
    ],
)
def test_moe_loads_hf_state_dict_and_matches(backend, dtype, routing):
    cfg = _config(**routing)
    hf = _hf_moe(cfg, dtype)
    m = MoE(cfg, backend=backend).to(dtype)
    m.load_state_dict(hf.state_dict(), strict=True)
    assert {k: (v.shape, v.dtype) for k, v in m.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in hf.state_dict().items()
    }
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 32, generator=g, dtype=dtype)
    gout = torch.randn(x.shape, generator=g, dtype=dtype)
    out, grads = _grads(m, x, gout)
    with _gpu_topk(routing):
        out_hf, grads_hf = _grads(hf, x, gout)
    assert set(grads) == set(grads_hf)
    # transformers computes the router logits in float32 even for a float64 module; pygen uses
    # float64 there, hence a float32-level tolerance in float64 too
    tol = 2e-5
    assert_close_to_ref(out, out_hf, atol=tol, what="out")
    for name in grads:
        assert_close_to_ref(grads[name], grads_hf[name], atol=tol, what=f"d {name}")
    assert (grads["gate.weight"].abs().max() > 0) == (routing["num_experts_per_tok"] > 0)


def test_moe_from_hf_config_fields():
    cfg = _config(n_routed_experts=12, n_group=3, topk_group=2, num_experts_per_tok=4, norm_topk_prob=False)
    m = MoE(cfg)
    assert (m.n_routed_experts, m.gate.num_group, m.gate.topk_group, m.gate.top_k) == (12, 3, 2, 4)
    assert m.gate.norm_topk_prob is False and m.gate.routed_scaling_factor == 2.5
    assert m.experts.gate_up_proj.shape == (12, 32, 32) and m.shared_experts.gate_proj.weight.shape == (16, 32)


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    model = transformers.DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():  # a non-zero correction bias so that it takes part in the selection
        for layer in model.model.layers:
            if isinstance(layer.mlp, hf_ds.DeepseekV3MoE):
                layer.mlp.gate.e_score_correction_bias.normal_(0, 0.05)
    return model


def _logits_and_grads(model, ids):
    model.zero_grad()
    out = model(ids).logits
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_experts_implementation_pygen(monkeypatch):
    assert "pygen" in transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS
    model = _model(_config(experts_implementation="eager"))
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    ref_logits, ref_grads = _logits_and_grads(model, ids)
    calls = _count_fused_moe(monkeypatch)
    model.set_experts_implementation("pygen")
    assert model.config._experts_implementation == "pygen"
    logits, grads = _logits_and_grads(model, ids)
    assert len(calls) == 1  # one MoE layer, run through pygen's fused_moe
    assert_close_to_ref(logits, ref_logits, atol=1e-5, what="logits")
    assert set(grads) == set(ref_grads)
    for n in grads:
        assert_close_to_ref(grads[n], ref_grads[n], atol=1e-6, what=f"d {n}")


def test_experts_implementation_from_config():
    model = transformers.DeepseekV3ForCausalLM(_config(experts_implementation="pygen"))
    assert model.config._experts_implementation == "pygen"
    assert model.model.layers[1].mlp.experts.config._experts_implementation == "pygen"


def test_experts_implementation_rejects_unsupported_layout():
    model = _model(_config(experts_implementation="pygen"))
    experts = model.model.layers[1].mlp.experts
    experts.is_transposed = True
    with pytest.raises(NotImplementedError, match="is_transposed"):
        model(torch.zeros(1, 3, dtype=torch.long))


def test_patch_deepseek_moe():
    model = _model(_config(experts_implementation="eager"))
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    ref_logits, ref_grads = _logits_and_grads(model, ids)
    old = model.model.layers[1].mlp
    old_params = dict(old.named_parameters())
    keys_before = list(model.state_dict())

    assert tm.patch_deepseek_moe(model, backend="reference") == {"DeepseekV3MoE": 1}
    new = model.model.layers[1].mlp
    assert isinstance(new, MoE) and new.backend == "reference" and not new.training
    assert list(model.state_dict()) == keys_before
    for n, p in new.named_parameters():  # the very same Parameter objects (optimizers keep working)
        assert p is old_params[n]
    assert new.tokens_per_expert.device == old_params["gate.weight"].device

    _assert_same_logits_and_grads(model, ids, ref_logits, ref_grads)
    assert tm.patch_deepseek_moe(model) == {}  # nothing left to swap


def _assert_same_logits_and_grads(model, ids, ref_logits, ref_grads):
    logits, grads = _logits_and_grads(model, ids)
    assert_close_to_ref(logits, ref_logits, atol=1e-5, what="logits")
    assert set(grads) == set(ref_grads)
    for n in grads:
        assert_close_to_ref(grads[n], ref_grads[n], atol=1e-6, what=f"d {n}")


@pytest.mark.parametrize("routing", ROUTINGS[1:3], ids=ROUTING_IDS[1:3])
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=requires_triton)])
def test_patched_model_routes_to_masked_experts_like_transformers(backend, routing):
    """top_k above the kept groups' experts (issue 13): transformers' own test config (8 experts
    in 2 groups, topk_group 1, 8 per token) used to raise in pygen.nn.MoE; the patched model now
    gives the stock model's logits and gradients (for "some-masked", the stock model as on a GPU)."""
    model = _model(_config(experts_implementation="eager", **routing))
    ids = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(6))
    with _gpu_topk(routing):
        ref_logits, ref_grads = _logits_and_grads(model, ids)
    assert tm.patch_deepseek_moe(model, backend=backend) == {"DeepseekV3MoE": 1}
    _assert_same_logits_and_grads(model, ids, ref_logits, ref_grads)


def test_patch_keeps_bf16_model_dtypes():
    model = _model(_config(experts_implementation="eager")).to(torch.bfloat16)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    tm.patch_deepseek_moe(model, backend="reference")
    assert {k: v.dtype for k, v in model.state_dict().items()} == dtypes
    out = model(torch.zeros(1, 4, dtype=torch.long)).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("ran_before", [False, True])
def test_patch_keeps_router_logits_output(ran_before):
    """transformers records router logits by hooking DeepseekV3TopkRouter modules; the swap must
    keep them (hooks installed before the swap move over, later installs find the new gate)."""
    model = _model(_config(experts_implementation="eager"))
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(2))
    want = None
    if ran_before:
        want = model(ids, output_router_logits=True).router_logits
    tm.patch_deepseek_moe(model, backend="reference")
    got = model(ids, output_router_logits=True).router_logits
    assert len(got) == 1 and got[0].shape == (10, 8)
    if want is not None:
        assert torch.allclose(got[0], want[0], atol=1e-6)


def test_experts_implementation_ep_sentinels():
    """transformers' own expert parallelism marks slots of other ranks' experts with the id
    num_experts; the pygen implementation drops them like the eager loop does."""
    cfg = _config(experts_implementation="pygen")
    torch.manual_seed(3)
    experts = hf_ds.DeepseekV3Experts(cfg)
    with torch.no_grad():
        experts.gate_up_proj.normal_(0, 0.2)
        experts.down_proj.normal_(0, 0.2)
    experts._is_expert_parallel = True
    x = torch.randn(6, 32, requires_grad=True)
    ids = torch.randint(0, 8, (6, 3))
    ids[0, 1] = ids[3, 0] = ids[3, 2] = 8  # sentinels
    w = torch.rand(6, 3, requires_grad=True)
    out = experts(x, ids, w)
    gx, gw = torch.autograd.grad(out.square().sum(), [x, w])
    experts.config._experts_implementation = "eager"
    ref = experts(x, ids, w)
    rx, rw = torch.autograd.grad(ref.square().sum(), [x, w])
    assert_close_to_ref(out, ref, atol=1e-5, what="out")
    assert_close_to_ref(gx, rx, atol=1e-5, what="dx")
    assert_close_to_ref(gw, rw, atol=1e-5, what="d weights")  # zero at the sentinels in both


@pytest.mark.parametrize("family", ["Qwen3Moe", "Mixtral"])
def test_experts_implementation_other_moe_models(family, monkeypatch):
    """The "pygen" experts implementation is not DeepSeek-specific: any experts class with the
    gate_up_proj / down_proj layout (Qwen3-MoE, Mixtral, ...) runs through fused_moe."""
    cfg_cls = getattr(transformers, f"{family}Config", None)
    model_cls = getattr(transformers, f"{family}ForCausalLM", None)
    if cfg_cls is None or model_cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {family}")
    experts = dict(num_experts=8, moe_intermediate_size=16) if family == "Qwen3Moe" else dict(num_local_experts=8)
    cfg = cfg_cls(**_TINY_LM, num_experts_per_tok=2, experts_implementation="eager", **experts)
    torch.manual_seed(0)
    model = model_cls(cfg).eval()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(4))
    ref_logits, ref_grads = _logits_and_grads(model, ids)
    calls = _count_fused_moe(monkeypatch)
    model.set_experts_implementation("pygen")
    logits, grads = _logits_and_grads(model, ids)
    assert len(calls) == 2  # both layers are MoE layers
    assert_close_to_ref(logits, ref_logits, atol=1e-5, what="logits")
    for n in ref_grads:
        assert_close_to_ref(grads[n], ref_grads[n], atol=1e-6, what=f"d {n}")


def test_set_experts_implementation_after_a_swap_is_refused():
    """After the MoE swap, set_experts_implementation would not reach pygen's modules: a clear
    error (issue 13); an unpatched model keeps the method."""
    model = _model(_config(experts_implementation="eager"))
    tm.patch_deepseek_moe(model, backend="reference")
    with pytest.raises(RuntimeError, match="patch_transformers_moe replaced this model's MoE"):
        model.set_experts_implementation("grouped_mm")
    _model(_config(experts_implementation="eager")).set_experts_implementation("grouped_mm")


def _checkpoint_without_expert_weights(path, cfg) -> None:
    """save_pretrained of a random model, minus layer 1's routed-expert down projections (the
    checkpoint stores them per expert; transformers merges them into experts.down_proj)."""
    from safetensors.torch import load_file, save_file

    _model(cfg).save_pretrained(path)
    file = path / "model.safetensors"
    sd = load_file(file)
    gone = [k for k in sd if k.startswith("model.layers.1.mlp.experts.") and k.endswith("down_proj.weight")]
    assert len(gone) == 8
    save_file({k: v for k, v in sd.items() if k not in gone}, file, metadata={"format": "pt"})


def _load_poisoned(load, seed=0):
    """``load()`` with uninitialised memory filled with NaN / the largest integer (torch's
    deterministic mode), so a tensor that nothing initialises cannot pass for a right one."""
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        return load().eval()
    finally:
        torch.use_deterministic_algorithms(was)


@pytest.mark.parametrize("route", ["patched", "implementations"])
def test_from_pretrained_initialises_missing_expert_weights(tmp_path, route):
    """from_pretrained builds the model on the meta device and initialises what the checkpoint
    lacks through the model's _init_weights. Into a model patched at construction (issue 13: the
    routed experts' down_proj and the tokens_per_expert buffer stayed uninitialised memory) and into
    one built with experts_implementation / attn_implementation "pygen", the missing weight gets
    exactly the stock model's initialisation (same seed, same draws) and the logits match."""
    import pygen.integrations.transformers_mla  # noqa: F401 (registers attn_implementation "pygen")
    import pygen.patch

    cfg = _config(experts_implementation="eager", attn_implementation="eager", initializer_range=0.3)
    _checkpoint_without_expert_weights(tmp_path, cfg)
    cls = transformers.DeepseekV3ForCausalLM
    stock = _load_poisoned(lambda: cls.from_pretrained(tmp_path))

    class Patched(cls):  # how a model is patched before from_pretrained loads into it
        def __init__(self, config):
            super().__init__(config)
            assert pygen.patch.patch(self, backend="reference") == {"DeepseekV3Attention": 2, "DeepseekV3MoE": 1}

    if route == "patched":
        model = _load_poisoned(lambda: Patched.from_pretrained(tmp_path))
        moe = model.model.layers[1].mlp
        assert isinstance(moe, MoE)
        assert torch.equal(moe.tokens_per_expert, torch.zeros(8, dtype=torch.int64))
    else:
        model = _load_poisoned(
            lambda: cls.from_pretrained(tmp_path, experts_implementation="pygen", attn_implementation="pygen")
        )
        moe = model.model.layers[1].mlp
        assert model.config._experts_implementation == model.config._attn_implementation == "pygen"
    want = stock.model.layers[1].mlp.experts.down_proj.detach()
    assert torch.isfinite(want).all() and 0.25 < float(want.std()) < 0.35  # Normal(0, initializer_range)
    assert torch.equal(moe.experts.down_proj, want)
    assert torch.equal(moe.experts.gate_up_proj, stock.model.layers[1].mlp.experts.gate_up_proj)  # loaded
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_close_to_ref(model(ids).logits, stock(ids).logits, atol=1e-5, what=f"{route} logits")


def test_init_weights_after_the_swap_reaches_pygen_modules():
    """model.initialize_weights() (transformers' path for weights nothing loaded) re-initialises
    pygen's MoE pieces after a swap, keeps what is flagged as loaded, and the model still pickles."""
    import pickle

    model = _model(_config(experts_implementation="eager", initializer_range=0.3))
    tm.patch_deepseek_moe(model, backend="reference")
    moe = model.model.layers[1].mlp
    with torch.no_grad():
        moe.experts.gate_up_proj.fill_(float("nan"))
        moe.experts.down_proj.fill_(7.0)
        moe.tokens_per_expert.fill_(5)
    moe.experts.down_proj._is_hf_initialized = True  # as from_pretrained flags a loaded tensor
    for m in model.modules():
        m._is_hf_initialized = False
    model.initialize_weights()
    drawn = moe.experts.gate_up_proj.detach()
    assert torch.isfinite(drawn).all() and 0.25 < float(drawn.std()) < 0.35
    assert (moe.experts.down_proj == 7.0).all()
    assert not moe.tokens_per_expert.any()
    again = pickle.loads(pickle.dumps(model))
    assert type(again.model.layers[1].mlp.gate) is type(moe.gate)
    assert isinstance(again.model.layers[1].mlp.gate, hf_ds.DeepseekV3TopkRouter)


def test_parallel_plans_resolve_on_a_patched_model(caplog):
    """tp_plan="auto" (and the experts' ep_plan) resolve against module and parameter names
    (transformers' _resolve_parallel_plans: validation, then one entry per layer): the swapped
    modules keep every submodule name the plans use, so a patched model resolves to the same plans
    as the stock one, on modules of the same kinds, and warns about nothing more."""
    from transformers.distributed import DistributedConfig

    dc = DistributedConfig(tp_size=2, ep_size=2, tp_plan="auto")
    stock, model = _model(_config()), _model(_config())
    caplog.set_level("WARNING")
    want = stock._resolve_parallel_plans(dc)
    warned = sorted(r.getMessage() for r in caplog.records)
    caplog.clear()
    import pygen.patch

    assert pygen.patch.patch(model, backend="reference") == {"DeepseekV3Attention": 2, "DeepseekV3MoE": 1}
    got = model._resolve_parallel_plans(dc)
    assert got == want and len(got[0]) > 20 and "model.layers.1.mlp.experts" in got[1]
    assert sorted(r.getMessage() for r in caplog.records) == warned
    modules, stock_modules = dict(model.named_modules()), dict(stock.named_modules())
    for name in got[0]:  # the TP styles shard nn.Linear / nn.Embedding weights: the same objects' kinds
        if name in modules:
            assert type(modules[name]) is type(stock_modules[name]), name
        else:
            assert model.get_parameter(name).shape == stock.get_parameter(name).shape, name
