"""pygen.nn.MLA on its own (no transformers): the kernel paths against the module's explicit
softmax-attention math (float64), absorbed paged decode against full recomputation, the weight
absorption identities, YaRN formulas, and the paged cache manager's invariants and errors.
The comparison with transformers' DeepseekV3Attention is in tests/mla/test_mla_transformers.py."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import ATOL, MODULE_BACKENDS, TINY_MLA_DIMS, TRITON_SKIP, assert_close_to_ref

from pygen.models.deepseek import DeepSeekV3Config
from pygen.nn import _mla_absorb as absorb
from pygen.nn._mla_cache import PagedMLACache
from pygen.nn._rope import RotaryEmbedding, inv_freq_and_attention_factor, softmax_scale, yarn_mscale
from pygen.nn.mla import MLA, attention_explicit, mask_is_causal

BACKENDS = MODULE_BACKENDS


# tiny problems: single-threaded (tests/conftest.py::one_thread says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**kw) -> DeepSeekV3Config:
    """DeepSeek-V3's latent dims (512 + 64, what the decode kernel takes) with 2 small heads."""
    base = {**TINY_MLA_DIMS, **kw}
    return DeepSeekV3Config.quick().__class__(**{**DeepSeekV3Config.quick().__dict__, **base})


def make_mla(cfg, backend, dtype=torch.float64, seed=0, std=0.15):
    torch.manual_seed(seed)
    m = MLA(cfg, 0, backend=backend).double()
    with torch.no_grad():  # drawn in float64 whatever the dtype: same weights for every dtype
        for p in m.parameters():
            p.normal_(0, std) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return m.to(dtype)


def pos_emb(cfg, x, positions):
    return RotaryEmbedding(cfg)(x, positions)


def explicit_forward(m: MLA, x, pe, mask=None, kv_roundtrip=None):
    """The module's math without any pygen op: expand keys/values, softmax attention, o_proj.
    ``kv_roundtrip(latent, k_rope)`` models what a lossy (FP8) cache stores."""
    q_nope, q_rope, latent, k_rope = m.project(x, pe)
    if kv_roundtrip is not None:
        latent, k_rope = kv_roundtrip(latent, k_rope)
    k, v = m.expand_kv(latent, k_rope)
    o = attention_explicit(torch.cat([q_nope, q_rope], -1), k, v, mask, m.scaling)
    return m.o_proj(o.reshape(*x.shape[:2], -1))


