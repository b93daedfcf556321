"""pygen.models.deepseek: greedy generation on the paged latent cache equals greedy decoding by
full-sequence recomputation, token by token (logits too); the profile model's build /
example_inputs / set_backend contract; the dense-MLP fallback; cache reuse and bad arguments."""

from __future__ import annotations

import pytest
import torch
from helpers import MODULE_BACKENDS as BACKENDS, assert_close_to_ref

from pygen.models import deepseek as D
from pygen.models.detection import set_backend
from pygen.nn.mla import MLA

# tiny problems: single-threaded (tests/conftest.py::one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def make_lm(backend, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = D.DeepSeekV3Config.quick()
    if kw:
        cfg = D.DeepSeekV3Config(**{**cfg.__dict__, **kw})
    m = D.DeepSeekV3LM(cfg, backend=backend).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # large enough weights that the greedy tokens vary
        for p in m.parameters():
            p.copy_(
                torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3
                if p.dim() > 1
                else torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5
            )
    return m.to(dtype).eval()


def recompute_greedy(m, ids, n):
    seq, logits = ids, []
    with torch.no_grad():
        for _ in range(n):
            lg = m(seq)[:, -1]
            logits.append(lg)
            seq = torch.cat([seq, lg.argmax(-1, keepdim=True)], 1)
    return seq, logits


@pytest.mark.parametrize(
    "backend,page_size", [("reference", 4), ("reference", 64), pytest.param("triton", 4, marks=BACKENDS[1].marks)]
)
def test_generation_with_paged_cache_equals_recomputation(backend, page_size):
    """The MLA ops run on ``backend``; the MoE layer stays on its reference (its Triton kernels
    under the interpreter cost ~20 s here and are tested by the MoE family)."""
    dtype = torch.float64 if backend == "reference" else torch.float32
    m = make_lm(backend, dtype)
    for lyr in m.layers:
        if hasattr(lyr.mlp, "backend"):
            lyr.mlp.backend = "reference"
    assert type(m.layers[0].mlp).__name__ == "DenseMLP"  # first_k_dense_replace = 1
    assert type(m.layers[1].mlp).__name__ == "MoE"
    ids = torch.randint(0, m.cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    n = 7
    want, want_logits = recompute_greedy(m, ids, n)
    assert len(set(want[:, 6:].flatten().tolist())) > 2  # not a degenerate constant stream
    # the paged loop, with each step's logits captured
    cache = m.new_cache(6 + n, 2, page_size)
    got_logits = []
    orig = m.forward

    def spy(*a, **k):
        out = orig(*a, **k)
        got_logits.append(out[:, -1])
        return out

    m.forward = spy
    got = m.generate(ids, n, cache=cache)
    del m.forward
    assert torch.equal(got, want)
    assert [lyr.self_attn.last_path for lyr in m.layers] == ["mla_decode (absorbed)"] * 2
    for a, b in zip(got_logits, want_logits):
        assert_close_to_ref(a, b, atol=1e-9 if dtype == torch.float64 else 1e-4, what="step logits")
    assert cache.num_free_blocks == cache.num_blocks  # sequences freed afterwards
    # the pool is reusable: a second run on the same cache gives the same tokens
    assert torch.equal(m.generate(ids, n, cache=cache), want)


def test_generation_fp8_cache_runs_and_mostly_agrees():
    """The FP8 cache changes the numbers (e4m3 latents), so tokens may differ late in the stream;
    the first decoded token comes from the (exact) prefill and must agree."""
    m = make_lm("reference", torch.float32)
    ids = torch.randint(0, m.cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(2))
    want, _ = recompute_greedy(m, ids, 4)
    got = m.generate(ids, 4, page_size=4, cache_dtype=torch.uint8)
    assert got.shape == want.shape and torch.equal(got[:, :7], want[:, :7])


@pytest.mark.parametrize("act", ["silu", "gelu", "gelu_pytorch_tanh"])
def test_dense_mlp_follows_hidden_act(act):
    # the layers below first_k_dense_replace are transformers' DeepseekV3MLP with ACT2FN[hidden_act]
    # (DenseMLP was silu whatever the config said: 0.87 off a gelu layer)
    hf = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")
    from transformers import DeepseekV3Config

    want = hf.DeepseekV3MLP(DeepseekV3Config(hidden_size=16, intermediate_size=24, hidden_act=act))
    got = D.DenseMLP(16, 24, act)
    got.load_state_dict(want.state_dict())
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got(x), want(x), rtol=1e-6, atol=1e-6)
    block = D.DeepSeekV3Block(D.replace(D.DeepSeekV3Config.quick(), hidden_act=act), 0, backend="reference")
    assert isinstance(block.mlp, D.DenseMLP) and block.mlp.activation == D._activation(act)


def test_generate_bad_args():
    m = make_lm("reference")
    ids = torch.zeros(1, 3, dtype=torch.long)
    assert torch.equal(m.generate(ids, 0), ids)
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(ids, -1)
    small = m.new_cache(4, 1, page_size=4)  # room for 4 tokens only
    with pytest.raises(RuntimeError, match="exhausted"):
        m.generate(ids, 3, cache=small)
    assert small.num_free_blocks == small.num_blocks and small._step is None
    # the paged decode kernel has no dropout: generating in training mode with attention dropout is
    # refused after the prompt's step (it was skipped silently)
    drop = make_lm("reference", attention_dropout=0.1).train()
    with pytest.raises(ValueError, match="attention_dropout"):
        drop.generate(ids, 2)
    assert drop.eval().generate(ids, 2).shape == (1, 5)


def test_profile_model_contract():
    model, cfg = D.build("deepseek_v3_block", quick=True, backend="reference")
    assert set(D.MODELS) == {"deepseek_v3_block", "deepseek_v3_decode"}
    (x,) = model.example_inputs(cfg, "cpu", torch.float32)
    assert x.shape == (cfg.batch, cfg.seq, cfg.hidden_size)
    with torch.no_grad():
        ref = model(x)
        set_backend(model, None)
        assert all(mm.backend is None for mm in model.modules() if isinstance(mm, MLA))
        assert_close_to_ref(model(x), ref, atol=1e-5, what="auto backend")
    assert ref.shape == x.shape and torch.isfinite(ref).all()
    default = D.DeepSeekV3Config()
    assert (
        default.hidden_size,
        default.num_attention_heads,
        default.kv_lora_rank,
        default.q_lora_rank,
        default.moe_intermediate_size,
        default.num_experts_per_tok,
    ) == (7168, 128, 512, 1536, 2048, 8)


def test_decode_profile_model():
    """deepseek_v3_decode: one token per sequence against a pre-filled paged cache; each call rolls
    its step back (repeatable), and the pages follow .to()."""
    model, cfg = D.build("deepseek_v3_decode", quick=True, backend="reference")
    (x,) = model.example_inputs(cfg, "cpu", torch.float32)
    assert x.shape == (cfg.decode_batch, 1, cfg.hidden_size)
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b) and model.block.self_attn.last_path == "mla_decode (absorbed)"
        cache, sids = model._cache
        assert [cache.seqlen(s) for s in sids] == [cfg.decode_context] * cfg.decode_batch and cache._step is None
        model.double()
        c = model(x.double())
        assert model._cache[0].kv[0].dtype == torch.float64
        assert_close_to_ref(c.float(), a, atol=1e-4, what="float64 vs float32 decode profile")
