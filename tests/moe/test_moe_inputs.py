"""Bad input to the MoE ops raises a ValueError/TypeError that names the argument, before any kernel
is launched (the launchers are booby-trapped), and degenerate input (zero tokens) gives correct
empty results."""

from __future__ import annotations

import pytest
import torch
from helpers import TRITON_SKIP

import pygen.kernels.moe as kmoe
import pygen.native.moe as nmoe
from pygen.ops.moe import fused_moe, moe_align, moe_permute, moe_route, moe_unpermute

_COMMON = ("route_fwd", "align_fwd", "permute_fwd", "unpermute_fwd", "unpermute_bwd")
LAUNCHERS = [(kmoe, n) for n in _COMMON + ("fused_moe_fwd", "fused_moe_bwd")] + [(nmoe, n) for n in _COMMON]


@pytest.fixture
def no_launch(monkeypatch):
    def trap(*_a, **_k):
        raise AssertionError("a kernel was launched for bad input")

    for mod, name in LAUNCHERS:
        monkeypatch.setattr(mod, name, trap)


LOGITS = torch.randn(4, 16)


def _route(**kw):
    args = dict(router_logits=LOGITS, top_k=2)
    args.update(kw)
    return lambda: moe_route(args.pop("router_logits"), args.pop("top_k"), **args)


ROUTE_BAD = [
    ("router_logits", TypeError, dict(router_logits=[[1.0, 2.0]])),
    ("router_logits", TypeError, dict(router_logits=torch.zeros(4, 16, dtype=torch.int64))),
    ("router_logits", ValueError, dict(router_logits=torch.zeros(16))),
    ("router_logits", ValueError, dict(router_logits=torch.zeros(4, 0))),
    ("top_k", ValueError, dict(top_k=-1)),  # 0 is accepted (transformers runs it: no routed expert)
    ("top_k", ValueError, dict(top_k=17)),
    ("top_k", TypeError, dict(top_k=2.0)),
    ("top_k", TypeError, dict(top_k=True)),
    ("topk_group", ValueError, dict(n_group=4, topk_group=5)),
    ("topk_group", ValueError, dict(n_group=4, topk_group=-1)),  # 0 is accepted: every expert masked
    ("n_group", ValueError, dict(n_group=3, topk_group=1)),
    ("n_group", ValueError, dict(n_group=0)),
    ("e_score_correction_bias", ValueError, dict(e_score_correction_bias=torch.zeros(15))),
    ("e_score_correction_bias", TypeError, dict(e_score_correction_bias=torch.zeros(16, dtype=torch.int32))),
    ("scoring", ValueError, dict(scoring="relu")),
    ("norm_topk_prob", TypeError, dict(norm_topk_prob=1)),
    ("routed_scaling_factor", ValueError, dict(routed_scaling_factor=float("nan"))),
    ("routed_scaling_factor", TypeError, dict(routed_scaling_factor="2")),
    ("backend", ValueError, dict(backend="cuda-fast")),
]


@pytest.mark.parametrize("backend", ["triton", "cpu", "reference"])
@pytest.mark.parametrize("arg,exc,kw", ROUTE_BAD, ids=[f"{c[0]}-{i}" for i, c in enumerate(ROUTE_BAD)])
def test_route_bad_input(no_launch, backend, arg, exc, kw):
    kw = {"backend": backend, **kw}
    with pytest.raises(exc, match=arg):
        _route(**kw)()


