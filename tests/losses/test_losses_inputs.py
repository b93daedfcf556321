"""Losses family: bad input raises a clear error naming the argument before any launch (shape,
dtype and device mismatches, targets out of range that are not ignore_index, bad options);
with value checks off an out-of-range target is treated as ignored (no out-of-bounds read);
hypothesis fuzzing of the problem sizes against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close_to_ref, assert_raises_before_launch, losses_launchers, requires_triton
from hypothesis import given, settings, strategies as st

import pygen
from pygen import ops
from pygen.ref import losses as ref

N, H, V = 6, 8, 11
HID = torch.randn(N, H)
W = torch.randn(V, H)
B = torch.randn(V)
T = torch.randint(0, V, (N,))
ce, lp = ops.linear_cross_entropy, ops.linear_log_probs


def _with(t, i, v):
    t = t.clone()
    t[i] = v
    return t


BAD = [
    # (call, error type, text the message must contain)
    (lambda: ce(HID.numpy(), W, T), TypeError, "hidden"),
    (lambda: ce(HID[0], W, T), ValueError, "hidden"),
    (lambda: ce(HID.int(), W.int(), T), TypeError, "hidden"),
    (lambda: ce(HID, W[:, :5], T), ValueError, "weight's H"),
    (lambda: ce(HID, W[None], T), ValueError, "weight"),
    (lambda: ce(HID, W[:0], T), ValueError, "weight"),
    (lambda: ce(HID, W.double(), T), TypeError, "weight"),
    (lambda: ce(HID, W.to("meta"), T), ValueError, "weight is on the meta device"),
    (lambda: ce(HID, W, T[:4]), ValueError, "targets"),
    (lambda: ce(HID, W, T.float()), TypeError, "targets"),
    (lambda: ce(HID, W, T.to("meta")), ValueError, "targets is on the meta device"),
    (lambda: ce(HID, W, T, B[:5]), ValueError, "bias"),
    (lambda: ce(HID, W, T, B.half()), TypeError, "bias"),
    (lambda: ce(HID, W, T, B[None]), ValueError, "bias"),
    (lambda: ce(HID, W, _with(T, 2, V)), ValueError, f"targets holds {V}, outside [0, {V})"),
    (lambda: ce(HID, W, _with(T, 2, -1)), ValueError, "targets holds -1"),
    (lambda: ce(HID, W, _with(T, 2, -100), ignore_index=-1), ValueError, "not ignore_index (-1)"),
    (lambda: ce(HID, W, T, ignore_index=1.5), TypeError, "ignore_index"),
    (lambda: ce(HID, W, T, reduction="avg"), ValueError, "reduction"),
    (lambda: ce(HID, W, T, label_smoothing=1.5), ValueError, "label_smoothing"),
    (lambda: ce(HID, W, T, label_smoothing=-0.1), ValueError, "label_smoothing"),
    (lambda: ce(HID, W, T, label_smoothing="0.1"), TypeError, "label_smoothing"),
    (lambda: ce(HID, W, T, z_loss=-1e-4), ValueError, "z_loss"),
    (lambda: ce(HID, W, T, z_loss=float("nan")), ValueError, "z_loss"),
    (lambda: ce(HID, W, T, softcap=0.0), ValueError, "softcap"),
    (lambda: ce(HID, W, T, softcap=-30.0), ValueError, "softcap"),
    (lambda: ce(HID, W, T, return_lse=1), TypeError, "return_lse"),
    (lambda: ce(HID, W, T, filter_eps="always"), ValueError, "filter_eps"),
    (lambda: ce(HID, W, T, filter_eps=-1.0), ValueError, "filter_eps"),
    (lambda: ce(HID, W, T, dtype=torch.int64), TypeError, "dtype"),
    (lambda: ce(HID, W, T, dtype="float32"), TypeError, "dtype"),
    (lambda: ce(HID, W, T, backend="tpu"), ValueError, "backend"),
    (lambda: ce(HID, W, T, backend="cuda"), ValueError, "not implemented"),
    (lambda: ce(HID.double(), W.double(), T, backend="triton"), TypeError, "float64"),
    (lambda: lp(HID, W, _with(T, 0, -100)), ValueError, "tokens holds -100"),
    (lambda: lp(HID, W, T[None]), ValueError, "tokens"),
    (lambda: lp(HID, W.half(), T), TypeError, "weight"),
    (lambda: lp(HID, W, T, temperature=0.0), ValueError, "temperature"),
    (lambda: lp(HID, W, T, temperature=-1.0), ValueError, "temperature"),
    (lambda: lp(HID, W, T, return_entropy="yes"), TypeError, "return_entropy"),
]


@pytest.mark.parametrize("call,exc,text", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
@pytest.mark.parametrize("backend", [None, "reference", "cpu", "triton"])
def test_bad_input_raises_before_launch(call, exc, text, backend, monkeypatch):
    # any launch goes through the triton launchers or the cpu ones: make each fail loudly
    names = ("linear_ce_fwd", "linear_ce_bwd")
    assert_raises_before_launch(monkeypatch, losses_launchers(), names, call, exc, text, backend)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=requires_triton)])
def test_out_of_range_targets_with_checks_off_are_ignored(backend):
    """With value checks off an out-of-range target contributes nothing (the kernels find the
    target column by comparison, so nothing is read out of bounds) -- the same as ignore_index."""
    bad = _with(_with(T, 1, V + 5), 3, -7)
    with pygen.value_checks(False):
        got = ce(HID, W, bad, B, reduction="none", backend=backend)
    want = ref.linear_cross_entropy(
        HID.double(), W.double(), _with(_with(T, 1, -100), 3, -100), B.double(), reduction="none"
    )
    assert_close_to_ref(got, want)
    assert got[1] == 0 and got[3] == 0


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(0, 40),
    h=st.integers(1, 40),
    v=st.integers(1, 140),
    smoothing=st.sampled_from([0.0, 0.1]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fuzz_cpu_backend(n, h, v, smoothing, bias, seed):
    g = torch.Generator().manual_seed(seed)
    hid, w = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) * 0.3
    b = torch.randn(v, generator=g) if bias else None
    t = torch.randint(0, v, (n,), generator=g)
    t[torch.rand(n, generator=g) < 0.2] = -100
    got = ce(hid, w, t, b, label_smoothing=smoothing, reduction="sum", backend="cpu")
    want = ref.linear_cross_entropy(
        hid.double(), w.double(), t, None if b is None else b.double(), label_smoothing=smoothing, reduction="sum"
    )
    assert_close_to_ref(got, want, atol=1e-5 * max(1, n))
