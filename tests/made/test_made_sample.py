"""The single-launch persistent sampler (kernels/made/sample.py) against the per-step loop and the
float64 reference (D full passes), on random feedforward networks: 0 to 3 hidden layers,
output multipliers 1 to 3, context terms, every step kind, random and equal degrees, unsorted
inputs (random input order). Runs on the Triton backend (the CPU interpreter without a GPU)."""

from __future__ import annotations

import pytest
import torch
from helpers import backend_params

from pygen import ops
from pygen.kernels.made import sample as kern
from pygen.ops import _made_sample as sampler
from pygen.ref import made as ref

TRITON = [p for p in backend_params() if p.values[1] == "triton"]
F64 = torch.float64


def _network(gen, d, hidden, mult, context, random_degrees, device, dtype, bsz=5):
    """weights, biases, degrees, context terms of a random MADE with inputs in a random order."""
    in_deg = torch.randperm(d, generator=gen) + 1
    degrees = [in_deg]
    for h in hidden:
        if random_degrees:
            degrees.append(torch.randint(1, max(d, 2), (h,), generator=gen))
        else:
            degrees.append(ref.hidden_degrees(d, h))
    degrees.append(in_deg.repeat_interleave(mult))
    sizes = [d, *hidden, d * mult]
    weights = [torch.randn(o, i, generator=gen, dtype=F64) / i**0.5 for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [torch.randn(o, generator=gen, dtype=F64) * 0.3 if k % 2 == 0 else None for k, o in enumerate(sizes[1:])]
    ctx = [None] * len(weights)
    if context and hidden:
        ctx[0] = torch.randn(bsz, hidden[0], generator=gen, dtype=F64) * 0.5
    cast = lambda ts: [None if t is None else t.to(device=device, dtype=dtype) for t in ts]
    return cast(weights), cast(biases), [g.to(device) for g in degrees], cast(ctx), (weights, biases, ctx)


CASES = [
    dict(hidden=[], mult=1, kind="bernoulli"),
    dict(hidden=[13], mult=1, kind="bernoulli", context=True),
    dict(hidden=[19, 17], mult=2, kind="gaussian", context=True),
    dict(hidden=[9, 21, 11], mult=2, kind="affine", random_degrees=True),
    dict(hidden=[16, 16], mult=3, kind="gaussian", random_degrees=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("device,backend", TRITON)
def test_persistent_sampler_matches_loop_and_reference(case, device, backend, gen):
    d, bsz = 6, 5
    w, b, degs, ctx, (w64, b64, c64) = _network(
        gen,
        d,
        case["hidden"],
        case["mult"],
        case.get("context"),
        case.get("random_degrees", False),
        device,
        torch.float32,
    )
    kind = case["kind"]
    noise64 = (
        torch.rand(bsz, d, generator=gen, dtype=F64)
        if kind == "bernoulli"
        else torch.randn(bsz, d, generator=gen, dtype=F64)
    )
    noise = noise64.to(device=device, dtype=torch.float32)
    act = "tanh"
    with torch.no_grad():
        # the persistent kernel, then the per-step loop, both on the same float32 network
        kw = dict(kind=kind, activation=act, context_terms=ctx, backend=backend, return_params=True)
        got, got_params = ops.made_sample(w, b, degs, noise, persistent=True, **kw)
        loop, loop_params = ops.made_sample(w, b, degs, noise, persistent=False, **kw)
        want, want_params = ops.made_sample(
            w64,
            b64,
            [g.cpu() for g in degs],
            noise64,
            kind=kind,
            activation=act,
            context_terms=c64,
            backend="reference",
            return_params=True,
        )
    if kind == "bernoulli":
        assert torch.equal(got.cpu().double(), want)
        assert torch.equal(got, loop)
        assert set(got.unique().tolist()) <= {0.0, 1.0}
    else:
        torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got, loop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_params.cpu().double(), want_params, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_params, loop_params, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", TRITON)
def test_persistent_sampler_is_one_launch(device, backend, gen, monkeypatch):
    """The whole sample is one kernel launch: no masked_linear op runs, the launcher runs once."""
    w, b, degs, ctx, _ = _network(gen, 5, [12, 12], 2, True, False, device, torch.float32, bsz=4)
    noise = torch.randn(4, 5, generator=gen).to(device)
    launches = []
    real = kern.made_sample_persistent
    monkeypatch.setattr(kern, "made_sample_persistent", lambda *a, **k: (launches.append(1), real(*a, **k))[1])
    monkeypatch.setattr(sampler, "_slice_linear", lambda *a, **k: pytest.fail("the step loop ran"))
    with torch.no_grad():
        x = ops.made_sample(w, b, degs, noise, kind="gaussian", activation="relu", context_terms=ctx, backend=backend)
    assert launches == [1]
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("device,backend", TRITON)
def test_persistent_sampler_bf16_matches_loop(device, backend, gen):
    """bf16 weights: the kernel rounds every activation and param to bf16 like the loop does."""
    w, b, degs, ctx, _ = _network(gen, 5, [16], 1, False, False, device, torch.bfloat16)
    noise = torch.rand(6, 5, generator=gen).to(device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        got, gp = ops.made_sample(w, b, degs, noise, backend=backend, return_params=True, persistent=True)
        loop, lp = ops.made_sample(w, b, degs, noise, backend=backend, return_params=True, persistent=False)
    assert torch.equal(got, loop)
    torch.testing.assert_close(gp.float(), lp.float(), rtol=1.6e-2, atol=1.6e-2)


@pytest.mark.parametrize("device,backend", TRITON)
def test_persistent_flag_errors(device, backend, gen):
    w, b, degs, _, _ = _network(gen, 4, [8], 1, False, False, device, torch.float32)
    noise = torch.rand(2, 4, generator=gen).to(device)
    with pytest.raises(ValueError, match="persistent=True is not available here: the reference backend"):
        ops.made_sample(w, b, degs, noise, backend="reference", persistent=True)
    wg = [t.clone().requires_grad_() for t in w]
    with pytest.raises(ValueError, match="persistent=True is not available here: sampling recorded by autograd"):
        ops.made_sample(wg, b, degs, noise, backend=backend, persistent=True)
    with pytest.raises(ValueError, match=r"context_terms\[0\] must be \[batch"):
        ops.made_sample(w, b, degs, noise, backend=backend, context_terms=[torch.zeros(3, 8, device=device), None])
    with pytest.raises(ValueError, match="output_multiplier >= 2"):
        ops.made_sample(w, b, degs, noise, backend=backend, kind="gaussian")
    # the default falls back to the loop for autograd and still differentiates (and equals the kernel)
    w2, b2, degs2, _, _ = _network(gen, 4, [8], 2, False, False, device, torch.float32)
    wg2 = [t.clone().requires_grad_() for t in w2]
    z = torch.randn(2, 4, generator=gen).to(device)
    x = ops.made_sample(wg2, b2, degs2, z, kind="gaussian", backend=backend)
    x.sum().backward()
    assert wg2[0].grad is not None and torch.isfinite(wg2[0].grad).all() and wg2[0].grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(x, ops.made_sample(w2, b2, degs2, z, kind="gaussian", backend=backend))


@pytest.mark.parametrize("device,backend", TRITON)
def test_persistent_sampler_falls_back_beyond_32bit_offsets(device, backend, gen, monkeypatch):
    """A network whose flat weights or scratch would overflow the kernel's 32-bit offsets runs the
    step loop (same result); persistent=True says why. (The limit is lowered to hit the path.)"""
    w, b, degs, _, _ = _network(gen, 5, [12], 2, False, False, device, torch.float32)
    noise = torch.randn(3, 5, generator=gen).to(device)
    with torch.no_grad():
        want = ops.made_sample(w, b, degs, noise, kind="gaussian", backend=backend, persistent=True)
        monkeypatch.setattr(sampler, "MAX_KERNEL_OFFSET", 100)
        monkeypatch.setattr(kern, "made_sample_persistent", lambda *a, **k: pytest.fail("kernel launched"))
        with pytest.raises(ValueError, match="too large for the kernel's 32-bit offsets"):
            ops.made_sample(w, b, degs, noise, kind="gaussian", backend=backend, persistent=True)
        got = ops.made_sample(w, b, degs, noise, kind="gaussian", backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_persistent_sampler_refuses_params_past_32_bit_offsets():
    """The persistent kernel stores the params rows [B, D * m] with 32-bit offsets; the size check
    bounded the weights and the scratch rows only, so D = 784, one hidden layer of 2048, m = 64 and
    B = 42,800 (params offsets up to 2,147,532,799) took the kernel: a store past 2^31 on a GPU."""
    d, hid, m = 784, 2048, 64
    w = [torch.empty(hid, d, device="meta"), torch.empty(d * m, hid, device="meta")]
    assert sampler._why_not_persistent("triton", False, False, m, w, 42_800, d) is not None
    assert sampler._why_not_persistent("triton", False, False, m, w, 42_700, d) is None
    assert sampler._why_not_persistent("triton", False, False, 2, w[:1] + [torch.empty(2 * d, hid, device="meta")],
                                       4096, d) is None  # the benchmark shape  # fmt: skip