# ---- RoPE / scale ---------------------------------------------------------------------------------
def test_yarn_formulas():
    cfg = DeepSeekV3Config()  # DeepSeek-V3's rope_parameters (factor 40, mscale 1 / 1)
    m = 0.1 * math.log(40) + 1
    assert yarn_mscale(40, 1.0) == pytest.approx(m) and yarn_mscale(1.0, 1.0) == 1.0
    assert softmax_scale(cfg) == pytest.approx(192**-0.5 * m * m, rel=1e-12)
    inv, att = inv_freq_and_attention_factor(cfg)
    base = 1.0 / 10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    assert att == 1.0 and inv.shape == (32,)
    # fast dims (many turns in 4096 tokens) keep their frequency, slow ones are divided by 40
    torch.testing.assert_close(inv[:8].double(), base[:8], rtol=1e-6, atol=0)
    torch.testing.assert_close(inv[-4:].double(), base[-4:] / 40, rtol=1e-6, atol=0)
    assert bool(((inv.double() <= base * (1 + 1e-6)) & (inv.double() >= base / 40 * (1 - 1e-6))).all())
    plain = DeepSeekV3Config(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    assert softmax_scale(plain) == pytest.approx(192**-0.5)
    torch.testing.assert_close(inv_freq_and_attention_factor(plain)[0].double(), base, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="rope_type"):
        inv_freq_and_attention_factor(DeepSeekV3Config(rope_parameters={"rope_type": "longrope"}))


def test_state_dict_keys():
    keys = set(MLA(tiny_config(), 0).state_dict())
    assert keys == {
        "q_a_proj.weight",
        "q_a_layernorm.weight",
        "q_b_proj.weight",
        "kv_a_proj_with_mqa.weight",
        "kv_a_layernorm.weight",
        "kv_b_proj.weight",
        "o_proj.weight",
    }
    m = MLA(tiny_config(q_lora_rank=None, attention_bias=True), 0)
    assert set(m.state_dict()) == {
        "q_proj.weight",
        "kv_a_proj_with_mqa.weight",
        "kv_a_proj_with_mqa.bias",
        "kv_a_layernorm.weight",
        "kv_b_proj.weight",
        "o_proj.weight",
        "o_proj.bias",
    }
    assert m.q_a_proj is None and m.q_b_proj is None and m.kv_b_proj.weight.shape == (2 * 64, 512)


# ---- prefill path -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q_lora", [24, None])
def test_prefill_matches_explicit_attention_and_grads(backend, q_lora):
    dtype = torch.float64 if backend == "reference" else torch.float32
    cfg = tiny_config(q_lora_rank=q_lora)
    m = make_mla(cfg, backend, dtype)
    x = torch.randn(2, 7, 48, dtype=dtype, requires_grad=True)
    pe = pos_emb(cfg, x, torch.arange(3, 10)[None].expand(2, -1))
    out, weights = m(x, pe, None)
    assert weights is None and m.last_path == "mla_prefill"
    params = [p for p in m.parameters()]
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x] + params, g)
    m64 = make_mla(cfg, "reference", torch.float64)
    x64 = x.detach().double().requires_grad_()
    exp = explicit_forward(m64, x64, pos_emb(cfg, x64, torch.arange(3, 10)[None].expand(2, -1)))
    exp_grads = torch.autograd.grad(exp, [x64] + list(m64.parameters()), g.double())
    atol = 1e-10 if dtype == torch.float64 else 1e-4
    assert_close_to_ref(out, exp.detach(), atol=atol, what="MLA prefill output")
    for a, b in zip(grads, exp_grads):
        assert_close_to_ref(a, b, atol=atol * 10, what="MLA prefill grad")


def test_mask_routing_and_mask_is_causal():
    cfg = tiny_config()
    m = make_mla(cfg, "reference")
    x = torch.randn(2, 5, 48, dtype=torch.float64)
    pe = pos_emb(cfg, x, torch.arange(5)[None].expand(2, -1))
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, 1, 5, 5)
    additive = torch.zeros(2, 1, 5, 5, dtype=torch.float64).masked_fill(~causal, torch.finfo(torch.float64).min)
    assert mask_is_causal(None, 5, 5) and mask_is_causal(causal, 5, 5) and mask_is_causal(additive, 5, 5)
    assert not mask_is_causal(causal, 5, 6) and not mask_is_causal(causal[0, 0], 5, 5)
    # bottom-right alignment: 2 new queries over 5 keys
    br = torch.ones(2, 5, dtype=torch.bool).tril(3)[None, None]
    assert mask_is_causal(br, 2, 5) and not mask_is_causal(torch.ones(2, 5, dtype=torch.bool).tril()[None, None], 2, 5)
    ref = explicit_forward(m, x, pe)
    for mask in (causal, additive):
        out = m(x, pe, mask)[0]
        assert m.last_path == "mla_prefill"
        assert_close_to_ref(out, ref, what="causal mask")
    padded = causal.clone()
    padded[0, :, :, :2] = False  # left padding of row 0
    out = m(x, pe, padded)[0]
    assert m.last_path.startswith("explicit")
    assert_close_to_ref(out, explicit_forward(m, x, pe, padded), what="padded")
    assert torch.isfinite(out).all()  # fully masked rows average (eager semantics), no NaN
    m.train()
    m.attention_dropout = 0.5
    m(x, pe, None)
    assert m.last_path == "explicit (dropout)"


