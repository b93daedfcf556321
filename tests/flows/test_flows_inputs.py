"""Flow family: bad input raises a clear error naming the argument before any launch; hypothesis
fuzzing of coupling / ActNorm shapes against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close_to_ref, assert_raises_before_launch
from hypothesis import given, settings, strategies as st

from pygen import ops
from pygen.ref import flows as ref

X = torch.randn(2, 4, 3, 3)
H = torch.randn(2, 4, 3, 3)
C4 = torch.randn(4)
W = torch.randn(4, 4)
Z = torch.randn(3, 5)

BAD = [
    # (call, error type, text the message must contain)
    (lambda: ops.slogdet(W.numpy()), TypeError, "A"),
    (lambda: ops.slogdet(torch.randn(4)), ValueError, "A"),
    (lambda: ops.slogdet(torch.randn(2, 3, 4)), ValueError, "square"),
    (lambda: ops.slogdet(W.half()), TypeError, "A"),
    (lambda: ops.slogdet(W.int()), TypeError, "A"),
    (lambda: ops.slogdet(W, backend="tpu"), ValueError, "backend"),
    (lambda: ops.slogdet(W.double(), backend="triton"), TypeError, "float64"),
    (lambda: ops.affine_coupling(X.numpy(), H, H), TypeError, "x"),
    (lambda: ops.affine_coupling(X[0, 0, 0], H[0, 0, 0], H[0, 0, 0]), ValueError, "x"),
    (lambda: ops.affine_coupling(X, H[:, :2], H), ValueError, "log_scale_raw"),
    (lambda: ops.affine_coupling(X, H, H[:1]), ValueError, "shift"),
    (lambda: ops.affine_coupling(X, H.double(), H), TypeError, "log_scale_raw"),
    (lambda: ops.affine_coupling(X, H, H.half()), TypeError, "shift"),
    (lambda: ops.affine_coupling(X, H, "t"), TypeError, "shift"),
    (lambda: ops.affine_coupling(X.int(), H.int(), H.int()), TypeError, "x"),
    (lambda: ops.affine_coupling(X, H, H, clamp=0.0), ValueError, "clamp"),
    (lambda: ops.affine_coupling(X, H, H, clamp=-1.0), ValueError, "clamp"),
    (lambda: ops.affine_coupling(X, H, H, scale="tanh"), ValueError, "scale"),
    (lambda: ops.affine_coupling(X, H, H, clamp=float("inf")), ValueError, "clamp"),
    (lambda: ops.affine_coupling(X, H, H, clamp="2"), TypeError, "clamp"),
    (lambda: ops.affine_coupling(X, H, H, reverse=1), TypeError, "reverse"),
    (lambda: ops.additive_coupling(X, H[:, :3]), ValueError, "shift"),
    (lambda: ops.additive_coupling(X, H, reverse="yes"), TypeError, "reverse"),
    (lambda: ops.actnorm(X, C4), ValueError, "log_scale"),
    (lambda: ops.actnorm(X, C4, C4, scale=C4), ValueError, "log_scale"),
    (lambda: ops.actnorm(X, C4[:3], C4), ValueError, "loc"),
    (lambda: ops.actnorm(X, C4, torch.randn(1, 4, 1)), ValueError, "log_scale"),
    (lambda: ops.actnorm(X, C4, scale=C4.double()), TypeError, "scale"),
    (lambda: ops.actnorm(X[0, 0], C4, C4), ValueError, "x"),
    (lambda: ops.actnorm(X, C4.numpy(), C4), TypeError, "loc"),
    (lambda: ops.inv_conv1x1(X, torch.randn(4, 3)), ValueError, "weight"),
    (lambda: ops.inv_conv1x1(X, torch.randn(3, 3)), ValueError, "weight"),
    (lambda: ops.inv_conv1x1(X, W.double()), TypeError, "weight"),
    (lambda: ops.inv_conv1x1(X, torch.randn(4, 4, 3, 3)), ValueError, "weight"),
    (lambda: ops.inv_conv1x1(X[0, 0, 0], W), ValueError, "x"),
    (lambda: ops.inv_conv1x1_lu(X, W, W, W, C4[:3]), ValueError, "diag"),
    (lambda: ops.inv_conv1x1_lu(X, W[:3, :3], W, W, C4), ValueError, "perm"),
    (lambda: ops.inv_conv1x1_lu(X, W, W.double(), W, C4), TypeError, "lower"),
    (lambda: ops.inv_conv1x1_lu(X, W, W, "U", C4), TypeError, "upper"),
    (lambda: ops.planar(Z, Z[0, :4], Z[0], torch.zeros(())), ValueError, "u"),
    (lambda: ops.planar(Z, Z[0], Z[0], torch.zeros(2)), ValueError, "b"),
    (lambda: ops.planar(Z[0], Z[0], Z[0], torch.zeros(())), ValueError, "z"),
    (lambda: ops.radial(Z, Z[0], torch.ones(()).double(), torch.ones(())), TypeError, "alpha"),
    (lambda: ops.radial(Z, Z[:2], torch.ones(()), torch.ones(())), ValueError, "z0"),
    (lambda: ops.sylvester(Z, torch.randn(4, 2), torch.randn(2, 5), torch.randn(2)), ValueError, "A"),
    (lambda: ops.sylvester(Z, torch.randn(5, 2), torch.randn(2, 4), torch.randn(2)), ValueError, "B"),
    (lambda: ops.sylvester(Z, torch.randn(5, 2), torch.randn(2, 5), torch.randn(3)), ValueError, "b"),
]


@pytest.mark.parametrize("call,exc,text", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
@pytest.mark.parametrize("backend", [None, "reference", "triton"])
def test_bad_input_raises_before_launch(call, exc, text, backend, monkeypatch):
    # any launch would go through pygen.kernels.flows: make every launcher fail loudly
    from pygen.kernels import flows as K

    names = ("affine_coupling_fwd", "additive_coupling_fwd", "actnorm_fwd", "conv1x1_fwd", "slogdet_fwd")
    assert_raises_before_launch(monkeypatch, K, names, call, exc, text, backend)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(0, 5),
    c=st.integers(1, 5),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    clamp=st.sampled_from([None, 0.5, 3.0]),
    rev=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fuzz_coupling_and_actnorm_triton(b, c, h, w, clamp, rev, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g)
    raw, t = (torch.randn(b, 2 * c, h, w, generator=g) * 2).chunk(2, 1)
    y, ld = ops.affine_coupling(x, raw, t, reverse=rev, clamp=clamp, backend="triton")
    y64, ld64 = ref.affine_coupling(x.double(), raw.double(), t.double(), rev, clamp)
    assert_close_to_ref(y, y64, atol=1e-5 * (1 + float(y64.abs().max()) if y64.numel() else 1))
    assert_close_to_ref(ld, ld64, atol=1e-4)
    loc, ls = torch.randn(c, generator=g), torch.randn(c, generator=g) * 0.5
    y, ld = ops.actnorm(x, loc, ls, reverse=rev, backend="triton")
    y64, ld64 = ref.actnorm(x.double(), loc.double(), ls.double(), reverse=rev)
    assert_close_to_ref(y, y64, atol=1e-5)
    assert_close_to_ref(ld, ld64, atol=1e-4)
