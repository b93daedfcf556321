"""pygen.nn.MLA against transformers' DeepseekV3Attention (eager) on tiny random configs: same
state_dict, same outputs and gradients, same RoPE/YaRN numbers; the module swap in a whole
DeepseekV3ForCausalLM (logits and greedy generate with transformers' cache); and
attn_implementation="pygen" through AttentionInterface, padding fallback included.
transformers is an optional test dependency."""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from helpers import MODULE_BACKENDS as BACKENDS, TINY_MLA_DIMS, assert_close_to_ref, requires_triton  # noqa: E402 (after importorskip)
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM  # noqa: E402 (after importorskip)
from transformers.cache_utils import DynamicCache  # noqa: E402 (after importorskip)
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf  # noqa: E402 (after importorskip)

import pygen.integrations.transformers_mla as tm  # noqa: E402 (after importorskip)
from pygen.nn._rope import RotaryEmbedding  # noqa: E402 (after importorskip)
from pygen.nn.mla import MLA  # noqa: E402 (after importorskip)

YARN = dict(
    rope_type="yarn",
    factor=40.0,
    mscale=1.0,
    mscale_all_dim=1.0,
    original_max_position_embeddings=64,
    beta_fast=32,
    beta_slow=1,
    rope_theta=10000.0,
)


# tiny problems: single-threaded (tests/conftest.py::one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def hf_config(**kw) -> DeepseekV3Config:
    base = dict(
        TINY_MLA_DIMS,
        vocab_size=97,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        rope_parameters=dict(YARN),
        max_position_embeddings=2560,
        attn_implementation="eager",
    )
    base.update(kw)
    return DeepseekV3Config(**base)


def randomize(module: torch.nn.Module, seed: int, std: float = 0.15) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            v = (
                torch.randn(p.shape, generator=g, dtype=torch.float64) * std
                if p.dim() > 1
                else torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5
            )
            p.copy_(v)


@pytest.mark.parametrize("rope", ["yarn", "default"])
def test_rope_and_softmax_scale_match_transformers(rope):
    params = dict(YARN) if rope == "yarn" else {"rope_type": "default", "rope_theta": 10000.0}
    cfg = hf_config(rope_parameters=params)
    x = torch.zeros(1, 1, dtype=torch.float64)
    pos = torch.tensor([[0, 1, 5, 63, 64, 1000, 2559]])
    c_hf, s_hf = hf.DeepseekV3RotaryEmbedding(cfg)(x, pos)
    c, s = RotaryEmbedding(cfg)(x, pos)
    assert torch.equal(c, c_hf) and torch.equal(s, s_hf)
    assert MLA(cfg, 0).scaling == pytest.approx(hf.DeepseekV3Attention(cfg, 0).scaling, rel=1e-15)


def _pair(cfg, backend, seed=0):
    ref = hf.DeepseekV3Attention(cfg, 0)
    randomize(ref, seed)
    m = MLA(cfg, 0, backend=backend)
    m.load_state_dict(ref.state_dict(), strict=True)  # transformers' keys load unchanged
    ref.load_state_dict(m.state_dict(), strict=True)  # and back
    return ref, m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q_lora,interleave", [(24, True), (None, False)])