# ---- absorption -------------------------------------------------------------------------------------
def test_absorption_identities():
    g = torch.Generator().manual_seed(3)
    h, dn, dv, r = 3, 8, 5, 16
    w = torch.randn(h * (dn + dv), r, generator=g, dtype=torch.float64)
    w_uk, w_uv = absorb.split_kv_b(w, h, dn, dv)
    c = torch.randn(7, r, generator=g, dtype=torch.float64)  # 7 cached latents
    q = torch.randn(2, h, dn, generator=g, dtype=torch.float64)
    kv = (c @ w.T).view(7, h, dn + dv)
    k_nope, v = kv[..., :dn], kv[..., dn:]
    torch.testing.assert_close(
        torch.einsum("bhd,thd->bht", q, k_nope), torch.einsum("bhr,tr->bht", absorb.absorb_query(q, w_uk), c)
    )
    p = torch.softmax(torch.randn(2, h, 7, generator=g, dtype=torch.float64), -1)
    torch.testing.assert_close(
        torch.einsum("bht,thv->bhv", p, v), absorb.absorb_output(torch.einsum("bht,tr->bhr", p, c), w_uv)
    )
    with pytest.raises(ValueError, match="kv_b_weight"):
        absorb.split_kv_b(w, h + 1, dn, dv)


def _ragged_decode(cfg, backend, dtype, page_size, steps, cache_dtype=None, kv_roundtrip=None, chunk_threshold=16):
    """Two sequences prefilled separately (5 and 3 tokens), then decoded together in ``steps``
    (tokens per step: 1 = decode, 2 = multi-token prediction). Returns (got, expected) per step."""
    m = make_mla(cfg, backend, dtype)
    m.chunk_threshold = chunk_threshold
    lens0, total = (5, 3), 5 + sum(steps)
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(1, total, cfg.hidden_size, generator=g, dtype=torch.float64).to(dtype) for _ in range(2)]
    cache = PagedMLACache(1, 16, page_size, dtype=cache_dtype or dtype)
    sids = [cache.allocate(), cache.allocate()]
    rope = RotaryEmbedding(cfg)
    for sid, x, n in zip(sids, xs, lens0):
        cache.begin([sid], n)
        m(x[:, :n], rope(x, torch.arange(n)[None]), None, cache)
        assert m.last_path == "mla_prefill"
        cache.commit()
    got, want = [], []
    done = list(lens0)
    for s in steps:
        x = torch.cat([xs[i][:, done[i] : done[i] + s] for i in range(2)])
        pos = torch.stack([torch.arange(done[i], done[i] + s) for i in range(2)])
        cache.begin(sids, s)
        torch.testing.assert_close(cache.step_info()[3].cpu(), pos)
        out = m(x, rope(x, pos), None, cache)[0]
        assert m.last_path == (
            "mla_decode (absorbed)" if s < chunk_threshold else "chunk: mla_prefill + absorbed mla_decode, merged"
        )
        cache.commit()
        for i in range(2):
            n = done[i] + s
            full = explicit_forward(m, xs[i][:, :n], rope(xs[i], torch.arange(n)[None]), None, kv_roundtrip)
            got.append(out[i : i + 1])
            want.append(full[:, -s:])
            done[i] = n
    assert [cache.seqlen(s) for s in sids] == done
    return got, want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page_size", [4, 16])
def test_absorbed_paged_decode_equals_full_attention(backend, page_size):
    dtype = torch.float64 if backend == "reference" else torch.float32
    got, want = _ragged_decode(tiny_config(), backend, dtype, page_size, steps=(1, 2, 1, 3))
    for a, b in zip(got, want):
        assert_close_to_ref(a, b.detach(), atol=1e-10 if dtype == torch.float64 else 2e-5, what="absorbed decode")


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_prefill_on_paged_cache_equals_full_attention(backend):
    """Steps of >= chunk_threshold tokens after cached ones: mla_prefill (new vs new) + absorbed
    mla_decode (new vs cached, queries folded into heads) merged by lse."""
    dtype = torch.float64 if backend == "reference" else torch.float32
    got, want = _ragged_decode(tiny_config(), backend, dtype, 4, steps=(3, 1, 5), chunk_threshold=3)
    for a, b in zip(got, want):
        assert_close_to_ref(a, b.detach(), atol=1e-10 if dtype == torch.float64 else 2e-5, what="chunked prefill")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp8_paged_cache_decode(backend):
    """The FP8 cache (e4m3 latents with per-128 float32 scales, bf16 rope) in the same loop: each
    decode step equals exact attention over the quantised-then-dequantised tokens (the prompt's
    prefill step attends to the fresh values, as serving stacks do)."""
    from pygen.ops.mla import fp8_dequantize, fp8_quantize

    def roundtrip(latent, k_rope):
        v = fp8_dequantize(fp8_quantize(latent, k_rope), latent.dtype)
        return v[..., :512], v[..., 512:]

    got, want = _ragged_decode(
        tiny_config(), backend, torch.float32, 8, steps=(1, 2), cache_dtype=torch.uint8, kv_roundtrip=roundtrip
    )
    for a, b in zip(got, want):
        assert_close_to_ref(a, b.detach(), atol=5e-5, what="FP8-cache decode")


