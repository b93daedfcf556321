"""fused_moe_fp8 (pygen/ops/moe_fp8.py): the FP8 block-scaled MoE against (a) a per-token loop of
the FP8 family's reference ops (same quantisation, the dense fp8_gemm per expert) and (b) the float64
fused_moe on the unquantised weights within the recipe's error; routing from moe_route; bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import backend_params

from pygen import ops
from pygen.ops import moe_fp8
from pygen.ref import moe as ref_moe

PARAMS = [p for p in backend_params() if p.values[1] in ("triton", "reference")]


def _problem(gen, t=5, e=4, k=2, h=128, inter=128, device="cpu"):
    x = torch.randn(t, h, generator=gen)
    w1 = torch.randn(e, 2 * inter, h, generator=gen) / h**0.5
    w2 = torch.randn(e, h, inter, generator=gen) / inter**0.5
    ids, w = ops.moe_route(torch.randn(t, e, generator=gen), k, scoring="softmax", backend="reference")
    return [v.to(device) for v in (x, w1, w2, w, ids)]


def _loop(x, w1q, w1s, w2q, w2s, w, ids, activation):
    """The same recipe token by token with the reference FP8 ops (dense GEMM per expert)."""
    inter = w1q.shape[1] // 2
    out = torch.zeros(x.shape, dtype=torch.float32)
    for t in range(x.shape[0]):
        xq, xs = ops.quantize_fp8_1x128(x[t : t + 1].float().cpu(), backend="reference")
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            gu = ops.fp8_gemm(xq, xs, w1q[e].cpu(), w1s[e].cpu(), out_dtype=torch.float32, backend="reference")
            hm = ref_moe.activation(gu[:, :inter], activation) * gu[:, inter:]
            hq, hs = ops.quantize_fp8_1x128(hm, backend="reference")
            y = ops.fp8_gemm(hq, hs, w2q[e].cpu(), w2s[e].cpu(), out_dtype=torch.float32, backend="reference")
            out[t] += float(w[t, j]) * y[0]
    return out


@pytest.mark.parametrize("device,backend", PARAMS)
@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_fused_moe_fp8_matches_recipe_loop_and_float64(device, backend, activation, gen):
    x, w1, w2, w, ids = _problem(gen, device=device)
    w1q, w1s, w2q, w2s = ops.quantize_moe_weights_fp8(w1, w2, backend="reference")
    got = ops.fused_moe_fp8(x, w1q, w1s, w2q, w2s, w, ids, activation, backend=backend)
    assert got.shape == x.shape and got.dtype == x.dtype
    want = _loop(x, w1q, w1s, w2q, w2s, w, ids, activation)
    scale = want.abs().max()
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=float(scale) * 2e-3)
    # against the unquantised float64 MoE: e4m3 keeps 3 mantissa bits (rounding error up to 2^-4,
    # RMS ~3.6 % per value); a random-sign dot product keeps that relative RMS (~5 % with both
    # operands quantised) and the second GEMM adds about as much: ~6 % measured at this shape
    exact = ref_moe.fused_moe(
        x.double().cpu(), w1.double().cpu(), w2.double().cpu(), w.double().cpu(), ids.cpu(), activation
    )
    rel = (got.cpu().double() - exact).norm() / exact.norm()
    assert rel < 0.12, rel
    # a wrong expert (ids shifted) is caught by the loop comparison
    other = ops.fused_moe_fp8(x, w1q, w1s, w2q, w2s, w, (ids + 1) % w1.shape[0], activation, backend=backend)
    assert (other.cpu() - want).abs().max() > 10 * float(scale) * 2e-3


@pytest.mark.parametrize("device,backend", PARAMS)
def test_fused_moe_fp8_bf16_input_and_empty(device, backend, gen):
    x, w1, w2, w, ids = _problem(gen, t=3, e=3, k=3, device=device)
    w1q, w1s, w2q, w2s = ops.quantize_moe_weights_fp8(w1, w2, backend="reference")
    got = ops.fused_moe_fp8(x.bfloat16(), w1q, w1s, w2q, w2s, w, ids, backend=backend)
    want = ops.fused_moe_fp8(x.bfloat16().float(), w1q, w1s, w2q, w2s, w, ids, backend="reference")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.to(got.device), rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    empty = ops.fused_moe_fp8(x[:0], w1q, w1s, w2q, w2s, w[:0], ids[:0], backend=backend)
    assert empty.shape == (0, x.shape[1])


def test_fused_moe_fp8_bad_input(gen):
    x, w1, w2, w, ids = _problem(gen)
    w1q, w1s, w2q, w2s = ops.quantize_moe_weights_fp8(w1, w2, backend="reference")
    cases = [
        (lambda: ops.fused_moe_fp8(x, w1.float(), w1s, w2q, w2s, w, ids), TypeError, "w1q"),
        (lambda: ops.fused_moe_fp8(x[:, :64], w1q, w1s, w2q, w2s, w, ids), ValueError, "w1q"),
        (lambda: ops.fused_moe_fp8(x, w1q, w1s[:, :1], w2q, w2s, w, ids), ValueError, "w1_scales"),
        (lambda: ops.fused_moe_fp8(x, w1q, w1s, w2q[:2], w2s, w, ids), ValueError, "w2q"),
        (lambda: ops.fused_moe_fp8(x, w1q, w1s, w2q, w2s.double(), w, ids), ValueError, "w2_scales"),
        (lambda: ops.fused_moe_fp8(x, w1q, w1s, w2q, w2s, w, ids.float()), ValueError, "topk_ids"),
        (lambda: ops.fused_moe_fp8(x, w1q, w1s, w2q, w2s, w[:, :1], ids), ValueError, "topk_weights"),
        (lambda: ops.fused_moe_fp8(x, w1q, w1s, w2q, w2s, w, ids, "relu"), ValueError, "activation"),
        (lambda: ops.fused_moe_fp8(x, w1q, w1s, w2q, w2s, w, ids + 10), ValueError, "topk_ids"),
        (lambda: ops.quantize_moe_weights_fp8(w1[0], w2), ValueError, "w1"),
    ]
    for fn, exc, word in cases:
        with pytest.raises(exc, match=word):
            fn()
    assert moe_fp8.BLOCK == 128
