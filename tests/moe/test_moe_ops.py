"""MoE ops (pygen.ops.moe) against the float64 reference (pygen.ref.moe) and against Hugging Face's
DeepseekV3 router: routing (groups, bias, softmax, ties), alignment invariants for every backend
(cpu, triton, reference; cuda on a GPU), the 65,536-slot / 4096-expert case, permutation, the fused
expert MLP forward and backward, gradcheck, opcheck of every registered op, torch.compile, and
hypothesis fuzzing of routing ids and counts."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from helpers import (
    TRITON_SKIP,
    assert_close_to_ref,
    assert_rounded_bf16,
    backend_params,
    route_kwargs,
    topk_ties_to_lower_index,
)
from hypothesis import HealthCheck, given, settings, strategies as st

from pygen import _backend
from pygen.ops import _registry
from pygen.ops.moe import fused_moe, moe_align, moe_permute, moe_route, moe_unpermute
from pygen.ref import moe as ref

ALIGN_BACKENDS = [p for p in backend_params()]
KERNEL_ROUTE = [p for p in backend_params() if p.values[1] in ("triton", "reference")]
PERM_BACKENDS = list(backend_params())
ROUTE_BACKENDS = [p for p in backend_params() if p.values[1] in ("triton", "cpu", "reference")]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# routing
# ---------------------------------------------------------------------------------------------
ROUTE_CASES = [  # (T, E, top_k, n_group, topk_group, scoring, bias, norm, scale)
    (37, 64, 6, 8, 3, "sigmoid", True, True, 2.5),
    (19, 256, 8, 8, 4, "sigmoid", True, True, 2.5),  # DeepSeek-V3
    (11, 16, 4, 1, 1, "softmax", False, False, 1.0),
    (9, 12, 3, 4, 2, "softmax", True, True, 1.0),  # non-power-of-two E and group size 3
    (5, 8, 2, 8, 4, "sigmoid", False, True, 1.0),  # one expert per group
    (3, 1, 1, 1, 1, "sigmoid", False, True, 1.0),  # a single expert
    (0, 16, 2, 4, 2, "sigmoid", True, True, 1.0),  # zero tokens
    # top_k above the kept groups' experts (transformers accepts it): the rest are masked experts
    (13, 8, 8, 2, 1, "sigmoid", True, True, 2.5),  # transformers' DeepseekV3 test config: all 8
    (9, 12, 7, 4, 1, "softmax", True, True, 1.0),  # 3 kept + the 4 lowest masked ids
    (7, 8, 6, 8, 2, "sigmoid", True, False, 1.5),  # one expert per group: 2 kept + 4 masked
    (6, 16, 3, 4, 0, "sigmoid", True, True, 1.0),  # topk_group 0: every expert masked
    (6, 16, 5, 1, 0, "softmax", False, True, 1.0),  # the same without groups
    (6, 16, 0, 4, 2, "sigmoid", True, True, 1.0),  # top_k 0: [T, 0] outputs
]


@pytest.mark.parametrize("dev,backend", ROUTE_BACKENDS)
@pytest.mark.parametrize("case", ROUTE_CASES, ids=lambda c: f"T{c[0]}E{c[1]}k{c[2]}g{c[3]}-{c[4]}-{c[5]}")
def test_route_matches_reference(dev, backend, case):
    t, e, k, g, tg, scoring, has_bias, norm, scale = case
    gen = _gen(t * 131 + e)
    logits = torch.randn(t, e, generator=gen).to(dev)
    bias = (torch.randn(e, generator=gen) * 0.1).to(dev) if has_bias else None
    kw = route_kwargs(g, tg, scoring, bias, norm, scale)
    ids, w = moe_route(logits, k, backend=backend, **kw)
    rid, rw = ref.moe_route(logits.double(), k, **kw)
    assert ids.dtype == torch.int32 and w.dtype == torch.float32 and ids.shape == (t, k)
    assert torch.equal(ids.cpu(), rid.cpu())
    assert_close_to_ref(w, rw, atol=1e-6, what="topk_weights")


@pytest.mark.parametrize("dev,backend", ROUTE_BACKENDS)
def test_route_strided_logits_and_bias(dev, backend):
    # views with non-unit strides: logits columns (a transposed [E, T] buffer) and the bias (every
    # other element of a [2E] buffer; the Triton launcher once read it as if contiguous)
    gen = _gen(5)
    logits = torch.randn(32, 9, generator=gen).to(dev).t()
    bias = (torch.randn(64, generator=gen) * 0.1).to(dev)[::2]
    kw = route_kwargs(4, 2, "sigmoid", bias, True, 2.5)
    ids, w = moe_route(logits, 4, backend=backend, **kw)
    rid, rw = ref.moe_route(logits.double(), 4, **kw)
    assert torch.equal(ids.cpu(), rid.cpu())
    assert_close_to_ref(w, rw, atol=1e-6, what="topk_weights")


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_route_float64_and_16bit_logits(backend):
    if not _backend.backend_status(backend, "cpu")[0]:
        pytest.skip(f"{backend} unavailable")
    logits = torch.randn(6, 16, dtype=torch.float64, generator=_gen(2))
    ids, w = moe_route(logits, 3, n_group=4, topk_group=2, backend=backend)
    rid, rw = ref.moe_route(logits, 3, n_group=4, topk_group=2)
    assert w.dtype == torch.float64 and ids.dtype == torch.int32
    assert torch.equal(ids, rid) and torch.allclose(w, rw, rtol=1e-14, atol=1e-15)
    for dt in (torch.float16, torch.bfloat16):
        ids, w = moe_route(logits.to(dt), 3, n_group=4, topk_group=2, backend=backend)
        rid, rw = ref.moe_route(logits.to(dt), 3, n_group=4, topk_group=2)
        assert w.dtype == torch.float32 and torch.equal(ids, rid)
        torch.testing.assert_close(w, rw)


@pytest.mark.parametrize("dev,backend", ROUTE_BACKENDS)
def test_route_ties_lower_index_wins(dev, backend):
    """Integer logits give many exact ties among experts and among groups."""
    gen = _gen(7)
    logits = torch.randint(-2, 3, (64, 32), generator=gen).float().to(dev)
    kw = dict(n_group=4, topk_group=2, routed_scaling_factor=1.0)
    ids, w = moe_route(logits, 5, backend=backend, **kw)
    rid, rw = ref.moe_route(logits, 5, **kw)
    assert torch.equal(ids.cpu(), rid.cpu())
    # independent statement of the rule: the i-th pick is the lowest id among the best remaining
    s = logits.cpu().sigmoid()
    grp = s.view(64, 4, 8).topk(2, -1).values.sum(-1)
    for row in range(64):
        gorder = sorted(range(4), key=lambda q: (-grp[row, q].item(), q))[:2]
        elig = [x for x in range(32) if x // 8 in gorder]
        want = sorted(elig, key=lambda x: (-s[row, x].item(), x))[:5]
        assert ids[row].tolist() == want


@pytest.mark.parametrize("dev,backend", ROUTE_BACKENDS)
def test_route_nan_logits_give_valid_ids_and_nan_weights(dev, backend):
    """NaN router logits (a diverged model): every id stays in [0, E) (the Triton kernel stored
    INT_MAX for a row of NaN, which fused_moe then refused with a confusing id), and a row with
    fewer than top_k scored experts gets NaN weights, so its token's output is NaN as in
    transformers. The kernel backends never pick a NaN-scored expert; the reference follows
    torch.topk, which ranks NaN first (transformers' rule): its ids may differ there."""
    logits = torch.randn(3, 8, generator=_gen(3))
    logits[0, 2] = float("nan")  # one NaN: the kernels route around it
    logits[1] = float("nan")  # all NaN
    logits = logits.to(dev)
    ids, w = moe_route(logits, 2, backend=backend)
    assert ((ids >= 0) & (ids < 8)).all(), ids
    assert w[1].isnan().all() and w[2].isfinite().all()
    if backend != "reference":
        assert 2 not in ids[0].tolist() and w[0].isfinite().all()
        assert ids[1].tolist() == [0, 1]
    ok_ids, ok_w = moe_route(logits[2:], 2, backend=backend)
    assert torch.equal(ids[2], ok_ids[0]) and torch.equal(w[2], ok_w[0])


def test_route_nan_while_the_top_k_fills():
    """The cpu top-k compared `v > NaN` (false) once a NaN had entered its buffer (a NaN among the
    first k experts): it turned every later expert away, picked the NaN one and missed the best.
    NaN now ranks below every number; ungrouped, the cpu and Triton kernels agree on every NaN
    pattern, NaN-weight slots included (id j, weight NaN, the others normalised without it)."""
    logits = torch.tensor([[0.0, 1.0, float("nan"), 3.0, 4.0, 5.0, 6.0, 7.0]])
    for bias in (None, torch.tensor([0.0, float("nan"), 0, 0, 0, 0, 0, 0])):
        ids, w = moe_route(logits.nan_to_num(0.0) if bias is not None else logits, 3,
                           e_score_correction_bias=bias, backend="cpu")  # fmt: skip
        assert ids.tolist() == [[7, 6, 5]] and w.isfinite().all(), (ids, w)
    if TRITON_SKIP:
        return
    g = _gen(11)
    for trial in range(60):
        e, k = (8, 16, 32)[trial % 3], (1, 3, 4)[trial % 3]
        x = torch.randn(4, e, generator=g)
        x[torch.rand(4, e, generator=g) < (0.1, 0.5, 0.9, 1.0)[trial % 4]] = float("nan")
        for norm in (True, False):
            ic, wc = moe_route(x, k, norm_topk_prob=norm, backend="cpu")
            it, wt = moe_route(x, k, norm_topk_prob=norm, backend="triton")
            assert torch.equal(ic, it), (trial, ic, it)
            torch.testing.assert_close(wc, wt, equal_nan=True)


def _hf_router(e, k, g, tg, scale, norm, hidden=16, seed=0):
    pytest.importorskip("transformers")
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    torch.manual_seed(seed)
    cfg = DeepseekV3Config(
        hidden_size=hidden,
        n_routed_experts=e,
        num_experts_per_tok=k,
        n_group=g,
        topk_group=tg,
        norm_topk_prob=norm,
        routed_scaling_factor=scale,
    )
    r = DeepseekV3TopkRouter(cfg)
    torch.nn.init.normal_(r.weight)
    r.e_score_correction_bias.normal_(0, 0.1)
    return r


def _route_like(router, logits, dev="cpu", backend=None, tie_break=None):
    """moe_route (or, with tie_break, the reference) with an HF router's config and bias."""
    kw = dict(
        e_score_correction_bias=router.e_score_correction_bias.to(dev),
        n_group=router.num_group,
        topk_group=router.topk_group,
        norm_topk_prob=router.norm_topk_prob,
        routed_scaling_factor=router.routed_scaling_factor,
    )
    if tie_break is not None:
        return ref.moe_route(logits, router.top_k, tie_break=tie_break, **kw)
    return moe_route(logits.to(dev), router.top_k, backend=backend, **kw)


def _assert_same_routing(ids, w, hid, hw):
    """HF returns ids unsorted (topk sorted=False): compare as sets, weights matched per id."""
    hs, hi = hid.sort(1)
    ps, pi = ids.cpu().long().sort(1)
    assert torch.equal(hs, ps)
    torch.testing.assert_close(w.cpu().gather(1, pi), hw.gather(1, hi), rtol=1e-6, atol=1e-7)


HF_ROUTE_CONFIGS = [  # (E, top_k, n_group, topk_group, norm)
    (64, 6, 8, 3, True),
    (256, 8, 8, 4, True),  # DeepSeek-V3
    (32, 4, 1, 1, False),
    (8, 8, 2, 1, True),  # transformers' DeepseekV3 tests (helpers.TRANSFORMERS_TEST_ROUTING): 4 masked
    (12, 12, 4, 1, False),  # every expert, 9 of them masked
    (6, 6, 1, 0, True),  # topk_group 0: every expert masked (transformers runs it)
    (16, 0, 4, 2, True),  # top_k 0: no routed expert (transformers runs it)
]


@pytest.mark.parametrize("dev,backend", ROUTE_BACKENDS)
@pytest.mark.parametrize("e,k,g,tg,norm", HF_ROUTE_CONFIGS)
def test_route_matches_transformers_deepseek_v3(dev, backend, e, k, g, tg, norm):
    router = _hf_router(e, k, g, tg, 2.5, norm)
    x = torch.randn(23, 16, generator=_gen(e))
    with torch.no_grad():
        logits, hw, hid = router(x)
    ids, w = _route_like(router, logits, dev, backend)
    _assert_same_routing(ids, w, hid, hw)
    # the "torch" tie rule of the reference reproduces HF bit for bit, order included
    tid, tw = _route_like(router, logits, tie_break="torch")
    assert torch.equal(tid.long(), hid) and torch.equal(tw, hw)


@pytest.mark.parametrize("dev,backend", ROUTE_BACKENDS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(per=st.integers(2, 6), g=st.integers(2, 5), data=st.data(), seed=st.integers(0, 2**16), norm=st.booleans())
def test_route_masked_experts_match_transformers(dev, backend, per, g, data, seed, norm):
    """top_k above the kept groups' experts, on random configs transformers accepts: it picks the
    rest among the masked experts, all tied at -inf. Its CPU torch.topk breaks that tie in no fixed
    way (the reference's tie_break="torch" replays it bit for bit); under the CUDA kernel's rule
    (lower index first) transformers' own router equals every backend."""
    e = per * g
    tg = data.draw(st.integers(0, g - 1))
    k = data.draw(st.integers(tg * per + 1, e))
    router = _hf_router(e, k, g, tg, 1.0 + seed % 3, norm, seed=seed)
    x = torch.randn(9, 16, generator=_gen(seed))
    with torch.no_grad():
        logits, hw, hid = router(x)
        tid, tw = _route_like(router, logits, tie_break="torch")
        assert torch.equal(tid.long(), hid) and torch.equal(tw, hw)
        with mock.patch.object(torch, "topk", topk_ties_to_lower_index):
            _, hw, hid = router(x)
        ids, w = _route_like(router, logits, dev, backend)
    _assert_same_routing(ids, w, hid, hw)


def test_route_transformers_ties_same_scores():
    """With ties, HF (torch.topk) may pick other experts of equal score: the chosen biased scores and
    the weights agree as multisets, and the reference with tie_break='torch' equals HF exactly."""
    router = _hf_router(32, 4, 4, 2, 1.0, True)
    logits = torch.randint(-1, 2, (40, 32), generator=_gen(3)).float()
    router.e_score_correction_bias.zero_()
    s = logits.sigmoid()
    scores_for_choice = s + router.e_score_correction_bias
    gs = scores_for_choice.view(40, 4, 8).topk(2, dim=-1)[0].sum(-1)
    gidx = torch.topk(gs, 2, dim=-1, sorted=False)[1]
    gm = torch.zeros_like(gs).scatter_(1, gidx, 1)
    sm = gm.unsqueeze(-1).expand(-1, 4, 8).reshape(-1, 32)
    hid = torch.topk(scores_for_choice.masked_fill(~sm.bool(), float("-inf")), 4, dim=-1, sorted=False)[1]
    ids, w = moe_route(logits, 4, n_group=4, topk_group=2)
    torch.testing.assert_close(s.gather(1, hid).sort(1).values, s.gather(1, ids.long()).sort(1).values)
    tid, _ = ref.moe_route(logits, 4, n_group=4, topk_group=2, tie_break="torch")
    assert torch.equal(tid.long(), hid)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    t=st.integers(0, 12),
    per=st.integers(1, 9),
    g=st.integers(1, 6),
    data=st.data(),
    seed=st.integers(0, 2**16),
    softmax=st.booleans(),
    norm=st.booleans(),
    ties=st.booleans(),
)
def test_route_fuzz_cpu_vs_reference(t, per, g, data, seed, softmax, norm, ties):
    if not _backend.backend_status("cpu", "cpu")[0]:
        pytest.skip("cpu backend unavailable")
    e = per * g
    tg = data.draw(st.integers(0, g))  # 0: every expert masked
    k = data.draw(st.integers(0, e))  # above tg * per too: the rest are masked experts
    gen = _gen(seed)
    logits = torch.randint(-2, 3, (t, e), generator=gen).float() if ties else torch.randn(t, e, generator=gen)
    bias = torch.randn(e, generator=gen) * 0.1 if seed % 3 else None
    kw = dict(
        scoring="softmax" if softmax else "sigmoid",
        e_score_correction_bias=bias,
        n_group=g,
        topk_group=tg,
        norm_topk_prob=norm,
        routed_scaling_factor=1.0 + seed % 4,
    )
    ids, w = moe_route(logits, k, backend="cpu", **kw)
    rid, rw = ref.moe_route(logits, k, **kw)
    assert torch.equal(ids, rid)
    torch.testing.assert_close(w, rw, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("scoring,norm", [("sigmoid", True), ("softmax", True), ("sigmoid", False)])
def test_route_gradcheck(backend, scoring, norm):
    if not _backend.backend_status(backend, "cpu")[0]:
        pytest.skip(f"{backend} unavailable")
    logits = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, dtype=torch.float64) * 0.1
    f = lambda x: moe_route(
        x,
        3,
        scoring=scoring,
        e_score_correction_bias=bias,
        n_group=4,
        topk_group=2,
        norm_topk_prob=norm,
        routed_scaling_factor=1.5,
        backend=backend,
    )[1]
    assert torch.autograd.gradcheck(f, (logits,))


@pytest.mark.parametrize("dev,backend", [p for p in ROUTE_BACKENDS if p.values[1] != "reference"])
@pytest.mark.parametrize("scoring,norm", [("sigmoid", True), ("softmax", True), ("softmax", False)])
def test_route_backward_matches_reference(dev, backend, scoring, norm):
    logits = torch.randn(9, 16, generator=_gen(5))
    kw = dict(scoring=scoring, n_group=4, topk_group=2, norm_topk_prob=norm, routed_scaling_factor=2.0)
    g = torch.randn(9, 3, generator=_gen(6))
    x1 = logits.clone().to(dev).requires_grad_()
    x2 = logits.double().requires_grad_()
    _, w1 = moe_route(x1, 3, backend=backend, **kw)
    _, w2 = ref.moe_route(x2, 3, **kw)
    (d1,) = torch.autograd.grad(w1, x1, g.to(dev))
    (d2,) = torch.autograd.grad(w2, x2, g.double())
    assert_close_to_ref(d1, d2, atol=1e-6, what="d router_logits")


LARGE_ROUTE_CASES = [  # (T, E, top_k, n_group, topk_group, scoring, bias): one program per token
    (3, 4096, 8, 8, 4, "sigmoid", True),  # DeepSeek-V3's grouping at 4096 experts
    (3, 4096, 8, 1, 1, "softmax", False),
]


@pytest.mark.parametrize("dev,backend", ROUTE_BACKENDS)
@pytest.mark.parametrize("case", LARGE_ROUTE_CASES, ids=lambda c: f"T{c[0]}E{c[1]}k{c[2]}g{c[3]}-{c[4]}-{c[5]}")
def test_route_4096_experts_matches_reference(dev, backend, case):
    t, e, k, g, tg, scoring, has_bias = case
    gen = _gen(e + t)
    logits = torch.randn(t, e, generator=gen).to(dev)
    bias = (torch.randn(e, generator=gen) * 0.1).to(dev) if has_bias else None
    kw = dict(scoring=scoring, e_score_correction_bias=bias, n_group=g, topk_group=tg, routed_scaling_factor=2.5)
    ids, w = moe_route(logits, k, backend=backend, **kw)
    rid, rw = ref.moe_route(logits.double(), k, **kw)
    assert torch.equal(ids.cpu(), rid.cpu())
    assert_close_to_ref(w, rw, atol=1e-6, what="topk_weights")


STREAM_CASES = [  # (T, E, top_k, n_group, topk_group, scoring, bias, norm, tile, ties)
    (2, 128, 4, 2, 1, "sigmoid", True, True, 32, False),  # groups of 64 streamed in 32-wide chunks
    (2, 128, 4, 4, 2, "sigmoid", False, True, 16, True),  # integer logits: ties inside and across chunks
    (2, 96, 4, 32, 3, "softmax", True, True, 16, False),  # groups of 3 (padded to 4), 4 groups a tile
    (2, 300, 12, 1, 1, "softmax", True, False, 64, False),  # no group limit, E not a power of two
    (2, 128, 6, 1, 1, "softmax", False, True, 32, True),
    # top_k above the kept groups' experts: masked picks across tiles and chunks
    (2, 128, 36, 4, 1, "sigmoid", True, True, 16, False),  # 32 kept (two chunks) + 4 masked
    (2, 96, 9, 32, 2, "softmax", True, True, 16, True),  # 6 kept + 3 masked, groups of 3
    (2, 64, 5, 64, 2, "sigmoid", True, False, 16, False),  # one expert per group, 16 groups a tile
]


@pytest.mark.parametrize("case", STREAM_CASES, ids=lambda c: f"T{c[0]}E{c[1]}k{c[2]}g{c[3]}-{c[4]}-tile{c[8]}")
def test_route_streaming_kernel_matches_reference(case):
    """Rows wider than a tile take the streaming paths (the GPU's above ROUTE_TILE = 4096 experts):
    small tiles reach them at small E under the interpreter."""
    if TRITON_SKIP:
        pytest.skip(TRITON_SKIP)
    from pygen.kernels import moe as kmoe

    t, e, k, g, tg, scoring, has_bias, norm, tile, ties = case
    assert not kmoe.route_config(t, e, g, tg, tile)["SINGLE"]
    gen = _gen(e * 7 + k)
    logits = torch.randint(-2, 3, (t, e), generator=gen).float() if ties else torch.randn(t, e, generator=gen)
    bias = torch.randn(e, generator=gen) * 0.1 if has_bias else None
    ids = torch.empty(t, k, dtype=torch.int32)
    w = torch.empty(t, k)
    kmoe.route_fwd(logits, bias, ids, w, scoring, g, tg, norm, 1.5, tile=tile)
    rid, rw = ref.moe_route(logits.double(), k, **route_kwargs(g, tg, scoring, bias, norm, 1.5))
    assert torch.equal(ids, rid)
    assert_close_to_ref(w, rw, atol=1e-6, what="topk_weights")


# ---------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------
def check_align_invariants(ids, num_experts, block_size, out):
    """The moe_align contract, stated independently of any implementation."""
    sorted_ids, expert_ids, ntpp = (t.cpu() for t in out)
    flat = ids.reshape(-1).cpu().long()
    n = flat.numel()
    cap = n + num_experts * (block_size - 1)
    nblk = -(-cap // block_size)
    assert sorted_ids.shape == (cap,) and expert_ids.shape == (nblk,) and ntpp.shape == (1,)
    assert sorted_ids.dtype == expert_ids.dtype == ntpp.dtype == torch.int32
    total = int(ntpp)
    assert total % block_size == 0 and total <= cap
    valid = (flat >= 0) & (flat < num_experts)
    real = sorted_ids[sorted_ids != n].long()
    # every routed slot exactly once, nothing else; padding marked with the sentinel
    assert torch.equal(real.sort().values, torch.nonzero(valid).flatten())
    assert bool((sorted_ids[total:] == n).all())
    pos = 0
    for j in range(nblk):
        blk = sorted_ids[j * block_size : (j + 1) * block_size].long()
        if j * block_size >= total:
            assert int(expert_ids[j]) == -1
            continue
        e = int(expert_ids[j])
        assert 0 <= e < num_experts
        got = blk[blk != n]
        assert bool((flat[got] == e).all())  # the block's slots are its expert's
        assert torch.equal(got, got.sort().values)  # ascending slot order
        pos += 1
    # experts in ascending order, each segment starting on a block boundary
    used = expert_ids[: total // block_size]
    assert bool((used[1:] >= used[:-1]).all())
    counts = torch.bincount(flat[valid], minlength=num_experts)
    assert total == int(((counts + block_size - 1) // block_size * block_size).sum())


ALIGN_CASES = [(37, 6, 16, 4), (9, 2, 5, 1), (64, 8, 256, 16), (0, 3, 7, 8), (1, 1, 1, 64), (50, 4, 3, 128)]


@pytest.mark.parametrize("dev,backend", ALIGN_BACKENDS)
@pytest.mark.parametrize("t,k,e,b", ALIGN_CASES)
@pytest.mark.parametrize("idt", [torch.int32, torch.int64])
def test_align_contract_and_reference(dev, backend, t, k, e, b, idt):
    ids = torch.randint(0, e, (t, k), generator=_gen(t + e + b), dtype=torch.int64).to(idt).to(dev)
    out = moe_align(ids, e, b, backend=backend)
    check_align_invariants(ids, e, b, out)
    for got, want in zip(out, ref.moe_align(ids, e, b)):
        assert torch.equal(got.cpu(), want.cpu())


@pytest.mark.parametrize("dev,backend", ALIGN_BACKENDS)
def test_align_skewed_and_empty_experts(dev, backend):
    ids = torch.zeros(40, 2, dtype=torch.int32)  # every slot to expert 0; experts 1..9 get nothing
    ids[5, 1] = 9
    out = moe_align(ids.to(dev), 10, 8, backend=backend)
    check_align_invariants(ids, 10, 8, out)
    assert int(out[2]) == 80 + 8


@pytest.mark.parametrize("dev,backend", ALIGN_BACKENDS)
def test_align_out_of_range_ids_routed_nowhere_without_check(dev, backend):
    ids = torch.tensor([[0, -1], [7, 2], [2**33, 1]], dtype=torch.int64).to(dev)
    out = moe_align(ids, 4, 2, backend=backend, check_ids=False)
    check_align_invariants(ids, 4, 2, out)
    for got, want in zip(out, ref.moe_align(ids, 4, 2)):
        assert torch.equal(got.cpu(), want.cpu())


@pytest.mark.parametrize("dev,backend", [p for p in ALIGN_BACKENDS if p.values[1] in ("cpu", "cuda", "reference")])
def test_align_large_65536_slots_4096_experts(dev, backend):
    ids = torch.randint(0, 4096, (8192, 8), generator=_gen(11), dtype=torch.int32)
    ids[:100] = 4095  # a hot expert at the end
    out = moe_align(ids.to(dev), 4096, 64, backend=backend)
    want = ref.moe_align(ids, 4096, 64)
    for got, w in zip(out, want):
        assert torch.equal(got.cpu(), w)
    sorted_ids, expert_ids, ntpp = out
    flat = ids.reshape(-1)
    real = sorted_ids[sorted_ids != flat.numel()].long().cpu()
    assert real.numel() == 65536 and torch.equal(real.sort().values, torch.arange(65536))


def test_align_large_triton():
    if TRITON_SKIP:
        pytest.skip(TRITON_SKIP)
    ids = torch.randint(0, 4096, (512, 8), generator=_gen(12), dtype=torch.int32)
    out = moe_align(ids, 4096, 64, backend="triton")
    for got, w in zip(out, ref.moe_align(ids, 4096, 64)):
        assert torch.equal(got, w)


def _align_space(tokens: int, top_k: int, experts: int, blocks: list[int]) -> dict:
    """hypothesis strategies of one moe_align problem (the fuzz tests' arguments t, k, e, b): up to
    ``tokens`` tokens, 1 to ``top_k`` slots each, 1 to ``experts`` experts, a block size of ``blocks``."""
    return dict(t=st.integers(0, tokens), k=st.integers(1, top_k), e=st.integers(1, experts), b=st.sampled_from(blocks))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_align_space(40, 8, 70, [1, 2, 3, 16, 64]), hot=st.booleans(), seed=st.integers(0, 2**16), bad=st.booleans())
def test_align_fuzz_cpu_and_reference(t, k, e, b, hot, seed, bad):
    gen = _gen(seed)
    hi = 1 if hot else e
    ids = torch.randint(0, hi, (t, k), generator=gen, dtype=torch.int64)
    if bad and ids.numel():
        ids.view(-1)[0] = -1 if seed % 2 else e + seed
    backends = ["reference"] + (["cpu"] if _backend.backend_status("cpu", "cpu")[0] else [])
    want = ref.moe_align(ids, e, b)
    for be in backends:
        out = moe_align(ids, e, b, backend=be, check_ids=False)
        check_align_invariants(ids, e, b, out)
        for got, w in zip(out, want):
            assert torch.equal(got, w)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**_align_space(24, 4, 40, [1, 4, 16]), seed=st.integers(0, 2**16))
def test_align_fuzz_triton(t, k, e, b, seed):
    if TRITON_SKIP:
        pytest.skip(TRITON_SKIP)
    ids = torch.randint(0, e, (t, k), generator=_gen(seed), dtype=torch.int32)
    out = moe_align(ids, e, b, backend="triton")
    for got, w in zip(out, ref.moe_align(ids, e, b)):
        assert torch.equal(got, w)


# ---------------------------------------------------------------------------------------------
# permute / unpermute
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dev,backend", PERM_BACKENDS)
@pytest.mark.parametrize("t,k,e,h", [(13, 3, 8, 24), (1, 1, 1, 5), (0, 2, 4, 8)])
def test_permute_unpermute_roundtrip_and_grads(dev, backend, t, k, e, h):
    gen = _gen(t * 7 + h)
    x = torch.randn(t, h, generator=gen).to(dev).requires_grad_()
    ids = torch.randint(0, e, (t, k), generator=gen).to(dev)
    w = torch.rand(t, k, generator=gen).to(dev).requires_grad_()
    perm, slots, offs = moe_permute(x, ids, e, backend=backend)
    rperm, rslots, roffs = ref.moe_permute(x.detach().double(), ids, e)
    assert torch.equal(slots.cpu(), rslots.cpu()) and torch.equal(offs.cpu(), roffs.cpu())
    assert_close_to_ref(perm, rperm, what="permuted")
    y = perm * 2.0
    out = moe_unpermute(y, slots, w, backend=backend)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    rp, rs, _ = ref.moe_permute(x64, ids, e)
    rout = ref.moe_unpermute(rp * 2.0, rs, w64, t, k)
    assert_close_to_ref(out, rout, what="unpermuted")
    if t:
        g = torch.randn(t, h, generator=gen)
        dx, dw = torch.autograd.grad(out, (x, w), g.to(dev))
        rdx, rdw = torch.autograd.grad(rout, (x64, w64), g.double())
        assert_close_to_ref(dx, rdx, what="dx")
        assert_close_to_ref(dw, rdw, what="dw")
    plain = moe_unpermute(perm, slots, top_k=k, backend=backend)
    assert_close_to_ref(plain, x.detach().double() * k, what="unweighted sum of k copies")


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_permute_unpermute_dtypes_cpu(backend, dtype):
    if not _backend.backend_status(backend, "cpu")[0]:
        pytest.skip(f"{backend} unavailable")
    gen = _gen(5)
    x = torch.randn(9, 12, generator=gen).to(dtype)
    ids = torch.randint(0, 5, (9, 2), generator=gen)
    w = torch.rand(9, 2, generator=gen, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    perm, slots, _ = moe_permute(x, ids, 5, backend=backend)
    rperm, rslots, _ = ref.moe_permute(x, ids, 5)
    assert torch.equal(perm, rperm) and torch.equal(slots, rslots)
    out = moe_unpermute(perm, slots, w, backend=backend)
    rout = ref.moe_unpermute(rperm.double(), rslots, w.double(), 9, 2)
    same = ref.moe_unpermute(rperm, rslots, w, 9, 2)
    assert out.dtype == dtype
    assert_close_to_ref(out, rout, same_dtype=same, atol=1e-12 if dtype == torch.float64 else 2e-2)
    if dtype == torch.float64:
        xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
        f = lambda a, b: moe_unpermute(moe_permute(a, ids, 5, backend=backend)[0] * 3, slots, b, backend=backend)
        assert torch.autograd.gradcheck(f, (xg, wg))


@pytest.mark.parametrize("dev,backend", PERM_BACKENDS)
def test_unpermute_ignores_foreign_slot_values(dev, backend):
    """Rows whose slot is outside [0, T*k) (sentinel, negative, huge) contribute nothing and get a
    zero gradient; never an out-of-bounds access."""
    y = torch.randn(6, 4, generator=_gen(3)).to(dev).requires_grad_()
    slots = torch.tensor([0, -3, 5, 100, 2, 2**31 - 1], dtype=torch.int32, device=dev)
    w = torch.rand(3, 2, generator=_gen(4)).to(dev).requires_grad_()
    out = moe_unpermute(y, slots, w, backend=backend)
    keep = torch.tensor([1, 0, 1, 0, 1, 0], dtype=torch.bool)
    want = torch.zeros(3, 4, dtype=torch.float64)
    for r in range(6):
        if keep[r]:
            s = int(slots[r])
            want[s // 2] += w.detach().cpu().double().reshape(-1)[s] * y.detach().cpu().double()[r]
    assert_close_to_ref(out, want)
    gy, gw = torch.autograd.grad(out.sum(), (y, w))
    assert bool((gy.cpu()[~keep] == 0).all()) and float(gw.cpu().reshape(-1)[[1, 3]].abs().sum()) == 0.0


# ---------------------------------------------------------------------------------------------
# fused_moe
# ---------------------------------------------------------------------------------------------
def _moe_inputs(t, k, e, h, inter, dtype, dev, seed=0, hot=False):
    gen = _gen(seed)
    x = torch.randn(t, h, generator=gen).to(dtype)
    w1 = (torch.randn(e, 2 * inter, h, generator=gen) / h**0.5).to(dtype)
    w2 = (torch.randn(e, h, inter, generator=gen) / inter**0.5).to(dtype)
    ids = torch.randint(0, 1 if hot else e, (t, k), generator=gen)
    if not hot and t * k >= e:  # make sure some expert gets nothing
        ids[ids == e - 1] = 0
    w = torch.rand(t, k, generator=gen, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    return [a.to(dev) for a in (x, w1, w2, w, ids)]


FUSED_CASES = [
    (13, 3, 6, 32, 16, "silu"),
    (7, 2, 4, 24, 40, "gelu_tanh"),
    (5, 1, 3, 16, 8, "gelu"),
    (1, 2, 24, 16, 16, "silu"),
    (0, 2, 4, 16, 8, "silu"),
]


@pytest.mark.parametrize("dev,backend", KERNEL_ROUTE)
@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "T{}k{}E{}H{}I{}-{}".format(*c))
def test_fused_moe_forward_backward_vs_reference(dev, backend, case):
    t, k, e, h, inter, act = case
    x, w1, w2, w, ids = _moe_inputs(t, k, e, h, inter, torch.float32, dev, seed=t + e)
    leaves = [a.clone().requires_grad_() for a in (x, w1, w2, w)]
    out = fused_moe(*leaves, ids, activation=act, backend=backend)
    leaves64 = [a.detach().cpu().double().requires_grad_() for a in (x, w1, w2, w)]
    rout = ref.fused_moe(*leaves64, ids.cpu(), act)
    assert out.dtype == x.dtype
    assert_close_to_ref(out, rout, atol=1e-5, what="fused_moe")
    if t == 0:
        return
    g = torch.randn(t, h, generator=_gen(1))
    grads = torch.autograd.grad(out, leaves, g.to(dev))
    rgrads = torch.autograd.grad(rout, leaves64, g.double())
    for name, a, b in zip(("dx", "dw1", "dw2", "dweights"), grads, rgrads):
        assert_close_to_ref(a, b, atol=2e-5, what=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_moe_half_precision_triton(dtype):
    if TRITON_SKIP:
        pytest.skip(TRITON_SKIP)
    x, w1, w2, w, ids = _moe_inputs(11, 2, 4, 32, 16, dtype, "cpu", seed=3)
    out = fused_moe(x, w1, w2, w, ids, backend="triton")
    rout = ref.fused_moe(x.double(), w1.double(), w2.double(), w.double(), ids)
    same = ref.fused_moe(x, w1, w2, w.to(dtype), ids)  # torch in the same dtype
    # one extra ulp on the interpreter: its fp32 -> 16-bit stores truncate (ARCHITECTURE.md)
    ulp = 2e-3 if dtype == torch.float16 else 1.6e-2
    assert_close_to_ref(out, rout, same_dtype=same, atol=ulp * (1 + rout.abs().max().item()), what=str(dtype))
    leaves = [a.clone().requires_grad_() for a in (x, w1, w2, w)]
    o = fused_moe(*leaves, ids, backend="triton")
    g = torch.randn(11, 32, generator=_gen(2)).to(dtype)
    grads = torch.autograd.grad(o, leaves, g)
    l64 = [a.detach().double().requires_grad_() for a in (x, w1, w2, w)]
    rgr = torch.autograd.grad(ref.fused_moe(*l64, ids), l64, g.double())
    for name, a, b in zip(("dx", "dw1", "dw2", "dweights"), grads, rgr):
        scale = 1 + b.abs().max().item()
        assert (a.double() - b).abs().max().item() <= 3 * ulp * scale, name


def test_fused_moe_deterministic_mode_is_bitwise_reproducible():
    if TRITON_SKIP:
        pytest.skip(TRITON_SKIP)
    x, w1, w2, w, ids = _moe_inputs(9, 3, 4, 16, 8, torch.float32, "cpu", seed=4)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        leaves = [a.clone().requires_grad_() for a in (x, w1, w2, w)]
        o1 = fused_moe(*leaves, ids, backend="triton")
        g1 = torch.autograd.grad(o1.sum(), leaves)
        o2 = fused_moe(*leaves, ids, backend="triton")
        g2 = torch.autograd.grad(o2.sum(), leaves)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert torch.equal(o1, o2) and all(torch.equal(a, b) for a, b in zip(g1, g2))
    rout = ref.fused_moe(x.double(), w1.double(), w2.double(), w.double(), ids)
    assert_close_to_ref(o1, rout, atol=1e-5)


def test_fused_moe_gradcheck_reference():
    x, w1, w2, w, ids = _moe_inputs(4, 2, 3, 5, 3, torch.float64, "cpu", seed=5)
    leaves = [a.requires_grad_() for a in (x, w1, w2, w)]
    f = lambda *a: fused_moe(*a, ids, backend="reference")
    assert torch.autograd.gradcheck(f, leaves)


def test_fused_moe_triton_gradient_is_the_reference_jacobian():
    """Triton has no float64 path; its float32 backward is checked against the float64 Jacobian of
    the reference by directional derivatives (a gradcheck-style test with float32 tolerances)."""
    if TRITON_SKIP:
        pytest.skip(TRITON_SKIP)
    x, w1, w2, w, ids = _moe_inputs(5, 2, 3, 8, 4, torch.float32, "cpu", seed=6)
    leaves = [a.clone().requires_grad_() for a in (x, w1, w2, w)]
    g = torch.randn(5, 8, generator=_gen(8))
    grads = torch.autograd.grad(fused_moe(*leaves, ids, backend="triton"), leaves, g)
    base = [a.detach().double() for a in (x, w1, w2, w)]
    for i, gr in enumerate(grads):
        v = torch.randn(base[i].shape, generator=_gen(20 + i), dtype=torch.float64)
        eps = 1e-6
        plus = [b + eps * v if j == i else b for j, b in enumerate(base)]
        minus = [b - eps * v if j == i else b for j, b in enumerate(base)]
        fd = ((ref.fused_moe(*plus, ids) - ref.fused_moe(*minus, ids)) * g.double()).sum() / (2 * eps)
        assert abs((gr.double() * v).sum().item() - fd.item()) <= 1e-4 * (1 + abs(fd.item()))


def test_fused_moe_all_to_one_expert_and_unused_experts():
    if TRITON_SKIP:
        pytest.skip(TRITON_SKIP)
    x, w1, w2, w, ids = _moe_inputs(20, 2, 5, 16, 8, torch.float32, "cpu", seed=7, hot=True)
    out = fused_moe(x, w1, w2, w, ids, backend="triton")
    assert_close_to_ref(out, ref.fused_moe(x.double(), w1.double(), w2.double(), w.double(), ids), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# opcheck and torch.compile
# ---------------------------------------------------------------------------------------------
def _opcheck_cases():
    x, w1, w2, w, ids = _moe_inputs(6, 2, 3, 16, 8, torch.float32, "cpu", seed=9)
    ids32 = ids.to(torch.int32)
    slots = ref.moe_permute(x, ids, 3)[1]
    gu = torch.randn(12, 16)
    hm = torch.randn(12, 8)
    g = torch.randn(6, 16)
    cases = {
        "moe_route_triton": (torch.randn(5, 16), torch.randn(16) * 0.1, 3, "sigmoid", 4, 2, True, 1.5),
        "moe_route_cpu": (torch.randn(5, 16), torch.randn(16) * 0.1, 3, "softmax", 4, 2, True, 1.5),
        "moe_align_triton": (ids32, 3, 4),
        "moe_align_cpu": (ids, 3, 4),
        "moe_permute_triton": (x, ids32, 3),
        "moe_unpermute_triton": (torch.randn(12, 16), slots, w, 6, 2),
        "moe_unpermute_backward_triton": (g, torch.randn(12, 16), slots, w, True, True),
        "moe_permute_cpu": (x, ids, 3),
        "moe_unpermute_cpu": (torch.randn(12, 16), slots, None, 6, 2),
        "moe_unpermute_backward_cpu": (g, torch.randn(12, 16), slots, w, True, True),
        "fused_moe_triton": (x, w1, w2, w, ids32, "silu", False, True),
        "fused_moe_backward_triton": (g, x, w1, w2, w, ids32, gu, hm, "silu", True, True, True, True, True),
    }
    return cases


def test_every_registered_moe_op_has_an_opcheck():
    names = {n for n in _registry.registered() if n.startswith(("moe_", "fused_moe"))}
    assert names == set(_opcheck_cases()) | set(GPU_ONLY)


GPU_ONLY = ("moe_align_cuda", "moe_permute_cuda", "moe_unpermute_cuda", "moe_unpermute_backward_cuda")


@pytest.mark.parametrize("name", GPU_ONLY)
def test_opcheck_cuda_ops(name):
    if not _backend.backend_status("cuda", "cuda")[0]:
        pytest.skip("cuda backend unavailable: " + _backend.backend_status("cuda", "cuda")[1])
    args = {
        k.replace("_cpu", "_cuda"): tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in v)
        for k, v in _opcheck_cases().items()
        if k.endswith("_cpu")
    }[name]
    torch.library.opcheck(
        _registry.get(name), args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    )


@pytest.mark.parametrize("name", sorted(_opcheck_cases()))
def test_opcheck(name):
    backend = "cpu" if name.endswith("_cpu") else "triton"
    if not _backend.backend_status(backend, "cpu")[0]:
        pytest.skip(f"{backend} unavailable")
    args = _opcheck_cases()[name]
    diff = (
        any(isinstance(a, torch.Tensor) and a.is_floating_point() for a in args)
        and "align" not in name
        and "backward" not in name
    )
    if diff:
        args = tuple(
            a.clone().requires_grad_()
            if isinstance(a, torch.Tensor)
            and a.is_floating_point()
            and i < 4
            and not (name.startswith("moe_route") and i == 1)
            else a
            for i, a in enumerate(args)
        )
    tests = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic") + (
        ("test_autograd_registration",) if diff else ()
    )
    torch.library.opcheck(_registry.get(name), args, test_utils=tests)


def test_torch_compile_fullgraph():
    if TRITON_SKIP:
        pytest.skip(TRITON_SKIP)
    x, w1, w2, _w, _ids = _moe_inputs(7, 2, 4, 16, 8, torch.float32, "cpu", seed=10)
    gate = torch.randn(4, 16, generator=_gen(1))

    def layer(x, w1, w2):
        ids, w = moe_route(x @ gate.t(), 2, n_group=2, topk_group=1, backend="triton")
        _s, _e, n = moe_align(ids, 4, 16, backend="cpu", check_ids=False)
        return fused_moe(x, w1, w2, w, ids, backend="triton"), n  # the id check is skipped while tracing

    out, n = torch.compile(layer, fullgraph=True, backend="aot_eager")(x, w1, w2)
    eo, en = layer(x, w1, w2)
    torch.testing.assert_close(out, eo)
    assert torch.equal(n, en)


def test_compiled_permute_unpermute_token_counts_share_a_graph(gen):
    """moe_unpermute took the token count as int: under torch.compile every new count was a graph
    of its own (SymInt now: one recompile to a dynamic graph, then none)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("aot_eager")

    def f(x, ids, w):
        p, slots, _ = moe_permute(x, ids, 8, check_ids=False)
        return moe_unpermute(p, slots, w)

    g = torch.compile(f, fullgraph=True, backend=cnt)
    frames = []
    for t in (4, 4, 5, 7, 9):
        x = torch.randn(t, 16, generator=gen, requires_grad=True)
        ids = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(t)]).to(torch.int32)
        w = torch.rand(t, 2, generator=gen)
        before = cnt.frame_count
        out = g(x, ids, w)
        out.sum().backward()
        torch.testing.assert_close(out, f(x, ids, w))
        frames.append(cnt.frame_count - before)
    assert frames == [1, 0, 1, 0, 0], frames


def test_unpermute_bf16_stores_round_to_nearest(gen):
    """moe_unpermute's kernels store their float32 sums (forward, d permuted, d weights) rounded to
    nearest in bf16, as the GPU does, under the interpreter too (kernels/_bf16.py)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    t, k, h = 12, 3, 40
    y = torch.randn(t * k, h, generator=gen).to(dev, torch.bfloat16).requires_grad_()
    w = torch.rand(t, k, generator=gen).to(dev, torch.bfloat16).requires_grad_()
    slots = torch.randperm(t * k, generator=gen).to(dev, torch.int32)
    out = moe_unpermute(y, slots, w, backend="triton")
    y64, w64 = (a.detach().double().cpu().requires_grad_() for a in (y, w))
    r_out = ref.moe_unpermute(y64, slots.cpu(), w64, t, k)
    assert_rounded_bf16(out, r_out, "moe_unpermute")
    g = torch.randn(t, h, generator=gen).to(dev, torch.bfloat16)
    got = torch.autograd.grad(out, (y, w), g)
    want = torch.autograd.grad(r_out, (y64, w64), g.double().cpu())
    for name, a, b in zip(("d permuted", "d weights"), got, want):
        assert_rounded_bf16(a, b, f"moe_unpermute {name}")