# ---- cache manager ----------------------------------------------------------------------------------
def check_invariants(cache: PagedMLACache):
    owned = [p for s in list(cache._pages) for p in cache.pages(s)]
    assert len(owned) == len(set(owned)), "a page owned twice"
    assert sorted(owned + cache._free) == list(range(cache.num_blocks)), "pages lost or duplicated"
    for s in cache._pages:
        assert len(cache.pages(s)) == -(-cache.seqlen(s) // cache.page_size)


def test_cache_random_life_cycles():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(
        st.lists(
            st.tuples(st.sampled_from(["alloc", "step", "free", "rollback"]), st.integers(1, 9), st.integers(0, 7)),
            max_size=25,
        ),
        st.sampled_from([1, 2, 4]),
    )
    def run(ops, page):
        cache = PagedMLACache(1, 12, page, dtype=torch.float64)
        live: list[int] = []
        for kind, n, pick in ops:
            if kind == "alloc" or not live:
                live.append(cache.allocate())
            elif kind == "free":
                cache.free(live.pop(pick % len(live)))
            else:
                batch = live[pick % len(live) :][:2]
                before = (dict(cache._len), {s: cache.pages(s) for s in live}, list(cache._free))
                try:
                    cache.begin(batch, n)
                except RuntimeError as exc:  # exhausted: nothing changed
                    assert "exhausted" in str(exc)
                    assert before == (dict(cache._len), {s: cache.pages(s) for s in live}, list(cache._free))
                    continue
                lat = torch.randn(len(batch), n, 512, dtype=torch.float64)
                rope = torch.randn(len(batch), n, 64, dtype=torch.float64)
                kv, table, lens = cache.append(0, lat, rope)
                if kind == "rollback":
                    cache.rollback()
                    assert before == (dict(cache._len), {s: cache.pages(s) for s in live}, list(cache._free))
                    check_invariants(cache)
                    continue
                cache.commit()
                assert lens.tolist() == [cache.seqlen(s) for s in batch]
                for i, s in enumerate(batch):  # the last n tokens read back through the table
                    t = torch.arange(cache.seqlen(s) - n, cache.seqlen(s))
                    rows = kv[table[i, t // page].long(), t % page, 0]
                    torch.testing.assert_close(rows, torch.cat([lat[i], rope[i]], -1))
            check_invariants(cache)

    run()


def test_cache_bad_input():
    with pytest.raises(ValueError, match="page_size"):
        PagedMLACache(1, 4, page_size=3)
    with pytest.raises(ValueError, match="num_blocks"):
        PagedMLACache(1, 0)
    cache = PagedMLACache(2, 2, page_size=4, kv_lora_rank=8, qk_rope_head_dim=4, dtype=torch.float32)
    a = cache.allocate()
    with pytest.raises(RuntimeError, match="before begin"):
        cache.append(0, torch.zeros(1, 1, 8), torch.zeros(1, 1, 4))
    with pytest.raises(RuntimeError, match="exhausted"):
        cache.begin([a], 9)
    assert cache.num_free_blocks == 2 and cache.pages(a) == []
    with pytest.raises(ValueError, match="distinct"):
        cache.begin([a, a], 1)
    with pytest.raises(ValueError, match="num_new"):
        cache.begin([a], 0)
    with pytest.raises(KeyError):
        cache.begin([a + 1], 1)
    with pytest.raises(ValueError, match="storage"):
        PagedMLACache(2, 2, page_size=4, kv_lora_rank=8, qk_rope_head_dim=4, storage=[torch.zeros(2, 4, 1, 12)])
    cache.begin([a], 2)
    cache.rollback()  # not counted; its page back to the pool
    assert cache.seqlen(a) == 0 and cache.pages(a) == [] and cache.num_free_blocks == 2
    check_invariants(cache)
    with pytest.raises(RuntimeError, match="without begin"):
        cache.rollback()
    cache.begin([a], 3)
    with pytest.raises(IndexError, match="layer_idx"):
        cache.append(2, torch.zeros(1, 3, 8), torch.zeros(1, 3, 4))
    with pytest.raises(RuntimeError, match="twice"):
        cache.begin([a], 1)
    with pytest.raises(ValueError, match="latent / k_rope"):
        cache.append(0, torch.zeros(1, 2, 8), torch.zeros(1, 2, 4))
    with pytest.raises(RuntimeError, match="uncommitted"):
        cache.free(a)
    cache.commit()
    with pytest.raises(RuntimeError, match="without begin"):
        cache.commit()
    cache.free(a)
    with pytest.raises(KeyError):
        cache.seqlen(a)
    assert cache.num_free_blocks == 2
    m = MLA(tiny_config(), None)
    x = torch.randn(1, 1, 48)
    with pytest.raises(ValueError, match="layer_idx"):
        m(x, pos_emb(tiny_config(), x, torch.zeros(1, 1, dtype=torch.long)), None, cache)


@pytest.mark.skipif(TRITON_SKIP is not None, reason=f"torch.compile of the Triton op: {TRITON_SKIP}")
def test_mla_compiles_fullgraph():
    """The prefill path under torch.compile(fullgraph=True): pygen's Triton op is a custom op
    (opaque to dynamo), everything around it traces. Dynamo's "eager" backend: the graph capture
    is what this checks (Inductor code generation of the projections cost 35 s here)."""
    cfg = tiny_config()
    m = make_mla(cfg, "triton", torch.float32)
    x = torch.randn(1, 4, 48)
    cos, sin = pos_emb(cfg, x, torch.arange(4)[None])
    f = torch.compile(lambda x, c, s: m(x, (c, s))[0], fullgraph=True, backend="eager")
    assert_close_to_ref(
        f(x, cos, sin), m(x, (cos, sin))[0].detach(), atol=ATOL[torch.float32] * 10, what="compiled MLA"
    )


def test_mla_on_the_reference_backend_compiles_and_exports():
    """The CPU default (the reference MLA ops loop over the sequences on the host) under
    torch.compile(fullgraph=True) and torch.export: while tracing, the prefill and the absorbed
    decode take the explicit path (cu_seqlens.tolist() failed the trace), with eager's result."""
    cfg = tiny_config()
    m = make_mla(cfg, "reference", torch.float32)
    x = torch.randn(2, 4, 48)
    cos, sin = pos_emb(cfg, x, torch.arange(4)[None].expand(2, -1))
    want = m(x, (cos, sin))[0].detach()
    assert m.last_path == "mla_prefill"
    f = torch.compile(lambda x, c, s: m(x, (c, s))[0], fullgraph=True, backend="eager")
    assert_close_to_ref(f(x, cos, sin), want, atol=ATOL[torch.float32] * 10, what="compiled MLA (reference)")

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x, c, s):
            return self.m(x, (c, s))[0]

    exported = torch.export.export(Wrap(), (x, cos, sin))
    assert_close_to_ref(exported.module()(x, cos, sin), want, atol=ATOL[torch.float32] * 10, what="exported MLA")


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_mla_with_a_mask_compiles_fullgraph(mask_kind):
    """A 4-D causal mask (what transformers passes a swapped module) under
    torch.compile(fullgraph=True): no data-dependent branch on the mask's values (they are unknown
    while tracing, so the explicit path runs), and the result equals eager."""
    cfg = tiny_config()
    m = make_mla(cfg, "reference", torch.float32)
    x = torch.randn(1, 4, 48)
    cos, sin = pos_emb(cfg, x, torch.arange(4)[None])
    keep = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    mask = keep if mask_kind == "bool" else torch.zeros(1, 1, 4, 4).masked_fill(~keep, torch.finfo(torch.float32).min)
    torch._dynamo.reset()
    f = torch.compile(lambda x, c, s, msk: m(x, (c, s), msk)[0], fullgraph=True, backend="eager")
    assert_close_to_ref(
        f(x, cos, sin, mask), m(x, (cos, sin), mask)[0].detach(), atol=ATOL[torch.float32] * 10, what="compiled MLA"
    )