@pytest.mark.parametrize("backend", ["triton", "cpu", "reference"])
@pytest.mark.parametrize("top_k", [5, 16])
def test_route_accepts_top_k_above_the_kept_groups(backend, top_k):
    """Only 4 experts are in the kept group, as transformers' DeepseekV3 allows: no error, the
    kept group's 4 experts first, then the lowest ids of the masked groups (pygen/ref/moe.py)."""
    ids, w = moe_route(LOGITS, top_k, n_group=4, topk_group=1, backend=backend)
    assert ids.shape == w.shape == (4, top_k)
    for row, picked in enumerate(ids.tolist()):
        g = picked[0] // 4
        assert sorted(picked[:4]) == list(range(4 * g, 4 * g + 4))
        assert picked[4:] == [x for x in range(16) if x // 4 != g][: top_k - 4], row


IDS = torch.randint(0, 8, (5, 2))
ALIGN_BAD = [
    ("topk_ids", TypeError, (IDS.float(), 8, 4)),
    ("topk_ids", ValueError, (IDS.reshape(-1), 8, 4)),
    ("num_experts", ValueError, (IDS, 0, 4)),
    ("num_experts", TypeError, (IDS, 8.0, 4)),
    ("block_size", ValueError, (IDS, 8, 0)),
    ("block_size", ValueError, (IDS, 8, 8192)),
    ("expert id 8", ValueError, (torch.tensor([[0, 8]]), 8, 4)),
    ("expert id -1", ValueError, (torch.tensor([[0, -1]]), 8, 4)),
]


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
@pytest.mark.parametrize("arg,exc,args", ALIGN_BAD, ids=[f"{c[0]}-{i}" for i, c in enumerate(ALIGN_BAD)])
def test_align_bad_input(no_launch, backend, arg, exc, args):
    with pytest.raises(exc, match=arg):
        moe_align(*args, backend=backend)


def test_align_backend_errors(no_launch):
    with pytest.raises(RuntimeError, match="cuda"):
        moe_align(IDS, 8, 4, backend="cuda")


X = torch.randn(5, 16)
W1 = torch.randn(8, 12, 16)
W2 = torch.randn(8, 16, 6)
TW = torch.rand(5, 2)
FUSED_BAD = [
    ("hidden_states", ValueError, dict(hidden_states=X[0])),
    ("hidden_states", TypeError, dict(hidden_states=X.long())),
    ("w1", ValueError, dict(w1=torch.randn(8, 12, 15))),
    ("w1", ValueError, dict(w1=torch.randn(8, 11, 16), w2=torch.randn(8, 16, 5))),
    ("w1", ValueError, dict(w1=torch.randn(12, 16))),
    ("w2", ValueError, dict(w2=torch.randn(8, 16, 7))),
    ("w2", ValueError, dict(w2=torch.randn(7, 16, 6))),
    ("w1", TypeError, dict(w1=W1.half())),
    ("topk_ids", ValueError, dict(topk_ids=IDS[:4])),
    ("topk_ids", TypeError, dict(topk_ids=IDS.float())),
    ("topk_weights", ValueError, dict(topk_weights=TW[:, :1])),
    ("topk_weights", TypeError, dict(topk_weights=TW.long())),
    ("expert id 9", ValueError, dict(topk_ids=torch.full((5, 2), 9))),
    ("activation", ValueError, dict(activation="relu")),
]


def _fused(**kw):
    args = dict(hidden_states=X, w1=W1, w2=W2, topk_weights=TW, topk_ids=IDS)
    args.update(kw)
    return fused_moe(**args)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("arg,exc,kw", FUSED_BAD, ids=[f"{c[0]}-{i}" for i, c in enumerate(FUSED_BAD)])
def test_fused_bad_input(no_launch, backend, arg, exc, kw):
    with pytest.raises(exc, match=arg):
        _fused(backend=backend, **kw)


def test_backend_requests(no_launch):
    with pytest.raises(ValueError, match="not implemented"):
        _fused(backend="cpu")
    with pytest.raises(TypeError, match="float64"):
        _fused(hidden_states=X.double(), w1=W1.double(), w2=W2.double(), backend="triton")
    with pytest.raises(ValueError, match="not implemented"):
        _fused(backend="cuda")
    with pytest.raises(RuntimeError, match="unavailable"):
        moe_align(IDS, 8, 4, backend="cuda")


PERM_BAD = [
    ("hidden_states", ValueError, lambda: moe_permute(X[0], IDS, 8)),
    ("topk_ids", ValueError, lambda: moe_permute(X, IDS[:3], 8)),
    ("num_experts", ValueError, lambda: moe_permute(X, IDS, 0)),
    ("expert id", ValueError, lambda: moe_permute(X, IDS, 2)),
    ("sorted_slots", TypeError, lambda: moe_unpermute(torch.randn(10, 4), torch.arange(10), TW)),
    ("sorted_slots", ValueError, lambda: moe_unpermute(torch.randn(10, 4), torch.arange(9, dtype=torch.int32), TW)),
    ("top_k", ValueError, lambda: moe_unpermute(torch.randn(10, 4), torch.arange(10, dtype=torch.int32))),
    ("top_k", ValueError, lambda: moe_unpermute(torch.randn(10, 4), torch.arange(10, dtype=torch.int32), top_k=3)),
    ("top_k", ValueError, lambda: moe_unpermute(torch.randn(10, 4), torch.arange(10, dtype=torch.int32), TW, top_k=3)),
    (
        "topk_weights",
        ValueError,
        lambda: moe_unpermute(torch.randn(10, 4), torch.arange(10, dtype=torch.int32), torch.rand(4, 2)),
    ),
    ("permuted", ValueError, lambda: moe_unpermute(torch.randn(10), torch.arange(10, dtype=torch.int32), TW)),
]


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
@pytest.mark.parametrize("arg,exc,fn", PERM_BAD, ids=[f"{c[0]}-{i}" for i, c in enumerate(PERM_BAD)])
def test_permute_bad_input(no_launch, monkeypatch, backend, arg, exc, fn):
    monkeypatch.setenv("PYGEN_BACKEND", backend)
    with pytest.raises(exc, match=arg):
        fn()


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_zero_tokens_give_empty_results(backend):
    ids, w = moe_route(torch.zeros(0, 16), 2, n_group=4, topk_group=2, backend=backend)
    fb = backend if backend != "cpu" else "reference"  # fused_moe has no cpu backend
    assert ids.shape == (0, 2) and w.shape == (0, 2)
    e_ids = torch.zeros(0, 2, dtype=torch.int32)
    s, blocks, n = moe_align(e_ids, 8, 4, backend=backend)
    assert int(n) == 0 and s.shape == (8 * 3,) and bool((s == 0).all()) and bool((blocks == -1).all())
    out = fused_moe(torch.zeros(0, 16), W1, W2, torch.zeros(0, 2), e_ids, backend=fb)
    assert out.shape == (0, 16)
    p, slots, offs = moe_permute(torch.zeros(0, 16), e_ids, 8, backend=backend)
    assert p.shape == (0, 16) and slots.shape == (0,) and bool((offs == 0).all())
    assert moe_unpermute(p, slots, torch.zeros(0, 2), backend=backend).shape == (0, 16)


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_sparse_inputs_and_unpermute_top_k_0(backend):
    """A sparse tensor got torch's "unsupported memory format" / "no storage" (naming nothing);
    moe_unpermute with top_k = 0 (no slot) failed in the cpu binding ("out must be [T, H], top_k
    >= 1") where the reference returns zeros."""
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="hidden_states must be a dense"):
        moe_permute(x.to_sparse(), torch.zeros(4, 2, dtype=torch.int32), 4, backend=backend)
    with pytest.raises(ValueError, match="router_logits must be a dense"):
        moe_route(x.to_sparse(), 2, backend=backend)
    if backend == "triton" and TRITON_SKIP:
        return
    out = moe_unpermute(torch.randn(0, 4), torch.zeros(0, dtype=torch.int32), torch.ones(3, 0), backend=backend)
    assert out.shape == (3, 4) and not out.any()
