"""MLA ops: every bad argument raises a clear ValueError/TypeError naming it before any kernel launch
(the kernel module is replaced by one that fails if touched); zero-length sequences give zeros and
lse -inf without NaN; hypothesis fuzzing of ragged lengths / pages / heads / s_q for decode and of
varlen prefill against the float64 reference."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import TRITON_SKIP, assert_close_to_ref
from hypothesis import HealthCheck, given, settings, strategies as st

from pygen.ops import mla as ops
from pygen.ref import mla as ref

G = torch.Generator().manual_seed(7)
Q, KV, BT, SL = ref.random_decode_problem((9, 3), 1, 16, 4, G)
Q2 = torch.randn(2, 2, 16, 576, generator=G)
KV8 = ref.fp8_quantize(KV[..., :512], KV[..., 512:])
NB = KV.shape[0]
POS = torch.tensor([[0, 1], [2, -1]], dtype=torch.int32)
LAT, ROPE = torch.randn(2, 2, 512), torch.randn(2, 2, 64)
PQ, PK, PV = torch.randn(7, 2, 192), torch.randn(9, 2, 192), torch.randn(9, 2, 128)
CQ, CK = ref.cu_seqlens((3, 4)), ref.cu_seqlens((4, 5))
OA, LA = torch.randn(3, 2, 8), torch.randn(2, 3)


def _bt(at):
    t = BT.clone()
    for (i, j), v in at.items():
        t[i, j] = v
    return t


BAD = [
    # (call, error type, text the message must contain)
    (lambda: ops.mla_decode(Q.numpy(), KV, BT, SL), TypeError, "q"),
    (lambda: ops.mla_decode(Q[0], KV, BT, SL), ValueError, "q"),
    (lambda: ops.mla_decode(Q.int(), KV, BT, SL), TypeError, "q"),
    (lambda: ops.mla_decode(Q[..., :570], KV, BT, SL), ValueError, "head dim"),
    (lambda: ops.mla_decode(Q, KV[..., :570], BT, SL), ValueError, "kv_cache"),
    (lambda: ops.mla_decode(Q, KV.half(), BT, SL), TypeError, "kv_cache"),
    (lambda: ops.mla_decode(Q, torch.randn(NB, 4, 1, 1152)[..., ::2], BT, SL), ValueError, "contiguous"),
    (lambda: ops.mla_decode(Q, KV.expand(-1, -1, 2, -1), BT, SL), ValueError, "kv_cache"),
    (lambda: ops.mla_decode(Q, torch.randn(NB, 3, 1, 576), BT, SL), ValueError, "power of two"),
    (lambda: ops.mla_decode(Q, KV.transpose(0, 3).contiguous().transpose(0, 3), BT, SL), ValueError, "contiguous"),
    (lambda: ops.mla_decode(Q.transpose(2, 3).contiguous().transpose(2, 3), KV, BT, SL), ValueError, "q"),
    (lambda: ops.mla_decode(Q, KV, BT.long(), SL), TypeError, "block_table"),
    (lambda: ops.mla_decode(Q, KV, BT[:1], SL), ValueError, "block_table"),
    (lambda: ops.mla_decode(Q, KV, BT, SL.long()), TypeError, "cache_seqlens"),
    (lambda: ops.mla_decode(Q, KV, BT, SL[:1]), ValueError, "cache_seqlens"),
    (lambda: ops.mla_decode(Q, KV, BT, torch.tensor([9, 99], dtype=torch.int32)), ValueError, "cache_seqlens"),
    (lambda: ops.mla_decode(Q, KV, BT, torch.tensor([9, -1], dtype=torch.int32)), ValueError, "cache_seqlens"),
    (lambda: ops.mla_decode(Q, KV, _bt({(0, 1): NB}), SL), ValueError, "block_table"),
    (lambda: ops.mla_decode(Q, KV, _bt({(1, 0): -3}), SL), ValueError, "block_table"),
    (lambda: ops.mla_decode(Q, KV, BT, SL, head_dim_v=256 + 64), ValueError, "head_dim_v"),
    (lambda: ops.mla_decode(Q, KV, BT, SL, head_dim_v=512.0), TypeError, "head_dim_v"),
    (lambda: ops.mla_decode(Q, KV8, BT, SL, head_dim_v=256), ValueError, "head_dim_v"),
    (lambda: ops.mla_decode(Q, KV8[..., :600], BT, SL), ValueError, "656"),
    (lambda: ops.mla_decode(Q2, KV, BT, SL), ValueError, "causal"),
    (lambda: ops.mla_decode(Q, KV, BT, SL, causal=1), TypeError, "causal"),
    (lambda: ops.mla_decode(Q, KV, BT, SL, softmax_scale=-1.0), ValueError, "softmax_scale"),
    (lambda: ops.mla_decode(Q, KV, BT, SL, softmax_scale="x"), TypeError, "softmax_scale"),
    (lambda: ops.mla_decode(Q, KV, BT, SL, num_splits=0), ValueError, "num_splits"),
    (lambda: ops.mla_decode(Q, KV, BT, SL, num_splits=2.5), TypeError, "num_splits"),
    (lambda: ops.mla_decode(Q, KV, BT, SL, backend="tpu"), ValueError, "backend"),
    (lambda: ops.mla_decode(Q.double(), KV.double(), BT, SL, backend="triton"), TypeError, "float64"),
    (lambda: ops.mla_cache_append(KV, BT, POS.float(), LAT, ROPE), TypeError, "positions"),
    (lambda: ops.mla_cache_append(KV, BT, POS[:1], LAT, ROPE), ValueError, "block_table"),
    (lambda: ops.mla_cache_append(KV, BT, POS, LAT[..., :500], ROPE), ValueError, "latent"),
    (lambda: ops.mla_cache_append(KV, BT, POS, LAT, ROPE[..., :60]), ValueError, "k_rope"),
    (lambda: ops.mla_cache_append(KV8, BT, POS, LAT[..., :256], ROPE), ValueError, "latent"),
    (
        lambda: ops.mla_cache_append(KV, BT, torch.tensor([[0, 12], [0, 1]], dtype=torch.int32), LAT, ROPE),
        ValueError,
        "block_table page id",
    ),
    (
        lambda: ops.mla_cache_append(KV, BT, torch.tensor([[0, 16], [0, 1]], dtype=torch.int32), LAT, ROPE),
        ValueError,
        "positions max",
    ),
    (lambda: ops.mla_cache_append(KV, _bt({(1, 0): NB + 5}), POS, LAT, ROPE), ValueError, "block_table page id"),
    (lambda: ops.mla_cache_append(KV, BT, POS, LAT.int(), ROPE), TypeError, "latent"),
    (lambda: ops.mla_prefill(PQ, PK, PV, CQ, CK, causal="yes"), TypeError, "causal"),
    (lambda: ops.mla_prefill(PQ, PK[..., :128], PV, CQ, CK), ValueError, "k"),
    (lambda: ops.mla_prefill(PQ, PK, PV[:8], CQ, CK), ValueError, "v"),
    (lambda: ops.mla_prefill(PQ, PK, PV.half(), CQ, CK), TypeError, "dtype"),
    (lambda: ops.mla_prefill(PQ[:, :, None], PK, PV, CQ, CK), ValueError, "q"),
    (
        lambda: ops.mla_prefill(PQ.transpose(1, 2).contiguous().transpose(1, 2), PK, PV, CQ, CK),
        ValueError,
        "contiguous",
    ),
    (lambda: ops.mla_prefill(PQ, PK, PV, CQ.long(), CK), TypeError, "cu_seqlens_q"),
    (lambda: ops.mla_prefill(PQ, PK, PV, ref.cu_seqlens((3, 3)), CK), ValueError, "cu_seqlens_q"),
    (lambda: ops.mla_prefill(PQ, PK, PV, CQ, ref.cu_seqlens((9,))), ValueError, "cu_seqlens_k"),
    (
        lambda: ops.mla_prefill(
            PQ, PK, PV, torch.tensor([0, 5, 3, 7], dtype=torch.int32), torch.tensor([0, 4, 4, 9], dtype=torch.int32)
        ),
        ValueError,
        "non-decreasing",
    ),
    (lambda: ops.mla_prefill(PQ, PK, PV, CQ, CK, max_seqlen_q=2), ValueError, "max_seqlen_q"),
    (lambda: ops.mla_prefill(PQ, PK, PV, CQ, CK, max_seqlen_k=5.0), TypeError, "max_seqlen_k"),
    (lambda: ops.mla_prefill(PQ, PK, PV, CQ, CK, softmax_scale=float("nan")), ValueError, "softmax_scale"),
    (lambda: ops.merge_attn_states(OA, LA, OA[:2], LA), ValueError, "out_b"),
    (lambda: ops.merge_attn_states(OA, LA.t(), OA, LA), ValueError, "lse_a"),
    (lambda: ops.merge_attn_states(OA, LA, OA, LA.half()), TypeError, "lse_b"),
    (lambda: ops.merge_attn_states(OA, LA, OA.half(), LA), ValueError, "out_b"),
]


@pytest.fixture
def no_launch(monkeypatch):
    """Any touch of the Triton kernel module fails the test: errors must come first."""

    def boom():
        raise AssertionError("a kernel was reached with bad input")

    monkeypatch.setattr(ops, "_kernels", boom)


@pytest.mark.parametrize("i", range(len(BAD)))
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_bad_input_raises_before_launch(i, backend, no_launch):
    call, exc, text = BAD[i]
    if backend == "triton" and TRITON_SKIP:
        pytest.skip(TRITON_SKIP)
    with pytest.raises(exc, match=re.escape(text)):
        _with_backend(call, backend)


def _with_backend(call, backend):
    """Run ``call`` with ``backend`` as the default (PYGEN_BACKEND) so every row tests both paths."""
    import os

    old = os.environ.get("PYGEN_BACKEND")
    os.environ["PYGEN_BACKEND"] = backend
    try:
        return call()
    finally:
        if old is None:
            del os.environ["PYGEN_BACKEND"]
        else:
            os.environ["PYGEN_BACKEND"] = old


def test_zero_length_and_empty_inputs_are_zero_and_minus_inf():
    for backend in ("triton", "reference"):
        q, kv, bt, sl = ref.random_decode_problem((0, 0), 2, 16, 4, G)
        out, lse = ops.mla_decode(q, kv, bt, sl, causal=True, backend=backend)
        assert (out == 0).all() and (lse == float("-inf")).all() and not out.isnan().any()
        q0 = torch.randn(0, 1, 16, 576)
        out, lse = ops.mla_decode(q0, kv, bt[:0], sl[:0], backend=backend)
        assert out.shape == (0, 1, 16, 512) and lse.shape == (0, 16, 1)
        e = torch.zeros(0, 2, 192)
        z = torch.zeros(1, dtype=torch.int32)
        out, lse = ops.mla_prefill(e, e, torch.zeros(0, 2, 128), z, z, backend=backend)
        assert out.shape == (0, 2, 128) and lse.shape == (2, 0)
        q, k, v = torch.randn(3, 1, 192, requires_grad=True), torch.zeros(0, 1, 192), torch.zeros(0, 1, 128)
        out, lse = ops.mla_prefill(q, k, v, ref.cu_seqlens((3,)), ref.cu_seqlens((0,)), backend=backend)
        assert (out == 0).all() and (lse == float("-inf")).all()
        (g,) = torch.autograd.grad(out.sum(), q)
        assert (g == 0).all()


# ---- fuzzing ------------------------------------------------------------------------------------
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lens=st.lists(st.integers(0, 70), min_size=1, max_size=3),
    log_page=st.integers(0, 6),
    h_q=st.sampled_from([16, 32]),
    s_q=st.integers(1, 4),
    splits=st.sampled_from([None, 1, 2, 5]),
    fp8=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fuzz_decode_matches_reference(lens, log_page, h_q, s_q, splits, fp8, seed):
    g = torch.Generator().manual_seed(seed)
    q, kv, bt, sl = ref.random_decode_problem(lens, s_q, h_q, 1 << log_page, g, fp8=fp8)
    out, lse = ops.mla_decode(q, kv, bt, sl, causal=s_q > 1, num_splits=splits, backend="triton")
    r_out, r_lse = ref.mla_decode(q.double(), kv if fp8 else kv.double(), bt, sl, causal=s_q > 1)
    assert_close_to_ref(out, r_out, what="fuzz decode out")
    assert torch.equal(torch.isinf(lse), torch.isinf(r_lse))
    fin = torch.isfinite(r_lse)
    assert_close_to_ref(lse[fin], r_lse[fin], atol=1e-4, what="fuzz decode lse")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lq=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    extra=st.lists(st.integers(-5, 20), min_size=3, max_size=3),
    d=st.sampled_from([16, 40, 192]),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fuzz_prefill_matches_reference(lq, extra, d, causal, seed):
    g = torch.Generator().manual_seed(seed)
    lk = [max(0, n + e) for n, e in zip(lq, extra)]
    dv = 128 if d == 192 else 16
    q, k, v = (torch.randn(sum(n), 1, w, generator=g) for n, w in ((lq, d), (lk, d), (lk, dv)))
    cq, ck = ref.cu_seqlens(lq), ref.cu_seqlens(lk)
    out, lse = ops.mla_prefill(q, k, v, cq, ck, causal=causal, backend="triton")
    r_out, r_lse = ref.mla_prefill(q.double(), k.double(), v.double(), cq, ck, causal=causal)
    assert_close_to_ref(out, r_out, what="fuzz prefill out")
    assert torch.equal(torch.isinf(lse), torch.isinf(r_lse))
    fin = torch.isfinite(r_lse)
    assert_close_to_ref(lse[fin], r_lse[fin], atol=1e-4, what="fuzz prefill lse")