def test_module_matches_eager_outputs_and_grads(backend, q_lora, interleave):
    cfg = hf_config(q_lora_rank=q_lora, rope_interleave=interleave, attention_bias=q_lora is None)
    ref, m = _pair(cfg, backend)
    b, s = 2, 6
    x = torch.randn(b, s, 48, generator=torch.Generator().manual_seed(1))
    pe = hf.DeepseekV3RotaryEmbedding(cfg)(x, torch.arange(s)[None].expand(b, -1))
    mask = torch.full((s, s), torch.finfo(torch.float32).min).triu(1)[None, None].expand(b, 1, s, s)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_hf, _ = ref(x1, pe, mask)
    out, w = m(x2, pe, mask)
    assert w is None and m.last_path == "mla_prefill"
    g = torch.randn_like(out)
    grads_hf = torch.autograd.grad(out_hf, [x1] + list(ref.parameters()), g)
    grads = torch.autograd.grad(out, [x2] + list(m.parameters()), g)
    assert_close_to_ref(out, out_hf.detach(), atol=2e-5, what="MLA vs eager")
    for a, r in zip(grads, grads_hf):
        assert_close_to_ref(a, r, atol=1e-4, what="MLA grad vs eager")


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_with_transformers_cache(backend):
    """Prefill 5 tokens then decode 2, each side with its own DynamicCache (latents cached as
    transformers 5.x caches them); the decode masks are what transformers' eager gives (zeros), and
    the decode steps run absorbed mla_decode over the cached latents."""
    cfg = hf_config()
    ref, m = _pair(cfg, backend, seed=3)
    x = torch.randn(2, 7, 48, generator=torch.Generator().manual_seed(4))
    rope = hf.DeepseekV3RotaryEmbedding(cfg)
    c_hf, c_pg = DynamicCache(config=cfg), DynamicCache(config=cfg)
    with torch.no_grad():
        for lo, hi in ((0, 5), (5, 6), (6, 7)):
            pe = rope(x, torch.arange(lo, hi)[None].expand(2, -1))
            n = hi - lo
            mask = torch.full((n, hi), torch.finfo(torch.float32).min).triu(lo + 1)[None, None].expand(2, 1, n, hi)
            a = ref(x[:, lo:hi], pe, mask, cache=c_hf)[0]
            b = m(x[:, lo:hi], pe, mask, past_key_values=c_pg)[0]  # the old keyword works too
            assert m.last_path == ("mla_prefill" if lo == 0 else "mla_decode (absorbed, transformers cache)")
            assert_close_to_ref(b, a, atol=2e-5, what=f"tokens {lo}:{hi}")
    assert c_pg.get_seq_length() == 7


def test_dropout_in_training_and_mask_batch():
    """Training with attention dropout: decode steps on transformers' cache take the explicit path,
    which applies it (the absorbed decode kernel has none, and skipped it silently), and eval mode
    takes the absorbed path again; a 4-D mask of another batch is refused (the causal test reads
    only its last two dims and values, so it took the prefill path unnoticed)."""
    import copy

    cfg = hf_config(attention_dropout=0.5)
    _, m = _pair(cfg, "reference", seed=3)
    x = torch.randn(1, 6, 48, generator=torch.Generator().manual_seed(4))
    rope = hf.DeepseekV3RotaryEmbedding(cfg)
    cache = DynamicCache(config=cfg)
    pe = rope(x[:, 5:], torch.tensor([[5]]))
    with torch.no_grad():
        m.train()
        m(x[:, :5], rope(x[:, :5], torch.arange(5)[None]), None, cache=cache)
        torch.manual_seed(0)
        outs = [m(x[:, 5:], pe, None, cache=copy.deepcopy(cache))[0] for _ in range(2)]
        assert m.last_path == "explicit (dropout)" and not torch.equal(outs[0], outs[1])
        m.eval()
        m(x[:, 5:], pe, None, cache=copy.deepcopy(cache))
        assert m.last_path == "mla_decode (absorbed, transformers cache)"
        x2 = torch.randn(2, 5, 48)
        bad = torch.zeros(3, 1, 5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), -1e9)
        with pytest.raises(ValueError, match="attention_mask has shape"):
            m(x2, rope(x2, torch.arange(5)[None].expand(2, -1)), bad)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(hf_config(**kw)).eval()
    randomize(model, seed, std=0.2)
    return model


@pytest.mark.parametrize("backend", BACKENDS)
def test_patch_deepseek_attention_whole_model(backend):
    model = _model()
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(5))
    keys = set(model.state_dict())
    with torch.no_grad():
        logits = model(ids).logits
        gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    old = model.model.layers[1].self_attn
    assert tm.patch_deepseek_attention(model, backend=backend) == {"DeepseekV3Attention": 2}
    new = model.model.layers[1].self_attn
    assert isinstance(new, MLA) and new.backend == backend
    assert new.kv_b_proj.weight is old.kv_b_proj.weight  # the very Parameter objects
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        assert_close_to_ref(model(ids).logits, logits, atol=2e-5, what="patched logits")
        assert new.last_path == "mla_prefill"
        assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0), gen)
        assert new.last_path == "mla_decode (absorbed, transformers cache)"
    assert tm.patch_deepseek_attention(model) == {}  # nothing left to swap


