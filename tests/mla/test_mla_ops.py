"""MLA ops (pygen.ops.mla) against the float64 reference (pygen.ref.mla): paged decode across head
counts, page sizes, ragged lengths (0, 1, not a page multiple), s_q 1-4, split counts and the FP8
cache; cache append round trip; merge of partial results (and that merging two halves of the keys
equals attention over all of them); varlen prefill forward and backward (through out and lse),
gradcheck on the reference, opcheck of every registered MLA op, torch.compile(fullgraph=True).

Decode head dims are fixed (576 / 512), so the Triton interpreter runs keep batch, length and h_q
small; one case runs h_q = 128 at a tiny length.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close_to_ref, assert_rounded_bf16, backend_params, opcheck_registered

from pygen import _backend
from pygen.ops import _registry, mla as ops
from pygen.ref import mla as ref

SUPPORTED = ("triton", "reference")
PARAMS = [p for p in backend_params() if p.values[1] in SUPPORTED]
KERNEL_PARAMS = [p for p in backend_params(kernel_only=True) if p.values[1] in SUPPORTED]


def _dtypes(backend):
    return [torch.float32, torch.bfloat16, torch.float16] + ([torch.float64] if backend == "reference" else [])


def _check_decode(out, lse, q, kv, bt, sl, causal, what):
    kv64 = kv if kv.dtype == torch.uint8 else kv.double()
    r_out, r_lse = ref.mla_decode(q.double().cpu(), kv64.cpu(), bt.cpu(), sl.cpu(), causal=causal)
    assert out.dtype == q.dtype and lse.dtype == (torch.float64 if q.dtype == torch.float64 else torch.float32)
    assert_close_to_ref(out, r_out, what=f"{what} out")
    assert torch.equal(torch.isinf(lse.cpu()), torch.isinf(r_lse)), f"{what}: -inf pattern of lse"
    fin = torch.isfinite(r_lse)
    assert_close_to_ref(
        lse.cpu()[fin], r_lse[fin], atol=1e-4 if q.dtype != torch.float64 else 1e-10, what=f"{what} lse"
    )
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()


# (lens, s_q, h_q, page, num_splits)
DECODE_CASES = [
    ((37, 5), 1, 16, 16, 1),
    ((37, 1), 2, 16, 4, 3),  # page smaller than the token tile; 3 splits
    ((70, 0), 4, 16, 64, 2),  # zero-length sequence, s_q 4, default page
    ((1,), 3, 32, 8, None),  # cache shorter than s_q: the first queries see nothing
    ((130, 9, 64), 1, 64, 32, 4),
]


@pytest.mark.parametrize("device,backend", PARAMS)
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: f"L{c[0]}-sq{c[1]}-h{c[2]}-p{c[3]}-s{c[4]}")
def test_decode_matches_reference(device, backend, case, gen):
    lens, s_q, h_q, page, splits = case
    for dt in _dtypes(backend)[: 1 if case != DECODE_CASES[0] else None]:
        q, kv, bt, sl = ref.random_decode_problem(lens, s_q, h_q, page, gen, dtype=dt, device=device)
        out, lse = ops.mla_decode(q, kv, bt, sl, causal=s_q > 1, num_splits=splits, backend=backend)
        _check_decode(out, lse, q, kv, bt, sl, s_q > 1, f"{backend} {dt} {case}")


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_decode_backward_says_forward_only(device, backend, gen):
    """Decode is inference-only on the kernels: a backward through it names the op and what to use
    (it was torch's "no autograd formula was registered"); the forward is unchanged."""
    q, kv, bt, sl = ref.random_decode_problem((9,), 1, 16, 8, gen, device=device)
    out, lse = ops.mla_decode(q.requires_grad_(), kv, bt, sl, backend=backend)
    _check_decode(out.detach(), lse, q.detach(), kv, bt, sl, False, backend)
    with pytest.raises(NotImplementedError, match="mla_decode has no backward.*mla_prefill"):
        out.sum().backward()


@pytest.mark.parametrize("device,backend", PARAMS)
def test_decode_bf16_multi_token(device, backend, gen):
    q, kv, bt, sl = ref.random_decode_problem((45, 3), 2, 16, 16, gen, dtype=torch.bfloat16, device=device)
    out, lse = ops.mla_decode(q, kv, bt, sl, causal=True, num_splits=2, backend=backend)
    _check_decode(out, lse, q, kv, bt, sl, True, f"{backend} bf16 s_q 2")


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_decode_128_heads(device, backend, gen):
    q, kv, bt, sl = ref.random_decode_problem((5,), 1, 128, 4, gen, device=device)
    out, lse = ops.mla_decode(q, kv, bt, sl, num_splits=2, backend=backend)
    _check_decode(out, lse, q, kv, bt, sl, False, "h_q 128")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_decode_fp8_cache(device, backend, gen):
    for dt, splits in ((torch.bfloat16, 2), (torch.float32, 1)):
        q, kv, bt, sl = ref.random_decode_problem((33, 8), 2, 16, 16, gen, dtype=dt, fp8=True, device=device)
        assert kv.dtype == torch.uint8 and kv.shape[-1] == ref.FP8_TOKEN_BYTES
        out, lse = ops.mla_decode(q, kv, bt, sl, causal=True, num_splits=splits, backend=backend)
        _check_decode(out, lse, q, kv, bt, sl, True, f"{backend} fp8 {dt}")


def test_decode_fp8_gpu_tile_128_heads(monkeypatch, gen):
    """The FP8 cache's GPU tile at 128 heads x 2 queries (decode_config: 16 rows x 32 tokens, so 16
    row tiles per sequence that must each see the same split chunks) through the launcher under
    the interpreter, against the float64 reference."""
    if torch.cuda.is_available():
        pytest.skip("the CUDA runs of the FP8 decode tests already use the GPU tiles")
    pytest.importorskip("triton")
    from pygen.kernels import mla as kmla

    orig = kmla.decode_config
    tile = orig(256, True, interpreting=False)
    assert (tile.block_m, tile.block_n) == (16, 32)
    monkeypatch.setattr(
        kmla, "decode_config", lambda rows, fp8=False, interpreting=None, fp32=False: orig(rows, fp8, False, fp32)
    )
    q, kv, bt, sl = ref.random_decode_problem((45, 7), 2, 128, 16, gen, dtype=torch.bfloat16, fp8=True)
    out, lse = ops.mla_decode(q, kv, bt, sl, causal=True, num_splits=2, backend="triton")
    _check_decode(out, lse, q, kv, bt, sl, True, "fp8 GPU tile h_q 128")


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_decode_fixed_splits_deterministic_and_split_invariant(device, backend, gen):
    q, kv, bt, sl = ref.random_decode_problem((90, 40), 1, 16, 16, gen, device=device)
    a = ops.mla_decode(q, kv, bt, sl, num_splits=3, backend=backend)
    b = ops.mla_decode(q, kv, bt, sl, num_splits=3, backend=backend)
    c = ops.mla_decode(q, kv, bt, sl, num_splits=1, backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.testing.assert_close(a[0], c[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[1], c[1], rtol=1e-5, atol=1e-5)


def test_fp8_pack_layout_round_trip(gen):
    lat = torch.randn(3, 5, 512, generator=gen) * torch.linspace(0.01, 50, 512)
    rope = torch.randn(3, 5, 64, generator=gen)
    lat[0, 0, :128] = 0  # an all-zero group keeps scale 1 and decodes to 0
    packed = ref.fp8_quantize(lat, rope)
    assert packed.shape == (3, 5, 656) and packed.dtype == torch.uint8
    scales = packed[..., 512:528].contiguous().view(torch.float32)
    assert scales[0, 0, 0] == 1.0
    torch.testing.assert_close(scales[1, 2], lat[1, 2].view(4, 128).abs().amax(-1) / 448)
    back = ref.fp8_dequantize(packed, torch.float64)
    assert torch.equal(back[..., 512:], rope.bfloat16().double())
    grp = lat.view(3, 5, 4, 128).abs().amax(-1, keepdim=True).double()
    err = (back[..., :512] - lat.double()).view(3, 5, 4, 128).abs()
    assert (err <= grp * 2**-4 + 1e-30).all()  # e4m3: 3 mantissa bits, half-ulp relative 2^-4


@pytest.mark.parametrize("device,backend", PARAMS)
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_cache_append_round_trip(device, backend, fp8, gen):
    """Append tokens (ragged, a skipped -1, across page boundaries), then decode reads them back:
    the cache equals the reference append bit for bit, and decode over it equals the reference."""
    page, lens = 4, (11, 6)
    table, nb = ref.random_block_table(lens, page, gen)
    width = ref.FP8_TOKEN_BYTES if fp8 else ref.QK_DIM
    kv = torch.zeros(nb, page, 1, width, dtype=torch.uint8 if fp8 else torch.bfloat16, device=device)
    table = table.to(device)
    pos = torch.tensor([[0, 3, 4, 10], [5, -1, 0, 2]], dtype=torch.int32, device=device)
    lat = torch.randn(2, 4, 512, generator=gen).to(device, torch.bfloat16)
    rope = torch.randn(2, 4, 64, generator=gen).to(device, torch.bfloat16)
    got = ops.mla_cache_append(kv.clone(), table, pos, lat, rope, backend=backend)
    want = ref.mla_cache_append(kv.clone().cpu(), table.cpu(), pos.cpu(), lat.cpu(), rope.cpu())
    assert torch.equal(got.cpu(), want)
    vals = ref.cache_values(got.cpu(), torch.float64)
    for i in range(2):
        for j in range(4):
            t = int(pos[i, j])
            if t < 0:
                continue
            tok = vals[int(table[i, t // page]), t % page, 0]
            if fp8:
                assert torch.equal(tok[512:], rope[i, j].cpu().double())
                assert (tok[:512] - lat[i, j].cpu().double()).abs().max() <= lat[i, j].abs().max().item() / 16
            else:
                assert torch.equal(tok, torch.cat([lat[i, j], rope[i, j]]).cpu().double())
    q = torch.randn(2, 1, 16, 576, generator=gen).to(device, torch.bfloat16)
    sl = torch.tensor(lens, dtype=torch.int32, device=device)
    out, lse = ops.mla_decode(q, got, table, sl, backend=backend)
    _check_decode(out, lse, q, got, table, sl, False, f"decode after append fp8={fp8}")


# ---- merge --------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,backend", PARAMS)
def test_merge_two_halves_equals_full_attention(device, backend, gen):
    """Chunked prefill: attention over keys [0, 6) and [6, 17) merged by lse equals one pass."""
    h, nq = 2, 5
    q = torch.randn(nq, h, 24, generator=gen).to(device)
    k = torch.randn(17, h, 24, generator=gen).to(device)
    v = torch.randn(17, h, 16, generator=gen).to(device)
    cq, c1, c2, call = (ref.cu_seqlens(x, device) for x in ((nq,), (6,), (11,), (17,)))
    oa, la = ops.mla_prefill(q, k[:6], v[:6], cq, c1, causal=False, backend=backend)
    ob, lb = ops.mla_prefill(q, k[6:], v[6:], cq, c2, causal=True, backend=backend)
    out, lse = ops.merge_attn_states(oa, la, ob, lb, backend=backend)
    r_out, r_lse = ref.mla_prefill(
        q.double().cpu(), k.double().cpu(), v.double().cpu(), cq.cpu(), call.cpu(), causal=True
    )
    assert_close_to_ref(out, r_out, atol=1e-5, what="merged out")
    assert_close_to_ref(lse, r_lse, atol=1e-5, what="merged lse")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_merge_matches_reference_with_empty_sides(device, backend, gen):
    for dt in _dtypes(backend):
        oa = torch.randn(4, 3, 40, generator=gen).to(device, dt)
        ob = torch.randn(4, 3, 40, generator=gen).to(device, dt)
        la = torch.randn(3, 4, generator=gen).to(device)
        lb = torch.randn(3, 4, generator=gen).to(device)
        la[0, 1] = lb[1, 2] = float("-inf")
        la[2, 3] = lb[2, 3] = float("-inf")  # nothing on either side: zeros, -inf
        if dt == torch.float64:
            la, lb = la.double(), lb.double()
        out, lse = ops.merge_attn_states(oa, la, ob, lb, backend=backend)
        r_out, r_lse = ref.merge_attn_states(oa.double().cpu(), la.double().cpu(), ob.double().cpu(), lb.double().cpu())
        assert_close_to_ref(out, r_out, what=f"merge {dt} out")
        assert torch.equal(out[3, 2].cpu(), torch.zeros(40, dtype=dt)) and lse[2, 3] == float("-inf")
        fin = torch.isfinite(r_lse)
        assert_close_to_ref(lse.cpu()[fin], r_lse[fin], atol=1e-5, what=f"merge {dt} lse")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_merge_non_finite_lse_and_chained_empty_gradient(device, backend, gen):
    """Inputs a review found wrong: a merged row with no key on either side, merged again, gave the
    reference backend NaN gradients (log(0) in autograd), the Triton kernel reported a NaN or
    +inf lse as -inf ("no keys"), and a float64 lse beside float32 outputs came back float64."""
    oa, ob, oc = (torch.randn(2, 1, 8, generator=gen).to(device) for _ in range(3))
    la, lb, lc = (torch.randn(1, 2, generator=gen).to(device) for _ in range(3))
    la[0, 0] = lb[0, 0] = float("-inf")
    leaves = [t.requires_grad_() for t in (oa, la, ob, lb, oc, lc)]
    o1, l1 = ops.merge_attn_states(*leaves[:4], backend=backend)
    o2, l2 = ops.merge_attn_states(o1, l1, leaves[4], leaves[5], backend=backend)
    grads = torch.autograd.grad(o2.sum() + l2.sum(), leaves)
    assert all(g.isfinite().all() for g in grads)
    assert grads[1][0, 0] == 0 and grads[3][0, 0] == 0  # rows that saw no key get no gradient
    for bad, want in ((float("nan"), "nan"), (float("inf"), "inf")):
        lx = torch.randn(1, 2, generator=gen).to(device)
        lx[0, 1] = bad
        out, lse = ops.merge_attn_states(ob, lx, oc, torch.zeros(1, 2, device=device), backend=backend)
        assert lse[0, 1].isnan() if want == "nan" else lse[0, 1] == float("inf"), (bad, lse)
        assert out[1].isnan().all() and out[0].isfinite().all()
    lb64, lc64 = lb.detach().double(), lc.detach().double()
    _, lse = ops.merge_attn_states(ob.detach(), lb64, oc.detach(), lc64, backend=backend)
    assert lse.dtype == torch.float32


def test_fp8_quantize_tiny_group_has_a_finite_scale():
    """amax / 448 underflows to 0 for amax below ~3e-43: the scale was 0 and the group
    dequantised to 0 / 0 = NaN; it now takes the all-zero group's scale 1.0."""
    latent = torch.zeros(1, 512)
    latent[0, 0] = 1e-44
    packed = ref.fp8_quantize(latent, torch.zeros(1, 64))
    back = ref.fp8_dequantize(packed, torch.float32)
    assert back.isfinite().all() and back[0, :512].abs().max() < 1e-40


# ---- prefill ------------------------------------------------------------------------------------
def _prefill_problem(lq, lk, h, d, dv, dt, device, gen):
    q = torch.randn(sum(lq), h, d, generator=gen, dtype=torch.float64).to(device, dt)
    k = torch.randn(sum(lk), h, d, generator=gen, dtype=torch.float64).to(device, dt)
    v = torch.randn(sum(lk), h, dv, generator=gen, dtype=torch.float64).to(device, dt)
    return q, k, v, ref.cu_seqlens(lq, device), ref.cu_seqlens(lk, device)


# (lens_q, lens_k, heads, qk dim, v dim, causal)
PREFILL_CASES = [
    ((5, 40, 0), (5, 50, 3), 2, 192, 128, True),  # DeepSeek dims; n_k > n_q; an empty query set
    ((7, 3), (3, 9), 1, 192, 128, True),  # n_k < n_q: leading queries see nothing
    ((9,), (12,), 2, 40, 24, False),  # odd dims (32 + 8 split, padded v)
]


@pytest.mark.parametrize("device,backend", PARAMS)
@pytest.mark.parametrize("case", PREFILL_CASES, ids=lambda c: f"q{c[0]}-k{c[1]}-d{c[3]}-c{int(c[5])}")
def test_prefill_forward_backward_matches_reference(device, backend, case, gen):
    lq, lk, h, d, dv, causal = case
    dts = [torch.float32] + ([torch.bfloat16] if case is PREFILL_CASES[0] else [])
    for dt in dts:
        q, k, v, cq, ck = _prefill_problem(lq, lk, h, d, dv, dt, device, gen)
        q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
        out, lse = ops.mla_prefill(q, k, v, cq, ck, causal=causal, backend=backend)
        assert out.dtype == dt and lse.dtype == torch.float32 and lse.shape == (h, sum(lq))
        q64, k64, v64 = (x.detach().double().cpu().requires_grad_() for x in (q, k, v))
        r_out, r_lse = ref.mla_prefill(q64, k64, v64, cq.cpu(), ck.cpu(), causal=causal)
        assert_close_to_ref(out, r_out, what=f"{backend} {dt} out")
        assert torch.equal(torch.isinf(lse.cpu()), torch.isinf(r_lse))
        fin = torch.isfinite(r_lse)
        assert_close_to_ref(lse.detach().cpu()[fin], r_lse.detach()[fin], atol=1e-4, what="lse")
        go = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        gl = torch.where(fin, torch.randn(lse.shape, generator=gen, dtype=torch.float64), 0.0)
        got = torch.autograd.grad(
            (out * go.to(device, dt)).sum() + (lse.nan_to_num(neginf=0) * gl.to(device)).sum(), (q, k, v)
        )
        want = torch.autograd.grad((r_out * go).sum() + (r_lse.nan_to_num(neginf=0) * gl).sum(), (q64, k64, v64))
        tol = {torch.float32: 1e-4, torch.bfloat16: 6e-2}[dt]
        for nm, a, r in zip("qkv", got, want):
            assert not torch.isnan(a).any()
            assert_close_to_ref(a, r, atol=tol, what=f"{backend} {dt} d{nm}")


def test_prefill_gradcheck_reference(gen):
    q, k, v, cq, ck = _prefill_problem((3, 4), (5, 4), 1, 6, 5, torch.float64, "cpu", gen)
    args = tuple(x.requires_grad_() for x in (q, k, v))
    for causal in (True, False):
        assert torch.autograd.gradcheck(
            lambda a, b, c: ops.mla_prefill(a, b, c, cq, ck, causal=causal, backend="reference"), args
        )


def test_merge_gradcheck(gen):
    oa, ob = (torch.randn(3, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    la, lb = (torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda *a: ops.merge_attn_states(*a, backend="reference"), (oa, la, ob, lb))


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_merge_triton_backward_matches_reference(device, backend, gen):
    oa, ob = (torch.randn(3, 2, 8, generator=gen).to(device).requires_grad_() for _ in range(2))
    la, lb = (torch.randn(2, 3, generator=gen).to(device).requires_grad_() for _ in range(2))
    go, gl = torch.randn(3, 2, 8, generator=gen).to(device), torch.randn(2, 3, generator=gen).to(device)
    o, l_ = ops.merge_attn_states(oa, la, ob, lb, backend=backend)
    got = torch.autograd.grad((o * go).sum() + (l_ * gl).sum(), (oa, la, ob, lb))
    x64 = [t.detach().double().requires_grad_() for t in (oa, la, ob, lb)]
    ro, rl = ref.merge_attn_states(*x64)
    want = torch.autograd.grad((ro * go.double()).sum() + (rl * gl.double()).sum(), x64)
    for a, r in zip(got, want):
        assert_close_to_ref(a, r, atol=1e-5, what="merge grad")


# ---- registration -------------------------------------------------------------------------------
def _opcheck_args(name, dev):
    g = torch.Generator().manual_seed(0)
    if name.startswith("mla_decode"):
        q, kv, bt, sl = ref.random_decode_problem((9,), 2, 16, 8, g, device=dev)
        return [(q, kv, bt, sl, 512, 576**-0.5, True, 2)]
    if name.startswith("mla_cache_append"):
        table, nb = ref.random_block_table((5,), 4, g)
        kv = torch.zeros(nb, 4, 1, 576, device=dev)
        pos = torch.tensor([[0, 4]], dtype=torch.int32, device=dev)
        return [
            (
                kv,
                table.to(dev),
                pos,
                torch.randn(1, 2, 512, generator=g).to(dev),
                torch.randn(1, 2, 64, generator=g).to(dev),
            )
        ]
    q, k, v, cq, ck = _prefill_problem((3, 5), (4, 5), 1, 24, 16, torch.float32, dev, g)
    if name.startswith("mla_prefill_backward"):
        out, lse = ops.mla_prefill(q, k, v, cq, ck, backend="reference")
        return [(torch.randn_like(out), torch.randn_like(lse), q, k, v, out, lse.float(), cq, ck, 5, 5, 0.2, True)]
    if name.startswith("mla_prefill"):
        return [(q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), cq, ck, 5, 5, 0.2, True)]
    oa, ob = torch.randn(3, 2, 8, generator=g).to(dev), torch.randn(3, 2, 8, generator=g).to(dev)
    la, lb = torch.randn(2, 3, generator=g).to(dev), torch.randn(2, 3, generator=g).to(dev)
    return [(oa.requires_grad_(), la.requires_grad_(), ob, lb)]


MLA_OPS = [n for n in _registry.registered() if n.startswith(("mla_", "merge_attn_states"))]


def test_every_op_is_covered():
    assert len(MLA_OPS) == 5, MLA_OPS


@pytest.mark.parametrize("name", MLA_OPS)
def test_opcheck(name):
    opcheck_registered(name, _opcheck_args)


@pytest.mark.parametrize("device,backend", KERNEL_PARAMS)
def test_torch_compile_fullgraph(device, backend, gen):
    """Decode, append, prefill (with backward) and merge in one compiled graph, no breaks."""
    torch._dynamo.reset()
    q, kv, bt, sl = ref.random_decode_problem((6, 3), 1, 16, 4, gen, device=device)
    qp, kp, vp, cq, ck = _prefill_problem((4,), (4,), 1, 24, 16, torch.float32, device, gen)
    qp.requires_grad_()
    pos = (sl - 1).view(2, 1).to(torch.int32)
    lat, rope = kv[0, :1, 0, :512].expand(2, 1, 512).contiguous(), kv[0, :1, 0, 512:].expand(2, 1, 64).contiguous()

    def step(cache, x):
        ops.mla_cache_append(cache, bt, pos, lat, rope, backend=backend)
        out, lse = ops.mla_decode(q, cache, bt, sl, num_splits=2, backend=backend)
        po, pl = ops.mla_prefill(x, kp, vp, cq, ck, max_seqlen_q=4, max_seqlen_k=4, backend=backend)
        mo, ml = ops.merge_attn_states(po, pl, po, pl, backend=backend)
        return out.sum() + lse.sum() + mo.sum() + ml.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(kv.clone(), qp)
    eager = step(kv.clone(), qp)
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(torch.autograd.grad(got, qp)[0], torch.autograd.grad(eager, qp)[0])


@pytest.mark.parametrize("device,backend", PARAMS)
def test_strided_index_and_lse_tensors(device, backend, gen):
    """Index tensors and lse with non-unit inner strides are read correctly (the kernels index
    them with unit strides; the ops make them contiguous)."""
    q, kv, bt, sl = ref.random_decode_problem((21, 6), 1, 16, 8, gen, device=device)
    wide = torch.full((bt.shape[0], 2 * bt.shape[1]), -1, dtype=torch.int32, device=device)
    wide[:, ::2] = bt
    sl2 = torch.stack([sl, sl], 1)[:, 0]
    assert not wide[:, ::2].is_contiguous() and not sl2.is_contiguous()
    out, lse = ops.mla_decode(q, kv, wide[:, ::2], sl2, num_splits=2, backend=backend)
    _check_decode(out, lse, q, kv, bt, sl, False, "strided table")
    oa, ob = torch.randn(4, 3, 8, generator=gen).to(device), torch.randn(4, 3, 8, generator=gen).to(device)
    la, lb = torch.randn(4, 3, generator=gen).to(device).t(), torch.randn(4, 3, generator=gen).to(device).t()
    out, lse = ops.merge_attn_states(oa, la, ob, lb, backend=backend)
    r_out, r_lse = ref.merge_attn_states(oa.double().cpu(), la.double().cpu(), ob.double().cpu(), lb.double().cpu())
    assert_close_to_ref(out, r_out, what="strided lse merge")
    assert_close_to_ref(lse, r_lse, atol=1e-5, what="strided lse merge lse")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_decode_small_latent_dims(device, backend, gen):
    """Tiny model configs: latent 32 + rope 16 and latent 16 + rope 8 (rope block padded)."""
    for d, dv in ((48, 32), (24, 16)):
        q, kv, bt, sl = ref.random_decode_problem((13, 4), 2, 4, 4, gen, head_dim=d, device=device)
        out, lse = ops.mla_decode(q, kv, bt, sl, head_dim_v=dv, causal=True, num_splits=2, backend=backend)
        assert out.shape == (2, 2, 4, dv)
        r_out, r_lse = ref.mla_decode(q.double().cpu(), kv.double().cpu(), bt.cpu(), sl.cpu(), dv, causal=True)
        assert_close_to_ref(out, r_out, what=f"d{d} out")
        assert_close_to_ref(lse, r_lse, atol=1e-5, what=f"d{d} lse")


@pytest.mark.parametrize("device,backend", PARAMS)
def test_cache_append_small_latent_float_cache(device, backend, gen):
    """A float cache of a tiny config (latent 32 + rope 16): the backend and the reference write the
    same bytes, each token's row is exactly [latent, rope]."""
    page = 4
    table = torch.tensor([[1, 0]], dtype=torch.int32, device=device)
    kv = torch.zeros(2, page, 1, 48, dtype=torch.float32, device=device)
    pos = torch.tensor([[0, 5, -1]], dtype=torch.int32, device=device)
    lat = torch.randn(1, 3, 32, generator=gen).to(device)
    rope = torch.randn(1, 3, 16, generator=gen).to(device)
    got = ops.mla_cache_append(kv.clone(), table, pos, lat, rope, backend=backend)
    want = ref.mla_cache_append(kv.clone().cpu(), table.cpu(), pos.cpu(), lat.cpu(), rope.cpu())
    assert torch.equal(got.cpu(), want)
    assert torch.equal(want[1, 0, 0], torch.cat([lat[0, 0], rope[0, 0]]).cpu())
    assert torch.equal(want[0, 1, 0], torch.cat([lat[0, 1], rope[0, 1]]).cpu())
    assert int((want != 0).sum()) == 2 * 48 - int((lat[0, :2] == 0).sum() + (rope[0, :2] == 0).sum())


def test_prefill_fp32_gpu_tiles_match_reference(monkeypatch, gen):
    """The float32 GPU tiles (prefill_config fp32=True: 32 x 64 forward, 16 x 32 dkdv, 32 x 16 dq,
    unequal BLOCK_M / BLOCK_N) run through the launchers on CPU under the interpreter."""
    if torch.cuda.is_available():
        pytest.skip("the CUDA runs of the main prefill test already use these tiles")
    pytest.importorskip("triton")
    from pygen.kernels import mla as kmla

    orig = kmla.prefill_config
    tiles = {p: orig(p, interpreting=False, fp32=True) for p in ("fwd", "dkdv", "dq")}
    assert len({(c.block_m, c.block_n) for c in tiles.values()}) == 3
    monkeypatch.setattr(kmla, "prefill_config", lambda p, interpreting=None, fp32=False: tiles[p])
    lq, lk, h, d, dv, causal = ((5, 40), (5, 50), 1, 192, 128, True)
    q, k, v, cq, ck = _prefill_problem(lq, lk, h, d, dv, torch.float32, "cpu", gen)
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    out, lse = ops.mla_prefill(q, k, v, cq, ck, causal=causal, backend="triton")
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    r_out, r_lse = ref.mla_prefill(q64, k64, v64, cq, ck, causal=causal)
    assert_close_to_ref(out, r_out, what="fp32-tile out")
    assert_close_to_ref(lse.detach(), r_lse.detach(), atol=1e-4, what="fp32-tile lse")
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((out * go.float()).sum(), (q, k, v))
    want = torch.autograd.grad((r_out * go).sum(), (q64, k64, v64))
    for nm, a, r in zip("qkv", got, want):
        assert_close_to_ref(a, r, atol=1e-4, what=f"fp32-tile d{nm}")


def test_merge_bf16_store_rounds_to_nearest(gen):
    """merge_attn_states stores its float32 blend rounded to nearest in bf16, as the GPU does, under
    the interpreter too (kernels/_bf16.py); elementwise float32 math, so it holds on a GPU as well."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    oa, ob = (torch.randn(6, 3, 40, generator=gen).to(dev, torch.bfloat16) for _ in range(2))
    la, lb = (torch.randn(3, 6, generator=gen).to(dev) for _ in range(2))
    out, _ = ops.merge_attn_states(oa, la, ob, lb, backend="triton")
    r_out, _ = ref.merge_attn_states(*(t.double().cpu() for t in (oa, la, ob, lb)))
    assert_rounded_bf16(out, r_out, "merge_attn_states")


@pytest.mark.skipif(
    not _backend.triton_interpreting(), reason="interpreter only: on the GPU the bf16 MMAs quantise P and dS"
)
def test_attention_bf16_stores_round_to_nearest(gen):
    """Decode (one split, and split partials merged) and prefill forward / backward store their
    float32 results rounded to nearest in bf16 under the interpreter, as the GPU's stores do: the
    interpreter computes in float32 from the bf16 inputs, so the outputs are the float64 reference
    rounded (kernels/_bf16.py; its own store truncates)."""
    q, kv, bt, sl = ref.random_decode_problem((37, 20), 1, 16, 16, gen, dtype=torch.bfloat16)
    r_out, _ = ref.mla_decode(q.double(), kv.double(), bt, sl)
    for splits in (1, 3):
        out, _ = ops.mla_decode(q, kv, bt, sl, num_splits=splits, backend="triton")
        assert_rounded_bf16(out, r_out, f"mla_decode splits={splits}")
    q, k, v, cq, ck = _prefill_problem((5, 40), (5, 50), 2, 192, 128, torch.bfloat16, "cpu", gen)
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    out, _ = ops.mla_prefill(q, k, v, cq, ck, causal=True, backend="triton")
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    r_out, _ = ref.mla_prefill(q64, k64, v64, cq, ck, causal=True)
    assert_rounded_bf16(out, r_out, "mla_prefill out")
    # dv = P^T dO (dq and dk also read the rounded out through delta = rowsum(dO * out), which the
    # float64 reference does not round)
    go = torch.randn(out.shape, generator=gen).to(torch.bfloat16)
    (dv,) = torch.autograd.grad(out, (v,), go)
    (r_dv,) = torch.autograd.grad(r_out, (v64,), go.double())
    assert_rounded_bf16(dv, r_dv, "mla_prefill dv")