def test_attention_interface_pygen_and_padding_fallback():
    model = _model(seed=1)
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(6))
    am = torch.ones(2, 7, dtype=torch.long)
    am[0, :3] = 0  # left padding of row 0
    with torch.no_grad():
        logits = model(ids).logits
        padded = model(ids, attention_mask=am).logits
        gen = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        model.set_attn_implementation("pygen")
        tm.FALLBACKS.clear()
        assert_close_to_ref(model(ids).logits, logits, atol=2e-5, what="attn_implementation='pygen'")
        assert torch.equal(model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0), gen)
        assert not tm.FALLBACKS  # plain causal: the kernel every time
        with pytest.warns(UserWarning, match="not plain causal"):
            out = model(ids, attention_mask=am).logits
        assert sum(tm.FALLBACKS.values()) == 2  # one per layer
        assert_close_to_ref(out, padded, atol=2e-5, what="padding fallback")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once per reason only
            model(ids, attention_mask=am)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_function_direct(backend):
    """pygen_attention_forward against transformers' eager_attention_forward: grouped keys
    (repeated), non-causal (is_causal=False), bottom-right causal with more keys than queries,
    and the dropout fallback."""
    g = torch.Generator().manual_seed(9)
    b, h, hk, s, kv, d, dv = 2, 4, 2, 3, 5, 24, 16
    q = torch.randn(b, h, s, d, generator=g)
    k = torch.randn(b, hk, kv, d, generator=g)
    v = torch.randn(b, hk, kv, dv, generator=g)
    mod = torch.nn.Module()
    mod.num_key_value_groups, mod.is_causal, mod.pygen_backend = h // hk, True, backend
    mod.eval()
    low = torch.finfo(torch.float32).min
    causal = torch.zeros(b, 1, s, kv).masked_fill(torch.ones(s, kv, dtype=torch.bool).tril(kv - s).logical_not(), low)
    tm.FALLBACKS.clear()
    for mask, is_causal in ((causal, None), (None, True), (torch.zeros(b, 1, s, kv), False)):
        got, w = tm.pygen_attention_forward(mod, q, k, v, mask, scaling=0.3, is_causal=is_causal)
        want, _ = hf.eager_attention_forward(mod, q, k, v, causal if is_causal is not False else mask, 0.3)
        assert w is None and got.shape == (b, s, h, dv)
        assert_close_to_ref(got, want, atol=2e-5, what=f"mask={mask is not None} causal={is_causal}")
    assert not tm.FALLBACKS
    mod.train()
    with pytest.warns(UserWarning, match="dropout"):
        out, _ = tm.pygen_attention_forward(mod, q, k, v, None, dropout=0.5, scaling=0.3)
    assert out.shape == (b, s, h, dv) and tm.FALLBACKS["attention dropout in training"] == 1
    with pytest.raises(ValueError, match="multiple"):
        tm.pygen_attention_forward(mod, q, k[:, :1].expand(-1, 3, -1, -1), v[:, :1].expand(-1, 3, -1, -1), None)


def test_patched_model_compiles_fullgraph():
    """torch.compile(fullgraph=True) of a patched DeepseekV3 forward, as of the stock model: the
    swapped MLA decides causality without reading the mask's values while tracing (issue 13);
    the compiled logits equal the stock model's."""
    model = _model()
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        stock = model(ids).logits
    tm.patch_deepseek_attention(model, backend="reference")
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert_close_to_ref(compiled(ids).logits, stock, atol=2e-5, what="compiled patched logits")


@requires_triton
def test_patched_model_generate_compiles_fullgraph():
    """generate() with the forward of a model patched with both swaps compiled with
    fullgraph=True (prefill, then decode steps over transformers' DynamicCache) gives the stock
    model's tokens, and the compiled forward its logits. The MoE runs on the Triton backend: the
    reference fused_moe loops over the experts that received tokens (data-dependent, like
    transformers' eager experts, which do not compile with fullgraph either)."""
    import pygen.integrations.transformers_moe as tmoe

    model = _model(seed=4)
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(5))
    kw = dict(max_new_tokens=2, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        logits, tokens = model(ids).logits, model.generate(ids, **kw)
    tm.patch_deepseek_attention(model, backend="reference")
    assert tmoe.patch_deepseek_moe(model, backend="triton") == {"DeepseekV3MoE": 1}
    torch._dynamo.reset()
    model.forward = torch.compile(model.forward, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert_close_to_ref(model(ids).logits, logits, atol=2e-5, what="compiled patched logits")
        assert torch.equal(model.generate(ids, **kw), tokens)


def test_set_attn_implementation_after_a_swap_is_refused():
    """After the swap, transformers' set_attn_implementation would reconfigure modules that are
    gone: it raises a clear error instead (issue 13); the model still pickles, and an unpatched
    model keeps the method."""
    import io
    import pickle

    model = _model()
    tm.patch_deepseek_attention(model, backend="reference")
    with pytest.raises(RuntimeError, match="patch_transformers_deepseek replaced this model's attention"):
        model.set_attn_implementation("sdpa")
    buf = io.BytesIO()
    pickle.dump(model, buf)
    buf.seek(0)
    again = pickle.load(buf)  # the swapped module's class (typed as DeepseekV3Attention) is found by name
    assert type(again.model.layers[0].self_attn) is type(model.model.layers[0].self_attn)
    assert "set_attn_implementation" not in type(model).__dict__
    _model().set_attn_implementation("sdpa")  # untouched


@pytest.mark.parametrize("route", ["patch", "attn_implementation"])
def test_output_attentions_like_eager(route):
    """output_attentions=True returns eager's attention weights [b, H, q, k] per layer, in a
    forward and in generate (decode steps over transformers' cache), through the module swap
    and attn_implementation="pygen" (issue 13: both returned none); without the request the fast
    path runs and nothing is returned. transformers installed its recording hooks in the stock
    run, before the swap: they move to the new modules."""
    model = _model(seed=2)
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(8))
    gen_kw = dict(max_new_tokens=2, do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    with torch.no_grad():
        want = model(ids, output_attentions=True)
        want_gen = model.generate(ids, output_attentions=True, **gen_kw).attentions
    assert len(want.attentions) == 2 and want.attentions[0].shape == (2, 2, 7, 7)
    if route == "attn_implementation":
        model.set_attn_implementation("pygen")
    else:
        tm.patch_deepseek_attention(model, backend="reference")
        assert isinstance(model.model.layers[0].self_attn, hf.DeepseekV3Attention)  # what the recorder hooks
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # attn_implementation="pygen" warns once that it falls back
        got = model(ids, output_attentions=True)
        got_gen = model.generate(ids, output_attentions=True, **gen_kw).attentions
        plain = model(ids)
    assert_close_to_ref(got.logits, want.logits, atol=2e-5, what="logits")
    assert len(got.attentions) == 2
    for a, r in zip(got.attentions, want.attentions):
        assert a.shape == r.shape
        assert_close_to_ref(a, r, atol=2e-6, what="attention weights")
    assert len(got_gen) == len(want_gen) == 2  # prompt step, one decode step
    for step, (a_step, r_step) in enumerate(zip(got_gen, want_gen)):
        for a, r in zip(a_step, r_step):
            assert a.shape == r.shape == (2, 2, 7 if step == 0 else 1, 7 + step)
            assert_close_to_ref(a, r, atol=2e-6, what=f"generate step {step} weights")
    assert plain.attentions is None
    if route != "attn_implementation":
        assert model.model.layers[1].self_attn.last_path == "mla_prefill"  # fast path when not asked


def test_output_attentions_recorder_installed_after_the_swap():
    """transformers installs its recording hooks on the first run that asks for outputs: on a model
    patched before that, it finds the swapped modules by their type. The config flag asks too
    (transformers' rule)."""
    stock, model = _model(seed=2), _model(seed=2)
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(8))
    tm.patch_deepseek_attention(model, backend="reference")
    with torch.no_grad():
        want = stock(ids, output_attentions=True).attentions
        got = model(ids, output_attentions=True).attentions
        model.config.output_attentions = True
        from_config = model(ids).attentions
    assert len(got) == len(from_config) == 2
    for a, b, r in zip(got, from_config, want):
        assert_close_to_ref(a, r, atol=2e-6, what="weights after the swap")
        assert torch.equal(a, b)


def test_output_attentions_refused_on_the_paged_cache():
    from pygen.nn._mla_cache import PagedMLACache

    cfg = hf_config()
    m = MLA(cfg, 0, backend="reference")
    cache = PagedMLACache(1, 4, page_size=4, kv_lora_rank=512, qk_rope_head_dim=64)
    x = torch.randn(1, 3, 48)
    pe = hf.DeepseekV3RotaryEmbedding(cfg)(x, torch.arange(3)[None])
    with pytest.raises(ValueError, match="output_attentions"):
        m(x, pe, None, cache, output_attentions=True)
